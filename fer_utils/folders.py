"""Step 2 — the manifest, a person-disjoint stratified split, and class folders.

Contract (other steps rely on it), all inside the run's work folder:

- ``manifest.csv``: one row per legend row and per unlisted image file, with at least
  ``image, emotion, person, source, split, reason``; ``split`` is ``train``, ``val``, ``test`` or
  ``excluded`` and ``reason`` says why for every excluded row, so the counts add up to the input.
  (Your own data: a row of the labels CSV, or a file of the class folders, is a legend row; ``image``
  is the path relative to the CSV's folder or the dataset root.)
- ``split/<train|val|test>/<emotion>/<file>``: files that Pillow and ``tf.io.decode_image`` both read.
- ``prepare.json``: parameters, seed, counts and timings of the run that wrote them.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import ExifTags
from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, StratifiedKFold, train_test_split

from fer_utils import EMOTIONS
from fer_utils.data import (
    IMAGES,
    LABELS_WHERE,
    TF_FORMATS,
    Audit,
    Dataset,
    DatasetError,
    ImageRefused,
    audit_dataset,
    check_not_inside,
    open_image,
    person_and_source_of,
    to_8bit,
)
from fer_utils.workfolder import MANIFEST, SPLIT_DIR, SPLITS, read_csv, require, write_csv, write_record
from fer_utils.workfolder import PREPARE_RECORD as RECORD

#: Why a row is excluded, by audit finding, in order of precedence.
EXCLUDE_REASONS = {
    "exact duplicate row": "exact duplicate row",
    "unknown label": "unknown label",
    "no label": "no label (empty emotion cell)",
    "left out by label_map": "left out by label_map",
    "conflicting labels": "conflicting labels for the same image",
    "repeated image": "image already listed with the same label",
    "missing file": "file missing from images/",
    "unreadable file": "file unreadable (corrupt or not an image)",
}


#: The reasons as your own data's layouts word them (``Audit.layout``): no ``images/`` folder, no legend.
LAYOUT_REASONS = {
    "csv": {"file missing from images/": "file missing (not found relative to the labels CSV's folder)",
            "unlisted file: no legend row, so no label": "unlisted file: no row of the labels CSV, so no label"},
    "folders": {"file missing from images/": "file missing",
                "unlisted file: no legend row, so no label": "unlisted file: not in a class folder, so no label"},
}


def build_manifest(audit: Audit, check: bool = True) -> pd.DataFrame:
    """One row per legend row and per unlisted file; unusable rows are marked ``excluded`` with a reason.
    ``check``: refuse data that cannot train a model (``check_trainable``).

    ``group`` is who a face belongs to for splitting: the person, merged across byte-identical files so
    that copies of one photo never end up on both sides of a split.
    """
    legend = audit.legend.copy()
    legend["split"] = ""
    legend["reason"] = ""
    by_row = audit.findings.dropna(subset=["row"])
    for kind, reason in reversed(EXCLUDE_REASONS.items()):  # reversed: the first reason wins
        rows = set(by_row.loc[by_row.kind == kind, "row"].astype(int))
        legend.loc[legend.row.isin(rows), ["split", "reason"]] = ["excluded", reason]
    # a row whose file is missing for a reason of its own (an empty cell, a path leaving the folder, a file in a
    # sub-folder of muxspace's images/): that reason, as the audit words it
    missing = by_row[(by_row.kind == "missing file") & ~by_row.detail.isin([LABELS_WHERE[audit.layout][1]])]
    why = dict(zip(missing.row.astype(int), missing.detail))
    own = legend.row.isin(why) & (legend.reason == EXCLUDE_REASONS["missing file"])
    legend.loc[own, "reason"] = legend.loc[own, "row"].map(why)
    unreadable = set(audit.findings.loc[audit.findings.kind == "unreadable file", "image"])
    legend.loc[legend.image.isin(unreadable), ["split", "reason"]] = ["excluded", EXCLUDE_REASONS["unreadable file"]]

    files = audit.files.set_index("file")
    unlisted = sorted(set(files.index) - set(legend.image))
    extra = pd.DataFrame({"image": unlisted, "row": pd.array([pd.NA] * len(unlisted), dtype="Int64"),
                          "user_id": "", "label": "", "emotion": None,
                          "split": "excluded", "reason": "unlisted file: no legend row, so no label"})
    extra["person"], extra["source"] = person_and_source_of(extra, audit.layout)
    for col in ("format", "mode", "width", "height", "readable"):
        extra[col] = files.loc[unlisted, col].to_numpy() if unlisted else []
    manifest = pd.concat([legend.astype({"row": "Int64"}), extra], ignore_index=True)
    manifest["sha1"] = manifest.image.map(files["sha1"])
    manifest["group"] = _groups(manifest)
    manifest["reason"] = manifest["reason"].replace(LAYOUT_REASONS.get(audit.layout, {}))
    columns = ["row", "image", "user_id", "label", "emotion", "person", "group", "source", "split", "reason",
               "format", "mode", "width", "height", "sha1"]
    if check:
        check_trainable(manifest, audit.split_by)
    return manifest[columns]


def check_trainable(manifest: pd.DataFrame, split_by: str = "person") -> None:
    """Refuse, before any split or copy, a dataset that cannot train and test a classifier: a ``DatasetError``
    when its usable images (those not excluded) cover fewer than 2 emotions, or fewer than 3 people (``split_by``
    ``"image"``: distinct images), which no train/val/test split can hold; it says why the rest were excluded.
    (A few more may still leave validation or test empty: ``write_split_folders`` refuses that, before any copy.)"""
    usable = manifest[manifest.split == ""]
    emotions = [e for e in EMOTIONS if e in set(usable.emotion.dropna())]
    groups = usable.group.nunique()
    if len(emotions) >= 2 and groups >= 3:
        return
    if usable.empty:
        problem, wanted = "no image is usable", "labelled images of at least 2 emotions"
    elif len(emotions) < 2:
        problem = (f"its usable images ({len(usable):,}) are all of one emotion, {emotions[0] if emotions else '?'}"
                   ": a classifier needs at least 2")
        wanted = "labelled images of another emotion"
    elif split_by == "person":
        problem = (f"its usable images show only {groups} {'person' if groups == 1 else 'people'}: a "
                   "train/val/test split that keeps each person in one split needs at least 3")
        wanted = "images of more people"
    else:
        problem = (f"only {groups} distinct {'image is' if groups == 1 else 'images are'} usable (byte-identical "
                   "copies count once; the dataset names nobody, so it is split by image): a train/val/test split "
                   "needs at least 3")
        wanted = "more labelled images"
    reasons = manifest.loc[manifest.split == "excluded", "reason"].value_counts()
    excluded = ("excluded: " + "; ".join(f"{reason} {n:,}" for reason, n in reasons.items()) + " (each with its "
                "reason in the audit of notebook 01, audit_findings.csv)") if len(reasons) else "none excluded"
    raise DatasetError(f"This dataset cannot train a model: {problem}. Of its {len(manifest):,} rows and files, "
                       f"{excluded}. Add {wanted}" + (", or fix the ones excluded." if len(reasons) else "."))


def _groups(manifest: pd.DataFrame) -> pd.Series:
    """Person ids, merged (union-find) wherever two files have identical bytes."""
    parent = {p: p for p in manifest.person}

    def find(p):
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    for _, people in manifest.dropna(subset=["sha1"]).groupby("sha1")["person"]:
        roots = sorted({find(p) for p in people})
        for r in roots[1:]:
            parent[r] = roots[0]
    return manifest.person.map(find)


def cap_per_class(manifest: pd.DataFrame, max_per_class: int | None, seed: int) -> pd.DataFrame:
    """For quick runs: keep at most ``max_per_class`` usable images per emotion (seeded choice)."""
    manifest = manifest.copy()
    if not max_per_class:
        return manifest
    usable = manifest[manifest.split == ""]
    rng = np.random.default_rng(seed)
    for _, rows in usable.groupby("emotion"):
        if len(rows) > max_per_class:
            drop = rng.choice(rows.index.to_numpy(), size=len(rows) - max_per_class, replace=False)
            manifest.loc[drop, ["split", "reason"]] = ["excluded", f"over max_per_class={max_per_class} (quick run)"]
    return manifest


# ---- generated from notebooks/02_preprocess_into_folders.ipynb, cell c11b ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def one_fold(labels, groups, n_splits, seed):
    """(keep, held) index arrays of the first fold of a StratifiedGroupKFold."""
    n_groups = len(set(groups))
    n_splits = max(2, min(n_splits, n_groups))
    # too few faces to stratify (tiny quick runs)
    if pd.Series(labels).value_counts().max() < n_splits:
        splitter = GroupShuffleSplit(
            n_splits=1, test_size=1 / n_splits, random_state=seed
        )
        return next(splitter.split(np.zeros(len(labels)), labels, groups))
    # rare classes: reported by the notebook, not as a warning
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The least populated class", category=UserWarning
        )
        # one face per group (nobody named): a plain stratified split, much faster
        if n_groups == len(labels):
            splitter = StratifiedKFold(
                n_splits=n_splits, shuffle=True, random_state=seed
            )
            return next(splitter.split(np.zeros(len(labels)), labels))
        splitter = StratifiedGroupKFold(
            n_splits=n_splits, shuffle=True, random_state=seed
        )
        return next(splitter.split(np.zeros(len(labels)), labels, groups))
# ---- end of generated code (notebooks/02_preprocess_into_folders.ipynb, cell c11b) ----


# ---- generated from notebooks/02_preprocess_into_folders.ipynb, cell c11c ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def split_by_person(
    manifest: pd.DataFrame,
    test_size: float = 0.2,
    val_size: float = 0.1,
    seed: int = 42,
) -> pd.DataFrame:
    """Assign every usable row to train/val/test so that no person is in two splits,
    stratified by emotion as far as whole people allow; every emotion with images
    keeps at least one person in train."""
    if not (0 < test_size < 1 and 0 < val_size < 1 and test_size + val_size < 1):
        raise ValueError(
            f"test_size={test_size} and val_size={val_size} must be in (0, 1) and "
            "sum below 1."
        )
    manifest = manifest.copy()
    usable = manifest[manifest.split == ""]
    if usable.group.nunique() < 3:
        raise ValueError(
            f"Only {usable.group.nunique()} people among the usable images: a "
            "person-disjoint train/val/test split needs at least 3. Raise "
            "max_per_class or add data."
        )
    # labels to stratify, people to keep whole
    y, g = usable.emotion.to_numpy(), usable.group.to_numpy()
    # e.g. 5 folds: one is the test split
    rest, test = one_fold(y, g, round(1 / test_size), seed)
    # then val from the rest
    train, val = one_fold(y[rest], g[rest], round((1 - test_size) / val_size), seed)
    split = np.empty(len(usable), dtype=object)
    split[test] = "test"
    split[rest[val]] = "val"
    split[rest[train]] = "train"
    split = keep_every_emotion_in_train(usable, pd.Series(split, index=usable.index))
    manifest.loc[usable.index, "split"] = split
    return manifest
# ---- end of generated code (notebooks/02_preprocess_into_folders.ipynb, cell c11c) ----


def fold_shares(test_size: float = 0.2, val_size: float = 0.1) -> tuple[float, float]:
    """The shares ``split_by_person`` holds out: it keeps people whole by taking one of ``k`` folds, so
    ``test_size`` becomes ``1/k`` (0.3: one fold of 3) and ``val_size`` one of the folds of the rest; shares of
    the form ``1/k`` (0.2, 0.25, 0.5) are kept as asked (with enough people)."""
    test = 1 / max(2, round(1 / test_size))
    return test, (1 - test) / max(2, round((1 - test_size) / val_size))


def random_split_overlap(manifest: pd.DataFrame, test_size: float = 0.2, seed: int = 42) -> dict:
    """How many people a plain random (stratified, not grouped) split would put in both train and test."""
    usable = manifest[manifest.split.isin(SPLITS)]
    stratify = usable.emotion if usable.emotion.value_counts().min() >= 2 else None
    try:
        train, test = train_test_split(usable, test_size=test_size, random_state=seed, stratify=stratify)
    except ValueError:  # too few faces to hold out one of each emotion (a tiny dataset): not stratified
        train, test = train_test_split(usable, test_size=test_size, random_state=seed)
    shared = set(train.group) & set(test.group)
    return {"people_in_both": len(shared), "people_in_test": test.group.nunique(),
            "test_faces_of_shared_people": int(test.group.isin(shared).sum()), "test_faces": len(test)}


# ---- generated from notebooks/02_preprocess_into_folders.ipynb, cell c08b ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def images_by_emotion(manifest: pd.DataFrame) -> dict[str, list[str]]:
    """The seed tutorial's dictionary: emotion -> list of image file names (usable
    rows only)."""
    usable = manifest[manifest.split.isin(SPLITS) | (manifest.split == "")]
    return {e: usable.loc[usable.emotion == e, "image"].tolist() for e in EMOTIONS}
# ---- end of generated code (notebooks/02_preprocess_into_folders.ipynb, cell c08b) ----


def copy_or_reencode(src: Path, dest_dir: Path, fmt: str | None, mode: str | None, name: str | None = None) -> Path:
    """Put ``src`` in ``dest_dir`` so that Pillow and ``tf.io.decode_image`` both read it.

    JPEG/PNG files in L or RGB with a matching name and no EXIF rotation are copied byte for byte; anything
    else (WebP named .jpg, CMYK, 16-bit or transparent images, TIFF, a phone photo stored sideways with an EXIF
    orientation, which ``tf.io.decode_image`` ignores…) is re-encoded as PNG, keeping the file's stem, by
    ``fer_utils.data.to_8bit`` — the same rule prediction reads photos with (16-bit scaled, not clipped;
    transparency flattened onto white; upright by EXIF orientation). ``name``: the file name to give it
    (default: ``src``'s).
    """
    name = name or src.name
    if kept_as_is(src, fmt, mode):
        dest = dest_dir / name
        shutil.copyfile(src, dest)
        return dest
    dest = dest_dir / (Path(name).stem + ".png")
    with open_image(src) as im:
        to_8bit(im).save(dest, format="PNG")
    return dest


def kept_as_is(src: Path, fmt: str | None, mode: str | None) -> bool:
    """Whether ``copy_or_reencode`` copies ``src`` (of Pillow format ``fmt`` and mode ``mode``) byte for byte:
    a JPEG or PNG in L or RGB, named by its format, stored upright. Training then decodes the file itself with
    ``tf.io.decode_image``; prediction decodes such a file the same way (``prediction.as_trained``)."""
    return (fmt in ("JPEG", "PNG") and mode in ("L", "RGB") and Path(src).suffix.lower() in TF_FORMATS[fmt]
            and upright(Path(src)))


def upright(path: Path) -> bool:
    """Whether an image's pixels are stored upright: no EXIF orientation, or orientation 1 (an unreadable
    header counts as upright; the audit has said what is wrong with such a file)."""
    try:
        with warnings.catch_warnings():  # the audit has reported corrupt EXIF already: no note while opening either
            warnings.simplefilter("ignore")
            with open_image(path) as im:
                if "exif" not in im.info and im.format != "PNG":  # a JPEG's EXIF is in its header
                    return True  # a PNG's eXIf chunk may follow the pixels: getexif() reads on to find it
                return im.getexif().get(ExifTags.Base.Orientation, 1) in (1, None)
    except (OSError, ValueError, SyntaxError, ImageRefused):
        return True


def flat_name(image: str) -> str:
    """The file name an image gets in the class folders: its path with ``/`` as ``__`` (``train/angry/im0.png``
    -> ``train__angry__im0.png``), so that same-named files of different folders never collide (``flat_names``
    settles the rare names that still would)."""
    return image.replace("/", "__")


#: The longest file name (UTF-8 bytes) the class folders use; most file systems allow 255.
MAX_NAME_BYTES = 150


def flat_names(images: pd.Series, folders: pd.Series) -> pd.Series:
    """The file names ``images`` (paths) get in their class ``folders`` (``train/happiness``…): ``flat_name``,
    except where two would share a stem in one folder (``a/b.png`` and ``a__b.png``; ``a.jpg`` and ``a.png``,
    whose copy may be re-encoded as PNG; names differing only in case) or where the name is longer than
    ``MAX_NAME_BYTES``: those get a shortened stem and 12 hex digits of their path's sha256, so that no image
    is lost to another's name and no name is too long to write."""
    import hashlib

    flat = images.map(flat_name)
    key = folders.astype(str) + "/" + flat.map(lambda name: Path(name).stem.lower())
    settle = key.duplicated(keep=False) | flat.map(lambda name: len(name.encode()) > MAX_NAME_BYTES)

    def unique(image: str, name: str) -> str:
        digest, suffix = hashlib.sha256(image.encode()).hexdigest()[:12], Path(name).suffix[:10]
        stem = Path(name).stem.encode()[:MAX_NAME_BYTES - 30].decode(errors="ignore")
        return f"{stem}--{digest}{suffix}"

    return flat.where(~settle, [unique(i, n) for i, n in zip(images, flat)])


