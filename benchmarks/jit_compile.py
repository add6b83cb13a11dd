"""XLA compilation (``jit_compile``) for the chain's default model, on this machine's CPU.

    python benchmarks/jit_compile.py [--data-dir D] [--work-dir W] [--head-epochs 1] [--epochs 1]

Prepares the dataset's class folders once (notebooks 01-02's ``folders.prepare``, seed 42), then trains the
default ``TrainConfig`` (``fer_transfer``, head then whole model) for a short schedule twice, each in a fresh
process: with ``model.compile(jit_compile=False)`` and with ``jit_compile=True``. (Keras' own ``"auto"``, which
the chain leaves as it is, resolves to False on a machine without a GPU, so on CPUs ``False`` is what the chain
runs.) Writes each epoch's seconds and validation accuracy to ``benchmarks/results/jit_compile.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _checks

from fer_utils.workfolder import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "jit_compile.json"
MODES = {"off": False, "on": True}


def one_training(work: Path, mode: str, head_epochs: int, epochs: int) -> dict:
    """Train once in this process with ``jit_compile`` set as ``mode`` says; the history and what Keras used."""
    import fer_utils
    from fer_utils import training

    _, keras = fer_utils.import_tensorflow()
    used = []
    compile_as_keras = keras.Model.compile

    def compile_with_jit(self, *args, **kwargs):  # training.compile_model's compile, with jit_compile set
        kwargs["jit_compile"] = MODES[mode]
        compile_as_keras(self, *args, **kwargs)
        used.append(bool(self.jit_compile))

    keras.Model.compile = compile_with_jit
    config = training.TrainConfig(head_epochs=head_epochs, epochs=epochs)
    t0 = time.perf_counter()
    result = training.train(config, work, write=False, show_progress=False)
    seconds = time.perf_counter() - t0
    history = result.history[["epoch", "phase", "seconds", "train_seconds", "val_accuracy"]].round(3)
    return {"jit_compile": used, "seconds": round(seconds, 1), "epochs": history.to_dict("records"),
            "config": {"model": config.model, "head_epochs": head_epochs, "epochs": epochs,
                       "batch_size": config.batch_size, "precision": config.precision}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("FER_DATA_DIR"), help="the dataset (default: $FER_DATA_DIR)")
    ap.add_argument("--work-dir", help="a folder for the class folders (default: a temporary folder)")
    ap.add_argument("--head-epochs", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=1, help="whole-model epochs after the head epochs")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds each training may take")
    _checks.add_out(ap, RESULTS, "the JSON file the figures go to", metavar="FILE")
    ap.add_argument("--one", choices=sorted(MODES), help=argparse.SUPPRESS)  # internal: one training, JSON on stdout
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one_training(Path(args.work_dir), args.one, args.head_epochs, args.epochs)))
        return 0
    if not args.data_dir:
        ap.error("no dataset: pass --data-dir or set $FER_DATA_DIR")
    _checks.out_file(args.out, what="a JSON file for the figures")
    if args.work_dir:
        _checks.out_folder(args.work_dir, "--work-dir", "a folder for the class folders")
    dataset = _checks.dataset(args.data_dir, download=False)
    for path, option in ((args.out, "--out"), (args.work_dir, "--work-dir")):
        if path:
            _checks.outside(path, dataset.root, option)
    from fer_utils import folders

    with tempfile.TemporaryDirectory(prefix="fer-jit-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp) / "work"
        if not (work / "manifest.csv").exists():
            folders.prepare(dataset, work, seed=42)
        runs = {}
        for mode in MODES:
            print(f"training with jit_compile={MODES[mode]} ...", flush=True)
            command = [sys.executable, __file__, "--one", mode, "--work-dir", str(work),
                       "--head-epochs", str(args.head_epochs), "--epochs", str(args.epochs)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"error: the training with jit_compile={MODES[mode]} took over {args.timeout} s (--timeout)",
                      file=sys.stderr)
                return 1
            if done.returncode:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            epochs = runs[mode]["epochs"]
            print("  " + "; ".join(f"epoch {e['epoch']} ({e['phase']}) {e['seconds']:.0f} s, val_accuracy "
                                    f"{e['val_accuracy']:.3f}" for e in epochs), flush=True)
    ratio = [round(on["seconds"] / off["seconds"], 2) for off, on in zip(runs["off"]["epochs"], runs["on"]["epochs"])]
    result = {"benchmark": "jit_compile", "runs": runs, "epoch_seconds_on_over_off": ratio,
              "machine": machine_info(), "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"epoch seconds with XLA / without: {ratio}; written to {args.out}")
    return 0


if __name__ == "__main__":
    _checks.stop_as_interrupt()  # kill, timeout: temporary folders are removed as on Ctrl-C
    sys.exit(main())
