"""A real Dask cluster of separate processes on 127.0.0.1 (a `dask scheduler` and `dask
worker`s, started from the venv's `dask` command) for the benchmarks and the tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


class DaskUnavailable(Exception):
    """Dask is not installed here."""


class DaskCluster:
    """A scheduler and its workers, each a process of its own."""

    def __init__(self, workers: int, nanny: bool = True, log_dir: Path | None = None) -> None:
        dask = shutil.which("dask", path=str(Path(sys.executable).parent)) or \
            shutil.which("dask")
        if dask is None:
            raise DaskUnavailable("the `dask` command is missing "
                                  "(pip install 'echoimage[cluster]')")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{port}"
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.scheduler = self._start([dask, "scheduler", "--host", "127.0.0.1", "--port",
                                      str(port), "--no-dashboard"], "scheduler")
        self.workers = [self._start([dask, "worker", self.address, "--nthreads", "1",
                                     "--no-dashboard", "--host", "127.0.0.1",
                                     *([] if nanny else ["--no-nanny"])], f"worker-{i}")
                        for i in range(workers)]
        self.wait_for(workers)

    def _start(self, cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        out = open(self.log_dir / f"{name}.log", "wb") if self.log_dir else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def wait_for(self, n: int, timeout: float = 60.0) -> None:
        """Wait until n workers are connected to the scheduler."""
        from distributed import Client

        deadline = time.monotonic() + timeout
        with Client(self.address, timeout=timeout) as client:
            while len(client.scheduler_info()["workers"]) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{n} Dask workers did not connect in {timeout} s")
                time.sleep(0.2)

    def kill_worker(self, i: int) -> None:
        """kill -9 worker i (and its process group: nanny and worker)."""
        os.killpg(self.workers[i].pid, signal.SIGKILL)
        self.workers[i].wait()

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
