"""The chain runner: order, parameters, --until, failures (on tiny throwaway notebooks)."""

import json
import os
import subprocess
import sys
import time

import nbformat
import pytest

from fer_utils import parameters, progress, runner, workfolder


def _notebook(path, params_src, body_src, heading=None):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(params_src)
    params.metadata["tags"] = ["parameters"]
    section = [nbformat.v4.new_markdown_cell(f"## {heading}\n\nWhat it does.")] if heading else []
    nb.cells = [params, *section, nbformat.v4.new_code_cell(body_src)]
    nbformat.write(nb, path)


@pytest.fixture
def chain(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    write = "import os, pathlib\npathlib.Path(os.environ['FER_WORK_DIR'], '{name}.txt').write_text(str({value}))"
    _notebook(folder / "01_first_step.ipynb", "epochs = 1", write.format(name="01", value="epochs"))
    _notebook(folder / "02_second_step.ipynb", "max_per_class = None", write.format(name="02", value="max_per_class"))
    _notebook(folder / "03_failing_step.ipynb", "x = 1", "raise ValueError('planted failure')")
    (folder / "notes.ipynb").write_text("{}")  # not numbered: ignored
    return folder


def test_numbered_notebooks_in_order(chain):
    assert [p.name[:2] for p in workfolder.numbered_notebooks(chain)] == ["01", "02", "03"]


@pytest.mark.parametrize("text, value", [("3", 3), ("0.5", 0.5), ("True", True), ("None", None),
                                         ("seed_cnn", "seed_cnn"), ("[64, 64]", [64, 64])])
def test_parse_value_like_papermill(text, value):
    assert parameters.parse_value(text) == value


def test_runs_in_order_passes_parameters_and_stops_until(chain, tmp_path):
    work = tmp_path / "work"
    rc = runner.main(["--notebooks-dir", str(chain), "--work-dir", str(work), "--until", "02",
                      "-p", "epochs", "3", "-p", "max_per_class", "7"])
    assert rc == 0
    assert (work / "01.txt").read_text() == "3" and (work / "02.txt").read_text() == "7"
    record = json.loads((work / "run.json").read_text())
    assert list(record["notebooks"]) == ["01_first_step", "02_second_step"] and record["status"] == "ok"
    assert record["notebooks"]["01_first_step"]["parameters"] == {"epochs": 3}  # only what it declares
    assert [p.name for p in workfolder.run_notebooks(work)] == ["01_first_step.ipynb", "02_second_step.ipynb"]


def test_the_kernels_get_the_folders_and_the_caller_keeps_its_own(chain, tmp_path, synthetic_data_dir, monkeypatch):
    """``main`` sets the dataset and the work folder for its kernels and, called in-process (a script, a test), puts
    the caller's variables back: a later ``get_dataset()`` there must not say the data came from ``--data-dir``."""
    monkeypatch.setenv("FER_WORK_DIR", "the caller's work folder")
    for name in ("FER_DATA_DIR", "FER_DATA_ORIGIN"):
        monkeypatch.delenv(name, raising=False)
    work = tmp_path / "work"
    assert runner.main(["--notebooks-dir", str(chain), "--data-dir", str(synthetic_data_dir), "--work-dir", str(work),
                        "--until", "01"]) == 0
    assert (work / "01.txt").read_text() == "1"  # the kernel wrote into the work folder it was given
    assert os.environ["FER_WORK_DIR"] == "the caller's work folder"
    assert "FER_DATA_DIR" not in os.environ and "FER_DATA_ORIGIN" not in os.environ


def test_stops_at_first_failure_and_names_the_executed_copy(chain, tmp_path, capsys):
    work = tmp_path / "work"
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(work)]) == 1
    err = capsys.readouterr().err
    assert "03_failing_step.ipynb failed" in err and "planted failure" in err
    run_id = json.loads((work / "run.json").read_text())["id"]
    assert str(work / "runs" / run_id / "executed" / "03_failing_step.ipynb") in err
    assert json.loads((work / "run.json").read_text())["status"] == "failed"


def test_unknown_parameter_is_refused(chain, tmp_path, capsys):
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(tmp_path), "-p", "epoch", "3"]) == 2
    assert "Unknown parameter(s) ['epoch']" in capsys.readouterr().err


def test_a_parameter_given_twice_is_refused(chain, tmp_path, capsys):
    """-p epochs 1 -p epochs 3 trained 3 epochs without a word; the same value twice is harmless."""
    from fer_utils import train_command

    args = ["--notebooks-dir", str(chain), "--work-dir", str(tmp_path / "w"), "-p", "epochs", "1", "-p", "epochs", "3"]
    assert runner.main(args) == 2
    assert capsys.readouterr().err == "error: -p epochs is given 2 times (1, 3): give each parameter once\n"
    assert not (tmp_path / "w").exists()
    assert train_command.main(["--work-dir", str(tmp_path / "w"), "-p", "seed", "1", "-p", "seed", "2"]) == 2
    assert "-p seed is given 2 times (1, 2)" in capsys.readouterr().err
    assert runner.main([*args[:4], "-p", "epochs", "1", "-p", "epochs", "1", "--until", "01"]) == 0


def test_publish_refuses_non_default_parameters(chain, tmp_path, capsys):
    args = ["--notebooks-dir", str(chain), "--work-dir", str(tmp_path), "--publish", "-p", "epochs", "2"]
    assert runner.main(args) == 2
    assert "publish only a run with default parameters" in capsys.readouterr().err


