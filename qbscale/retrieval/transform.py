"""Normalised scores of test rows, in the kind of array given: numpy, dask, xarray.

Every block is scored by the engine's :meth:`~qbscale.engine.statistics.GalleryStatistics.transform`
(``scale * s - shift[j]`` on normalised rows, ``s`` elsewhere, float64).  A
dynamic method normalises a row when its raw top-1 item is in the activation
set, which needs the row's argmax over the whole gallery: for a dask array
chunked along the gallery it is computed first, lazily (``da.argmax``), and
handed to every block of the row.  Nothing here computes a dask array.

Input is checked before anything is scored (:mod:`qbscale.engine.checks`):
a non-empty 2-D array of floats, every value finite.  A dask array is
checked block by block as its blocks are computed, the task of a block with
NaN or inf raising with the value's row and column in the whole array.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from qbscale.engine import kernels
from qbscale.engine.checks import check_finite, check_not_masked, check_similarities

if TYPE_CHECKING:
    from qbscale.engine.statistics import GalleryStatistics


def _variants(norm: GalleryStatistics, scores: np.ndarray) -> np.ndarray:
    """``(n_values, rows, cols)`` scores, or ``(rows, cols)`` for a single value."""
    return scores[0] if len(norm.values) == 1 else scores


def _check(norm: GalleryStatistics, sims: Any, what: str) -> None:
    check_similarities(sims, what)
    if sims.shape[1] != sims.shape[1]:  # NaN: a dask array's unknown size
        from qbscale.errors import InputError

        raise InputError(f"{what} has an unknown number of gallery columns (a dask array "
                         "indexed by a lazy mask along its columns): call "
                         ".compute_chunk_sizes() on it first")
    norm.check_gallery(int(sims.shape[1]), what)


def transform_numpy(norm: GalleryStatistics, sims: Any, what: str = "the similarity matrix"
                    ) -> np.ndarray:
    """Normalised scores of a numpy block of whole rows."""
    check_not_masked(sims, what)
    sims = np.asarray(sims)
    _check(norm, sims, what)
    check_finite(sims, 0, what)
    return _variants(norm, norm.transform(sims))


def _finite(block: np.ndarray, what: str, block_info: Any = None) -> np.ndarray:
    """``block``, once checked finite (rows and columns named in the whole array)."""
    (r0, _), (c0, _) = block_info[0]["array-location"]
    check_finite(block, r0, what, c0)
    return block


def checked_dask(sims: Any, what: str = "the similarity matrix") -> Any:
    """``sims`` with every block checked finite by the task that computes it."""
    from dask.base import tokenize

    return sims.map_blocks(_finite, what=what, dtype=sims.dtype,
                           name="qbscale-finite-" + tokenize(sims, what))


def _activated(top: np.ndarray, activation: np.ndarray) -> np.ndarray:
    return activation[top]


def _block(block: np.ndarray, flags: np.ndarray, shift: np.ndarray, scales: np.ndarray,
           squeeze: bool) -> np.ndarray:
    """One dask block: ``shift`` holds the variants' shifts of the block's columns."""
    out = np.empty((len(scales), *block.shape))
    for b, scale in enumerate(scales):
        kernels.score_block(block, shift[b], float(scale), flags, out=out[b])
    return out[0] if squeeze else out


def transform_dask(norm: GalleryStatistics, sims: Any, what: str = "the similarity matrix") -> Any:
    """Normalised scores of a dask array, as a lazy dask array (nothing computes).

    Each task gets its block, the flags of its rows and the shifts of its
    columns only (the shift is a dask array chunked like the gallery), so a
    task's inputs stay small on a cluster whatever the gallery's size.
    """
    import dask.array as da
    from dask.base import tokenize

    _check(norm, sims, what)
    assert norm.shift is not None
    sims = checked_dask(sims, what)  # argmax included: a NaN would win it
    if norm.rows == "dynamic":
        flags = da.argmax(sims, axis=1).map_blocks(_activated, activation=norm.activation,
                                                   dtype=bool)
    else:
        flags = da.full(sims.shape[0], norm.rows == "all", dtype=bool, chunks=(sims.chunks[0],))
    shift = da.from_array(norm.shift, chunks=(len(norm.shift), sims.chunks[1]))
    name = "qbscale-normalise-" + tokenize(sims, norm.config, shift)
    squeeze = len(norm.values) == 1
    return da.blockwise(_block, "ij" if squeeze else "vij", sims, "ij", flags, "i", shift, "vj",
                        scales=norm.scales, squeeze=squeeze, name=name, dtype=np.float64,
                        concatenate=True)


#: dimension names of a gallery axis, and of an axis of queries (a matrix's rows)
GALLERY_DIMS = ("gallery", "item")
ROW_DIMS = ("query", "bank_query", "gallery_bank_item")


def gallery_last(sims: Any, what: str = "the similarity matrix") -> tuple[Any, bool]:
    """A 2-D :class:`xarray.DataArray` with its gallery axis last, found by name, and
    whether it was transposed for that.

    The gallery axis is the one named ``gallery`` (or ``item``), or else the one
    beside an axis of queries (``query``, ``bank_query``); xarray's default names
    (``dim_0``, ``dim_1``) are read as rows x gallery, as a numpy array is.  Other
    names are refused rather than guessed.

    Raises
    ------
    InputError
        Names that do not say which axis is the gallery.
    """
    from qbscale.errors import InputError

    dims = tuple(str(d) for d in sims.dims)
    if len(dims) != 2:
        return sims, False  # refused by check_similarities, naming the shape
    gallery = [d for d in dims if d in GALLERY_DIMS]
    rows = [d for d in dims if d in ROW_DIMS]
    if len(gallery) == 1 and len(rows) < 2:
        axis = gallery[0]
    elif len(rows) == 1 and not gallery:
        axis = dims[1 - dims.index(rows[0])]
    elif dims == ("dim_0", "dim_1"):
        return sims, False
    else:
        raise InputError(f"{what} has dims {dims}: name its gallery axis 'gallery' and the "
                         "other 'query' (rows x gallery), as qbscale.open_dataset does")
    if dims[1] == axis:
        return sims, False
    return sims.transpose(dims[1], dims[0]), True


def transform_xarray(norm: GalleryStatistics, sims: Any,
                     what: str = "the similarity matrix") -> Any:
    """A DataArray of normalised scores with ``sims``'s dims and coords (plus a
    leading axis named after the swept parameter when there are several values).

    The gallery axis is found by its name (:func:`gallery_last`): a matrix
    stored gallery x queries is normalised along its gallery, and given back in
    its own order."""
    import xarray as xr

    given = sims
    sims, flipped = gallery_last(sims, what)
    out = _transform_labelled(norm, sims, what)
    if flipped:
        lead = (norm.config.variant_name,) if len(norm.values) > 1 else ()
        out = out.transpose(*lead, *given.dims)
    assert isinstance(out, xr.DataArray)
    return out


def _transform_labelled(norm: GalleryStatistics, sims: Any, what: str) -> Any:
    import xarray as xr

    data = sims.data
    out = transform_dask(norm, data, what) if hasattr(data, "dask") else \
        transform_numpy(norm, data, what)
    attrs = {**sims.attrs, "normalised_by": norm.config.label}
    if len(norm.values) == 1:
        attrs[norm.config.variant_name] = norm.values[0]
        return xr.DataArray(out, dims=sims.dims, coords=sims.coords, name=sims.name,
                            attrs=attrs)
    name = norm.config.variant_name
    return xr.DataArray(out, dims=(name, *sims.dims),
                        coords={**sims.coords, name: list(norm.values)}, name=sims.name,
                        attrs=attrs)


def transform(norm: GalleryStatistics, sims: Any, what: str = "the similarity matrix") -> Any:
    """Normalise ``sims`` with ``norm``, in the kind of array given.

    Parameters
    ----------
    norm : GalleryStatistics
        A fitted normaliser.
    sims : array-like
        (rows, n_gallery) similarities: an :class:`xarray.DataArray`, a dask
        array or a numpy array.
    what : str, default "the similarity matrix"
        How messages name ``sims``.

    Returns
    -------
    numpy.ndarray, dask.array.Array or xarray.DataArray
        The normalised scores, in ``sims``'s kind.
    """
    if hasattr(sims, "dims") and hasattr(sims, "data"):
        return transform_xarray(norm, sims, what)
    if hasattr(sims, "dask") and hasattr(sims, "chunks"):
        return transform_dask(norm, sims, what)
    return transform_numpy(norm, sims, what)
