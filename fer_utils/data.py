"""Step 1 — obtain, verify and audit the dataset.

The dataset is github.com/muxspace/facial_expressions, pinned to one upstream commit. It is found, in
this order: an explicit ``data_dir``; the environment variable ``FER_DATA_DIR``; a verified copy in the
cache folder; a fresh download into that cache (with a progress bar, extracted safely, verified).

Your own data works too (``data_dir`` / ``FER_DATA_DIR``), in one of three layouts (``LAYOUTS``; the
README's "Your own data"): the muxspace one (``images/`` + ``data/legend.csv``); a CSV of
``image,emotion[,person]`` (``data_dir`` names the CSV file, or a folder holding ``labels.csv`` or a
single ``*.csv``; image paths are relative to the CSV's folder); or class folders (``<emotion>/*.jpg``,
also inside split folders ``train/<emotion>/``, ``test/<emotion>/``: FER2013's image release). Labels
other than the 8 emotions and their usual spellings are mapped with ``label_map``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tarfile
import tempfile
import unicodedata
import urllib.error
import urllib.request
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from fer_utils import EMOTIONS
from fer_utils.workfolder import sha256_of

UPSTREAM_REPO = "muxspace/facial_expressions"
UPSTREAM_COMMIT = "5fb9c13afac07c55eae8d25eb6b50af344ad60c9"
ARCHIVE_URL = f"https://github.com/{UPSTREAM_REPO}/archive/{UPSTREAM_COMMIT}.tar.gz"
LEGEND_SHA256 = "a4be0fc5afa10e44fdc717bf2fe5b3e2c916c07335aec254111c74b40ec75eb0"
LEGEND = Path("data") / "legend.csv"
IMAGES = Path("images")

#: Spellings users write for the canonical emotions (after strip + lower case).
LABEL_ALIASES = {
    "angry": "anger", "happy": "happiness", "sad": "sadness", "surprised": "surprise",
    "disgusted": "disgust", "fearful": "fear", "afraid": "fear", "scared": "fear",
    "contemptuous": "contempt", "calm": "neutral",
}
#: Formats that both Pillow and ``tf.io.decode_image`` read, with the file endings that name them.
TF_FORMATS = {"JPEG": (".jpg", ".jpeg"), "PNG": (".png",), "GIF": (".gif",), "BMP": (".bmp",)}
#: Files at a dataset's root that may hold labels but are no CSV (a hint when no class folder is an emotion).
LABEL_TABLE_SUFFIXES = (".txt", ".tsv", ".xlsx", ".xls", ".ods", ".json")
#: The file endings that name each Pillow format, for the audit's ``format mismatch`` (an MPO, a camera's
#: multi-picture JPEG, is a JPEG to every reader).
FORMAT_SUFFIXES = {"JPEG": (".jpg", ".jpeg", ".jpe", ".jfif"), "MPO": (".jpg", ".jpeg", ".mpo"), "PNG": (".png",),
                   "GIF": (".gif",), "BMP": (".bmp", ".dib"), "TIFF": (".tif", ".tiff"), "WEBP": (".webp",),
                   "PPM": (".ppm", ".pgm", ".pbm", ".pnm")}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
#: The only formats ever decoded (Pillow's names; JPEG includes a camera's MPO): those of ``IMAGE_SUFFIXES``.
#: The dataset is all JPEG; anything else (EPS, which Pillow hands to Ghostscript, PSD, ICO...) is not an image here.
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
FORMATS_READ = "JPEG, PNG, GIF, BMP, WebP, TIFF or PPM/PGM"
#: The most pixels an image may have to be decoded (Pillow's own hard limit is 179 megapixels, 3 GB and more
#: of memory): a 20 KB PNG can say it is 13,000 x 13,000. A phone photo has 12-50 megapixels.
MAX_PIXELS = 50_000_000


class DatasetError(RuntimeError):
    """The dataset could not be found, downloaded or verified; the message says what to do."""


#: The dataset layouts ``get_dataset`` recognises, in the order it looks for them.
LAYOUTS = {
    "muxspace": "images/<file> and data/legend.csv (user.id,image,emotion): muxspace/facial_expressions",
    "csv": "a CSV of image,emotion[,person] (labels.csv, or the one *.csv at the root, or data_dir naming "
           "the CSV file); image paths relative to the CSV's folder",
    "folders": "class folders <emotion>/<file>, or <split>/<emotion>/<file> (FER2013's image release)",
}
#: The CSV ``get_dataset`` takes when a folder holds several.
LABELS_CSV = "labels.csv"
#: Column names accepted in a labels CSV (after strip + lower case), first match wins.
CSV_COLUMNS = {"image": ("image", "file", "filename", "path"), "emotion": ("emotion", "label", "expression"),
               "person": ("person", "person_id", "subject", "identity", "user.id", "user_id"),
               "source": ("source",)}
#: Folder names taken for a dataset's own split (``train/<emotion>/...``): their files are re-split by us.
SPLIT_FOLDERS = ("train", "training", "test", "testing", "val", "valid", "validation", "publictest", "privatetest")


# --------------------------------------------------------------------------------------------------
# Locating, downloading and verifying
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Where the dataset lives and whether it is the pinned upstream copy."""

    root: Path
    origin: str  # "data_dir", "FER_DATA_DIR", "--data-dir", "work folder" (dataset.json), "cache", "download",
    #   or notebook 08's "scale_data_dir" and "generated" (its synthetic faces, ``write_synthetic_dataset``)
    legend_sha256: str  # of legend.csv, of the labels CSV, or of the class folders' file list (``LAYOUTS``)
    layout: str = "muxspace"  # a key of LAYOUTS
    labels_csv: Path | None = None  # layout "csv": the CSV file

    @property
    def is_pinned_upstream(self) -> bool:
        return self.layout == "muxspace" and self.legend_sha256 == LEGEND_SHA256

    @property
    def images_dir(self) -> Path:
        """The folder the ``image`` column's paths are relative to: ``images/`` (muxspace), else the root."""
        return self.root / IMAGES if self.layout == "muxspace" else self.root

    def describe(self) -> str:
        if self.origin == "generated":
            return (f"Dataset generated here (data.write_synthetic_dataset): synthetic faces in class folders (the "
                    f"folder name is the label; file list sha256 {self.legend_sha256[:12]}).")
        where = {"data_dir": "the data_dir parameter", "FER_DATA_DIR": "$FER_DATA_DIR",
                 "--data-dir": "python -m fer_utils run --data-dir",
                 "work folder": "the work folder's dataset.json (the data its results come from)",
                 "cache": "the download cache", "download": "a fresh download",
                 "scale_data_dir": "the scale_data_dir parameter"}[self.origin]
        if self.layout == "csv":
            return (f"Dataset from {where}: your own data, labels from {self.labels_csv.name} (sha256 "
                    f"{self.legend_sha256[:12]}), image paths relative to its folder.")
        if self.layout == "folders":
            return (f"Dataset from {where}: your own data in class folders (the folder name is the label; "
                    f"file list sha256 {self.legend_sha256[:12]}).")
        kind = ("pinned upstream copy (legend.csv sha256 verified)" if self.is_pinned_upstream
                else "local copy whose legend.csv differs from the pinned upstream")
        return f"Dataset from {where}: {kind}, commit {UPSTREAM_COMMIT[:7]}."


