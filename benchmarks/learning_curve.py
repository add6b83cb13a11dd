"""Benchmark analysis: how many faces each emotion needs, and how much the image source matters.

    python benchmarks/compare.py --only ours --train-fraction 0.25     # writes compare_train25.*
    python benchmarks/compare.py --only ours --train-fraction 0.5      # writes compare_train50.*
    python benchmarks/learning_curve.py [--points R25.json R50.json R100.json] [--target 0.6]

No training here: it reads the five-fold runs of ``ours`` (``benchmarks/compare.py``) trained on 25 %, 50 % and
100 % of each fold's training faces (whole people at a time, nested; the same validation and test faces) and
their saved out-of-fold predictions, and writes ``benchmarks/results/learning_curve.json`` and ``.md``:

- **the learning curve**: per emotion, F1 over all faces at each training share, beside the mean number of
  training faces per fold, with person-bootstrap 95 % intervals. The same resampled people score every share
  (the test faces are the same), so the curves' intervals are paired;
- **an extrapolation**: per emotion, a straight line of F1 against log(training faces) through the three points,
  and the number of training faces (and, at the emotion's faces per person in this dataset, of people) at
  which the line reaches ``--target`` (F1 0.6) — with the interval of that number over the same bootstrap
  resamples (a resample whose line does not rise has no such number: the interval is then open). Three points
  over a fourfold range are a weak basis for a tenfold extrapolation; the table says so;
- **the source measurement**: accuracy per image source at each share, and, for the full training set, recall
  per emotion *within* each source (an emotion's faces from film crops against the same emotion's faces from
  news photos), so the source gap is read without the emotions' uneven mix.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import _checks
import numpy as np
import pandas as pd

from fer_utils import EMOTIONS, evaluation, workfolder

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_POINTS = ("compare_train25.json", "compare_train50.json", "compare_size.json")
#: An (emotion, source) cell needs this many faces for its recall to be reported.
MIN_CELL_FACES = 10
#: Extrapolations past this many times today's training faces are reported as beyond reach, not as a number.
BEYOND = 100


def load_point(path: Path) -> tuple[dict, pd.DataFrame]:
    """One run's report and its ``ours`` out-of-fold predictions."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: cannot read {path} as a compare.py report ({err})") from None
    if ("ours" not in report.get("configs", {}) or not report.get("predictions")
            or not {"folds", "seed"} <= set(report.get("protocol", {}))):
        raise SystemExit(f"error: {path} is not a compare.py report with `ours`, its protocol and saved predictions")
    predictions = path.with_name(report["predictions"])
    if not predictions.is_file():
        raise SystemExit(f"error: {path.name} names {predictions.name}, which is not beside it: copy it from the run's "
                         "--out folder")
    frame = workfolder.read_csv(predictions, dtype={"path": str, "group": str, "source": str})
    return report, frame[frame.config == "ours"].drop(columns="config").reset_index(drop=True)


def joined(points: list[tuple[dict, pd.DataFrame]]) -> pd.DataFrame:
    """Every face once, with each share's prediction (``pred_0`` …); refuses runs of other folds or faces."""
    protocols = {(r["protocol"]["folds"], r["protocol"]["seed"]) for r, _ in points}
    if len(protocols) != 1:
        raise SystemExit(f"error: the runs use different folds or seeds {sorted(protocols)}; run them alike")
    for key, what in (("ours", "recipe of `ours`"), ("dataset", "dataset")):
        seen = {json.dumps(r.get(key), sort_keys=True) for r, _ in points}
        if len(seen) > 1:
            raise SystemExit(f"error: the runs differ in their {what} (`{key}` in their reports); a learning curve "
                             "changes only the training share")
    base = points[0][1][["fold", "path", "group", "source", "y_true"]]
    for j, (_, frame) in enumerate(points):
        other = frame[["fold", "path", "y_true", "y_pred"]].rename(columns={"y_pred": f"pred_{j}",
                                                                            "y_true": f"true_{j}"})
        merged = base.merge(other, on=["fold", "path"], how="outer", indicator=True)
        if (merged["_merge"] != "both").any() or (merged[f"true_{j}"] != merged.y_true).any():
            raise SystemExit("error: the runs did not predict the same test faces in the same folds; "
                             "run compare.py with the same --folds and --seed on the same dataset")
        base = merged.drop(columns=["_merge", f"true_{j}"])
    return base


