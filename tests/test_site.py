"""The series as a static site (``python -m fer_utils site``, ``fer_site.build_site``): built from the committed
notebooks without running them, README.md as the landing page, its Results, Data card and Model card as pages,
no network needed; checked in headless Chromium (marker ``browser``)."""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from fer_utils import site, workfolder
from fer_utils import site as fer_site  # the fixture below is named site too
from fer_utils.workfolder import NOTEBOOKS

pytest.importorskip("myst_nb", reason="the 'site' extra is not installed (pip install -e '.[site]')")
pytest.importorskip("sphinx_book_theme", reason="the 'site' extra is not installed (pip install -e '.[site]')")

STEPS = [Path(name).stem for name in NOTEBOOKS.values()]  # 01_load_dataset ... 08_train_at_scale
CARDS = list(site.SITE_PAGES.values())  # results, data-card, model-card
READING_ORDER = ["index", *(f"notebooks/{s}" for s in STEPS), *CARDS]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site of the committed notebooks, built once for this module (the command, as a user runs it)."""
    out = tmp_path_factory.mktemp("site") / "site"
    start = time.perf_counter()
    assert fer_site.main(["--out", str(out)]) == 0
    print(f"site built in {time.perf_counter() - start:.1f} s")
    return out


def _pages(site: Path) -> list[Path]:
    """The Sphinx pages (not the live page, which tests/test_live_page.py checks)."""
    return sorted(p for p in site.rglob("*.html") if not {"_static", "live"} & set(p.relative_to(site).parts))


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


# ------------------------------------------------------------------------------------------------ pages


def test_every_step_and_card_has_a_page(site, capsys):
    for page in READING_ORDER:
        assert (site / f"{page}.html").is_file(), page
    assert len(STEPS) == 8


def test_each_step_page_is_titled_by_its_number(site):
    """Notebook 05 has no ``# `` title of its own: the site gives its page one from the file name."""
    for step in STEPS:
        html = (site / "notebooks" / f"{step}.html").read_text(encoding="utf-8")
        h1 = _text(re.search(r"<h1[^>]*>(.*?)</h1>", html, re.S)[1]).strip()
        assert h1.startswith(f"{step[:2]} · "), (step, h1)


