"""Step 3 — input pipelines: the seed's legacy generators and the modern tf.data equivalent.

Both read the class folders ``split/<train|val|test>/<emotion>/`` written by step 2 and yield batches of
``(pixels, one_hot_labels)``:

- pixels are float32 in [0, 255], shape ``(batch, H, W, 1)`` (grayscale) or ``(batch, H, W, 3)`` (rgb) —
  no rescaling here: every model rescales inside itself (see ``fer_utils.models``);
- labels are one-hot over ``fer_utils.EMOTIONS``, always in that order (empty class folders keep their
  index, so a model's output ``k`` always means ``EMOTIONS[k]``);
- augmentation is applied to the training split only, in the input pipeline — never inside a model.

``legacy_generators`` is the seed tutorial's way (``ImageDataGenerator.flow_from_directory``): it decodes,
resizes and augments every image with Pillow/SciPy on every epoch. ``tf_datasets`` decodes and resizes
each image once, caches the small result in memory, reshuffles every epoch, augments whole batches with
Keras preprocessing layers and prefetches the next batch while the model trains on the current one.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import fer_utils
from fer_utils import EMOTIONS
from fer_utils.workfolder import SPLIT_DIR, SPLITS, require

COLOR_MODES = {"grayscale": 1, "rgb": 3}
DEFAULT_BATCH_SIZE = 64

#: The augmentations, as the legacy ``ImageDataGenerator`` arguments; ``augmentation_layers`` (notebook 03)
#: holds the Keras layer that does the same in a tf.data pipeline, under the same name. Mild settings: faces
#: are roughly aligned crops.
AUGMENTATIONS = {
    "horizontal flip": {"horizontal_flip": True},
    "rotation ±10°": {"rotation_range": 10},
    "shift ±10 %": {"width_shift_range": 0.1, "height_shift_range": 0.1},
    "zoom ±10 %": {"zoom_range": 0.1},
}


#: Augmentation strengths (``TrainConfig.augment``): ``"standard"`` is ``AUGMENTATIONS`` above (both
#: pipelines); ``"strong"`` (tf.data only) widens the geometry and adds brightness and contrast changes.
AUGMENT_LEVELS = ("none", "standard", "strong")
#: tf.data's autotuner (``tf.data.Options().autotune.enabled``) for ``tf_datasets``: off. On 2-vCPU machines it
#: sometimes held training to one face per 4 ms: whole-model epochs of 40-43 s against 24.5-25.4 s with it off,
#: the same batches in the same order; which epochs it slowed changed from run to run
#: (``python benchmarks/training_speed.py --setting autotune`` -> ``benchmarks/results/autotune.json``). Off,
#: ``tf.data.AUTOTUNE`` still sets the parallel maps' calls (one per core) and the prefetch buffer.
TF_DATA_AUTOTUNE = False
#: ``tf.image.resize`` methods -> the nearest Pillow filter the legacy generator knows.
LEGACY_INTERPOLATION = {"bilinear": "bilinear", "nearest": "nearest", "bicubic": "bicubic", "area": "box",
                        "lanczos3": "lanczos", "lanczos5": "lanczos"}


def augment_level(augment) -> str:
    """``True`` -> ``"standard"``, ``False``/``None`` -> ``"none"``; a level name is checked and returned."""
    if augment is True:
        return "standard"
    if augment in (False, None, 0):
        return "none"
    if augment not in AUGMENT_LEVELS:
        raise ValueError(f"augment must be one of {AUGMENT_LEVELS} (or True/False), not {augment!r}")
    return augment


def size_pair(image_size) -> tuple[int, int]:
    if isinstance(image_size, int):
        return (image_size, image_size)
    h, w = image_size
    return (int(h), int(w))


def check_color_mode(color_mode: str) -> str:
    if color_mode not in COLOR_MODES:
        raise ValueError(f"color_mode must be one of {sorted(COLOR_MODES)}, not {color_mode!r}")
    return color_mode


def check_legacy_options(color_mode: str, augment, interpolation: str) -> str:
    """The augmentation level for ``legacy_generators``, once its options are known to work there; else a
    ValueError saying what to use instead."""
    check_color_mode(color_mode)
    level = augment_level(augment)
    if level not in ("none", "standard"):
        raise ValueError(f"augment={augment!r}: the legacy generator knows only 'none' and 'standard'; use "
                         "pipeline='tf.data' for 'strong'.")
    if interpolation not in LEGACY_INTERPOLATION:
        raise ValueError(f"interpolation={interpolation!r} has no ImageDataGenerator equivalent; choose one of "
                         f"{sorted(LEGACY_INTERPOLATION)}.")
    return level


def split_dir(work_dir: str | os.PathLike, split: str) -> Path:
    """``<work_dir>/split/<split>``; raises an error naming notebook 02 if it is missing."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return require(Path(work_dir) / SPLIT_DIR / split, "prepare", f"The {split} class folders")


