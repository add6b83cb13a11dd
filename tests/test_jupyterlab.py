"""The learner's path: the notebooks stepped through in JupyterLab itself, in headless Chromium (marker ``browser``).

JupyterLab is started as the README says (``jupyter lab``, ``--allow-root`` as root) on 127.0.0.1 with a per-run
token, serving copies of the notebooks (the committed ones are never touched) with a work folder of tiny
synthetic data (``FER_DATA_DIR``, ``FER_WORK_DIR``, ``FER_PRETRAINED``: what the notebooks read). Notebooks are
opened from the file browser and run with *Run > Run All Cells*, the way JupyterLab's own Galata tests drive its
interface; then the page is inspected (``inspect``): every cell ran, in order; no error or warning is shown; every
figure is an image drawn on the page; every table is a table; progress is a widget bar or a line, never tqdm's
text fallback ("IProgress not found"); where the committed notebook shows a figure or a table, the page does too.
The parameters cell shows its ``parameters`` tag in the property inspector. Notebook 02 is opened first, before
01 has run: its message names the notebook to run first. Notebook 05 runs on a quick setting typed into its
parameters cell, as a learner would. ``test_inspection_finds_each_failure`` runs a deliberately broken notebook, so the
checks cannot pass vacuously.

Screenshots of every notebook after its run are kept in ``$FER_LAB_SCREENSHOTS`` (else a pytest temporary
folder; the path is printed). Every wait has a timeout and says what it waited for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from browser import JupyterLab, PageWatch, chromium, require_browser, wait_for

from fer_utils import data as fer_data
from fer_utils import folders, workfolder

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
KERNEL_DISPLAY_NAME = "Python 3 (ipykernel)"  # what the toolbar shows for the notebooks' python3 kernelspec
#: Seconds: JupyterLab's start; the page and a kernel becoming ready; each notebook's Run All (2 shared cores).
LAB_START_S, READY_S = 90, 90
RUN_S = {"probe": 60, "01": 120, "02": 60, "04": 120, "05": 180}
#: Notebook 05 on a quick setting: the line a learner types at the end of its parameters cell.
QUICK_05 = "head_epochs, epochs, batch_size = 1, 1, 16  # a quick run"
#: JupyterLab settings of the test's own settings folder: every cell laid out (so each figure can be measured and
#: the whole notebook captured), no news or update checks (the page must work offline).
LAB_SETTINGS = {"@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
                "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}}

# ------------------------------------------------------------------------------------------ inspecting a page

#: One script reads what the visible notebook shows: per cell its prompt and, per output, its kind and text, its
#: images (loaded, natural and drawn size), tables and progress-bar widgets.
SNAPSHOT_JS = """() => {
  const panel = [...document.querySelectorAll('#jp-main-dock-panel .jp-NotebookPanel')]
    .find(p => p.offsetParent !== null);
  if (!panel) return null;
  const box = e => { const r = e.getBoundingClientRect(); return [Math.round(r.width), Math.round(r.height)]; };
  return {
    kernel: (panel.querySelector('.jp-Toolbar-kernelName') || {}).textContent || null,
    status: (panel.querySelector('.jp-Notebook-ExecutionIndicator') || {dataset: {}}).dataset.status || null,
    cells: [...panel.querySelectorAll('.jp-Notebook-cell')].map(cell => ({
      code: cell.classList.contains('jp-CodeCell'),
      prompt: ((cell.querySelector('.jp-InputArea-prompt') || {}).textContent || '').trim(),
      outputs: [...cell.querySelectorAll('.jp-OutputArea-child > .jp-OutputArea-output')].map(o => ({
        mime: o.dataset.mimeType || (o.querySelector('.jupyter-widgets') ? 'widget' : ''),
        text: o.innerText.slice(0, 4000),
        images: [...o.querySelectorAll('img')].map(i => ({complete: i.complete, natural: [i.naturalWidth,
                 i.naturalHeight], drawn: box(i)})),
        tables: o.querySelectorAll('table').length,
        bars: [...o.querySelectorAll('.widget-hprogress .progress-bar, .widget-vprogress .progress-bar')]
              .map(box),
      })),
    })),
  };
}"""

TEXT_BAR = re.compile(r"\d+%\|[^|\n]*\|")  # tqdm's text bar: " 33%|███▎      | 1/3 [00:00<00:00]"
WIDGET_AS_TEXT = re.compile(r"^(HBox|VBox|FloatProgress|IntProgress)\(|Loading widget|Error displaying widget|"
                            r"Failed to load model class", re.M)
FIGURE_AS_TEXT = re.compile(r"<Figure size [^>]* with \d+ Axes>")
ERROR_LINE = re.compile(r"^[A-Za-z_.]*(Error|Exception|Interrupt|Exit)\b", re.M)
WARNING_LINE = re.compile(r"\b[A-Za-z]*Warning\b")
ERROR, NOT_RUN = "error", "not run"


@dataclass(frozen=True)
class Finding:
    cell: int  # the cell's index in the notebook file (markdown cells counted)
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"cell {self.cell}: {self.kind}: {self.detail}"


def expected_outputs(path: Path) -> list[dict]:
    """Per cell of a notebook file: whether its stored outputs show a figure, a table; its tags."""
    out = []
    for cell in nbformat.read(path, as_version=4).cells:
        data = [o.get("data", {}) for o in cell.get("outputs", [])]
        out.append({"figure": any(k.startswith("image/") for d in data for k in d),
                    "table": any("<table" in "".join(d.get("text/html", "")) for d in data),
                    "tags": list(cell.metadata.get("tags", []))})
    return out


def _is_error(output: dict) -> bool:
    return output["mime"] == "application/vnd.jupyter.stderr" and (
        "Traceback (most recent call last)" in output["text"] or bool(ERROR_LINE.search(output["text"])))


def inspect(page: dict, expected: list[dict]) -> list[Finding]:
    """What is wrong with a notebook as the page shows it after *Run All* (``SNAPSHOT_JS``), against the outputs
    the notebook file carries (``expected_outputs``): cells not run or run out of order, errors, warnings,
    progress drawn as text, widgets not drawn, figures not drawn or shown as text, figures and tables missing."""
    findings = []
    cells = page["cells"]
    if len(cells) != len(expected):
        findings.append(Finding(-1, "cells", f"the page shows {len(cells)} cells, the file has {len(expected)}"))
    counts = []
    for index, (cell, want) in enumerate(zip(cells, expected)):
        if not cell["code"]:
            continue
        found = lambda kind, detail, i=index: findings.append(Finding(i, kind, detail))  # noqa: E731
        m = re.fullmatch(r"\[(\d+)\]:", cell["prompt"])
        if not m:
            found(NOT_RUN, f"prompt {cell['prompt']!r}")
            continue
        counts.append((index, int(m[1])))
        drawn_figure = drawn_table = False
        for out in cell["outputs"]:
            text = out["text"]
            if _is_error(out):
                found(ERROR, text.strip().splitlines()[-1] if text.strip() else "(empty)")
            elif "IProgress not found" in text:
                found("progress as text", "tqdm fell back to text: IProgress not found (ipywidgets missing?)")
            elif TEXT_BAR.search(text):
                found("progress as text", f"a text progress bar: {TEXT_BAR.search(text)[0]!r}")
            elif out["mime"] == "application/vnd.jupyter.stderr" and WARNING_LINE.search(text):
                found("warning", text.strip()[:300])
            if WIDGET_AS_TEXT.search(text) and out["mime"] != "widget":
                found("widget not drawn", text.strip()[:200])
            if FIGURE_AS_TEXT.search(text):
                found("figure as text", FIGURE_AS_TEXT.search(text)[0])
            for img in out["images"]:
                if img["complete"] and min(img["natural"]) > 0 and min(img["drawn"]) > 0:
                    drawn_figure = True
                else:
                    found("figure not drawn", f"image loaded {img['complete']}, natural size {img['natural']}, "
                                              f"drawn size {img['drawn']}")
            drawn_table |= out["tables"] > 0
            for bar in out["bars"]:
                if min(bar) <= 0:
                    found("progress as text", f"a progress bar drawn {bar[0]}×{bar[1]} px")
        if want["figure"] and not drawn_figure and not any(f.cell == index for f in findings):
            found("figure missing", "the notebook file shows a figure here; the page shows none")
        if want["table"] and not drawn_table and not any(f.cell == index for f in findings):
            found("table missing", "the notebook file shows a table here; the page shows none")
    numbers = [n for _, n in counts]
    if numbers != list(range(1, len(numbers) + 1)):
        findings.append(Finding(counts[0][0] if counts else -1, "out of order",
                                f"execution counts {numbers} (Run All on a fresh kernel numbers them 1, 2, 3...)"))
    return findings


# ------------------------------------------------------------------------------------------ driving JupyterLab


class Learner:
    """The page, driven as a learner drives JupyterLab: open a notebook from the file browser, look at a cell's
    tags, type into a cell, *Run > Run All Cells*; plus a whole-notebook screenshot and the page's state."""

    def __init__(self, page, lab: JupyterLab, shots: Path):
        self.page, self.lab, self.shots = page, lab, shots
        self.watch = PageWatch(page)

    def state(self) -> dict | None:
        return self.page.evaluate(SNAPSHOT_JS)

    def _listing(self, name: str):
        return self.page.locator(".jp-DirListing-item .jp-DirListing-itemText", has_text=re.compile(
            rf"^{re.escape(name)}$"))

    def open(self, path: str) -> None:
        """Open ``path`` (relative to the served folder) by double-clicking through the file browser, then wait
        for its kernel to be idle."""
        home = self.page.locator(".jp-BreadCrumbs-home").first
        home.click()
        again = home.click  # what to repeat if the busy page lost the last click: go home, or into the folder
        for part in Path(path).parts:
            item = self._listing(part)
            polls = iter(range(1, 10**6))

            def listed(item=item, again=again, polls=polls):
                if item.count() > 0:
                    return True, None
                if next(polls) % 20 == 0:  # every 5 s
                    again()
                names = self.page.locator(".jp-DirListing-item .jp-DirListing-itemText").all_inner_texts()
                crumbs = self.page.locator(".jp-BreadCrumbs").first.inner_text().strip()
                return False, f"the browser is at {crumbs!r} and lists {names}"

            try:
                wait_for(listed, READY_S, f"{part!r} in JupyterLab's file browser")
            except AssertionError as failure:
                raise AssertionError(f"{failure} (screenshot: {self.screenshot('file_browser')})") from None
            again = lambda item=item: item.count() and item.first.dblclick()  # noqa: E731
            item.first.dblclick()
        tab = self.page.locator(".lm-TabBar-tab.lm-mod-current", has_text=Path(path).name)
        wait_for(lambda: tab.count() > 0, READY_S, f"the tab of {path} to open")

        def ready():
            dialog = self.page.locator(".jp-Dialog")
            if dialog.count():  # e.g. "Select Kernel": the notebook's kernelspec is not found
                raise AssertionError(f"opening {path} shows a dialog: {dialog.first.inner_text()!r}")
            state = self.state() or {}
            kernel, status = state.get("kernel"), state.get("status")
            return kernel not in (None, "", "No Kernel") and status == "idle", f"kernel {kernel!r}, {status}"

        wait_for(ready, READY_S, f"the kernel of {path} to start and be idle")

    def tags(self, cell: int) -> list[str]:
        """The tags the property inspector shows for cell ``cell`` of the open notebook."""
        self.page.locator("#jp-main-dock-panel .jp-NotebookPanel:visible .jp-Notebook-cell").nth(cell) \
            .locator(".jp-InputPrompt").first.click()
        inspector = self.page.locator("#jp-property-inspector")
        if not inspector.is_visible():
            self.page.locator(".lm-TabBar-tab[title='Property Inspector']").click()
        field = self.page.locator("#jp-property-inspector .jp-CellTags")
        if not (field.count() and field.first.is_visible()):  # the section starts collapsed
            self.page.locator("#jp-property-inspector").get_by_text("Common Tools").click()
        wait_for(lambda: field.count() > 0 and field.first.is_visible(), READY_S,
                 "the Cell Tags field in the property inspector")
        applied = self.page.locator("#jp-property-inspector .jp-CellTags-Applied")
        tags = [t.strip() for t in applied.all_inner_texts()]
        self.page.locator(".lm-TabBar-tab[title='Property Inspector']").click()  # close the sidebar again
        return tags

    def type_at_end(self, cell: int, text: str) -> None:
        """Click into cell ``cell``'s editor, go to its end and type a new line, as a learner edits a cell."""
        editor = self.page.locator("#jp-main-dock-panel .jp-NotebookPanel:visible .jp-Notebook-cell").nth(cell) \
            .locator(".cm-content")
        editor.click()
        self.page.keyboard.press("Control+End")
        self.page.keyboard.press("Enter")
        self.page.keyboard.type(text)
        self.page.keyboard.press("Escape")
        wait_for(lambda: text in editor.inner_text(), 10, f"the typed line to show in cell {cell}")

    def run_all(self, timeout: float, what: str) -> dict:
        """*Run > Run All Cells*, then wait until the kernel is idle with no cell queued or running and at least
        one cell run; returns the page's state."""
        self.page.locator(".lm-MenuBar-itemLabel").filter(has_text=re.compile(r"^Run$")).click()
        self.page.locator(".lm-Menu-itemLabel").filter(has_text=re.compile(r"^Run All Cells$")).click()
        seen = []

        def finished():
            state = self.state()
            prompts = [c["prompt"] for c in state["cells"] if c["code"]] if state else []
            done = (state is not None and state["status"] == "idle" and "[*]:" not in prompts
                    and any(re.fullmatch(r"\[\d+\]:", p) for p in prompts))
            seen.append(done)
            busy = sum(p == "[*]:" for p in prompts)
            return (len(seen) >= 2 and seen[-2] and done), f"kernel {state and state['status']}, {busy} cells queued"

        wait_for(finished, timeout, f"Run All of {what} to finish", every=0.5)
        return self.state()

    def screenshot(self, name: str) -> Path:
        """The whole open notebook, as one image (the viewport is stretched to the notebook's height)."""
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        top = """() => {
          const panel = [...document.querySelectorAll('#jp-main-dock-panel .jp-NotebookPanel')]
            .find(p => p.offsetParent !== null);
          const scroller = panel && (panel.querySelector('.jp-WindowedPanel-outer')
                                     || panel.querySelector('.jp-Notebook'));
          if (!scroller) return 0;
          scroller.scrollTop = 0;  // Run All left it at the last cell
          return scroller.scrollHeight; }"""
        height = self.page.evaluate(top)
        size = self.page.viewport_size
        self.page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(height + 160, 16000))})
        try:
            self.page.evaluate(top)
            self.page.wait_for_timeout(300)  # let the resized page lay out
            self.page.screenshot(path=str(path))
        finally:
            self.page.set_viewport_size(size)
        return path

    def shut_down_kernels(self) -> None:
        """Stop the kernels of the notebooks run so far (they hold TensorFlow's memory and threads), then load the
        page afresh with no tab open (``?reset``, JupyterLab's clean workspace): a tab left open with its kernel
        stopped would be reused, dead, by the next open of its notebook (a busy page once opened 01 with the
        double-click meant for 02, beside it in the file browser; 01's step then found a dead kernel)."""
        for session in self.lab.api("sessions") or []:
            self.lab.api(f"sessions/{session['id']}", method="DELETE")
        self.page.goto(f"{self.lab.url}lab?reset&token={self.lab.token}")
        wait_for(lambda: self.page.locator(".jp-DirListing-item").count() > 0
                 and self.page.locator("#jp-main-dock-panel .jp-NotebookPanel").count() == 0, READY_S,
                 "JupyterLab's page to load again, with no notebook open, and list the notebooks")


