"""Solutions to the exercises of notebook 04 (the tests run this file)."""

import fer_utils
import numpy as np
from fer_utils import models, pipelines

tf, keras = fer_utils.import_tensorflow()
shape = pipelines.input_shape(48, "grayscale")


# 1. The seed CNN with half the filters: the same layers, 16-32-64.
def half_seed_cnn(input_shape, num_classes=8):
    layers = keras.layers
    inputs = keras.Input(shape=input_shape)
    x = layers.Rescaling(1.0 / 255)(inputs)
    for filters in (16, 32, 64):
        x = layers.Conv2D(filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D(2)(x)
    x = layers.Dense(128, activation="relu")(layers.Flatten()(x))
    outputs = layers.Activation("softmax", dtype="float32")(
        layers.Dense(num_classes)(x)
    )
    return keras.Model(inputs, outputs)


full, half = models.build("seed_cnn", shape), half_seed_cnn(shape)
models.check_contract(half, shape)
print(
    f"seed CNN {full.count_params():,} parameters; "
    f"with half the filters {half.count_params():,}"
)
lost = {
    a.name: a.count_params() - b.count_params()
    for a, b in zip(full.layers, half.layers)
}
print(
    "lost most:",
    max(lost, key=lost.get),
    "(the first Dense layer: its input, the flattened map, halved)",
)
assert (
    max(lost, key=lost.get) == "dense"
    and half.count_params() < full.count_params() / 1.9
)

# 2. Parameters by formula.
for layer in full.layers:
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw, c_in, filters = layer.kernel.shape
        assert layer.count_params() == (kh * kw * c_in + 1) * filters
    elif isinstance(layer, keras.layers.Dense):
        n_in, units = layer.kernel.shape
        assert layer.count_params() == (n_in + 1) * units
table = models.parameter_table(full)
print(table[table.type.isin(["Conv2D", "Dense"])].to_string(index=False))

# 3. Freeze the backbone of fer_transfer: only the head is left to learn.
net = models.build("fer_transfer", pipelines.input_shape(64, "grayscale"))
models.set_backbone_trainable(net, False)
trainable = sum(int(np.prod(w.shape)) for w in net.trainable_weights)
head = net.get_layer("classifier").count_params()
print(
    f"trainable with the backbone frozen: {trainable:,} of {net.count_params():,} "
    f"(the classifier: {head:,})"
)
assert trainable == head
