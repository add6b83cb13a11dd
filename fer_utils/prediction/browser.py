"""The model in the reader's browser: an ONNX export (run by onnxruntime-web in the page, by onnxruntime in
Python to check it) and the static live page (``web/live.html``: face detection and the model on a photo or the
webcam, nothing uploaded), laid out with its JavaScript from the npm packages of ``web/package-lock.json``.

``python -m fer_utils site`` adds the page to the site (``live/``) with the work folder's ``model.keras``
exported to ``live/model/model.onnx``; ``live_page(folder, model)`` does the same into any folder, which any
static file server can serve.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from fer_utils import quiet_fd2
from fer_utils.prediction.detection import DEFAULT_MARGIN
from fer_utils.prediction.export import float32_model
from fer_utils.prediction.inference import LoadedModel, as_loaded
from fer_utils.workfolder import REPO_ROOT

WEB = REPO_ROOT / "web"
NODE_MODULES = WEB / "node_modules"
NPM_INSTALL = "npm ci --prefix web"
#: What the page needs from the npm packages (source in node_modules → name under vendor/).
VENDOR = {
    "onnxruntime-web/dist/ort.wasm.min.js": "ort.wasm.min.js",
    "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs": "ort-wasm-simd-threaded.mjs",
    "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm": "ort-wasm-simd-threaded.wasm",
    "@vladmandic/face-api/dist/face-api.js": "face-api.js",
    # tfjs's WebAssembly backend (in face-api.js) loads these: the detector's default backend on the page
    **{f"@tensorflow/tfjs-backend-wasm/dist/{name}": f"tfjs-wasm/{name}"
       for name in ("tfjs-backend-wasm.wasm", "tfjs-backend-wasm-simd.wasm", "tfjs-backend-wasm-threaded-simd.wasm")},
    "@vladmandic/face-api/model/tiny_face_detector_model-weights_manifest.json":
        "model/tiny_face_detector_model-weights_manifest.json",
    "@vladmandic/face-api/model/tiny_face_detector_model.bin": "model/tiny_face_detector_model.bin",
}
ONNX_FILE, META_FILE = "model.onnx", "model.json"


class MissingPackagesError(FileNotFoundError):
    """The page's npm packages are not installed (``npm ci --prefix web``)."""


def missing_packages(node_modules: Path = NODE_MODULES) -> list[str]:
    """The files of ``VENDOR`` that ``node_modules`` lacks (empty when ``npm ci --prefix web`` has run)."""
    return [src for src in VENDOR if not (node_modules / src).is_file()]


def export_onnx(model, path: str | os.PathLike) -> Path:
    """Export a Keras model (or ``LoadedModel``) to ONNX with Keras 3's ``model.export(format="onnx")``
    (tf2onnx underneath), in inference mode, float32, any batch size; pixels in, probabilities out."""
    from fer_utils import import_tensorflow

    tf, _ = import_tensorflow()
    model = float32_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="pixels")
    with quiet_fd2(), warnings.catch_warnings():  # tf2onnx's np.object probe warns under numpy 2: not ours to fix
        warnings.filterwarnings("ignore", message=".*np.object", category=FutureWarning)
        # tf2onnx logs a skipped graph optimisation ("Failed to apply optimize_transpose") as a warning with its
        # traceback: the model is exported without it, and the live page's tests check its outputs against Keras
        logging.disable(logging.WARNING)
        try:
            model.export(str(path), format="onnx", verbose=False, input_signature=[spec])
        finally:
            logging.disable(logging.NOTSET)
    return path


def onnx_session(path: str | os.PathLike):
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_predict(path_or_session, batch: np.ndarray) -> np.ndarray:
    """Run an ONNX model (file or ``onnxruntime.InferenceSession``) on a preprocessed batch → probabilities."""
    session = onnx_session(path_or_session) if isinstance(path_or_session, (str, os.PathLike)) else path_or_session
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: np.asarray(batch, np.float32)})[0], np.float32)


def live_page(folder: str | os.PathLike, model=None, node_modules: Path = NODE_MODULES) -> Path:
    """Lay out the live page in ``folder`` (``index.html``, ``live.js``, ``vendor/``) and, with ``model`` (a
    ``LoadedModel``, or a path to a ``.keras`` file with its record), ``model/model.onnx`` and ``model/model.json``
    (what the page needs to prepare a face: size, colour, class names, margin). Returns ``folder/index.html``.
    Raises ``MissingPackagesError`` (saying to run ``npm ci --prefix web``) without the npm packages."""
    missing = missing_packages(node_modules)
    if missing:
        raise MissingPackagesError(f"The live page's JavaScript is not installed ({node_modules / missing[0]} is "
                                   f"missing): run `{NPM_INSTALL}` in the repository (npm, Node 18 or later).")
    folder = Path(folder)
    for sub in ("model", "tfjs-wasm"):
        (folder / "vendor" / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(WEB / "live.html", folder / "index.html")
    shutil.copyfile(WEB / "live.js", folder / "live.js")
    for src, name in VENDOR.items():
        shutil.copyfile(node_modules / src, folder / "vendor" / name)
    if model is not None:
        loaded = model if isinstance(model, LoadedModel) else as_loaded(model)
        onnx = export_onnx(loaded, folder / "model" / ONNX_FILE)
        record = loaded.record
        meta = {"model": record.model, "image_size": list(record.image_size), "color_mode": record.color_mode,
                "class_names": list(record.class_names), "margin": DEFAULT_MARGIN, "interpolation":
                record.interpolation, "onnx_bytes": onnx.stat().st_size, "trained": record.trained}
        if record.interpolation != "bilinear" or tuple(record.input_range) != (0.0, 255.0):
            raise ValueError(f"The live page prepares faces with bilinear resizing and pixels in [0, 255]; this model "
                             f"uses {record.interpolation} and {record.input_range}.")
        (folder / "model" / META_FILE).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return folder / "index.html"
