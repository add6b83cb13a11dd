"""The quick setting: the whole chain on a small sample, to try the notebooks in minutes; or the main job.

    python benchmarks/quick_run.py [--data-dir D] [--work-dir W] [--max-per-class 50] [--faces 2000]
    python benchmarks/quick_run.py --main-job [--data-dir D] [--work-dir W]

Runs ``python -m fer_utils run -p max_per_class N -p faces F`` (notebook 02 keeps at most N usable faces per
emotion, so every later notebook works on that sample; notebook 08 generates F faces) in a fresh work folder,
and writes each notebook's seconds to ``benchmarks/results/quick_run.json``: the figures each notebook's
header quotes for its quick run. The models it trains are for trying the code, not for their scores.

``--main-job`` runs the README's main job instead (``python -m fer_utils run``, every default) and writes
``benchmarks/results/main_job.json``: each notebook's seconds, the work folder's size and the test metrics, the
figures of the first-hour target (at most 8 minutes and 400 MB on 2 quiet cores). Unlike ``run --publish`` it
leaves the committed notebooks alone.
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

from fer_utils.runner import published_record
from fer_utils.workfolder import machine_info

RESULTS = Path(__file__).resolve().parent / "results"
QUICK = {"max_per_class": 50, "faces": 2000}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("FER_DATA_DIR"), help="the dataset (default: $FER_DATA_DIR)")
    ap.add_argument("--work-dir", help="an empty or new folder for the run (default: a temporary folder)")
    ap.add_argument("--max-per-class", type=int, help="notebook 02: usable faces kept per emotion (default 50)")
    ap.add_argument("--faces", type=_checks.positive_int, help="notebook 08: faces to generate (default 2000)")
    ap.add_argument("--main-job", action="store_true", help="the README's main job (every default) instead of the "
                    "quick setting; writes main_job.json")
    ap.add_argument("--timeout", type=_checks.positive_int,
                    help="seconds the whole run may take (default 1800, or 3600 with --main-job)")
    _checks.add_out(ap, RESULTS / "<quick_run or main_job>.json", "the JSON file the figures go to (default: "
                    "benchmarks/results/quick_run.json, or main_job.json with --main-job)", metavar="FILE")
    args = ap.parse_args(argv)
    if args.main_job and (args.max_per_class is not None or args.faces is not None):
        ap.error("--main-job runs every default: leave out --max-per-class and --faces")
    name = "main_job" if args.main_job else "quick_run"
    args.timeout = args.timeout or (3600 if args.main_job else 1800)
    if args.out == RESULTS / "<quick_run or main_job>.json":
        args.out = RESULTS / f"{name}.json"
    if not args.data_dir:
        ap.error("no dataset: pass --data-dir or set $FER_DATA_DIR")
    _checks.out_file(args.out, what="a JSON file for the figures")
    if args.work_dir:
        _checks.out_folder(args.work_dir, "--work-dir", "an empty or new folder for the run")
    root = _checks.dataset(args.data_dir, download=False).root
    for path, option in ((args.out, "--out"), (args.work_dir, "--work-dir")):
        if path:
            _checks.outside(path, root, option)
    with tempfile.TemporaryDirectory(prefix="fer-quick-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp) / "work"
        parameters = {} if args.main_job else {key: QUICK[key] if value is None else value for key, value in
                                               (("max_per_class", args.max_per_class), ("faces", args.faces))}
        command = [sys.executable, "-m", "fer_utils", "run", "--data-dir", args.data_dir, "--work-dir", str(work)]
        for key, value in parameters.items():
            command += ["-p", key, str(value)]
        t0 = time.perf_counter()
        try:
            done = subprocess.run(command, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            print(f"error: the run took over {args.timeout} s (--timeout)", file=sys.stderr)
            return 1
        wall = time.perf_counter() - t0
        if done.returncode:
            print(f"error: the run failed (exit {done.returncode}); see its output above", file=sys.stderr)
            return done.returncode
        record = published_record(work)
        metrics = json.loads((work / "metrics.json").read_text())
    seconds = {notebook: info["seconds"] for notebook, info in record["notebooks"].items()}
    result = {"benchmark": name, "parameters": parameters, "run": record["id"], "notebook_seconds": seconds,
              "total_seconds": round(sum(seconds.values()), 1), "wall_seconds": round(wall, 1),
              "disk_mb_total": record["disk_mb_total"], "disk_mb": record["disk_mb"],
              "test_metrics": {key: round(metrics[key], 4) for key in ("accuracy", "macro_f1", "balanced_accuracy")},
              "machine": machine_info(),
              "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    width = max(map(len, seconds))
    for notebook, s in seconds.items():
        print(f"{notebook:{width}s} {s:7.1f} s")
    print(f"{'total':{width}s} {result['total_seconds']:7.1f} s, {result['disk_mb_total']:.0f} MB  "
          f"({parameters or 'the main job'}; written to {args.out.name})")
    return 0


if __name__ == "__main__":
    _checks.stop_as_interrupt()  # kill, timeout: temporary folders are removed as on Ctrl-C
    sys.exit(main())