def test_publish_refuses_a_partial_run_or_other_data(chain, tmp_path, capsys):
    """--publish replaces every committed notebook and the published record: only the whole chain, only on the
    pinned dataset (a run on other data once overwrote notebook 01 and its figure with synthetic faces)."""
    work = tmp_path / "work"
    for extra in (["--until", "02"], ["--from", "02"]):
        assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(work), "--publish", *extra]) == 2
        assert "publish only the whole chain" in capsys.readouterr().err
    gone = tmp_path / "gone"  # not there: said as such (check_folders), not as another dataset
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(work), "--publish", "--from", "01",
                        "--until", "03", "--data-dir", str(gone)]) == 2  # --from 01 --until 03: the whole chain
    assert capsys.readouterr().err.strip() == f"error: --data-dir {gone} does not exist"
    other = _dataset(tmp_path / "other", ["a.jpg"])
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(work), "--publish", "--data-dir",
                        str(other)]) == 2
    assert "is another dataset: publish only a run on that one" in capsys.readouterr().err
    assert not work.exists()


def test_someones_own_folder_is_refused_as_work_folder(chain, tmp_path, capsys):
    """A non-empty folder none of whose entries a notebook makes is someone's own (a typo, or the home folder):
    refused before anything is written; a folder that is a work folder, also holding other things, is used."""
    mine = tmp_path / "thesis"
    mine.mkdir()
    for name in ("chapter1.docx", "figures.key", "data.xlsx", "notes.txt"):
        (mine / name).write_text("precious")
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(mine), "--until", "01"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: the work folder {mine} holds files that no notebook of this series made (chapter1.docx, "
                   "data.xlsx, figures.key, …) and none that one did: the notebooks write and replace files there, "
                   "so choose a new or empty folder (--work-dir)")
    assert sorted(p.name for p in mine.iterdir()) == ["chapter1.docx", "data.xlsx", "figures.key", "notes.txt"]
    hidden = tmp_path / "fresh"
    (hidden / ".ipynb_checkpoints").mkdir(parents=True)  # hidden entries count for neither
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(hidden), "--until", "01"]) == 0
    (hidden / "my_photos").mkdir()  # a work folder with the user's own things beside: still a work folder
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(hidden), "--until", "01"]) == 0
    thesis = tmp_path / "thesis2"  # a generic name of ours (figures/) holding someone's files: not a work folder
    (thesis / "figures").mkdir(parents=True)
    (thesis / "figures" / "final_plot.pdf").write_text("precious")
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(thesis), "--until", "01"]) == 2
    assert "holds files that no notebook of this series made (figures)" in capsys.readouterr().err
    for made in ("site/index.html", "figures/01_class_distribution.png", "lost+found/x"):
        work = tmp_path / made.replace("/", "_")  # after `fer_utils site`, a notebook's Setup cell, a new volume
        (work / made).parent.mkdir(parents=True)
        (work / made).write_text("")
        assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(work), "--until", "01"]) == 0, made


def test_cli_help_lists_commands(capsys):
    from fer_utils.__main__ import main

    assert main(["--help"]) == 0
    assert "run" in capsys.readouterr().out
    assert main([]) == 2  # no command: a usage error, said on stderr
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("usage: python -m fer_utils {run,")


