"""What ``python -m fer_utils run`` checks before any kernel starts or any folder is made: the ``-p`` values
that are training settings, and the data and work folders (one line per problem; ``runner.main`` prints them
and exits with status 2)."""

from __future__ import annotations

import os
import re
from pathlib import Path

from fer_utils.workfolder import (
    DATASET_RECORD,
    FIGURES_DIR,
    NEEDS,
    NOTEBOOKS,
    PROJECT_FOLDERS,
    REPO_ROOT,
    SYSTEM_ENTRIES,
    WORK_ENTRIES,
    get_work_dir,
    read_record,
)


def check_config(params: dict) -> list[str]:
    """The ``-p`` values that are ``TrainConfig`` fields, checked by ``TrainConfig`` itself (ranges, names)."""
    from fer_utils import training

    fields = set(training.TrainConfig().to_dict())
    if params.get("strategy") == "multi_worker":  # a notebook's kernel starts TensorFlow before it could join
        return ["-p strategy multi_worker: the notebooks train on this machine (strategy 'default' or 'mirrored'); "
                "on a cluster, start `python -m fer_utils train -p strategy multi_worker` on every worker (README: "
                "'Train on more devices or a cluster'), and notebook 08 shows two workers on this machine"]
    try:
        training.TrainConfig(**{k: v for k, v in params.items() if k in fields})
    except ValueError as err:
        return [str(err)]
    return []


def kind_checked(params: dict) -> dict:
    """The ``-p`` values whose kind the notebooks' declared defaults decide (``parameters.check_values``): all
    but the ``TrainConfig`` fields that several kinds fit (``class_weight``: None, "sqrt" or 0.5), which
    ``check_config`` checks by value."""
    from fer_utils import training

    return {k: v for k, v in params.items() if k not in training.TrainConfig.CHECKED_BY_VALUE}


#: Largest image_size accepted: the decoded faces are cached in memory, (size² × channels) bytes each.
MAX_IMAGE_SIZE = 512
#: How a JSON word is written in the Python dict ``-p label_map`` takes.
JSON_TO_PYTHON = {"null": "None", "true": "True", "false": "False"}


def check_choices(params: dict) -> list[str]:
    """The ``-p`` values outside ``TrainConfig`` that must be one of a few names, or parse: ``detector``,
    ``detection`` (notebook 07), ``precision`` (04), ``label_map`` (01), and ``image_size`` (03) not so large
    that its cache cannot fit in memory; one line each, before notebook 01 starts."""
    from fer_utils import data, models, pipelines

    problems = []
    if "detector" in params or "detection" in params:
        from fer_utils.prediction.detection import DETECTION_MODES, DETECTORS

        for name, allowed in (("detector", DETECTORS), ("detection", DETECTION_MODES)):
            if name in params and params[name] not in allowed:
                problems.append(f"-p {name} {params[name]!r}: must be one of {', '.join(allowed)}")
    if "precision" in params:
        try:
            models.resolve_precision(params["precision"], gpu=False)
        except ValueError as err:
            problems.append(f"-p precision {params['precision']!r}: {err}")
    if "image_size" in params:
        try:
            size = max(pipelines.size_pair(params["image_size"]))
        except (TypeError, ValueError):
            size = 0  # TrainConfig names what is wrong with it
        if size > MAX_IMAGE_SIZE:
            problems.append(f"-p image_size {params['image_size']!r}: at most {MAX_IMAGE_SIZE} pixels a side (the "
                            "decoded faces are cached in memory: at 512 px, 0.25 MB per gray face, 0.75 MB in rgb)")
    if "label_map" in params:
        value = params["label_map"]
        if isinstance(value, str):
            unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "", value)  # a label may well be 'true'
            json_words = sorted(set(re.findall(r"\b(null|true|false)\b", unquoted)))
            hint = (f"it is Python, not JSON: write {', '.join(JSON_TO_PYTHON[w] for w in json_words)} for "
                    f"{', '.join(json_words)}" if json_words else "check its quotes, colons and braces")
            problems.append(f"-p label_map {value!r}: not readable as a Python dict ({hint}), e.g. -p label_map "
                            "\"{'joy': 'happiness', 'other': None}\"")
        elif value is not None:
            try:
                data.check_label_map(value)
            except data.DatasetError as err:
                problems.append(f"-p label_map: {err}")
    return problems