def write_split_folders(manifest: pd.DataFrame, data_root, work_dir: str | os.PathLike,
                        workers: int | None = None) -> pd.DataFrame:
    """Write ``split/<split>/<emotion>/<file>`` under the work folder; return the manifest with ``path``.

    ``data_root``: the ``Dataset`` (any layout), or a muxspace dataset folder. The folders are built under
    a temporary name and swapped in whole, so a re-run (or a run with other parameters) leaves no stale
    files, and an interrupted run leaves the previous folders intact.
    """
    empty = [s for s in SPLITS if not (manifest.split == s).any()]
    if empty:  # before any file is written: training needs val, evaluation needs test
        used = manifest[manifest.split.isin(SPLITS)]
        raise ValueError(f"The split left {' and '.join(empty)} without faces: {len(used)} usable faces of "
                         f"{used.group.nunique()} people are too few for train, val and test. Use more images (a "
                         "larger max_per_class, or more data; a person's faces stay in one split).")
    images_dir = data_root.images_dir if isinstance(data_root, Dataset) else Path(data_root) / IMAGES
    data_root = data_root.root if isinstance(data_root, Dataset) else Path(data_root)
    work_dir = Path(work_dir)
    check_not_inside(work_dir, data_root)
    manifest = manifest.copy()
    tmp = work_dir / f".{SPLIT_DIR}-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for s in SPLITS:
        for e in EMOTIONS:
            (tmp / s / e).mkdir(parents=True)
    todo = manifest[manifest.split.isin(SPLITS)]
    names = flat_names(todo.image, todo.split + "/" + todo.emotion)

    def place(row):
        dest = copy_or_reencode(images_dir / row.image, tmp / row.split / row.emotion, row.format, row.mode,
                                names[row.Index])
        return f"{SPLIT_DIR}/{row.split}/{row.emotion}/{dest.name}"

    try:
        with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) * 2)) as pool:
            paths = list(pool.map(place, todo.itertuples()))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    manifest["path"] = ""
    manifest.loc[todo.index, "path"] = paths
    final, old = work_dir / SPLIT_DIR, work_dir / f".{SPLIT_DIR}-old-{os.getpid()}"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return manifest