def input_shape(image_size=48, color_mode: str = "grayscale") -> tuple[int, int, int]:
    """The model input shape ``(H, W, channels)`` for an image size and colour mode."""
    return (*size_pair(image_size), COLOR_MODES[check_color_mode(color_mode)])


# --------------------------------------------------------------------------------------------------
# The seed's way: ImageDataGenerator.flow_from_directory
# --------------------------------------------------------------------------------------------------


def quiet_legacy_scipy() -> None:
    """The legacy generator calls ``scipy.ndimage.interpolation.affine_transform``, which SciPy deprecates
    with a warning on every augmented image; the call still works, so hide exactly that warning."""
    warnings.filterwarnings("ignore", message=".*scipy.ndimage.interpolation.*", category=DeprecationWarning)


def legacy_augmentation_kwargs(names=None) -> dict:
    """The ``ImageDataGenerator`` arguments for the named augmentations (all of ``AUGMENTATIONS`` by default)."""
    kwargs = {"fill_mode": "nearest"}
    for name in names if names is not None else AUGMENTATIONS:
        kwargs.update(AUGMENTATIONS[name])
    return kwargs


# ---- generated from notebooks/03_build_input_pipelines.ipynb, cell 03-n03 ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def legacy_generators(
    work_dir: str | os.PathLike,
    image_size=48,
    color_mode: str = "grayscale",
    batch_size: int = DEFAULT_BATCH_SIZE,
    augment=True,
    seed: int = 42,
    splits=SPLITS,
    interpolation: str = "bilinear",
) -> dict:
    """The seed tutorial's ``ImageDataGenerator(...).flow_from_directory(...)`` for
    each split: ``{split: iterator}``; only ``train`` is augmented and shuffled."""
    tf, _ = fer_utils.import_tensorflow()
    quiet_legacy_scipy()
    level = check_legacy_options(color_mode, augment, interpolation)
    out = {}
    for split in splits:
        train = split == "train"
        augmentation = legacy_augmentation_kwargs() if train and level != "none" else {}
        generator = tf.keras.preprocessing.image.ImageDataGenerator(
            **augmentation, dtype="float32"
        )
        # one class per sub-folder, one-hot labels; classes=EMOTIONS fixes their order
        # (even for empty folders)
        out[split] = generator.flow_from_directory(
            str(split_dir(work_dir, split)),
            target_size=size_pair(image_size),
            color_mode=color_mode,
            classes=list(EMOTIONS),
            class_mode="categorical",
            batch_size=batch_size,
            shuffle=train,
            seed=seed,
            interpolation=LEGACY_INTERPOLATION[interpolation],
        )
    return out
# ---- end of generated code (notebooks/03_build_input_pipelines.ipynb, cell 03-n03) ----


# --------------------------------------------------------------------------------------------------
# The modern way: image_dataset_from_directory + tf.data
# --------------------------------------------------------------------------------------------------


# ---- generated from notebooks/03_build_input_pipelines.ipynb, cell 03-n05 ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def directory_dataset(
    work_dir: str | os.PathLike,
    split: str,
    image_size=48,
    color_mode: str = "grayscale",
    interpolation: str = "bilinear",
):
    """One split as an unbatched, unshuffled ``tf.data.Dataset`` of
    ``(pixels, one_hot)``, plus its file paths.

    ``image_dataset_from_directory`` with ``label_mode="categorical"`` and
    ``class_names=EMOTIONS``: the one-hot position is the index in ``EMOTIONS``.
    Pixels are float32 in [0, 255], resized with ``interpolation`` (a
    ``tf.image.resize`` method; ``"bilinear"`` reads few source pixels when
    shrinking a 350×350 face, ``"area"`` averages them), aspect ratio not kept — the
    squeeze the legacy generator applies.
    """
    import fer_utils

    _, keras = fer_utils.import_tensorflow()
    ds = keras.utils.image_dataset_from_directory(
        str(split_dir(work_dir, split)),
        labels="inferred",
        label_mode="categorical",
        class_names=list(EMOTIONS),
        color_mode=check_color_mode(color_mode),
        batch_size=None,
        image_size=size_pair(image_size),
        shuffle=False,
        interpolation=interpolation,
        verbose=False,
    )
    return ds, list(ds.file_paths)