# ------------------------------------------------------------------------------------------ fixtures

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="  # base64


def _probe(cells: list[tuple[str, dict]]) -> nbformat.NotebookNode:
    """A notebook of code cells ``(source, stored outputs)``; the first is tagged ``parameters``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    for i, (source, stored) in enumerate(cells):
        outputs = []
        if stored.get("figure"):
            outputs.append(nbformat.v4.new_output("display_data", {"image/png": PNG_1PX,
                                                                   "text/plain": "<Figure>"}))
        if stored.get("table"):
            outputs.append(nbformat.v4.new_output("execute_result", {"text/html": "<table><tr><td>1</td></tr></table>",
                                                                     "text/plain": "a 1"}, execution_count=1))
        nb.cells.append(nbformat.v4.new_code_cell(source, outputs=outputs,
                                                  metadata={"tags": ["parameters"]} if i == 0 else {}))
    return nb


GOOD = [("rows = 2", {}),
        ("import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(2, 2))\nax.plot([1, 2])\nplt.show()",
         {"figure": True}),
        ("import pandas as pd\npd.DataFrame({'a': range(rows)})", {"table": True}),
        ("from tqdm.auto import tqdm  # as fer_utils.data's download does\n"
         "for _ in tqdm(range(3), desc='download'):\n    pass", {}),
        ("print('epoch 1/1 · loss 0.5')", {})]

#: One failure per cell, each as a learner would meet it, and the kind of finding each must give.
BROKEN = [("rows = 2", {}, None),
          ("from IPython.display import Image, display\ndisplay(Image(data=b'\\x89PNG\\r\\n\\x1a\\nnot a png', "
           "format='png'))", {"figure": True}, "figure not drawn"),
          ("from IPython.display import display  # what a figure shows when the inline backend is off\n"
           "display({'text/plain': '<Figure size 640x480 with 1 Axes>'}, raw=True)", {"figure": True},
           "figure as text"),
          ("print('the figure was closed before it was shown')", {"figure": True}, "figure missing"),
          ("import pandas as pd\nprint(pd.DataFrame({'a': range(rows)}))", {"table": True}, "table missing"),
          ("import sys  # a kernel without ipywidgets, as the base install had\n"
           "for name in [m for m in sys.modules if m.startswith(('tqdm', 'ipywidgets'))]:\n"
           "    del sys.modules[name]\nsys.modules['ipywidgets'] = None\n"
           "from tqdm.auto import tqdm\nfor _ in tqdm(range(3)):\n    pass", {}, "progress as text"),
          ("from IPython.display import display  # what a widget shows when JupyterLab lacks its extension\n"
           "display({'text/plain': 'HBox(children=(HTML(value=\\'\\'), FloatProgress(value=0.0, max=3.0)))'}, "
           "raw=True)", {}, "widget not drawn"),
          ("import warnings\nwarnings.warn('this option is deprecated', UserWarning)", {}, "warning"),
          ("raise ValueError('a cell that fails')", {}, ERROR),
          ("print('never reached: Run All stops at the error')", {}, NOT_RUN)]


OUTSIDE = "outside"  # a kernel outside the project's environment (no fer_utils), and the folder of its notebook


def _kernel_without_fer_utils(base: Path, root: Path) -> None:
    """A kernelspec ``outside`` whose Python cannot import fer_utils (as a kernel of another environment, or a
    hosted service's), and ``outside/01_load_dataset.ipynb``, a copy of notebook 01 that asks for it."""
    stub = base / "outside_site" / "fer_utils"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'fer_utils\'", name="fer_utils")\n')
    spec = base / "home" / "data" / "kernels" / OUTSIDE / "kernel.json"  # JupyterLab's JUPYTER_DATA_DIR
    spec.parent.mkdir(parents=True)
    spec.write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                "display_name": "Python 3 (without fer_utils)", "language": "python",
                                "env": {"PYTHONPATH": str(stub.parent)}}))
    nb = nbformat.read(NOTEBOOKS / "01_load_dataset.ipynb", as_version=4)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (without fer_utils)", "language": "python",
                                 "name": OUTSIDE}
    (root / OUTSIDE).mkdir()
    nbformat.write(nb, root / OUTSIDE / "01_load_dataset.ipynb")


