"""Querybank subsets: which bank rows a run, or each cell of a bank-size sweep, uses.

A *bank sample* of ``N`` rows with seed ``S`` is the bank rows::

    numpy.random.default_rng(S).permutation(n_bank)[:N]

``N`` is a count (an integer ``1 <= N <= n_bank``), a fraction ``f`` (a float
``0 < f <= 1``, meaning ``N = max(1, floor(f * n_bank + 0.5))``, i.e. rounded
half up), or ``"all"``.  A sample of every row is the whole bank (the plain
run, whatever the seed).

A bank-size sweep (:class:`Subsets`) has ``R`` repeats, repeat ``r`` with seed
``S + r``, and sizes ``N_1 < ... < N_M``: its cell ``(r, N_m)`` uses the first
``N_m`` rows of repeat ``r``'s permutation, so each cell is the bank sample
``(N_m, S + r)`` and the sizes of one repeat are nested.  The whole bank, if
asked for, is one cell shared by every repeat.  A bank row's *shell* in repeat
``r`` is the number of sizes its position in the permutation reaches past:
row ``q`` at position ``p`` lies in the cell of size ``N_m`` exactly when
``p < N_m``, i.e. when ``shell <= m``.

Nothing here reads data: the bank stage (:mod:`qbscale.engine.bankstats`)
reads each bank block once and uses :meth:`BlockRows.members` to pick the rows
of every cell from it.

Examples
--------
>>> subsets = Subsets.make(10, [2, 5, "all"], repeats=2, seed=0)
>>> [c.label for c in subsets.cells]
['2/r0', '5/r0', '2/r1', '5/r1', 'all']
>>> rows = subsets.block(0, 10)
>>> rows.members().sum(axis=1).tolist()
[2, 5, 2, 5, 10]
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from qbscale.errors import ConfigError

#: the size spelling of the whole bank
ALL = "all"

SampleSpec = int | float | str


def check_sample(spec: SampleSpec | None, what: str = "bank_sample") -> SampleSpec | None:
    """``spec`` checked (an int count >= 1, a float fraction in (0, 1], "all" or None)."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == ALL):
        return None if spec is None else ALL
    if isinstance(spec, bool) or not isinstance(spec, numbers.Real):
        raise ConfigError(f"{what} must be a row count, a fraction in (0, 1] or 'all', "
                          f"got {spec!r}")
    if isinstance(spec, numbers.Integral):
        if spec < 1:
            raise ConfigError(f"{what} must be at least 1 row, got {spec}")
        return int(spec)
    value = float(spec)
    if not (math.isfinite(value) and 0 < value <= 1):
        raise ConfigError(f"{what} as a fraction must be in (0, 1], got {spec!r} "
                          "(give a row count as an integer)")
    return value


def parse_sample(text: str, what: str = "--bank-sample") -> SampleSpec:
    """``"500"`` -> 500, ``"0.25"`` -> 0.25, ``"all"`` -> ``"all"`` (checked)."""
    text = text.strip()
    if text.lower() == ALL:
        return ALL
    try:
        value: SampleSpec = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{what} takes a row count, a fraction in (0, 1] or 'all', "
                              f"got {text!r}") from None
    checked = check_sample(value, what)
    assert checked is not None
    return checked


def sample_size(spec: SampleSpec | None, n_rows: int, what: str = "bank_sample") -> int:
    """The number of rows ``spec`` means in a bank of ``n_rows`` (see the module doc).

    >>> sample_size(0.25, 10), sample_size(3, 10), sample_size("all", 10)
    (3, 3, 10)
    """
    spec = check_sample(spec, what)
    if spec is None or spec == ALL:
        return n_rows
    if isinstance(spec, int):
        if spec > n_rows:
            raise ConfigError(f"{what} {spec} is more than the bank's {n_rows} rows")
        return spec
    assert isinstance(spec, float)
    return max(1, math.floor(spec * n_rows + 0.5))


def permutation(seed: int, n_rows: int) -> np.ndarray:
    """The bank-row order of ``seed``: ``default_rng(seed).permutation(n_rows)``."""
    return np.random.default_rng(seed).permutation(n_rows)


def sample_rows(spec: SampleSpec | None, seed: int, n_rows: int) -> np.ndarray:
    """The bank rows a sample uses, in permutation order (every row for the whole bank)."""
    n = sample_size(spec, n_rows)
    return np.arange(n_rows) if n == n_rows else permutation(seed, n_rows)[:n]


