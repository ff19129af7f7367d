"""The lazy graph of ``qbscale diagnose``: one read of the bank, one of the test.

Nothing here computes.  Two stages, each reading every block of its matrix
once, built on the same kernels and reductions as a run
(:mod:`qbscale.engine.plan`):

1. **bank**: per bank block, the column logsumexp per beta
   (:func:`~qbscale.engine.kernels.bank_logsumexp`) and each row's top-k
   (:func:`~qbscale.engine.kernels.row_topk`), which gives both the
   activation set and every bank row's top-1 similarity.  Row blocks combine
   in a tree (``np.logaddexp``, ``np.logical_or``, top-1 values side by side)
   into a :class:`BankView`: the :class:`~qbscale.engine.statistics.GalleryStatistics`
   of the run plus the bank rows' top-1 similarities.
2. **test**: per test row block, the raw top-``depth`` of every row (for
   ``N_k`` and the top-1 similarity) and, when the experiment has a ground
   truth, the raw and normalised counts of a run (the run's own kernels), in
   the same read.  A :class:`QueryPart` per block holds ``N_k``'s non-zero
   counts (never a whole-gallery array per block), the top-1 values and
   indices, and the run's :class:`~qbscale.types.RowResult`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from dask.delayed import Delayed, delayed

from qbscale.config import RunConfig
from qbscale.engine import kernels, methods
from qbscale.engine.bankstats import tree
from qbscale.engine.grid import offsets
from qbscale.engine.plan import Keys, RowSpec, finish_rows, gather_gt, piece_counts
from qbscale.engine.reductions import ROW_COUNTS, row_topk, topk_to_mask
from qbscale.engine.statistics import GalleryStatistics
from qbscale.errors import ConfigError, InputError
from qbscale.types import Experiment, MatrixSource, RowResult


class RowSample:
    """The rows ``rows`` (sorted, distinct) of ``source``, as a block source.

    Its row blocks are the source's blocks that hold a sampled row (blocks
    with none are never read); reading one reads the source's block and keeps
    the sampled rows.
    """

    def __init__(self, source: MatrixSource, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        n = source.shape[0]
        if rows.size == 0 or np.any(np.diff(rows) <= 0) or rows[0] < 0 or rows[-1] >= n:
            raise InputError(f"a bank sample must be distinct sorted rows in 0..{n - 1}, "
                             f"got {rows.size} rows")
        starts = np.asarray(offsets(source.row_chunks))
        block = np.searchsorted(starts, rows, side="right") - 1
        self.source = source
        self.blocks = [(int(b), rows[block == b] - starts[b]) for b in np.unique(block)]
        self._shape = (int(rows.size), int(source.shape[1]))

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def row_chunks(self) -> tuple[int, ...]:
        return tuple(len(local) for _, local in self.blocks)

    @property
    def col_chunks(self) -> tuple[int, ...]:
        return tuple(self.source.col_chunks)

    def read(self, i: int, c: int) -> np.ndarray:
        b, local = self.blocks[i]
        rows: np.ndarray = np.asarray(self.source.read(b, c))[local]
        return rows


# ---------------------------------------------------------------- bank stage


@dataclass
class BankView:
    """What the bank stage learnt: the run's normaliser, each bank row's top-1."""

    normaliser: GalleryStatistics
    top1: np.ndarray  # (n_bank,) float64, every bank row's largest similarity


@dataclass
class _BankPart:
    lse: np.ndarray  # (n_values, n_gallery)
    mask: np.ndarray  # (n_gallery,) bool
    top1: list[tuple[int, np.ndarray]]  # (first row, top-1 values) per row block


def _bank_block(src: MatrixSource, i: int, betas: np.ndarray, k: int) -> _BankPart:
    """Every block of bank row block ``i``, read once: logsumexp, row top-k."""
    lse, tops = [], []
    for c, col0 in enumerate(offsets(src.col_chunks)):
        block = src.read(i, c)
        lse.append(kernels.bank_logsumexp(block, betas))
        tops.append(kernels.row_topk(block, k, col0))
    values, idx = row_topk(k).tree(tops)
    return _BankPart(np.concatenate(lse, axis=1), topk_to_mask(idx, src.shape[1]),
                     [(offsets(src.row_chunks)[i], values[:, 0])])


def _bank_combine(*parts: _BankPart) -> _BankPart:
    lse = parts[0].lse
    mask = parts[0].mask
    for p in parts[1:]:
        lse = np.logaddexp(lse, p.lse)
        mask = mask | p.mask
    return _BankPart(lse, mask, [t for p in parts for t in p.top1])


def _bank_view(config: RunConfig, part: _BankPart) -> BankView:
    stats = methods.BankStats(part.lse, {}, part.mask)
    top1 = np.concatenate([v for _, v in sorted(part.top1, key=lambda t: t[0])])
    return BankView(GalleryStatistics.from_stats(config, {methods.QUERY_BANK: stats}), top1)


def check_method(method: str) -> None:
    """Diagnostics read ``logZ``: only the inverted-softmax methods (``is``, ``dis``)."""
    if method not in ("is", "dis"):
        raise ConfigError(f"diagnose reads the inverted softmax's logZ: method must be "
                          f"is or dis, got {method}")


def bank_view(bank: MatrixSource, config: RunConfig, key: Any = None) -> Delayed:
    """Lazy :class:`BankView` of ``bank`` for an ``is``/``dis`` ``config``."""
    check_method(config.method)
    key = key or Keys()
    betas = np.asarray(config.values, dtype=np.float64)
    k = max(config.k, 1)
    parts = [delayed(partial(_bank_block, bank))(i, betas, k, dask_key_name=key("dbank", i))
             for i in range(len(bank.row_chunks))]
    main = tree(parts, _bank_combine, key, "dbank-combine")
    view: Delayed = delayed(_bank_view)(config, main, dask_key_name=key("dbank-view"))
    return view


# ---------------------------------------------------------------- test stage


@dataclass
class QueryPart:
    """What one test row block gave (rows ``start .. start + len(top1)``)."""

    start: int
    items: np.ndarray  # gallery items in the block's (unmasked) top-depth lists
    counts: np.ndarray  # how often each of ``items`` appears there
    top1: np.ndarray  # (rows,) raw top-1 similarity
    top_idx: np.ndarray  # (rows,) raw top-1 item
    row: RowResult | None  # the run's counts (None without a ground truth)


def _part(spec: RowSpec, mask: np.ndarray | None, depth: int,
          top: tuple[np.ndarray, np.ndarray], counts: kernels.RowCounts | None,
          norm: GalleryStatistics) -> QueryPart:
    values, idx = top
    listed = idx[:, :depth] if mask is None else idx[np.asarray(mask, bool), :depth]
    items, n = np.unique(listed, return_counts=True)
    row = None if counts is None else finish_rows(spec, counts, norm, None)
    return QueryPart(spec.start, items, n.astype(np.int64), values[:, 0], idx[:, 0], row)


def _test_block(src: MatrixSource, i: int, spec: RowSpec, mask: np.ndarray | None,
                depth: int, norm: GalleryStatistics, with_gt: bool) -> QueryPart:
    """A test row block spanning the whole gallery: read once, everything from it."""
    block = src.read(i, 0)
    top = kernels.row_topk(block, depth, 0)
    counts = None
    if with_gt:
        gt_raw = block[np.arange(block.shape[0]), spec.gt].astype(np.float64)
        top_idx = top[1][:, 0]
        counts = piece_counts(block, 0, spec, gt_raw, norm, norm.flags(top_idx), top_idx)
    return _part(spec, mask, depth, top, counts, norm)


def _test_piece(spec: RowSpec, col0: int, block: np.ndarray, gt_raw: np.ndarray | None,
                depth: int, norm: GalleryStatistics) -> tuple[Any, kernels.RowCounts | None]:
    top = kernels.row_topk(block, depth, col0)
    counts = None if gt_raw is None else piece_counts(block, col0, spec, gt_raw, norm, None)
    return top, counts


def _test_combine(spec: RowSpec, mask: np.ndarray | None, depth: int, norm: GalleryStatistics,
                  *pieces: tuple[Any, kernels.RowCounts | None]) -> QueryPart:
    top = row_topk(depth).tree([p[0] for p in pieces])
    counts = None
    if pieces[0][1] is not None:
        counts = ROW_COUNTS.tree([p[1] for p in pieces])
    return _part(spec, mask, depth, top, counts, norm)


def _test_row(src: MatrixSource, i: int, spec: RowSpec, mask: np.ndarray | None,
              depth: int, norm: Delayed, with_gt: bool, key: Any) -> Delayed:
    """Tasks for a test row block chunked along the gallery too (each block read once)."""
    starts = offsets(src.col_chunks)
    reads = [delayed(partial(src.read, i))(c, dask_key_name=key("dtest-read", i, c))
             for c in range(len(src.col_chunks))]
    gt_raw = None
    if with_gt:
        assert spec.gt is not None
        needed = sorted({int(np.searchsorted(starts, g, side="right") - 1)
                         for g in np.unique(spec.gt)})
        gt_raw = delayed(gather_gt)(spec, src.col_chunks, needed, *[reads[c] for c in needed],
                                     dask_key_name=key("dtest-gt", i))
    pieces = [delayed(_test_piece)(spec, starts[c], reads[c], gt_raw, depth, norm,
                                   dask_key_name=key("dtest-piece", i, c))
              for c in range(len(src.col_chunks))]
    row: Delayed = delayed(_test_combine)(spec, mask, depth, norm, *pieces,
                                          dask_key_name=key("dtest", i))
    return row


def query_parts(experiment: Experiment, norm: Delayed, depth: int, with_gt: bool,
               key: Any = None) -> list[Delayed]:
    """Lazy :class:`QueryPart` per test row block (``with_gt``: the run's counts too)."""
    key = key or Keys()
    test = experiment.test
    depth = min(depth, test.shape[1])
    parts = []
    for i, (start, size) in enumerate(zip(offsets(test.row_chunks), test.row_chunks,
                                          strict=True)):
        gt = None if not with_gt or experiment.gt is None else experiment.gt[start:start + size]
        spec = RowSpec(start, gt, 0)
        mask = None if experiment.mask is None else experiment.mask[start:start + size]
        if len(test.col_chunks) == 1:
            parts.append(delayed(partial(_test_block, test))(
                i, spec, mask, depth, norm, with_gt, dask_key_name=key("dtest", i)))
        else:
            parts.append(_test_row(test, i, spec, mask, depth, norm, with_gt, key))
    return parts


def _normaliser_of(view: BankView) -> GalleryStatistics:
    return view.normaliser


def build(experiment: Experiment, bank: MatrixSource, config: RunConfig, depth: int,
          with_gt: bool) -> list[Delayed]:
    """``[BankView, QueryPart, ...]``: the whole lazy graph of a diagnosis."""
    if bank.shape[1] != experiment.n_gallery:
        raise InputError(f"bank has {bank.shape[1]} gallery columns, "
                         f"test has {experiment.n_gallery}")
    key = Keys()
    view = bank_view(bank, config, key)
    norm = delayed(_normaliser_of)(view, dask_key_name=key("dnorm"))
    return [view, *query_parts(experiment, norm, depth, with_gt, key)]
