"""One source: the code a notebook teaches in a ``# @save fer_utils/<module>.py`` cell is, verbatim, the
code the package runs (the runner, the CLI, the benchmarks)."""

import json

from fer_utils import runner


def test_every_saved_cell_is_in_its_module_verbatim():
    problems = runner.sync_saved_cells(write=False)
    assert not problems, ("shown code and run code differ:\n" + "\n".join(problems) + "\nFix: edit the notebook "
                          "cell, then python -c \"from fer_utils.runner import sync_saved_cells; "
                          "print(sync_saved_cells(write=True))\" (or copy the module's code into the cell).")


def test_the_notebooks_teach_in_saved_cells():
    """Notebooks 04 and 05 show the model and the training steps they run."""
    saved = {cell["notebook"].name[:2] for cell in runner.saved_cells()}
    assert {"04", "05"} <= saved


def test_sync_copies_an_edited_cell_into_its_module(tmp_path, monkeypatch):
    module = tmp_path / "fer_utils" / "demo.py"
    module.parent.mkdir()
    module.write_text("import os\n\n\ndef f(x):\n    return x\n\n\ndef g():\n    return 2\n")
    cell = {"cell_type": "code", "id": "a", "metadata": {}, "outputs": [], "execution_count": None,
            "source": "# @save fer_utils/demo.py\ndef f(x):\n    return x + 1\n"}
    nb = tmp_path / "01_demo.ipynb"
    nb.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    monkeypatch.setattr(runner, "REPO_ROOT", tmp_path)
    assert runner.sync_saved_cells(write=False, notebooks=[nb]) == ["01_demo.ipynb cell a: its code is not in "
                                                                    f"{runner.display_path(module)} verbatim"]
    assert runner.sync_saved_cells(write=True, notebooks=[nb]) == []
    assert module.read_text() == "import os\n\n\ndef f(x):\n    return x + 1\n\n\ndef g():\n    return 2\n"
