"""The bank stage's output: a fitted normaliser, on plain numpy arrays.

A :class:`GalleryStatistics` holds what the querybank (and, for ``dual-is``, the
gallery bank) taught about the gallery: one ``shift`` per gallery item and
variant, the activation set, and the configuration that made them.  The test
stage (:mod:`qbscale.engine.plan`) consumes one; it is all a normalised score
needs::

    score[i, j] = scale[v] * s[i, j] - shift[v, j]   on rows that are normalised
    score[i, j] = s[i, j]                            on the others

where a row is normalised always (``rows == "all"``), never (``"none"``), or
when its raw top-1 item is in the activation set (``"dynamic"``).

Nothing here reads a file: :mod:`qbscale.retrieval.normaliser` fits, saves and loads.

Examples
--------
>>> from qbscale.config import RunConfig
>>> norm = GalleryStatistics(RunConfig.make(20.0, method="is"), np.array([[1.0, 2.0]]),
...                          np.array([True, False]))
>>> norm.transform(np.array([[0.1, 0.2]]))[0]
array([[1., 2.]])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from qbscale.engine import kernels, methods
from qbscale.errors import InputError, NotFiniteError

if TYPE_CHECKING:
    from qbscale.config import RunConfig


@dataclass(frozen=True, eq=False)
class GalleryStatistics:
    """Per-gallery shifts and the activation set of one method's variants.

    Attributes
    ----------
    config : the method, its swept values, parameters, k and dynamic flag
    shift : (n_values, n_gallery) float64, one row per value of
        ``config.values``; None for the baseline (``method="none"``)
    activation : (n_gallery,) bool, the union of the bank rows' top-k items
    fingerprint : what the gallery was when fitted (``{"n_gallery": ...}``,
        plus e.g. a checksum of the gallery embeddings); checked on use
    """

    config: RunConfig
    shift: np.ndarray | None
    activation: np.ndarray
    fingerprint: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        act = np.asarray(self.activation, dtype=bool)
        if act.ndim != 1:
            raise InputError(f"activation must be 1-D, got shape {act.shape}")
        object.__setattr__(self, "activation", act)
        if self.shift is not None:
            shift = np.asarray(self.shift, dtype=np.float64)
            want = (len(self.config.values), act.size)
            if shift.shape != want:
                raise InputError(f"shift has shape {shift.shape}, expected {want} "
                                 f"({len(self.config.values)} values x {act.size} items)")
            self._check_finite(shift)
            object.__setattr__(self, "shift", shift)
        self.fingerprint.setdefault("n_gallery", int(act.size))

    def _check_finite(self, shift: np.ndarray) -> None:
        """Refuse shifts that over- or underflowed float64 (``beta * s`` beyond 1.8e308)."""
        bad = ~np.isfinite(shift)
        if not bad.any():
            return
        b, j = (int(x[0]) for x in np.nonzero(bad))
        name = self.config.variant_name
        raise NotFiniteError(
            f"{name}={self.config.values[b]:g}: the {self.config.method} shift of gallery item "
            f"{j} is {shift[b, j]} ({bad.sum()} of {bad.size} are not finite): the bank's "
            f"scaled similarities are beyond float64's range (~1.8e308); use a smaller {name}")

    def check_range(self, top_val: np.ndarray, gt_norm: np.ndarray, shift: np.ndarray,
                    first_row: int = 0) -> None:
        """:func:`check_range` with this normaliser's settings."""
        check_range(self.config, self.scales, top_val, gt_norm, shift, first_row)

    @classmethod
    def baseline(cls, config: RunConfig, n_gallery: int) -> GalleryStatistics:
        """The normaliser of ``method="none"``: no shift, no activated item."""
        return cls(config, None, np.zeros(n_gallery, bool))

    @classmethod
    def from_stats(cls, config: RunConfig,
                   stats: dict[str, methods.BankStats]) -> GalleryStatistics:
        """Combine the bank statistics of ``config``'s method into a normaliser."""
        method = methods.get(config.method)
        with np.errstate(over="ignore", invalid="ignore"):  # inf/nan: refused on creation
            shift = method.shifts(config.values, config.param_dict, stats)
        activation = stats[methods.QUERY_BANK].activation
        assert activation is not None
        return cls(config, np.asarray(shift, dtype=np.float64), activation)

    @property
    def n_gallery(self) -> int:
        return int(self.activation.size)

    @property
    def values(self) -> tuple[float, ...]:
        """The swept parameter's values, one variant each."""
        return self.config.values

    @property
    def scales(self) -> np.ndarray:
        """One scale per variant (inverted softmax: the betas)."""
        if not self.config.normalises:
            return np.asarray(self.config.values, dtype=np.float64)
        return methods.get(self.config.method).scales(self.config.values,
                                                      self.config.param_dict)

    @property
    def rows(self) -> str:
        """Rows rescored: ``"all"``, ``"dynamic"`` (top-1 activated) or ``"none"``."""
        return self.config.rows

    def check_gallery(self, n_gallery: int, what: str = "the test matrix") -> None:
        """A clear error when ``what`` has another gallery than the one fitted."""
        if n_gallery != self.n_gallery:
            raise InputError(f"{what} has {n_gallery} gallery items, the normaliser was "
                             f"fitted on {self.n_gallery}")

    def flags(self, top_idx: np.ndarray) -> np.ndarray:
        """Which rows are normalised, given each row's raw top-1 item."""
        if self.rows == "all":
            return np.ones(len(top_idx), bool)
        if self.rows == "dynamic":
            return np.asarray(self.activation[top_idx])
        return np.zeros(len(top_idx), bool)

    def variant_flags(self, top_idx: np.ndarray) -> np.ndarray:
        """(n_values, n_rows): :meth:`flags` for each variant (the test stage's view,
        shared with :class:`~qbscale.engine.stack.Stack`)."""
        return np.broadcast_to(self.flags(top_idx), (len(self.values), len(top_idx)))

    def transform(self, block: np.ndarray, col0: int = 0,
                  flags: np.ndarray | None = None) -> np.ndarray:
        """Normalised scores of a block of test rows: ``(n_values, rows, cols)`` float64.

        ``block`` holds columns ``col0:col0 + width`` of the gallery; ``flags``
        (which rows to normalise: ``(rows,)``, or ``(n_values, rows)`` per
        variant) defaults to :meth:`flags` of the block's own
        row maxima, so give it when the block is not whole rows.
        """
        block = np.asarray(block)
        width = block.shape[1]
        if flags is None:
            self.check_gallery(width)
            dynamic = self.rows == "dynamic"  # only then does a row's top-1 matter
            flags = self.flags(np.argmax(block, axis=1) if dynamic
                               else np.zeros(block.shape[0], np.intp))
        if self.shift is None:
            return np.asarray(block, dtype=np.float64)[None].copy()
        shift = self.shift[:, col0:col0 + width]
        flags = np.broadcast_to(flags, (len(self.values), block.shape[0]))
        out = np.empty((len(shift), *block.shape))
        for b, scale in enumerate(self.scales):
            kernels.score_block(block, shift[b], float(scale), flags[b], out=out[b])
        return out


