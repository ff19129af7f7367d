"""Run settings, validated once when built."""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qbscale.engine import methods as _methods
from qbscale.engine import subsets as _subsets
from qbscale.errors import ConfigError

#: normalisation methods (:mod:`qbscale.engine.methods`): "dis" (dynamic inverted
#: softmax, rows whose top-1 is in the activation set), "is" (every row),
#: "csls", "nnn", "dual-is", and "none" (baseline only)
METHODS = _methods.NAMES


def _integer(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int, refused unless it is a whole number >= ``minimum``
    (``1.5``, ``"2"``, ``None`` and ``True`` are refused, not truncated or cast)."""
    whole = isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and math.isfinite(value) and float(value).is_integer()
    if not whole or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(float(value))


@dataclass(frozen=True)
class RunConfig:
    """What to compute.

    Parameters
    ----------
    values : values of the method's swept parameter, one variant each, all
        computed in one pass: inverse temperatures (> 0) for ``is``, ``dis``
        and ``dual-is``, ``alpha`` for ``nnn``, ``kc`` for ``csls``
        (:attr:`variant_name`)
    k : top-k columns per querybank row that form the activation set (>= 1)
    method : one of :data:`METHODS`
    topk : write the ``topk`` best gallery items per query (0: none)
    dynamic : rescore only rows whose top-1 is in the activation set (``dis``
        always does)
    params : the method's other parameters as ``((name, value), ...)``, every
        one present (:meth:`make` fills in the defaults)
    bank_sample : use only the querybank rows
        ``numpy.random.default_rng(seed).permutation(n_bank)[:N]``: ``N`` a
        count, or a fraction in (0, 1] (:mod:`qbscale.engine.subsets`); None
        (default) for the whole querybank
    seed : the permutation's seed (0 when there is no sample)
    """

    values: tuple[float, ...] = (20.0,)
    k: int = 1
    method: str = "dis"
    topk: int = 0
    dynamic: bool = False
    params: tuple[tuple[str, float], ...] = ()
    bank_sample: int | float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.normalises:
            values, params = _methods.get(self.method).resolve(self.values, dict(self.params))
        else:  # the baseline: values only label the (absent) variants
            values, params = _methods.BETA.check_all(self.values), ()
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "k", _integer(self.k, "k", 1))
        object.__setattr__(self, "topk", _integer(self.topk, "topk", 0))
        sample = _subsets.check_sample(self.bank_sample)
        object.__setattr__(self, "bank_sample", None if sample == _subsets.ALL else sample)
        seed = _subsets.check_seed(self.seed)
        object.__setattr__(self, "seed", 0 if self.bank_sample is None else seed)

    @classmethod
    def make(cls, values: float | Iterable[float] | None = None, k: int = 1, method: str = "dis",
             topk: int = 0, dynamic: bool = False, params: Mapping[str, Any] | None = None,
             bank_sample: int | float | str | None = None, seed: int = 0) -> RunConfig:
        """Build from a scalar or a list of values (None: the method's default).

        ``("is", dynamic=True)`` is ``"dis"``; a value for the method's swept
        parameter may come in ``params`` too (``params={"alpha": [0.5, 1]}``).
        """
        if not isinstance(method, str):  # None, a list: the same message as a typo
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
        method = method.lower()
        if method == "is" and dynamic:
            method, dynamic = "dis", False
        rest = dict(params or {})
        if method != "none":
            name = _methods.get(method).variant.name
            if name in rest:
                if values is not None and name != "beta":
                    raise ConfigError(f"give {name} once, not as both beta and {name}")
                values = rest.pop(name)
            elif values is not None and name != "beta":
                raise ConfigError(f"method {method} has no beta: it sweeps {name}")
        if values is None:
            values = _methods.get(method).variant.default if method != "none" else 20.0
        seq = tuple(values) if isinstance(values, Iterable) and not isinstance(values, str) \
            else (values,)
        return cls(seq, k, method, topk, bool(dynamic), tuple(sorted(rest.items())),
                   bank_sample, seed)  # type: ignore[arg-type]  # "all" is checked into None

    def resolved(self, n_bank: int) -> RunConfig:
        """This config with ``bank_sample`` as the row count it means in a bank of
        ``n_bank`` rows (None for every row), so a fraction and the equal count
        are one setting (:func:`qbscale.engine.subsets.sample_size`)."""
        if self.bank_sample is None:
            return self
        n = _subsets.sample_size(self.bank_sample, n_bank)
        sample = None if n == n_bank else n
        if sample == self.bank_sample:
            return self
        return dataclasses.replace(self, bank_sample=sample)

    @property
    def normalises(self) -> bool:
        return self.method != "none"

    @property
    def is_dynamic(self) -> bool:
        """True when only rows whose top-1 is in the activation set are rescored."""
        if not self.normalises:
            return False
        return self.dynamic or _methods.get(self.method).dynamic

    @property
    def rows(self) -> str:
        """Which rows are rescored: ``"dynamic"``, ``"all"`` or ``"none"``."""
        if not self.normalises:
            return "none"
        return "dynamic" if self.is_dynamic else "all"

    @property
    def variant_name(self) -> str:
        """Name of the swept parameter whose values are :attr:`values`."""
        return _methods.get(self.method).variant.name if self.normalises else "beta"

    @property
    def param_dict(self) -> dict[str, float]:
        return dict(self.params)

    @property
    def label(self) -> str:
        """The method as printed: ``dis``, ``nnn``, ``nnn+dyn``, ..."""
        return f"{self.method}+dyn" if self.dynamic and self.method not in ("dis", "none") \
            else self.method


#: a number as ``--beta`` and friends take it: decimal, exponent, inf/nan (refused later
#: by name); not Python's ``1_0`` or an empty item (``20,,30`` is a typo, not ``20,30``)
_NUMBER = re.compile(r"[+-]?(?:(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?|inf(?:inity)?|nan)",
                     re.IGNORECASE)


def parse_values(text: str, option: str = "--beta") -> tuple[float, ...]:
    """``"10,20,30"`` -> ``(10.0, 20.0, 30.0)``, with a clear error naming ``option``.

    >>> parse_values("10, 2e1,.5")
    (10.0, 20.0, 0.5)
    """
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        return ()
    bad = next((part for part in parts if not _NUMBER.fullmatch(part)), None)
    if bad is not None:
        raise ConfigError(f"{option} takes numbers separated by commas, got {text!r} "
                          f"({bad!r} is not a number)")
    return tuple(float(part) for part in parts)
