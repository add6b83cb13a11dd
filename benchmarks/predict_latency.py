"""Warm latency of predicting one photo (read + face detection + preprocessing + model) and throughput on a folder.

    python benchmarks/predict_latency.py [--work-dir W] [--model M] [--photo P ...] [--folder F] [--runs 50]
                                         [--out benchmarks/results/predict_latency.json]

Uses the trained model of the work folder (``<work_dir>/model.keras``, work_dir = ``$FER_WORK_DIR`` or
``work/``). Photos default to the Grace Hopper portrait matplotlib ships (600×512, one detectable face)
and the first image of the dataset's unlabelled ``test/`` folder (a tight crop: MTCNN finds its face, where
a detector finds none the whole image is used); the folder defaults to that ``test/`` folder ($FER_DATA_DIR). Target:
median ≤ 50 ms per photo on a CPU. Prints the figures and writes them, with the machine, its load average
before and after, the model and the photos, to ``--out`` (by default ``benchmarks/results/predict_latency.json``,
the record the README quotes, which each run replaces: give ``--out`` elsewhere for a trial of your own).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import _checks
import matplotlib.cbook
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _load_average() -> float | None:
    """The 1-minute load average (None where the system has none, e.g. Windows): others' work on a shared
    machine shows in it."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _percentile(values, q):
    return float(np.percentile(np.asarray(values) * 1000, q))


