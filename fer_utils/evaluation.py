"""Step 6 — evaluate the trained model on the test split, beside the majority-class baseline.

``evaluate`` predicts ``split/test`` (tf.data, no augmentation, no shuffling), computes the metrics with
scikit-learn, bootstraps 95 % intervals, breaks accuracy down by image source, and writes
``metrics.json`` (atomically) and ``predictions.csv`` into the work folder.

On data this imbalanced (neutral and happiness are ~90 % of the faces) accuracy alone flatters: a model
that always answers the most frequent training class scores ~50 %. Macro-F1 and balanced accuracy weigh
every emotion equally, so they show whether the rare ones are recognised at all.

The model always has 8 outputs, but a dataset may lack some emotions (FER2013 has no contempt). Macro-F1
averages over the emotions the model was trained on (``trained_labels``: those with training faces), and
``metrics.json`` names them (``scored_classes``); on the muxspace data that is all 8.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from fer_utils import EMOTIONS, models, pipelines
from fer_utils.workfolder import (
    MANIFEST,
    METRICS,
    PREDICTIONS,
    REPO_ROOT,
    display_path,
    read_record,
    require,
    sha256_of,
    write_csv,
    write_record,
)

LABELS = list(range(len(EMOTIONS)))
#: The committed five-fold learning curve and source measurement (``benchmarks/learning_curve.py``).
LEARNING_CURVE = REPO_ROOT / "benchmarks" / "results" / "learning_curve.json"
#: The committed nested recipe search (``benchmarks/recipe_search.py``).
RECIPE_SEARCH = REPO_ROOT / "benchmarks" / "results" / "recipe_search.json"
#: The three scores every comparison reports.
SCORES = ("accuracy", "macro_f1", "balanced_accuracy")


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def _confusion(y_true, y_pred, k: int = len(EMOTIONS)) -> np.ndarray:
    return np.bincount(np.asarray(y_true) * k + np.asarray(y_pred), minlength=k * k).reshape(k, k)


def _from_confusion(cm: np.ndarray, labels=None) -> dict:
    """accuracy, macro-F1 over ``labels`` (default all classes; 0 for a class never predicted nor present)
    and balanced accuracy over the classes present — the same numbers scikit-learn gives, from a confusion
    matrix."""
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
    f1 = f1 if labels is None else f1[np.asarray(labels, dtype=int)]
    return {"accuracy": tp.sum() / cm.sum(), "macro_f1": f1.mean(), "balanced_accuracy": recall[present].mean()}


def metric_function(name: str, labels=None):
    """``fn(y_true, y_pred) -> float`` for ``"accuracy"``, ``"macro_f1"`` (averaged over ``labels``, default
    all 8) or ``"balanced_accuracy"``."""
    if name not in ("accuracy", "macro_f1", "balanced_accuracy"):
        raise ValueError(f"unknown metric {name!r}")
    return lambda y_true, y_pred: float(_from_confusion(_confusion(y_true, y_pred), labels)[name])


def trained_labels(train_counts) -> list[int]:
    """The class indices the model was trained on: those with training faces (all 8 when ``train_counts``
    is None). Macro-F1 averages over these; an emotion the dataset lacks would otherwise count as F1 0."""
    if train_counts is None:
        return list(LABELS)
    counts = np.asarray(train_counts)
    return [k for k in LABELS if counts[k] > 0]


#: What the intervals mean, as metrics.json and the notebooks say it.
CI_METHOD = ("percentile bootstrap over people: each resample draws test people with replacement and keeps all "
             "of a person's test faces together; a resample that lacks an emotion present in the test split is "
             "drawn again, so balanced accuracy always averages over the same emotions")


def bootstrap_samples(y_true, y_pred, metrics=("accuracy",), groups=None, n: int = 1000, seed: int = 42,
                      same_classes: bool = True, labels=None) -> tuple[dict[str, np.ndarray], int]:
    """``n`` bootstrap values of each metric, and how many resamples were drawn again.

    ``groups`` (e.g. the person of each face): resample whole groups, with all their faces; without it,
    faces are resampled one by one. ``same_classes``: a resample lacking a class present in ``y_true`` is
    drawn again (up to 100 times each), so a metric averaging over present classes (balanced accuracy)
    averages over the same ones in every resample. ``metrics`` are names (``metric_function``, macro-F1
    over ``labels``) or ``fn(y_true, y_pred) -> float``.
    """
    fns = {m if isinstance(m, str) else getattr(m, "__name__", "custom"):
           metric_function(m, labels) if isinstance(m, str) else m for m in metrics}
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if groups is None:
        units = [np.array([i]) for i in range(len(y_true))]
    else:
        _, inverse = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.flatnonzero(np.diff(inverse[order])) + 1
        units = np.split(order, bounds)
    present = set(np.unique(y_true).tolist())
    rng = np.random.default_rng(seed)
    values = {name: np.empty(n) for name in fns}
    redrawn = 0
    for i in range(n):
        for _ in range(100):
            idx = np.concatenate([units[u] for u in rng.integers(0, len(units), len(units))])
            if not same_classes or set(np.unique(y_true[idx]).tolist()) == present:
                break
            redrawn += 1
        for name, fn in fns.items():
            values[name][i] = fn(y_true[idx], y_pred[idx])
    return values, redrawn


def bootstrap_ci(y_true, y_pred, metric="accuracy", n: int = 1000, seed: int = 42,
                 level: float = 0.95, groups=None, labels=None) -> list[float]:
    """Percentile bootstrap interval ``[lo, hi]`` of ``metric`` (see ``bootstrap_samples``): over people
    when ``groups`` gives each face's person, else over faces.

    ``metric`` is a name (``metric_function``) or any ``fn(y_true, y_pred) -> float``.
    """
    if len(y_true) == 0:
        return [float("nan"), float("nan")]
    values, _ = bootstrap_samples(y_true, y_pred, (metric,), groups, n, seed, labels=labels)
    v = next(iter(values.values()))
    alpha = (1 - level) / 2
    return [float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))]


def scores(y_true, y_pred, metrics=SCORES) -> dict[str, float]:
    """``{metric: value}`` for the named metrics (``metric_function``'s names)."""
    return {m: float(metric_function(m)(y_true, y_pred)) for m in metrics}


def ci95(samples) -> list[float]:
    """The 95 % percentile interval of bootstrap values, rounded to 4 places: ``[low, high]`` (the figure every
    benchmark report writes)."""
    return [round(float(q), 4) for q in np.quantile(samples, [0.025, 0.975])]


def paired_difference_ci(y_true, pred_a, pred_b, metric="accuracy", groups=None, n: int = 1000, seed: int = 42,
                         level: float = 0.95, labels=None) -> dict:
    """``metric(a) − metric(b)`` on the same faces, with a paired bootstrap interval (the same resampled
    people score both models)."""
    fn = metric_function(metric, labels) if isinstance(metric, str) else metric
    y_true, pred_a, pred_b = np.asarray(y_true), np.asarray(pred_a), np.asarray(pred_b)
    both = np.concatenate([pred_a[:, None], pred_b[:, None]], axis=1)
    diff = lambda t, p: fn(t, p[:, 0]) - fn(t, p[:, 1])  # noqa: E731 - a small closure for bootstrap_samples
    values, _ = bootstrap_samples(y_true, both, (diff,), groups, n, seed)
    v = next(iter(values.values()))
    alpha = (1 - level) / 2
    return {"value": float(diff(y_true, both)), "ci_low": float(np.quantile(v, alpha)),
            "ci_high": float(np.quantile(v, 1 - alpha))}


# ---- generated from notebooks/06_evaluate_model.ipynb, cell 06-n08 ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def compute_metrics(y_true, y_pred, class_names=EMOTIONS, labels=None) -> dict:
    """scikit-learn's accuracy, macro-F1, balanced accuracy, per-class scores and
    confusion matrix.

    ``labels``: the class indices macro-F1 averages over — the emotions the model was
    trained on (``trained_labels``); default all 8. The report and the matrix always
    cover all 8.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
    )

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    scored = list(LABELS) if labels is None else [int(k) for k in labels]
    # a class predicted but absent from the test split is expected here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y_true, y_pred)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=scored, average="macro", zero_division=0)
        ),
        "balanced_accuracy": float(balanced),
        "scored_classes": [class_names[k] for k in scored],
        "per_class": per_class_scores(y_true, y_pred, class_names),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=LABELS).tolist(),
    }
# ---- end of generated code (notebooks/06_evaluate_model.ipynb, cell 06-n08) ----


def majority_baseline(train_counts, y_true, class_names=EMOTIONS) -> dict:
    """Always answer the most frequent TRAINING class; its metrics on the test labels (macro-F1 over the
    classes with training faces, as the model's)."""
    majority = int(np.argmax(np.asarray(train_counts)))
    y_pred = np.full(len(y_true), majority)
    m = compute_metrics(y_true, y_pred, class_names, labels=trained_labels(train_counts))
    return {"predicts": class_names[majority], "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
            "balanced_accuracy": m["balanced_accuracy"]}


# --------------------------------------------------------------------------------------------------
# Predicting and evaluating
# --------------------------------------------------------------------------------------------------


def load_model(path: str | os.PathLike):
    """Load a ``.keras`` model and its record (raises an error naming notebook 05 when it is missing)."""
    return models.load(require(Path(path), "train", "The trained model"))


# ---- generated from notebooks/06_evaluate_model.ipynb, cell 06-n05 ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def predict_split(
    model,
    work_dir: str | os.PathLike,
    split: str = "test",
    record: models.ModelRecord | None = None,
    batch_size: int = 256,
) -> pd.DataFrame:
    """One row per file of a split (no augmentation, file order): ``path`` (relative
    to the work folder), true and predicted class, confidence and every emotion's
    probability. Faces are prepared as ``record`` says (size, colour mode,
    resizing); ``record.tta == "flip"`` averages each face with its mirror image."""
    record = record or models.ModelRecord.from_model(model)
    ds, files = pipelines.directory_dataset(
        work_dir, split, record.image_size, record.color_mode, record.interpolation
    )
    probs = np.zeros((0, len(EMOTIONS)), dtype=np.float32)
    if files:
        batches = ds.map(lambda x, y: x).batch(batch_size).as_numpy_iterator()
        probs = np.concatenate(
            [models.with_tta(model.predict_on_batch, b, record.tta) for b in batches]
        )
    y_true = np.array([EMOTIONS.index(Path(f).parent.name) for f in files], dtype=int)
    y_pred = probs.argmax(axis=1)
    out = pd.DataFrame(
        {
            "path": [Path(os.path.relpath(f, work_dir)).as_posix() for f in files],
            "true": [EMOTIONS[i] for i in y_true],
            "pred": [EMOTIONS[i] for i in y_pred],
            "confidence": probs.max(axis=1),
            "y_true": y_true,
            "y_pred": y_pred,
        }
    )
    for k, e in enumerate(EMOTIONS):
        out[f"p_{e}"] = probs[:, k]
    return out
# ---- end of generated code (notebooks/06_evaluate_model.ipynb, cell 06-n05) ----


def people_of(predictions: pd.DataFrame, manifest: pd.DataFrame | None):
    """The person (manifest ``group``: people merged across identical files) of each predicted face, or None
    when the manifest does not cover every face."""
    if manifest is None or "group" not in manifest or "path" not in manifest:
        return None
    by_path = dict(zip(manifest["path"], manifest["group"]))
    groups = [by_path.get(p) for p in predictions["path"]]
    return None if any(g is None or g == "" for g in groups) else np.asarray(groups, dtype=str)


def per_source_table(predictions: pd.DataFrame, manifest: pd.DataFrame | None, labels=None) -> pd.DataFrame:
    """Test faces, accuracy and macro-F1 (over ``labels``, default all 8) per image source (LFW, IMFDB, other)
    from the manifest."""
    if manifest is None or "source" not in manifest or "path" not in manifest:
        return pd.DataFrame(columns=["faces", "accuracy", "macro_f1", "most frequent emotions"])
    merged = predictions.merge(manifest[["path", "source"]], on="path", how="left")
    merged["source"] = merged["source"].fillna("unknown")
    rows = []
    for source, g in merged.groupby("source"):
        m = _from_confusion(_confusion(g.y_true, g.y_pred), labels)
        rows.append({"source": source, "faces": len(g), "accuracy": round(float(m["accuracy"]), 4),
                     "macro_f1": round(float(m["macro_f1"]), 4),
                     "most frequent emotions": ", ".join(f"{e} {n}" for e, n in g.true.value_counts().head(3).items())})
    return pd.DataFrame(rows).set_index("source")


@dataclasses.dataclass
class Evaluation:
    metrics: dict  # what metrics.json holds
    predictions: pd.DataFrame  # one row per test face
    per_source: pd.DataFrame

    def per_class_table(self) -> pd.DataFrame:
        return per_class_table(self.metrics)

    def comparison(self) -> pd.DataFrame:
        return comparison_table(self.metrics)


def evaluate(model_path_or_model, work_dir: str | os.PathLike, record: models.ModelRecord | None = None,
             batch_size: int = 256, n_boot: int = 1000, seed: int = 42, write: bool = True,
             predictions: pd.DataFrame | None = None, metrics_from=None) -> Evaluation:
    """Evaluate a model (a ``.keras`` path, or a loaded model with its ``record``) on ``split/test``.

    Faces are prepared as the model's record says (``model.json`` beside the file; for a model object
    without ``record``, what its input shape implies). ``predictions``: the test split's ``predict_split``
    rows when they have been made already (notebook 06 makes them in a cell): they are used as they are,
    not predicted again. ``metrics_from``: the function that computes the metrics (default ``compute_metrics``;
    notebook 06 hands over its own, so that what it shows is what ``metrics.json`` holds). Writes
    ``metrics.json`` and ``predictions.csv`` when ``write``; ``metrics.json`` names the model file and its
    sha256, so a later reader can tell whether it still describes the current model.
    """
    work = Path(work_dir)
    model_path = None
    if isinstance(model_path_or_model, (str, os.PathLike)):
        model_path = Path(model_path_or_model)
        if predictions is None:
            model, record = load_model(model_path)
        else:
            record = record or models.ModelRecord.read(require(model_path, "train", "The trained model"))
    else:
        model = model_path_or_model
        record = record or models.ModelRecord.from_model(model)
    if predictions is None:
        predictions = predict_split(model, work, "test", record, batch_size)
    y_true, y_pred = predictions.y_true.to_numpy(), predictions.y_pred.to_numpy()
    train_counts = pipelines.split_counts(work)["train"]
    scored = trained_labels(train_counts.to_numpy())
    metrics = (metrics_from or compute_metrics)(y_true, y_pred, labels=scored)
    baseline = majority_baseline(train_counts.to_numpy(), y_true)
    manifest = None
    if (work / MANIFEST).exists():
        from fer_utils.folders import load_manifest

        manifest = load_manifest(work)
    groups = people_of(predictions, manifest)
    samples, redrawn = bootstrap_samples(y_true, y_pred, ("accuracy", "macro_f1", "balanced_accuracy"), groups,
                                         n_boot, seed, labels=scored)
    ci = {m: [float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))] for m, v in samples.items()}
    per_source = per_source_table(predictions, manifest, scored)
    model_file = {"model_file": display_path(model_path, work) if model_path else None,
                  "model_sha256": sha256_of(model_path) if model_path else None,
                  "run": record.run}
    metrics = {"step": "evaluate", "model": record.model, **model_file, "image_size": list(record.image_size),
               "color_mode": record.color_mode, "interpolation": record.interpolation, "tta": record.tta,
               "class_names": list(EMOTIONS), "n_test": int(len(y_true)), **metrics,
               "unscored_classes": [e for e in EMOTIONS if e not in metrics["scored_classes"]], "ci": ci,
               "ci_level": 0.95, "n_boot": n_boot, "seed": seed,
               "ci_method": CI_METHOD if groups is not None else CI_METHOD.replace(
                   "over people: each resample draws test people with replacement and keeps all of a person's "
                   "test faces together", "over faces (no manifest: people unknown)"),
               "ci_resamples_redrawn": redrawn, "n_people": int(len(set(groups))) if groups is not None else None,
               "baseline": baseline,
               "beats_baseline": bool(metrics["accuracy"] > baseline["accuracy"]),
               "per_source": per_source.drop(columns="most frequent emotions").to_dict(orient="index")}
    if write:
        write_record(work / METRICS, metrics)
        tmp = work / (PREDICTIONS + ".tmp")
        write_csv(predictions, tmp)
        tmp.replace(work / PREDICTIONS)
    return Evaluation(metrics=metrics, predictions=predictions, per_source=per_source)


