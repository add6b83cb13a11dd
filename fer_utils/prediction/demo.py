"""``python -m fer_utils demo``: a local web page to try the trained model on a photo.

    python -m fer_utils demo [--model PATH] [--work-dir DIR] [--port N] [--detection auto|detect|whole]

Choose a photo with *Upload a photo* (or click *Try a sample photo*): the page shows the photo with each face boxed and
labelled (``annotate``), the eight probabilities of each face as bars, and each face's Grad-CAM map
(``grad_cam`` + ``overlay_heatmap``, as in notebook 07). The photo goes through ``predict`` from its file,
exactly as with ``python -m fer_utils predict``, so a file that is not an image, a truncated one or an
empty one gets the same status and message as on the command line — shown on the page, never a traceback.

The page serves one person on this computer: it listens on 127.0.0.1 only, answers only requests whose Host
(and, for the websocket, Origin) is 127.0.0.1 or localhost (so a web page elsewhere cannot drive it, DNS
rebinding included), and needs a token made at each launch, in the address it prints. Each page gets its own
kernel (about 0.8 GB with the model), ended when the page closes, or after ``CULL_AFTER`` seconds idle with no
page connected; at most ``MAX_PAGES`` at once. A photo over ``MAX_UPLOAD_MB`` is refused in the page, and the
next upload still works. It needs no network: every script and style comes from the local
server, photos never leave the computer. The model is ``<work_dir>/model.keras`` (``--model`` for another);
without one the command says what to run first and exits with status 2.

**Why Voilà and ipywidgets, not Gradio.** Gradio (6.31, the current release) declares ``pillow<13``, and
this project pins Pillow 13.0.0 (every image of the dataset is decoded and checked with it): the two cannot
be installed together. Voilà (Jupyter's own dashboard server, which the series' Jupyter stack already
mostly is: the ``demo`` extra adds 27 MB) serves an ipywidgets app from a notebook, works offline (its
JavaScript is bundled; the page's template, ``TEMPLATE``, leaves out the two style sheets Voilà links from a
CDN), and lets ``build_app`` return an ordinary widget that tests drive without a browser. What Gradio's
image component would add and this page lacks: dropping a file on the page and taking a photo with the
webcam — save one and upload it.

Install the extra first: ``pip install -e ".[demo]"``. ``build_app(loaded_model, detection)`` builds the
page's widget (``DemoApp``), ``analyse`` is what it shows for one file, and ``main`` is the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import io
import json
import logging
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fer_utils.prediction.annotation import annotate
from fer_utils.prediction.detection import DEFAULT_MARGIN, DEFAULT_MIN_FACE, DETECTION_MODES, crop_box
from fer_utils.prediction.gradcam import grad_cam, overlay_heatmap
from fer_utils.prediction.images import ImageProblem, as_trained, read_image
from fer_utils.prediction.inference import (
    PREDICTED,
    LoadedModel,
    ModelLoadError,
    describe_model,
    load_and_announce,
    load_model,
    model_provenance,
    predict,
    preprocess_faces,
)

DEMO_INSTALL = 'pip install -e ".[demo]"'
DEFAULT_PORT = 8866
MAX_PAGES = 3  # pages (kernels, about 0.8 GB each) served at once; one more is refused until one closes
CULL_AFTER = 60  # seconds: a kernel no page is connected to (closed, reloaded), idle this long, is ended
MAX_UPLOAD_MB = 32  # a larger photo is refused in the page, before it is sent (the websocket takes 64 MB)
WEBSOCKET_MB = 64
DISPLAY_SIDE = (320, 640)  # the annotated photo is shown with its longer side in this range (pixels)
FACE_HEIGHT = 160  # Grad-CAM maps are shown this high (pixels)
NOTEBOOK_NAME = "Facial emotion recognition.ipynb"  # the page's title is the notebook's name
SAMPLE_NAME = "grace_hopper.jpg"  # matplotlib's sample portrait: a real face for "Try a sample photo"
STATUS_TEXT = {  # what each status means, in words, for the page
    "ok": "face found",
    "whole_image_fallback": "no face detected, so the whole image was used as the face",
    "no_face": "no face found",
    "not_an_image": "this file is not an image",
    "unreadable": "this image cannot be decoded",
    "not_found": "the file is gone",
    "error": "something went wrong with this file",
}
INTENDED_USE = ("For learning and experiments only: a facial <em>expression</em> is not an <em>emotion</em>, and "
                "this model must not be used to decide anything about a person. Use photos of people only with "
                "their consent. Everything runs on this computer; nothing is uploaded anywhere.")
log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# What the page shows for one photo
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Face:
    """One predicted face: its result row (``predict``'s columns) and its Grad-CAM map over the crop (RGB)."""

    row: dict
    gradcam: np.ndarray | None = None


@dataclasses.dataclass
class Analysis:
    """What ``analyse`` found in one file: ``predict``'s rows, the annotated photo (None when no face was
    predicted), the faces, and what to tell the user (``problems``: rows without a prediction; ``notes``:
    predictions to take with care; ``gradcam_error`` when the maps could not be made)."""

    name: str
    results: pd.DataFrame
    annotated: Image.Image | None
    faces: list[Face]
    problems: list[str]
    notes: list[str]
    gradcam_error: str | None = None


def _display_scale(size: tuple[int, int]) -> float:
    lo, hi = DISPLAY_SIDE
    side = max(size)
    return hi / side if side > hi else lo / side if side < lo else 1.0


def _scaled_rows(rows: list[dict], scale: float) -> list[dict]:
    out = []
    for row in rows:
        row = dict(row)
        if isinstance(row.get("box"), list):
            row["box"] = [round(v * scale) for v in row["box"]]
        out.append(row)
    return out


def _face_crop(im: Image.Image, row: dict, margin: float) -> Image.Image:
    """The crop ``predict`` classified for a row (the box grown by ``margin``; the whole image for ``whole``)."""
    if row.get("detection") == "whole":
        return im
    return im.crop(crop_box(row["box"], im.size, margin))


def _describe(status: str, message) -> str:
    meaning = STATUS_TEXT.get(status, status)
    detail = f" ({message})" if isinstance(message, str) and message and message != meaning else ""
    return f"{status}: {meaning}{detail}"


def analyse(loaded: LoadedModel, path: str | os.PathLike, detection: str = "auto", name: str | None = None,
            min_face: float = DEFAULT_MIN_FACE, margin: float = DEFAULT_MARGIN) -> Analysis:
    """Predict the faces of one file with ``predict`` (the command line's statuses and messages) and make
    what the page shows: the photo annotated at display size, and each face's Grad-CAM map. Never raises
    for a bad file: its status is in ``problems``."""
    name = name or Path(path).name
    results = predict(loaded, [str(path)], detection=detection, min_face=min_face, margin=margin)
    results["file"] = name
    rows = results.to_dict("records")
    problems = [_describe(r["status"], r["message"]) for r in rows if r["status"] not in PREDICTED]
    notes = [_describe(r["status"], None) for r in rows if r["status"] == "whole_image_fallback"]
    predicted = [r for r in rows if r["status"] in PREDICTED]
    if not predicted:
        return Analysis(name, results, None, [], problems, notes)
    try:
        im = read_image(str(path))
    except ImageProblem as problem:  # the file changed since it was predicted
        return Analysis(name, results, None, [], [_describe(problem.status, str(problem))], notes)
    scale = _display_scale(im.size)
    shown = im if scale == 1 else im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                                            Image.LANCZOS if scale < 1 else Image.BICUBIC)
    annotated = annotate(shown, _scaled_rows(rows, scale))
    crops = [_face_crop(im, r, margin) for r in predicted]
    pixels = as_trained(str(path), loaded.record.channels, im)  # what predict classified
    faces, gradcam_error = [Face(r) for r in predicted], None
    try:
        heatmaps = grad_cam(loaded, preprocess_faces([_face_crop(pixels, r, margin) for r in predicted], loaded))
    except Exception as err:  # noqa: BLE001 - the predictions are still worth showing
        log.warning("Grad-CAM failed", exc_info=True)
        gradcam_error = f"Grad-CAM maps could not be made for this model: {type(err).__name__}: {err}"
    else:
        for face, crop, heat in zip(faces, crops, heatmaps):
            width = max(1, round(crop.width * FACE_HEIGHT / crop.height))
            face.gradcam = overlay_heatmap(np.asarray(crop.convert("RGB").resize((width, FACE_HEIGHT),
                                                                                 Image.BICUBIC)), heat)
    return Analysis(name, results, annotated, faces, problems, notes, gradcam_error)


