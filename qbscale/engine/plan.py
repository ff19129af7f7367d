"""Build the lazy task graph of a QB-Norm run.  Nothing here computes.

The graph has two stages, each reading every block of its matrix once:

1. **bank**: one task per block of every bank the method reads computes the
   per-gallery statistics it needs (:mod:`qbscale.engine.bankstats`: column
   logsumexp per beta, column top-k values, and the activation mask of the
   querybank rows' top-k columns), combined in trees; the method
   (:mod:`qbscale.engine.methods`) turns them into one shift per gallery item and
   variant, every variant scoring ``scale * s - shift``.
2. **test**: one task per test row block counts, for each row, the raw and the
   normalised scores above and equal to the ground truth's (all betas, plus
   the baseline, in the same read), and decides which rows are normalised from
   the row's raw top-1.  Without a ground truth it counts nothing and only
   finds the top-1, the top-k and (when asked) the normalised scores.  When
   the test matrix is also chunked along the gallery, each block is read by
   its own task, the ground-truth scores are gathered from the blocks that
   hold them (the same keys, so no second read) and per-block counts combine
   with :data:`~qbscale.engine.reductions.ROW_COUNTS`.

The bank stage may fit several querybank subsets from the same reads
(:func:`fit_cells`, the cells of a bank-size sweep): the test stage then
scores with a :class:`~qbscale.engine.stack.Stack` of their normalisers,
counting every cell's variants in its one read, each variant with its own
activation set.

Tasks are :func:`dask.delayed` calls with explicit keys, so building a plan
neither computes nor hashes the data.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
from dask.delayed import Delayed, delayed

from qbscale.config import RunConfig
from qbscale.engine import bankstats, kernels, methods
from qbscale.engine import positives as _pos
from qbscale.engine.grid import offsets
from qbscale.engine.reductions import ROW_COUNTS, row_topk
from qbscale.engine.stack import Stack
from qbscale.engine.statistics import GalleryStatistics, check_range
from qbscale.engine.subsets import Subsets
from qbscale.errors import ConfigError, InputError
from qbscale.types import Experiment, MatrixSource, RowResult

#: what the test stage scores with: one normaliser, or a stack of cells' normalisers
Variants = GalleryStatistics | Stack


@dataclass
class Plan:
    """The lazy outputs of a run: compute them with an executor."""

    normaliser: Delayed  # the bank stage: a GalleryStatistics
    rows: list[Delayed]  # the test stage: a RowResult per test row block
    config: RunConfig
    experiment: Experiment

    def outputs(self) -> list[Delayed]:
        return [self.normaliser, *self.rows]


class Keys:
    """Task names of one graph (a fresh token per plan)."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex[:12]

    def __call__(self, *parts: Any) -> str:
        return "-".join(["qb", *map(str, parts), self.token])


# ---------------------------------------------------------------- bank stage


def _fitted(config: RunConfig, banks: list[str], *stats: methods.BankStats) -> GalleryStatistics:
    return GalleryStatistics.from_stats(config, dict(zip(banks, stats, strict=True)))


def _fitted_cells(configs: list[RunConfig], banks: list[str], query: list[methods.BankStats],
                  *others: methods.BankStats) -> list[GalleryStatistics]:
    """One normaliser per cell: the querybank's statistics per cell, the other
    banks' (``banks[1:]``) shared."""
    return [GalleryStatistics.from_stats(config, dict(zip(banks, [query[c], *others], strict=True)))
            for c, config in enumerate(configs)]


def cell_configs(config: RunConfig, subsets: Subsets) -> list[RunConfig]:
    """Each cell's settings: ``config`` with the cell's bank sample and seed."""
    return [replace(config, bank_sample=None, seed=0) if cell.repeat is None
            else replace(config, bank_sample=cell.size, seed=int(cell.seed or 0))
            for cell in subsets.cells]


