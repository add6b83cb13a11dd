"""Step 7 — use the trained model on new photos: find faces, predict, explain (Grad-CAM), export.

The model is the one notebook 05 writes, ``<work_dir>/model.keras``, with its preprocessing record
``model.json`` beside it (``image_size``, ``color_mode``, ``class_names``, ``input_range``). It takes
float32 pixels in [0, 255] and outputs softmax probabilities (the contract in ``fer_utils.models``).

Typical use::

    from fer_utils import prediction

    fer = prediction.load_model()                       # <work_dir>/model.keras + model.json
    results = prediction.predict(fer, ["photos/", "me.jpg"])   # one row per face (a DataFrame)

or from a shell: ``python -m fer_utils predict photos/ me.jpg --format csv --annotate annotated/``.

How a photo becomes rows:

1. **Read** with Pillow (JPEG, PNG, WebP, BMP, GIF, TIFF…; the first frame of an animation), turned
   upright by its EXIF orientation; transparency is flattened onto white.
2. **Find faces** with ``detection``:

   - ``"detect"``: OpenCV's frontal-face Haar cascade (it ships inside ``opencv-python-headless`` 4.x, so
     nothing is downloaded); faces smaller than ``min_face`` × the shorter side are ignored.
   - ``"whole"``: the whole image is one face (photos that are already face crops, like the dataset's).
   - ``"auto"`` (default): detect, and when nothing is found use the whole image, flagged
     ``whole_image_fallback``. Tight face crops rarely fire a detector (about 2 in 3 of the dataset's
     unlabelled ``test/`` photos do not), so this default gives every readable photo a prediction and
     says which ones were not detected.

3. **Crop** each face box grown by ``margin`` of its size on every side (0.1 by default: on the
   training images the cascade's box covers about 83 % of the face crop, so 0.1 reproduces the framing
   the model learned), clipped to the image.
4. **Preprocess exactly as training did** (``fer_utils.pipelines.directory_dataset``): convert to the
   model's colour mode (Pillow's ITU-R 601 luma for grayscale), resize with ``tf.image.resize``
   (``interpolation`` from ``model.json``, default bilinear, no antialiasing — what
   ``image_dataset_from_directory`` does), float32 in [0, 255]. The model rescales inside itself.
   ``"tta": "flip"`` in ``model.json`` averages each face with its mirror image.
5. **Predict** all faces of a batch of photos in one call of the model.

Every input gets at least one row; a bad file never stops the batch. ``status`` is one of:

=========================  ===================================================================
``ok``                     a face, found by the detector (or the whole image with ``detection="whole"``)
``whole_image_fallback``   ``auto``: no face detected, so the whole image was used as the face
``no_face``                ``detect``: the detector found no face (no prediction)
``not_an_image``           the content is not an image format Pillow knows (text, empty file, PDF…)
``unreadable``             an image format, but it cannot be decoded (truncated, corrupt, too large)
``not_found``              the path does not exist
``error``                  anything else that went wrong for this file (``message`` says what)
=========================  ===================================================================

Rows have ``file`` (as the caller gave it; files found in a folder are joined to the folder as given),
``face`` (0, 1… left to right; None without a face), ``status``, ``detection`` (``"haar"``, ``"whole"``
or None), ``box`` (``[x, y, w, h]`` of the face in the upright image, pixels; the whole image for
``"whole"``; None without a face), ``emotion`` and ``confidence`` (the top class and its probability),
``probabilities`` (emotion → probability, all 8) and ``message`` (why a file has no prediction).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import io
import json
import os
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from fer_utils import EMOTIONS, _quiet_fd2
from fer_utils.data import IMAGE_SUFFIXES
from fer_utils.workfolder import get_work_dir

DETECTION_MODES = ("auto", "detect", "whole")
STATUSES = ("ok", "whole_image_fallback", "no_face", "not_an_image", "unreadable", "not_found", "error")
PREDICTED = ("ok", "whole_image_fallback")  # statuses that carry a prediction
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
DEFAULT_MIN_FACE = 0.1
DEFAULT_MARGIN = 0.1
#: The cascade's own window is 24 px: photos are shrunk (for speed) until the smallest face searched for is
#: this many pixels wide (on the dataset's faces 24 px finds as many as full resolution, 2-3× faster),
#: and never searched above ``DETECT_MAX_SIDE`` pixels on the longer side.
DETECT_MIN_FACE_PX = 24
DETECT_MAX_SIDE = 1024
COLUMNS = ["file", "face", "status", "detection", "box", "emotion", "confidence", "probabilities", "message"]
HOW_TO_TRAIN = ("Train one with notebooks/05_train_model.ipynb (or `python -m fer_utils run`), which writes "
                "model.keras and model.json into the work folder, or pass --model PATH.")


class ModelLoadError(RuntimeError):
    """The model file is missing, not a Keras 3 ``.keras`` file, or does not match its record."""


# --------------------------------------------------------------------------------------------------
# The model and its preprocessing record
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What the model needs from its caller (``model.json``)."""

    image_size: tuple[int, int]  # (height, width)
    color_mode: str  # "grayscale" or "rgb"
    class_names: tuple[str, ...] = EMOTIONS
    input_range: tuple[float, float] = (0.0, 255.0)
    interpolation: str = "bilinear"  # tf.image.resize method the training pipeline used
    tta: str = "none"  # "flip": average the probabilities of the face and its mirror image
    source: str = "model.json"  # or "model input shape" when model.json is missing

    @property
    def channels(self) -> int:
        return 1 if self.color_mode == "grayscale" else 3

    @classmethod
    def from_record(cls, record: dict, source: str = "model.json") -> Preprocessing:
        size = record["image_size"]
        size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
        mode = record.get("color_mode", "grayscale")
        if mode not in ("grayscale", "rgb"):
            raise ModelLoadError(f"model.json: color_mode must be 'grayscale' or 'rgb', not {mode!r}.")
        lo, hi = record.get("input_range", (0, 255))
        tta = record.get("tta") or "none"
        if tta not in ("none", "flip"):
            raise ModelLoadError(f"model.json: tta must be 'none' or 'flip', not {tta!r}.")
        return cls(size, mode, tuple(record.get("class_names", EMOTIONS)), (float(lo), float(hi)),
                   record.get("interpolation", "bilinear"), tta, source)

    @classmethod
    def from_model(cls, model) -> Preprocessing:
        """Guess from the model's input shape (the contract: pixels in [0, 255], the 8 emotions)."""
        shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else tuple(model.input_shape)
        _, h, w, c = shape
        if h is None or w is None or c not in (1, 3):
            raise ModelLoadError(f"Cannot tell the image size/colour mode from the model input shape {shape}; "
                                 "put a model.json beside the model.")
        return cls((int(h), int(w)), "grayscale" if c == 1 else "rgb", EMOTIONS, (0.0, 255.0), "bilinear",
                   "none", "model input shape")


