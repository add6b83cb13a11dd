"""Obtaining, verifying and auditing the dataset (synthetic data with planted faults)."""

import io
import tarfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from fer_utils import EMOTIONS, data, workfolder


def test_audit_finds_every_planted_fault(synthetic_dataset):
    root, info = synthetic_dataset
    audit = data.audit_dataset(root)
    for kind, images in info["planted"].items():
        found = set(audit.findings.loc[audit.findings.kind == kind, "image"])
        assert set(images) <= found, f"{kind}: expected {images}, found {sorted(found)}"
    assert len(audit.legend) == info["legend_rows"]
    assert set(audit.summary().kind) == set(data.FINDING_KINDS)


def test_audit_reports_real_format_of_webp_named_jpg(synthetic_data_dir):
    files = data.scan_images(synthetic_data_dir).set_index("file")
    assert files.loc["Webp_Person_0001.jpg", "format"] == "WEBP"
    assert not files.loc["Webp_Person_0001.jpg", "format_matches_name"]
    assert not files.loc["Broken_Face_0001.jpg", "readable"]
    assert files.loc["Ada_Lovelace_0001.jpg", "format_matches_name"]


@pytest.mark.parametrize("raw, expected", [
    ("HAPPINESS", "happiness"), (" sadness ", "sadness"), ("sad", "sadness"), ("Angry", "anger"),
    ("confused", None), ("", None), (None, None),
])
def test_normalise_label(raw, expected):
    assert data.normalise_label(raw) == expected


@pytest.mark.parametrize("name, person, source", [
    ("George_W_Bush_0001.jpg", "George_W_Bush", "LFW"),
    ("Steve-O_0001.jpg", "Steve-O", "LFW"),
    ("HrithikRoshan_12.jpg", "HrithikRoshan", "IMFDB"),
    ("facial-expressions_2868588k.jpg", "facial-expressions_2868588k", "other"),
    ("IMG1234.png", "IMG1234", "other"),
])
def test_person_and_source(name, person, source):
    assert data.person_and_source(name) == (person, source)


def test_legend_labels_are_normalised_and_rows_numbered(synthetic_data_dir):
    legend = data.load_legend(synthetic_data_dir)
    assert legend.row.iloc[0] == 2  # line 1 is the header
    assert set(legend.emotion.dropna()) <= set(EMOTIONS)
    assert legend.loc[legend.label == "confused", "emotion"].isna().all()


