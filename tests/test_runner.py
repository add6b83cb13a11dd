"""The chain runner: order, parameters, --until, failures (on tiny throwaway notebooks)."""

import json

import nbformat
import pytest

from fer_utils import runner


def _notebook(path, params_src, body_src):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(params_src)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body_src)]
    nbformat.write(nb, path)


@pytest.fixture
def chain(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    write = "import os, pathlib\npathlib.Path(os.environ['FER_WORK_DIR'], '{name}.txt').write_text(str({value}))"
    _notebook(folder / "01_first_step.ipynb", "epochs = 1", write.format(name="01", value="epochs"))
    _notebook(folder / "02_second_step.ipynb", "max_per_class = None", write.format(name="02", value="max_per_class"))
    _notebook(folder / "03_failing_step.ipynb", "x = 1", "raise ValueError('planted failure')")
    (folder / "notes.ipynb").write_text("{}")  # not numbered: ignored
    return folder


def test_numbered_notebooks_in_order(chain):
    assert [p.name[:2] for p in runner.numbered_notebooks(chain)] == ["01", "02", "03"]


@pytest.mark.parametrize("text, value", [("3", 3), ("0.5", 0.5), ("True", True), ("None", None),
                                         ("seed_cnn", "seed_cnn"), ("[64, 64]", [64, 64])])
def test_parse_value_like_papermill(text, value):
    assert runner.parse_value(text) == value


def test_runs_in_order_passes_parameters_and_stops_until(chain, tmp_path):
    work = tmp_path / "work"
    rc = runner.main(["--notebooks-dir", str(chain), "--work-dir", str(work), "--until", "02",
                      "-p", "epochs", "3", "-p", "max_per_class", "7"])
    assert rc == 0
    assert (work / "01.txt").read_text() == "3" and (work / "02.txt").read_text() == "7"
    record = json.loads((work / "run.json").read_text())
    assert list(record["notebooks"]) == ["01_first_step", "02_second_step"] and record["status"] == "ok"
    assert record["notebooks"]["01_first_step"]["parameters"] == {"epochs": 3}  # only what it declares
    assert (work / "executed" / "02_second_step.ipynb").exists()


def test_stops_at_first_failure_and_names_the_executed_copy(chain, tmp_path, capsys):
    work = tmp_path / "work"
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(work)]) == 1
    err = capsys.readouterr().err
    assert "03_failing_step.ipynb failed" in err and "planted failure" in err
    assert str(work / "executed" / "03_failing_step.ipynb") in err
    assert json.loads((work / "run.json").read_text())["status"] == "failed"


def test_unknown_parameter_is_refused(chain, tmp_path, capsys):
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(tmp_path), "-p", "epoch", "3"]) == 2
    assert "Unknown parameter(s) ['epoch']" in capsys.readouterr().err


def test_publish_refuses_non_default_parameters(chain, tmp_path, capsys):
    args = ["--notebooks-dir", str(chain), "--work-dir", str(tmp_path), "--publish", "-p", "epochs", "2"]
    assert runner.main(args) == 2
    assert "publish only a run with default parameters" in capsys.readouterr().err


def test_cli_help_lists_commands(capsys):
    from fer_utils.__main__ import main

    assert main(["--help"]) == 0
    assert "run" in capsys.readouterr().out
