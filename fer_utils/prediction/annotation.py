"""Annotated copies: each face's box and ``emotion probability`` drawn on a copy of its photo."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from fer_utils.data import dataset_holding
from fer_utils.prediction.images import ImageProblem, file_id, is_folder, read_image, resolved
from fer_utils.prediction.inference import PREDICTED

BOX_COLORS = {"haar": (46, 204, 64), "mtcnn": (46, 204, 64), "whole": (255, 133, 27)}  # found; whole image
NO_IMAGE = ("not_found", "not_an_image", "unreadable", "error")  # statuses of inputs that have no picture


def annotate(image, rows) -> Image.Image:
    """A copy of ``image`` with each face's box and ``emotion probability`` drawn on it (RGB).

    ``rows``: the result rows of this image. Detected faces are green, whole-image predictions orange;
    an image without a prediction gets its status written on it. Any size works, down to 1×1 pixel
    (boxes are kept inside the picture; labels that do not fit are cut off).
    """
    im = read_image(image).convert("RGB")
    draw = ImageDraw.Draw(im)
    size = max(12, round(min(im.size) / 22))
    font = ImageFont.load_default(size=size)
    width = max(2, round(min(im.size) / 150))
    for row in (rows.to_dict("records") if isinstance(rows, pd.DataFrame) else rows):
        if row.get("status") not in PREDICTED:
            draw.text((width, width), str(row.get("status")), fill=(220, 20, 60), font=font,
                      stroke_width=max(1, size // 10), stroke_fill=(255, 255, 255))
            continue
        x, y, w, h = (int(v) for v in row["box"])
        color = BOX_COLORS.get(row.get("detection"), BOX_COLORS["haar"])
        inset = width // 2 if row.get("detection") == "whole" else 0
        inset = max(0, min(inset, (w - 1) // 2, (h - 1) // 2))  # a box narrower than the line: no inset
        left, top = x + inset, y + inset
        draw.rectangle([left, top, max(left, x + w - 1 - inset), max(top, y + h - 1 - inset)], outline=color,
                       width=width)
        label = f"{row['emotion']} {row['confidence']:.2f}"
        x0, t, x1, b = draw.textbbox((0, 0), label, font=font)
        tx, ty = x + width, y - (b - t) - 2 * width
        if ty < 0:  # no room above the box: write inside it
            ty = y + width
        draw.rectangle([tx - width, ty, tx + (x1 - x0) + width, ty + (b - t) + 2 * width], fill=color)
        draw.text((tx, ty + width - t), label, fill=(0, 0, 0), font=font)
    return im


def _output_name(file: str, roots: list[Path]) -> Path:
    p, real = Path(file), resolved(file)
    for root in roots:
        if real is not None and real.is_relative_to(root) and real != root:  # (a folder input is no copy's name)
            rel = real.relative_to(root)
            return Path(root.name) / rel if len(roots) > 1 else rel
    return Path(p.name)


def _paths(items: Iterable) -> list[tuple[object, Path]]:
    """``(as given, resolved)`` for every item that names an existing file or folder."""
    out = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) and not str(item).startswith("<"):
            real = resolved(item)
            if real is not None and real.exists():
                out.append((item, real))
    return out


def writable_folder(folder: Path) -> tuple[bool, Path]:
    """Can files be made in ``folder`` (or, if it does not exist yet, in the nearest folder above it that does)?
    Returns ``(yes, the folder checked)``."""
    probe = folder
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK), probe


def check_annotate_dir(out_dir: str | os.PathLike, inputs: Iterable, files: Iterable = ()) -> Path:
    """Refuse (``ValueError``, one line saying what to do) an annotation folder that cannot be written (a file,
    no write permission), that is an input folder or lies inside one, or that holds an input — a file or a
    folder named in ``inputs``, or any of ``files`` (the photos found), compared by identity (device and inode:
    a hard link is the same photo). Returns the folder, resolved."""
    given = Path(out_dir)
    if given.exists() and not given.is_dir():
        raise ValueError(f"--annotate {out_dir} is not a folder (a file is there); choose a folder for the "
                         "annotated copies.")
    out = given.resolve()
    held = dataset_holding(out)
    if held is not None:
        raise ValueError(f"Refusing --annotate {out_dir}: it lies inside the dataset {held}, which is only ever read; "
                         "choose a folder outside it.")
    ok, probe = writable_folder(out)
    if not ok:
        raise ValueError(f"--annotate {out_dir}: cannot write into {probe} (not a writable folder); choose a "
                         "folder you can write to.")
    named = _paths(inputs)
    for item, real in named:
        if real.is_dir() and out.is_relative_to(real):
            where = "is" if out == real else "lies inside"
            raise ValueError(f"Refusing --annotate {out_dir}: it {where} the input folder {item}, so copies could "
                             "replace photos; choose a folder outside the inputs.")
        if real.is_relative_to(out):
            raise ValueError(f"Refusing --annotate {out_dir}: it holds the input {item}, so copies could replace "
                             "photos; choose a folder outside the inputs.")
    ids = {file_id(real): item for item, real in [*named, *_paths(files)] if real.is_file()}
    ids.pop(None, None)
    if ids and out.is_dir():
        for root, _, names in os.walk(out):
            for name in names:
                item = ids.get(file_id(Path(root) / name))
                if item is not None:
                    raise ValueError(f"Refusing --annotate {out_dir}: {Path(root) / name} is the input {item} "
                                     "(a link to the same file); choose a folder outside the inputs.")
    return out


def plan_copies(results: pd.DataFrame, out_dir: str | os.PathLike, inputs: Iterable = ()) -> dict[str, Path]:
    """``{input file: its annotated copy}`` for every file of ``results`` (what ``write_annotated`` writes).

    Names follow the inputs (their path below an input folder is kept); JPEG inputs stay JPEG, others become
    PNG; two inputs that would share a name get ``-1``, ``-2``... Raises ``ValueError`` when a copy would go
    through a symbolic link (a folder of ``out_dir`` that leads elsewhere, or the copy's own name)."""
    out = Path(out_dir).resolve()
    roots = [r for r in (resolved(i) for i in inputs if is_folder(i)) if r is not None]
    plan, used = {}, set()
    for file in dict.fromkeys(results["file"]):
        if str(file).startswith("<"):
            continue
        rel = _output_name(file, roots)
        suffix = ".jpg" if rel.suffix.lower() in (".jpg", ".jpeg", ".jfif", ".jpe") else ".png"
        target = out / rel.with_suffix(suffix)
        n = 1
        while target in used:
            target = out / rel.with_name(f"{rel.stem}-{n}{suffix}")
            n += 1
        for part in [*reversed(target.relative_to(out).parents[:-1]), target.relative_to(out)]:
            if (out / part).is_symlink():
                raise ValueError(f"Refusing --annotate {out_dir}: {out / part} is a symbolic link, so a copy "
                                 "could land outside the folder; remove it or choose another folder.")
        used.add(target)
        plan[file] = target
    return plan


def existing_copies(plan: dict[str, Path]) -> list[Path]:
    """The copies of ``plan`` that would replace a file already there."""
    return [t for t in plan.values() if os.path.lexists(t)]


class AnnotatedCopies(list):
    """The files ``write_annotated`` wrote (a list of paths), with ``copies``: ``{input: its copy}`` and
    ``skipped``: ``{input: why it has no copy}``."""

    def __init__(self, written=(), skipped=None, copies=None):
        super().__init__(written)
        self.skipped: dict[str, str] = dict(skipped or {})
        self.copies: dict[str, Path] = dict(copies or {})


def _read_umask() -> int:
    """This process's umask (read by setting it and putting it back, once, at import)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: The permissions an annotated copy gets: those of any file the user saves (mkstemp's are private, 0600).
COPY_MODE = 0o666 & ~_read_umask()


def replace_whole(target: Path, write: Callable[[BinaryIO], object], mode: int, prefix: str) -> None:
    """Write ``target`` whole or not at all: ``write`` fills a new file beside it, which then gets ``mode`` and is
    renamed to ``target`` (a file already there, or a link, is replaced as a name, never written into). On any
    error the new file is removed and ``target`` is left as it was."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=prefix, suffix=target.suffix + ".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        if os.name == "posix":
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_new(im: Image.Image, target: Path, out: Path, overwrite: bool) -> None:
    """Save into a new file beside ``target``, then rename it to ``target``: a file already there (a link to
    another file included) is replaced as a name, never written into; nothing lands outside ``out``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.parent.resolve().is_relative_to(out):
        raise OSError(f"{target.parent} leads outside {out}")
    if os.path.lexists(target) and not overwrite:
        raise FileExistsError(f"{target} already exists (overwrite=True, or --overwrite, replaces it)")
    fmt, options = ("JPEG", {"quality": 92}) if target.suffix == ".jpg" else ("PNG", {})
    replace_whole(target, lambda f: im.save(f, fmt, **options), COPY_MODE, prefix=".annotating-")


def write_annotated(results: pd.DataFrame, out_dir: str | os.PathLike, inputs: Iterable = (),
                    overwrite: bool = False) -> AnnotatedCopies:
    """Write an annotated copy of every readable input into ``out_dir``; return the files written.

    Names follow ``plan_copies``. Never writes over an input, nor outside ``out_dir``: ``check_annotate_dir``
    and ``plan_copies`` raise ``ValueError`` first. A copy already there is replaced only with ``overwrite``
    (else that input is skipped, saying so). An input that has no picture (its status says why) or that cannot
    be drawn or written is skipped, never stops the others, and is listed with the reason in ``skipped``.
    """
    inputs = list(inputs)
    out = check_annotate_dir(out_dir, inputs, [f for f in results["file"] if not str(f).startswith("<")])
    plan = plan_copies(results, out_dir, inputs)
    written = AnnotatedCopies()
    for file, rows in results.groupby("file", sort=False):
        status = rows["status"].iloc[0]
        if rows["status"].isin(NO_IMAGE).all():  # (one face of several the model failed on: the others are drawn)
            written.skipped[file] = f"{status}: {rows['message'].iloc[0]}"
            continue
        if file not in plan:
            written.skipped[file] = "an image given in memory, not a file"
            continue
        try:
            _save_new(annotate(file, rows), plan[file], out, overwrite)
        except ImageProblem as problem:  # the file changed since it was predicted
            written.skipped[file] = f"{problem.status}: {problem}"
            continue
        except Exception as err:  # noqa: BLE001 - one file that cannot be drawn or written never stops the others
            written.skipped[file] = f"could not draw or write it: {type(err).__name__}: {err}"
            continue
        written.append(plan[file])
        written.copies[file] = plan[file]
    return written
