"""Your own data: class folders (FER2013's image layout) and a labels CSV go through the same audit, manifest,
split and notebooks as the muxspace dataset (generated datasets with planted faults): class folders through
notebooks 01-07, the CSV through 01-02 and what notebook 06 scores on its split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_chain

from fer_utils import EMOTIONS, data, evaluation, folders, models, workfolder

#: FER2013's folder names: 7 emotions, no contempt.
FER2013 = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
FOLDER_LABEL_MAP = {"bored": None}
CSV_LABEL_MAP = {"confused": None, "Joy": "happiness"}


def make_folder_dataset(root: Path) -> dict:
    """``train/<emotion>/`` and ``test/<emotion>/`` (same file names in both), with planted faults."""
    data.write_synthetic_dataset(root / "train", "folders", n_images=84, emotions=FER2013, seed=1)
    data.write_synthetic_dataset(root / "test", "folders", n_images=21, emotions=FER2013, seed=2)
    (root / "train" / "bored").mkdir()  # an unknown label: a whole folder
    shutil.copy(root / "train" / "sad" / "person00000_000005.png", root / "train" / "bored" / "b1.png")
    (root / "train" / "happy" / "broken.png").write_bytes((root / "train" / "sad" / "person00000_000005.png")
                                                          .read_bytes()[:120])
    (root / "train" / "sad" / "notes.txt").write_text("not an image\n")
    shutil.copy(root / "test" / "fear" / "person00000_000002.png", root / "stray.png")  # in no class folder
    (root / "README.md").write_text("not an image, not in a class folder: ignored\n")
    (root / "train" / "happy" / ".DS_Store").write_text("hidden: ignored\n")
    return {"labelled": 84 + 21 + 2, "unlisted": ["stray.png"], "unreadable": ["train/happy/broken.png",
                                                                                "train/sad/notes.txt"],
            "left_out": ["train/bored/b1.png"]}


def make_csv_dataset(root: Path) -> dict:
    """``images/`` and ``labels.csv`` (image,emotion,person), 8 people × 8 emotions, with planted faults."""
    info = data.write_synthetic_dataset(root, "csv", n_images=96, n_people=8, seed=3)
    table = pd.read_csv(info["csv"])
    (root / "images" / "broken.png").write_text("not an image\n")
    data.draw_face("happiness", np.random.default_rng(9), 48).save(root / "images" / "joy.png")
    data.draw_face("neutral", np.random.default_rng(8), 48).save(root / "images" / "odd.png")
    shutil.copy(root / "images" / "person00003_000027.png", root / "images" / "stray.png")
    extra = pd.DataFrame({
        "image": ["images/broken.png", "images/ghost.png", "./images/odd.png", "images/joy.png", table.image[0]],
        "emotion": ["happy", "sad", "Confused", " Joy ", "surprise"],
        "person": ["person00001", "person00002", "person00003", "person00004", table.person[0]]})
    pd.concat([table, extra]).to_csv(info["csv"], index=False)
    return {"csv": info["csv"], "rows": 96 + 5, "unlisted": ["images/stray.png"], "missing": ["images/ghost.png"],
            "unreadable": ["images/broken.png"], "left_out": ["images/odd.png"], "conflicting": [table.image[0]]}


@pytest.fixture(scope="module")
def folder_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("own") / "fer2013"
    return root, make_folder_dataset(root)


@pytest.fixture(scope="module")
def csv_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("own") / "mine"
    return root, make_csv_dataset(root)


# --------------------------------------------------------------------------------------------------
# Finding the layout
# --------------------------------------------------------------------------------------------------


def test_layouts_are_recognised(folder_dataset, csv_dataset, synthetic_data_dir, tmp_path):
    assert data.get_dataset(synthetic_data_dir).layout == "muxspace"
    ds = data.get_dataset(folder_dataset[0])
    assert (ds.layout, ds.images_dir, ds.is_pinned_upstream) == ("folders", folder_dataset[0], False)
    assert "class folders" in ds.describe() and "the data_dir parameter" in ds.describe()
    # notebook 08 names where its dataset came from: generated there, or its own parameter
    generated = data.open_dataset(folder_dataset[0], "generated").describe()
    assert generated.startswith("Dataset generated here") and "data_dir" not in generated
    assert "the scale_data_dir parameter" in data.open_dataset(folder_dataset[0], "scale_data_dir").describe()
    by_folder, by_file = data.get_dataset(csv_dataset[0]), data.get_dataset(csv_dataset[1]["csv"])
    assert by_folder.layout == by_file.layout == "csv" and by_folder.labels_csv == csv_dataset[1]["csv"]
    assert by_file.root == csv_dataset[0] and "labels.csv" in by_file.describe()
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.csv").write_text("image,emotion\n")
    (two / "b.csv").write_text("image,emotion\n")
    with pytest.raises(data.DatasetError, match="holds 2 CSV files .*point data_dir"):
        data.get_dataset(two)
    (tmp_path / "empty").mkdir()
    with pytest.raises(data.DatasetError, match="lacks images, data/legend.csv.*Your own data"):
        data.get_dataset(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(data.DatasetError, match="not a CSV"):
        data.get_dataset(tmp_path / "notes.txt")
    legend = data.get_dataset(synthetic_data_dir / "data" / "legend.csv")  # muxspace's legend: its folder
    assert (legend.layout, legend.root) == ("muxspace", synthetic_data_dir)
    elsewhere = tmp_path / "lists"
    elsewhere.mkdir()
    (elsewhere / "mine.csv").write_text("image,emotion\nimages/a.png,happiness\n../x.png,sadness\n")
    with pytest.raises(data.DatasetError, match=r"None of the 2 images mine.csv lists is in its folder .* "
                                                r"relative to the CSV's folder"):
        data.load_legend(elsewhere / "mine.csv")
    (elsewhere / "semi.csv").write_text("image;emotion\nimages/a.png;happiness\n")
    with pytest.raises(data.DatasetError, match=r"semi.csv separates its columns with semicolons .* with commas"):
        data.load_legend(elsewhere / "semi.csv")
    (elsewhere / "latin.csv").write_bytes("image,emotion\nimages/caf\u00e9.png,happiness\n".encode("latin-1"))
    with pytest.raises(data.DatasetError, match=r"latin.csv is not UTF-8 text .* save it as UTF-8"):
        data.load_legend(elsewhere / "latin.csv")
    (elsewhere / "header.csv").write_text("image,emotion\n")
    with pytest.raises(data.DatasetError, match=r"has a header but no rows: .*\(image,emotion\[,person\]\)"):
        data.load_legend(elsewhere / "header.csv")
    stray = tmp_path / "fer2013_release"  # class folders, and FER2013's CSV of pixels beside them
    shutil.copytree(folder_dataset[0], stray)
    (stray / "fer2013.csv").write_text("emotion,pixels,Usage\n0,1 2 3,Training\n")
    assert data.get_dataset(stray).layout == "folders"
    (stray / "mine.csv").write_text("image;emotion\nhappy/x.png;happiness\n")  # labels, badly saved: read, and
    with pytest.raises(data.DatasetError, match="separates its columns with semicolons"):  # said so
        data.load_legend(data.get_dataset(stray))
    (stray / "mine.csv").write_text("image,emotion\nhappy/x.png,happiness\n")  # one that labels images: the CSV
    assert data.get_dataset(stray).labels_csv == stray / "mine.csv"
    (two / "a.csv").write_text("file,mood\nx.png,happy\n")
    with pytest.raises(data.DatasetError, match=r"a.csv lacks the column\(s\) \['emotion'\]"):
        data.load_legend(two / "a.csv")


def test_unknown_labels_stop_with_counts_and_how_to_map(folder_dataset, csv_dataset):
    with pytest.raises(data.DatasetError) as err:
        data.audit_dataset(folder_dataset[0])
    message = str(err.value)
    assert "'bored' (1)" in message and "label_map = {'bored': None}" in message and "-p label_map" in message
    with pytest.raises(data.DatasetError, match=r"'confused' \(1; row 100\), 'joy' \(1; row 101\)"):
        data.audit_dataset(csv_dataset[1]["csv"])
    with pytest.raises(data.DatasetError, match="not an emotion: 'bored': 'sleepy'"):
        data.audit_dataset(folder_dataset[0], label_map={"bored": "sleepy"})
    assert data.check_label_map({" Joy ": "happy", "x": None}) == {"joy": "happiness", "x": None}


# --------------------------------------------------------------------------------------------------
# The audit and the manifest account for every file and row
# --------------------------------------------------------------------------------------------------


def test_class_folders_audit_manifest_and_split(folder_dataset, tmp_path):
    root, planted = folder_dataset
    dataset = data.get_dataset(root)
    audit = data.audit_dataset(dataset, label_map=FOLDER_LABEL_MAP)
    kinds = audit.findings.groupby("kind").image.agg(set)
    assert kinds["unreadable file"] == set(planted["unreadable"])
    assert kinds["unlisted file"] == set(planted["unlisted"])
    assert kinds["left out by label_map"] == set(planted["left_out"])
    assert "unknown label" not in kinds
    assert len(audit.legend) == planted["labelled"] + 1  # + the bored file
    assert set(audit.legend.source) == {"train", "test"}  # the dataset's own split, kept as the source
    assert (audit.split_by, audit.emotions_absent()) == ("image", ["contempt"])

    work = tmp_path / "work"
    work.mkdir()
    manifest = folders.prepare(dataset, work, label_map=FOLDER_LABEL_MAP)
    counts = json.loads((work / "prepare.json").read_text())
    assert counts["counts"]["manifest_rows"] == len(audit.legend) + 1 == len(manifest)
    assert counts["counts"]["excluded"] == 4  # 2 unreadable, 1 left out, 1 unlisted
    assert counts["split_by"] == "image" and counts["split_method"].startswith("plain stratified split")
    assert counts["emotions_absent"] == ["contempt"] and "contempt" not in counts["emotions_trained"]
    assert counts["label_map"] == {"bored": None}
    reasons = manifest.set_index("image").reason
    assert reasons["train/bored/b1.png"] == "left out by label_map"
    assert reasons["stray.png"] == "unlisted file: not in a class folder, so no label"
    used = manifest[manifest.split.isin(folders.SPLITS)]
    # train/happy/x.png and test/happy/x.png have the same name: both land, under different names
    on_disk = sorted(p.relative_to(work).as_posix() for p in (work / "split").rglob("*") if p.is_file())
    assert on_disk == sorted(used.path) and len(on_disk) == planted["labelled"] - 2
    assert all(not list((work / "split" / s / "contempt").iterdir()) for s in folders.SPLITS)
    assert (used.groupby("emotion").split.apply(set) == {"train", "val", "test"}).all()


def test_csv_audit_manifest_and_person_split(csv_dataset, tmp_path):
    root, planted = csv_dataset
    dataset = data.get_dataset(planted["csv"])
    audit = data.audit_dataset(dataset, label_map=CSV_LABEL_MAP)
    kinds = audit.findings.groupby("kind").image.agg(set)
    for kind, key in [("unreadable file", "unreadable"), ("unlisted file", "unlisted"), ("missing file", "missing"),
                      ("left out by label_map", "left_out"), ("conflicting labels", "conflicting")]:
        assert kinds[kind] == set(planted[key]), kind
    assert audit.legend.set_index("image").emotion["images/joy.png"] == "happiness"  # mapped by label_map
    assert audit.split_by == "person" and audit.emotions_absent() == []

    work = tmp_path / "work"
    work.mkdir()
    manifest = folders.prepare(dataset, work, label_map=CSV_LABEL_MAP, test_size=0.25, val_size=0.25)
    record = json.loads((work / "prepare.json").read_text())
    assert record["counts"]["manifest_rows"] == planted["rows"] + 1 == len(manifest)
    assert record["split_by"] == "person" and record["split_method"].startswith("person-grouped")
    assert record["dataset"]["layout"] == "csv"
    used = manifest[manifest.split.isin(folders.SPLITS)]
    assert (used.groupby("person").split.nunique() == 1).all() and used.person.nunique() == 8
    excluded = manifest[manifest.split == "excluded"]
    assert len(used) + len(excluded) == len(manifest) and (excluded.reason != "").all()
    assert len(excluded) == 1 + 1 + 1 + 1 + 2  # unreadable, missing, left out, unlisted, 2 conflicting rows


def test_muxspace_audit_unchanged_by_label_map(synthetic_dataset):
    """The muxspace layout keeps reading unknown labels as findings; label_map can still leave one out."""
    root, info = synthetic_dataset
    plain = data.audit_dataset(root)
    assert (plain.layout, plain.split_by) == ("muxspace", "person")
    assert set(plain.findings.loc[plain.findings.kind == "unknown label", "image"]) == {"Odd_Label_0001.jpg"}
    mapped = data.audit_dataset(root, label_map={"confused": None})
    assert set(mapped.findings.loc[mapped.findings.kind == "left out by label_map", "image"]) == {"Odd_Label_0001.jpg"}
    assert "Odd_Label_0001.jpg" not in set(mapped.findings.loc[mapped.findings.kind == "unknown label", "image"])


# --------------------------------------------------------------------------------------------------
# Metrics over the emotions the model was trained on; class weights with an empty class
# --------------------------------------------------------------------------------------------------


def test_metrics_average_over_trained_emotions_only():
    contempt = EMOTIONS.index("contempt")
    counts = np.array([10, 0, 5, 5, 30, 40, 5, 5])
    assert evaluation.trained_labels(counts) == [k for k in range(8) if k != contempt]
    assert evaluation.trained_labels(None) == list(range(8))
    rng = np.random.default_rng(0)
    y_true = rng.choice([k for k in range(8) if k != contempt], 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.choice([k for k in range(8) if k != contempt], 200))
    scored = evaluation.trained_labels(counts)
    seven, eight = evaluation.compute_metrics(y_true, y_pred, labels=scored), evaluation.compute_metrics(y_true, y_pred)
    assert seven["macro_f1"] == pytest.approx(eight["macro_f1"] * 8 / 7)  # contempt's F1 of 0 no longer counts
    assert seven["scored_classes"] == [e for e in EMOTIONS if e != "contempt"] and len(eight["scored_classes"]) == 8
    assert seven["accuracy"] == eight["accuracy"] and seven["balanced_accuracy"] == eight["balanced_accuracy"]
    assert evaluation.metric_function("macro_f1", scored)(y_true, y_pred) == pytest.approx(seven["macro_f1"])
    lo, hi = evaluation.bootstrap_ci(y_true, y_pred, "macro_f1", n=50, labels=scored)
    assert lo <= seven["macro_f1"] <= hi
    assert evaluation.majority_baseline(counts, y_true)["macro_f1"] == pytest.approx(
        evaluation.compute_metrics(y_true, np.full(200, 5), labels=scored)["macro_f1"])


def test_class_weights_give_an_empty_class_zero_weight():
    from fer_utils import training

    counts = [10, 0, 5, 100, 0, 50, 3, 7]
    for weights in (training.class_weight_power(counts, 0.5), training.balanced_class_weight(counts)):
        values = np.array([weights[k] for k in range(8)])
        assert np.isfinite(values).all() and values[1] == values[4] == 0 and (values[[0, 2, 3, 5, 6, 7]] > 0).all()


# --------------------------------------------------------------------------------------------------
# The chain on your own data: 01–07, unchanged notebooks, on class folders (about 1 min on 2 cores); 01–02 on a CSV
# --------------------------------------------------------------------------------------------------


def _outputs(work: Path, notebook: str) -> str:
    nb = json.loads(next(p for p in workfolder.run_notebooks(work) if p.stem == notebook).read_text())
    texts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            text = out.get("text") or out.get("data", {}).get("text/plain", "")
            texts.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(texts)


def _check_chain(work: Path, root: Path, last: int = 7) -> dict:
    record = json.loads((work / "run.json").read_text())
    assert record["status"] == "ok" and [n[:2] for n in record["notebooks"]] == [f"0{k}" for k in range(1, last + 1)]
    for path in workfolder.run_notebooks(work):
        text = _outputs(work, path.stem)
        assert str(root) not in text and str(work) not in text, f"{path.name} shows a machine path"
    return {name: json.loads((work / f"{name}.json").read_text()) for name in ("prepare", "metrics", "audit")
            if (work / f"{name}.json").exists()}


def test_chain_on_class_folders(folder_dataset, fake_fer_weights, tmp_path):
    root, planted = folder_dataset
    work = tmp_path / "work"
    assert run_chain(root, work, fake_fer_weights, {"label_map": FOLDER_LABEL_MAP}, until="07") == 0, work
    records = _check_chain(work, root)
    assert records["audit"]["dataset"]["layout"] == "folders" and records["audit"]["emotions_absent"] == ["contempt"]
    assert records["prepare"]["split_by"] == "image"
    counts = records["prepare"]["counts"]
    assert counts["manifest_rows"] == counts["train"] + counts["val"] + counts["test"] + counts["excluded"]
    assert counts["manifest_rows"] == planted["labelled"] + 1 + len(planted["unlisted"])
    metrics = records["metrics"]
    assert metrics["class_names"] == list(EMOTIONS)  # the model keeps its 8 outputs
    assert metrics["scored_classes"] == [e for e in EMOTIONS if e != "contempt"]
    assert metrics["unscored_classes"] == ["contempt"] and metrics["per_class"]["contempt"]["support"] == 0
    assert metrics["n_test"] == counts["test"]
    assert "Not in this dataset (no readable, labelled image): contempt" in _outputs(work, "01_load_dataset")
    assert "plain stratified split by image" in _outputs(work, "02_preprocess_into_folders")
    assert "left out of macro-F1: contempt" in _outputs(work, "06_evaluate_model")
    assert "no test/ folder of unlabelled photos" in _outputs(work, "07_predict_new_photos")
    assert len(list((work / "photos" / "test_sample").iterdir())) == min(12, counts["test"])


def test_chain_on_a_labels_csv(csv_dataset, fake_fer_weights, tmp_path):
    """Notebooks 01-02 on a labels CSV, then what notebook 06 scores on its split (a model built, not trained):
    what differs from class folders is the layout, the person-grouped split and the people the intervals resample.
    Notebooks 03-07 on your own data: the test above (of the data, 03-05 read only the class folders 02 writes)."""
    root, planted = csv_dataset
    work = tmp_path / "work"
    assert run_chain(planted["csv"], work, fake_fer_weights, {"label_map": CSV_LABEL_MAP}, until="02") == 0, work
    records = _check_chain(work, root, last=2)
    assert records["audit"]["dataset"]["layout"] == "csv" and records["audit"]["parameters"]["label_map"] == {
        "confused": None, "Joy": "happiness"}
    assert records["prepare"]["split_by"] == "person" and records["prepare"]["label_map"] == {
        "confused": None, "joy": "happiness"}
    counts = records["prepare"]["counts"]
    assert counts["manifest_rows"] == planted["rows"] + 1 and counts["excluded"] == 6
    assert "person-grouped stratified split" in _outputs(work, "02_preprocess_into_folders")
    assert "Not in this dataset" not in _outputs(work, "01_load_dataset")
    metrics = evaluation.evaluate(models.build("seed_cnn", (48, 48, 1)), work, n_boot=20, write=False).metrics
    assert metrics["scored_classes"] == list(EMOTIONS) and metrics["unscored_classes"] == []
    assert metrics["n_people"] == records["prepare"]["people"]["test"] and metrics["n_test"] == counts["test"]


def test_one_photo_in_two_class_folders_is_a_conflict_not_two_faces(tmp_path):
    """The same bytes filed as happiness and as surprise: as for one image listed with two emotions, none of its
    rows is used, and the audit says why; a byte-identical copy with the same emotion stays (kept together)."""
    root = tmp_path / "mine"
    data.write_synthetic_dataset(root, "folders", n_images=48, seed=4)
    happy = sorted((root / "happiness").iterdir())
    shutil.copy(happy[0], root / "surprise" / "copied_here_too.png")
    shutil.copy(happy[1], root / "happiness" / "same_again.png")
    audit = data.audit_dataset(root)
    conflicts = audit.findings[audit.findings.kind == "conflicting labels"]
    twins = {f"happiness/{happy[0].name}", "surprise/copied_here_too.png"}
    assert set(conflicts.image) == twins
    assert conflicts.detail.str.startswith("labels happiness vs surprise of byte-identical files (").all()
    manifest = folders.build_manifest(audit).set_index("image")
    assert (manifest.loc[sorted(twins), "reason"] == "conflicting labels for the same image").all()
    assert manifest.loc[[f"happiness/{happy[1].name}", "happiness/same_again.png"], "reason"].eq("").all()
