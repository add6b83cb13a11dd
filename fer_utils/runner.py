"""The chain runner: execute the numbered notebooks in order with papermill.

    python -m fer_utils run [--data-dir DIR] [--work-dir DIR] [-p NAME VALUE]... [--from NN] [--until NN]
                            [--timeout S] [--publish]

Executed copies go to ``<work_dir>/runs/<id>/executed/``; the run's record to ``<work_dir>/runs/<id>/run.json``
and ``<work_dir>/run.json`` (the latest run, with the earlier ones in its ``history``). The data
and work folders reach the notebooks through ``FER_DATA_DIR`` and ``FER_WORK_DIR`` (so the executed
copies carry no machine paths); ``-p`` parameters are injected papermill-style into each notebook that
declares them, and a name no notebook declares is an error. The notebooks bar names the cell each notebook is
running and its section; while a notebook trains, the runner shows each epoch and the time left
(``fer_utils.progress``). ``--publish`` writes the committed notebooks through
``fer_utils.notebook_format`` and copies the figures into ``figures/``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

from fer_utils import saved_cells
from fer_utils.notebook_format import normalised_json, stamp_header_time
from fer_utils.parameters import (
    check_ranges,
    check_values,
    declared_parameters,
    parse_value,
    repeated_parameters,
)
from fer_utils.progress import CellProgress, TrainingProgress, show_epochs
from fer_utils.run_checks import (
    check_choices,
    check_config,
    check_folders,
    check_inputs,
    dataset_identity,
    kind_checked,
    recorded_data_dir,
)
from fer_utils.workfolder import (
    DATASET_RECORD,
    EXECUTED_DIR,
    FIGURES_DIR,
    MODEL_FILE,
    NOTEBOOKS_DIR,
    PUBLISHED_FIGURES,
    PUBLISHED_RUN,
    RUN_RECORD,
    RUNS_DIR,
    TRAIN_PROGRESS,
    display_path,
    get_work_dir,
    numbered_notebooks,
    read_record,
    sha256_of,
    write_record,
)

#: The notebooks bar: how many have run and for how long, but no count-based "time left" (notebook 05
#: takes most of the run's time; the time left in training is shown from its progress lines instead).
BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"


# --------------------------------------------------------------------------------------------------
# The kernel: quiet on success, loud on errors
# --------------------------------------------------------------------------------------------------


@functools.cache
def kernel_manager_class() -> type:
    """The jupyter_client kernel manager the runner hands papermill (made on first use, so that importing
    this module does not import jupyter_client).

    It is nbclient's default, ``AsyncKernelManager``, with two changes, so that a successful run prints only
    the runner's own lines while the kernel's errors and warnings still reach the terminal:

    - **No interrupt before shutdown.** jupyter_client sends a kernel SIGINT before it asks it to shut down.
      papermill's last request to a kernel is ``kernel_info`` (for the notebook's ``language_info``), and
      ipykernel installs Python's SIGINT handler while it handles a request, until just after it has sent the
      reply: an interrupt landing in that window makes the kernel log ``ERROR | KeyboardInterrupt caught in
      kernel.`` (3 notebooks in 30 here). After a run the kernel is idle and the shutdown request alone
      stops it; a kernel still busy (a cell that ran over ``--timeout``) is terminated after half of
      ``shutdown_wait_time`` (2.5 s), then killed, as before.
    - **Encrypted transport.** With CurveZMQ in pyzmq, ``transport_encryption = "auto"`` gives kernels whose
      kernelspec declares support (ipykernel's does) a key pair, so the kernel no longer warns that it is
      "running over TCP without encryption" (and no kernel log level has to hide that warning).
    """
    import zmq
    from jupyter_client import AsyncKernelManager
    from traitlets import default

    class RunnerKernelManager(AsyncKernelManager):
        @default("transport_encryption")
        def _transport_encryption_default(self) -> str:
            return "auto" if zmq.has("curve") else "disabled"

        async def _async_interrupt_kernel(self) -> None:
            if self.shutting_down:  # set by shutdown_kernel before it interrupts; see the docstring above
                return
            await super()._async_interrupt_kernel()

        interrupt_kernel = _async_interrupt_kernel

        async def _async_launch_kernel(self, kernel_cmd, **kw) -> None:  # its log through forward_kernel_log
            read, write = os.pipe()
            try:
                await super()._async_launch_kernel(kernel_cmd, **{**kw, "stderr": write})
            except BaseException:
                os.close(read)
                raise
            finally:
                os.close(write)  # the kernel holds its own copy: the pipe ends when the kernel does
            copier = threading.Thread(target=forward_kernel_log, args=(read,), daemon=True, name="kernel log")
            copier.start()
            LOG_COPIERS.append(copier)

    return RunnerKernelManager


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """An argparse type: a whole number above 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1 (seconds)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fer_utils run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="the dataset: the muxspace layout (images/ and data/legend.csv), class "
                        "folders (DIR/<emotion>/*.jpg, or train/ and test/ of them) or a CSV of image,emotion[,person] "
                        "(default: $FER_DATA_DIR, else download the pinned upstream archive)")
    parser.add_argument("--work-dir", help="where everything the run makes goes (default: $FER_WORK_DIR, else work/)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a notebook parameter, e.g. -p epochs 3 -p max_per_class 50 (repeatable)")
    parser.add_argument("--from", dest="start", metavar="NN", type=notebook_number,
                        help="start at notebook NN (earlier outputs must exist)")
    parser.add_argument("--until", metavar="NN", type=notebook_number, help="stop after notebook NN, e.g. --until 02")
    parser.add_argument("--notebooks-dir", default=str(NOTEBOOKS_DIR), help=argparse.SUPPRESS)
    parser.add_argument("--publish", action="store_true",
                        help="after a successful run, copy the executed notebooks over notebooks/ and the figures "
                        "into figures/ (for maintainers refreshing the committed outputs)")
    parser.add_argument("--timeout", type=positive_int, default=None,
                        help="seconds a single cell may run (default: no limit)")
    return parser