@dataclasses.dataclass
class LoadedModel:
    """A Keras model with its preprocessing record and where it came from."""

    model: object  # keras.Model
    preprocessing: Preprocessing
    path: Path | None = None
    _compiled: object = dataclasses.field(default=None, init=False, repr=False)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a preprocessed batch, shape (N, classes), float32 (one model call).

        The model runs in inference mode inside a ``tf.function`` (traced once, any batch size):
        about 1 ms for a small CNN instead of about 6 ms for an eager call. With ``tta="flip"`` in the
        record, the mirrored faces go in the same call and the two probabilities are averaged.
        """
        if len(batch) == 0:
            return np.zeros((0, len(self.preprocessing.class_names)), np.float32)
        if self._compiled is None:
            from fer_utils import import_tensorflow

            tf, keras = import_tensorflow()
            if isinstance(self.model, keras.Model):
                self._compiled = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
            else:  # any callable taking (batch, training=False)
                self._compiled = lambda x: self.model(x, training=False)
        batch = np.asarray(batch, np.float32)
        if self.preprocessing.tta == "flip":
            probs = np.asarray(self._compiled(np.concatenate([batch, batch[:, :, ::-1]])), dtype=np.float32)
            return (probs[: len(batch)] + probs[len(batch):]) / 2
        return np.asarray(self._compiled(batch), dtype=np.float32)


def default_model_path(work_dir: str | os.PathLike | None = None) -> Path:
    """``<work_dir>/model.keras`` (work folder: ``work_dir``, else ``$FER_WORK_DIR``, else ``work/``)."""
    return get_work_dir(work_dir, create=False) / "model.keras"


def _check_consistent(model, prep: Preprocessing) -> None:
    try:
        _, h, w, c = tuple(model.inputs[0].shape)
    except (AttributeError, IndexError, TypeError, ValueError):
        return
    if c is not None and c != prep.channels:
        raise ModelLoadError(f"The model takes {c}-channel images but its record says color_mode="
                             f"{prep.color_mode!r}; the record does not belong to this model.")
    if h is not None and w is not None and (h, w) != tuple(prep.image_size):
        raise ModelLoadError(f"The model takes {h}×{w} images but its record says image_size="
                             f"{list(prep.image_size)}; the record does not belong to this model.")
    n_out = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if n_out is not None and n_out != len(prep.class_names):
        raise ModelLoadError(f"The model has {n_out} outputs but its record names {len(prep.class_names)} classes.")


def load_model(path: str | os.PathLike | None = None, work_dir: str | os.PathLike | None = None) -> LoadedModel:
    """Load a trained ``.keras`` model (safe mode, not compiled) and its ``model.json`` record.

    ``path`` defaults to ``<work_dir>/model.keras``. The record is the ``.json`` file of the same name
    beside it; without one, the image size and colour mode come from the model's input shape.
    """
    from fer_utils import import_tensorflow

    path = Path(path).expanduser() if path else default_model_path(work_dir)
    if not path.exists():
        raise ModelLoadError(f"No trained model at {path}. {HOW_TO_TRAIN}")
    if path.is_dir() or path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path} is not a Keras 3 .keras file (a zip archive named *.keras); SavedModel "
                             "folders and .h5 files are not loaded here. " + HOW_TO_TRAIN)
    _, keras = import_tensorflow()
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # noqa: BLE001 - re-raised with what to do
        raise ModelLoadError(f"Could not load {path}: {type(err).__name__}: {err}") from err
    record_path = path.with_suffix(".json")
    if record_path.exists():
        prep = Preprocessing.from_record(json.loads(record_path.read_text()))
    else:
        prep = Preprocessing.from_model(model)
    _check_consistent(model, prep)
    return LoadedModel(model, prep, path)


def _as_loaded(model) -> LoadedModel:
    if isinstance(model, LoadedModel):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        return load_model(model)
    return LoadedModel(model, Preprocessing.from_model(model), None)


# --------------------------------------------------------------------------------------------------
# Reading images
# --------------------------------------------------------------------------------------------------


class ImageProblem(Exception):
    """A file that yields no image; ``status`` is one of ``STATUSES``."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def read_image(source) -> Image.Image:
    """Read a photo as an upright Pillow image in mode ``L`` or ``RGB``; raise ``ImageProblem`` if unusable."""
    if isinstance(source, Image.Image):
        im = source
    else:
        path = Path(source)
        if not path.exists():
            raise ImageProblem("not_found", "no such file")
        if path.is_dir():
            raise ImageProblem("not_an_image", "a folder")
        try:
            if path.stat().st_size == 0:
                raise ImageProblem("not_an_image", "empty file")
            im = Image.open(path)
        except UnidentifiedImageError:
            raise ImageProblem("not_an_image", "not an image format Pillow can read") from None
        except Image.DecompressionBombError as err:
            raise ImageProblem("unreadable", str(err)) from None
        except OSError as err:
            raise ImageProblem("unreadable", f"{type(err).__name__}: {err}") from None
        try:
            im.load()
        except Exception as err:  # noqa: BLE001 - truncated/corrupt data surfaces here with varied types
            raise ImageProblem("unreadable", f"{im.format or 'image'} data cannot be decoded: {err}") from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a broken EXIF block should not lose the picture
        pass
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba).convert("L" if im.mode.startswith("L") else "RGB")
    elif im.mode not in ("L", "RGB"):
        im = im.convert("L" if im.mode in ("1", "I", "I;16", "I;16B", "I;16L", "F") else "RGB")
    return im