@dataclass(frozen=True)
class Cell:
    """One bank subset: ``size`` rows of repeat ``repeat`` (None: the whole bank)."""

    repeat: int | None
    size: int
    seed: int | None

    @property
    def label(self) -> str:
        return ALL if self.repeat is None else f"{self.size}/r{self.repeat}"


@dataclass(frozen=True)
class Subsets:
    """The cells of a bank-size sweep over a bank of ``n_rows`` rows.

    ``sizes`` are the partial sizes (ascending, each below ``n_rows``);
    ``seeds`` one per repeat; ``whole`` adds the cell of every row.  Cells
    are ordered repeat by repeat, sizes ascending, the whole bank last.
    """

    n_rows: int
    sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    whole: bool

    @classmethod
    def make(cls, n_rows: int, sizes: list[SampleSpec], repeats: int = 1, seed: int = 0
             ) -> Subsets:
        """Resolve ``sizes`` (counts, fractions, "all") against ``n_rows``; a clear
        error for sizes beyond the bank or two sizes that mean the same rows."""
        if not sizes:
            raise ConfigError("give at least one bank size")
        if int(repeats) != repeats or repeats < 1:
            raise ConfigError(f"repeats must be an integer >= 1, got {repeats}")
        check_seed(seed)
        counts: dict[int, SampleSpec] = {}
        for spec in sizes:
            n = sample_size(spec, n_rows, "bank size")
            if n in counts:
                raise ConfigError(f"bank sizes {counts[n]!r} and {spec!r} are both {n} rows "
                                  f"(of {n_rows}); give each size once")
            counts[n] = spec
        partial = tuple(sorted(n for n in counts if n < n_rows))
        return cls(n_rows, partial, tuple(seed + r for r in range(int(repeats))),
                   n_rows in counts)

    @classmethod
    def sample(cls, spec: SampleSpec | None, seed: int, n_rows: int) -> Subsets | None:
        """The one cell of a bank sample, or None when it is the whole bank."""
        n = sample_size(spec, n_rows)
        return None if n == n_rows else cls(n_rows, (n,), (seed,), False)

    @cached_property
    def cells(self) -> tuple[Cell, ...]:
        out = [Cell(r, n, s) for r, s in enumerate(self.seeds) for n in self.sizes]
        if self.whole:
            out.append(Cell(None, self.n_rows, None))
        return tuple(out)

    def index(self, repeat: int, size: int) -> int:
        """Position in :attr:`cells` of repeat ``repeat``'s cell of ``size`` rows."""
        if size == self.n_rows:
            return len(self.cells) - 1
        return repeat * len(self.sizes) + self.sizes.index(size)

    @cached_property
    def _positions(self) -> np.ndarray:
        """(n_repeats, n_rows): each bank row's position in each repeat's permutation."""
        out = np.empty((len(self.seeds), self.n_rows), np.int64)
        for r, seed in enumerate(self.seeds):
            out[r, permutation(seed, self.n_rows)] = np.arange(self.n_rows)
        return out

    def block(self, start: int, stop: int) -> BlockRows:
        """The membership of bank rows ``start:stop`` (what that block's task needs)."""
        pos = self._positions[:, start:stop]
        shell = np.searchsorted(np.asarray(self.sizes), pos, side="right")
        return BlockRows(shell.astype(np.int32), len(self.sizes), self.whole)


@dataclass(frozen=True)
class BlockRows:
    """Which rows of one bank block lie in which cell (small and picklable).

    ``shell[r, q]``: the number of partial sizes that row ``q``'s position in
    repeat ``r`` reaches past (``n_sizes``: in no partial size).
    """

    shell: np.ndarray  # (n_repeats, n_block_rows) int
    n_sizes: int
    whole: bool

    @property
    def n_cells(self) -> int:
        return int(self.shell.shape[0]) * self.n_sizes + int(self.whole)

    def members(self) -> np.ndarray:
        """(n_cells, n_block_rows) bool, cells in :attr:`Subsets.cells` order."""
        n = self.shell.shape[1]
        rows = [self.shell[r] <= m for r in range(self.shell.shape[0])
                for m in range(self.n_sizes)]
        if self.whole:
            rows.append(np.ones(n, bool))
        return np.array(rows, dtype=bool).reshape(len(rows), n)


def check_seed(seed: int) -> int:
    """``seed`` as an int >= 0 (what :func:`numpy.random.default_rng` takes)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    return int(seed)
