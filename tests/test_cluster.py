"""Runs on a real dask cluster started from the command line, as users do.

One scheduler and two single-threaded workers with a 1 GiB memory limit are
shared by the tests of this module; every run must give the threaded run's
ranks exactly, including one whose worker is killed half-way.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from qbscale.api import run
from qbscale.errors import ConfigError
from qbscale.executors.distributed import MALLOC_ENV, DistributedExecutor
from qbscale.storage.stores.results import open_result
from qbscale.storage.stores.store import open_experiment

from .cluster_fixtures import SlowMatrix, dask_cluster, make_store, problem, qbscale_cli

BETAS = [10.0, 20.0]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with dask_cluster(tmp_path_factory.mktemp("cluster"), n_workers=2, memory_limit="1GiB",
                      dashboard=True) as c:
        yield c


@pytest.fixture(scope="module")
def data():
    return problem(n_bank=1200, n_gallery=400)


@pytest.fixture(scope="module")
def threaded(data, tmp_path_factory):
    """The reference: the default threaded scheduler on a local store."""
    store = make_store(str(tmp_path_factory.mktemp("ref") / "exp.zarr"), *data, chunk_rows=40)
    return run(store, beta=BETAS, k=2, topk=5)


def saved(store: str) -> dict[str, np.ndarray]:
    return {name: open_result(store, name)[...]
            for name in ("ranks", "ranks_baseline", "topk_index")}


def assert_same_as(reference, store: str) -> None:
    got = saved(store)
    np.testing.assert_array_equal(got["ranks_baseline"], reference.base_ranks)
    for b, beta in enumerate(BETAS):
        np.testing.assert_array_equal(got["ranks"][b], reference.ranks[beta])
    np.testing.assert_array_equal(got["topk_index"], reference.topk_index)


def test_cli_on_a_scheduler_matches_threads(cluster, data, threaded, tmp_path):
    store = make_store(str(tmp_path / "exp.zarr"), *data, chunk_rows=40)
    pids = cluster.worker_pids()
    proc = qbscale_cli("run", store, "--scheduler", cluster.address, "--beta", "10,20",
                       "--k", "2", "--topk", "5", "--save-ranks", "--json",
                       str(tmp_path / "m.json"), env={"QBSCALE_PROGRESS": "1"})
    out, err = (s.decode() for s in proc.communicate(timeout=120))
    assert proc.returncode == 0, err
    assert_same_as(threaded, store)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["after"]["20.0"] == threaded.to_dict()["after"]["20.0"]
    assert "R@1" in out
    # the dashboard link and a progress bar over the cluster's tasks
    assert f"dashboard: http://127.0.0.1:{cluster.dashboard_port()}/status" in err
    assert "qbscale:" in err and "task" in err
    # the workers run with the fast malloc settings
    with cluster.client() as client:
        env = client.run(lambda: {k: os.environ.get(k) for k in MALLOC_ENV})
    assert all(worker == MALLOC_ENV for worker in env.values()), env
    # nothing was killed or spilled under the 1 GiB limit
    assert cluster.worker_pids() == pids
    memory = [line for p in Path(cluster.logs).glob("worker*.log")
              for line in p.read_text().splitlines()
              if "distributed.worker.memory" in line or "spill" in line.lower()]
    assert not memory, memory


def test_api_with_a_client_and_other_settings_on_the_same_store(cluster, data, tmp_path):
    """A long-lived cluster serving two runs of different shapes into one store."""
    store = make_store(str(tmp_path / "exp.zarr"), *data, chunk_rows=40)
    ref = run(store, beta=BETAS, k=2, topk=5)  # threads
    with cluster.client() as client:
        run(store, beta=10, save_scores=True, scheduler=client)
        res = run(store, beta=BETAS, k=2, topk=5, save_scores=True, scheduler=client)
        assert client.status == "running"  # a client passed in is left open
    for beta in BETAS:
        np.testing.assert_array_equal(res.ranks[beta], ref.ranks[beta])
    scores = open_result(store, "scores")[...]
    assert scores.shape == (2, *data[1].shape)
    want = run(store, beta=BETAS, k=2, save_scores=True)  # threads, rewrites the scores
    np.testing.assert_array_equal(open_result(store, "scores")[...], scores)
    assert want.activation_size == res.activation_size


def children() -> set[int]:
    """Our child processes, but multiprocessing's resource tracker (it lives on)."""
    return {p.pid for p in psutil.Process().children(recursive=True)
            if "resource_tracker" not in " ".join(p.cmdline())}


