"""``python -m fer_utils train``: notebook 05's training as one command (for GPUs, clusters and scripts).

Exit status (``EXIT_STATUS``): 0 trained; 1 training could not go on (it diverged, or the cluster did not form
and take its first step within ``$FER_CLUSTER_TIMEOUT``); 2 a bad input, found before any work starts (a setting,
the work folder, ``$TF_CONFIG``, ``$FER_CLUSTER_TIMEOUT``, ``$FER_LOGICAL_CPUS``), or a cluster that could not be
joined; 130 interrupted. Each error is one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

from fer_utils.parameters import parse_value, repeated_parameters


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_utils train",
        description="Train as notebook 05 does, in a work folder that notebooks 02–04 prepared (the class folders "
                    "and, if present, notebook 04's untrained.keras), with any TrainConfig setting changed by -p. "
                    "On a cluster, start the same command on every worker, each with its own TF_CONFIG and "
                    "-p strategy multi_worker; the chief (worker 0) writes the model.",
        epilog="exit status: " + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_STATUS.items()) + ".")
    parser.add_argument("--work-dir", help="the prepared work folder (default: $FER_WORK_DIR, else work/)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a TrainConfig field, e.g. -p epochs 3 -p strategy mirrored (repeatable)")
    parser.add_argument("--run-name", help="the folder under models/ (default: <model>-<size>px-<time>)")
    parser.add_argument("--quiet", action="store_true", help="no line per epoch")
    return parser


#: What each exit status of ``python -m fer_utils train`` means (``--help`` lists them).
EXIT_STATUS = {0: "trained",
               1: "training could not go on: it diverged, or the cluster did not form and take its first step "
                  "within $FER_CLUSTER_TIMEOUT",
               2: "a bad input found before any work started, or a cluster that could not be joined",
               130: "interrupted"}

#: Seconds a worker waits for its cluster to form and take the first training step (``$FER_CLUSTER_TIMEOUT``).
CLUSTER_TIMEOUT = 300

#: The exit status of a worker whose cluster did not form in time (``faulthandler``'s, see ``cluster_deadline``).
CLUSTER_TIMEOUT_EXIT = 1

#: Seconds past the deadline the watchdog process gives the worker to stop itself, before it kills it.
WATCHDOG_GRACE = 20


def cluster_timeout() -> float:
    """``$FER_CLUSTER_TIMEOUT`` in seconds (``CLUSTER_TIMEOUT`` when unset or empty), or a ``ValueError`` that says
    what was wrong and what to do."""
    text = os.environ.get("FER_CLUSTER_TIMEOUT", "").strip()
    if not text:
        return float(CLUSTER_TIMEOUT)
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"FER_CLUSTER_TIMEOUT={text!r} is not a number of seconds above 0: set it to how long a "
                         "worker may wait for its cluster to form and take its first step, e.g. "
                         f"FER_CLUSTER_TIMEOUT=600, or unset it for the default {CLUSTER_TIMEOUT} s.")
    return seconds


#: The watchdog process of ``cluster_deadline``. It reads the message line from its stdin, then waits ``seconds``
#: for more: the end of its stdin (the wait is over, or the worker ended) sends it away quietly; faulthandler's
#: dump (the worker's deadline passed: it is stopping itself) makes it print the message. Nothing at all in that
#: time (the backstop): it prints the message and stops the worker.
WATCHDOG = """
import os, select, signal, sys, time
pid, seconds = int(sys.argv[1]), float(sys.argv[2])
data = b""
while b"\\n" not in data:
    chunk = os.read(0, 65536)
    if not chunk:
        sys.exit(0)
    data += chunk
message, more = data.split(b"\\n", 1)
if not more and select.select([0], [], [], seconds)[0]:
    more = os.read(0, 65536)
    if not more:
        sys.exit(0)
os.write(2, message + b"\\n")
if more:
    sys.exit(0)
