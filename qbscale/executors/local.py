"""Dask's local schedulers (threads, processes, synchronous)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dask


class LocalExecutor:
    """Run with ``dask.compute(scheduler=...)``; a tqdm bar on stderr."""

    def __init__(self, scheduler: str = "threads", num_workers: int | None = None) -> None:
        self.scheduler = "synchronous" if scheduler == "sync" else scheduler
        self.num_workers = num_workers

    @property
    def threads(self) -> int:
        """Tasks that can run at once."""
        if self.scheduler == "synchronous":
            return 1
        return self.num_workers or os.cpu_count() or 1

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
        with self._one_blas_thread():
            if not progress:
                return list(dask.compute(*outputs, **kwargs))
            from tqdm.dask import TqdmCallback

            with TqdmCallback(desc="qbscale", file=sys.stderr, unit="task", leave=False):
                return list(dask.compute(*outputs, **kwargs))

    @contextlib.contextmanager
    def _one_blas_thread(self) -> Iterator[None]:
        """BLAS on one thread while several dask threads compute: each task's
        matrix product then has a core, instead of every product starting a
        thread per core (a search over a million items ran 1.2x faster).  As
        dask's distributed workers do (``OPENBLAS_NUM_THREADS=1``)."""
        if self.scheduler != "threads" or self.threads < 2:
            yield
            return
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            yield

    def close(self) -> None:
        return None
