"""Manifest, person-disjoint split and class folders (the work-folder contract)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from fer_utils import EMOTIONS, data, folders


@pytest.fixture(scope="module")
def audit(synthetic_data_dir):
    return data.audit_dataset(synthetic_data_dir)


def test_manifest_accounts_for_every_row_and_file(prepared_work_dir, audit):
    manifest = folders.load_manifest(prepared_work_dir)
    n_unlisted = int((audit.findings.kind == "unlisted file").sum())
    assert len(manifest) == len(audit.legend) + n_unlisted
    assert {"image", "emotion", "person", "source", "split", "reason", "path"} <= set(manifest.columns)
    assert set(manifest.split) == {"train", "val", "test", "excluded"}
    excluded = manifest[manifest.split == "excluded"]
    assert (excluded.reason.str.len() > 0).all()
    assert set(audit.files.file) <= set(manifest.image)  # every file on disk appears


def test_each_fault_has_its_reason(prepared_work_dir):
    manifest = folders.load_manifest(prepared_work_dir).set_index("image")
    assert manifest.loc["Broken_Face_0001.jpg", "reason"].startswith("file unreadable")
    assert manifest.loc["Ghost_Person_0001.jpg", "reason"] == "file missing from images/"
    assert manifest.loc["Nobody_Listed_0001.jpg", "reason"].startswith("unlisted file")
    assert manifest.loc["Odd_Label_0001.jpg", "reason"] == "unknown label"
    conflicting = folders.load_manifest(prepared_work_dir).query("image == 'Alan_Turing_0004.jpg'")
    assert (conflicting.split == "excluded").all() and len(conflicting) == 2


def test_no_person_in_two_splits_and_copies_stay_together(prepared_work_dir):
    manifest = folders.load_manifest(prepared_work_dir)
    used = manifest[manifest.split.isin(folders.SPLITS)]
    assert (used.groupby("group").split.nunique() == 1).all()
    a, b = (used.set_index("image").loc[n, "split"] for n in ("Alan_Turing_0001.jpg", "Copy_Cat_0001.jpg"))
    assert a == b


def test_all_emotions_in_train(prepared_work_dir):
    manifest = folders.load_manifest(prepared_work_dir)
    assert set(manifest.loc[manifest.split == "train", "emotion"]) == set(EMOTIONS)


def test_folders_match_manifest_and_decode_in_pillow_and_tf(prepared_work_dir):
    manifest = folders.load_manifest(prepared_work_dir)
    used = manifest[manifest.split.isin(folders.SPLITS)]
    on_disk = sorted(str(p.relative_to(prepared_work_dir)) for p in (prepared_work_dir / "split").rglob("*.*"))
    assert on_disk == sorted(used.path)
    for rel in used.path:
        path = prepared_work_dir / rel
        Image.open(path).load()
        tf.io.decode_image(tf.io.read_file(str(path)), expand_animations=False)
    webp = used.set_index("image").loc["Webp_Person_0001.jpg", "path"]
    assert webp.endswith(".png") and Image.open(prepared_work_dir / webp).format == "PNG"


def test_record_has_parameters_counts_and_timings(prepared_work_dir):
    record = json.loads((prepared_work_dir / "prepare.json").read_text())
    assert record["parameters"]["seed"] == 42
    assert record["counts"]["manifest_rows"] == sum(record["counts"][s] for s in ("train", "val", "test", "excluded"))
    assert record["timings"]["total_s"] > 0 and "cpu_count" in record["machine"]


def test_split_is_reproducible_and_seed_dependent(audit):
    base = folders.build_manifest(audit)
    a = folders.split_by_person(base, 0.25, 0.25, seed=1).split
    b = folders.split_by_person(base, 0.25, 0.25, seed=1).split
    c = folders.split_by_person(base, 0.25, 0.25, seed=7).split
    assert a.equals(b)
    assert not a.equals(c)


def test_rerun_with_other_parameters_leaves_no_stale_files(synthetic_data_dir, tmp_path):
    ds = data.get_dataset(synthetic_data_dir)
    first = folders.prepare(ds, tmp_path, seed=1, test_size=0.25, val_size=0.25)
    stale = tmp_path / "split" / "train" / "anger" / "stale_from_elsewhere.jpg"
    stale.write_bytes(b"x")
    second = folders.prepare(ds, tmp_path, seed=2, test_size=0.25, val_size=0.25, max_per_class=3)
    files = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "split").rglob("*.*"))
    assert files == sorted(second.loc[second.split.isin(folders.SPLITS), "path"])
    assert not stale.exists()
    assert len(files) < (first.split.isin(folders.SPLITS)).sum()
    assert not list(tmp_path.glob(".split-*")), "temporary folders left behind"


def test_max_per_class_caps_with_reason(audit):
    capped = folders.cap_per_class(folders.build_manifest(audit), 2, seed=0)
    usable = capped[capped.split == ""]
    assert usable.groupby("emotion").size().max() == 2
    assert capped.reason.str.contains("max_per_class=2").any()


@pytest.mark.parametrize("test_size, val_size", [(0.2, 0.1), (0.3, 0.3), (0.4, 0.2), (0.1, 0.6)])
def test_fold_shares_are_the_shares_the_split_takes(test_size, val_size):
    """``run`` warns with ``fold_shares`` when a share is rounded to whole folds: it must be what the split does."""
    rows = pd.DataFrame({"image": [f"{i}.jpg" for i in range(2400)], "emotion": np.array(EMOTIONS[:4])[
        np.arange(2400) % 4], "group": [f"p{i // 2}" for i in range(2400)], "split": "", "reason": ""})
    split = folders.split_by_person(rows, test_size, val_size, seed=0).split.value_counts(normalize=True)
    test, val = folders.fold_shares(test_size, val_size)
    assert split["test"] == pytest.approx(test, abs=0.01) and split["val"] == pytest.approx(val, abs=0.01)


def test_random_split_overlap_counts_shared_people():
    manifest = pd.DataFrame({"image": [f"p{i % 5}_{i}.jpg" for i in range(100)],
                             "emotion": np.array(EMOTIONS[:2])[np.arange(100) % 2],
                             "group": [f"p{i % 5}" for i in range(100)], "split": "train"})
    overlap = folders.random_split_overlap(manifest, test_size=0.2, seed=0)
    assert overlap["people_in_both"] == 5 and overlap["test_faces"] == 20


def test_a_tiny_dataset_splits_or_says_why_it_cannot(tmp_path):
    """5 emotions with 2 faces each: the split and the random-split comparison work (scikit-learn refused to stratify
    2 test faces over 5 emotions); 1 face each leaves val and test empty, which writing the folders refuses, naming
    what to do, before any file is written; the table still shows every split."""
    rows = [{"image": f"{e}{i}.jpg", "emotion": e, "group": f"{e}{i}", "split": "", "reason": ""}
            for e in EMOTIONS[:5] for i in range(2)]
    manifest = folders.split_by_person(pd.DataFrame(rows), seed=0)
    assert set(manifest.split) == set(folders.SPLITS)
    assert folders.random_split_overlap(manifest, test_size=0.2, seed=0)["test_faces"] == 2
    one_each = folders.split_by_person(pd.DataFrame(rows[::2]), seed=0)
    empty = [s for s in folders.SPLITS if not (one_each.split == s).any()]
    assert empty and list(folders.split_table(one_each).columns[:3]) == list(folders.SPLITS)
    with pytest.raises(ValueError, match=f"left {' and '.join(empty)} without faces: 5 usable faces of 5 people.*"
                                         "larger max_per_class"):
        folders.write_split_folders(one_each, tmp_path / "data", tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_too_few_people_is_a_clear_error(audit):
    manifest = folders.build_manifest(audit)
    manifest.loc[manifest.split == "", "group"] = "one_person"
    with pytest.raises(ValueError, match="at least 3"):
        folders.split_by_person(manifest)


def test_check_manifest_catches_a_lost_row(prepared_work_dir, audit):
    manifest = folders.load_manifest(prepared_work_dir)
    with pytest.raises(folders.ManifestError, match="legend rows"):
        folders.check_manifest(manifest.iloc[1:], audit)


def test_load_manifest_names_notebook_02_when_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="02_preprocess_into_folders"):
        folders.load_manifest(tmp_path)


def test_tricky_names_and_sideways_photos_keep_every_image_upright(tmp_path):
    """Class folders with names that would collide once flattened (``a/b.png`` and ``a__b.png``; ``c.jpg`` and
    ``c.png``), a path too long to flatten into one file name, and a photo stored sideways with an EXIF
    orientation (which ``tf.io.decode_image`` ignores): every image gets a file of its own, and the sideways one
    is written upright, as ``predict`` reads it."""
    root = tmp_path / "faces"
    data.write_synthetic_dataset(root, "folders", n_images=160, seed=3)
    happy = root / "happiness"
    rng = np.random.default_rng(0)
    tricky = {"happiness/a/b.png": 0, "happiness/a__b.png": 1, "happiness/c.jpg": 2, "happiness/c.png": 3,
              "happiness/" + "x" * 120 + "/" + "y" * 120 + "/z.png": 4}
    for image, n in tricky.items():
        (root / image).parent.mkdir(parents=True, exist_ok=True)
        face = data.draw_face("happiness", rng, 48).convert("L")
        face.putpixel((0, 0), n * 40)  # each one different
        face.save(root / image, "JPEG" if image.endswith(".jpg") else "PNG")
    wide = Image.new("L", (60, 40), 0)
    wide.paste(255, (0, 0, 30, 40))  # left half white: stored this way, shown turned by 90 degrees
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    wide.save(happy / "sideways.jpg", "JPEG", exif=exif.tobytes(), quality=95)
    upright = np.asarray(data.to_8bit(Image.open(happy / "sideways.jpg")).convert("L"))
    assert upright.shape == (60, 40)

    work = tmp_path / "work"
    manifest = folders.prepare(data.get_dataset(root), work, seed=42, test_size=0.25, val_size=0.25)
    rows = manifest.set_index("image").loc[[*tricky, "happiness/sideways.jpg"]]
    assert rows.path.ne("").all() and rows.path.is_unique, rows.path
    for path in rows.path:
        assert (work / path).is_file() and len(Path(path).name.encode()) <= folders.MAX_NAME_BYTES
    assert manifest[manifest.path != ""].path.is_unique  # no two images share a file
    assert Path(rows.path["happiness/a/b.png"]).name != Path(rows.path["happiness/a__b.png"]).name
    ordinary = manifest[manifest.image.str.startswith("anger/") & (manifest.path != "")].iloc[0]
    assert Path(ordinary.path).name == folders.flat_name(ordinary.image)  # an ordinary name stays flat_name's
    sideways = work / rows.path["happiness/sideways.jpg"]
    assert sideways.suffix == ".png"  # re-encoded upright
    decoded = tf.io.decode_image(sideways.read_bytes(), channels=1).numpy()[..., 0]
    assert decoded.shape == (60, 40) and np.abs(decoded.astype(int) - upright).mean() < 1
