"""What a faiss index of an updatable normaliser keeps after faiss's own bytes.

faiss reads its index and ignores what follows, so the file is::

    <faiss index> b"\\n" <json> <its length, 8 bytes little-endian> QBSCFAI1

the JSON holding ``centre``, ``weight``, ``bank_rows``, ``factory`` and
``settings`` (method, values, parameters).

(:mod:`qbscale.retrieval.faiss_follow` uses it to follow updates).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from qbscale.errors import InputError

MAGIC = b"QBSCFAI1"


def trailer(centring: tuple[np.ndarray, np.ndarray], bank_rows: int | None,
            factory: str | None, settings: str = "") -> bytes:
    """The bytes written after an index of an updatable normaliser."""
    text = json.dumps({"centre": [float(c) for c in centring[0]],
                       "weight": [float(w) for w in centring[1]],
                       "bank_rows": bank_rows, "factory": factory,
                       "settings": settings}).encode()
    return b"\n" + text + len(text).to_bytes(8, "little") + MAGIC


def settings(norm: Any) -> str:
    """What an index's shifts depend on besides the bank: method, values, params."""
    config = norm.config
    return json.dumps([config.method, list(config.values), config.param_dict])


def read_trailer(path: str, n_values: int
                 ) -> tuple[tuple[np.ndarray, np.ndarray] | None, int | None, str | None]:
    """``(centring, bank_rows, factory)`` of an index file; ``(None, None, None)``
    for an index without a trailer (built for a normaliser that is not updatable)."""
    meta = trailer_meta(path)
    if meta is None:
        return None, None, None
    try:
        centre = np.asarray(meta["centre"], np.float64)
        weight = np.asarray(meta["weight"], np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{path}: its qbscale trailer is damaged ({exc})") from exc
    if centre.shape != (n_values,) or weight.shape != (n_values,):
        raise InputError(f"{path} stores {centre.size} shift coordinates; the normaliser "
                         f"has {n_values} values")
    rows = meta.get("bank_rows")
    return (centre, weight), None if rows is None else int(rows), meta.get("factory")


def trailer_meta(path: str) -> dict[str, Any] | None:
    """The trailer's JSON, or None when the file has none."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 16))
        tail = fh.read(16)
        if len(tail) < 16 or tail[8:] != MAGIC:
            return None
        length = int.from_bytes(tail[:8], "little")
        if length > size - 16:
            raise InputError(f"{path}: its qbscale trailer is damaged (length {length})")
        fh.seek(size - 16 - length)
        try:
            meta = json.loads(fh.read(length))
        except ValueError as exc:
            raise InputError(f"{path}: its qbscale trailer is damaged ({exc})") from exc
    if not isinstance(meta, dict):
        raise InputError(f"{path}: its qbscale trailer is damaged")
    return meta


def check_ids(index: Any, path: str) -> None:
    """Refuse an index whose item ids are not the normaliser's."""
    ids = index.ids
    record = getattr(index.norm, "record", None)
    if record is None:
        raise InputError(f"{path} follows an updatable normaliser; this normaliser is not "
                         "one")
    if not np.array_equal(np.sort(ids), record.item_ids):
        raise InputError(f"{path} holds other gallery items than the normaliser "
                         f"({np.setdiff1d(ids, record.item_ids).size} ids it does not have, "
                         f"{np.setdiff1d(record.item_ids, ids).size} missing): follow its "
                         "updates with `qbscale index NORM --follow OLD.faiss`")