def split_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Faces per emotion and split (the excluded rows in their own column), with totals."""
    table = pd.crosstab(manifest.emotion.fillna("(no label)"), manifest.split, margins=True, margins_name="total")
    # every split, even one left empty (write_split_folders refuses that, saying why)
    return table.reindex(columns=[c for c in (*SPLITS, "excluded", "total") if c in table.columns or c in SPLITS],
                         fill_value=0)


def exclusion_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Excluded rows counted by reason."""
    excluded = manifest[manifest.split == "excluded"]
    return excluded.reason.value_counts().rename_axis("reason").reset_index(name="rows")


#: What the split is, by what is known of who is in each photo (``Audit.split_by``), as prepare.json says it.
SPLIT_METHODS = {
    "person": "person-grouped stratified split (StratifiedGroupKFold): no person in two splits",
    "image": ("plain stratified split by image (byte-identical files kept together): the dataset names nobody, "
              "so one person's photos may be in train and test"),
}


class ManifestError(ValueError):
    """The manifest breaks its contract (rows lost, no reason, a person in two splits...)."""


def check_manifest(manifest: pd.DataFrame, audit: Audit) -> dict:
    """Verify the manifest's contract; raise ``ManifestError`` naming what is wrong; return the counts."""
    n_legend, n_files = len(audit.legend), len(audit.files)
    n_unlisted = int((audit.findings.kind == "unlisted file").sum())
    problems = []
    if len(manifest) != n_legend + n_unlisted:
        problems.append(f"{len(manifest)} rows != {n_legend} legend rows + {n_unlisted} unlisted files")
    if not manifest.split.isin([*SPLITS, "excluded"]).all():
        problems.append("some rows have no split")
    no_reason = manifest[(manifest.split == "excluded") & (manifest.reason.fillna("") == "")]
    if not no_reason.empty:
        problems.append(f"excluded rows without a reason: {no_reason.image.tolist()[:5]}")
    used = manifest[manifest.split.isin(SPLITS)]
    if not used.image.is_unique:
        problems.append("an image is used twice")
    sides = used.groupby("group").split.nunique()
    if (sides > 1).any():
        problems.append(f"people in two splits: {sides[sides > 1].index.tolist()[:5]}")
    if problems:
        raise ManifestError("; ".join(problems))
    counts = manifest.split.value_counts()
    return {"legend_rows": n_legend, "files_on_disk": n_files, "unlisted_files": n_unlisted,
            "manifest_rows": len(manifest), **{s: int(counts.get(s, 0)) for s in (*SPLITS, "excluded")}}