def test_local_cluster_is_started_and_torn_down(data, threaded, tmp_path, cli_invoke):
    store = make_store(str(tmp_path / "exp.zarr"), *data, chunk_rows=40)
    before = children()
    cli_invoke("run", store, "--scheduler", "local:2", "--beta", "10,20", "--k", "2", "--topk",
               "5", "--save-ranks", "--quiet")
    assert_same_as(threaded, store)
    deadline = time.monotonic() + 10
    while children() - before:
        assert time.monotonic() < deadline, "LocalCluster workers outlived the run"
        time.sleep(0.1)


def test_bad_addresses_are_clear_errors(tmp_path, data, cli_invoke):
    store = make_store(str(tmp_path / "exp.zarr"), *data, chunk_rows=400)
    result = cli_invoke("run", store, "--scheduler", "local:zero", "-q", exit_code=1)
    assert "local:N needs N >= 1 worker processes, got 'local:zero'" in result.output
    with socket.socket() as sock:  # a port nobody listens on: bound, then closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    with pytest.raises(ConfigError, match=f"no dask scheduler answered at tcp://127.0.0.1:{port}"):
        DistributedExecutor(f"tcp://127.0.0.1:{port}", timeout=1)


def test_a_worker_killed_mid_run(cluster, data, threaded, tmp_path):
    """SIGKILL one worker while row blocks are in flight: same ranks, worker replaced."""
    store = make_store(str(tmp_path / "exp.zarr"), *data, chunk_rows=40)
    cluster.wait_for_workers(2)
    experiment = open_experiment(store)
    experiment.bank = SlowMatrix(experiment.bank, 0.05)
    experiment.test = SlowMatrix(experiment.test, 0.1)
    n_blocks = len(experiment.test.row_chunks)
    markers = Path(store) / "missing"
    outcome: dict[str, object] = {}

    def go() -> None:
        with cluster.client() as client:
            try:
                outcome["result"] = run(experiment, beta=BETAS, k=2, topk=5, save_ranks=True,
                                        scheduler=client)
            except BaseException as exc:  # reported by the assertions below
                outcome["error"] = exc

    victim = next(iter(cluster.worker_pids().values()))
    thread = threading.Thread(target=go)
    thread.start()
    deadline = time.monotonic() + 60
    while not (markers.exists() and len(os.listdir(markers)) >= 2):
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        markers = next(Path(store).glob("runs/*/manifest/done/c"), markers)
        time.sleep(0.01)
    os.kill(victim, signal.SIGKILL)
    done_at_kill = len(os.listdir(markers))
    thread.join(120)
    assert done_at_kill < n_blocks, "the kill landed after the run had finished"
    assert "error" not in outcome, outcome.get("error")
    assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == "zombie"
    result = outcome["result"]
    np.testing.assert_array_equal(result.base_ranks, threaded.base_ranks)
    for beta in BETAS:
        np.testing.assert_array_equal(result.ranks[beta], threaded.ranks[beta])
    np.testing.assert_array_equal(result.topk_index, threaded.topk_index)
    assert_same_as(threaded, store)
    logs = "".join(p.read_text() for p in Path(cluster.logs).glob("worker*.log"))
    assert f"Worker process {victim} was killed by signal 9" in logs
    cluster.wait_for_workers(2)  # the nanny started a new worker process
    assert victim not in cluster.worker_pids().values()


@pytest.mark.parametrize("scheduler", ["processes", "local:2"])
def test_a_damaged_store_is_one_line_on_every_scheduler(data, tmp_path, scheduler):
    """A chunk that fails its checksum in a worker process: the command's one
    ``Error:`` line, not the workers' logs and tracebacks before it."""
    store = make_store(str(tmp_path / "exp.zarr"), *data, chunk_rows=400)
    chunk = next(p for p in sorted(Path(store, "bank", "c").rglob("*")) if p.is_file())
    chunk.write_bytes(b"garbage")
    proc = qbscale_cli("run", store, "--scheduler", scheduler, "-q")
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert proc.returncode == 1, err.decode()
    assert len(lines) == 1, err.decode()
    rel = chunk.relative_to(store).as_posix()
    assert lines[0].startswith("Error: ") and rel in lines[0] and "damaged" in lines[0], lines
