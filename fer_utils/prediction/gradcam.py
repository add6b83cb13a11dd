"""Grad-CAM: where in a face the evidence for a class lies, as a heatmap over the model's input."""

from __future__ import annotations

import numpy as np
from PIL import Image

from fer_utils.prediction.inference import LoadedModel


def _last_conv(model, layer_name: str | None = None):
    """The layer whose feature maps Grad-CAM weighs: the last top-level convolution, or a nested model
    (a pretrained backbone) that contains convolutions and outputs feature maps, whichever comes last."""
    from fer_utils import import_tensorflow

    _, keras = import_tensorflow()
    if layer_name:
        return model.get_layer(layer_name)
    conv_types = (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D)
    for layer in reversed(model.layers):
        if isinstance(layer, conv_types):
            return layer
        if isinstance(layer, keras.Model) and any(isinstance(sub, conv_types) for sub in layer._flatten_layers()):
            if len(layer.output.shape) == 4:
                return layer
    raise ValueError(f"{model.name} has no convolution layer (or convolutional sub-model); pass layer_name.")


def _grad_model(model, conv):
    """A model from the input to ``[conv output, predictions]``."""
    from fer_utils import import_tensorflow

    _, keras = import_tensorflow()
    # conv.output is the layer's first call; a nested backbone's first call is inside its own graph, so
    # also try the tensors of each of its calls (the last is the call in this model's graph)
    candidates = [lambda: conv.output, *[lambda n=n: n.output_tensors[0] for n in reversed(conv._inbound_nodes)]]
    for tensor in candidates:
        try:
            return keras.Model(model.inputs, [tensor(), model.outputs[0]])
        except (AttributeError, IndexError, ValueError, TypeError):
            continue
    if not isinstance(model, keras.Sequential):
        raise ValueError(f"Cannot connect {conv.name} to the output of {model.name}; pass layer_name.")
    inp = keras.Input(tuple(model.input_shape[1:]))  # a Sequential without an input graph: rebuild it
    x, conv_out = inp, None
    for layer in model.layers:
        x = layer(x)
        if layer is conv:
            conv_out = x
    return keras.Model(inp, [conv_out, x])


def grad_cam(model, image_batch: np.ndarray, class_index=None, layer_name: str | None = None) -> np.ndarray:
    """Grad-CAM heatmaps ``(N, H, W)`` in [0, 1] for a preprocessed batch (what ``preprocess_faces`` returns).

    Gradients of the log-probability of ``class_index`` (an int, one per image, or None for each image's
    predicted class) with respect to the last ``Conv2D`` layer's output (or ``layer_name``), averaged per
    channel, weight that layer's maps; the ReLU of the sum, scaled to [0, 1] per image and resized to
    the input size, is the heatmap: where the evidence for that class is.
    """
    from fer_utils import import_tensorflow

    tf, _ = import_tensorflow()
    model = model.model if isinstance(model, LoadedModel) else model
    grad_model = _grad_model(model, _last_conv(model, layer_name))
    x = tf.convert_to_tensor(np.asarray(image_batch, np.float32))
    with tf.GradientTape() as tape:
        conv_raw, probs = grad_model(x, training=False)  # conv_raw is bfloat16 under mixed precision
        probs = tf.cast(probs, tf.float32)
        if class_index is None:
            idx = tf.argmax(probs, axis=-1, output_type=tf.int32)
        else:
            idx = tf.broadcast_to(tf.constant(class_index, tf.int32), tf.shape(probs)[:1])
        score = tf.math.log(tf.gather(probs, idx, batch_dims=1) + 1e-7)
    grads = tape.gradient(score, conv_raw)
    if grads is None:
        raise RuntimeError("Grad-CAM got no gradient: the conv layer is not on the path to the output.")
    grads, conv_out = tf.cast(grads, tf.float32), tf.cast(conv_raw, tf.float32)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * conv_out, axis=-1))[..., None]
    cam = tf.image.resize(cam, tuple(x.shape[1:3]), method="bilinear")
    cam = cam / (tf.reduce_max(cam, axis=(1, 2, 3), keepdims=True) + 1e-8)
    return np.clip(cam.numpy()[..., 0], 0.0, 1.0)


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
