"""Face detectors: the Haar cascade and MTCNN side by side — known faces found, none invented, upright boxes,
both through ``predict`` and the command line, a clear error when MTCNN's package is missing.

The face is the Grace Hopper portrait matplotlib ships; the model is a tiny untrained one (seconds), since
only the detection is under test. No network: MTCNN's weights are inside the ``mtcnn`` wheel.
"""

from __future__ import annotations

import json
import sys
import warnings

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from fer_utils import EMOTIONS, import_tensorflow, models
from fer_utils import prediction as P
from fer_utils.models import ModelRecord
from fer_utils.prediction import detection

HOPPER = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
HOPPER_FACE = (150, 95, 230, 230)  # x, y, w, h of the face in the 512×600 portrait (both detectors agree)
SIZE = 32


def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    return iw * ih / (aw * ah + bw * bh - iw * ih)


@pytest.fixture(scope="module")
def hopper() -> Image.Image:
    return Image.open(HOPPER).convert("RGB")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    _, keras = import_tensorflow()
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(len(EMOTIONS), activation="softmax", dtype="float32")(x)
    work = tmp_path_factory.mktemp("work")
    with warnings.catch_warnings():  # Keras 3.15 + NumPy 2 warn inside model.save; not ours to fix
        warnings.filterwarnings("ignore", message=".*__array__ implementation doesn't accept a copy.*")
        models.save(keras.Model(inp, out, name="tiny"), work / "model.keras",
                    ModelRecord("tiny", (SIZE, SIZE), "grayscale"))
    return work


@pytest.fixture(scope="module")
def fer(model_dir):
    return P.load_model(model_dir / "model.keras")


@pytest.mark.parametrize("detector", P.DETECTORS)
def test_finds_the_face_pasted_at_a_known_place(hopper, detector):
    canvas = Image.new("RGB", (1100, 900), (200, 200, 200))
    dx, dy = 430, 210
    canvas.paste(hopper, (dx, dy))
    boxes = P.detect_faces(canvas, detector=detector)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    assert w == h  # square, like the crops the model was trained on
    fx, fy, fw, fh = HOPPER_FACE
    assert _iou(boxes[0], (fx + dx, fy + dy, fw, fh)) >= 0.5


@pytest.mark.parametrize("detector", P.DETECTORS)
def test_no_face_in_blank_or_noise(detector):
    rng = np.random.default_rng(0)
    blank = Image.new("L", (320, 240), 128)
    noise = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    tiny = np.zeros((8, 8), np.uint8)  # smaller than any detector's window
    for image in (blank, noise, tiny):
        assert P.detect_faces(image, detector=detector) == []


def test_mtcnn_frames_a_face_like_the_cascade(hopper):
    """MTCNN's box is turned into the square the cascade would give, so the margin and crops stay the same."""
    haar = P.detect_faces(hopper, detector="haar")
    mtcnn = P.detect_faces_scored(hopper, detector="mtcnn")
    assert len(haar) == 1 and len(mtcnn) == 1
    box, score = mtcnn[0]
    assert score >= P.DEFAULT_MIN_CONFIDENCE and _iou(haar[0], box) >= 0.6
    assert P.detect_faces_scored(hopper, detector="haar")[0][1] is None
    assert P.detect_faces(hopper, detector="mtcnn", min_confidence=1.01) == []  # the threshold applies


@pytest.mark.parametrize("detector", P.DETECTORS)
def test_gray_and_array_inputs_give_the_same_boxes(hopper, detector):
    gray = hopper.convert("L")
    from_image = P.detect_faces(gray, detector=detector)
    assert from_image == P.detect_faces(np.asarray(gray), detector=detector)
    assert from_image == P.detect_faces(np.asarray(gray)[..., None], detector=detector)
    assert len(from_image) == 1 and _iou(from_image[0], HOPPER_FACE) >= 0.5


