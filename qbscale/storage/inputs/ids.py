"""Query and gallery ids: read from a file (or an array) and checked.

An id labels a test query or a gallery item in hits files, qrels and
:func:`qbscale.open_dataset`; a store keeps them as its ``query`` and
``gallery`` coordinate arrays (:mod:`qbscale.storage.stores.ids`).  Ids come
from

* a text file, one id a line (UTF-8; a final newline is optional);
* a ``.npy`` file of integers or strings (never a pickle);
* a column of a ``.parquet`` file: ``FILE.parquet:COLUMN``, or ``FILE.parquet``
  when it has one column (needs pyarrow);
* an array or a list.

Integer ids are kept as int64, any other as strings.  Every id is checked:
as many as the queries (gallery items), no two alike, none empty, and none
holding white space (a TREC line is split on it).

Examples
--------
>>> read_ids(["v1", "v2"], "gallery", 2)
array(['v1', 'v2'], dtype='<U2')
>>> read_ids(np.array([7, 3]), "query", 2)
array([7, 3])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from qbscale.errors import ConfigError, InputError

#: how to install pyarrow when a .parquet file of ids is read without it
PARQUET_HINT = "pip install pyarrow (or, in a qbscale clone, pip install '.[parquet]')"

IdSource = str | os.PathLike[str] | np.ndarray | list[Any] | tuple[Any, ...]


def _split_parquet(path: str) -> tuple[str, str | None]:
    """``("ids.parquet", "col")`` from ``"ids.parquet:col"``; other paths unchanged."""
    head, sep, column = path.rpartition(":")
    if sep and head.lower().endswith(".parquet") and not os.path.exists(path):
        return head, column
    return path, None


def _parquet(path: str, column: str | None, label: str) -> np.ndarray:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError(f"reading {label} needs pyarrow: {PARQUET_HINT}") from exc
    try:
        names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises its own types for a file that is no parquet
        raise InputError(f"{label}: not a parquet file ({str(exc).splitlines()[0]})") from exc
    if column is None:
        if len(names) != 1:
            raise InputError(f"{label} has {len(names)} columns ({', '.join(names)}): "
                             "name one as FILE.parquet:COLUMN")
        column = names[0]
    if column not in names:
        raise InputError(f"{label} has no column {column!r} (it has {', '.join(names)})")
    values = pq.read_table(path, columns=[column]).column(column)
    if values.null_count:
        raise InputError(f"{label}: column {column} holds {values.null_count} missing values")
    return np.asarray(values.to_numpy(zero_copy_only=False))


def _text(path: str, label: str) -> np.ndarray:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as exc:
        raise InputError(f"{label} is not a UTF-8 text file of ids, one a line "
                         f"(nor a .npy or .parquet file): byte {exc.start} cannot be "
                         "decoded") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    return np.asarray([line.removesuffix("\r") for line in lines], dtype=str)


def _load(source: str | os.PathLike[str]) -> tuple[np.ndarray, str]:
    """The raw values of an ids file and how messages name it."""
    from qbscale.storage.durability.paths import check_regular

    path, column = _split_parquet(os.fspath(source))
    label = f"ids file {path}"
    if not os.path.exists(path):
        raise InputError(f"{label}: no such file")
    check_regular(path)
    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"\x93NUMPY"):
        try:
            return np.load(path, allow_pickle=False), label
        except ValueError as exc:
            raise InputError(f"{label}: a .npy of integers or strings expected "
                             f"({str(exc).splitlines()[0]})") from exc
    if head.startswith(b"PAR1") or column is not None:
        return _parquet(path, column, label), label
    if Path(path).suffix.lower() in (".npy", ".npz", ".pkl", ".pickle", ".parquet"):
        raise InputError(f"{label}: not a {Path(path).suffix} file")
    return _text(path, label), label


def read_ids(source: IdSource, what: str, n: int) -> np.ndarray:
    """The ids of ``n`` queries (``what="query"``) or gallery items (``"gallery"``).

    Parameters
    ----------
    source : path or array-like
        A text file (one id a line), a ``.npy``, ``FILE.parquet[:COLUMN]``, or
        the ids themselves.
    what : str
        ``"query"`` or ``"gallery"``, for messages.
    n : int
        How many ids there must be.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int64 (integer ids) or unicode strings.

    Raises
    ------
    InputError
        Not 1-D, not ``n`` ids, a duplicate, an empty id, white space in an
        id, values that are neither integers nor strings.
    """
    if isinstance(source, str | os.PathLike):
        values, label = _load(source)
    else:
        values, label = np.asarray(source), f"{what} ids"
    return check_ids(values, what, n, label)


def check_ids(values: Any, what: str, n: int, label: str | None = None) -> np.ndarray:
    """``values`` as checked ids (see :func:`read_ids`); ``label`` names them in messages."""
    label = label or f"{what} ids"
    values = np.asarray(values)
    noun = "test queries" if what == "query" else "gallery items"
    if values.ndim != 1 or values.size != n:
        raise InputError(f"{label} has shape {values.shape}; expected ({n},): one id per "
                         f"{'test query' if what == 'query' else 'gallery item'} "
                         f"({n} {noun})")
    if values.dtype.kind == "b" or values.dtype.kind not in "iuUSO":
        raise InputError(f"{label} holds {values.dtype} values; expected integers or strings")
    if values.dtype.kind in "iu":
        if values.dtype.kind == "u" and values.size and values.max() > np.iinfo(np.int64).max:
            raise InputError(f"{label}: id {values.max()} is beyond int64")
        ids = values.astype(np.int64)
    else:
        if values.dtype.kind == "O" and not all(isinstance(v, str) for v in values.tolist()):
            raise InputError(f"{label} mixes strings with other values; expected integers "
                             "or strings")
        ids = values.astype(str)
        listed = ids.tolist()
        empty = next((i for i, v in enumerate(listed) if v == ""), None)
        if empty is not None:
            raise InputError(f"{label}: id {empty} is empty")
        spaced = next((i for i, v in enumerate(listed) if any(c.isspace() for c in v)), None)
        if spaced is not None:
            raise InputError(f"{label}: id {spaced} ({listed[spaced]!r}) holds white space, "
                             "which hits and qrels files cannot carry")
    unique, first, counts = np.unique(ids, return_index=True, return_counts=True)
    if unique.size != ids.size:
        dup = int(np.argmax(counts > 1))
        raise InputError(f"{label}: id {unique[dup].item()!r} appears {counts[dup]} times "
                         f"(first at {first[dup]}); ids must be unique")
    return ids
