"""Step 7 — use the trained model on new photos: find faces, predict, explain (Grad-CAM), export.

The model is the one notebook 05 writes, ``<work_dir>/model.keras``, with its record ``model.json`` beside
it (``fer_utils.models.ModelRecord``: ``image_size``, ``color_mode``, ``class_names``, ``input_range``,
``interpolation``, ``tta``, the sha256 of the model file). It takes float32 pixels in [0, 255] and outputs
softmax probabilities (the contract in ``fer_utils.models``). ``model_provenance`` says which file is used
and whether the ``model.json`` and ``metrics.json`` beside it describe that very file; the command line
prints it, with a warning when they do not.

Typical use::

    from fer_utils import prediction

    fer = prediction.load_model()                       # <work_dir>/model.keras + model.json
    results = prediction.predict(fer, ["photos/", "me.jpg"])   # one row per face (a DataFrame)
    prediction.detect_faces("me.jpg", detector="haar")  # just the face boxes, [x, y, w, h]

or from a shell: ``python -m fer_utils predict photos/ me.jpg --format csv --annotate annotated/``.

The modules, one concern each:

=================  ==================================================================================
``images``         any file, Pillow image or array → an upright 8-bit L/RGB image; folders → files
``detection``      the face detectors (MTCNN, the Haar cascade), face boxes, crops
``inference``      the model and its record, provenance, preprocessing, batches, the rows and their formats
``annotation``     boxes and labels drawn on copies of the photos
``gradcam``        Grad-CAM heatmaps
``export``         SavedModel and TFLite export, and running the exports
``cli``            ``python -m fer_utils predict``
=================  ==================================================================================

Everything public is imported here: use ``prediction.predict``, ``prediction.annotate``... (the modules are
not named after those functions, so ``prediction.predict`` is always the function).

How a photo becomes rows:

1. **Read** with Pillow (only JPEG, PNG, WebP, BMP, GIF, TIFF and PPM/PGM, ``data.IMAGE_FORMATS``, of at most
   ``data.MAX_PIXELS`` = 50 megapixels; the first frame of an animation or of a multi-page file) and made
   an 8-bit gray or RGB image by ``fer_utils.data.to_8bit`` — the rule the class folders were written with:
   turned upright by its EXIF orientation, transparency flattened onto white, 16-bit and float images
   scaled to 8 bits (not clipped), CMYK, LAB… converted to RGB: what the class folders hold of it. The
   faces are found on that image; the pixels the model gets are ``as_trained``'s: a JPEG or PNG that the
   class folders keep as it is is decoded by TensorFlow, as training decodes it (TensorFlow's JPEG decoder
   gives other pixels than Pillow's).
2. **Find faces** with ``detection``:

   - ``"detect"``: the ``detector``'s faces; faces smaller than ``min_face`` × the shorter side are
     ignored. ``detector="mtcnn"`` (default): the MTCNN CNN cascade of the ``mtcnn`` wheel (weights
     inside, runs on our TensorFlow); ``detector="haar"``: OpenCV's frontal-face Haar cascade (inside
     ``opencv-python-headless`` 4.x). Neither downloads anything. On composites of the dataset's faces
     (``benchmarks/results/detectors.md``) MTCNN finds 99.5 % of faces against 90.8 %, tilted ones
     included, with no false box against about 1 in 70 photos, at the same speed.
   - ``"whole"``: the whole image is one face (photos that are already face crops, like the dataset's).
   - ``"auto"`` (default): detect, and when nothing is found use the whole image, flagged
     ``whole_image_fallback``. Tight face crops often fire no detector (MTCNN misses 58 of the dataset's
     263 unlabelled ``test/`` photos, the cascade 166), so this default gives every readable photo a
     prediction and says which ones were not detected.

3. **Crop** each face box grown by ``margin`` of its size on every side (0.1 by default: on the
   training images the cascade's box covers about 83 % of the face crop, so 0.1 reproduces the framing
   the model learned; MTCNN's boxes are made the same squares), clipped to the image.
4. **Preprocess exactly as training did** (``fer_utils.pipelines.directory_dataset``): convert to the
   model's colour mode (TensorFlow's gray for grayscale, ``gray_as_trained``), resize with ``tf.image.resize``
   (``interpolation`` from ``model.json``, default bilinear, no antialiasing — what
   ``image_dataset_from_directory`` does), float32 in [0, 255]. The model rescales inside itself.
   ``"tta": "flip"`` in ``model.json`` averages each face with its mirror image.
5. **Predict** all faces of a batch of photos in one call of the model.

Every input gets at least one row (a folder with no image file in it too); a bad file never stops the
batch, and no input, however broken, raises. ``status`` is one of:

=========================  ===================================================================
``ok``                     a face, found by the detector (or the whole image with ``detection="whole"``)
``whole_image_fallback``   ``auto``: no face detected, so the whole image was used as the face
``no_face``                ``detect``: the detector found no face (no prediction)
``not_an_image``           not an image format read here (text, empty file, PDF, EPS…), or a folder without images
``unreadable``             an image format, but it cannot be decoded (truncated, corrupt, over 50 megapixels)
``not_found``              the path does not exist (or is a broken or looping symbolic link)
``error``                  anything else that went wrong for this file (``message`` says what)
=========================  ===================================================================

Rows have ``file`` (as the caller gave it; files found in a folder are joined to the folder as given),
``face`` (0, 1… left to right; None without a face), ``status``, ``detection`` (the detector that found
the face, ``"mtcnn"`` or ``"haar"``; ``"whole"``; or None), ``box`` (``[x, y, w, h]`` of the face in the
upright image, pixels; the whole image for ``"whole"``; None without a face), ``emotion`` and
``confidence`` (the top class and its probability), ``probabilities`` (emotion → probability, all 8) and
``message`` (why a file has no prediction).
"""

