"""Faces: two detectors (MTCNN, the default, and OpenCV's Haar cascade), face boxes, the crop of each face.

``detect_faces(image, detector=...)`` returns square boxes ``[x, y, w, h]`` in pixels of the upright image
(a path is read with ``read_image``, so its EXIF orientation is applied first), left to right.

- ``"mtcnn"`` (default): the MTCNN cascade of three small CNNs (PNet → RNet → ONet, Zhang et al. 2016)
  from the ``mtcnn`` package (ipazc, MIT, pinned 1.0.0: a 1.9 MB pure-Python wheel with its weights inside;
  it needs only ``joblib`` and ``lz4`` beside our TensorFlow — no download, no PyTorch). Its nets run on
  the pinned TensorFlow/Keras, each wrapped here in one ``tf.function``; the image pyramid is built here
  too (the package's own returns no face at all once its last level is too small for PNet, e.g.
  ``min_face_size`` ≥ 30 on a 512-px photo). ``min_confidence`` is ONet's face probability threshold
  (0.9). MTCNN's box (brow to chin, taller than wide) is turned into the square the cascade gives on the
  same face (``MTCNN_SQUARE``, fitted on the dataset's faces), so ``margin`` and the crops the model sees
  stay those it was trained on. The first call costs about 1 s (weights, tracing).
- ``"haar"``: OpenCV's frontal-face Haar cascade (``haarcascade_frontalface_default.xml``, inside the
  ``opencv-python-headless`` 4.x wheel). It misses tilted and turned faces and fires on face-like
  texture (in notebook 07 it boxes a cheek of ``test/64a.jpg``).

Why MTCNN is the default (``benchmarks/detectors.py``, ``benchmarks/results/detectors.md``; 150 composites
of 640×480 with 368 of the dataset's faces, 80–250 px, rotated ±15°, and 60 photos without a face; 2 shared
AMD EPYC cores, load average about 5): recall at IoU ≥ 0.3 0.995 against the cascade's 0.908 (0.993
against 0.846 for faces tilted 10–15°), false positives 0 per photo against 0.013 on face photos and
0.017 on face-free ones; on the dataset's 263 tight ``test/`` crops it finds a face in 205 (the cascade
97, with a cheek-sized box on ``64a.jpg``). Detection takes about as long as the cascade's (median 26 ms a
photo for both), and ``predict`` of one 600×512 photo took a median 31 ms warm against 37 ms with the
cascade in the same run, inside the 50 ms target.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from PIL import Image

DETECTION_MODES = ("auto", "detect", "whole")
DETECTORS = ("haar", "mtcnn")
DEFAULT_DETECTOR = "mtcnn"
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
DEFAULT_MIN_FACE = 0.1
DEFAULT_MARGIN = 0.1
#: The cascade's own window is 24 px: photos are shrunk (for speed) until the smallest face searched for is
#: this many pixels wide (on the dataset's faces 24 px finds as many as full resolution, 2-3× faster),
#: and never searched above ``DETECT_MAX_SIDE`` pixels on the longer side.
DETECT_MIN_FACE_PX = 24
DETECT_MAX_SIDE = 1024
#: MTCNN's PNet looks at 12-px windows of a pyramid that starts where the smallest face searched for is
#: this many pixels (MTCNN's usual 20): photos are shrunk until that is the case, like for the cascade.
MTCNN_MIN_FACE_PX = 20
#: ONet's score threshold (``min_confidence``) by default.
DEFAULT_MIN_CONFIDENCE = 0.9
#: At most this many RNet candidates (best first) go on to ONet, the costly last stage (its time grows
#: with them; a photo rarely has more than a few faces).
MTCNN_MAX_CANDIDATES = 24
#: MTCNN box → square: side = ``k`` × sqrt(w·h), centre moved down by ``dy`` × side. Fitted on 256 of the
#: dataset's 350×350 LFW faces where both detectors find one face: the median Haar box is 0.93 × MTCNN's
#: geometric-mean side and sits 2.5 % of its side higher (MTCNN's box reaches lower, to the chin).
MTCNN_SQUARE = {"k": 0.93, "dy": -0.025}
MTCNN_REQUIREMENT = "mtcnn==1.0.0"
MTCNN_MISSING = (f"detector='mtcnn' needs the mtcnn package: pip install {MTCNN_REQUIREMENT} (pip install -e . "
                 "installs it with the project), or use detector='haar'.")


@functools.lru_cache(maxsize=1)
def _cascade():
    import cv2

    base = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if base is None or not (Path(base) / HAAR_CASCADE).exists():
        raise RuntimeError("OpenCV's Haar cascades are missing (opencv-python-headless 5.x no longer ships "
                           "them): install opencv-python-headless<5, or use detection='whole'.")
    cascade = cv2.CascadeClassifier(str(Path(base) / HAAR_CASCADE))
    if cascade.empty():
        raise RuntimeError(f"OpenCV could not load {HAAR_CASCADE}.")
    return cascade


def _pixels(image, mode: str) -> np.ndarray:
    """An upright 8-bit array of ``image`` (a path, a Pillow image or an array) in ``mode`` ("L" or "RGB")."""
    if isinstance(image, (str, os.PathLike)):
        from fer_utils.prediction.images import read_image

        image = read_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert(mode), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    arr = arr.squeeze(-1) if arr.ndim == 3 and arr.shape[-1] == 1 else arr
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if mode == "L" and arr.ndim == 3:
        import cv2

        return cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2GRAY)
    if mode == "RGB" and arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=-1)
    return arr


def _shrunk(arr: np.ndarray, min_px: float, window_px: int) -> tuple[np.ndarray, float]:
    """``arr`` shrunk until a face of ``min_px`` is ``window_px`` wide (never above ``DETECT_MAX_SIDE``)."""
    import cv2

    h, w = arr.shape[:2]
    scale = min(1.0, window_px / min_px, DETECT_MAX_SIDE / max(h, w))
    if scale >= 1.0:
        return arr, 1.0
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(arr, size, interpolation=cv2.INTER_AREA), scale


def _haar(image, min_face: float, scale_factor: float, min_neighbors: int) -> list[list[int]]:
    gray = _pixels(image, "L")
    h, w = gray.shape
    min_px = max(24.0, min_face * min(h, w))
    small, scale = _shrunk(gray, min_px, DETECT_MIN_FACE_PX)
    side = max(24, round(min_px * scale))
    if min(small.shape) < side:
        return []
    found = _cascade().detectMultiScale(small, scaleFactor=scale_factor, minNeighbors=min_neighbors,
                                        minSize=(side, side))
    return [[round(x / scale), round(y / scale), round(bw / scale), round(bh / scale)] for x, y, bw, bh in found]


# --------------------------------------------------------------------------------------------------
# MTCNN
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _mtcnn_stages():
    """The three MTCNN stages with the package's weights, each net in one ``tf.function`` (traced once)."""
    from fer_utils import import_tensorflow

    tf, _ = import_tensorflow()
    try:
        from mtcnn.stages import StageONet, StagePNet, StageRNet
        from mtcnn.utils.bboxes import generate_bounding_box, resize_to_square, smart_nms_from_bboxes, upscale_bboxes
    except ImportError as err:
        raise ImportError(MTCNN_MISSING) from err

    class PyramidPNet(StagePNet):
        """PNet over a pyramid from ``12 / min_face_size`` down to a 12-px image (every level valid)."""

        def __call__(self, images_normalized, images_oshapes=None, min_face_size=MTCNN_MIN_FACE_PX,
                     scale_factor=0.709, threshold_pnet=0.6, nms_pnet1=0.5, nms_pnet2=0.7, **kwargs):
            h, w = images_normalized.shape[1:3]
            found, scale = [], 12 / min_face_size
            while min(h, w) * scale >= 12:
                level = tf.image.resize(images_normalized, (round(h * scale), round(w * scale)), method="area")
                reg, cls = self._model(level)
                boxes = upscale_bboxes(generate_bounding_box(reg, cls, threshold_pnet), np.asarray([scale]))
                if len(boxes):
                    found.append(smart_nms_from_bboxes(boxes, threshold=nms_pnet1, method="union",
                                                       initial_sort=False))
                scale *= scale_factor
            if not found:
                return np.empty((0, 6))
            boxes = smart_nms_from_bboxes(np.concatenate(found), threshold=nms_pnet2, method="union",
                                          initial_sort=True)
            return resize_to_square(boxes)

    spec = [tf.TensorSpec([None, None, None, 3], tf.float32)]
    stages = (PyramidPNet(), StageRNet(), StageONet())
    for stage in stages:
        net = stage._model  # the package's stages call their net as self._model(batch)
        stage._model = tf.function(lambda x, net=net: net(x, training=False), input_signature=spec)
    return stages


