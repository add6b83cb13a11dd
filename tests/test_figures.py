"""Every figure the prose quotes comes from the run: the decimals in the committed notebooks' markdown and in
the whole README, and the whole numbers quoted with a unit (seconds, minutes, MB, GB, %, faces, photos, people,
epochs), are found — to the digits quoted — in the run's outputs and records. A notebook's prose is checked
against its own outputs and those of the notebooks before it, the published run's record
(``notebooks/published_run.json``, written by ``python -m fer_utils run --publish``) and the benchmarks' results
(``benchmarks/results/``); the README against all of them. Thresholds (``≥ 0.45``, ``≤ 60 s``), versions, DOIs
and code are not figures."""

from __future__ import annotations

import json
import re

import pytest

from fer_utils.workfolder import PUBLISHED_RUN, REPO_ROOT, numbered_notebooks

#: What is not a quoted figure: code spans, link targets, DOIs and arXiv ids, versions of software, thresholds.
NOT_FIGURES = [r"`[^`]*`", r"\]\([^)]*\)", r"(?:doi|arXiv):\S+", r"\b\d+(?:\.\d+){2,}\b",
               r"\b(?:Keras|TensorFlow|Python|Pillow|numpy|pandas|scikit-learn|mtcnn|fer|TF)\s+\d+(?:\.\d+)+",
               r"[≥≤<>]\s*[+−-]?\d[\d,]*(?:\.\d+)?"]
#: A quoted figure: a decimal number, or a whole number with a unit of what a run measures.
UNITS = r"(?: ?%| (?:s|min|minutes|MB|GB|faces|photos|people|epochs)\b)"
FIGURE = re.compile(r"(?<![\w.])(\d[\d,]*\.\d+|\d[\d,]*(?=" + UNITS + r"))(?![\w.]*\d)")
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _outputs_text(nb: dict) -> str:
    texts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            data = out.get("data", {})
            for part in (out.get("text", ""), data.get("text/plain", ""), data.get("text/html", "")):
                texts.append("".join(part) if isinstance(part, list) else part)
    return "\n".join(texts)


def _numbers(text: str) -> set[float]:
    return {float(n) for n in NUMBER.findall(text.replace(",", ""))}


@pytest.fixture(scope="module")
def records() -> set[float]:
    """Every number of the run's records: the published run's and the benchmarks' results."""
    texts = [p.read_text(encoding="utf-8") for p in sorted((REPO_ROOT / "benchmarks" / "results").glob("*.*"))
             if p.suffix in (".json", ".md")]  # not the predictions (csv.gz): faces, not figures
    texts.append(PUBLISHED_RUN.read_text(encoding="utf-8"))
    return set().union(*map(_numbers, texts))


@pytest.fixture(scope="module")
def outputs() -> dict[str, set[float]]:
    """Every number in each committed notebook's outputs, by notebook."""
    return {p.name: _numbers(_outputs_text(json.loads(p.read_text(encoding="utf-8")))) for p in numbered_notebooks()}


def quoted_figures(text: str) -> list[tuple[str, str]]:
    """(figure, context) for each figure a text quotes."""
    for pattern in NOT_FIGURES:
        text = re.sub(pattern, " ", text)
    return [(m.group(1).replace(",", ""), text[max(0, m.start() - 60):m.end() + 20].replace("\n", " "))
            for m in FIGURE.finditer(text)]


def unbacked(text: str, measured: set[float]) -> list[str]:
    """The quoted figures no measured number rounds to (a percentage may quote a fraction: 99.5 % ← 0.995)."""
    found = []
    for figure, context in quoted_figures(text):
        digits = len(figure.split(".")[1]) if "." in figure else 0
        scales = (1, 100) if re.search(re.escape(figure) + r"\s*%", context.replace(",", "")) else (1,)
        if not any(round(value * scale, digits) == float(figure) for value in measured for scale in scales):
            found.append(f"{figure}: …{context}…")
    return found


def test_the_checker_finds_a_typed_figure_and_passes_a_measured_one():
    measured = {0.8504, 805.6, 13.0, 263.0, 0.22}
    assert unbacked("accuracy 0.850 and 0.85, in 806 s; target ≥ 0.88; Keras 3.15; `lr = 0.001`", measured) == []
    assert unbacked("58 of 263 photos (22 %) fell back", measured) == []
    assert [f.split(":")[0] for f in unbacked("about 0.46, and 278 s, and 12.7 MB", measured)] == ["0.46", "278",
                                                                                                  "12.7"]
    assert [f.split(":")[0] for f in unbacked("about 15 min, 9,000 faces, 2 in 3 (67 %)", measured)] == [
        "15", "9000", "67"]
    assert unbacked("it found 85.0 % of them", measured) == [] and unbacked("85.1 %", measured)


@pytest.mark.parametrize("notebook", [p.name for p in numbered_notebooks()])
def test_notebook_prose_quotes_only_measured_figures(notebook, records, outputs):
    nb = json.loads((REPO_ROOT / "notebooks" / notebook).read_text(encoding="utf-8"))
    prose = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    own_and_before = set().union(*(numbers for name, numbers in outputs.items() if name <= notebook))
    assert unbacked(prose, records | own_and_before) == []


def test_readme_quotes_only_measured_figures(records, outputs):
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    timing = re.search(r"^\| seconds \|(.*)$", readme, re.M)  # the published run's seconds per notebook
    assert timing, "the README's table of the published run's seconds is gone"
    run = json.loads(PUBLISHED_RUN.read_text(encoding="utf-8"))
    published = [*(info["seconds"] for info in run["notebooks"].values()), run["total_seconds"]]
    assert [float(c.replace(",", "")) for c in timing.group(1).split("|") if c.strip()] == \
        [round(x) for x in published], "the README's seconds row is not notebooks/published_run.json's"
    text = readme + "\n" + " ".join(f"{cell.strip()} s" for cell in timing.group(1).split("|") if cell)
    assert unbacked(text, records.union(*outputs.values())) == []


def test_publishing_writes_the_runs_time_into_a_header():
    from fer_utils.notebook_format import stamp_header_time

    nb = {"cells": [{"cell_type": "markdown", "source": "# 05\n\n**Time:** 13 min in the committed run, on 2 cores."}]}
    assert stamp_header_time(nb, 532.4)
    assert "**Time:** 9 min (532 s) in the committed run, on 2" in nb["cells"][0]["source"]
    assert stamp_header_time(nb, 18.3) and "**Time:** 18 s in the committed run" in nb["cells"][0]["source"]
    assert not stamp_header_time({"cells": [{"cell_type": "markdown", "source": "# no time"}]}, 5.0)


@pytest.mark.parametrize("notebook", [p.name for p in numbered_notebooks()])
def test_each_header_quotes_the_published_runs_time(notebook):
    from fer_utils.notebook_format import HEADER_TIME, header_time

    nb = json.loads((REPO_ROOT / "notebooks" / notebook).read_text(encoding="utf-8"))
    header = "".join(nb["cells"][0]["source"])
    found = HEADER_TIME.search(header)
    assert found, f"{notebook}: no '**Time:** … in the committed run' in the header"
    seconds = json.loads(PUBLISHED_RUN.read_text(encoding="utf-8"))["notebooks"][notebook.removesuffix(".ipynb")]
    assert found.group(2) == header_time(seconds["seconds"])
