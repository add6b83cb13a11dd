"""The model and its record, preprocessing, prediction in batches, and the row format of the results.

A model is used with the one record that describes it, ``fer_utils.models.ModelRecord`` (``model.json``
beside ``model.keras``): image size, colour mode, class names, input range, resizing method and TTA, so
faces are preprocessed exactly as in training. ``model_provenance`` says which file that is and whether
the ``model.json`` and ``metrics.json`` beside it describe that very file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fer_utils import EMOTIONS
from fer_utils.evaluation import metrics_describe
from fer_utils.models import ModelRecord, RecordError, with_tta
from fer_utils.prediction.detection import (
    DEFAULT_DETECTOR,
    DEFAULT_MARGIN,
    DEFAULT_MIN_FACE,
    DETECTION_MODES,
    DETECTORS,
    check_detector,
    crop_box,
    detect_faces,
)
from fer_utils.prediction.images import ImageProblem, as_trained, collect_inputs, face_pixels, read_image
from fer_utils.workfolder import METRICS, MODEL_FILE, NOTEBOOKS, display_path, get_work_dir, sha256_of

STATUSES = ("ok", "whole_image_fallback", "no_face", "not_an_image", "unreadable", "not_found", "error")
PREDICTED = ("ok", "whole_image_fallback")  # statuses that carry a prediction
COLUMNS = ["file", "face", "status", "detection", "box", "emotion", "confidence", "probabilities", "message"]
#: the no-face hint for Python callers; the command line passes its own wording (``--detection auto``...)
NO_FACE_HINT = "try detection='auto' or 'whole'"
#: in the message of a face whose probabilities are not finite numbers (``not_finite_message``)
BROKEN_MODEL = "the model is likely broken"
HOW_TO_TRAIN = ("Train one with notebooks/05_train_model.ipynb (or `python -m fer_utils run`), which writes "
                "model.keras and model.json into the work folder, or pass --model PATH (or --work-dir DIR, or set "
                "FER_WORK_DIR, for a work folder of your own).")


class ModelLoadError(RuntimeError):
    """The model file is missing, not a Keras 3 ``.keras`` file, or does not match its record."""


# --------------------------------------------------------------------------------------------------
# The model and its record
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoadedModel:
    """A Keras model with its record (``fer_utils.models.ModelRecord``) and the file it came from."""

    model: object  # keras.Model, or any callable taking (batch, training=False)
    record: ModelRecord
    path: Path | None = None  # as given to ``load_model`` (``~`` expanded), or the default work-folder path
    _compiled: object = dataclasses.field(default=None, init=False, repr=False)

    @property
    def preprocessing(self) -> ModelRecord:
        """The record (its earlier name; notebook 07 reads ``image_size``, ``color_mode``, ``input_range``,
        ``source`` from it)."""
        return self.record

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a preprocessed batch, shape (N, classes), float32 (one model call).

        The model runs in inference mode inside a ``tf.function`` (traced once, any batch size):
        about 1 ms for a small CNN instead of about 6 ms for an eager call. With ``tta="flip"`` in the
        record, the mirrored faces go in the same call and the two probabilities are averaged.
        """
        if len(batch) == 0:
            return np.zeros((0, len(self.record.class_names)), np.float32)
        if self._compiled is None:
            from fer_utils import import_tensorflow

            tf, keras = import_tensorflow()
            if isinstance(self.model, keras.Model):
                self._compiled = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
            else:  # any callable taking (batch, training=False)
                self._compiled = lambda x: self.model(x, training=False)
        return with_tta(self._compiled, batch, self.record.tta)


def default_model_path(work_dir: str | os.PathLike | None = None) -> Path:
    """``<work_dir>/model.keras`` (work folder: ``work_dir``, else ``$FER_WORK_DIR``, else ``work/``)."""
    return get_work_dir(work_dir, create=False) / MODEL_FILE


def load_model(path: str | os.PathLike | None = None, work_dir: str | os.PathLike | None = None) -> LoadedModel:
    """Load a trained ``.keras`` model (safe mode, not compiled) and its record (``fer_utils.models.load``).

    ``path`` defaults to ``<work_dir>/model.keras``. The record is the ``.json`` file of the same name
    beside it; without one, the image size and colour mode come from the model's input shape
    (``record.source == "model input shape"``). A record that does not fit the model is an error.
    """
    from fer_utils import models

    path = Path(path).expanduser() if path else default_model_path(work_dir)
    if not path.exists():
        raise ModelLoadError(f"No trained model at {path}. {HOW_TO_TRAIN}")
    if path.is_dir() or path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path} is not a Keras 3 .keras file (a zip archive named *.keras); SavedModel "
                             "folders and .h5 files are not loaded here. " + HOW_TO_TRAIN)
    try:
        model, record = models.load(path)
    except RecordError as err:
        raise ModelLoadError(str(err)) from err
    except Exception as err:  # noqa: BLE001 - re-raised with what to do
        raise ModelLoadError(f"Could not load {path}: {type(err).__name__}: {err}") from err
    return LoadedModel(model, record, path)


