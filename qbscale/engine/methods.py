"""The querybank normaliser family, declared as data.

Every method here scores a test row as ``scale * s[j] - shift[j]``, where
``s`` are the row's raw similarities and ``shift`` holds one number per
gallery item computed from the banks alone, in one pass over their blocks
(:mod:`qbscale.engine.bankstats`).  The test stage (:mod:`qbscale.engine.plan`) then counts
ranks, top-1 and top-k for any list of such *variants*, so a method is only
three small functions: which bank statistics it needs, its scales, and how the
statistics become shifts.  Several values of a method's swept parameter
(``variant``) are several variants of one pass.

=========  ====================================  ============  ==========================
method     score of gallery item ``j``           scale         shift[j]
=========  ====================================  ============  ==========================
is, dis    ``beta*s - logZ(j)``                  beta          ``logZ(j)``
csls       ``2*s - r(j)``                        2             ``r(j)``
nnn        ``s - alpha*b(j)``                    1             ``alpha * b(j)``
dual-is    ``(beta+beta_g)*s - logZ(j) - logW``  beta+beta_g   ``logZ(j) + logW(j)``
=========  ====================================  ============  ==========================

with, over the querybank similarities ``B`` (bank query x gallery) and the
gallery-bank similarities ``G`` (gallery-bank item x gallery):

* ``logZ(j) = logsumexp_q(beta * B[q, j])`` (inverted softmax, QB-Norm);
* ``r(j)`` the mean of column ``j``'s ``kc`` largest values of ``B`` (CSLS,
  Lample et al. 2018, with the querybank standing in for the query side's
  neighbours).  CSLS proper is ``2*s - r(j) - r_q(i)``: the query's own term
  ``r_q(i)`` is the same for every item of row ``i``, so it never changes a
  row's order or any rank, and is omitted;
* ``b(j)`` the mean of column ``j``'s ``nnn_k`` largest values of ``B``
  (Nearest Neighbor Normalization, NNN: Chowdhury, Wang, Shenoy, Kiela,
  Schwettmann and Thrush, "Nearest Neighbor Normalization Improves
  Multimodal Retrieval", EMNLP 2024).  The defaults ``nnn_k=128`` and
  ``alpha=0.75`` are those its README recommends; its package's own
  defaults differ (``alternate_ks=256``, ``alternate_weight=0.5``), so pass
  ``nnn_k=256, alpha=0.5`` to match the package;
* ``logW(j) = logsumexp_g(beta_g * G[g, j])``.  ``dual-is`` is the dual
  inverted softmax of DBNorm (Wang et al., EMNLP 2023, "Balance Act"): the
  product of a querybank and a gallery-bank inverted softmax,
  ``exp(beta*s) / sum_q exp(beta*B[q, j]) * exp(beta_g*s) / sum_g
  exp(beta_g*G[g, j])``, ranked by its logarithm (the same order).  The gallery
  bank is a set of extra items of the gallery's modality (training videos for
  text->video retrieval); ``G`` holds their similarities to the gallery.

A *dynamic* method (``dis``, or any method with ``dynamic=True``) rescores
only the rows whose raw top-1 item is in the querybank's activation set (the
union of every bank query's top-k items) and leaves the others raw.  For
``dual-is`` the activation set is the querybank's as well (DBNorm's own
dynamic variant selects rows per factor instead).

Examples
--------
>>> m = get("nnn")
>>> m.variant.name, m.variant.default, [p.name for p in m.params]
('alpha', 0.75, ['nnn_k'])
>>> m.scales((0.5, 1.0), {"nnn_k": 2.0})
array([1., 1.])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from qbscale.errors import ConfigError

#: names of the bank matrices a method may read
QUERY_BANK = "bank"
GALLERY_BANK = "gallery_bank"

Values = Sequence[float]
Params = Mapping[str, float]


@dataclass(frozen=True)
class Param:
    """A method parameter: its name, default, allowed range and report grid."""

    name: str
    default: float
    help: str
    integer: bool = False
    minimum: float = 0.0
    inclusive: bool = False
    #: values swept when plotting a metric against this parameter
    grid: tuple[float, ...] = ()

    @property
    def rule(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        return f"{kind} {'>=' if self.inclusive else '>'} {self.minimum:g}"

    def check(self, value: float) -> float:
        """``value`` as a float, or a :class:`ConfigError` naming the rule (a bool
        is no number here: ``beta=True`` is a slip, not 1)."""
        try:
            if isinstance(value, bool):
                raise TypeError(value)
            v = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{self.name} must be {self.rule}, got {value!r}") from None
        ok = math.isfinite(v) and (v >= self.minimum if self.inclusive else v > self.minimum)
        if not ok or (self.integer and v != int(v)):
            raise ConfigError(f"{self.name} must be {self.rule}, got {value}")
        return v

    def check_all(self, values: Values) -> tuple[float, ...]:
        """Every value checked; at least one is needed."""
        if not values:
            raise ConfigError(f"at least one {self.name} is needed")
        return tuple(self.check(v) for v in values)


@dataclass(frozen=True)
class BankNeeds:
    """What one pass over a bank matrix computes for every gallery column."""

    betas: tuple[float, ...] = ()  #: column ``logsumexp(beta * B)`` per beta
    column_means: tuple[int, ...] = ()  #: mean of the column's k largest values, per k
    activation_k: int = 0  #: union of every row's top-k columns (0: none)

    @property
    def column_k(self) -> int:
        """How many of each column's largest values the pass keeps (0: none)."""
        return max(self.column_means, default=0)


