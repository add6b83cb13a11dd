"""Solutions to the exercises of notebook 06 (the tests run this file, on a small
synthetic dataset)."""

import numpy as np
import pandas as pd
from fer_utils import EMOTIONS, evaluation, pipelines, workfolder
from fer_utils.folders import load_manifest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    f1_score,
)

WORK = workfolder.get_work_dir(None)
predictions = workfolder.read_csv(WORK / workfolder.PREDICTIONS)
metrics = workfolder.read_record(WORK / workfolder.METRICS)
y_true, y_pred = predictions.y_true.to_numpy(), predictions.y_pred.to_numpy()

# 1. scikit-learn's report from predictions.csv; its macro-F1 is the one in
#    metrics.json.
report = classification_report(
    y_true,
    y_pred,
    labels=evaluation.LABELS,
    target_names=EMOTIONS,
    zero_division=0,
    output_dict=True,
)
print(
    classification_report(
        y_true, y_pred, labels=evaluation.LABELS, target_names=EMOTIONS, zero_division=0
    )
)
assert abs(report["macro avg"]["f1-score"] - metrics["macro_f1"]) < 1e-9

# 2. Three trivial baselines.
train_counts = (
    pipelines.split_counts(WORK)["train"].reindex(EMOTIONS).fillna(0).to_numpy()
)
rng = np.random.default_rng(0)
guesses = {
    "always neutral": np.full(len(y_true), EMOTIONS.index("neutral")),
    "always happiness": np.full(len(y_true), EMOTIONS.index("happiness")),
    "random (training frequencies)": rng.choice(
        len(EMOTIONS), len(y_true), p=train_counts / train_counts.sum()
    ),
}
# noqa: E731
macro_f1 = lambda t, p: f1_score(
    t, p, labels=evaluation.LABELS, average="macro", zero_division=0
)
table = pd.DataFrame(
    {
        name: {
            "accuracy": accuracy_score(y_true, p),
            "macro_f1": macro_f1(y_true, p),
            "balanced_accuracy": balanced_accuracy_score(y_true, p),
        }
        for name, p in guesses.items()
    }
).T
print(table.round(3).to_string())
assert (table.balanced_accuracy <= 0.5 + 1e-9).all()

# 3. Intervals over faces and over people.
people = evaluation.people_of(predictions, load_manifest(WORK))
by_face = evaluation.bootstrap_ci(y_true, y_pred, "macro_f1", n=200, seed=0)
by_person = evaluation.bootstrap_ci(
    y_true, y_pred, "macro_f1", n=200, seed=0, groups=people
)
print(
    f"macro-F1 {metrics['macro_f1']:.3f}: faces {by_face[0]:.3f}–{by_face[1]:.3f} "
    f"(width {by_face[1] - by_face[0]:.3f}), "
    f"people {by_person[0]:.3f}–{by_person[1]:.3f} "
    f"(width {by_person[1] - by_person[0]:.3f})"
)
# Faces of one person are alike and tend to be right or wrong together: resampling
# people moves whole clusters at once, so its interval is usually wider (on the real
# data clearly; on a tiny synthetic set either).
