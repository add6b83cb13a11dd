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
"""

from __future__ import annotations

from collections.abc import Callable

from fer_utils import EMOTIONS

_REGISTRY: dict[str, Callable] = {}


def register(name: str):
    """Decorator: register ``fn(input_shape, num_classes=8, **kwargs) -> keras.Model`` under ``name``."""
    def decorator(fn: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"A model named {name!r} is already registered ({_REGISTRY[name].__module__}).")
        _REGISTRY[name] = fn
        return fn
    return decorator


def available() -> list[str]:
    """Names of the registered models, sorted."""
    _load_plugins()
    return sorted(_REGISTRY)


def describe() -> dict[str, str]:
    """``{name: first line of the builder's docstring}`` for every registered model."""
    _load_plugins()
    return {name: (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "" for name, fn in
            sorted(_REGISTRY.items())}


def build(name: str, input_shape, num_classes: int = len(EMOTIONS), **kwargs):
    """Build the registered model ``name`` for ``input_shape`` ``(H, W, C)`` and check its contract."""
    _load_plugins()
    if name not in _REGISTRY:
        raise KeyError(f"Unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}.")
    model = _REGISTRY[name](tuple(int(d) for d in input_shape), num_classes, **kwargs)
    check_contract(model, input_shape, num_classes)
    return model


def _load_plugins() -> None:
    """Import the modules that register further models (e.g. ``fer_utils.transfer``) if they exist."""
    import importlib

    for module in ("fer_utils.transfer",):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


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


@register("seed_cnn")
def seed_cnn(input_shape, num_classes: int = len(EMOTIONS), dense_units: int = 128):
    """The seed tutorial's CNN: 3 blocks of 3×3 conv + ReLU + 2×2 max pooling (32→64→128), flatten, dense, softmax."""
    import fer_utils

    _, keras = fer_utils.import_tensorflow()
    layers = keras.layers
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, filters in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, activation="relu", name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


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


def save_untrained(model, work_dir, name: str, image_size, color_mode: str) -> dict:
    """Write ``models/<name>.keras`` and ``models/<name>.json`` (the untrained model and its preprocessing)."""
    from pathlib import Path

    from fer_utils.data import write_record

    folder = Path(work_dir) / "models"
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / f"{name}.keras")
    record = model_record(name, image_size, color_mode, trained=False, parameters=model.count_params())
    write_record(folder / f"{name}.json", record)
    return record


def model_record(name: str, image_size, color_mode: str, **extra) -> dict:
    """What a model needs from its caller: the ``model.json`` contract."""
    size = [image_size, image_size] if isinstance(image_size, int) else [int(s) for s in image_size]
    return {"model": name, "image_size": size, "color_mode": color_mode, "class_names": list(EMOTIONS),
            "input_range": [0, 255], "input_dtype": "float32", "output": "softmax probabilities",
            "interpolation": "bilinear", **extra}


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
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
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
