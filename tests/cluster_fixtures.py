"""Helpers for the cluster, object-storage and resume tests.

Context managers rather than pytest fixtures, so each test module wraps them
in the scope it needs:

* :func:`dask_cluster` starts ``dask scheduler`` and ``dask worker`` processes
  from the command line, as users do, and always stops them;
* :func:`moto_s3` serves an S3-compatible endpoint on loopback and exports the
  AWS variables s3fs/botocore read (workers started afterwards inherit them);
* :func:`make_store` writes a small experiment store in the layout of
  :mod:`qbscale.storage.layout`;
* :class:`SlowMatrix` wraps a source so every block read takes a while (runs
  long enough for a fault to land mid-run).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qbscale.executors.distributed import MALLOC_ENV

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def problem(n_bank: int, n_gallery: int, queries_per_item: int = 2, seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 ``(bank, test)`` similarities with a planted signal and ties."""
    rng = np.random.default_rng(seed)
    bank = rng.random((n_bank, n_gallery), dtype=np.float32)
    test = np.round(rng.random((n_gallery * queries_per_item, n_gallery)), 2).astype(np.float32)
    rows = np.arange(test.shape[0])
    test[rows, rows // queries_per_item] += 0.3
    return bank, test


def make_store(url: str, bank: np.ndarray, test: np.ndarray, chunk_rows: int,
               storage_options: dict[str, Any] | None = None) -> str:
    """Ingest ``bank`` and ``test`` into a store with ``chunk_rows`` rows per chunk."""
    from qbscale.storage.stores.ingest import ingest

    return ingest(url, bank, test, chunk_rows=chunk_rows, progress=False, overwrite=True,
                  storage_options=storage_options)


# ------------------------------------------------------------------ S3 (moto)


@contextlib.contextmanager
def moto_s3(bucket: str = "qbscale") -> Iterator[str]:
    """An S3 endpoint on 127.0.0.1 with ``bucket``; yields its URL.

    Credentials and the endpoint go into the environment (``AWS_*``), where
    botocore, and so s3fs, finds them; the previous values come back after.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "qbscale-test",
           "AWS_SECRET_ACCESS_KEY": f"secret-{uuid.uuid4().hex}",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(bucket)
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


# ------------------------------------------------------------------ dask cluster


@dataclass
class Cluster:
    """Processes of a command-line dask cluster."""

    address: str
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]
    logs: Path
    env: dict[str, str] = field(default_factory=dict)

    def client(self) -> Any:
        from distributed import Client

        return Client(self.address, timeout=30)

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> pid of the process running its tasks."""
        with self.client() as client:
            return client.run(os.getpid)

    def dashboard_port(self) -> int | None:
        with self.client() as client:
            return client.scheduler_info()["services"].get("dashboard")

    def wait_for_workers(self, n: int, timeout: float = 60) -> None:
        with self.client() as client:
            client.wait_for_workers(n, timeout=timeout)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Stop a process started in its own session, and whatever it started."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_for_file(path: Path, procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        dead = [p.args for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            raise RuntimeError(f"dask scheduler did not start (exited: {dead}); see {path.parent}")
        time.sleep(0.05)


@contextlib.contextmanager
def dask_cluster(tmp: Path, n_workers: int = 2, memory_limit: str = "1GiB",
                 dashboard: bool = False, env: dict[str, str] | None = None
                 ) -> Iterator[Cluster]:
    """``dask scheduler`` plus ``n_workers`` ``dask worker`` processes on 127.0.0.1.

    Ports are picked by the OS (``--port 0``; the address is read from the
    scheduler file).  Every process runs in its own session and is stopped on
    exit, whatever happened.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    sched_file = tmp / "scheduler.json"
    # the malloc settings as documented for `dask worker`: the nanny's own
    # pre-spawn environment would otherwise reset MALLOC_TRIM_THRESHOLD_
    full_env = {**os.environ, "DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": json.dumps(MALLOC_ENV),
                "PYTHONPATH": str(ROOT), **(env or {})}
    dash = ["--dashboard-address", "127.0.0.1:0"] if dashboard else ["--no-dashboard"]
    procs: list[subprocess.Popen[bytes]] = []

    def start(args: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(tmp / log, "wb") as out:
            proc = subprocess.Popen([str(BIN / "dask"), *args], stdout=out,
                                    stderr=subprocess.STDOUT, env=full_env, cwd=tmp,
                                    start_new_session=True)
        procs.append(proc)
        return proc

    try:
        scheduler = start(["scheduler", "--host", "127.0.0.1", "--port", "0",
                           "--scheduler-file", str(sched_file), *dash], "scheduler.log")
        _wait_for_file(sched_file, procs, 60)
        time.sleep(0.1)  # the file is written in one go, but be safe with a partial read
        address = json.loads(sched_file.read_text())["address"]
        workers = [start(["worker", address, "--nthreads", "1", "--memory-limit", memory_limit,
                          "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{j}",
                          "--local-directory", str(tmp / f"w{j}")], f"worker{j}.log")
                   for j in range(n_workers)]
        cluster = Cluster(address, scheduler, workers, tmp, full_env)
        cluster.wait_for_workers(n_workers)
        yield cluster
    finally:
        for proc in reversed(procs):
            _stop(proc)


# ------------------------------------------------------------------ slow source


@dataclass(frozen=True)
class SlowMatrix:
    """A source whose block reads each take ``delay`` seconds longer."""

    inner: Any
    delay: float

    @property
    def shape(self) -> tuple[int, int]:
        return self.inner.shape

    @property
    def row_chunks(self) -> tuple[int, ...]:
        return self.inner.row_chunks

    @property
    def col_chunks(self) -> tuple[int, ...]:
        return self.inner.col_chunks

    def read(self, i: int, c: int) -> np.ndarray:
        time.sleep(self.delay)
        return self.inner.read(i, c)


def qbscale_cli(*args: str, env: dict[str, str] | None = None, **kwargs: Any
                ) -> subprocess.Popen[bytes]:
    """Start ``qbscale ARGS`` (the installed console script) as a subprocess."""
    return subprocess.Popen([str(BIN / "qbscale"), *args], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, **kwargs)