@dataclass
class BankStats:
    """The per-gallery statistics of one bank (fields None when not asked for)."""

    log_z: np.ndarray | None  #: (len(betas), n_gallery) float64
    #: k -> (n_gallery,) float64 mean of each column's k largest values (all
    #: of them when the bank has fewer rows)
    column_means: dict[int, np.ndarray]
    activation: np.ndarray | None  #: (n_gallery,) bool


@dataclass(frozen=True)
class Method:
    """A normaliser: the statistics it needs and how they become variants.

    ``needs(values, params)`` maps bank names to :class:`BankNeeds`;
    ``scales(values, params)`` gives one scale per variant (known before any
    data is read); ``shifts(values, params, stats)`` turns the
    :class:`BankStats` of every bank into the ``(n_variants, n_gallery)``
    shifts.  ``values`` are the values of the swept parameter ``variant``.
    """

    name: str
    summary: str
    variant: Param
    needs: Callable[[Values, Params], dict[str, BankNeeds]]
    scales: Callable[[Values, Params], np.ndarray]
    shifts: Callable[[Values, Params, Mapping[str, BankStats]], np.ndarray]
    params: tuple[Param, ...] = ()
    dynamic: bool = False

    @property
    def banks(self) -> tuple[str, ...]:
        """Bank matrices this method reads (with its default parameters)."""
        defaults = {p.name: p.default for p in self.params}
        return tuple(self.needs((self.variant.default,), defaults))

    def resolve(self, values: Values | None, params: Params | None
                ) -> tuple[tuple[float, ...], tuple[tuple[str, float], ...]]:
        """Checked ``(variant values, ((name, value), ...))``, defaults filled in."""
        given = dict(params or {})
        known = {p.name: p for p in self.params}
        unknown = sorted(set(given) - set(known))
        if unknown:
            allowed = ", ".join([self.variant.name, *known]) or "none"
            raise ConfigError(f"method {self.name} has no parameter {unknown[0]!r} "
                              f"(its parameters: {allowed})")
        checked = self.variant.check_all((self.variant.default,) if values is None
                                         else tuple(values))
        fixed = tuple((name, p.check(given.get(name, p.default))) for name, p in known.items())
        return checked, fixed


# ---------------------------------------------------------------- the methods


def _top_mean(stats: BankStats, k: float) -> np.ndarray:
    """Mean of each column's ``k`` largest bank values."""
    try:
        return stats.column_means[int(k)]
    except KeyError:
        raise ConfigError(f"the bank statistics hold no top-{int(k)} column means") from None


def _log_z(stats: Mapping[str, BankStats], bank: str) -> np.ndarray:
    log_z = stats[bank].log_z
    if log_z is None:
        raise ConfigError(f"the {bank} statistics hold no log normaliser")
    return log_z


def _softmax_needs(values: Values, params: Params) -> dict[str, BankNeeds]:
    return {QUERY_BANK: BankNeeds(betas=tuple(values))}