def as_loaded(model) -> LoadedModel:
    """A ``LoadedModel`` from a ``LoadedModel``, a path (or None: the default model) or a Keras model
    (its record then comes from its input shape)."""
    if isinstance(model, LoadedModel):
        return model
    if model is None or isinstance(model, (str, os.PathLike)):
        return load_model(model)
    try:
        return LoadedModel(model, ModelRecord.from_model(model), None)
    except RecordError as err:
        raise ModelLoadError(str(err)) from err


def _shown_path(path: Path, work_dir: str | os.PathLike | None) -> str:
    """A model path as the user gave it (relative), else relative to the current folder, else as it is
    (absolute: a path the user can open). With ``work_dir`` (notebooks): ``<work_dir>/...``."""
    if not path.is_absolute():
        return str(path)
    if work_dir is not None:
        return display_path(path, work_dir)
    resolved, cwd = path.resolve(), Path.cwd().resolve()
    if resolved.is_relative_to(cwd):
        return str(resolved.relative_to(cwd))
    return str(path)


def model_provenance(loaded: LoadedModel, work_dir: str | os.PathLike | None = None) -> dict:
    """Which model file ``loaded`` is, and whether the records beside it describe that very file.

    Returns ``path`` (as given, or relative to the current folder, else absolute; with ``work_dir``, always
    ``<work_dir>/...``, as notebooks show paths), ``name`` (the record's model name),
    ``image_size``, ``color_mode``, ``trained``, ``record_source`` (``model.json`` or ``model input
    shape``), ``sha256`` of the model file, ``record_sha256`` and ``record_match`` (the record's
    ``model_sha256`` against the file: True/False, None when the record names no file), ``metrics`` and
    ``metrics_match`` (``evaluation.metrics_describe`` of the ``metrics.json`` beside the model:
    True/False, None when there is none or it names no model), and ``warnings``: one line per mismatch,
    saying what to run.
    """
    record, path = loaded.record, loaded.path
    guessed = record.source == "model input shape"  # no model.json: whether it was trained is not known
    info = {"path": _shown_path(path, work_dir) if path is not None else None, "name": record.model,
            "image_size": list(record.image_size), "color_mode": record.color_mode,
            "trained": None if guessed else record.trained,
            "record_source": record.source, "sha256": None, "record_sha256": record.model_sha256,
            "record_match": None, "metrics": None, "metrics_match": None,
            "warnings": []}
    if path is None or not Path(path).is_file():
        return info
    path = Path(path)
    info["sha256"] = digest = sha256_of(path)
    if guessed:
        info["warnings"].append(
            f"Warning: no {ModelRecord.path_for(path).name} beside {path.name}: the image size and colour mode come "
            "from the model's input shape, and resizing, test-time augmentation and class names are the defaults, "
            "which may not be how it was trained; keep a model with its record (copy both).")
    if record.model_sha256:
        info["record_match"] = record.model_sha256 == digest
        if not info["record_match"]:
            info["warnings"].append(
                f"Warning: {ModelRecord.path_for(path).name} does not match the model file (it was written for "
                f"sha256 {record.model_sha256[:12]}, the file is {digest[:12]}), so its preprocessing may not be "
                f"this model's; run notebooks/{NOTEBOOKS['train']} again, or put the model beside its own record.")
    metrics_path = path.parent / METRICS
    if metrics_path.is_file():
        info["metrics"] = _shown_path(metrics_path, work_dir)
        try:
            info["metrics_match"], why = metrics_describe(path.parent, path)
        except (OSError, ValueError, AttributeError):
            info["metrics_match"], why = None, "metrics.json is unreadable"
        if info["metrics_match"] is False:
            info["warnings"].append(f"Warning: {why}.")
    return info


def load_and_announce(path: str | os.PathLike | None = None, work_dir: str | os.PathLike | None = None):
    """For the command-line tools: load the model and say on standard error which model it is (and any
    provenance warning). Returns the ``LoadedModel``, or None after printing why it could not be loaded
    (the caller then exits with status 2)."""
    import sys

    try:
        loaded = load_model(path, work_dir=work_dir)
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return None
    provenance = model_provenance(loaded)
    print(describe_model(provenance), file=sys.stderr)
    for line in provenance["warnings"]:
        print(line, file=sys.stderr)
    return loaded