def save_outputs(manifest: pd.DataFrame, audit: Audit, dataset: Dataset, work_dir: str | os.PathLike,
                 parameters: dict, timings: dict | None = None) -> dict:
    """Check the manifest's contract, then write ``manifest.csv`` and the ``prepare.json`` record."""
    work_dir = Path(work_dir)
    counts = check_manifest(manifest, audit)
    write_csv(manifest, work_dir / MANIFEST)
    used = manifest[manifest.split.isin(SPLITS)]
    # a person-grouped split covers only the faces whose person is named (the audit's "no person" findings)
    alone = int(used.group.astype(str).str.startswith("image:").sum()) if audit.split_by == "person" else 0
    method = SPLIT_METHODS[audit.split_by] + (f"; {alone} faces with no person named are each split as a single "
                                              "image, which that guarantee does not cover" if alone else "")
    record = {
        "step": "prepare", "parameters": parameters,
        "dataset": {"origin": dataset.origin, "legend_sha256": dataset.legend_sha256,
                    "pinned_upstream": dataset.is_pinned_upstream, "layout": dataset.layout},
        "split_by": audit.split_by, "split_method": method, "faces_without_person": alone,
        "label_map": audit.label_map,
        "emotions_trained": [e for e in EMOTIONS if (used[used.split == "train"].emotion == e).any()],
        "emotions_absent": [e for e in EMOTIONS if not (used.emotion == e).any()],
        "counts": counts, "per_split_emotion": split_table(manifest).to_dict(),
        "exclusions": exclusion_table(manifest).set_index("reason").rows.to_dict(),
        "people": {s: int(manifest[manifest.split == s].group.nunique()) for s in SPLITS},
        "timings": timings or {},
    }
    write_record(work_dir / RECORD, record)
    return counts