@pytest.fixture(scope="session")  # session: set up before the session-wide synthetic data
def browser_available():
    require_browser()  # skips, saying why, before the synthetic data is made or anything is started


@pytest.fixture(scope="module")
def learner(browser_available, tmp_path_factory, synthetic_data_dir, fake_fer_weights):
    """JupyterLab serving copies of the notebooks and the probe notebooks, with a work folder of synthetic data
    prepared up to notebook 03 (the class folders, 03's input record); Chromium on it, as a learner."""
    base = tmp_path_factory.mktemp("jupyterlab")
    root, work = base / "served", base / "work"
    root.mkdir()
    for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        shutil.copy(nb, root / nb.name)
    (root / "probe").mkdir()
    nbformat.write(_probe(GOOD), root / "probe" / "good.ipynb")
    nbformat.write(_probe([(s, o) for s, o, _ in BROKEN]), root / "probe" / "broken.ipynb")
    _kernel_without_fer_utils(base, root)
    folders.prepare(fer_data.get_dataset(synthetic_data_dir), work, seed=42, test_size=0.25, val_size=0.25)
    workfolder.write_record(work / workfolder.PIPELINES_RECORD, {  # what notebook 03 records, at its defaults
        "step": "pipelines", "input": {"image_size": 64, "color_mode": "grayscale", "interpolation": "bilinear"}})
    shots = Path(os.environ.get("FER_LAB_SCREENSHOTS") or base / "screenshots")
    env = {"FER_DATA_DIR": str(synthetic_data_dir), "FER_WORK_DIR": str(work),
           "FER_PRETRAINED": str(fake_fer_weights), "FER_CACHE_DIR": str(base / "cache")}
    with JupyterLab(root, base / "home", env=env, settings=LAB_SETTINGS, start_timeout=LAB_START_S) as lab, \
            chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(READY_S * 1000)
        learner = Learner(page, lab, shots)
        page.goto(f"{lab.url}lab?token={lab.token}")
        wait_for(lambda: page.locator(".jp-DirListing-item").count() > 0, READY_S,
                 "JupyterLab's page to load and list the notebooks")
        yield learner
        print(f"JupyterLab screenshots: {shots}")
        assert not learner.watch.remote, f"JupyterLab requested remote resources: {learner.watch.remote}"
        assert not learner.watch.page_errors, f"uncaught errors in JupyterLab's page: {learner.watch.page_errors}"