def describe_model(provenance: dict) -> str:
    """The one line the command line prints: ``Model: <path> (<name>, <H>×<W> <colour mode>, trained: yes/no/unknown,
    sha256 <first 12>)``."""
    h, w = provenance["image_size"]
    sha = provenance["sha256"][:12] if provenance["sha256"] else "unknown"
    trained = "unknown" if provenance["trained"] is None else "yes" if provenance["trained"] else "no"
    return (f"Model: {provenance['path'] or '(in memory)'} ({provenance['name']}, {h}×{w} "
            f"{provenance['color_mode']}, trained: {trained}, sha256 {sha})")


# --------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------


def preprocess_faces(faces: Sequence, record: ModelRecord | LoadedModel) -> np.ndarray:
    """Face crops (Pillow images or uint8 arrays) → the model's input batch ``(N, H, W, C)`` float32.

    Same steps as the training pipeline: the record's colour mode (``face_pixels``: TensorFlow's gray for
    colour pixels), ``tf.image.resize`` with the record's ``interpolation`` (no antialias, like
    ``keras.utils.image_dataset_from_directory``), pixels scaled to ``input_range`` (the contract's
    [0, 255] leaves them as they are). ``record``: a ``ModelRecord`` or a ``LoadedModel``. Crop the faces
    from ``as_trained(path, record.channels)`` to get the pixels training decodes from a JPEG.
    """
    from fer_utils import import_tensorflow

    record = record.record if isinstance(record, LoadedModel) else record
    tf, _ = import_tensorflow()
    h, w = record.image_size
    batch = np.zeros((len(faces), h, w, record.channels), np.float32)
    for i, face in enumerate(faces):
        arr = face_pixels(face, record.channels).astype(np.float32)
        batch[i] = tf.image.resize(arr, (h, w), method=record.interpolation, antialias=False).numpy()
    lo, hi = record.input_range
    if (lo, hi) != (0.0, 255.0):
        batch = lo + batch * ((hi - lo) / 255.0)
    return batch


# --------------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------------


def _name(item, index: int) -> str:
    if isinstance(item, Image.Image):
        return getattr(item, "filename", "") or f"<image {index}>"
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    return f"<{type(item).__name__} {index}>"


def _faces_of(item, record: ModelRecord, detection: str, min_face: float, margin: float,
              detector: str = DEFAULT_DETECTOR, no_face_hint: str = NO_FACE_HINT):
    """(rows without predictions, preprocessed faces) for one input."""
    try:
        im = read_image(item)
    except ImageProblem as problem:
        return [{"status": problem.status, "message": str(problem)}], None
    pixels = as_trained(item, record.channels, im)  # faces are found on ``im``, classified on ``pixels``
    if detection == "whole":
        rows, crops = [{"status": "ok", "detection": "whole", "box": [0, 0, im.width, im.height]}], [pixels]
    else:
        boxes = detect_faces(im, min_face=min_face, detector=detector)
        if boxes:
            rows = [{"status": "ok", "detection": detector, "box": b} for b in boxes]
            crops = [pixels.crop(crop_box(b, im.size, margin)) for b in boxes]
        elif detection == "detect":
            return [{"status": "no_face", "message": f"no face found ({no_face_hint})"}], None
        else:
            rows = [{"status": "whole_image_fallback", "detection": "whole", "box": [0, 0, im.width, im.height],
                     "message": "no face found: the whole image was used as the face"}]
            crops = [pixels]
    return rows, preprocess_faces(crops, record)


def not_finite_message(probabilities: np.ndarray) -> str | None:
    """None when every probability is a finite number, else the row's message: the model is broken."""
    if np.all(np.isfinite(probabilities)):
        return None
    what = "not a number (NaN)" if np.isnan(probabilities).any() else "infinite"
    return (f"the model's output is {what}: {BROKEN_MODEL} (its training diverged); "
            "retrain it, e.g. with a lower learning_rate")


def _prediction_row(p: np.ndarray, names: Sequence[str]) -> dict:
    """A predicted face's columns from its probabilities ``p``; status ``error`` when they are not all finite."""
    broken = not_finite_message(p)
    if broken is not None:
        return {"status": "error", "message": broken}
    top = int(np.argmax(p))
    return {"emotion": names[top], "confidence": float(p[top]),
            "probabilities": {e: float(v) for e, v in zip(names, p)}}


