"""face-api.js (``@vladmandic/face-api``, the live page's JavaScript) run in headless Chromium, for the benchmarks.

Used by ``detectors.py --browser`` (its Tiny Face Detector, with the live page's options) and ``compare.py
--peers-only`` (its expression model, the ``peer_faceapi`` row), on tfjs's WebGL backend (the live page's) or its
WebAssembly one. Needs ``npm ci --prefix web`` (the weights ship
inside the npm package), Debian's Chromium (``/usr/bin/chromium``, or ``$FER_CHROMIUM``) and Playwright's Python
package; Playwright's own browser download is never used. Images are served from local folders on 127.0.0.1 and
decoded by the browser; times are taken in the page (``performance.now()``) around the network's call only.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import tempfile
import threading
from pathlib import Path

from fer_utils.prediction.browser import NODE_MODULES, NPM_INSTALL

FACE_API = NODE_MODULES / "@vladmandic" / "face-api"
TFJS_WASM = NODE_MODULES / "@tensorflow" / "tfjs-backend-wasm" / "dist"  # the .wasm files of face-api's tfjs 4.22
CHROMIUM = os.environ.get("FER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: The live page's detector options (web/live.js).
TINY_OPTIONS = {"inputSize": 416, "scoreThreshold": 0.5}
#: face-api's expression labels → ours (it has no contempt).
FACEAPI_TO_OURS = {"angry": "anger", "disgusted": "disgust", "fearful": "fear", "happy": "happiness",
                   "neutral": "neutral", "sad": "sadness", "surprised": "surprise"}

PAGE = """<!doctype html><meta charset="utf-8"><title>face-api bench</title><link rel="icon" href="data:,">
<script src="face-api.js"></script>
<script>
async function picture(url) {  // decoded by the browser, drawn on a canvas as the live page does
  const bitmap = await createImageBitmap(await (await fetch(url)).blob());
  const c = document.createElement("canvas"); c.width = bitmap.width; c.height = bitmap.height;
  c.getContext("2d").drawImage(bitmap, 0, 0); return c;
}
window.bench = {
  async init(nets, backend) {
    if (backend === "wasm") {  // tfjs's WebAssembly backend (bundled in face-api.js; its .wasm from the npm package)
      faceapi.tf.setWasmPaths(new URL("wasm/", location.href).href);
      await faceapi.tf.setBackend("wasm");
    } else {  // the live page's choice: WebGL when the browser has it, else tfjs's CPU backend
      const ok = backend !== "cpu" && await faceapi.tf.setBackend("webgl").catch(() => false);
      if (!ok) await faceapi.tf.setBackend("cpu");
    }
    await faceapi.tf.ready();
    for (const n of nets) await faceapi.nets[n].loadFromUri("model");
    return faceapi.tf.getBackend();
  },
  async detect(url, options) {
    const c = await picture(url), t0 = performance.now();
    const found = await faceapi.detectAllFaces(c, new faceapi.TinyFaceDetectorOptions(options));
    return { ms: performance.now() - t0, faces: found.map((f) => [f.box.x, f.box.y, f.box.width, f.box.height,
                                                                    f.score]) };
  },
  async expressions(urls) {  // each picture whole, as the face (the net pads it square and resizes to 112×112)
    const pics = await Promise.all(urls.map(picture)), t0 = performance.now();
    let out = await faceapi.nets.faceExpressionNet.predictExpressions(pics.length === 1 ? pics[0] : pics);
    if (!Array.isArray(out)) out = [out];
    return { ms: performance.now() - t0, probs: out.map((e) => ({ ...e })) };
  },
};
</script>
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def face_api_page(folders: dict[str, Path], nets=("tinyFaceDetector",), backend: str = "auto"):
    """A Chromium page with face-api.js and ``nets`` loaded, ``folders`` served under their names (``name/…``).
    ``backend``: ``"auto"`` (the live page's: WebGL, which headless Chromium without a GPU runs in software, else
    CPU), ``"cpu"`` (tfjs's CPU backend) or ``"wasm"`` (tfjs's WebAssembly backend, SIMD; about ten times faster
    than the other two on a CPU). Yields ``(page, base_url, backend)``; then, e.g.,
    ``page.evaluate("([u, o]) => bench.detect(u, o)", [url, options])``."""
    from playwright.sync_api import sync_playwright

    if not (FACE_API / "dist" / "face-api.js").is_file() or not TFJS_WASM.is_dir():
        raise SystemExit(f"face-api.js is not installed: run `{NPM_INSTALL}`")
    with tempfile.TemporaryDirectory(prefix="fer-faceapi-") as tmp:
        root = Path(tmp)
        (root / "index.html").write_text(PAGE, encoding="utf-8")
        (root / "face-api.js").symlink_to(FACE_API / "dist" / "face-api.js")
        (root / "model").symlink_to(FACE_API / "model")
        (root / "wasm").symlink_to(TFJS_WASM)
        for name, folder in folders.items():
            (root / name).symlink_to(Path(folder).resolve())
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=tmp))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page()
                    page.set_default_timeout(600_000)
                    base = f"http://127.0.0.1:{server.server_address[1]}/"
                    page.goto(base + "index.html")
                    backend = page.evaluate(f"bench.init({json.dumps(list(nets))}, {json.dumps(backend)})")
                    yield page, base, backend
                finally:
                    browser.close()
        finally:
            server.shutdown()
            server.server_close()


def versions() -> dict:
    """face-api's npm version and Chromium's."""
    import subprocess

    pkg = json.loads((FACE_API / "package.json").read_text())
    chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    return {"face_api": f"@vladmandic/face-api {pkg['version']}", "chromium": chromium}
