"""Per-gallery statistics of a bank matrix, as a lazy graph.  Nothing here computes.

Every block of the bank is read once, by one task, which computes what a
:class:`~qbscale.engine.methods.BankNeeds` asks for: the column logsumexp for every
beta, the column top-k values, and the row top-k behind the activation set.
Partials combine with the rules of :mod:`qbscale.engine.reductions`:

* log normaliser and activation set: the blocks of a bank row block are
  joined side by side, then row blocks combine in a tree (``np.logaddexp``,
  ``np.logical_or``);
* column top-k: the gallery is cut into *segments* of at most
  :data:`SEGMENT_BYTES` of top-k values each, and each segment has its own
  tree over the row blocks (merge, keep the k largest), finished into the
  means the methods ask for.  A million-item gallery with ``k = 128`` never
  holds its whole ``k x n_gallery`` top-k table in one task.

Every partial has a leading *cell* axis: the statistics of several subsets of
the bank rows (:class:`~qbscale.engine.subsets.Subsets`: a bank sample, or
every cell of a bank-size sweep) come from the same read of each block, the
task using only each cell's rows of it.  Without subsets there is one cell,
every row.  Per block, the log normaliser adds each row's ``exp`` to every
cell holding it (:func:`~qbscale.engine.kernels.bank_logsumexp_sets`), the
activation set is the union of the cell's rows' top-k, and a repeat's nested
sizes get their column top-k from one top-k per *shell* (the rows between two
sizes), merged cumulatively from the smallest size up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from dask.delayed import Delayed, delayed

from qbscale.engine import kernels
from qbscale.engine.grid import offsets
from qbscale.engine.methods import BankNeeds, BankStats
from qbscale.engine.reductions import (
    ACTIVATION,
    LOG_NORMALISER,
    column_topk,
    row_topk,
    topk_to_mask,
)
from qbscale.engine.subsets import BlockRows, Subsets
from qbscale.types import MatrixSource

#: partials combined per tree task
SPLIT_EVERY = 8
#: bytes of column top-k values (at 8 bytes a value) per gallery segment
SEGMENT_BYTES = 32 * 2**20

Key = Callable[..., str]


@dataclass
class _Piece:
    """What one task computed from its blocks (one row block, some columns)."""

    lse: np.ndarray | None  # (n_cells, n_values, width)
    rows: Any  # row top-k (values, global indices), or (n_cells, n_gallery) masks once joined
    tops: list[list[np.ndarray]] = field(default_factory=list)  # per segment, per cell


def segment_width(k: int) -> int:
    """Columns per segment of a top-``k`` table (:data:`SEGMENT_BYTES` of float64)."""
    return max(1, SEGMENT_BYTES // (8 * max(k, 1)))


def segments(width: int, step: int) -> list[tuple[int, int]]:
    """``(start, stop)`` column ranges cutting ``width`` columns ``step`` at a time
    (none when ``step`` is 0: no top-k table asked for).

    >>> segments(10, 4)
    [(0, 4), (4, 8), (8, 10)]
    """
    return [(s, min(s + step, width)) for s in range(0, width, step)] if step else []


def tree(parts: list[Any], func: Callable[..., Any], key: Key, name: str) -> Any:
    """Combine ``parts`` with ``func`` in a tree of at most :data:`SPLIT_EVERY` per task."""
    level = 0
    while len(parts) > 1:
        parts = [delayed(func)(*parts[j:j + SPLIT_EVERY], dask_key_name=key(name, level, j))
                 for j in range(0, len(parts), SPLIT_EVERY)]
        level += 1
    return parts[0]


# ---------------------------------------------------------------- tasks


def _cell_tops(block: np.ndarray, k: int, cells: BlockRows | None) -> list[np.ndarray]:
    """Column top-k of every cell's rows: per repeat, one top-k per shell merged
    cumulatively over the nested sizes; the whole block's for the whole bank."""
    if cells is None:
        return [kernels.column_topk(block, k)]
    merge = column_topk(k)
    out = []
    for shell in cells.shell:
        acc = None
        for m in range(cells.n_sizes):
            part = kernels.column_topk(block[shell == m], k)
            acc = part if acc is None else merge.combine(acc, part)
            out.append(acc)
    if cells.whole:
        out.append(kernels.column_topk(block, k))
    return out


def _piece(src: MatrixSource, i: int, c: int, needs: BankNeeds, step: int,
           cells: BlockRows | None = None) -> _Piece:
    block = src.read(i, c)
    col0 = offsets(src.col_chunks)[c]
    members = None if cells is None else cells.members()
    lse = kernels.bank_logsumexp_sets(block, np.asarray(needs.betas), members) \
        if needs.betas else None
    rows = kernels.row_topk(block, needs.activation_k, col0) if needs.activation_k else None
    tops = [_cell_tops(block[:, a:b], needs.column_k, cells)
            for a, b in segments(block.shape[1], step)]
    return _Piece(lse, rows, tops)


def _join(n_gallery: int, needs: BankNeeds, cells: BlockRows | None, *pieces: _Piece) -> _Piece:
    """A row block's pieces side by side: logsumexp concatenated, activation masks."""
    lse = np.concatenate([p.lse for p in pieces], axis=-1) if needs.betas else None
    mask = None
    if needs.activation_k:
        _, idx = row_topk(needs.activation_k).tree([p.rows for p in pieces])
        members = np.ones((1, len(idx)), bool) if cells is None else cells.members()
        mask = np.stack([topk_to_mask(idx[m], n_gallery) for m in members])
    return _Piece(lse, mask)


