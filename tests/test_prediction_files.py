"""Prediction holds on any file: the same face in every container, bit depth, colour mode, palette,
transparency and EXIF orientation gives the same answer, and no input, however broken, raises.

Every file is generated here, in a temporary folder, from one synthetic face drawn with Pillow (smooth, on
white, so that JPEG noise stays small and transparency can be flattened back onto the same white). The
model is tiny and untrained but made *sensitive* (large logits), so a wrongly scaled image moves its
probabilities far more than the 0.03 the variants must stay within (checked by ``test_model_is_sensitive``).
"""

from __future__ import annotations

import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from fer_utils import EMOTIONS, data, folders, import_tensorflow, models
from fer_utils import __main__ as fer_main
from fer_utils import prediction as P
from fer_utils.models import ModelRecord

SIZE = 32
TOLERANCE = 0.03  # largest difference in any probability allowed between variants of the same face
HOPPER = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def draw_face(size: int = 160) -> Image.Image:
    """A smooth cartoon face (gray, on white); the Haar cascade finds it at this size."""
    im = Image.new("L", (size, size), 255)
    d = ImageDraw.Draw(im)
    s = size / 64
    d.ellipse([12 * s, 6 * s, 52 * s, 60 * s], fill=196)
    for x in (24, 40):  # eyes
        d.ellipse([(x - 4) * s, 24 * s, (x + 4) * s, 29 * s], fill=48)
    d.line([17 * s, 19 * s, 29 * s, 21 * s], fill=60, width=int(2 * s))  # brows
    d.line([35 * s, 21 * s, 47 * s, 19 * s], fill=60, width=int(2 * s))
    d.polygon([(32 * s, 28 * s), (29 * s, 40 * s), (35 * s, 40 * s)], fill=150)  # nose
    d.chord([22 * s, 40 * s, 42 * s, 52 * s], 0, 180, fill=80)  # a smile
    return im.filter(ImageFilter.GaussianBlur(1.2 * s))


# ----------------------------------------------------------------------------------------- the files


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _with_alpha(face: Image.Image, mode: str) -> Image.Image:
    """The face with its white background fully transparent, and black under the transparent pixels (a
    reader that drops alpha instead of flattening onto white sees a black background)."""
    gray = np.asarray(face)
    alpha = np.where(gray == 255, 0, 255).astype(np.uint8)
    under = np.where(alpha == 0, 0, gray).astype(np.uint8)
    if mode == "LA":
        return Image.fromarray(np.dstack([under, alpha]), "LA")
    return Image.fromarray(np.dstack([under, under, under, alpha]), "RGBA")