# --------------------------------------------------------------------------------------------------
# HTML pieces (plain HTML with inline styles: they render the same in any front end)
# --------------------------------------------------------------------------------------------------


def probability_bars(probabilities: dict, top: str | None = None) -> str:
    """The probabilities as a table of horizontal bars (the top class highlighted), in the model's class order."""
    lines = []
    for emotion, p in probabilities.items():
        pct = 100 * float(p)
        strong = emotion == top
        color = "#2e7d32" if strong else "#7f8c8d"
        weight = "600" if strong else "400"
        lines.append(
            f'<tr class="fer-prob"><td style="padding:1px 8px 1px 0;font-weight:{weight}">{html.escape(emotion)}</td>'
            f'<td style="padding:1px 0"><div role="meter" aria-label="{html.escape(emotion)}" aria-valuemin="0" '
            f'aria-valuemax="100" aria-valuenow="{pct:.1f}" style="width:180px;height:14px;background:#eceff1;'
            f'border-radius:3px"><div style="width:{pct:.1f}%;height:100%;background:{color};border-radius:3px">'
            f'</div></div></td><td style="padding:1px 0 1px 8px;text-align:right;font-variant-numeric:tabular-nums;'
            f'font-weight:{weight}">{pct:.1f}&nbsp;%</td></tr>')
    return f'<table class="fer-probabilities" style="border-collapse:collapse">{"".join(lines)}</table>'