#: What ``main`` sets for the kernels it starts: the dataset, what the notebooks say it came from, the work folder.
KERNEL_ENV = ("FER_DATA_DIR", "FER_DATA_ORIGIN", "FER_WORK_DIR")


def main(argv: list[str] | None = None) -> int:
    """``python -m fer_utils run``. The variables it sets for its kernels (``KERNEL_ENV``) are put back as they were
    when it returns, so a caller in the same process (a script, a test) keeps its own dataset and work folder."""
    saved = {name: os.environ.get(name) for name in KERNEL_ENV}
    try:
        return _run(argv)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def notebook_number(text: str) -> str:
    """``--from``/``--until``: a notebook's number, ``5`` or ``05`` (an ``argparse`` type: anything else is a usage
    error, before any work)."""
    if not text.strip().isdigit() or len(text.strip()) > 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not a notebook number: give its two digits, e.g. 05")
    return text.strip().zfill(2)


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    import papermill
    from nbclient.exceptions import DeadKernelError
    from tqdm.auto import tqdm

    notebooks = numbered_notebooks(Path(args.notebooks_dir))
    if args.start:
        notebooks = [p for p in notebooks if p.name[:2] >= args.start.zfill(2)]
    if args.until:
        notebooks = [p for p in notebooks if p.name[:2] <= args.until.zfill(2)]
    if not notebooks:
        there = [p.name[:2] for p in numbered_notebooks(Path(args.notebooks_dir))]
        chosen = " ".join(f"{flag} {value}" for flag, value in (("--from", args.start), ("--until", args.until))
                          if value)
        print(f"No notebooks to run: {chosen or 'the range'} selects none of those in {args.notebooks_dir}"
              + (f" (numbered {', '.join(there)})." if there else " (there are none)."), file=sys.stderr)
        return 2
    root = Path(args.notebooks_dir).resolve().parent
    drift = saved_cells.problems(root) if (root / "fer_utils").is_dir() else []
    if drift:  # the later steps import the package: they would run other code than the notebooks show
        print("The notebooks' `# @save` cells and the package do not agree:\n  " + "\n  ".join(drift)
              + "\nDo what each line says (a cell edited since the last export: run "
              f"`{saved_cells.EXPORT_COMMAND}`, or undo the edit), so that every step runs the cells as they are; "
              "then run again.", file=sys.stderr)
        return 2
    repeated = repeated_parameters(args.parameter)
    if repeated:
        print(f"error: {repeated}", file=sys.stderr)
        return 2
    params = {name: parse_value(value) for name, value in args.parameter}
    declared = {p: declared_parameters(p) for p in notebooks}
    unknown = set(params) - {name for d in declared.values() for name in d}
    if unknown:
        known = sorted({name for d in declared.values() for name in d} - {"work_dir", "data_dir"})
        elsewhere = {name: [p.stem for p in numbered_notebooks(Path(args.notebooks_dir))
                            if p not in declared and name in declared_parameters(p)] for name in sorted(unknown)}
        first, last = notebooks[0].name[:2], notebooks[-1].name[:2]
        hints = [f"{name} is a parameter of {', '.join(where)}: "
                 + (f"start there with --from {where[0][:2]}" if where[0][:2] < first else
                    f"run up to it with --until {where[-1][:2]}" if where[-1][:2] > last else "")
                 for name, where in elsewhere.items() if where]
        print(f"Unknown parameter(s) {sorted(unknown)}: no notebook to run declares them"
              + (f" ({'; '.join(hints)})" if hints else "") + f". Known: {', '.join(known)}.", file=sys.stderr)
        return 2
    if args.publish and params:
        print("--publish copies outputs over the committed notebooks, whose parameter cells keep their defaults: "
              "publish only a run with default parameters (no -p).", file=sys.stderr)
        return 2
    if args.publish and notebooks != numbered_notebooks(Path(args.notebooks_dir)):
        print("--publish replaces every committed notebook and the published run's record, which the README "
              "quotes: publish only the whole chain (no --from, no --until).", file=sys.stderr)
        return 2
    identity = dataset_identity(args.data_dir or os.environ.get("FER_DATA_DIR"))  # None: check_folders says why
    if args.publish and identity is not None and identity != dataset_identity(None):
        print("--publish: the committed notebooks show the muxspace dataset at the pinned commit, and this run's "
              "data (--data-dir or $FER_DATA_DIR) is another dataset: publish only a run on that one.",
              file=sys.stderr)
        return 2
    for name in ("work_dir", "data_dir"):
        if name in params:
            print(f"Use --{name.replace('_', '-')} instead of -p {name}.", file=sys.stderr)
            return 2
    first = numbered_notebooks(Path(args.notebooks_dir))[0]
    data_dir, origin, problems = args.data_dir, "--data-dir", []
    if not data_dir and not os.environ.get("FER_DATA_DIR") and notebooks[0] != first:
        # a partial run on the data the work folder's results come from, not on the default download
        data_dir, problem = recorded_data_dir(get_work_dir(args.work_dir, create=False))
        origin, problems = "work folder", [problem] if problem else []
    defaults = {k: parse_value(info["default"]) for d in declared.values() for k, info in d.items()}
    problems += (check_values(kind_checked(params), declared)
                 or check_ranges(params, defaults) + check_choices(params) + check_config(params))
    problems += check_folders(data_dir, args.work_dir, notebooks, origin=origin)
    if not problems:
        problems += check_inputs(args.work_dir, notebooks)
    if problems:  # before any kernel starts or any folder is made
        print("\n".join(f"error: {line}" for line in problems), file=sys.stderr)
        return 2
    if "test_size" in params or "val_size" in params:
        from fer_utils.folders import fold_shares

        # the value asked for, else the default notebook 02's parameters cell declares (02 runs: it declares them)
        default = {k: parse_value(info["default"]) for d in declared.values() for k, info in d.items()}
        asked = (params.get("test_size", default.get("test_size")), params.get("val_size", default.get("val_size")))
        got = fold_shares(*asked)
        if max(abs(a - g) for a, g in zip(asked, got)) > 0.005:
            print(f"note: test_size {asked[0]}, val_size {asked[1]}: the split holds out whole folds of people, so "
                  f"the test split will be about {got[0]:.0%} and validation about {got[1]:.0%} of the usable faces "
                  "(shares of the form 1/k, such as 0.2 or 0.25, are kept as asked).", file=sys.stderr)

    if data_dir:
        os.environ["FER_DATA_DIR"] = str(Path(data_dir).expanduser().resolve())
        os.environ["FER_DATA_ORIGIN"] = origin  # what the notebooks say the dataset came from
    else:
        os.environ.pop("FER_DATA_ORIGIN", None)
        if os.environ.get("FER_DATA_DIR"):  # the kernels run in notebooks/: a relative path must not move
            os.environ["FER_DATA_DIR"] = str(Path(os.environ["FER_DATA_DIR"]).expanduser().resolve())
    work = get_work_dir(args.work_dir)
    os.environ["FER_WORK_DIR"] = str(work)
    try:
        lock = hold_work_folder(work)
    except WorkFolderBusy as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    term = _stop_as_interrupt()
    try:
        previous = read_record(work / RUN_RECORD) if (work / RUN_RECORD).exists() else None
        stamp = run_id = time.strftime("%Y%m%d-%H%M%S")
        n = 1
        while (work / RUNS_DIR / run_id).exists():  # two runs in one second
            n += 1
            run_id = f"{stamp}-{n}"
        executed = work / RUNS_DIR / run_id / EXECUTED_DIR
        executed.mkdir(parents=True)
        extends = previous.get("id") if previous and notebooks[0] != first else None  # a partial run (--from)
        print(f"Work folder: {work} · run {run_id}" + (f", extending run {extends}" if extends else ""))
        uses_model = extends and notebooks[0].name[:2] > TRAINS and any(p.name[:2] in USE_MODEL for p in notebooks)
        changed = model_changed_since(previous, work) if uses_model else None
        if changed:
            print(f"Note: the current model ({MODEL_FILE}) is not the one notebook {TRAINS} of run {extends} left: it "
                  "changed after that run (a notebook or the train command run by hand). This run's notebooks use "
                  f"the current one, so its pages and those of run {extends} describe different models; "
                  f"`--from {TRAINS}` trains one within the run.", file=sys.stderr)
        if origin == "work folder" and data_dir:
            print(f"Dataset: {data_dir}, the one this work folder's results come from ({DATASET_RECORD})")
        elif notebooks[0] != first and os.environ.get("FER_DATA_DIR") and (work / DATASET_RECORD).is_file():
            # the same dataset (check_folders compared them), named where it is now: later partial runs find it there
            write_record(work / DATASET_RECORD, dataset_record(os.environ["FER_DATA_DIR"]))
        record = {"step": "run", "id": run_id, "extends": extends, "parameters": params, "notebooks": {},
                  "status": "running", **({"model_changed": changed} if changed else {})}
        t_run = time.perf_counter()
        status = 0
        bar = tqdm(notebooks, desc="notebooks", unit="nb", file=sys.stdout, bar_format=BAR_FORMAT)
        tick = bar.refresh if sys.stdout.isatty() else None  # on a terminal, the clock moves every second
        for path in bar:
            bar.set_postfix_str(path.stem)
            out = executed / path.name
            mine = {k: v for k, v in params.items() if k in declared[path]}
            t0 = time.perf_counter()
            try:
                with TrainingProgress(work / TRAIN_PROGRESS, functools.partial(show_epochs, bar, path.stem), tick=tick):
                    papermill.execute_notebook(str(path), str(out), parameters=mine, cwd=str(path.parent),
                                               kernel_name="python3", progress_bar=False,
                                               execution_timeout=args.timeout,
                                               kernel_manager_class=kernel_manager_class(),
                                               on_cell_start=CellProgress(path, bar.set_postfix_str))
            except KeyboardInterrupt:
                LOG_COPIERS.clear()  # stopping: their lines are not shown anyway
                seconds = time.perf_counter() - t0
                record["notebooks"][path.stem] = {"seconds": round(seconds, 1), "status": "interrupted"}
                bar.close()
                print(f"\ninterrupted in {path.name} after {seconds:.0f} s; {RUN_RECORD} records what had finished. "
                      f"Run again to go on (--from {path.name[:2]}).", file=sys.stderr)
                status = 130
                break
            except (papermill.PapermillExecutionError, TimeoutError, DeadKernelError) as err:
                finish_kernel_logs()
                seconds = time.perf_counter() - t0
                if isinstance(err, papermill.PapermillExecutionError):
                    where, error = f" in cell {err.exec_count}", f"{err.ename}: {err.evalue}"
                elif isinstance(err, TimeoutError):  # nbclient's CellTimeoutError
                    where, error = "", f"a cell ran longer than --timeout {args.timeout} s"
                else:
                    where, error = "", "the kernel died (killed, or out of memory)"
                record["notebooks"][path.stem] = {"seconds": round(seconds, 1), "status": "failed", "error": error}
                bar.close()
                print(f"\n{path.name} failed{where} after {seconds:.0f} s: {error}\n"
                      f"The executed copy with the error is {out}", file=sys.stderr)
                status = 1
                break
            finish_kernel_logs()
            seconds = time.perf_counter() - t0
            record["notebooks"][path.stem] = {"seconds": round(seconds, 1), "status": "ok", "parameters": mine}
            if path == first:  # its audit is written: the results in this work folder now come from this dataset
                write_record(work / DATASET_RECORD, dataset_record(os.environ.get("FER_DATA_DIR")))
            tqdm.write(f"{path.stem}: {seconds:.0f} s", file=sys.stdout)
        bar.close()
        record["status"] = {0: "ok", 130: "interrupted"}.get(status, "failed")
        record["total_seconds"] = round(time.perf_counter() - t_run, 1)
        # the model the chain's notebook 05 left, which a run extending this one should find current
        trained = record["notebooks"].get(next((p.stem for p in notebooks if p.name[:2] == TRAINS), ""), {})
        record["model_sha256"] = (current_model_sha(work) if trained.get("status") == "ok"
                                  else (previous or {}).get("model_sha256") if extends else None)
        write_record(work / RUNS_DIR / run_id / RUN_RECORD, record)
        history = (previous or {}).get("history", []) + ([{k: previous.get(k) for k in ("id", "extends", "status")}
                                                            | {"notebooks": list(previous.get("notebooks", {}))}]
                                                           if previous else [])
        write_record(work / RUN_RECORD, {**record, "history": history})  # the latest run, and the earlier ones
        if status == 0:
            print(f"Done in {record['total_seconds']:.0f} s. Executed notebooks: {executed}; "
                  f"record: {work / RUN_RECORD}")
            if args.publish:
                publish(work, notebooks, executed)
        return status
    finally:
        lock.unlink(missing_ok=True)
        for sig, handler in (term or {}).items():
            signal.signal(sig, handler)


