"""Executors run a plan's lazy outputs.  Pick one with :func:`get_executor`:

* ``"threads"`` (default), ``"processes"``, ``"synchronous"``: dask's local
  schedulers (:mod:`qbscale.executors.local`);
* ``"tcp://host:port"``: an existing ``dask scheduler``; ``"local:N"``: a
  ``LocalCluster`` of N single-threaded worker processes started and torn down
  around the run; or a ``distributed.Client`` object
  (:mod:`qbscale.executors.distributed`, imported only when used).
"""

from __future__ import annotations

from typing import Any, Protocol

from qbscale.errors import ConfigError

#: glibc malloc settings that make zarr chunk reads 2-5x faster.  They act
#: only when set before a process starts: the ``qbscale`` command re-execs
#: itself with them, and a LocalCluster's workers get them through
#: ``distributed.nanny.pre-spawn-environ`` (the nanny would override
#: ``MALLOC_TRIM_THRESHOLD_`` otherwise).
MALLOC_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": "1073741824",
    "MALLOC_TRIM_THRESHOLD_": "17179869184",
}


class Executor(Protocol):
    def compute(self, outputs: list[Any], progress: bool) -> list[Any]: ...

    def close(self) -> None: ...


def get_executor(scheduler: Any = "threads", num_workers: int | None = None) -> Executor:
    """An executor for a scheduler name, address or ``distributed.Client``."""
    if scheduler is None:
        scheduler = "threads"
    if not isinstance(scheduler, str):
        from qbscale.executors.distributed import DistributedExecutor

        return DistributedExecutor(client=scheduler)
    if scheduler in ("threads", "processes", "synchronous", "sync"):
        from qbscale.executors.local import LocalExecutor

        return LocalExecutor(scheduler, num_workers)
    if scheduler.startswith(("tcp://", "tls://", "inproc://", "ucx://")) or \
            scheduler.startswith("local:"):
        from qbscale.executors.distributed import DistributedExecutor

        return DistributedExecutor(address=scheduler)
    raise ConfigError(
        f"unknown scheduler {scheduler!r}: use threads, processes, synchronous, "
        "local:N or tcp://HOST:PORT"
    )
