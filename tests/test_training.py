"""Training: artefacts, records, precision handling, and the options other models rely on."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from fer_utils import EMOTIONS, models, training

tf, keras = __import__("fer_utils").import_tensorflow()


@pytest.fixture()
def work(prepared_work_dir, tmp_path):
    """A private copy of the prepared work folder (the fixture itself is read-only)."""
    dest = tmp_path / "work"
    shutil.copytree(prepared_work_dir, dest)
    return dest


@pytest.fixture(scope="module")
def trained(prepared_work_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("trained") / "work"
    shutil.copytree(prepared_work_dir, dest)
    result = training.train(dest, epochs=2, image_size=24, batch_size=8, seed=7, mixed_precision="auto")
    return dest, result


def test_train_writes_the_contract_files(trained):
    work, result = trained
    for name in ("model.keras", "model.json", "history.csv", "train.json", "models/seed_cnn.keras",
                 "models/seed_cnn.json"):
        assert (work / name).exists(), name
    info = json.loads((work / "model.json").read_text())
    assert info["model"] == "seed_cnn" and info["image_size"] == [24, 24] and info["color_mode"] == "grayscale"
    assert info["class_names"] == list(EMOTIONS) and info["input_range"] == [0, 255]
    history = pd.read_csv(work / "history.csv")
    assert history.epoch.tolist() == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(history.columns)
    assert history[["loss", "val_loss"]].notna().all().all()


def test_train_record(trained):
    work, result = trained
    record = json.loads((work / "train.json").read_text())
    p = record["parameters"]
    assert p["epochs"] == 2 and p["image_size"] == [24, 24] and p["batch_size"] == 8 and p["seed"] == 7
    assert p["pipeline"] == "tf.data" and p["model"] == "seed_cnn"
    assert record["precision"] == training.resolve_precision("auto")
    assert len(record["epoch_seconds"]) == 2 and record["seconds_per_epoch"] > 0
    assert record["images_per_second"] > 0 and record["train_seconds"] > 0
    assert record["counts"]["train"] == sum(record["counts"]["train_per_class"].values()) > 0
    assert record["best_epoch"] in (1, 2)
    best_val = pd.read_csv(work / "history.csv").val_accuracy.max()
    assert record["best"]["val_accuracy"] == pytest.approx(best_val)


def test_best_model_is_saved_and_policy_is_reset(trained):
    work, result = trained
    assert keras.mixed_precision.global_policy().name == "float32"
    model = keras.models.load_model(work / "model.keras")
    models.check_contract(model, (24, 24, 1))
    x = np.full((2, 24, 24, 1), 100, "float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), result.model.predict(x, verbose=0), rtol=1e-5)


def test_generator_pipeline_rgb_and_options(work):
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    result = training.train(work, model="cnn_bn", epochs=1, image_size=20, color_mode="rgb", batch_size=8,
                            pipeline="generator", mixed_precision="float32", class_weight="balanced",
                            callbacks=[Spy()], model_kwargs={"filters": (8, 16)})
    assert seen == [0]
    assert result.record["precision"] == "float32" and result.record["parameters"]["pipeline"] == "generator"
    assert result.model.inputs[0].shape[1:] == (20, 20, 3)
    assert isinstance(result.record["parameters"]["class_weight"], dict)
    assert json.loads((work / "model.json").read_text())["color_mode"] == "rgb"


def test_second_phase_appends_history(work):
    first = training.train(work, epochs=1, image_size=24, batch_size=8, mixed_precision="float32")
    second = training.train(work, model=first.model, epochs=1, image_size=24, batch_size=8, learning_rate=1e-4,
                            fit_kwargs={"initial_epoch": 1})
    history = pd.read_csv(work / "history.csv")
    assert history.epoch.tolist() == [1, 2]
    assert second.record["parameters"]["model"] == first.model.name


def test_seeded_runs_repeat(work):
    a = training.train(work, epochs=1, image_size=24, batch_size=8, seed=3, mixed_precision="float32")
    b = training.train(work, epochs=1, image_size=24, batch_size=8, seed=3, mixed_precision="float32")
    assert a.history.loss.iloc[0] == pytest.approx(b.history.loss.iloc[0], rel=1e-4)


def test_resolve_precision_and_cpu_flags(tmp_path):
    with_bf16 = tmp_path / "cpuinfo_bf16"
    with_bf16.write_text("processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_tile\n")
    without = tmp_path / "cpuinfo"
    without.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert training.cpu_supports_bf16(with_bf16) and not training.cpu_supports_bf16(without)
    assert not training.cpu_supports_bf16(tmp_path / "missing")
    assert training.resolve_precision("float32") == "float32"
    assert training.resolve_precision("bf16") == "mixed_bfloat16"
    assert training.resolve_precision("auto", gpu=True) == "mixed_float16"
    expected = "mixed_bfloat16" if training.cpu_supports_bf16() else "float32"
    assert training.resolve_precision("auto", gpu=False) == expected
    with pytest.raises(ValueError):
        training.resolve_precision("int8")


def test_balanced_class_weight():
    w = training.balanced_class_weight([10, 0, 30])
    assert w == {0: pytest.approx(2.0), 1: 0.0, 2: pytest.approx(40 / 60)}
    assert training.balanced_class_weight([1, 99], max_weight=5.0)[0] == 5.0


def test_missing_folders_name_notebook_02(tmp_path):
    with pytest.raises(FileNotFoundError, match="02_preprocess_into_folders"):
        training.train(tmp_path, epochs=1)
    assert keras.mixed_precision.global_policy().name == "float32"
