"""Issue 20: ``predict`` never replaces a file it was not told to write, nor writes where it was not asked;
images are decoded only in the formats read here and up to ``data.MAX_PIXELS``; every CSV the project writes
is safe to open in a spreadsheet, and reads back exactly."""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import matplotlib.cbook
import pytest
from PIL import Image

from fer_utils import EMOTIONS, data, folders, import_tensorflow, models, workfolder
from fer_utils import prediction as P
from fer_utils.models import ModelRecord

REPO = Path(__file__).resolve().parent.parent
HOPPER = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
SIZE = 32


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A tiny untrained grayscale CNN and its record (seconds)."""
    _, keras = import_tensorflow()
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv_last")(keras.layers.Rescaling(1 / 255)(inp))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(len(EMOTIONS), activation="softmax")(x), name="tiny")
    path = tmp_path_factory.mktemp("work") / "model.keras"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*__array__ implementation doesn't accept a copy.*")
        models.save(model, path, ModelRecord("tiny", (SIZE, SIZE), "grayscale"))
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    """``photos/face.jpg`` and ``photos/sub/face.jpg``: a user's photos."""
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    face = Image.open(HOPPER).convert("RGB").resize((128, 150))
    face.save(folder / "face.jpg", quality=90)
    face.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "sub" / "face.jpg", quality=90)
    return folder


