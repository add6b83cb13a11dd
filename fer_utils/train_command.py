"""``python -m fer_utils train``: notebook 05's training as one command (for GPUs, clusters and scripts)."""

from __future__ import annotations

import argparse
import os
import sys

from fer_utils.parameters import parse_value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_utils train",
        description="Train as notebook 05 does, in a work folder that notebooks 02–04 prepared (the class folders "
                    "and, if present, notebook 04's untrained.keras), with any TrainConfig setting changed by -p. "
                    "On a cluster, start the same command on every worker, each with its own TF_CONFIG and "
                    "-p strategy multi_worker; the chief (worker 0) writes the model.")
    parser.add_argument("--work-dir", help="the prepared work folder (default: $FER_WORK_DIR, else work/)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a TrainConfig field, e.g. -p epochs 3 -p strategy mirrored (repeatable)")
    parser.add_argument("--run-name", help="the folder under models/ (default: <model>-<size>px-<time>)")
    parser.add_argument("--quiet", action="store_true", help="no line per epoch")
    return parser


#: Seconds a worker waits for its cluster to form and take the first training step (``$FER_CLUSTER_TIMEOUT``).
CLUSTER_TIMEOUT = 300


#: The watchdog process of ``cluster_deadline``: it reads the message, then waits ``seconds`` for its stdin to
#: close (the wait is over, or the worker ended); if it does not, it prints the message and stops the worker.
WATCHDOG = """
import os, select, signal, sys, time
pid, seconds = int(sys.argv[1]), float(sys.argv[2])
message = sys.stdin.readline()
if select.select([sys.stdin], [], [], seconds)[0]:
    sys.exit(0)
sys.stderr.write(message)
sys.stderr.flush()
for sig in (signal.SIGTERM, signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        break
    time.sleep(5)
"""


class cluster_deadline:  # noqa: N801 - used like a function
    """Stop this worker, with one line saying what it waited for, when the cluster in ``$TF_CONFIG`` has not
    formed and taken its first training step within ``seconds``. A separate watchdog process keeps the time:
    while TensorFlow waits for the other workers it holds the interpreter, so no thread of this one could.
    ``callback()`` is the Keras callback that ends the wait after the first step."""

    def __init__(self, seconds: float):
        import json
        import subprocess

        spec = json.loads(os.environ.get("TF_CONFIG") or "{}")
        workers = ", ".join(spec.get("cluster", {}).get("worker", [])) or "none named"
        task = spec.get("task", {})
        message = (f"error: the cluster in TF_CONFIG (workers {workers}; this is {task.get('type', '?')} "
                   f"{task.get('index', '?')}) did not form and take its first training step within {seconds:.0f} "
                   "s, so this worker was stopped. Start the same command on every worker, each with its own "
                   "TF_CONFIG, and check that each can reach the others' addresses ($FER_CLUSTER_TIMEOUT sets "
                   "the wait).")
        self.watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(seconds)],
                                         stdin=subprocess.PIPE, text=True)
        self.watchdog.stdin.write(message + "\n")
        self.watchdog.stdin.flush()

    def cancel(self) -> None:
        if not self.watchdog.stdin.closed:
            self.watchdog.stdin.close()
            self.watchdog.wait(timeout=10)

    def callback(self):
        from fer_utils import import_tensorflow

        _, keras = import_tensorflow()
        return keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: self.cancel())


def main(argv: list[str] | None = None) -> int:
    from fer_utils import models, training
    from fer_utils.workfolder import SPLIT_DIR, UNTRAINED_MODEL, get_work_dir, require

    args = build_parser().parse_args(argv)
    changes = {name: parse_value(value) for name, value in args.parameter}
    work = get_work_dir(args.work_dir, create=False)
    strategy = changes.get("strategy", "default")
    if os.environ.get("TF_CONFIG") and strategy != "multi_worker":
        print(f"note: TF_CONFIG is set, but strategy is {strategy!r}: training on this machine only "
              "(-p strategy multi_worker joins the cluster).", file=sys.stderr)
    deadline = None
    try:
        require(work / SPLIT_DIR, "prepare", f"The class folders (split/) of {work}")
        built = None
        if (work / UNTRAINED_MODEL).exists():  # notebook 04's model and its input: -p model X is refused too
            built = models.ModelRecord.read(work / UNTRAINED_MODEL)
            config = training.TrainConfig.from_model_record(built, **changes)  # refuses -p image_size 48 on 64 px
        else:
            config = training.TrainConfig(**changes)
        if config.strategy == "multi_worker":  # joining a cluster waits for every worker: not for ever
            deadline = cluster_deadline(float(os.environ.get("FER_CLUSTER_TIMEOUT", CLUSTER_TIMEOUT)))
        training.get_strategy(config.strategy)  # a missing or unreachable cluster fails here, plainly
        training.check_run_name(work, args.run_name or None)  # before training, not after it
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        if deadline:
            deadline.cancel()
        print(f"error: {err}", file=sys.stderr)
        return 2
    if strategy == "mirrored" and training.worker_info(training.get_strategy(strategy))["replicas"] == 1:
        print("note: strategy 'mirrored' found one device (no GPU): set FER_LOGICAL_CPUS=2 to try it over two "
              "logical CPU devices.", file=sys.stderr)
    net = models.load(work / UNTRAINED_MODEL)[0] if built is not None else None
    try:
        result = training.train(config, work, model=net, run_name=args.run_name, show_progress=not args.quiet,
                                callbacks=[deadline.callback()] if deadline else ())
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume after the last finished epoch.", file=sys.stderr)
        return 130
    except training.TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if deadline:
            deadline.cancel()
    d = result.record["distribution"]
    best = result.record["best"].get("val_accuracy", float("nan"))
    print(f"{d['task']}: {config.strategy}, {d['workers']} worker(s), {d['replicas']} replica(s), global batch "
          f"{d['global_batch_size']}; best epoch {result.record['best_epoch']}, val accuracy {best:.4f}; "
          f"{result.record['images_per_second']:.0f} training images/s"
          + (f"; model: {result.paths['model']}" if result.paths else " (not the chief: no files)"),
          flush=True)
    return 0
