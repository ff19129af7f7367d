"""Dask distributed: an existing scheduler, a LocalCluster, or a Client."""

from __future__ import annotations

import sys
from typing import Any


class DistributedExecutor:
    """Run on a ``distributed`` cluster.

    Parameters
    ----------
    address : ``"tcp://HOST:PORT"`` of a running scheduler, or ``"local:N"``
        to start a LocalCluster of N single-threaded worker processes.
    client : an existing ``distributed.Client`` (left open on close).
    """

    def __init__(self, address: str | None = None, client: Any = None) -> None:
        from distributed import Client, LocalCluster

        self._own = client is None
        self.cluster = None
        if client is None:
            if address is not None and address.startswith("local:"):
                n = int(address.split(":", 1)[1] or 2)
                self.cluster = LocalCluster(n_workers=n, threads_per_worker=1,
                                            processes=True, dashboard_address=":0")
                client = Client(self.cluster)
            else:
                client = Client(address)
        self.client = client

    @property
    def dashboard_link(self) -> str | None:
        return getattr(self.client, "dashboard_link", None)

    def compute(self, outputs: list[Any], progress: bool = False) -> list[Any]:
        from distributed import as_completed

        futures = self.client.compute(outputs, optimize_graph=False)
        if progress:
            from tqdm import tqdm

            if self.dashboard_link:
                print(f"dashboard: {self.dashboard_link}", file=sys.stderr)
            with tqdm(total=len(futures), desc="qbscale", file=sys.stderr, leave=False,
                      unit="output") as bar:
                for _ in as_completed(futures):
                    bar.update()
        return list(self.client.gather(futures))

    def close(self) -> None:
        if self._own:
            self.client.close()
            if self.cluster is not None:
                self.cluster.close()
