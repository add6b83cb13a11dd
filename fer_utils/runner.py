"""The chain runner: execute the numbered notebooks in order with papermill.

    python -m fer_utils run [--data-dir DIR] [--work-dir DIR] [-p NAME VALUE]... [--from NN] [--until NN]
                            [--timeout S] [--publish]

Executed copies go to ``<work_dir>/executed/``; the run's record to ``<work_dir>/run.json``. The data
and work folders reach the notebooks through ``FER_DATA_DIR`` and ``FER_WORK_DIR`` (so the executed
copies carry no machine paths); ``-p`` parameters are injected papermill-style into each notebook that
declares them, and a name no notebook declares is an error.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from fer_utils.workfolder import EXECUTED_DIR, REPO_ROOT, RUN_RECORD, display_path, get_work_dir, write_record

NOTEBOOK = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
FIGURES_DIR = REPO_ROOT / "figures"
#: The kernel's own log level: ERROR hides ipykernel's start-up warning about local TCP transport.
KERNEL_ARGS = ["--IPKernelApp.log_level=40"]


def numbered_notebooks(folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """The ``NN_verb_object.ipynb`` notebooks of a folder, in number order."""
    found = sorted(p for p in Path(folder).glob("*.ipynb") if NOTEBOOK.match(p.name))
    numbers = [p.name[:2] for p in found]
    dupes = {n for n in numbers if numbers.count(n) > 1}
    if dupes:
        raise SystemExit(f"Two notebooks share the number(s) {sorted(dupes)} in {folder}; renumber one.")
    return found


def parse_value(text: str):
    """papermill's ``-p`` typing: int, float, True/False/None, a Python literal, else the string."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        value = ast.literal_eval(text)
        if isinstance(value, (list, tuple, dict)):
            return value
    except (ValueError, SyntaxError):
        pass
    return text


def declared_parameters(path: Path) -> dict:
    """The names and defaults of a notebook's ``parameters`` cell."""
    import papermill

    return papermill.inspect_notebook(str(path))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fer_utils run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="dataset root holding images/ and data/legend.csv "
                        "(default: $FER_DATA_DIR, else download the pinned upstream archive)")
    parser.add_argument("--work-dir", help="where everything the run makes goes (default: $FER_WORK_DIR, else work/)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a notebook parameter, e.g. -p epochs 3 -p max_per_class 50 (repeatable)")
    parser.add_argument("--from", dest="start", metavar="NN", help="start at notebook NN (earlier outputs must exist)")
    parser.add_argument("--until", metavar="NN", help="stop after notebook NN, e.g. --until 02")
    parser.add_argument("--notebooks-dir", default=str(NOTEBOOKS_DIR), help=argparse.SUPPRESS)
    parser.add_argument("--publish", action="store_true",
                        help="after a successful run, copy the executed notebooks over notebooks/ and the figures "
                        "into figures/ (for maintainers refreshing the committed outputs)")
    parser.add_argument("--timeout", type=int, default=None, help="seconds a single cell may run (default: no limit)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import papermill
    from tqdm.auto import tqdm

    notebooks = numbered_notebooks(Path(args.notebooks_dir))
    if args.start:
        notebooks = [p for p in notebooks if p.name[:2] >= args.start.zfill(2)]
    if args.until:
        notebooks = [p for p in notebooks if p.name[:2] <= args.until.zfill(2)]
    if not notebooks:
        print(f"No numbered notebooks to run in {args.notebooks_dir} (--from/--until too narrow?).", file=sys.stderr)
        return 2
    params = {name: parse_value(value) for name, value in args.parameter}
    declared = {p: declared_parameters(p) for p in notebooks}
    unknown = set(params) - {name for d in declared.values() for name in d}
    if unknown:
        known = sorted({name for d in declared.values() for name in d} - {"work_dir", "data_dir"})
        print(f"Unknown parameter(s) {sorted(unknown)}: no notebook to run declares them. Known: {', '.join(known)}.",
              file=sys.stderr)
        return 2
    if args.publish and params:
        print("--publish copies outputs over the committed notebooks, whose parameter cells keep their defaults: "
              "publish only a run with default parameters (no -p).", file=sys.stderr)
        return 2
    for name in ("work_dir", "data_dir"):
        if name in params:
            print(f"Use --{name.replace('_', '-')} instead of -p {name}.", file=sys.stderr)
            return 2

    if args.data_dir:
        os.environ["FER_DATA_DIR"] = str(Path(args.data_dir).expanduser().resolve())
    work = get_work_dir(args.work_dir)
    os.environ["FER_WORK_DIR"] = str(work)
    executed = work / EXECUTED_DIR
    executed.mkdir(exist_ok=True)
    print(f"Work folder: {work}")
    record = {"step": "run", "parameters": params, "notebooks": {}, "status": "running"}
    t_run = time.perf_counter()
    status = 0
    bar = tqdm(notebooks, desc="notebooks", unit="nb", file=sys.stdout)
    for path in bar:
        bar.set_postfix_str(path.stem)
        out = executed / path.name
        mine = {k: v for k, v in params.items() if k in declared[path]}
        t0 = time.perf_counter()
        try:
            papermill.execute_notebook(str(path), str(out), parameters=mine, cwd=str(path.parent),
                                       kernel_name="python3", progress_bar=False, execution_timeout=args.timeout,
                                       extra_arguments=KERNEL_ARGS)
        except papermill.PapermillExecutionError as err:
            seconds = time.perf_counter() - t0
            record["notebooks"][path.stem] = {"seconds": round(seconds, 1), "status": "failed",
                                              "error": f"{err.ename}: {err.evalue}"}
            bar.close()
            print(f"\n{path.name} failed in cell {err.exec_count} after {seconds:.0f} s: {err.ename}: {err.evalue}\n"
                  f"The executed copy with the error is {out}", file=sys.stderr)
            status = 1
            break
        seconds = time.perf_counter() - t0
        record["notebooks"][path.stem] = {"seconds": round(seconds, 1), "status": "ok", "parameters": mine}
        tqdm.write(f"{path.stem}: {seconds:.0f} s", file=sys.stdout)
    bar.close()
    record["status"] = "ok" if status == 0 else "failed"
    record["total_seconds"] = round(time.perf_counter() - t_run, 1)
    write_record(work / RUN_RECORD, record)
    if status == 0:
        print(f"Done in {record['total_seconds']:.0f} s. Executed notebooks: {executed}; record: {work / RUN_RECORD}")
        if args.publish:
            publish(work, notebooks)
    return status


def publish(work: Path, notebooks: list[Path]) -> None:
    """Copy the executed notebooks over the committed ones and the figures into ``figures/``."""
    for path in notebooks:
        nb = json.loads((work / "executed" / path.name).read_text())
        nb["cells"] = [c for c in nb["cells"] if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
        papermill_meta = nb.get("metadata", {}).get("papermill", {})
        for key in ("input_path", "output_path", "parameters", "environment_variables"):
            papermill_meta.pop(key, None)  # machine paths; the published copy runs with defaults
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    figures = work / "figures"
    if figures.is_dir():
        FIGURES_DIR.mkdir(exist_ok=True)
        for fig in figures.glob("*.png"):
            shutil.copyfile(fig, FIGURES_DIR / fig.name)
    print(f"Published {len(notebooks)} notebooks to {display_path(NOTEBOOKS_DIR)} and figures to "
          f"{display_path(FIGURES_DIR)}.")
