"""Dask's local schedulers (threads, processes, synchronous)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import dask


class LocalExecutor:
    """Run with ``dask.compute(scheduler=...)``; a tqdm bar on stderr."""

    def __init__(self, scheduler: str = "threads", num_workers: int | None = None) -> None:
        self.scheduler = "synchronous" if scheduler == "sync" else scheduler
        self.num_workers = num_workers

    def compute(self, outputs: list[Any], progress: bool = False,
                setup: Sequence[Callable[[], object]] = ()) -> list[Any]:
        """Compute ``outputs``; ``setup`` is for worker processes of a cluster and
        is not run here (threads share the caller's process and its caches)."""
        from dask.base import named_schedulers

        # the scheduler's function itself: a name would make dask import
        # distributed (0.2 s) just to look for a default client
        kwargs: dict[str, Any] = {"scheduler": named_schedulers[self.scheduler],
                                  "optimize_graph": False}
        if self.num_workers:
            kwargs["num_workers"] = self.num_workers
        if not progress:
            return list(dask.compute(*outputs, **kwargs))
        from tqdm.dask import TqdmCallback

        with TqdmCallback(desc="qbscale", file=sys.stderr, unit="task", leave=False):
            return list(dask.compute(*outputs, **kwargs))

    def close(self) -> None:
        return None
