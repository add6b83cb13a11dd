"""Nested recipe search: each outer fold chooses a recipe on its own validation people only, and only the chosen
recipe (beside today's default) is scored on that fold's test people.

    python benchmarks/recipe_search.py --train [--recipes ours cw1] [--work-dir DIR]   # trains; stores probabilities
    python benchmarks/recipe_search.py                                                 # the search (no training)
    python benchmarks/recipe_search.py --ensembles          # the same, with ensembles of the recipes as candidates
    python benchmarks/recipe_search.py --recipes ours cw1 sb aug focal --name NAME   # other recipes: NAME.json/.md

Protocol. ``compare.py``'s five person-disjoint outer folds (the same ``--seed``, so the same faces). Inside each,
the validation people (about 1/8 of the fold's other people, carved by person) are the inner split: every
training recipe keeps its best epoch there (``training.train``, as the chain does), and every candidate below
is scored there. A fold's test people are never used to choose.

Candidates: a training recipe (``RECIPES``, trained by ``training.train`` and predicted as
``evaluation.predict_split`` predicts) × a test-time augmentation (``none``, or ``flip``: each face averaged with
its mirror image, ``models.with_tta``) × a logit adjustment ``tau`` (Menon et al., "Long-tail learning via logit
adjustment", ICLR 2021): before the softmax, ``tau · log(training share of the emotion)`` is subtracted from each
emotion's logit, so a rare emotion needs less evidence to be chosen. ``tau = 0`` is the model as trained. It is
the same as lowering the last Dense layer's bias by that amount, so a chosen ``tau`` can be written into the model
(no change to prediction, the demo page or the export).

The rule (the criterion and the accuracy floor), fixed before any run: the candidate with the highest mean of
inner macro-F1 and inner balanced accuracy, among those whose inner accuracy is at least today's default's minus
``--accuracy-slack`` (0.01); a tie goes to the earlier candidate (the simpler one: fewer changes to the default).
The candidates were not all fixed in advance: the ``tau`` grid was widened after fold 1's validation scores
(``TAUS``), the recipes ``sb`` and ``aug`` were trained after a first search with ``ours`` and ``cw1`` had
kept the default, and ``focal``, ``px80``, ``cw0``, ``mix`` and ``os`` after the search with those four had kept
it too. The search also measures the source shortcut (``by_source``): each recipe's test accuracy per image source, as
trained, paired with the default (a measurement; no choice reads it).

``--train`` writes ``recipe_search_probabilities_<recipe>.csv.gz`` (every validation and test face of every fold:
person, source, true emotion, log-probabilities of both views) and ``recipe_search_trainings.json`` (training
seconds, kept epoch, training faces per emotion and the machine of each fold and recipe); a later ``--train``
adds the pairs (recipe, fold) not yet stored. The search reads them and writes ``recipe_search.json`` / ``.md``:
every candidate's inner scores per fold (the recipe table), the choice per fold, the chosen recipes' pooled test
figures beside today's default's, and their paired difference on the same faces, per metric and per emotion's F1,
with person-bootstrap intervals. ``--ensembles`` runs the same search with ``ENSEMBLES`` among the candidates (each
face's probabilities averaged over trained recipes, no training) and writes ``recipe_search_ensembles.json`` /
``.md``; it leaves ``compare.json`` alone, because an ensemble trains all its members and so exceeds the
training budget.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import _checks
import numpy as np
import pandas as pd

from fer_utils import EMOTIONS, data, evaluation, folders, pipelines, training, workfolder

RESULTS = Path(__file__).resolve().parent / "results"
PROBABILITIES = "recipe_search_probabilities_{recipe}.csv.gz"  # one file per recipe (each under 5 MB)
TRAININGS = "recipe_search_trainings.json"
METRICS = ("accuracy", "macro_f1", "balanced_accuracy")
#: Training recipes: the changes to the chain's defaults (``training.TrainConfig()``).
RECIPES = {"ours": {},  # today's default: class weights (N / (K n_c)) ** 0.5
           "cw1": {"class_weight": 1.0},  # fully balanced class weights: the class-weight power 1 instead of 0.5
           "cw0": {"class_weight": None},  # no class weights (power 0)
           # balanced by source: within each emotion, IMFDB's and LFW's training faces weigh the same in all
           # (emotion no longer tells the source), times today's class weights (source_weights)
           "sb": {"source_balance": 1.0},
           # stronger augmentation (pipelines.AUGMENT_LEVELS): wider geometry, brightness and contrast changes
           "aug": {"augment": "strong"},
           # focal loss (Lin et al., 2017) with the usual gamma 2: each face's loss × (1 - p_true)^2, so the faces
           # already classified well (mostly happiness and neutral) count less; today's class weights kept
           "focal": {"focal_gamma": 2.0},
           # a larger input: 80×80 faces instead of 64×64 (the pretrained backbone is convolutional, any multiple of
           # 16 fits); about 1.6× the pixels, so about 1.6× the training time
           "px80": {"image_size": 80},
           # mixup (Zhang et al., 2018; each batch blended with a shuffled copy, Beta(0.2, 0.2)) with label smoothing
           # 0.1 (Szegedy et al., 2016): regularisers for a small training set, the README's retraining example;
           # on one split it gave +0.012 macro-F1 over two seeds, inside seed noise (experiments_transfer.md)
           "mix": {"mixup": 0.2, "label_smoothing": 0.1},
           # over-sampling instead of class weights (Buda et al., 2018, found it the best remedy for class imbalance
           # in CNNs): each epoch draws as many faces as the training split holds, an emotion of n faces with a
           # share ∝ n ** 0.5, what √ class weights give in expectation, but as more augmented views of the rare
           # faces rather than larger weights on the same few (oversampled_train_batches)
           "os": {"class_weight": None, "oversample": 0.5}}
#: The recipes the search chooses among by default: the search notebook 06 shows and ``compare.json`` holds.
#: ``focal``, ``px80``, ``cw0``, ``mix`` and ``os`` were trained later; their searches are ``--recipes ours cw1 sb aug
#: focal --name recipe_search_focal``, ``--recipes ours cw1 sb aug px80 --name recipe_search_px80``, ``--recipes ours
#: cw1 sb aug cw0 --name recipe_search_cw0`` and likewise ``recipe_search_mix`` and ``recipe_search_os``.
SEARCHED = ("ours", "cw1", "sb", "aug")
#: Recipe keys that are not ``TrainConfig`` fields: how ``train_recipe`` weighs the training faces.
NOT_CONFIG = ("source_balance", "oversample")
#: Sources that source balancing evens out (a face of another source keeps weight 1).
BALANCED_SOURCES = ("IMFDB", "LFW")
TTAS = ("none", "flip")
#: First {0, 0.25, 0.5, 0.75, 1}; 0.05-0.2 added after fold 1's validation scores put 0.25 below the accuracy floor.
TAUS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5, 0.75, 1.0)
DEFAULT = ("ours", "none", 0.0)
#: Ensembles of the trained recipes (``--ensembles``): each face's probabilities, per view, averaged over the
#: members. An ensemble trains every member, so each takes about twice the default's training time or more: over
#: the issue's budget of 10 min per fold on 2 cores (``BUDGET_SECONDS``), measured to know what averaging buys.
ENSEMBLES = {"ours+aug": ("ours", "aug"), "ours+cw1": ("ours", "cw1"), "ours+sb": ("ours", "sb"),
             "ours+cw1+sb+aug": ("ours", "cw1", "sb", "aug")}
BUDGET_SECONDS = 600
FLOOR = -40.0  # log-probabilities are stored rounded, from here up


def candidate_name(recipe: str, tta: str, tau: float) -> str:
    return f"{recipe}, tta {tta}, tau {tau:g}"


def candidates(recipes) -> list[tuple[str, str, float]]:
    """Every candidate, the default first and simpler ones before others."""
    return [(r, t, tau) for r in recipes for t in TTAS for tau in TAUS]


# --------------------------------------------------------------------------------------------------
# Training (``--train``)
# --------------------------------------------------------------------------------------------------


def views(model, work: Path, split: str, record) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The faces of a split as ``evaluation.predict_split`` reads them: relative paths, and the probabilities
    of each face and of its mirror image (``with_tta(..., "flip")`` is their mean)."""
    ds, files = pipelines.directory_dataset(work, split, record.image_size, record.color_mode, record.interpolation)
    plain, mirror = [], []
    for batch in ds.map(lambda x, y: x).batch(256).as_numpy_iterator():
        plain.append(np.asarray(model.predict_on_batch(batch), np.float32))
        mirror.append(np.asarray(model.predict_on_batch(batch[:, :, ::-1]), np.float32))
    rel = [Path(f).relative_to(work).as_posix() for f in map(Path, files)]
    return rel, np.concatenate(plain), np.concatenate(mirror)


