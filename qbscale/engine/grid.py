"""Chunk arithmetic: the sizes and offsets of a grid of blocks."""

from __future__ import annotations

import numpy as np


def split(n: int, step: int) -> tuple[int, ...]:
    """Chunk sizes covering ``n`` items in steps of ``step`` (last may be short).

    >>> split(10, 4)
    (4, 4, 2)
    """
    step = max(1, int(step))
    return tuple(min(step, n - s) for s in range(0, n, step)) or (0,)


def offsets(chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Start offset of every chunk.  ``offsets((4, 4, 2)) == (0, 4, 8)``."""
    return tuple(int(x) for x in np.concatenate([[0], np.cumsum(chunks)[:-1]]))
