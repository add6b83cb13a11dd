"""The series as a static HTML site: ``python -m fer_utils site [--executed DIR] [--out DIR]``
(``site_main``, ``build_site``) publishes executed notebooks — by default the committed ones — with
README.md as its landing page."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import sys
import time
from pathlib import Path

from fer_utils.data import dataset_holding
from fer_utils.workfolder import (
    DATASET_RECORD,
    NOTEBOOKS_DIR,
    PUBLISHED_FIGURES,
    REPO_ROOT,
    RUN_RECORD,
    RUNS_DIR,
    display_path,
    get_work_dir,
    numbered_notebooks,
    read_record,
    run_notebooks,
    stale_notebooks,
    unfinished_runs,
)

#: README sections that become pages of their own (heading → page name); the rest of README.md is the landing page.
SITE_PAGES = {"Results": "results", "Data card": "data-card", "Model card": "model-card"}
SITE_DIR = "site"  # the default output folder, in the work folder
SITE_INSTALL = 'pip install -e ".[site]"'
SITE_TITLE = "fer-notebooks"
#: The Sphinx configuration of the site: myst-nb reads the notebooks with their stored outputs (nothing runs),
#: sphinx-book-theme lays them out (the theme of Jupyter Book 1); every asset is served from the site itself.
SITE_CONF = '''\
project = {title!r}
html_title = {title!r}
copyright = ""
language = "en"
extensions = ["myst_nb"]
nb_execution_mode = "off"  # publish the stored outputs of a real run; never execute
nb_merge_streams = True
myst_heading_anchors = 3
html_theme = "sphinx_book_theme"
html_theme_options = {{
    "home_page_in_toc": True,
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
    "footer_content_items": [],  # no author, copyright or build date lines
}}
html_sidebars = {{"**": ["navbar-logo.html", "sbt-sidebar-nav.html"]}}  # search: in the header
html_context = {{"default_mode": "auto"}}  # light or dark as the reader's system is (and no console error)
html_favicon = "favicon.png"
html_copy_source = False
html_show_sourcelink = False
html_show_sphinx = False
html_show_copyright = False
html_last_updated_fmt = None
suppress_warnings = ["misc.highlighting_failure"]  # README code with shell escapes (!pip) in a python block
'''
#: The README's link to the live page (``web/live.html``) → the page the site carries (``live/index.html``).
_LIVE_LINK = re.compile(r"\[([^\]]*)\]\(web/live\.html\)")
LIVE_DIR = "live"
_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^()\s]+)\)")
#: The file the builder writes into each site it builds: the site's files (paths relative to the site), so that a
#: later build replaces those and nothing else, and refuses a folder that holds anything it did not write.
SITE_MARKER = ".fer-site.json"
_SEGMENT = r"[\w.@+-]+"
#: An absolute path (two names or more) or a path under ``~``, in a notebook's outputs: after the start of a line,
#: a colour code of a traceback or a character that cannot be part of a path, and not already ``<work_dir>/…``.
_ABSOLUTE = re.compile(rf"(?P<pre>\x1b\[[0-9;]*m|^|[^\w.~:/\\-])(?<!<work_dir>)(?<!&lt;work_dir&gt;)"
                       rf"(?P<path>~(?:/{_SEGMENT})+|(?:/{_SEGMENT}){{2,}})", re.M)


def readme_sections(text: str) -> tuple[str, list[tuple[str, str]]]:
    """README text → (what comes before its first ``## `` heading, [(heading, section text with its
    heading line)]); headings inside code blocks are not headings."""
    preamble, sections, fenced = [], [], False
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        if not fenced and line.startswith("## "):
            sections.append([line[3:].strip(), [line]])
        elif sections:
            sections[-1][1].append(line)
        else:
            preamble.append(line)
    return "".join(preamble), [(title, "".join(lines)) for title, lines in sections]


def demote(markdown: str) -> str:
    """Headings one level up (``## Results`` → ``# Results``), so that a README section is a page of its own."""
    out, fenced = [], False
    for line in markdown.splitlines(keepends=True):
        if _FENCE.match(line):
            fenced = not fenced
        out.append(line[1:] if not fenced and re.match(r"^##+ ", line) else line)
    return "".join(out)


def site_links(markdown: str, present: set[str]) -> str:
    """Keep links to the web and to files in the site (``present``: paths relative to the site root);
    other relative links (files of the repository that are not part of the site) become their text."""
    def fix(m: re.Match) -> str:
        bang, text, target = m.groups()
        path = target.split("#", 1)[0]
        if not path or re.match(r"^[a-z][a-z0-9+.-]*:", target) or path in present:
            return m.group(0)
        return text if not bang else f"*{text}*"
    return _LINK.sub(fix, markdown)


def _notebook_links(nb: dict, present: set[str]) -> dict:
    """Links in a notebook's markdown as the site needs them: ``../README.md`` → the landing page; links to
    other pages and figures of the site kept; links to repository files outside the site become their text."""
    def fix(m: re.Match) -> str:
        bang, text, target = m.groups()
        path, _, anchor = target.partition("#")
        if not path or re.match(r"^[a-z][a-z0-9+.-]*:", target):
            return m.group(0)
        resolved = os.path.normpath(os.path.join("notebooks", path)).replace(os.sep, "/")
        if resolved == "README.md":
            return f"{bang}[{text}](../index.md)"
        if resolved in present:
            return m.group(0)
        return text if not bang else f"*{text}*"

    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            source = "".join(cell.get("source", ""))
            cell["source"] = _LINK.sub(fix, source)
    return nb


def scrub_paths(text: str, work_dir: str | os.PathLike | None = None, html: bool = False) -> str:
    """``text`` with each absolute path (and ``~/…``) as ``workfolder.display_path`` shows it: ``<work_dir>/…``,
    ``./…`` (the repository) or, elsewhere on the machine, the file's name; ``html``: the text is HTML or Markdown
    (``<work_dir>`` written ``&lt;work_dir&gt;``)."""
    def fix(m: re.Match) -> str:
        shown = display_path(os.path.expanduser(m["path"]), work_dir)
        return m["pre"] + (shown.replace("<", "&lt;").replace(">", "&gt;") if html else shown)
    return _ABSOLUTE.sub(fix, text)


def _notebook_paths(nb: dict, work_dir: str | os.PathLike | None = None) -> dict:
    """A notebook whose code cells and text outputs (streams, tracebacks, text/* data) show no absolute path of
    this machine (``scrub_paths``): an executed copy's traceback names files in the work folder, the
    repository, the virtual environment and temporary folders."""
    def fix(value, html: bool = False):
        if isinstance(value, list):
            return [scrub_paths(v, work_dir, html) if isinstance(v, str) else v for v in value]
        return scrub_paths(value, work_dir, html) if isinstance(value, str) else value

    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        cell["source"] = fix(cell.get("source", ""))
        for output in cell.get("outputs", []):
            for key in ("text", "evalue", "traceback"):
                if key in output:
                    output[key] = fix(output[key])
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/"):
                    output["data"][mime] = fix(value, html=mime in ("text/html", "text/markdown"))
    return nb


def _notebook_title(stem: str) -> str:
    """``05_train_model`` → ``05 · Train model``."""
    number, _, words = stem.partition("_")
    return f"{number} · {words.replace('_', ' ').capitalize()}"


def _has_title(nb: dict) -> bool:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            source = "".join(cell.get("source", ""))
            if any(line.startswith("# ") for line in source.splitlines()):
                return True
    return False


def site_sources(src: Path, notebooks: list[Path], readme: Path = REPO_ROOT / "README.md",
                 figures: Path = PUBLISHED_FIGURES, live: bool = False,
                 work_dir: str | os.PathLike | None = None) -> list[str]:
    """Lay out the site's sources in ``src``: ``index.md`` (README.md without the sections of ``SITE_PAGES``),
    one page per ``SITE_PAGES`` section, the notebooks (outputs included, absolute paths shown relative to
    ``work_dir`` or the repository: ``scrub_paths``) under ``notebooks/`` and the README's figures under
    ``figures/``; with ``live``, the README's links to ``web/live.html`` lead to the live page the site carries
    (``live/index.html``). Returns the pages in reading order (without ``index``)."""
    import nbformat

    (src / "notebooks").mkdir(parents=True)
    steps = []
    for path in notebooks:
        nb = _notebook_paths(json.loads(Path(path).read_text(encoding="utf-8")), work_dir)
        if not _has_title(nb):  # the page title and the navigation label come from the first "# " heading
            title = nbformat.v4.new_markdown_cell(f"# {_notebook_title(path.stem)}")
            if nb.get("nbformat_minor", 0) < 5:  # cell ids came with nbformat 4.5
                del title["id"]
            nb["cells"].insert(0, title)
        (src / "notebooks" / path.name).write_text(json.dumps(nb, ensure_ascii=False), encoding="utf-8")
        steps.append(f"notebooks/{path.stem}")
    present = {f"notebooks/{p.name}" for p in notebooks}
    if figures.is_dir():
        shutil.copytree(figures, src / "figures")
        present |= {f"figures/{p.name}" for p in figures.iterdir()}
    for path in notebooks:  # now that every page and figure of the site is known, fix the notebooks' links
        copy = src / "notebooks" / path.name
        copy.write_text(json.dumps(_notebook_links(json.loads(copy.read_text(encoding="utf-8")), present),
                                   ensure_ascii=False), encoding="utf-8")

    text = readme.read_text(encoding="utf-8")
    if live:  # raw HTML: the page is a file of the site, not a Sphinx document
        text = _LIVE_LINK.sub(lambda m: f'<a href="{LIVE_DIR}/index.html">{m[1]}</a>', text)
    preamble, sections = readme_sections(text)
    found = {title: text for title, text in sections}
    missing = [title for title in SITE_PAGES if title not in found]
    if missing:
        raise ValueError(f"{display_path(readme)} has no section(s) {', '.join('## ' + t for t in missing)}; "
                         f"the site makes a page of each of {', '.join(SITE_PAGES)}.")
    for title, page in SITE_PAGES.items():
        (src / f"{page}.md").write_text(site_links(demote(found[title]), present), encoding="utf-8")
    rest = "".join(text for title, text in sections if title not in SITE_PAGES)
    toc = ("\n```{toctree}\n:caption: The notebooks, step by step\n:maxdepth: 1\n\n" + "\n".join(steps)
           + "\n```\n\n```{toctree}\n:caption: Results and cards\n:maxdepth: 1\n\n"
           + "\n".join(SITE_PAGES.values()) + "\n```\n")
    (src / "index.md").write_text(site_links(preamble + rest, present) + toc, encoding="utf-8")
    (src / "conf.py").write_text(SITE_CONF.format(title=SITE_TITLE), encoding="utf-8")
    _favicon(src / "favicon.png")
    return steps + list(SITE_PAGES.values())


def _favicon(path: Path) -> None:
    """A small smiling face, the site's icon (so browsers do not ask for a missing /favicon.ico)."""
    from PIL import Image, ImageDraw

    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(im)
    draw.ellipse([2, 2, 61, 61], fill=(255, 196, 37), outline=(120, 80, 0), width=3)
    for x in (21, 43):
        draw.ellipse([x - 4, 20, x + 4, 30], fill=(60, 40, 0))
    draw.arc([16, 22, 48, 50], 20, 160, fill=(60, 40, 0), width=4)
    im.save(path)


def _entries(folder: Path) -> set[str]:
    """Every file under ``folder`` (links and other non-folders included, linked folders not followed), as paths
    relative to it."""
    found = set()
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        for name in [*files, *(d for d in dirs if (here / d).is_symlink())]:
            found.add((here / name).relative_to(folder).as_posix())
    return found


def _earlier_site(out: Path) -> set[str]:
    """The files of the site the builder wrote into ``out`` earlier, listed by its ``SITE_MARKER`` (empty without
    a readable one)."""
    try:
        files = json.loads((out / SITE_MARKER).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()


def _check_site_out(out: Path) -> set[str]:
    """Refuse (``ValueError``, one line) an ``out`` that is a file, or a folder that holds anything but a site this
    builder wrote earlier (recognised by its ``SITE_MARKER``, which lists the files it wrote): the user's files are
    never replaced or deleted. Returns the files of that earlier site (empty for a new or empty folder)."""
    for parent in (out, *out.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise ValueError(f"{parent} is a file, not a folder; choose a folder for the site (--out).")
            break
    if not out.is_dir():
        return set()
    present = _entries(out)
    if not present:
        return set()
    earlier = _earlier_site(out) if SITE_MARKER in present else set()
    others = sorted(present - earlier - {SITE_MARKER})
    if others:
        more = f" (and {len(others) - 3} more)" if len(others) > 3 else ""
        held = (f"besides an earlier site, it holds {', '.join(others[:3])}{more}, which the site builder did not "
                "write" if earlier else f"it holds {', '.join(others[:3])}{more}, and no site the builder wrote")
        raise ValueError(f"Refusing to build the site into {out}: {held}. Choose another --out, or empty that folder.")
    return present


def _check_not_in_a_dataset(out: Path, work: Path) -> None:
    """Refuse (``ValueError``) a site folder inside a dataset: the one the work folder's results come from
    (``dataset.json``) or ``$FER_DATA_DIR``. A data folder is only ever read, and a new folder in it would make it
    another dataset (class folders: an unknown class)."""
    record = work / DATASET_RECORD
    try:
        recorded = read_record(record).get("path") if record.is_file() else None
    except (OSError, ValueError, AttributeError):  # unreadable: the site reads no data; run says what is wrong
        recorded = None
    named = [(recorded, f"the dataset of {work}"),
             (os.environ.get("FER_DATA_DIR"), "$FER_DATA_DIR")]
    for folder, what in named:
        if folder and out.is_relative_to(Path(folder).expanduser().resolve()):
            raise ValueError(f"Refusing to build the site into {out}: it is inside {what} ({folder}), which is only "
                             "ever read. Choose a folder outside it (--out).")
    held = dataset_holding(out)  # a dataset in the upstream layout that nothing names
    if held is not None:
        raise ValueError(f"Refusing to build the site into {out}: it is inside the dataset {held}, which is only "
                         "ever read. Choose a folder outside it (--out).")


def _install_site(built: Path, out: Path) -> None:
    """Put the site built in ``built`` into ``out`` (checked again by ``_check_site_out``): the earlier site's
    files there are removed, the new ones copied, and ``SITE_MARKER`` lists them. At every step the marker lists
    every file the builder put there, so an interrupted install can be built over again."""
    earlier = _check_site_out(out)
    files = sorted(_entries(built) - {SITE_MARKER})
    out.mkdir(parents=True, exist_ok=True)

    def mark(listed) -> None:
        (out / SITE_MARKER).write_text(json.dumps({"builder": "python -m fer_utils site", "files": sorted(listed)},
                                                  indent=1) + "\n", encoding="utf-8")

    mark((earlier | set(files)) - {SITE_MARKER})
    folders = set()
    for rel in sorted(earlier - {SITE_MARKER}):
        (out / rel).unlink(missing_ok=True)
        folders.update(p for p in (out / rel).parents if p != out and p.is_relative_to(out))
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):  # the deepest first
        if folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
            folder.rmdir()
    for rel in files:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built / rel, out / rel, follow_symlinks=False)
    mark(files)


def build_site(executed: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
               work_dir: str | os.PathLike | None = None, log=None, run: str | None = None) -> Path:
    """Build the static HTML site of the series into ``out`` and return the path of its ``index.html``.

    ``run``: a run of ``python -m fer_utils run`` in the work folder (its id under ``runs/``, or ``"latest"``):
    its executed notebooks, with those of the run it extends for the notebooks it did not run
    (``workfolder.run_notebooks``). ``executed``: any folder of executed notebooks. Default: the committed
    notebooks in ``notebooks/``, which carry the outputs of a real run. Nothing is
    executed: the pages show the stored outputs, with absolute paths shown relative to the work folder or the
    repository (``scrub_paths``). ``out``: default ``<work_dir>/site``; the files of a site built there earlier
    (listed by its ``SITE_MARKER``) are replaced, a folder holding anything else refused (``ValueError``); the
    build happens in a temporary folder, so nothing is written beside ``out``. README.md is the landing page,
    its Results, Data card and Model card sections are pages of their own, and the notebooks follow in number
    order (previous/next links between them). Pages need no network: every script, style sheet, font and figure
    is in the site.
    ``log``: a text stream for Sphinx's progress (default: quiet); warnings go to stderr.
    """
    try:
        from sphinx.application import Sphinx
    except ImportError as err:
        raise ImportError(f"Building the site needs the 'site' extra: {SITE_INSTALL}") from err
    if run is not None and executed:
        raise ValueError("Give --run or --executed, not both.")
    if work_dir and not out and not get_work_dir(work_dir, create=False).is_dir():  # a typo makes no folder
        raise FileNotFoundError(f"No work folder {get_work_dir(work_dir, create=False)} (--work-dir): name the "
                                "folder `python -m fer_utils run` wrote, or give --out for the site.")
    source = Path(executed).expanduser() if executed else NOTEBOOKS_DIR
    if run is not None:
        work = get_work_dir(work_dir, create=False)
        _check_run(work, run)
        source = work / RUNS_DIR
        notebooks = run_notebooks(work, run)
    elif not source.is_dir():
        raise FileNotFoundError(f"No folder {source} (--executed: a folder of executed notebooks; for a run of "
                                "`python -m fer_utils run`, use --run latest or --run <id>).")
    else:
        notebooks = numbered_notebooks(source)
    if not notebooks:
        raise FileNotFoundError(f"No numbered notebooks (NN_name.ipynb) in {source}.")
    out = Path(out).expanduser().resolve() if out else get_work_dir(work_dir) / SITE_DIR
    _check_not_in_a_dataset(out, get_work_dir(work_dir, create=False))
    _check_site_out(out)
    from fer_utils.prediction import browser
    from fer_utils.prediction.annotation import writable_folder

    writable, existing = writable_folder(out)
    if not writable:  # said before the build, not after it
        raise ValueError(f"Cannot build the site into {out}: {existing} is not a folder that can be written. Choose "
                         "another --out.")
    import tempfile

    live = not browser.missing_packages()
    with tempfile.TemporaryDirectory(prefix="fer-site-") as tmp:
        # built in the temporary folder, then installed: myst-nb writes jupyter_execute/ beside Sphinx's output
        # folder, and a failed build leaves an earlier site as it was
        src, built = Path(tmp) / "src", Path(tmp) / "html"
        site_sources(src, notebooks, live=live, work_dir=get_work_dir(work_dir, create=False))
        app = Sphinx(str(src), str(src), str(built), str(Path(tmp) / "doctrees"), "html", status=log,
                     warning=sys.stderr, freshenv=True)
        app.build()
        if app.statuscode:
            raise RuntimeError(f"Sphinx failed (status {app.statuscode}); see the messages above.")
        add_live_page(built, work_dir, live)
        _install_site(built, out)
    return out / "index.html"


def _check_run(work: Path, run: str) -> None:
    """Refuse (``ValueError``, one line, naming the runs there) a ``--run`` that is not ``latest`` or the id of a
    run in ``<work>/runs/`` (a folder name there: no ``/``, ``\\`` or ``..``, nothing outside it)."""
    if run == "latest":
        return
    runs = work / RUNS_DIR
    existing = sorted(p.name for p in runs.iterdir() if (p / RUN_RECORD).is_file()) if runs.is_dir() else []
    if run in existing:  # a name listed in runs/: no separator, not '..'
        return
    form = (" (a run's id is its folder's name in runs/, without '/', '\\' or '..')"
            if re.search(r"[/\\]", run) or run in ("", ".", "..") else "")
    there = ', '.join(existing) + " (or --run latest)" if existing else "none (run `python -m fer_utils run` first)"
    raise ValueError(f"No run {run!r} in {runs}{form}; the runs there: {there}.")


def add_live_page(out: Path, work_dir=None, live: bool = True) -> Path | None:
    """The live page (``fer_utils.prediction.browser``) into ``out/live/``, with the work folder's ``model.keras``
    exported to ONNX when there is one; without the npm packages, a note (stdout) saying how to get them."""
    from fer_utils.prediction import browser

    if not live:
        print(f"note: the site has no live page: its JavaScript is not installed (run `{browser.NPM_INSTALL}`, then "
              "build the site again)")
        return None
    model = get_work_dir(work_dir, create=False) / "model.keras"
    if not model.is_file():
        print(f"note: the live page has no model: no {display_path(model)} (train one with notebook 05, then build "
              "the site again)")
    return browser.live_page(out / LIVE_DIR, model if model.is_file() else None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_utils site",
        description="Build a static HTML site of the notebook series (with their stored outputs: nothing runs), "
                    "README.md as its landing page and its Results, Data card and Model card as pages.")
    parser.add_argument("--run", metavar="ID", help="the notebooks of a run of `python -m fer_utils run` in the work "
                        "folder: 'latest' or its id under runs/ (a partial run with those of the run it extends)")
    parser.add_argument("--executed", metavar="DIR", help="any folder of executed notebooks (default, without --run: "
                        "the committed notebooks in notebooks/)")
    parser.add_argument("--out", metavar="DIR", help="the site's folder (default: <work_dir>/site); a site built there "
                        "earlier is replaced, a folder holding anything else refused")
    parser.add_argument("--work-dir", help="the work folder, for --run and the default --out; the pages show its "
                        "paths as <work_dir>/... ($FER_WORK_DIR, else work/)")
    parser.add_argument("-v", "--verbose", action="store_true", help="show Sphinx's progress")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m fer_utils site [--run ID | --executed DIR] [--out DIR]``."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        index = build_site(args.executed, args.out, args.work_dir, log=sys.stdout if args.verbose else None,
                           run=args.run)
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (RuntimeError, SystemExit) as err:
        print(f"error: the site was not built: {err}", file=sys.stderr)
        return 1
    if args.run:  # built from a run that stopped: its pages show the notebooks as far as they ran
        for line in unfinished_runs(get_work_dir(args.work_dir, create=False), args.run):
            print(f"Warning: {line}: the site shows the notebooks only as far as that run got; run it again "
                  "(python -m fer_utils run) for a complete site.", file=sys.stderr)
        for line in stale_notebooks(get_work_dir(args.work_dir, create=False), args.run):
            print(f"Warning: {line}.", file=sys.stderr)
    out = index.parent
    pages = sum(1 for p in out.rglob("*.html") if "_static" not in p.relative_to(out).parts)
    print(f"Built the site in {time.perf_counter() - start:.0f} s: {pages} pages in {out}\n"
          f"Open {index}\nor serve it: python -m http.server --bind 127.0.0.1 -d {shlex.quote(str(out))} 8000  "
          "(then http://127.0.0.1:8000/)")
    return 0
