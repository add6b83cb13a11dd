"""Prediction on new photos: reading bad files, detection modes, batching, CLI, provenance, annotation, Grad-CAM,
export. (Awkward files of every kind: ``test_prediction_files.py``.)

A tiny untrained model honouring the contract is built here (seconds); the real face comes from the
Grace Hopper portrait that matplotlib ships (``mpl-data/sample_data``), so Haar detection is exercised
on a real photo without the dataset.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fer_utils import EMOTIONS, import_tensorflow, models
from fer_utils import prediction as P
from fer_utils.models import ModelRecord
from fer_utils.prediction import annotation, gradcam
from fer_utils.workfolder import sha256_of

REPO = Path(__file__).resolve().parent.parent
HOPPER = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
SIZE = 32


def _tiny_model(keras, channels: int, sequential: bool = False, dtype: str = "float32"):
    """``dtype="mixed_bfloat16"``: what training uses on CPUs with bf16 (the output stays float32)."""
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Rescaling(1 / 127.5, offset=-1),  # [-1, 1] inside, like some later models
              keras.layers.Conv2D(4, 3, activation="relu", name="conv_a", dtype=dtype),
              keras.layers.Conv2D(6, 3, activation="relu", name="conv_last", dtype=dtype),
              keras.layers.GlobalAveragePooling2D(dtype=dtype),
              keras.layers.Dense(len(EMOTIONS), activation="softmax", dtype="float32")]
    if sequential:
        return keras.Sequential([keras.Input((SIZE, SIZE, channels)), *layers], name="tiny_seq")
    inp = keras.Input((SIZE, SIZE, channels))
    x = inp
    for layer in layers:
        x = layer(x)
    return keras.Model(inp, x, name="tiny")


def _record(color_mode: str = "grayscale", size=(SIZE, SIZE), **kwargs) -> ModelRecord:
    return ModelRecord("tiny", size, color_mode, **kwargs)


def _save(model, folder: Path, color_mode: str, record: bool = True) -> Path:
    """``model.keras`` (+ its ``model.json`` with the file's sha256, via ``models.save``) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.keras"
    with warnings.catch_warnings():  # Keras 3.15 + NumPy 2 warn inside model.save; not ours to fix
        warnings.filterwarnings("ignore", message=".*__array__ implementation doesn't accept a copy.*")
        if record:
            models.save(model, path, ModelRecord(model.name, (SIZE, SIZE), color_mode))
        else:
            model.save(path)
    return path


@pytest.fixture(scope="module")
def keras():
    return import_tensorflow()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, keras) -> Path:
    """A work folder holding a tiny grayscale model.keras + model.json."""
    work = tmp_path_factory.mktemp("work")
    _save(_tiny_model(keras, 1), work, "grayscale")
    return work