def collect_inputs(paths: Iterable, exclude: Sequence[os.PathLike] = ()) -> list:
    """Expand folders (walked recursively, image files by suffix, hidden files skipped, sorted).

    Files named explicitly are kept whatever their suffix (a non-image then gets its status). Files are
    returned as the caller spelled them (a folder's files joined to the folder), never made absolute.
    Paths under any ``exclude`` folder (e.g. the annotation folder) are skipped.
    """
    excluded = [Path(e).resolve() for e in exclude]
    out = []
    for item in paths:
        if isinstance(item, Image.Image):
            out.append(item)
            continue
        p = Path(item)
        if not p.is_dir():
            out.append(str(item) if not isinstance(item, str) else item)
            continue
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                             and not any((Path(root) / d).resolve() == e for e in excluded))
            for name in sorted(files):
                if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    out.append(os.path.join(root, name))
    return out


# --------------------------------------------------------------------------------------------------
# Faces: detection and cropping
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _cascade():
    import cv2

    base = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if base is None or not (Path(base) / HAAR_CASCADE).exists():
        raise RuntimeError("OpenCV's Haar cascades are missing (opencv-python-headless 5.x no longer ships "
                           "them): install opencv-python-headless<5, or use detection='whole'.")
    cascade = cv2.CascadeClassifier(str(Path(base) / HAAR_CASCADE))
    if cascade.empty():
        raise RuntimeError(f"OpenCV could not load {HAAR_CASCADE}.")
    return cascade


