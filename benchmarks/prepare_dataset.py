"""Benchmark: prepare the full dataset (audit + manifest + split + class folders); prints the wall time.

    python benchmarks/prepare_dataset.py [--data-dir DIR] [--repeat 3]

Target: <= 60 s on 2 cores. Writes into a temporary work folder, removed afterwards.
"""

import argparse
import statistics
import tempfile
import time

from fer_utils import data, folders, workfolder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="dataset root (default: $FER_DATA_DIR, else the download cache)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    dataset = data.get_dataset(args.data_dir)
    info = workfolder.machine_info()
    print(f"machine: {info['processor']}, {info['cpu_count']} cores; {dataset.describe()}")
    times = []
    for i in range(args.repeat):
        with tempfile.TemporaryDirectory() as work:
            t0 = time.perf_counter()
            manifest = folders.prepare(dataset, work)
            times.append(time.perf_counter() - t0)
            stages = workfolder.read_record(f"{work}/prepare.json")["timings"]
        counts = manifest.split.value_counts().to_dict()
        print(f"run {i + 1}: {times[-1]:.1f} s (audit {stages['audit_s']:.1f} s, split {stages['split_s']:.1f} s, "
              f"folders {stages['folders_s']:.1f} s); rows {len(manifest):,}: {counts}")
    print(f"prepare_seconds median {statistics.median(times):.1f} (target <= 60 s)")


if __name__ == "__main__":
    main()
