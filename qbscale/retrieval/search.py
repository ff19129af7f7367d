"""Exact QB-Norm search: new queries in, each query's best gallery items out.

A fitted normaliser (:class:`qbscale.engine.statistics.GalleryStatistics`) is all a
search needs besides the gallery::

    scores, indices = search(norm, queries, top_k=10, gallery=gallery_emb)

Similarities ``queries @ gallery.T`` are computed block by block in float32
(as :class:`~qbscale.storage.stores.sources.EmbeddingMatrix` does), or read from a
similarity matrix (:func:`search_matrix`); each block yields per-row top-k
lists (:mod:`qbscale.engine.topk`) that merge across gallery blocks in a
tree, so memory stays at a few blocks whatever the gallery size.  Per row
the search keeps both the raw top-k and the normalised top-k of every
variant; a row's choice is made at the end, from its raw top-1 over the
whole gallery (the dynamic switch of DIS, :meth:`GalleryStatistics.flags`).

Scores are ``scale * s - shift[j]`` (float64, :func:`qbscale.engine.kernels.exact_scores`)
on normalised rows and raw ``s`` on the others; ties go to the lowest
gallery index.  With several values of the swept parameter the results have
a leading variant axis.  :func:`to_faiss` serves the same scores from any
faiss index (:mod:`qbscale.retrieval.faiss_index`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from dask.delayed import Delayed, delayed

from qbscale.engine import topk as _topk
from qbscale.engine.checks import check_finite, check_similarities
from qbscale.engine.grid import offsets
from qbscale.engine.reductions import row_topk
from qbscale.engine.statistics import GalleryStatistics
from qbscale.errors import InputError
from qbscale.storage.inputs.gallery_rows import gallery_source, query_source

if TYPE_CHECKING:
    from qbscale.types import MatrixSource

#: bytes of one float32 similarity block (per task)
BLOCK_BYTES = 2**26
#: fewest gallery items per block (keeps the matrix products large)
MIN_ITEMS = 1024
#: elements of a row slab scored at a time (1 MiB of float32 stays in cache)
SLAB_ELEMENTS = 2**18
#: elements of a row slab of a grouped block (only its segment maxima are
#: computed for every entry, so slabs are large: fewer, larger numpy calls)
GROUPED_SLAB_ELEMENTS = 2**22
#: fewest tasks a search is cut into (queries split when the gallery is small);
#: fixed, not taken from the scheduler, so that block shapes, and with them the
#: float32 products, are the same under every scheduler
TASKS = 16
#: partial results merged per merge task
FAN_IN = 8

TopK = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class _Partial:
    """Per-row top-k over a slice of the gallery: raw, and one per variant."""

    raw: TopK | None
    norm: tuple[TopK, ...]


def _engine_record(norm: GalleryStatistics) -> GalleryStatistics:
    """The engine record alone (a subclass may carry a gallery with it)."""
    return GalleryStatistics(norm.config, norm.shift, norm.activation, dict(norm.fingerprint))


class _Product:
    """``q @ g.T`` computed a row slab at a time when sliced (``product[r0:r1]``),
    so each slab is still in cache when its top-k lists are taken."""

    def __init__(self, q: np.ndarray, g: np.ndarray) -> None:
        self.q, self.g_t = q, g.T
        self.shape = (q.shape[0], g.shape[0])

    def __getitem__(self, rows: slice) -> np.ndarray:
        return np.asarray(self.q[rows] @ self.g_t)


def _block_partial(block: np.ndarray | _Product, col0: int, k: int, norm: GalleryStatistics,
                   smax: float | None = None, order: np.ndarray | None = None,
                   state: _Partial | None = None) -> _Partial:
    """Top-k lists of one similarity block (gallery columns ``col0:col0+width``).

    With ``order`` (from :func:`_grouping`), ``block[:, p]`` holds column
    ``col0 + order[p]`` and one pass over the block's segment maxima serves
    every list (:func:`qbscale.engine.topk.grouped_topk`), and ``state`` (the
    same rows' lists over earlier gallery blocks) sets running thresholds.
    The result includes ``state``.  ``block`` may be a :class:`_Product`
    (with ``order`` only).  Rows go through in slabs of about
    :data:`SLAB_ELEMENTS` (:data:`GROUPED_SLAB_ELEMENTS` for a grouped block),
    so the float32 scores, masks and floors of a slab stay in cache while they
    are used.
    """
    n_rows, width = block.shape
    step = max(1, SLAB_ELEMENTS // max(width, 1))
    want_raw = norm.rows != "all" or norm.shift is None
    want_norm = norm.shift is not None and norm.rows != "none"
    shift = norm.shift[:, col0:col0 + width] if want_norm and norm.shift is not None else None
    raw: list[TopK] = []
    normed: list[list[TopK]] = [[] for _ in norm.values] if want_norm else []
    if order is not None and shift is not None:
        variants = [_topk.GroupedShift(float(scale), shift[b], order)
                    for b, scale in enumerate(norm.scales)]
        step = max(1, GROUPED_SLAB_ELEMENTS // max(width, 1))
        for r in range(0, n_rows, step):
            prev = None if state is None else (
                _rows(state.raw, r, step), [(n[0][r:r + step], n[1][r:r + step])
                                            for n in state.norm])
            slab_raw, slab_norm = _topk.grouped_topk(block[r:r + step], k, variants, order,
                                                     col0, want_raw, prev)
            if slab_raw is not None:
                raw.append(slab_raw)
            for b, pair in enumerate(slab_norm):
                normed[b].append(pair)
        return _Partial(_stack(raw) if want_raw else None, tuple(_stack(n) for n in normed))
    assert isinstance(block, np.ndarray)
    scratch = np.empty(min(n_rows, step) * width, np.float32) if want_norm else None
    if smax is None and want_norm:
        smax = max(abs(float(block.max())), abs(float(block.min())))
    for r in range(0, n_rows, step):
        slab = block[r:r + step]
        if want_raw:
            raw.append(_topk.raw_topk(slab, k, col0))
        if shift is not None:
            for b, scale in enumerate(norm.scales):
                normed[b].append(_topk.normalised_topk(slab, k, float(scale), shift[b], col0,
                                                       scratch, smax))
    part = _Partial(_stack(raw) if want_raw else None, tuple(_stack(n) for n in normed))
    return part if state is None else _merge(k, state, part)


def _rows(pair: TopK | None, start: int, count: int) -> TopK | None:
    return None if pair is None else (pair[0][start:start + count], pair[1][start:start + count])


def _grouping(norm: GalleryStatistics, col0: int, width: int, k: int) -> np.ndarray | None:
    """The column order grouping similar shifts (of the first variant) into
    segments, when the search scores normalised lists and the bounds apply."""
    if norm.shift is None or norm.rows == "none":
        return None
    shift = norm.shift[:, col0:col0 + width]
    if not _topk.can_group(width, k, np.asarray(norm.scales), shift):
        return None
    return _topk.grouped_order(shift[0])


def _stack(parts: list[TopK]) -> TopK:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _merge(k: int, *parts: _Partial) -> _Partial:
    """Merge partials over disjoint gallery slices (ties to the lowest index)."""
    merge = row_topk(k)
    raw = None if parts[0].raw is None else merge.tree([p.raw for p in parts])
    norm = tuple(merge.tree([p.norm[b] for p in parts]) for b in range(len(parts[0].norm)))
    return _Partial(raw, norm)


def _finish(norm: GalleryStatistics, part: _Partial) -> TopK:
    """``(scores, indices)`` of shape ``(n_values, rows, k)``: each row's
    normalised list where the row is normalised, its raw list elsewhere."""
    n_values = len(norm.values)
    if not part.norm:
        assert part.raw is not None
        return (np.repeat(part.raw[0][None], n_values, axis=0),
                np.repeat(part.raw[1][None], n_values, axis=0))
    if part.raw is None:
        return np.stack([v for v, _ in part.norm]), np.stack([i for _, i in part.norm])
    flags = norm.flags(part.raw[1][:, 0])[:, None]
    return (np.stack([np.where(flags, v, part.raw[0]) for v, _ in part.norm]),
            np.stack([np.where(flags, i, part.raw[1]) for _, i in part.norm]))


def _tree(parts: list[Any], k: int, name: str) -> Any:
    """Merge delayed partials in a tree of :data:`FAN_IN` (bounded memory)."""
    level = 0
    while len(parts) > 1:
        parts = [delayed(_merge)(k, *parts[g:g + FAN_IN],
                                 dask_key_name=f"{name}-merge-{level}-{g // FAN_IN}")
                 for g in range(0, len(parts), FAN_IN)]
        level += 1
    return parts[0]


# ----------------------------------------------------------------- tasks


def _embedding_block(queries: MatrixSource, gallery: MatrixSource, i: int, c: int, col0: int,
                     k: int, norm: GalleryStatistics, state: _Partial | None) -> _Partial:
    q = np.asarray(queries.read(i, 0), dtype=np.float32)
    g = np.asarray(gallery.read(c, 0), dtype=np.float32)
    # squared norms: finite only when every entry is (checked precisely otherwise)
    q_norms = np.einsum("ij,ij->i", q, q)
    g_norms = np.einsum("ij,ij->i", g, g)
    if not np.isfinite(q_norms).all():
        check_finite(q, offsets(queries.row_chunks)[i], getattr(queries, "what", "the queries"))
    if not np.isfinite(g_norms).all():
        check_finite(g, col0, getattr(gallery, "what", "the gallery embeddings"))
    # |q.g| <= |q| |g| bounds every similarity of the block (float32 rounding
    # of the product adds far less than the margin of normalised_topk)
    smax = float(np.sqrt(q_norms.max(initial=0.0)) * np.sqrt(g_norms.max(initial=0.0))
                 ) * (1 + 2.0**-10)
    order = _grouping(norm, col0, g.shape[0], k)
    if order is None:
        return _block_partial(q @ g.T, col0, k, norm, smax, None, state)
    return _block_partial(_Product(q, g[order]), col0, k, norm, smax, order, state)


def _matrix_block(sims: MatrixSource, i: int, c: int, col0: int, k: int,
                  norm: GalleryStatistics, state: _Partial | None, what: str) -> _Partial:
    block = np.asarray(sims.read(i, c))
    if block.dtype.kind != "f" or block.dtype.itemsize < 4:
        block = block.astype(np.float32)
    # the extremes are finite exactly when every value is (checked precisely otherwise)
    top, bottom = float(block.max()), float(block.min())
    if not (np.isfinite(top) and np.isfinite(bottom)):
        check_finite(block, offsets(sims.row_chunks)[i], what, col0)
    return _block_partial(block, col0, k, norm, max(abs(top), abs(bottom)), state=state)


# ----------------------------------------------------------------- graphs


def _graph(norm: GalleryStatistics, n_rows: tuple[int, ...], col_chunks: tuple[int, ...], k: int,
           task: Any, token: str, chains: int) -> list[Delayed]:
    """One delayed ``(scores, indices)`` per query row block.

    A row block's gallery blocks are dealt to ``chains`` chains (block ``c``
    to chain ``c % chains``); each task takes its chain's lists so far, whose
    ``k``-th best scores let it skip most of its block, and the chains merge
    at the end.  ``chains`` tasks per row block can run at once.
    """
    record = delayed(norm, name=f"qb-search-norm-{token}")
    cols = offsets(col_chunks)
    chains = max(1, min(chains, len(col_chunks)))
    out = []
    for i in range(len(n_rows)):
        ends = []
        for w in range(chains):
            state = None
            for c in range(w, len(col_chunks), chains):
                state = delayed(task)(i, c, cols[c], k, record, state,
                                      dask_key_name=f"qb-search-{i}-{c}-{token}")
            ends.append(state)
        merged = _tree(ends, k, f"qb-search-{i}-{token}")
        out.append(delayed(_finish)(record, merged, dask_key_name=f"qb-search-{i}-done-{token}"))
    return out


def _compute(norm: GalleryStatistics, build: Any, scheduler: Any, num_workers: int | None,
             progress: bool) -> TopK:
    """Build the graph for the executor's parallelism (``build(threads)``), run it."""
    from qbscale.executors import get_executor

    executor = get_executor(scheduler, num_workers)
    try:
        results = executor.compute(build(executor.threads), progress)
    finally:
        executor.close()
    scores = np.concatenate([r[0] for r in results], axis=1)
    indices = np.concatenate([r[1] for r in results], axis=1)
    if len(norm.values) == 1:
        return scores[0], indices[0]
    return scores, indices


