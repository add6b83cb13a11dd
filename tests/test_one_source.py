"""One source: the code a notebook teaches in a ``# @save fer_utils/<module>.py`` cell is generated into its
module (``python -m fer_utils export``), byte for byte, and defined nowhere else in the package."""

import filecmp
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fer_utils import saved_cells
from fer_utils.workfolder import REPO_ROOT


def test_every_module_is_what_the_notebooks_generate(tmp_path):
    """Regenerate every module into a temporary folder and compare the files byte for byte."""
    generated = saved_cells.generate()
    assert generated, "no module has generated code"
    for module, text in generated.items():
        (tmp_path / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / module).write_text(text, encoding="utf-8")
    differ = [m for m in generated if not filecmp.cmp(tmp_path / m, REPO_ROOT / m, shallow=False)]
    assert not differ, f"{differ} differ from the notebooks' saved cells: run `python -m fer_utils export`"


def test_no_saved_name_is_defined_twice_and_nothing_else_is_off():
    assert saved_cells.problems() == []


def test_the_notebooks_teach_in_saved_cells():
    """The steps a learner came for are saved cells: the split (02), the pipelines (03), the model (04), the
    training (05), the metrics (06) and Grad-CAM (07)."""
    saved = {cell.notebook.split("/")[-1][:2]: cell for cell in saved_cells.saved_cells()}
    assert {"02", "03", "04", "05", "06", "07"} <= set(saved)
    names = {name for cell in saved_cells.saved_cells() for name in cell.names}
    assert {"tf_datasets", "fer_transfer", "fit_phase", "compute_metrics", "grad_cam"} <= names


@pytest.fixture
def copy_of_the_repo(tmp_path) -> Path:
    """The package and the notebooks, copied: a place to edit cells and export."""
    for folder in ("fer_utils", "notebooks"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _edit_cell(notebook: Path, cell_id: str, edit) -> None:
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if c.get("id") == cell_id)
    cell["source"] = edit("".join(cell["source"]))
    notebook.write_text(json.dumps(nb), encoding="utf-8")


def test_a_second_definition_of_a_saved_name_fails(copy_of_the_repo):
    training = copy_of_the_repo / "fer_utils" / "training.py"
    training.write_text(training.read_text(encoding="utf-8") + "\n\ndef phases(config):\n    return []\n")
    found = saved_cells.problems(copy_of_the_repo)
    assert len(found) == 1 and "fer_utils/training.py line" in found[0] and "'phases' outside its generated" in found[0]
    assert saved_cells.export(copy_of_the_repo) == []  # exporting does not hide it: the copy is hand-written
    assert saved_cells.problems(copy_of_the_repo) == found


def test_one_byte_changed_inside_a_region_fails_and_export_restores_it(copy_of_the_repo):
    pipelines = copy_of_the_repo / "fer_utils" / "pipelines.py"
    original = pipelines.read_text(encoding="utf-8")
    pipelines.write_text(original.replace("ds = ds.cache()", "ds = ds.cache() "), encoding="utf-8")
    found = saved_cells.problems(copy_of_the_repo)
    assert found == ["fer_utils/pipelines.py differs from what the notebooks generate (the region of "
                     "notebooks/03_build_input_pipelines.ipynb cell 03-n07): run `python -m fer_utils export` to "
                     "write the cell into it (a change made in the module itself is lost: make it in the cell)"]
    assert saved_cells.export(copy_of_the_repo) == ["fer_utils/pipelines.py"]
    assert pipelines.read_text(encoding="utf-8") == original and saved_cells.problems(copy_of_the_repo) == []


def test_an_edited_cell_is_exported_into_its_region_only(copy_of_the_repo):
    notebook = copy_of_the_repo / "notebooks" / "05_train_model.ipynb"
    _edit_cell(notebook, "05-n06", lambda s: s.replace("else one phase.", "else one phase (edited)."))
    assert saved_cells.problems(copy_of_the_repo) == [
        "fer_utils/training.py differs from what the notebooks generate (the region of notebooks/05_train_model.ipynb "
        "cell 05-n06): run `python -m fer_utils export` to write the cell into it (a change made in the module "
        "itself is lost: make it in the cell)"]
    before = (copy_of_the_repo / "fer_utils" / "training.py").read_text(encoding="utf-8")
    assert saved_cells.export(copy_of_the_repo) == ["fer_utils/training.py"]
    after = (copy_of_the_repo / "fer_utils" / "training.py").read_text(encoding="utf-8")
    assert after == before.replace("else one phase.", "else one phase (edited).")
    assert saved_cells.problems(copy_of_the_repo) == []


