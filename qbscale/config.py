"""Run settings, validated once when built."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ConfigError

#: normalisation methods: "dis" (dynamic inverted softmax, rows whose top-1
#: is in the activation set), "is" (every row), "none" (baseline only)
METHODS = ("dis", "is", "none")
SCHEDULERS = ("threads", "processes", "synchronous")


@dataclass(frozen=True)
class RunConfig:
    """What to compute.

    Parameters
    ----------
    betas : inverse temperatures, each > 0 (several are computed in one pass)
    k : top-k columns per querybank row that form the activation set (>= 1)
    method : one of :data:`METHODS`
    topk : write the ``topk`` best gallery items per query (0: none)
    """

    betas: tuple[float, ...] = (20.0,)
    k: int = 1
    method: str = "dis"
    topk: int = 0

    def __post_init__(self) -> None:
        if not self.betas:
            raise ConfigError("at least one beta is needed")
        for beta in self.betas:
            if not (beta > 0 and beta < float("inf")):
                raise ConfigError(f"beta must be a finite number > 0, got {beta}")
        if int(self.k) != self.k or self.k < 1:
            raise ConfigError(f"k must be an integer >= 1, got {self.k}")
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if int(self.topk) != self.topk or self.topk < 0:
            raise ConfigError(f"topk must be an integer >= 0, got {self.topk}")

    @classmethod
    def make(cls, betas: float | Iterable[float] = 20.0, k: int = 1, method: str = "dis",
             topk: int = 0) -> RunConfig:
        """Build from a scalar or a list of betas."""
        seq = (betas,) if isinstance(betas, (int, float)) else tuple(betas)
        return cls(tuple(float(b) for b in seq), int(k), method.lower(), int(topk))

    @property
    def normalises(self) -> bool:
        return self.method != "none"


def parse_betas(text: str) -> tuple[float, ...]:
    """``"10,20,30"`` -> ``(10.0, 20.0, 30.0)``, with a clear error."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"--beta takes numbers separated by commas, got {text!r}") from exc
