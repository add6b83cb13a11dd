"""The demo page (``python -m fer_utils demo``, ``fer_utils.prediction.demo``): what it shows for good and bad
files (the command line's statuses), the ipywidgets app driven from Python, the command's errors, and the
served page in headless Chromium (marker ``browser``).

A tiny untrained model honouring the contract is built here (seconds); the face is matplotlib's Grace Hopper
portrait, so the Haar detector finds a real face without the dataset.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import matplotlib.cbook
import numpy as np
import pytest
from PIL import Image

from fer_utils import EMOTIONS, import_tensorflow, models
from fer_utils import prediction as P
from fer_utils.models import ModelRecord
from fer_utils.prediction import demo

REPO = Path(__file__).resolve().parent.parent
HOPPER = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
SIZE = 32


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A work folder's ``model.keras`` + ``model.json``: a tiny grayscale CNN (untrained; seconds to build)."""
    _, keras = import_tensorflow()
    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inp)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv_a")(x)
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv_last")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(len(EMOTIONS), activation="softmax")(x), name="tiny")
    path = tmp_path_factory.mktemp("work") / "model.keras"
    with warnings.catch_warnings():  # Keras 3.15 + NumPy 2 warn inside model.save; not ours to fix
        warnings.filterwarnings("ignore", message=".*__array__ implementation doesn't accept a copy.*")
        models.save(model, path, ModelRecord("tiny", (SIZE, SIZE), "grayscale"))
    return path


@pytest.fixture(scope="module")
def fer(model_path):
    return P.load_model(model_path)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A face photo and the bad files a user may drop on the page."""
    d = tmp_path_factory.mktemp("uploads")
    face = d / "hopper.jpg"
    Image.open(HOPPER).convert("RGB").save(face, quality=90)
    out = {"face": face, "text": d / "notes.jpg", "truncated": d / "cut.jpg", "tiny": d / "dot.png",
           "empty": d / "empty.jpg"}
    out["text"].write_text("this is not an image\n")
    out["truncated"].write_bytes(face.read_bytes()[:400])
    Image.new("L", (1, 1), 128).save(out["tiny"])
    out["empty"].write_bytes(b"")
    return out


# --------------------------------------------------------------------------------------------------- analyse


def test_a_face_is_boxed_labelled_and_explained(fer, files):
    a = demo.analyse(fer, files["face"])
    assert a.name == "hopper.jpg" and a.problems == [] and a.notes == [] and a.gradcam_error is None
    assert len(a.faces) == 1
    row = a.faces[0].row
    assert row["status"] == "ok" and row["detection"] not in (None, "whole") and row["emotion"] in EMOTIONS
    assert list(row["probabilities"]) == list(EMOTIONS)
    assert abs(sum(row["probabilities"].values()) - 1) < 1e-4
    assert a.annotated.size == (512, 600)  # shown as it is: within demo.DISPLAY_SIDE
    heat = a.faces[0].gradcam
    assert heat.dtype == np.uint8 and heat.shape[0] == demo.FACE_HEIGHT and heat.shape[2] == 3


@pytest.mark.parametrize("kind", ["text", "truncated", "tiny", "empty"])
def test_bad_files_get_the_command_lines_statuses(fer, files, kind):
    """The page runs ``predict`` on the uploaded file: the same statuses and messages as the command line."""
    cli = P.to_records(P.predict(fer, [str(files[kind])]))
    a = demo.analyse(fer, files[kind])
    assert [r["status"] for r in P.to_records(a.results)] == [r["status"] for r in cli]
    assert [r["message"] for r in P.to_records(a.results)] == [r["message"] for r in cli]
    shown = demo.messages_html(a)
    for r in cli:
        if r["status"] not in P.PREDICTED:
            assert r["status"] in shown and r["message"] in shown and a.annotated is None
    assert "Traceback" not in shown


def test_large_photos_are_shown_smaller(fer, tmp_path):
    big = tmp_path / "big.png"
    Image.open(HOPPER).resize((2048, 2400)).save(big)
    a = demo.analyse(fer, big)
    assert max(a.annotated.size) == demo.DISPLAY_SIDE[1] and a.faces[0].row["box"][2] > 500  # rows: original pixels


def test_a_one_pixel_image_is_predicted_whole_and_flagged(fer, files):
    a = demo.analyse(fer, files["tiny"])
    assert [f.row["status"] for f in a.faces] == ["whole_image_fallback"]
    assert a.notes and "whole image" in a.notes[0]
    assert min(a.annotated.size) >= demo.DISPLAY_SIDE[0]  # enlarged to be seen, label drawn at that size


def test_probability_bars_show_every_emotion_in_order():
    probs = dict(zip(EMOTIONS, np.linspace(0.01, 0.2, len(EMOTIONS))))
    html = demo.probability_bars(probs, "surprise")
    assert html.count('class="fer-prob"') == len(EMOTIONS)
    assert [html.index(f">{e}<") for e in EMOTIONS] == sorted(html.index(f">{e}<") for e in EMOTIONS)
    assert 'aria-valuenow="20.0"' in html and "20.0&nbsp;%" in html


# --------------------------------------------------------------------------------------------------- the app


@pytest.fixture()
def app(fer):
    pytest.importorskip("ipywidgets", reason="the 'demo' extra is not installed (pip install -e '.[demo]')")
    return demo.build_app(fer)


def test_app_shows_an_upload(app, files):
    data = files["face"].read_bytes()
    app.upload.value = ({"name": "me.jpg", "type": "image/jpeg", "size": len(data), "content": memoryview(data),
                         "last_modified": datetime.datetime.now(datetime.UTC)},)  # as from a browser
    assert "<b>me.jpg</b>: 1 face." in app.status.value
    assert app.photo.layout.display is None and app.photo.value[:2] == b"\xff\xd8"  # a JPEG
    (face,) = app.faces.children
    html = "".join(getattr(w, "value", "") for w in face.children[0].children + (face.children[1],)
                   if isinstance(getattr(w, "value", None), str))
    assert "Face 1:" in html and html.count('class="fer-prob"') == len(EMOTIONS)
    assert not list(Path(app._uploads.name).iterdir())  # the copy of the upload is gone


def test_app_says_what_is_wrong_with_a_bad_file(app, files):
    app.show_bytes("face.jpg", files["face"].read_bytes())
    app.show_bytes("<b>notes</b>.jpg", files["text"].read_bytes())
    assert "not_an_image" in app.status.value and "not an image format read here" in app.status.value
    assert "&lt;b&gt;notes&lt;/b&gt;.jpg" in app.status.value  # the name is shown, never as markup
    assert app.photo.layout.display == "none" and app.faces.children == ()
    assert "Traceback" not in app.status.value


def test_the_last_files_faces_go_before_the_next_file_is_analysed(app, files, monkeypatch):
    """While a new file is analysed (seconds on a busy machine), its name stands in the status line: the last
    file's photo and faces must already be gone, never shown under the new name or its message."""
    app.show_bytes("face.jpg", files["face"].read_bytes())
    assert len(app.faces.children) == 1
    seen = []
    analyse = demo.analyse

    def watching(*args, **kwargs):
        seen.append((app.status.value, app.photo.layout.display, app.faces.children, app.analysis))
        return analyse(*args, **kwargs)

    monkeypatch.setattr(demo, "analyse", watching)
    app.show_bytes("notes.jpg", files["text"].read_bytes())
    ((status, display, faces, analysis),) = seen
    assert "Analysing notes.jpg" in status and display == "none" and faces == () and analysis is None