def metrics_describe(work_dir: str | os.PathLike, model_path: str | os.PathLike) -> tuple[bool | None, str]:
    """Does ``<work_dir>/metrics.json`` describe the model file at ``model_path``?

    Returns ``(True, ...)`` when its ``model_sha256`` is the file's, ``(False, why)`` when it describes
    another model, ``(None, why)`` when there is no metrics.json or it names no model file (older runs).
    """
    path = Path(work_dir) / METRICS
    if not path.exists():
        return None, "no metrics.json yet: notebooks/06_evaluate_model.ipynb writes it"
    metrics = read_record(path)
    if not metrics.get("model_sha256"):
        return None, "metrics.json does not say which model file it describes (written before models were named)"
    digest = sha256_of(model_path)
    if metrics.get("model_sha256") == digest:
        return True, f"metrics.json describes this model ({metrics.get('model')}, run {metrics.get('run')})"
    return False, (f"metrics.json describes another model ({metrics.get('model')}, run {metrics.get('run')}, "
                   f"sha256 {str(metrics.get('model_sha256'))[:12]}), not this one (sha256 {digest[:12]}); "
                   "run notebooks/06_evaluate_model.ipynb again to evaluate it")


# --------------------------------------------------------------------------------------------------
# Tables and pictures for notebook 06
# --------------------------------------------------------------------------------------------------


