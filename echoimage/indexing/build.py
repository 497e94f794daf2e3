"""`echoimage index build`: record catalogue sources' items and index them.

Work is resumable: items are recorded as pending before any is processed, each batch of
results is written in one transaction, and a re-run picks up what is still pending or
retryable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from echoimage import catalogue as cat
from echoimage.config import Settings
from echoimage.errors import CatalogueError
from echoimage.indexing.runner import Backend, Runner, run_work
from echoimage.indexing.runs import BuildSummary, recorded_run
from echoimage.indexing.work import WorkItem
from echoimage.sample import ensure_sample
from echoimage.store import repo
from echoimage.store.db import open_store, session_factory
from echoimage.store.models import RETRYABLE, Status
from echoimage.types import CatalogueItem

if TYPE_CHECKING:
    from echoimage.fetch.client import FetcherFactory

#: what a build is given per source: (its uri as the store records it, its kind, items)
Resolved = tuple[str, str, Iterable[CatalogueItem]]


def resolve_sources(settings: Settings, sources: list[str]) -> Iterator[Resolved]:
    """(uri, kind, items) of each source; no source means the bundled sample catalogue."""
    if not sources:
        sources = [str(ensure_sample(settings.data_dir / "sample"))]
    for source in sources:
        if cat.is_url(source):
            yield _remote_source(settings, source)
        else:
            yield cat.read_local_source(source)


def _remote_source(settings: Settings, url: str) -> Resolved:
    """A catalogue file behind a URL, or a single image URL."""
    kind = cat.source_kind(url)
    if kind == "url":
        return url, "url", [CatalogueItem(url, url)]
    from echoimage.fetch.client import FetchConfig, fetch_bytes

    res = fetch_bytes(url, FetchConfig(require_image=False, max_bytes=settings.max_bytes))
    if res.status != "ok" or res.data is None:
        raise CatalogueError(f"cannot fetch catalogue {url}: {res.reason or res.status}")
    return url, kind, list(cat.parse_catalogue(res.data, kind, url, url))


def backend_for(settings: Settings) -> Backend | None:
    """The runner's backend for these settings: the Dask cluster's with ``cluster`` set,
    else None (the runner's own process pool)."""
    if not settings.cluster:
        return None
    from echoimage.indexing.dask_backend import DaskBackend

    return DaskBackend(settings.cluster, settings.cluster_shard_size)


def index_work(settings: Settings, engine: Engine, work: Iterable[WorkItem],
               summary: BuildSummary, progress: bool, fetcher: FetcherFactory | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> None:
    """Process the work items, then bring the index files up to the store's last change."""
    runner = Runner(settings, engine, progress, fetcher, on_progress, backend_for(settings))
    run_work(runner, work, summary)


def build_index(settings: Settings, sources: list[str], progress: bool = True,
                sample: bool = False, fetcher: FetcherFactory | None = None) -> BuildSummary:
    """Index the catalogue sources: new, retryable and removed items (a removed image
    named by a source built again comes back). With sample, or with no source on an empty
    store, the bundled sample catalogue too; no source on a store that holds a catalogue is
    a CatalogueError (it would quietly add the sample photos to it).

    Already-indexed URLs are not fetched again (`index update` re-checks them).
    """
    engine = open_store(settings)
    sessions = session_factory(engine)
    if not sources and not sample:
        with sessions() as session:
            held = sum(repo.status_counts(session).values())
        if held:
            engine.dispose()
            raise CatalogueError(
                f"the store in {settings.data_dir} already holds a catalogue ({held} images):"
                " give the SOURCEs to add, or --sample to add the bundled sample photos")
    if sample:
        sources = [*sources, str(ensure_sample(settings.data_dir / "sample"))]
    return _build(settings, engine, resolve_sources(settings, sources), sources, progress,
                  fetcher)


def index_items(settings: Settings, uri: str, kind: str, items: list[CatalogueItem],
                progress: bool = False, fetcher: FetcherFactory | None = None,
                on_progress: Callable[[int, int], None] | None = None) -> BuildSummary:
    """Record items as a source's (uri, kind) and index them, as `build_index` does for a
    source it reads itself (the HTTP API's way to add images); on_progress(done, total)
    after each image."""
    engine = open_store(settings)
    try:
        return _build(settings, engine, [(uri, kind, items)], [uri], progress, fetcher,
                      on_progress)
    finally:
        engine.dispose()


def _build(settings: Settings, engine: Engine, resolved: Iterable[Resolved],
           sources: list[str], progress: bool, fetcher: FetcherFactory | None,
           on_progress: Callable[[int, int], None] | None = None) -> BuildSummary:
    sessions = session_factory(engine)
    summary = BuildSummary(kind="build")
    with recorded_run(sessions, summary, sources):
        work: dict[int, WorkItem] = {}
        for uri, kind, items in resolved:
            summary.sources.append(uri)
            items = list(items)
            with sessions.begin() as session:
                sid = repo.source_id(session, uri, kind)
                for i in range(0, len(items), 1000):
                    repo.add_pending(session, items[i:i + 1000], sid)
                known = repo.known_images(session, [it.url for it in items])
            for k in known.values():
                if k.status in RETRYABLE or k.status == Status.REMOVED:
                    work[k.id] = WorkItem(k.id, k.url)
                elif k.status == Status.INDEXED:
                    summary.counts["already-indexed"] += 1
                else:
                    summary.counts["known-failure"] += 1
        index_work(settings, engine, work.values(), summary, progress, fetcher, on_progress)
    return summary