def face_caption(index: int, row: dict) -> str:
    how = "whole image" if row.get("detection") == "whole" else "detected face"
    return (f'<div class="fer-face-title" style="font-weight:600;margin-bottom:4px">Face {index + 1}: '
            f'{html.escape(str(row["emotion"]))} {100 * row["confidence"]:.0f}&nbsp;% '
            f'<span style="font-weight:400;color:#555">({how})</span></div>')


def messages_html(analysis: Analysis) -> str:
    """The summary line, and what went wrong or needs care, for the top of the results."""
    name = html.escape(analysis.name)
    n = len(analysis.faces)
    parts = []
    if n:
        parts.append(f'<p class="fer-summary"><b>{name}</b>: {n} face{"s" if n != 1 else ""}.</p>')
    for text in analysis.problems:
        parts.append(f'<p class="fer-problem" style="color:#b71c1c"><b>{name}</b> — {html.escape(text)}</p>')
    for text in analysis.notes + ([analysis.gradcam_error] if analysis.gradcam_error else []):
        parts.append(f'<p class="fer-note" style="color:#8a5300">{html.escape(text)}</p>')
    return "".join(parts)


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# The page: ipywidgets
# --------------------------------------------------------------------------------------------------


def safe_name(name: str) -> str:
    """A file name that is safe to write in the upload folder (the user's name, without any folder part)."""
    base = re.sub(r"[^\w.\- ]+", "_", Path(str(name).replace("\\", "/")).name).strip(" .") or "upload"
    return base[-120:]


