"""Pages as a scan reads them: each page fetched politely (robots.txt, the per-site delay,
`scrape.PoliteClient`) and conditionally (its stored ETag and Last-Modified), its images
found as the scraper finds them (`scrape.parse_page`, stylesheets included), and its
same-site links followed breadth first up to a budget per start page.

A page that answers 304, or the same bytes as last time, is not parsed again: what it
showed then (kept in the store) stands. A page that cannot be read is a visit with a
status and a one-line reason; the crawl goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from echoimage.catalogue.scrape import (
    PoliteClient,
    ScrapeFilters,
    _extension,
    _host,
    _is_html,
    _stylesheet_images,
    decode_html,
    normalise,
    page_note,
    parse_page,
)
from echoimage.features.sniff import sniff_format
from echoimage.fetch.client import FetchResult, FetchStatus
from echoimage.store.scans import KnownPage, PageRecord
from echoimage.types import ScanStatus

#: how a crawl learns what the store knows of a page (None: never read)
KnownLookup = Callable[[str], Awaitable[KnownPage | None]]


@dataclass
class Visit:
    """A page (or a list of images) as a scan read it: what the store records of it and
    the image entries it shows (each with a "url"; empty when it could not be read)."""

    record: PageRecord
    target: str
    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def read(self) -> bool:
        """True when the page was read (or found unchanged): its entries are what it shows."""
        return self.record.images is not None


def failed_visit(url: str, kind: str, target: str, status: ScanStatus, reason: str) -> Visit:
    """A page or list that could not be read."""
    return Visit(PageRecord(url, kind, status, reason), target)


def _fetch_failure(url: str, target: str, result: FetchResult | None) -> Visit:
    """The visit of a page whose fetch failed (None: robots.txt disallows it)."""
    if result is None:
        return failed_visit(url, "page", target, ScanStatus.DISALLOWED,
                            "disallowed by robots.txt")
    reason = result.reason or str(result.status)
    if result.http_status and result.status in (FetchStatus.GONE, FetchStatus.HTTP_ERROR) \
            and str(result.http_status) not in reason:
        reason = f"HTTP {result.http_status}: {reason}"
    return failed_visit(url, "page", target, ScanStatus.of_fetch(result.status), reason)


async def _visit(client: PoliteClient, url: str, target: str, known: KnownPage | None,
                 filters: ScrapeFilters, sheets_seen: set[str], notes: list[str]) -> Visit:
    """Read one page (conditionally on what is known of it)."""
    result = await client.get(url, known.etag if known else None,
                              known.last_modified if known else None)
    if result is not None and result.status == FetchStatus.NOT_MODIFIED and known is not None:
        return _unchanged(url, target, known, result.etag, result.last_modified)
    if result is None or not result.ok or result.data is None:
        return _fetch_failure(url, target, result)
    page_url = result.final_url or url
    if not _is_html(result.content_type):
        if sniff_format(result.data[:16]) is not None:  # the target is an image itself
            entries = [{"url": page_url}]
            return Visit(PageRecord(url, "page", ScanStatus.OK, etag=result.etag,
                                    last_modified=result.last_modified, images=entries,
                                    links=[]), target, entries)
        return failed_visit(url, "page", target, ScanStatus.NOT_HTML,
                            f"not an HTML page ({result.content_type or 'no content type'})")
    sha = hashlib.sha256(result.data).hexdigest()
    if known is not None and known.sha256 == sha and known.status in (ScanStatus.OK,
                                                                      ScanStatus.UNCHANGED):
        return _unchanged(url, target, known, result.etag, result.last_modified)
    parsed = parse_page(decode_html(result.data, result.content_type), page_url, filters)
    if note := page_note(page_url, parsed):
        notes.append(note)
    found = [{"url": e["url"], "alt": e.get("alt", "")} for e in parsed.images]
    urls = {e["url"] for e in found}
    sheets = [(s, page_url) for s in parsed.stylesheets]
    unread: list[str] = []  # the page, when one of its stylesheets may answer next time
    for e in await _stylesheet_images(client, sheets, sheets_seen, filters, notes, unread):
        if e["url"] not in urls:
            urls.add(e["url"])
            found.append({"url": e["url"], "alt": ""})
    if unread and known is not None and known.images:  # keep what the unread sheet showed
        for e in known.images:
            if e["url"] not in urls:
                urls.add(e["url"])
                found.append(e)
    return Visit(PageRecord(url, "page", ScanStatus.OK, etag=result.etag,
                            last_modified=result.last_modified, sha256=sha, images=found,
                            links=parsed.links), target, found)


def _unchanged(url: str, target: str, known: KnownPage, etag: str | None,
               last_modified: str | None) -> Visit:
    return Visit(PageRecord(url, "page", ScanStatus.UNCHANGED, etag=etag or known.etag,
                            last_modified=last_modified or known.last_modified,
                            images=known.images, links=known.links), target,
                 list(known.images))


async def crawl(start: str, follow_pages: int, filters: ScrapeFilters, client: PoliteClient,
                known: KnownLookup, notes: list[str]) -> AsyncIterator[Visit]:
    """The visits of start and of up to follow_pages pages of its site linked from it
    (breadth first, each page once), each as soon as it is read."""
    start = start.strip()
    visited = {normalise(start, start) or start}
    hosts = {h} if (h := _host(start)) else set()
    budget = follow_pages
    sheets_seen: set[str] = set()
    level = [start]
    while level:
        async def one(url: str) -> Visit:
            return await _visit(client, url, start, await known(url), filters, sheets_seen,
                                notes)

        tasks = [asyncio.ensure_future(one(url)) for url in level]
        visits: list[Visit] = []
        try:
            for done in asyncio.as_completed(tasks):
                visit = await done
                visits.append(visit)
                yield visit
        finally:
            for t in tasks:
                t.cancel()
        order = {u: i for i, u in enumerate(level)}
        visits.sort(key=lambda v: order[v.record.url])
        level = []
        for visit in visits:
            if not visit.read:
                continue
            if (h := _host(visit.record.url)) is not None:
                hosts.add(h)
            for link in visit.record.links or []:
                if budget <= 0:
                    break
                if _host(link) not in hosts or _extension(link) in filters.link_extensions \
                        or link in visited:
                    continue
                visited.add(link)
                budget -= 1
                level.append(link)
