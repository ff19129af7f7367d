"""Names and attributes of a qbscale experiment store (one Zarr v3 group).

A store holds, for one experiment::

    bank        (bank_query, gallery)  querybank x gallery similarities
    test        (query, gallery)       test queries x gallery similarities
    query_mask  (query,)               bool, optional: False drops a query
    gt_index    (query,)               int64, optional: ground-truth gallery
                                       index of each query (else grouped:
                                       query i -> i // queries_per_item)
    query       (query,)               optional: the test queries' ids (int64
                                       or strings), xarray's coordinate
    gallery     (gallery,)             optional: the gallery items' ids

or, for an embeddings experiment (similarities computed on the fly)::

    bank_emb    (bank_query, dim)
    test_emb    (query, dim)
    gallery_emb (gallery, dim)

The group attribute ``qbscale`` is a dict with at least ``version``,
``kind`` ("sims" or "embeddings"), ``queries_per_item`` (int or None),
``ground_truth`` (False for a store without one: new queries whose right
answers nobody knows; absent in older stores, which always have one),
``sources`` (per input: file name, sha256, dtype, shape), ``ids`` (present
when the store has ids: the arrays and a fresh ``id`` per write; an id array
it does not list is ignored, an interrupted write) and ``complete``
(True only once every array is fully written).  Readers refuse a store whose
``complete`` flag is missing: an interrupted ingest never looks finished.

Every array qbscale publishes has, beside its ``zarr.json``, a chunk manifest
``<array>/qbscale_chunks.json`` (:mod:`qbscale.storage.durability.manifest`): the CRC-32C
and size of each of its chunks by key, and its shape, chunks and dtype.
"""

from __future__ import annotations

from typing import Any

ATTR = "qbscale"

BANK = "bank"
TEST = "test"
QUERY_MASK = "query_mask"
GT_INDEX = "gt_index"
#: the ids of the test queries and of the gallery items (coordinates of those dims)
QUERY_IDS = "query"
GALLERY_IDS = "gallery"
#: the key of the ``qbscale`` attribute recording the id arrays written
IDS_RECORD = "ids"
#: the id arrays, in the order of their dimensions (queries, gallery)
ID_ARRAYS = (QUERY_IDS, GALLERY_IDS)


def recorded_ids(attrs: dict[str, Any] | None) -> list[str]:
    """The id arrays a store's attributes record (``[]`` for none): an id array
    not recorded is no part of the store (its write was interrupted).

    >>> recorded_ids({"ids": {"arrays": ["gallery"], "id": "x"}})
    ['gallery']
    """
    entry = (attrs or {}).get(IDS_RECORD)
    arrays = entry.get("arrays") if isinstance(entry, dict) else None
    return [n for n in ID_ARRAYS if isinstance(arrays, list) and n in arrays]

BANK_EMB = "bank_emb"
TEST_EMB = "test_emb"
GALLERY_EMB = "gallery_emb"

#: a gallery bank (for ``dual-is``), see :mod:`qbscale.storage.stores.gallery_bank`
GALLERY_BANK = "gallery_bank"
GALLERY_BANK_EMB = "gallery_bank_emb"
#: the key of the ``qbscale`` attribute recording a finished gallery bank
GALLERY_BANK_RECORD = "gallery_bank"

#: a querybank for the other direction (bank items x test queries, e.g. bank
#: videos x test captions), see :mod:`qbscale.storage.stores.directions`
REVERSE_BANK = "v2t_bank"
#: several positives per query, compressed rows (:mod:`qbscale.storage.stores.positives`)
POSITIVES_INDPTR = "positives_indptr"
POSITIVES_INDICES = "positives_indices"

DIMS = {
    BANK: ("bank_query", "gallery"),
    TEST: ("query", "gallery"),
    QUERY_MASK: ("query",),
    GT_INDEX: ("query",),
    QUERY_IDS: ("query",),
    GALLERY_IDS: ("gallery",),
    BANK_EMB: ("bank_query", "dim"),
    TEST_EMB: ("query", "dim"),
    GALLERY_EMB: ("gallery", "dim"),
    GALLERY_BANK: ("gallery_bank_item", "gallery"),
    GALLERY_BANK_EMB: ("gallery_bank_item", "dim"),
    REVERSE_BANK: ("v2t_bank_item", "query"),
    POSITIVES_INDPTR: ("query_edge",),
    POSITIVES_INDICES: ("positive",),
}

KIND_SIMS = "sims"
KIND_EMBEDDINGS = "embeddings"
#: the kinds of store, as ``qbscale synth --kind`` offers them
KINDS = (KIND_SIMS, KIND_EMBEDDINGS)

#: stored codecs: ``none`` reads fastest on local disk (see benchmarks/bench_codecs.py)
CODECS = ("none", "lz4", "zstd")
#: float types a store may hold
DTYPES = ("float16", "float32", "float64")

#: default target size of one stored chunk
DEFAULT_CHUNK_BYTES = 64 * 2**20
#: default stored chunk of embeddings: small, so a similarity block reads whole chunks
EMBEDDING_CHUNK_BYTES = 4 * 2**20


def is_url(path: str) -> bool:
    """True for a fsspec URL of remote or in-memory storage (``s3://b/exp.zarr``,
    ``memory://x``); False for a local path and for a ``file://`` URL.

    The one test of "is this path remote" used throughout qbscale: a
    ``file://`` URL is a local path everywhere (staging and atomic rename on
    write, direct chunk reads, file hashes, disk usage).

    >>> is_url("s3://bucket/exp.zarr"), is_url("file:///tmp/exp.zarr"), is_url("exp.zarr")
    (True, False, False)
    """
    return "://" in path and not path.startswith("file://")


def local_path(path: str) -> str:
    """A local path without its ``file://`` prefix (other paths unchanged).

    >>> local_path("file:///tmp/exp.zarr")
    '/tmp/exp.zarr'
    """
    return path.removeprefix("file://")
