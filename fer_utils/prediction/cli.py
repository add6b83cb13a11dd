"""``python -m fer_utils predict PATH... [--model M] [--format json|csv] [--output F] [--annotate DIR]
[--overwrite] [--detection auto|detect|whole] [--detector haar|mtcnn]``.

The results (JSON or CSV) go to stdout or ``--output``; everything else — which model, warnings about
records that describe another model, what was annotated, counts and time — goes to stderr.

It never replaces a file it was not told to write: before any work it refuses (status 2, one line saying
what to do) an ``--output`` that is an input photo or the model's file or record (by identity: a hard or
symbolic link to one too) or lies inside an input folder, an ``--annotate`` folder that is, holds or lies inside
an input, leads out through a symbolic link, or already holds the copies (``--overwrite`` replaces those), and an
output that cannot be written (a folder, a file for a folder, no write permission).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from fer_utils.data import dataset_holding
from fer_utils.prediction.annotation import (
    COPY_MODE,
    check_annotate_dir,
    existing_copies,
    plan_copies,
    replace_whole,
    writable_folder,
    write_annotated,
)
from fer_utils.prediction.detection import (
    DEFAULT_DETECTOR,
    DEFAULT_MARGIN,
    DEFAULT_MIN_FACE,
    DETECTION_MODES,
    DETECTORS,
    check_detector,
)
from fer_utils.prediction.images import collect_inputs, file_id, resolved
from fer_utils.prediction.inference import (
    BROKEN_MODEL,
    PREDICTED,
    STATUSES,
    default_model_path,
    load_and_announce,
    predict,
    summary,
    to_flat,
    to_records,
)
from fer_utils.workfolder import METRICS, write_csv

MAX_LISTED = 20  # inputs without an annotated copy (and copies, repeated names) listed one per line on stderr
NO_FACE_HINT = "try --detection auto or --detection whole"  # the no_face message names the options


def finite_float(text: str) -> float:
    """An option's number: a finite float (``nan``, ``inf`` are usage errors)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_utils predict",
        description="Predict the emotion of every face in photos (one row per face).",
        epilog="Statuses: " + ", ".join(STATUSES) + ". Exit code 0 when it ran (per-file problems are in "
               "the output), 1 when no input got a prediction, 2 for usage errors or a missing model.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="photos or folders (walked for image files)")
    parser.add_argument("--model", help="a .keras file (default: <work_dir>/model.keras)")
    parser.add_argument("--work-dir", help="the work folder whose model.keras is used, as for `run` (default: "
                                           "$FER_WORK_DIR, else work/)")
    parser.add_argument("--format", choices=("json", "csv"), default="json", help="output format (default json)")
    parser.add_argument("--output", "-o", help="write the results to this file instead of stdout")
    parser.add_argument("--annotate", metavar="DIR", help="write copies with boxes and labels into DIR (a folder "
                                                          "outside the inputs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace annotated copies already in the --annotate folder (never an input)")
    parser.add_argument("--detection", choices=DETECTION_MODES, default="auto",
                        help="auto: detect faces, else use the whole image (flagged); detect: faces only; "
                             "whole: each image is one face (default auto)")
    parser.add_argument("--detector", choices=DETECTORS,
                        help="face detector for auto/detect: haar (OpenCV's cascade) or mtcnn (a CNN cascade, "
                             f"better on turned faces; benchmarks/results/detectors.md) (default {DEFAULT_DETECTOR})")
    parser.add_argument("--min-face", type=finite_float,
                        help=f"smallest face to detect, as a fraction of the shorter side (default {DEFAULT_MIN_FACE})")
    parser.add_argument("--margin", type=finite_float,
                        help=f"crop margin per side around a detected face, as a fraction of its box (default "
                             f"{DEFAULT_MARGIN})")
    parser.add_argument("--batch-size", type=int, default=64)
    return parser


def _shown_copy(copy: Path, out_dir: str) -> str:
    """An annotated copy's path spelled from the ``--annotate`` folder as the user gave it."""
    try:
        return str(Path(out_dir) / Path(copy).relative_to(Path(out_dir).resolve()))
    except ValueError:
        return str(copy)


def _count(n: int, one: str, many: str) -> str:
    """``1 row``, ``2 rows``."""
    return f"{n} {one if n == 1 else many}"


def _report_annotated(written, out_dir: str) -> None:
    """The copies written, each with its input (those not named like their input first), and the inputs not drawn."""
    copies = sorted(written.copies.items(), key=lambda fc: Path(fc[1]).name == Path(fc[0]).name)
    print(f"{_count(len(written), 'annotated copy', 'annotated copies')} in {out_dir}{':' if copies else ''}",
          file=sys.stderr)
    for file, copy in copies[:MAX_LISTED]:
        print(f"  {file} → {_shown_copy(copy, out_dir)}", file=sys.stderr)
    if len(copies) > MAX_LISTED:
        print(f"  … and {len(copies) - MAX_LISTED} more, named after their inputs", file=sys.stderr)
    if written.skipped:
        print(f"{_count(len(written.skipped), 'input', 'inputs')} not drawn:", file=sys.stderr)
        for file, why in list(written.skipped.items())[:MAX_LISTED]:
            print(f"  {file}: {why}", file=sys.stderr)
        if len(written.skipped) > MAX_LISTED:
            print(f"  … and {len(written.skipped) - MAX_LISTED} more", file=sys.stderr)


