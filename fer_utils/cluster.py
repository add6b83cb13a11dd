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


#: Seconds ``wait_for_workers`` waits by default for a local cluster to finish.
WORKERS_TIMEOUT = 1800


def wait_for_workers(procs: list, timeout: float = WORKERS_TIMEOUT, log_dir: str | os.PathLike | None = None,
                     ) -> list[int]:
    """Wait for every worker process to end, at most ``timeout`` seconds in all, and return their exit codes.
    When the time is up, stop the ones still running and raise ``TimeoutError`` saying what was waited for."""
    deadline = time.monotonic() + timeout
    codes = []
    for index, proc in enumerate(procs):
        try:
            codes.append(proc.wait(timeout=max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            running = [i for i, p in enumerate(procs) if p.poll() is None]
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=30)
            raise TimeoutError(f"the local cluster's worker(s) {running} were still training after {timeout:.0f} s "
                               f"(waiting from worker {index} on); all stopped"
                               + (f"; their logs are in {log_dir}" if log_dir else "")) from None
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