def test_app_sample_button_and_detection_modes(app):
    app.sample.click()
    assert app.analysis.name == demo.SAMPLE_NAME and app.analysis.faces[0].row["detection"] != "whole"
    app.detection.value = "whole"  # re-runs the last photo
    row = app.analysis.faces[0].row
    assert row["detection"] == "whole" and row["box"][:2] == [0, 0]


def test_app_shows_failures_as_messages(app, files, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("the disk is on fire")

    monkeypatch.setattr(demo, "analyse", boom)
    assert app.show_bytes("me.jpg", files["face"].read_bytes()) is None
    assert "something went wrong: RuntimeError: the disk is on fire" in app.status.value


def test_upload_names_cannot_leave_the_upload_folder():
    assert demo.safe_name("../../etc/passwd") == "passwd"
    assert demo.safe_name("C:\\Users\\me\\x y.jpg") == "x y.jpg"
    assert demo.safe_name("..") == "upload" and demo.safe_name("a<b>|c.png") == "a_b_c.png"


def test_served_notebook_and_template(tmp_path):
    import nbformat

    nb = nbformat.from_dict(demo.demo_notebook("/m/model.keras", "detect"))
    nbformat.validate(nb)
    assert "demo.show_app('/m/model.keras', 'detect')" in nb.cells[0].source
    folder = demo.write_template(tmp_path)
    assert (folder / "conf.json").is_file() and "replace(" in (folder / "index.html.j2").read_text()
    voila = pytest.importorskip("voila", reason="the 'demo' extra is not installed")
    lab = Path(sys.prefix) / "share" / "jupyter" / "voila" / "templates" / "lab" / "index.html.j2"
    if lab.is_file():  # the links the template strips are still Voilà's (else the browser test says what is)
        assert demo.CDN_LINK.format("all.min.css") in lab.read_text(), voila.__version__


# --------------------------------------------------------------------------------------------------- the command


def _demo_command(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "fer_utils", "demo", *args], capture_output=True, text=True,
                          timeout=120, cwd=kwargs.get("cwd"))


