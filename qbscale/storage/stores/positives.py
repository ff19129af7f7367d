"""Several positives per query: read from files, stored in and read from a store.

A ground truth with several correct gallery items per query
(:class:`~qbscale.engine.positives.Positives`) is given at ingest as
``(query, item)`` pairs of row and column numbers (0-based), in any of:

* a TREC qrels file (``.qrels``, ``.trec``: ``query 0 item relevance`` per
  line; relevance above 0 is a positive);
* a two-column text file (``.tsv``, ``.txt``, ``.csv``: ``query item`` per
  line, tab, comma or space separated; a first line that is not two numbers
  is a header);
* a ``.parquet`` file with two integer columns (``query``, ``item``, or the
  first two);
* a ``.npy`` of shape ``(n_pairs, 2)``, or a ``.npz`` holding a sparse
  ``(n_queries, n_gallery)`` matrix as ``scipy.sparse.save_npz`` writes one
  (CSR, CSC or COO; a nonzero entry is a positive), or arrays ``query`` and
  ``item``.

The store keeps them as two int64 vectors, ``positives_indptr`` and
``positives_indices`` (compressed rows).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from qbscale.engine.positives import Positives
from qbscale.errors import ConfigError, InputError
from qbscale.storage import layout

TEXT = (".tsv", ".txt", ".csv")
QRELS = (".qrels", ".trec")


def read_pairs(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(queries, items)`` of a pairs file (see the module for the formats)."""
    name = os.fspath(path)
    suffix = os.path.splitext(name)[1].lower()
    if not os.path.isfile(name):
        raise InputError(f"positives file {name}: no such file")
    try:
        if suffix in QRELS:
            return _qrels(name)
        if suffix in TEXT:
            return _text(name)
        if suffix == ".parquet":
            return _parquet(name)
        if suffix == ".npy":
            pairs = np.load(name, allow_pickle=False)
            if pairs.ndim != 2 or pairs.shape[1] != 2:
                raise InputError(f"positives file {name} has shape {pairs.shape}; expected "
                                 "(n_pairs, 2) of (query, item)")
            return pairs[:, 0], pairs[:, 1]
        if suffix == ".npz":
            return _npz(name)
    except (ValueError, OSError, KeyError) as exc:
        raise InputError(f"positives file {name} cannot be read: {exc}") from exc
    raise InputError(f"positives file {name}: unknown format {suffix or '(no suffix)'}; "
                     f"give {', '.join((*QRELS, *TEXT, '.parquet', '.npy', '.npz'))}")


def _integers(name: str, rows: list[list[str]], first_line: int) -> np.ndarray:
    try:
        return np.array([[int(v) for v in row] for row in rows], np.int64).reshape(-1, 2)
    except ValueError:
        for n, row in enumerate(rows):
            try:
                [int(v) for v in row]
            except ValueError:
                raise InputError(f"positives file {name}, line {first_line + n}: "
                                 f"{' '.join(row)!r} is not two row numbers") from None
        raise


def _text(name: str) -> tuple[np.ndarray, np.ndarray]:
    rows: list[list[str]] = []
    start = 1
    with open(name, encoding="utf-8") as fp:
        for n, line in enumerate(fp, 1):
            parts = line.replace(",", " ").split()
            if not parts:
                continue
            if len(parts) != 2:
                raise InputError(f"positives file {name}, line {n}: {len(parts)} fields; "
                                 "expected query and item")
            if not rows and n == 1 and not all(p.lstrip("-").isdigit() for p in parts):
                start = 2  # a header
                continue
            rows.append(parts)
    pairs = _integers(name, rows, start)
    return pairs[:, 0], pairs[:, 1]


def _qrels(name: str) -> tuple[np.ndarray, np.ndarray]:
    rows: list[list[str]] = []
    with open(name, encoding="utf-8") as fp:
        for n, line in enumerate(fp, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 4:
                raise InputError(f"qrels file {name}, line {n}: {len(parts)} fields; expected "
                                 "'query iteration item relevance'")
            try:
                relevant = float(parts[3]) > 0
            except ValueError:
                raise InputError(f"qrels file {name}, line {n}: relevance {parts[3]!r} is "
                                 "not a number") from None
            if relevant:
                rows.append([parts[0], parts[2]])
    pairs = _integers(name, rows, 1)
    return pairs[:, 0], pairs[:, 1]


def _parquet(name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError("reading .parquet positives needs pyarrow: pip install pyarrow "
                          "(or, in a qbscale clone, pip install '.[parquet]')") from exc
    table = pq.read_table(name)
    names = table.column_names
    cols = ["query", "item"] if {"query", "item"} <= set(names) else names[:2]
    if len(cols) < 2:
        raise InputError(f"positives file {name} has {len(names)} column; expected query "
                         "and item")
    return tuple(np.asarray(table.column(c).to_numpy()) for c in cols)  # type: ignore[return-value]


def _npz(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(name, allow_pickle=False) as npz:
        keys = set(npz.files)
        if {"query", "item"} <= keys:
            return npz["query"], npz["item"]
        if "format" not in keys or "shape" not in keys:
            raise InputError(f"positives file {name} holds {sorted(keys)}; expected a sparse "
                             "matrix (scipy.sparse.save_npz) or arrays 'query' and 'item'")
        kind = npz["format"].item()
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        data = npz["data"]
        if kind in ("csr", "csc"):
            indptr, indices = npz["indptr"], npz["indices"]
            outer = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
            q, g = (outer, indices) if kind == "csr" else (indices, outer)
        elif kind == "coo":
            q, g = npz["row"], npz["col"]
        else:
            raise InputError(f"positives file {name}: sparse format {kind!r}; expected csr, "
                             "csc or coo")
        keep = data != 0
        return np.asarray(q)[keep], np.asarray(g)[keep]


def read_positives(path: str | os.PathLike[str] | Positives, n_queries: int,
                   n_gallery: int) -> Positives:
    """The :class:`Positives` of a pairs file (checked against the matrix's shape)."""
    if isinstance(path, Positives):
        if (path.n_queries, path.n_gallery) != (n_queries, n_gallery):
            raise InputError(f"positives are of {path.n_queries} queries x {path.n_gallery} "
                             f"items; the test matrix is {n_queries} x {n_gallery}")
        return path
    queries, items = read_pairs(path)
    pos = Positives.from_pairs(queries, items, n_queries, n_gallery,
                               f"positives file {os.fspath(path)}")
    if not pos.indices.size:
        raise InputError(f"positives file {os.fspath(path)} holds no positive")
    return pos


def vectors(pos: Positives | None) -> dict[str, np.ndarray | None]:
    """The store's vectors of ``pos`` (None: none)."""
    return {layout.POSITIVES_INDPTR: None if pos is None else pos.indptr,
            layout.POSITIVES_INDICES: None if pos is None else pos.indices}


def stored(names: set[str], read: Any, n_gallery: int) -> Positives | None:
    """The positives of a store holding the arrays ``names`` (``read(name)`` reads one)."""
    if layout.POSITIVES_INDPTR not in names:
        return None
    indptr = np.asarray(read(layout.POSITIVES_INDPTR), np.int64)
    indices = np.asarray(read(layout.POSITIVES_INDICES), np.int64)
    if len(indptr) < 1 or indptr[-1] != len(indices) or np.any(np.diff(indptr) < 0) \
            or np.any((indices < 0) | (indices >= n_gallery)):
        raise InputError("the store's positives are inconsistent (positives_indptr, "
                         "positives_indices): ingest it again")
    return Positives(indptr, indices, n_gallery)