def test_a_new_cell_gets_a_region_and_a_removed_one_loses_it(copy_of_the_repo):
    notebook = copy_of_the_repo / "notebooks" / "05_train_model.ipynb"
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    nb["cells"].append({"cell_type": "code", "id": "new-cell", "metadata": {}, "outputs": [], "execution_count": None,
                        "source": "# @save fer_utils/training.py\ndef twice(x):\n    return 2 * x\n"})
    nb["cells"] = [c for c in nb["cells"] if c.get("id") != "05-n06"]  # the phases cell is gone
    notebook.write_text(json.dumps(nb), encoding="utf-8")
    assert saved_cells.export(copy_of_the_repo) == ["fer_utils/training.py"]
    text = (copy_of_the_repo / "fer_utils" / "training.py").read_text(encoding="utf-8")
    assert text.endswith("# ---- generated from notebooks/05_train_model.ipynb, cell new-cell ----\n"
                         "# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the "
                         "one-source test)\ndef twice(x):\n    return 2 * x\n"
                         "# ---- end of generated code (notebooks/05_train_model.ipynb, cell new-cell) ----\n")
    assert "cell 05-n06" not in text and "def phases" not in text
    assert saved_cells.problems(copy_of_the_repo) == []


def test_two_cells_saving_one_name_fail(copy_of_the_repo):
    notebook = copy_of_the_repo / "notebooks" / "06_evaluate_model.ipynb"
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    nb["cells"].append({"cell_type": "code", "id": "dup", "metadata": {}, "outputs": [], "execution_count": None,
                        "source": "# @save fer_utils/evaluation.py\ndef compute_metrics():\n    return {}\n"})
    notebook.write_text(json.dumps(nb), encoding="utf-8")
    saved_cells.export(copy_of_the_repo)
    found = saved_cells.problems(copy_of_the_repo)
    assert any("cell dup defines 'compute_metrics', which notebooks/06_evaluate_model.ipynb cell" in f for f in found)


