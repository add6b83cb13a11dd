"""The chain runner: execute the numbered notebooks in order with papermill.

    python -m fer_utils run [--data-dir DIR] [--work-dir DIR] [-p NAME VALUE]... [--from NN] [--until NN]
                            [--timeout S] [--publish]

Executed copies go to ``<work_dir>/executed/``; the run's record to ``<work_dir>/run.json``. The data
and work folders reach the notebooks through ``FER_DATA_DIR`` and ``FER_WORK_DIR`` (so the executed
copies carry no machine paths); ``-p`` parameters are injected papermill-style into each notebook that
declares them, and a name no notebook declares is an error.

While a notebook trains, the runner follows ``<work_dir>/train_progress.jsonl`` (one JSON line per finished
epoch, written by ``fer_utils.training``) and shows each epoch and the time left in its terminal
(``TrainingProgress``). ``--publish`` writes the committed notebooks through ``normalise_notebook``, so
they differ only where their content does; ``normalise_file`` does the same for a notebook edited by hand.

``python -m fer_utils site [--executed DIR] [--out DIR]`` (``site_main``, ``build_site``) publishes executed
notebooks — by default the committed ones — as a static HTML site, with README.md as its landing page.
"""

from __future__ import annotations

import argparse
import ast
import copy
import functools
import json
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fer_utils.workfolder import (
    EXECUTED_DIR,
    REPO_ROOT,
    RUN_RECORD,
    TRAIN_PROGRESS,
    display_path,
    get_work_dir,
    write_record,
)

NOTEBOOK = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
FIGURES_DIR = REPO_ROOT / "figures"
#: The notebooks bar: how many have run and for how long, but no count-based "time left" (notebook 05
#: takes most of the run's time; the time left in training is shown from its progress lines instead).
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


# --------------------------------------------------------------------------------------------------
# The notebooks and their parameters
# --------------------------------------------------------------------------------------------------