def time_photo(fer, photo, runs: int, warmup: int = 5) -> dict:
    from fer_utils import prediction as P

    for _ in range(warmup):
        P.predict(fer, photo)
    total, parts = [], {"read": [], "detect": [], "preprocess": [], "model": []}
    for _ in range(runs):
        start = time.perf_counter()
        rows = P.predict(fer, photo)
        total.append(time.perf_counter() - start)
    for _ in range(max(5, runs // 5)):  # the same steps, one by one, to show where the time goes
        t0 = time.perf_counter()
        im = P.read_image(photo)
        pixels = P.as_trained(photo, fer.record.channels, im)
        t1 = time.perf_counter()
        boxes = P.detect_faces(im) or [[0, 0, im.width, im.height]]
        t2 = time.perf_counter()
        batch = P.preprocess_faces([pixels.crop(P.crop_box(b, im.size)) for b in boxes], fer.record)
        t3 = time.perf_counter()
        fer(batch)
        t4 = time.perf_counter()
        for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[key].append(value)
    return {"photo": Path(photo).name, "status": rows.status.iloc[0], "faces": len(rows),
            "median_ms": _percentile(total, 50), "p90_ms": _percentile(total, 90),
            **{f"{k}_ms": statistics.median(v) * 1000 for k, v in parts.items()}}


def main(argv=None) -> int:
    from fer_utils import data, import_tensorflow, workfolder

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir")
    parser.add_argument("--model", help="a .keras file (default <work_dir>/model.keras)")
    parser.add_argument("--photo", action="append", help="photo to time (repeatable)")
    parser.add_argument("--folder", help="folder for throughput (default: the dataset's test/)")
    parser.add_argument("--data-dir", help="dataset root (default $FER_DATA_DIR)")
    parser.add_argument("--runs", type=_checks.positive_int, default=50)
    _checks.add_out(parser, RESULTS / "predict_latency.json", "where the figures are written (JSON; default: "
                    "the committed record, replaced)", "FILE")
    args = parser.parse_args(argv)
    _checks.out_file(args.out)
    missing = [photo for photo in args.photo or () if not Path(photo).is_file()]
    if missing:
        _checks.refuse(f"--photo {missing[0]}: no such file; name a photo to time")
    if args.folder and not Path(args.folder).is_dir():
        _checks.refuse(f"--folder {args.folder}: no such folder; name a folder of photos, or leave --folder out for "
                       "the dataset's test/")
    if args.folder and args.data_dir:
        _checks.refuse("--folder and --data-dir both name the photos for the throughput run: give one")
    folder = Path(args.folder) if args.folder else None
    if folder is None and (args.data_dir or os.environ.get("FER_DATA_DIR")):  # a dataset named must be there
        folder = _checks.dataset(args.data_dir, download=False).root / "test"
        _checks.outside(args.out, folder.parent)
    elif folder is None:  # none named: the download cache's, if there is one
        try:
            folder = data.get_dataset(download=False).root / "test"
            _checks.outside(args.out, folder.parent)
        except data.DatasetError as err:
            print(f"(no dataset for the throughput run: {err})")

    tf, keras = import_tensorflow()
    from fer_utils import prediction as P

    try:
        fer = P.load_model(args.model, work_dir=args.work_dir)
    except P.ModelLoadError as err:
        _checks.refuse(f"{'--model' if args.model else '--work-dir'}: {err}")
    info, load_before = workfolder.machine_info(), _load_average()
    print(f"machine: {info['processor']}, {os.cpu_count()} logical cores, TF {tf.__version__} "
          f"(intra-op threads {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}), "
          f"Keras {keras.__version__}")
    p = fer.record
    print(f"model: {workfolder.display_path(fer.path, args.work_dir or os.environ.get('FER_WORK_DIR'))} "
          f"({fer.model.name}, {p.image_size[0]}×{p.image_size[1]} {p.color_mode}, "
          f"{fer.model.count_params():,} parameters)")

    photos = args.photo or [matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)]
    if not args.photo and folder is not None and folder.is_dir():
        photos.append(P.collect_inputs([folder])[0])

    print(f"\nwarm latency of one photo, {args.runs} runs (detection auto, batch of the photo's faces):")
    print(f"{'photo':<22}{'status':<22}{'faces':>5}{'median':>9}{'p90':>8}   read / detect / preprocess / model")
    record = {"benchmark": "predict_latency", "runs": args.runs, "target_ms": 50,
              "model": {"name": fer.model.name, "image_size": list(p.image_size), "color_mode": p.color_mode,
                        "parameters": int(fer.model.count_params()), "sha256": workfolder.sha256_of(fer.path),
                        "path": workfolder.display_path(fer.path, args.work_dir or os.environ.get("FER_WORK_DIR"))},
              "photos": []}
    for photo in photos:
        r = {k: round(v, 2) if isinstance(v, float) else v for k, v in time_photo(fer, photo, args.runs).items()}
        record["photos"].append(r)  # printed as recorded
        print(f"{r['photo']:<22}{r['status']:<22}{r['faces']:>5}{r['median_ms']:>7.1f}ms{r['p90_ms']:>6.1f}ms   "
              f"{r['read_ms']:.1f} / {r['detect_ms']:.1f} / {r['preprocess_ms']:.1f} / {r['model_ms']:.1f} ms")

    if folder is not None and folder.is_dir():
        items = P.collect_inputs([folder])
        P.predict(fer, items[:8])  # warm up
        start = time.perf_counter()
        results = P.predict(fer, items)
        elapsed = time.perf_counter() - start
        counts = ", ".join(f"{n} {s}" for s, n in P.summary(results)["files"].items())
        faces = int(results.status.isin(P.PREDICTED).sum())
        t = {"folder": workfolder.display_path(folder), "photos": len(items), "faces": faces,
             "seconds": round(elapsed, 2), "photos_per_s": round(len(items) / elapsed, 1),
             "faces_per_s": round(faces / elapsed, 1)}
        record["throughput"] = t
        print(f"\nthroughput on {t['folder']} ({len(items)} photos: {counts}):\n"
              f"  {t['photos_per_s']:.1f} photos/s, {t['faces_per_s']:.1f} faces/s ({t['seconds']:.1f} s, batches of "
              "64 faces)")
    record["load_average_before_after"] = [load_before, _load_average()]
    workfolder.write_record(args.out, record)  # adds the machine and the time
    print(f"\nwritten: {workfolder.display_path(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