#: The notebook that trains the current model (``MODEL_FILE``), and those that use it (08 trains in its own folder).
TRAINS = "05"
USE_MODEL = ("06", "07")


def current_model_sha(work: Path) -> str | None:
    """SHA-256 of the work folder's current model (``MODEL_FILE``), or None when there is none."""
    return sha256_of(work / MODEL_FILE) if (work / MODEL_FILE).is_file() else None


def model_changed_since(previous: dict | None, work: Path) -> dict | None:
    """``{"left": sha, "found": sha}`` (first 12 hex digits) when the current model is not the one notebook 05 of
    the chain of runs ending with ``previous`` left (its ``model_sha256``; a notebook or ``train`` run by hand since:
    a partial run from 06 on would mix models); None when it is, or when none was recorded."""
    left = (previous or {}).get("model_sha256")
    found = current_model_sha(work)
    if not left or found == left:
        return None
    return {"left": left[:12], "found": (found or "none")[:12]}


#: The file that marks a work folder in use by a run (its process id and start time).
LOCK_FILE = ".run.lock"


class WorkFolderBusy(RuntimeError):
    """Another run, still alive, is using the work folder."""


def hold_work_folder(work: Path) -> Path:
    """Mark ``work`` as used by this run (``LOCK_FILE``, made only if absent); returns the mark, which the caller
    removes. A mark left by a run that no longer exists (killed) is taken over; one of a live run raises
    ``WorkFolderBusy``: two runs at once in one folder would write over each other's files and records."""
    lock = work / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(lock.read_text(encoding="utf-8"))
                pid = int(held["pid"])
                os.kill(pid, 0)  # raises if no such process
            except ProcessLookupError:
                lock.unlink(missing_ok=True)  # left by a run that was killed
                continue
            except (OSError, ValueError, KeyError, TypeError):  # unreadable, or a process of another user: in use
                held = {"pid": "?", "started": "?"}
            raise WorkFolderBusy(
                f"another run (process {held.get('pid')}, started {held.get('started')}) is using the work folder "
                f"{work}: wait for it to finish, or give this one another --work-dir. If no run is going on, "
                f"delete {lock}.") from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
        return lock
    raise WorkFolderBusy(f"could not mark the work folder {work} as in use ({lock}): try again.")


