"""`echoimage index build`: record catalogue sources' items and index them.

Work is resumable: items are recorded as pending before any is processed, each batch of
results is written in one transaction, and a re-run picks up what is still pending or
retryable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import Engine

from echoimage.config import Settings
from echoimage.errors import CatalogueError
from echoimage.indexing.runner import Backend, Runner, run_work
from echoimage.indexing.runs import BuildSummary, one_runner, recorded_run
from echoimage.indexing.work import WorkItem
from echoimage.store import repo
from echoimage.store.db import session_factory
from echoimage.store.models import RETRYABLE
from echoimage.types import Outcome, SourceListing, Status

if TYPE_CHECKING:
    from echoimage.fetch.client import FetcherFactory


class SourceReader(Protocol):
    """How the write side reads catalogue sources (`echoimage.catalogue.reader`)."""

    def read(self, source: str, kind: str | None = None, follow_pages: int | None = None
             ) -> SourceListing:
        """A source's uri, kind and items (a CatalogueError when it cannot be read); kind:
        as recorded (an update's), follow_pages: the links a web page source follows."""

    def sample(self) -> str:
        """The bundled sample catalogue's source."""


def backend_for(settings: Settings) -> Backend | None:
    """The runner's backend for these settings: the Dask cluster's with ``cluster`` set,
    else None (the runner's own process pool)."""
    if not settings.cluster:
        return None
    from echoimage.indexing.dask_backend import DaskBackend

    return DaskBackend(settings.cluster, settings.cluster_shard_size)


def index_work(settings: Settings, store: Engine, work: Iterable[WorkItem],
               summary: BuildSummary, progress: bool, fetcher: FetcherFactory | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> None:
    """Process the work items, then bring the index files up to the store's last change."""
    runner = Runner(settings, store, progress, fetcher, on_progress, backend_for(settings))
    run_work(runner, work, summary)


def read_sources(reader: SourceReader, sources: list[str], sample: bool,
                 follow_pages: int | None = None) -> list[SourceListing]:
    """Every source read (listings with their items in a list), before anything is
    written or even created: one that cannot be read (or is no catalogue) is a
    CatalogueError, and a build that fails so leaves no data directory and no store. With
    sample (or no source at all), the bundled sample catalogue too; a web page source
    follows follow_pages same-site links."""
    read = []
    for source in sources:
        listing = reader.read(source, follow_pages=follow_pages)
        read.append(replace(listing, items=list(listing.items)))
    if sample or not sources:  # written to the data directory: once the rest is read
        listing = reader.read(reader.sample())
        read.append(replace(listing, items=list(listing.items)))
    return read


def check_no_source(settings: Settings, held: int) -> None:
    """A build with no source adds the sample photos to an empty store only: on one that
    holds a catalogue (held images) it would quietly add them, so it is a CatalogueError."""
    if held:
        raise CatalogueError(
            f"the store in {settings.data_dir} already holds a catalogue ({held} images):"
            " give the SOURCEs to add, or --sample to add the bundled sample photos")


def build_index(settings: Settings, store: Engine, listings: list[SourceListing],
                read_seconds: float, progress: bool, fetcher: FetcherFactory | None = None
                ) -> BuildSummary:
    """Index the sources' listings (from read_sources, which took read_seconds: they are
    part of the run's duration): new, retryable and removed items (a removed image named by
    a source built again comes back).

    Already-indexed URLs are not fetched again (`index update` re-checks them).
    """
    return _build(settings, store, listings, [it.uri for it in listings], read_seconds,
                  progress, fetcher)


def index_items(settings: Settings, store: Engine, listing: SourceListing, progress: bool,
                fetcher: FetcherFactory | None = None,
                on_progress: Callable[[int, int], None] | None = None) -> BuildSummary:
    """Record a listing's items as its source's and index them, as `build_index` does for a
    source it reads itself (the HTTP API's way to add images); on_progress(done, total)
    after each image."""
    return _build(settings, store, [listing], [listing.uri], 0.0, progress, fetcher,
                  on_progress)


def _build(settings: Settings, store: Engine, listings: Iterable[SourceListing],
           sources: list[str], read_seconds: float, progress: bool,
           fetcher: FetcherFactory | None,
           on_progress: Callable[[int, int], None] | None = None) -> BuildSummary:
    sessions = session_factory(store)
    summary = BuildSummary(kind="build")
    # every source is read before anything is recorded (see read_sources)
    read = [(listing, list(listing.items)) for listing in listings]
    with one_runner(sessions, store), recorded_run(sessions, summary, sources, read_seconds):
        work: dict[int, WorkItem] = {}
        for listing, items in read:
            summary.sources.append(listing.uri)
            summary.skipped.update(listing.skipped)
            with sessions.begin() as session:
                sid = repo.source_id(session, listing.uri, listing.kind,
                                     listing.follow_pages)
                for i in range(0, len(items), 1000):
                    repo.add_pending(session, items[i:i + 1000], sid)
                known = repo.known_images(session, [it.url for it in items])
            for k in known.values():
                if k.status in RETRYABLE or k.status == Status.REMOVED:
                    work[k.id] = WorkItem(k.id, k.url)
                elif k.status == Status.INDEXED:
                    summary.counts[Outcome.ALREADY_INDEXED] += 1
                else:
                    summary.counts[Outcome.KNOWN_FAILURE] += 1
        index_work(settings, store, work.values(), summary, progress, fetcher, on_progress)
    return summary