def snapshot(*folders: Path) -> dict:
    return {p: p.read_bytes() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def predict(capsys, model_path, *args) -> tuple[int, str]:
    code = P.main([*map(str, args), "--model", str(model_path), "--detection", "whole"])
    return code, capsys.readouterr().err


def refused(code: int, err: str, *words: str) -> None:
    """Exit status 2 and one line, starting ``error:``, that says what (and what to do)."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], (word, err)


# ------------------------------------------------------------------------------- outputs of predict


def test_annotate_folder_inside_an_input_folder_is_refused(capsys, model_path, photos):
    before = snapshot(photos)
    refused(*predict(capsys, model_path, photos, "--annotate", photos / "sub"), "--annotate", "inside")
    assert snapshot(photos) == before


def test_annotate_folder_that_is_or_holds_an_input_is_refused(capsys, model_path, photos, tmp_path):
    before = snapshot(photos)
    refused(*predict(capsys, model_path, photos, "--annotate", photos), "--annotate")
    refused(*predict(capsys, model_path, photos / "sub" / "face.jpg", "--annotate", photos), "--annotate")
    refused(*predict(capsys, model_path, photos / "sub", "--annotate", tmp_path), "--annotate", "holds")
    assert snapshot(photos) == before


def test_output_file_that_is_an_input_is_refused(capsys, model_path, photos, tmp_path):
    victim = photos / "face.jpg"
    before = snapshot(photos)
    refused(*predict(capsys, model_path, victim, "-o", victim), "--output")
    link = tmp_path / "link.jpg"  # the same file under another name
    os.link(victim, link)
    refused(*predict(capsys, model_path, victim, "-o", link), "--output")
    os.symlink(victim, tmp_path / "sym.json")
    refused(*predict(capsys, model_path, victim, "-o", tmp_path / "sym.json"), "--output")
    refused(*predict(capsys, model_path, photos, "-o", photos / "sub" / "face.jpg"), "--output")
    refused(*predict(capsys, model_path, photos, "-o", photos / "results.json"), "--output", "inside")
    assert snapshot(photos) == before and link.read_bytes() == victim.read_bytes()


def test_output_file_that_is_the_model_or_its_record_is_refused(capsys, model_path, photos, tmp_path):
    """``-o model.keras`` once replaced the model it read with the JSON results; the record (``model.json``), a
    link to either, and the default model of ``--work-dir`` are refused too."""
    record = model_path.with_suffix(".json")
    before = {p: p.read_bytes() for p in (model_path, record)}
    refused(*predict(capsys, model_path, photos, "-o", model_path), "--output", "the model's file")
    refused(*predict(capsys, model_path, photos, "-o", record), "--output", "the model's file")
    os.symlink(model_path, tmp_path / "results.json")
    refused(*predict(capsys, model_path, photos, "-o", tmp_path / "results.json"), "--output", "the model's file")
    code = P.main([str(photos), "--work-dir", str(model_path.parent), "--detection", "whole", "-o", str(model_path)])
    refused(code, capsys.readouterr().err, "--output", "the model's file")
    metrics = model_path.with_name("metrics.json")  # read beside the model, for its provenance line
    metrics.write_text("{}")
    refused(*predict(capsys, model_path, photos, "-o", metrics), "--output", "the model's file")
    assert metrics.read_text() == "{}"
    metrics.unlink()
    assert {p: p.read_bytes() for p in (model_path, record)} == before


def test_unusable_output_is_refused_before_any_work(capsys, model_path, photos, tmp_path):
    refused(*predict(capsys, model_path, photos, "-o", tmp_path), "--output", "folder")
    refused(*predict(capsys, model_path, photos, "-o", tmp_path / "no" / "such" / "r.json"), "--output")
    (tmp_path / "a_file").write_text("x")
    refused(*predict(capsys, model_path, photos, "--annotate", tmp_path / "a_file"), "--annotate", "not a folder")
    assert (tmp_path / "a_file").read_text() == "x"


def test_read_only_annotate_folder_is_refused(capsys, model_path, photos, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked and mode & os.W_OK
                        else real_access(p, mode, **kw))  # as a user without the right (tests run as root)
    refused(*predict(capsys, model_path, photos, "--annotate", locked), "--annotate", "writ")
    refused(*predict(capsys, model_path, photos, "-o", locked / "r.json"), "--output", "writ")


def test_a_hard_link_of_an_input_in_the_annotate_folder_is_never_written(capsys, model_path, photos, tmp_path):
    out = tmp_path / "annotated"
    out.mkdir()
    os.link(photos / "face.jpg", out / "face.jpg")  # where the copy of face.jpg would go
    before = snapshot(photos)
    refused(*predict(capsys, model_path, photos / "face.jpg", "--annotate", out), "--annotate")
    refused(*predict(capsys, model_path, photos / "face.jpg", "--annotate", out, "--overwrite"), "--annotate")
    assert snapshot(photos) == before


def test_no_copy_lands_outside_the_annotate_folder(capsys, model_path, photos, tmp_path):
    out, elsewhere = tmp_path / "annotated", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)  # photos/sub/face.jpg would land in it
    refused(*predict(capsys, model_path, photos, "--annotate", out), "--annotate", "symbolic link")
    assert not list(elsewhere.iterdir())
    with pytest.raises(ValueError, match="symbolic link"):  # the library refuses it too
        P.write_annotated(P.predict(P.load_model(model_path), [str(photos)], detection="whole"), out, [photos])
    assert not list(elsewhere.iterdir())


def test_existing_copies_are_replaced_only_with_overwrite(capsys, model_path, photos, tmp_path):
    out = tmp_path / "annotated"
    code, err = predict(capsys, model_path, photos, "--annotate", out)
    assert code == 0 and "2 annotated copies" in err
    (out / "face.jpg").write_bytes(b"mine")
    refused(*predict(capsys, model_path, photos, "--annotate", out), "--overwrite", "already")
    assert (out / "face.jpg").read_bytes() == b"mine"
    code, err = predict(capsys, model_path, photos, "--annotate", out, "--overwrite")
    assert code == 0 and "2 annotated copies" in err
    assert Image.open(out / "face.jpg").size == (128, 150) and (out / "sub" / "face.jpg").is_file()


def test_predict_on_the_command_line_refuses_with_one_line(model_path, photos):
    """The issue's case, as a user runs it: exit 2, one line on stderr, the photo unchanged."""
    import subprocess
    import sys

    victim = photos / "face.jpg"
    before = victim.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "fer_utils", "predict", str(victim), "-o", str(victim),
                           "--model", str(model_path)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert victim.read_bytes() == before


# ------------------------------------------------------------------------------- what is decoded


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header says ``width`` x ``height`` (a decompression bomb needs no more to be refused)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    raw = bytearray(buffer.getvalue())
    ihdr = raw[12:29]  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    raw[12:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(raw)


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nnewpath 0 0 moveto showpage\n%%EOF\n"


@pytest.fixture
def hostile(tmp_path) -> dict[str, Path]:
    folder = tmp_path / "hostile"
    folder.mkdir()
    out = {"bomb": folder / "blank.png", "big": folder / "big.png", "eps": folder / "drawing.eps",
           "ico": folder / "icon.ico"}
    out["bomb"].write_bytes(png_claiming(13_000, 13_000))  # 169 megapixels, under Pillow's own limit
    out["big"].write_bytes(png_claiming(8_000, 8_000))  # 64 megapixels
    out["eps"].write_bytes(EPS)
    Image.new("RGB", (32, 32), "gray").save(out["ico"])
    return out


def test_read_image_refuses_too_many_pixels_and_other_formats(hostile):
    for kind in ("bomb", "big"):
        with pytest.raises(P.ImageProblem, match="megapixels") as problem:
            P.read_image(hostile[kind])
        assert problem.value.status == "unreadable"
    for kind in ("eps", "ico"):
        with pytest.raises(P.ImageProblem, match="JPEG, PNG") as problem:
            P.read_image(hostile[kind])
        assert problem.value.status == "not_an_image"
    with pytest.raises(data.ImageRefused):
        data.open_image(hostile["bomb"])
    assert data.MAX_PIXELS <= 50_000_000 and "JPEG" in data.IMAGE_FORMATS and "EPS" not in data.IMAGE_FORMATS


def test_predict_and_demo_say_a_bomb_is_unreadable(model_path, hostile):
    fer = P.load_model(model_path)
    rows = P.to_records(P.predict(fer, [str(p) for p in hostile.values()]))
    assert [r["status"] for r in rows] == ["unreadable", "unreadable", "not_an_image", "not_an_image"]
    assert "megapixels" in rows[0]["message"] and rows[0]["emotion"] is None
    from fer_utils.prediction import demo

    analysis = demo.analyse(fer, hostile["bomb"])
    assert analysis.annotated is None and "unreadable" in analysis.problems[0]
    assert "megapixels" in analysis.problems[0]


def test_the_audit_counts_a_bomb_as_an_unreadable_file(hostile):
    info = data.inspect_image(hostile["bomb"])
    assert "megapixels" in info["error"] and (info["width"], info["height"]) == (13_000, 13_000)
    assert "JPEG, PNG" in data.inspect_image(hostile["eps"])["error"]


# ------------------------------------------------------------------------------- CSV files

FORMULAS = ["=HYPERLINK(\"x\")_0001.jpg", "+1+1_0001.jpg", "-2+3_0001.jpg", "@SUM(1)_0001.jpg",
            "\tTab_0001.jpg", "'Quoted_0001.jpg", "Plain_0001.jpg"]


def cells(text: str) -> list[str]:
    import csv

    return [cell for row in csv.reader(io.StringIO(text)) for cell in row]


def no_formula(text: str) -> None:
    bad = [c for c in cells(text) if c[:1] in ("=", "+", "@", "\t", "\r") or re.match(r"-[^\d.]", c)]
    assert not bad, bad


def test_write_csv_neutralises_text_and_reads_it_back(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"file": FORMULAS, "value": [-1.5, 2, 3, 4, 5, 6, -7]})
    workfolder.write_csv(frame, tmp_path / "t.csv")
    text = (tmp_path / "t.csv").read_text()
    no_formula(text)
    assert "'=HYPERLINK" in text and "-1.5" in text and "-7" in text  # numbers stay numbers
    back = workfolder.read_csv(tmp_path / "t.csv")
    assert back["file"].tolist() == FORMULAS and back["value"].tolist() == frame["value"].tolist()


def test_predict_csv_output_is_safe(capsys, model_path, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in FORMULAS[:4]:
        Image.open(HOPPER).convert("L").resize((40, 40)).save(folder / name, "JPEG")
    out = tmp_path / "r.csv"
    code, _ = predict(capsys, model_path, *sorted(folder.iterdir()), "--format", "csv", "-o", out)
    assert code == 0
    no_formula(out.read_text())
    names = workfolder.read_csv(out)["file"].tolist()
    assert sorted(Path(n).name for n in names) == sorted(FORMULAS[:4])
    assert P.main([str(folder / FORMULAS[0]), "--model", str(model_path), "--format", "csv"]) == 0
    no_formula(capsys.readouterr().out)  # stdout too (files named in the folder start with the folder)


def test_manifest_and_audit_csvs_are_safe_and_map_back_to_their_files(tmp_path):
    from conftest import make_synthetic_dataset

    root = tmp_path / "data"
    make_synthetic_dataset(root, per_person=4)
    rng = __import__("numpy").random.default_rng(0)
    legend = root / "data" / "legend.csv"
    rows = legend.read_text()
    for i, name in enumerate(["=1+2_0001.jpg", "-Minus_0001.jpg", "@At_0001.jpg", "+Plus_0001.jpg"]):
        data.draw_face(EMOTIONS[i], rng).save(root / "images" / name, "JPEG")
        rows += f"lab5,{name},{EMOTIONS[i]}\n"
    data.draw_face("anger", rng).save(root / "images" / "=Unlisted_0001.jpg", "JPEG")
    legend.write_text(rows)
    work = tmp_path / "work"
    work.mkdir()
    audit = data.audit_dataset(root)
    workfolder.write_csv(audit.findings, work / workfolder.AUDIT_FINDINGS)  # as notebook 01 does
    workfolder.write_csv(audit.files, work / workfolder.AUDIT_FILES)
    for name in (workfolder.AUDIT_FINDINGS, workfolder.AUDIT_FILES):
        no_formula((work / name).read_text())
    assert "=Unlisted_0001.jpg" in workfolder.read_csv(work / workfolder.AUDIT_FINDINGS)["image"].tolist()
    folders.prepare(data.open_dataset(root), work, audit=audit)
    no_formula((work / workfolder.MANIFEST).read_text())
    manifest = folders.load_manifest(work).set_index("image")
    for name in ["=1+2_0001.jpg", "-Minus_0001.jpg", "@At_0001.jpg", "+Plus_0001.jpg"]:
        row = manifest.loc[name]
        if row["split"] in workfolder.SPLITS:
            assert (work / row["path"]).is_file()


def test_every_csv_is_written_through_write_csv():
    """``.to_csv(`` only in ``workfolder.write_csv``; the two exceptions hold no text a user chose."""
    allowed = {"fer_utils/workfolder.py": 1,
               "fer_utils/training.py": 1,  # history.csv: epoch numbers and metrics only
               "fer_utils/data.py": 1}  # write_synthetic_dataset's labels: names it makes itself
    found = {}
    for path in [*REPO.glob("fer_utils/**/*.py"), *REPO.glob("notebooks/*.ipynb"), *REPO.glob("benchmarks/*.py"),
                 *REPO.glob("notebooks/solutions/*.py")]:
        n = path.read_text().count(".to_csv(")
        if n:
            found[path.relative_to(REPO).as_posix()] = n
    assert found == allowed
