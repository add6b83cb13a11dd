"""The benchmark scripts run end to end on tiny synthetic data and write what their documents promise."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fer_utils import EMOTIONS, workfolder

BENCHMARKS = workfolder.REPO_ROOT / "benchmarks"


def _load(name: str):
    """A benchmark script as a module; its folder is on ``sys.path`` while it loads, as when it runs as a script
    (for ``_checks``, the checks they share)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_compare_folds_writes_the_protocol_and_paired_differences(synthetic_data_dir, tmp_path, eager_keras):
    compare = _load("compare")
    out = tmp_path / "results"
    assert compare.main(["--folds", "2", "--data-dir", str(synthetic_data_dir), "--work-dir", str(tmp_path / "w"),
                         "--only", "majority", "reference", "seed_cnn", "--epochs", "1", "--n-boot", "30",
                         "--out", str(out)]) == 0
    report = json.loads((out / "compare_folds2.json").read_text())
    assert report["protocol"]["folds"] == 2 and report["protocol"]["grouped_by"] == "person"
    n = None
    for name in ("majority", "reference", "seed_cnn"):
        cv = report["configs"][name]["cv"]
        for m in ("accuracy", "macro_f1", "balanced_accuracy"):
            assert cv[m]["ci_low"] <= cv[m]["value"] <= cv[m]["ci_high"] and len(cv[m]["per_fold"]) == 2
        n = n or report["configs"][name]["n"]
        assert report["configs"][name]["n"] == n  # every configuration predicts the same faces
        assert set(report["configs"][name]["per_class"]) == set(EMOTIONS)
    # every usable face is predicted exactly once, out of fold
    manifests = [tmp_path / "w" / f"fold{i}" / "manifest.csv" for i in (1, 2)]
    tests = pd.concat([pd.read_csv(m).query("split == 'test'") for m in manifests])
    assert tests.image.is_unique and len(tests) == n
    usable = pd.read_csv(manifests[0]).query("split != 'excluded'")
    assert len(usable) == n
    paired = report["paired"]
    assert set(paired["seed_cnn_minus_reference"]) == {"accuracy", "macro_f1", "balanced_accuracy"}
    assert len(paired["seed_cnn_over_reference_chain_time"]["per_fold"]) == 2
    assert report["configs"]["seed_cnn"]["utilisation"] > 0 and report["peak_gflops"]["float32"] > 0
    assert "Paired differences" in (out / "compare_folds2.md").read_text()


def test_compare_pairs_the_short_schedule_with_the_default(synthetic_data_dir, fake_fer_weights, tmp_path,
                                                           monkeypatch, eager_keras):
    """``--only ours ours_short``: both recipes on the same folds, paired on the same faces, with the ratio of
    their training times (tiny schedules here: 1 + 2 epochs against 1 + 1)."""
    compare = _load("compare")
    monkeypatch.setenv("FER_PRETRAINED", str(fake_fer_weights))
    tiny = compare.OURS.replace(head_epochs=1, epochs=2, batch_size=16)
    monkeypatch.setattr(compare, "OURS", tiny)
    monkeypatch.setitem(compare.VARIANTS, "ours_short", {"epochs": 1})
    out = tmp_path / "results"
    assert compare.main(["--folds", "2", "--data-dir", str(synthetic_data_dir), "--work-dir", str(tmp_path / "w"),
                         "--only", "ours", "ours_short", "--n-boot", "30", "--out", str(out)]) == 0
    report = json.loads((out / "compare_folds2.json").read_text())
    assert report["ours_short"]["epochs"] == 1 and report["ours"]["epochs"] == 2
    assert report["configs"]["ours"]["n"] == report["configs"]["ours_short"]["n"]
    assert all(1 <= e <= 3 for e in report["configs"]["ours"]["best_epoch_per_fold"])
    diff = report["paired"]["ours_short_minus_ours"]
    for m in ("accuracy", "macro_f1", "balanced_accuracy"):
        assert diff[m]["ci_low"] <= diff[m]["value"] <= diff[m]["ci_high"]
    per_emotion = report["paired"]["ours_short_minus_ours_f1_per_emotion"]
    assert list(per_emotion) == list(EMOTIONS)
    assert all(d["ci_low"] <= d["value"] <= d["ci_high"] for d in per_emotion.values())
    ratio = report["paired"]["ours_short_over_ours_train_time"]
    assert len(ratio["per_fold"]) == 2 and all(r > 0 for r in ratio["per_fold"])
    predictions = workfolder.read_csv(out / report["predictions"])
    assert sorted(predictions.config.unique()) == ["ours", "ours_short"]
    assert len(predictions) == 2 * report["configs"]["ours"]["n"] and set(predictions.fold) == {1, 2}
    text = (out / "compare_folds2.md").read_text()
    assert "ours_short − ours" in text and "Training time ours_short / ours" in text

    # --pair-with: a variant alone, paired with the `ours` stored above (not trained again)
    again = tmp_path / "again"
    stored, name = str(out / report["predictions"]), report["predictions"]
    common = ["--folds", "2", "--data-dir", str(synthetic_data_dir), "--work-dir", str(tmp_path / "w2"),
              "--n-boot", "30", "--out", str(again), "--pair-with", stored]
    argv = [*common, "--only", "ours_short"]
    with pytest.raises(SystemExit):  # ours trained again and stored at once: refused before any work
        compare.main([*common, "--only", "ours", "ours_short"])
    with pytest.raises(SystemExit, match="same --folds, --seed"):  # another seed: other folds, refused
        compare.main([*argv, "--seed", "7"])
    assert compare.main(argv) == 0
    second = json.loads((again / "compare_folds2.json").read_text())
    assert list(second["configs"]) == ["ours_short"] and second["paired_with"]["file"] == name
    assert len(second["paired"]["ours_short_over_ours_train_time"]["per_fold"]) == 2
    assert set(second["paired"]["ours_short_minus_ours"]) == {"accuracy", "macro_f1", "balanced_accuracy"}
    assert f"as stored in `{name}`" in (again / "compare_folds2.md").read_text()


