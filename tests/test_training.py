"""Training: one config, one train(), records, kept models, progress, precision, the options experiments use."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fer_utils import EMOTIONS, models, training, workfolder

tf, keras = __import__("fer_utils").import_tensorflow()

TINY = dict(model="seed_cnn", head_epochs=0, image_size=24, batch_size=8, precision="float32")


@pytest.fixture()
def work(prepared_work_dir, tmp_path):
    """A private copy of the prepared work folder (the fixture itself is read-only)."""
    dest = tmp_path / "work"
    shutil.copytree(prepared_work_dir, dest)
    return dest


@pytest.fixture(scope="module")
def trained(prepared_work_dir, tmp_path_factory):
    dest = tmp_path_factory.mktemp("trained") / "work"
    shutil.copytree(prepared_work_dir, dest)
    config = training.TrainConfig(**{**TINY, "precision": "auto"}, epochs=2, seed=7)
    result = training.train(config, dest, run_name="first", show_progress=False)
    return dest, result


def test_train_writes_the_contract_files(trained):
    work, result = trained
    for name in ("model.keras", "model.json", "history.csv", "train.json", "models/first/model.keras",
                 "models/first/model.json", "models/first/train.json", "models/first/history.csv",
                 workfolder.TRAIN_PROGRESS):
        assert (work / name).exists(), name
    record = models.ModelRecord.read(work / "model.json")
    assert record.model == "seed_cnn" and record.image_size == (24, 24) and record.color_mode == "grayscale"
    assert record.class_names == EMOTIONS and record.input_range == (0.0, 255.0) and record.trained
    assert record.model_sha256 == workfolder.sha256_of(work / "model.keras") and record.run == "first"
    assert record.config == training.TrainConfig(**{**TINY, "precision": "auto"}, epochs=2, seed=7).to_dict()
    history = pd.read_csv(work / "history.csv")
    assert history.epoch.tolist() == [1, 2] and set(history.phase) == {"train"}
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(history.columns)
    assert history[["loss", "val_loss"]].notna().all().all()
    assert history.learning_rate.tolist() == pytest.approx([1e-3, 1e-3])  # no schedule: the rate stays as set


def test_train_record_holds_the_config_verbatim(trained):
    work, result = trained
    record = json.loads((work / "train.json").read_text())
    assert training.TrainConfig.from_dict(record["config"]) == training.TrainConfig(
        **{**TINY, "precision": "auto"}, epochs=2, seed=7)
    assert record["precision"] == models.model_precision("seed_cnn", "auto") and record["run"] == "first"
    assert len(record["epoch_seconds"]) == 2 and record["seconds_per_epoch"] > 0
    assert record["images_per_second"] > 0 and record["train_seconds"] > 0
    assert record["counts"]["train"] == sum(record["counts"]["train_per_class"].values()) > 0
    assert record["best_epoch"] in (1, 2)
    best_val = pd.read_csv(work / "history.csv").val_accuracy.max()
    assert record["best"]["val_accuracy"] == pytest.approx(best_val)


def test_progress_lines_one_per_epoch(trained):
    work, _ = trained
    lines = [json.loads(line) for line in (work / workfolder.TRAIN_PROGRESS).read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2] and all(line["epochs"] == 2 for line in lines)
    assert lines[-1]["eta_seconds"] == 0 and lines[0]["eta_seconds"] > 0 and "val_accuracy" in lines[0]


def test_best_model_is_saved_and_policy_is_reset(trained):
    work, result = trained
    assert keras.mixed_precision.global_policy().name == "float32"
    model, record = models.load(work / "model.keras")
    models.check_contract(model, (24, 24, 1))
    x = np.full((2, 24, 24, 1), 100, "float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), result.model.predict(x, verbose=0), rtol=1e-5)


def test_a_second_run_keeps_the_first_model(trained, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(trained[0], work)
    first_sha = workfolder.sha256_of(work / "model.keras")
    second = training.train(training.TrainConfig(**TINY, epochs=1, seed=1), work, run_name="second",
                            show_progress=False)
    assert second.replaced == work / "models" / "first"
    assert workfolder.sha256_of(work / "models" / "first" / "model.keras") == first_sha
    assert workfolder.sha256_of(work / "model.keras") == workfolder.sha256_of(work / "models/second/model.keras")
    table = training.trained_models(work)
    assert table.set_index("run").current.to_dict() == {"first": False, "second": True}
    with pytest.raises(FileExistsError):
        training.train(training.TrainConfig(**TINY, epochs=1), work, run_name="second", show_progress=False)


def test_a_model_from_before_runs_is_moved_aside(work):
    (work / "model.keras").write_bytes(b"an older model")
    (work / "model.json").write_text("{}")
    result = training.train(training.TrainConfig(**TINY, epochs=1), work, run_name="new", show_progress=False)
    assert result.replaced.name.startswith("previous-")
    assert (result.replaced / "model.keras").read_bytes() == b"an older model"


def test_generator_pipeline_rgb_and_options(work):
    seen = []

    class Spy(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(epoch)

    config = training.TrainConfig(model="cnn_bn", head_epochs=0, epochs=1, image_size=20, color_mode="rgb",
                                  batch_size=8, pipeline="generator", precision="float32", class_weight="balanced",
                                  model_kwargs={"filters": (8, 16)}, interpolation="area")
    result = training.train(config, work, callbacks=[Spy()], show_progress=False)
    assert seen == [0]
    assert result.record["precision"] == "float32" and result.record["config"]["pipeline"] == "generator"
    assert result.model.inputs[0].shape[1:] == (20, 20, 3)
    assert set(result.record["class_weight"]) == set(EMOTIONS)
    assert models.ModelRecord.read(work / "model.json").color_mode == "rgb"


def test_a_built_model_is_trained_as_given(work):
    net = training.build_model(training.TrainConfig(**TINY, epochs=1))
    net.get_layer("conv1").trainable = False
    before = net.get_layer("conv1").get_weights()[0].copy()
    result = training.train(training.TrainConfig(**TINY, epochs=1), work, model=net, show_progress=False)
    assert result.model is net
    np.testing.assert_array_equal(before, net.get_layer("conv1").get_weights()[0])


def test_experiment_options_run(work):
    config = training.TrainConfig(**TINY, epochs=2, mixup=0.2, label_smoothing=0.1, focal_gamma=2.0, class_weight=0.3,
                                  lr_schedule="cosine", weight_decay=1e-4, augment="strong", tta="flip",
                                  monitor="val_macro_f1")
    result = training.train(config, work, show_progress=False)
    assert {"val_macro_f1", "val_balanced_accuracy"} <= set(result.history.columns)
    assert result.record["best"]["val_macro_f1"] == pytest.approx(result.history.val_macro_f1.max())
    assert models.ModelRecord.read(work / "model.json").tta == "flip"
    rates = pd.read_csv(work / "history.csv").learning_rate  # the rate each epoch ended at: cosine decays it
    assert config.learning_rate > rates[0] > rates[1] >= 0, rates.tolist()
    table = training.summary_table(result.record)["value"]  # names the figure that chose the kept epoch
    assert table["kept epoch"] == f"{result.record['best_epoch']} (best val_macro_f1)"
    assert float(table["val macro f1 at the kept epoch"]) == round(result.history.val_macro_f1.max(), 4)
    assert "val accuracy at the kept epoch" in table


def test_focal_gamma_compiles_the_focal_loss():
    """``focal_gamma`` > 0: each face's cross-entropy times ``(1 - p_true) ** gamma`` (Lin et al.); 0: plain
    cross-entropy, as before the option existed."""
    truth, probs = np.eye(3, dtype="float32")[[0, 2]], np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], "float32")
    ce = -np.log([0.7, 0.8])
    for gamma, expected in ((0.0, ce.mean()), (2.0, (ce * np.array([0.3, 0.2]) ** 2).mean())):
        net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        training.compile_model(net, training.TrainConfig(**TINY, epochs=1, focal_gamma=gamma), 1e-3)
        assert float(net.loss(truth, probs)) == pytest.approx(expected, rel=1e-5)
        assert type(net.loss).__name__ == ("CategoricalFocalCrossentropy" if gamma else "CategoricalCrossentropy")
    assert training.TrainConfig(**TINY, epochs=1, focal_gamma=2).focal_gamma == 2.0  # `-p focal_gamma 2`: a float
    with pytest.raises(ValueError, match="focal_gamma=True"):
        training.TrainConfig(**TINY, epochs=1, focal_gamma=True)


def test_seeded_runs_repeat(work):
    config = training.TrainConfig(**TINY, epochs=1, seed=3)
    a = training.train(config, work, write=False, show_progress=False)
    b = training.train(config, work, write=False, show_progress=False)
    assert a.history.loss.iloc[0] == pytest.approx(b.history.loss.iloc[0], rel=1e-4)


@pytest.mark.parametrize("changes, message", [
    ({"model": "nope"}, "model='nope'"), ({"epochs": "abc"}, r"epochs='abc' \(an integer\)"),
    ({"image_size": 0}, "image_size=0"), ({"learning_rate": "fast"}, "learning_rate='fast' \\(a finite number\\)"),
    # nan and inf are floats, but a nan rate trains a model of nans (it was accepted, and saved as the current one)
    ({"learning_rate": float("nan")}, "learning_rate=nan \\(a finite number\\)"),
    ({"weight_decay": float("inf")}, "weight_decay=inf"), ({"mixup": float("nan")}, "mixup=nan"),
    ({"class_weight": float("inf")}, "class_weight=inf"),
    ({"augment": "wild"}, "augment"), ({"class_weight": "most"}, "class_weight"), ({"monitor": "val_f2"}, "monitor"),
    ({"epochs": 0}, "at least one epoch"), ({"interpolation": "cubic"}, "interpolation"),
    ({"focal_gamma": -1.0}, "focal_gamma=-1.0"), ({"focal_gamma": 50.0}, "focal_gamma=50.0"),
])
def test_bad_configs_say_what_is_wrong(changes, message):
    """Wrong values and wrong types are refused with what is wrong (never a TypeError from a comparison)."""
    with pytest.raises(ValueError, match=message):
        training.TrainConfig(**{**TINY, "epochs": 1, **changes})
    with pytest.raises(ValueError, match="Unknown TrainConfig field"):
        training.TrainConfig.from_dict({"epochz": 3})


def test_a_diverging_run_stops_and_keeps_the_current_model(trained, tmp_path):
    """A loss that is no longer a number (here: a step size of 1e30) ends the run at that epoch with
    ``TrainingDiverged``; nothing is saved, the current model stays, and no backup is left to resume from."""
    work = tmp_path / "w"
    shutil.copytree(trained[0], work)
    before = {p.relative_to(work): workfolder.sha256_of(p) for p in work.rglob("*") if p.is_file()}
    config = training.TrainConfig(**TINY, epochs=3, learning_rate=1e30, seed=3)
    with pytest.raises(training.TrainingDiverged, match=r"loss was (nan|inf) in epoch 1.*smaller learning_rate"):
        training.train(config, work, run_name="diverged", show_progress=False)
    after = {p.relative_to(work): workfolder.sha256_of(p) for p in work.rglob("*") if p.is_file()}
    changed = {p for p in after if before.get(p) != after[p]}
    assert changed <= {Path(workfolder.TRAIN_PROGRESS)}, changed  # only the progress lines of the failed epoch
    assert not (work / "models" / "diverged").exists() and not (work / workfolder.BACKUP_DIR).exists()


def test_resolve_precision_and_cpu_flags(tmp_path):
    with_bf16 = tmp_path / "cpuinfo_bf16"
    with_bf16.write_text("processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_tile\n")
    without = tmp_path / "cpuinfo"
    without.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert models.cpu_supports_bf16(with_bf16) and not models.cpu_supports_bf16(without)
    assert not models.cpu_supports_bf16(tmp_path / "missing")
    assert models.resolve_precision("float32") == "float32"
    assert models.resolve_precision("bf16") == "mixed_bfloat16"
    assert models.resolve_precision("auto", gpu=True) == "mixed_float16"
    expected = "mixed_bfloat16" if models.cpu_supports_bf16() else "float32"
    assert models.resolve_precision("auto", gpu=False) == expected
    with pytest.raises(ValueError):
        models.resolve_precision("int8")


def test_class_weights():
    w = training.balanced_class_weight([10, 0, 30])
    assert w == {0: pytest.approx(2.0), 1: 0.0, 2: pytest.approx(40 / 60)}
    assert training.balanced_class_weight([1, 99], max_weight=5.0)[0] == 5.0
    counts = [100, 1, 10]
    assert training.class_weight_power(counts, 0) == {0: pytest.approx(1), 1: pytest.approx(1), 2: pytest.approx(1)}
    sqrt = training.sqrt_class_weight(counts)
    assert sqrt[1] > sqrt[2] > sqrt[0] and sum(w * n for w, n in zip(sqrt.values(), counts)) == pytest.approx(111)


def test_missing_folders_name_notebook_02(tmp_path):
    with pytest.raises(FileNotFoundError, match="02_preprocess_into_folders"):
        training.train(training.TrainConfig(**TINY, epochs=1), tmp_path)
    assert keras.mixed_precision.global_policy().name == "float32"


def test_head_epochs_count_only_for_a_pretrained_backbone():
    """The one place of the rule: a model without a pretrained backbone has no head phase."""
    assert training.TrainConfig(model="seed_cnn", head_epochs=2).head_epochs == 0
    assert training.TrainConfig(model="fer_transfer", head_epochs=2).head_epochs == 2


def test_config_from_a_model_record_and_back_to_parameters():
    from fer_utils.parameters import parse_value

    config = training.TrainConfig(model="seed_cnn", image_size=(48, 40), epochs=3, class_weight=0.3,
                                  model_kwargs={"filters": (8, 16)}, tta="flip")
    args = config.to_parameters()
    assert training.TrainConfig(**{args[i + 1]: parse_value(args[i + 2]) for i in range(0, len(args), 3)}) == config
    record = config.model_record(precision="float32")
    again = training.TrainConfig.from_model_record(record, epochs=5, image_size=(48, 40))
    assert (again.image_size, again.model, again.precision, again.epochs) == ((48, 40), "seed_cnn", "float32", 5)
    assert again.model_kwargs == {"filters": (8, 16)}
    for change in ({"image_size": 64}, {"precision": "bf16"}, {"color_mode": "rgb"}):
        with pytest.raises(ValueError, match=f"{next(iter(change))}=.* contradicts the model being trained"):
            training.TrainConfig.from_model_record(record, **change)


def test_time_left_covers_every_phase():
    """Two head epochs at 10 s, then 12 whole-model epochs: after the first head epoch, the estimate counts the
    other head epoch and the slower whole-model epochs (the backbone's backward pass added)."""
    plan = [training.Phase("head", 2, 1e-3, False), training.Phase("whole", 12, 5e-4, True)]
    assert training.seconds_left(plan, "head", 1, 10.0) == pytest.approx(10 + 12 * 10 * training.UNFROZEN_SLOWDOWN)
    assert training.seconds_left(plan, "whole", 5, 30.0) == pytest.approx(9 * 30)
    assert training.seconds_left(plan, "whole", 14, 30.0) == 0
    single = [training.Phase("train", 10, 1e-3, None)]
    assert training.seconds_left(single, "train", 4, 2.0) == pytest.approx(12.0)


def test_the_pace_of_a_new_phase_leaves_out_its_first_epoch():
    """The published run's epochs (33 and 23 s of head, then 89 s for the first whole-model epoch, which also
    builds its graph, and about 78 s after): the time left after that first whole epoch comes from the head's pace
    times the slowdown, not from the 89 s, so it does not jump up; after the next one, from the phase itself."""
    plan = [training.Phase("head", 2, 1e-3, False), training.Phase("whole", 12, 5e-4, True)]
    rows = [{"phase": "head", "seconds": 33.0}, {"phase": "head", "seconds": 23.0}]
    assert training.epoch_pace(rows[:1], plan, "head") == 33.0
    assert training.epoch_pace(rows, plan, "head") == 23.0  # the first epoch left out
    after_head = training.seconds_left(plan, "head", 2, training.epoch_pace(rows, plan, "head"))
    rows.append({"phase": "whole", "seconds": 89.0})
    pace = training.epoch_pace(rows, plan, "whole")
    assert pace == pytest.approx(23.0 * training.UNFROZEN_SLOWDOWN) and pace < 89.0
    assert training.seconds_left(plan, "whole", 3, pace) < after_head
    rows += [{"phase": "whole", "seconds": 78.0}, {"phase": "whole", "seconds": 80.0}]
    assert training.epoch_pace(rows, plan, "whole") == 79.0
    # a first epoch quicker than the guess is believed; one phase alone uses its own first epoch
    assert training.epoch_pace([*rows[:2], {"phase": "whole", "seconds": 50.0}], plan, "whole") == 50.0
    assert training.epoch_pace([{"phase": "train", "seconds": 7.0}], [training.Phase("train", 5, 1e-3, None)],
                               "train") == 7.0


@pytest.mark.parametrize("name, message", [("../../escaped", "one folder name"), ("/tmp/elsewhere", "one folder name"),
                                           ("a/b", "one folder name"), ("..", "one folder name"),
                                           ("first", "exists already")])
def test_a_run_name_outside_models_or_taken_is_refused_before_training(trained, tmp_path, capsys, name, message):
    from fer_utils import train_command

    work = tmp_path / "w"
    shutil.copytree(trained[0], work)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert train_command.main(["--work-dir", str(work), "--run-name", name, "-p", "epochs", "1"]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_read_only_work_folder_is_refused_before_training(trained, tmp_path, capsys, monkeypatch):
    """It gave a PermissionError traceback after loading TensorFlow and the data. (As root every folder can be
    written, so the folder's permission is what ``os.access`` is asked, and answered, here.)"""
    import os

    from fer_utils import train_command

    work = tmp_path / "w"
    shutil.copytree(trained[0], work)
    access = os.access
    monkeypatch.setattr(train_command.os, "access", lambda path, mode: False if Path(path) == work.resolve()
                        else access(path, mode))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert train_command.main(["--work-dir", str(work), "-p", "epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: the work folder {work.resolve()} cannot be written (read-only): "
                                        "training writes the model, its records and a backup there; make it "
                                        "writable, or copy it and train the copy (--work-dir)"]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_loaded_model_trains_the_same_in_every_run(work, tmp_path):
    """A model loaded from a file (notebook 04's untrained.keras) drew its dropout seeds when it was loaded, from
    whatever random state the program had: two runs with the same seed trained different models. ``start``
    seeds its random layers from ``config.seed``, so they repeat."""
    import random

    config = training.TrainConfig(**{**TINY, "model": "cnn_bn", "model_kwargs": {"filters": (8, 16)}}, epochs=1,
                                  seed=5)
    saved = tmp_path / "untrained.keras"
    built = training.build_model(config)
    assert training.random_layers(built), "the test needs a model with dropout"
    built.save(saved)
    losses = []
    for state in (1, 2):
        random.seed(state)  # another random state when the file is loaded, as in another run of notebook 05
        net, _ = models.load(saved)
        result = training.train(config, work, model=net, write=False, show_progress=False)
        losses.append(result.history.loss.tolist())
    assert losses[0] == losses[1]


def test_the_train_command_names_what_is_wrong_with_its_settings_and_folder(trained, tmp_path, capsys):
    from fer_utils import train_command

    work = tmp_path / "w"
    shutil.copytree(trained[0], work)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for args, line in [
        (["-p", "bogus", "1"], "error: unknown training setting(s) bogus: -p takes the fields of TrainConfig (image_"),
        (["-p", "batch_size", "99999999999999999999"], "(at most 65,536 faces a step)"),
    ]:
        assert train_command.main(["--work-dir", str(work), *args]) == 2
        assert line in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    assert train_command.main(["--work-dir", str(tmp_path / "a-file")]) == 2
    assert "is a file: name the folder notebook 02 prepared (--work-dir)" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == sorted([*before, Path("a-file")])
