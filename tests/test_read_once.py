"""Every chunk of the bank and of the test matrix is read exactly once per run.

Counted twice over: at the block level (the ``reads`` hook of
:class:`~qbscale.storage.stores.sources.ZarrMatrix`) and at the storage level (every chunk
file fetched from the local Zarr store, through zarr or read directly).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter

import numpy as np
import pytest
import zarr

import qbscale.storage.durability.integrity
from qbscale.api import run
from qbscale.storage.stores.store import open_experiment
from qbscale.synth import SynthSpec, synth

SPEC = SynthSpec(n_bank=150, n_test=44, n_gallery=44, dim=16, seed=4)
LAYOUTS = {"rows": {"chunk_rows": 16}, "2d": {"chunk_rows": 16, "chunk_cols": 12}}


@pytest.fixture(scope="module", params=sorted(LAYOUTS))
def store(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("read-once") / f"{request.param}.zarr"
    return str(synth(out, SPEC, **LAYOUTS[request.param], progress=False))


class ChunkFetches:
    """Counts chunk files fetched through any local Zarr store (thread-safe)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()

    def wrap(self, get):
        async def counted(store, key, *args, **kwargs):
            if "/c/" in key or key.endswith("/c"):
                with self.lock:
                    self.counts[key] += 1
            return await get(store, key, *args, **kwargs)

        return counted

    def of(self, array: str) -> Counter[str]:
        return Counter({k: n for k, n in self.counts.items() if k.startswith(f"{array}/")})


    def wrap_chunk(self, read):
        """Around :func:`qbscale.storage.durability.integrity.read_chunk`, where every
        local chunk file is read (the direct reads and the verified store's)."""
        def counted(url, path, key, *args):
            with self.lock:
                self.counts[key] += 1
            return read(url, path, key, *args)

        return counted


@pytest.fixture()
def fetches(monkeypatch):
    counter = ChunkFetches()
    monkeypatch.setattr(zarr.storage.LocalStore, "get",
                        counter.wrap(zarr.storage.LocalStore.get))
    monkeypatch.setattr(qbscale.storage.durability.integrity, "read_chunk",
                        counter.wrap_chunk(qbscale.storage.durability.integrity.read_chunk))
    return counter


