"""Telling non-finite stored data from an overflow, once a run has met NaN or inf.

Ingest refuses NaN and inf, so stored data that hold them were changed after
it (or written by another tool).  The engine cannot tell those from ``beta * s``
beyond float64's range in every case (the shift of a bank column is NaN either
way); this scan of the inputs, made only after the engine has refused a run,
can.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from qbscale.engine.grid import offsets
from qbscale.errors import InputError

if TYPE_CHECKING:
    from qbscale.types import Experiment, MatrixSource


def first_nonfinite(block: np.ndarray) -> tuple[int, int] | None:
    """``(row, column)`` of the first NaN or inf of a 2-D block (None: all finite).

    >>> first_nonfinite(np.array([[0.0, 1.0], [np.inf, np.nan]]))
    (1, 0)
    """
    bad = ~np.isfinite(block)
    if not bad.any():
        return None
    row, col = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return int(row), int(col)


def scan(source: MatrixSource) -> tuple[int, int, float] | None:
    """``(row, column, value)`` of the first non-finite value of ``source`` (reads it all)."""
    rows, cols = offsets(source.row_chunks), offsets(source.col_chunks)
    for i in range(len(source.row_chunks)):
        for c in range(len(source.col_chunks)):
            block = np.asarray(source.read(i, c))
            found = first_nonfinite(block)
            if found is not None:
                return rows[i] + found[0], cols[c] + found[1], float(block[found])
    return None


def overflow_possible(values: tuple[float, ...], dtypes: list[str]) -> bool:
    """Whether ``value * s`` can pass float64's range for similarities of ``dtypes``
    (never for float32 data and values below ~5e269).

    >>> overflow_possible((20.0,), ["float32"]), overflow_possible((20.0,), ["float64"])
    (False, True)
    """
    largest = max((abs(float(v)) for v in values), default=1.0)
    return any(largest * float(np.finfo(np.dtype(d)).max) >= float(np.finfo(np.float64).max)
               for d in dtypes)


def nonfinite_error(experiment: Experiment, values: tuple[float, ...] = (),
                    input_data: bool = False) -> InputError | None:
    """The error naming the first NaN or inf of a store experiment's inputs (test
    first, then bank), or None when they are finite (a real overflow) or in memory.

    The inputs are scanned (read whole, stopping at the first NaN or inf) only
    when the engine found a non-finite similarity (``input_data``) or when
    ``values`` cannot overflow with the stored dtypes: then they must hold one.
    """
    dtypes = [str(getattr(s, "dtype", "float64")) for s in (experiment.test, experiment.bank)]
    if experiment.url is None or not (input_data or not overflow_possible(values, dtypes)):
        return None
    for name, source in (("test", experiment.test), ("bank", experiment.bank)):
        found = scan(source)
        if found is not None:
            row, col, value = found
            what = "NaN" if np.isnan(value) else f"{value}"
            return InputError(f"store {experiment.url}: {name} row {row} has {what} (column "
                              f"{col}); the input data are not finite: re-ingest it")
    return None
