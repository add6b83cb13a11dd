"""Annotated copies: each face's box and ``emotion probability`` drawn on a copy of its photo."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from fer_utils.prediction.images import ImageProblem, is_folder, read_image, resolved
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
        if real is not None and real.is_relative_to(root):
            rel = real.relative_to(root)
            return Path(root.name) / rel if len(roots) > 1 else rel
    return Path(p.name)


def check_annotate_dir(out_dir: str | os.PathLike, inputs: Iterable) -> Path:
    """Refuse an annotation folder that is an input folder or holds an input file (never overwrite inputs)."""
    out = Path(out_dir).resolve()
    for item in inputs:
        p = resolved(item) if isinstance(item, (str, os.PathLike)) else None
        if p is None:
            continue
        if (is_folder(p) and p == out) or (not is_folder(p) and p.parent == out):
            raise ValueError(f"Refusing to write annotated copies into {out_dir}: it holds the input photos. "
                             "Choose another --annotate folder.")
    return out


class AnnotatedCopies(list):
    """The files ``write_annotated`` wrote (a list of paths), with ``skipped``: ``{input: why it has no copy}``."""

    def __init__(self, written=(), skipped=None):
        super().__init__(written)
        self.skipped: dict[str, str] = dict(skipped or {})


def write_annotated(results: pd.DataFrame, out_dir: str | os.PathLike, inputs: Iterable = ()) -> AnnotatedCopies:
    """Write an annotated copy of every readable input into ``out_dir``; return the files written.

    Names follow the inputs (their path below an input folder is kept); JPEG inputs stay JPEG, others
    become PNG. Never writes over an input file. An input that has no picture (its status says why) or
    that cannot be drawn or written is skipped, never stops the others, and is listed with the reason
    in the result's ``skipped``.
    """
    inputs = list(inputs)
    out = check_annotate_dir(out_dir, inputs)
    roots = [r for r in (resolved(i) for i in inputs if is_folder(i)) if r is not None]
    input_files = {r for r in (resolved(f) for f in results["file"] if not str(f).startswith("<")) if r}
    written, used = AnnotatedCopies(), set()
    for file, rows in results.groupby("file", sort=False):
        status = rows["status"].iloc[0]
        if status in NO_IMAGE:
            written.skipped[file] = f"{status}: {rows['message'].iloc[0]}"
            continue
        if str(file).startswith("<"):
            written.skipped[file] = "an image given in memory, not a file"
            continue
        try:
            im = annotate(file, rows)
            rel = _output_name(file, roots)
            suffix = ".jpg" if rel.suffix.lower() in (".jpg", ".jpeg") else ".png"
            target = out / rel.with_suffix(suffix)
            n = 1
            while target in used or resolved(target) in input_files:
                target = out / rel.with_name(f"{rel.stem}-{n}{suffix}")
                n += 1
            target.parent.mkdir(parents=True, exist_ok=True)
            im.save(target, quality=92) if suffix == ".jpg" else im.save(target)
        except ImageProblem as problem:  # the file changed since it was predicted
            written.skipped[file] = f"{problem.status}: {problem}"
            continue
        except Exception as err:  # noqa: BLE001 - one file that cannot be drawn never stops the others
            written.skipped[file] = f"could not draw or write it: {type(err).__name__}: {err}"
            continue
        used.add(target)
        written.append(target)
    return written