def sample_photo() -> Path:
    """matplotlib's sample portrait of Grace Hopper (shipped with matplotlib; a real face)."""
    import matplotlib.cbook

    return Path(matplotlib.cbook.get_sample_data(SAMPLE_NAME, asfileobj=False))


class DemoApp:
    """The page: upload (or sample) → ``analyse`` → the annotated photo, and per face its Grad-CAM map and
    probability bars. ``widget`` is the ipywidgets box to display; ``show_file`` and ``show_bytes`` are what
    the upload and the sample button call (tests call them too)."""

    def __init__(self, loaded: LoadedModel, detection: str = "auto", model_line: str = ""):
        import ipywidgets as w

        if detection not in DETECTION_MODES:
            raise ValueError(f"detection must be one of {DETECTION_MODES}, not {detection!r}")
        self.loaded = loaded
        self._uploads = tempfile.TemporaryDirectory(prefix="fer-demo-")
        self._last: tuple[str, bytes] | None = None  # the last file shown, to re-run when detection changes
        self.analysis: Analysis | None = None
        self.upload = w.FileUpload(accept="image/*", multiple=False, description="Upload a photo",
                                   icon="upload", button_style="primary", layout=w.Layout(width="auto"))
        self.sample = w.Button(description="Try a sample photo", icon="image", layout=w.Layout(width="auto"))
        self.detection = w.ToggleButtons(
            options=[("auto", "auto"), ("faces only", "detect"), ("whole image", "whole")], value=detection,
            tooltips=["find faces; if none, use the whole image",
                      "find faces; none found, no prediction",
                      "the image is one face (for photos that are face crops)"],
            style={"button_width": "auto"})
        self.status = w.HTML(value='<p class="fer-status" style="color:#555">Choose a photo with one or more '
                                   'faces: it is analysed here, on this computer.</p>')
        self.status.add_class("fer-status-box")  # where the page's script says an upload was too large
        self.photo = w.Image(format="jpeg", layout=w.Layout(max_width="100%", height="auto", display="none",
                                                             margin="0 24px 12px 0", align_self="flex-start"))
        self.faces = w.VBox(layout=w.Layout(flex="1 1 420px"))
        results = w.HBox([self.photo, self.faces], layout=w.Layout(flex_flow="row wrap"))
        header = w.HTML(
            '<h2 style="margin:0 0 4px 0">Facial emotion recognition</h2>'
            '<p style="margin:0 0 8px 0;color:#333">Each face is boxed and labelled with the emotion the model sees; '
            'beside the photo, per face, its Grad-CAM map (red: where the evidence for the predicted emotion '
            'lies) and the probabilities of the eight emotions.</p>'
            + (f'<p class="fer-model" style="margin:0 0 8px 0;color:#555;font-size:90%">{html.escape(model_line)}</p>'
               if model_line else ""))
        footer = w.HTML(f'<p style="color:#666;font-size:85%;margin-top:16px">{INTENDED_USE}</p>')
        controls = w.HBox([self.upload, self.sample, w.Label("Faces:", layout=w.Layout(margin="0 0 0 16px")),
                           self.detection], layout=w.Layout(flex_flow="row wrap", align_items="center"))
        self.widget = w.VBox([header, controls, self.status, results, footer],
                             layout=w.Layout(max_width="1200px", padding="8px"))
        self.upload.observe(self._on_upload, names="value")
        self.sample.on_click(self._on_sample)
        self.detection.observe(self._on_detection, names="value")

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # events ---------------------------------------------------------------------------------------

    def _on_upload(self, change) -> None:
        files = change["new"]
        if not files:
            return
        item = files[0]
        self.show_bytes(item["name"], bytes(item["content"]))

    def _on_sample(self, _button) -> None:
        path = sample_photo()
        self.show_bytes(path.name, path.read_bytes())

    def _on_detection(self, _change) -> None:
        if self._last is not None:
            self.show_bytes(*self._last)

    # showing a file -------------------------------------------------------------------------------

    def show_bytes(self, name: str, data: bytes) -> Analysis | None:
        """Write an uploaded file to a private folder and show it (``show_file``); the copy is removed after."""
        self._last = (name, data)
        path = Path(self._uploads.name) / safe_name(name)
        try:
            path.write_bytes(data)
            return self.show_file(path, name)
        except OSError as err:
            self._fail(name, f"could not store the upload: {err.strerror or err}")
            return None
        finally:
            path.unlink(missing_ok=True)

    def show_file(self, path: str | os.PathLike, name: str | None = None) -> Analysis | None:
        """Analyse a file and show the result; any failure is shown as a message on the page."""
        name = name or Path(path).name
        self.status.value = f'<p class="fer-status" style="color:#555">Analysing {html.escape(name)}…</p>'
        self._clear()  # the last file's faces never stand under this file's name or message
        try:
            analysis = analyse(self.loaded, path, self.detection.value, name=name)
        except Exception as err:  # noqa: BLE001 - the page says what went wrong, the server log has the traceback
            log.exception("analysing %s failed", name)
            self._fail(name, f"{type(err).__name__}: {err}")
            return None
        self.render(analysis)
        return analysis

    def _fail(self, name: str, why: str) -> None:
        self._clear()
        self.status.value = (f'<p class="fer-problem" style="color:#b71c1c"><b>{html.escape(name)}</b> — '
                             f'something went wrong: {html.escape(why)}</p>')

    def _clear(self) -> None:
        """Remove the shown results (the photo and the faces), before a message or another file's results."""
        self.analysis = None
        self.photo.layout.display = "none"
        self.faces.children = ()

    def render(self, analysis: Analysis) -> None:
        import ipywidgets as w

        self._clear()
        self.analysis = analysis
        self.status.value = messages_html(analysis)
        if analysis.annotated is None:
            return
        self.photo.value = jpeg_bytes(analysis.annotated)
        self.photo.layout.display = None
        boxes = []
        for i, face in enumerate(analysis.faces):
            left = [w.HTML(face_caption(i, face.row))]
            if face.gradcam is not None:
                left += [w.Image(value=png_bytes(face.gradcam), format="png",
                                 layout=w.Layout(width=f"{face.gradcam.shape[1]}px", height=f"{FACE_HEIGHT}px")),
                         w.HTML('<div style="color:#666;font-size:85%">Grad-CAM: evidence for '
                                f'{html.escape(str(face.row["emotion"]))}</div>')]
            bars = w.HTML(probability_bars(face.row["probabilities"], face.row["emotion"]),
                          layout=w.Layout(margin="24px 0 0 16px"))
            boxes.append(w.HBox([w.VBox(left, layout=w.Layout(flex="0 0 auto")), bars],
                                layout=w.Layout(margin="0 0 16px 0", flex_flow="row wrap")))
        self.faces.children = tuple(boxes)