def test_scale_measures_each_strategy_and_writes_its_json(tmp_path):
    scale = _load("scale")
    out = tmp_path / "scale.json"
    assert scale.main(["--work-dir", str(tmp_path / "w"), "--images", "256", "--epochs", "2", "--batch-size", "16",
                       "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    runs = {r["name"]: r for r in report["runs"]}
    assert report["device"] and report["settings"]["training_images"] == 256
    assert runs["1 device, float32"]["precision"] == "float32" and runs["1 device, float32"]["replicas"] == 1
    if "GPU" not in report["device"]:  # on CPUs: the CPU split in two, and two local workers
        assert runs["mirrored, auto precision"]["replicas"] == 2
        assert runs["2 workers, auto precision"]["workers"] == 2
        assert runs["2 workers, auto precision"]["global_batch_size"] == 32
    for row in runs.values():
        assert row["images_per_second"] > 0 and row["peak_memory"]["peak_rss_mb"] > 0
    assert not (tmp_path / "w" / "scale-benchmark").exists()  # its generated data is removed afterwards


def test_a_learning_curve_point_trains_on_a_share_of_whole_people(synthetic_data_dir, tmp_path):
    """``--train-fraction``: each fold keeps about that share of its training faces, whole people, the same
    validation and test faces; a smaller share keeps a subset of a larger one's people."""
    compare = _load("compare")
    out = tmp_path / "results"
    for fraction in ("1", "0.5"):
        assert compare.main(["--folds", "2", "--data-dir", str(synthetic_data_dir), "--work-dir",
                             str(tmp_path / f"w{fraction}"), "--only", "majority", "--n-boot", "20",
                             "--train-fraction", fraction, "--out", str(out)]) == 0
    full, half = (json.loads((out / name).read_text()) for name in ("compare_folds2.json",
                                                                      "compare_folds2_train50.json"))
    assert half["protocol"]["train_fraction"] == 0.5 and full["configs"]["majority"]["n"] == half[
        "configs"]["majority"]["n"]  # the same test faces
    train = {name: sum(c["train_faces_mean"] for c in r["configs"]["majority"]["per_class"].values())
             for name, r in (("full", full), ("half", half))}
    assert 0.3 * train["full"] < train["half"] < 0.8 * train["full"]
    assert "50% of its training faces" in (out / "compare_folds2_train50.md").read_text()
    fold = pd.DataFrame({"split": ["train"] * 12 + ["test"] * 2,
                         "group": [f"p{i // 2}" for i in range(12)] + ["t", "t"]})
    quarter, half_out = (set(compare.left_out_of_train(fold, f, 42)) for f in (0.25, 0.5))
    assert half_out < quarter and not quarter & {12, 13}
    for left in (quarter, half_out):  # whole people: both faces of a person stay or go together
        assert all((2 * (i // 2) in left) == (2 * (i // 2) + 1 in left) for i in range(12))


def _curve_point(out, share: float, frame: pd.DataFrame, train_faces: dict) -> None:
    """A compare.py-like report of ``ours`` at ``share`` with its saved predictions (no training)."""
    stem = f"compare_train{round(100 * share)}" if share < 1 else "compare"
    workfolder.write_csv(frame.assign(config="ours"), out / f"{stem}_predictions.csv.gz")
    per_class = {e: {"train_faces_mean": share * train_faces[e]} for e in EMOTIONS}
    (out / f"{stem}.json").write_text(json.dumps({
        "protocol": {"folds": 2, "seed": 42, "train_fraction": share}, "predictions": f"{stem}_predictions.csv.gz",
        "machine": {"processor": "test CPU", "cpu_count": 2},
        "configs": {"ours": {"per_class": per_class, "cv_train_seconds_mean": share * 11}}}))


def test_the_learning_curve_fits_each_emotion_and_measures_the_sources(tmp_path):
    """``learning_curve.py`` on three hand-made shares: an emotion whose F1 rises by a known step per doubling
    gets the faces where the line reaches the target; one that never rises gets none; sources are scored
    apart, and within each emotion; runs of other faces are refused."""
    curve = _load("learning_curve")
    rng = np.random.default_rng(0)
    n = 800
    y = rng.integers(0, len(EMOTIONS), n)
    base = pd.DataFrame({"fold": 1 + np.arange(n) % 2, "path": [f"test/x/{i}.jpg" for i in range(n)],
                         "group": [f"p{i // 4}" for i in range(n)], "y_true": y,
                         "source": np.where(np.arange(n) % 3, "LFW", "IMFDB")})
    happy, contempt = EMOTIONS.index("happiness"), EMOTIONS.index("contempt")
    out = tmp_path / "results"
    out.mkdir()
    train_faces = {e: 400.0 for e in EMOTIONS}
    recalls = {0.25: 0.2, 0.5: 0.4, 1.0: 0.6}  # happiness: right on 20 / 40 / 60 % of its faces, nothing else
    for share, recall in recalls.items():
        pred = np.where(y == contempt, (contempt + 1) % len(EMOTIONS), y)  # contempt: never found
        wrong = (y == happy) & (np.arange(n) // len(EMOTIONS) % 10 >= 10 * recall)
        pred = np.where(wrong, EMOTIONS.index("neutral"), pred)
        _curve_point(out, share, base.assign(y_pred=pred), train_faces)
    points = [out / f for f in ("compare.json", "compare_train25.json", "compare_train50.json")]  # any order
    assert curve.main(["--points", *map(str, points), "--n-boot", "40", "--target", "0.9", "--out", str(out)]) == 0
    report = json.loads((out / "learning_curve.json").read_text())
    assert report["train_fraction"] == [0.25, 0.5, 1.0] and report["n"] == n
    rows = report["per_emotion"]
    assert rows["happiness"]["train_faces_mean"] == [100.0, 200.0, 400.0]
    f1 = rows["happiness"]["f1"]
    assert f1[0] < f1[1] < f1[2] < 0.9 and rows["happiness"]["f1_per_doubling"] > 0
    b, a = np.polyfit(np.log([100.0, 200.0, 400.0]), f1, 1)  # the line, by numpy's least squares
    assert rows["happiness"]["faces_needed"] == round(float(np.exp((0.9 - a) / b))) > 400
    assert rows["happiness"]["f1_per_doubling_ci"][0] <= rows["happiness"]["f1_per_doubling"] <= rows[
        "happiness"]["f1_per_doubling_ci"][1]
    assert rows["contempt"]["f1"] == [0.0, 0.0, 0.0] and rows["contempt"]["faces_needed"] is None
    assert rows["surprise"]["reached"]  # always right: at the target already
    assert set(report["per_source"][-1]) == {"IMFDB", "LFW"}
    assert report["emotion_by_source"]["happiness"]["LFW"]["recall"] < 1
    text = (out / "learning_curve.md").read_text()
    assert "the line does not rise" in text and "reached already" in text
    # a run of another recipe, or of other faces, is not pooled with these
    recipe = json.loads(points[1].read_text())
    points[1].write_text(json.dumps(recipe | {"ours": {"epochs": 2}}))
    with pytest.raises(SystemExit, match="recipe"):
        curve.main(["--points", *map(str, points), "--n-boot", "10", "--out", str(out)])
    points[1].write_text(json.dumps(recipe))
    other = base.assign(y_pred=y, path=base.path.str.replace("x", "z"))
    _curve_point(out, 0.5, other, train_faces)
    with pytest.raises(SystemExit, match="same test faces"):
        curve.main(["--points", *map(str, points), "--n-boot", "10", "--out", str(out)])


def test_the_recipe_search_chooses_on_validation_and_pairs_on_test(synthetic_data_dir, fake_fer_weights, tmp_path,
                                                                  monkeypatch, eager_keras):
    """``recipe_search.py --train`` trains each recipe on each outer fold and stores both views' probabilities of
    the validation and test faces (the flip view as ``models.with_tta`` makes it); the search scores every
    candidate on validation only, applies the rule, and pairs the chosen with the default on the same test faces."""
    search = _load("recipe_search")
    monkeypatch.syspath_prepend(str(workfolder.REPO_ROOT / "benchmarks"))  # it reuses compare.py's folds
    monkeypatch.setenv("FER_PRETRAINED", str(fake_fer_weights))
    monkeypatch.setattr(search, "base_config", lambda: _tiny_config(search))  # 1 head + 1 whole-model epoch
    out = tmp_path / "results"
    common = ["--folds", "2", "--data-dir", str(synthetic_data_dir), "--out", str(out), "--n-boot", "30"]
    with pytest.raises(SystemExit, match="--train"):
        search.main(common)  # nothing trained yet: says what to run
    assert search.main([*common, "--train", "--recipes", "ours"]) == 0
    assert search.main([*common, "--train", "--recipes", "ours", "cw1", "sb"]) == 0  # resumes: ours not again
    frames = search.read_probabilities(out)
    assert sorted(p.name for p in out.glob("recipe_search_probabilities_*")) == [  # one file per recipe
        search.PROBABILITIES.format(recipe=r) for r in ("cw1", "ours", "sb")]
    assert not frames.duplicated(["recipe", "fold", "split", "path"]).any()
    assert len(frames[frames.recipe == "ours"]) == len(frames[frames.recipe == "cw1"])
    assert set(frames.recipe) == {"ours", "cw1", "sb"} and set(frames.split) == {"val", "test"}
    tests = frames[(frames.recipe == "ours") & (frames.split == "test")]
    for _, faces in frames[frames.recipe == "ours"].groupby("fold"):  # the inner split: other people
        assert not set(faces[faces.split == "val"].group) & set(faces[faces.split == "test"].group)
    assert tests.path.is_unique and tests.fold.nunique() == 2
    probs = np.exp(frames[search.log_columns("flip")].to_numpy())
    assert np.allclose(probs.sum(axis=1), 1, atol=0.02)  # the mirror view's probabilities, stored as logs
    runs = json.loads((out / search.TRAININGS).read_text())
    assert set(runs["trainings"]["cw1"]) == {"1", "2"} and runs["trainings"]["cw1"]["1"]["config"][
        "class_weight"] == 1.0
    assert runs["trainings"]["cw1"]["2"]["machine"] == search.machine_name(workfolder.machine_info())  # its machine
    balanced = runs["trainings"]["sb"]["1"]  # weighted by source: the weights it trained with are recorded
    assert balanced["source_balance"] == 1.0
    totals = {tuple(k.split("/")): v["faces"] * v["weight"] for k, v in balanced["face_weights"].items()}
    both = [e for e in EMOTIONS if (e, "IMFDB") in totals and (e, "LFW") in totals]
    assert both  # the synthetic faces hold both sources
    for e in both:  # within an emotion, the film crops weigh as much as the news photos
        assert totals[(e, "IMFDB")] == pytest.approx(totals[(e, "LFW")], rel=0.01)
    assert search.main([*common, "--train", "--recipes", "ours"]) == 0  # stored already: nothing trained again
    assert len(search.read_probabilities(out)) == len(frames)
    lost = out / search.PROBABILITIES.format(recipe="cw1")
    lost.unlink()  # the trainings file still lists cw1: the search says what is missing and how to store it
    with pytest.raises(SystemExit, match=r"cw1 fold\(s\) 1, 2 .*--train --out .* --recipes cw1"):
        search.main(common)
    assert search.main([*common, "--train", "--recipes", "cw1"]) == 0 and lost.exists()  # trained again
    assert len(search.read_probabilities(out)) == len(frames)
    committed = json.loads((workfolder.REPO_ROOT / "benchmarks" / "results" / "compare.json").read_text())
    committed["protocol"] |= {"folds": 2, "seed": 42}  # as if compare.py had run these folds
    (out / "compare.json").write_text(json.dumps(committed))
    assert search.main(common) == 0
    merged_before = (out / "compare.json").read_text()
    assert search.main([*common, "--recipes", "ours", "cw1", "--name", "recipe_search_two"]) == 0  # among some
    two = json.loads((out / "recipe_search_two.json").read_text())
    assert set(two["recipes"]) == {"ours", "cw1"} and (out / "recipe_search_two.md").exists()
    assert {c.split(",")[0] for c in pd.DataFrame(two["recipe_table"]).candidate} == {"ours", "cw1"}
    assert (out / "compare.json").read_text() == merged_before  # a variant's search leaves compare.json alone
    with pytest.raises(SystemExit, match="--recipes focal: not stored"):
        search.main([*common, "--recipes", "ours", "focal"])
    report = json.loads((out / "recipe_search.json").read_text())
    merged = json.loads((out / "compare.json").read_text())["recipe_search"]  # the paired result, in compare.json
    assert merged["chosen_minus_ours"] == report["result"]["paired"] and merged["verdict"] == report["verdict"]
    assert "Nested recipe search" in (out / "compare.md").read_text()
    table = pd.DataFrame(report["recipe_table"])
    assert len(table) == 2 * len(search.candidates(["ours", "cw1", "sb"]))  # every candidate, every fold
    for fold, rows in table.groupby("fold"):
        assert rows.chosen.sum() == 1
        pick = rows[rows.chosen].iloc[0]
        default = rows[rows.candidate == search.candidate_name(*search.DEFAULT)].iloc[0]
        assert pick.accuracy >= default.accuracy - 0.01 - 1e-9
        eligible = rows[rows.accuracy >= default.accuracy - 0.01 - 1e-9]
        best = ((eligible.macro_f1 + eligible.balanced_accuracy) / 2).max()
        assert (pick.macro_f1 + pick.balanced_accuracy) / 2 == pytest.approx(best)
        assert report["choice"]["chosen_per_fold"][str(fold)] == pick.candidate
    result = report["result"]
    assert result["n"] == len(tests)
    for m in search.METRICS:
        d = result["paired"][m]
        assert d["ci_low"] <= d["value"] <= d["ci_high"]
        assert d["value"] == pytest.approx(result["pooled"]["chosen"][m]["value"]
                                           - result["pooled"]["default"][m]["value"], abs=2e-4)
    assert "The recipe table" in (out / "recipe_search.md").read_text()


def test_the_recipe_search_says_which_machine_trained_which_recipe():
    """A recipe trained later on another machine is named with it (training seconds compare within a machine);
    one machine for all: no line."""
    search = _load("recipe_search")
    assert search.machine_name({"processor": "AMD EPYC", "cpu_count": 2}) == "AMD EPYC, 2 cores"
    one = {"machines": {"ours": ["Intel, 2 cores"], "cw1": ["Intel, 2 cores"]}}
    assert search.machine_lines(one) == []
    two = {"machines": {"ours": ["Intel, 2 cores"], "cw1": ["Intel, 2 cores"], "focal": ["AMD EPYC, 2 cores"]}}
    assert search.machine_lines(two) == [
        "Recipes by machine: `ours`, `cw1` on Intel, 2 cores; `focal` on AMD EPYC, 2 cores."]


def test_source_balancing_makes_the_emotion_independent_of_the_source():
    """``source_weights``: within each emotion, IMFDB's and LFW's faces carry the same total weight and the
    emotion's total stays its number of faces; an emotion seen in one source, and faces of other sources, keep
    weight 1; ``power`` 0.5 goes part of the way."""
    search = _load("recipe_search")
    cells = {("disgust", "IMFDB"): 195, ("disgust", "LFW"): 12, ("happiness", "IMFDB"): 387,
             ("happiness", "LFW"): 5309, ("contempt", "LFW"): 9, ("anger", "other"): 1, ("anger", "LFW"): 30}
    emotions = [e for (e, _), n in cells.items() for _ in range(n)]
    sources = [s for (_, s), n in cells.items() for _ in range(n)]
    frame = pd.DataFrame({"emotion": emotions, "source": sources})
    for power in (1.0, 0.5):
        frame["w"] = search.source_weights(emotions, sources, power)
        total = frame.groupby(["emotion", "source"]).w.sum()
        for e in ("disgust", "happiness"):
            assert total[e].sum() == pytest.approx(cells[(e, "IMFDB")] + cells[(e, "LFW")])
            share = total[(e, "IMFDB")] / total[e].sum()
            natural = cells[(e, "IMFDB")] / (cells[(e, "IMFDB")] + cells[(e, "LFW")])
            assert share == pytest.approx(0.5) if power == 1.0 else min(natural, 0.5) < share < max(natural, 0.5)
        assert (frame[frame.emotion.isin(["contempt", "anger"])].w == 1).all()


def test_the_weighted_training_batches_carry_each_faces_weight(prepared_work_dir):
    """The source-balanced recipe's batches are tf_datasets' (the same faces, order and augmentation) with each
    face's weight."""
    search = _load("recipe_search")
    config = search.training.TrainConfig(image_size=32, batch_size=16)
    plain = search.pipelines.make_pipelines(config, prepared_work_dir, splits=("train",))["train"]
    weighted = search.weighted_train_batches(config, prepared_work_dir, {
        p.relative_to(prepared_work_dir).as_posix(): 1.0 for p in (prepared_work_dir / "split" / "train").rglob("*")
        if p.is_file()})
    for (x0, y0), (x1, y1, w1) in zip(plain.as_numpy_iterator(), weighted.as_numpy_iterator(), strict=True):
        assert np.array_equal(y0, y1) and np.allclose(x0, x1) and (w1 == 1).all()
    config = config.replace(augment="none")
    files = sorted(p.relative_to(prepared_work_dir).as_posix()
                   for p in (prepared_work_dir / "split" / "train").rglob("*") if p.is_file())
    weight_of = {f: float(i + 1) for i, f in enumerate(files)}
    xs, ys, ws = zip(*search.weighted_train_batches(config, prepared_work_dir, weight_of).as_numpy_iterator())
    y, w = np.concatenate(ys).argmax(axis=1), np.concatenate(ws)
    assert sorted(w) == sorted(weight_of.values())  # every face once per epoch, with its own weight
    label_of = {float(i + 1): EMOTIONS.index(f.split("/")[-2]) for i, f in enumerate(files)}
    assert [label_of[v] for v in w] == list(y)  # the weight travels with its face's label
    assert xs[0].shape[1:3] == (32, 32)


def test_oversampled_batches_draw_each_emotion_by_its_share(tmp_path):
    """The over-sampling recipe's epochs hold as many faces as the training split, drawn so each emotion's share is
    ∝ n ** (1 - power): power 1 draws every emotion alike, 0 as the split holds them (here 3, 12 and 48 faces, and
    none of the other five emotions, which are never drawn); each epoch draws anew."""
    from PIL import Image

    search = _load("recipe_search")
    counts = {"contempt": 3, "fear": 12, "happiness": 48}
    rng = np.random.default_rng(0)
    for emotion in EMOTIONS:  # a folder per emotion, as notebook 02 makes them; five of them empty
        (tmp_path / "split" / "train" / emotion).mkdir(parents=True)
    for emotion, n in counts.items():
        folder = tmp_path / "split" / "train" / emotion
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(folder / f"{i}.png")
    config = search.training.TrainConfig(image_size=16, batch_size=16, augment="none")
    index = [EMOTIONS.index(e) for e in counts]
    natural = pd.Series(list(counts.values()), index) / sum(counts.values())
    for power, expected in ((1.0, pd.Series(1 / 3, index)), (0.0, natural)):
        batches, share = search.oversampled_train_batches(config, tmp_path, power)
        assert share == pytest.approx({EMOTIONS[k]: v for k, v in expected.items()}, abs=1e-4)
        epochs = [np.concatenate([y for _, y in batches.as_numpy_iterator()]).argmax(axis=1) for _ in range(30)]
        assert {len(e) for e in epochs} == {sum(counts.values())}  # an epoch as long as the split
        drawn = pd.Series(np.concatenate(epochs)).value_counts(normalize=True).reindex(index, fill_value=0)
        assert np.allclose(drawn, expected, atol=0.03), (power, drawn.round(3).tolist(), expected.round(3).tolist())
        assert any(not np.array_equal(epochs[0], e) for e in epochs[1:])  # drawn anew each epoch
    x, _ = next(batches.as_numpy_iterator())
    assert x.shape[1:3] == (16, 16) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 255


def test_the_oversampling_recipe_trains_on_drawn_faces_without_class_weights(prepared_work_dir, fake_fer_weights,
                                                                            tmp_path, monkeypatch, eager_keras):
    """``os`` trains through ``training.start`` / ``fit_phase`` / ``finish`` on the drawn batches, with no class
    weights (the drawing does their work), and records the shares it drew by."""
    import shutil

    search = _load("recipe_search")
    monkeypatch.setenv("FER_PRETRAINED", str(fake_fer_weights))
    monkeypatch.setattr(search, "base_config", lambda: _tiny_config(search))
    work = tmp_path / "fold"
    shutil.copytree(prepared_work_dir, work)  # the shared prepared folder is read-only for tests
    drawn, fitted = [], []
    real_draw, real_fit = search.oversampled_train_batches, search.training.fit_phase
    monkeypatch.setattr(search, "oversampled_train_batches",
                        lambda *a: drawn.append(real_draw(*a)) or drawn[-1])
    monkeypatch.setattr(search.training, "fit_phase", lambda run, phase: fitted.append(
        (run.class_weight, run.batches["train"])) or real_fit(run, phase))
    frame, info = search.train_recipe(work, 1, "os", 42)
    assert len(drawn) == 1 and len(fitted) == 2  # the head phase and the whole-model phase
    assert all(weights is None and batches is drawn[0][0] for weights, batches in fitted)  # fit gets the drawn faces
    assert info["config"]["class_weight"] is None and info["oversample"] == 0.5
    counts = {e: n for e, n in info["train_counts"].items() if n}
    assert info["draw_share"] == drawn[0][1] and set(info["draw_share"]) == set(counts)
    assert sum(info["draw_share"].values()) == pytest.approx(1, abs=1e-3)
    assert set(frame.split) == {"val", "test"} and (frame.recipe == "os").all()
    monkeypatch.setitem(search.RECIPES, "both", {"source_balance": 1.0, "oversample": 0.5})
    with pytest.raises(SystemExit, match="source balancing weighs the faces and over-sampling draws them"):
        search.train_recipe(work, 1, "both", 42)


def test_the_source_shortcut_is_measured_per_recipe_and_paired(monkeypatch):
    """``by_source``: each recipe's test accuracy per source, as trained, paired with the default on the same
    faces; a source with too few test faces is left out and named."""
    search = _load("recipe_search")
    monkeypatch.syspath_prepend(str(workfolder.REPO_ROOT / "benchmarks"))
    rng = np.random.default_rng(1)
    ours = _search_frames(search, rng)
    ours.loc[ours.index % 3 == 0, "source"] = "IMFDB"
    ours.loc[ours.index[ours.split == "test"][:10], "source"] = "other"
    other = ours.assign(recipe="sb")
    imfdb = (other.source == "IMFDB") & (other.split == "test")
    logp = np.full((int(imfdb.sum()), len(EMOTIONS)), np.log(0.01))
    logp[np.arange(len(logp)), other.loc[imfdb, "y_true"].to_numpy()] = np.log(0.93)
    other.loc[imfdb, search.log_columns("none")] = logp  # sb finds every IMFDB test face
    report = search.by_source(pd.concat([ours, other], ignore_index=True), ["ours", "sb"], 50, 0)
    assert report["left_out"] == ["other"] and set(report["recipes"]["sb"]) == {"IMFDB", "LFW"}
    sb, base = report["recipes"]["sb"], report["recipes"]["ours"]
    assert sb["IMFDB"]["accuracy"]["value"] == 1.0 > base["IMFDB"]["accuracy"]["value"]
    assert sb["IMFDB"]["minus_default"]["accuracy"]["value"] == pytest.approx(
        1.0 - base["IMFDB"]["accuracy"]["value"], abs=1e-4)
    assert sb["LFW"]["minus_default"]["accuracy"]["value"] == 0 and "minus_default" not in base["LFW"]


def _tiny_config(search):
    return search.training.TrainConfig(head_epochs=1, epochs=1, batch_size=16)


def test_the_recipe_search_decides_with_the_logit_adjustment():
    """``tau`` lowers each emotion's logit by tau · log(its training share): a face the model finds almost as
    likely to be contempt as happiness becomes contempt once the rarity is counted; tau 0 keeps the argmax."""
    search = _load("recipe_search")
    probs = np.full(len(EMOTIONS), 0.01)
    probs[EMOTIONS.index("happiness")], probs[EMOTIONS.index("contempt")] = 0.5, 0.3
    frame = pd.DataFrame([np.log(probs / probs.sum())] * 2, columns=search.log_columns("none"))
    frame[search.log_columns("flip")] = frame[search.log_columns("none")].to_numpy()
    counts = {e: 100 for e in EMOTIONS} | {"happiness": 5000, "contempt": 5}
    prior = search.prior_of(counts)
    assert set(search.decide(frame, "none", 0.0, prior)) == {EMOTIONS.index("happiness")}
    assert set(search.decide(frame, "flip", 0.5, prior)) == {EMOTIONS.index("contempt")}


def _search_frames(search, rng, faces: int = 400) -> pd.DataFrame:
    """Hand-made stored probabilities of ``ours`` on two folds: every face leans to its true emotion, but a rare
    emotion's faces lean a little more to neutral (so only a logit adjustment finds them); the mirror view
    differs from the plain one."""
    rows = []
    rare, neutral = EMOTIONS.index("fear"), EMOTIONS.index("neutral")
    for fold in (1, 2):
        for split in ("val", "test"):
            y = np.where(np.arange(faces) % 10 == 0, rare, neutral)
            logits = rng.normal(0, 0.1, (faces, len(EMOTIONS)))
            logits[np.arange(faces), y] += 3.0
            logits[y == rare, neutral] += 3.3  # rare faces: neutral wins by 0.3 unless their rarity is counted
            for view, shift in (("none", 0.0), ("flip", 0.05)):
                z = logits + shift * rng.normal(size=logits.shape)
                logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
                frame = pd.DataFrame(logp, columns=search.log_columns(view))
                if view == "none":
                    base = frame
                else:
                    base = pd.concat([base, frame], axis=1)
            rows.append(base.assign(recipe="ours", fold=fold, split=split, y_true=y, source="LFW",
                                    path=[f"{split}/{fold}/{i}.jpg" for i in range(faces)],
                                    group=[f"{split}{fold}p{i // 2}" for i in range(faces)]))
    return pd.concat(rows, ignore_index=True)


def test_the_recipe_search_never_looks_at_the_test_faces_to_choose(monkeypatch):
    """On hand-made probabilities where counting the rarity finds a rare emotion, every fold chooses an adjusted
    candidate and the pooled test figures show the gain; scrambling the test faces' probabilities changes no
    choice and no validation score; shuffling the rows changes no paired figure (pairing is by face)."""
    search = _load("recipe_search")
    monkeypatch.syspath_prepend(str(workfolder.REPO_ROOT / "benchmarks"))  # it pairs with compare.py's `paired`
    rng = np.random.default_rng(0)
    frames = _search_frames(search, rng)
    counts = {e: 10 for e in EMOTIONS} | {"neutral": 900, "fear": 100}
    trainings = {"ours": {"1": {"train_counts": counts}, "2": {"train_counts": counts}}}
    table, choice, tests = search.search(frames, trainings, 0.01)
    assert all(name != search.candidate_name(*search.DEFAULT) for name in choice["chosen_per_fold"].values())
    assert len(table) == 2 * len(search.candidates(["ours"])) and table.groupby("fold").chosen.sum().eq(1).all()
    result = search.pooled_report(tests, 50, 0)
    assert result["paired"]["balanced_accuracy"]["ci_low"] > 0 and result["paired"]["macro_f1"]["value"] > 0
    scrambled = frames.copy()
    is_test = scrambled.split == "test"
    cols = search.log_columns("none") + search.log_columns("flip")
    scrambled.loc[is_test, cols] = rng.permutation(scrambled.loc[is_test, cols].to_numpy())
    table2, choice2, _ = search.search(scrambled, trainings, 0.01)
    assert choice2 == choice and table2.equals(table)
    shuffled = search.search(frames.sample(frac=1.0, random_state=1), trainings, 0.01)[2]
    assert search.pooled_report(shuffled, 50, 0)["paired"] == result["paired"]
    assert not np.allclose(frames[search.log_columns("none")], frames[search.log_columns("flip")])
    both = (np.exp(frames[search.log_columns("none")].to_numpy()) + np.exp(frames[search.log_columns("flip")]
                                                                           .to_numpy())) / 2
    assert (search.decide(frames, "flip", 0.0, search.prior_of(counts)) == both.argmax(axis=1)).all()


def test_ensembles_average_their_members_and_report_apart(tmp_path, monkeypatch):
    """``--ensembles``: an ensemble's stored probabilities are its members' averaged per face and view, its
    training seconds their sum; it is a candidate of the search and measured as trained, its report is a file of
    its own that names the ensembles over the budget, and ``compare.json`` is left alone. A member not stored,
    stored for fewer folds, or for other faces, is refused."""
    search = _load("recipe_search")
    monkeypatch.syspath_prepend(str(workfolder.REPO_ROOT / "benchmarks"))
    rng = np.random.default_rng(2)
    ours = _search_frames(search, rng)
    counts = {e: 10 for e in EMOTIONS} | {"neutral": 900, "fear": 100}
    frames, trainings = [ours], {}
    for k, recipe in enumerate(search.RECIPES):
        if recipe != "ours" and recipe not in {m for ms in search.ENSEMBLES.values() for m in ms}:
            continue
        if recipe != "ours":
            other = ours.assign(recipe=recipe).sample(frac=1.0, random_state=k)  # stored in another order
            for view in search.TTAS:
                z = other[search.log_columns(view)].to_numpy() + rng.normal(0, 1.0, (len(other), len(EMOTIONS)))
                other[search.log_columns(view)] = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            frames.append(other)
        seconds = 650.0 if recipe == "sb" else 400.0 + 10 * k  # sb alone over the budget: not an ensemble
        trainings[recipe] = {f: {"train_counts": counts, "train_seconds": seconds} for f in ("1", "2")}
    frames = pd.concat(frames, ignore_index=True)
    ens, runs = search.ensemble(frames, trainings, "ours+aug", ("ours", "aug"))
    assert runs["1"]["train_seconds"] == trainings["ours"]["1"]["train_seconds"] + trainings["aug"]["1"][
        "train_seconds"] and runs["2"]["train_counts"] == counts
    keys = ["fold", "split", "path"]
    a, b = (frames[frames.recipe == r].set_index(keys) for r in ("ours", "aug"))
    e = ens.set_index(keys)
    for view in search.TTAS:
        cols = search.log_columns(view)
        mean = (np.exp(a[cols]) + np.exp(b.loc[a.index, cols])) / 2
        assert np.allclose(np.exp(e.loc[a.index, cols]).to_numpy(), mean.to_numpy(), atol=1e-9)
    assert (e.loc[a.index, "y_true"] == a.y_true).all() and (ens.recipe == "ours+aug").all()
    with pytest.raises(SystemExit, match="--train --recipes cw1"):
        search.ensemble(frames[frames.recipe != "cw1"], {r: v for r, v in trainings.items() if r != "cw1"},
                        "ours+cw1", ("ours", "cw1"))
    partial = trainings | {"aug": {"1": trainings["aug"]["1"]}}  # an interrupted --train: fold 1 only
    with pytest.raises(SystemExit, match="stored for folds 1, the default for 1, 2.*--train --recipes aug"):
        search.ensemble(frames[(frames.recipe != "aug") | (frames.fold == 1)], partial, "ours+aug", ("ours", "aug"))
    with pytest.raises(SystemExit, match="different faces"):
        search.ensemble(frames.drop(frames.index[frames.recipe == "aug"][:1]), trainings, "ours+aug", ("ours", "aug"))
    out = tmp_path / "results"
    out.mkdir()
    for recipe, g in frames.groupby("recipe"):
        g.to_csv(out / search.PROBABILITIES.format(recipe=recipe), index=False)
    (out / search.TRAININGS).write_text(json.dumps({
        "protocol": {"folds": 2, "seed": 42}, "trainings": trainings, "written_at": "then",
        "machine": {"processor": "test", "cpu_count": 2}}))
    (out / "compare.json").write_text("{}")
    (out / search.TRAININGS).write_text(json.dumps({**json.loads((out / search.TRAININGS).read_text()), "trainings": {
        r: v for r, v in trainings.items() if r not in ("cw1", "sb")}}))
    with pytest.raises(SystemExit, match=r"needs the recipe\(s\) cw1, sb.*--out .* --recipes cw1 sb"):
        search.main(["--out", str(out), "--ensembles"])  # both named at once, with the folder to train into
    (out / search.TRAININGS).write_text(json.dumps({
        "protocol": {"folds": 2, "seed": 42}, "trainings": trainings, "written_at": "then",
        "machine": {"processor": "test", "cpu_count": 2}}))
    with pytest.raises(SystemExit, match=r"averages the recipe\(s\) aug, cw1, sb, which --recipes leaves out; "
                                         r"name them too: --recipes ours aug cw1 sb"):
        search.main(["--out", str(out), "--recipes", "ours", "--ensembles"])  # stored, only not named
    assert search.main(["--out", str(out), "--n-boot", "30", "--ensembles"]) == 0
    assert (out / "compare.json").read_text() == "{}" and not (out / "recipe_search.json").exists()
    report = json.loads((out / "recipe_search_ensembles.json").read_text())
    assert report["over_budget"] == list(search.ENSEMBLES)  # two members of 400 s or more each; sb is no ensemble
    measured = report["ensembles_as_trained"]["ours+aug"]  # as trained: the argmax of the averaged probabilities
    y_pred = e[search.log_columns("none")].to_numpy().argmax(axis=1)[(e.index.get_level_values("split") == "test")]
    y_true = e.y_true.to_numpy()[e.index.get_level_values("split") == "test"]
    assert measured["pooled"]["accuracy"] == pytest.approx((y_pred == y_true).mean(), abs=1e-4)
    assert set(report["ensembles_as_trained"]) == set(search.ENSEMBLES)
    table = pd.DataFrame(report["recipe_table"])
    assert {search.candidate_name(n, "none", 0.0) for n in search.ENSEMBLES} <= set(table.candidate)
    assert report["train_seconds"]["ours+aug"] == [runs[f]["train_seconds"] for f in ("1", "2")]
    assert "Ensembles: `ours+aug` = ours + aug" in (out / "recipe_search_ensembles.md").read_text()


def test_a_recipe_trained_later_is_searched_only_when_named(tmp_path, monkeypatch, capsys):
    """A stored recipe outside ``SEARCHED`` (``focal``, trained later on another machine) leaves the default search
    as it was, which says so; ``--recipes ... --name`` searches with it into a report of its own, names each
    recipe's machine, and leaves ``compare.json`` alone."""
    search = _load("recipe_search")
    monkeypatch.syspath_prepend(str(workfolder.REPO_ROOT / "benchmarks"))
    rng = np.random.default_rng(3)
    ours = _search_frames(search, rng, faces=200)
    focal = ours.assign(recipe="focal")
    for view in search.TTAS:
        z = focal[search.log_columns(view)].to_numpy() + rng.normal(0, 1.0, (len(focal), len(EMOTIONS)))
        focal[search.log_columns(view)] = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    counts = {e: 10 for e in EMOTIONS} | {"neutral": 900, "fear": 100}
    trainings = {"ours": {f: {"train_counts": counts, "train_seconds": 400.0} for f in ("1", "2")},
                 "focal": {f: {"train_counts": counts, "train_seconds": 700.0, "machine": "AMD EPYC, 2 cores"}
                           for f in ("1", "2")}}
    out = tmp_path / "results"
    out.mkdir()
    for recipe, g in pd.concat([ours, focal], ignore_index=True).groupby("recipe"):
        g.to_csv(out / search.PROBABILITIES.format(recipe=recipe), index=False)
    (out / search.TRAININGS).write_text(json.dumps({"protocol": {"folds": 2, "seed": 42}, "trainings": trainings,
                                                    "written_at": "then",
                                                    "machine": {"processor": "Intel", "cpu_count": 2}}))
    (out / "compare.json").write_text("{}")
    common = ["--out", str(out), "--n-boot", "30"]
    assert search.main([*common, "--name", "plain"]) == 0
    assert "the search among ours; stored too, not searched (name them with --recipes): focal" in \
        capsys.readouterr().out
    assert set(json.loads((out / "plain.json").read_text())["recipes"]) == {"ours"}
    assert search.main([*common, "--recipes", "ours", "focal", "--name", "recipe_search_focal"]) == 0
    report = json.loads((out / "recipe_search_focal.json").read_text())
    assert set(report["recipes"]) == {"ours", "focal"} and report["machines"] == {
        "ours": ["Intel, 2 cores"], "focal": ["AMD EPYC, 2 cores"]}
    assert {c.split(",")[0] for c in pd.DataFrame(report["recipe_table"]).candidate} == {"ours", "focal"}
    text = (out / "recipe_search_focal.md").read_text()
    assert text.startswith("Trained on several machines") and \
        "Recipes by machine: `ours` on Intel, 2 cores; `focal` on AMD EPYC, 2 cores." in text
    assert (out / "compare.json").read_text() == "{}"
    with pytest.raises(SystemExit) as refused:
        search.main([*common, "--name", "../elsewhere"])
    assert refused.value.code == 2 and "--name ../elsewhere" in capsys.readouterr().err


def test_the_suite_record_reads_a_parallel_run_and_a_plain_one():
    """``environment.py --suite-log`` reads pytest's output with two workers (pytest-xdist) and without."""
    parse = _load("environment").parse_suite
    parallel = ("created: 2/2 workers\n2 workers [402 items]\n....\n"
                "============================= slowest 15 durations =============================\n"
                "341.86s call     tests/test_realdata.py::test_real_chain_beats_majority_baseline\n"
                "159.81s setup    tests/test_notebooks.py::test_chain_runs_every_notebook_and_records_it\n"
                "================== 1 failed, 400 passed, 2 skipped in 1042.94s (0:17:22) ==================\n")
    record = parse(parallel)
    assert record["workers"] == 2 and record["seconds"] == 1042.9 and record["minutes"] == 17.4
    assert record["counts"] == {"failed": 1, "passed": 400, "skipped": 2}
    assert [(t["seconds"], t["phase"]) for t in record["slowest"]] == [(341.86, "call"), (159.81, "setup")]
    assert parse("5 passed in 3.00s\n")["workers"] == 1
    assert parse("bringing up nodes...\n5 passed in 3.00s\n")["workers"] is None  # -q with workers: not said


# --------------------------------------------------------------------------------------------------
# Bad input: one line, status 2, before any work (and the same option, --out, everywhere)
# --------------------------------------------------------------------------------------------------

#: script -> (what --out names, the other arguments it needs to get as far as its checks)
OUTPUTS = {"compare": ("folder", []), "detectors": ("folder", []), "learning_curve": ("folder", []),
           "recipe_search": ("folder", ["--train"]), "prepare_dataset": ("file", []), "scale": ("file", []),
           "quick_run": ("file", ["--data-dir", "/nonexistent"]), "environment": ("file", []),
           "training_speed": ("file", ["--data-dir", "/nonexistent"]), "transfer_experiments": ("file", ["--work-dir",
                                                                                                      "/nonexistent"]),
           "predict_latency": ("file", [])}
#: scripts that read the dataset -> the other arguments they need
READERS = {"compare": [], "recipe_search": ["--train"], "detectors": [], "prepare_dataset": [], "quick_run": [],
           "training_speed": [], "predict_latency": []}


def _refused(capsys, name: str, argv: list[str]) -> str:
    """The one line ``name``'s main(argv) says on stderr when it exits with status 2 (no traceback, no output)."""
    with pytest.raises(SystemExit) as exit_info:
        _load(name).main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    return err.strip()


def _tiny_dataset(root):
    """A folder that ``data.get_dataset`` takes for a dataset (images/ and data/legend.csv), in no time."""
    (root / "images").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "legend.csv").write_text("user.id,image,emotion\n")
    return root


@pytest.mark.parametrize("name", OUTPUTS)
def test_every_benchmark_spells_its_output_out_and_still_takes_output(name, capsys, monkeypatch):
    """``--out`` in every script's help; ``--output`` (the other spelling some scripts had) is a hidden alias."""
    monkeypatch.setenv("FER_DATA_DIR", "/nonexistent")  # never a download, should a check be passed by mistake
    with pytest.raises(SystemExit) as exit_info:
        _load(name).main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--out " in text and "--output" not in text
    kind, extra = OUTPUTS[name]
    for option in ("--out", "--output"):  # both spellings reach the same check
        taken = BENCHMARKS / "results" if kind == "file" else BENCHMARKS / "results" / "compare.json"
        err = _refused(capsys, name, [*extra, option, str(taken)])
        assert "--out " in err and ("is a folder" if kind == "file" else "is a file") in err


@pytest.mark.parametrize("name", OUTPUTS)
def test_an_output_in_a_missing_or_read_only_folder_is_refused_before_any_work(name, tmp_path, capsys,
                                                                              monkeypatch):
    monkeypatch.setenv("FER_DATA_DIR", "/nonexistent")  # never a download, should a check be passed by mistake
    kind, extra = OUTPUTS[name]
    missing = tmp_path / "missing" / ("results" if kind == "folder" else "results.json")
    assert "does not exist" in _refused(capsys, name, [*extra, "--out", str(missing)])
    assert not (tmp_path / "missing").exists()
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    assert f"{blocked} is a file" in _refused(capsys, name, [*extra, "--out", str(blocked / "results")])
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.access(read_only, os.W_OK):  # root writes anywhere: answer as a read-only mount would
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).startswith(str(read_only)) else
                            real_access(p, mode))
    assert "read-only" in _refused(capsys, name, [*extra, "--out", str(read_only / "results")])
    assert list(read_only.iterdir()) == []


@pytest.mark.parametrize("name", READERS)
def test_a_missing_dataset_is_said_in_one_line_before_any_work(name, tmp_path, capsys, monkeypatch):
    """``$FER_DATA_DIR`` or ``--data-dir`` naming no folder: ``data.DatasetError``'s own message, status 2."""
    out = ["--out", str(tmp_path / ("results" if OUTPUTS[name][0] == "folder" else "results.json"))]
    monkeypatch.setenv("FER_DATA_DIR", str(tmp_path / "nowhere"))
    err = _refused(capsys, name, [*READERS[name], *out])
    assert f"Dataset folder {tmp_path / 'nowhere'} does not exist. Point data_dir or FER_DATA_DIR" in err
    monkeypatch.delenv("FER_DATA_DIR")
    err = _refused(capsys, name, [*READERS[name], *out, "--data-dir", str(tmp_path / "elsewhere")])
    assert f"Dataset folder {tmp_path / 'elsewhere'} does not exist" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("name", ["compare", "recipe_search", "prepare_dataset", "detectors"])
def test_no_dataset_and_no_network_is_said_in_one_line(name, tmp_path, capsys, monkeypatch):
    """No ``$FER_DATA_DIR``, nothing in the download cache, no network: what to do, in the data module's words."""
    monkeypatch.delenv("FER_DATA_DIR", raising=False)
    monkeypatch.setenv("FER_CACHE_DIR", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    kind = OUTPUTS[name][0]
    err = _refused(capsys, name, [*READERS[name], "--out", str(tmp_path / ("r" if kind == "folder" else "r.json"))])
    if name == "detectors":  # it never downloads
        assert "No dataset found" in err and "Pass --data-dir DIR or set FER_DATA_DIR=DIR" in err
    else:
        assert "Could not download the dataset" in err and "FER_DATA_DIR=DIR" in err


@pytest.mark.parametrize("name", ["compare", "recipe_search", "prepare_dataset", "detectors", "quick_run",
                                  "training_speed", "predict_latency"])
def test_an_output_inside_the_dataset_is_refused(name, tmp_path, capsys):
    """The dataset is only ever read: an ``--out`` in it is refused, and nothing is made there."""
    root = _tiny_dataset(tmp_path / "facial_expressions")
    target = root / ("results" if OUTPUTS[name][0] == "folder" else "results.json")
    err = _refused(capsys, name, [*READERS[name], "--data-dir", str(root), "--out", str(target)])
    assert f"is inside the dataset {root}" in err and "--out" in err
    assert sorted(p.name for p in root.iterdir()) == ["data", "images"]


def test_the_inputs_that_other_outputs_need_are_checked_first(tmp_path, capsys, monkeypatch):
    """``--peers-only`` and ``--browser`` add to a report that must exist; transfer_experiments needs a prepared
    work folder; environment's --out must be its own record; a --work-dir must be a folder."""
    monkeypatch.setenv("FER_DATA_DIR", "/nonexistent")  # never a download, should a check be passed by mistake
    err = _refused(capsys, "compare", ["--peers-only", "--out", str(tmp_path)])
    assert "compare.json, which does not exist" in err
    err = _refused(capsys, "detectors", ["--browser", "--out", str(tmp_path)])
    assert "detectors.json, which does not exist" in err
    err = _refused(capsys, "transfer_experiments", ["--work-dir", str(tmp_path), "--out", str(tmp_path / "t.json")])
    assert err.startswith(f"error: --work-dir {tmp_path}") and "notebooks/02" in err
    (tmp_path / "list.json").write_text("[1, 2]")
    assert "it holds a JSON list" in _refused(capsys, "environment", ["--out", str(tmp_path / "list.json")])
    (tmp_path / "w").write_text("")
    assert "--work-dir" in _refused(capsys, "scale", ["--work-dir", str(tmp_path / "w"), "--out",
                                                      str(tmp_path / "s.json")])
    assert "--photo" in _refused(capsys, "predict_latency", ["--photo", str(tmp_path / "none.jpg")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.json", "w"]


def test_a_script_run_as_a_script_says_one_line_and_exits_2(tmp_path):
    """``python benchmarks/<name>.py`` finds the shared checks beside it; the user sees no traceback."""
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    env = {**os.environ, "FER_DATA_DIR": str(tmp_path / "nowhere")}
    for argv in (["learning_curve.py", "--output", str(blocked)], ["prepare_dataset.py", "--out",
                                                                   str(tmp_path / "p.json")]):
        done = subprocess.run([sys.executable, str(BENCHMARKS / argv[0]), *argv[1:]], capture_output=True,
                              text=True, env=env, timeout=120)
        assert done.returncode == 2 and done.stdout == "", done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith("error: "), done.stderr
    assert not (tmp_path / "p.json").exists()


def test_a_killed_benchmark_removes_its_generated_faces(tmp_path):
    """``kill`` (SIGTERM, as ``timeout`` sends) stops a benchmark as Ctrl-C does: the folder it made is removed."""
    import signal
    import time

    made = tmp_path / "w" / "scale-benchmark"
    proc = subprocess.Popen([sys.executable, str(BENCHMARKS / "scale.py"), "--work-dir", str(tmp_path / "w"),
                             "--images", "200000", "--out", str(tmp_path / "scale.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(made.rglob("*.png")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None and any(made.rglob("*.png")), "the benchmark made no faces to remove"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0 and not made.exists(), err[-2000:]
    assert not (tmp_path / "scale.json").exists()


def test_the_latency_benchmark_writes_what_it_printed(tmp_path, capsys):
    """``predict_latency.py`` times a photo through ``predict`` and a folder's throughput, and writes the figures
    it prints, with the model and the machine, to ``--out`` (the README's latency row quotes that record)."""
    import matplotlib.cbook
    from PIL import Image

    from fer_utils import import_tensorflow, models

    _, keras = import_tensorflow()
    net = keras.Sequential([keras.Input((24, 24, 1)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                            keras.layers.Dense(len(EMOTIONS), activation="softmax")], name="tiny_latency")
    model = tmp_path / "model.keras"
    models.save(net, model, models.ModelRecord("tiny_latency", (24, 24), "grayscale"))
    folder = tmp_path / "photos"
    folder.mkdir()
    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    for i in range(3):
        hopper.resize((60 + 20 * i, 60 + 20 * i)).save(folder / f"p{i}.jpg")
    out = tmp_path / "latency.json"
    assert _load("predict_latency").main(["--model", str(model), "--photo", str(folder / "p2.jpg"), "--folder",
                                          str(folder), "--runs", "3", "--out", str(out)]) == 0
    printed, record = capsys.readouterr().out, json.loads(out.read_text())
    (photo,) = record["photos"]
    assert photo["photo"] == "p2.jpg" and photo["median_ms"] > 0 and f"{photo['median_ms']:>7.1f}ms" in printed
    assert record["throughput"]["photos"] == 3 and f"{record['throughput']['photos_per_s']:.1f} photos/s" in printed
    assert record["model"]["name"] == "tiny_latency" and record["model"]["sha256"] == workfolder.sha256_of(model)
    assert record["machine"]["processor"] and len(record["load_average_before_after"]) == 2


def test_an_interrupt_that_surfaces_as_another_error_still_removes_the_faces(tmp_path, monkeypatch):
    """SIGTERM or Ctrl-C raised inside a thread pool's lock can reach ``scale.py`` as ``RuntimeError: release
    unlocked lock`` (seen once in CI): once a stop was asked, any error removes the generated faces; an error with
    no stop asked keeps them (the workers' logs are there)."""
    scale = _load("scale")
    made = tmp_path / "scale-benchmark"

    def fails(args, argv, work):
        (work / "split").mkdir(parents=True, exist_ok=True)
        raise RuntimeError("release unlocked lock")

    monkeypatch.setattr(scale, "_measure", fails)
    argv = ["--work-dir", str(tmp_path), "--out", str(tmp_path / "scale.json")]
    with pytest.raises(RuntimeError):
        scale.main(argv)
    assert made.exists()  # no stop asked: kept
    monkeypatch.setattr(scale._checks, "_STOP_ASKED", [15])
    with pytest.raises(RuntimeError):
        scale.main(argv)
    assert not made.exists()


def test_training_speed_measures_one_setting_at_a_time(tmp_path, capsys):
    """``--setting`` picks what the two trainings differ in; a value that setting lacks, or no repeat, is refused
    before any training."""
    speed = _load("training_speed")
    assert speed.SETTINGS["precision"] == {"float32": "float32", "bf16": "bf16"}
    assert list(speed.SETTINGS["jit_compile"]) == ["off", "on"]  # the chain's own value first
    for argv, message in ((["--setting", "precision", "--one", "on"], "--one must be one of ['bf16', 'float32']"),
                          (["--repeats", "0"], "argument --repeats: 0 is below 1")):
        with pytest.raises(SystemExit) as exit_info:
            speed.main([*argv, "--work-dir", str(tmp_path)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_quick_run_and_main_job_record_what_the_run_wrote(tmp_path, monkeypatch, capsys):
    """``quick_run.py`` runs the chain with the quick parameters, ``--main-job`` with none; each writes the run's
    seconds per notebook, the work folder's size and the test metrics under its own name. (The chain itself is
    replaced here by a stand-in that writes what a run writes.)"""
    quick = _load("quick_run")
    root = _tiny_dataset(tmp_path / "facial_expressions")
    commands = []

    real_run = subprocess.run

    def fake_run(command, *args, timeout=None, **kwargs):
        if command[1:4] != ["-m", "fer_utils", "run"]:  # anything else (the machine's description) runs
            return real_run(command, *args, timeout=timeout, **kwargs)
        commands.append((command, timeout))
        work = Path(command[command.index("--work-dir") + 1])
        work.mkdir(parents=True)
        (work / "run.json").write_text(json.dumps({"id": "20261201-000000", "notebooks": {
            "01_load_dataset": {"seconds": 1.5}, "05_train_model": {"seconds": 3.0}}}))
        (work / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "macro_f1": 0.25, "balanced_accuracy": 1 / 3}))
        (work / "split").mkdir()
        (work / "split" / "face.png").write_bytes(b"x" * 2_000_000)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(quick.subprocess, "run", fake_run)
    for argv, name in (([], "quick_run"), (["--main-job"], "main_job")):
        out = tmp_path / f"{name}.json"
        assert quick.main([*argv, "--data-dir", str(root), "--out", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["benchmark"] == name and result["run"] == "20261201-000000"
        assert result["notebook_seconds"] == {"01_load_dataset": 1.5, "05_train_model": 3.0}
        assert result["total_seconds"] == 4.5 and result["disk_mb"]["split"] == 2.0
        assert result["test_metrics"] == {"accuracy": 0.5, "macro_f1": 0.25, "balanced_accuracy": 0.3333}
    (quick_command, quick_timeout), (main_command, main_timeout) = commands
    assert quick_command[quick_command.index("-p"):] == ["-p", "max_per_class", "50", "-p", "faces", "2000"]
    assert "-p" not in main_command and (quick_timeout, main_timeout) == (1800, 3600)
    with pytest.raises(SystemExit):  # the main job is every default
        quick.main(["--main-job", "--faces", "10", "--data-dir", str(root)])
    assert "leave out --max-per-class and --faces" in capsys.readouterr().err


@pytest.mark.parametrize("name, args, message", [
    ("scale", ["--images", "0"], "argument --images: 0 is below 1"),
    ("scale", ["--epochs", "-1"], "argument --epochs: -1 is below 1"),
    ("scale", ["--model", "nosuch"], "error: Bad training configuration: model='nosuch' (registered: "),
    ("detectors", ["--faces", "-1"], "argument --faces: -1 is below 1"),
    ("detectors", ["--latency-runs", "0"], "argument --latency-runs: 0 is below 1"),
    ("predict_latency", ["--runs", "0"], "argument --runs: 0 is below 1"),
    ("training_speed", ["--timeout", "-1"], "argument --timeout: -1 is below 1"),
    ("compare", ["--epochs", "abc"], "argument --epochs: 'abc' is not a whole number"),
    ("transfer_experiments", ["--work-dir", "w", "--config", '{"bogus": 1}'],
     "error: --config: Unknown TrainConfig field(s) ['bogus']"),
    ("transfer_experiments", ["--work-dir", "w", "--config", "[1]"], "--config must be a JSON object"),
])
def test_a_count_or_setting_no_run_could_use_is_refused_before_any_work(name, args, message, tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        _load(name).main([*args, "--out", str(tmp_path / "x.json")] if name != "transfer_experiments"
                         else args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing made: no faces, no folders
