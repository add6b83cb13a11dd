"""Solutions to the exercises of notebook 07 (the tests run this file, on a small synthetic dataset)."""

import numpy as np
import pandas as pd

from fer_utils import EMOTIONS, prediction, workfolder
from fer_utils.prediction import gradcam

WORK = workfolder.get_work_dir(None)
fer = prediction.load_model(work_dir=WORK)
manifest = workfolder.read_csv(WORK / workfolder.MANIFEST)
test_faces = manifest[manifest.split == "test"].head(2)
batch = prediction.preprocess_faces([prediction.read_image(WORK / p) for p in test_faces.path], fer.record)

# 1. One map per emotion for one face; how much each overlaps the predicted emotion's map.
predicted = int(fer(batch[:1]).argmax())
maps = np.stack([prediction.grad_cam(fer, batch[:1], class_index=k)[0] for k in range(len(EMOTIONS))])
overlap = [float(np.corrcoef(maps[predicted].ravel(), m.ravel())[0, 1]) if m.std() and maps[predicted].std() else 0.0
           for m in maps]
print(f"predicted {EMOTIONS[predicted]}; correlation of each emotion's map with it:")
print(pd.Series(overlap, index=EMOTIONS).round(2).to_string())
assert maps.shape == (len(EMOTIONS), *batch.shape[1:3]) and maps.min() >= 0 and maps.max() <= 1

# 2. Another layer: the transfer model's 3×3 classifier maps (if it has them), else its first convolution.
names = [layer.name for layer in fer.model.layers]
other = "classifier" if "classifier" in names else next(
    layer.name for layer in fer.model.layers if "conv" in type(layer).__name__.lower())
default, alternative = prediction.grad_cam(fer, batch), prediction.grad_cam(fer, batch, layer_name=other)
print(f"default maps: {gradcam.feature_layer(fer.model).name}; other: {other}; mean |difference| "
      f"{np.abs(default - alternative).mean():.3f}")
# The classifier's maps are already one per emotion (more class-specific, as coarse); an earlier
# convolution gives sharper maps that say less about the class.

# 3. A face and its mirror image.
flipped = fer(batch[:, :, ::-1])
table = pd.DataFrame({"face": fer(batch)[0], "mirror": flipped[0]}, index=EMOTIONS)
print(table.round(3).to_string())
print("average of the two (tta='flip'):", EMOTIONS[int(table.mean(axis=1).argmax())])
