"""Dask distributed: an existing scheduler, a LocalCluster, or a Client.

Tasks read their own blocks from the store (:mod:`qbscale.storage.stores.sources`), so the
client ships only small task specs and gathers small per-row results, as
they finish (which frees worker memory early).  A worker lost mid-run (killed,
out of memory, preempted) costs only the tasks it held: the scheduler reruns
them elsewhere, and every write a task makes into the store covers whole
chunks, so a rerun rewrites identical bytes.

This module is imported only when a distributed scheduler is asked for.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from distributed.diagnostics.progressbar import ProgressBar

from qbscale.errors import ConfigError
from qbscale.executors import MALLOC_ENV


class DistributedExecutor:
    """Run on a ``distributed`` cluster.

    Parameters
    ----------
    address : ``"tcp://HOST:PORT"`` of a running ``dask scheduler``, or
        ``"local:N"`` to start a LocalCluster of N single-threaded worker
        processes for this run (``"local:"``: one per core).
    client : an existing ``distributed.Client`` (left open on close).
    timeout : seconds to wait for the scheduler to answer.
    """

    def __init__(self, address: str | None = None, client: Any = None,
                 timeout: float = 30) -> None:
        self._own = client is None
        self.cluster = None
        if client is None:
            if address is None:
                raise ConfigError("give a scheduler address or a distributed.Client")
            if address.startswith("local:"):
                self.cluster = start_local_cluster(local_workers(address))
                client = _connect(self.cluster, address, timeout)
            else:
                client = _connect(address, address, timeout)
        self.client = client

    @property
    def threads(self) -> int:
        """Worker threads of the cluster, now."""
        try:
            return max(1, sum(self.client.nthreads().values()))
        except Exception:  # a sizing hint only
            return 1

    @property
    def dashboard_link(self) -> str | None:
        """The scheduler's dashboard, or None when it serves none."""
        try:
            if "dashboard" not in self.client.scheduler_info()["services"]:
                return None
            return str(self.client.dashboard_link)
        except Exception:  # a link is a nicety, never a reason to fail
            return None

    def compute(self, outputs: list[Any], progress: bool = False,
                setup: Sequence[Callable[[], object]] = ()) -> list[Any]:
        """Compute ``outputs`` on the cluster and return their values in order.

        Every function of ``setup`` first runs on every worker (the caller's
        way to drop per-process caches, such as open store handles, that an
        earlier run may have left describing arrays since rewritten).
        """
        from distributed import as_completed

        for func in setup:
            self.client.run(func)
        futures = self.client.compute(outputs, optimize_graph=False)
        position = {f.key: j for j, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        bar = self._progress(futures) if progress else None
        try:
            pending = as_completed(futures, with_results=True)
            futures = []  # the loop below holds the only references: each is freed when read
            for future, value in pending:
                results[position[future.key]] = value
        finally:
            if bar is not None:
                bar.close()
        return results

    def _progress(self, futures: list[Any]) -> TqdmProgress:
        link = self.dashboard_link
        if link:
            print(f"dashboard: {link}", file=sys.stderr)
        n_workers = len(self.client.scheduler_info()["workers"])
        if not n_workers:
            print(f"waiting for workers to join {self.client.scheduler.address}", file=sys.stderr)
        bar = TqdmProgress(futures, self.client.scheduler.address)
        self.client.loop.add_callback(bar.follow)
        return bar

    def close(self) -> None:
        if self._own:
            self.client.close()
            if self.cluster is not None:
                self.cluster.close()


class TqdmProgress(ProgressBar):
    """A tqdm bar on stderr over every task the outputs need, fed by the scheduler.

    It counts tasks rerun after a lost worker again, so it can step back.
    """

    INTERVAL = 0.1  # seconds between updates

    def __init__(self, futures: list[Any], scheduler: str) -> None:
        from tqdm import tqdm

        super().__init__(futures, scheduler, interval=self.INTERVAL)
        self.bar = tqdm(total=None, desc="qbscale", file=sys.stderr, unit="task", leave=False)
        self.stopped = threading.Event()

    async def follow(self) -> None:
        """Listen to the scheduler until the outputs are done (errors only end the bar)."""
        try:
            await self.listen()
        except Exception:  # the bar is a nicety: the computation reports its own errors
            return
        finally:
            self.stopped.set()

    def _draw_bar(self, remaining: int = 0, all: int = 0, **kwargs: Any) -> None:
        self.bar.total = all
        self.bar.n = all - remaining
        self.bar.refresh()

    def _draw_stop(self, **kwargs: Any) -> None:
        self._draw_bar(**kwargs)

    def close(self) -> None:
        """Fill and remove the bar, once the scheduler's feed has ended."""
        # a scheduler closed mid-feed logs a cancelled handler as an error
        if self.stopped.wait(5 * self.INTERVAL):
            time.sleep(1.5 * self.INTERVAL)
        if self.bar.total:
            self.bar.n = self.bar.total
            self.bar.refresh()
        self.bar.close()


def local_workers(address: str) -> int:
    """N of ``"local:N"`` (``"local:"``: one worker per core)."""
    text = address.split(":", 1)[1]
    try:
        n = int(text) if text else (os.cpu_count() or 1)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"local:N needs N >= 1 worker processes, got {address!r}")
    return n


def start_local_cluster(n_workers: int) -> Any:
    """A LocalCluster of single-threaded worker processes with fast malloc settings.

    Its scheduler, nannies and workers log only what is critical: a task that
    fails (a damaged chunk, bad data) is raised in this process as the one
    error it is, so the workers' "Compute Failed" reports and tracebacks, and
    their chatter while the cluster closes, would only come before it on stderr
    (as the ``processes`` scheduler prints nothing of its own)."""
    import logging

    import dask
    from distributed import LocalCluster

    key = "distributed.nanny.pre-spawn-environ"
    environ = {**dask.config.get(key, {}), **MALLOC_ENV}
    with dask.config.set({key: environ}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            dashboard_address="127.0.0.1:0", host="127.0.0.1",
                            silence_logs=logging.CRITICAL)


def _connect(target: Any, address: str, timeout: float) -> Any:
    from distributed import Client

    try:
        return Client(target, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"no dask scheduler answered at {address} within {timeout:g} s: {exc}"
        ) from exc