def test_a_timed_out_cell_fails_the_run_cleanly(tmp_path, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    _notebook(folder / "01_slow_step.ipynb", "x = 1", "import time\ntime.sleep(60)")
    work = tmp_path / "work"
    assert runner.main(["--notebooks-dir", str(folder), "--work-dir", str(work), "--timeout", "1"]) == 1
    assert "a cell ran longer than --timeout 1 s" in capsys.readouterr().err
    record = json.loads((work / "run.json").read_text())
    assert record["status"] == "failed" and record["notebooks"]["01_slow_step"]["status"] == "failed"


# --------------------------------------------------------------------------------------------------
# A successful run is quiet: no kernel log lines
# --------------------------------------------------------------------------------------------------

FAKE_TRAINING = """import json, os, pathlib, time
progress = pathlib.Path(os.environ['FER_WORK_DIR'], 'train_progress.jsonl')
progress.write_text('')  # as fer_utils.training does at the start of every run
for epoch in (1, 2):
    time.sleep(0.3)
    with open(progress, 'a') as fh:
        fh.write(json.dumps({'phase': 'head', 'epoch': epoch, 'epochs': 2, 'seconds': 0.3,
                             'elapsed_seconds': 0.3 * epoch, 'eta_seconds': 0.3 * (2 - epoch),
                             'loss': 1.5 / epoch, 'val_accuracy': 0.4 * epoch}) + '\\n')
print('trained', epochs)"""


def test_successful_run_prints_no_kernel_errors_or_warnings_and_shows_training(tmp_path, capfd):
    """Two tiny notebooks: the terminal shows the runner's lines and the epochs, and nothing from the kernels
    (``[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel.``, ``WARNING | ... TCP without encryption``)."""
    folder, work = tmp_path / "notebooks", tmp_path / "work"
    folder.mkdir()
    work.mkdir()
    stale = {"phase": "old", "epoch": 9, "epochs": 9, "val_accuracy": 0.123}
    (work / "train_progress.jsonl").write_text(json.dumps(stale) + "\n")  # an earlier run's: not shown
    _notebook(folder / "01_fake_training.ipynb", "epochs = 2", FAKE_TRAINING, heading="Train for a while")
    _notebook(folder / "02_after_training.ipynb", "y = 1", "print(y + 1)")
    assert runner.main(["--notebooks-dir", str(folder), "--work-dir", str(work), "-p", "epochs", "2"]) == 0
    captured = capfd.readouterr()
    out = captured.out + captured.err
    for noise in ("ERROR", "WARNING", "TCP", "KeyboardInterrupt", "Traceback"):
        assert noise not in out, f"{noise!r} in the runner's output:\n{out}"
    assert json.loads((work / "run.json").read_text())["status"] == "ok"
    lines = out.replace("\r", "\n").splitlines()
    shown = [line for line in lines if line.startswith("01_fake_training: epoch")]
    assert shown == ["01_fake_training: epoch 1/2 (head) 0.3 s · loss 1.500, val_acc 0.400 · ~1 s left",
                     "01_fake_training: epoch 2/2 (head) 0.3 s · loss 0.750, val_acc 0.800 · training done"]
    assert "epoch 9/9" not in out and "0.123" not in out
    bar = [line for line in lines if line.startswith("notebooks:")]
    assert "<" not in "".join(bar)  # no count-based ETA
    # every notebook names the cell it is running (papermill's injected parameters cell is not counted)
    for cell in ("01_fake_training: cell 1/2]", "01_fake_training: cell 2/2 · Train for a while]",
                 "02_after_training: cell 2/2]"):
        assert any(line.endswith(cell) for line in bar), (cell, bar)


def test_kernel_manager_does_not_interrupt_a_kernel_it_is_shutting_down():
    """jupyter_client interrupts a kernel before shutting it down; an idle ipykernel then may log
    ``KeyboardInterrupt caught in kernel.`` The runner's kernel manager skips that interrupt, and only it."""
    import asyncio

    import zmq

    km = runner.kernel_manager_class()(kernel_name="python3")
    km.shutting_down = True
    assert asyncio.run(km.interrupt_kernel()) is None  # no kernel running, yet no complaint: nothing was sent
    km.shutting_down = False
    with pytest.raises(RuntimeError, match="No kernel is running"):  # any other interrupt goes through
        asyncio.run(km.interrupt_kernel())
    assert km.transport_encryption == ("auto" if zmq.has("curve") else "disabled")


# --------------------------------------------------------------------------------------------------
# Training progress
# --------------------------------------------------------------------------------------------------

EPOCH = {"phase": "head", "epoch": 3, "epochs": 14, "seconds": 12.3, "elapsed_seconds": 40.1,
         "eta_seconds": 135.0, "loss": 0.51, "val_accuracy": 0.8423}


def _append(path, text):
    with open(path, "a") as fh:
        fh.write(text)


@pytest.mark.parametrize("seconds, text", [(0, "~1 s left"), (40.4, "~40 s left"), (89, "~89 s left"),
                                           (135, "~2 min left"), (3599, "~1 h 00 min left"),
                                           (3900, "~1 h 05 min left")])
def test_format_time_left(seconds, text):
    assert progress.format_time_left(seconds) == text


def test_progress_postfix_and_line():
    assert progress.progress_postfix("05_train_model", EPOCH) == (
        "05_train_model: epoch 3/14, val_acc 0.842, ~2 min left")
    assert progress.progress_line("05_train_model", EPOCH) == (
        "05_train_model: epoch 3/14 (head) 12.3 s · loss 0.510, val_acc 0.842 · ~2 min left")
    no_eta = {k: v for k, v in EPOCH.items() if k != "eta_seconds"}  # pace so far: 40.1 s / 3 epochs × 11 left
    assert progress.time_left(no_eta) == pytest.approx(40.1 / 3 * 11)
    assert progress.progress_postfix("05", {**EPOCH, "epoch": 14}) == "05: epoch 14/14, val_acc 0.842, training done"
    garbage = {"epoch": "three", "epochs": None, "val_accuracy": float("nan"), "loss": True, "phase": 7}
    assert progress.progress_postfix("05", garbage) == "05: training"
    assert progress.progress_line("05", garbage) == "05: training"


def test_each_code_cell_is_labelled_with_its_place_and_section(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 05 · Train the model\n\nOverview."),
                nbformat.v4.new_code_cell("import os"),
                nbformat.v4.new_code_cell("   \n"),  # empty: never executed, not counted
                nbformat.v4.new_markdown_cell("Prose without a heading keeps the section."),
                nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_markdown_cell("## Compare the strategies on the same data and the same model, at last"),
                nbformat.v4.new_code_cell(["y = ", "2"])]  # a source as a list of lines, as files store it
    labels = progress.code_cell_labels(json.loads(nbformat.writes(nb)))
    ids = [nb.cells[i].id for i in (1, 4, 6)]
    assert [labels[i] for i in ids] == ["cell 1/3 · 05 · Train the model", "cell 2/3 · 05 · Train the model",
                                       "cell 3/3 · Compare the strategies on the same data…"]
    path = tmp_path / "05_train_model.ipynb"
    nbformat.write(nb, path)
    shown = []
    hook = progress.CellProgress(path, shown.append)
    hook(cell=nb.cells[4], cell_index=4)
    hook(cell=nbformat.v4.new_code_cell("epochs = 3"), cell_index=1)  # papermill's injected parameters: not shown
    hook(cell=nb.cells[0], cell_index=0)  # markdown: not shown
    assert shown == ["05_train_model: cell 2/3 · 05 · Train the model"]

    def broken(text):
        raise RuntimeError("terminal gone")

    failing = progress.CellProgress(path, broken)
    failing(cell=nb.cells[1], cell_index=1)  # never raises into the run
    assert isinstance(failing.error, RuntimeError)
    assert progress.CellProgress(tmp_path / "missing.ipynb", shown.append).labels == {}


def test_progress_file_returns_only_new_complete_lines(tmp_path):
    path = tmp_path / "train_progress.jsonl"
    followed = progress.ProgressFile(path)
    assert followed.new_entries() == []  # no file yet
    _append(path, json.dumps({"epoch": 9}) + "\n")
    stale = progress.ProgressFile(path)  # what the file holds when following starts is never returned
    assert stale.new_entries() == []
    _append(path, json.dumps({"epoch": 1}) + "\n" + '{"epoch": 2, "val_')  # the second line is half written
    assert stale.new_entries() == [{"epoch": 1}]
    assert stale.new_entries() == []
    _append(path, 'accuracy": 0.5}\n{not json}\n\n[1, 2]\n' + json.dumps({"epoch": 3}) + "\n")
    assert stale.new_entries() == [{"epoch": 2, "val_accuracy": 0.5}, {"epoch": 3}]  # garbled lines skipped
    path.write_text(json.dumps({"epoch": 1, "run": 2}) + "\n")  # truncated by a new training run
    assert stale.new_entries() == [{"epoch": 1, "run": 2}]
    path.unlink()
    assert stale.new_entries() == []
    path.write_bytes(b'\xff\xfe garbage\n' + json.dumps({"epoch": 2, "run": 2}).encode() + b"\n")
    assert stale.new_entries() == [{"epoch": 2, "run": 2}]


def test_training_progress_follows_the_file_in_a_thread_and_stops(tmp_path):
    path = tmp_path / "train_progress.jsonl"
    path.write_text(json.dumps({"epoch": 5, "epochs": 5}) + "\n")  # stale
    shown = []
    with progress.TrainingProgress(path, shown.extend, interval=0.02) as follower:
        path.write_text("")
        _append(path, json.dumps({"epoch": 1, "epochs": 2}) + "\n")
        for _ in range(250):  # up to 5 s
            if shown:
                break
            time.sleep(0.02)
        assert shown == [{"epoch": 1, "epochs": 2}]  # shown by the thread while the "notebook" runs
        _append(path, json.dumps({"epoch": 2, "epochs": 2}) + "\n")
    assert shown == [{"epoch": 1, "epochs": 2}, {"epoch": 2, "epochs": 2}]  # the last one at the latest on exit
    assert not follower._thread.is_alive() and follower.error is None


def test_training_progress_never_breaks_the_run(tmp_path):
    path = tmp_path / "train_progress.jsonl"

    def broken_display(entries):
        raise RuntimeError("display failed")

    with progress.TrainingProgress(path, broken_display, interval=0.01) as follower:
        _append(path, json.dumps({"epoch": 1}) + "\n")
        time.sleep(0.1)
    assert isinstance(follower.error, RuntimeError) and not follower._thread.is_alive()


# --------------------------------------------------------------------------------------------------
# Bad input is refused before any kernel starts or any folder is made
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["-p", "epochs", "abc"], "error: -p epochs 'abc': 01_first_step.ipynb declares epochs = 1, so the value must be "
                              "an integer"),
    (["-p", "epochs", "-3"], "error: Bad training configuration: epochs=-3"),
    (["-p", "max_per_class", "-1"], "error: -p max_per_class -1: must be at least 1 (images kept per emotion)"),
])
def test_bad_parameter_values_are_refused_in_one_line(chain, tmp_path, capsys, args, message):
    work = tmp_path / "work"
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(work), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [message] if "abc" in args else err.startswith(message)
    assert not work.exists()


