"""Ingest: similarity (or embedding) files -> one Zarr v3 experiment store.

Inputs are read row block by row block (see :mod:`qbscale.storage.inputs.readers`), checked
while they stream (shapes, NaN/inf, masks, ground truth) and written chunk by
chunk into the layout of :mod:`qbscale.storage.layout`.  A local store is built in a
hidden sibling directory and renamed into place once complete; a remote store
(fsspec URL) is written in place with its ``complete`` flag set last.  Either
way an interrupted ingest never leaves a store that looks complete.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from qbscale import __version__
from qbscale.errors import ConfigError, InputError
from qbscale.storage import layout
from qbscale.storage.durability.stage import staging
from qbscale.storage.inputs.ids import IdSource
from qbscale.storage.inputs.readers import InputMatrix, open_matrix
from qbscale.storage.stores.ids import read_given
from qbscale.storage.stores.store import (
    MASK_LABEL,
    check_mask,
    ground_truth,
    mask_grouping,
    resolve_ground_truth,
)
from qbscale.storage.stores.writer import (
    Target,
    check_options,
    stored_dtype,
    unit_rows,
    write_store,
)

__all__ = ["CODECS", "DTYPES", "chunk_shape", "ingest", "ingest_embeddings"]

#: re-exported from :mod:`qbscale.storage.layout` (the store contract)
CODECS = layout.CODECS
DTYPES = layout.DTYPES

PathOrArray = str | os.PathLike[str] | np.ndarray


def _balanced(n: int, cap: int) -> int:
    """The smallest chunk length <= ``cap`` covering ``n`` in as few chunks as ``cap`` does."""
    count = -(-n // max(1, cap))
    return -(-n // count)


def chunk_shape(n_rows: int, n_cols: int, itemsize: int,
                chunk_bytes: int = layout.DEFAULT_CHUNK_BYTES,
                rows: int | None = None, cols: int | None = None) -> tuple[int, int]:
    """Chunk shape of an ``n_rows x n_cols`` matrix for a target chunk size.

    Chunks span whole rows, at most ``chunk_bytes // row_bytes`` of them (at
    least one); only when a single row exceeds ``chunk_bytes`` are columns cut
    too.  Within that cap the chunks are evened out: edge chunks are stored
    full size, so ``7951`` rows in two chunks of ``3976`` store one padding row
    where chunks of ``4194`` would store 437.  ``rows`` / ``cols`` fix either
    side exactly.

    Examples
    --------
    The pycode querybank (7951 x 4000 float32, 16000 bytes a row) in 64 MiB
    chunks: ``67108864 // 16000 = 4194`` rows at most, so two chunks, of
    ``ceil(7951 / 2) = 3976`` rows.

    >>> chunk_shape(7951, 4000, 4)
    (3976, 4000)
    >>> chunk_shape(7951, 4000, 4, rows=1000)
    (1000, 4000)
    >>> chunk_shape(10, 2**25, 4)  # one row is 128 MiB: cut columns, 64 MiB each
    (1, 16777216)
    """
    for label, value in (("chunk size", chunk_bytes), ("chunk rows", rows), ("chunk cols", cols)):
        if value is not None and value < 1:
            raise ConfigError(f"{label} must be at least 1, got {value}")
    if cols is None:
        cols = n_cols if n_cols * itemsize <= chunk_bytes else \
            _balanced(n_cols, chunk_bytes // itemsize)
    cols = max(1, min(cols, n_cols))
    if rows is None:
        rows = _balanced(n_rows, chunk_bytes // (cols * itemsize))
    return max(1, min(rows, n_rows)), cols


def _open_2d(source: PathOrArray, role: str, options: dict[str, Any] | None) -> InputMatrix:
    src = open_matrix(source, role, options)
    if src.ndim != 2:
        raise InputError(f"{src.label(role)} must be a 2-D matrix, got shape {src.shape}")
    if 0 in src.shape:
        raise InputError(f"{src.label(role)} is empty: shape {src.shape}")
    return src


def _ground_truth(n_queries: int, n_gallery: int, queries_per_item: int | None,
                  gt_index: PathOrArray | None, wanted: bool | None = None
                  ) -> tuple[int | None, InputMatrix | None, np.ndarray | None]:
    """``(queries_per_item, gt source, gt vector)``: one of the first and the last two is
    set, or none of them for a store without a ground truth.

    The checks are :func:`qbscale.storage.stores.store.ground_truth`'s, run before any data
    is written, with the file named in their messages; ``wanted`` is
    :func:`qbscale.storage.stores.store.resolve_ground_truth`'s.
    """
    if gt_index is None and resolve_ground_truth(n_queries, n_gallery, queries_per_item,
                                                 wanted=wanted) is None:
        return None, None, None
    src = None if gt_index is None else open_matrix(gt_index, "gt_index")
    if src is None:
        ground_truth(n_queries, n_gallery, queries_per_item)
        return (int(queries_per_item) if queries_per_item is not None
                else n_queries // n_gallery), None, None
    return None, src, ground_truth(n_queries, n_gallery, queries_per_item, src.read(),
                                   src.label("gt_index"))


def _positives(positives: Any, n_queries: int, n_gallery: int,
               queries_per_item: int | None, gt_index: Any, ground_truth: bool | None) -> Any:
    """The :class:`~qbscale.engine.positives.Positives` of a pairs file, or None."""
    if positives is None:
        return None
    if queries_per_item is not None or gt_index is not None or ground_truth is False:
        raise ConfigError("give positives (--positives) or queries_per_item, gt_index, "
                          "no ground truth: one ground truth")
    from qbscale.storage.stores.positives import read_positives

    return read_positives(positives, n_queries, n_gallery)


def _read_mask(masks: PathOrArray | None, n_queries: int, n_gallery: int,
               qpi: int | None) -> tuple[InputMatrix | None, np.ndarray | None]:
    if masks is None:
        return None, None
    src = open_matrix(masks, "masks")
    return src, check_mask(src.read(), n_queries, mask_grouping(n_queries, n_gallery, qpi),
                           src.label(MASK_LABEL))


def _base_attrs(kind: str, qpi: int | None, targets: list[Target], codec: str,
                chunk_bytes: int, has_gt: bool = True,
                ids: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    from qbscale.storage.stores.ids import record

    entry = record(list(ids or ()))
    return {**({} if entry is None else {layout.IDS_RECORD: entry}),
        "version": __version__,
        "kind": kind,
        "queries_per_item": qpi,
        "ground_truth": has_gt,
        "codec": codec,
        "chunking": {"chunk_bytes": int(chunk_bytes),
                     **{t.name: list(t.chunks) for t in targets}},
    }


def ingest(out: str | os.PathLike[str], bank: PathOrArray, test: PathOrArray,
           masks: PathOrArray | None = None, *, queries_per_item: int | None = None,
           gt_index: PathOrArray | None = None, chunk_bytes: int = layout.DEFAULT_CHUNK_BYTES,
           chunk_rows: int | None = None, chunk_cols: int | None = None,
           dtype: str | None = None, codec: str = "none", overwrite: bool = False,
           progress: bool = True, storage_options: dict[str, Any] | None = None,
           ground_truth: bool | None = None, query_ids: IdSource | None = None,
           gallery_ids: IdSource | None = None, positives: Any = None,
           reverse_bank: PathOrArray | None = None) -> str:
    """Write a querybank and a test similarity matrix into one Zarr v3 store.

    Parameters
    ----------
    out : path or URL
        The store to create (``exp.zarr``, ``s3://bucket/exp.zarr``).
    bank, test : path or numpy.ndarray
        Querybank x gallery and test-query x gallery similarities: ``.pkl``
        (one array, loaded safely), ``.npy``, ``.npz`` or ``.npz:member``.
    masks : path or numpy.ndarray, optional
        0/1 per test query, shaped ``(n_items, queries_per_item)`` or flat;
        stored as bool ``query_mask``.
    queries_per_item : int, optional
        Query ``i`` belongs to gallery item ``i // queries_per_item``; by default
        ``n_queries // n_gallery`` when the queries are a multiple of the gallery.
    gt_index : path or numpy.ndarray, optional
        Ground-truth gallery index of every query, instead of ``queries_per_item``.
    chunk_bytes : int
        Target bytes per stored chunk (whole rows; columns are cut only when one
        row exceeds it).
    chunk_rows, chunk_cols : int, optional
        Explicit chunk shape, overriding ``chunk_bytes`` on that side.
    dtype : {"float16", "float32", "float64"}, optional
        Stored float type (any numpy spelling, e.g. ``"f4"``); by default each
        input's own.
    codec : {"none", "lz4", "zstd"}
        Chunk compression.
    overwrite : bool
        Replace an existing store (only once the new one is complete).
    progress : bool
        Show a progress bar on stderr.
    storage_options : dict, optional
        The fsspec options for a URL ``out``.
    ground_truth : bool, optional
        False: store no ground truth (deployment: nobody knows the right
        answers); True: require one.  By default (None) a test matrix whose
        queries are not a positive multiple of the gallery, with neither
        ``queries_per_item`` nor ``gt_index`` given, is stored without one.
        Either way the store's attribute ``ground_truth`` says which.
    query_ids, gallery_ids : path or array-like, optional
        One id per test query / gallery item (a text file, one id a line; a
        ``.npy`` of integers or strings; ``FILE.parquet:COLUMN``; or the ids),
        stored as the coordinate arrays ``query`` and ``gallery``
        (:mod:`qbscale.storage.stores.ids`): hits, qrels and
        :func:`qbscale.open_dataset` use them.
    positives : path, optional
        Several correct gallery items per query, as ``(query, item)`` pairs
        (:mod:`qbscale.storage.stores.positives`: TREC qrels, a two-column
        ``.tsv``, ``.parquet``, ``.npy`` pairs or a sparse ``.npz``), instead
        of ``queries_per_item`` or ``gt_index``.
    reverse_bank : path or numpy.ndarray, optional
        The querybank of the other direction (bank items x test queries, e.g.
        bank videos x test captions), for ``run(direction="v2t")``
        (:mod:`qbscale.storage.stores.directions`).

    Returns
    -------
    str
        The store written.

    Raises
    ------
    InputError
        Bad input: not 2-D, empty, mismatched gallery sizes, non-float values,
        NaN or inf, bad masks or ground truth, truncated or corrupt files.
    UnsafePickleError
        A pickle asking for more than a plain numpy array.
    StoreExistsError
        ``out`` exists and ``overwrite`` is False.
    ConfigError
        Unknown codec or dtype, chunk sizes below 1.

    Examples
    --------
    >>> ingest("exp.zarr", "sims_train_test.pkl", "sims_test.pkl")  # doctest: +SKIP
    'exp.zarr'
    """
    stored = check_options(codec, dtype)
    with staging(os.fspath(out), overwrite, storage_options,
                 inputs=(bank, test, masks, gt_index, query_ids, gallery_ids, positives,
                         reverse_bank)) as stage:
        roles = (("bank", bank), ("test", test)) + (
            (("v2t_bank", reverse_bank),) if reverse_bank is not None else ())
        srcs = {role: _open_2d(src, role, None) for role, src in roles}
        (n_bank, n_gallery), n_queries = srcs["bank"].shape, srcs["test"].shape[0]
        if srcs["test"].shape[1] != n_gallery:
            raise InputError(f"{srcs['bank'].label('bank')} has {n_gallery} gallery columns, "
                             f"{srcs['test'].label('test')} has {srcs['test'].shape[1]}")
        if "v2t_bank" in srcs and srcs["v2t_bank"].shape[1] != n_queries:
            raise InputError(f"{srcs['v2t_bank'].label('v2t_bank')} has "
                             f"{srcs['v2t_bank'].shape[1]} columns; expected one per test "
                             f"query ({n_queries}): bank items x test queries")
        pos = _positives(positives, n_queries, n_gallery, queries_per_item, gt_index,
                         ground_truth)
        qpi, gt_src, gt = (None, None, None) if pos is not None else _ground_truth(
            n_queries, n_gallery, queries_per_item, gt_index, ground_truth)
        mask_src, mask = _read_mask(masks, n_queries, n_gallery, qpi)
        ids = read_given(query_ids, gallery_ids, n_queries, n_gallery)
        dtypes = {role: stored_dtype(src, src.label(role), stored) for role, src in srcs.items()}
        itemsize = max(d.itemsize for d in dtypes.values())
        cols = chunk_shape(n_bank, n_gallery, itemsize, chunk_bytes, chunk_rows, chunk_cols)[1]
        targets = [Target(name, srcs[role], dtypes[role],
                          chunk_shape(srcs[role].shape[0], n_gallery, dtypes[role].itemsize,
                                      chunk_bytes, chunk_rows, cols))
                   for name, role in ((layout.BANK, "bank"), (layout.TEST, "test"))]
        if "v2t_bank" in srcs:
            src = srcs["v2t_bank"]
            targets.append(Target(layout.REVERSE_BANK, src, dtypes["v2t_bank"],
                                  chunk_shape(src.shape[0], n_queries, dtypes["v2t_bank"].itemsize,
                                              chunk_bytes, chunk_rows, None)))
        attrs = _base_attrs(layout.KIND_SIMS, qpi, targets, codec, chunk_bytes,
                            qpi is not None or gt is not None or pos is not None, ids)
        if "v2t_bank" in srcs:
            attrs[layout.REVERSE_BANK] = True
        inputs = {**srcs, "masks": mask_src, "gt_index": gt_src}
        from qbscale.storage.stores.positives import vectors

        write_store(stage, targets, {layout.QUERY_MASK: mask, layout.GT_INDEX: gt,
                                     **vectors(pos), **ids}, attrs, inputs, codec, progress)
    return stage.final


def ingest_embeddings(out: str | os.PathLike[str], bank_emb: PathOrArray, test_emb: PathOrArray,
                      gallery_emb: PathOrArray, *, masks: PathOrArray | None = None,
                      normalise: bool = False, queries_per_item: int | None = None,
                      gt_index: PathOrArray | None = None,
                      chunk_bytes: int | None = None,
                      chunk_rows: int | None = None, dtype: str | None = None,
                      codec: str = "none", overwrite: bool = False, progress: bool = True,
                      storage_options: dict[str, Any] | None = None,
                      input_storage_options: dict[str, Any] | None = None,
                      ground_truth: bool | None = None, query_ids: IdSource | None = None,
                      gallery_ids: IdSource | None = None) -> str:
    """Write querybank, test and gallery embeddings into one Zarr v3 store.

    Similarities are then computed block by block when the store is used
    (``bank_emb @ gallery_emb.T``); the store's ``similarity`` attribute is
    ``"cosine"`` when the rows were normalised here, else ``"dot"``.

    Parameters
    ----------
    out : path or URL
        The store to create.
    bank_emb, test_emb, gallery_emb : path, URL or numpy.ndarray
        ``(n, dim)`` embeddings: ``.npy``, ``.zarr`` arrays (or ``.npz``/``.pkl``).
    masks : str or numpy.ndarray, optional
        As for :func:`ingest`, with ``n_gallery`` the gallery embeddings' rows.
    normalise : bool
        Store rows scaled to unit L2 norm (zero rows are refused).
    queries_per_item : int, optional
        As for :func:`ingest`.
    gt_index : str or numpy.ndarray, optional
        As for :func:`ingest`.
    chunk_bytes : int, optional
        Target bytes per stored chunk, by default
        :data:`qbscale.storage.layout.EMBEDDING_CHUNK_BYTES` (4 MiB): small, so that a
        similarity block computed from the embeddings reads whole chunks.
    chunk_rows : int, optional
        Rows per stored chunk (chunks always span the full embedding dimension).
    dtype : {"float16", "float32", "float64"}, optional
        Stored float type, as for :func:`ingest`.
    codec : {"none", "lz4", "zstd"}
        Chunk compression.
    overwrite : bool
        Replace an existing store (only once the new one is complete).
    progress : bool
        Show a progress bar on stderr.
    storage_options : dict, optional
        The fsspec options for a URL ``out``.
    input_storage_options : dict, optional
        The fsspec options for Zarr URL inputs.
    ground_truth : bool, optional
        As for :func:`ingest`.
    query_ids, gallery_ids : path or array-like, optional
        As for :func:`ingest`.

    Returns
    -------
    str
        The store written.

    Raises
    ------
    InputError
        Not 2-D, empty, dimensions differ, non-float values, NaN or inf, zero
        rows with ``normalise``, bad masks or ground truth, unreadable files.
    StoreExistsError
        ``out`` exists and ``overwrite`` is False.
    """
    stored = check_options(codec, dtype)
    chunk_bytes = layout.EMBEDDING_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
    roles = ((layout.BANK_EMB, bank_emb), (layout.TEST_EMB, test_emb),
             (layout.GALLERY_EMB, gallery_emb))
    with staging(os.fspath(out), overwrite, storage_options,
                 inputs=(bank_emb, test_emb, gallery_emb, masks, gt_index, query_ids,
                         gallery_ids)) as stage:
        srcs = {role: _open_2d(src, role, input_storage_options) for role, src in roles}
        dim = srcs[layout.GALLERY_EMB].shape[1]
        for role, src in srcs.items():
            if src.shape[1] != dim:
                raise InputError(f"{src.label(role)} has dimension {src.shape[1]}, "
                                 f"{srcs[layout.GALLERY_EMB].label(layout.GALLERY_EMB)} has {dim}")
        n_queries, n_gallery = srcs[layout.TEST_EMB].shape[0], srcs[layout.GALLERY_EMB].shape[0]
        qpi, gt_src, gt = _ground_truth(n_queries, n_gallery, queries_per_item, gt_index,
                                        ground_truth)
        mask_src, mask = _read_mask(masks, n_queries, n_gallery, qpi)
        ids = read_given(query_ids, gallery_ids, n_queries, n_gallery)
        targets = []
        for role, src in srcs.items():
            dt = stored_dtype(src, src.label(role), stored)
            chunks = chunk_shape(src.shape[0], dim, dt.itemsize, chunk_bytes, chunk_rows, dim)
            targets.append(Target(role, src, dt, chunks,
                                  unit_rows(src.label(role)) if normalise else None))
        attrs = _base_attrs(layout.KIND_EMBEDDINGS, qpi, targets, codec, chunk_bytes,
                            qpi is not None or gt is not None, ids)
        attrs["similarity"] = "cosine" if normalise else "dot"
        inputs = {**srcs, "masks": mask_src, "gt_index": gt_src}
        write_store(stage, targets, {layout.QUERY_MASK: mask, layout.GT_INDEX: gt, **ids},
                    attrs, inputs, codec, progress)
    return stage.final