# ---- end of generated code (notebooks/03_build_input_pipelines.ipynb, cell 03-n05) ----


# ---- generated from notebooks/03_build_input_pipelines.ipynb, cell 03-n07 ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def tf_datasets(
    work_dir: str | os.PathLike,
    image_size=48,
    color_mode: str = "grayscale",
    batch_size: int = DEFAULT_BATCH_SIZE,
    augment=True,
    seed: int = 42,
    splits=SPLITS,
    cache: bool = True,
    interpolation: str = "bilinear",
    mixup: float = 0.0,
) -> dict:
    """The tf.data equivalent of ``legacy_generators``: ``{split: batches}``."""
    tf, _ = fer_utils.import_tensorflow()
    level, out = augment_level(augment), {}
    options = tf.data.Options()  # the autotuner off: TF_DATA_AUTOTUNE says why
    options.autotune.enabled = TF_DATA_AUTOTUNE
    for split in splits:
        ds, files = directory_dataset(
            work_dir, split, image_size, color_mode, interpolation
        )
        ds = ds.map(  # to uint8 (4× smaller than float32) for the cache
            lambda x, y: (tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        if cache:
            ds = ds.cache()
        if split == "train":
            ds = ds.shuffle(max(len(files), 1), seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size).map(
            lambda x, y: (tf.cast(x, tf.float32), y),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        if split == "train" and level != "none":
            # not parallel: the layers draw from one seeded random state, in order
            ds = ds.map(augmenter(augmentation_layers(seed, level)))
        if split == "train" and mixup > 0:  # blend each batch with a shuffled copy
            ds = ds.map(mixer(mixup, seed))
        out[split] = ds.prefetch(tf.data.AUTOTUNE).with_options(options)
    return out
# ---- end of generated code (notebooks/03_build_input_pipelines.ipynb, cell 03-n07) ----


def augmenter(layers: dict):
    """``augmentation_layers(...)`` as a function of a batch ``(x, y)``: the layers in order, pixels kept in
    [0, 255]."""
    import fer_utils

    tf, keras = fer_utils.import_tensorflow()
    model = keras.Sequential(list(layers.values()), name="augmentation")
    return lambda x, y: (tf.clip_by_value(model(x, training=True), 0.0, 255.0), y)


def mixer(alpha: float, seed: int):
    import fer_utils

    tf, _ = fer_utils.import_tensorflow()

    def mix(x, y):  # sequential map: seeded ops draw in a repeatable order
        g = tf.random.gamma([2], alpha=alpha, seed=seed)  # two Gammas make one Beta(alpha, alpha) draw
        lam = tf.maximum(g[0], g[1]) / (g[0] + g[1])
        order = tf.random.shuffle(tf.range(tf.shape(x)[0]), seed=seed + 1)
        return lam * x + (1 - lam) * tf.gather(x, order), lam * y + (1 - lam) * tf.gather(y, order)

    return mix


def make_pipelines(config, work_dir, splits=SPLITS) -> dict:
    """The input pipelines a ``training.TrainConfig`` asks for: ``{split: batches}``.

    ``config.pipeline="tf.data"``: ``tf_datasets``; ``"generator"``: ``legacy_generators`` (no mixup).
    Size, colour mode, resizing, batch size, augmentation, mixup and seed all come from ``config``.
    """
    common = dict(image_size=config.image_size, color_mode=config.color_mode, batch_size=config.batch_size,
                  augment=config.augment, seed=config.seed, splits=splits, interpolation=config.interpolation)
    if config.pipeline == "tf.data":
        return tf_datasets(work_dir, mixup=config.mixup, **common)
    if config.pipeline == "generator":
        if config.mixup:
            raise ValueError("mixup needs pipeline='tf.data'; the legacy generator cannot mix batches.")
        return legacy_generators(work_dir, **common)
    raise ValueError(f"pipeline must be 'tf.data' or 'generator', not {config.pipeline!r}")


def split_counts(work_dir: str | os.PathLike) -> pd.DataFrame:
    """Files per emotion (rows, in ``EMOTIONS`` order) and split (columns) in the class folders."""
    table = {s: [sum(1 for p in (split_dir(work_dir, s) / e).glob("*") if p.is_file()) if
                 (split_dir(work_dir, s) / e).is_dir() else 0 for e in EMOTIONS] for s in SPLITS}
    return pd.DataFrame(table, index=pd.Index(EMOTIONS, name="emotion"))


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


def time_epoch(batches) -> dict:
    """Iterate once over a generator or a dataset (input alone, no model); seconds, batches and images."""
    t0 = time.perf_counter()
    n_batches = n_images = 0
    if hasattr(batches, "__getitem__") and hasattr(batches, "__len__") and not hasattr(batches, "element_spec"):
        batches.on_epoch_end()  # the legacy iterator reshuffles here, as model.fit would make it
        for i in range(len(batches)):
            x, _ = batches[i]
            n_batches, n_images = n_batches + 1, n_images + len(x)
    else:
        for x, _ in batches:
            n_batches, n_images = n_batches + 1, n_images + int(x.shape[0])
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "batches": n_batches, "images": n_images,
            "images_per_second": n_images / seconds if seconds else float("nan")}


def time_pipelines(work_dir: str | os.PathLike, image_size=48, color_mode: str = "grayscale",
                   batch_size: int = DEFAULT_BATCH_SIZE, augment: bool = True, seed: int = 42,
                   generator_epochs: int = 1, tfdata_epochs: int = 3) -> pd.DataFrame:
    """Seconds per epoch of the training input alone (no model) for both pipelines, one row per epoch.

    tf.data's first epoch decodes and fills the cache; later epochs read the cache. The legacy generator
    decodes every file on every epoch, so one epoch shows its steady cost.
    """
    rows = []
    gen = legacy_generators(work_dir, image_size, color_mode, batch_size, augment, seed, splits=("train",))["train"]
    for epoch in range(1, generator_epochs + 1):
        rows.append({"pipeline": "generator", "epoch": epoch, **time_epoch(gen)})
    ds = tf_datasets(work_dir, image_size, color_mode, batch_size, augment, seed, splits=("train",))["train"]
    for epoch in range(1, tfdata_epochs + 1):
        rows.append({"pipeline": "tf.data", "epoch": epoch, **time_epoch(ds)})
    return pd.DataFrame(rows)


def timing_summary(timings: pd.DataFrame) -> pd.DataFrame:
    """Per pipeline: first epoch and steady-state (later epochs, else the first) seconds and images/s."""
    rows = []
    for name, t in timings.groupby("pipeline", sort=False):
        steady = t[t.epoch > 1] if (t.epoch > 1).any() else t
        rows.append({"pipeline": name, "first_epoch_s": round(float(t.seconds.iloc[0]), 2),
                     "seconds_per_epoch": round(float(steady.seconds.mean()), 2),
                     "images_per_second": round(float(steady.images.mean() / steady.seconds.mean()), 0),
                     "images": int(t.images.iloc[0])})
    return pd.DataFrame(rows).set_index("pipeline")


# --------------------------------------------------------------------------------------------------
# Pictures for notebook 03
# --------------------------------------------------------------------------------------------------


def _show(ax, image, title=None):
    image = np.asarray(image, dtype=np.float32)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(np.clip(image, 0, 255).astype(np.uint8))
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)


def plot_batch(images, labels, class_names=EMOTIONS, n: int = 16, cols: int = 8, title: str | None = None):
    """A grid of the first ``n`` images of a batch, each titled with its one-hot label's class name."""
    import matplotlib.pyplot as plt

    images, labels = np.asarray(images), np.asarray(labels)
    n = min(n, len(images))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.5 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i < n:
            _show(ax, images[i], f"{class_names[int(labels[i].argmax())]}\n{labels[i].astype(int).tolist()}"
                  if len(class_names) <= 8 else class_names[int(labels[i].argmax())])
        else:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def augmentation_examples(image, seed: int = 42, n: int = 4) -> dict:
    """One face under each augmentation, ``n`` random draws each, from both implementations.

    Returns ``{(augmentation, "generator" | "layer"): [images]}`` (float32, [0, 255]).
    """
    import fer_utils

    tf, keras = fer_utils.import_tensorflow()
    image = np.asarray(image, dtype=np.float32)
    out = {}
    quiet_legacy_scipy()
    layers = augmentation_layers(seed)
    for name, legacy_kwargs in AUGMENTATIONS.items():
        gen = tf.keras.preprocessing.image.ImageDataGenerator(fill_mode="nearest", **legacy_kwargs)
        out[(name, "generator")] = [gen.random_transform(image, seed=seed + k) for k in range(n)]
        layer = layers[name]
        batch = np.repeat(image[None], n, axis=0)
        out[(name, "layer")] = list(np.asarray(layer(batch, training=True)))
    return out


def plot_augmentations(image, seed: int = 42, n: int = 4):
    """The same face, original then under each augmentation: a row per (augmentation, implementation)."""
    import matplotlib.pyplot as plt

    examples = augmentation_examples(image, seed, n)
    fig, axes = plt.subplots(len(examples), n + 1, figsize=(1.5 * (n + 1) + 1.6, 1.35 * len(examples)), squeeze=False)
    for r, ((name, how), images) in enumerate(examples.items()):
        _show(axes[r, 0], image, "original" if r == 0 else None)
        axes[r, 0].text(-0.1, 0.5, f"{name}\n({'ImageDataGenerator' if how == 'generator' else 'Keras layer'})",
                        transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=8)
        for c, im in enumerate(images, start=1):
            _show(axes[r, c], im)
    fig.tight_layout()
    return fig


def plot_timings(summary: pd.DataFrame):
    """Bar chart of seconds per epoch (input alone) for each pipeline, first and later epochs."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6))
    names = list(summary.index)
    y = np.arange(len(names))
    ax.barh(y - 0.2, summary.first_epoch_s, height=0.4, label="first epoch", color="#9ecae1")
    ax.barh(y + 0.2, summary.seconds_per_epoch, height=0.4, label="later epochs", color="#3182bd")
    for yi, v in zip(y, summary.seconds_per_epoch):
        ax.text(v, yi + 0.2, f" {v:.1f} s", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.set_xlabel("seconds per epoch, input pipeline alone")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


# ---- generated from notebooks/03_build_input_pipelines.ipynb, cell 03-aug1 ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def augmentation_layers(seed: int = 42, level: str = "standard") -> dict:
    """The training faces' random changes as Keras preprocessing layers, by name, in
    the order the tf.data pipeline applies them. ``"standard"``: the seed's
    ImageDataGenerator settings; ``"strong"`` (tf.data only): wider changes, plus
    brightness and contrast."""
    import keras

    if level == "strong":
        return {
            "horizontal flip": keras.layers.RandomFlip("horizontal", seed=seed),
            "rotation ±15°": keras.layers.RandomRotation(
                15 / 360, fill_mode="reflect", seed=seed + 1
            ),
            "shift ±12 %": keras.layers.RandomTranslation(
                0.12, 0.12, fill_mode="reflect", seed=seed + 2
            ),
            "zoom ±15 %": keras.layers.RandomZoom(
                0.15, fill_mode="reflect", seed=seed + 3
            ),
            "brightness ±15 %": keras.layers.RandomBrightness(
                0.15, value_range=(0, 255), seed=seed + 4
            ),
            "contrast ±20 %": keras.layers.RandomContrast(
                0.2, value_range=(0, 255), seed=seed + 5
            ),
        }
    # each does what one argument of the generator does (legacy_augmentation_kwargs)
    return {
        "horizontal flip": keras.layers.RandomFlip("horizontal", seed=seed),
        # a fraction of a full turn: ±10°
        "rotation ±10°": keras.layers.RandomRotation(
            10 / 360, fill_mode="nearest", seed=seed + 1
        ),
        "shift ±10 %": keras.layers.RandomTranslation(
            0.1, 0.1, fill_mode="nearest", seed=seed + 2
        ),
        "zoom ±10 %": keras.layers.RandomZoom(0.1, fill_mode="nearest", seed=seed + 3),
    }
# ---- end of generated code (notebooks/03_build_input_pipelines.ipynb, cell 03-aug1) ----