def _transparent_palette(face: Image.Image) -> Image.Image:
    """A palette image of the face whose background colour (black in the palette) is the transparent index."""
    gray = np.asarray(face)
    levels = np.unique(gray[gray != 255])[:255]
    index = np.searchsorted(levels, np.minimum(gray, levels[-1]))  # the face's gray levels → 0..n-1
    index = np.where(gray == 255, 255, index).astype(np.uint8)
    im = Image.fromarray(index, "L").convert("P")
    palette = [v for level in levels for v in (int(level),) * 3]
    palette += [0, 0, 0] * (256 - len(levels))
    im.putpalette(palette)
    im.info["transparency"] = 255
    return im


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` pixels (a decompression bomb), with no pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IEND", b""))


def write_variants(face: Image.Image, folder: Path) -> dict[str, Path]:
    """The same face in every container, bit depth, colour mode, palette, transparency and orientation."""
    folder.mkdir(parents=True, exist_ok=True)
    gray = np.asarray(face)
    rgb = face.convert("RGB")
    files: dict[str, Path] = {}

    def save(name: str, im: Image.Image, **kwargs):
        files[name] = folder / name
        im.save(files[name], **kwargs)

    save("reference.png", face)
    save("gray.jpg", face, quality=95)
    save("rgb.jpg", rgb, quality=95)
    save("progressive.jpg", rgb, quality=95, progressive=True)
    save("gray.webp", face, lossless=True)
    save("rgb.bmp", rgb)
    save("gray.bmp", face)
    save("gray.gif", face)
    save("gray.tif", face)
    save("rgb.tif", rgb, compression="tiff_lzw")
    save("gray16.png", Image.fromarray(gray.astype(np.uint16) * 257))  # mode I;16: the user's bug
    save("gray16.tif", Image.fromarray(gray.astype(np.uint16) * 257))
    save("int32.tif", Image.fromarray(gray.astype(np.int32) * 257))  # mode I, 16-bit values
    save("float.tif", Image.fromarray(gray.astype(np.float32) / 255))  # mode F in [0, 1]
    for name, channels in (("rgb16.png", 3), ("rgba16.png", 4)):  # 16-bit colour: Pillow cannot write it
        arr = np.dstack([gray] * 3 + ([np.where(gray == 255, 0, 255)] if channels == 4 else []))
        arr = np.where(arr[..., -1:] == 0, 0, arr) if channels == 4 else arr
        files[name] = folder / name
        cv2.imwrite(str(files[name]), arr.astype(np.uint16)[..., [2, 1, 0, 3][:channels]] * 257)
    save("palette.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=256))
    save("palette_transparent.png", _transparent_palette(face), transparency=255)
    save("palette_transparent.gif", _transparent_palette(face), transparency=255)
    save("la.png", _with_alpha(face, "LA"))
    save("rgba.png", _with_alpha(face, "RGBA"))
    save("rgba.webp", _with_alpha(face, "RGBA"), lossless=True)
    save("rgba.tif", _with_alpha(face, "RGBA"))
    save("cmyk.jpg", rgb.convert("CMYK"), quality=95)
    save("cmyk.tif", rgb.convert("CMYK"))
    save("ycbcr.tif", rgb.convert("YCbCr"))
    save("lab.tif", rgb.convert("LAB"))
    # stored turned a quarter, with the EXIF orientation that turns it back upright
    save("exif_rotated.jpg", rgb.transpose(Image.Transpose.ROTATE_90), quality=95, exif=_exif(6))
    save("exif_mirrored.png", face.transpose(Image.Transpose.FLIP_LEFT_RIGHT), exif=_exif(2))
    save("animated.gif", face, save_all=True, append_images=[Image.eval(face, lambda v: 255 - v)], duration=100)
    save("animated.png", face, save_all=True, append_images=[Image.eval(face, lambda v: 255 - v)])
    save("multipage.tif", face, save_all=True, append_images=[Image.eval(face, lambda v: 255 - v)])
    files["broken_exif.jpg"] = folder / "broken_exif.jpg"  # an APP1 Exif block of garbage
    jpeg = (folder / "gray.jpg").read_bytes()
    junk = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\xff\xff" + b"\x13" * 40
    files["broken_exif.jpg"].write_bytes(jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(junk) + 2) + junk + jpeg[2:])
    return files


def write_broken(face: Image.Image, folder: Path) -> dict[str, tuple[Path, str | tuple[str, ...]]]:
    """Inputs that are not (usable) images, or barely: ``{name: (path, the status expected)}``."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, str | tuple[str, ...]]] = {}

    def add(name: str, status, content: bytes | None = None):
        path = folder / name
        if content is not None:
            path.write_bytes(content)
        out[name] = (path, status)
        return path

    add("empty.jpg", "not_an_image", b"")
    add("notes.jpg", "not_an_image", b"this is not an image\n")
    add("document.png", "not_an_image", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n")
    jpeg = folder / "whole.jpg"
    face.save(jpeg, quality=95)
    add("truncated.jpg", "unreadable", jpeg.read_bytes()[: len(jpeg.read_bytes()) // 3])
    jpeg.unlink()
    add("bomb.png", "unreadable", _png_header_only(100_000, 100_000))
    Image.new("L", (1, 1), 128).save(add("one_pixel.png", P.PREDICTED))
    Image.new("RGB", (1, 5000), (90, 90, 90)).save(add("thin_1x5000.png", P.PREDICTED))
    Image.new("L", (5000, 1), 90).save(add("flat_5000x1.png", P.PREDICTED))
    face.convert("1").save(add("bilevel.png", P.PREDICTED))
    add("folder.jpg", "not_an_image").mkdir()
    loop = add("loop.jpg", "not_found")
    loop.symlink_to(folder / "loop2.jpg")
    (folder / "loop2.jpg").symlink_to(loop)
    add("dangling.jpg", "not_found").symlink_to(folder / "nowhere.jpg")
    add("missing.jpg", "not_found")
    if hasattr(os, "mkfifo"):
        os.mkfifo(add("fifo.jpg", "not_an_image"))  # Pillow would wait forever for its bytes
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root reads any file: no such test there
        locked = add("locked.jpg", "unreadable", b"")
        face.save(locked, format="JPEG")
        locked.chmod(0)
    return out


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def face() -> Image.Image:
    return draw_face()


@pytest.fixture(scope="module")
def variants(face, tmp_path_factory) -> dict[str, Path]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow notes on some exotic saves; not what is tested
        return write_variants(face, tmp_path_factory.mktemp("variants"))


@pytest.fixture(scope="module")
def broken(face, tmp_path_factory):
    return write_broken(face, tmp_path_factory.mktemp("broken"))


def _sensitive_model(record: ModelRecord, face: Image.Image):
    """A tiny untrained CNN whose logits on ``face`` spread over about ±3: not saturated, so its
    probabilities move a lot when the pixels do."""
    _, keras = import_tensorflow()
    keras.utils.set_random_seed(1)
    inp = keras.Input(record.input_shape)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.Conv2D(8, 5, strides=2, activation="tanh")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="tanh")(x)
    features = keras.layers.Flatten()(x)
    dense = keras.layers.Dense(len(EMOTIONS))
    model = keras.Model(inp, keras.layers.Activation("softmax", dtype="float32")(dense(features)), name="sensitive")
    f = keras.Model(inp, features)(P.preprocess_faces([face], record)).numpy()[0]
    kernel = np.random.default_rng(1).normal(size=(f.size, len(EMOTIONS))).astype(np.float32)
    logits = f @ kernel
    scale = 1.5 / logits.std()
    dense.set_weights([kernel * scale, (-(logits - logits.mean()) * scale * 0.5).astype(np.float32)])
    return model


@pytest.fixture(scope="module", params=["grayscale", "rgb"])
def fer(request, face, tmp_path_factory) -> P.LoadedModel:
    path = tmp_path_factory.mktemp(f"model_{request.param}") / "model.keras"
    record = ModelRecord("sensitive", (SIZE, SIZE), request.param)
    with warnings.catch_warnings():  # Keras 3.15 + NumPy 2 warn inside model.save; not ours to fix
        warnings.filterwarnings("ignore", message=".*__array__ implementation doesn't accept a copy.*")
        models.save(_sensitive_model(record, face), path, record)
    return P.load_model(path)


def _probs(rows) -> np.ndarray:
    return np.array([[row.probabilities[e] for e in EMOTIONS] for row in rows.itertuples()])


# ------------------------------------------------------------------------------------------ to_8bit


def _in_memory_modes(face: Image.Image) -> dict[str, Image.Image]:
    gray = np.asarray(face)
    rgb = face.convert("RGB")
    return {
        "L": face, "RGB": rgb, "P": rgb.convert("P", palette=Image.Palette.ADAPTIVE), "RGBX": rgb.convert("RGBX"),
        "CMYK": rgb.convert("CMYK"),
        "YCbCr": rgb.convert("YCbCr"), "LAB": rgb.convert("LAB"), "HSV": rgb.convert("HSV"),
        "LA": _with_alpha(face, "LA"), "RGBA": _with_alpha(face, "RGBA"),
        "RGBa": _with_alpha(face, "RGBA").convert("RGBa"), "PA": _with_alpha(face, "RGBA").convert("PA"),
        "P transparent": _transparent_palette(face),
        "I;16": Image.fromarray(gray.astype(np.uint16) * 257),
        "I;16B": Image.frombytes("I;16B", face.size, (gray.astype(">u2") * 257).tobytes()),
        "I;16L": Image.frombytes("I;16L", face.size, (gray.astype("<u2") * 257).tobytes()),
        "I 16-bit values": Image.fromarray(gray.astype(np.int32) * 257),
        "I 8-bit values": Image.fromarray(gray.astype(np.int32)),
        "F in [0, 1]": Image.fromarray(gray.astype(np.float32) / 255),
        "F in [0, 255]": Image.fromarray(gray.astype(np.float32)),
        "F any range": Image.fromarray((gray.astype(np.float32) - gray.min()) / (255 - gray.min()) * 7 - 3),
    }


def test_to_8bit_every_mode_gives_the_same_picture(face):
    expected = np.asarray(face, np.float64)
    stretched = (expected - expected.min()) * 255 / (255 - expected.min())
    for name, im in _in_memory_modes(face).items():
        out = data.to_8bit(im)
        assert out.mode in ("L", "RGB") and out.size == face.size, name
        got = np.asarray(out.convert("L"), np.float64)
        want = stretched if name == "F any range" else expected  # an unknown range is stretched to 0..255
        assert np.abs(got - want).max() <= 3, (name, np.abs(got - want).max())
        assert out.mode == ("L" if name.split()[0] in ("L", "LA", "F", "I", "I;16", "I;16B", "I;16L") else "RGB"), name


def test_to_8bit_scales_16_bit_instead_of_clipping():
    ramp = np.array([[0, 257, 32896, 65535]], np.uint16)
    assert np.asarray(data.to_8bit(Image.fromarray(ramp))).tolist() == [[0, 1, 128, 255]]
    assert np.asarray(Image.fromarray(ramp).convert("L")).tolist() != [[0, 1, 128, 255]]  # Pillow's own clips


def test_to_8bit_turns_by_exif_and_bilevel_is_gray():
    im = Image.new("L", (40, 20), 0)
    im.info["exif"] = _exif(6).tobytes()
    assert data.to_8bit(im).size == (20, 40)
    assert data.to_8bit(Image.new("1", (3, 3), 1)).getpixel((0, 0)) == 255


def test_copy_or_reencode_uses_the_same_rule(face, variants, tmp_path):
    for name in ("gray16.png", "rgba.png", "cmyk.jpg", "exif_rotated.jpg"):
        with Image.open(variants[name]) as im:
            fmt, mode = im.format, im.mode
        written = folders.copy_or_reencode(variants[name], tmp_path, fmt, mode)
        assert written.suffix == ".png" or name == "exif_rotated.jpg"  # an RGB JPEG is copied as it is
        if written.suffix == ".png":
            got = np.asarray(Image.open(written).convert("L"), np.int16)
            assert np.abs(got - np.asarray(face, np.int16)).max() <= 3, name


# ----------------------------------------------------------------- the same face, whatever the file


def test_model_is_sensitive(fer, face):
    """The tolerance means something: what a wrong reading does to the face moves the probabilities far
    beyond it — a darker face, 16 bits clipped to 8 (Pillow's ``convert("L")``), no EXIF turn, alpha dropped."""
    gray = np.asarray(face)
    wrong = [Image.eval(face, lambda v: int(v * 0.8)),
             Image.fromarray(np.where(gray > 0, 255, 0).astype(np.uint8)),
             face.transpose(Image.Transpose.ROTATE_90),
             Image.fromarray(np.where(gray == 255, 0, gray).astype(np.uint8))]
    probs = _probs(P.predict(fer, [face, *wrong], detection="whole"))
    assert (np.abs(probs[1:] - probs[0]).max(axis=1) > 3 * TOLERANCE).all()


def test_every_variant_gives_the_reference_answer(fer, variants):
    names = list(variants)
    results = P.predict(fer, [variants[n] for n in names], detector="haar")  # a cartoon face: Haar fires on it
    assert list(results.file) == [str(variants[n]) for n in names]  # one row each: one face, found or not
    reference = results.iloc[0]
    assert reference.status == "ok" and reference.detection == "haar"  # the face is found in the PNG
    probs = _probs(results)
    for i, name in enumerate(names):
        row = results.iloc[i]
        assert (row.status, row.detection) == (reference.status, reference.detection), (name, row.message)
        assert np.abs(np.array(row.box) - reference.box).max() <= 4, (name, row.box, reference.box)
        diff = np.abs(probs[i] - probs[0]).max()
        assert diff <= TOLERANCE, f"{name}: probabilities differ from the reference PNG by {diff:.3f}"


def test_in_memory_images_and_arrays_give_the_reference_answer(fer, face):
    gray = np.asarray(face)
    inputs = [face, *_in_memory_modes(face).values(), gray, gray.astype(np.uint16) * 257,
              gray.astype(np.float32) / 255, np.dstack([gray] * 3)]
    results = P.predict(fer, inputs, detection="whole")
    assert len(results) == len(inputs) and (results.status == "ok").all()
    probs = _probs(results)
    expected_far = [i + 1 for i, n in enumerate(_in_memory_modes(face)) if n == "F any range"]  # stretched
    for i in range(len(inputs)):
        if i not in expected_far:
            assert np.abs(probs[i] - probs[0]).max() <= TOLERANCE, i


def test_sixteen_bit_photo_is_detected_like_the_jpeg(fer, tmp_path):
    """The user's report: a 16-bit grayscale PNG of a face found no face and gave another emotion."""
    gray = np.asarray(Image.open(HOPPER).convert("L"))
    Image.fromarray(gray).save(tmp_path / "hopper.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "hopper16.png")
    results = P.predict(fer, [tmp_path / "hopper.png", tmp_path / "hopper16.png"], detection="detect")
    assert list(results.status) == ["ok", "ok"] and results.box[0] == results.box[1]
    assert np.abs(_probs(results)[0] - _probs(results)[1]).max() <= 1e-5


# ------------------------------------------------------------------------ nothing ever raises


def test_broken_inputs_each_get_a_row_and_never_raise(fer, broken):
    names = list(broken)
    results = P.predict(fer, [broken[n][0] for n in names])
    first = results.drop_duplicates("file").set_index("file")
    assert list(first.index) == [str(broken[n][0]) for n in names]  # every input, in order
    assert set(results.status) <= set(P.STATUSES)
    for name in names:
        row, expected = first.loc[str(broken[name][0])], broken[name][1]
        assert row.status in ((expected,) if isinstance(expected, str) else expected), (name, row.status, row.message)
        if row.status not in P.PREDICTED:
            assert row.message, name


def test_a_folder_without_images_and_odd_objects_get_rows(fer, tmp_path):
    (tmp_path / "empty").mkdir()
    results = P.predict(fer, [tmp_path / "empty", None, 42, np.zeros((2, 2, 2, 2))], detection="whole")
    assert list(results.status) == ["not_an_image", "error", "error", "not_an_image"]
    assert list(results.file[1:]) == ["<NoneType 1>", "<int 2>", "<ndarray 3>"]


def _run_cli(args, capsys) -> tuple[int, list[dict], str]:
    code = fer_main.main(["predict", *map(str, args)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    assert captured.out.strip(), f"exit {code}, nothing on stdout; stderr: {captured.err[-1500:]}"
    return code, json.loads(captured.out), captured.err


def test_cli_with_annotate_on_every_kind_of_file(fer, variants, broken, tmp_path, capsys):
    """``python -m fer_utils predict ... --annotate OUT --format json``: a row for every input, a copy for
    every predicted one, a message for every other one; a 1×1 image early in the list stops nothing."""
    order = ["one_pixel.png", "thin_1x5000.png", "flat_5000x1.png"]
    inputs = [broken[n][0] for n in order] + list(variants.values()) + [p for n, (p, _) in broken.items()
                                                                        if n not in order]
    out = tmp_path / "annotated"
    code, rows, err = _run_cli([*inputs, "--model", fer.path, "--annotate", out, "--format", "json"], capsys)
    assert code == 0
    by_file = {}
    for row in rows:
        assert row["status"] in P.STATUSES
        by_file.setdefault(row["file"], row)
    assert list(by_file) == [str(p) for p in inputs]
    predicted = [f for f, row in by_file.items() if row["status"] in P.PREDICTED]
    written = sorted(out.rglob("*.*"))
    assert len(written) == len(predicted) == len(variants) + 4  # the variants, 1×1, 1×5000, 5000×1, bilevel
    for path in written:
        with Image.open(path) as im:
            im.load()
    assert f"{len(predicted)} annotated copies in {out}" in err
    assert f"{len(inputs) - len(predicted)} inputs not drawn:" in err
    assert f"{broken['notes.jpg'][0]}: not_an_image" in err
    assert err.startswith("Model: ")


def test_annotate_draws_tiny_and_thin_images(fer, broken):
    for name in ("one_pixel.png", "thin_1x5000.png", "flat_5000x1.png"):
        path = broken[name][0]
        rows = P.predict(fer, path)
        im = P.annotate(path, rows)
        assert im.size == Image.open(path).size and im.mode == "RGB"


def test_write_annotated_reports_a_file_it_cannot_draw_and_goes_on(fer, variants, tmp_path, monkeypatch):
    inputs = [variants["gray.jpg"], variants["rgb.bmp"], variants["gray.gif"]]
    results = P.predict(fer, inputs)
    real = P.annotate

    def failing(image, rows):
        if Path(image).name == "gray.jpg":
            raise ValueError("cannot draw this one")
        return real(image, rows)

    monkeypatch.setattr("fer_utils.prediction.annotation.annotate", failing)
    written = P.write_annotated(results, tmp_path / "out", inputs)
    assert [p.name for p in written] == ["rgb.png", "gray.png"]
    why = "could not draw or write it: ValueError: cannot draw this one"
    assert written.skipped == {str(variants["gray.jpg"]): why}


def test_a_photo_named_twice_is_predicted_once(tmp_path):
    """The same file given twice, through a link, or inside a folder also given: one input, one row."""
    from fer_utils.prediction.images import collect_inputs

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"x")
    (tmp_path / "link.jpg").symlink_to(folder / "a.jpg")
    got = collect_inputs([folder / "a.jpg", folder / "a.jpg", tmp_path / "link.jpg", folder])
    assert got == [str(folder / "a.jpg"), str(folder / "b.png")]
    assert collect_inputs([tmp_path / "missing.jpg", tmp_path / "missing.jpg"]) == [str(tmp_path / "missing.jpg")]
