"""The chain must learn: on synthetic faces whose emotions are visibly different, the default training
configuration (notebook 05's defaults: fer_transfer, head then whole model) reaches high test accuracy.

This test fails when training silently learns nothing — labels shuffled against images, a frozen model,
a broken input pipeline, a wrong class order — which the other tests (shapes, files, records) would not
notice. It needs no network: the FER2013 backbone is replaced by a small stand-in of the same structure
whose weights are random (it knows no emotion) and whose batch-norm statistics were measured on faces,
as a pretrained network's are.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import draw_face, tiny_fer_like
from PIL import Image

from fer_utils import EMOTIONS, data, evaluation, folders, training


def banded_face(k: int, rng: np.random.Generator) -> Image.Image:
    """``draw_face`` for emotion ``k``, in its own brightness band: visibly different classes."""
    pixels = np.asarray(draw_face(EMOTIONS[k], rng, 64), dtype=np.float32) * 0.5 + 16 + 24 * k
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def distinct_faces(tmp_path_factory):
    """8 emotions × 10 people × 10 faces in the upstream layout, prepared into class folders."""
    root = tmp_path_factory.mktemp("distinct") / "facial_expressions"
    (root / "images").mkdir(parents=True)
    (root / "data").mkdir()
    rng = np.random.default_rng(0)
    rows = ["user.id,image,emotion"]
    for k, emotion in enumerate(EMOTIONS):
        for p in range(10):
            for n in range(1, 11):
                name = f"Person_{k}x{p}_{n:04d}.jpg"
                banded_face(k, rng).save(root / "images" / name, "JPEG", quality=92)
                rows.append(f"lab,{name},{emotion}")
    (root / "data" / "legend.csv").write_text("\n".join(rows) + "\n")
    work = tmp_path_factory.mktemp("distinct_work")
    folders.prepare(data.get_dataset(root), work, seed=0, test_size=0.25, val_size=0.2)
    return work


@pytest.fixture(scope="module")
def stand_in_backbone(tmp_path_factory):
    """A random-weight stand-in for emotion_model.hdf5 whose batch-norm statistics come from faces."""
    model = tiny_fer_like(filters=(16, 32))
    rng = np.random.default_rng(5)
    faces = np.stack([np.asarray(banded_face(int(rng.integers(0, 8)), rng), dtype="float32")[..., None]
                      for _ in range(256)]) / 127.5 - 1  # the FER2013 input range
    # One forward pass in training mode over all 256 faces with momentum 0 sets every moving mean and variance
    # to that layer's statistics on faces (what many passes at the default momentum converge to).
    norms = {layer: layer.momentum for layer in model.layers if "BatchNormalization" in type(layer).__name__}
    for layer in norms:
        layer.momentum = 0.0
    model(faces, training=True)
    for layer, momentum in norms.items():  # each layer's own momentum back, as the saved file keeps it
        layer.momentum = momentum
    path = tmp_path_factory.mktemp("stand_in") / "emotion_model.hdf5"
    model.save(path)
    return path


def test_default_chain_learns_visibly_different_faces(distinct_faces, stand_in_backbone, monkeypatch):
    monkeypatch.setenv("FER_PRETRAINED", str(stand_in_backbone))
    config = training.TrainConfig(batch_size=16)  # notebook 05's defaults; small batches for a small dataset
    assert config.model == "fer_transfer" and config.head_epochs > 0
    result = training.train(config, distinct_faces, write=False, show_progress=False)
    ev = evaluation.evaluate(result.model, distinct_faces, record=result.model_record, n_boot=50, write=False)
    assert ev.metrics["baseline"]["accuracy"] < 0.2  # balanced classes: always one answer scores 1/8
    assert ev.metrics["accuracy"] >= 0.7, ev.per_class_table()  # measured 0.84
    assert ev.metrics["macro_f1"] >= 0.6, ev.per_class_table()