for sig in (signal.SIGTERM, signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        break
    time.sleep(5)
"""


class cluster_deadline:  # noqa: N801 - used like a function
    """Stop this worker, with one line saying what it waited for, when the cluster in ``$TF_CONFIG`` has not
    formed and taken its first training step within ``seconds``: it exits with status ``CLUSTER_TIMEOUT_EXIT``.

    While TensorFlow waits for the other workers it holds the interpreter, so no Python code of this process runs
    then, a thread's or a signal handler's. ``faulthandler``'s timer does not need it: at the deadline it writes
    its stack dump into the watchdog process's stdin and ends the process (status 1); the watchdog, seeing the
    dump, prints the one line. Should this process still run ``WATCHDOG_GRACE`` seconds later, the watchdog prints
    the line and kills it (TensorFlow catches SIGTERM, so SIGKILL follows). ``callback()`` is the Keras callback
    that ends the wait after the first step."""

    def __init__(self, seconds: float):
        import faulthandler
        import json
        import subprocess

        try:
            spec = json.loads(os.environ.get("TF_CONFIG") or "{}")
        except ValueError:
            spec = {}
        spec = spec if isinstance(spec, dict) else {}
        jobs = spec.get("cluster") if isinstance(spec.get("cluster"), dict) else {}
        workers = jobs.get("worker") if isinstance(jobs.get("worker"), list) else []
        workers = ", ".join(map(str, workers)) or "none named"
        task = spec.get("task") if isinstance(spec.get("task"), dict) else {}
        message = (f"error: the cluster in TF_CONFIG (workers {workers}; this is {task.get('type', '?')} "
                   f"{task.get('index', '?')}) did not form and take its first training step within {seconds:.0f} "
                   "s, so this worker was stopped. Start the same command on every worker, each with its own "
                   "TF_CONFIG, and check that each can reach the others' addresses ($FER_CLUSTER_TIMEOUT sets "
                   "the wait).")
        self.watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()),
                                          str(seconds + WATCHDOG_GRACE)], stdin=subprocess.PIPE, text=True)
        self.watchdog.stdin.write(message + "\n")
        self.watchdog.stdin.flush()
        faulthandler.dump_traceback_later(seconds, exit=True, file=self.watchdog.stdin)

    def cancel(self) -> None:
        import faulthandler

        if not self.watchdog.stdin.closed:
            faulthandler.cancel_dump_traceback_later()
            self.watchdog.stdin.close()
            self.watchdog.wait(timeout=10)

    def callback(self):
        from fer_utils import import_tensorflow

        _, keras = import_tensorflow()
        return keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: self.cancel())


def main(argv: list[str] | None = None) -> int:
    from fer_utils import cluster, models, pipelines, training
    from fer_utils.workfolder import SPLIT_DIR, UNTRAINED_MODEL, get_work_dir, require

    args = build_parser().parse_args(argv)
    repeated = repeated_parameters(args.parameter)
    if repeated:
        print(f"error: {repeated}", file=sys.stderr)
        return 2
    changes = {name: parse_value(value) for name, value in args.parameter}
    work = get_work_dir(args.work_dir, create=False)
    strategy = changes.get("strategy", "default")
    if os.environ.get("TF_CONFIG") and strategy != "multi_worker":
        print(f"note: TF_CONFIG is set, but strategy is {strategy!r}: training on this machine only "
              "(-p strategy multi_worker joins the cluster).", file=sys.stderr)
    deadline = None
    unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(training.TrainConfig)})
    if unknown:
        print(f"error: unknown training setting(s) {', '.join(unknown)}: -p takes the fields of TrainConfig "
              f"({', '.join(f.name for f in dataclasses.fields(training.TrainConfig))})", file=sys.stderr)
        return 2
    if work.exists() and not work.is_dir():
        print(f"error: the work folder {work} is a file: name the folder notebook 02 prepared (--work-dir)",
              file=sys.stderr)
        return 2
    try:
        require(work / SPLIT_DIR, "prepare", f"The class folders (split/) of {work}")
        if not os.access(work, os.W_OK | os.X_OK):  # the model, its records and the backup go there
            raise ValueError(f"the work folder {work} cannot be written (read-only): training writes the model, its "
                             "records and a backup there; make it writable, or copy it and train the copy "
                             "(--work-dir)")
        built = None
        if (work / UNTRAINED_MODEL).exists():  # notebook 04's model and its input: -p model X is refused too
            built = models.ModelRecord.read(work / UNTRAINED_MODEL)
            config = training.TrainConfig.from_model_record(built, **changes)  # refuses -p image_size 48 on 64 px
        else:
            config = training.TrainConfig(**changes)
        if config.strategy == "multi_worker":  # joining a cluster waits for every worker: not for ever
            seconds = cluster_timeout()
            if os.environ.get("TF_CONFIG"):
                cluster.check_tf_config()  # before TensorFlow reads it (without it, get_strategy says what to do)
            deadline = cluster_deadline(seconds)
        strategy_info = training.worker_info(training.get_strategy(config.strategy))  # a missing cluster fails here
        if strategy_info["workers"] == 1:  # mirrored replicas: every step gives each some faces (before any work)
            counts = pipelines.split_counts(work)
            for split in ("train", "val"):
                training.replica_batches(int(counts[split].sum()), config.batch_size * strategy_info["replicas"],
                                         strategy_info["replicas"], split)
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
