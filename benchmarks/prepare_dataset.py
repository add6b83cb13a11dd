"""Benchmark: prepare the full dataset (audit + manifest + split + class folders); prints the wall time.

    python benchmarks/prepare_dataset.py [--data-dir DIR] [--repeat 3]

Target: <= 60 s on 2 cores. Prepares into a temporary work folder, removed afterwards; writes what it measured to
``benchmarks/results/prepare_dataset.json`` (``--out``).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _checks

from fer_utils import folders, workfolder

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="dataset root (default: $FER_DATA_DIR, else the download cache)")
    parser.add_argument("--repeat", type=int, default=3)
    _checks.add_out(parser, RESULTS / "prepare_dataset.json", "the JSON file the figures go to", metavar="FILE")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    _checks.out_file(args.out, what="a JSON file for the figures")
    dataset = _checks.dataset(args.data_dir)
    _checks.outside(args.out, dataset.root)
    info = workfolder.machine_info()
    print(f"machine: {info['processor']}, {info['cpu_count']} cores; {dataset.describe()}")
    times, runs = [], []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as work:
            t0 = time.perf_counter()
            manifest = folders.prepare(dataset, work)
            times.append(time.perf_counter() - t0)
            stages = workfolder.read_record(f"{work}/prepare.json")["timings"]
        counts = manifest.split.value_counts().to_dict()
        runs.append({"seconds": round(times[-1], 2), "stages": stages, "rows": len(manifest), "splits": counts})
        print(f"run {i + 1}: {times[-1]:.1f} s (audit {stages['audit_s']:.1f} s, split {stages['split_s']:.1f} s, "
              f"folders {stages['folders_s']:.1f} s); rows {len(manifest):,}: {counts}")
    median = statistics.median(times)
    print(f"prepare_seconds median {median:.1f} (target <= 60 s)")
    workfolder.write_record(args.out, {"benchmark": "prepare_dataset", "dataset": dataset.describe(),
                                       "prepare_seconds_median": round(median, 1), "target_seconds": 60,
                                       "runs": runs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    _checks.stop_as_interrupt()  # kill, timeout: temporary folders are removed as on Ctrl-C
    sys.exit(main())