def check_inputs(work_dir: str | None, notebooks: list[Path]) -> list[str]:
    """What the notebooks to run read from the work folder but no notebook of this run writes (``NEEDS``), when it
    is missing (a run ``--from`` a later notebook in a fresh folder): one line each, naming the notebook to run."""
    work = get_work_dir(work_dir, create=False)
    step_of = {name: step for step, name in NOTEBOOKS.items()}
    running = {step_of.get(p.name) for p in notebooks}
    def start(maker: str) -> str:  # the notebook to start from: ``maker``, or earlier if its own inputs are missing
        earlier = [start(m) for name, m in NEEDS.get(maker, ()) if m not in running and not (work / name).exists()]
        return min([NOTEBOOKS[maker][:2], *earlier])

    problems = []
    for path in notebooks:
        for name, maker in NEEDS.get(step_of.get(path.name), ()):
            if maker not in running and not (work / name).exists() and not any(name in p for p in problems):
                first = start(maker)
                problems.append(f"{path.name} reads {name}, which notebooks/{NOTEBOOKS[maker]} writes, and the work "
                                f"folder {work} has none: run from that notebook (--from {first}"
                                + ("" if first == NOTEBOOKS[maker][:2] else ": it needs what the ones before it write")
                                + "), or without --from")
    return problems


