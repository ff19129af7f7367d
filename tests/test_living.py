"""A living normaliser (partial_fit, add_items, remove_items, merge) against a
fit from scratch on the final bank and gallery, and the dense oracle.

Embeddings hold multiples of 1/4 in 8 dimensions: every similarity is exact in
float32 whatever the block shape, so ties are many and any difference in the
activation set is the update's, not BLAS's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dask.array as da
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qbscale.errors import ConfigError, InputError
from qbscale.retrieval import bank_state as living_mod
from qbscale.retrieval.normaliser import Normaliser

from . import reference as ref

N_BANK, N_ITEMS, DIM = 60, 40, 8
METHODS = [("dis", {"beta": [5.0, 20.0]}), ("is", {"beta": [10.0]}),
           ("csls", {"kc": [1, 3]}), ("nnn", {"alpha": [0.5], "nnn_k": 4})]
SWEPT = ("beta", "kc", "alpha")


def universe(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = (rng.integers(-4, 5, (N_BANK, DIM)) / 4).astype(np.float32)
    g = (rng.integers(-4, 5, (N_ITEMS, DIM)) / 4).astype(np.float32)
    return q, g


def ulps(a: np.ndarray, b: np.ndarray) -> float:
    """Largest difference in ulps of the larger magnitude, or of 1 below it:
    ``logZ = m + log(sum)`` with ``sum >= 1``, whose rounding is ulp(1) however
    small logZ is (a column one bank row dominates has logZ near 0)."""
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), 1.0)
    return float(np.max(np.abs(a - b) / np.spacing(scale)))


@st.composite
def operations(draw: st.DrawFn) -> tuple[int, int, list[tuple[str, int]]]:
    bank0 = draw(st.integers(1, 8))
    items0 = draw(st.integers(3, 10))
    ops = draw(st.lists(st.tuples(st.sampled_from(["grow", "add", "remove", "merge"]),
                                  st.integers(1, 6)), max_size=6))
    return bank0, items0, ops


#: block sizes (bank rows, gallery items) of every update and fit: drawn per example
chunkings = st.tuples(st.integers(1, 9), st.integers(1, 12))


@contextlib.contextmanager
def blocks(rows: int, items: int) -> Iterator[None]:
    """Embeddings' similarities in blocks of ``rows`` x ``items``."""
    saved = living_mod.ROWS, living_mod.ITEMS
    living_mod.ROWS, living_mod.ITEMS = rows, items
    try:
        yield
    finally:
        living_mod.ROWS, living_mod.ITEMS = saved


class World:
    """The final bank rows and gallery ids a sequence of operations leads to."""

    def __init__(self, kind: str, method: str, params: dict, q: np.ndarray, g: np.ndarray,
                 chunks: tuple[int, int] = (4, 4)):
        self.kind, self.method, self.q, self.g, self.chunks = kind, method, q, g, chunks
        self.params = dict(params)
        self.name = next(name for name in SWEPT if name in params)
        self.values = self.params.pop(self.name)
        self.log: list[tuple[str, object]] = []  # gallery operations, to replay

    def fit(self, rows: np.ndarray, ids: np.ndarray, **kw) -> Normaliser:
        settings = {self.name: self.values, "k": 2, "method": self.method, **self.params, **kw}
        if self.kind == "embeddings":
            return Normaliser.fit(bank_emb=self.q[rows], gallery_emb=self.g[ids], **settings)
        return Normaliser.fit(self.sims(rows, ids), **settings)

    def sims(self, rows: np.ndarray, ids: np.ndarray) -> da.Array:
        """Bank rows x items similarities, as a dask array in the drawn chunks."""
        return da.from_array(self.q[rows] @ self.g[ids].T, chunks=self.chunks)

    def add(self, norm: Normaliser, rows: np.ndarray, new: np.ndarray) -> Normaliser:
        if self.kind == "embeddings":
            return norm.add_items(self.g[new])
        return norm.add_items(bank_sims=self.sims(rows, new))

    def remove(self, norm: Normaliser, rows: np.ndarray, ids: np.ndarray,
               gone: np.ndarray) -> Normaliser:
        if self.kind == "embeddings":
            return norm.remove_items(gone)
        kept = np.setdiff1d(ids, gone)
        return norm.remove_items(gone, bank_sims=self.sims(rows, kept))

    def grow(self, norm: Normaliser, new: np.ndarray, ids: np.ndarray) -> Normaliser:
        if self.kind == "embeddings":
            return norm.partial_fit(bank_emb=self.q[new])
        return norm.partial_fit(self.sims(new, ids))