#: Set when Ctrl-C or SIGTERM stops a run: from then on the kernel's own log lines (a kernel shut down in the middle
#: of a cell logs the replies it can no longer send) are not shown; the runner says the one line.
STOPPING = threading.Event()


class _QuietWhileStopping(logging.Filter):
    """On the ``asyncio`` and ``papermill`` loggers: once the run is stopping, the kernel it shuts down makes nbclient
    log ``Kernel died while waiting for execute reply.``, and the kernel tasks it cancels may end in a
    ``DeadKernelError`` nobody retrieves, which asyncio would log (``Task exception was never retrieved``, a
    traceback). The runner's one line says what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not STOPPING.is_set()


def _stop_as_interrupt() -> dict | None:
    """Make SIGTERM (``kill``, ``timeout``, a scheduler) end the run as Ctrl-C does: the notebook that was running
    is recorded as interrupted and ``run.json`` written; either sets ``STOPPING``. Returns the handlers it replaced
    (None off the main thread, where signals cannot be handled)."""
    def stop(signum, frame):
        STOPPING.set()
        raise KeyboardInterrupt

    STOPPING.clear()
    for name in ("asyncio", "papermill"):  # papermill's: nbclient's "Kernel died while waiting for execute reply."
        quiet = logging.getLogger(name)
        if not any(isinstance(f, _QuietWhileStopping) for f in quiet.filters):
            quiet.addFilter(_QuietWhileStopping())
    try:
        return {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:
        return None


#: The threads copying the kernels' logs (``forward_kernel_log``), joined once a notebook's kernel is gone.
LOG_COPIERS: list[threading.Thread] = []


def finish_kernel_logs(timeout: float = 5.0) -> None:
    """Wait (at most ``timeout`` s each) until every kernel log copied so far is on the terminal: a kernel's last
    lines come before the runner's next."""
    while LOG_COPIERS:
        LOG_COPIERS.pop().join(timeout)


