"""Resuming interrupted runs: only the missing row blocks are computed, and the
store ends up as an uninterrupted run leaves it."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from qbscale.api import run
from qbscale.errors import ConfigError
from qbscale.storage.stores.results import open_result
from qbscale.storage.stores.resume import FIELDS
from qbscale.storage.stores.store import open_experiment
from qbscale.types import RowResult

from .cluster_fixtures import make_store, problem, qbscale_cli

KW: dict[str, Any] = {"beta": [10.0, 20.0], "k": 2, "topk": 5, "save_scores": True,
                      "save_ranks": True}
RESULTS = ("scores", "ranks", "ranks_baseline", "topk_index", "topk_score")


def manifests(store: str) -> list[Path]:
    """The manifest groups of the store's unpublished runs."""
    return sorted(Path(store).glob("runs/*/manifest"))


@dataclass(frozen=True)
class FailingMatrix:
    """A source that fails on every read after ``ok`` successful ones."""

    inner: Any
    ok: int = 0
    fail_at: int | None = None
    reads: list[int] = field(default_factory=list, compare=False)

    shape = property(lambda self: self.inner.shape)
    row_chunks = property(lambda self: self.inner.row_chunks)
    col_chunks = property(lambda self: self.inner.col_chunks)

    def read(self, i: int, c: int) -> np.ndarray:
        if i == self.fail_at or (self.fail_at is None and len(self.reads) >= self.ok):
            raise RuntimeError(f"cannot read block {i}")
        self.reads.append(i)
        return self.inner.read(i, c)


@dataclass(frozen=True)
class CountingMatrix:
    inner: Any
    reads: list[int] = field(default_factory=list, compare=False)

    shape = property(lambda self: self.inner.shape)
    row_chunks = property(lambda self: self.inner.row_chunks)
    col_chunks = property(lambda self: self.inner.col_chunks)

    def read(self, i: int, c: int) -> np.ndarray:
        self.reads.append(i)
        return self.inner.read(i, c)


@pytest.fixture(scope="module")
def data():
    return problem(n_bank=400, n_gallery=100)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    store = make_store(str(tmp_path_factory.mktemp("ref") / "exp.zarr"), *data, chunk_rows=20)
    run(store, **KW)
    return store


def assert_same_store(store: str, reference: str) -> None:
    got, want = zarr.open_group(store, mode="r"), zarr.open_group(reference, mode="r")
    assert sorted(got.keys()) == sorted(want.keys())
    assert manifests(store) == []
    assert len([p for p in Path(store).glob("runs/*") if p.is_dir()]) == 1  # published only
    for name in RESULTS:
        mine, theirs = open_result(store, name), open_result(reference, name)
        np.testing.assert_array_equal(mine[...], theirs[...], err_msg=name)
        assert dict(mine.attrs) == dict(theirs.attrs)


def interrupted(store: str, ok: int) -> None:
    experiment = open_experiment(store)
    experiment.test = FailingMatrix(experiment.test, ok=ok)
    with pytest.raises(RuntimeError, match="cannot read block"):
        run(experiment, scheduler="synchronous", resume=True, **KW)


def test_manifest_keeps_every_row_result_field():
    # scores: only in-memory runs keep them in the RowResult (a store's go to its array)
    kept = {f.name for f in dataclasses.fields(RowResult)} - {"start", "scores"}
    assert kept == set(FIELDS)


def test_a_failed_run_resumes_computing_only_the_rest(data, uninterrupted, tmp_path):
    store = make_store(str(tmp_path / "exp.zarr"), *data, chunk_rows=20)
    interrupted(store, ok=4)
    [manifest] = manifests(store)
    done = np.flatnonzero(zarr.open_array(str(manifest / "done"), mode="r")[...])
    assert 0 < len(done) <= 4
    experiment = open_experiment(store)
    experiment.bank = CountingMatrix(experiment.bank)
    experiment.test = CountingMatrix(experiment.test)
    result = run(experiment, resume=True, **KW)
    n_blocks = len(experiment.test.row_chunks)
    summary = result.extra["resume"]
    assert summary == {"row_blocks": n_blocks, "reused": len(done),
                       "computed": n_blocks - len(done), "bank_reused": summary["bank_reused"],
                       "rejected": []}
    assert sorted(experiment.test.reads) == sorted(set(range(n_blocks)) - set(done))
    # the bank statistics are stored by their own task, which may not have run yet
    bank_blocks = list(range(len(experiment.bank.row_chunks)))
    assert sorted(experiment.bank.reads) == ([] if summary["bank_reused"] else bank_blocks)
    assert_same_store(store, uninterrupted)