def test_export_command_checks_and_says_what_to_do(copy_of_the_repo):
    ok = subprocess.run([sys.executable, "-m", "fer_utils", "export", "--check"], capture_output=True, text=True,
                        cwd=REPO_ROOT, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "The package is what the notebooks'" in ok.stdout


# --------------------------------------------------------------------------------------------------
# A marker that is almost one, and a saved cell that is not Python: errors that name the cell, nothing written
# --------------------------------------------------------------------------------------------------
TINY_MODULE = '"""A tiny module."""\n\nHAND_WRITTEN = 1\n'
GOOD_CELL = "# @save fer_utils/training.py\ndef twice(x):\n    return 2 * x\n"


def _tiny_project(root: Path, *cells) -> Path:
    """``root`` with a package of two modules and one notebook (``notebooks/01_tiny.ipynb``) of ``cells``: each
    ``(id, source)`` a code cell, or ``(id, source, "markdown")``."""
    (root / "fer_utils").mkdir(parents=True)
    (root / "fer_utils" / "__init__.py").write_text("", encoding="utf-8")
    (root / "fer_utils" / "training.py").write_text(TINY_MODULE, encoding="utf-8")
    (root / "notebooks").mkdir()
    nb = {"cells": [{"cell_type": kind[0] if kind else "code", "id": cell_id, "metadata": {}, "source": source}
                    | ({} if kind else {"outputs": [], "execution_count": None})
                    for cell_id, source, *kind in cells],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (root / "notebooks" / "01_tiny.ipynb").write_text(json.dumps(nb), encoding="utf-8")
    return root


def _package(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text(encoding="utf-8") for p in (root / "fer_utils").rglob("*.py")}


@pytest.mark.parametrize(("marker", "says"), [
    ("# @save fer_utils/trainig.py", "'fer_utils/trainig.py' is not a module of the package (did you mean "
                                     "fer_utils/training.py?)"),
    ("#@save fer_utils/training.py", "write `# @save fer_utils/training.py` as the cell's first line"),
    ("# @Save fer_utils/training.py", "write `# @save fer_utils/training.py` as the cell's first line"),
    ("# @sav fer_utils/training.py", "write `# @save fer_utils/training.py` as the cell's first line"),
    ("# save fer_utils/training.py", "write `# @save fer_utils/training.py` as the cell's first line"),
    ("  # @save fer_utils/training.py", "write `# @save fer_utils/training.py` as the cell's first line"),
    ("# @save ../x.py", "'../x.py' is outside the package"),
    ("# @save /tmp/x.py", "'/tmp/x.py' is outside the package"),
    ("# @save fer_utils/../x.py", "'fer_utils/../x.py' is outside the package"),
    ("# @save", "it names no module"),
])
def test_a_marker_that_is_almost_one_is_an_error_naming_the_cell(tmp_path, marker, says):
    """A typo in the target, a variant spelling or a target outside the package dropped the function silently
    (and `export --check` passed): now it is one error naming the notebook, the cell, the marker and the fix."""
    root = _tiny_project(tmp_path, ("good", GOOD_CELL), ("bad", marker + "\ndef halve(x):\n    return x / 2\n"))
    before = _package(root)
    found = saved_cells.problems(root)
    assert len(found) == 1, found
    assert found[0].startswith("notebooks/01_tiny.ipynb cell bad line 1: ") and repr(marker.strip()) in found[0]
    assert says in found[0]
    if "as the cell's first line" not in says:  # a wrong target: the valid ones are listed
        assert "a target is one of the package's modules: fer_utils/__init__.py, fer_utils/training.py" in found[0]
    with pytest.raises(saved_cells.SavedCellError) as error:
        saved_cells.export(root)
    assert error.value.errors == found
    assert _package(root) == before  # nothing written (not even the good cell's region, nor a new module)


def test_a_marker_below_the_first_line_is_an_error(tmp_path):
    root = _tiny_project(tmp_path, ("late", "import math\n\n# @save fer_utils/training.py\ndef f():\n    pass\n"))
    assert saved_cells.problems(root) == [
        "notebooks/01_tiny.ipynb cell late line 3: '# @save fer_utils/training.py' is a save marker, but not the "
        "cell's first line, so the cell is not exported: write `# @save fer_utils/training.py` as the cell's first "
        "line"]


def test_export_and_check_fail_on_a_bad_marker_and_say_so(tmp_path, capsys):
    root = _tiny_project(tmp_path, ("good", GOOD_CELL), ("bad", "#@save fer_utils/training.py\nY = 2\n"))
    before = _package(root)
    assert saved_cells.main(["--check"], root=root) == 1
    err = capsys.readouterr().err
    assert "notebooks/01_tiny.ipynb cell bad line 1: '#@save fer_utils/training.py' looks like a save marker" in err
    assert saved_cells.main([], root=root) == 1
    err = capsys.readouterr().err
    assert "cell bad line 1" in err and "Nothing was exported" in err and "Traceback" not in err
    assert _package(root) == before


def test_comments_that_merely_mention_saving_are_not_markers(tmp_path):
    """Only a comment line that looks like a marker is one: ordinary comments about saving, text in strings and
    markdown are left alone, and the cells export as before."""
    saved = ("# @save fer_utils/training.py\n"
             "def save_model(model, path):\n"
             "    # save the model, then its record\n"
             "    # Save\n"
             "    # Save: the figure and model.keras\n"
             "    # @saved_model is TensorFlow's other format\n"
             "    # saves to disk: a .py file next to it\n"
             "    note = '''\n# @save fer_utils/trainig.py\n'''  # in a string: not a comment\n"
             "    return model.save(path)  # save fer_utils/x.py, at the end of a line of code\n")
    plain = ("# Save the figure\nimport matplotlib\n# we save every model in models/\n"
             "# the cells marked `# @save fer_utils/<module>.py` are exported\n")
    markdown = "A cell whose first line is `# @save fer_utils/<module>.py`:\n\n#@save fer_utils/trainig.py\n"
    root = _tiny_project(tmp_path, ("saved", saved), ("plain", plain), ("md", markdown, "markdown"))
    assert saved_cells.problems(root) == ["fer_utils/training.py differs from what the notebooks generate (the "
                                          "region of notebooks/01_tiny.ipynb cell saved): run `python -m "
                                          "fer_utils export` to write the cell into it (a change made in the module "
                                          "itself is lost: make it in the cell)"]
    assert saved_cells.export(root) == ["fer_utils/training.py"]
    assert "def save_model(model, path):" in (root / "fer_utils" / "training.py").read_text(encoding="utf-8")
    assert saved_cells.problems(root) == []


def test_a_saved_cell_that_is_not_python_is_one_error_and_nothing_is_written(tmp_path, capsys):
    """A syntax error gave a raw traceback without the cell's name, after earlier modules were written."""
    root = _tiny_project(tmp_path, ("good", GOOD_CELL),
                         ("broken", "# @save fer_utils/training.py\n\n\ndef halve(x:\n    return x / 2\n"))
    before = _package(root)
    found = saved_cells.problems(root)
    assert len(found) == 1, found
    assert found[0].startswith("notebooks/01_tiny.ipynb cell broken line 4: the saved cell is not valid Python (")
    assert "'def halve(x:'" in found[0]
    with pytest.raises(saved_cells.SavedCellError) as error:
        saved_cells.export(root)
    assert error.value.errors == found
    assert saved_cells.main([], root=root) == 1
    err = capsys.readouterr().err
    assert "cell broken line 4" in err and "Traceback" not in err
    assert _package(root) == before  # the good cell's region is not written either


def test_saved_cells_without_ids_are_refused_not_merged(tmp_path, capsys):
    """A notebook saved as nbformat 4.4 (a Colab round trip) loses its cell ids, by which the regions are named:
    the saved cells once collapsed into one region, the others' code deleted, and `export --check` then passed."""
    root = _tiny_project(tmp_path, ("good", GOOD_CELL),
                         ("other", "# @save fer_utils/training.py\ndef thrice(x):\n    return 3 * x\n"))
    assert saved_cells.export(root) == ["fer_utils/training.py"]
    exported = _package(root)
    notebook = root / "notebooks" / "01_tiny.ipynb"
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        del cell["id"]
    nb["nbformat_minor"] = 4
    notebook.write_text(json.dumps(nb), encoding="utf-8")
    assert saved_cells.main([], root=root) == 1
    err = capsys.readouterr().err
    assert err.count("a saved cell needs an id of its own") == 2 and "Nothing was exported" in err
    assert _package(root) == exported  # both regions kept
    assert saved_cells.main(["--check"], root=root) == 1
    nb["cells"][1]["id"] = nb["cells"][0]["id"] = "good"  # two cells, one id
    notebook.write_text(json.dumps(nb), encoding="utf-8")
    assert any("the id of another cell" in line for line in saved_cells.problems(root))


def test_an_unreadable_notebook_or_module_is_one_line_not_a_traceback(tmp_path, capsys):
    root = _tiny_project(tmp_path, ("good", GOOD_CELL))
    notebook = root / "notebooks" / "01_tiny.ipynb"
    notebook.write_text(notebook.read_text(encoding="utf-8") + "\n<<<<<<< HEAD\n", encoding="utf-8")
    assert saved_cells.main(["--check"], root=root) == 1
    err = capsys.readouterr().err
    assert err.startswith("notebooks/01_tiny.ipynb: not a readable notebook (JSONDecodeError")
    assert "Traceback" not in err
    root = _tiny_project(tmp_path / "again", ("good", GOOD_CELL))
    module = root / "fer_utils" / "training.py"
    module.write_text(module.read_text(encoding="utf-8") + "def broken(:\n", encoding="utf-8")
    assert saved_cells.main(["--check"], root=root) == 1
    err = capsys.readouterr().err
    assert "fer_utils/training.py line 4: not valid Python (invalid syntax)" in err and "Traceback" not in err
