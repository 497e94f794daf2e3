"""Work on a Dask cluster (`dask.distributed`): builds and updates whose fetch, decode and
feature extraction run as Dask tasks on the cluster's workers.

`--cluster ADDRESS` (or ``ECHOIMAGE_CLUSTER``) is a scheduler address
(``tcp://HOST:8786``) or ``local:N`` for a `LocalCluster` of N worker processes started for
the run. The catalogue's work is cut into shards of ``cluster_shard_size`` images; each
shard is one task, which reads or fetches its images, extracts their features and, when the
store is a database server the workers reach (PostgreSQL), writes its results to the store
in one transaction itself, so that the client never carries the feature rows. With a SQLite
store (one machine, one writer) the task returns its results and the client writes them.

A task is safe to run twice (a worker that dies after writing is rescheduled by Dask): its
writes replace an image's features and status, they never add rows. Items are recorded as
pending before any task starts, so a run killed at any moment is resumed by running it again,
as a local build is.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from echoimage.errors import EchoImageError

if TYPE_CHECKING:
    from echoimage.config import Settings
    from echoimage.pipeline import BuildSummary, FeatureParams, WorkItem, WorkResult

log = logging.getLogger(__name__)


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


@dataclass
class ShardJob:
    """What a shard task needs besides its items (picklable)."""

    params: FeatureParams
    settings: dict[str, Any]  # the run's settings (model_dump): store, fetch limits
    write: bool  # the task writes its results to the store itself


@dataclass
class ShardOutcome:
    """What a shard task did: its results (when the client writes them), and the summary
    of what it did (counts and failures only when it wrote them itself)."""

    summary: BuildSummary
    results: list[WorkResult] | None = None
    changed: int = 0  # image rows it changed in the store
    items: int = 0


#: per worker process: store engines by URL, opened on first use
_engines: dict[str, Any] = {}
_engines_lock = threading.Lock()


def _worker_engine(settings: Settings) -> Any:
    from echoimage.store.db import open_store

    key = settings.db_url
    with _engines_lock:
        if key not in _engines:
            _engines[key] = open_store(settings)
        return _engines[key]


def index_shard(items: list[WorkItem], job: ShardJob) -> ShardOutcome:
    """Task: read or fetch the shard's images, extract their features, and write them (or
    hand them back). A failing image is a status, never an exception."""
    import cv2

    from echoimage import catalogue as cat
    from echoimage.config import Settings
    from echoimage.pipeline import BuildSummary, process_path, write_results

    cv2.setNumThreads(1)
    settings = Settings(**job.settings)
    out = ShardOutcome(BuildSummary(), items=len(items))
    results = [process_path(w, job.params, settings.max_bytes)
               for w in items if not cat.is_url(w.url)]
    remote = [w for w in items if cat.is_url(w.url)]
    if remote:
        results += asyncio.run(_fetch_and_process(remote, job.params, settings, out.summary))
    out.summary.cpu_seconds = sum(r.cpu_s for r in results)
    if not job.write:
        out.results = results
        return out
    from echoimage.store.db import session_factory

    out.changed = write_results(session_factory(_worker_engine(settings)), results,
                                {w.image_id: w for w in items}, out.summary)
    return out


async def _fetch_and_process(items: list[WorkItem], params: FeatureParams,
                             settings: Settings, summary: BuildSummary) -> list[WorkResult]:
    from echoimage.fetch.client import FetchConfig, Fetcher
    from echoimage.pipeline import fetched_result, process_bytes

    by_id = {w.image_id: w for w in items}
    cfg = FetchConfig(max_bytes=settings.max_bytes, total_timeout=settings.http_timeout,
                      concurrency=settings.http_concurrency, per_host=settings.http_per_host)
    results = []
    async with Fetcher(cfg) as fetcher:
        wanted = [(w.image_id, w.url, w.etag if w.was_indexed else None,
                   w.last_modified if w.was_indexed else None) for w in items]
        async for key, fres in fetcher.fetch_many(wanted):
            summary.net_wait_seconds += fres.wait_s
            item = by_id[key]
            res = fetched_result(item, fres)
            if res is None:
                res = process_bytes(item.image_id, fres.data, params, fres.etag,
                                    fres.last_modified,
                                    item.sha256 if item.was_indexed else None)
            results.append(res)
    return results


def shards_of(work: list[WorkItem], size: int) -> list[list[WorkItem]]:
    """The work cut into shards of at most size items, in id order."""
    return [work[i:i + size] for i in range(0, len(work), max(1, size))]