def prepare(dataset: Dataset, work_dir: str | os.PathLike, seed: int = 42, test_size: float = 0.2,
            val_size: float = 0.1, max_per_class: int | None = None, audit: Audit | None = None,
            label_map: dict | None = None) -> pd.DataFrame:
    """The whole step in one call: audit, manifest, split, class folders, ``manifest.csv``, ``prepare.json``."""
    timings = {}
    t0 = time.perf_counter()
    audit = audit or audit_dataset(dataset, label_map=label_map)
    timings["audit_s"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    manifest = cap_per_class(build_manifest(audit), max_per_class, seed)
    manifest = split_by_person(manifest, test_size, val_size, seed)
    timings["split_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    manifest = write_split_folders(manifest, dataset, work_dir)
    timings["folders_s"] = time.perf_counter() - t2
    timings["total_s"] = time.perf_counter() - t0
    parameters = {"seed": seed, "test_size": test_size, "val_size": val_size, "max_per_class": max_per_class}
    save_outputs(manifest, audit, dataset, work_dir, parameters, timings)
    return manifest


def load_manifest(work_dir: str | os.PathLike) -> pd.DataFrame:
    path = require(Path(work_dir) / MANIFEST, "prepare", "manifest.csv")
    return read_csv(path, dtype={"user_id": str, "label": str, "reason": str, "path": str},
                       keep_default_na=False, na_values={"row": [""], "emotion": [""], "width": [""], "height": [""]})


# ---- generated from notebooks/02_preprocess_into_folders.ipynb, cell c11d ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def keep_every_emotion_in_train(usable: pd.DataFrame, split: pd.Series) -> pd.Series:
    """``split`` with the smallest group of each emotion that has nobody in train
    moved to train."""
    split = split.copy()
    for emotion in usable.emotion.unique():
        of_emotion = usable.emotion == emotion
        if not (split[of_emotion] == "train").any():
            sizes = usable[of_emotion].groupby("group").size().sort_values()
            split[usable.group == sizes.index[0]] = "train"
    return split
# ---- end of generated code (notebooks/02_preprocess_into_folders.ipynb, cell c11d) ----