@pytest.fixture(scope="module")
def fer(model_dir):
    return P.load_model(model_dir / "model.keras")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Good and bad inputs, one of each kind."""
    d = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    hopper = Image.open(HOPPER).convert("RGB")
    files = {"face": d / "hopper.jpg"}
    hopper.save(files["face"], quality=90)
    files["corrupt"] = d / "corrupt.jpg"
    files["corrupt"].write_bytes(files["face"].read_bytes()[:400])
    files["text"] = d / "notes.jpg"
    files["text"].write_text("not an image at all\n")
    files["empty"] = d / "empty.png"
    files["empty"].write_bytes(b"")
    rgba = np.zeros((60, 80, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[20:40, 20:60, 3] = 255  # a red rectangle on a transparent background
    files["alpha"] = d / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(files["alpha"])
    files["rgb"] = d / "noise_rgb.webp"
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(files["rgb"])
    files["gray"] = d / "noise_gray.bmp"
    Image.fromarray(rng.integers(0, 255, (45, 40), dtype=np.uint8)).save(files["gray"])
    files["blank"] = d / "blank.png"
    Image.new("L", (200, 150), 128).save(files["blank"])
    files["gif"] = d / "palette.gif"
    Image.new("RGB", (30, 30), (10, 120, 240)).convert("P").save(files["gif"])
    return files


# ---------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("kind, status", [("corrupt", "unreadable"), ("text", "not_an_image"),
                                          ("empty", "not_an_image")])
def test_read_image_bad_files(photos, kind, status):
    with pytest.raises(P.ImageProblem) as err:
        P.read_image(photos[kind])
    assert err.value.status == status


def test_read_image_modes(photos, tmp_path):
    alpha = P.read_image(photos["alpha"])
    assert alpha.mode == "RGB" and alpha.getpixel((0, 0)) == (255, 255, 255)  # transparent → white
    assert alpha.getpixel((30, 30)) == (200, 0, 0)
    assert P.read_image(photos["gray"]).mode == "L"
    assert P.read_image(photos["rgb"]).mode == "RGB"
    assert P.read_image(photos["gif"]).mode == "RGB"
    with pytest.raises(P.ImageProblem) as err:
        P.read_image(tmp_path / "missing.jpg")
    assert err.value.status == "not_found"


def test_read_image_applies_exif_orientation(tmp_path):
    im = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    im.save(tmp_path / "rotated.jpg", exif=exif)
    assert P.read_image(tmp_path / "rotated.jpg").size == (20, 40)


@pytest.mark.parametrize("channels", [1, 3])
def test_prediction_sees_the_pixels_training_decodes(tmp_path, channels):
    """For every kind of file, the face ``predict`` classifies has the pixels training decodes from the file's
    copy in the class folders (``copy_or_reencode``, then ``tf.io.decode_image``), to the level: TensorFlow's
    JPEG decoder is not Pillow's, and its gray is not Pillow's ``convert("L")``."""
    from fer_utils.folders import copy_or_reencode

    tf, _ = import_tensorflow()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:64]
    colour = np.stack([x * 4, y * 5, (x + y) * 2], -1) + rng.integers(0, 40, (48, 64, 3))
    colour = np.clip(colour, 0, 255).astype(np.uint8)
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.mkdir(), dest.mkdir()
    Image.fromarray(colour).save(src / "colour.jpg", quality=90)
    Image.fromarray(colour).convert("L").save(src / "gray.jpg", quality=90)
    Image.fromarray(colour).save(src / "colour.png")
    Image.fromarray(colour).convert("L").save(src / "gray.png")
    Image.fromarray(colour).convert("RGBA").save(src / "alpha.png")
    Image.fromarray(colour).convert("CMYK").save(src / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(colour).save(src / "rotated.jpg", exif=exif)
    Image.fromarray(colour).convert("P").save(src / "palette.png")
    Image.fromarray(colour).convert("LA").save(src / "gray_alpha.png")
    Image.fromarray(colour[..., 0].astype(np.uint16) * 257).save(src / "gray16.png")
    Image.fromarray(colour).save(src / "colour_key.png", transparency=tuple(int(v) for v in colour[0, 0]))
    (src / "rotated_after_pixels.png").write_bytes(_png_with_exif_at_the_end(colour, exif))
    for f in sorted(src.iterdir()):
        with Image.open(f) as im:
            fmt, mode = im.format, im.mode
        copy = copy_or_reencode(f, dest, fmt, mode)
        trained = tf.io.decode_image(copy.read_bytes(), channels=channels, expand_animations=False).numpy()
        served = P.face_pixels(P.as_trained(f, channels), channels)
        np.testing.assert_array_equal(served, trained, err_msg=f.name)
    # the case that made it matter: Pillow decodes the colour JPEG to other pixels than TensorFlow
    pillow = np.asarray(P.read_image(src / "colour.jpg"))
    tensorflow = tf.io.decode_image((src / "colour.jpg").read_bytes(), channels=3).numpy()
    assert np.abs(pillow.astype(int) - tensorflow).max() > 0


def _png_with_exif_at_the_end(pixels: np.ndarray, exif: Image.Exif) -> bytes:
    """A PNG whose eXIf chunk follows the pixels (allowed; Pillow finds it only after reading them)."""
    import io
    import struct
    import zlib

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    png, data = buffer.getvalue(), exif.tobytes().removeprefix(b"Exif\x00\x00")
    chunk = struct.pack(">I", len(data)) + b"eXIf" + data + struct.pack(">I", zlib.crc32(b"eXIf" + data))
    end = png.rindex(b"IEND") - 4
    return png[:end] + chunk + png[end:]


def test_predict_classifies_the_pixels_training_decodes(fer, tmp_path):
    """``predict`` crops its faces from ``as_trained``'s pixels: on a colour JPEG its probabilities are the
    model's on TensorFlow's decoding of the file, not on Pillow's."""
    tf, _ = import_tensorflow()
    y, x = np.mgrid[0:60, 0:60]
    colour = np.stack([x * 4, y * 4, 255 - (x + y) * 2], -1) + np.random.default_rng(2).integers(0, 60, (60, 60, 3))
    path = tmp_path / "face.jpg"
    Image.fromarray(np.clip(colour, 0, 255).astype(np.uint8)).save(path, quality=85)
    got = P.predict(fer, path, detection="whole").probabilities[0]
    got = np.array([got[e] for e in fer.record.class_names])
    trained = tf.io.decode_image(path.read_bytes(), channels=fer.record.channels).numpy()
    expected = fer(P.preprocess_faces([trained], fer))[0]
    np.testing.assert_allclose(got, expected, atol=1e-6)
    pillow = fer(P.preprocess_faces([P.read_image(path)], fer))[0]
    assert np.abs(pillow - expected).max() > 1e-6  # Pillow's pixels give other probabilities


def test_gray_as_trained_is_tensorflows_gray():
    tf, _ = import_tensorflow()
    rgb = np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    expected = tf.io.decode_png(tf.io.encode_png(rgb), channels=1).numpy()[..., 0]
    np.testing.assert_array_equal(P.gray_as_trained(rgb), expected)
    assert not np.array_equal(np.asarray(Image.fromarray(rgb).convert("L")), expected)  # Pillow rounds


# -------------------------------------------------------------------------------------- model loading


def test_load_model_reads_record(fer):
    assert isinstance(fer.record, ModelRecord) and fer.preprocessing is fer.record  # the old name still works
    assert fer.record.image_size == (SIZE, SIZE)
    assert fer.record.color_mode == "grayscale"
    assert fer.record.source == "model.json"
    assert fer.record.model_sha256 == sha256_of(fer.path)


def test_load_model_errors_name_the_fix(tmp_path):
    with pytest.raises(P.ModelLoadError, match="05_train_model"):
        P.load_model(tmp_path / "model.keras")
    (tmp_path / "model.h5").write_bytes(b"\x89HDF")
    with pytest.raises(P.ModelLoadError, match="not a Keras 3 .keras file"):
        P.load_model(tmp_path / "model.h5")
    (tmp_path / "fake.keras").write_text("not a zip")
    with pytest.raises(P.ModelLoadError, match="not a Keras 3 .keras file"):
        P.load_model(tmp_path / "fake.keras")


def test_load_model_without_record_and_with_wrong_record(tmp_path, keras):
    path = _save(_tiny_model(keras, 3), tmp_path / "rgb", "rgb", record=False)
    loaded = P.load_model(path)
    assert (loaded.record.color_mode, loaded.record.source) == ("rgb", "model input shape")
    (tmp_path / "rgb" / "model.json").write_text(json.dumps({"model": "tiny", "image_size": [SIZE, SIZE],
                                                             "color_mode": "grayscale"}))
    with pytest.raises(P.ModelLoadError, match="does not belong"):
        P.load_model(path)
    (tmp_path / "rgb" / "model.json").write_text(json.dumps({"model": "tiny", "image_size": [SIZE, SIZE],
                                                             "color_mode": "rgb", "tta": "sideways"}))
    with pytest.raises(P.ModelLoadError, match="tta"):
        P.load_model(path)


def test_default_model_path_uses_work_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FER_WORK_DIR", str(tmp_path))
    assert P.default_model_path() == tmp_path.resolve() / "model.keras"


