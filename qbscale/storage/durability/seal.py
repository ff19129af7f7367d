"""A digest of the attributes a store (or normaliser) was written with.

The chunk manifests bind every chunk to its place and the ``zarr.json``
copies bind the shapes; the settings in the root attributes
(``queries_per_item``, ``kind``, a normaliser's ``k`` or ``method``) are
bound by this digest, written beside them as ``attrs_sha256``::

    {"kind": "sims", "queries_per_item": 2, ..., "attrs_sha256": "9f2c..."}

An edited setting would otherwise give figures that look right (another
ground truth, another activation set).  Keys a later run legitimately
changes (:data:`MUTABLE`) are left out; stores written before the digest have
none and are not checked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

KEY = "attrs_sha256"
#: attributes set after the write: the commit flag, the published run, a gallery bank
MUTABLE = frozenset({"complete", "last_run", "gallery_bank", KEY})


def digest(attrs: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``attrs`` without the :data:`MUTABLE` keys.

    >>> digest({"k": 1, "complete": True}) == digest({"k": 1})
    True
    """
    fixed = {key: value for key, value in attrs.items() if key not in MUTABLE}
    text = json.dumps(fixed, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def sealed(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``attrs`` with their digest added."""
    return {**attrs, KEY: digest(attrs)}


def problem(attrs: Mapping[str, Any]) -> str | None:
    """What is wrong with sealed ``attrs`` (None: unchanged, or never sealed)."""
    if KEY not in attrs or attrs[KEY] == digest(attrs):
        return None
    return ("the settings in its zarr.json attributes were edited after it was written "
            f"(their {KEY} no longer matches): restore it or write it again")