def per_class_table(metrics: dict) -> pd.DataFrame:
    """Precision, recall, F1 and support per emotion."""
    table = pd.DataFrame(metrics["per_class"]).T.rename_axis("emotion")
    table["support"] = table["support"].astype(int)
    return table.round(3)


def comparison_table(metrics: dict) -> pd.DataFrame:
    """The model beside the majority-class baseline, with the model's 95 % bootstrap intervals (over people
    when the manifest names them: ``metrics["ci_method"]``)."""
    names = ("accuracy", "macro_f1", "balanced_accuracy")
    ci = metrics.get("ci", {})
    return pd.DataFrame({
        "model": [round(metrics[m], 4) for m in names],
        "95% interval": [f"{ci[m][0]:.3f} – {ci[m][1]:.3f}" if m in ci else "" for m in names],
        f"baseline (always {metrics['baseline']['predicts']})": [round(metrics["baseline"][m], 4) for m in names],
    }, index=pd.Index(names, name="metric"))


def plot_confusion(metrics: dict):
    """Two heatmaps of the confusion matrix: counts, and rows normalised (each row = recall per class)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    cm = np.asarray(metrics["confusion_matrix"])
    names = metrics["class_names"]
    rows = cm.sum(axis=1, keepdims=True)
    normalised = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    sns.heatmap(cm, annot=True, fmt="d", cmap="Blues", xticklabels=names, yticklabels=names, ax=axes[0], cbar=False)
    sns.heatmap(normalised, annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, xticklabels=names,
                yticklabels=names, ax=axes[1], cbar=False)
    for ax, title in zip(axes, ("Counts", "Row-normalised (share of each true class)")):
        ax.set(xlabel="predicted", ylabel="true", title=title)
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def _read_committed(path: Path, command: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(
            f"{display_path(path)} not found: it is committed in the repository (benchmarks/results/); open the "
            f"notebook from a clone of it, or write it with `{command}` (its docstring lists the runs it needs)")
    return read_record(path)


def read_learning_curve(path: str | os.PathLike = LEARNING_CURVE) -> dict:
    """The committed ``learning_curve.json``; a clear error when the notebooks run without the repository."""
    return _read_committed(Path(path), "python benchmarks/learning_curve.py")


def read_recipe_search(path: str | os.PathLike = RECIPE_SEARCH) -> dict:
    """The committed ``recipe_search.json`` (``benchmarks/recipe_search.py``); a clear error when it is absent."""
    return _read_committed(Path(path), "python benchmarks/recipe_search.py")


def recipe_table(search: dict) -> pd.DataFrame:
    """One row per candidate of the nested search: its inner (validation) scores averaged over the outer folds,
    in how many folds it cleared the accuracy floor, and in how many it was chosen."""
    rows = pd.DataFrame(search["recipe_table"])
    table = rows.groupby("candidate", sort=False).agg(
        accuracy=("accuracy", "mean"), macro_f1=("macro_f1", "mean"),
        balanced_accuracy=("balanced_accuracy", "mean"), eligible_folds=("eligible", "sum"),
        chosen_folds=("chosen", "sum"))
    return table.round(3).rename_axis(f"candidate (inner scores, mean of {rows.fold.nunique()} folds)")


def recipe_search_summary(search: dict) -> pd.DataFrame:
    """Outer test figures pooled over the folds: today's default, the recipes chosen on validation, and their
    paired difference on the same faces, each with its person-bootstrap 95 % interval."""
    result = search["result"]
    rows = {label: {m: f"{r[m]['value']:.3f} [{r[m]['ci'][0]:.3f}, {r[m]['ci'][1]:.3f}]" for m in SCORES}
            for label, r in (("today's default", result["pooled"]["default"]),
                             ("chosen on validation", result["pooled"]["chosen"]))}
    rows["chosen − default (paired)"] = {m: f"{d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
                                         for m, d in result["paired"].items()}
    return pd.DataFrame(rows).T


def plot_recipe_search(search: dict):
    """Inner accuracy, macro-F1 and balanced accuracy (mean over the outer folds) against the logit adjustment
    ``tau``, one line per training recipe and test-time augmentation; the default's inner accuracy minus the
    rule's slack dashed on the accuracy panel."""
    import matplotlib.pyplot as plt

    rows = pd.DataFrame(search["recipe_table"])
    parts = rows.candidate.str.extract(r"^(?P<recipe>[^,]+), tta (?P<tta>\w+), tau (?P<tau>[\d.]+)$")
    rows = pd.concat([rows, parts.astype({"tau": float})], axis=1)
    mean = rows.groupby(["recipe", "tta", "tau"], sort=False)[list(SCORES)].mean().reset_index()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharex=True)
    for (recipe, tta), g in mean.groupby(["recipe", "tta"], sort=False):
        for ax, m in zip(axes, SCORES):
            ax.plot(g.tau, g[m], marker="o", ms=3, label=f"{recipe}, tta {tta}")
    default = mean.iloc[0]
    axes[0].axhline(default.accuracy - search["rule"]["accuracy_slack"], ls="--", c="grey", lw=1,
                    label="accuracy floor (its fold mean)")
    for ax, m in zip(axes, SCORES):
        ax.set(xlabel="logit adjustment tau", title=f"inner {m.replace('_', ' ')}")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Every candidate on validation people only (mean of {rows.fold.nunique()} outer folds)")
    fig.tight_layout()
    return fig