def test_readme_sections_become_pages(site):
    data_card = _text((site / "data-card.html").read_text(encoding="utf-8"))
    model_card = _text((site / "model-card.html").read_text(encoding="utf-8"))
    results = _text((site / "results.html").read_text(encoding="utf-8"))
    index = _text((site / "index.html").read_text(encoding="utf-8"))
    assert "muxspace/facial_expressions" in data_card and "who is missing" in data_card
    assert "Intended use" in model_card and "known failures" in model_card
    assert "Five person-disjoint folds" in results and "macro-F1" in results
    assert "Quick start" in index and "Step through the notebooks" in index
    assert "who is missing" not in index  # the cards are pages of their own, not repeated on the landing page
    readme_title = Path(workfolder.REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
    assert readme_title in index


def test_figures_are_in_the_site(site):
    """The README's figure and the notebooks' plots (stored outputs) are files of the site, not links."""
    index = (site / "index.html").read_text(encoding="utf-8")
    assert re.search(r'<img[^>]+src="_images/07_annotated_example\.png"', index)
    plots = [m for step in STEPS for m in re.findall(r'<img[^>]+src="([^"]+)"',
                                                        (site / "notebooks" / f"{step}.html").read_text("utf-8"))]
    assert len(plots) >= 10
    for src in plots:
        assert not src.startswith(("http:", "https:")), src
        assert (site / "notebooks" / src).resolve().is_file(), src


def test_pages_link_the_steps_in_order(site):
    for here, following in zip(READING_ORDER, READING_ORDER[1:]):
        html = (site / f"{here}.html").read_text(encoding="utf-8")
        link = re.search(r'<a[^>]+class="[^"]*right-next[^"]*"[^>]+href="([^"]+)"', html) or \
            re.search(r'<a[^>]+href="([^"]+)"[^>]+class="[^"]*right-next', html)
        assert link, f"no link to the next page on {here}"
        target = (site / here).parent / link[1].split("#")[0]
        assert target.resolve() == (site / f"{following}.html").resolve(), (here, link[1])


def test_the_live_page_is_in_the_site_and_linked(site):
    """With the npm packages installed (npm ci --prefix web), the site carries the live page and the landing page
    links it; without them, it is left out (and the README's link is plain text)."""
    from fer_utils.prediction import browser

    index = (site / "index.html").read_text(encoding="utf-8")
    if browser.missing_packages():
        assert not (site / "live").exists() and 'href="live/index.html"' not in index
        pytest.skip(f"the live page's npm packages are not installed: run `{browser.NPM_INSTALL}`")
    assert 'href="live/index.html"' in index
    live = (site / "live" / "index.html").read_text(encoding="utf-8")
    assert "Nothing leaves this machine" in live
    for name in browser.VENDOR.values():
        assert (site / "live" / "vendor" / name).is_file(), name
        assert "//" not in re.findall(r'src="([^"]+)"', live)[0]


def test_pages_need_no_network(site):
    """Every script, style sheet, font and image comes from the site itself (links to the web are fine)."""
    remote = re.compile(r'<(?:script|link|img|iframe|source)\b[^>]*?(?:src|href)="(?:https?:)?//', re.I)
    for page in [*_pages(site), *site.glob("_static/**/*.html")]:
        assert not remote.search(page.read_text(encoding="utf-8")), page
    for css in site.glob("_static/**/*.css"):
        text = css.read_text(encoding="utf-8", errors="replace")
        assert not re.search(r"@import\s+(url\()?['\"]?(https?:)?//", text), css
        assert not re.search(r"url\(['\"]?(https?:)?//", text), css


# ------------------------------------------------------------------------------------------------ the command


def test_readme_sections_ignore_headings_in_code():
    text = "# T\n\nintro\n\n## A\n\n```bash\n## not a heading\n```\n\n### A.1\n\n## B\ntext\n"
    preamble, sections = fer_site.readme_sections(text)
    assert preamble == "# T\n\nintro\n\n"
    assert [title for title, _ in sections] == ["A", "B"]
    assert "## not a heading" in sections[0][1]
    assert fer_site.demote(sections[0][1]).startswith("# A\n")
    assert "## not a heading" in fer_site.demote(sections[0][1])  # code is left alone
    assert "\n## A.1\n" in fer_site.demote(sections[0][1])


def test_links_to_files_outside_the_site_become_text():
    text = ("[nb](notebooks/01_x.ipynb) [web](https://example.org/a_b) [guide](CONTRIBUTING.md) "
            "[anchor](#results) ![fig](figures/a.png) ![gone](figures/b.png)")
    out = fer_site.site_links(text, {"notebooks/01_x.ipynb", "figures/a.png"})
    assert out == ("[nb](notebooks/01_x.ipynb) [web](https://example.org/a_b) guide "
                   "[anchor](#results) ![fig](figures/a.png) *gone*")


def _two_executed(tmp_path: Path) -> Path:
    """An executed-notebooks folder as ``python -m fer_utils run --until 02`` leaves it (papermill's injected
    parameters cell included)."""
    executed = tmp_path / "executed"
    executed.mkdir()
    for name in list(NOTEBOOKS.values())[:2]:
        nb = json.loads((workfolder.NOTEBOOKS_DIR / name).read_text(encoding="utf-8"))
        nb["cells"].insert(2, {"cell_type": "code", "execution_count": 1, "id": "injected",
                               "metadata": {"tags": ["injected-parameters"]}, "outputs": [],
                               "source": ["# Parameters\n", "max_per_class = 200\n"]})
        (executed / name).write_text(json.dumps(nb), encoding="utf-8")
    (executed / "notes.ipynb").write_text("{}")  # not a numbered notebook: not published
    return executed


def test_executed_notebooks_into_the_work_folder_and_rebuilt(tmp_path, capsys):
    executed, work = _two_executed(tmp_path), tmp_path / "work"
    assert fer_site.main(["--executed", str(executed), "--work-dir", str(work)]) == 0
    out = capsys.readouterr().out
    built = work / fer_site.SITE_DIR
    assert f"Open {built / 'index.html'}" in out and f"http.server --bind 127.0.0.1 -d {built}" in out
    assert sorted(p.name for p in (built / "notebooks").glob("*.html")) == [f"{s}.html" for s in STEPS[:2]]
    assert "max_per_class = 200" in _text((built / "notebooks" / f"{STEPS[1]}.html").read_text(encoding="utf-8"))
    (built / "stale.html").write_text("from an earlier build")
    assert fer_site.main(["--executed", str(executed), "--work-dir", str(work)]) == 0  # replaces its own site
    assert not (built / "stale.html").exists()


def test_a_run_and_the_run_it_extends_make_one_site(tmp_path, capsys):
    """``--run latest``: a partial run's notebooks, and the earlier notebooks of the full run it extends."""
    work = tmp_path / "work"
    executed = _two_executed(tmp_path)
    first, second = list(NOTEBOOKS.values())[:2]
    for run_id, names, extends in (("20260101-000000", [first, second], None), ("20260102-000000", [second],
                                                                                 "20260101-000000")):
        folder = work / "runs" / run_id / "executed"
        folder.mkdir(parents=True)
        for name in names:
            (folder / name).write_bytes((executed / name).read_bytes())
        failed = {"status": "failed", "notebooks": {second[:-6]: {"status": "failed", "error": "ValueError: boom"}}}
        workfolder.write_record(folder.parent / "run.json", {"id": run_id, "extends": extends,
                                                             **(failed if extends else {"status": "ok"})})
    workfolder.write_record(work / "run.json", {"id": "20260102-000000", "extends": "20260101-000000"})
    (work / "executed").mkdir()  # e.g. papermill's own output folder: not part of any run
    (work / "executed" / f"{second[:2]}_quick.ipynb").write_text("{}")
    capsys.readouterr()
    assert fer_site.main(["--run", "latest", "--work-dir", str(work)]) == 0
    built = work / fer_site.SITE_DIR
    assert sorted(p.name for p in (built / "notebooks").glob("*.html")) == [f"{s}.html" for s in STEPS[:2]]
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Warning: run")]
    assert warned == [f"Warning: run 20260102-000000 failed in {second[:-6]} (ValueError: boom): the site shows the "
                      "notebooks only as far as that run got; run it again (python -m fer_utils run) for a complete "
                      "site."]
    # a later partial run that ran the notebook again completes the set: no warning any more
    third = work / "runs" / "20260103-000000"
    (third / "executed").mkdir(parents=True)
    (third / "executed" / second).write_bytes((executed / second).read_bytes())
    workfolder.write_record(third / "run.json", {"id": third.name, "extends": "20260102-000000", "status": "ok",
                                                 "notebooks": {second[:-6]: {"status": "ok"}}})
    workfolder.write_record(work / "run.json", {"id": third.name, "extends": "20260102-000000"})
    assert workfolder.unfinished_runs(work) == []
    assert fer_site.main(["--run", "20261231-000000", "--work-dir", str(work)]) == 2
    assert "No run '20261231-000000'" in capsys.readouterr().err


def test_refuses_a_folder_that_is_not_a_site(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert fer_site.main(["--out", str(tmp_path)]) == 2
    assert "Refusing to build the site into" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_missing_executed_folder_or_notebooks(tmp_path, capsys):
    assert fer_site.main(["--executed", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "No folder" in capsys.readouterr().err
    assert fer_site.main(["--executed", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "No numbered notebooks" in capsys.readouterr().err


def test_without_the_extra_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sphinx.application", None)
    assert fer_site.main(["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[site]"' in err and "Traceback" not in err


def test_readme_without_a_card_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# T\n\n## Results\n\nr\n\n## Model card\n\nm\n")
    with pytest.raises(ValueError, match="## Data card"):
        fer_site.site_sources(tmp_path / "src", [workfolder.NOTEBOOKS_DIR / NOTEBOOKS["load"]], readme=readme)


def test_the_command_line_entry(tmp_path):
    import subprocess

    out = tmp_path / "s"
    proc = subprocess.run([sys.executable, "-m", "fer_utils", "site", "--executed", str(_two_executed(tmp_path)),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Built the site" in proc.stdout and (out / "index.html").is_file()
    assert proc.stderr == "", proc.stderr  # no Sphinx warning


# ------------------------------------------------------------------------------------------------ in a browser


@pytest.mark.browser
def test_site_in_a_browser(site):
    """Every page in headless Chromium: no console error, no failed or remote request, every image drawn, and
    the link to the next step there and working."""
    from browser import PageWatch, chromium, serve_folder

    pages = [p.relative_to(site).as_posix() for p in _pages(site)]
    with serve_folder(site) as base, chromium() as browser:
        page = browser.new_page()
        watch = PageWatch(page)
        for path in pages:
            page.goto(base + path, wait_until="load")
            page.wait_for_load_state("networkidle")
            broken = page.evaluate("""async () => {
                const imgs = [...document.images];
                for (const img of imgs) { img.loading = "eager"; try { await img.decode(); } catch (e) {} }
                return imgs.filter(img => !(img.complete && img.naturalWidth > 0)).map(img => img.src);
            }""")
            assert broken == [], (path, broken)
            assert page.title(), path
            assert not watch.problems(), (path, watch.problems())
        for here, following in zip(READING_ORDER, READING_ORDER[1:]):  # follow the "next" link, step by step
            page.goto(base + f"{here}.html")
            page.click("a.right-next")
            page.wait_for_load_state("load")
            assert page.url.split("#")[0] == base + f"{following}.html", (here, page.url)
        assert not watch.problems(), watch.problems()


def test_site_out_of_the_repository_by_default(tmp_path, monkeypatch):
    """Without --out the site goes to <work_dir>/site; the repository's tracked folders are never written."""
    monkeypatch.setenv("FER_WORK_DIR", str(tmp_path / "w"))
    executed = _two_executed(tmp_path)
    index = fer_site.build_site(executed)
    assert index == tmp_path / "w" / "site" / "index.html" and index.is_file()
    shutil.rmtree(tmp_path / "w")
