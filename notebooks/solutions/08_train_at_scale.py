"""Solutions to the exercises of notebook 08 (the tests run this file, on a small
synthetic dataset)."""

import json
import signal
import subprocess
import sys
import time

import pandas as pd
from fer_utils import training, workfolder

WORK = workfolder.get_work_dir(None)
SCALE = WORK / workfolder.SCALE_DIR
workfolder.require(
    SCALE / workfolder.SPLIT_DIR,
    "scale",
    "The class folders of notebook 08 (scale/split/)",
)


def config(**changes):
    return training.TrainConfig(
        **{"model": "seed_cnn", "image_size": 48, "epochs": 2, **changes}
    )


# 1. Images per second against the batch size. They grow while bigger batches keep
#    the cores' vector units busy for longer per step (less per-step overhead), then
#    flatten once the cores are saturated; on a GPU the curve goes on rising much
#    longer.
speed = {
    b: training.train(
        config(batch_size=b), SCALE, write=False, show_progress=False
    ).record["images_per_second"]
    for b in (32, 128, 512)
}
print(pd.Series(speed, name="images/s").rename_axis("batch size").to_string())
assert all(v > 0 for v in speed.values())

# 2. The same global batch on one device and mirrored: the same faces per step, so
#    after the same epochs the validation accuracy is close (dropout draws differ per
#    replica, so not identical).
replicas = training.worker_info(training.get_strategy("mirrored"))["replicas"]
one = training.train(config(batch_size=64), SCALE, write=False, show_progress=False)
two = training.train(
    config(batch_size=64 // replicas, strategy="mirrored"),
    SCALE,
    write=False,
    show_progress=False,
)
accuracy = {
    name: r.record["best"]["val_accuracy"]
    for name, r in (("default", one), ("mirrored", two))
}
print(
    f"{replicas} replica(s); best validation accuracy:",
    {k: round(v, 3) for k, v in accuracy.items()},
)
assert (
    one.record["distribution"]["global_batch_size"]
    == two.record["distribution"]["global_batch_size"]
)

# 3. Interrupt a run with Ctrl-C (SIGINT) during an epoch, then start the same
#    command again: it resumes.
command = [
    sys.executable,
    "-m",
    "fer_utils",
    "train",
    "--work-dir",
    str(SCALE),
    "--quiet",
    *config(epochs=8).to_parameters(),
]
progress = SCALE / workfolder.TRAIN_PROGRESS
progress.unlink(missing_ok=True)
# A shell's background job starts with Ctrl-C ignored, and a child inherits that:
# give the training its default Ctrl-C handling, as a terminal would.
first = subprocess.Popen(
    command,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
)
while first.poll() is None and (
    not progress.exists() or len(progress.read_text().splitlines()) < 2
):
    time.sleep(0.05)
first.send_signal(signal.SIGINT)
first.wait()
finished = len(progress.read_text().splitlines())
subprocess.run(
    command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
)
record = json.loads((SCALE / workfolder.TRAIN_RECORD).read_text())
print(
    f"interrupted after epoch {finished}; the second run resumed after epoch "
    f"{record['distribution']['resumed_after_epoch']} and finished epoch "
    f"{len(record['epoch_seconds'])}"
)
assert (
    record["distribution"]["resumed_after_epoch"] == finished
    and len(record["epoch_seconds"]) == 8
)