def test_a_work_folder_inside_the_dataset_is_refused_before_anything_is_made(chain, tmp_path, capsys):
    dataset = tmp_path / "dataset"
    (dataset / "data").mkdir(parents=True)
    (dataset / "images").mkdir()
    (dataset / "data" / "legend.csv").write_text("user.id,image,emotion\nlab,a.jpg,happiness\n")
    before = sorted(p.relative_to(dataset) for p in dataset.rglob("*"))
    for work in (dataset, dataset / "work"):
        assert runner.main(["--notebooks-dir", str(chain), "--data-dir", str(dataset), "--work-dir", str(work)]) == 2
        assert "is inside the dataset" in capsys.readouterr().err
    # the same with no dataset named (no --data-dir, no $FER_DATA_DIR): a folder that holds one is still refused
    for work in (dataset, dataset / "work"):
        assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(work), "--until", "02"]) == 2
        assert f"is inside {dataset}, which holds a dataset; a dataset is only ever read" in capsys.readouterr().err
    assert sorted(p.relative_to(dataset) for p in dataset.rglob("*")) == before  # nothing written into it


def test_a_work_folder_that_is_a_file_is_refused(chain, tmp_path, capsys):
    file = tmp_path / "work.txt"
    file.write_text("mine")
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(file)]) == 2
    assert "is a file: choose a folder" in capsys.readouterr().err and file.read_text() == "mine"