def test_get_dataset_prefers_data_dir_then_env(synthetic_data_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("FER_DATA_DIR", str(synthetic_data_dir))
    ds = data.get_dataset()
    assert ds.origin == "FER_DATA_DIR" and ds.root == synthetic_data_dir
    assert not ds.is_pinned_upstream and "differs from the pinned upstream" in ds.describe()
    assert data.get_dataset(synthetic_data_dir).origin == "data_dir"


def test_bad_data_dir_says_what_to_do(tmp_path):
    with pytest.raises(data.DatasetError, match="lacks images, data/legend.csv"):
        data.get_dataset(tmp_path)
    with pytest.raises(data.DatasetError, match="does not exist"):
        data.get_dataset(tmp_path / "nope")


def test_offline_without_copy_explains_how_to_point_at_one(tmp_path, monkeypatch):
    monkeypatch.delenv("FER_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "ARCHIVE_URL", "http://127.0.0.1:9/archive.tar.gz")
    with pytest.raises(data.DatasetError, match="FER_DATA_DIR") as err:
        data.download_dataset(tmp_path, url=data.ARCHIVE_URL)
    assert "--data-dir" in str(err.value) and "data_dir parameter" in str(err.value)
    assert not list(tmp_path.glob("*.part")), "a partial download was left behind"


def _archive_of(root: Path, path: Path, top: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root, arcname=top)
    return path


def test_download_extracts_verifies_and_caches(synthetic_data_dir, tmp_path, monkeypatch):
    top = f"facial_expressions-{data.UPSTREAM_COMMIT}"
    archive = _archive_of(synthetic_data_dir, tmp_path / "upstream.tar.gz", top)
    monkeypatch.setattr(data, "LEGEND_SHA256", workfolder.sha256_of(synthetic_data_dir / data.LEGEND))
    monkeypatch.delenv("FER_DATA_DIR", raising=False)
    cache = tmp_path / "cache"
    root = data.download_dataset(cache, url=archive.as_uri())
    assert (root / "data" / "legend.csv").exists() and root.name == top
    assert not list(cache.glob(".extract-*")), "temporary extraction folder left behind"
    ds = data.get_dataset(cache_dir=cache, download=False)
    assert ds.origin == "cache" and ds.is_pinned_upstream


def test_download_rejects_archive_that_fails_verification(synthetic_data_dir, tmp_path):
    archive = _archive_of(synthetic_data_dir, tmp_path / "up.tar.gz", "facial_expressions-x")
    with pytest.raises(data.DatasetError, match="fails verification"):
        data.download_dataset(tmp_path / "cache", url=archive.as_uri())
    assert not list((tmp_path / "cache").glob("facial_expressions-*/")), "unverified copy kept"


def test_safe_extract_refuses_paths_outside_target(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        payload = b"gotcha"
        member = tarfile.TarInfo("top/../../escaped.txt")
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(data.DatasetError, match="outside"):
        data.safe_extract(evil, dest)
    assert not (tmp_path / "escaped.txt").exists()


def test_work_dir_inside_dataset_is_refused(synthetic_data_dir):
    with pytest.raises(data.DatasetError, match="never written to"):
        data.check_not_inside(synthetic_data_dir / "work", synthetic_data_dir)


def test_require_names_the_notebook_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="Run notebooks/02_preprocess_into_folders.ipynb first"):
        workfolder.require(tmp_path / "manifest.csv", "02_preprocess_into_folders.ipynb")


def test_display_path_never_shows_absolute_paths(tmp_path):
    assert workfolder.display_path(tmp_path / "a" / "b.csv", tmp_path) == "<work_dir>/a/b.csv"
    assert workfolder.display_path(workfolder.REPO_ROOT / "figures") == "./figures"
    assert not workfolder.display_path("/somewhere/else/x.png").startswith("/")


def test_write_record_is_json_with_machine(tmp_path):
    import numpy as np

    path = workfolder.write_record(tmp_path / "r.json", {"n": np.int64(3), "x": np.float32(0.5), "p": tmp_path})
    record = workfolder.read_record(path)
    assert record["n"] == 3 and record["x"] == 0.5 and record["machine"]["cpu_count"] >= 1


def test_write_synthetic_dataset_layouts_and_determinism(tmp_path):
    from fer_utils.data import write_synthetic_dataset

    a = write_synthetic_dataset(tmp_path / "a", "folders", n_images=40, emotions=EMOTIONS[:5], workers=1)
    b = write_synthetic_dataset(tmp_path / "b", "folders", n_images=40, emotions=EMOTIONS[:5], workers=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 40 and {p.parts[0] for p in files} == set(EMOTIONS[:5])
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert a["counts"] == b["counts"] == {e: 8 for e in EMOTIONS[:5]}
    c = write_synthetic_dataset(tmp_path / "c", "csv", n_images=30, n_people=4, seed=1, image_format="jpeg")
    table = pd.read_csv(c["csv"])
    assert list(table.columns) == ["image", "emotion", "person"] and len(table) == 30
    assert table.person.nunique() == 4 == c["people"]
    assert all((tmp_path / "c" / i).is_file() for i in table.image)
    with Image.open(tmp_path / "c" / table.image[0]) as im:
        assert (im.format, im.size) == ("JPEG", (48, 48))
    with pytest.raises(FileExistsError):
        write_synthetic_dataset(tmp_path / "c", "csv", n_images=3)


def test_a_failing_synthetic_face_stops_the_writers_and_is_raised(tmp_path, monkeypatch):
    """An error in one writer thread reaches the caller, and the faces not yet started are not drawn."""
    from fer_utils import data

    drawn, draw = [], data.draw_face

    def failing(emotion, rng, size, *args, **kwargs):
        drawn.append(emotion)
        if len(drawn) == 25:
            raise OSError("no space left on device")
        return draw(emotion, rng, size, *args, **kwargs)

    monkeypatch.setattr(data, "draw_face", failing)
    with pytest.raises(OSError, match="no space left"):
        data.write_synthetic_dataset(tmp_path / "d", "folders", n_images=2000, workers=3)
    assert 25 <= len(drawn) < 100 and len(list((tmp_path / "d").rglob("*.png"))) < 100
