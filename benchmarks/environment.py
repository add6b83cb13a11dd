"""What installing the project and running its tests costs on this machine: the figures the README's Quick start
quotes for the install and the suite.

    python benchmarks/environment.py [--install] [--suite] [--out benchmarks/results/environment.json]

Always: the size of this environment (``sys.prefix``) and of its TensorFlow package. ``--install``: the time
of ``python -m venv`` + ``pip install -e ".[dev]"`` into a temporary folder (with whatever pip cache this
machine has: say which when quoting it). ``--suite``: runs ``pytest`` once (the README's test command, without
ruff; ``--pytest-args`` adds a marker selection) and records under ``suites[--suite-name]`` its wall time, the
counts of passed, skipped and failed tests, and the 15 slowest tests; ``--suite-log`` reads the same from a
saved run's output. Each suite records the machine it was read on (``machine``; the top-level one is the
install's). Figures of an earlier run in the output file are kept unless measured again.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _checks

from fer_utils.workfolder import machine_info

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "environment.json"


def folder_mb(path: Path) -> float:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return round(total / 1e6, 1)


def time_install(timeout: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="fer-install-") as tmp:
        venv = Path(tmp) / "venv"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=timeout)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-e", ".[dev]"], cwd=ROOT, check=True,
                       timeout=timeout)
        seconds = round(time.perf_counter() - t0, 1)
        return {"seconds": seconds, "minutes": round(seconds / 60, 1), "venv_mb": folder_mb(venv)}


def parse_suite(out: str, seconds: float | None = None) -> dict:
    """Counts, wall time and slowest tests from pytest's output (``-q`` or not, with ``--durations``)."""
    summary = [line for line in out.strip().splitlines() if re.search(r"\d+ passed", line)]
    last = summary[-1] if summary else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|skipped|failed|errors?|deselected)", last)}
    if seconds is None:
        found = re.search(r" in (\d+(?:\.\d+)?)s", last)
        seconds = float(found.group(1)) if found else float("nan")
    slowest = [{"seconds": float(s), "phase": phase, "test": test}
               for s, phase, test in re.findall(r"^(\d+\.\d+)s (call|setup|teardown)\s+(\S+)", out, re.M)][:15]
    # pytest-xdist's -n (addopts: 2) is printed as "created: 2/2 workers", but not under -q ("bringing up nodes...")
    created = re.search(r"created: (\d+)/\d+ workers", out)
    workers = int(created.group(1)) if created else None if "bringing up nodes" in out else 1
    return {"seconds": round(seconds, 1), "minutes": round(seconds / 60, 1), "counts": counts, "workers": workers,
            "slowest": slowest}


def run_suite(timeout: int, pytest_args=()) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *pytest_args],  # not -q: workers
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return {**parse_suite(done.stdout, time.perf_counter() - t0), "exit_code": done.returncode}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--install", action="store_true", help="time a fresh install into a temporary folder")
    ap.add_argument("--suite", action="store_true", help="run pytest once and record its time and slowest tests")
    ap.add_argument("--suite-log", type=Path, help="read those figures from the saved output of a pytest run instead "
                    "(for example of .ci/run on a fresh clone)")
    ap.add_argument("--suite-note", default="", help="where that run ran, recorded beside its figures")
    ap.add_argument("--suite-name", default="pytest", help="the key the suite's figures go under in \"suites\" "
                    "(e.g. 'pytest -m \"not realdata\"')")
    ap.add_argument("--pytest-args", default="", help="arguments for the --suite run, e.g. '-m \"not slow\"'")
    ap.add_argument("--timeout", type=_checks.positive_int, default=3600, help="seconds each measured command may take")
    _checks.add_out(ap, RESULTS, "the JSON file the figures go to (an earlier run's figures in it are kept unless "
                    "measured again)", metavar="FILE")
    args = ap.parse_args(argv)
    _checks.out_file(args.out, what="a JSON file for the figures")
    if args.suite_log and not args.suite_log.is_file():
        _checks.refuse(f"--suite-log {args.suite_log}: no such file; name the saved output of a pytest run")
    # the figures of an earlier run, kept unless measured again
    result = _checks.earlier_results(args.out, dict, "a record of this script, a JSON object")
    import fer_utils

    fer_utils.import_tensorflow()  # only its location is read

    env_mb, tf_mb = folder_mb(Path(sys.prefix)), folder_mb(Path(sys.modules["tensorflow"].__file__).parent)
    result.update({"benchmark": "environment", "environment_mb": env_mb, "environment_gb": round(env_mb / 1000, 1),
                   "tensorflow_mb": tf_mb, "tensorflow_gb": round(tf_mb / 1000, 1),
                   "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if args.install or "machine" not in result:  # the install's machine; each suite records its own
        result["machine"] = machine_info()
    if args.install:
        result["install"] = time_install(args.timeout)
    suites = result.setdefault("suites", {})
    if args.suite:
        suites[args.suite_name] = {**run_suite(args.timeout, shlex.split(args.pytest_args)), "note": args.suite_note,
                                   "machine": machine_info()}
    elif args.suite_log:
        suites[args.suite_name] = {**parse_suite(args.suite_log.read_text(errors="replace")), "note": args.suite_note,
                                   "machine": machine_info()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "suites"}, indent=2))
    for name, suite in suites.items():
        print(f"{name}: {suite['seconds']:.0f} s ({suite['minutes']} min), {suite['counts']}")
        for row in suite["slowest"]:
            print(f"  {row['seconds']:7.1f} s  {row['phase']:8s} {row['test']}")
    return 0


if __name__ == "__main__":
    _checks.stop_as_interrupt()  # kill, timeout: temporary folders are removed as on Ctrl-C
    sys.exit(main())