def build_app(loaded_model, detection: str = "auto", work_dir: str | os.PathLike | None = None) -> DemoApp:
    """The demo page for a model: a ``LoadedModel`` (``load_model``), a path to a ``.keras`` file or a Keras
    model. ``display(app)`` (or ``app.widget``) shows it in a notebook; ``python -m fer_utils demo`` serves it."""
    from fer_utils.prediction.inference import as_loaded

    loaded = as_loaded(loaded_model)
    provenance = model_provenance(loaded, work_dir)
    line = " ".join([describe_model(provenance), *provenance["warnings"]])
    return DemoApp(loaded, detection, line)


def show_app(model_path: str, detection: str = "auto"):
    """What the served notebook runs: load the model and display the page (a readable message if it fails)."""
    from IPython.display import HTML, display

    try:
        app = build_app(load_model(model_path), detection)
    except ModelLoadError as err:
        display(HTML(f'<p style="color:#b71c1c">{html.escape(str(err))}</p>'))
        return None
    display(app.widget)
    return app


# --------------------------------------------------------------------------------------------------
# The command: serve the page with Voilà
# --------------------------------------------------------------------------------------------------


def demo_notebook(model_path: str | os.PathLike, detection: str) -> dict:
    """The one-cell notebook Voilà serves (its code is never shown on the page)."""
    import nbformat

    source = ("from fer_utils.prediction import demo\n\n"
              f"app = demo.show_app({str(model_path)!r}, {detection!r})")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    return nb


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_utils demo",
        description="A local web page (127.0.0.1 only, no network needed) to try the trained model on photos: faces "
                    "boxed and labelled, probabilities as bars, Grad-CAM maps.",
        epilog=f"Needs the 'demo' extra: {DEMO_INSTALL}. Exit status 2 when there is no model or the extra is "
               "missing.")
    parser.add_argument("--model", help="a .keras file (default: <work_dir>/model.keras)")
    parser.add_argument("--work-dir", help="the work folder whose model.keras to use ($FER_WORK_DIR, else work/)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}; the next free one if it is taken)")
    parser.add_argument("--detection", choices=DETECTION_MODES, default="auto",
                        help="the page's initial face mode: auto (detect, else the whole image), detect, whole")
    parser.add_argument("--max-pages", type=int, default=MAX_PAGES,
                        help=f"pages served at once, each with its own kernel of about 0.8 GB (default {MAX_PAGES})")
    parser.add_argument("--cull-after", type=int, default=CULL_AFTER, metavar="SECONDS",
                        help="end a kernel no page is connected to after this many idle seconds "
                             f"(default {CULL_AFTER})")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB,
                        help=f"largest photo the page accepts, in MB (default {MAX_UPLOAD_MB}; above 0 and "
                             f"below {WEBSOCKET_MB}, the websocket's limit)")
    return parser


