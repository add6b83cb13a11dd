"""Normalised notebooks: what is committed. ``python -m fer_utils run --publish`` writes the executed
notebooks through ``normalise_notebook``, so a refresh changes only what changed; ``normalise_file`` does the
same for a notebook edited by hand."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

#: Cell metadata that records when and how a cell ran or was displayed, not what it is.
CELL_METADATA_NOISE = ("execution", "papermill", "ExecuteTime", "collapsed", "scrolled", "trusted")
#: Notebook metadata of the same kind: papermill's run record, saved widget state, nbformat's transients.
NOTEBOOK_METADATA_NOISE = ("papermill", "widgets", "orig_nbformat", "orig_nbformat_minor", "signature")
#: As ipykernel names its kernel, and JupyterLab writes it when it opens a notebook.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
INJECTED_PARAMETERS = "injected-parameters"  # papermill's tag for the cell it adds
CELL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # nbformat 4.5
NORMALISE_HINT = ('python -c "from fer_utils.notebook_format import normalise_all; '
                  'normalise_all()"')


def normalise_notebook(nb: dict) -> dict:
    """A copy of a notebook (nbformat 4, as a dict) without what changes from run to run, in the spirit of
    tensorflow/docs' ``nbfmt``: cell sources, outputs and execution counts are kept as they are.

    - drops papermill's ``injected-parameters`` cells;
    - drops per-cell run metadata (``execution`` timestamps, ``papermill`` timings, ``ExecuteTime``,
      ``collapsed``, ``scrolled``, ``trusted``) and empty ``tags``;
    - drops the notebook's ``papermill`` record and ``widgets`` state; sets the kernelspec to ``python3`` /
      ``Python 3`` / ``python``; keeps ``language_info`` without its ``version`` (so a new Python patch
      release does not rewrite every notebook);
    - keeps cell ids, giving a cell without a valid, unique one a deterministic id (``cNN`` from its position)
      and the notebook nbformat 4.5;
    - splits multi-line sources and text outputs into lists of lines, as Jupyter and nbformat write them.

    Idempotent. ``normalised_json`` is the text to write.
    """
    import nbformat
    from nbformat.v4.rwbase import split_lines

    if nb.get("nbformat") != 4:
        raise ValueError(f"normalise_notebook handles nbformat 4 notebooks, not nbformat {nb.get('nbformat')}")
    nb = nbformat.from_dict(copy.deepcopy(nb))
    meta = nb.setdefault("metadata", {})
    for key in NOTEBOOK_METADATA_NOISE:
        meta.pop(key, None)
    meta["kernelspec"] = dict(KERNELSPEC)
    if isinstance(meta.get("language_info"), dict):
        meta["language_info"].pop("version", None)

    cells = []
    for cell in nb.get("cells", []):
        cell_meta = cell.setdefault("metadata", {})
        if INJECTED_PARAMETERS in (cell_meta.get("tags") or []):
            continue
        for key in CELL_METADATA_NOISE:
            cell_meta.pop(key, None)
        if "tags" in cell_meta and not cell_meta["tags"]:
            del cell_meta["tags"]
        if cell.get("cell_type") == "code":
            cell.setdefault("outputs", [])
            cell.setdefault("execution_count", None)
        cells.append(cell)
    nb["cells"] = cells
    _give_cells_ids(cells)
    nb["nbformat_minor"] = max(nb.get("nbformat_minor", 0), 5)
    return split_lines(nb)


def _give_cells_ids(cells: list[dict]) -> None:
    """Keep each cell's valid id (the first of duplicates); give the others ``cNN`` from their position."""
    taken = {c.get("id") for c in cells if isinstance(c.get("id"), str) and CELL_ID.match(c["id"])}
    kept = set()
    for index, cell in enumerate(cells):
        cell_id = cell.get("id")
        if cell_id in taken and cell_id not in kept:
            kept.add(cell_id)
            continue
        new, n = f"c{index:02d}", 0
        while new in taken:
            n += 1
            new = f"c{index:02d}-{n}"
        cell["id"] = new
        taken.add(new)
        kept.add(new)


def normalised_json(nb: dict) -> str:
    """The text of a normalised notebook: ``normalise_notebook``, then JSON as Jupyter writes it."""
    return json.dumps(normalise_notebook(nb), indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def normalise_file(path: str | os.PathLike) -> bool:
    """Normalise a notebook file in place (``normalise_notebook``); ``True`` if that changed it."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    normalised = normalised_json(json.loads(text))
    if normalised == text:
        return False
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(normalised, encoding="utf-8")
    tmp.replace(path)
    return True


def normalise_all(folder: str | os.PathLike | None = None) -> list[Path]:
    """Normalise every numbered notebook of ``folder`` (default: the series) in place; the ones it changed."""
    from fer_utils.workfolder import NOTEBOOKS_DIR, numbered_notebooks

    return [p for p in numbered_notebooks(folder or NOTEBOOKS_DIR) if normalise_file(p)]


#: A notebook header's time of the committed run, "**Time:** 18 s in the committed run": written from the run's
#: record when publishing (``stamp_header_time``), so re-publishing cannot leave a stale time in the prose.
HEADER_TIME = re.compile(r"(\*\*Time:\*\* )([^*\n]*?)( in the committed run)")


def header_time(seconds: float) -> str:
    """How a header quotes a notebook's seconds: ``"18 s"``, or ``"9 min (532 s)"`` from 90 s on."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min ({seconds:,.0f} s)"


def stamp_header_time(nb: dict, seconds: float) -> bool:
    """Write ``seconds`` into the first markdown cell's "**Time:** … in the committed run"; False without one."""
    cell = next((c for c in nb["cells"] if c["cell_type"] == "markdown"), None)
    if cell is None:
        return False
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    stamped, n = HEADER_TIME.subn(lambda m: m.group(1) + header_time(seconds) + m.group(3), source, count=1)
    cell["source"] = stamped
    return bool(n)