# ------------------------------------------------------------------------------------ preprocessing


@pytest.mark.parametrize("color_mode, channels", [("grayscale", 1), ("rgb", 3)])
def test_preprocess_shapes_for_any_input_mode(photos, color_mode, channels):
    prep = _record(color_mode, (SIZE, SIZE + 8))
    faces = [P.read_image(photos["gray"]), P.read_image(photos["rgb"]), P.read_image(photos["alpha"])]
    batch = P.preprocess_faces(faces, prep)
    assert batch.shape == (3, SIZE, SIZE + 8, channels) and batch.dtype == np.float32
    assert 0 <= batch.min() and batch.max() <= 255 and batch.max() > 1  # raw pixels: the model rescales


def test_preprocess_matches_training_resize(photos):
    tf, _ = import_tensorflow()
    im = P.read_image(photos["gray"])
    expected = tf.image.resize(np.asarray(im, np.float32)[..., None], (SIZE, SIZE), method="bilinear").numpy()
    got = P.preprocess_faces([im], _record())[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_preprocess_uses_the_records_interpolation(photos, fer):
    tf, _ = import_tensorflow()
    im = P.read_image(photos["gray"])
    expected = tf.image.resize(np.asarray(im, np.float32)[..., None], (SIZE, SIZE), method="area").numpy()
    got = P.preprocess_faces([im], _record(interpolation="area"))[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert not np.allclose(got, P.preprocess_faces([im], fer)[0], atol=1e-2)  # a LoadedModel works too


def test_crop_box_margin_and_clipping():
    assert P.crop_box([10, 10, 100, 100], (300, 300), margin=0.1) == (0, 0, 120, 120)
    assert P.crop_box([200, 150, 100, 100], (300, 240), margin=0.2) == (180, 130, 300, 240)


# ------------------------------------------------------------------------------------------ predict


def test_whole_batch_with_bad_inputs_never_crashes(fer, photos, tmp_path):
    inputs = [photos[k] for k in ("face", "corrupt", "text", "empty", "alpha", "rgb", "gray", "blank", "gif")]
    inputs.append(tmp_path / "missing.jpg")
    results = P.predict(fer, inputs)
    by_file = results.groupby("file")["status"].first()
    expected = {"face": "ok", "corrupt": "unreadable", "text": "not_an_image", "empty": "not_an_image",
                "alpha": "whole_image_fallback", "rgb": "whole_image_fallback", "gray": "whole_image_fallback",
                "blank": "whole_image_fallback", "gif": "whole_image_fallback"}
    for kind, status in expected.items():
        assert by_file[str(photos[kind])] == status, kind
    assert by_file[str(tmp_path / "missing.jpg")] == "not_found"
    assert list(results.file.unique()) == [str(p) for p in inputs]  # order kept, paths as given
    assert set(results.status) <= set(P.STATUSES)
    ok = results[results.status.isin(P.PREDICTED)]
    probs = np.array([[p[e] for e in EMOTIONS] for p in ok.probabilities])
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert (ok.emotion == [EMOTIONS[i] for i in probs.argmax(axis=1)]).all()
    assert np.allclose(ok.confidence, probs.max(axis=1))
    bad = results[~results.status.isin(P.PREDICTED)]
    assert bad.emotion.isna().all() and bad.box.isna().all() and bad.message.notna().all()


@pytest.mark.parametrize("detector", ["haar", "mtcnn"])
def test_detection_finds_a_real_face(fer, detector):
    results = P.predict(fer, HOPPER, detection="detect", detector=detector)
    assert len(results) == 1 and results.status[0] == "ok" and results.detection[0] == detector
    x, y, w, h = results.box[0]
    assert 100 < x < 250 and 50 < y < 200 and 150 < w < 350 and w == h  # the face, not the whole portrait


def test_several_faces_left_to_right_in_one_model_call(fer, tmp_path):
    hopper = Image.open(HOPPER).convert("RGB")
    group = Image.new("RGB", (hopper.width * 3, hopper.height), "white")
    for i in range(3):
        group.paste(hopper, (i * hopper.width, 0))
    group.save(tmp_path / "group.jpg")
    calls = []
    counting = P.LoadedModel(lambda x, training=False: calls.append(len(x)) or fer.model(x, training=False),
                             fer.preprocessing)
    results = P.predict(counting, tmp_path / "group.jpg", detection="detect")
    assert list(results.face) == [0, 1, 2] and (results.status == "ok").all()
    xs = [b[0] for b in results.box]
    assert xs == sorted(xs) and xs[1] - xs[0] > hopper.width * 0.8
    assert calls == [3]  # all faces in one call
    # the probabilities are the model's on the same crops
    im = P.read_image(tmp_path / "group.jpg")
    crops = [im.crop(P.crop_box(b, im.size)) for b in results.box]
    expected = fer.model.predict(P.preprocess_faces(crops, fer.preprocessing), verbose=0)
    got = np.array([[p[e] for e in EMOTIONS] for p in results.probabilities])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_batches_are_bounded(fer, photos):
    calls = []
    counting = P.LoadedModel(lambda x, training=False: calls.append(len(x)) or fer.model(x, training=False),
                             fer.preprocessing)
    inputs = [photos[k] for k in ("rgb", "gray", "blank", "gif", "alpha")]
    assert len(P.predict(counting, inputs, detection="whole", batch_size=2)) == 5
    assert calls == [2, 2, 1]


@pytest.mark.parametrize("mode, status, detection", [("detect", "no_face", None),
                                                     ("auto", "whole_image_fallback", "whole"),
                                                     ("whole", "ok", "whole")])
def test_detection_modes_on_a_faceless_image(fer, photos, mode, status, detection):
    row = P.predict(fer, photos["blank"], detection=mode).iloc[0]
    assert row.status == status and row.detection == detection
    if status == "no_face":
        assert row.box is None and row.emotion is None
    else:
        assert row.box == [0, 0, 200, 150] and row.emotion in EMOTIONS


def test_rgb_model_on_grayscale_photo(tmp_path, keras, photos):
    loaded = P.load_model(_save(_tiny_model(keras, 3), tmp_path, "rgb"))
    results = P.predict(loaded, [photos["gray"], photos["rgb"]], detection="whole")
    assert (results.status == "ok").all()


def test_folders_are_walked(fer, photos):
    results = P.predict(fer, photos["face"].parent, detection="whole")
    files = set(results.file)
    assert str(photos["face"]) in files and str(photos["text"]) in files  # .jpg suffix: walked, flagged
    assert all(f.startswith(str(photos["face"].parent)) for f in files)


def test_a_folders_other_files_links_and_loops_are_said_not_dropped(model_dir, photos, tmp_path, capsys,
                                                                  unlistable):
    """In a named folder: JPEG's rarer names (.jfif, .jpe) are read; a link to another folder is followed (and a
    link back up walked once); every other file, and a folder that cannot be read, is listed on stderr. A hidden
    file is left out without a word."""
    top, elsewhere = tmp_path / "mine", tmp_path / "elsewhere"
    top.mkdir()
    elsewhere.mkdir()
    face = photos["face"].read_bytes()
    (top / "a.jfif").write_bytes(face)
    (top / "b.jpe").write_bytes(face)
    (top / "notes.txt").write_text("shopping list")
    (top / "IMG_0001.HEIC").write_bytes(b"not read here")
    (top / ".DS_Store").write_bytes(b"")
    (elsewhere / "c.png").write_bytes(photos["blank"].read_bytes())
    os.symlink(elsewhere, top / "more")
    os.symlink(top, top / "loop")  # a link back up: walked once, no endless walk
    items = P.collect_inputs([top], skipped=(said := []))
    assert sorted(Path(i).name for i in items) == ["a.jfif", "b.jpe", "c.png"]
    assert sorted(Path(name).name for name, _ in said) == ["IMG_0001.HEIC", "loop", "notes.txt"]
    code = P.main([str(top), "--model", str(model_dir / "model.keras"), "--detection", "whole"])
    out, err = capsys.readouterr()
    assert code == 0 and {o["status"] for o in json.loads(out)} <= set(P.PREDICTED) and len(json.loads(out)) == 3
    assert "3 entries in the folders were not read (a file named itself on the command line is read" in err
    assert f"{top / 'notes.txt'}: not a photo by its name (.txt;" in err and "IMG_0001.HEIC: not a photo" in err
    assert f"{top / 'loop'}: the same folder as {top}, walked once" in err and ".DS_Store" not in err
    locked = unlistable(top / "locked")  # a folder that cannot be listed
    P.collect_inputs([top], skipped=(said := []))
    assert (str(locked), "a folder that cannot be read (Permission denied)") in said


# ---------------------------------------------------------------------------------------------- CLI


def _cli_inputs(photos):
    return [str(photos[k]) for k in ("face", "corrupt", "text", "blank")]


def test_cli_json(model_dir, photos, capsys):
    assert P.main([*_cli_inputs(photos), "--model", str(model_dir / "model.keras")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["file"] for o in out] == _cli_inputs(photos)
    assert [o["status"] for o in out] == ["ok", "unreadable", "not_an_image", "whole_image_fallback"]
    for o in out:
        assert {"file", "status", "box", "probabilities", "emotion", "face", "confidence"} <= set(o)
    assert set(out[0]["probabilities"]) == set(EMOTIONS) and out[0]["emotion"] in EMOTIONS
    assert out[1]["box"] is None and out[1]["probabilities"] is None


def test_cli_csv(model_dir, photos, capsys, tmp_path):
    out_file = tmp_path / "results.csv"
    assert P.main([*_cli_inputs(photos), "--model", str(model_dir / "model.keras"), "--format", "csv",
                   "-o", str(out_file)]) == 0
    table = pd.read_csv(out_file)
    assert list(table.columns[:10]) == ["file", "face", "status", "detection", "x", "y", "w", "h", "emotion",
                                        "confidence"]
    assert set(EMOTIONS) <= set(table.columns)
    assert table.loc[0, ["x", "y", "w", "h"]].notna().all() and table.loc[1, ["x", "anger"]].isna().all()
    np.testing.assert_allclose(table.loc[[0, 3], list(EMOTIONS)].sum(axis=1), 1, atol=1e-3)


def test_cli_missing_model_and_nothing_predicted(tmp_path, photos, capsys):
    assert P.main([str(photos["face"]), "--model", str(tmp_path / "nope.keras")]) == 2
    assert "05_train_model" in capsys.readouterr().err


def test_cli_annotate_writes_copies_and_refuses_input_folder(model_dir, photos, tmp_path, capsys, monkeypatch):
    model = ["--model", str(model_dir / "model.keras")]
    before = {p: p.read_bytes() for p in photos.values()}
    assert P.main([str(photos["face"].parent), *model, "--annotate", str(photos["face"].parent)]) == 2
    assert "Refusing" in capsys.readouterr().err
    out = tmp_path / "annotated"
    monkeypatch.setattr(annotation, "COPY_MODE", 0o640)  # as a umask of 027 gives (mkstemp's own is 0600)
    assert P.main([*_cli_inputs(photos), *model, "--annotate", str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["blank.png", "hopper.jpg"]  # unreadable inputs get no copy
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o640}  # as any file the user saves
    annotated = Image.open(out / "hopper.jpg")
    assert annotated.size == Image.open(photos["face"]).size
    assert not np.array_equal(np.asarray(annotated), np.asarray(Image.open(photos["face"])))
    assert {p: p.read_bytes() for p in photos.values()} == before  # inputs untouched
    # --output where an annotated copy would go (with or without --overwrite): refused before any work
    # (HOPPER.JPG: the same file on a case-insensitive disk, as macOS and Windows have: refused as well)
    copy = out / "hopper.jpg"
    for results, extra in ((copy, []), (copy, ["--overwrite"]), (out / "HOPPER.JPG", [])):
        kept = copy.read_bytes()
        assert P.main([str(photos["face"]), *model, "--annotate", str(out), "-o", str(results), *extra]) == 2
        err = capsys.readouterr().err
        assert f"--output {results} is where the annotated copy of {photos['face']} would go" in err, err
        assert copy.read_bytes() == kept


def test_cli_as_a_module_subprocess(model_dir, photos):
    env = {**os.environ, "FER_WORK_DIR": str(model_dir)}  # default --model: <work_dir>/model.keras
    proc = subprocess.run([sys.executable, "-m", "fer_utils", "predict", str(photos["face"]), str(photos["text"])],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # stdout holds the JSON only
    assert [o["status"] for o in out] == ["ok", "not_an_image"]
    assert "2 inputs" in proc.stderr
    model = (model_dir / "model.keras").resolve()  # outside the current folder: its full path, never <work_dir>
    assert f"Model: {model} (tiny, 32×32 grayscale, trained: no, sha256 " in proc.stderr


# --------------------------------------------------------------------------------------- provenance

MODEL_LINE = re.compile(r"^Model: (?P<path>\S+) \(tiny, 32×32 grayscale, trained: no, sha256 (?P<sha>[0-9a-f]{12})\)$",
                        re.MULTILINE)


@pytest.fixture
def model_copy(model_dir, tmp_path) -> Path:
    """A copy of the tiny model and its record, free to be tampered with."""
    for name in ("model.keras", "model.json"):
        shutil.copy(model_dir / name, tmp_path / name)
    return tmp_path / "model.keras"


def test_model_provenance_when_everything_matches(model_copy):
    digest = sha256_of(model_copy)
    (model_copy.parent / "metrics.json").write_text(json.dumps({"accuracy": 0.5, "model_sha256": digest}))
    info = P.model_provenance(P.load_model(model_copy), work_dir=model_copy.parent)
    assert info["path"] == "<work_dir>/model.keras" and info["metrics"] == "<work_dir>/metrics.json"
    assert (info["name"], info["sha256"], info["trained"]) == ("tiny", digest, False)
    assert info["record_match"] is True and info["metrics_match"] is True and info["warnings"] == []


def test_model_provenance_unknown_without_records(tmp_path, keras):
    path = _save(_tiny_model(keras, 1), tmp_path, "grayscale", record=False)
    (tmp_path / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))  # an older one: names no model
    info = P.model_provenance(P.load_model(path))
    assert info["record_source"] == "model input shape" and info["trained"] is None  # nothing says
    assert info["record_match"] is None and info["metrics_match"] is None
    assert info["warnings"] == [f"Warning: no {path.stem}.json beside {path.name}: the image size and colour mode "
                                "come from the model's input shape, and resizing, test-time augmentation and class "
                                "names are the defaults, which may not be how it was trained; keep a model with its "
                                "record (copy both)."]
    assert "trained: unknown" in P.describe_model(info)
    assert P.model_provenance(P.as_loaded(_tiny_model(keras, 1)))["sha256"] is None  # in memory: no file


def test_cli_names_the_model_and_warns_about_stale_metrics(model_copy, photos, capsys, monkeypatch):
    (model_copy.parent / "metrics.json").write_text(json.dumps({"accuracy": 0.9, "model_sha256": "ab" * 32}))
    info = P.model_provenance(P.load_model(model_copy))
    assert info["metrics_match"] is False and info["record_match"] is True
    monkeypatch.chdir(model_copy.parent)
    assert P.main([str(photos["face"]), "--model", "model.keras"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["status"] == "ok"  # stdout: the results only
    line = MODEL_LINE.search(captured.err)
    assert line and line["path"] == "model.keras" and line["sha"] == sha256_of(model_copy)[:12]
    assert "Warning: metrics.json describes another model" in captured.err
    assert f"sha256 abababababab), not this one (sha256 {line['sha']})" in captured.err
    assert "run notebooks/06_evaluate_model.ipynb again to evaluate it." in captured.err
    assert "model.json does not match" not in captured.err


def test_cli_warns_when_the_record_describes_another_file(model_copy, photos, capsys):
    record = json.loads((model_copy.parent / "model.json").read_text())
    (model_copy.parent / "model.json").write_text(json.dumps({**record, "model_sha256": "cd" * 32}))
    info = P.model_provenance(P.load_model(model_copy))
    assert info["record_match"] is False and info["metrics_match"] is None
    assert P.main([str(photos["face"]), "--model", str(model_copy), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("file,face,status")  # the CSV is untouched by the warnings
    assert MODEL_LINE.search(captured.err)["path"] == str(model_copy)  # as the user gave it
    assert "Warning: model.json does not match the model file (it was written for sha256 cdcdcdcdcdcd" in captured.err
    assert "metrics.json" not in captured.err


# ------------------------------------------------- CLI: a broken model, odd file names, repeated inputs, options


def _strict_json(text: str):
    """``json.loads`` that refuses NaN and Infinity, as JavaScript's ``JSON.parse`` does."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_model_that_outputs_nan_gives_error_rows_and_valid_json(keras, photos, tmp_path, capsys):
    """A model whose training diverged (a NaN learning rate): every face is an ``error`` saying so, the JSON
    stays JSON, and nothing was predicted (exit 1)."""
    model = _tiny_model(keras, 1)
    model.set_weights([np.full_like(w, np.nan) for w in model.get_weights()])
    path = _save(model, tmp_path / "nan", "grayscale")
    assert P.main([str(photos["face"]), str(photos["blank"]), "--model", str(path)]) == 1
    captured = capsys.readouterr()
    rows = _strict_json(captured.out)
    assert [r["status"] for r in rows] == ["error", "error"]
    for r in rows:
        assert r["probabilities"] is None and r["confidence"] is None and r["emotion"] is None
        assert "the model's output is not a number (NaN)" in r["message"] and "learning_rate" in r["message"]
        assert r["box"] is not None  # the face was found; the model failed on it
    assert "error: 2 faces: the model's output is not a number (NaN)" in captured.err
    # the Python API says the same, and rows holding NaN never reach the JSON as NaN
    results = P.predict(P.load_model(path), photos["blank"], detection="whole")
    assert list(results.status) == ["error"] and "likely broken" in results.message[0]
    results.at[0, "probabilities"], results.at[0, "confidence"] = {"anger": float("nan")}, float("inf")
    record = P.to_records(results)[0]
    assert record["probabilities"] == {"anger": None} and record["confidence"] is None
    json.dumps(record, allow_nan=False)


def test_cli_writes_a_file_name_that_is_not_utf8(model_dir, tmp_path, capsys, monkeypatch):
    """A name whose bytes are not UTF-8: the CSV is written whole, the bytes escaped as the JSON escapes
    them (``\\udcff``), the same on stdout and in ``-o``; a write that fails leaves no partial file."""
    photos = tmp_path / "photos"
    photos.mkdir()
    try:
        shutil.copy(HOPPER, photos / os.fsdecode(b"bad\xff.jpg"))
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses a name that is not UTF-8")
    args = [str(photos), "--model", str(model_dir / "model.keras"), "--format", "csv", "--detection", "whole"]
    out = tmp_path / "out.csv"
    assert P.main([*args, "-o", str(out)]) == 0
    written = out.read_bytes().decode("utf-8")  # valid UTF-8
    assert "bad\\udcff.jpg,0,ok," in written and written.count("\n") == 2
    assert P.main(args) == 0
    assert capsys.readouterr().out == written  # stdout holds the same text
    assert P.main([*args[:3], "--detection", "whole"]) == 0  # JSON: the same escape; the name's bytes come back
    assert os.fsencode(_strict_json(capsys.readouterr().out)[0]["file"]) == bytes(photos) + b"/bad\xff.jpg"

    def failing(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing)
    assert P.main([*args, "-o", str(out)]) == 2
    assert "error: cannot write" in capsys.readouterr().err
    assert out.read_bytes().decode("utf-8") == written  # the earlier results, untouched
    assert P.main([*args, "-o", str(tmp_path / "new.csv")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "photos"]  # no partial file left


def test_cli_says_when_names_repeat_a_photo(model_dir, photos, tmp_path, capsys, monkeypatch):
    """The same photo named again (itself, ./itself, a link) gets its rows once; stderr says which names were
    the same file, and counts names and distinct inputs."""
    shutil.copy(photos["blank"], tmp_path / "a.png")
    (tmp_path / "link-to-a.png").symlink_to(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    model = ["--model", str(model_dir / "model.keras"), "--detection", "whole"]
    assert P.main(["a.png", "a.png", "./a.png", "link-to-a.png", *model]) == 0
    captured = capsys.readouterr()
    assert [r["file"] for r in _strict_json(captured.out)] == ["a.png"]
    assert "3 of the names are a photo already named, which gets its rows once:" in captured.err
    assert "  ./a.png: the same file as a.png\n  link-to-a.png: the same file as a.png" in captured.err
    assert "4 inputs named, 1 distinct (1 ok) in " in captured.err
    assert P.main(["a.png", *model]) == 0
    err = capsys.readouterr().err
    assert "1 input (1 ok) in " in err and "already named" not in err
    hopper = Image.open(HOPPER).convert("RGB")  # a photo of three faces: a row for each, and the line says so
    group = Image.new("RGB", (hopper.width * 3, hopper.height), "white")
    for i in range(3):
        group.paste(hopper, (i * hopper.width, 0))
    group.save(tmp_path / "group.jpg")
    assert P.main(["group.jpg", "a.png", "--model", str(model_dir / "model.keras"), "--detection", "detect"]) == 0
    err = capsys.readouterr().err
    assert "2 inputs (" in err and "; 4 rows, 3 faces in " in err


@pytest.mark.parametrize("option", ["--margin", "--min-face"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_cli_refuses_a_number_that_is_not_finite(option, value, photos, capsys):
    with pytest.raises(SystemExit) as exit_:
        P.main([str(photos["face"]), f"{option}={value}"])  # (-inf alone would read as an option)
    assert exit_.value.code == 2
    assert f"error: argument {option}: not a finite number: {value!r}" in capsys.readouterr().err


@pytest.mark.parametrize("args, said", [(["--min-face", "0"], "--min-face 0.0 (it must be in (0, 1])"),
                                        (["--margin", "-1", "--batch-size", "0"],
                                         "--margin -1.0 (it must be >= 0); --batch-size 0 (it must be >= 1)")])
def test_cli_names_each_option_out_of_range(args, said, photos, capsys):
    with pytest.raises(SystemExit) as exit_:
        P.main([str(photos["face"]), *args])
    assert exit_.value.code == 2 and capsys.readouterr().err.strip().endswith(f"error: {said}")


@pytest.mark.parametrize("args, said", [(["--detector", "mtcnn"], "--detector sets how faces are detected and "
                                         "cropped, and --detection whole detects none (each image is one face); "
                                         "drop it, or use --detection auto or detect"),
                                        (["--min-face", "0.3", "--margin", "0"], "--min-face and --margin set how")])
def test_cli_refuses_detector_settings_with_whole_images(args, said, photos, capsys):
    """``--detection whole`` detects no face: a detector, a smallest face or a margin given with it would be ignored
    without a word, so the command says so before any work (the defaults alone are fine)."""
    with pytest.raises(SystemExit) as exit_:
        P.main([str(photos["face"]), "--detection", "whole", *args])
    assert exit_.value.code == 2 and f"error: {said}" in capsys.readouterr().err


def test_predict_refuses_a_margin_that_is_not_finite(fer, photos):
    for kwargs in ({"margin": float("nan")}, {"margin": float("inf")}, {"min_face": float("nan")}):
        with pytest.raises(ValueError, match="finite"):
            P.predict(fer, photos["face"], **kwargs)


def test_cli_names_the_default_model_by_its_real_path(model_dir, photos, tmp_path, monkeypatch, capsys):
    """Run from another folder with the default model: its path, not ``<work_dir>/model.keras``."""
    monkeypatch.setenv("FER_WORK_DIR", str(model_dir))
    monkeypatch.chdir(tmp_path)
    assert P.main([str(photos["blank"]), "--detection", "whole"]) == 0
    line = MODEL_LINE.search(capsys.readouterr().err)
    assert line and line["path"] == str((model_dir / "model.keras").resolve())
    monkeypatch.chdir(model_dir.parent)  # under the current folder: relative to it
    assert P.main([str(photos["blank"]), "--detection", "whole"]) == 0
    assert MODEL_LINE.search(capsys.readouterr().err)["path"] == f"{model_dir.name}/model.keras"


def test_no_face_message_names_the_cli_options(model_dir, fer, photos, capsys):
    assert P.main([str(photos["blank"]), "--model", str(model_dir / "model.keras"), "--detection", "detect",
                   "--detector", "haar"]) == 1
    row = _strict_json(capsys.readouterr().out)[0]
    assert row["status"] == "no_face"
    assert row["message"] == "no face found (try --detection auto or --detection whole)"
    python = P.predict(fer, photos["blank"], detection="detect", detector="haar").message[0]
    assert python == "no face found (try detection='auto' or 'whole')"  # Python callers: the argument


def test_cli_names_every_annotated_copy(model_dir, photos, tmp_path, capsys):
    """Two inputs named ``photo.png``: the copies are ``photo.png`` and ``photo-1.png``, and stderr says which
    is which."""
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        shutil.copy(photos["blank"], tmp_path / folder / "photo.png")
    out = tmp_path / "annotated"
    inputs = [str(tmp_path / "x" / "photo.png"), str(tmp_path / "y" / "photo.png")]
    assert P.main([*inputs, "--model", str(model_dir / "model.keras"), "--detection", "whole",
                   "--annotate", str(out)]) == 0
    err = capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["photo-1.png", "photo.png"]
    assert f"2 annotated copies in {out}:\n  {inputs[1]} → {out / 'photo-1.png'}\n" in err
    assert f"  {inputs[0]} → {out / 'photo.png'}\n" in err


# ------------------------------------------------------------------------------------------ Grad-CAM


@pytest.mark.parametrize("sequential, dtype", [(False, "float32"), (True, "float32"), (False, "mixed_bfloat16")])
def test_grad_cam_shape_and_range(keras, sequential, dtype, photos):
    model = _tiny_model(keras, 1, sequential=sequential, dtype=dtype)
    batch = P.preprocess_faces([P.read_image(photos[k]) for k in ("face", "gray")], _record())
    heat = P.grad_cam(model, batch)
    assert heat.shape == (2, SIZE, SIZE) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1 and np.isfinite(heat).all() and heat.max() > 0.99
    assert P.grad_cam(model, batch, class_index=3).shape == (2, SIZE, SIZE)
    overlay = P.overlay_heatmap(batch[0], heat[0])
    assert overlay.shape == (SIZE, SIZE, 3) and overlay.dtype == np.uint8


def test_grad_cam_uses_a_nested_backbone(keras, photos):
    inp = keras.Input((SIZE, SIZE, 1))
    b_in = keras.Input((SIZE, SIZE, 1))
    b_x = keras.layers.Conv2D(4, 3, activation="relu")(b_in)
    backbone = keras.Model(b_in, keras.layers.Conv2D(5, 3, activation="relu")(b_x), name="backbone")
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.GlobalAveragePooling2D()(backbone(x))
    model = keras.Model(inp, keras.layers.Dense(len(EMOTIONS), activation="softmax")(x))
    assert gradcam.feature_layer(model) is backbone
    batch = P.preprocess_faces([P.read_image(photos["face"])], _record())
    heat = P.grad_cam(model, batch)
    assert heat.shape == (1, SIZE, SIZE) and 0.99 < heat.max() <= 1


def _split_softmax_model(keras, kernel_scale: float = 1.0):
    """The tiny model with its softmax as a separate ``probabilities`` layer after ``logits``, as ours are."""
    fused = _tiny_model(keras, 1)
    inp = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv_a")(x)
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv_last")(x)
    x = keras.layers.Dense(len(EMOTIONS), name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    x = keras.layers.Activation("softmax", name="probabilities")(x)
    split = keras.Model(inp, x, name="split")
    for name in ("conv_a", "conv_last"):
        split.get_layer(name).set_weights(fused.get_layer(name).get_weights())
    kernel, bias = fused.layers[-1].get_weights()
    split.get_layer("logits").set_weights([kernel * kernel_scale, bias * kernel_scale])
    return fused, split


def test_grad_cam_differentiates_the_pre_softmax_score(keras, photos):
    batch = P.preprocess_faces([P.read_image(photos[k]) for k in ("face", "gray")], _record())
    fused, split = _split_softmax_model(keras)
    assert gradcam.feature_layer(split).name == "conv_last"
    heat = P.grad_cam(split, batch, class_index=2)
    np.testing.assert_allclose(P.grad_cam(fused, batch, class_index=2), heat, atol=1e-5)  # Dense+softmax: same logits
    # By hand: the gradient of the logit (not of the probability) with respect to conv_last's maps.
    tf, _ = import_tensorflow()
    probe = keras.Model(split.inputs, [split.get_layer("conv_last").output, split.get_layer("logits").output])
    x = tf.constant(batch)
    with tf.GradientTape() as tape:
        maps, logits = probe(x)
        score = logits[:, 2]
    weights = tf.reduce_mean(tape.gradient(score, maps), axis=(1, 2), keepdims=True)
    cam = tf.image.resize(tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1))[..., None], (SIZE, SIZE)).numpy()[..., 0]
    np.testing.assert_allclose(heat, cam / (cam.max(axis=(1, 2), keepdims=True) + 1e-8), atol=1e-5)
    # Logits scaled by 3 (a softmax temperature) scale every pre-softmax gradient by 3: the normalised map
    # does not change. A map from the probability or log-probability would.
    _, hotter = _split_softmax_model(keras, kernel_scale=3.0)
    np.testing.assert_allclose(P.grad_cam(hotter, batch, class_index=2), heat, atol=1e-4)


def test_grad_cam_layers_of_our_models(keras, fake_fer_weights):
    """seed_cnn: its last convolution ``conv3``; fer_transfer: the pretrained backbone's output (its last
    residual block), not the ``classifier`` convolution after it; both score the ``logits`` before the softmax."""
    seed = models.seed_cnn((48, 48, 1))
    transfer = models.fer_transfer((64, 64, 1), weights=fake_fer_weights)
    assert gradcam.feature_layer(seed).name == "conv3"
    assert gradcam.feature_layer(transfer).name == models.BACKBONE
    for model in (seed, transfer):
        assert model.layers[-1].name == "probabilities" and model.layers[-2].name == "logits"
        heat = P.grad_cam(model, np.full((1, *model.input_shape[1:]), 128.0, np.float32) +
                          np.random.default_rng(0).normal(0, 40, (1, *model.input_shape[1:])).astype(np.float32))
        assert heat.shape == (1, *model.input_shape[1:3]) and np.isfinite(heat).all()


def test_flip_tta_from_the_record(fer, photos):
    flip = P.LoadedModel(fer.model, _record(tta="flip"))
    batch = P.preprocess_faces([P.read_image(photos[k]) for k in ("face", "rgb")], flip.preprocessing)
    expected = (fer.model.predict(batch, verbose=0) + fer.model.predict(batch[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(flip(batch), expected, atol=1e-5)
    assert not np.allclose(fer(batch), expected, atol=1e-5)  # the mirror image does change the output


# -------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_export_savedmodel_and_tflite_match_predict(keras, dtype, photos, tmp_path):
    fer = P.load_model(_save(_tiny_model(keras, 1, dtype=dtype), tmp_path / "model", "grayscale"))
    faces = [P.read_image(photos[k]) for k in ("face", "rgb", "gray", "alpha")]
    batch = P.preprocess_faces(faces, fer.preprocessing)
    keras_out = fer.model.predict(batch, verbose=0)
    # exports compute in float32: exactly the float32 copy's outputs, within bfloat16's error of the original
    expected = P.float32_model(fer).predict(batch, verbose=0)
    np.testing.assert_allclose(expected, keras_out, atol=1e-6 if dtype == "float32" else 3e-2)
    saved = P.export_savedmodel(fer, tmp_path / "saved_model")
    np.testing.assert_allclose(P.savedmodel_predict(saved, batch), expected, atol=1e-5)
    tflite = P.export_tflite(fer, tmp_path / "model.tflite")
    assert tflite.stat().st_size > 0
    np.testing.assert_allclose(P.tflite_predict(tflite, batch), expected, atol=1e-4)
    np.testing.assert_allclose(P.tflite_predict(tflite, batch[:1]), expected[:1], atol=1e-4)


# ----------------------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_real_faces_are_detected_and_test_folder_all_predicted(real_data_dir, fer):
    images = sorted((real_data_dir / "images").glob("A*_00*.jpg"))[:20]
    found = P.predict(fer, images, detection="detect")
    assert (found.drop_duplicates("file").status == "ok").mean() >= 0.8
    test = sorted((real_data_dir / "test").iterdir())[:30]
    results = P.predict(fer, test)  # auto: every readable photo gets a prediction
    assert results.drop_duplicates("file").status.isin(P.PREDICTED).all()


def test_cli_takes_the_work_folder_as_run_does(model_dir, photos, tmp_path, monkeypatch, capsys):
    """``run --work-dir X`` then ``predict --work-dir X``: the model of that work folder, whatever FER_WORK_DIR says."""
    monkeypatch.setenv("FER_WORK_DIR", str(tmp_path / "another"))
    assert P.main([str(photos["blank"]), "--detection", "whole", "--work-dir", str(model_dir)]) == 0
    assert MODEL_LINE.search(capsys.readouterr().err)["path"] == str((model_dir / "model.keras").resolve())
    assert P.main([str(photos["blank"]), "--work-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert f"No trained model at {tmp_path / 'nowhere' / 'model.keras'}" in err and "--work-dir DIR" in err
    assert not (tmp_path / "nowhere").exists()


def test_cli_writes_into_a_device_or_a_pipe_and_never_into_a_dataset(model_dir, photos, tmp_path, capsys,
                                                                    monkeypatch):
    """``-o /dev/null`` or a named pipe is written into, not replaced by a file; ``-o`` and ``--annotate`` inside a
    dataset (``$FER_DATA_DIR``, or any folder holding images/ and data/legend.csv) are refused before any work."""
    import threading

    model = ["--model", str(model_dir / "model.keras"), "--detection", "whole", str(photos["face"])]
    assert P.main([*model, "-o", os.devnull]) == 0 and Path(os.devnull).is_char_device()
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    got = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()))
    reader.start()
    assert P.main([*model, "-o", str(pipe), "--format", "csv"]) == 0
    reader.join(timeout=30)
    assert pipe.is_fifo() and got and got[0].startswith(b"file,")
    dataset = tmp_path / "dataset"
    (dataset / "images").mkdir(parents=True)
    (dataset / "data").mkdir()
    (dataset / "data" / "legend.csv").write_text("user.id,image,emotion\n")
    capsys.readouterr()
    for option in (["-o", str(dataset / "out.json")], ["--annotate", str(dataset / "annotated")]):
        assert P.main([*model, *option]) == 2
        assert f"lies inside the dataset {dataset}, which is only ever read" in capsys.readouterr().err
    mine = tmp_path / "mine"  # your own data, named by $FER_DATA_DIR
    mine.mkdir()
    monkeypatch.setenv("FER_DATA_DIR", str(mine))
    assert P.main([*model, "-o", str(mine / "out.json")]) == 2
    assert f"lies inside the dataset {mine}" in capsys.readouterr().err
    assert sorted(p.name for p in dataset.rglob("*")) == ["data", "images", "legend.csv"] and not any(mine.iterdir())
