"""Refusals of bad input arrays, on plain numpy (and dask) metadata and blocks.

Every array of similarities a user hands over in memory (a bank, a test
matrix, rows to normalise or search) passes :func:`check_similarities`, and
every block of one is checked by :func:`check_finite` before it is used: a
single NaN would win a row's argmax (flipping its dynamic decision) and put
its hits out of order.  The errors name what is wrong with its value and
place: the dtype and shape, or the first NaN/inf by its row and column in the
whole matrix (not in the block being read).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qbscale.errors import InputError


def check_similarities(sims: Any, what: str = "the similarity matrix") -> None:
    """Refuse anything but a non-empty 2-D array (numpy or dask) of real floats.

    Integers, bool, complex, object and string arrays are refused, as ingest
    refuses them (cast integer scores with ``.astype(np.float32)``).

    >>> check_similarities(np.zeros((3, 4), complex))
    Traceback (most recent call last):
    ...
    qbscale.errors.InputError: the similarity matrix must be a non-empty 2-D array of floats; \
got complex128 of shape (3, 4)
    """
    if not hasattr(sims, "dtype") or not hasattr(sims, "shape"):
        raise InputError(f"{what} must be a non-empty 2-D array of floats; got a "
                         f"{type(sims).__name__}")
    check_not_masked(sims, what)
    # a dask array's unknown sizes (NaN, after boolean indexing) are taken as non-empty
    dtype = np.dtype(sims.dtype)
    shape = tuple(int(n) if n == n else n for n in sims.shape)
    if dtype.kind != "f" or len(shape) != 2 or 0 in shape:
        raise InputError(f"{what} must be a non-empty 2-D array of floats; "
                         f"got {dtype} of shape {shape}")


def check_not_masked(array: Any, what: str) -> None:
    """Refuse a :class:`numpy.ma.MaskedArray`: its masked entries would be read as the
    values under the mask, a silent wrong answer.

    >>> check_not_masked(np.ma.masked_array([[1.0, 2.0]], [[0, 1]]), "bank")
    Traceback (most recent call last):
    ...
    qbscale.errors.InputError: bank is a masked array (1 of 2 entries masked): fill the \
masked entries first (array.filled(value)); qbscale would read the values under the mask
    """
    if isinstance(array, np.ma.MaskedArray):
        masked = int(np.count_nonzero(np.ma.getmaskarray(array)))
        raise InputError(f"{what} is a masked array ({masked} of {array.size} entries masked): "
                         "fill the masked entries first (array.filled(value)); qbscale would "
                         "read the values under the mask")


def check_finite(block: np.ndarray, first_row: int, what: str, first_col: int = 0) -> None:
    """Refuse NaN or inf in a 2-D block, naming the first bad value and where it is
    in the whole matrix (the block starts at row ``first_row``, column ``first_col``).

    >>> check_finite(np.array([[1.0, 2.0], [np.inf, np.nan]]), 40, "the queries")
    Traceback (most recent call last):
    ...
    qbscale.errors.InputError: non-finite value inf at row 41, column 0 of the queries
    """
    if block.dtype.kind not in "fc" or block.size == 0:
        return  # integers are finite
    # min and max are NaN or inf exactly when some value is (no mask allocated)
    if np.isfinite(block.min()) and np.isfinite(block.max()):
        return
    finite = np.isfinite(block)
    row, col = (int(x) for x in np.unravel_index(int(np.argmin(finite)), finite.shape))
    raise InputError(f"non-finite value {block[row, col]} at row {first_row + row}, "
                     f"column {first_col + col} of {what}")
