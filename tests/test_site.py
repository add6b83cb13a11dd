"""The series as a static site (``python -m fer_utils site``, ``fer_site.build_site``): built from the committed
notebooks without running them, README.md as the landing page, its Results, Data card and Model card as pages,
no network needed; checked in headless Chromium (marker ``browser``)."""

from __future__ import annotations

import json
import os
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
    work.mkdir()
    assert fer_site.main(["--executed", str(executed), "--work-dir", str(work)]) == 0
    out = capsys.readouterr().out
    built = work / fer_site.SITE_DIR
    assert f"Open {built / 'index.html'}" in out and f"http.server --bind 127.0.0.1 -d {built}" in out
    assert sorted(p.name for p in (built / "notebooks").glob("*.html")) == [f"{s}.html" for s in STEPS[:2]]
    assert "max_per_class = 200" in _text((built / "notebooks" / f"{STEPS[1]}.html").read_text(encoding="utf-8"))
    (executed / NOTEBOOKS["prepare"]).unlink()
    assert fer_site.main(["--executed", str(executed), "--work-dir", str(work)]) == 0  # replaces its own site
    assert sorted(p.name for p in (built / "notebooks").glob("*.html")) == [f"{STEPS[0]}.html"]


def test_a_rebuild_keeps_the_users_files(tmp_path, capsys):
    """Only the files of the site the builder wrote there earlier (listed by its marker file) are replaced: a file
    the user put beside them stops the build, in one line that names it, and nothing is touched."""
    executed, out = _two_executed(tmp_path), tmp_path / "mysite"
    assert fer_site.main(["--executed", str(executed), "--out", str(out)]) == 0
    site_files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert out / fer_site.SITE_MARKER in site_files
    (out / "notes.txt").write_text("mine")
    (out / "notebooks" / "draft.md").write_text("mine too")
    capsys.readouterr()
    assert fer_site.main(["--executed", str(executed), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"Refusing to build the site into {out}: besides an earlier site, it holds notebooks/draft.md, " \
           "notes.txt, which the site builder did not write. Choose another --out, or empty that folder." in err
    assert (out / "notes.txt").read_text() == "mine" and (out / "notebooks" / "draft.md").read_text() == "mine too"
    assert {p: p.read_bytes() for p in site_files} == site_files


def test_refuses_an_earlier_sphinx_site_that_is_not_its_own(tmp_path, capsys):
    """A folder is recognised by the builder's marker file, not by what Sphinx leaves (.buildinfo) or its name."""
    out = tmp_path / "site"
    out.mkdir()
    (out / ".buildinfo").write_text("# Sphinx build info version 1\n")
    (out / "notes.txt").write_text("mine")
    (out / fer_site.SITE_MARKER).write_text("not json")
    assert fer_site.main(["--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "it holds .buildinfo, notes.txt, and no site the builder wrote" in err, err
    assert (out / "notes.txt").read_text() == "mine" and (out / ".buildinfo").is_file()


def test_refuses_an_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    for out in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "site"):
        assert fer_site.main(["--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {tmp_path / 'notes.txt'} is a file, not a folder; choose a folder for the site " \
                      "(--out).\n", err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_refuses_an_out_inside_a_dataset(tmp_path, capsys, monkeypatch):
    """A site built inside the work folder's dataset made it another dataset (and a class 'site'): refused, for
    the dataset that ``dataset.json`` names and for ``$FER_DATA_DIR``, before anything is made."""
    data, work, other = tmp_path / "my_faces", tmp_path / "work", tmp_path / "shared"
    for folder in (data / "happiness", work, other):
        folder.mkdir(parents=True)
    (work / "dataset.json").write_text(json.dumps({"layout": "folders", "sha256": "0" * 64, "path": str(data)}))
    monkeypatch.setenv("FER_DATA_DIR", str(other))
    for out, what in ((data / "site", "the dataset of"), (other / "site", "$FER_DATA_DIR")):
        assert fer_site.main(["--work-dir", str(work), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: Refusing to build the site into {out}: it is inside {what}") and "Choose a " \
            "folder outside it (--out)." in err, err
    assert sorted(p.name for p in data.iterdir()) == ["happiness"] and not list(other.iterdir())


def test_the_build_leaves_nothing_beside_the_site(tmp_path):
    """Sphinx and myst-nb work in a temporary folder (myst-nb writes jupyter_execute/ beside Sphinx's output)."""
    parent = tmp_path / "public"
    parent.mkdir()
    assert fer_site.main(["--executed", str(_two_executed(tmp_path)), "--out", str(parent / "site"),
                          "--work-dir", str(tmp_path / "work")]) == 0
    assert sorted(p.name for p in parent.iterdir()) == ["site"]
    assert not (tmp_path / "jupyter_execute").exists() and not (parent / "site" / "jupyter_execute").exists()


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


def _fake_run(work: Path, run_id: str, executed: Path) -> Path:
    """``<work>/runs/<run_id>``: a finished run of ``executed``'s notebooks (its record and executed copies)."""
    folder = work / "runs" / run_id
    (folder / "executed").mkdir(parents=True)
    for path in executed.glob("*.ipynb"):
        (folder / "executed" / path.name).write_bytes(path.read_bytes())
    workfolder.write_record(folder / "run.json", {"id": run_id, "extends": None, "status": "ok"})
    return folder


def test_a_run_outside_the_runs_folder_is_refused(tmp_path, capsys):
    """``--run`` is ``latest`` or a run's id in ``<work_dir>/runs/``: a path (``..``, a separator, an absolute
    path) is refused in one line that names the runs there, before any work, even where it leads to a run."""
    work, executed = tmp_path / "work", _two_executed(tmp_path)
    _fake_run(work, "20260101-000000", executed)
    outside = _fake_run(tmp_path / "elsewhere", "x", executed)  # a run, but not one of this work folder's
    shutil.copytree(outside, work / "x")
    capsys.readouterr()
    for run in ("../x", "../../elsewhere/runs/x", str(outside), "..", "20260101-000000/..", "a\\b"):
        assert fer_site.main(["--run", run, "--work-dir", str(work)]) == 2, run
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith(f"error: No run {run!r} in {work / 'runs'} (a run's id is its folder's name in runs/, "
                              "without '/', '\\' or '..'); the runs there: 20260101-000000 (or --run latest).")
    assert not (work / "site").exists()
    (tmp_path / "empty").mkdir()
    assert fer_site.main(["--run", "nope", "--work-dir", str(tmp_path / "empty")]) == 2
    assert "No run 'nope' in" in capsys.readouterr().err


def test_a_work_folder_that_is_not_there_is_refused_not_made(tmp_path, capsys):
    """``--work-dir`` naming a folder that does not exist (a typo) is one line, and no folder is created."""
    executed = _two_executed(tmp_path)
    for args in (["--executed", str(executed)], ["--run", "latest"]):
        assert fer_site.main([*args, "--work-dir", str(tmp_path / "nowhere")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: No work folder {tmp_path / 'nowhere'} (--work-dir)")
    assert not (tmp_path / "nowhere").exists()


def test_scrub_paths_shows_machine_paths_relative():
    work = Path("/srv/w")
    repo = workfolder.REPO_ROOT
    assert fer_site.scrub_paths(f"File {repo}/fer_utils/data.py:12, in f", work) == "File ./fer_utils/data.py:12, in f"
    assert fer_site.scrub_paths(f"\x1b[32m{work}/split/train\x1b[39m", work) == "\x1b[32m<work_dir>/split/train\x1b[39m"
    assert fer_site.scrub_paths("'/tmp/ipykernel_7/123.py', ~/notes/a.txt", work) == "'123.py', a.txt"
    assert fer_site.scrub_paths(f"<td>{work}/x.png</td>", work, html=True) == "<td>&lt;work_dir&gt;/x.png</td>"
    kept = ("see https://example.org/a/b and file.py:3 at 12/05/2026, 3 it/s, <work_dir>/split/train, "
            "&lt;work_dir&gt;/a/b, ./fer_utils/x.py, split/train/happy, </div>")
    assert fer_site.scrub_paths(kept, work) == kept
    assert fer_site.scrub_paths(kept, work, html=True) == kept


def test_a_failed_run_shows_no_machine_path(tmp_path, capsys):
    """The page of a notebook that failed shows its traceback with the work folder's, the repository's and other
    machine paths relative (as ``workfolder.display_path`` shows them): no absolute path of this machine."""
    work, executed = tmp_path / "work", _two_executed(tmp_path)
    second = list(NOTEBOOKS.values())[1]
    nb = json.loads((executed / second).read_text(encoding="utf-8"))
    venv = workfolder.REPO_ROOT / ".venv"  # where the virtual environment is here
    traceback = [  # as papermill leaves it (IPython's colours included), with paths of this machine
        "\x1b[31m---------------------------------------------------------------------------\x1b[39m",
        "\x1b[31mValueError\x1b[39m                                Traceback (most recent call last)",
        "\x1b[36mCell\x1b[39m\x1b[36m \x1b[39m\x1b[32mIn[3]\x1b[39m\x1b[32m, line 1\x1b[39m\n\x1b[32m----> \x1b[39m"
        "\x1b[32m1\x1b[39m prepare(dataset, work_dir)\n",
        f"\x1b[36mFile \x1b[39m\x1b[32m{workfolder.REPO_ROOT}/fer_utils/folders.py:431\x1b[39m, in \x1b[36mprepare"
        "\x1b[39m\x1b[34m(dataset, work_dir)\x1b[39m\n",
        f"\x1b[36mFile \x1b[39m\x1b[32m{venv}/lib/python3.11/site-packages/pandas/core/frame.py:7\x1b[39m, in f\n",
        "\x1b[36mFile \x1b[39m\x1b[32m/tmp/ipykernel_4242/1234.py:2\x1b[39m, in g\n",
        f"\x1b[31mValueError\x1b[39m: no images in {work}/split/train (from {tmp_path}/data/images)"]
    nb["cells"].append({"cell_type": "code", "execution_count": 3, "id": "failed", "metadata": {},
                        "source": [f"prepare(dataset, {str(work / 'split')!r})"], "outputs": [
                            {"name": "stderr", "output_type": "stream", "text": [f"{venv}/lib/x.py:1: Warning\n"]},
                            {"output_type": "error", "ename": "ValueError", "traceback": traceback,
                             "evalue": f"no images in {work}/split/train (from {tmp_path}/data/images)"}]})
    (executed / second).write_text(json.dumps(nb), encoding="utf-8")
    folder = _fake_run(work, "20260101-000000", executed)
    workfolder.write_record(folder / "run.json", {"id": folder.name, "extends": None, "status": "failed",
                                                  "notebooks": {second[:-6]: {"status": "failed"}}})
    workfolder.write_record(work / "run.json", {"id": folder.name, "extends": None})
    out = tmp_path / "pub"
    assert fer_site.main(["--run", "latest", "--work-dir", str(work), "--out", str(out)]) == 0
    # the traceback's words, as the page shows them (a lexer colours them, so tags split them): spaces left out
    page = re.sub(r"\s+", "", _text((out / "notebooks" / f"{STEPS[1]}.html").read_text(encoding="utf-8")))
    assert "ValueError:noimagesin&lt;work_dir&gt;/split/train(fromimages)" in page
    assert "File./fer_utils/folders.py:431,inprepare" in page
    assert "File./.venv/lib/python3.11/site-packages/pandas/core/frame.py:7,inf" in page
    assert "File1234.py:2,ing" in page and "prepare(dataset,'&lt;work_dir&gt;/split')" in page
    machine = (str(tmp_path), str(workfolder.REPO_ROOT), str(venv), "/tmp/ipykernel_")
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".html", ".js", ".json", ".txt", ""):
            text = path.read_text(encoding="utf-8", errors="replace")
            assert not [m for m in machine if m in text], (path, [m for m in machine if m in text])


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


def test_ctrl_c_during_a_command_is_one_line(monkeypatch, capsys):
    """Ctrl-C in site (or predict, demo, export) ends with one line and status 130, not a traceback."""
    from fer_utils.__main__ import main

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(fer_site, "main", interrupted)
    assert main(["site", "--out", "x"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "interrupted: `python -m fer_utils site` stopped; run it again to redo what it was doing."


def test_pages_made_before_a_newer_run_redid_an_earlier_step_are_named(tmp_path, capsys):
    """A full run, then ``--from 01 --until 01`` again: notebook 02's page still comes from the full run, made
    before step 01 changed; the site says which pages and the --from that updates them."""
    work, executed = tmp_path / "work", _two_executed(tmp_path)
    first, second = list(NOTEBOOKS.values())[:2]
    _fake_run(work, "20260101-000000", executed)
    partial = work / "runs" / "20260102-000000"
    (partial / "executed").mkdir(parents=True)
    (partial / "executed" / first).write_bytes((executed / first).read_bytes())
    workfolder.write_record(partial / "run.json", {"id": partial.name, "extends": "20260101-000000", "status": "ok"})
    workfolder.write_record(work / "run.json", {"id": partial.name, "extends": "20260101-000000"})
    assert workfolder.stale_notebooks(work) == [
        f"{second[:-6]} of run 20260101-000000 was made before a newer run ran notebook {first[:2]} again: run "
        f"`python -m fer_utils run --from {second[:2]}` to bring them up to date"]
    assert workfolder.stale_notebooks(work, "20260101-000000") == []  # the full run alone is consistent
    capsys.readouterr()
    assert fer_site.main(["--run", "latest", "--work-dir", str(work), "--out", str(tmp_path / "site")]) == 0
    assert f"Warning: {second[:-6]} of run 20260101-000000 was made before" in capsys.readouterr().err
    # a partial run that found the current model changed since the run it extends: named too
    workfolder.write_record(partial / "run.json", {"id": partial.name, "extends": "20260101-000000", "status": "ok",
                                                   "model_changed": {"left": "0" * 12, "found": "1" * 12}})
    assert workfolder.stale_notebooks(work)[0] == (
        f"{first[:-6]} of run 20260102-000000 used a model that is not the one run 20260101-000000 left: model.keras "
        "changed between them (a notebook or the train command run by hand); run `python -m fer_utils run --from 05` "
        "for pages of one model")


def test_an_out_folder_that_cannot_be_written_is_refused_before_the_build(tmp_path, capsys, monkeypatch):
    """It built the whole site, then ended in an OSError traceback. (As root every folder can be written, so the
    folder's permission is what ``os.access`` is asked, and answered, here.)"""
    executed = _two_executed(tmp_path)
    locked = tmp_path / "read-only"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr(fer_site.os, "access", lambda path, mode: False if Path(path) == locked else access(path, mode))
    assert fer_site.main(["--executed", str(executed), "--out", str(locked / "site")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: Cannot build the site into {locked / 'site'}: {locked} is not a folder that can be "
                   "written. Choose another --out.\n")
    assert not any(locked.iterdir())
