"""Solutions to the exercises of notebook 03 (the tests run this file, on a small
synthetic dataset)."""

import fer_utils
import numpy as np
from fer_utils import pipelines, workfolder

tf, keras = fer_utils.import_tensorflow()
WORK = workfolder.get_work_dir(None)
size, mode = 48, "grayscale"

# 1. No augmentation: the same faces every epoch, in a new order.
train = pipelines.tf_datasets(
    WORK, size, mode, batch_size=8, augment="none", seed=1, splits=("train",)
)["train"]
first, second = (np.concatenate([x.numpy() for x, _ in train]) for _ in range(2))
same_faces = np.allclose(
    np.sort(first.reshape(len(first), -1).sum(1)),
    np.sort(second.reshape(len(second), -1).sum(1)),
)
print(
    f"{len(first)} faces per epoch; same faces: {same_faces}; "
    f"same order: {np.array_equal(first, second)}"
)
assert same_faces and not np.array_equal(first, second)

# 2. One more augmentation layer: contrast.
standard = keras.Sequential(list(pipelines.augmentation_layers(seed=1).values()))
augment = keras.Sequential(
    [standard, keras.layers.RandomContrast(0.3, seed=2, value_range=(0, 255))]
)
x, _ = next(
    iter(
        pipelines.tf_datasets(
            WORK, size, mode, batch_size=8, augment="none", splits=("train",)
        )["train"]
    )
)
y = tf.clip_by_value(augment(x, training=True), 0, 255)
print(
    f"pixel range before {float(tf.reduce_min(x)):.0f}–{float(tf.reduce_max(x)):.0f}, "
    f"after {float(tf.reduce_min(y)):.0f}–{float(tf.reduce_max(y)):.0f}"
)
# ...and train with it: the seed CNN, 2 epochs from the same initial weights, with
# and without the contrast layer.
from fer_utils import models  # noqa: E402 - the exercise's second half

splits = pipelines.tf_datasets(
    WORK, size, mode, batch_size=8, augment="none", seed=1, splits=("train", "val")
)
start = models.build("seed_cnn", pipelines.input_shape(size, mode))
scores = {}
for name, layers in (("standard", standard), ("standard + contrast", augment)):
    net = keras.models.clone_model(start)
    net.set_weights(start.get_weights())
    net.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    train = splits["train"].map(
        lambda x, y, layers=layers: (
            tf.clip_by_value(layers(x, training=True), 0, 255),
            y,
        )
    )
    # tf.data shuffles
    history = net.fit(
        train, validation_data=splits["val"], epochs=2, shuffle=False, verbose=0
    )
    scores[name] = history.history["val_accuracy"][-1]
print(
    "validation accuracy after 2 epochs:",
    {k: round(v, 3) for k, v in scores.items()},
    "(one run each on a small dataset: the difference is within noise unless it is "
    "large)",
)
assert all(0 <= v <= 1 for v in scores.values())

# 3. What the cache buys: time one epoch with and without it (the second epoch is
#    the cached one).
for cache in (True, False):
    batches = pipelines.tf_datasets(
        WORK, size, mode, batch_size=8, cache=cache, splits=("train",)
    )["train"]
    seconds = [pipelines.time_epoch(batches)["seconds"] for _ in range(2)]
    print(f"cache={cache}: epoch 1 {seconds[0]:.3f} s, epoch 2 {seconds[1]:.3f} s")
