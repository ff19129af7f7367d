"""Several fitted normalisers as one list of variants for the test stage.

The test stage (:mod:`qbscale.engine.plan`) counts any number of *variants*
``scale * s - shift`` in one read of the test matrix.  A :class:`Stack` puts
the normalisers of several *cells* (e.g. the querybank subsets of a bank-size
sweep, each fitted on its own rows) side by side: variant ``v = c * n_values
+ b`` is value ``b`` of cell ``c``, and each cell keeps its own activation
set, so a dynamic method decides per variant which rows it rescores.

A :class:`~qbscale.engine.statistics.GalleryStatistics` offers the same interface
(``shift``, ``scales``, ``flags``, ``variant_flags``, ``transform``,
``check_gallery``), as a stack of one cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from qbscale.engine import kernels
from qbscale.engine.statistics import GalleryStatistics
from qbscale.errors import InputError


@dataclass(frozen=True, eq=False)
class Stack:
    """Cells' normalisers as variants; every cell has the same method and values."""

    members: tuple[GalleryStatistics, ...]
    #: (n_cells * n_values, n_gallery), cell by cell; None for the baseline
    shift: np.ndarray | None = field(init=False)

    def __post_init__(self) -> None:
        if not self.members:
            raise InputError("a stack needs at least one normaliser")
        first = self.members[0]
        for norm in self.members[1:]:
            if (norm.rows, norm.values, norm.n_gallery) != (first.rows, first.values,
                                                            first.n_gallery):
                raise InputError("stacked normalisers must share their method, values "
                                 "and gallery")
        shifts = [m.shift for m in self.members if m.shift is not None]
        object.__setattr__(self, "shift", np.concatenate(shifts) if shifts else None)

    @classmethod
    def of(cls, members: Sequence[GalleryStatistics]) -> Stack:
        return cls(tuple(members))

    @property
    def n_gallery(self) -> int:
        return self.members[0].n_gallery

    @property
    def rows(self) -> str:
        return self.members[0].rows

    @property
    def scales(self) -> np.ndarray:
        return np.concatenate([m.scales for m in self.members])

    @property
    def activation(self) -> np.ndarray:
        """(n_cells, n_gallery) bool: each cell's activation set."""
        return np.stack([m.activation for m in self.members])

    def check_gallery(self, n_gallery: int, what: str = "the test matrix") -> None:
        self.members[0].check_gallery(n_gallery, what)

    def flags(self, top_idx: np.ndarray) -> np.ndarray:
        """(n_cells, n_rows): which rows each cell normalises."""
        return np.stack([m.flags(top_idx) for m in self.members])

    def variant_flags(self, top_idx: np.ndarray) -> np.ndarray:
        """(n_variants, n_rows): which rows each variant normalises."""
        return np.repeat(self.flags(top_idx), len(self.members[0].values), axis=0)

    def transform(self, block: np.ndarray, col0: int = 0,
                  flags: np.ndarray | None = None) -> np.ndarray:
        """``(n_variants, rows, cols)`` scores; ``flags`` (rows,) or (n_variants, rows)."""
        block = np.asarray(block)
        if flags is None:
            self.check_gallery(block.shape[1])
            flags = self.variant_flags(np.argmax(block, axis=1))
        if self.shift is None:
            return np.asarray(block, dtype=np.float64)[None].copy()
        flags = np.broadcast_to(flags, (len(self.scales), block.shape[0]))
        shift = self.shift[:, col0:col0 + block.shape[1]]
        return np.stack([kernels.score_block(block, shift[v], float(scale), flags[v])
                         for v, scale in enumerate(self.scales)])
