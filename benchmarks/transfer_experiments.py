"""The fine-tuning experiments behind ``benchmarks/experiments_transfer.md``, run through the chain's code.

    python benchmarks/transfer_experiments.py --work-dir W [--only NAME ...] [--config '{"mixup": 0.2}']

``W`` is a work folder prepared by notebook 02 (or ``folders.prepare``). Each experiment is a set of
changes to ``training.TrainConfig`` — the configuration notebook 05 trains with — and runs through the
same ``training.train`` and ``evaluation.evaluate`` as the notebooks: this script has no training loop,
metric, bootstrap, test-time augmentation or class-weight code of its own. Models are not written into
the work folder (``write=False``). Prints one line per experiment and a table; appends every result to
``benchmarks/results/transfer_experiments.json`` (the configuration verbatim, validation figures of the
kept epoch, test figures with bootstrap 95 % intervals, per-class F1, seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import _checks

import fer_utils
from fer_utils import evaluation, training, workfolder

RESULTS = Path(__file__).resolve().parent / "results" / "transfer_experiments.json"
METRICS = ("accuracy", "macro_f1", "balanced_accuracy")

#: name -> changes to the default TrainConfig (notebook 05's defaults: fer_transfer, FER2013's own head,
#: 64×64 gray, bilinear, 2 head + 12 whole-model epochs, Adam 1e-3 then 5e-4, √ class weights,
#: standard augmentation, best epoch on plain val accuracy).
EXPERIMENTS = {
    "default": {},
    "dense_head": {"model_kwargs": {"head": "dense"}},
    "area": {"interpolation": "area"},
    "area_tta": {"interpolation": "area", "tta": "flip"},
    "mixup_ls": {"mixup": 0.2, "label_smoothing": 0.1},
    "strong_aug": {"augment": "strong"},
    "cosine_16": {"lr_schedule": "cosine", "whole_model_lr_factor": 1.0, "epochs": 16},
    "px80": {"image_size": 80},
    "balanced": {"class_weight": "balanced"},
    "monitor_f1": {"monitor": "val_macro_f1"},
    "seed1": {"seed": 1},
}


def run(work: Path, name: str, changes: dict, n_boot: int) -> dict:
    config = training.TrainConfig.from_dict({**training.TrainConfig().to_dict(), **changes})
    t0 = time.perf_counter()
    result = training.train(config, work, write=False, show_progress=False)
    ev = evaluation.evaluate(result.model, work, record=result.model_record, n_boot=n_boot, seed=config.seed,
                             write=False)
    m = ev.metrics
    val = evaluation.predict_split(result.model, work, "val", result.model_record)
    val_m = evaluation.compute_metrics(val.y_true.to_numpy(), val.y_pred.to_numpy())
    return {
        "name": name, "changes": changes, "config": config.to_dict(),
        "val": {k: round(v, 4) for k, v in result.record["best"].items() if k.startswith("val_")},
        "val_scores": {k: round(val_m[k], 4) for k in METRICS},  # the kept model on val, as evaluated on test
        "best_epoch": result.record["best_epoch"], "epochs": len(result.history),
        "test": {k: {"value": round(m[k], 4), "ci": [round(c, 4) for c in m["ci"][k]]} for k in METRICS},
        "per_class_f1": {e: round(v["f1"], 3) for e, v in m["per_class"].items()},
        "per_source_accuracy": {s: v["accuracy"] for s, v in m["per_source"].items()},
        "train_seconds": round(result.record["train_seconds"], 1),
        "seconds_per_epoch": result.record["seconds_per_epoch"],
        "chain_seconds": round(time.perf_counter() - t0, 1),
        "precision": result.record["precision"],
        "machine": workfolder.machine_info(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def table(rows: list[dict]) -> str:
    lines = ["| run | changes | val acc / F1 | test accuracy [95 % CI] | test macro-F1 [95 % CI] | "
             "test balanced acc [95 % CI] | train s | kept epoch |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        scores = r.get("val_scores") or {"accuracy": r["val"].get("val_accuracy", float("nan"))}
        val = f"{scores['accuracy']:.3f} / " + (f"{scores['macro_f1']:.3f}" if "macro_f1" in scores else "–")
        cells = [f"{r['test'][k]['value']:.3f} [{r['test'][k]['ci'][0]:.3f}, {r['test'][k]['ci'][1]:.3f}]"
                 for k in METRICS]
        changes = ", ".join(f"{k}={v}" for k, v in r["changes"].items()) or "(defaults)"
        lines.append(f"| {r['name']} | {changes} | {val} | {' | '.join(cells)} | {r['train_seconds']:.0f} | "
                     f"{r['best_epoch']}/{r['epochs']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", required=True, help="a work folder prepared by notebook 02")
    parser.add_argument("--only", nargs="+", choices=sorted(EXPERIMENTS), help="run only these experiments")
    parser.add_argument("--config", help="JSON of TrainConfig changes: run this one experiment (named 'custom')")
    parser.add_argument("--n-boot", type=int, default=1000)
    _checks.add_out(parser, RESULTS, "the JSON file the results are appended to", metavar="FILE")
    args = parser.parse_args(argv)
    out = _checks.out_file(args.out, what="a JSON file for the results")
    done = _checks.earlier_results(out, list, "this script's results, a JSON list")
    try:
        todo = {"custom": json.loads(args.config)} if args.config else {
            name: EXPERIMENTS[name] for name in (args.only or EXPERIMENTS)}
    except ValueError as err:
        parser.error(f"--config is not JSON ({err}), e.g. --config '{{\"mixup\": 0.2}}'")
    if args.config and not isinstance(todo["custom"], dict):
        parser.error("--config must be a JSON object of TrainConfig fields, e.g. --config '{\"mixup\": 0.2}'")
    for name, changes in todo.items():  # every experiment's settings, before any training
        try:
            training.TrainConfig.from_dict({**training.TrainConfig().to_dict(), **dict(changes)})
        except (ValueError, TypeError) as err:
            _checks.refuse(f"{'--config' if args.config else name}: {err}")
    work = workfolder.get_work_dir(args.work_dir, create=False)
    try:
        workfolder.require(work / workfolder.SPLIT_DIR, "prepare", "The class folders (split/)")
    except FileNotFoundError as err:
        _checks.refuse(f"--work-dir {work}: {err}")
    fer_utils.import_tensorflow()
    rows = []
    for name, changes in todo.items():
        row = run(work, name, changes, args.n_boot)
        rows.append(row)
        done.append(row)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(done, indent=1) + "\n")  # after every run: a long session keeps its results
        t = row["test"]
        print(f"{name}: val acc {row['val'].get('val_accuracy', float('nan')):.3f}; test "
              + ", ".join(f"{k} {t[k]['value']:.3f}" for k in METRICS) + f"; train {row['train_seconds']:.0f} s",
              flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    _checks.stop_as_interrupt()  # kill, timeout: temporary folders are removed as on Ctrl-C
    sys.exit(main())
