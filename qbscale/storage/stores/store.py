"""Opening a qbscale experiment store, and the ground-truth and mask checks.

Files are touched only under :mod:`qbscale.storage`: this module opens
stores, :mod:`~qbscale.storage.stores.sources` reads their chunks,
:mod:`~qbscale.storage.stores.writer` and :mod:`~qbscale.storage.stores.ingest` write them,
:mod:`~qbscale.storage.stores.results` and :mod:`~qbscale.storage.stores.resume` write run
outputs.  See :mod:`qbscale.storage.layout` for the store contract.
"""

from __future__ import annotations

import contextlib
import numbers
import os
import warnings
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from qbscale.engine.grid import split
from qbscale.errors import (
    ConfigError,
    DamagedStoreError,
    GroundTruthWarning,
    IncompleteStoreError,
    InputError,
    QBScaleError,
    StoreChangedError,
    StoreNotFoundError,
)
from qbscale.storage import layout
from qbscale.storage.durability import integrity, seal
from qbscale.storage.stores.results import deleted, deleted_error, published_prefix
from qbscale.storage.stores.sources import (
    EmbeddingMatrix,
    NumpyMatrix,
    ZarrMatrix,
    forget_open_arrays,
)
from qbscale.types import Experiment, MatrixSource

#: bytes of one float32 similarity block computed from embeddings
EMBEDDING_BLOCK_BYTES = 2**27
#: fewest gallery items per embeddings block (keeps the matrix products large)
EMBEDDING_MIN_ITEMS = 1024


def ground_truth(n_queries: int, n_gallery: int, queries_per_item: int | None = None,
                 gt_index: np.ndarray | None = None, label: str = "gt_index") -> np.ndarray:
    """Ground-truth gallery index of every query, after checking it fits.

    Query ``i`` belongs to item ``i // queries_per_item``; by default
    ``queries_per_item = n_queries // n_gallery`` as in the reference code.
    An explicit ``gt_index`` (named ``label`` in errors) is checked by
    :func:`check_gt_index`.  A mapping that leaves most of the gallery without
    a query is refused, or warned about when it was given explicitly
    (:func:`check_coverage`).

    >>> ground_truth(6, 3)
    array([0, 0, 1, 1, 2, 2])
    """
    if gt_index is not None:
        if queries_per_item is not None:
            raise ConfigError("give queries_per_item or gt_index, not both")
        gt = check_gt_index(gt_index, n_queries, n_gallery, label)
        check_coverage(gt, n_gallery, explicit=True)
        return gt
    explicit = queries_per_item is not None
    if queries_per_item is None:
        if n_queries < n_gallery or n_queries % n_gallery:
            raise InputError(
                f"test has {n_queries} queries, not a positive multiple of its {n_gallery} "
                "gallery items: give queries_per_item (--queries-per-item N: query i belongs "
                "to item i // N) or gt_index (--gt-index FILE)"
            )
        queries_per_item = n_queries // n_gallery
    if type(queries_per_item) is bool or not isinstance(queries_per_item, numbers.Integral):
        raise ConfigError(f"queries_per_item must be an integer, got {queries_per_item!r}")
    qpi = int(queries_per_item)
    if qpi < 1 or n_queries % qpi or n_queries // qpi > n_gallery:
        raise InputError(
            f"queries_per_item={queries_per_item} does not fit {n_queries} test queries and "
            f"{n_gallery} gallery items: it must divide the queries into at most "
            f"{n_gallery} items"
        )
    gt = np.arange(n_queries, dtype=np.int64) // qpi
    check_coverage(gt, n_gallery, explicit)
    return gt