def run_ops(world: World, bank0: int, items0: int, ops: list[tuple[str, int]]
            ) -> tuple[Normaliser, np.ndarray, np.ndarray]:
    rows, ids = np.arange(bank0), np.arange(items0)
    next_row, next_item = bank0, items0
    norm = world.fit(rows, ids, updatable=True)
    history: list[tuple[str, np.ndarray]] = []
    for op, n in ops:
        if op == "grow" and next_row + n <= N_BANK:
            new = np.arange(next_row, next_row + n)
            norm = world.grow(norm, new, ids)
            rows, next_row = np.concatenate([rows, new]), next_row + n
        elif op == "add" and next_item + n <= N_ITEMS:
            new = np.arange(next_item, next_item + n)
            norm = world.add(norm, rows, new)
            ids, next_item = np.concatenate([ids, new]), next_item + n
            history.append(("add", new))
        elif op == "remove" and len(ids) - n >= 2:
            gone = ids[np.linspace(0, len(ids) - 1, n).astype(int)]
            norm = world.remove(norm, rows, ids, gone)
            history.append(("remove", gone))
            ids = np.setdiff1d(ids, gone)
        elif op == "merge" and next_row + n <= N_BANK:
            new = np.arange(next_row, next_row + n)
            other = replay(world, new, items0, history)
            norm = Normaliser.merge([norm, other])
            rows, next_row = np.concatenate([rows, new]), next_row + n
    return norm, rows, ids


def replay(world: World, rows: np.ndarray, items0: int,
           history: list[tuple[str, np.ndarray]]) -> Normaliser:
    """A normaliser fitted on other bank rows that saw the same gallery changes."""
    ids = np.arange(items0)
    norm = world.fit(rows, ids, updatable=True)
    for op, arg in history:
        if op == "add":
            norm = world.add(norm, rows, arg)
            ids = np.concatenate([ids, arg])
        else:
            norm = world.remove(norm, rows, ids, arg)
            ids = np.setdiff1d(ids, arg)
    return norm


def check_equal(norm: Normaliser, world: World, rows: np.ndarray, ids: np.ndarray) -> None:
    fresh = world.fit(rows, ids)
    np.testing.assert_array_equal(norm.activation, fresh.activation)
    assert norm.shift.shape == fresh.shift.shape
    assert ulps(norm.shift, fresh.shift) <= 4
    np.testing.assert_array_equal(norm.record.item_ids, ids)
    sims = world.q[rows].astype(np.float64) @ world.g[ids].T.astype(np.float64)
    np.testing.assert_array_equal(norm.activation, ref.activation_set(sims, 2))
    for b, value in enumerate(world.values):
        want = ref.variant(world.method, value, sims, world.params)[1]
        np.testing.assert_allclose(norm.shift[b], want, rtol=1e-12, atol=1e-12)
    if world.kind == "embeddings":  # search over the gallery the updates left
        queries = world.q[::7]
        got, want = norm.search(queries, 3), fresh.search(queries, 3)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize(("method", "params"), METHODS)
@pytest.mark.parametrize("kind", ["embeddings", "similarities"])
@given(plan=operations(), seed=st.integers(0, 3), chunks=chunkings)
def test_updates_equal_a_fit_from_scratch(kind, method, params, plan, seed, chunks):
    q, g = universe(seed)
    world = World(kind, method, params, q, g, chunks)
    with blocks(*chunks):
        norm, rows, ids = run_ops(world, *plan)
    check_equal(norm, world, rows, ids)


