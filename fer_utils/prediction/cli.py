"""``python -m fer_utils predict PATH... [--model M] [--format json|csv] [--output F] [--annotate DIR]
[--detection auto|detect|whole] [--detector haar|mtcnn]``.

The results (JSON or CSV) go to stdout or ``--output``; everything else — which model, warnings about
records that describe another model, what was annotated, counts and time — goes to stderr.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fer_utils.prediction.annotation import check_annotate_dir, write_annotated
from fer_utils.prediction.detection import (
    DEFAULT_DETECTOR,
    DEFAULT_MARGIN,
    DEFAULT_MIN_FACE,
    DETECTION_MODES,
    DETECTORS,
    check_detector,
)
from fer_utils.prediction.images import collect_inputs
from fer_utils.prediction.inference import (
    PREDICTED,
    STATUSES,
    load_and_announce,
    predict,
    summary,
    to_flat,
    to_records,
)
from fer_utils.workfolder import write_csv

MAX_LISTED = 20  # inputs without an annotated copy listed one per line on stderr


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_utils predict",
        description="Predict the emotion of every face in photos (one row per face).",
        epilog="Statuses: " + ", ".join(STATUSES) + ". Exit code 0 when it ran (per-file problems are in "
               "the output), 1 when no input got a prediction, 2 for usage errors or a missing model.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="photos or folders (walked for image files)")
    parser.add_argument("--model", help="a .keras file (default: <work_dir>/model.keras; "
                                        "work_dir = $FER_WORK_DIR or work/)")
    parser.add_argument("--format", choices=("json", "csv"), default="json", help="output format (default json)")
    parser.add_argument("--output", "-o", help="write the results to this file instead of stdout")
    parser.add_argument("--annotate", metavar="DIR", help="write copies with boxes and labels into DIR")
    parser.add_argument("--detection", choices=DETECTION_MODES, default="auto",
                        help="auto: detect faces, else use the whole image (flagged); detect: faces only; "
                             "whole: each image is one face (default auto)")
    parser.add_argument("--detector", choices=DETECTORS, default=DEFAULT_DETECTOR,
                        help="face detector for auto/detect: haar (OpenCV's cascade) or mtcnn (a CNN cascade, "
                             f"better on turned faces; benchmarks/results/detectors.md) (default {DEFAULT_DETECTOR})")
    parser.add_argument("--min-face", type=float, default=DEFAULT_MIN_FACE,
                        help="smallest face to detect, as a fraction of the shorter side (default 0.1)")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                        help="crop margin per side, as a fraction of the face box (default 0.1)")
    parser.add_argument("--batch-size", type=int, default=64)
    return parser


def _report_annotated(written, out_dir: str) -> None:
    print(f"{len(written)} annotated copies in {out_dir}", file=sys.stderr)
    if written.skipped:
        print(f"{len(written.skipped)} inputs not drawn:", file=sys.stderr)
        for file, why in list(written.skipped.items())[:MAX_LISTED]:
            print(f"  {file}: {why}", file=sys.stderr)
        if len(written.skipped) > MAX_LISTED:
            print(f"  … and {len(written.skipped) - MAX_LISTED} more", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fer_utils predict PATH... [--model M] [--format json|csv] [--annotate DIR]``."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not 0 < args.min_face <= 1 or args.margin < 0 or args.batch_size < 1:
        parser.error("--min-face must be in (0, 1], --margin >= 0 and --batch-size >= 1")
    if args.annotate:
        try:
            check_annotate_dir(args.annotate, args.paths)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        if args.detection != "whole":
            check_detector(args.detector)
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    loaded = load_and_announce(args.model)
    if loaded is None:
        return 2
    start = time.perf_counter()
    items = collect_inputs(args.paths, exclude=[args.annotate] if args.annotate else ())
    results = predict(loaded, items, detection=args.detection, min_face=args.min_face, margin=args.margin,
                      batch_size=args.batch_size, detector=args.detector)
    elapsed = time.perf_counter() - start
    if args.format == "json":  # a JSON list, one face per line
        text = "[\n" + ",\n".join("  " + json.dumps(r) for r in to_records(results)) + "\n]\n"
    else:
        buffer = io.StringIO()
        write_csv(to_flat(results, loaded.record.class_names), buffer, float_format="%.6g",
                  quoting=csv.QUOTE_MINIMAL)  # names starting with = + - @ get a ' (safe in a spreadsheet)
        text = buffer.getvalue()
    if args.output:
        try:
            Path(args.output).write_text(text)
        except OSError as err:
            print(f"error: cannot write {args.output}: {err}", file=sys.stderr)
            return 2
    else:
        sys.stdout.write(text)
    if args.annotate:
        _report_annotated(write_annotated(results, args.annotate, args.paths), args.annotate)
    counts = ", ".join(f"{n} {s}" for s, n in summary(results)["files"].items())
    print(f"{results.file.nunique()} inputs ({counts}) in {elapsed:.1f} s", file=sys.stderr)
    return 0 if results.status.isin(PREDICTED).any() else 1
