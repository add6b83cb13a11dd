"""One source: the code a notebook teaches is generated into the package, never copied by hand.

A code cell whose first line is ``# @save fer_utils/<module>.py`` teaches code the package runs (d2l's
``#@save``, nbdev's ``#| export``). Its code lives in that module inside a *generated region*::

    # ---- generated from notebooks/05_train_model.ipynb, cell 05-n03 ----
    # (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
    def class_weight_power(counts, power: float = 0.5) -> dict[int, float]:
        ...
    # ---- end of generated code (notebooks/05_train_model.ipynb, cell 05-n03) ----

The marker is exact: the cell's first line, ``# @save `` and a module that exists in the package. A comment line
that looks like a marker but is not one (``#@save``, ``# @Save``, ``# @sav``, ``# save fer_utils/x.py``, a marker
that is not the first line, a target that is no module of the package: ``fer_utils/trainig.py``, ``../x.py``) and
a saved cell that is not valid Python are errors (:class:`SavedCellError`) that name the notebook, the cell and the
line: the export writes nothing and ``--check`` fails. Comments that merely mention saving (``# save the model``,
``# Save: the figure``) are not markers.

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
import difflib
import io
import json
import posixpath
import re
import sys
import tokenize
from pathlib import Path

from fer_utils.workfolder import REPO_ROOT, numbered_notebooks

#: First line of a notebook cell whose code is generated into a module of the package.
SAVE_MARKER = re.compile(r"^# @save (fer_utils/[A-Za-z0-9_/]+\.py)[ \t]*$")
#: A whole-line comment that may be meant as a marker: ``@`` and a word one edit from "save" (``#@Save ...``,
#: ``# @sav``, ``# @ save``), or a word one edit from "save" and only a Python file or a path into the package
#: (``# save fer_utils/x.py``, ``#save: ../x.py``). "# save the model", "# Save" or "# @saved_model" are not.
LOOKS_LIKE_AT_MARKER = re.compile(r"^#+\s*@\s*(?P<word>[A-Za-z]+)\b")
LOOKS_LIKE_PLAIN_MARKER = re.compile(
    r"^#+\s*[|%!]?\s*(?P<word>[A-Za-z]+)\s*:?\s+(?P<target>\S*(?:\.py|fer_utils\S*))\s*$", re.I)
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


class SavedCellError(ValueError):
    """Saved cells that cannot be exported (a marker misspelt or misplaced, a target that is no module, code that is
    not Python): ``errors`` has one line for each, naming the notebook, the cell and the line."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


def package_modules(root: str | Path = REPO_ROOT) -> list[str]:
    """The valid ``# @save`` targets: the package's modules, relative to the root (``fer_utils/training.py``)."""
    root = Path(root)
    return sorted(p.relative_to(root).as_posix() for p in (root / "fer_utils").rglob("*.py")
                  if "__pycache__" not in p.parts)