def _report(findings: list[Finding], shot: Path) -> str:
    return "\n".join(map(str, findings)) + f"\n(screenshot: {shot})"


# ------------------------------------------------------------------------------------------ tests


def test_inspection_finds_each_failure(learner):
    """A notebook that works passes; one with each failure a learner can meet gives each finding, where it is."""
    learner.open("probe/good.ipynb")
    assert learner.tags(0) == ["parameters"]
    page = learner.run_all(RUN_S["probe"], "probe/good.ipynb")
    shot = learner.screenshot("probe_good")
    assert inspect(page, expected_outputs(learner.lab.root / "probe" / "good.ipynb")) == [], shot
    bars = [bar for cell in page["cells"] for out in cell["outputs"] for bar in out["bars"]]
    assert len(bars) == 1 and min(bars[0]) > 0, "tqdm.auto's bar is not drawn as a bar"

    learner.open("probe/broken.ipynb")
    page = learner.run_all(RUN_S["probe"], "probe/broken.ipynb")
    shot = learner.screenshot("probe_broken")
    findings = inspect(page, expected_outputs(learner.lab.root / "probe" / "broken.ipynb"))
    kinds = {(f.cell, f.kind) for f in findings}
    for cell, (_, _, kind) in enumerate(BROKEN):
        if kind:
            assert (cell, kind) in kinds, f"cell {cell}: no {kind!r} finding; found:\n{_report(findings, shot)}"
    assert {f.cell for f in findings} == {i for i, (*_, kind) in enumerate(BROKEN) if kind}, _report(findings, shot)
    learner.shut_down_kernels()