def test_resuming_with_other_settings_is_refused(data, tmp_path, cli_invoke):
    store = make_store(str(tmp_path / "exp.zarr"), *data, chunk_rows=20)
    interrupted(store, ok=2)
    with pytest.raises(ConfigError, match=r"values=\[10.0, 20.0\] \(now \[30.0\]\)"):
        run(store, resume=True, **{**KW, "beta": 30})
    result = cli_invoke("run", store, "--beta", "10,20", "--k", "3", "--topk", "5",
                        "--save-scores", "--save-ranks", "--resume", "-q", exit_code=1)
    assert "k=2 (now 3)" in result.output


def test_without_a_manifest_resume_runs_everything(data, uninterrupted, tmp_path):
    store = make_store(str(tmp_path / "exp.zarr"), *data, chunk_rows=20)
    result = run(store, resume=True, **KW)
    assert result.extra["resume"]["reused"] == 0
    assert_same_store(store, uninterrupted)


def test_a_fresh_run_discards_an_old_manifest(data, uninterrupted, tmp_path):
    store = make_store(str(tmp_path / "exp.zarr"), *data, chunk_rows=20)
    interrupted(store, ok=3)
    result = run(store, **KW)
    assert result.extra["resume"]["reused"] == 0
    assert_same_store(store, uninterrupted)


def _chunk_stats(store: str) -> dict[tuple[int, int], tuple[int, int]]:
    """(beta, row block) -> (inode, mtime_ns) of every scores chunk file."""
    [root] = Path(store).glob("runs/*/scores/c")
    out = {}
    for path in root.glob("*/*/0"):
        stat = path.stat()
        out[(int(path.parent.parent.name), int(path.parent.name))] = (stat.st_ino,
                                                                       stat.st_mtime_ns)
    return out


def test_a_killed_cli_run_resumes(tmp_path, cli_invoke):
    bank, test = problem(n_bank=1000, n_gallery=500, queries_per_item=4)
    store = make_store(str(tmp_path / "exp.zarr"), bank, test, chunk_rows=10)
    reference = make_store(str(tmp_path / "ref.zarr"), bank, test, chunk_rows=10)
    flags = ["--beta", "10,20", "--topk", "5", "--save-scores", "--save-ranks", "-q"]
    n_blocks = 200
    proc = qbscale_cli("run", store, *flags, "--workers", "1")
    deadline = time.monotonic() + 120
    markers = Path(store) / "missing"
    while not (markers.exists() and len(os.listdir(markers)) >= 20):
        markers = next(Path(store).glob("runs/*/manifest/done/c"), markers)
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = {int(name) for name in os.listdir(markers)}
    assert 20 <= len(done) < n_blocks, "the kill landed after the run had finished"
    before = _chunk_stats(store)

    locked = cli_invoke("run", store, *flags, "--resume", exit_code=1)
    assert "is locked by" in locked.output and "no longer running" in locked.output
    unlocked = cli_invoke("unlock", store)
    assert f"PID {proc.pid}" in unlocked.output
    resumed = cli_invoke("run", store, *flags, "--resume")
    assert (f"resumed: {len(done)} of {n_blocks} row blocks were already done; "
            f"computed {n_blocks - len(done)}") in resumed.output
    after = _chunk_stats(store)
    rewritten = {i for (b, i), stat in after.items() if before.get((b, i)) != stat}
    assert rewritten == set(range(n_blocks)) - done  # finished blocks were left alone

    plain = cli_invoke("run", reference, *flags)
    assert resumed.output.split("time:")[0] == plain.output.split("time:")[0]
    assert_same_store(store, reference)


@pytest.mark.parametrize("method", ["is", "csls", "nnn", "none"])
def test_every_method_resumes_to_the_same_store(data, tmp_path, method):
    kw = {**KW, "method": method, "beta": None, "save_scores": method != "none"}
    reference = make_store(str(tmp_path / "ref.zarr"), *data, chunk_rows=20)
    run(reference, **kw)
    store = make_store(str(tmp_path / "exp.zarr"), *data, chunk_rows=20)
    experiment = open_experiment(store)
    # fail after four reads, not at a given block: dask's order among the row
    # blocks varies from run to run (it follows the hashes of the keys, random
    # in each process), so a fixed failing block may come first, leaving
    # nothing to resume
    experiment.test = FailingMatrix(experiment.test, ok=4)
    with pytest.raises(RuntimeError, match="cannot read block"):
        run(experiment, scheduler="synchronous", resume=True, **kw)
    done = sorted(int(p.name) for p in Path(store).glob("runs/*/manifest/done/c/*"))
    assert 0 < len(done) <= 4 and set(done) <= set(experiment.test.reads)
    result = run(store, resume=True, **kw)
    assert result.extra["resume"]["reused"] == len(done)
    assert result.extra["resume"]["computed"] == result.extra["resume"]["row_blocks"] - len(done)
    want, got = zarr.open_group(reference, mode="r"), zarr.open_group(store, mode="r")
    assert sorted(got.keys()) == sorted(want.keys())
    for name in got.array_keys():
        np.testing.assert_array_equal(got[name][...], want[name][...], err_msg=name)
    assert manifests(store) == []
    names = [n for n in RESULTS if (n != "scores" or kw["save_scores"])
             and (n != "ranks" or method != "none")]
    for name in names:
        np.testing.assert_array_equal(open_result(store, name)[...],
                                      open_result(reference, name)[...], err_msg=name)