def _missing_extra() -> str | None:
    """What to install when the ``demo`` extra is missing, else None."""
    missing = []
    for module in ("voila", "ipywidgets"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        return (f"The demo page needs the 'demo' extra ({', '.join(missing)} not installed). Install it with\n"
                f"  {DEMO_INSTALL}\n(from the repository root, in the environment you run this from).")
    return None


def _voila_class(token: str):
    """Voilà's application for the page: Host checked (127.0.0.1 and localhost only; Voilà itself turns the check
    off), and the page's address, token included, printed once it listens."""
    from tornado.ioloop import IOLoop
    from voila.app import Voila

    class DemoVoila(Voila):
        def init_settings(self):
            settings = super().init_settings()
            settings["allow_remote_access"] = False  # jupyter_server's check_host: loopback addresses and ...
            settings["local_hostnames"] = ["localhost"]  # ... these names only (no DNS rebinding)
            return settings

        def init_handlers(self):
            return [(h[0], _local_origin_only(h[1]), *h[2:]) if h[0].endswith("/channels") else h
                    for h in super().init_handlers()]

        def random_ports(self, port, n):  # the ports tried when the one asked for is taken: real ports only
            return (p for p in super().random_ports(port, n) if 0 < p < 65536)

        def start(self):
            asked = self.port
            IOLoop.current().add_callback(lambda: self._announce(asked))
            super().start()

        def _announce(self, asked: int):
            if self.port != asked:
                print(f"Port {asked} is taken: the demo listens on port {self.port}.", flush=True)
            print(f"Demo page: {self._url(self.ip)}?token={token}  (only on this computer; Ctrl+C stops it)",
                  flush=True)

    return DemoVoila


def _local_origin_only(handler):
    """The kernel websocket handler, accepting only a page of this server: an ``Origin`` (browsers always send
    one) of http://127.0.0.1 or http://localhost at the port asked for (jupyter_server skips its own check for a
    request carrying the token)."""
    from urllib.parse import urlparse

    class LocalOriginOnly(handler):
        def check_origin(self, origin=None):
            origin = origin if origin is not None else self.request.headers.get("Origin")
            if origin is None:
                return True  # not a browser: the token (or cookie) and the Host check still apply
            url, host = urlparse(origin.lower()), self.request.host.lower()
            ok = (url.scheme == "http" and url.hostname in ("127.0.0.1", "localhost") and url.netloc == host)
            if not ok:
                self.log.warning("Refused a websocket from another page (Origin %s, Host %s)", origin, host)
            return ok

        def write_error(self, status_code, **kwargs):  # jupyter_server's error page fails to render here
            self.finish(f"{status_code}: {self._reason}")

    return LocalOriginOnly


def _bounded_kernel_manager():
    """jupyter_server's kernel manager, refusing a kernel beyond ``max_kernels`` (the page says to close one)."""
    from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
    from tornado import web
    from traitlets import Integer

    class BoundedKernelManager(AsyncMappingKernelManager):
        max_kernels = Integer(MAX_PAGES, config=True, help="the most kernels (pages) at once")

        async def start_kernel(self, *args, kernel_id=None, **kwargs):
            if kernel_id is None and len(self.list_kernel_ids()) >= self.max_kernels:
                raise web.HTTPError(503, reason=f"{self.max_kernels} pages of the demo are open already: close "
                                                "one (or wait a few minutes) and reload this page")
            return await super().start_kernel(*args, kernel_id=kernel_id, **kwargs)

    return BoundedKernelManager


#: Voilà's "lab" template, less the two style sheets it links from a CDN (Font Awesome 5, for icons that
#: JupyterLab's own bundled styles already draw): offline, they would only fail to load.
TEMPLATE_NAME = "fer-demo"
TEMPLATE = """{%- extends 'voila/templates/lab/index.html.j2' -%}
{%- block notebook_css -%}
{{ super() | replace(CDN_ALL, "") | replace(CDN_SHIMS, "") }}
{%- endblock notebook_css -%}
{%- block html_head_js -%}
{{ super() }}
<script>UPLOAD_GUARD</script>
{%- endblock html_head_js -%}
"""
#: Runs before the widgets: a file chosen in an upload button that is larger than the limit is never sent (it
#: would close the websocket: the page would ignore every later upload); the page says so where its messages go
#: (the status widget, class ``fer-status-box``), and the button is ready for the next file.
UPLOAD_GUARD = """(function () {
  var limit = LIMIT_BYTES, add = EventTarget.prototype.addEventListener;
  function refuse(input, file) {
    input.value = "";
    var box = document.querySelector(".fer-status-box .widget-html-content") || document.body;
    var p = document.createElement("p"), b = document.createElement("b");
    p.className = "fer-problem fer-too-large";
    p.style.color = "#b71c1c";
    b.textContent = file.name;
    p.appendChild(b);
    p.appendChild(document.createTextNode(" \u2014 too large to upload: " + (file.size / 1048576).toFixed(1) +
      " MB (at most " + (limit / 1048576).toFixed(0) + " MB). Choose a smaller photo."));
    box.replaceChildren(p);
  }
  EventTarget.prototype.addEventListener = function (type, listener, options) {
    if (type === "change" && this instanceof HTMLInputElement && typeof listener === "function") {
      var input = this, inner = listener;
      listener = function (event) {
        var files = input.type === "file" && input.files ? Array.from(input.files) : [];
        var big = files.find(function (f) { return f.size > limit; });
        if (big) { refuse(input, big); return; }
        return inner.apply(this, arguments);
      };
    }
    return add.call(this, type, listener, options);
  };
})();"""
CDN_LINK = ('<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/@fortawesome/fontawesome-free@^5/css/{}" '
            'type="text/css" />')


def write_template(jupyter_dir: Path, max_upload_mb: float = MAX_UPLOAD_MB) -> Path:
    """Write the page's Voilà template into ``<jupyter_dir>/voila/templates/fer-demo`` (a Jupyter data folder
    for ``JUPYTER_PATH``); uploads over ``max_upload_mb`` are refused in the page."""
    folder = jupyter_dir / "voila" / "templates" / TEMPLATE_NAME
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "conf.json").write_text(json.dumps({"base_template": "lab"}), encoding="utf-8")
    text = TEMPLATE.replace("CDN_ALL", json.dumps(CDN_LINK.format("all.min.css")))
    text = text.replace("CDN_SHIMS", json.dumps(CDN_LINK.format("v4-shims.min.css")))
    text = text.replace("UPLOAD_GUARD", UPLOAD_GUARD.replace("LIMIT_BYTES", str(int(max_upload_mb * (1 << 20)))))
    (folder / "index.html.j2").write_text(text, encoding="utf-8")
    return folder


