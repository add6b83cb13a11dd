"""Helpers for the browser tests (marker ``browser``): headless Chromium from Debian's package, driven by Playwright.

Playwright's own browser download (``playwright install``) is never used: tests launch ``/usr/bin/chromium``
(``apt-get install chromium``; ``.ci/run`` installs it) and skip, saying why, without it or without the
``playwright`` package. Every page is watched for console errors, uncaught exceptions, failed requests and
requests to anything but the local server (the pages must work offline). ``JupyterLab`` starts a JupyterLab
server as a learner does, isolated from the user's Jupyter folders; ``wait_for`` polls with a timeout that says
what it waited for.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = os.environ.get("FER_CHROMIUM", "/usr/bin/chromium")
#: Headless, no sandbox (CI runs as root), and no background traffic: the machine has no network but the local one.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def require_browser():
    """The ``playwright.sync_api`` module, or skip the test saying what is missing."""
    api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does it)")
    return api


@contextlib.contextmanager
def chromium(extra_args=()):
    """A headless Chromium browser (Debian's), closed afterwards; ``extra_args``: more command-line switches."""
    api = require_browser()
    with api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield browser
        finally:
            browser.close()


class PageWatch:
    """What went wrong on a page: console errors, uncaught exceptions, failed requests, non-local requests."""

    def __init__(self, page):
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.failed: list[str] = []
        self.remote: list[str] = []
        page.on("console", lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda err: self.page_errors.append(str(err)))
        page.on("requestfailed", self._failed)
        page.on("response", lambda res: self.failed.append(f"{res.url} (HTTP {res.status})")
                if res.status >= 400 else None)
        page.on("request", self._request)

    def _failed(self, request) -> None:
        if request.failure != "net::ERR_ABORTED":  # cancelled by the next navigation (a favicon, say): no fault
            self.failed.append(f"{request.url} ({request.failure})")

    def _request(self, request) -> None:
        url = urlparse(request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.hostname not in LOCAL_HOSTS:
            self.remote.append(request.url)

    def problems(self) -> list[str]:
        return ([f"console error: {m}" for m in self.console_errors] + [f"page error: {m}" for m in self.page_errors]
                + [f"failed request: {m}" for m in self.failed] + [f"remote request: {m}" for m in self.remote])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def wait_for(check, timeout: float, what: str, every: float = 0.25):
    """Poll ``check()`` until it returns something truthy (returned); after ``timeout`` seconds fail, saying
    what was waited for (and what ``check`` last returned, when it returns a ``(done, state)`` pair)."""
    deadline = time.monotonic() + timeout
    state = None
    while True:
        result = check()
        done, state = result if isinstance(result, tuple) else (result, state)
        if done:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}"
                                 + (f" (last state: {state})" if state is not None else ""))
        time.sleep(every)


class JupyterLab:
    """A JupyterLab server on 127.0.0.1 (a free port, a per-run token) serving ``root``, run as a learner starts
    it (``jupyter lab``, plus ``--allow-root`` as root), with its own settings, workspaces, runtime and data
    folders (nothing is read from or written to the user's ``~/.jupyter`` or ``~/.local/share/jupyter``).

    Use as a context manager: the server is always shut down (its kernels with it), and its log is kept in
    ``home/lab.log`` (quoted when it fails to start).
    """

    def __init__(self, root: Path, home: Path, env: dict | None = None, settings: dict | None = None,
                 start_timeout: float = 90):
        self.root, self.home, self.start_timeout = Path(root), Path(home), start_timeout
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = self.home / "lab.log"
        dirs = {"JUPYTERLAB_SETTINGS_DIR": "settings", "JUPYTERLAB_WORKSPACES_DIR": "workspaces",
                "JUPYTER_RUNTIME_DIR": "runtime", "JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data",
                "IPYTHONDIR": "ipython"}
        self.env = {**os.environ, **{k: str(self.home / v) for k, v in dirs.items()}, **(env or {})}
        self.env.pop("JUPYTER_PATH", None)
        for plugin, values in (settings or {}).items():  # "@jupyterlab/notebook-extension:tracker" -> file
            package, name = plugin.rsplit(":", 1)
            path = self.home / "settings" / package / f"{name}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        self.proc = None

    def api(self, path: str, method: str = "GET"):
        """A request to the server's REST API with the token; the decoded JSON answer (None if empty)."""
        request = urllib.request.Request(f"{self.url}api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None

    def _answers(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"JupyterLab exited with code {self.proc.returncode} before answering; its log "
                                 f"({self.log}) ends:\n{self.log_tail()}")
        try:
            return bool(self.api("status")), None
        except (OSError, ValueError) as err:
            return False, err

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""

    def __enter__(self):
        self.home.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
                   f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
                   "--ServerApp.port_retries=0"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # JupyterLab refuses to run as root without it (a container, CI)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         cwd=self.root, stdin=subprocess.DEVNULL)
        try:
            wait_for(self._answers, self.start_timeout,
                     f"JupyterLab to answer {self.url}api/status (log: {self.log})")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # SIGTERM: the server stops at once and shuts its kernels down
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def serve_folder(folder: Path):
    """Serve a folder on 127.0.0.1 (a free port) from a background thread; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="site-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
