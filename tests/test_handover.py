"""What you read is what runs: an edit to a notebook's ``# @save`` cell, exported, reaches every later step.

On a copy of the project (its package and notebooks) one cell of each teaching notebook is edited as a learner
would edit it, ``python -m fer_utils export`` writes the cells into the copy's package, and the later steps run
on a copy of the synthetic chain's work folder with the copy's package: notebook 04 → 05 → 06, the ``train``
command and notebook 08. Each edit has an effect that the records of those steps show:

- 03's ``tf_datasets`` batches the training faces 2 at a time → notebook 05's ``train.json`` counts the steps;
- 04's ``seed_cnn`` gets a smaller dense layer → the model 05 trains has that many parameters;
- 05's ``compile_model`` adds a metric, top-2 accuracy → ``train.json`` of notebook 05, of the ``train``
  command and of notebook 08 report it for the kept epoch;
- 06's ``compute_metrics`` also counts the mistakes → ``metrics.json`` holds that count.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fer_utils import pipelines, saved_cells
from fer_utils.workfolder import REPO_ROOT

#: notebook → (cell id, text in the cell, what a learner writes instead)
EDITS = {
    "03_build_input_pipelines.ipynb": ("03-n07", "ds = ds.batch(batch_size).map(",
                                       'ds = ds.batch(2 if split == "train" else batch_size).map('),
    "04_create_model.ipynb": ("04-n01", "dense_units: int = 128", "dense_units: int = 24"),
    "05_train_model.ipynb": ("05-n09", 'metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")]',
                             'metrics=[keras.metrics.CategoricalAccuracy(name="accuracy"),\n'
                             '                         keras.metrics.TopKCategoricalAccuracy(2, name="top2")]'),
    "06_evaluate_model.ipynb": ("06-n08", '"balanced_accuracy": float(balanced),', '"balanced_accuracy": '
                                'float(balanced),\n        "mistakes": int((y_true != y_pred).sum()),'),
}
#: In the copy, import the copy's package, not the one installed in editable mode (whose finder comes first).
SITECUSTOMIZE = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
"""
TIMEOUT = 600


def edit_cell(notebook: Path, cell_id: str, old: str, new: str) -> None:
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    cell = next(c for c in nb["cells"] if c.get("id") == cell_id)
    source = "".join(cell["source"])
    assert source.count(old) == 1, f"{notebook.name} cell {cell_id} no longer holds {old!r}: update EDITS"
    cell["source"] = source.replace(old, new)
    notebook.write_text(json.dumps(nb), encoding="utf-8")