def check_folders(data_dir: str | None, work_dir: str | None, notebooks: list[Path],
                  origin: str = "--data-dir") -> list[str]:
    """What is wrong with the data and work folders, one line each, before anything is created: the work
    folder must be a folder (or not exist yet) that can be written, and must not be, or lie inside, the data
    folder; the data folder must exist, and a legend it has must hold rows (when notebook 01 will read it)."""
    from fer_utils import data

    if work_dir == "":
        return ["--work-dir is empty: name a folder (or leave the option out for $FER_WORK_DIR, else work/)"]
    problems = []
    data_path = data_dir or os.environ.get("FER_DATA_DIR")
    origin = origin if data_dir else "$FER_DATA_DIR"
    work = get_work_dir(work_dir, create=False)
    if work.exists() and not work.is_dir():
        problems.append(f"the work folder {work} is a file: choose a folder (--work-dir)")
    else:
        existing = next(p for p in (work, *work.parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            problems.append(f"the work folder {work} cannot be written ({existing} is read-only): choose another "
                            "(--work-dir)")
    if (REPO_ROOT / "notebooks").is_dir() and work.resolve() == REPO_ROOT.resolve():
        problems.append(f"the work folder {work} is the repository itself: the notebooks' figures, records and class "
                        "folders would land among (and over) its files; choose a folder of its own (--work-dir; the "
                        "default is work/ in the repository)")
    elif (REPO_ROOT / "notebooks").is_dir() and (inside := next(
            (n for n in PROJECT_FOLDERS if work.resolve().is_relative_to((REPO_ROOT / n).resolve())), None)):
        problems.append(f"the work folder {work} is inside the repository's {inside}/, whose files are the project's "
                        "own: the notebooks' figures, records and class folders would land among them; choose a folder "
                        "of its own (--work-dir; the default is work/ in the repository)")
    if data_path:
        root = Path(data_path).expanduser().resolve()
        if not root.exists():
            problems.append(f"{origin} {root} does not exist")
        elif work == root or work.is_relative_to(root):
            problems.append(f"the work folder {work} is inside the dataset {root} ({origin}); the dataset is only "
                            "ever read: choose a work folder outside it (--work-dir)")
        elif root.is_relative_to(work.resolve()):
            problems.append(f"the dataset {root} ({origin}) is inside the work folder {work}, whose contents the "
                            "notebooks write and replace: move the dataset out, or choose another work folder "
                            "(--work-dir)")
        elif any(p.name.startswith("01_") for p in notebooks):
            try:
                data.load_legend(data.open_dataset(root, origin))
            except (data.DatasetError, OSError) as err:
                problems.append(str(err))
    held = data.dataset_holding(work)
    if held and not any(str(work) in line for line in problems):  # a dataset not named (or another one)
        problems.append(f"the work folder {work} is inside {held}, which holds a dataset; a dataset is only ever "
                        "read: choose a work folder outside it (--work-dir)")
    foreign = foreign_entries(work)
    if foreign and not any(str(work) in line for line in problems):  # (one line for one mistaken folder)
        problems.append(f"the work folder {work} holds files that no notebook of this series made ("
                        f"{', '.join(foreign[:3])}{', …' if len(foreign) > 3 else ''}) and none that one did: the "
                        "notebooks write and replace files there, so choose a new or empty folder (--work-dir)")
    mine, theirs = dataset_identity(data_path), work / DATASET_RECORD
    if mine and theirs.exists() and (data_path or any(p.name.startswith("01_") for p in notebooks)):
        recorded = read_record(theirs)
        if {k: recorded.get(k) for k in mine} != mine:
            problems.append(f"the work folder {work} holds results made from another dataset ({recorded.get('layout')}"
                            f", sha256 {str(recorded.get('sha256'))[:12]}…, in {theirs.name}) than this one "
                            f"({mine['layout']}, sha256 {mine['sha256'][:12]}…; a dataset with images added or "
                            "removed is another one): give this dataset a work folder of its own (--work-dir), which "
                            "keeps the earlier results as they are, or delete that one to start over")
    return problems


#: A figure a notebook saves: ``figures/NN_name.png``.
NOTEBOOK_FIGURE = re.compile(r"^\d\d_[A-Za-z0-9_\-]+\.png$")


def foreign_entries(work: Path) -> list[str]:
    """The names in an existing, non-empty folder none of whose entries is a work folder's (``WORK_ENTRIES``, or a
    ``figures/`` holding only the notebooks' ``NN_*.png``): someone's own folder, given as ``--work-dir`` by
    mistake; ``[]`` for a new, empty or work folder. Hidden entries (``.DS_Store``, ``.ipynb_checkpoints``) and
    those a file system makes (``SYSTEM_ENTRIES``: ``lost+found``…) count for neither."""
    if not work.is_dir():
        return []
    try:
        names = sorted(p.name for p in work.iterdir() if not p.name.startswith(".") and p.name not in SYSTEM_ENTRIES)
        figures = work / FIGURES_DIR
        ours = figures.is_dir() and all(NOTEBOOK_FIGURE.match(p.name) for p in figures.iterdir()
                                        if not p.name.startswith("."))
    except OSError:
        return []  # unreadable: the write check says so
    return [] if not names or set(names) & set(WORK_ENTRIES) or ours else names


def recorded_data_dir(work: Path) -> tuple[str | None, str | None]:
    """(folder, problem): the dataset folder a run that starts after notebook 01, given none (no ``--data-dir``,
    no ``$FER_DATA_DIR``), uses: the one this work folder's results come from (``dataset.json``'s ``path``).
    ``(None, None)`` when the record names no folder (the pinned upstream copy, downloaded or cached, or a record
    from before folders were recorded); a problem, one line, when the folder it names is gone."""
    record = Path(work) / DATASET_RECORD
    path = read_record(record).get("path") if record.is_file() else None
    if not path:
        return None, None
    if not Path(path).exists():
        return None, (f"the work folder {work} holds results made from the dataset at {path}, which is not there "
                      "any more: name it with --data-dir (or run from notebook 01 on another dataset, in another "
                      "work folder)")
    return path, None


def dataset_identity(data_path: str | None) -> dict | None:
    """What makes a dataset the same one (its layout and the sha256 of its labels, or of its class folders' file
    list), whatever folder it is in; the pinned upstream commit's when no folder is named; ``None`` when the
    folder cannot be opened (``check_folders`` says why). ``dataset.json`` stores this and, when a folder was
    named, the folder (``path``), which a later partial run uses (``recorded_data_dir``)."""
    from fer_utils import data

    if not data_path:
        return {"layout": "muxspace", "sha256": data.LEGEND_SHA256}
    try:
        found = data.open_dataset(Path(data_path).expanduser())
    except (data.DatasetError, OSError):
        return None
    return {"layout": found.layout, "sha256": found.legend_sha256}