def _parameters_cell(path: Path) -> int:
    cells = [i for i, want in enumerate(expected_outputs(path)) if "parameters" in want["tags"]]
    assert len(cells) == 1, f"{path.name}: {len(cells)} cells tagged parameters"
    return cells[0]


def _step(learner: Learner, name: str, edit: str | None = None) -> tuple[dict, list[Finding], Path]:
    """Open notebook ``name`` as a learner, check its kernel and its parameters tag, optionally type ``edit`` at
    the end of its parameters cell, Run All; the page's state, what ``inspect`` finds, and the screenshot."""
    path = learner.lab.root / name
    learner.open(name)
    state = learner.state()
    assert state["kernel"] == KERNEL_DISPLAY_NAME, f"{name} opens on kernel {state['kernel']!r}"
    parameters = _parameters_cell(path)
    assert learner.tags(parameters) == ["parameters"], f"{name}: the parameters tag is not shown on its cell"
    if edit:
        learner.type_at_end(parameters, edit)
    start = time.perf_counter()
    state = learner.run_all(RUN_S[name[:2]], name)
    shot = learner.screenshot(Path(name).stem)
    outputs = [out for cell in state["cells"] for out in cell["outputs"]]
    print(f"{name}: Run All {time.perf_counter() - start:.0f} s; {sum(len(o['images']) for o in outputs)} figures, "
          f"{sum(o['tables'] for o in outputs)} tables, {sum(len(o['bars']) for o in outputs)} progress bars; {shot}")
    findings = inspect(state, expected_outputs(path))
    learner.shut_down_kernels()
    return state, findings, shot


