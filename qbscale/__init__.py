"""qbscale: querybank normalisation (QB-Norm) for retrieval at any scale.

Heavy modules (dask, zarr, xarray) load on first use of the name that needs
them, so ``import qbscale`` is cheap; ``dir(qbscale)`` lists every name below.

Evaluating a store
------------------
ingest
    Write the similarity matrices (pickles, ``.npy``, ...) into a chunked store.
ingest_embeddings
    Write a store from query, querybank and gallery embeddings.
open_experiment
    Open a store for a run, checking that it is complete.
run
    Querybank-normalise a store and evaluate before and after.
plan, RunPlan
    The lazy graph of a run, computed later with ``RunPlan.execute``.
RunResult
    What a run returns: metrics before and after, top-k, the settings.
evaluate
    Metrics of any stored query x gallery matrix (no normalisation).
open_dataset
    A store as a labelled, lazy ``xarray.Dataset``.
open_result
    An array the last run saved in a store (ranks, scores, top-k).

Deploying
---------
Normaliser
    A normaliser fitted once on a querybank and a gallery, saved and loaded.
normalise
    Querybank-normalise test similarities with a normaliser fitted on a bank.
search
    The exact top-k of new queries under QB-Norm.

Submodules (``qbscale.retrieval``, ``qbscale.analysis``, ``qbscale.storage``,
``qbscale.errors``) hold the rest; the API reference documents each name.

Examples
--------
>>> import qbscale
>>> "run" in dir(qbscale)
True
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


def __dir__() -> list[str]:
    """The public API (loaded lazily) and the module's dunder attributes."""
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
