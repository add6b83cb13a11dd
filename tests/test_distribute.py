"""Training on more than one device with tf.distribute, through the same ``training.train``.

Each test runs training in fresh processes, as a cluster would: the CPU split into two logical devices
(``MirroredStrategy``) and two worker processes on 127.0.0.1 (``MultiWorkerMirroredStrategy``), whose
results must match one device's; and a two-worker run whose worker is killed mid-epoch must resume from its
backup and finish.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fer_utils import cluster, data, train_command, training
from fer_utils.workfolder import SPLIT_DIR, TRAIN_PROGRESS, TRAIN_RECORD

#: A small seed-CNN run, no augmentation (random per replica), identical on every worker.
SETTINGS = training.TrainConfig(model="seed_cnn", image_size=48, augment="none", precision="float32",
                                class_weight=None).to_parameters()


def make_split(work: Path, per_split: dict, seed: int = 0) -> Path:
    """``work/split/<split>/<emotion>/*.png`` from generated faces (the class folders notebook 02 writes)."""
    for i, (split, n) in enumerate(per_split.items()):
        data.write_synthetic_dataset(work / SPLIT_DIR / split, "folders", n_images=n, seed=seed + i)
    return work


@pytest.fixture(scope="module")
def small_split(tmp_path_factory) -> Path:
    return make_split(tmp_path_factory.mktemp("dist-data"), {"train": 320, "val": 96, "test": 32})


def copy_of(split_work: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(split_work / SPLIT_DIR, dest / SPLIT_DIR)
    return dest


def history(work: Path) -> pd.DataFrame:
    return pd.read_csv(work / "history.csv")


def test_strategy_is_validated_and_multi_worker_without_a_cluster_says_what_to_do(tmp_path, small_split,
                                                                                     capsys):
    with pytest.raises(ValueError, match="strategy='ring'"):
        training.TrainConfig(strategy="ring")
    with pytest.raises(ValueError, match="needs pipeline='tf.data'"):
        training.TrainConfig(strategy="mirrored", pipeline="generator")
    work = copy_of(small_split, tmp_path)
    env_before = os.environ.pop("TF_CONFIG", None)
    try:
        rc = train_command.main(["--work-dir", str(work), *SETTINGS, "-p", "strategy", "multi_worker"])
    finally:
        if env_before is not None:
            os.environ["TF_CONFIG"] = env_before
    assert rc == 2
    assert "set TF_CONFIG on every worker" in capsys.readouterr().err


def test_mirrored_over_two_logical_cpus_matches_one_device(tmp_path, small_split):
    """``$FER_LOGICAL_CPUS=2`` splits the CPU; MirroredStrategy then trains on both devices with the same global
    batch as one device: same data per step, so the losses agree (dropout draws differ per replica)."""
    work = copy_of(small_split, tmp_path)
    script = (
        "import json, sys\n"
        "from fer_utils import training\n"
        "out = {}\n"
        "for name, batch in (('default', 32), ('mirrored', 16)):\n"
        "    c = training.TrainConfig(model='seed_cnn', image_size=48, epochs=3, augment='none',\n"
        "                             precision='float32', class_weight=None, batch_size=batch, strategy=name)\n"
        "    r = training.train(c, sys.argv[1], write=False, show_progress=False)\n"
        "    out[name] = {'history': r.history[['loss', 'val_loss', 'val_accuracy']].to_dict('list'),\n"
        "                 'distribution': r.record['distribution']}\n"
        "print(json.dumps(out))\n")
    result = subprocess.run([sys.executable, "-c", script, str(work)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "FER_LOGICAL_CPUS": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    one, two = out["default"], out["mirrored"]
    assert one["distribution"]["replicas"] == 1
    assert two["distribution"]["replicas"] == 2 and two["distribution"]["devices"] == ["CPU:0", "CPU:1"]
    assert one["distribution"]["global_batch_size"] == two["distribution"]["global_batch_size"] == 32
    for key in ("loss", "val_loss"):  # both learn, and the gap between them is small next to what they learnt
        a, b = one["history"][key], two["history"][key]
        assert a[-1] < a[0] - 0.2 and b[-1] < b[0] - 0.2, (key, a, b)
        assert abs(a[-1] - b[-1]) < 0.25 * (a[0] - a[-1]), (key, a, b)
    assert abs(one["history"]["val_accuracy"][-1] - two["history"]["val_accuracy"][-1]) <= 0.15


def test_a_notebook_that_starts_tensorflow_itself_still_gets_the_cpu_split():
    """Notebook 05's Setup cell imports fer_utils, then starts TensorFlow itself (``tf.constant(0)``): the split
    that ``$FER_LOGICAL_CPUS`` asks for is made at ``import fer_utils``, so ``mirrored`` gets two replicas there
    (it used to train on one device without a word)."""
    code = ("import fer_utils\nimport tensorflow as tf\ntf.constant(0)\nfrom fer_utils import training\n"
            "print(training.worker_info(training.get_strategy('mirrored'))['replicas'])")
    env = {**os.environ, "FER_LOGICAL_CPUS": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "2"


def test_mirrored_trains_on_splits_that_do_not_divide_over_the_replicas(tmp_path):
    """17 training faces and 5 validation faces over two replicas of global batch 16: the validation batch splits
    3 + 2. Keras built the model from the replicas' first batches added element by element ("AddN ... must have
    the same size and shape"); every face must train and be scored. The last training batch would split 1 + 0,
    and an empty batch crashed TensorFlow's oneDNN convolution on Intel Xeon ("input depth must be evenly
    divisible by filter depth: 1 vs 32"): that one face joins the batch before it, one step of 17 faces."""
    work = make_split(tmp_path, {"train": 17, "val": 5, "test": 1}, seed=3)
    result = subprocess.run([sys.executable, "-m", "fer_utils", "train", "--work-dir", str(work), *SETTINGS,
                             "-p", "epochs", "1", "-p", "batch_size", "8", "-p", "strategy", "mirrored", "--quiet"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "FER_LOGICAL_CPUS": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((work / TRAIN_RECORD).read_text())
    assert record["distribution"]["replicas"] == 2 and record["counts"]["train"] == 17
    assert record["steps_per_epoch"] == 1  # 16 + 1 faces as one batch: no replica is left an empty one
    row = history(work).iloc[0]
    assert row.loss == row.loss and row.val_loss == row.val_loss  # finite: an empty replica adds no NaN
    # accuracies are whole numbers of faces out of all 17 and all 5: none was dropped
    assert abs(row.accuracy * 17 - round(row.accuracy * 17)) < 1e-3, row.accuracy
    assert abs(row.val_accuracy * 5 - round(row.val_accuracy * 5)) < 1e-3, row.val_accuracy


def test_a_per_replica_batch_too_small_to_feed_every_replica_is_refused_before_training(tmp_path):
    """4 replicas of 2 faces and 9 training faces: the last face joins the batch before it (9 faces), which
    TensorFlow then cuts 3 + 3 + 3 + 0; refused in one line, with the batch size to use, before any work."""
    with pytest.raises(ValueError, match=r"batch_size 2 over 4 replicas: the last train batch \(9 faces\)"):
        training.replica_batches(9, 8, 4)
    assert training.replica_batches(17, 16, 2) == [17] and training.replica_batches(19, 16, 2) is None
    assert training.replica_batches(33, 16, 2) == [16, 17] and training.replica_batches(4, 16, 2) is None
    work = make_split(tmp_path, {"train": 9, "val": 8, "test": 1}, seed=4)
    result = subprocess.run([sys.executable, "-m", "fer_utils", "train", "--work-dir", str(work), *SETTINGS,
                             "-p", "epochs", "1", "-p", "batch_size", "2", "-p", "strategy", "mirrored", "--quiet"],
                            capture_output=True, text=True, timeout=300, env={**os.environ, "FER_LOGICAL_CPUS": "4"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: batch_size 2 over 4 replicas: the last train batch (9 faces) would leave a replica no face, which "
        "TensorFlow's oneDNN convolution cannot take; use -p batch_size 4 or more")
    assert not (work / TRAIN_RECORD).exists()


def test_two_workers_on_localhost_match_one_worker(tmp_path, small_split):
    """Two ``python -m fer_utils train`` processes with TF_CONFIG (MultiWorkerMirroredStrategy) train one model:
    both report the same figures, only the chief writes files, and they match one worker's run."""
    one = copy_of(small_split, tmp_path / "one")
    assert train_command.main(["--work-dir", str(one), *SETTINGS, "-p", "epochs", "3", "-p", "batch_size", "32",
                              "--quiet"]) == 0
    two = copy_of(small_split, tmp_path / "two")
    procs = cluster.start_local_workers(["--work-dir", str(two), *SETTINGS, "-p", "epochs", "3",
                                        "-p", "batch_size", "16", "-p", "strategy", "multi_worker"],
                                       workers=2, log_dir=two / "logs")
    codes = cluster.wait_for_workers(procs, timeout=300)
    logs = [(two / "logs" / f"worker-{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    record = json.loads((two / TRAIN_RECORD).read_text())
    dist = record["distribution"]
    assert (dist["strategy"], dist["workers"], dist["replicas"], dist["global_batch_size"]) == ("multi_worker", 2, 2,
                                                                                                32)
    assert dist["task"] == "worker-0" and dist["chief"]
    assert "worker-1: multi_worker" in logs[1] and "not the chief: no files" in logs[1]
    # both workers saw the same (all-reduced) figures each epoch
    last = [line for line in logs[1].splitlines() if line.startswith("epoch  3/3")]
    assert last and last[0].split("·")[1] in logs[0]
    h1, h2 = history(one), history(two)
    assert len(h2) == 3
    for key in ("loss", "val_loss"):  # as for MirroredStrategy: close, next to how much each learnt
        assert h2[key].iloc[-1] < h2[key].iloc[0]
        assert abs(h1[key].iloc[-1] - h2[key].iloc[-1]) < 0.25 * (h1[key].iloc[0] - h1[key].iloc[-1]), (key, h1, h2)


def test_a_killed_worker_resumes_from_its_backup_and_finishes(tmp_path):
    """Kill worker 1 in the middle of an epoch; restart the cluster (as a launcher would): training continues
    after the last finished epoch instead of starting again, and the record says so."""
    work = make_split(tmp_path, {"train": 800, "val": 64, "test": 32}, seed=5)
    args = ["--work-dir", str(work), *SETTINGS, "-p", "epochs", "4", "-p", "batch_size", "16",
            "-p", "strategy", "multi_worker"]
    procs = cluster.start_local_workers(args, workers=2, log_dir=work / "logs-1")
    progress = work / TRAIN_PROGRESS
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and all(p.poll() is None for p in procs):
        lines = progress.read_text().splitlines() if progress.exists() else []
        if len(lines) >= 2:
            break
        time.sleep(0.05)
    lines = progress.read_text().splitlines()
    assert len(lines) >= 2 and all(p.poll() is None for p in procs), (work / "logs-1" / "worker-0.log").read_text()
    seconds = json.loads(lines[-1])["seconds"]
    time.sleep(seconds / 3)  # inside epoch 3
    procs[1].send_signal(signal.SIGKILL)
    killed_after = len(progress.read_text().splitlines())
    assert killed_after < 4
    try:  # the chief cannot go on without its peer: it fails, or hangs until the launcher stops it
        procs[0].wait(timeout=20)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        procs[0].wait()
    assert not (work / TRAIN_RECORD).exists()
    procs = cluster.start_local_workers(args, workers=2, log_dir=work / "logs-2")
    codes = cluster.wait_for_workers(procs, timeout=300)
    chief = (work / "logs-2" / "worker-0.log").read_text()
    assert codes == [0, 0], chief[-3000:]
    assert f"Resuming an interrupted run of this training after epoch {killed_after}" in chief
    record = json.loads((work / TRAIN_RECORD).read_text())
    assert record["distribution"]["resumed_after_epoch"] == killed_after
    h = history(work)
    assert h.epoch.tolist() == [1, 2, 3, 4]  # the epochs before the kill are kept, none is repeated
    epoch_lines = [line for line in chief.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 4 - killed_after  # only the remaining epochs ran again
    assert not (work / training.BACKUP_DIR).exists()  # finished: the backup is gone


def test_tf_config_without_multi_worker_trains_here_and_says_so(tmp_path, small_split):
    """A launcher's TF_CONFIG in the environment must not make a default run wait for a cluster forever."""
    work = copy_of(small_split, tmp_path)
    port = cluster.free_ports(1)[0]
    tf_config = {"cluster": {"worker": ["127.0.0.1:1", f"127.0.0.1:{port}"]}, "task": {"type": "worker", "index": 1}}
    result = subprocess.run([sys.executable, "-m", "fer_utils", "train", "--work-dir", str(work), *SETTINGS,
                             "-p", "epochs", "1", "--quiet"], capture_output=True, text=True, timeout=180,
                            env={**os.environ, "TF_CONFIG": json.dumps(tf_config)})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "TF_CONFIG is set, but strategy is 'default'" in result.stderr
    assert json.loads((work / TRAIN_RECORD).read_text())["distribution"]["workers"] == 1


#: (environment, what the one line must say) for settings of a cluster that cannot work, each refused before any
#: work starts; the last one starts TensorFlow (a $FER_LOGICAL_CPUS of 0 left it without a CPU).
BAD_CLUSTER_SETTINGS = [
    ({"TF_CONFIG": '{"cluster": {"worker": ["localhost:notaport"]}, "task": {"type": "worker", "index": 0}}'},
     'TF_CONFIG address "localhost:notaport" (job "worker") is not "host:port"'),
    ({"TF_CONFIG": '{"cluster": {"worker": ['}, "TF_CONFIG is not valid JSON"),
    ({"TF_CONFIG": "[]"}, "TF_CONFIG is a JSON list"),
    ({"TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 1}}'},
     'TF_CONFIG task index 1 is not a position in job "worker" (0 to 0)'),
    ({"FER_CLUSTER_TIMEOUT": "abc"}, "FER_CLUSTER_TIMEOUT='abc' is not a number of seconds above 0"),
    ({"FER_CLUSTER_TIMEOUT": "0"}, "FER_CLUSTER_TIMEOUT='0' is not a number of seconds above 0"),
    ({"FER_CLUSTER_TIMEOUT": "-5"}, "FER_CLUSTER_TIMEOUT='-5' is not a number of seconds above 0"),
    ({"FER_LOGICAL_CPUS": "0", "strategy": "mirrored"}, "FER_LOGICAL_CPUS='0' is not a whole number"),
]


def test_bad_cluster_settings_are_one_line_errors_before_any_work(tmp_path):
    """A TF_CONFIG TensorFlow cannot read, or a $FER_CLUSTER_TIMEOUT that is no wait, gave a traceback, a watchdog
    with no time left (the worker killed at once) or none at all (a wait for ever): one line naming the variable,
    status 2. Run in a fresh process: without the checks, TensorFlow would try to join these clusters."""
    work = make_split(tmp_path, {"train": 8, "val": 8, "test": 8})
    script = (
        "import contextlib, io, json, os, sys\n"
        "from fer_utils import train_command\n"
        "out = []\n"
        "for env in json.loads(sys.argv[2]):\n"
        "    strategy = env.pop('strategy', 'multi_worker')\n"
        "    os.environ.update(env)\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        rc = train_command.main(['--work-dir', sys.argv[1], '-p', 'model', 'seed_cnn',\n"
        "                                 '-p', 'strategy', strategy, '--quiet'])\n"
        "    out.append([rc, err.getvalue()])\n"
        "    for name in env:\n"
        "        os.environ.pop(name)\n"
        "print(json.dumps(out))\n")
    valid = {"TF_CONFIG": json.dumps(cluster.tf_configs(["127.0.0.1:1", "127.0.0.1:2"])[1])}
    cases = [{**valid, **env} if "strategy" not in env else env for env, _ in BAD_CLUSTER_SETTINGS]
    clean = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "FER_CLUSTER_TIMEOUT", "FER_LOGICAL_CPUS")}
    result = subprocess.run([sys.executable, "-c", script, str(work), json.dumps(cases)], capture_output=True,
                            text=True, timeout=120, env=clean)
    assert result.returncode == 0, result.stderr[-3000:]
    for (rc, err), (env, expected) in zip(json.loads(result.stdout.strip().splitlines()[-1]), BAD_CLUSTER_SETTINGS,
                                          strict=True):
        assert rc == 2 and expected in err, (env, rc, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
        assert "set " in err.split(expected)[-1], err  # and what to do
    assert not (work / TRAIN_RECORD).exists()


def test_waiting_for_workers_has_a_timeout_that_says_what_it_waited_for(tmp_path):
    import sys as _sys

    procs = [subprocess.Popen([_sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"worker\(s\) \[0, 1\] were still training after 1 s .* all stopped"):
        cluster.wait_for_workers(procs, timeout=1)
    assert time.monotonic() - started < 30 and all(p.poll() is not None for p in procs)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_wait_stops_every_worker(error):
    """Ctrl-C while waiting, or an interrupt that surfaced as another error ('release unlocked lock'): no worker
    is left training alone."""
    import sys as _sys

    procs = [subprocess.Popen([_sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]

    class Interrupted:  # the first worker's wait is interrupted
        def wait(self, timeout=None):
            raise error("release unlocked lock")

        def poll(self):
            return 0

    with pytest.raises(error):
        cluster.wait_for_workers([Interrupted(), *procs], timeout=60)
    assert all(p.poll() is not None for p in procs)


def test_a_cluster_that_cannot_form_gives_up_in_one_line(tmp_path, small_split):
    """Worker 1 of two, whose peer never starts: no endless wait; one line naming the cluster, and it stops itself
    with the documented status 1 (training could not go on), not killed by its watchdog (137: TensorFlow holds the
    interpreter while it waits and catches SIGTERM)."""
    work = copy_of(small_split, tmp_path)
    ports = cluster.free_ports(2)
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": 1}}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fer_utils", "train", "--work-dir", str(work), *SETTINGS,
                             "-p", "epochs", "1", "-p", "strategy", "multi_worker", "--quiet"], capture_output=True,
                            text=True, timeout=240, env={**os.environ, "TF_CONFIG": json.dumps(tf_config),
                                                         "FER_CLUSTER_TIMEOUT": "10"})
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])  # train_command.EXIT_STATUS[1]
    assert train_command.CLUSTER_TIMEOUT_EXIT == 1
    assert time.monotonic() - started < 200
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: the cluster in TF_CONFIG (workers 127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]}; this is worker 1) "
        "did not form and take its first training step within 10 s, so this worker was stopped")
    assert not (work / TRAIN_RECORD).exists()