def _iter_rows(loaded: LoadedModel, items: list, detection: str, min_face: float, margin: float,
               batch_size: int, detector: str = DEFAULT_DETECTOR, no_face_hint: str = NO_FACE_HINT):
    record = loaded.record
    names = record.class_names
    pending: list[tuple[str, list[dict], np.ndarray | None]] = []
    n_faces = 0

    def flush():
        faces = [f for _, _, f in pending if f is not None]
        probs = loaded(np.concatenate(faces)) if faces else None
        k = 0
        for name, rows, _faces in pending:
            for face, row in enumerate(rows):
                full = {c: None for c in COLUMNS} | row | {"file": name}
                if row["status"] in PREDICTED:
                    full |= {"face": face} | _prediction_row(probs[k], names)
                    k += 1
                yield full
        pending.clear()

    for i, item in enumerate(items):
        name = _name(item, i)
        try:
            rows, faces = _faces_of(item, record, detection, min_face, margin, detector, no_face_hint)
        except Exception as err:  # noqa: BLE001 - one bad file never stops the batch
            rows, faces = [{"status": "error", "message": f"{type(err).__name__}: {err}"}], None
        pending.append((name, rows, faces))
        n_faces += 0 if faces is None else len(faces)
        if n_faces >= batch_size:
            yield from flush()
            n_faces = 0
    yield from flush()


def predict(model, inputs, detection: str = "auto", min_face: float = DEFAULT_MIN_FACE,
            margin: float = DEFAULT_MARGIN, batch_size: int = 64,
            detector: str = DEFAULT_DETECTOR, no_face_hint: str = NO_FACE_HINT) -> pd.DataFrame:
    """Predict the emotion of every face in ``inputs``: one row per face (see ``fer_utils.prediction``).

    ``model``: a ``LoadedModel`` (``load_model()``), a Keras model honouring the contract, a path to a
    ``.keras`` file, or None for ``<work_dir>/model.keras``. ``inputs``: a path, a folder, a Pillow
    image, an array, or a list of them; folders are walked. Faces are batched: one model call per
    ``batch_size`` faces. ``detector``: ``"haar"`` or ``"mtcnn"`` (``detect_faces``), used by the
    ``"auto"`` and ``"detect"`` modes; rows name it in ``detection``. A face whose probabilities are not all
    finite numbers (a broken model) gets status ``error`` saying so. ``no_face_hint``: what the ``no_face``
    message suggests (the command line names its options).
    """
    if detection not in DETECTION_MODES:
        raise ValueError(f"detection must be one of {DETECTION_MODES}, not {detection!r}")
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, not {detector!r}")
    if not (math.isfinite(min_face) and 0 < min_face <= 1) or not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"min_face must be in (0, 1] and margin a finite number >= 0, not {min_face!r}, {margin!r}")
    if detection != "whole":
        check_detector(detector)  # a missing package stops here, not as an error in every row
    loaded = as_loaded(model)
    if isinstance(inputs, (str, os.PathLike, Image.Image, np.ndarray)):
        inputs = [inputs]
    items = collect_inputs(inputs)
    rows = list(_iter_rows(loaded, items, detection, min_face, margin, batch_size, detector, no_face_hint))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["face"] = frame["face"].astype("Int64")
    return frame


# --------------------------------------------------------------------------------------------------
# The results: summary, JSON records, flat table
# --------------------------------------------------------------------------------------------------


def summary(results: pd.DataFrame) -> pd.DataFrame:
    """Inputs per status (a file counts once, by its first row) and faces per status."""
    files = results.drop_duplicates("file")["status"].value_counts()
    faces = results.loc[results.status.isin(PREDICTED), "status"].value_counts()
    table = pd.DataFrame({"files": files, "faces": faces}).fillna(0).astype(int)
    return table.reindex([s for s in STATUSES if s in table.index])


def _finite_or_none(value: float, decimals: int | None) -> float | None:
    value = float(value)
    if not math.isfinite(value):
        return None
    return round(value, decimals) if decimals is not None else value


def to_records(results: pd.DataFrame, decimals: int | None = 4) -> list[dict]:
    """Rows as JSON-ready dicts (the CLI's JSON output): a number that is not finite becomes None (JSON has no
    NaN), so ``json.dumps(..., allow_nan=False)`` never fails."""
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
            elif key == "confidence":
                value = _finite_or_none(value, decimals)
            elif key == "probabilities":
                value = {k: _finite_or_none(v, decimals) for k, v in value.items()}
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