def voila_config(port: int, token: str = "", max_pages: int = MAX_PAGES, cull_after: int = CULL_AFTER):
    """Voilà's settings for the page: 127.0.0.1 only, the launch's ``token`` required, no browser opened, no
    tracebacks on the page, one kernel per page (none kept waiting: Voilà's preheated pool would hold one even
    with no page open), at most ``max_pages``, a kernel with no page connected ended after ``cull_after`` idle
    seconds, websocket messages (uploads) of up to 64 MB, encrypted kernel channels."""
    import zmq
    from traitlets.config import Config

    c = Config()
    c.Voila.ip = "127.0.0.1"
    c.Voila.port = port
    c.Voila.open_browser = False
    c.Voila.log_level = "WARN"
    c.Voila.token = token  # jupyter_server's IdentityProvider: ?token= once, then a cookie
    c.Voila.tornado_settings = {"websocket_max_message_size": WEBSOCKET_MB << 20}  # uploads go over the websocket
    c.VoilaConfiguration.show_tracebacks = False
    c.VoilaConfiguration.template = TEMPLATE_NAME
    c.VoilaConfiguration.preheat_kernel = False
    c.VoilaConfiguration.multi_kernel_manager_class = _bounded_kernel_manager()
    c.MappingKernelManager.max_kernels = max_pages
    c.MappingKernelManager.cull_idle_timeout = cull_after
    c.MappingKernelManager.cull_interval = max(1, min(60, cull_after // 10))  # ended within 10 % of cull_after
    c.MappingKernelManager.cull_connected = False  # a page still open keeps its kernel
    if zmq.has("curve"):  # else every kernel warns that it runs "over TCP without encryption"
        c.KernelManager.transport_encryption = "auto"
    return c


class _QuietTrust(logging.Filter):
    """Drop "Notebook ... is not trusted": the served notebook is made here, and trust changes nothing in Voilà."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is not trusted" not in record.getMessage()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fer_utils demo [--model PATH] [--work-dir DIR] [--port N] [--detection MODE]``."""
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    if args.max_pages < 1 or args.cull_after < 1 or not 0 < args.max_upload_mb < WEBSOCKET_MB:
        parser.error(f"--max-pages and --cull-after must be >= 1, --max-upload-mb above 0 and below {WEBSOCKET_MB}")
    why = _missing_extra()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    loaded = load_and_announce(args.model, work_dir=args.work_dir)
    if loaded is None:
        return 2
    model_path = Path(loaded.path).resolve()
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # a debugger note every kernel would print
    with tempfile.TemporaryDirectory(prefix="fer-demo-page-") as folder:
        notebook = Path(folder) / "page" / NOTEBOOK_NAME
        notebook.parent.mkdir()
        notebook.write_text(json.dumps(demo_notebook(model_path, args.detection)), encoding="utf-8")
        write_template(Path(folder) / "jupyter", args.max_upload_mb)
        os.environ["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(Path(folder) / "jupyter"),
                                                                   os.environ.get("JUPYTER_PATH")]))
        token = secrets.token_urlsafe(24)  # a new one at each launch
        app = _voila_class(token)(config=voila_config(args.port, token, args.max_pages, args.cull_after))
        app.initialize([str(notebook)])
        app.log.addFilter(_QuietTrust())
        app.start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