def assert_same(a: Normaliser, b: Normaliser) -> None:
    assert a.shift.tobytes() == b.shift.tobytes()
    np.testing.assert_array_equal(a.activation, b.activation)
    np.testing.assert_array_equal(a.state.row_items, b.state.row_items)
    np.testing.assert_array_equal(a.record.item_ids, b.record.item_ids)
    assert a.history == b.history


@pytest.mark.parametrize(("method", "params"), [("dis", {"beta": [5.0, 20.0]}),
                                                ("nnn", {"alpha": [0.5], "nnn_k": 3})])
def test_save_load_then_update_from_files(tmp_path, method, params):
    q, g = universe(7)
    np.save(tmp_path / "b.npy", q[:20])
    np.save(tmp_path / "g.npy", g[:30])
    np.save(tmp_path / "nb.npy", q[20:30])
    np.save(tmp_path / "ni.npy", g[30:])
    norm = Normaliser.fit(bank_emb=tmp_path / "b.npy", gallery_emb=tmp_path / "g.npy", k=2,
                          method=method, updatable=True, **params)
    norm.save(tmp_path / "n.zarr")
    loaded = Normaliser.load(tmp_path / "n.zarr")
    assert_same(loaded, norm)
    steps = [lambda n: n.partial_fit(bank_emb=str(tmp_path / "nb.npy")),
             lambda n: n.remove_items([0, 4, 29]),
             lambda n: n.add_items(str(tmp_path / "ni.npy"))]
    for n, step in enumerate(steps):
        norm = step(norm)
        norm.save(tmp_path / f"n{n}.zarr")
        loaded = step(loaded)
        assert_same(Normaliser.load(tmp_path / f"n{n}.zarr"), norm)
        loaded = Normaliser.load(tmp_path / f"n{n}.zarr")
    ids = np.setdiff1d(np.arange(N_ITEMS), [0, 4, 29])
    fresh = Normaliser.fit(bank_emb=q[:30], gallery_emb=g[ids], k=2, method=method, **params)
    np.testing.assert_array_equal(loaded.activation, fresh.activation)
    assert ulps(loaded.shift, fresh.shift) <= 4
    queries = universe(8)[0][:9]
    want, got = fresh.search(queries, 5), loaded.search(queries, 5)  # its own gallery
    np.testing.assert_array_equal(got[1], want[1])
    assert [h["op"] for h in loaded.history] == ["fit", "partial_fit", "remove_items",
                                                 "add_items"]


def test_refusals(tmp_path):
    q, g = universe(1)
    plain = Normaliser.fit(bank_emb=q, gallery_emb=g)
    with pytest.raises(ConfigError, match="not fitted with updatable=True"):
        plain.partial_fit(bank_emb=q)
    with pytest.raises(ConfigError, match="dual-is normaliser cannot be updated"):
        Normaliser.fit(q @ g.T, method="dual-is", gallery_bank=g @ g.T, updatable=True)
    with pytest.raises(ConfigError, match="fitted on the whole bank: drop bank_sample"):
        Normaliser.fit(q @ g.T, bank_sample=10, updatable=True)
    norm = Normaliser.fit(bank_emb=q, gallery_emb=g, updatable=True)
    with pytest.raises(InputError, match="gallery item id 99 is not in the normaliser"):
        norm.remove_items([99])
    norm.save(tmp_path / "mem.zarr")  # its embeddings were arrays: not saved
    with pytest.raises(InputError, match="held in memory"):
        Normaliser.load(tmp_path / "mem.zarr").remove_items([0])
    sims = Normaliser.fit(q @ g.T, updatable=True)
    with pytest.raises(InputError, match="fitted from similarities"):
        sims.add_items(g[:2])
    with pytest.raises(InputError, match="other settings"):
        Normaliser.merge([norm, Normaliser.fit(bank_emb=q, gallery_emb=g, beta=10,
                                               updatable=True)])
    with pytest.raises(InputError, match="another gallery"):
        Normaliser.merge([norm, norm.add_items(g[:1])])


