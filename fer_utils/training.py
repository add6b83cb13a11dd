"""Step 5 — train a registered model on the train split, validate on val, keep the best epoch.

``train`` writes into the work folder: ``model.keras`` (the best epoch by ``monitor``), ``model.json``
(what the model needs: image size, colour mode, class names, input range), ``history.csv`` (one row per
epoch, with seconds) and ``train.json`` (parameters, seed, seconds per epoch, images per second, counts,
the precision used). The trained model is also kept as ``models/<name>.keras`` + ``.json``.

Speed on CPU: the input pipeline is cached and prefetched (``fer_utils.pipelines``), and on CPUs with
bfloat16 instructions (AMX or AVX512-BF16) ``mixed_precision="auto"`` trains under Keras'
``mixed_bfloat16`` policy (the seed CNN: about twice as fast); the model's outputs stay float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fer_utils import EMOTIONS, models, pipelines
from fer_utils.workfolder import write_record

MODEL_FILE = "model.keras"
MODEL_RECORD = "model.json"
HISTORY = "history.csv"
RECORD = "train.json"
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 1e-3


# --------------------------------------------------------------------------------------------------
# Precision
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
            import fer_utils

            tf, _ = fer_utils.import_tensorflow()
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
    raise ValueError(f"mixed_precision must be 'auto', 'bf16', 'fp16' or 'float32', not {mixed_precision!r}")


def _model_precision(model: str, mixed_precision):
    """``"auto"`` becomes the model's registered ``cpu_precision`` on a CPU-only machine, where one is
    registered (bfloat16 measured slower for it); anything else is returned as it is."""
    if mixed_precision != "auto" or not models.traits(model).get("cpu_precision"):
        return mixed_precision
    import fer_utils

    tf, _ = fer_utils.import_tensorflow()
    return mixed_precision if tf.config.list_physical_devices("GPU") else models.traits(model)["cpu_precision"]


@contextlib.contextmanager
def precision_policy(policy: str):
    """Set Keras' global dtype policy inside the block and always restore ``float32`` after it."""
    import fer_utils

    _, keras = fer_utils.import_tensorflow()
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        keras.mixed_precision.set_global_policy("float32")


# --------------------------------------------------------------------------------------------------
# Class weights and timing
# --------------------------------------------------------------------------------------------------


def balanced_class_weight(counts, max_weight: float | None = None) -> dict[int, float]:
    """scikit-learn's "balanced" weights ``n / (k * n_class)`` per class index; empty classes get 0."""
    counts = np.asarray(counts, dtype=float)
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    if max_weight is not None:
        weights = np.minimum(weights, max_weight)
    return {i: float(w) for i, w in enumerate(weights)}


def sqrt_class_weight(counts) -> dict[int, float]:
    """Square-root ("soft") balancing: ``(n / (k * n_class)) ** 0.5``, rescaled so the mean weight per
    training face is 1. Rare emotions count more without drowning the common ones; empty classes get 0."""
    counts = np.asarray(counts, dtype=float)
    weights = np.where(counts > 0, (counts.sum() / (len(counts) * np.maximum(counts, 1))) ** 0.5, 0.0)
    weights = weights * counts.sum() / (weights * counts).sum()
    return {i: float(w) for i, w in enumerate(weights)}


def _make_epoch_timer():
    import fer_utils

    _, keras = fer_utils.import_tensorflow()

    class EpochTimer(keras.callbacks.Callback):
        """Wall seconds per epoch, and of them the seconds spent on the training batches alone."""

        def __init__(self):
            super().__init__()
            self.epoch_seconds, self.train_seconds = [], []

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()
            self._train_end = None

        def on_test_begin(self, logs=None):  # fit's validation pass starts: training batches are done
            if getattr(self, "_t0", None) is not None and self._train_end is None:
                self._train_end = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            end = time.perf_counter()
            self.epoch_seconds.append(end - self._t0)
            self.train_seconds.append((self._train_end or end) - self._t0)
            self._t0 = None

    return EpochTimer()


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    model: object  # the best model (reloaded from model.keras)
    history: pd.DataFrame  # one row per epoch
    record: dict  # what train.json holds
    paths: dict  # name -> Path of each file written


def _counts(work_dir) -> dict:
    counts = pipelines.split_counts(work_dir)
    return {s: int(counts[s].sum()) for s in counts.columns} | {"train_per_class": counts["train"].to_dict()}


