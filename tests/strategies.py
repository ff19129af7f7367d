"""Hypothesis strategies: QB-Norm problems with ties, and random chunk lengths."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st


@dataclass
class Problem:
    bank: np.ndarray
    test: np.ndarray
    mask: np.ndarray | None
    gt: np.ndarray
    beta: float
    k: int


@st.composite
def problems(draw: st.DrawFn, max_gallery: int = 12, max_per_item: int = 3) -> Problem:
    """Bank continuous (with some duplicated columns), test on a coarse grid
    so ties are frequent; duplicated bank+test columns give exact ties after
    normalisation too."""
    n_gallery = draw(st.integers(1, max_gallery))
    per_item = draw(st.integers(1, max_per_item))
    n_bank = draw(st.integers(1, 15))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    scale = draw(st.sampled_from([1.0, 3.0, 50.0]))
    bank = (rng.standard_normal((n_bank, n_gallery)) * scale).astype(dtype)
    levels = draw(st.integers(2, 6))
    test = (rng.integers(0, levels, (n_gallery * per_item, n_gallery)) / levels * scale)
    test = test.astype(dtype)
    if n_gallery > 2 and draw(st.booleans()):
        a, b = rng.choice(n_gallery, 2, replace=False)
        bank[:, b] = bank[:, a]
        test[:, b] = test[:, a]
    mask = None
    if draw(st.booleans()):
        mask = rng.random(test.shape[0]) < 0.8
        mask[0] = True
    beta = draw(st.sampled_from([0.5, 1.0, 20.0, 50.0]))
    k = draw(st.integers(1, max(1, min(4, n_gallery))))
    return Problem(bank, test, mask, np.arange(test.shape[0]) // per_item, beta, k)


def chunking(draw: st.DrawFn, n: int) -> int:
    """A chunk length for an axis of ``n`` (1 .. n)."""
    return draw(st.integers(1, max(1, n)))


class Draws:
    """Stands in for ``st.data()`` in an ``@example``: ``draw`` returns the
    given values in order (Hypothesis's report lists them as "Draw 1: ...")."""

    def __init__(self, *values: object) -> None:
        self.values = list(values)

    def draw(self, strategy: object, label: object = None) -> object:
        return self.values.pop(0)
