"""Training throughput on one device, on two mirrored devices and on two workers, through ``training.train``.

    python benchmarks/scale.py [--work-dir W] [--images 8000] [--epochs 3] [--batch-size 64] [--model seed_cnn]

Generates a class-folder dataset of ``--images`` training faces (48×48, ``data.write_synthetic_dataset``)
in ``<work_dir>/scale-benchmark/``, then trains the same model on it, each run in a fresh process
(``python -m fer_utils train``), as:

- ``1 device, float32`` and ``1 device, auto precision`` (bfloat16 on CPUs with bfloat16 instructions,
  float16 on a GPU): the default strategy;
- ``mirrored``: ``MirroredStrategy`` over this machine's GPUs, or over 2 logical CPU devices
  (``FER_LOGICAL_CPUS=2``) when it has none;
- ``2 workers``: ``MultiWorkerMirroredStrategy`` with two worker processes on 127.0.0.1 (``TF_CONFIG``).

``batch_size`` is per replica, so the global batch grows with the replicas. Images/s are training images
per second of the steady epochs (the first, which fills the cache and traces the graph, is left out). Peak
memory is the chief process's resident memory. Writes ``benchmarks/results/scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _checks

RESULTS = Path(__file__).resolve().parent / "results"


def run_one(work: Path, name: str, settings: list[str], env: dict | None = None, workers: int = 1) -> dict:
    from fer_utils import cluster
    from fer_utils.workfolder import MODELS_DIR, TRAIN_RECORD

    run_name = name.replace(" ", "-").replace(",", "")
    args = ["--work-dir", str(work), "--run-name", run_name, "--quiet", *settings]
    t0 = time.perf_counter()
    if workers == 1:
        result = subprocess.run([sys.executable, "-m", "fer_utils", "train", *args], capture_output=True, text=True,
                                env={**os.environ, **(env or {})})
        codes, output = [result.returncode], result.stdout + result.stderr
    else:
        logs = work / "logs" / run_name
        procs = cluster.start_local_workers([*args, "-p", "strategy", "multi_worker"], workers=workers, log_dir=logs,
                                           env=env)
        codes = cluster.wait_for_workers(procs, timeout=3600, log_dir=logs)
        output = (logs / "worker-0.log").read_text()
    wall = time.perf_counter() - t0
    if codes != [0] * len(codes):
        raise RuntimeError(f"{name} failed ({codes}):\n{output[-3000:]}")
    record = json.loads((work / MODELS_DIR / run_name / TRAIN_RECORD).read_text())
    d = record["distribution"]
    return {"name": name, "strategy": d["strategy"], "workers": d["workers"], "replicas": d["replicas"],
            "devices": d["devices"], "precision": record["precision"], "global_batch_size": d["global_batch_size"],
            "images_per_second": record["images_per_second"], "seconds_per_epoch": record["seconds_per_epoch"],
            "first_epoch_seconds": record["first_epoch_seconds"], "peak_memory": record["memory"],
            "best_val_accuracy": round(record["best"].get("val_accuracy", float("nan")), 4),
            "wall_seconds": round(wall, 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", help="default: $FER_WORK_DIR, else work/")
    parser.add_argument("--images", type=_checks.positive_int, default=8000, help="generated training faces")
    parser.add_argument("--epochs", type=_checks.positive_int, default=3)
    parser.add_argument("--batch-size", type=_checks.positive_int, default=64, help="per replica")
    parser.add_argument("--model", default="seed_cnn")
    _checks.add_out(parser, RESULTS / "scale.json", "the JSON file the figures go to", metavar="FILE")
    args = parser.parse_args(argv)
    _checks.out_file(args.out, what="a JSON file for the figures")
    if args.work_dir:
        _checks.out_folder(args.work_dir, "--work-dir", "a work folder (its scale-benchmark/ is made and removed)")
    from fer_utils import training

    try:  # every run's settings, before any face is generated
        training.TrainConfig(model=args.model, image_size=48, epochs=args.epochs, batch_size=args.batch_size)
    except ValueError as err:
        _checks.refuse(str(err))

    from fer_utils.workfolder import get_work_dir

    work = get_work_dir(args.work_dir) / "scale-benchmark"
    try:
        code = _measure(args, argv, work)
    except BaseException as err:  # Ctrl-C, kill or timeout: the generated faces are the script's own
        if isinstance(err, KeyboardInterrupt) or _checks.stop_asked():  # (an interrupt may surface as another error)
            shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)  # kept after an error: the workers' logs there say what went wrong
    return code


def _measure(args, argv, work: Path) -> int:
    from fer_utils import data, training
    from fer_utils.workfolder import SPLIT_DIR, machine_info, write_record

    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    for i, (split, n) in enumerate({"train": args.images, "val": max(64, args.images // 10), "test": 16}.items()):
        data.write_synthetic_dataset(work / SPLIT_DIR / split, "folders", n_images=n, size=48, seed=i)
    generate_seconds = time.perf_counter() - t0
    print(f"generated {args.images:,} training faces in {generate_seconds:.0f} s", flush=True)

    base_config = training.TrainConfig(model=args.model, image_size=48, epochs=args.epochs, batch_size=args.batch_size)
    settings = base_config.to_parameters()
    device = training.device_summary()
    gpus = "GPU" in device
    split_cpu = None if gpus else {"FER_LOGICAL_CPUS": "2"}  # without GPUs: mirror over 2 logical CPU devices
    plan = [("1 device, float32", ["-p", "precision", "float32"], None, 1),
            ("1 device, auto precision", [], None, 1),
            ("mirrored, auto precision", ["-p", "strategy", "mirrored"], split_cpu, 1),
            ("2 workers, auto precision", [], None, 2)]
    if gpus:  # two worker processes would share one GPU's memory: the multi-worker run is for CPUs or clusters
        plan = plan[:3]
    runs = []
    for name, extra, env, workers in plan:
        row = run_one(work, name, [*settings, *extra], env, workers)
        runs.append(row)
        print(f"{name:28s} {row['replicas']} replica(s) {row['precision']:15s} global batch "
              f"{row['global_batch_size']:4d}  {row['images_per_second']:8.0f} images/s  "
              f"peak {row['peak_memory']['peak_rss_mb']:.0f} MB", flush=True)
    base = runs[1]["images_per_second"]
    for row in runs:
        row["speedup_vs_1_device_auto"] = round(row["images_per_second"] / base, 2)
    result = {"benchmark": "scale", "command": "python benchmarks/scale.py " + " ".join(argv or sys.argv[1:]),
              "device": device, "machine": machine_info(),
              "settings": {"model": args.model, "image_size": 48, "training_images": args.images, "epochs": args.epochs,
                           "batch_size_per_replica": args.batch_size, "generate_seconds": round(generate_seconds, 1)},
              "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_record(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    _checks.stop_as_interrupt()  # kill, timeout: temporary folders are removed as on Ctrl-C
    sys.exit(main())
