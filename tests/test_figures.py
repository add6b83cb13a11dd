"""Every figure the prose quotes comes from the run: the decimals in the committed notebooks' markdown and in
the README's Results and Quick start, and the seconds and megabytes quoted there, are found — to the digits
quoted — in the committed notebooks' outputs, the published run's record (``notebooks/published_run.json``,
written by ``python -m fer_utils run --publish``) or a benchmark's results (``benchmarks/results/``).
Thresholds (``≥ 0.45``, ``≤ 60 s``), versions, DOIs and code are not figures."""

from __future__ import annotations

import json
import re

import pytest

from fer_utils.workfolder import PUBLISHED_RUN, REPO_ROOT, numbered_notebooks

#: What is not a quoted figure: code spans, link targets, DOIs and arXiv ids, versions of software, thresholds.
NOT_FIGURES = [r"`[^`]*`", r"\]\([^)]*\)", r"(?:doi|arXiv):\S+", r"\b\d+(?:\.\d+){2,}\b",
               r"\b(?:Keras|TensorFlow|Python|Pillow|numpy|pandas|scikit-learn|mtcnn|fer|TF)\s+\d+(?:\.\d+)+",
               r"[≥≤<>]\s*[+−-]?\d[\d,]*(?:\.\d+)?"]
#: A quoted figure: a decimal number, or a whole number of seconds or megabytes.
FIGURE = re.compile(r"(?<![\w.])(\d[\d,]*\.\d+|\d[\d,]*(?= (?:s|MB)\b))(?![\w.]*\d)")
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def _outputs_text(nb: dict) -> str:
    texts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            data = out.get("data", {})
            for part in (out.get("text", ""), data.get("text/plain", ""), data.get("text/html", "")):
                texts.append("".join(part) if isinstance(part, list) else part)
    return "\n".join(texts)


@pytest.fixture(scope="module")
def measured() -> set[float]:
    """Every number the run's outputs and records hold."""
    texts = [_outputs_text(json.loads(p.read_text(encoding="utf-8"))) for p in numbered_notebooks()]
    texts += [p.read_text(encoding="utf-8") for p in sorted((REPO_ROOT / "benchmarks" / "results").glob("*.*"))]
    texts.append(PUBLISHED_RUN.read_text(encoding="utf-8"))
    return {float(n) for text in texts for n in NUMBER.findall(text.replace(",", ""))}


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
    measured = {0.8504, 805.6, 13.0}
    assert unbacked("accuracy 0.850 and 0.85, in 806 s; target ≥ 0.88; Keras 3.15; `lr = 0.001`", measured) == []
    assert [f.split(":")[0] for f in unbacked("about 0.46, and 278 s, and 12.7 MB", measured)] == ["0.46", "278",
                                                                                                  "12.7"]
    assert unbacked("it found 85.0 % of them", measured) == [] and unbacked("85.1 %", measured)


@pytest.mark.parametrize("notebook", [p.name for p in numbered_notebooks()])
def test_notebook_prose_quotes_only_measured_figures(notebook, measured):
    nb = json.loads((REPO_ROOT / "notebooks" / notebook).read_text(encoding="utf-8"))
    prose = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert unbacked(prose, measured) == []


def test_readme_results_and_the_runs_row_quote_only_measured_figures(measured):
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    results = readme[readme.index("## Results"):readme.index("\n## ", readme.index("## Results") + 1)]
    run_row = re.search(r"^\| `python -m fer_utils run` \|.*$", readme, re.M)  # Quick start: what the run takes
    assert run_row, "the Quick start's row for `python -m fer_utils run` is gone"
    sections = [results, run_row.group(0)]
    timing = re.search(r"^\| seconds \|(.*)$", sections[0], re.M)  # the published run's seconds per notebook
    assert timing, "the README's table of the published run's seconds is gone"
    text = "\n".join(sections) + "\n" + " ".join(f"{cell.strip()} s" for cell in timing.group(1).split("|") if cell)
    assert unbacked(text, measured) == []
