"""The model in the browser: the ONNX export agrees with Keras and onnxruntime, and the live page (``web/live.html``,
laid out by ``fer_utils.prediction.browser.live_page``) runs the detector and the model in headless Chromium on a
photo and on a fake camera playing a video of real faces, with Python's probabilities (max difference <= 0.01),
a frame rate, readable errors, and no request leaving its own origin. Marker ``browser`` for the page; skipped
without Chromium, or without the npm packages (``npm ci --prefix web``)."""

from __future__ import annotations

import numpy as np
import pytest
from browser import PageWatch, chromium, require_browser, serve_folder, wait_for
from PIL import Image

from fer_utils.prediction import browser as live

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[dev]')")
TOL = 0.01  # the parity tolerance on probabilities
SIZE = (640, 480)


@pytest.fixture(scope="module")
def sharp_model():
    """``seed_cnn`` (48×48 grayscale, 8 classes) with its logits scaled up: confident, so that any difference in
    a face's preparation would move its probabilities by far more than the tolerance."""
    from fer_utils import import_tensorflow, models
    from fer_utils.prediction.inference import as_loaded

    _, keras = import_tensorflow()
    keras.utils.set_random_seed(0)
    model = models.build("seed_cnn", (48, 48, 1))
    layer = model.get_layer("logits")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 40, bias])
    return as_loaded(model)


def faces_photo() -> tuple[Image.Image, list[list[int]]]:
    """A 640×480 RGB photo with two real faces (the Grace Hopper portrait matplotlib ships, and its mirror image,
    250 px high) on grey; returns it and the faces' boxes (x, y, w, h) of the pasted portraits."""
    from matplotlib.cbook import get_sample_data

    with get_sample_data("grace_hopper.jpg") as f:
        portrait = Image.open(f).convert("RGB")
    portrait = portrait.resize((round(portrait.width * 250 / portrait.height), 250), Image.BILINEAR)
    photo = Image.new("RGB", SIZE, (128, 128, 128))
    boxes = []
    for x, im in ((20, portrait), (SIZE[0] - 20 - portrait.width, portrait.transpose(Image.FLIP_LEFT_RIGHT))):
        photo.paste(im, (x, 115))
        boxes.append([x, 115, im.width, im.height])
    return photo, boxes


def write_y4m(path, frames: list[Image.Image], fps: int = 10) -> None:
    """A YUV4MPEG2 video (4:2:0, full-range BT.601, as Chromium's fake camera reads it) of RGB frames."""
    w, h = frames[0].size
    with open(path, "wb") as out:
        out.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for im in frames:
            ycc = np.asarray(im.convert("YCbCr"), np.float32)
            out.write(b"FRAME\n" + ycc[..., 0].round().astype(np.uint8).tobytes())
            for c in (1, 2):
                sub = ycc[..., c].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
                out.write(sub.round().astype(np.uint8).tobytes())


def test_onnx_export_matches_keras(sharp_model, tmp_path):
    from fer_utils.prediction.inference import preprocess_faces

    path = live.export_onnx(sharp_model, tmp_path / "model.onnx")
    photo, boxes = faces_photo()
    rng = np.random.default_rng(0)
    crops = [photo.crop((x, y, x + w, y + h)) for x, y, w, h in boxes]
    batch = np.concatenate([preprocess_faces(crops, sharp_model.record),
                            rng.uniform(0, 255, (6, 48, 48, 1)).astype(np.float32)])
    keras_p, onnx_p = sharp_model(batch), live.onnx_predict(path, batch)
    assert onnx_p.shape == (8, 8)
    assert np.abs(onnx_p - keras_p).max() <= 1e-4
    assert (keras_p.max(axis=1) > 0.5).mean() >= 0.5  # the sharp model is confident: the comparison means something


def test_onnx_export_keeps_tf2onnx_warnings_out_of_the_output(sharp_model, tmp_path, monkeypatch, caplog):
    """tf2onnx logs a skipped optimisation as a warning with a traceback (notebook 07 showed it, with the paths of
    this machine): the export silences it, and logging works again afterwards."""
    import logging

    import keras

    def export(self, path, **kwargs):
        logging.getLogger("tf2onnx.optimizer").warning("Failed to apply optimize_transpose")
        open(path, "wb").close()

    monkeypatch.setattr(keras.Model, "export", export)
    live.export_onnx(sharp_model, tmp_path / "model.onnx")
    assert "optimize_transpose" not in caplog.text
    logging.getLogger("tf2onnx.optimizer").warning("after the export")
    assert "after the export" in caplog.text


