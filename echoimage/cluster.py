"""The Dask cluster client (`dask.distributed`), for builds and updates on a cluster
(`echoimage.indexing.dask_backend`) and for the sharded vote search
(`echoimage.search.shards`).

`--cluster ADDRESS` (or ``ECHOIMAGE_CLUSTER``) is a scheduler address
(``tcp://HOST:8786``) or ``local:N`` for a `LocalCluster` of N worker processes started for
the run.
"""

from __future__ import annotations

from typing import Any

from echoimage.errors import EchoImageError


class ClusterError(EchoImageError):
    """The cluster cannot be reached or used."""


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ClusterError("--cluster needs Dask: pip install 'echoimage[cluster]'") from None
    return distributed


class ClusterClient:
    """A client of the cluster at address (``tcp://HOST:PORT``), or of a `LocalCluster` of
    N single-threaded worker processes started for it (``local:N``); `close` (or the end of
    a with block) stops what it started."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        distributed = _distributed()
        self.local = None
        if address.startswith("local:"):
            try:
                n = int(address.split(":", 1)[1])
            except ValueError:
                n = 0
            if n < 1:
                raise ClusterError(f"bad cluster address {address!r}: use local:N, N ≥ 1")
            self.local = distributed.LocalCluster(n_workers=n, threads_per_worker=1,
                                                  processes=True, dashboard_address=None)
            address = self.local.scheduler_address
        try:
            self.client = distributed.Client(address, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            self.close()
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ClusterError(f"cannot reach the Dask scheduler at {address}: {first}"
                               ) from None

    def close(self) -> None:
        """Close the client and stop a local cluster."""
        client = getattr(self, "client", None)
        if client is not None:
            client.close()
        if self.local is not None:
            self.local.close()
            self.local = None

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