def train(work_dir: str | os.PathLike, model="seed_cnn", epochs: int = 10, image_size=48,
          color_mode: str = "grayscale", batch_size: int = DEFAULT_BATCH_SIZE,
          learning_rate: float = DEFAULT_LEARNING_RATE, pipeline: str = "tf.data", seed: int = 42,
          mixed_precision="auto", class_weight=None, augment: bool = True, monitor: str = "val_accuracy",
          model_kwargs: dict | None = None, optimizer=None, loss="categorical_crossentropy",
          callbacks: list | None = None, fit_kwargs: dict | None = None, name: str | None = None,
          head_epochs: int = 0, verbose: int = 0) -> TrainResult:
    """Train ``model`` on ``<work_dir>/split/train``, validate on ``split/val``, keep the best epoch.

    ``model``: a registered name (``models.available()``) or a built ``keras.Model`` that honours the
    model contract (e.g. phase 2 of a head-then-whole-model recipe: pass the phase-1 model, unfrozen,
    with a lower ``learning_rate`` and ``fit_kwargs={"initial_epoch": ...}``; ``history.csv`` then gets
    the new epochs appended). A built model keeps the dtype policy it was built with.
    ``class_weight``: ``None``, ``"balanced"``, ``"sqrt"`` (square-root balancing) or ``{class_index: weight}``.
    ``head_epochs``: for a registered model with a pretrained backbone (e.g. ``fer_transfer``), first
    train only the new head for this many epochs (backbone frozen, ``learning_rate``), then the whole
    model for ``epochs`` more at half that rate; ``train.json`` then covers both phases. ``optimizer``: a Keras
    optimizer (default Adam with ``learning_rate``; pass one with a schedule if you like).
    ``callbacks`` are added to the checkpoint and timer; ``fit_kwargs`` go to ``model.fit``.
    Keras' global dtype policy is float32 again when this returns.
    """
    import fer_utils

    tf, keras = fer_utils.import_tensorflow()
    if head_epochs:
        return _head_then_whole(**{k: v for k, v in locals().items() if k not in ("tf", "keras", "fer_utils")})
    work_dir = Path(work_dir)
    size = pipelines._size(image_size)
    shape = pipelines.input_shape(size, color_mode)
    fit_kwargs = {"shuffle": False, **(fit_kwargs or {})}  # both pipelines shuffle the training data themselves
    initial_epoch = int(fit_kwargs.get("initial_epoch", 0))
    prebuilt = not isinstance(model, str)
    name = name or (model.name if prebuilt else model)
    policy = resolve_precision(mixed_precision if prebuilt else _model_precision(model, mixed_precision))
    keras.utils.set_random_seed(seed)

    with precision_policy(policy if not prebuilt else "float32"):
        t_data = time.perf_counter()
        batches = pipelines.make_pipelines(pipeline, work_dir, size, color_mode, batch_size, augment, seed,
                                           splits=("train", "val"))
        counts = _counts(work_dir)
        data_seconds = time.perf_counter() - t_data
        if prebuilt:
            net = model
            models.check_contract(net, shape)
            policy = net.dtype_policy.name if hasattr(net, "dtype_policy") else "float32"
        else:
            net = models.build(model, shape, len(EMOTIONS), **(model_kwargs or {}))
        if class_weight in ("balanced", "sqrt"):
            per_class = [counts["train_per_class"][e] for e in EMOTIONS]
            class_weight = (balanced_class_weight if class_weight == "balanced" else sqrt_class_weight)(per_class)
        net.compile(optimizer=optimizer or keras.optimizers.Adam(learning_rate=learning_rate), loss=loss,
                    metrics=["accuracy"])
        checkpoint = work_dir / MODEL_FILE
        timer = _make_epoch_timer()
        mode = "min" if "loss" in monitor else "max"
        saver = keras.callbacks.ModelCheckpoint(str(checkpoint), monitor=monitor, mode=mode, save_best_only=True)
        if prebuilt and initial_epoch and checkpoint.exists():
            # phase 2 continues phase 1: only an epoch better than phase 1's best may replace its model
            previous = _previous_best(work_dir, monitor)
            if previous is not None:
                saver.best = previous
        t_fit = time.perf_counter()
        fit = net.fit(batches["train"], validation_data=batches["val"], epochs=initial_epoch + epochs,
                      class_weight=class_weight, callbacks=[saver, timer, *(callbacks or [])], verbose=verbose,
                      **fit_kwargs)
        train_seconds = time.perf_counter() - t_fit

    history = pd.DataFrame(fit.history)
    history.insert(0, "epoch", np.arange(initial_epoch + 1, initial_epoch + len(history) + 1))
    history["seconds"] = timer.epoch_seconds[: len(history)]
    history["train_seconds"] = timer.train_seconds[: len(history)]
    if "learning_rate" not in history and hasattr(net.optimizer, "learning_rate"):
        history["learning_rate"] = float(keras.ops.convert_to_numpy(net.optimizer.learning_rate))
    history_path = work_dir / HISTORY
    if initial_epoch and history_path.exists():
        history = pd.concat([pd.read_csv(history_path).query("epoch <= @initial_epoch"), history], ignore_index=True)
    history.to_csv(history_path, index=False)

    best = keras.models.load_model(checkpoint)
    record = _record(locals(), history, counts, net)
    paths = _write_records(work_dir, name, size, color_mode, record)
    return TrainResult(model=best, history=history, record=record, paths=paths)


