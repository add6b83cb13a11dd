"""Faces: OpenCV's frontal-face Haar cascade, face boxes, and the crop of each face."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from PIL import Image

DETECTION_MODES = ("auto", "detect", "whole")
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
DEFAULT_MIN_FACE = 0.1
DEFAULT_MARGIN = 0.1
#: The cascade's own window is 24 px: photos are shrunk (for speed) until the smallest face searched for is
#: this many pixels wide (on the dataset's faces 24 px finds as many as full resolution, 2-3× faster),
#: and never searched above ``DETECT_MAX_SIDE`` pixels on the longer side.
DETECT_MIN_FACE_PX = 24
DETECT_MAX_SIDE = 1024


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


def detect_faces(image, min_face: float = DEFAULT_MIN_FACE, scale_factor: float = 1.1,
                 min_neighbors: int = 5) -> list[list[int]]:
    """Face boxes ``[x, y, w, h]`` (pixels of ``image``) found by the Haar cascade, left to right.

    ``min_face``: the smallest face searched for, as a fraction of the image's shorter side. The image
    is shrunk for the search until that size is ``DETECT_MIN_FACE_PX`` pixels (the cascade works on a
    24-pixel window, so a bigger search image only costs time), then the boxes are scaled back.
    """
    import cv2

    gray = np.asarray(image.convert("L") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    min_px = max(24.0, min_face * min(h, w))
    scale = min(1.0, DETECT_MIN_FACE_PX / min_px, DETECT_MAX_SIDE / max(h, w))
    small = gray if scale >= 1.0 else cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))),
                                                 interpolation=cv2.INTER_AREA)
    side = max(24, round(min_px * scale))
    if min(small.shape) < side:
        return []
    found = _cascade().detectMultiScale(small, scaleFactor=scale_factor, minNeighbors=min_neighbors,
                                        minSize=(side, side))
    boxes = [[round(x / scale), round(y / scale), round(bw / scale), round(bh / scale)] for x, y, bw, bh in found]
    boxes = [[x, y, min(bw, w - x), min(bh, h - y)] for x, y, bw, bh in boxes]
    return sorted(boxes, key=lambda b: (b[0], b[1]))


def crop_box(box, image_size, margin: float = DEFAULT_MARGIN) -> tuple[int, int, int, int]:
    """The crop ``(left, top, right, bottom)`` for a face box grown by ``margin`` of its size per side,
    clipped to an image of ``image_size = (width, height)``."""
    x, y, w, h = box
    W, H = image_size
    dx, dy = margin * w, margin * h
    left, top = max(0, round(x - dx)), max(0, round(y - dy))
    right, bottom = min(W, round(x + w + dx)), min(H, round(y + h + dy))
    return left, top, max(right, left + 1), max(bottom, top + 1)