def _one_edit_from_save(word: str) -> bool:
    """Whether ``word`` is "save" in any case, or one letter added, removed, changed or swapped away from it."""
    word, save = word.lower(), "save"
    if word == save:
        return True
    if len(word) == len(save):
        diff = [i for i in range(len(save)) if word[i] != save[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and word[diff[0]] == save[diff[1]] and word[diff[1]] == save[diff[0]])
    shorter, longer = sorted((word, save), key=len)
    return len(longer) - len(shorter) == 1 and any(longer[:i] + longer[i + 1:] == shorter for i in range(len(longer)))


def _whole_line_comments(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of each comment that is a line of its own (text in strings is not a comment)."""
    lines = source.split("\n")
    found = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT and not lines[token.start[0] - 1][:token.start[1]].strip():
                found.append((token.start[0], token.string))
    except (tokenize.TokenError, SyntaxError):  # not Python (that is said elsewhere): every line starting with '#'
        found = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.lstrip().startswith("#")]
    return found


def _marker_like(comment: str) -> str | None:
    """When a comment looks like a save marker, its text after the word "save" (or its variant); else None."""
    for pattern in (LOOKS_LIKE_AT_MARKER, LOOKS_LIKE_PLAIN_MARKER):
        match = pattern.match(comment)
        if match and _one_edit_from_save(match["word"]):
            return comment[match.end("word"):]
    return None


def _marker_target(rest: str) -> str:
    """The target a marker-like comment names: its first word that is a path or a Python file (``""`` if none)."""
    return next((word for word in rest.lstrip(" \t:=").split()
                 if "/" in word or "\\" in word or word.endswith(".py")), "")


def _bad_target(target: str, modules: list[str]) -> str:
    """Why ``target`` is no ``# @save`` target, with the valid ones; ``""`` when it is one."""
    if target in modules:
        return ""
    close = difflib.get_close_matches(target, modules, n=1)
    outside = not posixpath.normpath(target).startswith("fer_utils/") or target.startswith("/")
    return ((f"{target!r} is {'outside the package' if outside else 'not a module of the package'}" if target
             else "it names no module")
            + (f" (did you mean {close[0]}?)" if close else "")
            + f"; a target is one of the package's modules: {', '.join(modules)}")


def _cell_problems(where: str, source: str, modules: list[str]) -> list[str]:
    """The marker errors of one code cell: a first-line marker whose target is no module, and every other comment
    line that looks like a marker (misspelt, indented, or not on the first line)."""
    found = []
    exact = SAVE_MARKER.match(source.partition("\n")[0])
    if exact and _bad_target(exact[1], modules):
        found.append(f"{where} line 1: the marker {exact[0].rstrip()!r} cannot be exported: "
                     + _bad_target(exact[1], modules))
    for line, comment in _whole_line_comments(source):
        rest = _marker_like(comment)
        if (line == 1 and exact) or rest is None:
            continue
        target = _marker_target(rest)
        bad = _bad_target(target, modules)
        fix = (f"write `# @save {target}` as the cell's first line" if not bad else
               "write the cell's first line as `# @save fer_utils/<module>.py` (lower case, one space after '#' and "
               f"one after '@save'); {bad}")
        what = ("is a save marker, but not the cell's first line, so the cell is not exported"
                if line > 1 and SAVE_MARKER.match(comment) else
                "looks like a save marker but is not one, so the cell is not exported")
        found.append(f"{where} line {line}: {comment!r} {what}: {fix}")
    return found


def saved_cells(root: str | Path = REPO_ROOT, notebooks: list[Path] | None = None) -> list[SavedCell]:
    """Every ``# @save`` cell of the numbered notebooks under ``root/notebooks``, in notebook and cell order.

    Raises :class:`SavedCellError` naming every cell whose marker is misspelt, misplaced or names no module of the
    package, and every saved cell that is not valid Python."""
    root = Path(root)
    modules = package_modules(root)
    found, errors = [], []
    for path in notebooks if notebooks is not None else numbered_notebooks(root / "notebooks"):
        notebook = Path(path).resolve().relative_to(root.resolve()).as_posix()
        try:
            nb = json.loads(Path(path).read_text(encoding="utf-8"))
            cells = nb["cells"]
        except (ValueError, KeyError, TypeError) as error:  # a merge conflict left in it, a cut-off file...
            errors.append(f"{notebook}: not a readable notebook ({type(error).__name__}: {error}); repair it "
                          "(`git diff` shows what changed), then run `" + EXPORT_COMMAND + "`")
            continue
        ids = [cell.get("id") for cell in cells]
        for cell in cells:
            if cell.get("cell_type") != "code":
                continue
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            where = f"{notebook} cell {cell.get('id')}"
            cell_errors = _cell_problems(where, source, modules)
            errors += cell_errors
            first, _, rest = source.partition("\n")
            match = SAVE_MARKER.match(first)
            if not match or cell_errors:
                continue
            if not cell.get("id") or ids.count(cell["id"]) > 1:  # the regions are named by notebook and cell id
                errors.append(f"{where}: a saved cell needs an id of its own (the package's region of it is named by "
                              "it), and this one has " + ("none (a tool that saved the notebook as nbformat 4.4 drops "
                              "them)" if not cell.get("id") else "the id of another cell") + "; give it back its id "
                              f"(`git diff {notebook}` shows it), then run `{EXPORT_COMMAND}`")
                continue
            body = rest.strip("\n") + "\n"
            offset = 1 + len(rest) - len(rest.lstrip("\n"))  # the cell's lines above the body's first
            try:
                tree = ast.parse(body)
            except (SyntaxError, ValueError) as error:
                line = f" line {error.lineno + offset}" if getattr(error, "lineno", None) else ""
                text = (getattr(error, "text", None) or "").strip()
                errors.append(f"{where}{line}: the saved cell is not valid Python ({getattr(error, 'msg', error)}"
                              + (f": {text!r}" if text else "") + f"); fix the cell, then run `{EXPORT_COMMAND}`")
                continue
            found.append(SavedCell(notebook, str(cell.get("id")), match[1], body, tuple(defined_names(tree))))
    if errors:
        raise SavedCellError(errors)
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
    try:
        cells = saved_cells(root, notebooks)
    except SavedCellError as error:  # what the package should be is unknown until these are fixed
        return error.errors
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
                         + f": run `{EXPORT_COMMAND}` to write the cell into it (a change made in the module "
                         "itself is lost: make it in the cell)")
    for path in sorted((root / "fer_utils").rglob("*.py")):
        module = path.relative_to(root).as_posix()
        text = path.read_text(encoding="utf-8")
        inside = [range(text.count("\n", 0, m.start()) + 1, text.count("\n", 0, m.end()) + 1)
                  for m in REGION.finditer(text)]
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError) as error:
            found.append(f"{module} line {getattr(error, 'lineno', '?')}: not valid Python "
                         f"({getattr(error, 'msg', error)}); fix it (an edit inside a generated region belongs "
                         "in its notebook cell)")
            continue
        for node in tree.body:
            outside = not any(node.lineno in lines for lines in inside)
            for name in defined_names(ast.Module(body=[node], type_ignores=[])):
                if name in owner and outside:
                    found.append(f"{module} line {node.lineno} defines {name!r} outside its generated region: "
                                 f"{owner[name].where} saves it (edit it there, and delete this definition)")
    return found


