"""Input pipelines: both builders read the class folders with the same labels, shapes and pixel range."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fer_utils import EMOTIONS, pipelines, training

SIZE = 24


def _files_per_class(work: Path, split: str) -> np.ndarray:
    return np.array([len(list((work / "split" / split / e).iterdir())) for e in EMOTIONS])


def test_legacy_generators_label_folders_in_emotions_order(prepared_work_dir):
    gens = pipelines.legacy_generators(prepared_work_dir, SIZE, "grayscale", batch_size=8, augment=True, seed=1)
    assert set(gens) == {"train", "val", "test"}
    for split, gen in gens.items():
        assert gen.class_indices == {e: i for i, e in enumerate(EMOTIONS)}  # empty folders keep their index
        assert gen.samples == _files_per_class(prepared_work_dir, split).sum()
    x, y = gens["train"][0]
    assert x.shape == (min(8, gens["train"].samples), SIZE, SIZE, 1) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 255 and x.max() > 1  # raw pixels, not rescaled
    assert y.shape[1] == len(EMOTIONS) and np.all(y.sum(axis=1) == 1)


def test_legacy_generator_labels_match_folders(prepared_work_dir):
    gen = pipelines.legacy_generators(prepared_work_dir, SIZE, "rgb", batch_size=4, augment=False,
                                      splits=("test",))["test"]
    labels = np.concatenate([gen[i][1] for i in range(len(gen))]).argmax(axis=1)
    expected = [EMOTIONS.index(Path(f).parent.name) for f in gen.filepaths]
    assert labels.tolist() == expected
    assert gen[0][0].shape[-1] == 3


def test_tf_datasets_shapes_labels_and_range(prepared_work_dir):
    ds = pipelines.tf_datasets(prepared_work_dir, SIZE, "grayscale", batch_size=8, augment=True, seed=0)
    counts = {s: 0 for s in pipelines.SPLITS}
    for split, d in ds.items():
        per_class = np.zeros(len(EMOTIONS), dtype=int)
        for x, y in d:
            assert tuple(x.shape[1:]) == (SIZE, SIZE, 1) and x.dtype.name == "float32"
            assert float(np.min(x)) >= 0 and float(np.max(x)) <= 255
            assert np.all(y.numpy().sum(axis=1) == 1)
            per_class += y.numpy().sum(axis=0).astype(int)
            counts[split] += int(x.shape[0])
        np.testing.assert_array_equal(per_class, _files_per_class(prepared_work_dir, split))
    assert counts["train"] > 0 and counts["test"] > 0


def test_tf_data_val_is_deterministic_and_unaugmented(prepared_work_dir):
    ds = pipelines.tf_datasets(prepared_work_dir, SIZE, "grayscale", batch_size=8, augment=True, seed=0,
                               splits=("val",))["val"]
    first = np.concatenate([x.numpy() for x, _ in ds])
    second = np.concatenate([x.numpy() for x, _ in ds])
    np.testing.assert_array_equal(first, second)
    raw, _ = pipelines.directory_dataset(prepared_work_dir, "val", SIZE, "grayscale")
    expected = np.stack([np.round(x.numpy()) for x, _ in raw])
    np.testing.assert_array_equal(first, expected)


def test_tf_data_train_reshuffles_every_epoch(prepared_work_dir):
    ds = pipelines.tf_datasets(prepared_work_dir, SIZE, "grayscale", batch_size=4, augment=False, seed=3,
                               splits=("train",))["train"]
    epochs = [np.concatenate([x.numpy().reshape(len(x), -1).sum(axis=1) for x, _ in ds]) for _ in range(3)]
    assert sorted(epochs[0].tolist()) == sorted(epochs[1].tolist())  # same faces (from the cache)...
    assert any(not np.array_equal(epochs[0], e) for e in epochs[1:])  # ...in a new order


def test_the_autotuner_is_off_and_the_batches_are_the_same_with_it(prepared_work_dir, monkeypatch):
    """tf.data's autotuner is off in every split (``TF_DATA_AUTOTUNE``): it slowed training on 2 cores. With it on,
    the same seed still gives the same augmented batches in the same order, so it changes speed, not the model."""
    def batches(autotune: bool):
        monkeypatch.setattr(pipelines, "TF_DATA_AUTOTUNE", autotune)
        ds = pipelines.tf_datasets(prepared_work_dir, SIZE, "grayscale", batch_size=4, augment=True, seed=7)
        assert all(d.options().autotune.enabled is autotune for d in ds.values())
        return np.concatenate([x.numpy() for x, _ in ds["train"]])

    assert pipelines.TF_DATA_AUTOTUNE is False  # the chain's setting
    np.testing.assert_array_equal(batches(False), batches(True))


def test_augmentation_changes_training_faces(prepared_work_dir):
    plain = pipelines.tf_datasets(prepared_work_dir, SIZE, "grayscale", 256, augment=False, seed=5,
                                  splits=("train",))["train"]
    augmented = pipelines.tf_datasets(prepared_work_dir, SIZE, "grayscale", 256, augment=True, seed=5,
                                      splits=("train",))["train"]
    x0, _ = next(iter(plain))
    x1, _ = next(iter(augmented))
    assert x0.shape == x1.shape
    assert not np.allclose(x0.numpy(), x1.numpy())


def test_augmentation_examples_and_plots(prepared_work_dir):
    face = np.random.default_rng(0).uniform(0, 255, (32, 32, 1)).astype("float32")
    examples = pipelines.augmentation_examples(face, seed=0, n=2)
    assert set(examples) == {(a, how) for a in pipelines.AUGMENTATIONS for how in ("generator", "layer")}
    assert all(len(v) == 2 and v[0].shape == face.shape for v in examples.values())
    flips = examples[("horizontal flip", "layer")] + examples[("horizontal flip", "generator")]
    assert any(np.array_equal(f, face[:, ::-1]) for f in flips)
    fig = pipelines.plot_augmentations(face, n=2)
    assert len(fig.axes) == len(examples) * 3


def test_time_pipelines_reports_both(prepared_work_dir):
    timings = pipelines.time_pipelines(prepared_work_dir, SIZE, "grayscale", 16, tfdata_epochs=2)
    assert timings.pipeline.tolist() == ["generator", "tf.data", "tf.data"]
    n_train = _files_per_class(prepared_work_dir, "train").sum()
    assert (timings.images == n_train).all() and (timings.seconds > 0).all()
    summary = pipelines.timing_summary(timings)
    assert set(summary.index) == {"generator", "tf.data"} and (summary.seconds_per_epoch > 0).all()


def test_missing_folders_name_notebook_02(tmp_path):
    with pytest.raises(FileNotFoundError, match="02_preprocess_into_folders"):
        pipelines.tf_datasets(tmp_path)
    with pytest.raises(ValueError, match="pipeline"):
        training.TrainConfig(pipeline="torch")
    with pytest.raises(ValueError, match="legacy generator"):
        pipelines.legacy_generators(tmp_path, augment="strong")