def check_output(output: str, inputs: Sequence, files: Sequence, model: Sequence = ()) -> None:
    """Refuse (``ValueError``) an ``--output`` that cannot be written, is an input or one of the ``model``'s
    files (compared by identity) or lies inside an input folder."""
    path = Path(output)
    if path.is_dir():
        raise ValueError(f"--output {output} is a folder; name a file for the results.")
    if special_file(path):  # /dev/null, a named pipe, a process substitution's /dev/fd/63: written into, not replaced
        if not os.access(path, os.W_OK):
            raise ValueError(f"--output {output}: cannot write to it; name a file you can write to.")
        return
    held = dataset_holding(path)
    if held is not None:
        raise ValueError(f"Refusing --output {output}: it lies inside the dataset {held}, which is only ever read; "
                         "write the results elsewhere.")
    real = resolved(path)
    if real is None or not real.parent.is_dir():
        raise ValueError(f"--output {output}: its folder does not exist; create it or name a file in another.")
    if not writable_folder(real.parent)[0]:
        raise ValueError(f"--output {output}: cannot write into {real.parent}; name a file in a folder you can "
                         "write to.")
    same = file_id(path)
    for item in model:  # the model and its record, which this command reads
        if same is not None and file_id(item) == same:
            raise ValueError(f"Refusing --output {output}: it is the model's file {item}, which this command reads; "
                             "name another file for the results.")
    for item in [*inputs, *files]:
        if not isinstance(item, (str, os.PathLike)):
            continue
        if same is not None and file_id(item) == same:
            raise ValueError(f"Refusing --output {output}: it is the input {item}; name another file for the "
                             "results.")
        folder = resolved(item)
        if folder is not None and folder.is_dir() and real.is_relative_to(folder):
            raise ValueError(f"Refusing --output {output}: it lies inside the input folder {item}; write the "
                             "results elsewhere.")


def check_outputs(args, items: list) -> None:
    """Every refusal of ``--output`` and ``--annotate``, before any work (``ValueError``, one line)."""
    if args.output:
        model = Path(args.model).expanduser() if args.model else default_model_path(args.work_dir)
        check_output(args.output, args.paths, items,
                     model=[model, model.with_suffix(".json"), model.with_name(METRICS)])  # all three are read
    if args.annotate:
        check_annotate_dir(args.annotate, args.paths, items)
        import pandas as pd

        plan = plan_copies(pd.DataFrame({"file": items}), args.annotate, args.paths)
        real = resolved(Path(args.output)) if args.output else None
        # compared ignoring case too: on a case-insensitive disk (macOS, Windows) OUT.png and out.png are one file
        both = next((src for src, copy in plan.items()
                     if real is not None and str(copy.resolve()).casefold() == str(real).casefold()), None)
        if both is not None:
            raise ValueError(f"--output {args.output} is where the annotated copy of {both} would go (--annotate "
                             f"{args.annotate}); name another file for the results, or another --annotate folder.")
        there = existing_copies(plan)
        if there and not args.overwrite:
            raise ValueError(f"--annotate {args.annotate} already holds {len(there)} of the copies ({there[0]}"
                             f"{', ...' if len(there) > 1 else ''}); add --overwrite to replace them, or choose "
                             "another folder.")


def _report_repeats(repeats: list) -> None:
    """Names of a photo already named (again, through a link, or inside a folder also named): predicted once."""
    if not repeats:
        return
    print(f"{len(repeats)} of the names {'is' if len(repeats) == 1 else 'are'} a photo already named, which gets its "
          "rows once:", file=sys.stderr)
    for name, kept in repeats[:MAX_LISTED]:
        print(f"  {name}: the same file as {kept}", file=sys.stderr)
    if len(repeats) > MAX_LISTED:
        print(f"  … and {len(repeats) - MAX_LISTED} more", file=sys.stderr)


def _report_skipped(skipped: list) -> None:
    """What the named folders hold besides photos (other files, unreadable folders, a folder reached twice):
    said, never dropped without a word."""
    if not skipped:
        return
    print(f"{_count(len(skipped), 'entry', 'entries')} in the folders {'was' if len(skipped) == 1 else 'were'} not "
          "read (a file named itself on the command line is read whatever its name):", file=sys.stderr)
    for name, why in skipped[:MAX_LISTED]:
        print(f"  {name}: {why}", file=sys.stderr)
    if len(skipped) > MAX_LISTED:
        print(f"  … and {len(skipped) - MAX_LISTED} more", file=sys.stderr)


def encoded(text: str) -> bytes:
    """The results as UTF-8 bytes, the same on stdout and in ``--output``: a file name that is not valid UTF-8
    (its bytes decoded by Python as lone surrogates) is written with the escape the JSON output uses, ``\\udcff``
    for the byte ``0xff`` (``os.fsencode`` of the unescaped name gives the bytes back)."""
    return text.encode("utf-8", errors="backslashreplace")


