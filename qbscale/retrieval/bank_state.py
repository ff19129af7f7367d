"""The mergeable statistics (:class:`~qbscale.engine.living.BankState`) of a
bank against gallery items, computed block by block.

From embeddings, ``bank_emb @ gallery_emb.T`` in float32 (as the fit's own
blocks, :class:`~qbscale.storage.stores.sources.EmbeddingMatrix`), the bank
held (it is small) and the gallery streamed, each gallery block read once;
from a similarity matrix or a block source, each block read once.  Blocks
are computed in a thread per core and joined in block order, so the result
does not depend on which finishes first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from qbscale.engine import living
from qbscale.engine.living import BankState
from qbscale.errors import InputError

#: bank rows per block when similarities are computed from embeddings
ROWS = 2048
#: gallery items per block
ITEMS = 8192


def _read(block: Any) -> np.ndarray:
    """Rows of embeddings (numpy, memory-mapped or dask) as float32 in memory."""
    block = block.compute() if hasattr(block, "dask") else block
    return np.asarray(block, dtype=np.float32)


def _blocks(array: Any, step: int) -> Iterator[tuple[int, np.ndarray]]:
    for r0 in range(0, int(array.shape[0]), step):
        yield r0, _read(array[r0:r0 + step])


def _check(block: np.ndarray, r0: int, what: str) -> None:
    from qbscale.engine.checks import check_finite

    check_finite(block, r0, what)


Needs = tuple[tuple[float, ...], int, int]


def _map(func: Any, items: Sequence[Any]) -> list[Any]:
    """``func`` over ``items`` in a thread per core (numpy and BLAS release
    the GIL), results in order."""
    from concurrent.futures import ThreadPoolExecutor

    workers = min(len(items), os.cpu_count() or 1)
    if workers <= 1:
        return [func(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(func, items))


def state_of_embeddings(want: Needs, bank_emb: Any, gallery_emb: Any, col0: int = 0
                        ) -> BankState:
    """The state (``want``: betas, k, K of :func:`qbscale.engine.living.needs`)
    of ``bank_emb @ gallery_emb.T`` (float32, block by block), gallery
    positions starting at ``col0``."""
    betas, k, column_k = want
    if bank_emb.shape[1] != gallery_emb.shape[1]:
        raise InputError(f"bank embeddings have dimension {bank_emb.shape[1]}, gallery "
                         f"embeddings {gallery_emb.shape[1]}")
    banks = list(_blocks(bank_emb, ROWS))  # the bank is small: held; the gallery streams
    for r0, q in banks:
        _check(q, r0, "the bank embeddings")
    starts = range(0, int(gallery_emb.shape[0]), ITEMS)

    def task(c0: int) -> list[BankState]:
        g = _read(gallery_emb[c0:c0 + ITEMS])
        _check(g, c0, "the gallery embeddings")
        return [living.block_state(q @ g.T, betas, k, column_k, col0 + c0) for _, q in banks]

    columns = _map(task, list(starts))  # per gallery block: every bank block's state
    rows = [living.join_items([column[i] for column in columns], k) for i in range(len(banks))]
    return living.stack_rows(rows, column_k)


def state_of_similarities(want: Needs, sims: Any, col0: int = 0) -> BankState:
    """The state of a bank-rows x items similarity matrix (numpy, dask, xarray)."""
    from qbscale.retrieval.fitting import matrix_source

    return state_of_source(want, matrix_source("bank similarities", sims), col0)


def state_of_source(want: Needs, src: Any, col0: int = 0) -> BankState:
    """The state of a block source (:class:`~qbscale.types.MatrixSource`), each
    block read once."""
    betas, k, column_k = want
    starts = np.cumsum((0, *src.col_chunks))
    n_cols = len(src.col_chunks)

    def task(pair: tuple[int, int]) -> BankState:
        i, c = pair
        return living.block_state(src.read(i, c), betas, k, column_k, col0 + int(starts[c]))

    states = _map(task, [(i, c) for i in range(len(src.row_chunks)) for c in range(n_cols)])
    rows = [living.join_items(states[i * n_cols:(i + 1) * n_cols], k)
            for i in range(len(src.row_chunks))]
    return living.stack_rows(rows, column_k)