def log_columns(view: str) -> list[str]:
    return [f"{view}_{e}" for e in EMOTIONS]


def base_config() -> training.TrainConfig:
    """The chain's defaults, which every recipe changes."""
    return training.TrainConfig()


def source_weights(emotions, sources, power: float = 1.0) -> np.ndarray:
    """A weight per training face that makes the emotion independent of the source: within each emotion, each
    of ``BALANCED_SOURCES`` present carries the same total weight (half each), and the emotion's total is
    unchanged, so the class weights keep their meaning. A variant of reweighing (Kamiran & Calders 2012, whose
    weights P(e) P(s) / P(e, s) keep each source's overall share instead): here the film crops weigh as much as
    the news photos within every emotion both hold. An emotion found in one source (contempt) is left as it is.
    ``power`` < 1 goes part of the way ((m_e / (S_e n_se)) ** power, rescaled to keep the emotion's total);
    faces of other sources keep 1."""
    frame = pd.DataFrame({"emotion": list(emotions), "source": list(sources)})
    weights = np.ones(len(frame))
    named = frame.source.isin(BALANCED_SOURCES).to_numpy()
    for _, cell in frame[named].groupby("emotion"):
        n = cell.groupby("source").size()
        w = (len(cell) / (len(n) * n)) ** power
        w = w * len(cell) / float((w * n).sum())  # the emotion's total weight stays its number of faces
        weights[cell.index.to_numpy()] = cell.source.map(w).to_numpy()
    return weights


def weighted_train_batches(config, work: Path, weight_of: dict):
    """``pipelines.tf_datasets``' training batches (the same decoding, cache, seeded shuffle, batching and
    augmentation) with a third element: each face's weight (``weight_of``: relative path -> weight)."""
    import fer_utils

    tf, _ = fer_utils.import_tensorflow()
    ds, files = pipelines.directory_dataset(work, "train", config.image_size, config.color_mode,
                                            config.interpolation)
    w = np.array([weight_of[Path(f).relative_to(work).as_posix()] for f in files], np.float32)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.from_tensor_slices(w))).map(
        lambda xy, w: (tf.cast(tf.clip_by_value(tf.round(xy[0]), 0, 255), tf.uint8), xy[1], w),
        num_parallel_calls=tf.data.AUTOTUNE).cache()
    ds = ds.shuffle(max(len(files), 1), config.seed, reshuffle_each_iteration=True).batch(config.batch_size)
    ds = ds.map(lambda x, y, w: (tf.cast(x, tf.float32), y, w), num_parallel_calls=tf.data.AUTOTUNE)
    level = pipelines.augment_level(config.augment)
    if level != "none":
        augment = pipelines.augmenter(pipelines.augmentation_layers(config.seed, level))
        ds = ds.map(lambda x, y, w: (*augment(x, y), w))
    return ds.prefetch(tf.data.AUTOTUNE)


