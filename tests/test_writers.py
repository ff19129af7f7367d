"""One writer at a time, results published atomically, a full disk handled:
two writers racing on one store (local and S3) never leave results other than
those of a run that exited 0 (the last one to publish)."""

from __future__ import annotations

import errno
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from qbscale.api import evaluate, run
from qbscale.cli import cli
from qbscale.errors import StoreFullError, StoreLockedError
from qbscale.storage.durability.lock import KEY, StoreLock, break_lock, read_lock
from qbscale.storage.stores.results import ScoresWriter, open_result

from .cluster_fixtures import make_store, moto_s3, problem, qbscale_cli


@pytest.fixture()
def store(tmp_path):
    bank, test = problem(n_bank=400, n_gallery=200)
    return make_store(str(tmp_path / "exp.zarr"), bank, test, chunk_rows=20)


def invoke(*args: str):
    return CliRunner().invoke(cli, [*args, "-q"])


def test_a_second_writer_is_refused_at_once_and_readers_are_not(store):
    with StoreLock.acquire(store, purpose="a test"):
        assert read_lock(store)["pid"] == os.getpid()
        for flags in (["--save-scores"], ["--save-ranks"], ["--topk", "3"], ["--resume"]):
            res = invoke("run", store, *flags)
            assert res.exit_code == 1, flags
            assert res.output.startswith(f"Error: store {store} is locked by a test by PID "
                                         f"{os.getpid()} on ")
            assert "one writer at a time" in res.output
        with pytest.raises(StoreLockedError):
            run(store, save_ranks=True)
        assert invoke("run", store).exit_code == 0  # readers go on
        assert invoke("eval", store).exit_code == 0
        assert invoke("hubness", store).exit_code == 0
    assert read_lock(store) is None
    assert invoke("run", store, "--save-ranks").exit_code == 0
    assert not (Path(store) / KEY).exists()  # released after the run


def test_replacing_or_extending_a_locked_store_is_refused(store):
    """ingest --overwrite and add_gallery_bank write into the store too: while a
    run holds its lock they stop at once and leave the store as it was."""
    from qbscale.storage.stores.gallery_bank import add_gallery_bank
    from qbscale.storage.stores.ingest import ingest

    bank, test = problem(n_bank=400, n_gallery=200)
    def contents():
        return {p.relative_to(store): p.read_bytes() for p in Path(store).rglob("*")
                if p.is_file() and p.name != KEY}

    before = contents()
    with StoreLock.acquire(store, purpose="a test"):
        with pytest.raises(StoreLockedError, match=f"store {store} is locked by a test"):
            ingest(store, bank, test, progress=False, overwrite=True)
        with pytest.raises(StoreLockedError, match="one writer at a time"):
            add_gallery_bank(store, bank[:50], progress=False)
        assert contents() == before
        assert not [p for p in Path(store).parent.iterdir() if p.name.startswith(".")]
    # unlocked: both go through and leave no lock behind
    add_gallery_bank(store, bank[:50], progress=False)
    assert run(store, method="dual-is").after is not None
    ingest(store, bank[:300], test, progress=False, overwrite=True)
    assert read_lock(store) is None
    assert run(store).n_queries == test.shape[0]


def test_a_store_replaced_while_a_run_reads_it_is_refused(store):
    """A read-only run takes no lock: an ingest --overwrite may land while it
    reads.  What it read is refused (nothing reported, nothing saved), even
    when the new store holds the same data; a fresh run then works."""
    from qbscale.api import plan
    from qbscale.config import RunConfig
    from qbscale.errors import StoreChangedError
    from qbscale.retrieval.fitting import fit_engine, from_store
    from qbscale.storage.stores.ingest import ingest

    config = RunConfig.make(20.0)
    opened, fitting = plan(store), from_store(store, config)
    bank, test = problem(n_bank=400, n_gallery=200)
    ingest(store, bank, test, chunk_rows=20, progress=False, overwrite=True)  # same data
    with pytest.raises(StoreChangedError, match=f"store {store} was replaced while this run "
                                                "read it"):
        opened.execute()
    with pytest.raises(StoreChangedError):
        fit_engine(fitting, config)
    assert run(store).after == plan(store).execute().after