def detect_faces(image, min_face: float = DEFAULT_MIN_FACE, scale_factor: float = 1.1,
                 min_neighbors: int = 5) -> list[list[int]]:
    """Face boxes ``[x, y, w, h]`` (pixels of ``image``) found by the Haar cascade, left to right.

    ``min_face``: the smallest face searched for, as a fraction of the image's shorter side. The image
    is shrunk for the search until that size is ``DETECT_MIN_FACE_PX`` pixels (the cascade works on a
    24-pixel window, so a bigger search image only costs time), then the boxes are scaled back.
    """
    import cv2

    gray = np.asarray(image.convert("L") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    min_px = max(24.0, min_face * min(h, w))
    scale = min(1.0, DETECT_MIN_FACE_PX / min_px, DETECT_MAX_SIDE / max(h, w))
    small = gray if scale >= 1.0 else cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                 interpolation=cv2.INTER_AREA)
    side = max(24, round(min_px * scale))
    if min(small.shape) < side:
        return []
    found = _cascade().detectMultiScale(small, scaleFactor=scale_factor, minNeighbors=min_neighbors,
                                        minSize=(side, side))
    boxes = [[round(x / scale), round(y / scale), round(bw / scale), round(bh / scale)] for x, y, bw, bh in found]
    boxes = [[x, y, min(bw, w - x), min(bh, h - y)] for x, y, bw, bh in boxes]
    return sorted(boxes, key=lambda b: (b[0], b[1]))


def crop_box(box, image_size, margin: float = DEFAULT_MARGIN) -> tuple[int, int, int, int]:
    """The crop ``(left, top, right, bottom)`` for a face box grown by ``margin`` of its size per side,
    clipped to an image of ``image_size = (width, height)``."""
    x, y, w, h = box
    W, H = image_size
    dx, dy = margin * w, margin * h
    left, top = max(0, round(x - dx)), max(0, round(y - dy))
    right, bottom = min(W, round(x + w + dx)), min(H, round(y + h + dy))
    return left, top, max(right, left + 1), max(bottom, top + 1)


def preprocess_faces(faces: Sequence, preprocessing: Preprocessing) -> np.ndarray:
    """Face crops (Pillow images or uint8 arrays) → the model's input batch ``(N, H, W, C)`` float32.

    Same steps as the training pipeline: the model's colour mode, ``tf.image.resize`` (bilinear, no
    antialias, like ``keras.utils.image_dataset_from_directory``), pixels scaled to ``input_range``
    (the contract's [0, 255] leaves them as they are).
    """
    from fer_utils import import_tensorflow

    tf, _ = import_tensorflow()
    h, w = preprocessing.image_size
    mode = "L" if preprocessing.color_mode == "grayscale" else "RGB"
    batch = np.zeros((len(faces), h, w, preprocessing.channels), np.float32)
    for i, face in enumerate(faces):
        if not isinstance(face, Image.Image):
            face = Image.fromarray(np.asarray(face, dtype=np.uint8).squeeze())
        arr = np.asarray(face.convert(mode), dtype=np.float32).reshape(face.height, face.width, -1)
        batch[i] = tf.image.resize(arr, (h, w), method=preprocessing.interpolation, antialias=False).numpy()
    lo, hi = preprocessing.input_range
    if (lo, hi) != (0.0, 255.0):
        batch = lo + batch * ((hi - lo) / 255.0)
    return batch


# --------------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------------


def _name(item, index: int) -> str:
    if isinstance(item, Image.Image):
        return getattr(item, "filename", "") or f"<image {index}>"
    return str(item)


def _faces_of(item, detection: str, min_face: float, margin: float):
    """(rows without predictions, face crops) for one input."""
    try:
        im = read_image(item)
    except ImageProblem as problem:
        return [{"status": problem.status, "message": str(problem)}], []
    if detection == "whole":
        return [{"status": "ok", "detection": "whole", "box": [0, 0, im.width, im.height]}], [im]
    boxes = detect_faces(im, min_face=min_face)
    if boxes:
        rows = [{"status": "ok", "detection": "haar", "box": b} for b in boxes]
        return rows, [im.crop(crop_box(b, im.size, margin)) for b in boxes]
    if detection == "detect":
        return [{"status": "no_face", "message": "no face found (try detection='auto' or 'whole')"}], []
    return [{"status": "whole_image_fallback", "detection": "whole", "box": [0, 0, im.width, im.height],
             "message": "no face found: the whole image was used as the face"}], [im]


def _iter_rows(loaded: LoadedModel, items: list, detection: str, min_face: float, margin: float,
               batch_size: int):
    names = loaded.preprocessing.class_names
    pending: list[tuple[str, list[dict], list]] = []
    n_faces = 0

    def flush():
        crops = [c for _, _, cs in pending for c in cs]
        probs = loaded(preprocess_faces(crops, loaded.preprocessing)) if crops else None
        k = 0
        for name, rows, _crops in pending:
            for face, row in enumerate(rows):
                full = {c: None for c in COLUMNS} | row | {"file": name}
                if row["status"] in PREDICTED:
                    p = probs[k]
                    k += 1
                    top = int(np.argmax(p))
                    full |= {"face": face, "emotion": names[top], "confidence": float(p[top]),
                             "probabilities": {e: float(v) for e, v in zip(names, p)}}
                yield full
        pending.clear()

    for i, item in enumerate(items):
        name = _name(item, i)
        try:
            rows, crops = _faces_of(item, detection, min_face, margin)
        except Exception as err:  # noqa: BLE001 - one bad file never stops the batch
            rows, crops = [{"status": "error", "message": f"{type(err).__name__}: {err}"}], []
        pending.append((name, rows, crops))
        n_faces += len(crops)
        if n_faces >= batch_size:
            yield from flush()
            n_faces = 0
    yield from flush()