def forward_kernel_log(fd: int) -> None:
    """Copy a kernel's stderr (its log: errors and warnings) to the runner's, line by line, until the kernel
    closes it; nothing once the run is stopping (``STOPPING``)."""
    with open(fd, "rb", buffering=0) as pipe:
        for line in iter(pipe.readline, b""):  # read to the end whatever happens: a full pipe would block the kernel
            if STOPPING.is_set():
                continue
            try:
                sys.stderr.write(line.decode("utf-8", "replace"))
                sys.stderr.flush()
            except (OSError, ValueError):  # a terminal gone, a closed stream: the lines are dropped, not the kernel
                pass


def dataset_record(data_dir: str | None) -> dict:
    """What ``dataset.json`` holds: the dataset's identity (``run_checks.dataset_identity``) and, when a folder
    was named, that folder, which a later partial run uses when given none (``run_checks.recorded_data_dir``)."""
    identity = dataset_identity(data_dir) or {}
    return {**identity, "path": str(Path(data_dir).expanduser().resolve())} if data_dir and identity else identity


def published_record(work: Path) -> dict:
    """The latest run's record, with the disk each top-level entry of the work folder takes (MB): what the README
    quotes of the published run, committed beside the notebooks as ``notebooks/published_run.json``."""
    def size(path: Path) -> int:
        return sum(p.stat().st_size for p in [path, *path.rglob("*")] if p.is_file()) if path.is_dir() else \
            path.stat().st_size

    record = read_record(work / RUN_RECORD)
    disk = {p.name: round(size(p) / 1e6, 1) for p in sorted(work.iterdir()) if p.name != LOCK_FILE}
    return {**record, "disk_mb": disk, "disk_mb_total": round(sum(disk.values()), 1)}


def publish(work: Path, notebooks: list[Path], executed: Path) -> None:
    """Write the executed notebooks, normalised (``normalise_notebook``), over the committed ones, and copy
    the figures into ``figures/``."""
    seconds = {name: info.get("seconds") for name, info in read_record(work / RUN_RECORD)["notebooks"].items()}
    for path in notebooks:
        nb = json.loads((executed / path.name).read_text(encoding="utf-8"))
        if seconds.get(path.stem) is not None:
            stamp_header_time(nb, seconds[path.stem])  # the header's time is this run's
        path.write_text(normalised_json(nb), encoding="utf-8")
    figures = work / FIGURES_DIR
    if figures.is_dir():
        PUBLISHED_FIGURES.mkdir(exist_ok=True)
        for fig in figures.glob("*.png"):
            shutil.copyfile(fig, PUBLISHED_FIGURES / fig.name)
    write_record(PUBLISHED_RUN, published_record(work), stamp=False)
    print(f"Published {len(notebooks)} notebooks to {display_path(NOTEBOOKS_DIR)} and figures to "
          f"{display_path(PUBLISHED_FIGURES)}.")