def positives(experiment: Experiment, block: int = 65536
              ) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Each test query's relevant gallery items, block by block of queries.

    Yields ``(query indices, positives)``: the 0-based indices of a block of
    queries (masked queries left out: the metrics do not count them) and, for
    each, an int64 array of its relevant gallery indices (one per query for a
    ``gt`` vector).  Exporters (:mod:`qbscale.storage.outputs.qrels`) read the
    ground truth only through this function.

    Parameters
    ----------
    experiment : Experiment
        The experiment whose ground truth (``gt`` or ``positives``) and
        ``mask`` are read.
    block : int, default 65536
        The number of consecutive queries considered per yielded block.

    Yields
    ------
    rows : numpy.ndarray
        (n,) int64, the 0-based indices of the block's queries the metrics
        count.
    positives : list of numpy.ndarray
        For each of those queries, an int64 array of its relevant gallery
        indices.

    Raises
    ------
    ConfigError
        The experiment has no ground truth.

    Examples
    --------
    >>> import numpy as np
    >>> from qbscale.storage.stores.store import positives
    >>> from qbscale.types import Experiment
    >>> exp = Experiment(None, None, np.array([2, 0, 1]), np.array([True, False, True]))
    >>> [(q.tolist(), [p.tolist() for p in pos]) for q, pos in positives(exp)]
    [([0, 2], [[2], [1]])]
    """
    gt, several = experiment.gt, getattr(experiment, "positives", None)
    if gt is None and several is None:
        where = experiment.url or "the experiment"
        raise ConfigError(f"{where} has no ground truth, so no relevant items to write; "
                          f"{ADD_TRUTH_HINT}")
    mask = None if experiment.mask is None else np.asarray(experiment.mask, dtype=bool)
    if several is not None:  # several positives per query (queries without one left out)
        indptr = np.asarray(several.indptr, dtype=np.int64)
        indices = np.asarray(several.indices, dtype=np.int64)
        n = indptr.shape[0] - 1
        for start in range(0, n, max(1, int(block))):
            rows = np.arange(start, min(start + block, n), dtype=np.int64)
            if mask is not None:
                rows = rows[mask[rows]]
            rows = rows[indptr[rows + 1] > indptr[rows]]
            if rows.size:
                yield rows, [indices[indptr[i]:indptr[i + 1]] for i in rows.tolist()]
        return
    gt = np.asarray(gt, dtype=np.int64)
    for start in range(0, gt.shape[0], max(1, int(block))):
        rows = np.arange(start, min(start + block, gt.shape[0]), dtype=np.int64)
        if mask is not None:
            rows = rows[mask[rows]]
        if rows.size:
            yield rows, [gt[i:i + 1] for i in rows.tolist()]


def resolve_ground_truth(n_queries: int, n_gallery: int, queries_per_item: int | None = None,
                         gt_index: np.ndarray | None = None, label: str = "gt_index",
                         wanted: bool | None = None) -> np.ndarray | None:
    """The ground truth, or None for a test matrix that has none.

    ``wanted=True`` requires one (:func:`ground_truth`'s checks and errors);
    ``wanted=False`` forces none (giving ``queries_per_item`` or ``gt_index``
    too is an error); ``None`` (automatic) gives none only when nothing was
    given and the queries are not a positive multiple of the gallery
    (deployment: new queries whose right answers nobody knows).

    >>> resolve_ground_truth(1000, 3000) is None
    True
    >>> resolve_ground_truth(6, 3)
    array([0, 0, 1, 1, 2, 2])
    """
    given = queries_per_item is not None or gt_index is not None
    if wanted is False:
        if given:
            raise ConfigError("no ground truth was asked for: give neither queries_per_item "
                              "(--queries-per-item) nor gt_index (--gt-index)")
        return None
    if wanted is None and not given and (n_queries < n_gallery or n_queries % n_gallery):
        return None
    return ground_truth(n_queries, n_gallery, queries_per_item, gt_index, label)


#: how a store gets a ground truth it was written without
ADD_TRUTH_HINT = ("to add one, ingest the store again (`qbscale ingest`) with --gt-index FILE "
                  "or --queries-per-item N")


def no_ground_truth_notice(n_queries: int, n_gallery: int, forced: bool) -> str:
    """One line saying a store (or experiment) has no ground truth, and why."""
    why = ("as asked" if forced else
           f"test has {n_queries} queries, not a positive multiple of its {n_gallery} "
           "gallery items")
    return (f"no ground truth ({why}): runs give top-k hits and scores, no metrics; "
            "for metrics give --queries-per-item N or --gt-index FILE")


def inferred_ground_truth_notice(queries_per_item: int) -> str:
    """One line saying the ground truth was inferred from the shapes, and how to change it.

    >>> inferred_ground_truth_notice(1)[:60]
    'ground truth inferred from the shapes: query i is the query '
    """
    n = int(queries_per_item)
    which = "i" if n == 1 else f"i // {n}"
    return (f"ground truth inferred from the shapes: query i is the query of gallery item "
            f"{which} ({n} per item); if these are new queries whose right answers nobody "
            "knows, ingest again with --no-ground-truth (or set it with --queries-per-item "
            "or --gt-index)")


def check_gt_index(values: Any, n_queries: int, n_gallery: int,
                   label: str = "gt_index") -> np.ndarray:
    """An explicit ground truth as int64, one gallery index per query.

    >>> check_gt_index([2, 0], 2, 3)
    array([2, 0])
    """
    values = np.asarray(values)
    if values.size != n_queries or values.ndim > 2 or (values.ndim == 2 and 1 not in values.shape):
        raise InputError(f"{label} has shape {values.shape}; expected "
                         f"{n_queries} entries, one per test query")
    if values.dtype.kind not in "iu":
        raise InputError(f"{label} holds {values.dtype} values; expected integers")
    values = values.ravel()  # checked before the cast: uint64 beyond int64 would wrap
    bad = np.flatnonzero((values < 0) | (values >= n_gallery))
    if bad.size:
        i = int(bad[0])
        raise InputError(f"{label}: entry {i} is {values[i]}, outside the gallery "
                         f"[0, {n_gallery}) ({bad.size} of {n_queries} entries are)")
    return values.astype(np.int64)


#: how a query mask is named in messages (with its file: ``query mask (masks.pkl)``)
MASK_LABEL = "query mask"


def mask_grouping(n_queries: int, n_gallery: int, queries_per_item: int | None = None
                  ) -> int | None:
    """The queries per item a 2-D query mask is laid out by: ``queries_per_item`` when
    given, else ``n_queries // n_gallery`` when the queries are a positive multiple of
    the gallery (the reference code's layout), else None (only a flat mask fits).

    Every path that takes a mask (``ingest``, the seed's ``--test_query_masks_path``,
    :func:`in_memory`) checks it with this grouping and :func:`check_mask`.

    >>> mask_grouping(20000, 1000), mask_grouping(20000, 3000), mask_grouping(6, 3, 1)
    (20, None, 1)
    """
    if queries_per_item is not None:
        return int(queries_per_item)
    if n_gallery and n_queries >= n_gallery and n_queries % n_gallery == 0:
        return n_queries // n_gallery
    return None


def check_mask(mask: Any, n_queries: int, queries_per_item: int | None = None,
               label: str = MASK_LABEL) -> np.ndarray | None:
    """A query mask as a flat bool vector, after checking its shape and values.

    The mask is ``(n_queries,)``, or ``(n_items, queries_per_item)`` as the
    reference code stores it (row ``i`` holds the queries of item ``i``); values
    are bool or 0/1.  A 2-D mask of any other shape is refused, also when it has
    as many entries (``(20, 1000)`` for 1000 items of 20 queries is transposed:
    flattened, it would mask the wrong queries); without ``queries_per_item``
    only a flat mask (or a single row or column) fits.

    >>> check_mask([[1, 0], [1, 1]], 4, 2)
    array([ True, False,  True,  True])
    """
    if mask is None:
        return None
    values = np.asarray(mask)
    qpi = queries_per_item
    expected = f"({n_queries // qpi}, {qpi}) or ({n_queries},)" if qpi else f"({n_queries},)"
    grouped = (n_queries // qpi, qpi) if qpi else None
    if values.size != n_queries or values.ndim > 2 or (
            values.ndim == 2 and values.shape != grouped and (qpi or 1 not in values.shape)):
        raise InputError(f"{label} has shape {values.shape}; expected {expected}: "
                         f"one entry per test query ({n_queries})")
    if values.dtype.kind not in "biuf":
        raise InputError(f"{label} holds {values.dtype} values; expected 0/1")
    if values.dtype.kind != "b":
        bad = np.flatnonzero((values != 0) & (values != 1))
        if bad.size:
            pos = np.unravel_index(int(bad[0]), values.shape)
            raise InputError(f"{label} holds {bad.size} values other than 0/1; "
                             f"the first is {values[pos].item()!r} at {tuple(int(p) for p in pos)}")
    flat = values.ravel().astype(bool)
    if n_queries and not flat.any():
        raise InputError(f"{label} masks every one of the {n_queries} test queries: "
                         "nothing would be evaluated")
    return flat


def check_coverage(gt: np.ndarray, n_gallery: int, explicit: bool = True) -> None:
    """Refuse (or, for a mapping asked for explicitly, warn about) a ground truth
    that leaves most of the gallery without a query.

    Fewer than half of the items having a query usually means a wrong
    ``queries_per_item`` (20 captions per video assumed, one per item given):
    the metrics would be near zero without a word.  An explicit mapping may
    be intended (10,000 queries against a million items), so it is only
    warned about, with the figures (:class:`~qbscale.errors.GroundTruthWarning`).
    """
    covered = int(np.unique(gt).size)
    if 2 * covered >= n_gallery:
        return
    message = (f"{gt.size} test queries map onto {covered} of {n_gallery} gallery items "
               f"({100 * covered / n_gallery:.1f}%); the other items can only rank as "
               "wrong answers")
    if not explicit:
        raise InputError(f"{message}: give queries_per_item or gt_index explicitly if "
                         "this is intended")
    warnings.warn(message, GroundTruthWarning, stacklevel=2)


def open_experiment(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None,
                    rows_per_block: int | None = None) -> Experiment:
    """Open a store written by :func:`qbscale.ingest` for reading.

    Parameters
    ----------
    url : str or os.PathLike
        A store path or URL.
    storage_options : dict, optional
        The fsspec options of a URL.
    rows_per_block : int, optional
        Rows per read block; by default the stored chunks'.

    Returns
    -------
    Experiment
        The store's block sources, ground truth and mask.

    Raises
    ------
    StoreNotFoundError
        Nothing is at ``url``, or it is not a qbscale store.
    IncompleteStoreError
        The store was never marked complete (an interrupted ingest).
    """
    from qbscale.storage.durability.paths import check_filesystem

    url = layout.local_path(os.fspath(url))  # file:// is local: direct chunk reads apply
    check_filesystem(url)
    forget_open_arrays()  # a store may have been rewritten since last opened
    integrity.forget()
    try:
        return _open(url, storage_options, rows_per_block)
    except QBScaleError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        forget_open_arrays()
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{url} is corrupt: a zarr.json of the store cannot be read "
                         f"({type(exc).__name__}: {first})") from exc


def _open(url: str, storage_options: dict[str, Any] | None,
          rows_per_block: int | None) -> Experiment:
    import zarr

    group: Any
    try:
        group = zarr.open_group(url, mode="r", storage_options=storage_options)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError) as exc:
        raise StoreNotFoundError(f"no qbscale store at {url}") from exc
    attrs = dict(group.attrs.get(layout.ATTR) or {})
    if not attrs:
        raise StoreNotFoundError(f"{url} is a Zarr group but not a qbscale store")
    if not attrs.get("complete"):
        raise IncompleteStoreError(
            f"{url} is incomplete (its ingest was interrupted): ingest it again "
            "(`qbscale ingest`, replacing it)"
        )
    refused = seal.refusal(url, attrs)  # no seal, or edited settings, results, manifests
    if refused is not None:
        raise DamagedStoreError(refused)
    names = set(group.array_keys())
    if layout.GALLERY_BANK_RECORD not in attrs:  # a gallery bank whose write did not finish:
        names.discard(layout.GALLERY_BANK)       # refused as incomplete when a run asks for it
    # ids whose write did not finish: not read
    names -= set(layout.ID_ARRAYS) - set(layout.recorded_ids(attrs))
    integrity.check_store_metadata(url, storage_options, names, published_prefix(attrs),
                                   root=attrs)
    bank, test = _sources(url, attrs, storage_options, rows_per_block)
    if bank.shape[1] != test.shape[1]:
        raise InputError(f"bank has {bank.shape[1]} gallery columns, test has {test.shape[1]}")
    gt_index = _vector(url, group, layout.GT_INDEX, storage_options) \
        if layout.GT_INDEX in names else None
    from qbscale.storage.stores.positives import stored

    positives = stored(names, lambda name: _vector(url, group, name, storage_options),
                       test.shape[1])
    gt = None if attrs.get("ground_truth") is False or positives is not None else \
        ground_truth(test.shape[0], test.shape[1], attrs.get("queries_per_item"), gt_index)
    mask = _vector(url, group, layout.QUERY_MASK, storage_options) \
        if layout.QUERY_MASK in names else None
    return Experiment(bank, test, gt, check_mask(mask, test.shape[0]), url, attrs,
                      storage_options, positives)


@contextlib.contextmanager
def read_whole(experiment: Experiment | None) -> Iterator[None]:
    """Read ``experiment``'s store inside this block, then :func:`check_unchanged`.

    A failure while reading (a chunk missing or not the one recorded, metadata
    that no longer fits) from a store that was replaced meanwhile is reported
    as that replacement (:class:`StoreChangedError`): a chunk "missing" because
    a smaller store took the place of the one opened is nothing to re-ingest or
    restore.  A failure of a store that is still the one opened is raised as it is.
    """
    if experiment is None:
        yield
        return
    try:
        yield
    except Exception:
        check_unchanged(experiment)
        raise
    check_unchanged(experiment)


def check_unchanged(experiment: Experiment) -> None:
    """Refuse what was read from a store that has since been replaced.

    Every ingest gives its store a fresh ``store_id``; a run compares the id
    it opened with the one there now, after reading and before reporting or
    saving anything (stores written before the id existed: their inputs'
    checksums).  A read-only run takes no lock, so an ``ingest --overwrite``
    of the same path may land while it reads: its figures could then mix two
    stores.

    Raises
    ------
    StoreChangedError
        The store at ``experiment.url`` is not the one that was opened.
    """
    import zarr

    if experiment.url is None or not experiment.attrs:
        return
    # the store, its gallery bank (replaced in place by add_gallery_bank) and its ids
    keys = ("store_id" if "store_id" in experiment.attrs else "sources",
            layout.GALLERY_BANK_RECORD, layout.IDS_RECORD)
    try:
        group = zarr.open_group(experiment.url, mode="r", use_consolidated=False,
                                storage_options=experiment.storage_options)
        attrs: Any = group.attrs.get(layout.ATTR) or {}
        now = dict(attrs)
    except (OSError, KeyError, ValueError, zarr.errors.GroupNotFoundError):
        now = {}  # gone, or its zarr.json being rewritten: not the store that was read
    if deleted(experiment.url):
        raise deleted_error(str(experiment.url))
    if not now.get("complete") or any(now.get(k) != experiment.attrs.get(k) for k in keys):
        raise StoreChangedError(
            f"store {experiment.url} was replaced while this run read it (by a "
            "new ingest?): its figures could mix two stores, so nothing "
            "was reported or saved; run again")


def _vector(url: str, group: Any, name: str, options: dict[str, Any] | None) -> np.ndarray:
    """A small 1-D array of the store, read through the verified store (every chunk
    a regular file, checked against its sealed manifest)."""
    from qbscale.storage.durability.integrity import read_array
    from qbscale.storage.stores.sources import _open_zarr, freeze_options

    frozen = freeze_options(options)
    return read_array(url, name, _open_zarr(url, name, frozen), frozen)


def _sources(url: str, attrs: dict[str, Any], options: dict[str, Any] | None,
             rows_per_block: int | None) -> tuple[MatrixSource, MatrixSource]:
    if attrs.get("kind", layout.KIND_SIMS) == layout.KIND_SIMS:
        return (ZarrMatrix.open(url, layout.BANK, options, rows_per_block),
                ZarrMatrix.open(url, layout.TEST, options, rows_per_block))
    gallery = ZarrMatrix.open(url, layout.GALLERY_EMB, options)
    pair = []
    for name in (layout.BANK_EMB, layout.TEST_EMB):
        queries = ZarrMatrix.open(url, name, options)
        q_rows, g_rows = embedding_grid(queries.shape[0], gallery.row_chunks[0], rows_per_block)
        if g_rows >= gallery.row_chunks[0]:  # whole stored chunks
            parts = ZarrMatrix.open(url, layout.GALLERY_EMB, options, g_rows)
        else:
            parts = replace(gallery, row_chunks=within_chunks(gallery.row_chunks, g_rows))
        pair.append(EmbeddingMatrix.build(ZarrMatrix.open(url, name, options, q_rows), parts))
    return pair[0], pair[1]


def within_chunks(chunks: tuple[int, ...], step: int) -> tuple[int, ...]:
    """Blocks of at most ``step`` rows that never cross a stored chunk boundary.

    >>> within_chunks((5, 5, 3), 2)
    (2, 2, 1, 2, 2, 1, 2, 1)
    """
    return tuple(part for chunk in chunks for part in split(chunk, step))


def embedding_grid(n_queries: int, gallery_chunk: int, rows_per_block: int | None = None,
                   block_bytes: int | None = None) -> tuple[int, int]:
    """``(query rows, gallery items)`` per similarity block from embeddings.

    The gallery is read once per query row block, so query blocks are as tall
    as the block budget allows with at least :data:`EMBEDDING_MIN_ITEMS`
    gallery items; gallery blocks then fill the budget, in whole stored chunks
    or in equal parts of one (a part re-reads its chunk: store embeddings in
    chunks no larger than a block).

    Examples
    --------
    10000 queries, gallery stored in chunks of 2048 items, 128 MiB blocks:
    all queries in one block, 3355 items fit, so one 2048-item chunk a block.

    >>> embedding_grid(10000, 2048)
    (10000, 2048)
    >>> embedding_grid(10000, 43690)  # a 43690-item chunk in 14 parts
    (10000, 3121)

    Parts are cut chunk by chunk (:func:`within_chunks`).
    """
    budget = max(1, (block_bytes or EMBEDDING_BLOCK_BYTES) // 4)
    q_rows = rows_per_block or max(1, min(n_queries, budget // EMBEDDING_MIN_ITEMS))
    g_rows = max(1, budget // q_rows)
    if g_rows >= gallery_chunk:
        return q_rows, gallery_chunk * (g_rows // gallery_chunk)
    parts = -(-gallery_chunk // g_rows)
    return q_rows, -(-gallery_chunk // parts)


def check_matrix(name: str, arr: np.ndarray) -> None:
    """Refuse anything but a non-empty, finite, 2-D float matrix."""
    from qbscale.engine.checks import check_similarities
    from qbscale.storage.stores.writer import FiniteCheck  # the check ingest streams blocks through

    check_similarities(arr, name)
    finite = FiniteCheck(name)
    finite(arr, 0)
    finite.raise_if_bad()


def in_memory(bank: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None,
              queries_per_item: int | None = None, gt_index: np.ndarray | None = None,
              rows_per_block: int | None = None, names: tuple[str, str] = ("bank", "test"),
              ground_truth: bool | None = True, mask_name: str = MASK_LABEL,
              gt_name: str = "gt_index") -> Experiment:
    """An experiment over in-memory arrays (no store), e.g. loaded pickles.

    Parameters
    ----------
    bank : numpy.ndarray
        (n_bank, n_gallery) querybank x gallery similarities.
    test : numpy.ndarray
        (n_queries, n_gallery) test-query x gallery similarities.
    mask : numpy.ndarray, optional
        0/1 per test query, False for queries left out of the metrics.
    queries_per_item : int, optional
        Query ``i`` belongs to gallery item ``i // queries_per_item``.
    gt_index : numpy.ndarray, optional
        The ground-truth gallery index of every query, instead.
    rows_per_block : int, optional
        Rows per block of the task graphs.
    names : tuple of str, default ("bank", "test")
        How messages name the two matrices.
    ground_truth : bool or None, default True
        False gives an experiment without one (``gt=None``): runs return
        top-k and scores but no metrics; None decides as
        :func:`resolve_ground_truth` does.
    mask_name : str, default "query mask"
        How messages name ``mask`` (with its file: ``query mask (masks.pkl)``).
    gt_name : str, default "gt_index"
        How messages name ``gt_index``.

    Returns
    -------
    Experiment
        Ready for :func:`qbscale.run`.

    Examples
    --------
    >>> import numpy as np
    >>> from qbscale.storage.stores.store import in_memory
    >>> rng = np.random.default_rng(0)
    >>> in_memory(rng.random((20, 5)), rng.random((5, 5))).n_gallery
    5
    """
    for name, arr in zip(names, (bank, test), strict=True):
        check_matrix(name, arr)
    if bank.shape[1] != test.shape[1]:
        raise InputError(f"{names[0]} has {bank.shape[1]} gallery columns, "
                         f"{names[1]} has {test.shape[1]}")
    n_gallery = test.shape[1]
    step = rows_per_block or max(1, 2**24 // n_gallery)
    gt = resolve_ground_truth(test.shape[0], n_gallery, queries_per_item, gt_index, gt_name,
                              wanted=ground_truth)
    grouping = mask_grouping(test.shape[0], n_gallery, queries_per_item)
    return Experiment(NumpyMatrix.wrap(bank, step), NumpyMatrix.wrap(test, step), gt,
                      check_mask(mask, test.shape[0], grouping, mask_name))
