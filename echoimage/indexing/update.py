"""`echoimage index update`: the scheduled re-index of the recorded catalogue sources.

New URLs are added; known ones are re-checked cheaply (local files by size and mtime, URLs
with If-None-Match / If-Modified-Since); changed bytes are re-indexed; 404/410 or a URL gone
from its catalogue is marked gone (kept in the store with the date, dropped from the
index); transient failures keep the old entry. A source that cannot be read marks nothing
gone. Images whose stored features were extracted with other parameters (an older version
of EchoImage, other settings) are fetched again unconditionally and extracted again.
"""

from __future__ import annotations

import math
import sys

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from echoimage.config import Settings
from echoimage.errors import CatalogueError
from echoimage.indexing.build import SourceReader, index_work
from echoimage.indexing.runs import BuildSummary, one_runner, recorded_run
from echoimage.indexing.work import FeatureParams, WorkItem
from echoimage.store import repo
from echoimage.store.db import session_factory
from echoimage.store.models import RECHECKED, RETRYABLE
from echoimage.store.repo import KnownImage
from echoimage.types import CatalogueItem, Outcome, SourceListing, Status

#: source kinds no catalogue file lists (images added over the HTTP API): an update
#: re-checks the images they hold and marks none gone for being unlisted (a web page source
#: is scraped again: what it no longer shows is gone)
HAND_LISTED = frozenset({"api"})


def update_index(settings: Settings, store: Engine, reader: SourceReader, progress: bool
                 ) -> BuildSummary:
    """Re-read every recorded source and bring the store and the index up to date."""
    sessions = session_factory(store)
    with one_runner(sessions, store):
        return _update(settings, store, sessions, reader, progress)


def _update(settings: Settings, store: Engine, sessions: sessionmaker[Session],
            reader: SourceReader, progress: bool) -> BuildSummary:
    summary = BuildSummary(kind="update")
    with sessions() as session:
        sources = repo.list_sources(session)
        stale = repo.stale_feature_ids(session, FeatureParams.from_settings(settings).key)
    work: dict[int, WorkItem] = {}
    with recorded_run(sessions, summary, [s.uri for s in sources], 0.0):
        for source in sources:
            uri, kind = source.uri, source.kind
            summary.sources.append(uri)
            if kind in HAND_LISTED:
                # added over the HTTP API: no file lists them; their images are re-checked
                with sessions() as session:
                    items = [CatalogueItem(u, uri) for u in repo.images_of_source(session, uri)]
                listing = SourceListing(uri, kind, items)
            else:
                try:
                    listing = reader.read(uri, kind, source.follow_pages)
                except CatalogueError as exc:
                    summary.counts[Outcome.SOURCE_UNREADABLE] += 1
                    summary.failures.append((uri, Outcome.SOURCE_UNREADABLE, str(exc)))
                    if progress:
                        print(f"warning: {exc}; its images are kept as they are",
                              file=sys.stderr)
                    continue
            items = list(listing.items)
            with sessions.begin() as session:
                sid = repo.source_id(session, listing.uri, listing.kind, listing.follow_pages)
                repo.add_pending(session, items, sid)
                listed = {it.url for it in items}
                known = repo.known_images(session, list(listed))
                unlisted = {k.id: k for url, k in repo.images_of_source(session, uri).items()
                            if url not in listed and k.status != Status.GONE}
                for k in _kept_for_unread_pages(session, unlisted, listing):
                    unlisted.pop(k)
                for k in unlisted.values():
                    repo.save_failure(session, k.id, Status.GONE,
                                      "no longer on the page" if listing.kind == "page"
                                      else "no longer in the catalogue")
                    summary.counts[Status.GONE] += 1
            for k in known.values():
                if k.status == Status.GONE and k.url in listed:
                    # back in the catalogue: fetch it again from scratch
                    work[k.id] = WorkItem(k.id, k.url)
                elif k.status == Status.INDEXED and k.id in stale:
                    # features made with other parameters (an older version, other
                    # settings): fetched unconditionally and extracted again
                    work[k.id] = WorkItem(k.id, k.url, was_indexed=True, reextract=True)
                elif k.status == Status.INDEXED:
                    work[k.id] = WorkItem(k.id, k.url, k.etag, k.last_modified, k.sha256,
                                          was_indexed=True)
                elif k.status in RETRYABLE:
                    work[k.id] = WorkItem(k.id, k.url)
                elif k.status == Status.TOO_LARGE and _allowed_now(k, settings):
                    # refused over a cap since raised: fetched again from scratch
                    work[k.id] = WorkItem(k.id, k.url)
                elif k.status in RECHECKED:  # indexed once its bytes change
                    work[k.id] = WorkItem(k.id, k.url, k.etag, k.last_modified, k.sha256,
                                          recheck=Status(k.status))
                else:
                    summary.counts[Outcome.skipped(k.status)] += 1
        index_work(settings, store, work.values(), summary, progress)
    return summary


def _allowed_now(k: KnownImage, settings: Settings) -> bool:
    """Whether the caps may now allow an image refused as too large: bytes read (a sha256)
    were refused over the pixel cap, for their width x height (unknown, when Pillow's own
    guard refused them or memory ran out: they are read again); bytes not read whole, over
    the byte cap, for their size (at least; unknown, they were refused before it was
    kept and are fetched without validators anyway)."""
    if k.sha256 is not None:
        return (k.pixels() or 0) <= settings.max_pixels
    return (k.nbytes if k.nbytes is not None else math.inf) <= settings.max_bytes


def _kept_for_unread_pages(session: Session, unlisted: dict[int, KnownImage],
                           listing: SourceListing) -> list[int]:
    """Of a web page source's images no longer listed, those last found on a page that
    could not be read this time (a timeout, a 5xx): they are kept, not marked gone."""
    if not listing.unread_pages or not unlisted:
        return []
    found_on = repo.metadata_of(session, list(unlisted))
    return [i for i, meta in found_on.items() if (meta or {}).get("page") in listing.unread_pages]
