"""The model registry and the model contract."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fer_utils import EMOTIONS, models, workfolder

tf, keras = __import__("fer_utils").import_tensorflow()


def test_registry_lists_and_builds():
    assert {"seed_cnn", "cnn_bn"} <= set(models.available())
    assert models.describe()["seed_cnn"]
    with pytest.raises(KeyError, match="seed_cnn"):
        models.build("no_such_model", (48, 48, 1))


def test_seed_cnn_is_the_seed_architecture():
    net = models.build("seed_cnn", (48, 48, 1))
    convs = [layer for layer in net.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128]
    assert all(c.kernel_size == (3, 3) and c.activation.__name__ == "relu" for c in convs)
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in net.layers) == 3
    assert sum(isinstance(layer, keras.layers.Flatten) for layer in net.layers) == 1
    dense = [layer for layer in net.layers if isinstance(layer, keras.layers.Dense)]
    assert len(dense) == 2 and dense[-1].units == len(EMOTIONS)
    # (3·3·1+1)·32 + (3·3·32+1)·64 + (3·3·64+1)·128 + (4·4·128+1)·128 + (128+1)·8
    assert net.count_params() == 320 + 18_496 + 73_856 + 262_272 + 1_032


@pytest.mark.parametrize("name", ["seed_cnn", "cnn_bn"])
@pytest.mark.parametrize("shape", [(48, 48, 1), (40, 40, 3)])
def test_contract_pixels_in_probabilities_out(name, shape):
    net = models.build(name, shape)
    x = np.random.default_rng(0).uniform(0, 255, (3, *shape)).astype("float32")
    p = net.predict(x, verbose=0)
    assert p.dtype == np.float32 and p.shape == (3, len(EMOTIONS))
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-5)


def test_output_stays_float32_under_mixed_precision():
    from fer_utils.models import precision_policy

    with precision_policy("mixed_bfloat16"):
        net = models.build("seed_cnn", (32, 32, 1))
        assert net.layers[2].compute_dtype == "bfloat16"
    assert keras.mixed_precision.global_policy().name == "float32"
    p = net.predict(np.full((2, 32, 32, 1), 128, "float32"), verbose=0)
    assert p.dtype == np.float32


def test_register_adds_a_model_and_refuses_a_clash():
    @models.register("tiny_test_model")
    def tiny(input_shape, num_classes=8, units=4):
        inputs = keras.Input(input_shape)
        x = keras.layers.Rescaling(1 / 255)(inputs)
        x = keras.layers.Dense(num_classes)(keras.layers.Flatten()(x))
        return keras.Model(inputs, keras.layers.Activation("softmax", dtype="float32")(x))

    assert "tiny_test_model" in models.available()
    assert models.build("tiny_test_model", (8, 8, 1)).output_shape == (None, 8)
    with pytest.raises(ValueError, match="already registered"):
        models.register("tiny_test_model")(lambda *a, **k: None)


def _model(rescale=True, augment=False, softmax=True):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.RandomFlip()(inputs) if augment else inputs
    x = keras.layers.Rescaling(1 / 255)(x) if rescale else x
    x = keras.layers.Dense(8)(keras.layers.Flatten()(x))
    if softmax:
        x = keras.layers.Activation("softmax", dtype="float32")(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize("kwargs, message", [({"rescale": False}, "Rescaling"), ({"augment": True}, "augmentation"),
                                             ({"softmax": False}, "softmax")])
def test_check_contract_rejects(kwargs, message):
    with pytest.raises(models.ContractError, match=message):
        models.check_contract(_model(**kwargs))
    models.check_contract(_model())


def test_model_record_round_trip_and_checks(tmp_path):
    net = models.build("seed_cnn", (24, 24, 1))
    record = models.save(net, tmp_path / "untrained.keras", models.ModelRecord("seed_cnn", 24, interpolation="area"))
    assert (tmp_path / "untrained.keras").exists() and (tmp_path / "untrained.json").exists()
    assert record.model_sha256 == workfolder.sha256_of(tmp_path / "untrained.keras")
    assert record.parameters == net.count_params()
    loaded, again = models.load(tmp_path / "untrained.keras")
    assert again == record and again.image_size == (24, 24) and again.input_range == (0.0, 255.0)
    assert again.class_names == EMOTIONS and again.interpolation == "area" and again.source == "untrained.json"
    raw = json.loads((tmp_path / "untrained.json").read_text())
    assert raw["image_size"] == [24, 24] and raw["input_range"] == [0, 255] and raw["class_names"] == list(EMOTIONS)
    with pytest.raises(models.RecordError, match="does not belong"):
        models.ModelRecord("seed_cnn", 32).check_model(loaded)
    with pytest.raises(models.RecordError, match="color_mode"):
        models.ModelRecord("seed_cnn", 24, color_mode="cmyk")
    (tmp_path / "bad.json").write_text('{"model": "x"}')
    with pytest.raises(models.RecordError, match="bad.json"):
        models.ModelRecord.read(tmp_path / "bad.json")
    assert models.ModelRecord.from_model(loaded).source == "model input shape"