def _head_then_whole(work_dir, model, epochs, head_epochs, learning_rate, mixed_precision, model_kwargs,
                     image_size, color_mode, seed, fit_kwargs, name, **common) -> TrainResult:
    """Fine-tune a pretrained model: the new head alone first, then everything (``train``'s ``head_epochs``)."""
    import fer_utils

    tf, keras = fer_utils.import_tensorflow()
    if not isinstance(model, str) or not models.traits(model).get("backbone"):
        raise ValueError(f"head_epochs needs a registered model with a pretrained backbone, not {model!r}; "
                         f"use head_epochs=0 (those with one: "
                         f"{[m for m in models.available() if models.traits(m).get('backbone')]}).")
    policy = resolve_precision(_model_precision(model, mixed_precision))
    size = pipelines._size(image_size)
    keras.utils.set_random_seed(seed)
    with precision_policy(policy):
        net = models.build(model, pipelines.input_shape(size, color_mode), len(EMOTIONS), **(model_kwargs or {}))
    backbone = net.get_layer(models.traits(model)["backbone"])
    args = dict(image_size=size, color_mode=color_mode, seed=seed, mixed_precision=policy, name=name or model,
                **common)
    for path in (Path(work_dir) / HISTORY, Path(work_dir) / MODEL_FILE):
        path.unlink(missing_ok=True)  # phase 2 continues phase 1's history, never an older run's
    backbone.trainable = False
    head = train(work_dir, net, epochs=head_epochs, learning_rate=learning_rate, fit_kwargs=fit_kwargs, **args)
    backbone.trainable = True
    whole = train(work_dir, net, epochs=epochs, learning_rate=learning_rate / 2,
                  fit_kwargs={**(fit_kwargs or {}), "initial_epoch": head_epochs}, **args)
    record = whole.record
    record["parameters"].update(model=model, epochs=epochs, head_epochs=head_epochs, learning_rate=learning_rate,
                                model_kwargs=model_kwargs or {}, mixed_precision=mixed_precision)
    record["phases"] = {"head": {k: head.record[k] for k in ("train_seconds", "seconds_per_epoch", "best_epoch")},
                        "whole": {k: whole.record[k] for k in ("train_seconds", "seconds_per_epoch", "best_epoch")}}
    record["train_seconds"] = round(head.record["train_seconds"] + whole.record["train_seconds"], 3)
    record["data_seconds"] = round(head.record["data_seconds"] + whole.record["data_seconds"], 3)
    record["epoch_seconds"] = head.record["epoch_seconds"] + whole.record["epoch_seconds"]
    paths = _write_records(Path(work_dir), name or model, size, color_mode, record)
    return TrainResult(model=whole.model, history=whole.history, record=record, paths=paths)


def _previous_best(work_dir: Path, monitor: str):
    path = work_dir / HISTORY
    if not path.exists():
        return None
    history = pd.read_csv(path)
    if monitor not in history:
        return None
    return float(history[monitor].min() if "loss" in monitor else history[monitor].max())