def _at(fn, j: int):
    """``fn(y_true, y_pred)`` applied to share ``j``'s column of the predictions."""
    return lambda y_true, pred: fn(y_true, pred[:, j])


def fit_log_line(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``y = a + b ln(x)`` along the last axis of ``y`` (one line per row)."""
    lx = np.log(x)
    b = ((lx - lx.mean()) * (y - y.mean(axis=-1, keepdims=True))).sum(axis=-1) / ((lx - lx.mean()) ** 2).sum()
    return y.mean(axis=-1) - b * lx.mean(), b


def faces_needed(a, b, target: float) -> np.ndarray:
    """Where ``a + b ln(n)`` reaches ``target``; ``inf`` where the line does not rise."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        n = np.exp((target - a) / np.where(b > 0, b, np.nan))
    return np.where(b > 0, n, np.inf)


def _interval(values: np.ndarray) -> list[float | None]:
    """95 % percentile interval; an infinite end (lines that do not rise) is ``None`` (open)."""
    lo, hi = np.quantile(values, [0.025, 0.975], method="inverted_cdf")  # no interpolation into infinity
    return [None if not np.isfinite(v) else round(float(v), 4) for v in (lo, hi)]


def share_right_ci(g: pd.DataFrame, pred: str, args) -> list[float | None]:
    """Person-bootstrap 95 % interval of the share of ``g``'s faces predicted right. Resamples are not drawn again
    when they miss an emotion (a share of faces right does not average over emotions, and a source of few people
    would otherwise keep redrawing itself); ``[None, None]`` with fewer than 2 people."""
    if g.group.nunique() < 2:
        return [None, None]
    samples, _ = evaluation.bootstrap_samples(g.y_true.to_numpy(), g[pred].to_numpy(), ("accuracy",),
                                              g.group.to_numpy(), args.n_boot, args.seed, same_classes=False)
    return evaluation.ci95(samples["accuracy"])


def source_table(frame: pd.DataFrame, pred: str, args) -> dict:
    """Accuracy per source (person-bootstrap interval within the source)."""
    return {source: {"faces": int(len(g)), "people": int(g.group.nunique()),
                     "accuracy": round(float((g.y_true == g[pred]).mean()), 4), "ci": share_right_ci(g, pred, args)}
            for source, g in frame.groupby("source")}


def predicted_mix(frame: pd.DataFrame, pred: str) -> dict:
    """Per source: the share of its faces that are each emotion, and the share predicted as each — a model
    that leans on the source predicts a source's typical emotions more often than they occur."""
    out = {}
    for source, g in frame.groupby("source"):
        if len(g) < MIN_CELL_FACES:
            continue
        true, predicted = (g[c].value_counts(normalize=True).reindex(range(len(EMOTIONS)), fill_value=0.0)
                           for c in ("y_true", pred))
        out[source] = {e: {"true": round(float(true[k]), 4), "predicted": round(float(predicted[k]), 4)}
                       for k, e in enumerate(EMOTIONS)}
    return out


def emotion_by_source(frame: pd.DataFrame, pred: str, args) -> dict:
    """Recall of each emotion within each source (cells of ``MIN_CELL_FACES`` faces or more)."""
    out = {}
    for (emotion, source), g in frame.groupby(["y_true", "source"]):
        if len(g) < MIN_CELL_FACES:
            continue
        out.setdefault(EMOTIONS[emotion], {})[source] = {
            "faces": int(len(g)), "people": int(g.group.nunique()),
            "recall": round(float((g.y_true == g[pred]).mean()), 4), "ci": share_right_ci(g, pred, args)}
    return out


def verdict(row: dict) -> str:
    """In words: where this emotion's line reaches the target F1."""
    if row["reached"]:
        return "reached already"
    if row["faces_needed"] is None:
        return "no rise measured: the line does not rise"
    if row["times_today"] > BEYOND:
        return f"beyond reach: more than {BEYOND}× today's faces"
    return f"about {row['faces_needed']:,} faces per fold ({row['times_today']}× today's)"


def analyse(files: list[Path], args) -> dict:
    """The learning curve, its extrapolation and the source tables, from ``compare.py`` reports (any order)."""
    loaded = sorted(((f, *load_point(f)) for f in files), key=lambda p: p[1]["protocol"].get("train_fraction", 1.0))
    files, points = [f for f, *_ in loaded], [(r, frame) for _, r, frame in loaded]
    shares = [r["protocol"].get("train_fraction", 1.0) for r, _ in points]
    if len(set(shares)) != len(shares) or len(shares) < 2:
        raise SystemExit(f"error: need at least two different training shares, got {shares}")
    frame = joined(points)
    y, preds = frame.y_true.to_numpy(), frame[[f"pred_{j}" for j in range(len(points))]].to_numpy()
    fns = {f"{e}@{j}": _at(evaluation.metric_function("macro_f1", [k]), j)  # one emotion's F1
           for k, e in enumerate(EMOTIONS) for j in range(len(points))}
    fns |= {f"macro_f1@{j}": _at(evaluation.metric_function("macro_f1"), j) for j in range(len(points))}
    for name, fn in fns.items():
        fn.__name__ = name  # bootstrap_samples keys its values by name
    samples, redrawn = evaluation.bootstrap_samples(y, preds, list(fns.values()), frame.group.to_numpy(), args.n_boot,
                                                    args.seed)
    totals = frame.groupby("y_true").agg(faces=("path", "size"), people=("group", "nunique"))
    curve = {}
    for k, e in enumerate(EMOTIONS):
        train = np.array([r["configs"]["ours"]["per_class"][e]["train_faces_mean"] for r, _ in points])
        f1 = np.array([fns[f"{e}@{j}"](y, preds) for j in range(len(points))])
        boot = np.stack([samples[f"{e}@{j}"] for j in range(len(points))], axis=1)
        row = {"faces": int(totals.faces.get(k, 0)), "people": int(totals.people.get(k, 0)),
               "train_faces_mean": [round(float(t), 1) for t in train],
               "f1": [round(float(v), 4) for v in f1],
               "f1_ci": [evaluation.ci95(boot[:, j]) for j in range(len(points))]}
        if (train > 0).all():
            a, b = fit_log_line(train, f1)
            boot_a, boot_b = fit_log_line(train, boot)
            need, boot_need = float(faces_needed(a, b, args.target)), faces_needed(boot_a, boot_b, args.target)
            per_person = row["faces"] / max(row["people"], 1)
            row.update(f1_per_doubling=round(float(b * np.log(2)), 4),
                       f1_per_doubling_ci=evaluation.ci95(boot_b * np.log(2)),
                       rising_share=round(float((boot_b > 0).mean()), 3),
                       faces_needed=None if not np.isfinite(need) else round(need),
                       faces_needed_ci=[None if v is None else round(v) for v in _interval(boot_need)],
                       faces_per_person=round(per_person, 2),
                       people_needed=None if not np.isfinite(need) else round(need / per_person),
                       times_today=None if not np.isfinite(need) else round(need / train[-1], 1),
                       reached=bool(f1[-1] >= args.target))
            if row["reached"]:
                row.update(faces_needed=None, faces_needed_ci=[None, None], people_needed=None, times_today=None)
            row["verdict"] = verdict(row)
        curve[e] = row
    macro = {"value": [round(fns[f"macro_f1@{j}"](y, preds), 4) for j in range(len(points))],
             "ci": [evaluation.ci95(samples[f"macro_f1@{j}"]) for j in range(len(points))]}
    gain = samples[f"macro_f1@{len(points) - 1}"] - samples["macro_f1@0"]  # the same resamples: paired
    macro["gain_largest_over_smallest"] = {
        "value": round(macro["value"][-1] - macro["value"][0], 4),
        "ci": evaluation.ci95(gain)}
    first = points[0][0]
    return {"protocol": {"folds": first["protocol"]["folds"], "seed": first["protocol"]["seed"],
                         "grouped_by": "person", "interval": "person bootstrap, 95 % (the same resamples for every "
                         "share)", "n_boot": args.n_boot, "ci_method": evaluation.CI_METHOD,
                         "ci_resamples_redrawn": redrawn, "target_f1": args.target,
                         "fit": "least squares F1 = a + b ln(mean training faces per fold), through the shares; "
                                "faces_needed = where the line reaches target_f1, in training faces per fold (null: "
                                "the line does not rise); people_needed = faces_needed / faces_per_person (training "
                                "people per fold)",
                         "not_in_intervals": "training noise: each share is one subset of people and one training "
                                             "per fold; the intervals resample test people only"},
            "runs": [{"file": p.name, "train_fraction": s, "machine": r["machine"], "written_at": r.get("written_at"),
                      "train_seconds_mean": r["configs"]["ours"]["cv_train_seconds_mean"]}
                     for p, s, (r, _) in zip(files, shares, points)],
            "train_fraction": shares, "n": int(len(frame)), "n_people": int(frame.group.nunique()),
            "macro_f1": macro,
            "accuracy": [round(float((preds[:, j] == y).mean()), 4) for j in range(len(points))],
            "per_emotion": curve,
            "per_source": [source_table(frame, f"pred_{j}", args) for j in range(len(points))],
            "emotion_by_source": emotion_by_source(frame, f"pred_{len(points) - 1}", args),
            "predicted_mix_by_source": predicted_mix(frame, f"pred_{len(points) - 1}")}


def _ci(v, ci, fmt="{:.2f}") -> str:
    low, high = ("–" if ci[0] is None else fmt.format(ci[0])), ("open" if ci[1] is None else fmt.format(ci[1]))
    return f"{fmt.format(v)} [{low}, {high}]"


def markdown(report: dict) -> str:
    shares = [f"{s:.0%}" for s in report["train_fraction"]]
    run = report["runs"][-1]["machine"]
    lines = [f"Machine: {run['processor']}, {run['cpu_count']} cores; TensorFlow {run.get('tensorflow')}. "
             f"`ours` trained on {', '.join(shares)} of each fold's training faces (whole people, nested), "
             f"{report['protocol']['folds']} person-disjoint folds, the same {report['n']:,} test faces "
             f"({report['n_people']:,} people); intervals: {report['protocol']['interval']}.", "",
             "| training share | " + " | ".join(shares) + " |", "|---|" + "---|" * len(shares),
             "| macro-F1 | " + " | ".join(_ci(v, c, "{:.3f}") for v, c in zip(report["macro_f1"]["value"],
                                                                   report["macro_f1"]["ci"])) + " |",
             "| accuracy | " + " | ".join(f"{v:.3f}" for v in report["accuracy"]) + " |",
             f"| macro-F1, {shares[-1]} − {shares[0]} (paired) | "
             + _ci(report["macro_f1"]["gain_largest_over_smallest"]["value"],
                   report["macro_f1"]["gain_largest_over_smallest"]["ci"], "{:+.3f}") + " |",
             "| train s / fold (mean) | " + " | ".join(f"{r['train_seconds_mean']:.0f}" for r in report["runs"])
             + " |", "",
             f"Per emotion: F1 [interval] at each share, beside the mean training faces per fold; the line's gain "
             f"per doubling of the faces; where it reaches F1 {report['protocol']['target_f1']} (faces per fold "
             f"[interval over the resamples; open: some resampled lines do not rise], training people per fold at this "
             f"dataset's faces per person of the emotion, × today's training faces).", "",
             "| emotion | faces (people) | " + " | ".join(f"{s}: train faces, F1" for s in shares)
             + " | F1 per doubling [interval] | faces needed | people needed | × today |",
             "|---|---|" + "---|" * len(shares) + "---|---|---|---|"]
    for e, r in report["per_emotion"].items():
        cells = [f"{t:.0f}, {_ci(f, c)}" for t, f, c in zip(r["train_faces_mean"], r["f1"], r["f1_ci"])]
        if "f1_per_doubling" not in r:
            tail = ["–", "no training faces at some share", "–", "–"]
        else:
            slope = _ci(r["f1_per_doubling"], r["f1_per_doubling_ci"], "{:+.3f}")
            lo, hi = r["faces_needed_ci"]
            if r["reached"]:
                tail = [slope, "reached already", "–", "–"]
            elif r["faces_needed"] is None:
                tail = [slope, "no rise measured: the line does not rise", "–", "–"]
            elif r["times_today"] > BEYOND:
                tail = [slope, f"beyond reach: more than {BEYOND}× today's (the line: {r['faces_needed']:.0e})",
                        "–", f"> {BEYOND}"]
            else:
                today = r["train_faces_mean"][-1]
                high = "open" if hi is None else f"> {BEYOND}× today's" if hi > BEYOND * today else f"{hi:,}"
                tail = [slope, f"{r['faces_needed']:,} [{'–' if lo is None else f'{lo:,}'}, {high}]",
                        f"{r['people_needed']:,}", f"{r['times_today']:,}"]
        lines.append(f"| {e} | {r['faces']:,} ({r['people']:,}) | " + " | ".join(cells + tail) + " |")
    lines += ["", "Read the extrapolation as an order of magnitude at best: three points over a fourfold range carry "
              "it; it assumes the gain per doubling stays the same, and that every other emotion grows with this "
              "one (the shares took whole people, so all emotions, faces and people grew together). The intervals "
              "resample "
              "test people only: each share is one subset and one training per fold, so training noise is not in "
              "them.", "",
              "Accuracy per image source at each share [person-bootstrap 95 % interval]:", "",
              "| source (faces, people) | " + " | ".join(shares) + " |", "|---|" + "---|" * len(shares)]
    for s, v in report["per_source"][-1].items():
        lines.append(f"| {s} ({v['faces']:,}, {v['people']:,}) | " + " | ".join(
            _ci(t[s]["accuracy"], t[s]["ci"], "{:.3f}") if t[s]["ci"][0] is not None else f"{t[s]['accuracy']:.3f}"
            for t in report["per_source"]) + " |")
    sources = sorted({s for v in report["emotion_by_source"].values() for s in v})
    lines += ["", f"Recall of each emotion within each source, full training set (cells of {MIN_CELL_FACES} "
              "faces or more; faces, recall [interval]):", "",
              "| emotion | " + " | ".join(sources) + " |", "|---|" + "---|" * len(sources)]
    def cell(c: dict) -> str:
        recall = _ci(c["recall"], c["ci"], "{:.3f}") if c["ci"][0] is not None else f"{c['recall']:.3f} (one person)"
        return f"{c['faces']:,}: {recall}"

    for e, v in report["emotion_by_source"].items():
        lines.append(f"| {e} | " + " | ".join(cell(v[s]) if s in v else "–" for s in sources) + " |")
    lines += ["", "Share of each source's faces that are each emotion (true) and that the model predicts as each "
              "(predicted), full training set:", "",
              "| source | " + " | ".join(EMOTIONS) + " |", "|---|" + "---|" * len(EMOTIONS)]
    for s, mix in report["predicted_mix_by_source"].items():
        for kind in ("true", "predicted"):
            lines.append(f"| {s} {kind} | " + " | ".join(f"{mix[e][kind]:.3f}" for e in EMOTIONS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", nargs="+", type=Path, default=[RESULTS / p for p in DEFAULT_POINTS],
                        help="compare.py reports (with `ours` and saved predictions) at different --train-fraction")
    parser.add_argument("--target", type=float, default=0.6, help="the F1 the extrapolation aims at")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    _checks.add_out(parser, RESULTS, "where learning_curve.json and .md go")
    args = parser.parse_args(argv)
    _checks.out_folder(args.out, what="a folder for learning_curve.json and .md")
    missing = [str(p) for p in args.points if not p.is_file()]
    if missing:
        parser.error(f"no such report: {', '.join(missing)} (run benchmarks/compare.py --train-fraction first)")
    if not 0 < args.target < 1:
        parser.error("--target must be between 0 and 1")
    report = analyse(args.points, args)
    args.out.mkdir(parents=True, exist_ok=True)
    workfolder.write_record(args.out / "learning_curve.json", report)
    text = markdown(report)
    (args.out / "learning_curve.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    _checks.stop_as_interrupt()  # kill, timeout: temporary folders are removed as on Ctrl-C
    sys.exit(main())
