"""Executors run a plan's lazy outputs.  Pick one with :func:`get_executor`:

* ``"threads"`` (default), ``"processes"``, ``"synchronous"``: dask's local
  schedulers (:mod:`qbscale.executors.local`);
* ``"tcp://host:port"``: an existing ``dask scheduler``; ``"local:N"``: a
  ``LocalCluster`` of N single-threaded worker processes started and torn down
  around the run; or a ``distributed.Client`` object
  (:mod:`qbscale.executors.distributed`, imported only when used).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from qbscale.errors import ConfigError

#: glibc malloc settings that make zarr chunk reads 2-5x faster.  The
#: ``qbscale`` command applies them to itself with :func:`tune_malloc`
#: (``mallopt``) before it computes, and a LocalCluster's workers get them
#: as environment variables through ``distributed.nanny.pre-spawn-environ``
#: (the nanny would override ``MALLOC_TRIM_THRESHOLD_`` otherwise).
MALLOC_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": "1073741824",
    "MALLOC_TRIM_THRESHOLD_": "17179869184",
}


#: ``mallopt(3)`` parameter numbers of the settings in :data:`MALLOC_ENV` (glibc malloc.h)
_MALLOPT_PARAMS = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_MMAP_THRESHOLD_": -3,
                   "MALLOC_ARENA_MAX": -8}


def tune_malloc() -> bool:
    """Apply :data:`MALLOC_ENV` to this process through glibc's ``mallopt(3)``.

    Call it before anything big is allocated (the ``qbscale`` command does, first
    thing).  ``mallopt`` takes an ``int``: larger values are capped at
    ``2**31 - 1`` (the trim threshold becomes 2 GiB instead of 16 GiB).

    Returns
    -------
    bool
        True when every setting took; False off glibc (nothing to tune) or when
        glibc refused one.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all([bool(mallopt(_MALLOPT_PARAMS[name], min(int(value), 2**31 - 1)))
                for name, value in MALLOC_ENV.items()])


class Executor(Protocol):
    @property
    def threads(self) -> int:
        """Tasks that can run at once."""
        ...

    def compute(self, outputs: list[Any], progress: bool,
                setup: Sequence[Callable[[], object]] = ()) -> list[Any]: ...

    def close(self) -> None: ...


#: address schemes of a running dask scheduler (workers may be on other hosts)
REMOTE_SCHEMES = ("tcp://", "tls://", "inproc://", "ucx://")


def is_remote(scheduler: Any) -> bool:
    """True for the address of a running dask scheduler (``tcp://HOST:PORT``, ...)."""
    return isinstance(scheduler, str) and scheduler.startswith(REMOTE_SCHEMES)


def get_executor(scheduler: Any = "threads", num_workers: int | None = None) -> Executor:
    """An executor for a scheduler name, address or ``distributed.Client``."""
    if num_workers is not None and (type(num_workers) is bool or
                                    not isinstance(num_workers, numbers.Integral) or
                                    num_workers < 1):
        raise ConfigError(f"num_workers must be an integer >= 1 (or None), got {num_workers!r}")
    if scheduler is None:
        scheduler = "threads"
    if not isinstance(scheduler, str):
        from qbscale.executors.distributed import DistributedExecutor

        return DistributedExecutor(client=scheduler)
    if scheduler in ("threads", "processes", "synchronous", "sync"):
        from qbscale.executors.local import LocalExecutor

        return LocalExecutor(scheduler, num_workers)
    if is_remote(scheduler) or scheduler.startswith("local:"):
        from qbscale.executors.distributed import DistributedExecutor

        return DistributedExecutor(address=scheduler)
    raise ConfigError(
        f"unknown scheduler {scheduler!r}: use threads, processes, synchronous, "
        "local:N or tcp://HOST:PORT"
    )