@pytest.mark.parametrize("legend, message", [("", "is empty"), ("user.id,image,emotion\n", "has a header but no rows")])
def test_an_empty_legend_is_refused_before_notebook_01(chain, tmp_path, capsys, legend, message):
    dataset = tmp_path / "dataset"
    (dataset / "data").mkdir(parents=True)
    (dataset / "images").mkdir()
    (dataset / "data" / "legend.csv").write_text(legend)
    work = tmp_path / "work"
    assert runner.main(["--notebooks-dir", str(chain), "--data-dir", str(dataset), "--work-dir", str(work)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not work.exists()


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_ctrl_c_ends_with_one_line_and_a_consistent_record(tmp_path, capsys, stop):
    """SIGINT (Ctrl-C) or SIGTERM (kill, timeout) while notebook 02 runs: exit 130, one line (no traceback),
    run.json says what finished. While it runs, a second run in the same work folder is refused."""
    import signal

    folder = tmp_path / "notebooks"
    folder.mkdir()
    _notebook(folder / "01_quick_step.ipynb", "x = 1", "x")
    started = tmp_path / "started"
    _notebook(folder / "02_slow_step.ipynb", "x = 1",
              f"import pathlib, time\npathlib.Path({str(started)!r}).write_text('')\ntime.sleep(120)")
    work = tmp_path / "work"
    # A shell's background job starts with SIGINT ignored, and children inherit that: restore what a terminal gives.
    proc = subprocess.Popen([sys.executable, "-m", "fer_utils", "run", "--notebooks-dir", str(folder),
                             "--work-dir", str(work)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not started.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "notebook 02 never started"
        time.sleep(0.2)
    assert runner.main(["--notebooks-dir", str(folder), "--work-dir", str(work)]) == 2
    busy = capsys.readouterr().err
    assert busy.startswith(f"error: another run (process {proc.pid}, started ") and "is using the work folder" in busy
    proc.send_signal(getattr(signal, stop))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines() == [
        "interrupted in 02_slow_step.ipynb after " + err.split(" after ")[1].split(" s;")[0] + " s; run.json records "
        "what had finished. Run again to go on (--from 02)."]
    record = json.loads((work / "run.json").read_text())
    assert record["status"] == "interrupted"
    assert record["notebooks"]["01_quick_step"]["status"] == "ok"
    assert record["notebooks"]["02_slow_step"]["status"] == "interrupted"
    assert os.environ.get("FER_WORK_DIR") != str(work)
    assert not (work / runner.LOCK_FILE).exists() and len(record["history"]) == 0  # the refused run left no trace


def test_a_mark_left_by_a_killed_run_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / runner.LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "started": "earlier"}))
    lock = runner.hold_work_folder(tmp_path)
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    with pytest.raises(runner.WorkFolderBusy, match=f"another run \\(process {os.getpid()}, started"):
        runner.hold_work_folder(tmp_path)


# --------------------------------------------------------------------------------------------------
# Runs that never muddle one another
# --------------------------------------------------------------------------------------------------


def _dataset(root, rows):
    (root / "data").mkdir(parents=True)
    (root / "images").mkdir()
    (root / "data" / "legend.csv").write_text("user.id,image,emotion\n" + "".join(f"lab,{r},happiness\n" for r in rows))
    return root


def test_a_partial_run_keeps_the_full_runs_record_and_says_which_it_extends(chain, tmp_path):
    work = tmp_path / "work"
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(work), "--until", "02"]) == 0
    full = json.loads((work / "run.json").read_text())
    time.sleep(1.1)  # run ids are times to the second
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(work), "--from", "02", "--until", "02",
                        "-p", "max_per_class", "5"]) == 0
    partial = json.loads((work / "run.json").read_text())
    assert partial["extends"] == full["id"] != partial["id"] and list(partial["notebooks"]) == ["02_second_step"]
    assert partial["history"] == [{"id": full["id"], "extends": None, "status": "ok",
                                   "notebooks": ["01_first_step", "02_second_step"]}]
    kept = json.loads((work / "runs" / full["id"] / "run.json").read_text())
    assert list(kept["notebooks"]) == ["01_first_step", "02_second_step"]  # the full run's record is intact
    latest = workfolder.run_notebooks(work)
    assert [(p.name, p.parent.parent.name) for p in latest] == [("01_first_step.ipynb", full["id"]),
                                                                ("02_second_step.ipynb", partial["id"])]
    assert [p.parent.parent.name for p in workfolder.run_notebooks(work, full["id"])] == [full["id"]] * 2