@pytest.mark.parametrize("detector", P.DETECTORS)
def test_boxes_are_upright_for_an_exif_rotated_file(hopper, tmp_path, fer, detector):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter left; viewers turn it 90° clockwise to show it upright
    hopper.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "turned.jpg", quality=95, exif=exif)
    upright = P.detect_faces(hopper, detector=detector)
    boxes = P.detect_faces(tmp_path / "turned.jpg", detector=detector)  # a path: read upright
    assert len(boxes) == 1 and _iou(boxes[0], upright[0]) >= 0.8
    row = P.predict(fer, tmp_path / "turned.jpg", detection="detect", detector=detector).iloc[0]
    assert row.status == "ok" and row.detection == detector and _iou(row.box, upright[0]) >= 0.8


@pytest.mark.parametrize("detector", P.DETECTORS)
def test_detection_modes_with_either_detector(fer, tmp_path, detector):
    Image.new("L", (200, 150), 128).save(tmp_path / "blank.png")
    found = P.predict(fer, HOPPER, detection="detect", detector=detector)
    assert list(found.status) == ["ok"] and found.detection[0] == detector
    assert _iou(found.box[0], HOPPER_FACE) >= 0.5
    expected = {"detect": ("no_face", None), "auto": ("whole_image_fallback", "whole"), "whole": ("ok", "whole")}
    for mode, (status, how) in expected.items():
        row = P.predict(fer, tmp_path / "blank.png", detection=mode, detector=detector).iloc[0]
        assert row.status == status and row.detection == how
    auto = P.predict(fer, HOPPER, detector=detector)  # auto finds the face: no fallback
    assert auto.status[0] == "ok" and auto.detection[0] == detector


def test_unknown_detector_is_refused(fer):
    with pytest.raises(ValueError, match="detector must be one of"):
        P.detect_faces(Image.new("L", (64, 64)), detector="yunet")
    with pytest.raises(ValueError, match="detector must be one of"):
        P.predict(fer, HOPPER, detector="yunet")


@pytest.mark.parametrize("detector", [*P.DETECTORS, None])
def test_cli_detector_flag(model_dir, capsys, detector):
    """``--detector`` picks the detector; without it, the default one detects."""
    code = P.main([str(HOPPER), "--model", str(model_dir / "model.keras"), "--detection", "detect",
                   *(["--detector", detector] if detector else [])])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and len(rows) == 1 and rows[0]["status"] == "ok"
    assert rows[0]["detection"] == (detector or P.DEFAULT_DETECTOR)


def test_cli_rejects_an_unknown_detector(model_dir, capsys):
    with pytest.raises(SystemExit) as err:
        P.main([str(HOPPER), "--model", str(model_dir / "model.keras"), "--detector", "yunet"])
    assert err.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_missing_mtcnn_names_the_install_command(fer, model_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mtcnn", None)  # as if the package were not installed
    with pytest.raises(ImportError, match=r"pip install mtcnn==1\.0\.0"):
        P.check_detector("mtcnn")
    with pytest.raises(ImportError, match=r"pip install mtcnn==1\.0\.0"):
        P.predict(fer, HOPPER, detector="mtcnn")
    code = P.main([str(HOPPER), "--model", str(model_dir / "model.keras"), "--detector", "mtcnn"])
    assert code == 2 and "pip install mtcnn==1.0.0" in capsys.readouterr().err
    whole = P.predict(fer, HOPPER, detection="whole", detector="mtcnn")  # no detector needed: no error
    assert whole.status[0] == "ok" and whole.detection[0] == "whole"
    P.check_detector("haar")  # the cascade needs nothing more
    assert detection.MTCNN_REQUIREMENT == "mtcnn==1.0.0"


def test_the_pinned_mtcnn_is_the_one_installed():
    """pyproject.toml pins the version the code was written and measured against."""
    import tomllib
    from importlib.metadata import version
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    assert detection.MTCNN_REQUIREMENT in project["dependencies"]
    assert version("mtcnn") == detection.MTCNN_REQUIREMENT.split("==")[1]