def source_shortcut_table(search: dict) -> pd.DataFrame:
    """The source shortcut as the search measured it: per recipe (as trained) and image source, the pooled test
    accuracy and balanced accuracy, and the recipe − default difference on the same faces, with 95 % intervals."""
    rows = []
    for recipe, sources in search["by_source"]["recipes"].items():
        for source, r in sources.items():
            row = {"recipe": recipe, "source": source, "faces": search["by_source"]["faces"][source]}
            for m in ("accuracy", "balanced_accuracy"):
                row[m] = f"{r[m]['value']:.3f} [{r[m]['ci'][0]:.3f}, {r[m]['ci'][1]:.3f}]"
                d = r.get("minus_default", {}).get(m)
                row[f"{m} − default"] = f"{d['value']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" if d else "–"
            rows.append(row)
    return pd.DataFrame(rows).set_index(["recipe", "source"])


def plot_source_shortcut(search: dict):
    """Test accuracy and balanced accuracy per image source, one bar per training recipe (as trained), with
    the 95 % intervals."""
    import matplotlib.pyplot as plt

    recipes = search["by_source"]["recipes"]
    sources = list(next(iter(recipes.values())))
    x, width = np.arange(len(sources)), 0.8 / len(recipes)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, m in zip(axes, ("accuracy", "balanced_accuracy")):
        for i, (recipe, per) in enumerate(recipes.items()):
            v = np.array([per[s][m]["value"] for s in sources])
            lo, hi = (np.array([per[s][m]["ci"][k] for s in sources]) for k in (0, 1))
            ax.bar(x + (i - (len(recipes) - 1) / 2) * width, v, width,
                   yerr=[np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)], capsize=3, label=recipe)
        ax.set(xticks=x, xticklabels=[f"{s}\n({search['by_source']['faces'][s]:,} faces, "
                                                f"{search['by_source']['people'][s]:,} people)" for s in sources],
               ylim=(0, 1), title=f"test {m.replace('_', ' ')} by source")
    axes[0].legend(title="recipe", fontsize=8)
    fig.suptitle("Each recipe as trained, pooled over the five outer folds (95 % person-bootstrap intervals)")
    fig.tight_layout()
    return fig