def test_without_a_model_it_says_what_to_run(tmp_path):
    pytest.importorskip("voila", reason="the 'demo' extra is not installed")
    proc = _demo_command("--work-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "No trained model at" in proc.stderr and P.HOW_TO_TRAIN in proc.stderr
    assert "Traceback" not in proc.stderr



def test_a_file_that_is_no_keras_model_is_refused(tmp_path, capsys):
    pytest.importorskip("voila", reason="the 'demo' extra is not installed")
    (tmp_path / "model.h5").write_bytes(b"HDF")
    assert demo.main(["--model", str(tmp_path / "model.h5")]) == 2
    err = capsys.readouterr().err
    assert "is not a Keras 3 .keras file" in err and "Traceback" not in err


def test_without_the_extra_it_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "voila", None)
    assert demo.main(["--model", "x.keras"]) == 2
    err = capsys.readouterr().err
    assert demo.DEMO_INSTALL in err and "voila" in err and "Traceback" not in err


def test_bad_port_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        demo.main(["--port", "70000"])
    assert exit_.value.code == 2


# --------------------------------------------------------------------------------------------------- in a browser


class DemoServer:
    """``python -m fer_utils demo`` in a subprocess, on a free port; its output is collected by a thread."""

    def __init__(self, model: Path, port: int, *args: str):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "fer_utils", "demo", "--model", str(model),
                                      "--port", str(port), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, cwd=REPO)
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("Demo page: "):
                self.url = line.split()[2]
                self._ready.set()
        self._ready.set()

    def wait(self, timeout: float) -> str:
        self._ready.wait(timeout)
        assert self.url, "the demo did not start:\n" + "".join(self.lines)
        return self.url

    def kernels(self) -> int:
        """How many kernels (child processes) the server runs now."""
        return sum(len(f.read_text().split()) for f in Path(f"/proc/{self.proc.pid}/task").glob("*/children"))

    def wait_kernels(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.kernels() != n and time.monotonic() < deadline:
            time.sleep(0.5)
        assert self.kernels() == n, (n, "".join(self.lines))

    def stop(self) -> None:
        self.proc.terminate()  # Voilà stops on SIGTERM and shuts its kernels down
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.mark.browser
def test_demo_page_in_a_browser(model_path, files, tmp_path):
    """Upload a face photo: a boxed, labelled face, its bars and Grad-CAM appear; upload a text file named .jpg:
    a readable message, no traceback; no console error and nothing fetched from outside 127.0.0.1."""
    pytest.importorskip("voila", reason="the 'demo' extra is not installed (pip install -e '.[demo]')")
    from browser import PageWatch, chromium, free_port

    port = free_port()
    server = DemoServer(model_path, port, "--max-upload-mb", "1", "--cull-after", "5")
    big = tmp_path / "big.png"  # 2 MB of noise: over the page's limit
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1024, 700, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 1 << 20
    try:
        start = time.perf_counter()
        url = server.wait(timeout=180)
        assert re.fullmatch(rf"http://127\.0\.0\.1:{port}/\?token=[\w-]{{32}}", url), url
        with chromium() as browser:
            from playwright.sync_api import expect  # importable: chromium() skips the test without Playwright

            page = browser.new_page(viewport={"width": 1280, "height": 1200})
            watch = PageWatch(page)
            page.goto(url)
            page.get_by_text("Upload a photo").wait_for(timeout=180_000)  # the kernel has loaded the model
            print(f"page ready {time.perf_counter() - start:.1f} s after the command started")
            with page.expect_file_chooser() as chooser:
                page.get_by_text("Upload a photo").click()
            chooser.value.set_files(files["face"])
            title = page.locator(".fer-face-title")
            title.wait_for(timeout=60_000)
            assert title.inner_text().startswith("Face 1: ")
            assert page.locator(".fer-summary").inner_text() == "hopper.jpg: 1 face."
            assert page.locator(".fer-probabilities tr").count() == len(EMOTIONS)
            sizes = page.evaluate("[...document.querySelectorAll('img')].map(i => [i.naturalWidth, i.naturalHeight])")
            assert len(sizes) >= 2 and all(w > 0 and h > 0 for w, h in sizes), sizes  # photo + Grad-CAM map
            page.screenshot(path=tmp_path / "demo_face.png", full_page=True)

            with page.expect_file_chooser() as chooser:
                page.get_by_text("Upload a photo").click()
            chooser.value.set_files(files["text"])
            problem = page.locator(".fer-problem")
            problem.wait_for(timeout=60_000)
            assert "notes.jpg" in problem.inner_text() and "not_an_image" in problem.inner_text()
            expect(page.locator(".fer-face-title")).to_have_count(0, timeout=5_000)  # the last photo's face is gone
            body = page.inner_text("body")
            assert "Traceback" not in body and "Error" not in body
            page.screenshot(path=tmp_path / "demo_bad_file.png", full_page=True)

            with page.expect_file_chooser() as chooser:  # over the limit: said in the page, nothing sent
                page.get_by_text("Upload a photo").click()
            chooser.value.set_files(big)
            too_large = page.locator(".fer-too-large")
            too_large.wait_for(timeout=10_000)
            assert "big.png" in too_large.inner_text() and "at most 1 MB" in too_large.inner_text()
            with page.expect_file_chooser() as chooser:  # and the next upload still works
                page.get_by_text("Upload a photo").click()
            chooser.value.set_files(files["face"])
            page.locator(".fer-face-title").wait_for(timeout=60_000)
            assert page.locator(".fer-too-large").count() == 0
            assert not watch.problems(), watch.problems()
            assert server.kernels() == 1
            page.close(run_before_unload=True)  # the page goes: its kernel ends (Voilà's shutdown, else culled)
            server.wait_kernels(0)
        time.sleep(1)  # let the server's last lines arrive
        in_use = "".join(server.lines)  # what the server printed while it was used (stopping it can race)
    finally:
        server.stop()
    assert "Traceback" not in in_use, in_use


def _get(url: str, host: str | None = None) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.build_opener(NoRedirect).open(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


def _websocket(url: str, host: str, origin: str, cookie: str = "") -> int:
    """The HTTP status a websocket upgrade gets (101: accepted)."""
    import asyncio

    from tornado.httpclient import HTTPClientError, HTTPRequest
    from tornado.websocket import websocket_connect

    async def connect() -> int:
        request = HTTPRequest(url, headers={"Host": host, "Origin": origin, "Cookie": cookie})
        try:
            ws = await websocket_connect(request)
        except HTTPClientError as err:
            return err.code
        ws.close()
        return 101

    return asyncio.run(connect())


def test_demo_server_serves_only_this_computer(model_path):
    """Raw requests to 127.0.0.1: no token, another Host or another Origin are refused; each page is one kernel,
    at most --max-pages, and a kernel no page connects to is ended (--cull-after)."""
    pytest.importorskip("voila", reason="the 'demo' extra is not installed (pip install -e '.[demo]')")
    from browser import free_port

    port = free_port()
    server = DemoServer(model_path, port, "--max-pages", "2", "--cull-after", "30")  # > a page load and the checks
    try:
        url = server.wait(timeout=180)
        base, token = url.split("?token=")
        assert len(token) >= 32
        assert _get(base)[0] in (302, 403)  # no token: to the login page, no kernel
        assert _get(url, host="attacker.example")[0] == 403  # DNS rebinding: a foreign Host
        assert server.kernels() == 0
        status, page = _get(url)
        assert status == 200 and server.kernels() == 1
        assert _get(url)[0] == 200 and server.kernels() == 2
        status, refused = _get(url)  # a third page: refused, saying why
        assert status == 503 and "close one" in refused and server.kernels() == 2
        kernel = re.search(r'"kernelId": "([0-9a-f-]{36})"', page)[1]
        channels = f"ws://127.0.0.1:{port}/api/kernels/{kernel}/channels?token={token}"
        local = f"127.0.0.1:{port}"
        assert _websocket(channels, "attacker.example", "http://attacker.example") == 403
        assert _websocket(channels, local, "http://attacker.example") == 403
        assert _websocket(channels, local, f"http://{local}") == 101
        server.wait_kernels(0)  # no page connected: both ended
        assert _get(url)[0] == 200 and server.kernels() == 1
    finally:
        server.stop()
    assert "Traceback" not in "".join(server.lines)


def test_when_the_port_asked_for_is_taken_the_page_says_which_it_uses(capsys):
    """Voilà moves on to another port when the one asked for is taken: only real ports (65535 + 1 is none), and
    the address printed is the one it listens on, with a line saying so."""
    cls = demo._voila_class("secret")
    app = cls()
    ports = list(app.random_ports(65535, 10))
    assert ports[0] == 65535 and all(0 < p < 65536 for p in ports)
    app.ip, app.port = "127.0.0.1", 8872
    app._announce(8871)
    out = capsys.readouterr().out
    assert out.splitlines() == ["Port 8871 is taken: the demo listens on port 8872.",
                                "Demo page: http://127.0.0.1:8872/?token=secret  (only on this computer; Ctrl+C "
                                "stops it)"]