@pytest.fixture(scope="module")
def edited(tmp_path_factory, synthetic_chain, synthetic_data_dir, fake_fer_weights) -> dict:
    """The edited, exported copy; the later steps run in a copy of the chain's work folder."""
    import papermill

    root = tmp_path_factory.mktemp("project")
    for folder in ("fer_utils", "notebooks", "benchmarks/results"):  # results: notebook 06's last section reads them
        shutil.copytree(REPO_ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "sitecustomize.py").write_text(SITECUSTOMIZE)
    for name, (cell_id, old, new) in EDITS.items():
        edit_cell(root / "notebooks" / name, cell_id, old, new)
    assert sorted(saved_cells.export(root)) == ["fer_utils/evaluation.py", "fer_utils/models.py",
                                                "fer_utils/pipelines.py", "fer_utils/training.py"]
    assert saved_cells.problems(root) == []
    work = tmp_path_factory.mktemp("handover") / "work"
    shutil.copytree(synthetic_chain, work, ignore=shutil.ignore_patterns("executed", "scale", "scale_data"))
    env = {"PYTHONPATH": str(root), "FER_WORK_DIR": str(work), "FER_DATA_DIR": str(synthetic_data_dir),
           "FER_PRETRAINED": str(fake_fer_weights)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for name, params in (("04_create_model", {"model": "seed_cnn"}), ("05_train_model", {"epochs": 1}),
                             ("06_evaluate_model", {"n_boot": 20}),
                             ("08_train_at_scale", {"faces": 480, "scale_epochs": 2, "per_replica_batch": 32,
                                                    "strategies": ["default"]})):
            papermill.execute_notebook(str(root / "notebooks" / f"{name}.ipynb"), str(work / f"{name}.out.ipynb"),
                                       parameters=params, cwd=str(root / "notebooks"), kernel_name="python3",
                                       progress_bar=False, execution_timeout=TIMEOUT)
        command = subprocess.run([sys.executable, "-m", "fer_utils", "train", "--work-dir", str(work), "--quiet",
                                  "--run-name", "from-the-command", "-p", "epochs", "1"],
                                 cwd=root, env={**os.environ}, capture_output=True, text=True, timeout=TIMEOUT)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.update({k: v})
    assert command.returncode == 0, command.stderr[-3000:]
    return {"root": root, "work": work}


def _train_record(folder: Path) -> dict:
    return json.loads((folder / "train.json").read_text())


def test_03_pipelines_are_what_05_trains_on(edited, synthetic_chain):
    n_train = int(pipelines.split_counts(edited["work"])["train"].sum())
    assert _train_record(edited["work"])["steps_per_epoch"] == math.ceil(n_train / 2)
    unedited = _train_record(synthetic_chain)  # the chain's own run: batches of its batch size
    batch = unedited["config"]["batch_size"]
    assert unedited["steps_per_epoch"] == math.ceil(n_train / batch) != math.ceil(n_train / 2)


def test_04_model_is_what_05_trains(edited):
    from fer_utils import models

    record = json.loads((edited["work"] / "model.json").read_text())
    shape = (*record["image_size"], 1 if record["color_mode"] == "grayscale" else 3)
    assert record["model"] == "seed_cnn"
    assert record["parameters"] == models.seed_cnn(shape, dense_units=24).count_params()
    assert record["parameters"] != models.seed_cnn(shape).count_params()


def test_05_steps_are_what_the_train_command_and_08_run(edited, synthetic_chain):
    work = edited["work"]
    runs = sorted((work / "scale" / "models").glob("default-*"))
    assert len(runs) == 1
    for folder in (work, work / "models" / "from-the-command", runs[0]):
        best = _train_record(folder)["best"]
        assert 0 <= best["val_top2"] <= 1 and best["val_top2"] >= best["val_accuracy"], folder
    assert "val_top2" not in _train_record(synthetic_chain)["best"]  # the chain's own run: no such metric


def test_06_compute_metrics_is_what_metrics_json_holds(edited):
    import pandas as pd

    metrics = json.loads((edited["work"] / "metrics.json").read_text())
    predictions = pd.read_csv(edited["work"] / "predictions.csv")
    assert metrics["mistakes"] == int((predictions.true != predictions.pred).sum())
    assert metrics["accuracy"] == pytest.approx(1 - metrics["mistakes"] / len(predictions))


def test_the_runner_refuses_notebooks_the_package_does_not_match(tmp_path):
    """An edited cell that was not exported: the chain would run other code than it shows, so it does not start."""
    for folder in ("fer_utils", "notebooks"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    edit_cell(tmp_path / "notebooks" / "05_train_model.ipynb", *EDITS["05_train_model.ipynb"])
    from fer_utils import runner

    assert runner.main(["--notebooks-dir", str(tmp_path / "notebooks"), "--work-dir", str(tmp_path / "w")]) == 2
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name, value", [("image_size", "48"), ("precision", "fp16"), ("color_mode", "rgb"),
                                         ("model", "seed_cnn")])
def test_train_refuses_a_setting_that_contradicts_the_built_model(synthetic_chain, tmp_path, capsys, name, value):
    """``train`` trains notebook 04's model: a ``-p`` that contradicts it is refused in one line, before any work."""
    from fer_utils import train_command

    work = tmp_path / "work"
    shutil.copytree(synthetic_chain, work, ignore=shutil.ignore_patterns("executed", "scale", "scale_data", "models"))
    before = sorted(p.name for p in work.iterdir())
    assert train_command.main(["--work-dir", str(work), "-p", name, value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {name}=") and "contradicts the model" in err
    assert sorted(p.name for p in work.iterdir()) == before  # nothing was trained or written