def test_setup_cell_says_what_to_install(learner):
    """Notebook 01 on a kernel that cannot import fer_utils: its Setup cell says what to install, and nothing
    else runs."""
    name = f"{OUTSIDE}/01_load_dataset.ipynb"
    learner.open(name)
    assert learner.state()["kernel"] == "Python 3 (without fer_utils)"
    state = learner.run_all(RUN_S["probe"], name)
    shot = learner.screenshot("01_load_dataset_without_fer_utils")
    findings = inspect(state, expected_outputs(learner.lab.root / name))
    errors = [f for f in findings if f.kind == ERROR]
    learner.shut_down_kernels()
    assert [f.cell for f in errors] == [_setup_cell(learner.lab.root / name)], _report(findings, shot)
    assert "This notebook needs the fer_utils package: `pip install -e .`" in _output_text(state, errors[0].cell), \
        _report(findings, shot)
    assert {f.kind for f in findings} == {ERROR, NOT_RUN}, _report(findings, shot)


def _setup_cell(path: Path) -> int:
    return next(i for i, cell in enumerate(nbformat.read(path, as_version=4).cells)
                if cell.cell_type == "code" and "import fer_utils" in cell.source)


def _output_text(state: dict, cell: int) -> str:
    return "\n".join(out["text"] for out in state["cells"][cell]["outputs"])


