"""Export for serving: a SavedModel (TF Serving, TF.js, TFLite conversion) and a ``.tflite`` file, and
running either on a preprocessed batch to check it agrees with Keras."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from fer_utils import quiet_fd2
from fer_utils.prediction.inference import LoadedModel


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
    with quiet_fd2():
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
        with quiet_fd2():
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
    with warnings.catch_warnings(), quiet_fd2():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        return Interpreter(model_path=str(path))


def tflite_predict(path_or_interpreter, batch: np.ndarray) -> np.ndarray:
    """Run a ``.tflite`` model on a preprocessed batch; returns probabilities (N, classes)."""
    it = path_or_interpreter
    if isinstance(it, (str, os.PathLike)):
        it = tflite_interpreter(it)
    batch = np.asarray(batch, np.float32)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    with quiet_fd2():  # "Created TensorFlow Lite XNNPACK delegate" goes to stderr at first use
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
