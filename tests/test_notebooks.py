"""Every numbered notebook runs, once per test session: the whole chain under papermill, on tiny synthetic data."""

import json

import pytest

from fer_utils import notebook_format, parameters, workfolder
from fer_utils.workfolder import REPO_ROOT


def test_chain_runs_every_notebook_and_records_it(synthetic_chain):
    record = json.loads((synthetic_chain / "run.json").read_text())
    names = [p.stem for p in workfolder.numbered_notebooks()]
    assert list(record["notebooks"]) == names and record["status"] == "ok"
    assert [p.stem for p in workfolder.run_notebooks(synthetic_chain)] == names
    assert all(p.parent.parent.name == record["id"] for p in workfolder.run_notebooks(synthetic_chain))


def test_chain_outputs_of_notebooks_01_02(synthetic_chain):
    for name in ("audit.json", "audit_findings.csv", "manifest.csv", "prepare.json"):
        assert (synthetic_chain / name).exists(), name
    assert (synthetic_chain / "figures" / "01_class_distribution.png").exists()
    assert (synthetic_chain / "figures" / "02_split_by_emotion.png").exists()


def test_executed_notebooks_are_clean(synthetic_chain):
    """No errors, no TensorFlow log noise, no machine paths in any output."""
    noise = ("oneDNN custom operations", "cuda drivers", "cpu_feature_guard", "absl::InitializeLog", "WARNING:")
    for path in workfolder.run_notebooks(synthetic_chain):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            for out in cell.get("outputs", []):
                assert out["output_type"] != "error", f"{path.name}: {out.get('ename')}"
                text = out.get("text") or out.get("data", {}).get("text/plain", "")
                text = "".join(text) if isinstance(text, list) else text
                assert not any(n in text for n in noise), f"{path.name}: log noise: {text[:200]}"
                assert str(synthetic_chain) not in text, f"{path.name}: shows the work folder path"
                assert str(REPO_ROOT) not in text, f"{path.name}: shows the repository path"


def test_every_notebook_has_one_parameters_cell():
    for path in workfolder.numbered_notebooks():
        nb = json.loads(path.read_text())
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, path.name
        assert nb["metadata"]["kernelspec"]["name"] == "python3"


def test_committed_notebooks_are_normalised():
    """Committed notebooks are stored as ``notebook_format.normalise_notebook`` writes them (what ``--publish`` does):
    no run timestamps or durations, papermill records or Python patch versions, so a diff shows content only."""
    normalised = notebook_format.normalised_json
    stale = [p.name for p in workfolder.numbered_notebooks()
             if p.read_text(encoding="utf-8") != normalised(json.loads(p.read_text(encoding="utf-8")))]
    assert not stale, (f"not normalised: {', '.join(stale)}. Fix (from the repository root): "
                       f"{notebook_format.NORMALISE_HINT}")


def test_each_setting_is_declared_in_one_notebook():
    """A value set in one notebook is used by the next, never declared again there (and silently ignored)."""
    shared = {"work_dir", "data_dir", "seed"}
    seen = {}
    for path in workfolder.numbered_notebooks():
        for name in parameters.declared_parameters(path):
            if name not in shared:
                assert name not in seen, f"{name!r} is declared in {seen.get(name)} and {path.name}"
                seen[name] = path.name
    from fer_utils import training

    config_fields = set(training.TrainConfig().to_dict()) - {"model_kwargs"}
    assert config_fields - shared <= set(seen), f"TrainConfig fields no notebook sets: {config_fields - set(seen)}"


def test_parameter_cells_declare_the_config_defaults():
    """Each default is written once, in ``TrainConfig``: a notebook's parameter of the same name declares the same
    value (a learner reading notebook 05 sees what ``train`` and the benchmarks use by default)."""
    import ast

    from fer_utils import training

    defaults = training.TrainConfig().to_dict()
    checked = set()
    for path in workfolder.numbered_notebooks():
        for name, info in parameters.declared_parameters(path).items():
            if name in defaults:
                declared = ast.literal_eval(info["default"])
                expected = defaults[name][0] if name == "image_size" else defaults[name]
                assert declared == expected, f"{path.name} declares {name} = {declared!r}; TrainConfig: {expected!r}"
                checked.add(name)
    assert {"image_size", "model", "epochs", "head_epochs", "batch_size", "strategy"} <= checked


def test_the_chain_ran_each_committed_notebook_as_it_is(synthetic_chain):
    """Each notebook executes once per test session: the chain's run is the committed notebook itself, cell for
    cell, plus at most papermill's one injected cell, which sets only names the ``parameters`` cell declares (the
    tiny settings). Run as they are from JupyterLab, the notebooks differ only in those values, whose defaults
    ``test_parameter_cells_declare_the_config_defaults`` checks (and ``tests/test_jupyterlab.py`` runs 01-05 there)."""
    import ast

    for path in workfolder.run_notebooks(synthetic_chain):
        committed = json.loads((REPO_ROOT / "notebooks" / path.name).read_text(encoding="utf-8"))
        executed = json.loads(path.read_text(encoding="utf-8"))
        injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        ran = [(c["cell_type"], "".join(c["source"])) for c in executed["cells"] if c not in injected]
        assert ran == [(c["cell_type"], "".join(c["source"])) for c in committed["cells"]], \
            f"{path.name}: the chain ran other cells than the committed notebook holds"
        assert len(injected) <= 1, path.name
        declared = set(parameters.declared_parameters(REPO_ROOT / "notebooks" / path.name))
        for cell in injected:
            tree = ast.parse("".join(cell["source"]))
            assert all(isinstance(node, ast.Assign) for node in tree.body), path.name
            names = {target.id for node in tree.body for target in node.targets}
            assert names and names <= declared, f"{path.name}: papermill set {names - declared}, not parameters"


@pytest.mark.parametrize("runs, notebook", [("03", "02_preprocess_into_folders"), ("07", "05_train_model")])
def test_later_notebook_says_which_to_run_first(tmp_path, monkeypatch, runs, notebook):
    """Run a notebook in an empty work folder, with no dataset anywhere: the error names the notebook that writes
    its missing input, before it looks for the dataset (or tries to download it)."""
    import papermill

    (later,) = [p for p in workfolder.numbered_notebooks() if p.name.startswith(runs)]
    monkeypatch.setenv("FER_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("FER_DATA_DIR", str(tmp_path / "no-dataset-here"))
    with pytest.raises(papermill.PapermillExecutionError, match=notebook):
        papermill.execute_notebook(str(later), str(tmp_path / "out.ipynb"), cwd=str(later.parent),
                                   kernel_name="python3", progress_bar=False)


def test_the_files_that_read_the_chain_share_a_worker():
    """With two workers the chain runs once only if every test file that asks for it is in ``CHAIN_FILES``
    (``tests/conftest.py``); a renamed file would silently run it twice, so the names are checked here."""
    from conftest import CHAIN_FILES, LONGEST_FIRST

    readers = {f"tests/{p.name}" for p in (REPO_ROOT / "tests").glob("test_*.py")
               if "synthetic_chain" in p.read_text(encoding="utf-8") and p.name != "test_notebooks.py"}
    assert readers | {"tests/test_notebooks.py"} == set(CHAIN_FILES), "update CHAIN_FILES in tests/conftest.py"
    assert all((REPO_ROOT / name).is_file() for name in LONGEST_FIRST), "update LONGEST_FIRST in tests/conftest.py"