def fit(experiment: Experiment, config: RunConfig, key: Keys | None = None,
        banks: Mapping[str, MatrixSource] | None = None, *,
        bank_sample: int | float | str | None = None, seed: int | None = None) -> Delayed:
    """The lazy :class:`GalleryStatistics` of ``config``'s method (:mod:`qbscale.engine.methods`).

    One pass over every bank the method reads: the querybank
    (``experiment.bank``, which also gives the activation set; only the rows
    of ``config.bank_sample`` when set, :mod:`qbscale.engine.subsets`) and
    the sources in ``banks`` (e.g. ``{"gallery_bank": ...}`` for ``dual-is``).
    ``bank_sample`` and ``seed``, when given, replace ``config``'s.
    """
    if bank_sample is not None or seed is not None:
        config = replace(config, bank_sample=bank_sample,  # type: ignore[arg-type]
                         seed=config.seed if seed is None else seed)
    key = key or Keys()
    if not config.normalises:  # the baseline needs nothing from the querybank
        baseline: Delayed = delayed(GalleryStatistics.baseline, pure=True)(
            config, experiment.n_gallery, dask_key_name=key("normaliser"))
        return baseline
    config = config.resolved(experiment.bank.shape[0])
    subsets = Subsets.sample(config.bank_sample, config.seed, experiment.bank.shape[0])
    return _fit(experiment, [config], subsets, key, banks, single=True)


def fit_cells(experiment: Experiment, config: RunConfig, subsets: Subsets,
              key: Keys | None = None, banks: Mapping[str, MatrixSource] | None = None
              ) -> Delayed:
    """A lazy list of :class:`GalleryStatistics`, one per cell of ``subsets`` (in
    :attr:`Subsets.cells` order), from one read of every bank block.

    Cell ``(r, N)`` is the normaliser of ``config`` with ``bank_sample=N,
    seed=subsets.seeds[r]`` (:func:`cell_configs`).
    """
    if not config.normalises:
        raise ConfigError("a bank-size sweep needs a method that normalises, not 'none'")
    if config.bank_sample is not None:
        raise ConfigError("a bank-size sweep chooses its own bank samples: "
                          "give sizes, not bank_sample")
    if subsets.n_rows != experiment.bank.shape[0]:
        raise InputError(f"the subsets are of {subsets.n_rows} bank rows, the bank has "
                         f"{experiment.bank.shape[0]}")
    return _fit(experiment, cell_configs(config, subsets), subsets, key or Keys(), banks)


def _fit(experiment: Experiment, configs: list[RunConfig], subsets: Subsets | None,
         key: Keys, banks: Mapping[str, MatrixSource] | None, single: bool = False
         ) -> Delayed:
    config = configs[0]
    if config.k > experiment.n_gallery:
        raise ConfigError(f"k={config.k} exceeds the gallery's {experiment.n_gallery} items "
                          "(the activation set is each bank row's top k items)")
    banks = banks or {}
    method = methods.get(config.method)
    needs = method.needs(config.values, config.param_dict)
    query = needs.get(methods.QUERY_BANK, methods.BankNeeds())
    needs[methods.QUERY_BANK] = replace(query, activation_k=config.k)
    sources = {methods.QUERY_BANK: experiment.bank, **banks}
    missing = sorted(set(needs) - set(sources))
    if missing:
        raise ConfigError(f"method {method.name} needs a {missing[0].replace('_', ' ')}: "
                          f"add one to the store, or pass {missing[0]}= to run()")
    for name in needs:
        if sources[name].shape[1] != experiment.n_gallery:
            raise InputError(f"{name} has {sources[name].shape[1]} gallery columns, "
                             f"test has {experiment.n_gallery}")
    names = [methods.QUERY_BANK, *(n for n in needs if n != methods.QUERY_BANK)]
    stats = [bankstats.cell_summary(sources[methods.QUERY_BANK], needs[methods.QUERY_BANK],
                                    subsets, key, methods.QUERY_BANK)]
    stats += [bankstats.summary(sources[name], needs[name], key, name) for name in names[1:]]
    cells: Delayed = delayed(_fitted_cells)(configs, names, *stats,
                                            dask_key_name=key("normaliser-cells" if single
                                                              else "normaliser"))
    if single:
        first: Delayed = delayed(operator.itemgetter(0))(cells, dask_key_name=key("normaliser"))
        return first
    return cells