def test_live_page_without_npm_packages_says_how_to_get_them(tmp_path):
    with pytest.raises(live.MissingPackagesError, match="npm ci --prefix web"):
        live.live_page(tmp_path / "live", node_modules=tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ the browser


@pytest.fixture(scope="module")
def served(sharp_model, tmp_path_factory):
    """The live page with the sharp model, served on 127.0.0.1; (base URL, the folder)."""
    require_browser()
    if live.missing_packages():
        pytest.skip(f"the live page's npm packages are not installed: run `{live.NPM_INSTALL}`")
    folder = tmp_path_factory.mktemp("live")
    live.live_page(folder, sharp_model)
    with serve_folder(folder) as url:
        yield url, folder


@pytest.fixture(scope="module")
def camera_video(tmp_path_factory):
    photo, boxes = faces_photo()
    path = tmp_path_factory.mktemp("camera") / "faces.y4m"
    write_y4m(path, [photo] * 5)
    return path, boxes


@pytest.fixture(scope="module")
def chromium_with_camera(camera_video):
    with chromium(["--use-fake-device-for-media-stream",
                   f"--use-file-for-fake-video-capture={camera_video[0]}"]) as browser:
        yield browser


def open_page(browser, url, camera: bool):
    context = browser.new_context(permissions=["camera"] if camera else [])
    page = context.new_page()
    page.set_default_timeout(30_000)
    watch = PageWatch(page)
    page.goto(url)
    wait_for(lambda: (page.evaluate("ferLive.ready || ferLive.error"), page.evaluate("ferLive.error")), 60,
             "the live page to load face-api.js's detector and the ONNX model (ferLive.ready)")
    assert page.evaluate("ferLive.ready"), page.evaluate("ferLive.error")
    return context, page, watch


def inside(box, portrait) -> bool:
    """A face box whose centre lies in the pasted portrait and whose area is 10–100 % of it."""
    x, y, w, h = box
    px, py, pw, ph = portrait
    return px <= x + w / 2 <= px + pw and py <= y + h / 2 <= py + ph and 0.1 <= w * h / (pw * ph) <= 1


def check_faces(faces, inputs, truth, model, session, photo=None):
    """Every true face found once; the page's probabilities equal Python's (Keras and onnxruntime) on the page's
    input; with ``photo``: that input equals Python's preprocess_faces of the page's crop, the crop its box's."""
    from fer_utils.prediction.detection import crop_box
    from fer_utils.prediction.inference import preprocess_faces

    assert len(faces) == len(truth), faces
    for t in truth:  # the portrait holds shoulders and background too: the face box is a part of it
        assert sum(inside(f["box"], t) for f in faces) == 1, (t, [f["box"] for f in faces])
    batch = np.asarray(inputs, np.float32).reshape(len(faces), 48, 48, 1)
    page_p = np.asarray([f["probs"] for f in faces], np.float32)
    assert np.abs(page_p - live.onnx_predict(session, batch)).max() <= TOL
    assert np.abs(page_p - model(batch)).max() <= TOL
    assert [f["label"] for f in faces] == [model.record.class_names[k] for k in model(batch).argmax(axis=1)]
    if photo is not None:
        for f in faces:
            assert tuple(f["crop"]) == crop_box(f["box"], photo.size)
        python = preprocess_faces([photo.crop(tuple(f["crop"])) for f in faces], model.record)
        assert np.abs(python - batch).max() <= 1e-3
        assert np.abs(page_p - model(python)).max() <= TOL


@pytest.mark.browser
def test_photo_labels_faces_like_python(served, chromium_with_camera, sharp_model, tmp_path):
    url, folder = served
    photo, boxes = faces_photo()
    photo.save(tmp_path / "two_faces.png")
    (tmp_path / "broken.jpg").write_text("not an image\n")
    session = live.onnx_session(folder / "model" / live.ONNX_FILE)
    context, page, watch = open_page(chromium_with_camera, url, camera=False)
    try:
        assert "Nothing leaves this machine" in page.inner_text("#privacy")
        page.set_input_files("#photo", str(tmp_path / "two_faces.png"))
        wait_for(lambda: page.evaluate("ferLive.photoDone === 1"), 60, "the page to analyse the photo (photoDone)")
        faces, inputs = page.evaluate("ferLive.faces"), page.evaluate("ferLive.inputs")
        check_faces(faces, inputs, boxes, sharp_model, session, photo)
        assert page.locator("#probs tr").count() == len(faces) + 1
        page.set_input_files("#photo", str(tmp_path / "broken.jpg"))
        wait_for(lambda: page.evaluate("ferLive.error"), 20, "a message about the broken file")
        assert "Could not read “broken.jpg” as an image" in page.inner_text("#error")
        # A camera that is not allowed (this context was granted none).
        page.click("#camera")
        wait_for(lambda: "No camera" in page.inner_text("#error"), 20, "a message about the denied camera")
        assert "not allowed" in page.inner_text("#error")
        assert not watch.remote and not watch.failed and not watch.page_errors, watch.problems()
    finally:
        context.close()


@pytest.mark.browser
def test_fake_camera_is_labelled_live_with_a_frame_rate(served, chromium_with_camera, camera_video, sharp_model):
    url, folder = served
    session = live.onnx_session(folder / "model" / live.ONNX_FILE)
    context, page, watch = open_page(chromium_with_camera, url, camera=True)
    try:
        page.click("#camera")
        wait_for(lambda: (page.evaluate("ferLive.frames >= 3 && ferLive.fps > 0"),
                          page.evaluate("[ferLive.frames, ferLive.fps, ferLive.error]")), 60,
                 "three camera frames analysed and a frame rate (ferLive.frames, fps, error)")
        state = page.evaluate("({faces: ferLive.faces, inputs: ferLive.inputs, fps: ferLive.fps})")
        assert page.evaluate("ferLive.backend") == "wasm"  # the detector's default backend, its .wasm from the site
        check_faces(state["faces"], state["inputs"], camera_video[1], sharp_model, session)
        assert float(page.inner_text("#fps")) > 0
        print(f"camera: {state['fps']:.1f} frames/s, detector {page.evaluate('ferLive.detectMs'):.0f} ms, "
              f"model {page.evaluate('ferLive.modelMs'):.0f} ms, ONNX loaded in "
              f"{page.evaluate('ferLive.modelLoadMs'):.0f} ms")
        page.click("#stop")
        assert not watch.remote and not watch.failed and not watch.page_errors, watch.problems()
    finally:
        context.close()