def chunk_keys(url: str, name: str) -> set[str]:
    arr = zarr.open_array(url, path=name, mode="r")
    grid = [range(-(-s // c)) for s, c in zip(arr.shape, arr.chunks, strict=True)]
    return {f"{name}/c/{i}/{j}" for i in grid[0] for j in grid[1]}


def instrumented(url: str, rows_per_block: int | None = None):
    """The experiment with both sources reporting every block they read."""
    blocks: Counter[tuple[str, int, int]] = Counter()
    lock = threading.Lock()

    def hook(name: str, i: int, c: int) -> None:
        with lock:
            blocks[(name, i, c)] += 1

    exp = open_experiment(url, rows_per_block=rows_per_block)
    exp.bank = dataclasses.replace(exp.bank, reads=hook)
    exp.test = dataclasses.replace(exp.test, reads=hook)
    return exp, blocks


def grid(src) -> set[tuple[int, int]]:
    return {(i, c) for i in range(len(src.row_chunks)) for c in range(len(src.col_chunks))}


@pytest.mark.parametrize(("method", "options"), [
    ("dis", {}),
    ("is", {"beta": [5, 20, 40]}),
    ("dis", {"topk": 3, "k": 2}),
    ("none", {}),
])
def test_each_chunk_read_once(store, fetches, method, options):
    exp, blocks = instrumented(store)
    fetches.counts.clear()
    res = run(exp, method=method, scheduler="threads", num_workers=4, **options)
    assert res.before["R1"] > 0  # the baseline metrics come from the same reads
    test_reads = {(i, c): n for (name, i, c), n in blocks.items() if name == "test"}
    bank_reads = {(i, c): n for (name, i, c), n in blocks.items() if name == "bank"}
    assert test_reads == dict.fromkeys(grid(exp.test), 1)
    assert fetches.of("test") == Counter(dict.fromkeys(chunk_keys(store, "test"), 1))
    if method == "none":  # the baseline needs nothing from the querybank
        assert bank_reads == {} and not fetches.of("bank")
    else:
        assert bank_reads == dict.fromkeys(grid(exp.bank), 1)
        assert fetches.of("bank") == Counter(dict.fromkeys(chunk_keys(store, "bank"), 1))


@pytest.mark.parametrize(("method", "options"), [
    ("dis", {"beta": [5, 20]}),
    ("csls", {"kc": [1, 4]}),
])
def test_bank_size_sweep_reads_each_chunk_once(store, fetches, method, options):
    """Every size x repeat cell, and the bank sample of a run, from one read of each block."""
    from qbscale.analysis.banksize import bank_size_sweep

    for rows_per_block in (None, 48):  # stored chunks, and blocks of 3 chunks
        exp, blocks = instrumented(store, rows_per_block)
        fetches.counts.clear()
        sweep = bank_size_sweep(exp, [5, 40, 0.5, "all"], 3, 7, method=method,
                                scheduler="threads", num_workers=4, **options)
        assert len(sweep.cells) == 3 * 3 + 1
        assert set(blocks.values()) == {1}
        assert {(name, i, c) for name, i, c in blocks} == \
            {("bank", *ic) for ic in grid(exp.bank)} | {("test", *ic) for ic in grid(exp.test)}
        for name in ("bank", "test"):
            assert fetches.of(name) == Counter(dict.fromkeys(chunk_keys(store, name), 1))
    exp, blocks = instrumented(store)
    fetches.counts.clear()
    run(exp, bank_sample=20, seed=3, scheduler="threads")
    assert set(blocks.values()) == {1} and len(blocks) == len(grid(exp.bank)) + len(grid(exp.test))
    assert fetches.of("bank") == Counter(dict.fromkeys(chunk_keys(store, "bank"), 1))


def test_coarser_blocks_still_read_each_chunk_once(store, fetches):
    exp, blocks = instrumented(store, rows_per_block=48)  # 3 stored chunks a block
    assert len(exp.bank.row_chunks) == 4
    fetches.counts.clear()
    run(exp, beta=20, scheduler="threads")
    assert set(blocks.values()) == {1}
    for name in ("bank", "test"):
        assert fetches.of(name) == Counter(dict.fromkeys(chunk_keys(store, name), 1))


def test_counting_sees_a_second_read(store, fetches):
    """The instruments work: reading a block again is seen at both levels."""
    exp, blocks = instrumented(store)
    fetches.counts.clear()
    exp.test.read(0, 0)
    exp.test.read(0, 0)
    assert blocks[("test", 0, 0)] == 2
    assert fetches.counts["test/c/0/0"] == 2
    assert np.isfinite(exp.test.read(0, 0)).all()


@pytest.mark.parametrize("codec", ["none", "lz4"])
def test_block_reads_equal_zarr_reads(tmp_path, codec):
    """Direct chunk-file reads (uncompressed) and zarr reads give the same blocks,
    edge chunks included; compressed stores go through zarr."""
    from qbscale.storage.stores.ingest import ingest
    from qbscale.storage.stores.sources import ZarrMatrix

    rng = np.random.default_rng(5)
    bank = rng.standard_normal((37, 23)).astype(np.float32)
    url = ingest(tmp_path / "e.zarr", bank, bank[:23], chunk_rows=10, chunk_cols=7,
                 codec=codec, progress=False)
    for rows_per_block in (None, 20):
        src = ZarrMatrix.open(url, "bank", rows_per_block=rows_per_block)
        for i, c in grid(src):
            r0, c0 = i * (rows_per_block or 10), c * 7
            np.testing.assert_array_equal(
                src.read(i, c), bank[r0:r0 + src.row_chunks[i], c0:c0 + src.col_chunks[c]])