# ---------------------------------------------------------------- test stage


@dataclass(frozen=True)
class RowSpec:
    """What a test-row task needs besides its block (small, picklable).

    ``gt`` is None for queries without a ground truth: nothing is counted,
    the task only finds top-1 (for the normalised flags), top-k and scores.
    """

    start: int
    gt: np.ndarray | None
    topk: int
    keep_scores: bool = False  # return the normalised block (in-memory runs)
    #: several positives per query (instead of ``gt``), every row with one at least
    positives: _pos.Positives | None = None
    #: sorted gallery columns that are no competitors (scored -inf), or None
    excluded: np.ndarray | None = None
    #: also count every positive's rank, for average precision
    average_precision: bool = False

    @property
    def counts(self) -> bool:
        """True when the rows have a ground truth to count against."""
        return self.gt is not None or self.positives is not None


def piece_counts(block: np.ndarray, col0: int, spec: RowSpec, gt_raw: np.ndarray,
                  norm: Variants, rows: np.ndarray | None,
                  top_idx: np.ndarray | None = None,
                  gt_norm: np.ndarray | None = None) -> kernels.RowCounts:
    """Counts against ``gt_raw`` and, per variant, ``gt_norm`` (by default the
    normalised scores of ``spec.gt``'s columns)."""
    assert spec.counts, "counting needs a ground truth"
    width = block.shape[1]
    scales = norm.scales
    if norm.shift is None:
        return kernels.count_block(block, col0, gt_raw, None, None, scales, rows, top_idx)
    with np.errstate(over="ignore", invalid="ignore"):  # refused just below
        if gt_norm is None:
            assert spec.gt is not None
            gt_norm = kernels.normalised_gt(gt_raw, spec.gt, norm.shift, scales)
        shift = norm.shift[:, col0:col0 + width]
        counts = kernels.count_block(block, col0, gt_raw, gt_norm, shift, scales, rows, top_idx)
    config = norm.config if isinstance(norm, GalleryStatistics) else norm.members[0].config
    top_val = counts.top_val
    if spec.excluded is not None:  # a piece of excluded columns only has a -inf maximum
        some = ~np.isneginf(top_val)
        top_val, gt_norm = top_val[some], gt_norm[:, some]
    check_range(config, scales, top_val, gt_norm, shift, spec.start)
    return counts


