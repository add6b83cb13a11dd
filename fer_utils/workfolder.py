"""The work folder: the contract between the notebooks, and the run records every step writes.

Everything a run makes goes to one work folder (the ``work_dir`` parameter, else ``$FER_WORK_DIR``, else
``work/`` in the repository). This module names, in one place, the notebooks and every file and folder
they hand on to each other (the table in CONTRIBUTING.md), and holds what every step shares: finding
the work folder, refusing to go on when an earlier notebook has not run (``require``), writing JSON
records with the machine they ran on, seeding, hashing, and showing paths without machine details.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"  # the numbered notebooks of the series
PUBLISHED_FIGURES = REPO_ROOT / "figures"  # the figures of the committed run (README, site)
PUBLISHED_RUN = NOTEBOOKS_DIR / "published_run.json"  # the record of the run the committed notebooks carry
#: The repository's own folders: a work folder is never one of them, nor inside one (``run_checks``).
PROJECT_FOLDERS = ("notebooks", "fer_utils", "tests", "figures", "benchmarks", "web", ".ci", ".git")
NOTEBOOK_NAME = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")

# --------------------------------------------------------------------------------------------------
# The notebooks, by the step they teach
# --------------------------------------------------------------------------------------------------

NOTEBOOKS = {
    "load": "01_load_dataset.ipynb",
    "prepare": "02_preprocess_into_folders.ipynb",
    "pipelines": "03_build_input_pipelines.ipynb",
    "model": "04_create_model.ipynb",
    "train": "05_train_model.ipynb",
    "evaluate": "06_evaluate_model.ipynb",
    "predict": "07_predict_new_photos.ipynb",
    "scale": "08_train_at_scale.ipynb",
}



def numbered_notebooks(folder: str | os.PathLike = NOTEBOOKS_DIR) -> list[Path]:
    """The ``NN_verb_object.ipynb`` notebooks of a folder, in number order."""
    found = sorted(p for p in Path(folder).glob("*.ipynb") if NOTEBOOK_NAME.match(p.name))
    numbers = [p.name[:2] for p in found]
    dupes = {n for n in numbers if numbers.count(n) > 1}
    if dupes:
        raise SystemExit(f"Two notebooks share the number(s) {sorted(dupes)} in {folder}; renumber one.")
    return found


# --------------------------------------------------------------------------------------------------
# The layout of a work folder (who writes what: CONTRIBUTING.md)
# --------------------------------------------------------------------------------------------------

AUDIT_RECORD = "audit.json"  # 01
AUDIT_FINDINGS = "audit_findings.csv"  # 01
AUDIT_FILES = "audit_files.csv"  # 01
MANIFEST = "manifest.csv"  # 02
SPLIT_DIR = "split"  # 02: split/<train|val|test>/<emotion>/<file>
SPLITS = ("train", "val", "test")
PREPARE_RECORD = "prepare.json"  # 02
PIPELINES_RECORD = "pipelines.json"  # 03: the input settings (image size, colour mode, resizing)
UNTRAINED_MODEL = "untrained.keras"  # 04: the model notebook 05 trains
UNTRAINED_RECORD = "untrained.json"  # 04
MODEL_FILE = "model.keras"  # 05: the current trained model
MODEL_RECORD = "model.json"  # 05: its preprocessing record (fer_utils.models.ModelRecord)
HISTORY = "history.csv"  # 05
TRAIN_RECORD = "train.json"  # 05
TRAIN_PROGRESS = "train_progress.jsonl"  # 05: one JSON line per finished epoch (the runner shows it)
MODELS_DIR = "models"  # 05: every trained model kept under its own name
METRICS = "metrics.json"  # 06
PREDICTIONS = "predictions.csv"  # 06
FIGURES_DIR = "figures"  # every notebook
RUNS_DIR = "runs"  # the runner: runs/<id>/run.json and runs/<id>/executed/*.ipynb, one folder per run
EXECUTED_DIR = "executed"  # the runner: in each run's folder
DATASET_RECORD = "dataset.json"  # the runner: the dataset this work folder's results come from
BACKUP_DIR = ".backup"  # 05 (every training run): what an interrupted run resumes from; deleted when it finishes
SCALE_DIR = "scale"  # 08: its own work folder (class folders, models, scale.json), so 05's model stays current
SCALE_RECORD = "scale.json"  # 08: what each strategy's run measured
SCALE_DATA_DIR = "scale_data"  # 08: the dataset it generates (beside scale/: a dataset is never inside a work folder)
RUN_RECORD = "run.json"  # the runner: runs/<id>/run.json per run; <work>/run.json the latest, with the history
#: The top-level entries that make a folder a work folder of this series (``run_checks.foreign_entries``): what the
#: notebooks, the runner and the commands write there, but not generic names (``figures/``, ``models/``, ``photos/``)
#: that someone's own folder may hold too; ``figures/`` counts when it holds only the notebooks' ``NN_*.png``.
WORK_ENTRIES = (AUDIT_RECORD, AUDIT_FINDINGS, AUDIT_FILES, MANIFEST, SPLIT_DIR, PREPARE_RECORD, PIPELINES_RECORD,
                UNTRAINED_MODEL, UNTRAINED_RECORD, MODEL_FILE, MODEL_RECORD, HISTORY, TRAIN_RECORD, TRAIN_PROGRESS,
                METRICS, PREDICTIONS, RUNS_DIR, DATASET_RECORD, SCALE_DIR, SCALE_DATA_DIR, RUN_RECORD,
                "site", "scale-benchmark")  # the last two: `fer_utils site`'s default folder, benchmarks/scale.py's
#: Entries a file system or a desktop makes by itself: they make a folder neither someone's own nor a work folder.
SYSTEM_ENTRIES = ("lost+found", "desktop.ini", "Thumbs.db")
#: What each step reads from the work folder, and the step that writes it (the notebooks' ``require`` calls; a
#: test keeps the two in step): ``run --from`` checks them before any kernel starts.
NEEDS = {"prepare": ((AUDIT_RECORD, "load"),), "pipelines": ((SPLIT_DIR, "prepare"),),
         "model": ((PIPELINES_RECORD, "pipelines"),), "train": ((SPLIT_DIR, "prepare"), (UNTRAINED_MODEL, "model")),
         "evaluate": ((MODEL_FILE, "train"), (MODEL_RECORD, "train")), "predict": ((MODEL_FILE, "train"),)}

# --------------------------------------------------------------------------------------------------
# Finding the work folder, requiring earlier outputs, showing paths
# --------------------------------------------------------------------------------------------------


def get_work_dir(work_dir: str | os.PathLike | None = None, create: bool = True) -> Path:
    """The run's work folder: ``work_dir``, else ``$FER_WORK_DIR``, else ``work/`` in the repository."""
    chosen = work_dir or os.environ.get("FER_WORK_DIR") or REPO_ROOT / "work"
    path = Path(chosen).expanduser().resolve()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def figures_dir(work_dir: str | os.PathLike) -> Path:
    """``<work_dir>/figures``, created."""
    path = Path(work_dir) / FIGURES_DIR
    path.mkdir(parents=True, exist_ok=True)
    return path