def test_cli_update_items_merge_info(tmp_path, cli_invoke):
    q, g = universe(3)
    for name, value in {"b": q[:20], "g": g[:30], "nb": q[20:30], "ni": g[30:],
                        "sb": q[30:45]}.items():
        np.save(tmp_path / f"{name}.npy", value)
    Normaliser.fit(bank_emb=tmp_path / "b.npy", gallery_emb=tmp_path / "g.npy", k=2,
                   updatable=True).save(tmp_path / "live.zarr")
    Normaliser.fit(bank_emb=tmp_path / "sb.npy", gallery_emb=tmp_path / "g.npy", k=2,
                   updatable=True).save(tmp_path / "shard.zarr")
    old = (tmp_path / "live.zarr" / "zarr.json").read_bytes()
    res = cli_invoke("fit", tmp_path / "nb.npy", "--update", tmp_path / "live.zarr", "-o",
                     tmp_path / "grown.zarr", "-q")
    assert "10 bank rows added" in res.output
    assert (tmp_path / "live.zarr" / "zarr.json").read_bytes() == old
    cli_invoke("items", tmp_path / "grown.zarr", "--add", tmp_path / "ni.npy", "--remove",
               "2,7", "-o", tmp_path / "items.zarr", "-q")
    cli_invoke("merge", tmp_path / "items.zarr", tmp_path / "shard.zarr", "-o",
               tmp_path / "m.zarr", "-q", exit_code=1)  # another gallery now
    cli_invoke("merge", tmp_path / "grown.zarr", tmp_path / "shard.zarr", "-o",
               tmp_path / "m.zarr", "-q")
    api = Normaliser.load(tmp_path / "live.zarr").partial_fit(
        bank_emb=str(tmp_path / "nb.npy"))
    assert_same(Normaliser.load(tmp_path / "grown.zarr"), api)
    assert_same(Normaliser.load(tmp_path / "items.zarr"),
                api.remove_items([2, 7]).add_items(str(tmp_path / "ni.npy")))
    merged = Normaliser.load(tmp_path / "m.zarr")
    fresh = Normaliser.fit(bank_emb=q[:45], gallery_emb=g[:30], k=2)
    np.testing.assert_array_equal(merged.activation, fresh.activation)
    assert ulps(merged.shift, fresh.shift) <= 4
    res = cli_invoke("info", tmp_path / "items.zarr", "--json", tmp_path / "info.json")
    assert "2 items removed (ids 2,7)" in res.output
    assert "10 items added (ids 30..39)" in res.output
    cli_invoke("search", tmp_path / "items.zarr", "--queries", tmp_path / "ni.npy", "--topk",
               "4", "--hits", tmp_path / "h.npz", "-q")
    from qbscale.storage.outputs.hits import read_hits

    updated = Normaliser.load(tmp_path / "items.zarr")
    want = updated.record.item_ids[updated.search(g[30:], 4)[1]]  # positions -> ids
    assert read_hits(tmp_path / "h.npz")["item"].tolist() == want.ravel().tolist()
    assert want.max() >= 30  # new items are among the hits, by their ids
    res = cli_invoke("fit", tmp_path / "nb.npy", "--update", tmp_path / "live.zarr", "-o",
                     tmp_path / "g2.zarr", "--beta", "10", exit_code=2)
    assert "--beta cannot be given with qbscale fit --update" in res.output
    res = cli_invoke("merge", tmp_path / "grown.zarr", tmp_path / "grown.zarr", "-o",
                     tmp_path / "m2.zarr", "-q", exit_code=1)
    assert "only disjoint shards merge" in res.output