def test_a_work_folder_belongs_to_one_dataset(chain, tmp_path, capsys):
    work = tmp_path / "work"
    one, other = _dataset(tmp_path / "one", ["a.jpg"]), _dataset(tmp_path / "other", ["b.jpg"])
    args = ["--notebooks-dir", str(chain), "--work-dir", str(work), "--until", "02"]
    assert runner.main([*args, "--data-dir", str(one)]) == 0
    before = sorted(p.name for p in (work / "runs").iterdir())
    assert runner.main([*args, "--data-dir", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: the work folder {work} holds results made from another dataset (muxspace")
    assert "--work-dir" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in (work / "runs").iterdir()) == before  # nothing ran
    time.sleep(1.1)
    assert runner.main([*args, "--data-dir", str(one)]) == 0  # the same dataset, wherever it is: fine


def test_a_partial_run_uses_the_dataset_the_work_folder_was_made_from(tmp_path, capsys, monkeypatch):
    """``run --from 05`` after ``run --data-dir MINE``: the later notebooks read MINE again (``dataset.json``), not
    the default download, and say where it came from; a dataset that is gone is named in one line."""
    folder, work = tmp_path / "notebooks", tmp_path / "work"
    folder.mkdir()
    seen = "import os, pathlib\npathlib.Path(os.environ['FER_WORK_DIR'], '{n}.txt').write_text(" \
           "os.environ.get('FER_DATA_DIR', '-') + '|' + os.environ.get('FER_DATA_ORIGIN', '-'))"
    _notebook(folder / "01_first_step.ipynb", "x = 1", seen.format(n="01"))
    _notebook(folder / "02_second_step.ipynb", "x = 1", seen.format(n="02"))
    mine = _dataset(tmp_path / "mine", ["a.jpg"])
    for name in ("FER_DATA_DIR", "FER_DATA_ORIGIN"):
        monkeypatch.delenv(name, raising=False)
    assert runner.main(["--notebooks-dir", str(folder), "--work-dir", str(work), "--data-dir", str(mine)]) == 0
    assert json.loads((work / "dataset.json").read_text())["path"] == str(mine.resolve())
    (work / "02.txt").unlink()
    capsys.readouterr()
    time.sleep(1.1)  # run ids are times to the second
    assert runner.main(["--notebooks-dir", str(folder), "--work-dir", str(work), "--from", "02"]) == 0
    assert (work / "02.txt").read_text() == f"{mine.resolve()}|work folder"
    assert f"Dataset: {mine.resolve()}, the one this work folder's results come from" in capsys.readouterr().out
    from fer_utils import data

    assert "the work folder's dataset.json" in data.open_dataset(mine, "work folder").describe()
    mine.rename(tmp_path / "moved")
    assert runner.main(["--notebooks-dir", str(folder), "--work-dir", str(work), "--from", "02"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: the work folder {work} holds results made from the dataset at {mine.resolve()}, which "
                   "is not there any more: name it with --data-dir (or run from notebook 01 on another dataset, in "
                   "another work folder)")
    time.sleep(1.1)
    moved = tmp_path / "moved"  # named again: the same dataset, wherever it is now
    assert runner.main(["--notebooks-dir", str(folder), "--work-dir", str(work), "--from", "02",
                        "--data-dir", str(moved)]) == 0
    assert (work / "02.txt").read_text() == f"{moved.resolve()}|--data-dir"
    time.sleep(1.1)  # the record now names where it is: a bare partial run finds it again
    assert runner.main(["--notebooks-dir", str(folder), "--work-dir", str(work), "--from", "02"]) == 0
    assert (work / "02.txt").read_text() == f"{moved.resolve()}|work folder"


def test_only_a_finished_notebook_01_claims_the_work_folder_for_its_dataset(chain, tmp_path, capsys):
    folder, work = tmp_path / "failing", tmp_path / "work"
    folder.mkdir()
    _notebook(folder / "01_failing_step.ipynb", "x = 1", "raise ValueError('no dataset today')")
    one, other = _dataset(tmp_path / "one", ["a.jpg"]), _dataset(tmp_path / "other", ["b.jpg"])
    assert runner.main(["--notebooks-dir", str(folder), "--work-dir", str(work), "--data-dir", str(one)]) == 1
    assert not (work / "dataset.json").exists()  # 01 failed: the folder holds no results of that dataset
    time.sleep(1.1)
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(work), "--data-dir", str(other),
                        "--until", "01"]) == 0  # so another dataset may use it


def test_the_repository_or_a_folder_holding_the_dataset_is_refused_as_work_folder(chain, tmp_path, capsys):
    before = sorted(p.name for p in workfolder.REPO_ROOT.iterdir())
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(workfolder.REPO_ROOT), "--until", "01"]) == 2
    assert "is the repository itself" in capsys.readouterr().err
    assert sorted(p.name for p in workfolder.REPO_ROOT.iterdir()) == before  # nothing written there
    listed = sorted(p.name for p in workfolder.NOTEBOOKS_DIR.iterdir())
    for inside, folder in ((workfolder.NOTEBOOKS_DIR, "notebooks"),
                           (workfolder.REPO_ROOT / "figures" / "x", "figures")):
        assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(inside), "--until", "01"]) == 2
        assert f"is inside the repository's {folder}/" in capsys.readouterr().err
    assert sorted(p.name for p in workfolder.NOTEBOOKS_DIR.iterdir()) == listed  # nothing written there
    assert not (workfolder.REPO_ROOT / "figures" / "x").exists()
    work = tmp_path / "work"
    dataset = _dataset(work / "data", ["a.jpg"])
    assert runner.main(["--notebooks-dir", str(chain), "--work-dir", str(work), "--data-dir", str(dataset)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: the dataset {dataset.resolve()} (--data-dir) is inside the work folder {work}, whose "
                   "contents the notebooks write and replace: move the dataset out, or choose another work folder "
                   "(--work-dir)")
    assert not (work / "runs").exists()


def test_counts_and_shares_out_of_range_are_named():
    assert parameters.check_ranges({"max_per_class": None, "faces": 2000, "scale_epochs": 2, "seed": -1}) == []
    assert parameters.check_ranges({"faces": 0, "scale_epochs": 1, "n_gradcam": 0}) == [
        "-p faces 0: must be at least 1 (generated faces)",
        "-p scale_epochs 1: must be at least 2 (epochs per strategy: the first fills the cache, the others are timed)"]
    assert parameters.check_ranges({"faces": "abc", "n_boot": 10.5}) == [  # 08's faces default is an expression
        "-p n_boot 10.5: must be a whole number of bootstrap resamples, at least 1",
        "-p faces 'abc': must be a whole number of generated faces, at least 1"]
    assert parameters.check_ranges({"test_size": 1.5}) == [
        "-p test_size 1.5: must be a share between 0 and 1 (of the usable images)"]
    assert parameters.check_ranges({"test_size": 0.6, "val_size": 0.4}) == [
        "-p test_size 0.6 -p val_size 0.4: together they must leave images to train on (their sum below 1)"]
    defaults = {"test_size": 0.2, "val_size": 0.1}  # notebook 02's declared values: the one not given
    assert parameters.check_ranges({"test_size": 0.95}, defaults) == [
        "-p test_size 0.95 with val_size 0.1 (the default): together they must leave images to train on (their sum "
        "below 1)"]
    assert parameters.check_ranges({"val_size": 0.5}, defaults) == []
    assert parameters.check_ranges({}, {"test_size": 0.9, "val_size": 0.9}) == []  # defaults alone are not checked


@pytest.mark.parametrize("args, message", [
    # each failed only inside its notebook: 07's detector after the whole training, 03's image size as a MemoryError
    (["-p", "detector", "foo"], "error: -p detector 'foo': must be one of haar, mtcnn"),
    (["-p", "detection", "faces"], "error: -p detection 'faces': must be one of auto, detect, whole"),
    (["-p", "precision", "foo"], "error: -p precision 'foo': precision must be 'auto', 'bf16', 'fp16' or 'float32'"),
    (["-p", "image_size", "100000"], "error: -p image_size 100000: at most 512 pixels a side"),
    (["-p", "label_map", "{'joy':"], "error: -p label_map \"{'joy':\": not readable as a Python dict (check its"),
    (["-p", "label_map", '{"bored": null}'], "error: -p label_map '{\"bored\": null}': not readable as a Python dict "
                                             "(it is Python, not JSON: write None for null)"),
    (["-p", "label_map", "{'joy': 'happyness'}"], "error: -p label_map: label_map maps to something that is not an "
                                                  "emotion: 'joy': 'happyness'"),
    (["-p", "learning_rate", "nan"], "error: Bad training configuration: learning_rate=nan (a finite number)"),
    (["--work-dir", ""], "error: --work-dir is empty"),
    # each failed in notebook 05, after 01-04 had run
    (["-p", "pipeline", "generator", "-p", "mixup", "0.2"], "error: Bad training configuration: mixup needs "
                                                            "pipeline='tf.data'"),
    (["-p", "pipeline", "generator", "-p", "augment", "strong"], "error: Bad training configuration: "
                                                                 "augment='strong': the legacy generator knows only"),
    (["-p", "strategy", "multi_worker"], "error: -p strategy multi_worker: the notebooks train on this machine"),
])
def test_values_the_real_notebooks_would_fail_on_are_refused_first(tmp_path, capsys, args, message):
    work = tmp_path / "work"
    argv = ["--work-dir", str(work), *args] if "--work-dir" not in args else args
    assert runner.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and len(err.splitlines()) == 1, err
    assert not work.exists()


@pytest.mark.parametrize("value", ["None", "0.5", "balanced"])
def test_class_weight_takes_every_value_its_cell_documents(tmp_path, capsys, value):
    """Notebook 05 declares class_weight = "sqrt" and documents None, "balanced" or a power: none is refused for
    not being a string (the run below stops only because notebook 02 has not run)."""
    assert runner.main(["--work-dir", str(tmp_path / "work"), "--from", "05", "-p", "class_weight", value]) == 2
    err = capsys.readouterr().err
    assert "-p class_weight" not in err and "Bad training" not in err and "02_preprocess_into_folders" in err, err


def test_a_parameter_of_an_earlier_notebook_says_where_to_start(tmp_path, capsys):
    assert runner.main(["--work-dir", str(tmp_path / "work"), "--from", "05", "-p", "model", "seed_cnn"]) == 2
    err = capsys.readouterr().err
    assert "Unknown parameter(s) ['model']" in err
    assert "model is a parameter of 04_create_model: start there with --from 04" in err


def test_a_negative_timeout_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        runner.main(["--timeout", "-5"])
    assert stop.value.code == 2 and "--timeout: -5 must be at least 1" in capsys.readouterr().err


def test_a_run_from_a_later_notebook_names_what_is_missing_first(tmp_path, capsys):
    """--from 05 in a fresh folder: refused before a kernel starts, naming each input and the notebook that writes it;
    an input that an earlier notebook of the same run writes is not asked for."""
    work = tmp_path / "work"
    assert runner.main(["--work-dir", str(work), "--from", "05"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" reads ")[1].split(",")[0] for line in err] == ["split", "untrained.keras"]
    assert "notebooks/02_preprocess_into_folders.ipynb writes" in err[0]
    assert "(--from 01: it needs what the ones before it write)" in err[0]  # 02 reads 01's audit, missing too
    assert not work.exists()
    assert runner.main(["--work-dir", str(work), "--from", "03", "--until", "05"]) == 2
    assert [line.split(" reads ")[1].split(",")[0] for line in capsys.readouterr().err.splitlines()] == ["split"]


def test_what_the_runner_checks_is_what_the_notebooks_require():
    """``workfolder.NEEDS`` (checked by ``run --from``) lists each notebook's ``workfolder.require`` calls."""
    import re

    found = {}
    for step, name in workfolder.NOTEBOOKS.items():
        nb = json.loads((workfolder.NOTEBOOKS_DIR / name).read_text())
        source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        needs = re.findall(r'workfolder\.require\(\s*WORK / workfolder\.(\w+),\s*"(\w+)"', source)
        if needs:
            found[step] = tuple((getattr(workfolder, const), maker) for const, maker in needs)
    assert found == workfolder.NEEDS


def test_a_partial_run_after_the_model_was_changed_by_hand_says_so(tmp_path, capsys):
    """The README's papermill line (or ``train``) makes another model current between two runs: a run of 06 or 07
    without 05 says its pages and the earlier run's describe different models, and records it for the site, until
    a run trains again; a run of 08 alone (it trains in its own folder) neither says it nor hides it."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    train = ("import os, pathlib\nfor name in ('model.keras', 'model.json'):\n"
             "    pathlib.Path(os.environ['FER_WORK_DIR'], name).write_text('in the run')")
    _notebook(folder / "05_train_model.ipynb", "epochs = 1", train)
    _notebook(folder / "06_evaluate_model.ipynb", "n_boot = 1", "x = 1")
    _notebook(folder / "08_train_at_scale.ipynb", "faces = 1", "x = 1")
    work = tmp_path / "work"
    (work / "split").mkdir(parents=True)  # what 05 reads, as 02 and 04 would leave it
    (work / "untrained.keras").write_text("as 04 leaves it")
    args = ["--notebooks-dir", str(folder), "--work-dir", str(work)]

    def run(*more):
        time.sleep(1.1)  # run ids are times to the second
        assert runner.main([*args, *more]) == 0
        return json.loads((work / "run.json").read_text()), capsys.readouterr().err

    full, _ = run()
    assert full["model_sha256"] == workfolder.sha256_of(work / "model.keras")
    latest, err = run("--from", "06", "--until", "06")  # the model the full run left: nothing to say
    assert "Note:" not in err and "model_changed" not in latest
    (work / "model.keras").write_text("trained by hand")
    latest, err = run("--from", "08")  # uses no model: nothing to say, and the full run's model is still the one
    assert "Note:" not in err and latest["model_sha256"] == full["model_sha256"]
    latest, err = run("--from", "06", "--until", "06")
    assert f"Note: the current model (model.keras) is not the one notebook 05 of run {latest['extends']} left" in err
    assert latest["model_changed"] == {"left": full["model_sha256"][:12],
                                       "found": workfolder.sha256_of(work / "model.keras")[:12]}
    assert [line.split(" used a model")[0] for line in workfolder.stale_notebooks(work)
            if "used a model" in line] == [f"06_evaluate_model of run {latest['id']}"]
    run("--from", "05")  # trained again: one model on every page
    assert not any("used a model" in line for line in workfolder.stale_notebooks(work))


@pytest.mark.parametrize("flag, value", [("--until", "abc"), ("--from", "5x"), ("--until", "123")])
def test_from_and_until_take_a_notebook_number(chain, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_:
        runner.main(["--notebooks-dir", str(chain), "--work-dir", str(tmp_path / "w"), flag, value])
    assert exit_.value.code == 2 and not (tmp_path / "w").exists()
    err = capsys.readouterr().err
    assert f"argument {flag}: {value!r} is not a notebook number: give its two digits, e.g. 05" in err


def test_a_kernels_log_reaches_the_terminal_until_the_run_is_stopping(capsys):
    """Kernels write their log (errors, warnings) to a pipe the runner copies to its stderr; once Ctrl-C or SIGTERM
    stops the run, the lines a kernel logs while it is shut down in the middle of a cell (replies it can no longer
    send: ``ZMQError: Socket operation on non-socket``, a traceback each) are not shown: the run ends with its one
    line. (Reproduced by hand: ``timeout -s INT 7 python -m fer_utils run --until 02``, 4 times in 4.)"""
    import threading

    runner.STOPPING.clear()
    read, write = os.pipe()
    copier = threading.Thread(target=runner.forward_kernel_log, args=(read,))
    copier.start()
    os.write(write, b"[IPKernelApp] WARNING | a warning the user should see\n")
    time.sleep(0.5)
    runner.STOPPING.set()
    os.write(write, b"[IPKernelApp] ERROR | Exception in message handler:\n")
    os.close(write)
    copier.join(timeout=10)
    runner.STOPPING.clear()
    assert not copier.is_alive()
    assert capsys.readouterr().err == "[IPKernelApp] WARNING | a warning the user should see\n"


def test_what_a_kernel_writes_to_its_stderr_reaches_the_runners(tmp_path, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    _notebook(folder / "01_noisy_step.ipynb", "x = 1", "import os\nos.write(2, b'written by the kernel process\\n')")
    assert runner.main(["--notebooks-dir", str(folder), "--work-dir", str(tmp_path / "work")]) == 0
    assert "written by the kernel process\n" in capsys.readouterr().err