def _check_k(top_k: int, n_gallery: int) -> int:
    """``top_k`` as an int, at most the gallery's size (every item is listed then,
    as a run's ``topk`` does).

    >>> _check_k(10, 4)
    4
    """
    whole = isinstance(top_k, (int, np.integer)) and not isinstance(top_k, bool)
    if not whole or top_k < 1:
        raise InputError(f"top_k must be an integer >= 1, got {top_k!r}")
    return min(int(top_k), n_gallery)


def block_grid(n_queries: int, n_gallery: int, gallery_chunk: int | None = None,
               block_rows: int | None = None, tasks: int = TASKS,
               block_bytes: int = BLOCK_BYTES) -> tuple[int, int]:
    """``(query rows, gallery items)`` per similarity block.

    Query blocks are as tall as the budget allows with at least
    :data:`MIN_ITEMS` gallery items, so the gallery is read once per query
    block; gallery blocks fill the budget, in whole stored chunks
    (``gallery_chunk``) when they fit.  When that makes fewer than ``tasks``
    blocks, queries are split further so every worker has work.

    >>> block_grid(4000, 1_000_000)
    (4000, 4194)
    >>> block_grid(4000, 4000)
    (250, 4000)
    """
    budget = max(1, block_bytes // 4)
    rows = block_rows or max(1, min(n_queries, budget // MIN_ITEMS))
    items = min(n_gallery, max(1, budget // rows))
    if gallery_chunk and items >= gallery_chunk:
        items = gallery_chunk * (items // gallery_chunk)
    if block_rows is None:
        n_blocks = -(-n_gallery // items)
        if n_blocks * -(-n_queries // rows) < tasks:
            rows = max(1, -(-n_queries // -(-tasks // n_blocks)))
    return rows, items


def search(norm: GalleryStatistics, queries: Any, top_k: int, gallery: Any = None, *,
           scheduler: Any = "threads", num_workers: int | None = None,
           block_rows: int | None = None, block_items: int | None = None,
           progress: bool = False) -> TopK:
    """Exact QB-Norm top-k of new queries over a gallery of embeddings.

    Parameters
    ----------
    norm : GalleryStatistics or Normaliser
        A fitted normaliser (:class:`qbscale.engine.statistics.GalleryStatistics`,
        or :class:`qbscale.Normaliser`, whose own gallery is used when
        ``gallery`` is None).
    queries : array-like or str
        (n, d) embeddings: a numpy or dask array, or the path of a ``.npy``
        file or Zarr array.
    top_k : int
        Items per query (more than the gallery's size lists every item).
    gallery : array-like or str, optional
        (n_gallery, d) embeddings: a numpy or dask array, a Zarr array, the
        path of a ``.npy`` file, a Zarr array or an embeddings store (its
        ``gallery_emb``).
    scheduler : str or distributed.Client, default "threads"
        As in :func:`qbscale.run` (``tcp://`` included).
    num_workers : int, optional
        Threads or processes of a local scheduler.
    block_rows : int, optional
        Queries per block (default: as many as the block budget allows).
    block_items : int, optional
        Gallery items per block (default: the rest of the budget).
    progress : bool, default False
        Show a progress bar on stderr.

    Returns
    -------
    scores : numpy.ndarray
        The float64 scores, ``(n, top_k)``, or ``(n_values, n, top_k)`` with several
        values: normalised scores on normalised rows, raw elsewhere.
    indices : numpy.ndarray
        The int64 gallery indices, same shape, best first.

    Raises
    ------
    InputError
        The gallery is not the one the normaliser was fitted on (size, or
        checksum when recorded), dimensions differ, or ``top_k`` is invalid.

    Examples
    --------
    >>> import numpy as np
    >>> from qbscale.config import RunConfig
    >>> from qbscale.engine.statistics import GalleryStatistics
    >>> from qbscale.retrieval.search import search
    >>> g = np.eye(3, dtype=np.float32)
    >>> norm = GalleryStatistics(RunConfig.make(1.0, method="is"), np.array([[0.0, 2.0, 0.0]]),
    ...                          np.ones(3, bool))
    >>> search(norm, np.array([[0.0, 1.0, 0.9]], np.float32), 2, g)[1]
    array([[2, 0]])
    """
    if gallery is None:
        if getattr(norm, "gallery", None) is None:
            raise InputError("no gallery: pass gallery= (the embeddings the normaliser "
                             "was fitted for)")
        gallery = norm.fitted_gallery()  # type: ignore[attr-defined]
    gal = gallery_source(gallery, "the gallery embeddings")
    norm.check_gallery(gal.shape[0], "the gallery")
    _check_fingerprint(norm, gallery)  # reads the gallery once: after the size check
    k = _check_k(top_k, gal.shape[0])
    qry = query_source(queries, 2**62, "the queries")
    if qry.shape[1] != gal.shape[1]:
        raise InputError(f"{qry.what} have dimension {qry.shape[1]}, {gal.what} "
                         f"{gal.shape[1]}")
    record = _engine_record(norm)
    token = _token()

    def build(threads: int) -> list[Delayed]:
        rows, items = block_grid(qry.shape[0], gal.shape[0], gal.chunk, block_rows)
        blocks = qry.blocks(rows)
        parts = gal.blocks(block_items or items)

        def task(i: int, c: int, col0: int, k: int, nrm: GalleryStatistics,
                 state: _Partial | None) -> _Partial:
            return _embedding_block(blocks, parts, i, c, col0, k, nrm, state)

        return _graph(record, blocks.row_chunks, parts.row_chunks, k, task, token,
                      -(-2 * threads // len(blocks.row_chunks)))

    return _compute(record, build, scheduler, num_workers, progress)


def search_matrix(norm: GalleryStatistics, sims: Any, top_k: int, *,
                  scheduler: Any = "threads", num_workers: int | None = None,
                  progress: bool = False, what: str = "the similarity matrix") -> TopK:
    """:func:`search` over precomputed similarities (query rows x the gallery).

    Parameters
    ----------
    norm : GalleryStatistics or Normaliser
        A fitted normaliser.
    sims : array-like or block source
        A block source (:class:`~qbscale.storage.stores.sources.ZarrMatrix`,
        :class:`~qbscale.storage.stores.sources.NumpyMatrix`, a store's
        ``test``) or a numpy or dask array or :class:`xarray.DataArray`, of
        floats; its blocks are read once each.
    top_k : int
        Items per query.
    scheduler : str or distributed.Client, default "threads"
        As in :func:`qbscale.run`.
    num_workers : int, optional
        Threads or processes of a local scheduler.
    progress : bool, default False
        Show a progress bar on stderr.
    what : str, default "the similarity matrix"
        How messages name ``sims``.

    Returns
    -------
    scores, indices : numpy.ndarray
        As :func:`search` returns them.

    Raises
    ------
    InputError
        A block holds NaN or inf (raised by its task, naming the value's row
        and column in ``sims``).
    """
    sims = _sims_source(sims, what)
    norm.check_gallery(sims.shape[1], what)
    if sims.shape[0] == 0:
        raise InputError(f"the similarity matrix has no rows (shape {tuple(sims.shape)})")
    k = _check_k(top_k, sims.shape[1])
    record = _engine_record(norm)

    def task(i: int, c: int, col0: int, k: int, nrm: GalleryStatistics,
             state: _Partial | None) -> _Partial:
        return _matrix_block(sims, i, c, col0, k, nrm, state, what)

    def build(threads: int) -> list[Delayed]:
        return _graph(record, sims.row_chunks, sims.col_chunks, k, task, _token(),
                      -(-2 * threads // len(sims.row_chunks)))

    return _compute(record, build, scheduler, num_workers, progress)


def _sims_source(sims: Any, what: str) -> MatrixSource:
    """``sims`` as a block source, refused unless a non-empty 2-D array of
    floats (:func:`qbscale.engine.checks.check_similarities`)."""
    if hasattr(sims, "row_chunks") and hasattr(sims, "read"):  # a block source
        data = getattr(sims, "array", sims)
        if hasattr(data, "dtype"):
            check_similarities(data, what)
        return sims  # type: ignore[no-any-return]
    from qbscale.retrieval.fitting import DaskMatrix, check_known_sizes, is_dask, unwrap
    from qbscale.retrieval.transform import gallery_last
    from qbscale.storage.stores.sources import NumpyMatrix

    if hasattr(sims, "dims") and hasattr(sims, "data"):  # the gallery axis by its name
        sims = gallery_last(sims, what)[0]
    data = unwrap(sims)
    check_similarities(data, what)
    check_known_sizes(data, what)
    if is_dask(data):
        return DaskMatrix(data, what)
    return NumpyMatrix.wrap(data, max(1, BLOCK_BYTES // 4 // data.shape[1]))


def _token() -> str:
    import uuid

    return uuid.uuid4().hex[:12]


def _check_fingerprint(norm: GalleryStatistics, gallery: Any) -> None:
    """The gallery checksum, when the normaliser recorded one and can check it."""
    check = getattr(norm, "check_gallery_emb", None)
    if check is None or not norm.fingerprint.get("gallery_sha256"):
        return
    if isinstance(gallery, str | os.PathLike):
        from qbscale.storage.inputs.gallery_rows import as_dask

        gallery = as_dask(gallery)
    check(gallery)


def to_faiss(norm: GalleryStatistics, gallery_emb: Any, factory: str = "Flat",
             params: str | None = None) -> Any:
    """A faiss index serving ``norm``'s scores.

    Its ``.search(queries, top_k)`` returns what :func:`search` returns, and
    ``.save(path)`` writes it.

    Parameters
    ----------
    norm : GalleryStatistics or Normaliser
        A fitted normaliser.
    gallery_emb : array-like or str
        The gallery embeddings fitted on.
    factory : str, default "Flat"
        The faiss index factory string.
    params : str, optional
        The faiss search parameters, e.g. ``"efSearch=256"``.

    Returns
    -------
    FaissSearch
        The index (:class:`qbscale.retrieval.faiss_index.FaissSearch`).
    """
    from qbscale.retrieval.faiss_index import FaissSearch

    return FaissSearch.build(norm, gallery_emb, factory, params)


__all__ = ["block_grid", "search", "search_matrix", "to_faiss"]
