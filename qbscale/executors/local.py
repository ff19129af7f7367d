"""Dask's local schedulers (threads, processes, synchronous)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import dask

#: the limit a worker process keeps (see :func:`one_blas_thread_for_good`)
_PROCESS_LIMIT: list[Any] = []


def one_blas_thread() -> Any:
    """BLAS limited to one thread, from now until the returned limit is
    restored (a context manager: ``with one_blas_thread(): ...``).

    Parallelism comes from dask: each task's matrix product gets a core
    instead of every product starting a thread per core (a search over a
    million items ran 1.2x faster on 2 cores).  It also makes float32
    products the same bits under every scheduler, for the same block shapes:
    BLAS's results depend on its thread count, and dask's distributed workers
    already run one BLAS thread (``OPENBLAS_NUM_THREADS=1`` from their nanny).
    numpy is imported first: it loads BLAS, which the limit must find.
    """
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def one_blas_thread_for_good() -> None:
    """:func:`one_blas_thread` for the life of a worker process (its initializer)."""
    _PROCESS_LIMIT.append(one_blas_thread())


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
        if self.scheduler == "processes":
            kwargs["initializer"] = one_blas_thread_for_good
        with one_blas_thread():
            if not progress:
                return list(dask.compute(*outputs, **kwargs))
            from tqdm.dask import TqdmCallback

            with TqdmCallback(desc="qbscale", file=sys.stderr, unit="task", leave=False):
                return list(dask.compute(*outputs, **kwargs))

    def close(self) -> None:
        return None
