"""Evaluation metrics, the baseline, bootstrap intervals, and the whole 03→06 notebook chain."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from fer_utils import EMOTIONS, evaluation, training, workfolder

tf, keras = __import__("fer_utils").import_tensorflow()


def test_compute_metrics_on_a_known_example():
    y_true = [0, 0, 4, 4, 4, 5, 5, 5]
    y_pred = [0, 4, 4, 4, 5, 5, 5, 5]
    m = evaluation.compute_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    f1 = {0: 2 / 3, 4: 2 * 2 / (3 + 3), 5: 2 * 3 / (3 + 4)}
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / len(EMOTIONS))  # all 8 labels count
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (8, 8) and cm.sum() == 8 and cm[4, 5] == 1 and cm[0, 4] == 1
    assert m["per_class"]["neutral"] == pytest.approx({"precision": 3 / 4, "recall": 1.0, "f1": 6 / 7, "support": 3})
    assert m["per_class"]["fear"]["support"] == 0


def test_fast_metrics_match_scikit_learn():
    rng = np.random.default_rng(0)
    y_true = rng.choice(8, 500, p=[.05, .01, .04, .02, .4, .4, .04, .04])
    y_pred = np.where(rng.random(500) < 0.6, y_true, rng.integers(0, 8, 500))
    assert evaluation.metric_function("accuracy")(y_true, y_pred) == pytest.approx(accuracy_score(y_true, y_pred))
    assert evaluation.metric_function("macro_f1")(y_true, y_pred) == pytest.approx(
        f1_score(y_true, y_pred, labels=range(8), average="macro", zero_division=0))
    assert evaluation.metric_function("balanced_accuracy")(y_true, y_pred) == pytest.approx(
        balanced_accuracy_score(y_true, y_pred))


def test_bootstrap_ci_brackets_the_estimate_and_repeats():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 8, 400)
    y_pred = np.where(rng.random(400) < 0.7, y_true, 5)
    lo, hi = evaluation.bootstrap_ci(y_true, y_pred, "accuracy", n=300, seed=4)
    point = accuracy_score(y_true, y_pred)
    assert 0 <= lo < point < hi <= 1 and hi - lo < 0.15
    assert evaluation.bootstrap_ci(y_true, y_pred, "accuracy", n=300, seed=4) == [lo, hi]
    custom = evaluation.bootstrap_ci(y_true, y_pred, lambda t, p: float(np.mean(t == p)), n=300, seed=4)
    assert custom == pytest.approx([lo, hi])
    assert evaluation.bootstrap_ci(y_true, y_true, "macro_f1", n=50) == [1.0, 1.0]


def test_person_bootstrap_keeps_a_persons_faces_together_and_the_same_classes():
    rng = np.random.default_rng(0)
    y_true = np.repeat(np.arange(4), 25)
    y_pred = np.where(rng.random(100) < 0.7, y_true, (y_true + 1) % 4)
    people = np.repeat(np.arange(20), 5)  # five faces a person, each person one emotion
    by_face = evaluation.bootstrap_ci(y_true, y_pred, "accuracy", n=400, seed=1)
    by_person = evaluation.bootstrap_ci(y_true, y_pred, "accuracy", n=400, seed=1, groups=people)
    assert by_person[0] <= evaluation.metric_function("accuracy")(y_true, y_pred) <= by_person[1]
    # A class present in the test set is in every resample: the always-one-class baseline has no spread.
    rare = np.array([0] * 97 + [1, 2, 3])
    always_zero = np.zeros(100, dtype=int)
    lo, hi = evaluation.bootstrap_ci(rare, always_zero, "balanced_accuracy", n=200, seed=3)
    assert lo == hi == pytest.approx(0.25)
    _, redrawn = evaluation.bootstrap_samples(rare, always_zero, ("balanced_accuracy",), n=200, seed=3)
    assert redrawn > 0
    assert by_face != by_person


def test_paired_difference_is_zero_for_the_same_model_and_signed():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 8, 300)
    good = np.where(rng.random(300) < 0.8, y_true, 0)
    bad = np.where(rng.random(300) < 0.4, y_true, 0)
    same = evaluation.paired_difference_ci(y_true, good, good, "macro_f1", n=100)
    assert same == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    diff = evaluation.paired_difference_ci(y_true, good, bad, "accuracy", groups=np.arange(300) // 3, n=200)
    assert 0 < diff["ci_low"] <= diff["value"] <= diff["ci_high"]


def test_majority_baseline_uses_training_counts():
    y_true = np.array([4, 4, 5, 5, 5, 0])
    b = evaluation.majority_baseline([1, 0, 0, 0, 10, 3, 0, 0], y_true)
    assert b["predicts"] == "happiness" and b["accuracy"] == pytest.approx(2 / 6)
    assert b["balanced_accuracy"] == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def evaluated(prepared_work_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("evaluated") / "work"
    shutil.copytree(prepared_work_dir, work)
    config = training.TrainConfig(model="seed_cnn", head_epochs=0, epochs=1, image_size=24, batch_size=8, seed=1)
    training.train(config, work, show_progress=False)
    return work, evaluation.evaluate(work / "model.keras", work, n_boot=200)


def _check_metrics(metrics: dict, work) -> None:
    n_test = sum(len(list((work / "split" / "test" / e).iterdir())) for e in EMOTIONS)
    assert metrics["n_test"] == n_test > 0
    assert metrics["class_names"] == list(EMOTIONS)
    for key in ("accuracy", "macro_f1", "balanced_accuracy"):
        assert 0 <= metrics[key] <= 1
        assert 0 <= metrics["baseline"][key] <= 1
        lo, hi = metrics["ci"][key]
        assert 0 <= lo <= hi <= 1
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (8, 8) and cm.sum() == n_test
    assert sum(c["support"] for c in metrics["per_class"].values()) == n_test
    assert np.trace(cm) / n_test == pytest.approx(metrics["accuracy"])
    assert set(metrics["per_class"]) == set(EMOTIONS)


def test_evaluate_writes_sane_metrics(evaluated):
    work, result = evaluated
    metrics = json.loads((work / "metrics.json").read_text())
    _check_metrics(metrics, work)
    assert metrics["image_size"] == [24, 24] and metrics["model"] == "seed_cnn"
    assert "over people" in metrics["ci_method"] and 0 < metrics["n_people"] < metrics["n_test"]
    predictions = pd.read_csv(work / "predictions.csv")
    assert len(predictions) == metrics["n_test"]
    assert (predictions.path.str.startswith("split/test/")).all()
    assert (predictions.true == predictions.path.str.split("/").str[2]).all()
    probs = predictions[[f"p_{e}" for e in EMOTIONS]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert result.per_source.faces.sum() == metrics["n_test"]
    assert set(result.per_source.index) <= {"LFW", "IMFDB", "other", "unknown"} and "LFW" in result.per_source.index


def test_evaluate_accepts_a_loaded_model_and_plots(evaluated):
    work, result = evaluated
    model = keras.models.load_model(work / "model.keras")
    again = evaluation.evaluate(model, work, n_boot=50, write=False)  # record from the input shape
    assert again.metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert len(evaluation.plot_confusion(result.metrics).axes) == 2
    fig = evaluation.plot_misclassified(result.predictions, work, n=8)
    assert sum(bool(ax.get_images()) for ax in fig.axes) == min(8, int((result.predictions.y_true !=
                                                                       result.predictions.y_pred).sum()))
    assert list(result.comparison().index) == ["accuracy", "macro_f1", "balanced_accuracy"]


def test_evaluate_uses_predictions_already_made(evaluated, monkeypatch):
    """Notebook 06 predicts the test split in a cell; evaluate takes those rows instead of predicting again."""
    work, result = evaluated
    made = result.predictions.copy()
    monkeypatch.setattr(evaluation, "predict_split", lambda *a, **k: pytest.fail("predicted the test split again"))
    again = evaluation.evaluate(work / "model.keras", work, predictions=made, n_boot=200, write=False)
    assert again.metrics["accuracy"] == result.metrics["accuracy"] and again.metrics["ci"] == result.metrics["ci"]
    assert again.metrics["model_sha256"] == result.metrics["model_sha256"]


def test_metrics_record_the_model_they_describe(evaluated, tmp_path):
    work, result = evaluated
    metrics = json.loads((work / "metrics.json").read_text())
    assert metrics["model_sha256"] == workfolder.sha256_of(work / "model.keras")
    assert metrics["model_file"] == "<work_dir>/model.keras" and metrics["run"]
    assert evaluation.metrics_describe(work, work / "model.keras")[0] is True
    other = tmp_path / "other.keras"
    other.write_bytes(b"another model")
    matches, why = evaluation.metrics_describe(work, other)
    assert matches is False and "06_evaluate_model" in why
    assert evaluation.metrics_describe(tmp_path, other)[0] is None


def test_evaluation_resizes_as_the_record_says(prepared_work_dir, tmp_path):
    """A model trained with area resizing is evaluated with area resizing (and predicted with it too)."""
    from fer_utils import models, pipelines, prediction

    work = tmp_path / "work"
    shutil.copytree(prepared_work_dir, work)
    config = training.TrainConfig(model="cnn_bn", model_kwargs={"filters": (8, 16)}, head_epochs=0, epochs=1,
                                  image_size=16, batch_size=8,
                                  interpolation="area", precision="float32")
    training.train(config, work, show_progress=False)
    record = models.ModelRecord.read(work / "model.json")
    assert record.interpolation == "area"
    ev = evaluation.evaluate(work / "model.keras", work, n_boot=20, write=False)
    assert ev.metrics["interpolation"] == "area"
    model, _ = models.load(work / "model.keras")
    ds_area, files = pipelines.directory_dataset(work, "test", 16, "grayscale", "area")
    ds_bilinear, _ = pipelines.directory_dataset(work, "test", 16, "grayscale", "bilinear")
    expected = model.predict(ds_area.map(lambda x, y: x).batch(64), verbose=0)
    other = model.predict(ds_bilinear.map(lambda x, y: x).batch(64), verbose=0)
    cols = [f"p_{e}" for e in EMOTIONS]
    np.testing.assert_allclose(ev.predictions[cols].to_numpy(), expected, atol=1e-5)
    assert not np.allclose(expected, other, atol=1e-6, rtol=0)  # the resize method changes the answer
    # prediction prepares a face file the same way: compare its pixels with both resizings
    area_pixels = np.stack([x.numpy() for x, _ in ds_area.take(5)])
    bilinear_pixels = np.stack([x.numpy() for x, _ in ds_bilinear.take(5)])
    loaded = prediction.load_model(work / "model.keras")
    served = prediction.preprocess_faces([prediction.as_trained(f, 1) for f in files[:5]], loaded.preprocessing)
    np.testing.assert_allclose(served, area_pixels, atol=1e-3)  # the same pixels, not just close ones
    assert np.abs(served - bilinear_pixels).mean() > 0.5


def test_missing_model_names_notebook_05(tmp_path):
    with pytest.raises(FileNotFoundError, match="05_train_model"):
        evaluation.evaluate(tmp_path / "model.keras", tmp_path)


def test_flip_tta_averages_each_face_with_its_mirror(prepared_work_dir):
    """A model record asking for tta="flip" is honoured: probabilities are the mean over image and mirror."""
    from fer_utils import models

    net = models.build("seed_cnn", (48, 48, 1))
    record = models.ModelRecord("seed_cnn", 48)
    plain = evaluation.predict_split(net, prepared_work_dir, "test", record)
    tta = evaluation.predict_split(net, prepared_work_dir, "test", record.replace(tta="flip"))
    import fer_utils

    tf, _ = fer_utils.import_tensorflow()
    ds, _ = evaluation.pipelines.directory_dataset(prepared_work_dir, "test", 48, "grayscale")
    mirrored = net.predict(ds.map(lambda x, y: tf.image.flip_left_right(x)).batch(64), verbose=0)
    cols = [f"p_{e}" for e in EMOTIONS]
    expected = (plain[cols].to_numpy() + mirrored) / 2
    np.testing.assert_allclose(tta[cols].to_numpy(), expected, atol=1e-5)
    assert not np.allclose(plain[cols].to_numpy(), tta[cols].to_numpy())
    with pytest.raises(ValueError, match="tta"):
        record.replace(tta="rotate")


def test_the_committed_learning_curve_is_read_and_drawn(tmp_path):
    """Notebook 06's benchmark section: the committed JSON is read and both figures drawn; without the file
    (the notebooks without the repository) the error says where it comes from."""
    import matplotlib.pyplot as plt

    curve = evaluation.read_learning_curve()
    fig = evaluation.plot_learning_curve(curve)
    assert len(fig.axes[0].lines) >= len(curve["per_emotion"])  # one line per emotion (and the target)
    table = evaluation.source_recall_table(curve)
    assert set(table.source) >= {"IMFDB", "LFW"} and table.recall.between(0, 1).all()
    fig2 = evaluation.plot_source_recall(curve)
    assert len(fig2.axes[0].patches) == len(curve["emotion_by_source"]) * table.source.nunique()
    plt.close("all")
    with pytest.raises(FileNotFoundError, match="learning_curve.py"):
        evaluation.read_learning_curve(tmp_path / "learning_curve.json")


def test_the_committed_recipe_search_is_read_summarised_and_drawn(tmp_path):
    """Notebook 06's recipe-search section: the table averages each candidate's inner scores over the folds and
    counts its choices as the per-fold record says; the summary's paired row is the JSON's; the figure draws
    one line per (recipe, test-time augmentation) on each panel."""
    import matplotlib.pyplot as plt

    search = evaluation.read_recipe_search()
    rows = pd.DataFrame(search["recipe_table"])
    table = evaluation.recipe_table(search)
    assert len(table) == rows.candidate.nunique() and table.chosen_folds.sum() == rows.fold.nunique()
    for fold, name in search["choice"]["chosen_per_fold"].items():
        assert rows[(rows.fold == int(fold)) & rows.chosen].candidate.tolist() == [name]
    first = rows.candidate.iloc[0]
    assert table.iloc[0].macro_f1 == pytest.approx(rows[rows.candidate == first].macro_f1.mean(), abs=1e-3)
    summary = evaluation.recipe_search_summary(search)
    paired = search["result"]["paired"]["macro_f1"]
    assert summary.loc["chosen − default (paired)", "macro_f1"].startswith(f"{paired['value']:+.3f}")
    fig = evaluation.plot_recipe_search(search)
    lines = rows.candidate.str.extract(r"^([^,]+, tta \w+)")[0].nunique()
    assert len(fig.axes[1].lines) == lines and len(fig.axes[0].lines) == lines + 1  # and the accuracy floor
    plt.close("all")
    with pytest.raises(FileNotFoundError, match="recipe_search.py"):
        evaluation.read_recipe_search(tmp_path / "recipe_search.json")


def test_the_committed_source_measurement_is_tabled_and_drawn():
    """Notebook 06's source section: one row per (recipe, source), the default without a paired difference and
    every other recipe with the JSON's; one bar per recipe and source on each panel."""
    import matplotlib.pyplot as plt

    search = evaluation.read_recipe_search()
    shortcut = search["by_source"]["recipes"]
    table = evaluation.source_shortcut_table(search)
    assert len(table) == sum(len(sources) for sources in shortcut.values())
    assert set(table.loc["ours"]["accuracy − default"]) == {"–"}
    d = shortcut["sb"]["IMFDB"]["minus_default"]["accuracy"]
    assert table.loc[("sb", "IMFDB"), "accuracy − default"].startswith(f"{d['value']:+.3f}")
    fig = evaluation.plot_source_shortcut(search)
    bars = len(shortcut) * len(next(iter(shortcut.values())))
    assert [len(ax.patches) for ax in fig.axes] == [bars, bars]
    plt.close("all")