def special_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is there and is neither a regular file nor a folder: a device (``/dev/null``), a named
    pipe, a socket."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def write_whole(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: into a new file beside it, then renamed over it (a file
    already there keeps its permissions; through a symbolic link, the file it names is replaced). A device or a
    pipe (``special_file``) is written into as it is."""
    if special_file(path):
        with open(path, "wb") as f:
            f.write(data)
        return
    target = resolved(path) or Path(path)
    mode = target.stat().st_mode & 0o777 if target.is_file() else COPY_MODE
    replace_whole(target, lambda f: f.write(data), mode, prefix=f".{target.name}.")


def _write_stdout(data: bytes) -> None:
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:  # a text-only stream (an IDE's console): the same characters
        sys.stdout.write(data.decode("utf-8"))
    else:
        buffer.write(data)
        buffer.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fer_utils predict PATH... [--model M] [--format json|csv] [--annotate DIR [--overwrite]]``."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    detecting = [option for option, value in (("--detector", args.detector), ("--min-face", args.min_face),
                                              ("--margin", args.margin)) if value is not None]
    if args.detection == "whole" and detecting:  # each would be ignored without a word
        named = ", ".join(detecting[:-1]) + " and " + detecting[-1] if len(detecting) > 1 else detecting[0]
        parser.error(f"{named} {'set' if len(detecting) > 1 else 'sets'} how faces are detected "
                     "and cropped, and --detection whole detects none (each image is one face); drop "
                     f"{'them' if len(detecting) > 1 else 'it'}, or use --detection auto or detect")
    args.detector = args.detector or DEFAULT_DETECTOR
    args.min_face = DEFAULT_MIN_FACE if args.min_face is None else args.min_face
    args.margin = DEFAULT_MARGIN if args.margin is None else args.margin
    wrong = [f"{option} {value} (it must be {rule})" for option, value, ok, rule in (
        ("--min-face", args.min_face, 0 < args.min_face <= 1, "in (0, 1]"),
        ("--margin", args.margin, args.margin >= 0, ">= 0"),
        ("--batch-size", args.batch_size, args.batch_size >= 1, ">= 1")) if not ok]
    if wrong:
        parser.error("; ".join(wrong))
    repeats: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    items = collect_inputs(args.paths, exclude=[args.annotate] if args.annotate else (), repeats=repeats,
                           skipped=skipped)
    try:
        check_outputs(args, items)
        if args.detection != "whole":
            check_detector(args.detector)
    except (ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    loaded = load_and_announce(args.model, work_dir=args.work_dir)
    if loaded is None:
        return 2
    start = time.perf_counter()
    results = predict(loaded, items, detection=args.detection, min_face=args.min_face, margin=args.margin,
                      batch_size=args.batch_size, detector=args.detector, no_face_hint=NO_FACE_HINT)
    elapsed = time.perf_counter() - start
    if args.format == "json":  # a JSON list, one face per line
        text = "[\n" + ",\n".join("  " + json.dumps(r, allow_nan=False) for r in to_records(results)) + "\n]\n"
    else:
        buffer = io.StringIO()
        write_csv(to_flat(results, loaded.record.class_names), buffer, float_format="%.6g",
                  quoting=csv.QUOTE_MINIMAL)  # names starting with = + - @ get a ' (safe in a spreadsheet)
        text = buffer.getvalue()
    data = encoded(text)  # before any file is opened: nothing can fail half-way for the text's sake
    if args.output:
        try:
            write_whole(args.output, data)
        except OSError as err:
            print(f"error: cannot write {args.output}: {err}", file=sys.stderr)
            return 2
    else:
        _write_stdout(data)
    if args.annotate:
        try:
            written = write_annotated(results, args.annotate, args.paths, overwrite=args.overwrite)
        except ValueError as err:  # the folder changed while predicting
            print(f"error: {err}", file=sys.stderr)
            return 2
        _report_annotated(written, args.annotate)
    broken = results.message[results.message.str.contains(BROKEN_MODEL, regex=False, na=False)]
    if len(broken):  # a broken model: said once, not only in every row
        print(f"error: {len(broken)} faces: {broken.iloc[0]}", file=sys.stderr)
    _report_repeats(repeats)
    _report_skipped(skipped)
    counts = ", ".join(f"{n} {s}" for s, n in summary(results)["files"].items())
    distinct = results.file.nunique()
    inputs = (f"{distinct + len(repeats)} inputs named, {distinct} distinct" if repeats
              else _count(distinct, "input", "inputs"))
    faces = int(results.status.isin(PREDICTED).sum())  # a photo of several faces has a row for each
    rows = (f"; {_count(len(results), 'row', 'rows')}, {_count(faces, 'face', 'faces')}"
            if len(results) != distinct else "")
    print(f"{inputs} ({counts}){rows} in {elapsed:.1f} s", file=sys.stderr)
    return 0 if results.status.isin(PREDICTED).any() else 1
