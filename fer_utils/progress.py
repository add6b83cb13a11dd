"""Progress in the terminal while ``python -m fer_utils run`` executes a notebook: the cell it is running and
the section that cell is in (``CellProgress``, for every notebook), and, in a notebook that trains, each epoch
and the time left, from ``<work_dir>/train_progress.jsonl`` (one JSON line per finished epoch, written by
``fer_utils.training``; ``TrainingProgress``)."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path


def parse_progress_line(line: str | bytes) -> dict | None:
    """One line of ``train_progress.jsonl`` as a dict; ``None`` for a blank, partial or garbled line."""
    try:
        entry = json.loads(line)
    except ValueError:  # also UnicodeDecodeError
        return None
    return entry if isinstance(entry, dict) else None


def _number(entry: dict, key: str) -> float | None:
    """``entry[key]`` if it is a finite number, else ``None`` (progress lines are read, never trusted)."""
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def time_left(entry: dict) -> float | None:
    """Seconds of training left after a progress entry: its ``eta_seconds``, else the mean pace so far times
    the epochs left; 0 after the last epoch; ``None`` when the entry does not say."""
    epoch, epochs = _number(entry, "epoch"), _number(entry, "epochs")
    if epoch is None or epochs is None:
        return None
    if epoch >= epochs:
        return 0.0
    eta = _number(entry, "eta_seconds")
    if eta is not None:
        return max(eta, 0.0)
    elapsed = _number(entry, "elapsed_seconds")
    if elapsed is not None and epoch > 0:
        return elapsed / epoch * (epochs - epoch)
    return None


def format_time_left(seconds: float) -> str:
    """``"~40 s left"``, ``"~2 min left"``, ``"~1 h 05 min left"``."""
    if seconds < 90:
        return f"~{max(1, round(seconds))} s left"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"~{minutes} min left"
    return f"~{minutes // 60} h {minutes % 60:02d} min left"


def _epoch_and_eta(entry: dict) -> tuple[str, str]:
    epoch, epochs = _number(entry, "epoch"), _number(entry, "epochs")
    if epoch is None:
        where = "training"
    else:
        where = f"epoch {epoch:.0f}" + (f"/{epochs:.0f}" if epochs is not None else "")
    left = time_left(entry)
    eta = "" if left is None else "training done" if left == 0 else format_time_left(left)
    return where, eta


def progress_postfix(stem: str, entry: dict) -> str:
    """The notebooks bar's postfix during training, e.g. ``05_train_model: epoch 3/14, val_acc 0.842, ~2 min
    left``."""
    where, eta = _epoch_and_eta(entry)
    val_acc = _number(entry, "val_accuracy")
    parts = [where, f"val_acc {val_acc:.3f}" if val_acc is not None else "", eta]
    return f"{stem}: " + ", ".join(p for p in parts if p)


#: Scores a progress line shows, under the names it shows them by.
PROGRESS_SCORES = {"loss": "loss", "val_accuracy": "val_acc", "val_macro_f1": "val_f1"}


def progress_line(stem: str, entry: dict) -> str:
    """One terminal line per finished epoch, e.g. ``05_train_model: epoch 3/14 (head) 12.3 s · loss 0.510,
    val_acc 0.842 · ~2 min left``."""
    where, eta = _epoch_and_eta(entry)
    phase, seconds = entry.get("phase"), _number(entry, "seconds")
    if isinstance(phase, str) and phase:
        where += f" ({phase})"
    if seconds is not None:
        where += f" {seconds:.1f} s"
    scores = ", ".join(f"{label} {value:.3f}" for key, label in PROGRESS_SCORES.items()
                       if (value := _number(entry, key)) is not None)
    return f"{stem}: " + " · ".join(p for p in (where, scores, eta) if p)


class ProgressFile:
    """The entries appended to a progress file since this object was made, each returned once.

    What the file holds when it is made (an earlier run's lines) is never returned. A file that no longer
    starts with what has been read was truncated or recreated by a new training run: all of it is new. Only
    complete lines are read (a line being written is read on a later call); a garbled line is skipped.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._read_so_far = self._contents()

    def _contents(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError:  # not there (yet), or being replaced
            return b""

    def new_entries(self) -> list[dict]:
        """The entries of the complete lines written since the last call."""
        data = self._contents()
        if not data.startswith(self._read_so_far):
            self._read_so_far = b""
        end = data.rfind(b"\n") + 1
        if end <= len(self._read_so_far):
            return []
        fresh, self._read_so_far = data[len(self._read_so_far):end], data[:end]
        return [entry for line in fresh.splitlines() if (entry := parse_progress_line(line)) is not None]


#: The longest section heading a cell's label shows (longer ones end in "…").
HEADING_CHARS = 40


def code_cell_labels(notebook: dict) -> dict[str, str]:
    """``{cell id: "cell 7/18 · Build the model"}`` for each code cell of a notebook (its JSON, as read): the
    cell's place among the code cells and the last markdown heading above it."""
    heading, cells = "", []
    for cell in notebook.get("cells", []):
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        if cell.get("cell_type") == "markdown":
            titles = [line.lstrip("#").strip().replace("`", "").replace("**", "")
                      for line in source.splitlines() if line.startswith("#")]
            heading = titles[-1] if titles else heading
        elif cell.get("cell_type") == "code" and source.strip() and cell.get("id"):
            cells.append((cell["id"], heading))
    short = lambda h: h if len(h) <= HEADING_CHARS else h[:HEADING_CHARS - 1].rstrip() + "…"
    return {cell_id: f"cell {n}/{len(cells)}" + (f" · {short(h)}" if h else "")
            for n, (cell_id, h) in enumerate(cells, start=1)}


class CellProgress:
    """nbclient's ``on_cell_start`` hook (papermill passes it on): ``show("<stem>: cell 7/18 · Build the model")``
    as each code cell of the notebook at ``path`` starts. Cells the notebook does not hold (papermill's injected
    parameters) are not shown; nothing that goes wrong here reaches the run (the first error is kept in
    ``error``)."""

    def __init__(self, path: str | os.PathLike, show: Callable[[str], None]):
        self.stem, self.show = Path(path).stem, show
        self.error: Exception | None = None
        try:
            self.labels = code_cell_labels(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as err:
            self.labels, self.error = {}, err

    def __call__(self, cell=None, cell_index=None, **_) -> None:
        try:
            label = self.labels.get((cell or {}).get("id"))
            if label:
                self.show(f"{self.stem}: {label}")
        except Exception as err:  # noqa: BLE001 - showing progress must never break the run
            if self.error is None:
                self.error = err


class TrainingProgress:
    """While a notebook runs, hand the epochs its training appends to ``path`` to ``show``.

    A context manager around the (blocking) execution of a notebook: on entry it notes what the file holds
    already (never shown: an earlier run's) and starts a daemon thread that polls the file every
    ``interval`` seconds and calls ``show(entries)`` with the new ones (and ``tick()``, when given, so that a
    bar's clock moves while nothing else does); on exit it stops the thread and shows what arrived since its
    last poll. Nothing that goes wrong while following the file reaches the run: a garbled line is skipped,
    and the first exception of ``show``, ``tick`` or of reading is kept in ``error``.
    """

    def __init__(self, path: str | os.PathLike, show: Callable[[list[dict]], None], interval: float = 1.0,
                 tick: Callable[[], None] | None = None):
        self.path, self.show, self.interval, self.tick = Path(path), show, interval, tick
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._file: ProgressFile | None = None

    def __enter__(self) -> TrainingProgress:
        self._file = ProgressFile(self.path)
        self._stop.clear()
        self._thread = threading.Thread(target=self._follow, name="training-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, 5 * self.interval))
        if not self._thread.is_alive():  # else it is stuck in show(): leave the file to it
            self.poll()

    def _follow(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        """Show what was appended since the last poll (called by the thread, and once more on exit)."""
        try:
            entries = self._file.new_entries()
            if entries:
                self.show(entries)
            if self.tick is not None:
                self.tick()
        except Exception as err:  # noqa: BLE001 - showing progress must never break the run
            if self.error is None:
                self.error = err
                logging.getLogger(__name__).debug("training progress not shown", exc_info=True)


def show_epochs(bar, stem: str, entries: list[dict]) -> None:
    """Write one line per epoch above the notebooks bar and put the latest in the bar's postfix."""
    from tqdm.auto import tqdm

    for entry in entries:
        tqdm.write(progress_line(stem, entry), file=sys.stdout)
    bar.set_postfix_str(progress_postfix(stem, entries[-1]))