def _block(src: MatrixSource, i: int, needs: BankNeeds, step: int, n_gallery: int,
           cells: BlockRows | None = None) -> _Piece:
    """A row block of a bank chunked by rows only: read, compute, join."""
    piece = _piece(src, i, 0, needs, step, cells)
    joined = _join(n_gallery, needs, cells, piece)
    joined.tops = piece.tops
    return joined


def _combine(*parts: _Piece) -> _Piece:
    def each(values: list[Any], rule: Any) -> Any:
        return None if values[0] is None else rule.tree(values)

    return _Piece(each([p.lse for p in parts], LOG_NORMALISER),
                  each([p.rows for p in parts], ACTIVATION))


def _segment_top(j: int, k: int, *holders: _Piece | list[np.ndarray]) -> list[np.ndarray]:
    """Merge segment ``j``'s column top-k of row blocks (or of earlier merges), per cell."""
    parts = [h.tops[j] if isinstance(h, _Piece) else h for h in holders]
    merge = column_topk(k)
    return [merge.tree([p[c] for p in parts]) for c in range(len(parts[0]))]


def _means(ks: tuple[int, ...], top: np.ndarray) -> np.ndarray:
    """``(len(ks), width)`` mean of each column's k largest values, per k.

    Summed in float64 from the largest value down, one row at a time: the
    result does not depend on the segment's width (numpy's own reduction
    sums a lone column pairwise, a wide table row by row).
    """
    out = np.empty((len(ks), top.shape[1]))
    total = np.zeros(top.shape[1])
    done = 0
    with np.errstate(over="ignore", invalid="ignore"):  # inf/nan: refused by the Normaliser
        for n, k in sorted(enumerate(ks), key=lambda nk: nk[1]):
            for row in top[done:min(k, len(top))]:
                total += row
            done = max(done, min(k, len(top)))
            out[n] = total / done
    return out


def _cell_means(ks: tuple[int, ...], tops: list[np.ndarray]) -> list[np.ndarray]:
    return [_means(ks, top) for top in tops]


def _stats(ks: tuple[int, ...], n_cells: int, main: _Piece, *means: list[np.ndarray]
           ) -> list[BankStats]:
    """One :class:`BankStats` per cell."""
    out = []
    for c in range(n_cells):
        table = np.concatenate([m[c] for m in means], axis=1) if means \
            else np.empty((len(ks), 0))
        out.append(BankStats(None if main.lse is None else main.lse[c],
                             {k: table[n] for n, k in enumerate(ks)},
                             None if main.rows is None else main.rows[c]))
    return out


def _first(stats: list[BankStats]) -> BankStats:
    return stats[0]


# ---------------------------------------------------------------- graph


def _segment_means(needs: BankNeeds, holders: list[Delayed], key: Key, name: str, j: int
                   ) -> Delayed:
    """Segment ``j`` of the holders' column top-k: a tree over row blocks, then means."""
    k = needs.column_k
    first = [delayed(_segment_top)(j, k, *holders[g:g + SPLIT_EVERY],
                                   dask_key_name=key(name, "first", g))
             for g in range(0, len(holders), SPLIT_EVERY)]
    top = tree(first, partial(_segment_top, j, k), key, name)
    means: Delayed = delayed(_cell_means)(needs.column_means, top,
                                          dask_key_name=key(name, "means"))
    return means


def summary(bank: MatrixSource, needs: BankNeeds, key: Key, name: str = "bank") -> Delayed:
    """Lazy :class:`~qbscale.engine.methods.BankStats` of ``bank`` for ``needs``.

    One task per block; for a bank chunked along the gallery too, one more
    task per row block joins its pieces.
    """
    stats = cell_summary(bank, needs, None, key, name)
    first: Delayed = delayed(_first)(stats, dask_key_name=key(f"{name}-first"))
    return first


def cell_summary(bank: MatrixSource, needs: BankNeeds, subsets: Subsets | None, key: Key,
                 name: str = "bank") -> Delayed:
    """Lazy list of :class:`~qbscale.engine.methods.BankStats`, one per cell of
    ``subsets`` (None: one, of every row), from one read of each block."""
    n_gallery = bank.shape[1]
    n_cells = 1 if subsets is None else len(subsets.cells)
    step = segment_width(needs.column_k * n_cells) if needs.column_k else 0
    rows: list[Delayed] = []
    holders: list[list[Delayed]] = []  # per row block: the tasks holding column top-k
    starts = offsets(bank.row_chunks)
    for i, size in enumerate(bank.row_chunks):
        cells = None if subsets is None else subsets.block(starts[i], starts[i] + size)
        if len(bank.col_chunks) == 1:
            rows.append(delayed(partial(_block, bank))(i, needs, step, n_gallery, cells,
                                                        dask_key_name=key(name, i)))
            holders.append([rows[-1]])
            continue
        pieces = [delayed(partial(_piece, bank))(i, c, needs, step, cells,
                                                 dask_key_name=key(name, i, c))
                  for c in range(len(bank.col_chunks))]
        rows.append(delayed(partial(_join, n_gallery, needs, cells))(
            *pieces, dask_key_name=key(f"{name}-row", i)))
        holders.append(pieces)
    main = tree(rows, _combine, key, f"{name}-combine")
    means = [_segment_means(needs, [h[c] for h in holders], key, f"{name}-top-{c}-{s}", s)
             for c, width in enumerate(bank.col_chunks)
             for s in range(len(segments(width, step)))]
    stats: Delayed = delayed(_stats)(needs.column_means, n_cells, main, *means,
                                     dask_key_name=key(f"{name}-stats"))
    return stats
