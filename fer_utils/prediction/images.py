"""Reading inputs: any file, Pillow image or array → an upright 8-bit ``L``/``RGB`` Pillow image; folders → files.

``read_image`` never lets a bad input escape as anything but an ``ImageProblem`` whose ``status`` says what
kind of problem it is (see ``fer_utils.prediction.STATUSES``); the pixels go through
``fer_utils.data.to_8bit``, the same rule the class folders of notebook 02 are written with.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fer_utils.data import FORMATS_READ, IMAGE_SUFFIXES, ImageRefused, open_image, to_8bit


class ImageProblem(Exception):
    """A file that yields no image; ``status`` is one of ``STATUSES``."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


def resolved(item) -> Path | None:
    """``Path(item).resolve()``, or None for anything that cannot be resolved (a symbolic link loop...)."""
    try:
        return Path(item).resolve()
    except (OSError, RuntimeError, TypeError, ValueError):
        return None


def file_id(path) -> tuple[int, int] | None:
    """``(device, inode)`` of a file: the same for every name (hard link, symbolic link) it has; None if none."""
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return None
    return st.st_dev, st.st_ino


def is_folder(item) -> bool:
    """``item`` names an existing folder (False for anything that is not a usable path)."""
    if not isinstance(item, (str, os.PathLike)):
        return False
    try:
        return Path(item).is_dir()
    except (OSError, ValueError):  # a name too long, a NUL byte...
        return False


def _check_path(path: Path) -> None:
    """Raise ``ImageProblem`` for a path that cannot hold an image, before Pillow opens it."""
    try:
        if not path.exists():
            if path.is_symlink():
                raise ImageProblem("not_found", "a symbolic link that leads nowhere (broken, or a loop)")
            raise ImageProblem("not_found", "no such file")
        if path.is_dir():
            has_images = any(Path(f).suffix.lower() in PHOTO_SUFFIXES for _, _, files in os.walk(path) for f in files)
            raise ImageProblem("not_an_image", "a folder" if has_images else "a folder with no image files in it")
        if not path.is_file():  # a FIFO would block Pillow forever; devices and sockets are no images
            raise ImageProblem("not_an_image", "not a regular file")
        if path.stat().st_size == 0:
            raise ImageProblem("not_an_image", "empty file")
    except OSError as err:
        raise ImageProblem("unreadable", f"{type(err).__name__}: {err.strerror or err}") from None
    except ValueError as err:  # e.g. an embedded NUL byte
        raise ImageProblem("not_found", f"not a usable path: {err}") from None


