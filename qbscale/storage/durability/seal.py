"""The seal of a store (or normaliser): a digest of its attributes, mandatory.

The chunk manifests bind every chunk to its place and the ``zarr.json``
copies bind the shapes; everything else a store says about itself is in the
root attributes: its settings (``queries_per_item``, ``kind``, a
normaliser's ``k`` or ``method``), its identity (``store_id``, fresh per
write), the SHA-256 of every array's chunk manifest (``manifests``), and a
run's published results (``last_run``: prefix, metrics, swept values).  All
of them are bound by one digest, written beside them as ``attrs_sha256``::

    {"kind": "sims", "queries_per_item": 2, "store_id": "5be1...",
     "manifests": {"bank": "0c4e...", "test": "77aa...", ...}, ...,
     "attrs_sha256": "9f2c..."}

Whoever changes the attributes (a run publishing its results, a gallery bank
being added) seals them again in the same write.  An edited setting, metric
or label, a manifest that is not the one sealed (edited, or copied in from
another store with its array), and a store with no seal at all (written by an
older qbscale, or with its seal deleted) are refused: they would otherwise
give figures that look right.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

KEY = "attrs_sha256"
#: the key of the store's identity (fresh per ingest, fit or write)
ID = "store_id"
#: the key of ``{array path: SHA-256 of its chunk manifest file}``
MANIFESTS = "manifests"
#: attributes the digest leaves out: the digest itself
MUTABLE = frozenset({KEY})
#: how a store (or normaliser) that is not sealed is fixed
FIX = {"store": "ingest it again", "normaliser": "fit it again"}


def digest(attrs: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``attrs`` without :data:`KEY`.

    >>> digest({"k": 1, KEY: "x"}) == digest({"k": 1})
    True
    """
    fixed = {key: value for key, value in attrs.items() if key not in MUTABLE}
    text = json.dumps(fixed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _plain(value: Any) -> Any:
    """A JSON value for a numpy scalar or array (else its text)."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


def sealed(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``attrs`` as JSON stores them (numpy scalars as numbers, tuples as lists),
    with their digest added (a previous one replaced): what is written is what
    was digested.

    >>> import numpy as np
    >>> sealed({"n": np.int64(3)})["n"], KEY in sealed({"n": 3})
    (3, True)
    """
    fixed = json.loads(json.dumps({key: value for key, value in attrs.items() if key != KEY},
                                  default=_plain))
    return {**fixed, KEY: digest(fixed)}


def unsealed(attrs: Mapping[str, Any]) -> bool:
    """True when ``attrs`` carry no seal, store identity or manifest digests."""
    return (KEY not in attrs or not isinstance(attrs.get(ID), str) or not attrs.get(ID)
            or not isinstance(attrs.get(MANIFESTS), dict))


def problem(attrs: Mapping[str, Any]) -> str | None:
    """What is wrong with the seal of ``attrs`` (None: intact), as the end of a
    sentence starting with the store's name."""
    if unsealed(attrs):
        return "has no seal: written by an older qbscale or edited"
    if attrs[KEY] != digest(attrs):
        return (f"has attributes edited after it was written (its {KEY} no longer "
                "matches its settings, results or manifests)")
    return None


def refusal(url: str, attrs: Mapping[str, Any], kind: str = "store") -> str | None:
    """The one-line refusal of a store (``kind="normaliser"``: a normaliser) at ``url``
    whose seal is missing or broken (None: intact).

    >>> refusal("exp.zarr", {"k": 1})
    'exp.zarr has no seal: written by an older qbscale or edited; ingest it again'
    """
    why = problem(attrs)
    if why is None:
        return None
    fix = FIX[kind] if why.startswith("has no seal") else f"restore it or {FIX[kind]}"
    name = url if kind == "store" else f"the normaliser {url}"
    return f"{name} {why}; {fix}"
