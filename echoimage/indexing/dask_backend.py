"""The Dask backend of the runner: a build's or update's fetch, decode and feature
extraction as Dask tasks on a cluster's workers (`echoimage.cluster`).

The work is cut into shards of ``cluster_shard_size`` images; each shard is one task,
which reads or fetches its images, extracts their features and, when the store is a
database server the workers reach (PostgreSQL), writes its results to the store in one
transaction itself, so that the client never carries the feature rows. With a SQLite store
(one machine, one writer) the task returns its results and the runner writes them.

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
from typing import Any

from echoimage.cluster import ClusterClient
from echoimage.config import Settings
from echoimage.fetch.local import is_url
from echoimage.indexing.runner import Runner
from echoimage.indexing.runs import BuildSummary, work_phase, write_results
from echoimage.indexing.work import (
    FeatureParams,
    WorkItem,
    WorkResult,
    fetched_result,
    process_bytes,
    process_path,
)

log = logging.getLogger(__name__)


class DaskBackend:
    """Processes a runner's work as shard tasks on the Dask cluster at address
    (``tcp://HOST:PORT``, or ``local:N``: see `echoimage.cluster.ClusterClient`)."""

    def __init__(self, address: str, shard_size: int) -> None:
        self.address = address
        self.shard_size = shard_size

    def run(self, runner: Runner, work: list[WorkItem], summary: BuildSummary) -> None:
        """The work as shard tasks; their results (or what they wrote) handed back to the
        runner as they finish."""
        items = {w.image_id: w for w in work}
        write = runner.store.dialect.name != "sqlite"
        job = ShardJob(runner.params, runner.settings.model_dump(mode="json"), write)
        done = 0
        with (ClusterClient(self.address) as cluster,
              work_phase(summary, len(work), runner.progress,
                         f"{summary.kind} (cluster)") as advance):
            from distributed import as_completed

            client = cluster.client
            shards = shards_of(work, self.shard_size)
            log.info("%d images in %d shards on the cluster at %s", len(work), len(shards),
                     client.scheduler.address)
            futures = client.map(index_shard, shards, job=job, pure=False)
            try:
                for fut in as_completed(futures):
                    out = fut.result()
                    summary.merge(out.summary)  # its times; its counts if it wrote
                    if out.results is not None:
                        runner.write(out.results, items, summary)
                    else:
                        runner.changed(out.changed)
                    advance(out.items)
                    done += out.items
                    runner.handled(done, len(work))
            finally:
                client.cancel(futures)


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

    cv2.setNumThreads(1)
    settings = Settings(**job.settings)
    out = ShardOutcome(BuildSummary(), items=len(items))
    results = [process_path(w, job.params, settings.max_bytes)
               for w in items if not is_url(w.url)]
    remote = [w for w in items if is_url(w.url)]
    if remote:
        results += asyncio.run(_fetch_and_process(remote, job.params, settings, out.summary))
    for r in results:
        out.summary.add_cpu(r)
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

    by_id = {w.image_id: w for w in items}
    results = []
    async with Fetcher(FetchConfig.from_settings(settings)) as fetcher:
        wanted = [(w.image_id, w.url, w.etag, w.last_modified) for w in items]
        async for key, fres in fetcher.fetch_many(wanted):
            summary.net_wait_seconds += fres.wait_s
            item = by_id[key]
            res = fetched_result(item, fres)
            if res is None:
                res = process_bytes(item.image_id, fres.data, params, fres.etag,
                                    fres.last_modified,
                                    item.sha256)
            results.append(res)
    return results


def shards_of(work: list[WorkItem], size: int) -> list[list[WorkItem]]:
    """The work cut into shards of at most size items, in id order."""
    return [work[i:i + size] for i in range(0, len(work), max(1, size))]