def mtcnn_raw(image, min_face_px: float = MTCNN_MIN_FACE_PX,
              min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> np.ndarray:
    """MTCNN's own boxes on ``image`` (an RGB uint8 array), as rows ``x1, y1, x2, y2, score``, best first."""
    from fer_utils import import_tensorflow

    tf, _ = import_tensorflow()
    pnet, rnet, onet = _mtcnn_stages()
    arr = _pixels(image, "RGB")
    if min(arr.shape[:2]) < 12:
        return np.empty((0, 5))
    x = tf.constant((arr.astype(np.float32)[None] - 127.5) / 128)
    boxes = pnet(x, min_face_size=min_face_px)
    if len(boxes):
        boxes = rnet(images_normalized=x, bboxes_batch=boxes)
    if len(boxes):
        boxes = boxes[np.argsort(-boxes[:, 5], kind="stable")[:MTCNN_MAX_CANDIDATES]]
        boxes = onet(images_normalized=x, bboxes_batch=boxes, threshold_onet=min_confidence)
    if not len(boxes):
        return np.empty((0, 5))
    rows = np.asarray(boxes[:, 1:6], dtype=np.float64)
    return rows[np.argsort(-rows[:, 4], kind="stable")]


def _mtcnn(image, min_face: float, min_confidence: float) -> list[tuple[list[int], float]]:
    arr = _pixels(image, "RGB")
    h, w = arr.shape[:2]
    min_px = max(float(MTCNN_MIN_FACE_PX), min_face * min(h, w))
    small, scale = _shrunk(arr, min_px, MTCNN_MIN_FACE_PX)
    out = []
    for x1, y1, x2, y2, score in mtcnn_raw(small, MTCNN_MIN_FACE_PX, min_confidence):
        bw, bh = (x2 - x1) / scale, (y2 - y1) / scale
        side = MTCNN_SQUARE["k"] * np.sqrt(max(bw, 1.0) * max(bh, 1.0))
        cx, cy = (x1 + x2) / 2 / scale, (y1 + y2) / 2 / scale + MTCNN_SQUARE["dy"] * side
        if side >= min_face * min(h, w):
            out.append(([round(cx - side / 2), round(cy - side / 2), round(side), round(side)], float(score)))
    return out


def check_detector(detector: str) -> None:
    """Raise ``ValueError`` for an unknown detector and ``ImportError`` (naming the install command) when
    the package it needs is missing."""
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, not {detector!r}")
    if detector == "mtcnn":
        import importlib.util

        try:
            found = importlib.util.find_spec("mtcnn") is not None
        except (ImportError, ValueError):  # a module set to None, or without a spec
            found = False
        if not found:
            raise ImportError(MTCNN_MISSING)


def detect_faces_scored(image, min_face: float = DEFAULT_MIN_FACE, scale_factor: float = 1.1,
                        min_neighbors: int = 5, *, detector: str = DEFAULT_DETECTOR,
                        min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> list[tuple[list[int], float | None]]:
    """``detect_faces`` with each box's score: ``(box, score)`` pairs, left to right (score: MTCNN's ONet
    probability; None for the cascade, which has none)."""
    check_detector(detector)
    if isinstance(image, (str, os.PathLike)):
        from fer_utils.prediction.images import read_image

        image = read_image(image)
    if isinstance(image, Image.Image):
        w, h = image.size
    else:
        h, w = np.asarray(image).shape[:2]
    if detector == "haar":
        found = [(box, None) for box in _haar(image, min_face, scale_factor, min_neighbors)]
    else:
        found = _mtcnn(image, min_face, min_confidence)
    clipped = []
    for (x, y, bw, bh), score in found:  # inside the image (an MTCNN square may reach past an edge)
        left, top = max(0, x), max(0, y)
        right, bottom = min(w, x + bw), min(h, y + bh)
        if right > left and bottom > top:
            clipped.append(([left, top, right - left, bottom - top], score))
    return sorted(clipped, key=lambda f: (f[0][0], f[0][1]))


def detect_faces(image, min_face: float = DEFAULT_MIN_FACE, scale_factor: float = 1.1, min_neighbors: int = 5,
                 *, detector: str = DEFAULT_DETECTOR,
                 min_confidence: float = DEFAULT_MIN_CONFIDENCE) -> list[list[int]]:
    """Square face boxes ``[x, y, w, h]`` (pixels of the upright ``image``), left to right.

    ``image``: a Pillow image, an array, or a path (read with ``read_image``: EXIF orientation applied).
    ``detector``: ``"haar"`` or ``"mtcnn"`` (see the module's docstring). ``min_face``: the smallest face
    searched for, as a fraction of the image's shorter side; the image is shrunk for the search until that
    size is the detector's window (``DETECT_MIN_FACE_PX`` for Haar, ``MTCNN_MIN_FACE_PX`` for MTCNN: a
    bigger search image only costs time), then the boxes are scaled back. ``scale_factor`` and
    ``min_neighbors`` are the cascade's; ``min_confidence`` is MTCNN's (ONet's face probability, 0-1).
    Boxes are square, clipped to the image.
    """
    return [box for box, _ in detect_faces_scored(image, min_face, scale_factor, min_neighbors, detector=detector,
                                                  min_confidence=min_confidence)]


def crop_box(box, image_size, margin: float = DEFAULT_MARGIN) -> tuple[int, int, int, int]:
    """The crop ``(left, top, right, bottom)`` for a face box grown by ``margin`` of its size per side,
    clipped to an image of ``image_size = (width, height)``."""
    x, y, w, h = box
    W, H = image_size
    dx, dy = margin * w, margin * h
    left, top = max(0, round(x - dx)), max(0, round(y - dy))
    right, bottom = min(W, round(x + w + dx)), min(H, round(y + h + dy))
    return left, top, max(right, left + 1), max(bottom, top + 1)