def numbered_notebooks(folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The ``NN_verb_object.ipynb`` notebooks of a folder, in number order."""
    found = sorted(p for p in Path(folder).glob("*.ipynb") if NOTEBOOK.match(p.name))
    numbers = [p.name[:2] for p in found]
    dupes = {n for n in numbers if numbers.count(n) > 1}
    if dupes:
        raise SystemExit(f"Two notebooks share the number(s) {sorted(dupes)} in {folder}; renumber one.")
    return found


def parse_value(text: str):
    """papermill's ``-p`` typing: int, float, True/False/None, a Python literal, else the string."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        value = ast.literal_eval(text)
        if isinstance(value, (list, tuple, dict)):
            return value
    except (ValueError, SyntaxError):
        pass
    return text


def declared_parameters(path: Path) -> dict:
    """The names and defaults of a notebook's ``parameters`` cell."""
    import papermill

    return papermill.inspect_notebook(str(path))


# --------------------------------------------------------------------------------------------------
# The kernel: quiet on success, loud on errors
# --------------------------------------------------------------------------------------------------


@functools.cache
def kernel_manager_class() -> type:
    """The jupyter_client kernel manager the runner hands papermill (made on first use, so that importing
    this module does not import jupyter_client).

    It is nbclient's default, ``AsyncKernelManager``, with two changes, so that a successful run prints only
    the runner's own lines while the kernel's errors and warnings still reach the terminal:

    - **No interrupt before shutdown.** jupyter_client sends a kernel SIGINT before it asks it to shut down.
      papermill's last request to a kernel is ``kernel_info`` (for the notebook's ``language_info``), and
      ipykernel installs Python's SIGINT handler while it handles a request, until just after it has sent the
      reply: an interrupt landing in that window makes the kernel log ``ERROR | KeyboardInterrupt caught in
      kernel.`` (3 notebooks in 30 here). After a run the kernel is idle and the shutdown request alone
      stops it; a kernel still busy (a cell that ran over ``--timeout``) is terminated after half of
      ``shutdown_wait_time`` (2.5 s), then killed, as before.
    - **Encrypted transport.** With CurveZMQ in pyzmq, ``transport_encryption = "auto"`` gives kernels whose
      kernelspec declares support (ipykernel's does) a key pair, so the kernel no longer warns that it is
      "running over TCP without encryption" (and no kernel log level has to hide that warning).
    """
    import zmq
    from jupyter_client import AsyncKernelManager
    from traitlets import default

    class RunnerKernelManager(AsyncKernelManager):
        @default("transport_encryption")
        def _transport_encryption_default(self) -> str:
            return "auto" if zmq.has("curve") else "disabled"

        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:  # set by shutdown_kernel before it interrupts; see the docstring above
                return
            await super()._async_interrupt_kernel()

        interrupt_kernel = _async_interrupt_kernel

    return RunnerKernelManager


# --------------------------------------------------------------------------------------------------
# Training progress, shown while a notebook runs
# --------------------------------------------------------------------------------------------------


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


class TrainingProgress:
    """While a notebook runs, hand the epochs its training appends to ``path`` to ``show``.

    A context manager around the (blocking) execution of a notebook: on entry it notes what the file holds
    already (never shown: an earlier run's) and starts a daemon thread that polls the file every
    ``interval`` seconds and calls ``show(entries)`` with the new ones; on exit it stops the thread and shows
    what arrived since its last poll. Nothing that goes wrong while following the file reaches the run: a
    garbled line is skipped, and the first exception of ``show`` or of reading is kept in ``error``.
    """

    def __init__(self, path: str | os.PathLike, show: Callable[[list[dict]], None], interval: float = 1.0):
        self.path, self.show, self.interval = Path(path), show, interval
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
        except Exception as err:  # noqa: BLE001 - showing progress must never break the run
            if self.error is None:
                self.error = err
                logging.getLogger(__name__).debug("training progress not shown", exc_info=True)


def _show_epochs(bar, stem: str, entries: list[dict]) -> None:
    """Write one line per epoch above the notebooks bar and put the latest in the bar's postfix."""
    from tqdm.auto import tqdm

    for entry in entries:
        tqdm.write(progress_line(stem, entry), file=sys.stdout)
    bar.set_postfix_str(progress_postfix(stem, entries[-1]))


# --------------------------------------------------------------------------------------------------
# Normalised notebooks (what is committed)
# --------------------------------------------------------------------------------------------------

#: Cell metadata that records when and how a cell ran or was displayed, not what it is.
CELL_METADATA_NOISE = ("execution", "papermill", "ExecuteTime", "collapsed", "scrolled", "trusted")
#: Notebook metadata of the same kind: papermill's run record, saved widget state, nbformat's transients.
NOTEBOOK_METADATA_NOISE = ("papermill", "widgets", "orig_nbformat", "orig_nbformat_minor", "signature")
KERNELSPEC = {"display_name": "Python 3", "language": "python", "name": "python3"}
INJECTED_PARAMETERS = "injected-parameters"  # papermill's tag for the cell it adds
CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # nbformat 4.5
NORMALISE_HINT = ('python -c "from fer_utils.runner import normalise_file, numbered_notebooks; '
                  '[normalise_file(p) for p in numbered_notebooks()]"')


def normalise_notebook(nb: dict) -> dict:
    """A copy of a notebook (nbformat 4, as a dict) without what changes from run to run, in the spirit of
    tensorflow/docs' ``nbfmt``: cell sources, outputs and execution counts are kept as they are.

    - drops papermill's ``injected-parameters`` cells;
    - drops per-cell run metadata (``execution`` timestamps, ``papermill`` timings, ``ExecuteTime``,
      ``collapsed``, ``scrolled``, ``trusted``) and empty ``tags``;
    - drops the notebook's ``papermill`` record and ``widgets`` state; sets the kernelspec to ``python3`` /
      ``Python 3`` / ``python``; keeps ``language_info`` without its ``version`` (so a new Python patch
      release does not rewrite every notebook);
    - keeps cell ids, giving a cell without a valid, unique one a deterministic id (``cNN`` from its position)
      and the notebook nbformat 4.5;
    - splits multi-line sources and text outputs into lists of lines, as Jupyter and nbformat write them.

    Idempotent. ``normalised_json`` is the text to write.
    """
    import nbformat
    from nbformat.v4.rwbase import split_lines

    if nb.get("nbformat") != 4:
        raise ValueError(f"normalise_notebook handles nbformat 4 notebooks, not nbformat {nb.get('nbformat')}")
    nb = nbformat.from_dict(copy.deepcopy(nb))
    meta = nb.setdefault("metadata", {})
    for key in NOTEBOOK_METADATA_NOISE:
        meta.pop(key, None)
    meta["kernelspec"] = dict(KERNELSPEC)
    if isinstance(meta.get("language_info"), dict):
        meta["language_info"].pop("version", None)

    cells = []
    for cell in nb.get("cells", []):
        cell_meta = cell.setdefault("metadata", {})
        if INJECTED_PARAMETERS in (cell_meta.get("tags") or []):
            continue
        for key in CELL_METADATA_NOISE:
            cell_meta.pop(key, None)
        if "tags" in cell_meta and not cell_meta["tags"]:
            del cell_meta["tags"]
        if cell.get("cell_type") == "code":
            cell.setdefault("outputs", [])
            cell.setdefault("execution_count", None)
        cells.append(cell)
    nb["cells"] = cells
    _give_cells_ids(cells)
    nb["nbformat_minor"] = max(nb.get("nbformat_minor", 0), 5)
    return split_lines(nb)


def _give_cells_ids(cells: list[dict]) -> None:
    """Keep each cell's valid id (the first of duplicates); give the others ``cNN`` from their position."""
    taken = {c.get("id") for c in cells if isinstance(c.get("id"), str) and CELL_ID.match(c["id"])}
    kept = set()
    for index, cell in enumerate(cells):
        cell_id = cell.get("id")
        if cell_id in taken and cell_id not in kept:
            kept.add(cell_id)
            continue
        new, n = f"c{index:02d}", 0
        while new in taken:
            n += 1
            new = f"c{index:02d}-{n}"
        cell["id"] = new
        taken.add(new)
        kept.add(new)


def normalised_json(nb: dict) -> str:
    """The text of a normalised notebook: ``normalise_notebook``, then JSON as Jupyter writes it."""
    return json.dumps(normalise_notebook(nb), indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def normalise_file(path: str | os.PathLike) -> bool:
    """Normalise a notebook file in place (``normalise_notebook``); ``True`` if that changed it."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    normalised = normalised_json(json.loads(text))
    if normalised == text:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(normalised, encoding="utf-8")
    tmp.replace(path)
    return True


# --------------------------------------------------------------------------------------------------
# One source: the functions a notebook teaches are saved, verbatim, into the package
# --------------------------------------------------------------------------------------------------

#: First line of a notebook cell whose code is kept, verbatim, in a module of the package (d2l's ``#@save``).
SAVE_MARKER = re.compile(r"^# @save (fer_utils/[A-Za-z0-9_/]+\.py)[ \t]*$")


def saved_cells(notebooks: list[Path] | None = None) -> list[dict]:
    """Every cell that starts with ``# @save fer_utils/<module>.py``: notebook, cell id, module path, body
    (the cell's source without the marker line)."""
    found = []
    for path in notebooks if notebooks is not None else numbered_notebooks():
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            first, _, body = source.partition("\n")
            match = SAVE_MARKER.match(first) if cell["cell_type"] == "code" else None
            if match:
                found.append({"notebook": Path(path), "cell": cell.get("id"), "module": REPO_ROOT / match[1],
                              "body": body.strip("\n") + "\n"})
    return found


def _replace_definitions(module_text: str, body: str) -> str | None:
    """The module's text with the top-level definitions that ``body`` defines replaced by ``body``; None when
    they are not there as one run of consecutive top-level statements."""
    names = [node.name for node in ast.parse(body).body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    tree = ast.parse(module_text)
    index = [i for i, node in enumerate(tree.body) if getattr(node, "name", None) in names]
    if not names or len(index) != len(names) or index != list(range(index[0], index[0] + len(index))):
        return None
    first, last = tree.body[index[0]], tree.body[index[-1]]
    start = min([first.lineno, *(d.lineno for d in getattr(first, "decorator_list", []))]) - 1
    lines = module_text.splitlines(keepends=True)
    return "".join(lines[:start]) + body + "".join(lines[last.end_lineno:])


def sync_saved_cells(write: bool = False, notebooks: list[Path] | None = None) -> list[str]:
    """Check that every ``# @save`` cell's body is in its module verbatim; with ``write``, copy a changed
    cell over the module's definitions of the same names (the notebook is the source). Returns what is
    (still) out of step, one line each; ``[]`` when notebooks and package agree.

        python -c "from fer_utils.runner import sync_saved_cells; print(sync_saved_cells(write=True))"
    """
    problems = []
    for cell in saved_cells(notebooks):
        module, where = cell["module"], f"{cell['notebook'].name} cell {cell['cell']}"
        text = module.read_text(encoding="utf-8") if module.exists() else None
        if text is not None and cell["body"] in text:
            continue
        new = _replace_definitions(text, cell["body"]) if text is not None and write else None
        if new is None:
            problems.append(f"{where}: its code is not in {display_path(module)} verbatim")
            continue
        module.write_text(new, encoding="utf-8")
    return problems


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fer_utils run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="dataset root holding images/ and data/legend.csv "
                        "(default: $FER_DATA_DIR, else download the pinned upstream archive)")
    parser.add_argument("--work-dir", help="where everything the run makes goes (default: $FER_WORK_DIR, else work/)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a notebook parameter, e.g. -p epochs 3 -p max_per_class 50 (repeatable)")
    parser.add_argument("--from", dest="start", metavar="NN", help="start at notebook NN (earlier outputs must exist)")
    parser.add_argument("--until", metavar="NN", help="stop after notebook NN, e.g. --until 02")
    parser.add_argument("--notebooks-dir", default=str(NOTEBOOKS_DIR), help=argparse.SUPPRESS)
    parser.add_argument("--publish", action="store_true",
                        help="after a successful run, copy the executed notebooks over notebooks/ and the figures "
                        "into figures/ (for maintainers refreshing the committed outputs)")
    parser.add_argument("--timeout", type=int, default=None, help="seconds a single cell may run (default: no limit)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import papermill
    from nbclient.exceptions import DeadKernelError
    from tqdm.auto import tqdm

    notebooks = numbered_notebooks(Path(args.notebooks_dir))
    if args.start:
        notebooks = [p for p in notebooks if p.name[:2] >= args.start.zfill(2)]
    if args.until:
        notebooks = [p for p in notebooks if p.name[:2] <= args.until.zfill(2)]
    if not notebooks:
        print(f"No numbered notebooks to run in {args.notebooks_dir} (--from/--until too narrow?).", file=sys.stderr)
        return 2
    params = {name: parse_value(value) for name, value in args.parameter}
    declared = {p: declared_parameters(p) for p in notebooks}
    unknown = set(params) - {name for d in declared.values() for name in d}
    if unknown:
        known = sorted({name for d in declared.values() for name in d} - {"work_dir", "data_dir"})
        print(f"Unknown parameter(s) {sorted(unknown)}: no notebook to run declares them. Known: {', '.join(known)}.",
              file=sys.stderr)
        return 2
    if args.publish and params:
        print("--publish copies outputs over the committed notebooks, whose parameter cells keep their defaults: "
              "publish only a run with default parameters (no -p).", file=sys.stderr)
        return 2
    for name in ("work_dir", "data_dir"):
        if name in params:
            print(f"Use --{name.replace('_', '-')} instead of -p {name}.", file=sys.stderr)
            return 2

    if args.data_dir:
        os.environ["FER_DATA_DIR"] = str(Path(args.data_dir).expanduser().resolve())
    work = get_work_dir(args.work_dir)
    os.environ["FER_WORK_DIR"] = str(work)
    executed = work / EXECUTED_DIR
    executed.mkdir(exist_ok=True)
    print(f"Work folder: {work}")
    record = {"step": "run", "parameters": params, "notebooks": {}, "status": "running"}
    t_run = time.perf_counter()
    status = 0
    bar = tqdm(notebooks, desc="notebooks", unit="nb", file=sys.stdout, bar_format=BAR_FORMAT)
    for path in bar:
        bar.set_postfix_str(path.stem)
        out = executed / path.name
        mine = {k: v for k, v in params.items() if k in declared[path]}
        t0 = time.perf_counter()
        try:
            with TrainingProgress(work / TRAIN_PROGRESS, functools.partial(_show_epochs, bar, path.stem)):
                papermill.execute_notebook(str(path), str(out), parameters=mine, cwd=str(path.parent),
                                           kernel_name="python3", progress_bar=False,
                                           execution_timeout=args.timeout, kernel_manager_class=kernel_manager_class())
        except (papermill.PapermillExecutionError, TimeoutError, DeadKernelError) as err:
            seconds = time.perf_counter() - t0
            if isinstance(err, papermill.PapermillExecutionError):
                where, error = f" in cell {err.exec_count}", f"{err.ename}: {err.evalue}"
            elif isinstance(err, TimeoutError):  # nbclient's CellTimeoutError
                where, error = "", f"a cell ran longer than --timeout {args.timeout} s"
            else:
                where, error = "", "the kernel died (killed, or out of memory)"
            record["notebooks"][path.stem] = {"seconds": round(seconds, 1), "status": "failed", "error": error}
            bar.close()
            print(f"\n{path.name} failed{where} after {seconds:.0f} s: {error}\n"
                  f"The executed copy with the error is {out}", file=sys.stderr)
            status = 1
            break
        seconds = time.perf_counter() - t0
        record["notebooks"][path.stem] = {"seconds": round(seconds, 1), "status": "ok", "parameters": mine}
        tqdm.write(f"{path.stem}: {seconds:.0f} s", file=sys.stdout)
    bar.close()
    record["status"] = "ok" if status == 0 else "failed"
    record["total_seconds"] = round(time.perf_counter() - t_run, 1)
    write_record(work / RUN_RECORD, record)
    if status == 0:
        print(f"Done in {record['total_seconds']:.0f} s. Executed notebooks: {executed}; record: {work / RUN_RECORD}")
        if args.publish:
            publish(work, notebooks)
    return status


def publish(work: Path, notebooks: list[Path]) -> None:
    """Write the executed notebooks, normalised (``normalise_notebook``), over the committed ones, and copy
    the figures into ``figures/``."""
    for path in notebooks:
        nb = json.loads((work / EXECUTED_DIR / path.name).read_text(encoding="utf-8"))
        path.write_text(normalised_json(nb), encoding="utf-8")
    figures = work / "figures"
    if figures.is_dir():
        FIGURES_DIR.mkdir(exist_ok=True)
        for fig in figures.glob("*.png"):
            shutil.copyfile(fig, FIGURES_DIR / fig.name)
    print(f"Published {len(notebooks)} notebooks to {display_path(NOTEBOOKS_DIR)} and figures to "
          f"{display_path(FIGURES_DIR)}.")


# --------------------------------------------------------------------------------------------------
# The series as a static site: python -m fer_utils site
# --------------------------------------------------------------------------------------------------

#: README sections that become pages of their own (heading → page name); the rest of README.md is the landing page.
SITE_PAGES = {"Results": "results", "Data card": "data-card", "Model card": "model-card"}
SITE_DIR = "site"  # the default output folder, in the work folder
SITE_INSTALL = 'pip install -e ".[site]"'
SITE_TITLE = "fer-notebooks"
#: The Sphinx configuration of the site: myst-nb reads the notebooks with their stored outputs (nothing runs),
#: sphinx-book-theme lays them out (the theme of Jupyter Book 1); every asset is served from the site itself.
SITE_CONF = '''\
project = {title!r}
html_title = {title!r}
copyright = ""
language = "en"
extensions = ["myst_nb"]
nb_execution_mode = "off"  # publish the stored outputs of a real run; never execute
nb_merge_streams = True
myst_heading_anchors = 3
html_theme = "sphinx_book_theme"
html_theme_options = {{
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
    "footer_content_items": [],  # no author, copyright or build date lines
}}
html_sidebars = {{"**": ["navbar-logo.html", "sbt-sidebar-nav.html"]}}  # search: in the header
html_context = {{"default_mode": "auto"}}  # light or dark as the reader's system is (and no console error)
html_favicon = "favicon.png"
html_copy_source = False
html_show_sourcelink = False
html_show_sphinx = False
html_show_copyright = False
html_last_updated_fmt = None
suppress_warnings = ["misc.highlighting_failure"]  # README code with shell escapes (!pip) in a python block
'''
_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^()\s]+)\)")


def readme_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """README text → (what comes before its first ``## `` heading, [(heading, section text with its
    heading line)]); headings inside code blocks are not headings."""
    preamble, sections, fenced = [], [], False
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            sections.append([line[3:].strip(), [line]])
        elif sections:
            sections[-1][1].append(line)
        else:
            preamble.append(line)
    return "".join(preamble), [(title, "".join(lines)) for title, lines in sections]


def _demote(markdown: str) -> str:
    """Headings one level up (``## Results`` → ``# Results``), so that a README section is a page of its own."""
    out, fenced = [], False
    for line in markdown.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        out.append(line[1:] if not fenced and re.match(r"^##+ ", line) else line)
    return "".join(out)


def _site_links(markdown: str, present: set[str]) -> str:
    """Keep links to the web and to files in the site (``present``: paths relative to the site root);
    other relative links (files of the repository that are not part of the site) become their text."""
    def fix(m: re.Match) -> str:
        bang, text, target = m.groups()
        path = target.split("#", 1)[0]
        if not path or re.match(r"^[a-z][a-z0-9+.-]*:", target) or path in present:
            return m.group(0)
        return text if not bang else f"*{text}*"
    return _LINK.sub(fix, markdown)


def _notebook_links(nb: dict, present: set[str]) -> dict:
    """Links in a notebook's markdown as the site needs them: ``../README.md`` → the landing page; links to
    other pages and figures of the site kept; links to repository files outside the site become their text."""
    def fix(m: re.Match) -> str:
        bang, text, target = m.groups()
        path, _, anchor = target.partition("#")
        if not path or re.match(r"^[a-z][a-z0-9+.-]*:", target):
            return m.group(0)
        resolved = os.path.normpath(os.path.join("notebooks", path)).replace(os.sep, "/")
        if resolved == "README.md":
            return f"{bang}[{text}](../index.md)"
        if resolved in present:
            return m.group(0)
        return text if not bang else f"*{text}*"

    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            source = "".join(cell.get("source", ""))
            cell["source"] = _LINK.sub(fix, source)
    return nb


def _notebook_title(stem: str) -> str:
    """``05_train_model`` → ``05 · Train model``."""
    number, _, words = stem.partition("_")
    return f"{number} · {words.replace('_', ' ').capitalize()}"


def _has_title(nb: dict) -> bool:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            source = "".join(cell.get("source", ""))
            if any(line.startswith("# ") for line in source.splitlines()):
                return True
    return False


def site_sources(src: Path, notebooks: list[Path], readme: Path = REPO_ROOT / "README.md",
                 figures: Path = FIGURES_DIR) -> list[str]:
    """Lay out the site's sources in ``src``: ``index.md`` (README.md without the sections of ``SITE_PAGES``),
    one page per ``SITE_PAGES`` section, the notebooks (as they are, outputs included) under ``notebooks/``
    and the README's figures under ``figures/``. Returns the pages in reading order (without ``index``)."""
    import nbformat

    (src / "notebooks").mkdir(parents=True)
    steps = []
    for path in notebooks:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
        if not _has_title(nb):  # the page title and the navigation label come from the first "# " heading
            title = nbformat.v4.new_markdown_cell(f"# {_notebook_title(path.stem)}")
            if nb.get("nbformat_minor", 0) < 5:  # cell ids came with nbformat 4.5
                del title["id"]
            nb["cells"].insert(0, title)
        (src / "notebooks" / path.name).write_text(json.dumps(nb, ensure_ascii=False), encoding="utf-8")
        steps.append(f"notebooks/{path.stem}")
    present = {f"notebooks/{p.name}" for p in notebooks}
    if figures.is_dir():
        shutil.copytree(figures, src / "figures")
        present |= {f"figures/{p.name}" for p in figures.iterdir()}
    for path in notebooks:  # now that every page and figure of the site is known, fix the notebooks' links
        copy = src / "notebooks" / path.name
        copy.write_text(json.dumps(_notebook_links(json.loads(copy.read_text(encoding="utf-8")), present),
                                   ensure_ascii=False), encoding="utf-8")

    preamble, sections = readme_sections(readme.read_text(encoding="utf-8"))
    found = {title: text for title, text in sections}
    missing = [title for title in SITE_PAGES if title not in found]
    if missing:
        raise ValueError(f"{display_path(readme)} has no section(s) {', '.join('## ' + t for t in missing)}; "
                         f"the site makes a page of each of {', '.join(SITE_PAGES)}.")
    for title, page in SITE_PAGES.items():
        (src / f"{page}.md").write_text(_site_links(_demote(found[title]), present), encoding="utf-8")
    rest = "".join(text for title, text in sections if title not in SITE_PAGES)
    toc = ("\n```{toctree}\n:caption: The notebooks, step by step\n:maxdepth: 1\n\n" + "\n".join(steps)
           + "\n```\n\n```{toctree}\n:caption: Results and cards\n:maxdepth: 1\n\n"
           + "\n".join(SITE_PAGES.values()) + "\n```\n")
    (src / "index.md").write_text(_site_links(preamble + rest, present) + toc, encoding="utf-8")
    (src / "conf.py").write_text(SITE_CONF.format(title=SITE_TITLE), encoding="utf-8")
    _favicon(src / "favicon.png")
    return steps + list(SITE_PAGES.values())


def _favicon(path: Path) -> None:
    """A small smiling face, the site's icon (so browsers do not ask for a missing /favicon.ico)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(im)
    draw.ellipse([2, 2, 61, 61], fill=(255, 196, 37), outline=(120, 80, 0), width=3)
    for x in (21, 43):
        draw.ellipse([x - 4, 20, x + 4, 30], fill=(60, 40, 0))
    draw.arc([16, 22, 48, 50], 20, 160, fill=(60, 40, 0), width=4)
    im.save(path)


def _check_site_out(out: Path) -> None:
    """Refuse to build into a folder that holds anything but an earlier build of a site (then empty it)."""
    if out.is_file():
        raise ValueError(f"{out} is a file; choose a folder for the site (--out).")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not (out / ".buildinfo").is_file():
        raise ValueError(f"Refusing to build the site into {out}: it is not empty and holds no earlier site "
                         "(no .buildinfo). Choose an empty or new folder (--out).")
    shutil.rmtree(out)


def build_site(executed: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
               work_dir: str | os.PathLike | None = None, log=None) -> Path:
    """Build the static HTML site of the series into ``out`` and return the path of its ``index.html``.

    ``executed``: a folder of executed notebooks (``<work_dir>/executed`` after ``python -m fer_utils run``);
    default: the committed notebooks in ``notebooks/``, which carry the outputs of a real run. Nothing is
    executed: the pages show the stored outputs. ``out``: default ``<work_dir>/site``; an earlier site there
    is replaced, any other non-empty folder refused. README.md is the landing page, its Results, Data card and
    Model card sections are pages of their own, and the notebooks follow in number order (previous/next
    links between them). Pages need no network: every script, style sheet, font and figure is in the site.
    ``log``: a text stream for Sphinx's progress (default: quiet); warnings go to stderr.
    """
    try:
        from sphinx.application import Sphinx
    except ImportError as err:
        raise ImportError(f"Building the site needs the 'site' extra: {SITE_INSTALL}") from err
    source = Path(executed).expanduser() if executed else NOTEBOOKS_DIR
    if not source.is_dir():
        raise FileNotFoundError(f"No folder {source} (--executed: a folder of executed notebooks, such as "
                                f"<work_dir>/{EXECUTED_DIR} after `python -m fer_utils run`).")
    notebooks = numbered_notebooks(source)
    if not notebooks:
        raise FileNotFoundError(f"No numbered notebooks (NN_name.ipynb) in {source}.")
    out = Path(out).expanduser().resolve() if out else get_work_dir(work_dir) / SITE_DIR
    _check_site_out(out)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fer-site-") as tmp:
        src = Path(tmp) / "src"
        site_sources(src, notebooks)
        app = Sphinx(str(src), str(src), str(out), str(Path(tmp) / "doctrees"), "html", status=log,
                     warning=sys.stderr, freshenv=True)
        app.build()
        if app.statuscode:
            raise RuntimeError(f"Sphinx failed (status {app.statuscode}); see the messages above.")
    return out / "index.html"


def build_site_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_utils site",
        description="Build a static HTML site of the notebook series (with their stored outputs: nothing runs), "
                    "README.md as its landing page and its Results, Data card and Model card as pages.")
    parser.add_argument("--executed", metavar="DIR", help="a folder of executed notebooks, e.g. work/executed after "
                        "`python -m fer_utils run` (default: the committed notebooks in notebooks/)")
    parser.add_argument("--out", metavar="DIR", help="the site's folder (default: <work_dir>/site); an earlier site "
                        "there is replaced, any other non-empty folder refused")
    parser.add_argument("--work-dir", help="the work folder, for the default --out ($FER_WORK_DIR, else work/)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Sphinx's progress")
    return parser


def site_main(argv: list[str] | None = None) -> int:
    """``python -m fer_utils site [--executed DIR] [--out DIR]``."""
    args = build_site_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        index = build_site(args.executed, args.out, args.work_dir, log=sys.stdout if args.verbose else None)
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, SystemExit) as err:
        print(f"error: the site was not built: {err}", file=sys.stderr)
        return 1
    out = index.parent
    pages = sum(1 for p in out.rglob("*.html") if "_static" not in p.relative_to(out).parts)
    print(f"Built the site in {time.perf_counter() - start:.0f} s: {pages} pages in {out}\n"
          f"Open {index}\nor serve it: python -m http.server --bind 127.0.0.1 -d {out} 8000  "
          "(then http://127.0.0.1:8000/)")
    return 0


# --------------------------------------------------------------------------------------------------
# python -m fer_utils train: notebook 05's training as one command (for GPUs, clusters and scripts)
# --------------------------------------------------------------------------------------------------


def build_train_parser() -> argparse.ArgumentParser:
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


def train_main(argv: list[str] | None = None) -> int:
    from fer_utils import models, training
    from fer_utils.workfolder import SPLIT_DIR, UNTRAINED_MODEL, get_work_dir, require

    args = build_train_parser().parse_args(argv)
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
        net, settings = None, {}
        if (work / UNTRAINED_MODEL).exists() and "model" not in changes:  # notebook 04's model and its input
            net, built = models.load(work / UNTRAINED_MODEL)
            settings = {"image_size": built.image_size, "color_mode": built.color_mode,
                        "interpolation": built.interpolation, "model": built.model, "precision": built.precision}
            if not models.traits(built.model).get("backbone"):
                settings["head_epochs"] = 0
        config = training.TrainConfig(**{**settings, **changes})
        training.get_strategy(config.strategy)  # a missing or unreachable cluster fails here, plainly
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if strategy == "mirrored" and training.worker_info(training.get_strategy(strategy))["replicas"] == 1:
        print("note: strategy 'mirrored' found one device (no GPU): set FER_LOGICAL_CPUS=2 to try it over two "
              "logical CPU devices.", file=sys.stderr)
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


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports on 127.0.0.1 that nothing listens on (for a local cluster)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def start_local_workers(train_args: list[str], workers: int = 2, log_dir: str | os.PathLike | None = None,
                        env: dict | None = None, ports: list[int] | None = None) -> list:
    """Start ``python -m fer_utils train <train_args>`` ``workers`` times on this machine, each with the
    ``TF_CONFIG`` of one worker of a cluster on 127.0.0.1: what a cluster launcher (Kubernetes, Slurm...)
    does on real machines. Each worker's output goes to ``<log_dir>/worker-<i>.log``. Returns the processes
    (``subprocess.Popen``); wait for them, or kill one to see the run resume."""
    import subprocess

    ports = ports or free_ports(workers)
    addresses = [f"127.0.0.1:{port}" for port in ports]
    procs = []
    for i in range(workers):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}}
        out = subprocess.DEVNULL
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            out = open(Path(log_dir) / f"worker-{i}.log", "w")  # noqa: SIM115 - the child process writes it
        procs.append(subprocess.Popen([sys.executable, "-m", "fer_utils", "train", *train_args],
                                      env={**os.environ, **(env or {}), "TF_CONFIG": json.dumps(tf_config)},
                                      stdout=out, stderr=subprocess.STDOUT))
        if out is not subprocess.DEVNULL:
            out.close()
    return procs
