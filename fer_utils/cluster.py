"""A cluster on this machine: start ``python -m fer_utils train`` as several workers on 127.0.0.1, each with
the ``TF_CONFIG`` of one worker — what a cluster launcher (Kubernetes, Slurm...) does on real machines."""

from __future__ import annotations

import json
import os
import sys
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
    import subprocess

    ports = ports or free_ports(workers)
    addresses = [f"127.0.0.1:{port}" for port in ports]
    procs = []
    for i in range(workers):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}}
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