from fer_utils.prediction.annotation import (
    BOX_COLORS,
    AnnotatedCopies,
    annotate,
    check_annotate_dir,
    existing_copies,
    plan_copies,
    write_annotated,
)
from fer_utils.prediction.cli import build_parser, main
from fer_utils.prediction.detection import (
    DEFAULT_DETECTOR,
    DEFAULT_MARGIN,
    DEFAULT_MIN_CONFIDENCE,
    DEFAULT_MIN_FACE,
    DETECT_MAX_SIDE,
    DETECT_MIN_FACE_PX,
    DETECTION_MODES,
    DETECTORS,
    HAAR_CASCADE,
    MTCNN_MIN_FACE_PX,
    check_detector,
    crop_box,
    detect_faces,
    detect_faces_scored,
)
from fer_utils.prediction.export import (
    export_savedmodel,
    export_tflite,
    float32_model,
    savedmodel_predict,
    tflite_interpreter,
    tflite_predict,
)
from fer_utils.prediction.gradcam import grad_cam, overlay_heatmap
from fer_utils.prediction.images import (
    ImageProblem,
    as_trained,
    collect_inputs,
    face_pixels,
    gray_as_trained,
    read_image,
)
from fer_utils.prediction.inference import (
    COLUMNS,
    HOW_TO_TRAIN,
    PREDICTED,
    STATUSES,
    LoadedModel,
    ModelLoadError,
    as_loaded,
    default_model_path,
    describe_model,
    load_model,
    model_provenance,
    predict,
    preprocess_faces,
    summary,
    to_flat,
    to_records,
)

__all__ = [
    # the model and its record
    "LoadedModel", "ModelLoadError", "load_model", "as_loaded", "default_model_path", "model_provenance",
    "describe_model", "HOW_TO_TRAIN",
    # reading inputs
    "ImageProblem", "read_image", "collect_inputs", "as_trained", "face_pixels", "gray_as_trained",
    # faces
    "DETECTION_MODES", "DETECTORS", "DEFAULT_DETECTOR", "HAAR_CASCADE", "DEFAULT_MIN_FACE", "DEFAULT_MARGIN",
    "DEFAULT_MIN_CONFIDENCE", "DETECT_MIN_FACE_PX", "MTCNN_MIN_FACE_PX", "DETECT_MAX_SIDE", "check_detector",
    "detect_faces", "detect_faces_scored", "crop_box",
    # prediction and its rows
    "STATUSES", "PREDICTED", "COLUMNS", "preprocess_faces", "predict", "summary", "to_records", "to_flat",
    # annotated copies
    "BOX_COLORS", "AnnotatedCopies", "annotate", "check_annotate_dir", "existing_copies", "plan_copies",
    "write_annotated",
    # Grad-CAM
    "grad_cam", "overlay_heatmap",
    # export
    "float32_model", "export_savedmodel", "export_tflite", "tflite_interpreter", "tflite_predict",
    "savedmodel_predict",
    # command line
    "build_parser", "main",
]
