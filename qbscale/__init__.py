"""qbscale: querybank normalisation (QB-Norm) for retrieval at any scale.

Heavy modules (dask, zarr, xarray) load on first use of the function that
needs them, so ``import qbscale`` is cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "run": "qbscale.api",
    "evaluate": "qbscale.api",
    "ingest": "qbscale.storage.stores.ingest",
    "ingest_embeddings": "qbscale.storage.stores.ingest",
    "open_experiment": "qbscale.storage.stores.store",
    "open_dataset": "qbscale.storage.stores.dataset",
    "open_result": "qbscale.storage.stores.results",
    "RunResult": "qbscale.types",
    "plan": "qbscale.api",
    "RunPlan": "qbscale.api",
    "Normaliser": "qbscale.retrieval.normaliser",
    "normalise": "qbscale.retrieval.normaliser",
    "search": "qbscale.retrieval.search",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qbscale' has no attribute {name!r}")
