"""What a fitted normaliser remembers of its inputs, to refuse mismatched use.

A *fingerprint* is a small JSON-ready dict::

    {"n_gallery": 4000,                       # always
     "gallery_sha256": "3f2a...",             # fitted from gallery embeddings
     "bank_checksum": "sha256:9c1e..."}       # see below

``gallery_sha256`` is :func:`checksum` of the gallery embeddings: the
SHA-256 of their shape and of their values as little-endian float32, row
block by row block (float32 is what similarities are computed in, so two
containers of the same embeddings agree whatever their dtype or chunks).

``bank_checksum`` says which bank was read, with its kind as a prefix:
``sha256:`` the values of an in-memory bank (as :func:`checksum`),
``file-sha256:`` the file a store's bank was ingested from (recorded at
ingest, so fitting reads nothing more), ``dask:`` the token of a dask
array's graph (hashing its values would read it twice), or None when
nothing identifies it (a store ingested from an in-memory array).

Examples
--------
>>> fp = {"n_gallery": 3}
>>> check(fp, {"n_gallery": 4}, "the test matrix")
Traceback (most recent call last):
...
qbscale.errors.InputError: the test matrix has 4 gallery items, the normaliser was fitted on 3
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from qbscale.errors import InputError

#: rows hashed at a time (bounded memory for big in-memory arrays)
HASH_ROWS_BYTES = 2**26


def _blocks(array: Any) -> Iterable[np.ndarray]:
    """Row blocks of a numpy, dask or xarray array, as numpy arrays."""
    data = getattr(array, "data", array) if hasattr(array, "dims") else array
    if hasattr(data, "dask"):
        for i in range(data.numblocks[0]):
            yield np.asarray(data.blocks[i].compute(scheduler="synchronous"))
        return
    data = np.asarray(data)
    step = max(1, HASH_ROWS_BYTES // max(1, data[:1].size * 4))
    for r0 in range(0, len(data), step):
        yield data[r0:r0 + step]


def checksum(array: Any) -> str:
    """SHA-256 of ``array``'s shape and float32 little-endian values (hex).

    Examples
    --------
    >>> a = np.arange(6.0).reshape(3, 2)
    >>> checksum(a) == checksum(a.astype(np.float32))
    True
    """
    digest = hashlib.sha256(repr(tuple(int(n) for n in array.shape)).encode())
    for block in _blocks(array):
        digest.update(np.ascontiguousarray(block, dtype="<f4").tobytes())
    return digest.hexdigest()


def bank_checksum(bank: Any) -> str:
    """``bank_checksum`` of an in-memory or dask bank (see the module docs)."""
    data = getattr(bank, "data", bank) if hasattr(bank, "dims") else bank
    if hasattr(data, "dask"):
        from dask.base import tokenize

        return f"dask:{tokenize(data)}"
    return f"sha256:{checksum(data)}"


def check(fitted: Mapping[str, Any], given: Mapping[str, Any], what: str) -> None:
    """A clear :class:`InputError` when ``given`` differs from the ``fitted`` fingerprint.

    Sizes are compared first; a gallery checksum only when both sides have one.
    """
    n_fit, n_given = fitted.get("n_gallery"), given.get("n_gallery")
    if n_fit is not None and n_given is not None and int(n_fit) != int(n_given):
        raise InputError(f"{what} has {n_given} gallery items, the normaliser was fitted "
                         f"on {n_fit}")
    a, b = fitted.get("gallery_sha256"), given.get("gallery_sha256")
    if a and b and a != b:
        raise InputError(f"{what} is another gallery than the normaliser was fitted on "
                         f"(both have {n_fit} items; gallery checksum {b[:12]}... differs "
                         f"from the fitted {a[:12]}...)")