def check_range(config: RunConfig, scales: np.ndarray, top_val: np.ndarray, gt_norm: np.ndarray,
                shift: np.ndarray, first_row: int = 0) -> None:
    """Refuse test rows whose normalised scores overflow float64.

    ``scales`` holds one scale per variant (stacked normalisers repeat the
    values); ``top_val`` are the rows' raw maxima, ``gt_norm`` their ground
    truths' normalised scores (``(n_values, rows)``), ``shift`` the shifts of the
    block's columns.  The largest score of a row is at most
    ``scale * max(s) - min(shift)``; when that or a ground truth's score is
    not finite, counts, ranks and scores would be wrong, so this raises.
    (Scores overflowing to ``-inf`` stay below every finite ground truth.)
    """
    if not len(top_val) or not shift.size:
        return
    nonfinite = np.flatnonzero(~np.isfinite(top_val))
    if nonfinite.size:  # a raw similarity, not beta * s: the input is not finite
        value = top_val[int(nonfinite[0])]
        raise NotFiniteError(f"test row {first_row + int(nonfinite[0])} has "
                             f"{'NaN' if np.isnan(value) else value}; the input data are "
                             "not finite", input_data=True)
    top = float(np.max(top_val))
    with np.errstate(over="ignore", invalid="ignore"):
        peak = scales * top - shift.min(axis=1)
    ok_gt = np.isfinite(gt_norm).all(axis=1)
    bad = np.flatnonzero(~(np.isfinite(peak) & ok_gt))
    if not bad.size:
        return
    b = int(bad[0])
    row = first_row + int(np.argmax(top_val) if ok_gt[b] else
                          np.flatnonzero(~np.isfinite(gt_norm[b]))[0])
    name = config.variant_name
    value = config.values[b % len(config.values)]
    raise NotFiniteError(
        f"{name}={value:g}: the normalised scores of test row {row} are "
        f"beyond float64's range (~1.8e308; scale {scales[b]:g}, largest test "
        f"similarity {top:g}); use a smaller {name}")
