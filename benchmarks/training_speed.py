"""One training setting's effect on the chain's default model's speed, on this machine: XLA, bfloat16 or tf.data's
autotuner.

    python benchmarks/training_speed.py [--setting jit_compile|precision|autotune] [--data-dir D] [--work-dir W]
                                        [--head-epochs 1] [--epochs 1] [--repeats 1]

Prepares the dataset's class folders once (notebooks 01-02's ``folders.prepare``, seed 42), then trains the
default ``TrainConfig`` (``fer_transfer``, head then whole model) for a short schedule twice, each in a fresh
process, once per value of the setting (``SETTINGS``):

- ``jit_compile``: ``model.compile(jit_compile=False)``, then ``True``. (Keras' own ``"auto"``, which the chain
  leaves as it is, resolves to False on a machine without a GPU, so on CPUs ``False`` is what the chain runs.)
- ``precision``: ``TrainConfig(precision="float32")``, then ``"bf16"`` (Keras' ``mixed_bfloat16``: bfloat16
  arithmetic, float32 weights). ``fer_transfer`` is registered with ``cpu_precision="float32"``, so on a CPU
  the chain trains it in float32; this measures what bfloat16 would give on this CPU (worth it only on one with
  bfloat16 instructions: ``amx_bf16`` or ``avx512_bf16``).
- ``autotune``: tf.data's autotuner off (``pipelines.TF_DATA_AUTOTUNE``, the chain's setting), then on. The
  batches are the same either way, so the validation loss of each epoch should be too.

``--repeats N`` trains each value N times, alternating. Writes each epoch's seconds (every repeat) and validation
accuracy (the first) to ``benchmarks/results/<setting>.json``, with the ratio of each epoch's median seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _checks
import numpy as np

from fer_utils.workfolder import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
#: setting -> {value's name: what it sets}; the first value is what the chain runs on a CPU, the second the other
SETTINGS = {"jit_compile": {"off": False, "on": True}, "precision": {"float32": "float32", "bf16": "bf16"},
            "autotune": {"off": False, "on": True}}


def one_training(work: Path, setting: str, value: str, head_epochs: int, epochs: int) -> dict:
    """Train once in this process with ``setting`` at ``value``; the history and what Keras used."""
    import fer_utils
    from fer_utils import pipelines, training

    _, keras = fer_utils.import_tensorflow()
    if setting == "autotune":
        pipelines.TF_DATA_AUTOTUNE = SETTINGS[setting][value]
    used = {"jit_compile": [], "dtype_policy": []}
    compile_as_keras = keras.Model.compile

    def compile_and_record(self, *args, **kwargs):  # training.compile_model's compile, recording what it used
        if setting == "jit_compile":
            kwargs["jit_compile"] = SETTINGS[setting][value]
        compile_as_keras(self, *args, **kwargs)
        used["jit_compile"].append(bool(self.jit_compile))
        used["dtype_policy"].append(self.dtype_policy.name)

    keras.Model.compile = compile_and_record
    config = training.TrainConfig(head_epochs=head_epochs, epochs=epochs)
    if setting == "precision":
        config = config.replace(precision=SETTINGS[setting][value])
    t0 = time.perf_counter()
    result = training.train(config, work, write=False, show_progress=False)
    seconds = time.perf_counter() - t0
    history = result.history[["epoch", "phase", "seconds", "train_seconds", "val_accuracy", "val_loss"]]
    history = history.round({"seconds": 3, "train_seconds": 3, "val_accuracy": 4, "val_loss": 6})
    return {**used, "tf_data_autotune": pipelines.TF_DATA_AUTOTUNE, "seconds": round(seconds, 1),
            "epochs": history.to_dict("records"),
            "config": {"model": config.model, "head_epochs": head_epochs, "epochs": epochs,
                       "batch_size": config.batch_size, "precision": config.precision}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("FER_DATA_DIR"), help="the dataset (default: $FER_DATA_DIR)")
    ap.add_argument("--work-dir", help="a folder for the class folders (default: a temporary folder)")
    ap.add_argument("--setting", choices=sorted(SETTINGS), default="jit_compile",
                    help="what to measure: XLA compilation, bfloat16 or tf.data's autotuner (default: jit_compile)")
    ap.add_argument("--head-epochs", type=_checks.non_negative_int, default=1)
    ap.add_argument("--epochs", type=_checks.non_negative_int, default=1,
                    help="whole-model epochs after the head epochs")
    ap.add_argument("--repeats", type=_checks.positive_int, default=1,
                    help="trainings per value, alternating (default 1); the ratio compares each epoch's median seconds")
    ap.add_argument("--timeout", type=_checks.positive_int, default=3600, help="seconds each training may take")
    _checks.add_out(ap, RESULTS / "<setting>.json", "the JSON file the figures go to (default: "
                    "benchmarks/results/<setting>.json)", metavar="FILE")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one training at this value, JSON on stdout
    args = ap.parse_args(argv)
    if args.out == RESULTS / "<setting>.json":
        args.out = RESULTS / f"{args.setting}.json"
    values = SETTINGS[args.setting]
    if args.one:
        if args.one not in values:
            ap.error(f"--one must be one of {sorted(values)} for --setting {args.setting}")
        print(json.dumps(one_training(Path(args.work_dir), args.setting, args.one, args.head_epochs, args.epochs)))
        return 0
    if not args.data_dir:
        ap.error("no dataset: pass --data-dir or set $FER_DATA_DIR")
    _checks.out_file(args.out, what="a JSON file for the figures")
    if args.work_dir:
        _checks.out_folder(args.work_dir, "--work-dir", "a folder for the class folders")
    dataset = _checks.dataset(args.data_dir, download=False)
    for path, option in ((args.out, "--out"), (args.work_dir, "--work-dir")):
        if path:
            _checks.outside(path, dataset.root, option)
    from fer_utils import folders, models

    with tempfile.TemporaryDirectory(prefix="fer-speed-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp) / "work"
        if not (work / "manifest.csv").exists():
            folders.prepare(dataset, work, seed=42)
        runs, repeats = {}, {value: [] for value in values}
        for repeat in range(args.repeats):  # the values alternate, so a slow spell of the machine hits both
            for value in values:
                print(f"training with {args.setting}={values[value]} ({repeat + 1}/{args.repeats}) ...", flush=True)
                command = [sys.executable, __file__, "--setting", args.setting, "--one", value, "--work-dir",
                           str(work), "--head-epochs", str(args.head_epochs), "--epochs", str(args.epochs)]
                try:
                    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    print(f"error: the training with {args.setting}={values[value]} took over {args.timeout} s "
                          "(--timeout)", file=sys.stderr)
                    return 1
                if done.returncode:
                    print(done.stderr[-3000:], file=sys.stderr)
                    return done.returncode
                runs.setdefault(value, json.loads(done.stdout.strip().splitlines()[-1]))
                epochs = json.loads(done.stdout.strip().splitlines()[-1])["epochs"]
                repeats[value].append([e["seconds"] for e in epochs])
                print("  " + "; ".join(f"epoch {e['epoch']} ({e['phase']}) {e['seconds']:.0f} s, val_accuracy "
                                        f"{e['val_accuracy']:.3f}" for e in epochs), flush=True)
    base, other = values
    # per epoch: the median over the repeats of each value's seconds, then their ratio
    median = {value: np.median(np.array(repeats[value]), axis=0) for value in values}
    ratio = [round(float(b / a), 2) for a, b in zip(median[base], median[other])]
    result = {"benchmark": args.setting, "runs": runs, f"epoch_seconds_{other}_over_{base}": ratio,
              "repeats": args.repeats, "epoch_seconds_per_repeat": repeats,
              "machine": machine_info(), "cpu_has_bf16": models.cpu_supports_bf16(),
              "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"epoch seconds with {args.setting} {other} / {base}: {ratio}; written to {args.out}")
    return 0


if __name__ == "__main__":
    _checks.stop_as_interrupt()  # kill, timeout: temporary folders are removed as on Ctrl-C
    sys.exit(main())
