"""Normalised notebooks: what ``--publish`` writes and the committed notebooks are
(``notebook_format.normalise_notebook``)."""

import json

import nbformat
import pytest

from fer_utils import notebook_format, runner


def _executed_notebook(start="2026-11-27T23:10:39", python="3.11.7", duration=0.25) -> dict:
    """A notebook as papermill writes it: run records everywhere, an injected-parameters cell."""
    run = {"duration": duration, "end_time": f"{start}.5+00:00", "exception": False, "start_time": f"{start}+00:00",
           "status": "completed"}
    timing = {"iopub.execute_input": f"{start}Z", "shell.execute_reply": f"{start}Z"}
    return {
        "nbformat": 4, "nbformat_minor": 4,
        "metadata": {
            "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "venv-fer"},
            "language_info": {"name": "python", "pygments_lexer": "ipython3", "version": python},
            "papermill": {"duration": duration * 4, "input_path": "/home/me/notebooks/01_x.ipynb",
                          "parameters": {}, "start_time": start, "version": "2.7.0"},
            "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}},
        },
        "cells": [
            {"cell_type": "markdown", "id": "c00", "metadata": {"papermill": run, "tags": []},
             "source": "# Title\n\nText."},
            {"cell_type": "code", "id": "c01", "execution_count": 1,
             "metadata": {"execution": timing, "papermill": run, "tags": ["parameters"], "ExecuteTime": timing,
                          "collapsed": False, "scrolled": True, "trusted": True},
             "outputs": [], "source": ["epochs = 14\n", "seed = 42"]},
            {"cell_type": "code", "id": "injected", "execution_count": 2,
             "metadata": {"papermill": run, "tags": ["injected-parameters"]}, "outputs": [],
             "source": ["# Parameters\n", "epochs = 2\n"]},
            {"cell_type": "code", "execution_count": 7,  # no id (a notebook saved before nbformat 4.5)
             "metadata": {"execution": timing, "papermill": run, "tags": ["keep-me"]},
             "outputs": [{"name": "stdout", "output_type": "stream", "text": "épreuve 1\népreuve 2\n"},
                         {"data": {"text/plain": ["0.85"]}, "execution_count": 7, "metadata": {},
                          "output_type": "execute_result"}],
             "source": "print('épreuve 1')\nprint('épreuve 2')\n0.85"},
            {"cell_type": "markdown", "id": "c01", "metadata": {}, "source": "A duplicate id."},
        ],
    }


def test_normalise_keeps_content_and_drops_run_records():
    nb = notebook_format.normalise_notebook(_executed_notebook())
    assert nb["metadata"] == {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python",
                                             "name": "python3"},
                              "language_info": {"name": "python", "pygments_lexer": "ipython3"}}
    cells = nb["cells"]
    assert [c["id"] for c in cells] == ["c00", "c01", "c02", "c03"]  # injected cell gone; missing/duplicate ids given
    assert [c["metadata"] for c in cells] == [{}, {"tags": ["parameters"]}, {"tags": ["keep-me"]}, {}]
    assert [c.get("execution_count") for c in cells] == [None, 1, 7, None]  # as the kernel numbered them
    assert cells[0]["source"] == ["# Title\n", "\n", "Text."]  # lines, as Jupyter writes them
    assert "".join(cells[2]["source"]) == "print('épreuve 1')\nprint('épreuve 2')\n0.85"
    assert cells[2]["outputs"] == [
        {"name": "stdout", "output_type": "stream", "text": ["épreuve 1\n", "épreuve 2\n"]},
        {"data": {"text/plain": ["0.85"]}, "execution_count": 7, "metadata": {}, "output_type": "execute_result"}]
    assert nb["nbformat"] == 4 and nb["nbformat_minor"] == 5
    nbformat.validate(nbformat.from_dict(nb))


def test_normalised_text_is_stable_across_runs_and_idempotent():
    first = notebook_format.normalised_json(_executed_notebook())
    again = notebook_format.normalised_json(_executed_notebook(start="2027-01-02T03:04:05", python="3.11.9",
                                                               duration=9.5))
    assert first == again  # another run, another Python patch release: the same bytes
    assert notebook_format.normalised_json(json.loads(first)) == first
    assert first.endswith("}\n") and "épreuve" in first and '\n "cells": [\n  {\n   "cell_type"' in first
    for noise in ("papermill", "start_time", "execute_input", "3.11.7", "widget-state", "injected"):
        assert noise not in first, noise


def test_normalise_file_rewrites_only_what_changes(tmp_path):
    path = tmp_path / "01_x.ipynb"
    path.write_text(json.dumps(_executed_notebook()), encoding="utf-8")
    assert notebook_format.normalise_file(path) is True
    text = path.read_text(encoding="utf-8")
    assert text == notebook_format.normalised_json(_executed_notebook())
    assert notebook_format.normalise_file(path) is False and path.read_text(encoding="utf-8") == text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["01_x.ipynb"]  # no temporary file left


def test_normalise_refuses_other_formats():
    with pytest.raises(ValueError, match="nbformat 4"):
        notebook_format.normalise_notebook({"nbformat": 3, "worksheets": []})


def test_publish_writes_normalised_notebooks_and_copies_figures(tmp_path, monkeypatch):
    work, committed, figures = tmp_path / "work", tmp_path / "notebooks", tmp_path / "figures"
    (work / "executed").mkdir(parents=True)
    (work / "figures").mkdir()
    committed.mkdir()
    (work / "executed" / "01_x.ipynb").write_text(json.dumps(_executed_notebook()), encoding="utf-8")
    (work / "figures" / "01_plot.png").write_bytes(b"png")
    (work / "run.json").write_text(json.dumps({"id": "r1", "status": "ok", "notebooks": {"01_x": {"seconds": 1.5}}}))
    monkeypatch.setattr(runner, "PUBLISHED_FIGURES", figures)
    monkeypatch.setattr(runner, "PUBLISHED_RUN", tmp_path / "published_run.json")
    runner.publish(work, [committed / "01_x.ipynb"], work / "executed")
    record = json.loads((tmp_path / "published_run.json").read_text())  # the record the README's figures quote
    assert record["id"] == "r1" and record["notebooks"]["01_x"]["seconds"] == 1.5
    assert set(record["disk_mb"]) == {"executed", "figures", "run.json"} and record["disk_mb_total"] >= 0
    published = (committed / "01_x.ipynb").read_text(encoding="utf-8")
    assert published == notebook_format.normalised_json(_executed_notebook())
    assert (figures / "01_plot.png").read_bytes() == b"png"