def oversampled_train_batches(config, work: Path, power: float) -> tuple:
    """Training batches that draw the faces instead of weighing them: each epoch as many faces as the training split
    holds, an emotion of n faces drawn with probability ∝ n ** (1 - power) (``power`` 0.5: the shares √ class
    weights give in expectation; 1: every emotion alike), so a rare face comes back several times an epoch and a
    common one may not come at all. Within an epoch each emotion's faces come in a shuffled cycle; every epoch
    shuffles and draws anew (the same seeded sequence in every run). Then ``tf_datasets``' batching and
    augmentation. Returns the batches and each emotion's share of the draws."""
    import fer_utils

    tf, _ = fer_utils.import_tensorflow()
    ds, files = pipelines.directory_dataset(work, "train", config.image_size, config.color_mode,
                                            config.interpolation)
    pairs = list(ds.map(lambda x, y: (tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8), y))
                 .batch(512).as_numpy_iterator())
    x, y = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    label = y.argmax(axis=1)
    present = [k for k in range(len(EMOTIONS)) if (label == k).any()]
    share = np.array([(label == k).sum() for k in present], float) ** (1 - power)
    share /= share.sum()
    streams = [tf.data.Dataset.from_tensor_slices((x[label == k], y[label == k]))
               .shuffle(int((label == k).sum()), config.seed + k, reshuffle_each_iteration=True).repeat()
               for k in present]
    drawn = tf.data.Dataset.sample_from_datasets(streams, weights=share.tolist(), seed=config.seed,
                                                 rerandomize_each_iteration=True).take(len(files))
    ds = drawn.batch(config.batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y),
                                            num_parallel_calls=tf.data.AUTOTUNE)
    level = pipelines.augment_level(config.augment)
    if level != "none":
        ds = ds.map(pipelines.augmenter(pipelines.augmentation_layers(config.seed, level)))
    options = tf.data.Options()  # as tf_datasets: the autotuner as pipelines.TF_DATA_AUTOTUNE says
    options.autotune.enabled = pipelines.TF_DATA_AUTOTUNE
    return (ds.prefetch(tf.data.AUTOTUNE).with_options(options),
            {EMOTIONS[k]: round(float(v), 4) for k, v in zip(present, share)})


def train_recipe(work: Path, fold: int, recipe: str, seed: int) -> tuple[pd.DataFrame, dict]:
    """Train one recipe on one fold; its validation and test faces with both views' log-probabilities.

    A recipe with ``source_balance`` or ``oversample`` trains through ``training.start`` / ``fit_phase`` / ``finish``
    (what ``training.train`` runs, as notebook 05 shows it) with its own training batches: with ``source_balance``
    each face's weight is its class weight times its ``source_weights`` (Keras takes one or the other, so they are
    multiplied); with ``oversample``, the faces drawn by ``oversampled_train_batches``."""
    changes = {k: v for k, v in RECIPES[recipe].items() if k not in NOT_CONFIG}
    config = base_config().replace(**changes, seed=seed)
    manifest = folders.load_manifest(work).set_index("path")
    balance, oversample, extra = RECIPES[recipe].get("source_balance"), RECIPES[recipe].get("oversample"), {}
    # every (recipe, fold) trains afresh: sb's configuration is ours', so they would share a backup to resume
    shutil.rmtree(work / workfolder.BACKUP_DIR, ignore_errors=True)
    if balance is not None and oversample is not None:
        raise SystemExit(f"error: recipe {recipe}: source balancing weighs the faces and over-sampling draws them; "
                         "choose one")
    if (balance is not None or oversample is not None) and (
            config.mixup or config.pipeline != "tf.data" or config.strategy != "default"):
        how = "source balancing" if balance is not None else "over-sampling"
        raise SystemExit(f"error: recipe {recipe}: {how} needs the tf.data pipeline on one device, no mixup")
    if balance is None and oversample is None:
        result = training.train(config, work, write=False, show_progress=False)
    elif oversample is not None:
        run = training.start(config, work, write=False, show_progress=False)
        run.batches["train"], share = oversampled_train_batches(config, work, oversample)
        for phase in training.phases(config):
            training.fit_phase(run, phase)
        result = training.finish(run)
        extra = {"oversample": oversample, "draw_share": share}
    else:
        run = training.start(config, work, write=False, show_progress=False)
        train = manifest[(manifest.split == "train") & (manifest.index != "")]
        emotions = [Path(p).parent.name for p in train.index]
        class_w = training.class_weights(config, run.train_counts) or {}
        weights = source_weights(emotions, train.source.astype(str), balance) * np.array(
            [class_w.get(EMOTIONS.index(e), 1.0) for e in emotions])
        run.batches["train"] = weighted_train_batches(config, work, dict(zip(train.index, weights)))
        for phase in training.phases(config):
            training.fit_phase(run, phase)
        result = training.finish(run)
        cells = pd.DataFrame({"emotion": emotions, "source": train.source.astype(str).to_numpy(), "w": weights})
        extra = {"source_balance": balance, "sample_weight": "class weight × source weight (fit's class_weight unused)",
                 "face_weights": {f"{e}/{s}": {"faces": int(len(g)), "weight": round(float(g.w.iloc[0]), 3)}
                                  for (e, s), g in cells.groupby(["emotion", "source"])}}
    frames = []
    for split in ("val", "test"):
        paths, plain, mirror = views(result.model, work, split, result.model_record)
        frame = pd.DataFrame({"recipe": recipe, "fold": fold, "split": split, "path": paths,
                              "group": manifest.loc[paths, "group"].astype(str).to_numpy(),
                              "source": manifest.loc[paths, "source"].astype(str).to_numpy(),
                              "y_true": [EMOTIONS.index(Path(p).parent.name) for p in paths]})
        for view, probs in (("none", plain), ("flip", mirror)):
            logs = np.maximum(np.log(np.maximum(probs, 1e-30)), FLOOR).round(3)
            frame = pd.concat([frame, pd.DataFrame(logs, columns=log_columns(view))], axis=1)
        frames.append(frame)
    counts = pipelines.split_counts(work)["train"].reindex(list(EMOTIONS)).fillna(0).astype(int)
    rec = result.record
    return pd.concat(frames, ignore_index=True), {
        "train_seconds": rec["train_seconds"], "best_epoch": rec["best_epoch"],
        "train_counts": {e: int(counts[e]) for e in EMOTIONS}, "config": config.to_dict(),
        "machine": machine_name(workfolder.machine_info()), **extra}


def read_probabilities(out: Path) -> pd.DataFrame | None:
    """Every stored validation and test face of every recipe (``PROBABILITIES``, one file per recipe), or None."""
    paths = sorted(out.glob(PROBABILITIES.format(recipe="*")))
    if not paths:
        return None
    return pd.concat([workfolder.read_csv(p, dtype={"recipe": str, "path": str, "group": str, "source": str})
                      for p in paths], ignore_index=True)