def _block_chunk(store: str, name: str, i: int) -> Path:
    """The chunk file of row block ``i`` of a scores slice or of a manifest field."""
    [prefix] = [p.parent for p in Path(store).glob("runs/*/manifest")]
    return prefix / "scores" / "c" / "0" / str(i) / "0" if name == "scores" else \
        prefix / "manifest" / name / "c" / str(i)


@pytest.mark.parametrize("harm", ["delete", "damage", "swap-scores", "swap-field"])
def test_finished_blocks_harmed_after_the_interruption_are_computed_again(
        data, uninterrupted, tmp_path, harm):
    store = make_store(str(tmp_path / "exp.zarr"), *data, chunk_rows=20)
    interrupted(store, ok=4)
    done = sorted(int(p.name) for p in Path(store).glob("runs/*/manifest/done/c/*"))
    assert len(done) >= 2, done
    a, b = done[:2]
    if harm == "delete":
        _block_chunk(store, "scores", a).unlink()
        harmed = [a]
    elif harm == "damage":
        path = _block_chunk(store, "base_rank", a)
        raw = bytearray(path.read_bytes())
        raw[3] ^= 0x40
        path.write_bytes(bytes(raw))
        harmed = [a]
    else:  # two finished blocks' chunks swapped: each is intact, neither is in its place
        name = "scores" if harm == "swap-scores" else "base_rank"
        one, two = _block_chunk(store, name, a), _block_chunk(store, name, b)
        bytes_one, bytes_two = one.read_bytes(), two.read_bytes()
        assert bytes_one != bytes_two and len(bytes_one) == len(bytes_two)
        one.write_bytes(bytes_two)
        two.write_bytes(bytes_one)
        harmed = [a, b]
    experiment = open_experiment(store)
    experiment.test = CountingMatrix(experiment.test)
    result = run(experiment, resume=True, **KW)
    summary = result.extra["resume"]
    assert summary["rejected"] == harmed
    assert summary["reused"] == len(done) - len(harmed)
    assert set(harmed) <= set(experiment.test.reads)  # computed again
    assert not set(done) - set(harmed) & set(experiment.test.reads)
    assert_same_store(store, uninterrupted)


def test_a_stored_normaliser_missing_a_chunk_is_computed_again(data, uninterrupted, tmp_path):
    store = make_store(str(tmp_path / "exp.zarr"), *data, chunk_rows=20)
    kw = {**KW, "method": "dis"}
    reference = make_store(str(tmp_path / "ref.zarr"), *data, chunk_rows=20)
    run(reference, **kw)
    experiment = open_experiment(store)
    experiment.test = FailingMatrix(experiment.test, ok=4)
    with pytest.raises(RuntimeError, match="cannot read block"):
        run(experiment, scheduler="synchronous", resume=True, **kw)
    # a stored normaliser (as the run's bank task leaves it) whose activation chunk
    # went missing: read as zarr's fill value it would be "nothing activated"
    from qbscale.storage.durability.integrity import create_array

    [group] = [str(p.relative_to(store)) for p in Path(store).glob("runs/*/manifest")]
    create_array(store, f"{group}/shift", shape=(2, 100), dtype="float64", chunks=(2, 100),
                 overwrite=True)[...] = 0.0
    create_array(store, f"{group}/activation", shape=(100,), dtype=bool, chunks=(100,),
                 overwrite=True)[...] = True
    zarr.open_array(store, path=f"{group}/bank_done", mode="r+")[0] = 1
    (Path(store) / group / "activation" / "c" / "0").unlink()
    result = run(store, resume=True, **kw)
    assert result.extra["resume"]["bank_reused"] is False
    assert_same_store(store, reference)


def test_a_failed_run_without_resume_leaves_nothing(data, tmp_path):
    """Only a run asked to be resumable keeps its finished blocks when it fails."""
    store = make_store(str(tmp_path / "exp.zarr"), *data, chunk_rows=20)
    run(store, **KW)
    files = sorted(str(p.relative_to(store)) for p in Path(store).rglob("*"))
    experiment = open_experiment(store)
    experiment.test = FailingMatrix(experiment.test, ok=4)
    with pytest.raises(RuntimeError, match="cannot read block"):
        run(experiment, scheduler="synchronous", **KW)
    assert sorted(str(p.relative_to(store)) for p in Path(store).rglob("*")) == files
    assert manifests(store) == []
