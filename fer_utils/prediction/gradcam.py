"""Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391): where in a face the evidence for a class lies, as a
heatmap over the model's input."""

from __future__ import annotations

import numpy as np
from PIL import Image

from fer_utils.prediction.inference import LoadedModel


# ---- generated from notebooks/07_predict_new_photos.ipynb, cell 07-n02 ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def feature_layer(model, layer_name: str | None = None):
    """The layer whose feature maps Grad-CAM weighs: the last convolutional feature
    maps before the classifier.

    A model with a pretrained backbone (a nested model of convolutions with 4-D
    output): the backbone's output (``fer_transfer``: its last residual block's
    ``Add``), not the 3×3 ``classifier`` convolution that scores the emotions after
    it. Otherwise the last top-level convolution (``seed_cnn``: ``conv3``).
    """
    from fer_utils import import_tensorflow

    _, keras = import_tensorflow()
    if layer_name:
        return model.get_layer(layer_name)
    conv_types = (
        keras.layers.Conv2D,
        keras.layers.SeparableConv2D,
        keras.layers.DepthwiseConv2D,
    )
    backbones = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.Model)
        and len(layer.output.shape) == 4
        and any(isinstance(sub, conv_types) for sub in layer._flatten_layers())
    ]
    convs = [layer for layer in model.layers if isinstance(layer, conv_types)]
    if backbones or convs:
        return (backbones or convs)[-1]
    raise ValueError(
        f"{model.name} has no convolution layer (or convolutional sub-model); "
        "pass layer_name."
    )
# ---- end of generated code (notebooks/07_predict_new_photos.ipynb, cell 07-n02) ----


def gradient_model(model, conv):
    """A model from the input to ``[conv output, input of the last layer]`` (the last layer is the softmax)."""
    from fer_utils import import_tensorflow

    _, keras = import_tensorflow()
    last = model.layers[-1]
    # conv.output is the layer's first call; a nested backbone's first call is inside its own graph, so
    # also try the tensors of each of its calls (the last is the call in this model's graph)
    candidates = [lambda: conv.output, *[lambda n=n: n.output_tensors[0] for n in reversed(conv._inbound_nodes)]]
    for tensor in candidates:
        try:
            return keras.Model(model.inputs, [tensor(), last.input])
        except (AttributeError, IndexError, ValueError, TypeError):
            continue
    if not isinstance(model, keras.Sequential):
        raise ValueError(f"Cannot connect {conv.name} to the output of {model.name}; pass layer_name.")
    inp = keras.Input(tuple(model.input_shape[1:]))  # a Sequential without an input graph: rebuild it
    x, conv_out = inp, None
    for layer in model.layers[:-1]:
        x = layer(x)
        if layer is conv:
            conv_out = x
    return keras.Model(inp, [conv_out, x])


def class_scores(model, before_softmax):
    """The pre-softmax class scores (logits) from the input of the model's last layer: that input itself
    when the last layer is a softmax ``Activation`` (our models: the ``logits`` layer's output, which the
    ``probabilities`` layer turns into probabilities); ``x · kernel + bias`` for a ``Dense`` with softmax."""
    from fer_utils import import_tensorflow

    tf, keras = import_tensorflow()
    last, x = model.layers[-1], tf.cast(before_softmax, tf.float32)
    if getattr(getattr(last, "activation", None), "__name__", None) != "softmax":
        raise ValueError(f"{model.name} does not end in a softmax layer: no pre-softmax class scores.")
    if isinstance(last, keras.layers.Activation):
        return x
    if isinstance(last, keras.layers.Dense):
        return tf.matmul(x, tf.cast(last.kernel, tf.float32)) + tf.cast(last.bias, tf.float32)
    raise ValueError(f"Cannot take the softmax apart from {last.name} ({type(last).__name__}).")


# ---- generated from notebooks/07_predict_new_photos.ipynb, cell 07-n03 ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def grad_cam(
    model, image_batch: np.ndarray, class_index=None, layer_name: str | None = None
) -> np.ndarray:
    """Grad-CAM heatmaps ``(N, H, W)`` in [0, 1] for a batch ``preprocess_faces``
    returns; ``class_index``: an int, one per image, or None (the predicted class)."""
    from fer_utils import import_tensorflow

    tf, _ = import_tensorflow()
    model = model.model if isinstance(model, LoadedModel) else model
    grad_model = gradient_model(model, feature_layer(model, layer_name))
    x = tf.convert_to_tensor(np.asarray(image_batch, np.float32))
    with tf.GradientTape() as tape:
        # maps are bfloat16 under mixed precision
        maps, before_softmax = grad_model(x, training=False)
        logits = class_scores(model, before_softmax)
        if class_index is None:  # the predicted class
            idx = tf.argmax(logits, axis=-1, output_type=tf.int32)
        else:
            idx = tf.broadcast_to(
                tf.constant(class_index, tf.int32), tf.shape(logits)[:1]
            )
        # y^c, the class's score before the softmax
        score = tf.gather(logits, idx, batch_dims=1)
    # dy^c / dA^k at every position of every feature map k
    grads = tape.gradient(score, maps)
    if grads is None:
        raise RuntimeError(
            "Grad-CAM got no gradient: the feature layer is not on the path to the "
            "output."
        )
    grads, maps = tf.cast(grads, tf.float32), tf.cast(maps, tf.float32)
    # alpha_k^c: averaged over the positions
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    # ReLU(sum_k alpha_k^c A^k)
    cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1))[..., None]
    # upsample to the input size
    cam = tf.image.resize(cam, tuple(x.shape[1:3]), method="bilinear")
    cam = cam / (tf.reduce_max(cam, axis=(1, 2, 3), keepdims=True) + 1e-8)
    return np.clip(cam.numpy()[..., 0], 0.0, 1.0)
# ---- end of generated code (notebooks/07_predict_new_photos.ipynb, cell 07-n03) ----


def overlay_heatmap(image, heatmap: np.ndarray, alpha: float = 0.45, cmap: str = "jet") -> np.ndarray:
    """``image`` (H×W, H×W×1 or H×W×3; [0, 255] floats or uint8) blended with a coloured heatmap → RGB uint8."""
    import matplotlib

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if heatmap.shape != img.shape[:2]:
        heatmap = np.asarray(Image.fromarray(np.uint8(255 * heatmap)).resize(img.shape[1::-1], Image.BILINEAR)) / 255
    colored = matplotlib.colormaps[cmap](np.clip(heatmap, 0, 1))[..., :3] * 255.0
    return np.clip((1 - alpha) * img + alpha * colored, 0, 255).astype(np.uint8)
