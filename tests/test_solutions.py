"""The exercises' solutions (``notebooks/solutions/NN_*.py``) run, on a copy of the synthetic chain's work
folder, as a learner would run them after the notebooks."""

import os
import runpy
import shutil

import pytest

from fer_utils.workfolder import REPO_ROOT

SOLUTIONS = sorted((REPO_ROOT / "notebooks" / "solutions").glob("[0-9][0-9]_*.py"))


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_solution_runs(path, synthetic_chain, synthetic_data_dir, fake_fer_weights, tmp_path, monkeypatch):
    work = tmp_path / "work"
    shutil.copytree(synthetic_chain, work)
    for name, value in {"FER_WORK_DIR": work, "FER_DATA_DIR": synthetic_data_dir,
                        "FER_PRETRAINED": fake_fer_weights}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.chdir(path.parent.parent)
    runpy.run_path(str(path), run_name="__main__")
    assert os.environ["FER_WORK_DIR"] == str(work)
