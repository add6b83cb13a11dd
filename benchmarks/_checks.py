"""What every benchmark script checks before any work starts: the dataset it reads is there, and the place its
``--out`` names can be written (and is not inside the dataset, which is only ever read).

A problem is one line on stderr, ``error: what was wrong, which option or variable, what to do``, and the
script exits with status 2, as argparse does for a bad option. A missing dataset is said in ``fer_utils.data``'s
own words (its ``DatasetError``). The scripts import this module from their folder, which is on ``sys.path``
when they run as ``python benchmarks/<name>.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} is below {least}")
    return value


def positive_int(text: str) -> int:
    """An ``argparse`` type: a whole number of at least 1 (a count of faces, runs, epochs or seconds), refused as a
    usage error before any work otherwise."""
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    """An ``argparse`` type: a whole number of at least 0."""
    return _whole(text, 0)


def refuse(message: str) -> NoReturn:
    """``error: message`` on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def stop_as_interrupt() -> None:
    """Make SIGTERM (``kill``, ``timeout``, a scheduler) stop the script as Ctrl-C does, so that its temporary
    folders are removed and its worker processes stopped on the way out (SIGKILL, which no program can catch,
    still leaves them). Called when a script runs as a script, never on import or from ``main()``, so that a
    process that imports a benchmark (the tests) keeps its own SIGTERM handling. Ctrl-C goes the same way, and
    ``stop_asked`` tells afterwards that a stop was asked: an interrupt raised inside a lock's code (a thread
    pool's) can surface as another error (``RuntimeError: release unlocked lock``)."""
    def stop(signum, frame):
        _STOP_ASKED.append(signum)
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    except ValueError:  # not the main thread: signals cannot be handled there
        pass


_STOP_ASKED: list[int] = []


def stop_asked() -> bool:
    """Whether Ctrl-C or SIGTERM reached a script that called ``stop_as_interrupt``."""
    return bool(_STOP_ASKED)


def add_out(parser: argparse.ArgumentParser, default: Path, help: str, metavar: str = "DIR") -> None:
    """``--out`` (``args.out``, a ``Path``), and ``--output`` as a hidden alias of it: the scripts once spelt
    the option either way, and commands written either way still work."""
    parser.add_argument("--out", type=Path, default=Path(default), metavar=metavar, help=help)
    parser.add_argument("--output", dest="out", type=Path, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def dataset(data_dir: str | os.PathLike | None = None, download: bool = True, option: str = "--data-dir"):
    """``data.get_dataset(data_dir)`` (``data_dir``, else ``$FER_DATA_DIR``, else the download cache, else a
    download when ``download``), or refuse with ``DatasetError``'s message."""
    from fer_utils import data

    try:
        return data.get_dataset(data_dir, download=download)
    except (data.DatasetError, OSError) as err:
        hint = "" if data_dir or os.environ.get("FER_DATA_DIR") or download else \
            f" Pass {option} DIR or set FER_DATA_DIR=DIR (the folder that holds images/ and data/legend.csv)."
        refuse(f"{err}{hint}")


def _parent_folder(path: Path, option: str, what: str) -> Path:
    """The existing folder a new ``path`` would be made in, or refuse."""
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        refuse(f"{option} {path}: {parent} is a file, not a folder; name {what} in a folder")
    if not parent.exists():
        refuse(f"{option} {path}: its folder {parent} does not exist; create it first, or name {what} in an "
               "existing folder")
    return parent


def _writable(folder: Path, path: Path, option: str, what: str) -> None:
    if not os.access(folder, os.W_OK | os.X_OK):
        refuse(f"{option} {path}: {folder} is read-only; name {what} in a folder you can write to")


def out_folder(path: str | os.PathLike, option: str = "--out", what: str = "a folder for the results") -> Path:
    """``path`` if it is a folder that can be written, or a new one in such a folder; else refuse."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        refuse(f"{option} {path} is a file, not a folder: name {what} (a new one is created)")
    _writable(path if path.is_dir() else _parent_folder(path, option, what), path, option, what)
    return path


def out_file(path: str | os.PathLike, option: str = "--out", what: str = "a file for the results") -> Path:
    """``path`` if it is a file (or a new one) in a folder that can be written; else refuse."""
    path = Path(path).expanduser()
    if path.is_dir():
        refuse(f"{option} {path} is a folder, not a file: name {what}")
    _writable(_parent_folder(path, option, what), path, option, what)
    if path.exists() and not os.access(path, os.W_OK):
        refuse(f"{option} {path} is read-only; name another file, or make it writable")
    return path


def outside(path: str | os.PathLike, root: str | os.PathLike, option: str = "--out") -> None:
    """Refuse a ``path`` that is, or lies inside, the dataset folder ``root``: the dataset is only ever read."""
    path, root = Path(path).expanduser().resolve(), Path(root).expanduser().resolve()
    if path == root or path.is_relative_to(root):
        refuse(f"{option} {path} is inside the dataset {root}, which is only ever read: choose a place outside it")


def earlier_results(out: Path, kind: type, what: str):
    """What an earlier run left in ``out`` (``kind()`` when there is no file), so that figures not measured again
    are kept; a file that is not JSON of that ``kind`` is refused: it is not this script's, and is left alone."""
    try:
        found = json.loads(out.read_text()) if out.exists() else kind()
    except (ValueError, OSError) as err:
        found = err
    if not isinstance(found, kind):
        why = found if isinstance(found, Exception) else f"it holds a JSON {type(found).__name__}"
        refuse(f"--out {out} is not {what} ({why}); name another file, or move that one away")
    return found
