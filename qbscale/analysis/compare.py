"""Every normaliser on one experiment: metrics and hubness before and after.

:func:`compare` runs each method once (one pass over the banks and the test
matrix per method, every value of its swept parameter at once) with the
top-k lists that hubness needs, and gathers what ``qbscale hubness``,
``qbscale report`` and ``benchmarks/compare_methods.py`` print.  It only
reads the store: nothing is written into it.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qbscale.analysis import hubness as hub
from qbscale.api import run
from qbscale.config import RunConfig
from qbscale.engine import methods
from qbscale.errors import ConfigError
from qbscale.storage.stores.store import open_experiment
from qbscale.types import Experiment, RunResult


@dataclass
class MethodRun:
    """One method's pass: its result for every value, and hubness per value."""

    label: str
    result: RunResult
    default: float  #: the default value of the swept parameter (a key of ``result.after``)
    occurrence: dict[float, np.ndarray] = field(default_factory=dict)  #: N_k per value
    hubness: dict[float, hub.Hubness] = field(default_factory=dict)

    @property
    def param(self) -> str:
        return self.result.config.variant_name

    @property
    def metrics(self) -> dict[str, float]:
        """Metrics at the default value (none without a ground truth)."""
        return {} if self.result.after is None else self.result.after[self.default]


@dataclass
class Comparison:
    """The baseline and every method's run over one experiment."""

    k: int
    n_queries: int
    n_gallery: int
    n_bank: int
    before: dict[str, float] | None  #: None without a ground truth (hubness needs none)
    before_occurrence: np.ndarray
    before_hubness: hub.Hubness
    runs: list[MethodRun]

    def rows(self) -> list[dict[str, Any]]:
        """One row per method at its default (the baseline first): metrics and hubness."""
        out = [{"method": "none", "param": "", "value": None, **(self.before or {}),
                **_prefixed(self.before_hubness)}]
        for r in self.runs:
            out.append({"method": r.label, "param": r.param, "value": r.default, **r.metrics,
                        **_prefixed(r.hubness[r.default])})
        return out


def _prefixed(h: hub.Hubness) -> dict[str, Any]:
    return {f"hub_{name}": value for name, value in h.to_dict().items()}


def available(experiment: Experiment, gallery_bank: Any = None) -> list[str]:
    """Every method that can run here (``dual-is`` only with a gallery bank)."""
    has_bank = gallery_bank is not None or "gallery_bank" in (experiment.attrs or {})
    return [name for name, m in methods.REGISTRY.items()
            if has_bank or methods.GALLERY_BANK not in m.banks]


def _values(method: methods.Method, sweep: bool) -> list[float]:
    default = method.variant.default
    return sorted({*method.variant.grid, default}) if sweep else [default]


def compare(store: str | os.PathLike[str] | Experiment, names: list[str] | None = None, *,
            k: int = 10, sweep: bool = False, dynamic: bool = False, activation_k: int = 1,
            gallery_bank: Any = None, scheduler: Any = "threads",
            num_workers: int | None = None, progress: bool = False,
            storage_options: dict[str, Any] | None = None,
            bank_sample: int | float | str | None = None, seed: int = 0) -> Comparison:
    """Run every method (default: all that can run) and measure hubness at ``k``.

    Parameters
    ----------
    store : a store path/URL or an :class:`~qbscale.storage.stores.store.Experiment`
    names : methods to run (see :data:`qbscale.engine.methods.REGISTRY`)
    k : top-k depth of the hubness measures
    sweep : also run every value of each method's grid (``Param.grid``) in its
        pass, for metrics against beta / alpha / kc
    dynamic, activation_k : as ``dynamic`` and ``k`` of :func:`qbscale.api.run`
    gallery_bank : for ``dual-is`` (default: the store's)
    bank_sample, seed : every method uses only these querybank rows
        (:func:`qbscale.api.run`)
    """
    from qbscale.storage.stores.gallery_bank import resolve
    from qbscale.storage.stores.store import read_whole

    experiment = store if isinstance(store, Experiment) else \
        open_experiment(store, storage_options)
    names = available(experiment, gallery_bank) if names is None else list(names)
    if not names:
        raise ConfigError("no method to compare")
    reading = dataclasses.replace(experiment, url=None)  # analyses never write to the store
    runs = []
    with read_whole(experiment):  # the runs read through a copy without its url
        for name in names:
            method = methods.get(name)
            swept: dict[str, Any] = {method.variant.name: _values(method, sweep)}
            config = RunConfig.make(method=name, k=activation_k, topk=k, dynamic=dynamic,
                                    params=swept)
            extra = resolve(experiment, config,
                            gallery_bank if methods.GALLERY_BANK in method.banks else None)
            result = run(reading, k=activation_k, method=name, topk=k, dynamic=dynamic,
                         gallery_bank=extra.get(methods.GALLERY_BANK), scheduler=scheduler,
                         num_workers=num_workers, progress=progress, bank_sample=bank_sample,
                         seed=seed, **swept)
            nks = hub.occurrences(result, k)
            del nks["before"]
            occurrence = {float(v): nk for v, nk in nks.items()}
            runs.append(MethodRun(config.label, result, float(method.variant.default), occurrence,
                                  {v: hub.Hubness.of(nk, k) for v, nk in occurrence.items()}))
    first = runs[0].result
    before = hub.occurrences(first, k)["before"]
    return Comparison(k, experiment.n_queries, experiment.n_gallery, experiment.bank.shape[0],
                      first.before, before, hub.Hubness.of(before, k), runs)