def _softmax_scales(values: Values, params: Params) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _softmax_shifts(values: Values, params: Params, stats: Mapping[str, BankStats]
                    ) -> np.ndarray:
    return _log_z(stats, QUERY_BANK)


def _csls_needs(values: Values, params: Params) -> dict[str, BankNeeds]:
    return {QUERY_BANK: BankNeeds(column_means=tuple(sorted({int(v) for v in values})))}


def _csls_shifts(values: Values, params: Params, stats: Mapping[str, BankStats]
                 ) -> np.ndarray:
    return np.stack([_top_mean(stats[QUERY_BANK], kc) for kc in values])


def _nnn_needs(values: Values, params: Params) -> dict[str, BankNeeds]:
    return {QUERY_BANK: BankNeeds(column_means=(int(params["nnn_k"]),))}


def _nnn_shifts(values: Values, params: Params, stats: Mapping[str, BankStats]
                ) -> np.ndarray:
    b = _top_mean(stats[QUERY_BANK], params["nnn_k"])
    return np.stack([alpha * b for alpha in values])


def _dual_needs(values: Values, params: Params) -> dict[str, BankNeeds]:
    return {QUERY_BANK: BankNeeds(betas=tuple(values)),
            GALLERY_BANK: BankNeeds(betas=(float(params["gallery_beta"]),))}


def _dual_scales(values: Values, params: Params) -> np.ndarray:
    return np.asarray(values, dtype=np.float64) + float(params["gallery_beta"])


def _dual_shifts(values: Values, params: Params, stats: Mapping[str, BankStats]
                 ) -> np.ndarray:
    shift: np.ndarray = _log_z(stats, QUERY_BANK) + _log_z(stats, GALLERY_BANK)[0]
    return shift


def _constant(scale: float) -> Callable[[Values, Params], np.ndarray]:
    def scales(values: Values, params: Params) -> np.ndarray:
        return np.full(len(values), scale)

    return scales


BETA = Param("beta", 20.0, "Inverse temperature of the querybank softmax.",
             grid=(1, 2, 5, 10, 15, 20, 30, 50, 100))


def _softmax(name: str, summary: str, dynamic: bool) -> Method:
    return Method(name, summary, BETA, _softmax_needs, _softmax_scales, _softmax_shifts,
                  dynamic=dynamic)


#: every normaliser, by name (the order of ``--method`` choices)
REGISTRY: dict[str, Method] = {m.name: m for m in (
    _softmax("dis", "dynamic inverted softmax (QB-Norm): is on rows whose top-1 is activated",
             dynamic=True),
    _softmax("is", "inverted softmax: beta*s - logsumexp over the querybank", dynamic=False),
    Method("csls", "cross-domain similarity local scaling: 2*s - mean top-kc bank similarity",
           Param("kc", 10, "Bank neighbours averaged per gallery item.", integer=True,
                 minimum=1, inclusive=True, grid=(1, 2, 5, 10, 20, 50, 100)),
           _csls_needs, _constant(2.0), _csls_shifts),
    Method("nnn", "nearest-neighbour normalisation: s - alpha * mean top-k bank similarity",
           Param("alpha", 0.75, "Weight of the bank term.", minimum=0.0, inclusive=True,
                 grid=(0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)),
           _nnn_needs, _constant(1.0), _nnn_shifts,
           params=(Param("nnn_k", 128, "Bank neighbours averaged per gallery item.",
                         integer=True, minimum=1, inclusive=True),)),
    Method("dual-is", "dual inverted softmax (DBNorm): querybank and gallery-bank softmax",
           BETA, _dual_needs, _dual_scales, _dual_shifts,
           params=(Param("gallery_beta", 20.0, "Inverse temperature of the gallery-bank "
                         "softmax."),)),
)}

#: method names, then "none" (the baseline)
NAMES = (*REGISTRY, "none")


def get(name: str) -> Method:
    """The method called ``name`` (a :class:`ConfigError` listing them otherwise)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"method must be one of {', '.join(NAMES)}, got {name!r}") from None


def all_params() -> dict[str, Param]:
    """Every parameter of every method by name (swept ones included), first wins."""
    out: dict[str, Param] = {}
    for method in REGISTRY.values():
        for p in (method.variant, *method.params):
            out.setdefault(p.name, p)
    return out