def default_cache_dir() -> Path:
    """``$FER_CACHE_DIR``, else ``$XDG_CACHE_HOME/fer-notebooks``, else ``~/.cache/fer-notebooks``."""
    if os.environ.get("FER_CACHE_DIR"):
        return Path(os.environ["FER_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fer-notebooks"


def check_dataset_root(root: Path) -> str:
    """Check a dataset root has ``images/`` and ``data/legend.csv``; return the legend's sha256."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Dataset folder {root} does not exist. Point data_dir or FER_DATA_DIR at "
                           "the folder that holds images/ and data/legend.csv.")
    missing = [str(p) for p in (IMAGES, LEGEND) if not (root / p).exists()]
    if missing:
        raise DatasetError(f"{root} is not a facial_expressions dataset root: it lacks {', '.join(missing)}. "
                           "Point data_dir or FER_DATA_DIR at the folder that holds images/ and "
                           "data/legend.csv (the root of a clone of muxspace/facial_expressions) — or, for your "
                           "own data, at a CSV of image,emotion[,person] or a folder of class folders "
                           "(<emotion>/*.jpg): README, 'Your own data'.")
    return sha256_of(root / LEGEND)


def _class_folders(root: Path) -> list[tuple[Path, str]]:
    """(class folder, source) pairs of a class-folder dataset: ``root/<label>/`` (source ``folders``) and
    ``root/<split>/<label>/`` (source: the split folder's name, e.g. ``train``)."""
    pairs = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if sub.name.lower() in SPLIT_FOLDERS:
            pairs += [(c, sub.name) for c in sorted(sub.iterdir()) if c.is_dir() and not c.name.startswith(".")]
        else:
            pairs.append((sub, "folders"))
    return pairs


#: Why ``_tree_files`` does not follow a link to a folder that holds the class folder (``sad/up -> ..``): it
#: would read every other class's images under this class too.
LINK_UP = "a link to a folder that holds it"


def _tree_files(folder: Path, unreadable: list | None = None) -> list[Path]:
    """Every file under ``folder`` (sorted), as class folders are read: folders that are symbolic links followed
    (each real folder once; not one that holds ``folder``: ``LINK_UP``), links that lead nowhere kept (the audit
    says they cannot be read), hidden entries kept (callers skip and list them). ``unreadable`` receives each
    folder that cannot be listed, and each link not followed."""
    out, seen = [], set()

    def cannot_list(err: OSError) -> None:
        if unreadable is not None:
            unreadable.append((Path(err.filename), err.strerror or str(err)))

    top = Path(os.path.realpath(folder))
    for here, dirs, names in os.walk(folder, onerror=cannot_list, followlinks=True):
        real = os.path.realpath(here)
        if real in seen:  # a link back up, or to a folder walked already
            dirs[:] = []
            continue
        if here != str(folder) and top.is_relative_to(real):  # a link up to a folder that holds this one
            if unreadable is not None:
                unreadable.append((Path(here), LINK_UP))
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        out += [f for f in (Path(here) / n for n in names) if f.is_file() or f.is_symlink()]
    return sorted(out)


def find_layout(path: str | os.PathLike) -> tuple[str, Path, Path | None]:
    """``(layout, root, labels_csv)`` of a dataset path (``LAYOUTS``), or a ``DatasetError`` saying what is there.

    A ``.csv`` file: the CSV layout, rooted at its folder (muxspace's own ``data/legend.csv``: that dataset's
    folder, in the muxspace layout). A folder: muxspace if it has ``data/legend.csv``;
    else a CSV layout if it holds ``labels.csv`` or exactly one ``*.csv`` (beside class folders, a table of pixels
    such as FER2013's ``fer2013.csv``, a ``pixels`` column and no image column, does not count);
    else class folders if it has sub-folders with files; ``images/`` without ``data/legend.csv`` is an incomplete
    muxspace copy.
    """
    path = Path(path).expanduser()
    if path.is_file():
        if path.name == "legend.csv" and path.parent.name == "data" and (path.parent.parent / IMAGES).is_dir():
            return "muxspace", path.parent.parent, None  # muxspace's own data/legend.csv: its dataset folder
        if path.suffix.lower() != ".csv":
            raise DatasetError(f"{path} is a file but not a CSV. Point data_dir or FER_DATA_DIR at a dataset folder, "
                               "or at a CSV of image,emotion[,person] (image paths relative to the CSV's folder).")
        return "csv", path.parent, path
    if not path.is_dir():
        raise DatasetError(f"Dataset folder {path} does not exist. Point data_dir or FER_DATA_DIR at "
                           "the folder that holds images/ and data/legend.csv (or your own data: README, "
                           "'Your own data').")
    if (path / LEGEND).exists() or (path / IMAGES).is_dir() and not list(path.glob("*.csv")):
        check_dataset_root(path)
        return "muxspace", path, None
    csvs = sorted(p for p in path.glob("*.csv") if p.is_file())
    if (path / LABELS_CSV).is_file():
        return "csv", path, path / LABELS_CSV
    folders = any(any(f.is_file() and _visible(f, folder) for f in _tree_files(folder))
                  for folder, _ in _class_folders(path))
    if folders:  # a table of pixels (FER2013's fer2013.csv) beside the image folders does not label them
        csvs = [csv for csv in csvs if not _pixel_table(csv)]
    if len(csvs) == 1:
        return "csv", path, csvs[0]
    if len(csvs) > 1:
        raise DatasetError(f"{path} holds {len(csvs)} CSV files ({', '.join(p.name for p in csvs[:5])}) and no "
                           f"{LABELS_CSV}: point data_dir or FER_DATA_DIR at the one that labels the images.")
    if folders:
        return "folders", path, None
    subfolders = [folder.relative_to(path).as_posix() for folder, _ in _class_folders(path)]
    if subfolders and not (path / IMAGES).is_dir():
        shown = ", ".join(subfolders[:6]) + (f"… ({len(subfolders)} folders)" if len(subfolders) > 6 else "")
        raise DatasetError(f"The folders in {path} ({shown}) hold no files (hidden ones, .name, are skipped), and "
                           "it holds no labels CSV. Put your images in class folders (<emotion>/*.jpg), or point "
                           "data_dir or FER_DATA_DIR at a dataset: README, 'Your own data'.")
    check_dataset_root(path)  # raises, saying what a dataset root needs
    raise AssertionError("unreachable")


def _pixel_table(csv: Path) -> bool:
    """Whether a CSV holds the faces' pixels (a ``pixels`` column and no image column, as FER2013's
    ``fer2013.csv``) rather than labels of image files; a header that cannot be read counts as no, so that
    reading the CSV as labels says what is wrong with it."""
    try:
        columns = {str(c).strip().lower() for c in pd.read_csv(csv, nrows=0, dtype=str).columns}
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
        return False
    return "pixels" in columns and not columns & set(CSV_COLUMNS["image"])


def _folders_digest(root: Path) -> str:
    """sha256 of a class-folder dataset's file list (relative paths and sizes): what identifies it."""
    digest = hashlib.sha256()
    for folder, _ in _class_folders(root):
        for f in _tree_files(folder):
            if f.is_file():
                digest.update(f"{f.relative_to(root).as_posix()}\t{f.stat().st_size}\n".encode())
    return digest.hexdigest()


def open_dataset(path: str | os.PathLike, origin: str = "data_dir") -> Dataset:
    """The ``Dataset`` at ``path`` in whichever layout it has (``find_layout``)."""
    layout, root, csv = find_layout(path)
    if layout == "muxspace":
        return Dataset(root, origin, sha256_of(root / LEGEND))
    if layout == "csv":
        return Dataset(root, origin, sha256_of(csv), "csv", csv)
    return Dataset(root, origin, _folders_digest(root), "folders")


def get_dataset(data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                download: bool = True) -> Dataset:
    """Find the dataset (see the module docstring for the order) and return where it is."""
    if data_dir:
        return open_dataset(data_dir, "data_dir")
    if os.environ.get("FER_DATA_DIR"):  # the runner's --data-dir arrives this way too, and says so
        return open_dataset(os.environ["FER_DATA_DIR"], os.environ.get("FER_DATA_ORIGIN", "FER_DATA_DIR"))
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    cached = cache / f"facial_expressions-{UPSTREAM_COMMIT}"
    if cached.is_dir():
        digest = check_dataset_root(cached)
        if digest == LEGEND_SHA256:
            return Dataset(cached, "cache", digest)
        raise DatasetError(f"The cached dataset in {cached} fails verification (legend.csv sha256 {digest[:12]}… "
                           f"!= {LEGEND_SHA256[:12]}…). Delete that folder to download it again.")
    if not download:
        raise DatasetError(f"No dataset found: data_dir and FER_DATA_DIR are unset and {cached} does not exist.")
    return Dataset(download_dataset(cache), "download", LEGEND_SHA256)


def _safe_members(tar: tarfile.TarFile, dest: Path):
    dest = dest.resolve()
    for member in tar.getmembers():
        target = (dest / member.name).resolve()
        if not target.is_relative_to(dest) or Path(member.name).is_absolute():
            raise DatasetError(f"Refusing to extract {member.name!r}: it would land outside {dest}.")
        if member.issym() or member.islnk():
            link = (target.parent / member.linkname).resolve()
            if not link.is_relative_to(dest):
                raise DatasetError(f"Refusing to extract link {member.name!r} -> {member.linkname!r}: "
                                   f"it points outside {dest}.")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            continue  # devices, fifos: never extracted
        yield member


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract a tar archive into ``dest``, refusing any member whose path leaves ``dest``."""
    with tarfile.open(archive) as tar:
        members = list(_safe_members(tar, dest))
        tar.extractall(dest, members=members, filter="data")


def download_dataset(cache_dir: Path, url: str = ARCHIVE_URL) -> Path:
    """Download the pinned archive into ``cache_dir``, extract it safely, verify it; return its root.

    Both the archive and the extracted tree live under temporary names until they are complete and
    verified, so an interrupted run never leaves a half copy that a later run would trust.
    """
    from tqdm.auto import tqdm

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / f"facial_expressions-{UPSTREAM_COMMIT}"
    archive = cache_dir / f"facial_expressions-{UPSTREAM_COMMIT}.tar.gz"
    if not archive.exists():
        partial = archive.with_name(archive.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc="facial_expressions") as bar:
                    for block in iter(lambda: response.read(1 << 16), b""):
                        out.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            partial.unlink(missing_ok=True)
            raise DatasetError(
                f"Could not download the dataset from {url} ({err}). If you are offline, point at a local "
                "copy instead — the folder holding images/ and data/legend.csv, e.g. a clone of "
                f"github.com/{UPSTREAM_REPO} at commit {UPSTREAM_COMMIT}: `python -m fer_utils run --data-dir "
                "DIR`, or set FER_DATA_DIR=DIR (or the notebooks' data_dir parameter)."
            ) from err
        partial.rename(archive)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".extract-") as tmp:
        safe_extract(archive, Path(tmp))
        roots = [p for p in Path(tmp).iterdir() if p.is_dir()]
        if len(roots) != 1:
            raise DatasetError(f"Unexpected archive layout in {archive}: {len(roots)} top-level folders.")
        digest = check_dataset_root(roots[0])
        if digest != LEGEND_SHA256:
            archive.unlink()
            raise DatasetError(f"The downloaded archive fails verification (legend.csv sha256 {digest}); "
                               "it was deleted, run again to download it afresh.")
        roots[0].rename(final)
    return final


# --------------------------------------------------------------------------------------------------
# Legend, labels and people
# --------------------------------------------------------------------------------------------------


def label_key(raw: str) -> str:
    """A label as labels are compared (``label_map``'s keys too): stripped, lower-cased, in Unicode's NFC form
    ("ü" typed, or as macOS names folders, "u" and an accent: the same)."""
    return unicodedata.normalize("NFC", raw).strip().lower()


def normalise_label(raw, label_map: dict | None = None) -> str | None:
    """Strip and lower-case a label (in Unicode's NFC form) and map common spellings ("sad", "happy") to the 8 emotions.

    ``label_map`` (``check_label_map``) is looked up first: it maps a label to an emotion, or to None to
    leave it out. A label that ends up none of the 8 gives None.
    """
    if not isinstance(raw, str):
        return None
    label = label_key(raw)
    if label_map and label in label_map:
        label = label_map[label]
        if label is None:
            return None
    label = LABEL_ALIASES.get(label, label)
    return label if label in EMOTIONS else None


def check_label_map(label_map: dict | None) -> dict[str, str | None]:
    """``label_map`` with its keys stripped, lower-cased (and in Unicode's NFC form) and its values checked: each
    one of the 8 emotions (or a spelling ``LABEL_ALIASES`` knows) or None (leave that label out). {} when None."""
    if not label_map:
        return {}
    if not isinstance(label_map, dict):
        raise DatasetError(f"label_map must be a dict such as {{'joy': 'happiness', 'other': None}}, "
                           f"not {type(label_map).__name__}.")
    checked, bad = {}, []
    for key, value in label_map.items():
        target = None if value is None else LABEL_ALIASES.get(str(value).strip().lower(), str(value).strip().lower())
        if target is not None and target not in EMOTIONS:
            bad.append(f"{key!r}: {value!r}")
        checked[label_key(str(key))] = target
    if bad:
        raise DatasetError(f"label_map maps to something that is not an emotion: {', '.join(bad)}. Map each label "
                           f"to one of {', '.join(EMOTIONS)}, or to None to leave it out.")
    return checked


def unknown_labels_error(legend: pd.DataFrame, where: str, rows: bool = False) -> DatasetError:
    """The error for labels that are none of the 8 emotions: each with its count (``rows``: and its first rows,
    a labels CSV's row numbers), and the label_map to write. Empty labels are no unknown label (``no label``)."""
    labels = legend["label"].map(label_key)
    unknown = legend[legend["emotion"].isna() & ~legend["left_out"] & labels.ne("")].assign(key=labels)
    counts = unknown["key"].value_counts()
    first_rows = unknown.groupby("key")["row"].agg(list)

    def rows_of(label):
        numbers = first_rows[label]
        return (f"; row{'s' if len(numbers) > 1 else ''} " + ", ".join(str(r) for r in numbers[:3])
                + ("…" if len(numbers) > 3 else "")) if rows else ""

    listed = ", ".join(f"{label!r} ({n:,}{rows_of(label)})" for label, n in counts.head(20).items())
    example = "{" + ", ".join(f"{label!r}: None" for label in counts.head(3).index) + "}"
    return DatasetError(
        f"Unknown labels in {where}: {listed}{' …' if len(counts) > 20 else ''} "
        f"(label: number of {'rows; the first rows' if rows else 'images'}) — none "
        f"of the 8 emotions ({', '.join(EMOTIONS)}) nor a usual spelling of one. Map each to an emotion, or leave "
        f"it out with None, in notebook 01's label_map parameter, e.g. label_map = {example} (write the emotion a "
        f"label means instead of None, e.g. 'happiness'); from the command line: "
        f"python -m fer_utils run --data-dir DIR -p label_map \"{example}\".")


def _decoding_error_at(path: Path) -> str:
    """Where a file stops being UTF-8: ``<reason> at line L (byte B of the file)``, both counted from 1 (a
    ``UnicodeDecodeError`` from pandas counts its bytes from the start of the chunk it was decoding)."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        return f"{err.reason} at line {line} (byte {err.start + 1:,} of the file)"
    return "not decodable as UTF-8"


def _spreadsheet_rows(path: Path, n_rows: int) -> np.ndarray:
    """The row numbers a spreadsheet shows for the ``n_rows`` rows pandas reads from a CSV (``skip_blank_lines``):
    blank lines count as rows, as they do there (a quoted cell spanning lines is one row). Without blank lines:
    2, 3, 4… (the header is row 1)."""
    import csv

    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            records = [n for n, fields in enumerate(csv.reader(f), start=1) if "".join(fields).strip()]
    except (OSError, UnicodeDecodeError, csv.Error):
        records = []
    if len(records) != n_rows + 1:  # parsed otherwise than pandas did: count lines as if none were blank
        return np.arange(2, n_rows + 2)
    return np.array(records[1:])


def _read_csv_text(path: Path, header: str) -> pd.DataFrame:
    """A CSV of labels (a labels CSV, or muxspace's ``data/legend.csv``) as text, its column names stripped and
    lower-cased; a ``DatasetError`` saying what to do when it is empty, not UTF-8, or not comma-separated."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path.name} is not UTF-8 text ({_decoding_error_at(path)}): save it as UTF-8 "
                           "(a spreadsheet's \"CSV UTF-8\"), then run again.") from err
    except pd.errors.EmptyDataError as err:
        raise DatasetError(f"{path} is empty: it should hold a header line ({header}) and one line per labelled "
                           "image.") from err
    except pd.errors.ParserError as err:
        raise DatasetError(f"{path.name} is not a readable CSV file: {err}") from err
    table.columns = [str(c).strip().lower() for c in table.columns]
    if len(table.columns) == 1 and any(sep in table.columns[0] for sep in (";", "\t")):
        sep = "semicolons" if ";" in table.columns[0] else "tabs"
        raise DatasetError(f"{path.name} separates its columns with {sep} (header {table.columns[0]!r}): save it "
                           "with commas (a spreadsheet's \"CSV\", comma-separated), then run again.")
    return table


def _read_labels_csv(path: Path) -> pd.DataFrame:
    """A labels CSV as text with canonical column names (``CSV_COLUMNS``): image, emotion, person?, source?, and
    ``row``, the row number a spreadsheet shows (``_spreadsheet_rows``)."""
    table = _read_csv_text(path, "image,emotion[,person]")
    renamed = {}
    for canonical, names in CSV_COLUMNS.items():
        found = [c for c in names if c in table.columns]
        if found:
            renamed[found[0]] = canonical
    missing = [c for c in ("image", "emotion") if c not in renamed.values()]
    if missing and any(Path(c).suffix in IMAGE_SUFFIXES for c in table.columns):
        with open(path, encoding="utf-8-sig") as f:
            first = f.readline().strip()
        raise DatasetError(f"{path.name} has no header: its first line, {first!r}, is a row. Add a "
                           "first line naming the columns, image,emotion (and person, if you know who is in each "
                           "photo), then run again.")
    if missing:
        raise DatasetError(f"{path.name} lacks the column(s) {missing}: it has {list(table.columns)}. A labels CSV "
                           "needs a header with image (the file, relative to the CSV's folder) and emotion, and may "
                           f"have person (who is in the photo) and source; other accepted names: {CSV_COLUMNS}.")
    table = table[list(renamed)].rename(columns=renamed)
    table.insert(0, "row", _spreadsheet_rows(path, len(table)))
    return table


def _csv_images(base: Path, cells) -> list[tuple[str, str]]:
    """``(image, where)`` for each image cell of a labels CSV (paths relative to its folder ``base``).

    ``where`` is ``"file"`` (a file in the dataset folder: ``image`` is its path relative to ``base``, written
    one way for every spelling of it: ``./a\\b.jpg``, ``a//b.jpg``, its absolute path, a second name through a
    symbolic link all give the first row's ``a/b.jpg``), ``"missing"`` (no such file in the folder), ``"outside"``
    (the path leaves the dataset folder: ``../x.jpg``, an absolute path elsewhere; never used) or ``"empty"``.
    Folders inside the dataset folder that are symbolic links are followed, as class folders are.
    """
    base_abs, base_real = Path(os.path.abspath(base)), base.resolve()
    first_name: dict[Path, str] = {}  # a file's real path -> the name its first row gave it
    out = []
    for cell in cells:
        written = str(cell).strip().replace("\\", "/")
        if not written:
            out.append(("", "empty"))
            continue
        lexical = Path(os.path.normpath(base_abs / written))  # an absolute ``written`` replaces base_abs
        if lexical.is_relative_to(base_abs):
            name = lexical.relative_to(base_abs).as_posix()
        elif lexical.resolve().is_relative_to(base_real):  # an absolute path through the folder's real path
            name = lexical.resolve().relative_to(base_real).as_posix()
        else:
            out.append((Path(written).as_posix().removeprefix("./"), "outside"))
            continue
        if not (base / name).is_file():  # the name in the other Unicode form: macOS writes "é" as "e" + accent
            name = next((other for other in (unicodedata.normalize(form, name) for form in ("NFC", "NFD"))
                         if (base / other).is_file()), name)
        if not (base / name).is_file():
            out.append((name, "missing"))
            continue
        out.append((first_name.setdefault((base / name).resolve(), name), "file"))
    return out


def _walk_images(base: Path) -> set[str]:
    """Image files (by their ending) under ``base``, relative POSIX paths; hidden files and folders skipped,
    folders that are symbolic links followed (each real folder once: ``_tree_files``)."""
    return {p.relative_to(base).as_posix() for p in _tree_files(base)
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and _visible(p, base)}


def load_legend(root, label_map: dict | None = None) -> pd.DataFrame:
    """The labels, one row per labelled image, whatever the layout: ``row``, ``user_id``, ``image`` (relative
    to ``Dataset.images_dir``), ``label`` (as written), ``emotion`` (normalised; None if unknown or left
    out), ``left_out`` (``label_map`` mapped it to None); besides, ``person`` and ``source`` when the
    layout says them (a CSV's person/source columns; class folders: the split folder).

    ``row`` is the row number in the CSV as a spreadsheet shows it (muxspace: ``data/legend.csv``): its line
    number, blank lines counted (``_spreadsheet_rows``); for class folders, the file's number in sorted order.
    A labels CSV's ``image`` is the file's path relative to the CSV's folder however the row spells it
    (``_csv_images``; ``""`` for an empty cell), and ``written`` is the cell as written.
    ``root`` is a dataset folder or a ``Dataset``.
    """
    dataset = root if isinstance(root, Dataset) else open_dataset(root)
    mapping = check_label_map(label_map)
    if dataset.layout == "folders":
        rows = [(f.relative_to(dataset.root).as_posix(), folder.name, source)
                for folder, source in _class_folders(dataset.root)
                for f in _tree_files(folder) if _visible(f, folder)]
        legend = pd.DataFrame(rows, columns=["image", "label", "source"])
        legend["user_id"] = ""
    else:
        path = dataset.labels_csv if dataset.layout == "csv" else dataset.root / LEGEND
        if dataset.layout == "csv":
            legend = _read_labels_csv(path).rename(columns={"emotion": "label"})
            legend["written"] = legend["image"].str.strip()
            legend["image"], where = zip(*_csv_images(dataset.root, legend["image"])) if len(legend) else ((), ())
            legend["user_id"] = ""
            for col in ("person", "source"):
                if col in legend:
                    legend[col] = legend[col].str.strip()
        else:
            legend = _read_csv_text(path, "user.id,image,emotion")
            missing = {"image", "emotion"} - set(legend.columns)
            if missing:
                raise DatasetError(f"{path} lacks the column(s) {sorted(missing)}; expected user.id,image,emotion.")
            if "user.id" not in legend.columns:
                legend["user.id"] = ""
            legend = legend.rename(columns={"user.id": "user_id", "emotion": "label"})
            legend["image"] = legend["image"].str.strip()
            legend["user_id"] = legend["user_id"].str.strip()
    if legend.empty and dataset.layout != "folders":
        header = "image,emotion[,person]" if dataset.layout == "csv" else "user.id,image,emotion"
        raise DatasetError(f"{path} has a header but no rows: add one line per labelled image ({header}).")
    if dataset.layout == "csv" and "file" not in where:
        example = legend["image"].iloc[0]
        raise DatasetError(f"None of the {len(legend):,} images {path.name} lists is in its folder {dataset.root} "
                           f"(the first, {example!r}, would be {dataset.root / example}): image paths in a labels "
                           "CSV are relative to the CSV's folder; point at a CSV beside the images, or fix the paths.")
    if dataset.layout == "muxspace":
        legend.insert(0, "row", _spreadsheet_rows(path, len(legend)))  # row numbers as a spreadsheet shows them
    elif dataset.layout == "folders":
        legend.insert(0, "row", np.arange(1, len(legend) + 1))
    legend["emotion"] = [normalise_label(label, mapping) for label in legend["label"]]
    keys = legend["label"].map(label_key)
    legend["left_out"] = keys.isin([k for k, v in mapping.items() if v is None])
    extra = [c for c in ("person", "source", "written") if c in legend]
    return legend[["row", "user_id", "image", "label", "emotion", "left_out", *extra]]


_LFW = re.compile(r"^(?P<person>[A-Za-z][A-Za-z'.-]*(?:_[A-Za-z'.-]+)*)_(?P<n>\d{4})$")
_NUMBERED = re.compile(r"^(?P<person>[A-Za-z][A-Za-z'.-]*(?:_[A-Za-z'.-]+)*)_(?P<n>\d{1,3}|\d{5,})$")


def person_and_source(image: str) -> tuple[str, str]:
    """Person identity and image source from a file name.

    LFW style ``First_Last_0001.jpg`` -> (``First_Last``, ``LFW``); ``Name_12.jpg`` (the IMFDB actors'
    crops) -> (``Name``, ``IMFDB``); anything else is its own group -> (file stem, ``other``).
    """
    stem = Path(image).stem
    m = _LFW.match(stem)
    if m:
        return m["person"], "LFW"
    m = _NUMBERED.match(stem)
    if m:
        return m["person"], "IMFDB"
    return stem, "other"


# --------------------------------------------------------------------------------------------------
# Any image as 8-bit L or RGB (the class folders and prediction both read images through this)
# --------------------------------------------------------------------------------------------------


def to_8bit(im: Image.Image) -> Image.Image:
    """An upright 8-bit ``L`` (gray) or ``RGB`` copy of a Pillow image of any mode.

    - **Upright**: turned by its EXIF orientation (a broken EXIF block is ignored).
    - **Transparency** (an alpha channel — ``LA``, ``RGBA``, ``PA``, premultiplied ``La``/``RGBa`` — or a
      palette's or colour key's ``transparency``) is flattened onto white.
    - **Gray stays gray**: ``1``, ``L``, ``LA``, ``I*`` and ``F`` give ``L``; everything else ``RGB``.
    - **High bit depth is scaled, never clipped** (Pillow's own ``convert("L")`` clips 16-bit values at 255):
      ``I;16``/``I;16B``/``I;16L``/``I;16N`` (16-bit files) ÷ 257, so 65535 → 255. ``I`` (32-bit integers,
      what NumPy int arrays and some PGM/TIFF files give): values all in [0, 255] are taken as 8-bit, all
      in [0, 65535] as 16-bit (÷ 257), anything else is stretched from its minimum to its maximum.
      ``F`` (floats): values all in [0, 1] are × 255, all in [0, 255] taken as they are, anything else
      stretched min–max; NaN and ±inf count as the minimum. 16-bit RGB(A) PNGs already open as 8-bit.
    - Other colour spaces (``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``…) are converted by Pillow.
    """
    from PIL import ImageOps

    def scale(arr: np.ndarray, mode: str) -> np.ndarray:
        """Pixel values of a high-bit-depth mode → uint8 by the rules of ``to_8bit``."""
        if arr.dtype == np.uint8:
            return arr
        if mode.startswith("I;16"):
            return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
        values = arr.astype(np.float64)
        finite = np.isfinite(values)
        if not finite.any():
            return np.zeros(arr.shape, np.uint8)
        lo, hi = values[finite].min(), values[finite].max()
        values = np.where(finite, values, lo)
        if mode == "F" and lo >= 0 and hi <= 1:
            values = values * 255.0
        elif lo >= 0 and hi <= 255:
            pass
        elif mode != "F" and lo >= 0 and hi <= 65535:
            values = values / 257.0
        else:
            values = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)

    try:
        im = ImageOps.exif_transpose(im)  # a copy, even without an orientation
    except Exception:  # noqa: BLE001 - a broken EXIF block should not lose the picture
        im = im.copy()
    mode = im.mode
    if mode in ("L", "RGB") and im.info.get("transparency") is None:
        return im
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I") or mode == "F":
        return Image.fromarray(scale(np.asarray(im), mode), "L")
    alpha = mode in ("LA", "La", "PA", "RGBA", "RGBa") or im.info.get("transparency") is not None
    if alpha:
        gray = mode in ("L", "LA", "La")
        rgba = im.convert("LA").convert("RGBA") if mode == "La" else im.convert("RGBA")
        flat = Image.new("RGBA", im.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        return flat.convert("L" if gray else "RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError):  # a mode Pillow cannot convert: go through its pixel values
        arr = np.asarray(im)
        if arr.ndim == 3 and arr.shape[-1] >= 3:
            channels = [scale(arr[..., c], "I" if arr.dtype.kind in "iu" else "F") for c in range(3)]
            return Image.fromarray(np.stack(channels, axis=-1), "RGB")
        return Image.fromarray(scale(arr.reshape(arr.shape[:2]), "I"), "L")


# --------------------------------------------------------------------------------------------------
# Auditing the files
# --------------------------------------------------------------------------------------------------


class ImageRefused(ValueError):
    """``open_image`` will not decode this file: ``status`` is ``"not_an_image"`` (a format not in
    ``IMAGE_FORMATS``) or ``"unreadable"`` (more than ``MAX_PIXELS``: ``format`` and ``size`` say what it is)."""

    def __init__(self, status: str, message: str, format: str | None = None, size: tuple | None = None):
        super().__init__(message)
        self.status, self.format, self.size = status, format, size


def open_image(path: str | os.PathLike) -> Image.Image:
    """``Image.open`` made safe for any file: only ``IMAGE_FORMATS`` are tried, and an image of more than
    ``MAX_PIXELS`` is refused before its pixels are decoded (``ImageRefused``). Use it as ``Image.open``:
    ``with open_image(path) as im: im.load()``. The dataset audit, ``predict`` and the demo read images only
    through it. Other errors are ``Image.open``'s (``OSError`` for a file that cannot be read)."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.init()  # registers the plugins so that formats= can name them (only those are tried)
            im = Image.open(path, formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        if os.path.getsize(path) == 0:
            raise ImageRefused("not_an_image", "an empty file (0 bytes)") from None
        raise ImageRefused("not_an_image", f"not an image format read here ({FORMATS_READ})") from None
    except Image.DecompressionBombError:
        raise ImageRefused("unreadable", f"too large to decode safely: more than {MAX_PIXELS // 10**6} "
                                         "megapixels") from None
    if im.width * im.height > MAX_PIXELS:
        size, fmt = im.size, im.format
        im.close()
        raise ImageRefused("unreadable", f"too large to decode safely: {size[0]} x {size[1]} pixels "
                                         f"({size[0] * size[1] / 1e6:.0f} megapixels; at most "
                                         f"{MAX_PIXELS // 10**6} are read)", fmt, size)
    return im


def inspect_image(path: Path) -> dict:
    """Decode one file fully with Pillow; report its real format, mode, size and content hash."""
    info = {"file": path.name, "bytes": None, "format": None, "mode": None, "width": None, "height": None,
            "sha1": None, "error": None}
    try:
        data = path.read_bytes()
        info["bytes"] = len(data)
        info["sha1"] = hashlib.sha1(data).hexdigest()
        with open_image(path) as im:
            info.update(format=im.format, mode=im.mode, width=im.width, height=im.height)
            im.load()  # a truncated or corrupt file fails here, not later in training
    except ImageRefused as err:  # not a format read here, or too large: unreadable, never decoded
        info["error"] = str(err)
        if err.size:
            info.update(format=err.format, width=err.size[0], height=err.size[1])
    except Exception as err:  # noqa: BLE001 - every failure is a finding, reported per file
        info["error"] = f"{type(err).__name__}: {err}"
    return info


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def dataset_files(dataset: Dataset) -> list[str]:
    """The files the audit inspects, as paths relative to ``dataset.images_dir`` (sorted):

    - muxspace: every file in ``images/`` (and every link there that leads nowhere);
    - class folders: every file in a class folder, and the images (by their ending) lying outside one —
      at the root or directly in a split folder — which have no label;
    - CSV: every image (by its ending) anywhere under the CSV's folder (folders that are symbolic links
      followed), and every file a row names (``_csv_images``).

    Hidden files and folders (``.name``) are skipped (in class folders the audit lists them: ``hidden file``);
    other files (a README, the CSV itself) are not images.
    """
    base = dataset.images_dir
    if dataset.layout == "muxspace":
        # a link that leads nowhere is listed too, as in class folders: the audit says it cannot be read
        return sorted(p.name for p in base.iterdir() if (p.is_file() or p.is_symlink() and not p.exists())
                      and not p.name.startswith("."))
    if dataset.layout == "folders":
        found = {p.relative_to(base).as_posix() for p in _tree_files(base)
                 if p.suffix.lower() in IMAGE_SUFFIXES and _visible(p, base)}
        found |= {p.relative_to(base).as_posix() for folder, _ in _class_folders(base) for p in _tree_files(folder)
                  if _visible(p, base)}
    else:
        found = _walk_images(base)
        found |= {n for n, where in _csv_images(base, _read_labels_csv(dataset.labels_csv)["image"]) if where == "file"}
    return sorted(found)


def _unreadable_folders(dataset: Dataset) -> list[tuple[str, str]]:
    """Folders in class folders that cannot be listed (``(relative path, why)``): their images go unused, and the
    audit lists them."""
    if dataset.layout != "folders":
        return []
    found: list = []
    for folder, _ in _class_folders(dataset.root):
        _tree_files(folder, found)
    return [(p.relative_to(dataset.root).as_posix(), why) for p, why in found]


def _skipped_in_images(dataset: Dataset) -> list[tuple[str, str]]:
    """A muxspace dataset's files in ``images/`` that are not read (``(path relative to images/, kind)``, kinds of
    ``MUXSPACE_SKIPPED_KINDS``): hidden ones and those in sub-folders."""
    if dataset.layout != "muxspace":
        return []
    base = dataset.images_dir
    skipped = []
    for here, dirs, names in os.walk(base):
        dirs.sort()
        top = here == str(base)
        for name in sorted(n for n in names if not top or n.startswith(".")):  # the others: read (dataset_files)
            path = Path(here) / name
            skipped.append((path.relative_to(base).as_posix(),
                            "in a sub-folder" if _visible(path, base) else "hidden file"))
    return skipped


def _hidden_files(dataset: Dataset) -> list[str]:
    """Class folders' hidden files (``.name``, or in a ``.folder``), relative POSIX paths: skipped, and listed."""
    if dataset.layout != "folders":
        return []
    return sorted(p.relative_to(dataset.root).as_posix() for folder, _ in _class_folders(dataset.root)
                  for p in _tree_files(folder) if not _visible(p, folder))


def scan_images(root, workers: int | None = None) -> pd.DataFrame:
    """Inspect every file of the dataset (``dataset_files``): one row per file, sorted by name (``file``: its
    path relative to ``Dataset.images_dir``; for muxspace, the name in ``images/``)."""
    dataset = root if isinstance(root, Dataset) else open_dataset(root)
    names = dataset_files(dataset)
    with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) * 2)) as pool:
        rows = list(pool.map(inspect_image, [dataset.images_dir / n for n in names]))
    for row, name in zip(rows, names):
        row["file"] = name
    files = pd.DataFrame(rows, columns=["file", "bytes", "format", "mode", "width", "height", "sha1", "error"])
    files["suffix"] = [Path(f).suffix.lower() for f in files["file"]]
    files["readable"] = files["error"].isna()
    files["format_matches_name"] = [
        isinstance(fmt, str) and suffix in FORMAT_SUFFIXES.get(fmt, (f".{fmt.lower()}",))
        for fmt, suffix in zip(files["format"], files["suffix"])
    ]
    return files


@dataclasses.dataclass
class Audit:
    """What the audit found: the legend, the files on disk and one row per finding."""

    legend: pd.DataFrame  # the legend with row numbers, person, source and file facts joined in
    files: pd.DataFrame  # one row per file in images/
    findings: pd.DataFrame  # kind, image, row, detail
    layout: str = "muxspace"  # the dataset's layout (LAYOUTS)
    split_by: str = "person"  # "person": who is in each photo is known; "image": it is not (no person column)
    label_map: dict = dataclasses.field(default_factory=dict)  # check_label_map's result, as applied

    def summary(self) -> pd.DataFrame:
        """Findings counted by kind (kinds with none are listed too, with 0; ``OWN_DATA_FINDING_KINDS`` for your
        own data only; in the muxspace layout, a hidden file or one in a sub-folder of ``images/`` when found)."""
        counts = self.findings["kind"].value_counts()
        kinds = {**FINDING_KINDS, **(OWN_DATA_FINDING_KINDS if self.layout != "muxspace" else {
            k: v for k, v in MUXSPACE_SKIPPED_KINDS.items() if counts.get(k, 0)})}
        return pd.DataFrame({"kind": list(kinds), "count": [int(counts.get(k, 0)) for k in kinds],
                             "meaning": list(kinds.values())})

    def emotions_absent(self) -> list[str]:
        """The emotions (of the 8) that no usable labelled row has: the model is never trained on them."""
        readable = self.legend["readable"].fillna(False).astype(bool)
        present = set(self.legend.loc[readable, "emotion"].dropna())
        return [e for e in EMOTIONS if e not in present]


FINDING_KINDS = {
    "exact duplicate row": "the same user.id, image and label again; the first row is used",
    "repeated image": "the same image listed again with the same emotion by another row; the first is used",
    "conflicting labels": "the same image (or a byte-identical copy) listed with different emotions; none of its "
                          "rows is used",
    "unknown label": "a label that is not one of the 8 emotions, even after strip/lower case",
    "left out by label_map": "a label the label_map parameter maps to None; its rows are not used",
    "missing file": "a legend row whose image is not in images/",
    "unreadable file": "a file that Pillow cannot decode (corrupt, truncated or not an image)",
    "format mismatch": "the content is not what the file name says (e.g. WebP named .jpg); re-encoded",
    "unlisted file": "an image in images/ that no legend row names; it has no label",
    "same content": "byte-identical files under different names; kept in one split together",
}
#: Findings of your own data only (a labels CSV, class folders), listed by ``Audit.summary`` for those layouts.
OWN_DATA_FINDING_KINDS = {
    "no label": "a labels CSV's row with an empty emotion cell; not used",
    "no person": "a labels CSV's row with an empty person cell (others have one): split as a single image, so "
                 "the person-disjoint split does not cover it",
    "hidden file": "a hidden file in a class folder (.name, or in a .folder): skipped",
    "unreadable folder": "a folder in a class folder that cannot be listed (its permissions), or a link to a folder "
                         "that holds it (not followed): its images are not used",
}
#: Files in a muxspace ``images/`` folder that the legend cannot name, listed when found (upstream has none).
MUXSPACE_SKIPPED_KINDS = {
    "hidden file": "a hidden file in images/ (.name, or in a .folder): skipped",
    "in a sub-folder": "a file in a sub-folder of images/: the legend names files directly in images/, so it is "
                       "not read",
}
#: Where each layout's labels are, in the findings' words.
LABELS_WHERE = {"muxspace": ("legend row", "not in images/", "no legend row"),
                 "csv": ("CSV row", "not found (relative to the CSV's folder)", "no row of the labels CSV names it"),
                 "folders": ("file", "not found", "not in a class folder, so no label")}


def _missing_detail(dataset: Dataset, image: str) -> str:
    """Why a labels CSV's row has no file: an empty cell, a path outside the dataset folder, or not found."""
    if not image:
        return "no image path (empty cell)"
    if _csv_images(dataset.root, [image])[0][1] == "outside":
        there = (dataset.root / image).is_file()
        return (f"{'a file' if there else 'not found, and'} outside the dataset folder {dataset.root}: not used "
                "(a labels CSV's images lie in its folder or below)")
    return LABELS_WHERE["csv"][1]


def person_and_source_of(legend: pd.DataFrame, layout: str) -> tuple[list[str], list[str]]:
    """Each row's person (whom a split keeps together) and source: from the file name (muxspace:
    ``person_and_source``), from a CSV's person/source columns, else the image itself (its own group) and
    the split folder (class folders) or the layout's name."""
    if layout == "muxspace":
        pairs = [person_and_source(i) for i in legend["image"]]
        return [p for p, _ in pairs], [s for _, s in pairs]
    images = legend["image"].astype(str)
    person = legend["person"] if "person" in legend else pd.Series("", index=legend.index)
    person = [p if isinstance(p, str) and p else f"image:{i}" for p, i in zip(person, images)]
    source = legend["source"] if "source" in legend else pd.Series("", index=legend.index)
    source = [s if isinstance(s, str) and s else layout for s in source]
    return person, source


def audit_dataset(root, files: pd.DataFrame | None = None, label_map: dict | None = None) -> Audit:
    """Audit the legend against the files: every problem becomes one row of ``findings``.

    ``root``: a dataset folder (any layout) or a ``Dataset``. ``label_map`` maps labels to emotions, or to
    None to leave them out (``check_label_map``). In your own data (CSV or class folders) a label that is
    none of the 8 emotions, nor mapped, stops the audit with a ``DatasetError`` listing each with its count;
    in the muxspace layout it is an ``unknown label`` finding, as upstream has always been read.
    """
    dataset = root if isinstance(root, Dataset) else open_dataset(root)
    mapping = check_label_map(label_map)
    legend = load_legend(dataset, mapping)
    where_row, not_found, unlisted_detail = LABELS_WHERE[dataset.layout]
    csv = dataset.layout == "csv"
    # a labels CSV's row with an empty emotion cell has no label: listed (``no label``), not an unknown label
    no_label = legend.emotion.isna() & ~legend.left_out & (legend.label.str.strip().eq("") if csv else False)
    if dataset.layout != "muxspace" and (legend["emotion"].isna() & ~legend["left_out"] & ~no_label).any():
        what = dataset.labels_csv.name if csv else "the class folders' names"
        error = unknown_labels_error(legend, what, rows=csv)
        tables = [] if csv else sorted(p.name for p in dataset.root.iterdir() if p.is_file()
                                       and p.suffix.lower() in LABEL_TABLE_SUFFIXES)
        if tables and legend["emotion"].notna().sum() == 0:  # no folder is an emotion: the labels are elsewhere
            raise DatasetError(f"{error} If the labels are in {', '.join(tables[:3])}: a labels table is read only "
                               "as a CSV of image,emotion[,person]; save it as one (.csv) beside the images.")
        raise error
    files = scan_images(dataset) if files is None else files
    findings: list[dict] = []

    def add(kind, image, row, detail):
        findings.append({"kind": kind, "image": image, "row": row, "detail": detail})

    # a CSV row is an exact duplicate when every cell read is the same (person and source too); the same file
    # written another way, or with another person, is a repeated image (or a conflict) below
    same = [c for c in ("written", "image", "label", "person", "source") if c in legend] if csv else [
        "user_id", "image", "label"]
    exact = legend.duplicated(same, keep="first")
    first_of = legend.groupby(same, sort=False).row.transform("min")
    for r, first in zip(legend[exact].itertuples(), first_of[exact]):
        add("exact duplicate row", r.image, r.row, f"same as row {first}")
    left_out = legend.left_out & ~exact
    for r in legend[left_out].itertuples():
        add("left out by label_map", r.image, r.row, f"label {r.label!r}")
    for r in legend[no_label & ~exact].itertuples():
        add("no label", r.image, r.row, "no label (empty emotion cell)")
    unknown = legend.emotion.isna() & ~legend.left_out & ~no_label
    for r in legend[unknown].itertuples():
        add("unknown label", r.image, r.row, f"label {r.label!r}")
    known = legend[~exact & legend.emotion.notna()]
    labels_per_image = known.groupby("image")["emotion"].agg(lambda s: sorted(set(s)))
    conflicting = set(labels_per_image[labels_per_image.map(len) > 1].index)
    for r in known[known.image.isin(conflicting)].itertuples():
        add("conflicting labels", r.image, r.row, "labels " + " vs ".join(labels_per_image[r.image]))
    # the same photo under two names with two emotions (say, copied into two class folders) is no better
    rest = known[~known.image.isin(conflicting)]
    rest = rest.assign(sha1=rest.image.map(files.dropna(subset=["sha1"]).set_index("file")["sha1"])).dropna(
        subset=["sha1"])
    labels_per_content = rest.groupby("sha1")["emotion"].agg(lambda s: sorted(set(s)))
    twins = rest[rest.sha1.isin(labels_per_content[labels_per_content.map(len) > 1].index)]
    for r in twins.itertuples():
        others = sorted(set(twins.image[twins.sha1 == r.sha1]) - {r.image})
        add("conflicting labels", r.image, r.row, "labels " + " vs ".join(labels_per_content[r.sha1])
            + " of byte-identical files (" + ", ".join(others[:3]) + ("…" if len(others) > 3 else "") + ")")
    conflicting |= set(twins.image)
    repeated = known[~known.image.isin(conflicting)].duplicated("image", keep="first")
    by_row = legend.set_index("row")
    for r in known[~known.image.isin(conflicting)][repeated].itertuples():
        first = known[known.image == r.image].row.min()
        if dataset.layout == "muxspace":
            add("repeated image", r.image, r.row, f"also row {first} (user {by_row.user_id[first]})")
            continue
        # what differs from the first row (a CSV: the same file and emotion, written or labelled otherwise)
        differs = [f"{what} {by_row.at[first, col]!r} there" if by_row.at[first, col] else f"no {what} there"
                   for col, what in
                   (("written", "written"), ("label", "label"), ("person", "person"), ("source", "source"))
                   if col in by_row and by_row.at[first, col] != getattr(r, col)]
        add("repeated image", r.image, r.row, f"also {where_row} {first}"
            + (f": the same file and emotion ({'; '.join(differs)})" if differs else ""))

    by_file = files.set_index("file")
    on_disk = set(by_file.index)
    for r in legend[~legend.image.isin(on_disk)].itertuples():
        nested = dataset.layout == "muxspace" and "/" in r.image and (dataset.images_dir / r.image).is_file()
        add("missing file", r.image, r.row, _missing_detail(dataset, r.image) if csv else (
            "in a sub-folder of images/: the legend names files directly in images/" if nested else not_found))
    for f in files[~files.readable].itertuples():
        add("unreadable file", f.file, None, f.error)
    for f in files[files.readable & ~files.format_matches_name].itertuples():
        add("format mismatch", f.file, None, f"{f.format} content in a {f.suffix} file" if f.suffix
            else f"{f.format} content in a file without an extension")
    for f in sorted(on_disk - set(legend.image)):
        add("unlisted file", f, None, unlisted_detail)
    dup_hashes = files[files.sha1.notna() & files.sha1.duplicated(keep=False)].groupby("sha1")["file"].agg(list)
    for names in dup_hashes:
        for name in names:
            add("same content", name, None, "identical to " + ", ".join(n for n in names if n != name))
    for name, kind in _skipped_in_images(dataset):
        add(kind, name, None, MUXSPACE_SKIPPED_KINDS[kind])
    for name in _hidden_files(dataset):
        add("hidden file", name, None, "hidden file (its name, or a folder's, starts with '.'): skipped")
    for name, why in _unreadable_folders(dataset):
        add("unreadable folder", name, None, f"not followed: {why} (it would read the other classes' images under "
            "this class)" if why == LINK_UP else f"a folder that cannot be listed ({why}): its images are not used")

    has_person = dataset.layout == "muxspace" or ("person" in legend and legend["person"].ne("").any())
    if csv and has_person:  # a row without a person is split as a face of its own: outside the guarantee
        nobody = legend[legend.person.eq("") & ~exact & legend.emotion.notna() & legend.image.isin(on_disk)]
        for r in nobody.itertuples():
            add("no person", r.image, r.row, f"empty person cell ({len(nobody):,} such rows): split as a single "
                "image, so the person-disjoint split does not cover it")
    legend["person"], legend["source"] = person_and_source_of(legend, dataset.layout)
    legend = legend.merge(files[["file", "format", "mode", "width", "height", "readable"]],
                          how="left", left_on="image", right_on="file").drop(columns="file")
    findings_df = pd.DataFrame(findings, columns=["kind", "image", "row", "detail"])
    findings_df["row"] = findings_df["row"].astype("Int64")
    return Audit(legend=legend, files=files, findings=findings_df, layout=dataset.layout,
                 split_by="person" if has_person else "image", label_map=mapping)


def contributor_table(legend: pd.DataFrame) -> pd.DataFrame:
    """Rows per contributor (``user.id``) and emotion: where the labels come from."""
    if legend.empty:  # no labelled row at all (say, class folders holding only hidden files)
        return pd.DataFrame({"total": pd.Series(dtype=int)}).rename_axis("user_id")
    table = pd.crosstab(legend["user_id"], legend["emotion"].fillna("(unknown)"), margins=True, margins_name="total")
    return table.sort_values("total", ascending=False)


# --------------------------------------------------------------------------------------------------
# Keeping the dataset untouched
# --------------------------------------------------------------------------------------------------


def dataset_holding(path: str | os.PathLike) -> Path | None:
    """The dataset folder that is or holds ``path`` (which need not exist): ``$FER_DATA_DIR``'s (a CSV: its
    folder), or any folder above it that holds a dataset in the upstream layout (``images/`` and
    ``data/legend.csv``); None when none does. Nothing is ever written there."""
    real = Path(os.path.realpath(Path(path).expanduser()))
    named = os.environ.get("FER_DATA_DIR")
    if named:
        root = Path(named).expanduser().resolve()
        root = root.parent if root.is_file() else root
        if real.is_relative_to(root):
            return root
    return next((p for p in (real, *real.parents) if (p / LEGEND).is_file() and (p / IMAGES).is_dir()), None)


def check_not_inside(work_dir: Path, data_root: Path) -> None:
    """Refuse a work folder inside the dataset (or the dataset inside it): data folders stay untouched."""
    w, d = Path(work_dir).resolve(), Path(data_root).resolve()
    if w.is_relative_to(d) or d.is_relative_to(w):
        raise DatasetError(f"The work folder {w} and the dataset {d} overlap; the dataset is never written to. "
                           "Choose a work_dir (or FER_WORK_DIR) outside the dataset folder.")


def class_counts(labels) -> pd.Series:
    """Counts per emotion, in the canonical order, zeros included."""
    counts = Counter(labels)
    return pd.Series({e: counts.get(e, 0) for e in EMOTIONS}, name="images")


# --------------------------------------------------------------------------------------------------
# Plots for notebook 01
# --------------------------------------------------------------------------------------------------


def plot_class_distribution(legend: pd.DataFrame):
    """Bar chart of images per emotion (log scale: the classes span three orders of magnitude)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    counts = class_counts(legend["emotion"].dropna()).rename_axis("emotion").reset_index()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    sns.barplot(data=counts, x="emotion", y="images", hue="emotion", palette="viridis", legend=False, ax=ax)
    ax.set_yscale("log")
    for container in ax.containers:
        ax.bar_label(container, fmt="%d", fontsize=8)
    ax.set(title="Images per emotion (log scale)", xlabel="", ylabel="images")
    fig.tight_layout()
    return fig


def sample_grid(legend: pd.DataFrame, root, per_emotion: int = 6, seed: int = 42):
    """A grid of random faces, one row per emotion (readable files only); ``root``: a ``Dataset`` or a
    muxspace dataset folder."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    usable = legend[legend["emotion"].notna() & legend["readable"].fillna(False).astype(bool)]
    fig, axes = plt.subplots(len(EMOTIONS), per_emotion, figsize=(1.4 * per_emotion, 1.5 * len(EMOTIONS)))
    for r, emotion in enumerate(EMOTIONS):
        names = usable.loc[usable["emotion"] == emotion, "image"].to_numpy()
        chosen = rng.choice(names, size=min(per_emotion, len(names)), replace=False) if len(names) else []
        for c in range(per_emotion):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(chosen):
                images_dir = root.images_dir if isinstance(root, Dataset) else Path(root) / IMAGES
                with Image.open(images_dir / chosen[c]) as im:
                    ax.imshow(im.convert("RGB"))
        axes[r, 0].set_title(f"{emotion} ({len(names)})", loc="left", fontsize=9)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Generated datasets: cartoon faces for tests, demonstrations and speed measurements
# --------------------------------------------------------------------------------------------------


def draw_face(emotion: str, rng: np.random.Generator, size: int = 64, mode: str = "L") -> Image.Image:
    """A cartoon face whose mouth and brows depend on the emotion, with noise: learnable, not trivial.

    ``emotion`` is one of ``EMOTIONS`` or any spelling ``normalise_label`` maps to one; another name
    still gets a face of its own (its shape chosen from the name, so always the same one).
    """
    from PIL import ImageDraw

    canonical = normalise_label(emotion)
    k = EMOTIONS.index(canonical) if canonical else zlib.crc32(str(emotion).encode()) % len(EMOTIONS)
    im = Image.new("L", (size, size), int(rng.integers(90, 140)))
    d = ImageDraw.Draw(im)
    s = size / 64
    d.ellipse([8 * s, 6 * s, 56 * s, 60 * s], fill=int(rng.integers(170, 210)))
    for x in (22, 42):  # eyes
        d.ellipse([(x - 4) * s, 24 * s, (x + 4) * s, 30 * s], fill=40)
    brow = (k % 4 - 1.5) * 2  # brow tilt by emotion
    d.line([14 * s, (20 - brow) * s, 28 * s, (20 + brow) * s], fill=30, width=max(1, int(2 * s)))
    d.line([36 * s, (20 + brow) * s, 50 * s, (20 - brow) * s], fill=30, width=max(1, int(2 * s)))
    curve = (k // 2) * 3  # mouth shape by emotion: smile vs frown, open vs closed
    top, bottom = 40 - curve / 2, 44 + curve / 2 + 3 * (k % 2)
    d.chord([20 * s, top * s, 44 * s, bottom * s], 0 if k % 3 else 180, 180 if k % 3 else 360, fill=60)
    arr = np.asarray(im, dtype=np.float32) + rng.normal(0, 8, (size, size))
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return im.convert(mode)


#: What ``write_synthetic_dataset`` writes for ``layout="csv"``: the CSV at the root, the images under it.
SYNTHETIC_CSV = "labels.csv"
SYNTHETIC_FORMATS = {"png": ("PNG", ".png", {"compress_level": 1}), "jpeg": ("JPEG", ".jpg", {"quality": 90})}


def _in_threads(work, n: int, workers: int, poll: float = 0.2) -> None:
    """``work(i)`` for every ``i < n``, spread over ``workers`` threads; the first error raised, after all stop.

    Interrupt-safe, unlike waiting on a thread pool's futures: the main thread holds no lock the workers need,
    only joins them with a timeout, so Ctrl-C (or SIGTERM made an interrupt) landing anywhere cannot leave a
    future's lock held and the pool's threads waiting on it for ever (seen: a killed benchmark that never ended).
    On an interrupt or an error the work not yet started is dropped, not all done first."""
    import threading

    stop, errors, lock, cursor = threading.Event(), [], threading.Lock(), iter(range(n))

    def run() -> None:
        while not stop.is_set():
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            try:
                work(i)
            except BaseException as err:  # noqa: BLE001 - handed to the main thread, which raises it
                errors.append(err)
                stop.set()

    threads = [threading.Thread(target=run, daemon=True, name=f"synthetic-{k}") for k in range(max(1, workers))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(poll)
    finally:
        stop.set()  # an interrupt or an error: the others finish the image in hand, then stop
        for t in threads:
            t.join(30)
    if errors:
        raise errors[0]


def write_synthetic_dataset(root: str | os.PathLike, layout: str = "folders", n_images: int = 800,
                            size: int = 48, emotions=EMOTIONS, n_people: int | None = None, seed: int = 0,
                            workers: int | None = None, image_format: str = "png") -> dict:
    """Write a generated dataset of ``n_images`` cartoon faces (``draw_face``) in one of the two layouts
    ``get_dataset`` accepts besides the muxspace one; return what was written.

    - ``layout="folders"``: ``root/<emotion>/<person>_<n>.png`` (the layout of FER2013's image release;
      no person column, so the chain splits these by image, stratified by emotion).
    - ``layout="csv"``: ``root/images/<person>_<n>.png`` and ``root/labels.csv`` with the columns
      ``image,emotion,person`` (image paths relative to the CSV's folder; the chain splits by person).

    Emotions are dealt round-robin (``n_images // len(emotions)`` each, the first ones one more),
    people round-robin within each emotion (``n_people`` defaults to ``max(3, n_images // 10)``). The
    same ``seed`` gives byte-identical files whatever ``workers`` is (one random stream per image);
    ``image_format`` is ``"png"`` (fast, lossless) or ``"jpeg"``. Images are drawn and written by
    ``workers`` threads (default: 2 per CPU core). The folder must not exist yet or be empty.
    """
    import time

    root = Path(root)
    if layout not in ("folders", "csv"):
        raise ValueError(f"layout={layout!r}: choose 'folders' or 'csv'.")
    if image_format not in SYNTHETIC_FORMATS:
        raise ValueError(f"image_format={image_format!r}: choose one of {sorted(SYNTHETIC_FORMATS)}.")
    emotions = list(emotions)
    if not emotions or n_images < 1:
        raise ValueError("write_synthetic_dataset needs at least one emotion and one image.")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty; write_synthetic_dataset writes into a new or empty folder.")
    n_people = n_people or max(3, n_images // 10)
    fmt, suffix, options = SYNTHETIC_FORMATS[image_format]
    index = np.arange(n_images)
    emotion_of = [emotions[i % len(emotions)] for i in index]
    person_of = [f"person{(i // len(emotions)) % n_people:05d}" for i in index]
    if layout == "folders":
        relative = [f"{e}/{p}_{i:06d}{suffix}" for i, e, p in zip(index, emotion_of, person_of)]
        for e in emotions:
            (root / e).mkdir(parents=True, exist_ok=True)
    else:
        relative = [f"images/{p}_{i:06d}{suffix}" for i, p in zip(index, person_of)]
        (root / "images").mkdir(parents=True, exist_ok=True)

    def write(i: int) -> None:
        rng = np.random.default_rng([seed, int(i)])
        draw_face(emotion_of[i], rng, size).save(root / relative[i], fmt, **options)

    t0 = time.perf_counter()
    _in_threads(write, n_images, workers or (os.cpu_count() or 1) * 2)
    seconds = time.perf_counter() - t0
    csv = None
    if layout == "csv":
        csv = root / SYNTHETIC_CSV
        pd.DataFrame({"image": relative, "emotion": emotion_of, "person": person_of}).to_csv(csv, index=False)
    return {"root": root, "layout": layout, "n_images": n_images, "csv": csv, "files": relative,
            "counts": dict(Counter(emotion_of)), "people": min(n_people, -(-n_images // len(emotions))),
            "seconds": seconds, "images_per_s": n_images / seconds if seconds else float("inf")}
