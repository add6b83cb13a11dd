"""A cluster on this machine: start ``python -m fer_utils train`` as several workers on 127.0.0.1, each with
the ``TF_CONFIG`` of one worker — what a cluster launcher (Kubernetes, Slurm...) does on real machines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports on 127.0.0.1 that nothing listens on (for a local cluster)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def start_local_workers(train_args: list[str], workers: int = 2, log_dir: str | os.PathLike | None = None,
                        env: dict | None = None, ports: list[int] | None = None) -> list:
    """Start ``python -m fer_utils train <train_args>`` ``workers`` times on this machine, each with the
    ``TF_CONFIG`` of one worker of a cluster on 127.0.0.1: what a cluster launcher (Kubernetes, Slurm...)
    does on real machines. Each worker's output goes to ``<log_dir>/worker-<i>.log``. Returns the processes
    (``subprocess.Popen``); wait for them, or kill one to see the run resume."""
    ports = ports or free_ports(workers)
    procs = []
    for i, tf_config in enumerate(tf_configs([f"127.0.0.1:{port}" for port in ports])):
        out = subprocess.DEVNULL
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            out = open(Path(log_dir) / f"worker-{i}.log", "w")  # noqa: SIM115 - the child process writes it
        procs.append(subprocess.Popen([sys.executable, "-m", "fer_utils", "train", *train_args],
                                      env={**os.environ, **(env or {}), "TF_CONFIG": json.dumps(tf_config)},
                                      stdout=out, stderr=subprocess.STDOUT))
        if out is not subprocess.DEVNULL:
            out.close()
    return procs


#: What a ``TF_CONFIG`` looks like (worker 0 of two), for the messages of ``check_tf_config``.
TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


def _is_address(address) -> bool:
    """``host:port``, the port a number from 1 to 65535 (``[::1]:port`` too: the port follows the last colon)."""
    if not isinstance(address, str):
        return False
    host, colon, port = address.rpartition(":")
    return bool(colon and host.strip() and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535)


def check_tf_config(text: str | None = None) -> dict:
    """``$TF_CONFIG`` (or ``text``) read as a cluster and this process's task in it; what is wrong in it is a
    ``ValueError`` of one line naming TF_CONFIG, the wrong part and what to do, before TensorFlow reads it
    (TensorFlow's own errors for these come as tracebacks from deep inside its start-up)."""
    text = os.environ.get("TF_CONFIG", "") if text is None else text

    def bad(what: str) -> ValueError:
        return ValueError(f"TF_CONFIG {what}: set TF_CONFIG on each worker to the cluster's addresses and that "
                          f"worker's task, e.g. TF_CONFIG='{TF_CONFIG_EXAMPLE}' (README: 'Train on more devices "
                          "or a cluster').")

    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise bad(f"is not valid JSON ({err})") from None
    if not isinstance(spec, dict):
        raise bad(f"is a JSON {type(spec).__name__}, not an object with \"cluster\" and \"task\"")
    jobs = spec.get("cluster")
    if not isinstance(jobs, dict) or not jobs:
        raise bad('has no "cluster" (an object of jobs, each a list of "host:port" addresses)')
    for job, addresses in jobs.items():
        if not isinstance(addresses, list) or not addresses:
            raise bad(f'job "{job}" of its cluster is {json.dumps(addresses)}, not a list of "host:port" addresses')
        for address in addresses:
            if not _is_address(address):
                raise bad(f'address {json.dumps(address)} (job "{job}") is not "host:port" with a port number '
                          "from 1 to 65535")
    task = spec.get("task")
    if not isinstance(task, dict):
        raise bad('has no "task" (which worker of the cluster this is, e.g. {"type": "worker", "index": 0})')
    task_type, index = task.get("type"), task.get("index", 0)
    if task_type not in jobs:
        raise bad(f'task type {json.dumps(task_type)} is not a job of its cluster ({", ".join(jobs)})')
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(jobs[task_type]):
        raise bad(f'task index {json.dumps(index)} is not a position in job "{task_type}" (0 to '
                  f"{len(jobs[task_type]) - 1})")
    return spec


#: Seconds ``wait_for_workers`` waits by default for a local cluster to finish.
WORKERS_TIMEOUT = 1800


def wait_for_workers(procs: list, timeout: float = WORKERS_TIMEOUT, log_dir: str | os.PathLike | None = None,
                     ) -> list[int]:
    """Wait for every worker process to end, at most ``timeout`` seconds in all, and return their exit codes.
    When the time is up, stop the ones still running and raise ``TimeoutError`` saying what was waited for; on
    Ctrl-C (or SIGTERM made an interrupt), or any other error while waiting, stop them too, so that no worker
    trains on alone (an interrupt that lands inside a lock can surface as another error)."""
    deadline = time.monotonic() + timeout
    codes = []

    def stop_all() -> None:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)

    for index, proc in enumerate(procs):
        try:
            codes.append(proc.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            running = [i for i, p in enumerate(procs) if p.poll() is None]
            stop_all()
            raise TimeoutError(f"the local cluster's worker(s) {running} were still training after {timeout:.0f} s "
                               f"(waiting from worker {index} on); all stopped"
                               + (f"; their logs are in {log_dir}" if log_dir else "")) from None
        except BaseException:
            stop_all()
            raise
    return codes


# ---- generated from notebooks/08_train_at_scale.ipynb, cell c12b ----
# (edit the cell there, then run `python -m fer_utils export`; an edit made here fails the one-source test)
def tf_configs(addresses: list[str]) -> list[dict]:
    """The ``TF_CONFIG`` of each worker of a cluster at ``addresses``: the same
    cluster, each its own task."""
    return [
        {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": i}}
        for i in range(len(addresses))
    ]
# ---- end of generated code (notebooks/08_train_at_scale.ipynb, cell c12b) ----