@contextlib.contextmanager
def _pillow_notes_ignored():
    """Pillow's ``UserWarning`` notes ("Corrupt EXIF data"...): a broken EXIF block is ignored, not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        yield


def _converted(im: Image.Image) -> Image.Image:
    try:
        with _pillow_notes_ignored():
            out = to_8bit(im)
    except Exception as err:  # noqa: BLE001 - an exotic mode Pillow cannot convert
        raise ImageProblem("unreadable", f"cannot convert a {im.mode} image to 8-bit: {err}") from None
    return out  # a copy: never the caller's (or an open file's) image itself


def _open(path: Path) -> Image.Image:
    """The first frame of ``path``, decoded and converted while the file is open; ``ImageProblem`` if impossible."""
    try:
        with _pillow_notes_ignored(), open_image(path) as im:
            try:
                im.load()
            except Exception as err:  # noqa: BLE001 - truncated/corrupt data surfaces here with varied types
                raise ImageProblem("unreadable", f"{im.format or 'image'} data cannot be decoded: "
                                                 f"{type(err).__name__}: {err}") from None
            return _converted(im)
    except ImageProblem:
        raise
    except ImageRefused as refused:  # not a format read here (JPEG, PNG...), or too many pixels
        raise ImageProblem(refused.status, str(refused)) from None
    except UnidentifiedImageError:
        raise ImageProblem("not_an_image", f"not an image format read here ({FORMATS_READ})") from None
    except PermissionError:
        raise ImageProblem("unreadable", "permission denied") from None
    except Exception as err:  # noqa: BLE001 - Pillow's plugins raise many types on malformed headers
        raise ImageProblem("unreadable", f"{type(err).__name__}: {err}") from None


def read_image(source) -> Image.Image:
    """Read a photo as an upright 8-bit Pillow image in mode ``L`` or ``RGB``; raise ``ImageProblem`` if unusable.

    ``source``: a path, a Pillow image or a NumPy array (H×W or H×W×3/4). Only the first frame of an
    animation or a multi-page file is used. Pixels follow ``fer_utils.data.to_8bit``: turned by the
    EXIF orientation, transparency flattened onto white, 16-bit and float images scaled (not clipped).
    """
    if isinstance(source, np.ndarray):
        try:
            im = Image.fromarray(source)
        except (TypeError, ValueError) as err:
            raise ImageProblem("not_an_image", f"an array Pillow cannot read as an image: {err}") from None
    elif isinstance(source, Image.Image):
        im = source
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        _check_path(path)
        return _open(path)
    else:
        raise ImageProblem("error", f"not a path, a Pillow image or an array: {type(source).__name__}")
    return _converted(im)


def gray_as_trained(rgb: np.ndarray) -> np.ndarray:
    """RGB ``uint8`` pixels ``(H, W, 3)`` → gray ``(H, W)`` exactly as training turns them gray: a colour PNG of
    the class folders decoded with ``tf.io.decode_image(channels=1)`` goes through libpng's fixed-point
    ITU-R 601 weights, truncated. Pillow's ``convert("L")`` rounds, and differs by one level on some pixels."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((9797 * r + 19234 * g + 3737 * b) >> 15).astype(np.uint8)


def face_pixels(face, channels: int) -> np.ndarray:
    """A face (Pillow image or ``uint8`` array) as ``uint8`` pixels ``(H, W, channels)``, the way the training
    pipeline gives them: gray from colour by ``gray_as_trained``, colour from gray by repeating the channel,
    any other mode (``RGBA``, ``I;16``…) through ``fer_utils.data.to_8bit`` first, as the class folders do."""
    if not isinstance(face, Image.Image):
        face = Image.fromarray(np.asarray(face, dtype=np.uint8).squeeze())
    if face.mode not in ("L", "RGB"):
        face = _converted(face)
    arr = np.asarray(face, dtype=np.uint8)
    if channels == 1:
        return (arr if arr.ndim == 2 else gray_as_trained(arr))[..., None]
    return np.repeat(arr[..., None], 3, axis=-1) if arr.ndim == 2 else arr


def as_trained(source, channels: int, image: Image.Image | None = None) -> Image.Image:
    """``source`` (a path, Pillow image or array) as an ``L`` (``channels`` 1) or ``RGB`` (3) image holding the
    pixels training would have decoded from it, the same size as ``read_image(source)``.

    A JPEG or PNG that notebook 02 copies into the class folders as it is (``fer_utils.folders.kept_as_is``)
    is decoded by ``tf.io.decode_image``, as ``keras.utils.image_dataset_from_directory`` decodes it:
    TensorFlow's JPEG decoder is not Pillow's (another DCT, so a few levels apart on colour JPEGs, and it
    takes gray straight from the file's luma). Anything else is re-encoded as PNG
    in the class folders, so its pixels are ``read_image``'s, made gray or colour by ``face_pixels``.
    ``image``: ``read_image(source)`` when the caller has it already (saves reading it twice). "Training"
    is the tf.data pipeline (``pipelines.directory_dataset``); the seed's ``pipeline="generator"`` decodes
    and resizes with Pillow, so a model trained that way gets close pixels, not the same ones.
    """
    im = read_image(source) if image is None else image
    if isinstance(source, (str, os.PathLike)):
        decoded = _tf_decoded(Path(source), channels, im.size)
        if decoded is not None:
            return decoded
    return _as_image(face_pixels(im, channels))


