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
    "ingest": "qbscale.storage.ingest",
    "ingest_embeddings": "qbscale.storage.ingest",
    "open_experiment": "qbscale.storage.store",
    "open_dataset": "qbscale.storage.dataset",
    "open_result": "qbscale.storage.results",
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
