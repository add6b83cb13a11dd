"""One source: the code a notebook teaches is generated into the package, never copied by hand.

A code cell whose first line is ``# @save fer_utils/<module>.py`` teaches code the package runs (d2l's
``#@save``, nbdev's ``#| export``). Its code lives in that module inside a *generated region*::

    # ---- generated from notebooks/05_train_model.ipynb, cell 05-n03 ----
    # (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
    def class_weight_power(counts, power: float = 0.5) -> dict[int, float]:
        ...
    # ---- end of generated code (notebooks/05_train_model.ipynb, cell 05-n03) ----

``python -m fer_utils export`` writes every region from its cell (a new cell's region goes at the end of its
module; the region of a cell that no longer exists is removed). Hand-written code stays outside the regions.
``python -m fer_utils export --check`` (and ``tests/test_one_source.py``) fails when a module differs from what
the notebooks generate by one byte, or when a name a cell saves is also defined anywhere else in the package.

The rule for edits (every notebook's header says it): **run the cell** and this notebook's later cells use your
version; **export** and every later notebook, ``python -m fer_utils run``/``train``/``predict`` and the
benchmarks use it (restart a running kernel to pick it up).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import re
import sys
from pathlib import Path

from fer_utils.workfolder import REPO_ROOT, numbered_notebooks

#: First line of a notebook cell whose code is generated into a module of the package.
SAVE_MARKER = re.compile(r"^# @save (fer_utils/[A-Za-z0-9_/]+\.py)[ \t]*$")
EXPORT_COMMAND = "python -m fer_utils export"
BEGIN = ("# ---- generated from {notebook}, cell {cell} ----\n"
         "# (edit the cell there, then run `" + EXPORT_COMMAND + "`; an edit made here fails the one-source test)\n")
END = "# ---- end of generated code ({notebook}, cell {cell}) ----\n"
REGION = re.compile(
    r"^# ---- generated from (?P<notebook>\S+), cell (?P<cell>\S+) ----\n# \(edit the cell there[^\n]*\n"
    r"(?P<body>.*?)"
    r"^# ---- end of generated code \((?P=notebook), cell (?P=cell)\) ----\n", re.M | re.S)


@dataclasses.dataclass(frozen=True)
class SavedCell:
    """A ``# @save`` cell: where it is, the module it is generated into, its code and the names it defines."""

    notebook: str  # relative to the root, e.g. "notebooks/05_train_model.ipynb"
    cell: str  # the cell's id
    module: str  # relative to the root, e.g. "fer_utils/training.py"
    body: str  # the cell's source without the marker line, ending in one newline
    names: tuple[str, ...]  # the top-level names it defines

    @property
    def where(self) -> str:
        return f"{self.notebook} cell {self.cell}"

    def region(self) -> str:
        return BEGIN.format(notebook=self.notebook, cell=self.cell) + self.body + END.format(
            notebook=self.notebook, cell=self.cell)


def defined_names(tree: ast.Module) -> dict[str, ast.stmt]:
    """The names a module's top-level statements define (functions, classes, assignments), with the statement."""
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.setdefault(node.name, node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        found.setdefault(name.id, node)
    return found


def saved_cells(root: str | Path = REPO_ROOT, notebooks: list[Path] | None = None) -> list[SavedCell]:
    """Every ``# @save`` cell of the numbered notebooks under ``root/notebooks``, in notebook and cell order."""
    root = Path(root)
    found = []
    for path in notebooks if notebooks is not None else numbered_notebooks(root / "notebooks"):
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            first, _, body = source.partition("\n")
            match = SAVE_MARKER.match(first) if cell["cell_type"] == "code" else None
            if match:
                body = body.strip("\n") + "\n"
                found.append(SavedCell(Path(path).resolve().relative_to(root.resolve()).as_posix(), str(cell.get("id")),
                                       match[1], body, tuple(defined_names(ast.parse(body)))))
    return found


def generate(root: str | Path = REPO_ROOT, notebooks: list[Path] | None = None) -> dict[str, str]:
    """``{module: text}``: each module that has or should have generated regions, as the notebooks generate it.

    The module's text outside its regions is kept as it is; each region's code is its cell's; a cell without a
    region gets one at the end of its module; a region whose cell is gone is removed."""
    root = Path(root)
    cells = saved_cells(root, notebooks)
    modules = {c.module for c in cells} | {
        p.relative_to(root).as_posix() for p in (root / "fer_utils").rglob("*.py")
        if REGION.search(p.read_text(encoding="utf-8"))}
    out = {}
    for module in sorted(modules):
        path = root / module
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        mine = {(c.notebook, c.cell): c for c in cells if c.module == module}
        placed = set()

        def fill(m: re.Match, mine=mine, placed=placed) -> str:
            key = (m["notebook"], m["cell"])
            if key not in mine or key in placed:
                return ""
            placed.add(key)
            return mine[key].region()

        text = REGION.sub(fill, text)
        for key, cell in mine.items():
            if key not in placed:
                text = text.rstrip("\n") + ("\n\n\n" if text.strip() else "") + cell.region()
        out[module] = text
    return out


def problems(root: str | Path = REPO_ROOT, notebooks: list[Path] | None = None) -> list[str]:
    """What keeps the package from being exactly what the notebooks teach, one line each; ``[]`` when none."""
    root = Path(root)
    found = []
    cells = saved_cells(root, notebooks)
    owner = {}
    for cell in cells:
        for name in cell.names:
            if name in owner:
                found.append(f"{cell.where} defines {name!r}, which {owner[name].where} saves already")
            owner.setdefault(name, cell)
    for module, text in generate(root, notebooks).items():
        current = (root / module).read_text(encoding="utf-8") if (root / module).exists() else None
        if current != text:
            which = [c.where for c in cells if c.module == module and c.region() not in (current or "")]
            found.append(f"{module} differs from what the notebooks generate"
                         + (f" (the region of {', '.join(which)})" if which else "")
                         + f": edit the cell, not the module, then run `{EXPORT_COMMAND}`")
    for path in sorted((root / "fer_utils").rglob("*.py")):
        module = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        inside = [range(text.count("\n", 0, m.start()) + 1, text.count("\n", 0, m.end()) + 1)
                  for m in REGION.finditer(text)]
        for node in ast.parse(text).body:
            outside = not any(node.lineno in lines for lines in inside)
            for name in defined_names(ast.Module(body=[node], type_ignores=[])):
                if name in owner and outside:
                    found.append(f"{module} line {node.lineno} defines {name!r} outside its generated region: "
                                 f"{owner[name].where} saves it (edit it there, and delete this definition)")
    return found


def export(root: str | Path = REPO_ROOT, notebooks: list[Path] | None = None) -> list[str]:
    """Write every module whose generated regions differ from their cells; the modules written."""
    root = Path(root)
    written = []
    for module, text in generate(root, notebooks).items():
        path = root / module
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(module)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m fer_utils export [--check]``."""
    parser = argparse.ArgumentParser(
        prog=EXPORT_COMMAND, description="Generate the package's code from the notebooks' `# @save` cells "
        "(the regions marked 'generated from <notebook>, cell <id>'); with --check, only say what differs.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the package and the "
                        "notebooks differ, or a saved name is defined twice")
    args = parser.parse_args(argv)
    if not args.check:
        written = export()
        print(f"Exported {len(saved_cells())} saved cells: "
              + (f"wrote {', '.join(written)}." if written else "the package was up to date."))
    found = problems()
    for line in found:
        print(line, file=sys.stderr)
    if args.check and not found:
        print(f"The package is what the notebooks' {len(saved_cells())} saved cells generate.")
    return 1 if found else 0