def predict(model, inputs, detection: str = "auto", min_face: float = DEFAULT_MIN_FACE,
            margin: float = DEFAULT_MARGIN, batch_size: int = 64) -> pd.DataFrame:
    """Predict the emotion of every face in ``inputs``: one row per face (see the module docstring).

    ``model``: a ``LoadedModel`` (``load_model()``), a Keras model honouring the contract, a path to a
    ``.keras`` file, or None for ``<work_dir>/model.keras``. ``inputs``: a path, a folder, a Pillow
    image, or a list of them; folders are walked. Faces are batched: one model call per ``batch_size``
    faces.
    """
    if detection not in DETECTION_MODES:
        raise ValueError(f"detection must be one of {DETECTION_MODES}, not {detection!r}")
    loaded = _as_loaded(model)
    if isinstance(inputs, (str, os.PathLike, Image.Image)):
        inputs = [inputs]
    items = collect_inputs(inputs)
    rows = list(_iter_rows(loaded, items, detection, min_face, margin, batch_size))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["face"] = frame["face"].astype("Int64")
    return frame


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Inputs per status (a file counts once, by its first row) and faces per status."""
    files = results.drop_duplicates("file")["status"].value_counts()
    faces = results.loc[results.status.isin(PREDICTED), "status"].value_counts()
    table = pd.DataFrame({"files": files, "faces": faces}).fillna(0).astype(int)
    return table.reindex([s for s in STATUSES if s in table.index])


def to_records(results: pd.DataFrame, decimals: int | None = 4) -> list[dict]:
    """Rows as JSON-ready dicts (the CLI's JSON output)."""
    out = []
    for row in results.to_dict("records"):
        rec = {}
        for key in COLUMNS:
            value = row.get(key)
            if value is None or (not isinstance(value, (list, dict)) and pd.isna(value)):
                value = None
            elif key == "face":
                value = int(value)
            elif key == "box":
                value = [int(v) for v in value]
            elif key == "confidence" and decimals is not None:
                value = round(float(value), decimals)
            elif key == "probabilities" and decimals is not None:
                value = {k: round(float(v), decimals) for k, v in value.items()}
            rec[key] = value
        out.append(rec)
    return out


def to_flat(results: pd.DataFrame, class_names: Sequence[str] = EMOTIONS) -> pd.DataFrame:
    """Rows with ``box`` as ``x, y, w, h`` columns and one probability column per emotion (the CSV)."""
    flat = results.drop(columns=["box", "probabilities"]).copy()
    boxes = [b if isinstance(b, list) else [None] * 4 for b in results["box"]]
    for i, col in enumerate(("x", "y", "w", "h")):
        flat.insert(4 + i, col, pd.array([b[i] for b in boxes], dtype="Int64"))
    for name in class_names:
        flat[name] = [p.get(name) if isinstance(p, dict) else None for p in results["probabilities"]]
    message = flat.pop("message")
    flat["message"] = message
    return flat


# --------------------------------------------------------------------------------------------------
# Annotated copies
# --------------------------------------------------------------------------------------------------

BOX_COLORS = {"haar": (46, 204, 64), "whole": (255, 133, 27)}


def annotate(image, rows) -> Image.Image:
    """A copy of ``image`` with each face's box and ``emotion probability`` drawn on it (RGB).

    ``rows``: the result rows of this image. Detected faces are green, whole-image predictions orange;
    an image without a prediction gets its status written on it.
    """
    im = read_image(image).convert("RGB") if not isinstance(image, Image.Image) else image.convert("RGB")
    draw = ImageDraw.Draw(im)
    size = max(12, round(min(im.size) / 22))
    font = ImageFont.load_default(size=size)
    width = max(2, round(min(im.size) / 150))
    for row in (rows.to_dict("records") if isinstance(rows, pd.DataFrame) else rows):
        if row.get("status") not in PREDICTED:
            draw.text((width, width), str(row.get("status")), fill=(220, 20, 60), font=font,
                      stroke_width=max(1, size // 10), stroke_fill=(255, 255, 255))
            continue
        x, y, w, h = row["box"]
        color = BOX_COLORS.get(row.get("detection"), BOX_COLORS["haar"])
        inset = width // 2 if row.get("detection") == "whole" else 0
        draw.rectangle([x + inset, y + inset, x + w - 1 - inset, y + h - 1 - inset], outline=color, width=width)
        label = f"{row['emotion']} {row['confidence']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        tx, ty = x + width, y - (bottom - top) - 2 * width
        if ty < 0:  # no room above the box: write inside it
            ty = y + width
        draw.rectangle([tx - width, ty, tx + (right - left) + width, ty + (bottom - top) + 2 * width], fill=color)
        draw.text((tx, ty + width - top), label, fill=(0, 0, 0), font=font)
    return im


def _output_name(file: str, roots: list[Path]) -> Path:
    p = Path(file)
    resolved = p.resolve()
    for root in roots:
        if resolved.is_relative_to(root):
            rel = resolved.relative_to(root)
            return Path(root.name) / rel if len(roots) > 1 else rel
    return Path(p.name)


def check_annotate_dir(out_dir: str | os.PathLike, inputs: Iterable) -> Path:
    """Refuse an annotation folder that is an input folder or holds an input file (never overwrite inputs)."""
    out = Path(out_dir).resolve()
    for item in inputs:
        if isinstance(item, Image.Image):
            continue
        p = Path(item).resolve()
        if (p.is_dir() and p == out) or (not p.is_dir() and p.parent == out):
            raise ValueError(f"Refusing to write annotated copies into {out_dir}: it holds the input photos. "
                             "Choose another --annotate folder.")
    return out


def write_annotated(results: pd.DataFrame, out_dir: str | os.PathLike, inputs: Iterable = ()) -> list[Path]:
    """Write an annotated copy of every readable input into ``out_dir``; return the files written.

    Names follow the inputs (their path below an input folder is kept); JPEG inputs stay JPEG, others
    become PNG. Never writes over an input file.
    """
    inputs = list(inputs)
    out = check_annotate_dir(out_dir, inputs)
    roots = [Path(i).resolve() for i in inputs if not isinstance(i, Image.Image) and Path(i).is_dir()]
    input_files = {Path(f).resolve() for f in results["file"] if not str(f).startswith("<")}
    written, used = [], set()
    for file, rows in results.groupby("file", sort=False):
        if rows["status"].iloc[0] in ("not_found", "not_an_image", "unreadable", "error"):
            continue
        try:
            im = annotate(file, rows)
        except ImageProblem:
            continue
        rel = _output_name(file, roots)
        suffix = ".jpg" if rel.suffix.lower() in (".jpg", ".jpeg") else ".png"
        target = out / rel.with_suffix(suffix)
        n = 1
        while target in used or target.resolve() in input_files:
            target = out / rel.with_name(f"{rel.stem}-{n}{suffix}")
            n += 1
        target.parent.mkdir(parents=True, exist_ok=True)
        im.save(target, quality=92) if suffix == ".jpg" else im.save(target)
        used.add(target)
        written.append(target)
    return written


# --------------------------------------------------------------------------------------------------
# Grad-CAM
# --------------------------------------------------------------------------------------------------


def _last_conv(model, layer_name: str | None = None):
    """The layer whose feature maps Grad-CAM weighs: the last top-level convolution, or a nested model
    (a pretrained backbone) that contains convolutions and outputs feature maps, whichever comes last."""
    from fer_utils import import_tensorflow

    _, keras = import_tensorflow()
    if layer_name:
        return model.get_layer(layer_name)
    conv_types = (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D)
    for layer in reversed(model.layers):
        if isinstance(layer, conv_types):
            return layer
        if isinstance(layer, keras.Model) and any(isinstance(sub, conv_types) for sub in layer._flatten_layers()):
            if len(layer.output.shape) == 4:
                return layer
    raise ValueError(f"{model.name} has no convolution layer (or convolutional sub-model); pass layer_name.")


def _grad_model(model, conv):
    """A model from the input to ``[conv output, predictions]``."""
    from fer_utils import import_tensorflow

    _, keras = import_tensorflow()
    # conv.output is the layer's first call; a nested backbone's first call is inside its own graph, so
    # also try the tensors of each of its calls (the last is the call in this model's graph)
    candidates = [lambda: conv.output, *[lambda n=n: n.output_tensors[0] for n in reversed(conv._inbound_nodes)]]
    for tensor in candidates:
        try:
            return keras.Model(model.inputs, [tensor(), model.outputs[0]])
        except (AttributeError, IndexError, ValueError, TypeError):
            continue
    if not isinstance(model, keras.Sequential):
        raise ValueError(f"Cannot connect {conv.name} to the output of {model.name}; pass layer_name.")
    inp = keras.Input(tuple(model.input_shape[1:]))  # a Sequential without an input graph: rebuild it
    x, conv_out = inp, None
    for layer in model.layers:
        x = layer(x)
        if layer is conv:
            conv_out = x
    return keras.Model(inp, [conv_out, x])


def grad_cam(model, image_batch: np.ndarray, class_index=None, layer_name: str | None = None) -> np.ndarray:
    """Grad-CAM heatmaps ``(N, H, W)`` in [0, 1] for a preprocessed batch (what ``preprocess_faces`` returns).

    Gradients of the log-probability of ``class_index`` (an int, one per image, or None for each image's
    predicted class) with respect to the last ``Conv2D`` layer's output (or ``layer_name``), averaged per
    channel, weight that layer's maps; the ReLU of the sum, scaled to [0, 1] per image and resized to
    the input size, is the heatmap: where the evidence for that class is.
    """
    from fer_utils import import_tensorflow

    tf, _ = import_tensorflow()
    model = model.model if isinstance(model, LoadedModel) else model
    grad_model = _grad_model(model, _last_conv(model, layer_name))
    x = tf.convert_to_tensor(np.asarray(image_batch, np.float32))
    with tf.GradientTape() as tape:
        conv_raw, probs = grad_model(x, training=False)  # conv_raw is bfloat16 under mixed precision
        probs = tf.cast(probs, tf.float32)
        if class_index is None:
            idx = tf.argmax(probs, axis=-1, output_type=tf.int32)
        else:
            idx = tf.broadcast_to(tf.constant(class_index, tf.int32), tf.shape(probs)[:1])
        score = tf.math.log(tf.gather(probs, idx, batch_dims=1) + 1e-7)
    grads = tape.gradient(score, conv_raw)
    if grads is None:
        raise RuntimeError("Grad-CAM got no gradient: the conv layer is not on the path to the output.")
    grads, conv_out = tf.cast(grads, tf.float32), tf.cast(conv_raw, tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * conv_out, axis=-1))[..., None]
    cam = tf.image.resize(cam, tuple(x.shape[1:3]), method="bilinear")
    cam = cam / (tf.reduce_max(cam, axis=(1, 2, 3), keepdims=True) + 1e-8)
    return np.clip(cam.numpy()[..., 0], 0.0, 1.0)


def overlay_heatmap(image, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """``image`` (H×W, H×W×1 or H×W×3; [0, 255] floats or uint8) blended with a coloured heatmap → RGB uint8."""
    import matplotlib

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if heatmap.shape != img.shape[:2]:
        heatmap = np.asarray(Image.fromarray(np.uint8(255 * heatmap)).resize(img.shape[1::-1], Image.BILINEAR)) / 255
    colored = matplotlib.colormaps[cmap](np.clip(heatmap, 0, 1))[..., :3] * 255.0
    return np.clip((1 - alpha) * img + alpha * colored, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def _float32_policies(config):
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key == "dtype" and isinstance(value, dict) and "Policy" in str(value.get("class_name", "")):
                value = {**value, "config": {**value.get("config", {}), "name": "float32"}}
            elif key == "dtype" and isinstance(value, str) and value.startswith("mixed_"):
                value = "float32"
            out[key] = _float32_policies(value)
        return out
    if isinstance(config, list):
        return [_float32_policies(v) for v in config]
    return config


def float32_model(model):
    """``model`` itself if it computes in float32, else a float32 copy with the same weights.

    Training under mixed precision (``mixed_bfloat16`` on CPUs that have it) stores float32 weights but
    computes in bfloat16; TFLite cannot convert bfloat16 convolutions and many serving CPUs lack them,
    so exports use this float32 copy (outputs differ from the mixed-precision model by bfloat16's ~1e-2).
    """
    model = model.model if isinstance(model, LoadedModel) else model
    if all(getattr(layer, "compute_dtype", "float32") == "float32" for layer in model._flatten_layers()):
        return model
    from fer_utils import import_tensorflow

    _, keras = import_tensorflow()
    clone = model.__class__.from_config(_float32_policies(model.get_config()))
    clone.set_weights([keras.ops.convert_to_numpy(w).astype(np.float32) for w in model.get_weights()])
    return clone


def export_savedmodel(model, directory: str | os.PathLike) -> Path:
    """Export for TF Serving / TF.js / TFLite conversion: ``model.export(directory, "tf_saved_model")``.

    The exported ``serve`` signature runs the model in inference mode (``training=False``), so any
    augmentation or dropout is off; inputs and outputs are as in the contract (float32 pixels in
    [0, 255] → probabilities). A mixed-precision model is exported as its float32 copy (``float32_model``).
    """
    model = float32_model(model)
    directory = Path(directory)
    with _quiet_fd2():
        model.export(str(directory), format="tf_saved_model", verbose=False)
    return directory


def export_tflite(model, path: str | os.PathLike, quantize: bool = False) -> Path:
    """Convert to a ``.tflite`` file (via a temporary float32 SavedModel, inference mode); ``quantize``
    adds dynamic-range quantization of the weights (smaller, slightly different outputs)."""
    from fer_utils import import_tensorflow

    tf, _ = import_tensorflow()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        saved = export_savedmodel(model, Path(tmp) / "saved_model")
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        if quantize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        with _quiet_fd2():
            path.write_bytes(converter.convert())
    return path


def tflite_interpreter(path: str | os.PathLike):
    """A TFLite interpreter: ``ai_edge_litert`` (LiteRT) when installed, else TF's deprecated
    ``tf.lite.Interpreter`` (still in TF 2.21, with a deprecation warning that is silenced here)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from fer_utils import import_tensorflow

        tf, _ = import_tensorflow()
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings(), _quiet_fd2():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        return Interpreter(model_path=str(path))


def tflite_predict(path_or_interpreter, batch: np.ndarray) -> np.ndarray:
    """Run a ``.tflite`` model on a preprocessed batch; returns probabilities (N, classes)."""
    it = path_or_interpreter
    if isinstance(it, (str, os.PathLike)):
        it = tflite_interpreter(it)
    batch = np.asarray(batch, np.float32)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    with _quiet_fd2():  # "Created TensorFlow Lite XNNPACK delegate" goes to stderr at first use
        if tuple(inp["shape"]) != batch.shape:
            it.resize_tensor_input(inp["index"], list(batch.shape))
        it.allocate_tensors()
        it.set_tensor(inp["index"], batch)
        it.invoke()
        return np.array(it.get_tensor(out["index"]), dtype=np.float32)


def savedmodel_predict(directory: str | os.PathLike, batch: np.ndarray) -> np.ndarray:
    """Run an exported SavedModel's ``serve`` function on a preprocessed batch."""
    from fer_utils import import_tensorflow

    tf, _ = import_tensorflow()
    loaded = tf.saved_model.load(str(directory))
    return np.asarray(loaded.serve(tf.constant(np.asarray(batch, np.float32))), dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_utils predict",
        description="Predict the emotion of every face in photos (one row per face).",
        epilog="Statuses: " + ", ".join(STATUSES) + ". Exit code 0 when it ran (per-file problems are in "
               "the output), 1 when no input got a prediction, 2 for usage errors or a missing model.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="photos or folders (walked for image files)")
    parser.add_argument("--model", help="a .keras file (default: <work_dir>/model.keras; "
                                        "work_dir = $FER_WORK_DIR or work/)")
    parser.add_argument("--format", choices=("json", "csv"), default="json", help="output format (default json)")
    parser.add_argument("--output", "-o", help="write the results to this file instead of stdout")
    parser.add_argument("--annotate", metavar="DIR", help="write copies with boxes and labels into DIR")
    parser.add_argument("--detection", choices=DETECTION_MODES, default="auto",
                        help="auto: detect faces, else use the whole image (flagged); detect: faces only; "
                             "whole: each image is one face (default auto)")
    parser.add_argument("--min-face", type=float, default=DEFAULT_MIN_FACE,
                        help="smallest face to detect, as a fraction of the shorter side (default 0.1)")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                        help="crop margin per side, as a fraction of the face box (default 0.1)")
    parser.add_argument("--batch-size", type=int, default=64)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fer_utils predict PATH... [--model M] [--format json|csv] [--annotate DIR]``."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not 0 < args.min_face <= 1 or args.margin < 0 or args.batch_size < 1:
        parser.error("--min-face must be in (0, 1], --margin >= 0 and --batch-size >= 1")
    if args.annotate:
        try:
            check_annotate_dir(args.annotate, args.paths)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        loaded = load_model(args.model)
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    items = collect_inputs(args.paths, exclude=[args.annotate] if args.annotate else ())
    results = predict(loaded, items, detection=args.detection, min_face=args.min_face, margin=args.margin,
                      batch_size=args.batch_size)
    elapsed = time.perf_counter() - start
    if args.format == "json":  # a JSON list, one face per line
        text = "[\n" + ",\n".join("  " + json.dumps(r) for r in to_records(results)) + "\n]\n"
    else:
        buffer = io.StringIO()
        to_flat(results, loaded.preprocessing.class_names).to_csv(buffer, index=False, float_format="%.6g",
                                                                    quoting=csv.QUOTE_MINIMAL)
        text = buffer.getvalue()
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    if args.annotate:
        written = write_annotated(results, args.annotate, args.paths)
        print(f"{len(written)} annotated copies in {args.annotate}", file=sys.stderr)
    counts = ", ".join(f"{n} {s}" for s, n in summary(results)["files"].items())
    print(f"{results.file.nunique()} inputs ({counts}) in {elapsed:.1f} s", file=sys.stderr)
    return 0 if results.status.isin(PREDICTED).any() else 1