def _as_image(pixels: np.ndarray) -> Image.Image:
    """``uint8`` pixels ``(H, W, 1)`` or ``(H, W, 3)`` as an ``L`` or ``RGB`` Pillow image."""
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def _tf_decoded(path: Path, channels: int, size: tuple[int, int]) -> Image.Image | None:
    """``path`` decoded by TensorFlow as training decodes it, or None when training saw it re-encoded (not a
    file kept as it is) or TensorFlow cannot decode it."""
    from fer_utils import import_tensorflow
    from fer_utils.folders import kept_as_is

    try:
        with _pillow_notes_ignored():  # a broken EXIF block is ignored here, as by read_image
            with open_image(path) as header:
                fmt, mode = header.format, header.mode
            if not kept_as_is(path, fmt, mode):
                return None
        tf, _ = import_tensorflow()
        arr = tf.io.decode_image(path.read_bytes(), channels=channels, expand_animations=False).numpy()
    except Exception:  # noqa: BLE001 - read_image has read it; Pillow's pixels are the best left
        return None
    if arr.shape[:2] != (size[1], size[0]):
        return None
    return _as_image(arr)


#: The suffixes a folder's photos are taken by: the dataset's (``IMAGE_SUFFIXES``) and JPEG's rarer spellings.
PHOTO_SUFFIXES = frozenset(IMAGE_SUFFIXES | {".jfif", ".jpe"})


def walk_photos(folder, excluded: Sequence[Path] = (), skipped: list | None = None) -> list[str]:
    """The photos in ``folder`` and its sub-folders (sorted; links to folders followed, each real folder walked
    once; hidden entries and ``excluded`` folders left out). ``skipped`` receives ``(path, why)`` for every other
    file and every folder that could not be read, so that nothing is left out without a word."""
    found, walked = [], {}

    def unreadable(err: OSError) -> None:
        if skipped is not None:
            skipped.append((str(err.filename), f"a folder that cannot be read ({err.strerror or err})"))

    for root, dirs, files in os.walk(Path(folder), onerror=unreadable, followlinks=True):
        real = os.path.realpath(root)
        if real in walked:  # a link back up (a loop) or to a folder walked already
            if skipped is not None:
                skipped.append((root, f"the same folder as {walked[real]}, walked once"))
            dirs[:] = []
            continue
        walked[real] = root
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and not any(resolved(Path(root) / d) == e for e in excluded))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            if Path(name).suffix.lower() in PHOTO_SUFFIXES:
                found.append(path)
            elif skipped is not None:
                skipped.append((path, f"not a photo by its name ({Path(name).suffix or 'no suffix'}; "
                                      f"{FORMATS_READ} are read)"))
    return found


def collect_inputs(paths: Iterable, exclude: Sequence[os.PathLike] = (), repeats: list | None = None,
                   skipped: list | None = None) -> list:
    """Expand folders (``walk_photos``: recursively, links to folders followed, photos by suffix, hidden entries
    left out, sorted); ``skipped`` receives ``(path, why)`` for the other files and unreadable folders in them.

    Files named explicitly are kept whatever their suffix (a non-image then gets its status), and so are
    Pillow images, arrays and anything else (which gets an ``error`` row). A folder with no image file
    in it is kept as it is, so that it gets a row too. Files are returned as the caller spelled them (a
    folder's files joined to the folder), never made absolute. Paths under any ``exclude`` folder (e.g.
    the annotation folder) are skipped. A file named twice (itself, through a link, or inside a folder also
    named) is kept once, where it first appears: one row per photo, one annotated copy (the results are grouped
    by file). ``repeats``: a list that receives ``(name left out, the name kept)`` for each of them, so that a
    caller can say so.
    """
    excluded = [r for r in map(resolved, exclude) if r is not None]
    out, seen = [], {}

    def first_time(path) -> bool:
        key = file_id(path) or str(path)
        if key in seen:
            if repeats is not None:
                repeats.append((str(path), seen[key]))
            return False
        seen[key] = str(path)
        return True

    for item in paths:
        if not is_folder(item):
            if not isinstance(item, (str, os.PathLike)) or first_time(item):
                out.append(str(item) if isinstance(item, os.PathLike) else item)
            continue
        found = walk_photos(item, excluded, skipped)
        out.extend([f for f in found if first_time(f)] or ([] if found else [str(item)]))
    return out