def test_a_gallery_bank_replaced_or_a_torn_store_json_is_refused(store):
    """add_gallery_bank --overwrite changes the store in place (same store_id):
    its record is compared too; a zarr.json caught mid-rewrite is a change."""
    from qbscale.api import plan
    from qbscale.errors import StoreChangedError
    from qbscale.storage.stores.gallery_bank import add_gallery_bank

    bank, _ = problem(n_bank=400, n_gallery=200, seed=2)
    add_gallery_bank(store, bank[:50], progress=False)
    opened = plan(store, method="dual-is")
    add_gallery_bank(store, bank[50:100], progress=False, overwrite=True)  # same shape
    with pytest.raises(StoreChangedError, match="was replaced while this run read it"):
        opened.execute()
    meta = Path(store) / "zarr.json"
    whole = meta.read_bytes()
    opened = plan(store)
    meta.write_bytes(whole[: len(whole) // 2])
    try:
        with pytest.raises(StoreChangedError):
            opened.execute()
    finally:
        meta.write_bytes(whole)
    assert plan(store, method="dual-is").execute().after is not None


@pytest.mark.parametrize("command", ["run", "eval", "hubness", "diagnose", "sweep", "fit",
                                     "search"])
def test_a_store_replaced_during_the_computation_is_refused(store, command):
    """The replacement lands as the computation starts (a dask callback): every
    command that reads a store stops with the error, exit code 1."""
    from dask.callbacks import Callback

    from qbscale.storage.stores.ingest import ingest

    bank, test = problem(n_bank=400, n_gallery=200, seed=1)
    replaced = []

    def replace(dsk, state):
        if not replaced:
            replaced.append(ingest(store, bank, test, chunk_rows=20, progress=False,
                                   overwrite=True))

    norm, hits = Path(store).parent / "norm.zarr", Path(store).parent / "hits.tsv"
    argv = {"sweep": [store, "--bank-sizes", "100,200", "--repeats", "1"],
            "fit": [store, "-o", str(norm)],
            "search": [str(norm), "--sims", store, "--topk", "3", "--hits", str(hits)]
            }.get(command, [store])
    if command == "search":
        assert invoke("fit", store, "-o", str(norm)).exit_code == 0
    with Callback(start_state=replace):
        res = CliRunner().invoke(cli, [command, *argv, "-q"])
    assert replaced
    assert res.exit_code == 1, res.output
    assert res.output == (f"Error: store {store} was replaced while this run read it (by a "
                          "new ingest?): its figures could mix two stores, "
                          "so nothing was reported or saved; run again\n")
    assert norm.exists() == (command == "search") and not hits.exists()


@pytest.mark.parametrize("command", ["run", "eval", "hubness", "diagnose", "sweep", "fit",
                                     "search"])
@pytest.mark.parametrize("scheduler", ["threads", "processes"])
def test_a_store_replaced_by_a_smaller_one_during_the_computation_is_refused(store, command,
                                                                            scheduler):
    """The replacement has fewer rows and other chunks: the reads find chunks
    missing or not the ones recorded, and the error says the store was replaced
    (not that a chunk is missing, which asks to re-ingest a store just ingested)."""
    from dask.callbacks import Callback

    from qbscale.storage.stores.ingest import ingest

    bank, test = problem(n_bank=400, n_gallery=200, seed=1)
    replaced = []

    def replace(dsk, state):
        if not replaced:
            replaced.append(ingest(store, bank[:100], test[:50], chunk_rows=30, progress=False,
                                   overwrite=True))

    norm, hits = Path(store).parent / "norm.zarr", Path(store).parent / "hits.tsv"
    argv = {"sweep": [store, "--bank-sizes", "100,200", "--repeats", "1"],
            "fit": [store, "-o", str(norm)],
            "search": [str(norm), "--sims", store, "--topk", "3", "--hits", str(hits)]
            }.get(command, [store])
    if command == "search":
        assert invoke("fit", store, "-o", str(norm)).exit_code == 0
    with Callback(start_state=replace):
        res = CliRunner().invoke(cli, [command, *argv, "--scheduler", scheduler, "-q"])
    assert replaced
    assert res.exit_code == 1, res.output
    assert res.output == (f"Error: store {store} was replaced while this run read it (by a "
                          "new ingest?): its figures could mix two stores, so nothing "
                          "was reported or saved; run again\n")
    assert norm.exists() == (command == "search") and not hits.exists()


def test_a_failed_run_releases_its_lock(store):
    with pytest.raises(ValueError):
        run(store, beta=-1, save_ranks=True)
    assert read_lock(store) is None


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_unlock_breaks_a_stale_lock_only(store):
    assert CliRunner().invoke(cli, ["unlock", store]).output.strip() == f"{store} is not locked"
    lock = StoreLock.acquire(store, purpose="a test")
    res = CliRunner().invoke(cli, ["unlock", store])  # the holder (this process) is alive
    assert res.exit_code == 1 and "still running: not breaking its lock" in res.output
    lock.release()
    info = {"host": os.uname().nodename, "pid": dead_pid(), "started": "2026-01-01T00:00:00",
            "token": "x", "purpose": "a run saving results"}
    (Path(store) / KEY).write_text(json.dumps(info))
    res = invoke("run", store, "--save-ranks")
    assert res.exit_code == 1 and "which is no longer running" in res.output
    res = CliRunner().invoke(cli, ["unlock", store])
    assert res.exit_code == 0
    assert res.output.strip() == (f"broke the lock of a run saving results by PID {info['pid']} "
                                  f"on {info['host']} since 2026-01-01T00:00:00")
    assert invoke("run", store, "--save-ranks").exit_code == 0
    other = {**info, "host": "elsewhere.example", "pid": os.getpid()}
    (Path(store) / KEY).write_text(json.dumps(other))
    assert break_lock(store) == other  # another host's lock: broken as asked


# ------------------------------------------------------------------ racing writers


def race(store: str, rounds: int, tmp: Path, env: dict[str, str] | None = None) -> int:
    """Two CLI writers with different betas at once, ``rounds`` times; checks what each
    round leaves; returns how many runs were refused."""
    rng = random.Random(0)
    refused = 0
    for r in range(rounds):
        procs, outs = {}, {}
        for beta in (20, 30):
            outs[beta] = tmp / f"r{r}-{beta}.json"
            procs[beta] = qbscale_cli("run", store, "--beta", str(beta), "--save-scores",
                                      "--save-ranks", "-q", "--json", str(outs[beta]), env=env)
            if rng.random() < 0.3:
                procs[beta].wait()  # now and then, one after the other
        winners = {}
        for beta, proc in procs.items():
            _, err = proc.communicate(timeout=300)
            if proc.returncode == 0:
                winners[beta] = json.loads(outs[beta].read_text())
            else:
                assert proc.returncode == 1, err.decode()[-2000:]
                assert b"is locked by a run saving results" in err, err.decode()[-2000:]
                refused += 1
        assert winners, "neither run succeeded"
        published = zarr.open_group(store, mode="r").attrs["qbscale"]["last_run"]
        [beta] = published["values"]
        assert int(beta) in winners  # a run that exited 0 ...
        want = winners[int(beta)]
        scores = open_result(store, "scores")
        assert scores.attrs["values"] == [beta]
        # ... and nothing but its results: scores, ranks and the summary agree
        assert evaluate(store, "scores") == pytest.approx(want["after"][str(float(beta))])
        ranks = open_result(store, "ranks")[0]
        assert float(np.mean(ranks) + 1) == pytest.approx(want["after"][str(float(beta))]["MeanR"])
        assert read_lock(store) is None
    return refused


def test_two_writers_on_one_local_store(store, tmp_path):
    assert race(store, rounds=4, tmp=tmp_path) >= 1  # the runs did collide
    runs = [p for p in (Path(store) / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1  # earlier runs' arrays are gone


def test_two_writers_on_one_s3_store(tmp_path):
    bank, test = problem(n_bank=400, n_gallery=200)
    with moto_s3("race") as endpoint:
        url = make_store("s3://race/exp.zarr", bank, test, chunk_rows=20)
        first = StoreLock.acquire(url)  # a conditional put: exclusive on S3 too
        with pytest.raises(StoreLockedError, match="is locked by a run by PID"):
            StoreLock.acquire(url)
        first.release()
        assert read_lock(url) is None
        env = {"AWS_ENDPOINT_URL": endpoint}
        race(url, rounds=2, tmp=tmp_path, env=env)
        from qbscale.storage.stores.check import check_store

        report = check_store(url)  # every chunk on S3 verified too
        assert report.ok and report.arrays == 5 and not report.unchecked  # bank, test, 3 results


# ------------------------------------------------------------------ a full disk


def test_a_full_disk_during_save_scores_leaves_nothing(store, monkeypatch):
    before = sorted(p.relative_to(store) for p in Path(store).rglob("*"))

    def full(self, b, i, block):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ScoresWriter, "write", full)
    res = invoke("run", store, "--save-scores")
    assert res.exit_code == 1
    assert res.output == (f"Error: store {store}: no space left while saving this run (No space "
                          "left on device): nothing was published, its partial arrays were "
                          "removed\n")
    after = sorted(p.relative_to(store) for p in Path(store).rglob("*"))
    assert [p for p in after if p not in before] == [Path("runs"), Path("runs/zarr.json")]
    assert read_lock(store) is None


@pytest.fixture()
def small_disk(tmp_path):
    """A 2.5 MB tmpfs (needs root and mount; skipped where unavailable)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(mnt)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_really_full_disk_during_save_scores(small_disk):
    bank, test = problem(n_bank=800, n_gallery=400, queries_per_item=1)
    store = make_store(str(small_disk / "exp.zarr"), bank, test, chunk_rows=100)
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    assert free < 3 * 400 * 400 * 8  # three betas of float64 scores do not fit
    res = invoke("run", store, "--save-scores", "--beta", "10,20,30")
    assert res.exit_code == 1
    assert res.output.startswith(f"Error: store {store}: no space left while saving this run")
    assert len(res.output.strip().splitlines()) == 1
    assert [p.name for p in (Path(store) / "runs").iterdir()] == ["zarr.json"]
    assert read_lock(store) is None
    with pytest.raises(StoreFullError):
        run(store, beta=[10, 20, 30], save_scores=True)
    assert invoke("run", store, "--save-ranks").exit_code == 0  # what fits still works


def test_without_conditional_puts_the_lock_is_read_back(monkeypatch):
    """Where the server refuses conditional puts: written if absent, kept only if
    its token is read back after the pause (a rival's later write wins)."""
    import uuid

    from fsspec.implementations.memory import MemoryFileSystem

    import qbscale.storage.durability.lock as lock_module

    real = MemoryFileSystem.pipe_file

    def no_create(self, path, value, mode="overwrite", **kw):
        if mode == "create":
            raise NotImplementedError("no conditional puts here")
        return real(self, path, value, **kw)

    monkeypatch.setattr(MemoryFileSystem, "pipe_file", no_create)
    url = f"memory://locks-{uuid.uuid4().hex}/exp.zarr"
    first = StoreLock.acquire(url, purpose="the first")
    with pytest.raises(StoreLockedError, match="locked by the first"):
        StoreLock.acquire(url)
    first.release()

    def rival_writes(seconds):  # another writer's put lands during our pause
        MemoryFileSystem().pipe_file(f"{url.removeprefix('memory://')}/{KEY}",
                                     json.dumps({"pid": 1, "host": "h", "token": "t",
                                                 "purpose": "the rival"}).encode())

    monkeypatch.setattr(lock_module.time, "sleep", rival_writes)
    with pytest.raises(StoreLockedError, match="locked by the rival"):
        StoreLock.acquire(url)