def train_all(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / TRAININGS
    stored = read_probabilities(out)
    runs = json.loads(runs_path.read_text()) if runs_path.exists() else {
        "protocol": {"folds": args.folds, "seed": args.seed}, "trainings": {}}
    if (runs["protocol"]["folds"], runs["protocol"]["seed"]) != (args.folds, args.seed):
        raise SystemExit(f"error: {runs_path} holds folds {runs['protocol']['folds']}, seed "
                         f"{runs['protocol']['seed']}; run with those, or write to another --out")
    dataset = getattr(args, "dataset", None) or data.get_dataset(args.data_dir)  # main finds it before any work
    if runs.get("dataset") and runs["dataset"]["legend_sha256"] != dataset.legend_sha256:
        raise SystemExit(f"error: {runs_path} was trained on another dataset (legend sha256 "
                         f"{runs['dataset']['legend_sha256'][:12]}, this one {dataset.legend_sha256[:12]}); "
                         "write to another --out")
    for trained in runs["trainings"].values():
        for info in trained.values():
            info["machine"] = machine_of(info, runs)
    on_disk = set() if stored is None else set(zip(stored.recipe, stored.fold))
    # stored: recorded in the trainings file and its faces in the recipe's probabilities file (either may be lost)
    todo = [(r, i) for r in args.recipes for i in range(1, args.folds + 1)
            if str(i) not in runs["trainings"].get(r, {}) or (r, i) not in on_disk]
    if not todo:
        print("every (recipe, fold) asked for is stored already")
        return 0
    import compare  # the same folds as compare.py (this folder is on sys.path when run as a script)

    with tempfile.TemporaryDirectory(prefix="fer-recipes-") as tmp:
        base = Path(args.work_dir or tmp)
        works = compare.make_folds(dataset, base, args.folds, args.seed)
        runs["dataset"] = {"legend_sha256": dataset.legend_sha256, "pinned_upstream": dataset.is_pinned_upstream}
        for recipe, fold in todo:
            t0 = time.perf_counter()
            frame, info = train_recipe(works[fold - 1], fold, recipe, args.seed)
            if stored is not None:  # rows of an interrupted earlier try at this (recipe, fold) are replaced
                stored = stored[~((stored.recipe == recipe) & (stored.fold == fold))]
            stored = frame if stored is None else pd.concat([stored, frame], ignore_index=True)
            runs["trainings"].setdefault(recipe, {})[str(fold)] = info
            # after every training: an interrupted search keeps its work
            workfolder.write_csv(stored[stored.recipe == recipe], out / PROBABILITIES.format(recipe=recipe))
            workfolder.write_record(runs_path, runs)
            val = frame[frame.split == "val"]  # validation only: nothing here looks at the test faces
            acc = float((val[log_columns("none")].to_numpy().argmax(1) == val.y_true).mean())
            print(f"{recipe} fold {fold}/{args.folds}: trained in {info['train_seconds']:.0f} s "
                  f"({time.perf_counter() - t0:.0f} s in all), validation accuracy {acc:.3f}", flush=True)
    return 0


# --------------------------------------------------------------------------------------------------
# The search (no training)
# --------------------------------------------------------------------------------------------------


def decide(frame: pd.DataFrame, tta: str, tau: float, prior: np.ndarray) -> np.ndarray:
    """Predicted emotions of ``frame``'s faces under a test-time augmentation and a logit adjustment ``tau``:
    each view's softmax(log p − tau · log prior), averaged over the views, then the most probable emotion."""
    shift = tau * np.log(prior)
    probs = 0
    for view in ("none", "flip") if tta == "flip" else ("none",):
        z = frame[log_columns(view)].to_numpy(np.float64) - shift
        z = np.exp(z - z.max(axis=1, keepdims=True))
        probs = probs + z / z.sum(axis=1, keepdims=True)
    return np.asarray(probs).argmax(axis=1)


def prior_of(counts: dict) -> np.ndarray:
    """Training share of each emotion (an emotion with no training face counts as half a face)."""
    n = np.array([max(counts[e], 0.5) for e in EMOTIONS], dtype=np.float64)
    return n / n.sum()


def choose(table: pd.DataFrame, slack: float) -> tuple[str, dict]:
    """The rule: best mean of inner macro-F1 and balanced accuracy among candidates whose inner accuracy is at
    least the default's minus ``slack``; ties to the earlier row."""
    default = table.loc[candidate_name(*DEFAULT)]
    mask = table.accuracy >= default.accuracy - slack - 1e-12
    criterion = (table.macro_f1 + table.balanced_accuracy)[mask] / 2
    return criterion.idxmax(), {"criterion": "mean of inner macro-F1 and balanced accuracy",
                                "accuracy_floor": round(float(default.accuracy - slack), 4),
                                "eligible": mask.to_dict()}


def ensemble(frames: pd.DataFrame, trainings: dict, name: str, members) -> tuple[pd.DataFrame, dict]:
    """An ensemble as the search reads a trained recipe: its stored frame (each face's probabilities averaged
    over the members, per view, stored as logs) and its trainings entry (the members' training seconds summed;
    the same training faces)."""
    missing = [m for m in members if m not in trainings]
    if missing:
        raise SystemExit(f"error: the ensemble {name} needs the recipe(s) {', '.join(missing)}, which are not "
                         f"stored; train them first (--train --recipes {' '.join(missing)})")
    folds = sorted(trainings[DEFAULT[0]])
    for m in members:
        if sorted(trainings[m]) != folds:
            raise SystemExit(f"error: the ensemble {name} needs {m} on every fold: it is stored for folds "
                             f"{', '.join(sorted(trainings[m]))}, the default for {', '.join(folds)}; train it on "
                             f"every fold (--train --recipes {m})")
    keys = ["fold", "split", "path"]
    parts = [frames[frames.recipe == m].set_index(keys).sort_index() for m in members]
    if any(not part.index.equals(parts[0].index) for part in parts[1:]):
        raise SystemExit(f"error: the members of the ensemble {name} ({', '.join(members)}) are stored for "
                         "different faces; train them on the same folds and seed")
    out = parts[0][["group", "source", "y_true"]].copy()
    for view in TTAS:
        cols = log_columns(view)
        mean = sum(np.exp(part[cols].to_numpy(np.float64)) for part in parts) / len(parts)
        out[cols] = np.log(np.maximum(mean, np.exp(FLOOR)))
    runs = {fold: {"train_counts": trainings[members[0]][fold]["train_counts"], "members": list(members),
                   "train_seconds": round(sum(trainings[m][fold]["train_seconds"] for m in members), 3)}
            for fold in trainings[members[0]]}
    return out.reset_index().assign(recipe=name), runs


def search(frames: pd.DataFrame, trainings: dict, slack: float) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """Per fold, every candidate's inner (validation) scores and the choice; the chosen and the default
    candidates' test predictions, pooled over folds."""
    recipes = [r for r in (*RECIPES, *ENSEMBLES) if r in trainings]
    folds = sorted({int(f) for f in trainings[DEFAULT[0]]})
    for r in recipes:
        if sorted(int(f) for f in trainings[r]) != folds:
            raise SystemExit(f"error: recipe {r} is stored for folds {sorted(trainings[r])}, the default for "
                             f"{folds}; train it on every fold (--train --recipes {r}) or leave it out")
    parts = dict(iter(frames.groupby(["recipe", "fold", "split"])))  # each (recipe, fold, split) filtered once
    rows, chosen, tests = [], {}, []
    for fold in folds:
        inner = {}
        for recipe, tta, tau in candidates(recipes):
            prior = prior_of(trainings[recipe][str(fold)]["train_counts"])
            val = parts[(recipe, fold, "val")]
            inner[candidate_name(recipe, tta, tau)] = evaluation.scores(val.y_true.to_numpy(),
                                                                        decide(val, tta, tau, prior), METRICS)
        table = pd.DataFrame(inner).T
        pick, rule = choose(table, slack)
        chosen[fold] = pick
        for name, s in inner.items():
            rows.append({"fold": fold, "candidate": name, **{m: round(v, 4) for m, v in s.items()},
                         "eligible": bool(rule["eligible"][name]), "chosen": name == pick})
        for role, name in (("default", candidate_name(*DEFAULT)), ("chosen", pick)):
            recipe, tta, tau = next(c for c in candidates(recipes) if candidate_name(*c) == name)
            prior = prior_of(trainings[recipe][str(fold)]["train_counts"])
            test = parts[(recipe, fold, "test")]
            tests.append(test[["fold", "path", "group", "source", "y_true"]].assign(
                role=role, candidate=name, y_pred=decide(test, tta, tau, prior)))
    return pd.DataFrame(rows), {"chosen_per_fold": chosen, "criterion": rule["criterion"]}, \
        pd.concat(tests, ignore_index=True)


def pooled_report(tests: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Pooled test figures of the default and of the chosen candidates, and chosen − default on the same faces
    (per metric and per emotion's F1; ``compare.paired``, matched by fold and face), with person-bootstrap
    intervals."""
    import compare

    a = tests[tests.role == "chosen"].reset_index(drop=True)
    b = tests[tests.role == "default"].set_index(["fold", "path"]).loc[list(zip(a.fold, a.path))].reset_index()
    y, groups = a.y_true.to_numpy(), a.group.astype(str).to_numpy()
    out = {"n": int(len(a)), "n_people": int(a.group.nunique()), "pooled": {}, "paired": {}, "paired_f1": {}}
    for role, frame in (("default", b), ("chosen", a)):
        samples, _ = evaluation.bootstrap_samples(y, frame.y_pred.to_numpy(), METRICS, groups, n_boot, seed)
        value = evaluation.scores(y, frame.y_pred.to_numpy(), METRICS)
        per_fold = [evaluation.scores(f.y_true.to_numpy(), f.y_pred.to_numpy(), METRICS)
                    for _, f in frame.groupby("fold")]
        out["pooled"][role] = {m: {"value": round(value[m], 4), "ci": evaluation.ci95(samples[m]),
                                   "per_fold": [round(f[m], 4) for f in per_fold]} for m in METRICS}
        out["pooled"][role]["per_source_accuracy"] = {
            s: round(float((g.y_true == g.y_pred).mean()), 4) for s, g in frame.groupby("source")}
        report = evaluation.compute_metrics(y, frame.y_pred.to_numpy())
        out["pooled"][role]["f1_per_emotion"] = {e: round(c["f1"], 3) for e, c in report["per_class"].items()}
    boot = argparse.Namespace(n_boot=n_boot, seed=seed)
    out["paired"] = compare.paired(a, b, boot, METRICS)
    out["paired_f1"] = compare.paired(a, b, boot, compare.EMOTION_F1)
    return out


#: A source with fewer test faces than this (pooled over the folds) is left out of ``by_source``.
MIN_SOURCE_FACES = 50
SOURCE_METRICS = ("accuracy", "balanced_accuracy")


def as_trained(frames: pd.DataFrame, recipe: str) -> pd.DataFrame:
    """A recipe's test faces with its prediction as trained (no test-time augmentation, tau 0)."""
    test = frames[(frames.recipe == recipe) & (frames.split == "test")]
    no_prior = np.full(len(EMOTIONS), 1 / len(EMOTIONS))  # tau 0: the prior plays no part
    return test[["fold", "path", "group", "source", "y_true"]].assign(y_pred=decide(test, "none", 0.0, no_prior))


def by_source(frames: pd.DataFrame, recipes, n_boot: int, seed: int) -> dict:
    """The source shortcut, measured: each recipe's test accuracy and balanced accuracy per image source (as
    trained, pooled over the folds, person-bootstrap intervals), and recipe − today's default on the same faces
    of that source. A measurement on test faces, not a choice: the search never reads it."""
    import compare

    base = as_trained(frames, DEFAULT[0])
    boot = argparse.Namespace(n_boot=n_boot, seed=seed)
    sizes = base.source.value_counts()
    kept = sorted(s for s, n in sizes.items() if n >= MIN_SOURCE_FACES)
    out = {"what": "test accuracy and balanced accuracy per image source of each recipe as trained (tta none, "
                   "tau 0), pooled over the outer folds; recipe − default paired on the same faces",
           "faces": {s: int(sizes[s]) for s in sorted(sizes.index)},
           "people": {s: int(g.group.nunique()) for s, g in base.groupby("source")},
           "left_out": sorted(set(sizes.index) - set(kept)), "min_faces": MIN_SOURCE_FACES, "recipes": {}}
    for recipe in recipes:
        pred = as_trained(frames, recipe)
        out["recipes"][recipe] = {}
        for source in kept:
            g = pred[pred.source == source]
            y, y_pred = g.y_true.to_numpy(), g.y_pred.to_numpy()
            # same_classes=False: with a few people per source, insisting that every resample holds each emotion
            # would keep drawing the one or two people who carry it, and hide their variance
            samples, _ = evaluation.bootstrap_samples(y, y_pred, SOURCE_METRICS, g.group.astype(str).to_numpy(),
                                                      n_boot, seed, same_classes=False)
            value = evaluation.scores(y, y_pred, SOURCE_METRICS)
            entry = {m: {"value": round(value[m], 4), "ci": evaluation.ci95(samples[m])} for m in SOURCE_METRICS}
            if recipe != DEFAULT[0]:
                entry["minus_default"] = compare.paired(g, base[base.source == source], boot, SOURCE_METRICS)
            out["recipes"][recipe][source] = entry
    return out


def as_trained_paired(frames: pd.DataFrame, recipes, n_boot: int, seed: int) -> dict:
    """Each recipe (or ensemble) as trained (tta none, tau 0) on the outer test faces, pooled, and minus today's
    default on the same faces: what it measures before any choice. A measurement on test faces; no choice reads
    it."""
    import compare

    base = as_trained(frames, DEFAULT[0])
    boot = argparse.Namespace(n_boot=n_boot, seed=seed)
    out = {}
    for recipe in recipes:
        pred = as_trained(frames, recipe)
        value = evaluation.scores(pred.y_true.to_numpy(), pred.y_pred.to_numpy(), METRICS)
        out[recipe] = {"pooled": {m: round(value[m], 4) for m in METRICS},
                       "minus_default": compare.paired(pred, base, boot, METRICS)}
    return out


def markdown(report: dict, table: pd.DataFrame) -> str:
    info, res = report["trained_on"], report["result"]
    machines = list(machines_trained(report)) or [machine_name(info)]  # the stamp: the last training's machine
    lines = [(f"Trained on several machines (the next line); the last training on {machine_name(info)}"
              if len(machines) > 1 else f"Trained on: {machines[0]}")
             + f"; TensorFlow {info.get('tensorflow')}, Keras {info.get('keras')} ({report['trainings_written_at']}).",
             *machine_lines(report),
             f"Protocol: {report['protocol']['folds']} person-disjoint outer folds (compare.py's, seed "
             f"{report['protocol']['seed']}); each chooses on its own validation people only. Rule: "
             f"{report['rule']['criterion']}, among candidates with inner accuracy ≥ the default's − "
             f"{report['rule']['accuracy_slack']}. Intervals: person bootstrap, 95 %.", "",
             "Chosen per fold: " + "; ".join(f"fold {f}: `{c}`" for f, c in report["choice"][
                 "chosen_per_fold"].items()) + ". " + report["verdict"], "",
             "Outer test faces, pooled over the folds:", "",
             "| | accuracy | macro-F1 | balanced accuracy |", "|---|---|---|---|"]
    for role, label in (("default", "today's default (`ours, tta none, tau 0`)"), ("chosen", "the chosen recipes")):
        r = res["pooled"][role]
        lines.append(f"| {label} | " + " | ".join(f"{r[m]['value']:.3f} [{r[m]['ci'][0]:.3f}, {r[m]['ci'][1]:.3f}]"
                                                 for m in METRICS) + " |")
    lines.append("| chosen − default, paired | " + " | ".join(
        f"{res['paired'][m]['value']:+.3f} [{res['paired'][m]['ci_low']:+.3f}, {res['paired'][m]['ci_high']:+.3f}]"
        for m in METRICS) + " |")
    lines += ["", "Per-emotion F1 (pooled) and the paired difference:", "",
              "| emotion | default | chosen | chosen − default |", "|---|---|---|---|"]
    for e in EMOTIONS:
        d = res["paired_f1"][e]
        lines.append(f"| {e} | {res['pooled']['default']['f1_per_emotion'][e]:.2f} | "
                     f"{res['pooled']['chosen']['f1_per_emotion'][e]:.2f} | {d['value']:+.3f} "
                     f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] |")
    lines += ["", "Accuracy per source: " + "; ".join(
        f"{s} {res['pooled']['default']['per_source_accuracy'][s]:.3f} → "
        f"{res['pooled']['chosen']['per_source_accuracy'][s]:.3f}" for s in res["pooled"]["default"][
            "per_source_accuracy"]) + ".", "",
              *source_lines(report), "",
              *([f"Ensembles: {', '.join(f'`{n}` = ' + ' + '.join(m) for n, m in report['ensembles'].items())}"
                 " (each face's probabilities averaged over the members). An ensemble trains every member: its "
                 "training seconds are their sum. Ensembles over the budget of "
                 f"{report['budget_seconds']} s per fold (in their slowest fold): "
                 + (", ".join(f"`{r}`" for r in report["over_budget"]) or "none") + ".", "",
                 "Each ensemble as trained (tta none, tau 0) on the outer test faces, pooled, and minus today's "
                 "default on the same faces (a measurement; no choice reads it):", "",
                 "| ensemble | accuracy | macro-F1 | balanced accuracy |", "|---|---|---|---|",
                 *(f"| `{n}` | " + " | ".join(
                     f"{e['pooled'][m]:.3f}; {e['minus_default'][m]['value']:+.3f} "
                     f"[{e['minus_default'][m]['ci_low']:+.3f}, {e['minus_default'][m]['ci_high']:+.3f}]"
                     for m in METRICS) + " |" for n, e in report["ensembles_as_trained"].items()), ""]
                if report.get("ensembles") else []),
              "Training seconds per fold: " + "; ".join(
                  f"`{r}` " + ", ".join(f"{v:.0f}" for v in s) for r, s in report["train_seconds"].items()) + ".",
              "", "The recipe table: every candidate's inner (validation) scores, fold by fold "
              "(✓ chosen; – below the accuracy floor):", "",
              "| candidate | " + " | ".join(f"fold {f} acc / F1 / bal" for f in sorted(table.fold.unique())) + " |",
              "|---|" + "---|" * table.fold.nunique()]
    for name, rows in table.groupby("candidate", sort=False):
        cells = [f"{r.accuracy:.3f} / {r.macro_f1:.3f} / {r.balanced_accuracy:.3f}"
                 + (" ✓" if r.chosen else "" if r.eligible else " –") for r in rows.itertuples()]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def machine_name(info: dict) -> str:
    """A machine as training seconds tell it apart: its processor and its number of cores."""
    return f"{info.get('processor', 'unknown')}, {info.get('cpu_count', '?')} cores"


def machine_of(training: dict, runs: dict) -> str:
    """The machine a stored training ran on; trained before trainings named theirs: the trainings file's stamp."""
    return training.get("machine") or (machine_name(runs["machine"]) if "machine" in runs else "unknown")


def machines_trained(report: dict) -> dict[str, list[str]]:
    """Each machine (or machines) → the recipes trained on it, in the recipes' order."""
    by_machine = {}
    for recipe, machines in report.get("machines", {}).items():
        by_machine.setdefault(" and ".join(machines), []).append(f"`{recipe}`")
    return by_machine


def machine_lines(report: dict) -> list[str]:
    """Which machine trained which recipe, when they were not all trained on one: training seconds compare only
    within one machine."""
    by_machine = machines_trained(report)
    if len(by_machine) < 2:
        return []
    return ["Recipes by machine: " + "; ".join(f"{', '.join(r)} on {m}" for m, r in by_machine.items()) + "."]


def source_lines(report: dict) -> list[str]:
    """The by-source table of the markdown report."""
    shortcut = report.get("by_source")
    if not shortcut:
        return []
    sources = list(next(iter(shortcut["recipes"].values())))
    lines = ["The source shortcut: each recipe as trained (tta none, tau 0), test faces per source ("
             + ", ".join(f"{s} {shortcut['faces'][s]:,} of {shortcut['people'][s]:,} people" for s in sources)
             + "; a source of few people has rough intervals; left out, too few faces: "
             + (", ".join(f"{s} {shortcut['faces'][s]}" for s in shortcut["left_out"]) or "none") + "):", "",
             "| recipe | " + " | ".join(f"{s} accuracy | {s} balanced acc" for s in sources) + " |",
             "|---|" + "---|---|" * len(sources)]
    for recipe, per in shortcut["recipes"].items():
        cells = []
        for s in sources:
            for m in SOURCE_METRICS:
                v = per[s][m]
                cell = f"{v['value']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]"
                if "minus_default" in per[s]:
                    d = per[s]["minus_default"][m]
                    cell += f"; {d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                cells.append(cell)
        lines.append(f"| `{recipe}` | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("(After the semicolon: the recipe − `ours`, paired on the same faces.)")
    return lines


def verdict(report: dict) -> str:
    """Whether the chosen recipes beat today's default by the issue's bar: paired intervals above 0 on
    macro-F1 and balanced accuracy, and not wholly below 0 on accuracy."""
    paired = report["result"]["paired"]
    chosen = set(report["choice"]["chosen_per_fold"].values())
    if chosen == {candidate_name(*DEFAULT)}:
        return "Every fold chose today's default: the default stays."
    wins = paired["macro_f1"]["ci_low"] > 0 and paired["balanced_accuracy"]["ci_low"] > 0 \
        and paired["accuracy"]["ci_high"] >= 0
    return ("The chosen recipes beat today's default (paired intervals above 0 on macro-F1 and balanced "
            "accuracy, accuracy not below)." if wins else
            "The chosen recipes do not beat today's default by the bar (paired intervals above 0 on macro-F1 and "
            "balanced accuracy, accuracy not below): the default stays.")


def into_compare(out: Path, report: dict) -> None:
    """Put the search's paired result into ``compare.json`` / ``compare.md`` beside the other configurations
    (they pair on the same faces: ``compare.py``'s folds and seed)."""
    import compare

    path = out / "compare.json"
    main_report = json.loads(path.read_text())
    if (main_report["protocol"]["folds"], main_report["protocol"]["seed"]) != (
            report["protocol"]["folds"], report["protocol"]["seed"]):
        print(f"note: {path.name} ran other folds or another seed; the search's result is not merged into it")
        return
    result = report["result"]
    main_report["recipe_search"] = {
        "file": "recipe_search.json", "written_at": report["written_at"],
        "chosen_per_fold": report["choice"]["chosen_per_fold"], "verdict": report["verdict"],
        "ours_retrained": "today's default trained again by the search (same folds and seed), paired with the "
                          "chosen recipes of that same run",
        "chosen_minus_ours": result["paired"], "chosen_minus_ours_f1_per_emotion": result["paired_f1"]}
    workfolder.write_record(path, main_report, stamp=False)
    (out / "compare.md").write_text(compare.markdown_report(main_report))


def search_all(args) -> int:
    out = Path(args.out)
    runs_path = out / TRAININGS
    frames = read_probabilities(out)
    train = "python benchmarks/recipe_search.py --train" + (
        "" if out.resolve() == RESULTS.resolve() else f" --out {args.out}")  # how to store what is missing
    if frames is None or not runs_path.exists():
        raise SystemExit(f"error: no stored trainings in {out} ({PROBABILITIES.format(recipe='*')}, {TRAININGS}); "
                         f"run `{train}` first")
    runs = json.loads(runs_path.read_text())
    stored = set(runs["trainings"])
    if args.recipes or set(runs["trainings"]) - set(SEARCHED):  # the search among these recipes only
        if not args.recipes:
            args.recipes = [r for r in SEARCHED if r in runs["trainings"]]
            print(f"note: the search among {' '.join(args.recipes)}; stored too, not searched (name them with "
                  f"--recipes): {' '.join(sorted(set(runs['trainings']) - set(SEARCHED)))}")
        unknown = [r for r in args.recipes if r not in runs["trainings"]]
        if unknown:
            raise SystemExit(f"error: --recipes {' '.join(unknown)}: not stored in {out}; train first: "
                             f"`{train} --recipes {' '.join(unknown)}`")
        runs["trainings"] = {r: v for r, v in runs["trainings"].items() if r in args.recipes}
        frames = frames[frames.recipe.isin(args.recipes)]
    on_disk = set(zip(frames.recipe, frames.fold.astype(int)))
    lost = {r: sorted(int(f) for f in folds if (r, int(f)) not in on_disk) for r, folds in runs["trainings"].items()}
    lost = {r: folds for r, folds in lost.items() if folds}
    if lost:
        raise SystemExit(f"error: {TRAININGS} lists trainings whose faces are not in {out}: " + "; ".join(
            f"{r} fold(s) {', '.join(map(str, folds))} ({PROBABILITIES.format(recipe=r)})" for r, folds in lost.items())
            + f". Put the file(s) back, or train them again: `{train} --recipes {' '.join(lost)}`")
    wanted = sorted({m for members in ENSEMBLES.values() for m in members} - set(runs["trainings"]))
    if args.ensembles and set(wanted) - stored:
        missing = sorted(set(wanted) - stored)
        raise SystemExit(f"error: --ensembles needs the recipe(s) {', '.join(missing)}, which are not stored in "
                         f"{out}; train them first: `{train} --recipes {' '.join(missing)}`")
    if args.ensembles and wanted:  # stored, but left out by --recipes
        raise SystemExit(f"error: --ensembles averages the recipe(s) {', '.join(wanted)}, which --recipes leaves "
                         f"out; name them too: --recipes {' '.join(args.recipes)} {' '.join(wanted)}")
    if DEFAULT[0] not in runs["trainings"]:
        raise SystemExit(f"error: {runs_path.name} has no `{DEFAULT[0]}` (today's default) to compare with; "
                         f"run --train --recipes {DEFAULT[0]}")
    if frames.duplicated(["recipe", "fold", "split", "path"]).any():
        raise SystemExit(f"error: {PROBABILITIES.format(recipe='*')} hold a face twice for one recipe and fold; "
                         "train that (recipe, fold) again with --train, or remove the file's duplicate rows")
    trainings, stem = dict(runs["trainings"]), args.name or "recipe_search"
    if args.ensembles:  # candidates beside the trained recipes; a report of its own (over the training budget)
        stem = args.name or "recipe_search_ensembles"
        for name, members in ENSEMBLES.items():
            frame, trainings[name] = ensemble(frames, runs["trainings"], name, members)
            frames = pd.concat([frames, frame], ignore_index=True)
        as_trained_ensembles = as_trained_paired(frames, list(ENSEMBLES), args.n_boot, args.seed)
    table, choice, tests = search(frames, trainings, args.accuracy_slack)
    result = pooled_report(tests, args.n_boot, args.seed)
    val = frames[(frames.recipe == DEFAULT[0]) & (frames.split == "val")]
    validation_faces = {str(f): {"faces": int(len(g)), "per_emotion": {
        e: int((g.y_true == k).sum()) for k, e in enumerate(EMOTIONS)}} for f, g in val.groupby("fold")}
    report = {"protocol": {**runs["protocol"], "inner_split": "each outer fold's validation people",
                           "interval": "person bootstrap, 95 %", "n_boot": args.n_boot,
                           "ci_method": evaluation.CI_METHOD},
              "dataset": runs.get("dataset"), "trained_on": runs["machine"],
              # each recipe's machine(s): a recipe added later may have trained on another machine than the first
              "machines": {r: sorted({machine_of(f, runs) for f in folds.values()})
                           for r, folds in runs["trainings"].items()},
              "trainings_written_at": runs["written_at"],
              "rule": {"criterion": choice["criterion"], "accuracy_slack": args.accuracy_slack,
                       "ties": "the earlier candidate"},
              "recipes": {r: RECIPES[r] for r in runs["trainings"] if r in RECIPES}, "ttas": list(TTAS),
              **({"ensembles": {n: list(m) for n, m in ENSEMBLES.items()}, "budget_seconds": BUDGET_SECONDS,
                  "over_budget": [r for r in ENSEMBLES if max(f["train_seconds"] for f in trainings[r].values())
                                  > BUDGET_SECONDS],
                  "ensembles_as_trained": as_trained_ensembles} if args.ensembles else {}),
              "taus": list(TAUS), "choice": {"chosen_per_fold": {str(k): v for k, v in
                                                                   choice["chosen_per_fold"].items()}},
              "train_seconds": {r: [v["train_seconds"] for _, v in sorted(trainings[r].items())]
                                for r in trainings},
              "validation_faces": validation_faces,
              "result": result, "recipe_table": table.to_dict(orient="records"),
              "by_source": by_source(frames, [r for r in RECIPES if r in runs["trainings"]], args.n_boot,
                                     args.seed),
              "command": " ".join(["python benchmarks/recipe_search.py", *sys.argv[1:]])}
    report["verdict"] = verdict(report)
    workfolder.write_record(out / f"{stem}.json", report)
    report = json.loads((out / f"{stem}.json").read_text())
    if (out / "compare.json").exists() and stem == "recipe_search":  # the main search's result, not a variant's
        into_compare(out, report)
    text = markdown(report, table)
    (out / f"{stem}.md").write_text(text)
    print(text)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", action="store_true", help="train the recipes on the folds (stores their "
                        "validation and test probabilities); without it, only the search (no training)")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES),
                        help="with --train: the recipes to train (default: ours cw1 sb aug focal); without: the "
                        f"trained recipes the search chooses among (default: {' '.join(SEARCHED)}; ours is needed)")
    parser.add_argument("--name", help="the report's file name, without .json/.md (default recipe_search, or "
                        "recipe_search_ensembles with --ensembles); only the default writes into compare.json")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", help="dataset root (default: $FER_DATA_DIR, else the download cache)")
    parser.add_argument("--work-dir", help="scratch folder for the folds (default: a temporary one, removed)")
    parser.add_argument("--accuracy-slack", type=float, default=0.01,
                        help="eligible candidates keep inner accuracy ≥ the default's minus this")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--ensembles", action="store_true",
                        help="the search with ensembles among the candidates too: ours+aug, ours+cw1, ours+sb and "
                        "ours+cw1+sb+aug, each face's probabilities averaged over the trained recipes (so ours, cw1, "
                        "sb and aug must be stored); no training. Writes recipe_search_ensembles.json/.md and "
                        "leaves compare.json alone (an ensemble is over the 10-min training budget)")
    _checks.add_out(parser, RESULTS, "where the stored trainings and the report are")
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error("--folds must be at least 2 (outer folds)")
    if args.name is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", args.name):
        _checks.refuse(f"--name {args.name}: letters, digits, _ and - only (a file name without its extension)")
    if args.train:
        args.recipes = args.recipes or ["ours", "cw1", "sb", "aug", "focal"]
    _checks.out_folder(args.out, what="a folder for the stored trainings and the report")
    if args.train:
        if args.work_dir:
            _checks.out_folder(args.work_dir, "--work-dir", "a scratch folder")
        args.dataset = _checks.dataset(args.data_dir)
        for path, option in ((args.out, "--out"), (args.work_dir, "--work-dir")):
            if path:
                _checks.outside(path, args.dataset.root, option)
    return train_all(args) if args.train else search_all(args)


if __name__ == "__main__":
    _checks.stop_as_interrupt()  # kill, timeout: temporary folders are removed as on Ctrl-C
    sys.exit(main())