def plot_learning_curve(curve: dict):
    """F1 of each emotion against its mean training faces per fold (log axis), with the 95 % intervals, and the
    target F1 dashed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for emotion, r in curve["per_emotion"].items():
        points = [(t, f, lo, hi) for t, f, (lo, hi) in zip(r["train_faces_mean"], r["f1"], r["f1_ci"])
                  if t > 0]  # a log axis has no 0
        t, f, lo, hi = (np.array(v) for v in zip(*points))
        ax.errorbar(t, f, yerr=[f - lo, hi - f], marker="o", capsize=3, label=emotion)
    ax.axhline(curve["protocol"]["target_f1"], ls="--", c="grey", lw=1)
    shares = ", ".join(f"{s:.0%}".replace("%", " %") for s in curve["train_fraction"])
    ax.set(xscale="log", xlabel="training faces of the emotion, mean per fold (log scale)",
           ylabel="F1, all faces out of fold", ylim=(0, 1),
           title=f"F1 against training faces: {shares} of each fold (95 % intervals)")
    ax.legend(ncol=2, fontsize=8)
    return fig


def source_recall_table(curve: dict) -> pd.DataFrame:
    """One row per (emotion, source) cell of ``curve["emotion_by_source"]``: faces, recall and its interval."""
    return pd.DataFrame([{"emotion": e, "source": s, "faces": v["faces"], "recall": v["recall"],
                          "low": v["ci"][0], "high": v["ci"][1]}
                         for e, sources in curve["emotion_by_source"].items() for s, v in sources.items()])


def plot_source_recall(curve: dict):
    """Recall of each emotion, one bar per image source, with the 95 % intervals (none for one person)."""
    import matplotlib.pyplot as plt

    cells = source_recall_table(curve)
    emotions = list(curve["emotion_by_source"])
    x = np.arange(len(emotions))
    sources = sorted(cells.source.unique())
    width = 0.8 / len(sources)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for i, source in enumerate(sources):
        g = cells[cells.source == source].set_index("emotion").reindex(emotions)
        low, high = g.low.fillna(g.recall), g.high.fillna(g.recall)
        ax.bar(x + (i - (len(sources) - 1) / 2) * width, g.recall, width, yerr=[g.recall - low, high - g.recall],
               capsize=3, label=source)
    ax.set(xticks=x, xticklabels=emotions, ylim=(0, 1), ylabel="recall (share found)",
           title="The same emotion, by image source (five folds; 95 % intervals)")
    ax.legend()
    return fig


def plot_misclassified(predictions: pd.DataFrame, work_dir: str | os.PathLike, n: int = 24, cols: int = 8,
                       seed: int = 42, rare_first: bool = True):
    """A grid of misclassified test faces titled ``true → predicted (confidence)``.

    With ``rare_first`` the faces are drawn round-robin over the true classes, so the rare emotions are
    not drowned by the many neutral/happiness confusions.
    """
    import matplotlib.pyplot as plt
    from PIL import Image

    wrong = predictions[predictions.y_true != predictions.y_pred]
    if rare_first and len(wrong):
        rng = np.random.default_rng(seed)
        groups = [g.sample(frac=1, random_state=int(rng.integers(1 << 31))) for _, g in wrong.groupby("true")]
        order = [g.iloc[i] for i in range(max(len(g) for g in groups)) for g in groups if i < len(g)]
        chosen = pd.DataFrame(order[:n])
    else:
        chosen = wrong.sample(min(n, len(wrong)), random_state=seed) if len(wrong) else wrong
    rows = max(1, int(np.ceil(len(chosen) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, r) in zip(axes.flat, chosen.iterrows()):
        with Image.open(Path(work_dir) / r.path) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title(f"{r.true} →\n{r.pred} ({r.confidence:.2f})", fontsize=8)
    fig.suptitle(f"{len(wrong)} of {len(predictions)} test faces misclassified; true → predicted (confidence)",
                 fontsize=10)
    fig.tight_layout()
    return fig


# ---- generated from notebooks/06_evaluate_model.ipynb, cell 06-n07b ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def per_class_scores(y_true, y_pred, class_names=EMOTIONS) -> dict:
    """Precision, recall, F1 and support of every emotion (scikit-learn's report)."""
    from sklearn.metrics import classification_report

    report = classification_report(
        y_true,
        y_pred,
        labels=LABELS,
        target_names=list(class_names),
        output_dict=True,
        zero_division=0,
    )
    return {
        name: {
            "precision": report[name]["precision"],
            "recall": report[name]["recall"],
            "f1": report[name]["f1-score"],
            "support": int(report[name]["support"]),
        }
        for name in class_names
    }
# ---- end of generated code (notebooks/06_evaluate_model.ipynb, cell 06-n07b) ----