def test_learner_steps_through_the_series(learner):
    """02 before 01 has run (it names the notebook to run first), then 01, 04 and 05 on a quick setting typed into
    its parameters cell: every cell runs, nothing shows an error, figures, tables and progress render."""
    name = "02_preprocess_into_folders.ipynb"
    _, findings, shot = _step(learner, name)
    errors = [f for f in findings if f.kind == ERROR]
    assert len(errors) == 1 and "Run notebooks/01_load_dataset.ipynb first" in errors[0].detail, \
        _report(findings, shot)
    assert {f.kind for f in findings} == {ERROR, NOT_RUN}, _report(findings, shot)
    assert all(f.cell > errors[0].cell for f in findings if f.kind == NOT_RUN), _report(findings, shot)

    for name in ("01_load_dataset.ipynb", "04_create_model.ipynb"):
        _, findings, shot = _step(learner, name)
        assert findings == [], f"{name} in JupyterLab:\n{_report(findings, shot)}"

    name = "05_train_model.ipynb"
    state, findings, shot = _step(learner, name, edit=QUICK_05)
    assert findings == [], f"{name} in JupyterLab:\n{_report(findings, shot)}"
    lines = [line for cell in state["cells"] for out in cell["outputs"] if out["mime"].endswith("stdout")
             for line in out["text"].splitlines() if re.match(r"epoch\s+\d+/2 \((head|whole)\)", line)]
    assert len(lines) == 2, f"notebook 05 should show one progress line per epoch (2), shows {lines} ({shot})"