def notebook_name(step: str) -> str:
    """``"prepare"`` -> ``"02_preprocess_into_folders.ipynb"``; a notebook file name is returned as it is."""
    if step in NOTEBOOKS:
        return NOTEBOOKS[step]
    if step in NOTEBOOKS.values():
        return step
    raise KeyError(f"Unknown step {step!r}; steps: {', '.join(NOTEBOOKS)}")


def require(path: str | os.PathLike, step: str, what: str = "") -> Path:
    """Return ``path`` if it exists, else raise ``FileNotFoundError`` naming the notebook that makes it.

    ``step`` is a key of ``NOTEBOOKS`` (``"prepare"``) or a notebook's file name.
    """
    path = Path(path)
    if not path.exists():
        named = f" ({path.name})" if what and path.name not in what else ""  # what, unless what names it already
        raise FileNotFoundError(f"{what or path.name} not found in the work folder{named}. "
                                f"Run notebooks/{notebook_name(step)} first (same work_dir), "
                                "or `python -m fer_utils run`.")
    return path


def display_path(path: str | os.PathLike, work_dir: str | os.PathLike | None = None) -> str:
    """A path as a reader should see it: relative to the work folder or the repository, never absolute."""
    path = Path(path).resolve()
    for base, label in ((work_dir, "<work_dir>"), (REPO_ROOT, ".")):
        if base and path.is_relative_to(Path(base).resolve()):
            rel = path.relative_to(Path(base).resolve())
            return f"{label}/{rel}" if str(rel) != "." else label
    return path.name


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def machine_info() -> dict:
    """What the run ran on, for the record."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "processor": _cpu_name()}
    try:
        import sklearn

        info["scikit_learn"] = sklearn.__version__
    except ImportError:
        pass
    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        info["tensorflow"] = tf.__version__
        info["keras"] = sys.modules["keras"].__version__
        try:
            gpus = tf.config.list_physical_devices("GPU")
            info["gpus"] = [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
        except Exception:  # noqa: BLE001 - the record must never fail for lack of device details
            pass
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def jsonable(value):
    """``value`` with paths, NumPy scalars/arrays and tuples turned into plain JSON types."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def write_record(path: str | os.PathLike, record: dict, stamp: bool = True) -> Path:
    """Write a run record as JSON (atomically), adding when and on what machine it was written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if stamp:
        record = {**record, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_info()}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(jsonable(record), indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def read_record(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def run_notebooks(work_dir: str | os.PathLike, run_id: str = "latest") -> list[Path]:
    """The executed notebooks of a run of ``python -m fer_utils run`` (``"latest"``: the work folder's latest),
    one per number: the run's own copies, and for the notebooks a partial run did not execute (``--from``),
    the copies of the run it extends, and so on. Raises ``FileNotFoundError`` saying what is missing."""
    found = {}
    for folder, _ in run_chain(work_dir, run_id):
        for path in numbered_notebooks(folder / EXECUTED_DIR):
            found.setdefault(path.name[:2], path)
    return [found[number] for number in sorted(found)]


def run_chain(work_dir: str | os.PathLike, run_id: str = "latest") -> list[tuple[Path, dict]]:
    """(folder, record) of a run (``"latest"``: the work folder's latest) and of the runs it extends, newest
    first. Raises ``FileNotFoundError`` saying what is missing."""
    work = Path(work_dir)
    if run_id == "latest":
        if not (work / RUN_RECORD).exists():
            raise FileNotFoundError(f"No run in {work}: run `python -m fer_utils run` first.")
        run_id = read_record(work / RUN_RECORD).get("id")
    chain, seen = [], set()
    while run_id and run_id not in seen:
        seen.add(run_id)
        folder = work / RUNS_DIR / run_id
        if not (folder / RUN_RECORD).exists():
            raise FileNotFoundError(f"No run {run_id!r} in {work / RUNS_DIR} (the runs there: "
                                    f"{', '.join(sorted(p.name for p in (work / RUNS_DIR).glob('*'))) or 'none'}).")
        record = read_record(folder / RUN_RECORD)
        chain.append((folder, record))
        run_id = record.get("extends")
    return chain


def unfinished_runs(work_dir: str | os.PathLike, run_id: str = "latest") -> list[str]:
    """One line per run of ``run_chain`` that did not finish (failed, interrupted, or still running) where no
    newer run of the chain ran the notebook that stopped it: which notebook and why, so that a site built from
    the chain can say its pages stop there."""
    lines, redone = [], set()
    for folder, record in run_chain(work_dir, run_id):  # newest first
        notebooks = record.get("notebooks", {})
        if record.get("status") in ("failed", "interrupted", "running"):
            stopped = [(name, info) for name, info in notebooks.items() if info.get("status") != "ok"]
            if not (stopped and stopped[-1][0] in redone):
                where = (f" in {stopped[-1][0]}" + (f" ({stopped[-1][1]['error']})" if stopped[-1][1].get("error")
                                                     else "") if stopped else "")
                lines.append(f"run {folder.name} {record.get('status', 'unknown')}{where}")
        redone |= {name for name, info in notebooks.items() if info.get("status") == "ok"}
    return lines



def stale_notebooks(work_dir: str | os.PathLike, run_id: str = "latest") -> list[str]:
    """One line per earlier run of ``run_chain`` whose executed notebooks ``run_notebooks`` still takes although a
    newer run of the chain ran an earlier step again (``--from 04 --until 06`` after a full run: 07 and 08 still
    show the model before it), naming them and the ``--from`` that brings them up to date; and one per run of the
    chain that found the current model changed since the run it extends (the runner's ``model_changed``)."""
    lines, newer_first = [], None  # the lowest notebook number a newer run executed
    taken = {path.name[:2]: path for path in run_notebooks(work_dir, run_id)}
    for folder, record in run_chain(work_dir, run_id):  # newest first
        own = [p.name[:2] for p in numbered_notebooks(folder / EXECUTED_DIR)]
        stale = [taken[n].stem for n in sorted(taken) if taken[n].parent.parent == folder
                 and newer_first is not None and n > newer_first]
        if stale:
            lines.append(f"{', '.join(stale)} of run {folder.name} {'was' if len(stale) == 1 else 'were'} made before "
                         "a newer run ran notebook "
                         f"{newer_first} again: run `python -m fer_utils run --from {stale[0][:2]}` to bring them up "
                         "to date")
        still = [taken[n].stem for n in sorted(taken) if taken[n].parent.parent == folder]
        if record.get("model_changed") and still and (newer_first is None or newer_first > "05"):
            lines.append(f"{', '.join(still)} of run {folder.name} used a model that is not the one run "
                         f"{record['extends']} left: {MODEL_FILE} changed between them (a notebook or the train "
                         "command run by hand); run `python -m fer_utils run --from 05` for pages of one model")
        if own:
            newer_first = min(own) if newer_first is None else min(newer_first, min(own))
    return lines

# --------------------------------------------------------------------------------------------------
# CSV files safe to open in a spreadsheet (every CSV the project writes goes through write_csv)
# --------------------------------------------------------------------------------------------------

#: A text cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CSV_QUOTE = "'"  # prefixed to such a cell (and to a cell that starts with it, so reading undoes it exactly)


def neutralise_cell(value):
    """A text cell a spreadsheet shows as text: ``'`` prefixed when it starts with ``FORMULA_START`` or ``'``."""
    if isinstance(value, str) and value[:1] in (*FORMULA_START, CSV_QUOTE):
        return CSV_QUOTE + value
    return value


def restore_cell(value):
    """``neutralise_cell`` undone: one leading ``'`` removed."""
    return value[1:] if isinstance(value, str) and value.startswith(CSV_QUOTE) else value


def write_csv(frame, target, **kwargs) -> None:
    """``frame.to_csv`` (``index=False`` unless given) with every text cell neutralised (``neutralise_cell``);
    numbers are written as they are. ``read_csv`` reads it back exactly."""
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object or str(safe[column].dtype) in ("string", "str", "category"):
            safe[column] = safe[column].astype(object).map(neutralise_cell)
    safe.to_csv(target, **{"index": False, **kwargs})


def read_csv(path, **kwargs):
    """``pandas.read_csv`` of a CSV ``write_csv`` wrote, with its text cells restored (``restore_cell``)."""
    import pandas as pd

    frame = pd.read_csv(path, **kwargs)
    for column in frame.columns:
        if frame[column].dtype == object or str(frame[column].dtype) in ("string", "str"):
            frame[column] = frame[column].map(restore_cell)
    return frame


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and (if imported) TensorFlow/Keras."""
    random.seed(seed)
    np.random.seed(seed)
    if "keras" in sys.modules:
        sys.modules["keras"].utils.set_random_seed(seed)