def _record(ns: dict, history: pd.DataFrame, counts: dict, net) -> dict:
    mine = history.iloc[-len(ns["timer"].epoch_seconds):] if ns["timer"].epoch_seconds else history
    steady = mine.iloc[1:] if len(mine) > 1 else mine  # the first epoch also traces the graph, fills the cache
    mode_best = history[ns["monitor"]].idxmin() if "loss" in ns["monitor"] else history[ns["monitor"]].idxmax()
    n_train = counts["train"]
    return {
        "step": "train",
        "parameters": {"model": ns["name"], "epochs": ns["epochs"], "image_size": list(ns["size"]),
                       "color_mode": ns["color_mode"], "batch_size": ns["batch_size"],
                       "learning_rate": ns["learning_rate"], "pipeline": ns["pipeline"], "seed": ns["seed"],
                       "mixed_precision": ns["mixed_precision"], "augment": ns["augment"],
                       "class_weight": ns["class_weight"], "monitor": ns["monitor"],
                       "model_kwargs": ns["model_kwargs"] or {},
                       "fit_kwargs": {k: v for k, v in ns["fit_kwargs"].items() if isinstance(v, (int, float, str))}},
        "seed": ns["seed"],
        "precision": ns["policy"],
        "counts": counts,
        "parameters_count": int(net.count_params()),
        "best_epoch": int(history.loc[mode_best, "epoch"]),
        "best": {k: float(history.loc[mode_best, k]) for k in history.columns
                 if k.startswith(("val_", "accuracy", "loss"))},
        "epoch_seconds": [round(float(s), 3) for s in mine["seconds"]],
        "first_epoch_seconds": round(float(mine["seconds"].iloc[0]), 3),
        "seconds_per_epoch": round(float(steady["seconds"].mean()), 3),
        "train_seconds_per_epoch": round(float(steady["train_seconds"].mean()), 3),
        "images_per_second": round(n_train / float(steady["train_seconds"].mean()), 1),
        "data_seconds": round(ns["data_seconds"], 3),
        "train_seconds": round(ns["train_seconds"], 3),
    }


def _write_records(work_dir: Path, name: str, size, color_mode: str, record: dict) -> dict:
    model_json = models.model_record(name, list(size), color_mode, trained=True, precision=record["precision"],
                                     best_epoch=record["best_epoch"], best=record["best"])
    paths = {"model": work_dir / MODEL_FILE, "model_record": work_dir / MODEL_RECORD,
             "history": work_dir / HISTORY, "record": work_dir / RECORD}
    write_record(paths["model_record"], model_json)
    write_record(paths["record"], record)
    folder = work_dir / "models"
    folder.mkdir(exist_ok=True)
    shutil.copyfile(paths["model"], folder / f"{name}.keras")
    write_record(folder / f"{name}.json", model_json)
    return paths


# --------------------------------------------------------------------------------------------------
# Pictures and tables for notebook 05
# --------------------------------------------------------------------------------------------------


def epoch_table(history: pd.DataFrame) -> pd.DataFrame:
    """One short line per epoch: losses, accuracies and seconds, rounded."""
    cols = [c for c in ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds") if c in history]
    return history[cols].round(3).set_index("epoch")


def plot_history(history: pd.DataFrame, best_epoch: int | None = None):
    """Loss and accuracy curves, training and validation, with the kept epoch marked."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(history.epoch, history[metric], "o-", label="train")
        if f"val_{metric}" in history:
            ax.plot(history.epoch, history[f"val_{metric}"], "s-", label="validation")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", ls="--", lw=1, label=f"kept (epoch {best_epoch})")
        ax.set(xlabel="epoch", ylabel=metric, title=metric.capitalize())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def summary_table(record: dict) -> pd.DataFrame:
    """The run at a glance: model, precision, epochs, time per epoch, images per second, best epoch."""
    p = record["parameters"]
    rows = {"model": p["model"], "pipeline": p["pipeline"], "precision": record["precision"],
            "image size": "×".join(map(str, p["image_size"])) + f" {p['color_mode']}",
            "epochs": (f"{p['head_epochs']} head + {p['epochs']} whole model" if p.get("head_epochs")
                       else p["epochs"]),
            "training images": record["counts"]["train"],
            "first epoch (s)": record["first_epoch_seconds"], "seconds per epoch": record["seconds_per_epoch"],
            "training images per second": record["images_per_second"], "total training (s)": record["train_seconds"],
            "best epoch": record["best_epoch"],
            "best val accuracy": round(record["best"].get("val_accuracy", float("nan")), 4)}
    return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=pd.Index(list(rows), name=""))