def _piece_topk(block: np.ndarray, col0: int, spec: RowSpec, norm: Variants
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Top-K of the raw scores, then of the normalised scores per value."""
    out = [kernels.row_topk(block, spec.topk, col0)]
    if norm.shift is not None:
        every = np.ones(block.shape[0], bool)
        out += [kernels.row_topk(scores, spec.topk, col0)
                for scores in norm.transform(block, col0, every)]
    return out


def finish_rows(spec: RowSpec, counts: kernels.RowCounts | None, norm: Variants,
                topks: list[tuple[np.ndarray, np.ndarray]] | None,
                top_idx: np.ndarray | None = None, scores: np.ndarray | None = None,
                ap: np.ndarray | None = None) -> RowResult:
    """The RowResult of a row block: ranks from ``counts`` (None without a
    ground truth: give ``top_idx``, the rows' raw top-1), top-k, kept scores,
    and average precisions ``ap`` ``(1 + n_variants, rows)`` (raw first)."""
    if counts is not None:
        top_idx = counts.top_idx
    assert top_idx is not None
    flags = norm.flags(top_idx)
    each = norm.variant_flags(top_idx)  # (n_variants, rows)
    base = rank = None
    if counts is not None:  # a ground truth: ranks from the counts
        base = kernels.ranks_from_counts(counts.above, counts.equal)
        if counts.norm_above is not None and counts.norm_equal is not None:
            rank = np.where(each, kernels.ranks_from_counts(counts.norm_above,
                                                            counts.norm_equal), base)
    result = RowResult(spec.start, base, rank, flags, top_idx.astype(np.int64), scores=scores)
    if ap is not None:
        result.base_ap = ap[0]
        result.ap = np.where(each, ap[1:], ap[0]) if len(ap) > 1 else None
    if topks is not None:
        raw = topks[0]
        chosen = [raw] if len(topks) == 1 else [
            tuple(np.where(each[v][:, None], t, r) for t, r in zip(scored, raw, strict=True))
            for v, scored in enumerate(topks[1:])]
        result.topk_idx = np.stack([c[1] for c in chosen]).astype(np.int32)
        result.base_topk_idx = raw[1].astype(np.int32)
        result.topk_score = np.stack([c[0] for c in chosen]).astype(np.float64)
    return result


def _test_block(src: MatrixSource, spec: RowSpec, norm: Variants, writer: Any = None
                ) -> RowResult:
    """Fused task for a test row block that spans the whole gallery."""
    i = offsets(src.row_chunks).index(spec.start)
    block = _pos.exclude(src.read(i, 0), 0, spec.excluded)
    top_idx = np.argmax(block, axis=1)
    flags = norm.variant_flags(top_idx)
    counts = ap = None
    if spec.gt is not None:
        gt_raw = block[np.arange(block.shape[0]), spec.gt].astype(np.float64)
        counts = piece_counts(block, 0, spec, gt_raw, norm, flags, top_idx)
    elif spec.positives is not None:
        pos = spec.positives
        limits = _limits(_pos.gather(block, 0, pos), pos, norm)
        tops = _pos.best(limits, pos)
        counts = piece_counts(block, 0, spec, tops[0], norm, flags, top_idx, tops[1:])
        if spec.average_precision:
            ap = _pos.average_precision(*_pos.pair_counts(block, 0, pos, limits, norm.shift,
                                                          norm.scales), limits, pos)
    topks = _piece_topk(block, 0, spec, norm) if spec.topk else None
    kept = None
    if spec.keep_scores or (writer is not None and norm.shift is not None):
        scored = norm.transform(block, 0, flags)
        if writer is not None and norm.shift is not None:
            for b, scores in enumerate(scored):
                writer.write(b, i, scores)
        kept = scored if spec.keep_scores else None
    return finish_rows(spec, counts, norm, topks, top_idx, kept, ap)


def _limits(values: np.ndarray, pos: _pos.Positives, norm: Variants) -> np.ndarray:
    """Every positive's raw and normalised scores (:func:`positives.thresholds`)."""
    with np.errstate(over="ignore", invalid="ignore"):  # refused by check_range
        return _pos.thresholds(values, pos, norm.shift, norm.scales)


# ------------------------------------------ several positives, gallery in column blocks


def _gather_piece(src: MatrixSource, i: int, c: int, spec: RowSpec) -> np.ndarray:
    """The positives' raw scores held in block ``(i, c)`` (NaN elsewhere)."""
    col0 = offsets(src.col_chunks)[c]
    block = _pos.exclude(src.read(i, c), col0, spec.excluded)
    assert spec.positives is not None
    return _pos.gather(block, col0, spec.positives)


def _merge_gathers(*parts: np.ndarray) -> np.ndarray:
    out = parts[0]
    for part in parts[1:]:
        out = _pos.merge_gathered(out, part)
    return out


#: what a counting piece returns: counts, top-k lists, per-positive counts (or None)
Piece = tuple[kernels.RowCounts, Any, Any]


def _positive_piece(src: MatrixSource, i: int, c: int, spec: RowSpec, values: np.ndarray,
                    norm: Variants) -> Piece:
    """Read block ``(i, c)`` and count it against the positives' best scores."""
    col0 = offsets(src.col_chunks)[c]
    block = _pos.exclude(src.read(i, c), col0, spec.excluded)
    pos = spec.positives
    assert pos is not None
    limits = _limits(values, pos, norm)
    tops = _pos.best(limits, pos)
    counts = piece_counts(block, col0, spec, tops[0], norm, None, None, tops[1:])
    topks = _piece_topk(block, col0, spec, norm) if spec.topk else None
    pairs = _pos.pair_counts(block, col0, pos, limits, norm.shift, norm.scales) \
        if spec.average_precision else None
    return counts, topks, pairs


def _merge_pieces(spec: RowSpec, *pieces: Piece) -> Piece:
    """Combine counting pieces over disjoint column slices (a task of the tree)."""
    counts = ROW_COUNTS.tree([p[0] for p in pieces])
    topks = None
    if spec.topk:
        merge = row_topk(spec.topk)
        topks = [merge.tree([p[1][j] for p in pieces]) for j in range(len(pieces[0][1]))]
    pairs = None
    if pieces[0][2] is not None:
        pairs = (sum(p[2][0] for p in pieces), sum(p[2][1] for p in pieces))
    return counts, topks, pairs


def _finish_positives(spec: RowSpec, norm: Variants, values: np.ndarray, piece: Piece
                      ) -> RowResult:
    counts, topks, pairs = piece
    ap = None
    if pairs is not None:
        assert spec.positives is not None
        above, equal = pairs
        ap = _pos.average_precision(above, equal, _limits(values, spec.positives, norm),
                                    spec.positives)
    return finish_rows(spec, counts, norm, topks, None, None, ap)


#: pieces combined per task of the tree: bounded memory whatever the number of blocks
FAN_IN = 4


def _test_row_positives(src: MatrixSource, i: int, spec: RowSpec, norm: Delayed,
                        key: Keys) -> Delayed:
    """Tasks for a row block with several positives per row, the gallery in
    column blocks: a first pass reads every block for the positives' scores
    (a vector), a second reads them again to count; each task reads its own
    block, so no block waits in memory for another."""
    n = len(src.col_chunks)
    gathers = [delayed(_gather_piece)(src, i, c, spec, dask_key_name=key("pos-read", i, c))
               for c in range(n)]
    values = _tree(gathers, _merge_gathers, key, ("pos-gather", i))
    pieces = [delayed(_positive_piece)(src, i, c, spec, values, norm,
                                       dask_key_name=key("pos-count", i, c))
              for c in range(n)]
    merged = _tree(pieces, partial(_merge_pieces, spec), key, ("pos-merge", i))
    row: Delayed = delayed(_finish_positives)(spec, norm, values, merged,
                                              dask_key_name=key("test-row", i))
    return row


def _tree(parts: list[Delayed], combine: Any, key: Keys, name: tuple[Any, ...]) -> Delayed:
    """Combine ``parts`` in a tree of tasks of :data:`FAN_IN` inputs each."""
    level = 0
    while len(parts) > 1:
        parts = [delayed(combine)(*parts[j:j + FAN_IN],
                                  dask_key_name=key(*name, level, j // FAN_IN))
                 for j in range(0, len(parts), FAN_IN)]
        level += 1
    return parts[0]


def gather_gt(spec: RowSpec, col_chunks: tuple[int, ...], needed: list[int],
              *blocks: np.ndarray) -> np.ndarray:
    """Each row's own ground-truth score, from the column blocks that hold them."""
    assert spec.gt is not None
    gt = spec.gt
    starts = offsets(col_chunks)
    out = np.empty(len(gt))
    for c, block in zip(needed, blocks, strict=True):
        here = (gt >= starts[c]) & (gt < starts[c] + col_chunks[c])
        rows = np.nonzero(here)[0]
        out[rows] = block[rows, gt[rows] - starts[c]]
    return out


def _count_piece(spec: RowSpec, col0: int, block: np.ndarray, gt_raw: np.ndarray | None,
                 norm: Variants) -> tuple[Any, Any]:
    """Counts against the ground truth (or, without one, the row top-1) of a piece."""
    if spec.gt is None or gt_raw is None:
        first: Any = kernels.row_topk(block, 1, col0)
    else:
        first = piece_counts(block, col0, spec, gt_raw, norm, None)
    return first, (_piece_topk(block, col0, spec, norm) if spec.topk else None)


def _combine_pieces(spec: RowSpec, norm: Variants, *pieces: tuple[Any, Any]) -> RowResult:
    counts = top_idx = None
    if spec.gt is None:  # the top-1 merge: ties to the lowest column, as argmax
        top_idx = row_topk(1).tree([p[0] for p in pieces])[1][:, 0]
    else:
        counts = ROW_COUNTS.tree([p[0] for p in pieces])
    topks = None
    if spec.topk:
        merge = row_topk(spec.topk)
        topks = [merge.tree([p[1][j] for p in pieces]) for j in range(len(pieces[0][1]))]
    return finish_rows(spec, counts, norm, topks, top_idx)


def _test_row(src: MatrixSource, i: int, spec: RowSpec, norm: Delayed, key: Keys) -> Delayed:
    """Tasks for a test row block chunked along the gallery too."""
    starts = offsets(src.col_chunks)
    reads = [delayed(partial(src.read, i))(c, dask_key_name=key("test-read", i, c))
             for c in range(len(src.col_chunks))]
    gt_raw = None
    if spec.gt is not None:
        needed = sorted({int(np.searchsorted(starts, g, side="right") - 1)
                         for g in np.unique(spec.gt)})
        gt_raw = delayed(gather_gt)(spec, src.col_chunks, needed,
                                     *[reads[c] for c in needed],
                                     dask_key_name=key("test-gt", i))
    pieces = [delayed(_count_piece)(spec, starts[c], reads[c], gt_raw, norm,
                                    dask_key_name=key("test-count", i, c))
              for c in range(len(src.col_chunks))]
    row: Delayed = delayed(_combine_pieces)(spec, norm, *pieces,
                                            dask_key_name=key("test-row", i))
    return row


def build(experiment: Experiment, config: RunConfig, writer: Any = None, *,
          normaliser: GalleryStatistics | Delayed | None = None,
          banks: Mapping[str, MatrixSource] | None = None, keep_scores: bool = False) -> Plan:
    """The lazy graph of a run over ``experiment``; computes nothing.

    Without a ground truth (``experiment.gt is None``) the test stage counts
    nothing: it finds each row's top-1 (which rows are normalised), the
    top-k and, with ``keep_scores``, returns the normalised rows
    (``RowResult.scores``, for in-memory experiments).

    ``normaliser`` is the bank stage already done for these settings (a saved
    normaliser, or an interrupted run's, :mod:`qbscale.storage.stores.resume`): it
    replaces the bank stage; or a lazy one (a dask ``Delayed`` of a
    :class:`GalleryStatistics` or of a :class:`~qbscale.engine.stack.Stack`, e.g. the
    cells of a bank-size sweep) to use as the bank stage.  ``banks`` holds
    the extra bank matrices the method reads besides the querybank
    (``{"gallery_bank": source}`` for ``dual-is``).
    """
    key = Keys()
    if isinstance(normaliser, Delayed):
        norm = normaliser
    elif normaliser is not None:
        normaliser.check_gallery(experiment.n_gallery)
        norm = delayed(normaliser, name=key("normaliser"))
    else:
        norm = fit(experiment, config, key, banks)
    test = experiment.test
    if keep_scores and len(test.col_chunks) != 1:
        raise ConfigError("keeping scores needs a test matrix chunked by rows only")
    rows = []
    positives = None if experiment.positives is None else experiment.positives.filled()
    several = experiment.positives is not None and experiment.positives.several
    for i, (start, size) in enumerate(zip(offsets(test.row_chunks), test.row_chunks,
                                          strict=True)):
        gt = None if experiment.gt is None else experiment.gt[start:start + size]
        pos = None if positives is None else positives.rows(start, start + size)
        spec = RowSpec(start, None if pos is not None else gt, config.topk, keep_scores,
                       pos, experiment.excluded, several)
        if len(test.col_chunks) == 1:
            rows.append(delayed(partial(_test_block, test))(spec, norm, writer,
                                                            dask_key_name=key("test", i)))
        elif pos is not None:
            rows.append(_test_row_positives(test, i, spec, norm, key))
        else:
            rows.append(_test_row(test, i, spec, norm, key))
    return Plan(norm, rows, config, experiment)
