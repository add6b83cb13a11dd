"""The benchmark scripts run end to end on tiny synthetic data and write what their documents promise."""

from __future__ import annotations

import importlib.util
import json

import pandas as pd

from fer_utils import EMOTIONS, workfolder


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, workfolder.REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_folds_writes_the_protocol_and_paired_differences(synthetic_data_dir, tmp_path):
    compare = _load("compare")
    out = tmp_path / "results"
    assert compare.main(["--folds", "2", "--data-dir", str(synthetic_data_dir), "--work-dir", str(tmp_path / "w"),
                         "--only", "majority", "reference", "seed_cnn", "--epochs", "1", "--n-boot", "30",
                         "--out", str(out)]) == 0
    report = json.loads((out / "compare_folds2.json").read_text())
    assert report["protocol"]["folds"] == 2 and report["protocol"]["grouped_by"] == "person"
    n = None
    for name in ("majority", "reference", "seed_cnn"):
        cv = report["configs"][name]["cv"]
        for m in ("accuracy", "macro_f1", "balanced_accuracy"):
            assert cv[m]["ci_low"] <= cv[m]["value"] <= cv[m]["ci_high"] and len(cv[m]["per_fold"]) == 2
        n = n or report["configs"][name]["n"]
        assert report["configs"][name]["n"] == n  # every configuration predicts the same faces
        assert set(report["configs"][name]["per_class"]) == set(EMOTIONS)
    # every usable face is predicted exactly once, out of fold
    manifests = [tmp_path / "w" / f"fold{i}" / "manifest.csv" for i in (1, 2)]
    tests = pd.concat([pd.read_csv(m).query("split == 'test'") for m in manifests])
    assert tests.image.is_unique and len(tests) == n
    usable = pd.read_csv(manifests[0]).query("split != 'excluded'")
    assert len(usable) == n
    paired = report["paired"]
    assert set(paired["seed_cnn_minus_reference"]) == {"accuracy", "macro_f1", "balanced_accuracy"}
    assert len(paired["seed_cnn_over_reference_chain_time"]["per_fold"]) == 2
    assert report["configs"]["seed_cnn"]["utilisation"] > 0 and report["peak_gflops"]["float32"] > 0
    assert "Paired differences" in (out / "compare_folds2.md").read_text()


def test_compare_pairs_the_short_schedule_with_the_default(synthetic_data_dir, fake_fer_weights, tmp_path,
                                                           monkeypatch):
    """``--only ours ours_short``: both recipes on the same folds, paired on the same faces, with the ratio of
    their training times (tiny schedules here: 1 + 2 epochs against 1 + 1)."""
    compare = _load("compare")
    monkeypatch.setenv("FER_PRETRAINED", str(fake_fer_weights))
    tiny = compare.OURS.replace(head_epochs=1, epochs=2, batch_size=16)
    monkeypatch.setattr(compare, "OURS", tiny)
    monkeypatch.setattr(compare, "SHORT", tiny.replace(epochs=1))
    out = tmp_path / "results"
    assert compare.main(["--folds", "2", "--data-dir", str(synthetic_data_dir), "--work-dir", str(tmp_path / "w"),
                         "--only", "ours", "ours_short", "--n-boot", "30", "--out", str(out)]) == 0
    report = json.loads((out / "compare_folds2.json").read_text())
    assert report["ours_short"]["epochs"] == 1 and report["ours"]["epochs"] == 2
    assert report["configs"]["ours"]["n"] == report["configs"]["ours_short"]["n"]
    diff = report["paired"]["ours_short_minus_ours"]
    for m in ("accuracy", "macro_f1", "balanced_accuracy"):
        assert diff[m]["ci_low"] <= diff[m]["value"] <= diff[m]["ci_high"]
    ratio = report["paired"]["ours_short_over_ours_train_time"]
    assert len(ratio["per_fold"]) == 2 and all(r > 0 for r in ratio["per_fold"])
    text = (out / "compare_folds2.md").read_text()
    assert "ours_short − ours" in text and "Training time ours_short / ours" in text


def test_scale_measures_each_strategy_and_writes_its_json(tmp_path):
    scale = _load("scale")
    out = tmp_path / "scale.json"
    assert scale.main(["--work-dir", str(tmp_path / "w"), "--images", "256", "--epochs", "2", "--batch-size", "16",
                       "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    runs = {r["name"]: r for r in report["runs"]}
    assert report["device"] and report["settings"]["training_images"] == 256
    assert runs["1 device, float32"]["precision"] == "float32" and runs["1 device, float32"]["replicas"] == 1
    if "GPU" not in report["device"]:  # on CPUs: the CPU split in two, and two local workers
        assert runs["mirrored, auto precision"]["replicas"] == 2
        assert runs["2 workers, auto precision"]["workers"] == 2
        assert runs["2 workers, auto precision"]["global_batch_size"] == 32
    for row in runs.values():
        assert row["images_per_second"] > 0 and row["peak_memory"]["peak_rss_mb"] > 0
    assert not (tmp_path / "w" / "scale-benchmark").exists()  # its generated data is removed afterwards