def export(root: str | Path = REPO_ROOT, notebooks: list[Path] | None = None) -> list[str]:
    """Write every module whose generated regions differ from their cells; the modules written.

    Every module is generated before the first is written: a :class:`SavedCellError` leaves the package as it was."""
    root = Path(root)
    written = []
    for module, text in generate(root, notebooks).items():
        path = root / module
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            written.append(module)
    return written


def main(argv: list[str] | None = None, root: str | Path = REPO_ROOT) -> int:
    """``python -m fer_utils export [--check]`` (for the project at ``root``)."""
    parser = argparse.ArgumentParser(
        prog=EXPORT_COMMAND, description="Generate the package's code from the notebooks' `# @save` cells "
        "(the regions marked 'generated from <notebook>, cell <id>'); with --check, only say what differs.")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the package and the "
                        "notebooks differ, a saved name is defined twice, a comment looks like a `# @save` marker but "
                        "is not one (or names no module of the package), or a saved cell is not valid Python")
    args = parser.parse_args(argv)
    if not args.check:
        try:
            written = export(root)
        except SavedCellError as error:
            print("\n".join(error.errors) + "\nNothing was exported: fix these cells, then run "
                  f"`{EXPORT_COMMAND}` again.", file=sys.stderr)
            return 1
        print(f"Exported {len(saved_cells(root))} saved cells: "
              + (f"wrote {', '.join(written)}." if written else "the package was up to date."))
    found = problems(root)
    for line in found:
        print(line, file=sys.stderr)
    if args.check and not found:
        print(f"The package is what the notebooks' {len(saved_cells(root))} saved cells generate.")
    return 1 if found else 0
