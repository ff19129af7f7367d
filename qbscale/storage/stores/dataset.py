"""A store as a labelled :class:`xarray.Dataset` (lazy, dask-backed)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from qbscale.storage import layout
from qbscale.storage.durability.integrity import verified_store
from qbscale.storage.stores.results import published_prefix
from qbscale.storage.stores.store import open_experiment

if TYPE_CHECKING:
    import xarray as xr


def open_dataset(store: str | os.PathLike[str],
                 storage_options: dict[str, Any] | None = None) -> xr.Dataset:
    """Open a qbscale store as a labelled, lazy :class:`xarray.Dataset`.

    Every stored array appears under its name with its named dimensions:
    ``bank`` (bank_query, gallery) and ``test`` (query, gallery) for a
    similarity store, ``bank_emb``/``test_emb``/``gallery_emb`` (with a
    ``dim`` axis) for an embeddings store, ``query_mask``, and the saved
    results of the last run (``scores``, ``ranks``, ``topk_index``, ...).
    Added: ``gt`` (query,), the ground-truth gallery item of every test query
    when the store has one; coordinates on ``bank_query``, ``query`` and
    ``gallery``: the store's ids where it has them (``qbscale ingest
    --query-ids/--gallery-ids``, ``qbscale ids``), else 0-based integers; and
    the swept parameter's values on the results' variant axis.  Nothing is
    read until you compute (the ids are read when the dataset is opened).

    Parameters
    ----------
    store : str or os.PathLike
        A store path or URL.
    storage_options : dict, optional
        The fsspec options of a URL.

    Returns
    -------
    xarray.Dataset
        The store's arrays, backed by dask.

    Examples
    --------
    >>> from qbscale import open_dataset
    >>> ds = open_dataset("exp.zarr")  # doctest: +SKIP
    >>> int(ds.test.isel(query=0).argmax("gallery"))  # doctest: +SKIP
    """
    import xarray as xr

    experiment = open_experiment(store, storage_options)  # checks the store is complete
    # every chunk read verified: a missing one is an error, not its fill value
    verified = verified_store(layout.local_path(os.fspath(store)), storage_options)
    ds = xr.open_zarr(verified, zarr_format=3, chunks={})
    prefix = published_prefix(experiment.attrs)
    if prefix is not None:  # the last run's results, through its pointer
        ds = ds.merge(xr.open_zarr(verified, group=prefix, zarr_format=3, chunks={},
                                   consolidated=False))
    from qbscale.storage.stores.ids import ARRAYS, experiment_ids

    # id arrays the store does not record (an interrupted `qbscale ids`) are not its ids
    ds = ds.drop_vars([name for name in ARRAYS if name in ds.variables])
    ids = dict(zip(ARRAYS, experiment_ids(experiment), strict=True))
    coords = {dim: np.arange(ds.sizes[dim]) if ids.get(dim) is None else ids[dim]
              for dim in ("bank_query", "query", "gallery") if dim in ds.sizes}
    last = (experiment.attrs or {}).get("last_run") or {}
    for dim in set(ds.sizes) - set(coords) - {"dim", "topk"}:
        values = last.get("values") or []
        if len(values) == ds.sizes[dim]:
            coords[dim] = np.asarray(values, dtype=np.float64)
    ds = ds.assign_coords(coords)
    gt = getattr(experiment, "gt", None)
    if gt is not None:
        ds["gt"] = xr.DataArray(np.asarray(gt), dims=layout.DIMS[layout.GT_INDEX])
    ds.attrs = {"store": os.fspath(store), **dict(experiment.attrs or {})}
    return ds
