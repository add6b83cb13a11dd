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
    try:
        if strategy == "multi_worker":  # before anything starts TensorFlow: joining a cluster must come first
            training.get_strategy(strategy)
        require(work / SPLIT_DIR, "prepare", f"The class folders (split/) of {work}")
        built = None
        if (work / UNTRAINED_MODEL).exists() and "model" not in changes:  # notebook 04's model and its input
            built = models.ModelRecord.read(work / UNTRAINED_MODEL)
            config = training.TrainConfig.from_model_record(built, **changes)  # refuses -p image_size 48 on 64 px
        else:
            config = training.TrainConfig(**changes)
        training.get_strategy(config.strategy)  # a missing or unreachable cluster fails here, plainly
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if strategy == "mirrored" and training.worker_info(training.get_strategy(strategy))["replicas"] == 1:
        print("note: strategy 'mirrored' found one device (no GPU): set FER_LOGICAL_CPUS=2 to try it over two "
              "logical CPU devices.", file=sys.stderr)
    net = models.load(work / UNTRAINED_MODEL)[0] if built is not None else None
    try:
        result = training.train(config, work, model=net, run_name=args.run_name, show_progress=not args.quiet)
    except KeyboardInterrupt:
        print("\ninterrupted: run the same command again to resume after the last finished epoch.", file=sys.stderr)
        return 130
    d = result.record["distribution"]
    best = result.record["best"].get("val_accuracy", float("nan"))
    print(f"{d['task']}: {config.strategy}, {d['workers']} worker(s), {d['replicas']} replica(s), global batch "
          f"{d['global_batch_size']}; best epoch {result.record['best_epoch']}, val accuracy {best:.4f}; "
          f"{result.record['images_per_second']:.0f} training images/s"
          + (f"; model: {result.paths['model']}" if result.paths else " (not the chief: no files)"),
          flush=True)
    return 0
