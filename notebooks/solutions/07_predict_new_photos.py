"""Solutions to the exercises of notebook 07 (the tests run this file, on a small
synthetic dataset)."""

import numpy as np
import pandas as pd
from fer_utils import EMOTIONS, prediction, workfolder
from fer_utils.prediction import gradcam

WORK = workfolder.get_work_dir(None)
fer = prediction.load_model(work_dir=WORK)
manifest = workfolder.read_csv(WORK / workfolder.MANIFEST)
test_faces = manifest[manifest.split == "test"].head(2)
batch = prediction.preprocess_faces(
    [prediction.read_image(WORK / p) for p in test_faces.path], fer.record
)

# 1. One map per emotion for one face; how much each overlaps the predicted
#    emotion's map.
predicted = int(fer(batch[:1]).argmax())
maps = np.stack(
    [
        prediction.grad_cam(fer, batch[:1], class_index=k)[0]
        for k in range(len(EMOTIONS))
    ]
)
overlap = [
    float(np.corrcoef(maps[predicted].ravel(), m.ravel())[0, 1])
    if m.std() and maps[predicted].std()
    else 0.0
    for m in maps
]
print(f"predicted {EMOTIONS[predicted]}; correlation of each emotion's map with it:")
print(pd.Series(overlap, index=EMOTIONS).round(2).to_string())
assert (
    maps.shape == (len(EMOTIONS), *batch.shape[1:3])
    and maps.min() >= 0
    and maps.max() <= 1
)

# 2. Another layer: the transfer model's 3×3 classifier maps (if it has them), else
#    its first convolution.
names = [layer.name for layer in fer.model.layers]
other = (
    "classifier"
    if "classifier" in names
    else next(
        layer.name
        for layer in fer.model.layers
        if "conv" in type(layer).__name__.lower()
    )
)
default, alternative = (
    prediction.grad_cam(fer, batch),
    prediction.grad_cam(fer, batch, layer_name=other),
)
print(
    f"default maps: {gradcam.feature_layer(fer.model).name}; other: {other}; "
    f"mean |difference| {np.abs(default - alternative).mean():.3f}"
)
# Measure what differs rather than guess: how concentrated each map is (the share of
# its total in its brightest tenth of pixels: higher is sharper) and how
# class-specific (the mean correlation between the maps of the 8 emotions for one
# face: lower means each emotion's map shows something else).


def concentration(m):
    flat = np.sort(m.ravel())[::-1]
    return float(flat[: max(1, flat.size // 10)].sum() / max(flat.sum(), 1e-9))


def sameness(layer):
    per_class = [
        prediction.grad_cam(fer, batch[:1], class_index=k, layer_name=layer)[0]
        for k in range(len(EMOTIONS))
    ]
    pairs = [
        np.corrcoef(a.ravel(), b.ravel())[0, 1]
        for i, a in enumerate(per_class)
        for b in per_class[i + 1 :]
        if a.std() and b.std()
    ]
    return float(np.mean(pairs)) if pairs else float("nan")


layers = {"default": gradcam.feature_layer(fer.model).name, "other": other}
measured = pd.DataFrame(
    {
        key: {
            "layer": layer,
            "top-10 % share": concentration(
                prediction.grad_cam(fer, batch[:1], layer_name=layer)[0]
            ),
            "maps alike (mean r)": sameness(layer),
        }
        for key, layer in layers.items()
    }
).T
print(measured.to_string())
assert measured["top-10 % share"].between(0, 1).all()

# 3. A face and its mirror image.
flipped = fer(batch[:, :, ::-1])
table = pd.DataFrame({"face": fer(batch)[0], "mirror": flipped[0]}, index=EMOTIONS)
print(table.round(3).to_string())
print("average of the two (tta='flip'):", EMOTIONS[int(table.mean(axis=1).argmax())])
