"""Scan other people's pages for copies of the catalogue's images, and remember what was
found where and since when.

A scan reads its targets (page URLs, crawled with `crawl`; lists of image URLs or paths,
`images.json` files and folders, read with `sources`), fetches every image they show
through the hardened fetcher (the SSRF guard of `fetch.ssrf`, size caps, redirects checked
one by one, robots.txt, a per-host limit and pacing) and compares each with the catalogue
through one search engine. Every copy is a finding: the page, the image, the catalogue
image, verdict, score, region and transform, first and last seen (`store.scans`).

It is a pipeline: an asyncio loop reads pages and fetches images (each page once, each
image URL once per scan) and feeds a bounded queue that `scan_threads` threads drain,
comparing images with the catalogue, so fetching overlaps searching; results are written
in batches by one store thread. What did not change since the last scan is not compared
again: pages and images are fetched with their stored ETag and Last-Modified (a 304 is
enough), bytes that hash as before are not decoded, and local files are checked by size and
modification time, unless the catalogue changed since (new catalogue images may match).
Every page or image that cannot be read is recorded with a status (`types.ScanStatus`) and
a one-line reason, and the scan goes on. A scan that is stopped (Ctrl-C, kill -9) keeps
what it recorded; run again, it goes on with what it did not reach and reports the findings
it had not reported. A new finding handed out as it is found (on_finding: the command line
prints it) is recorded as reported right after, so it is not new for the next scan even if
this one is stopped; killed in between, it is reported again (never lost). With a webhook a
finding is reported once the webhook took it, at the end of the scan. Findings are unique
per (page, image, catalogue image).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import cv2
import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from echoimage.aio import run_interruptibly
from echoimage.catalogue.crawl import Visit, crawl, failed_visit
from echoimage.catalogue.notify import NO_SECRET, Webhook
from echoimage.catalogue.scrape import PAGE_MAX_BYTES, PoliteClient, ScrapeFilters
from echoimage.catalogue.sources import (
    FolderListing,
    parse_catalogue,
    read_local_source,
    source_kind,
)
from echoimage.config import Settings
from echoimage.errors import (
    CatalogueError,
    DecodeError,
    EchoImageError,
    ImageTooLargeError,
    NotAnImageError,
    ScanError,
)
from echoimage.fetch.client import FetchConfig, Fetcher, FetchStatus
from echoimage.fetch.local import LocalStatus, file_marker, is_url, read_local
from echoimage.fetch.ssrf import GuardedFetcher, UrlPolicy
from echoimage.indexing.runs import run_end
from echoimage.search.engine import SearchEngine
from echoimage.store import repo, scans
from echoimage.store.db import session_factory
from echoimage.store.scans import CopyRecord, FindingInfo, ImageRecord, KnownImage
from echoimage.types import DecodedImage, Match, RunStatus, ScanStatus

log = logging.getLogger(__name__)

T = TypeVar("T")

#: keypoint pairs kept per copy (for the findings page's match picture)
MAX_PAIRS = 100
#: seconds between two writes of the results gathered so far
FLUSH_SECONDS = 1.0
#: webhook deliveries at once
DELIVERIES = 4


@dataclass(frozen=True)
class ScanOptions:
    """How a scan runs: pages followed per start page, whether every finding seen is
    reported (not only the new ones), a webhook for the new ones, the watch it runs for,
    which image URLs pages count (the scraper's filters)."""

    follow_pages: int = 0
    report_all: bool = False
    notify: str | None = None
    watch: str | None = None
    filters: ScrapeFilters = field(default_factory=ScrapeFilters)


@dataclass(frozen=True)
class ItemFailure:
    """A page, list or image a scan could not read: what, its status, why."""

    kind: str  # page, list or image
    url: str
    status: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"kind": self.kind, "url": self.url, "status": self.status,
                "reason": self.reason}


@dataclass
class ScanReport:
    """What a scan did and found: pages and images by status, the findings it reports
    (new ones; every one seen with report_all) and those it found gone, what it could not
    read, notes on its pages (robots.txt's delay, a stylesheet skipped, image references
    passed over for their extension), and how fast it went."""

    scan_id: int = 0
    targets: list[str] = field(default_factory=list)
    watch: str | None = None
    status: RunStatus = RunStatus.RUNNING
    reason: str | None = None
    pages: Counter[str] = field(default_factory=Counter)
    images: Counter[str] = field(default_factory=Counter)
    findings: list[FindingInfo] = field(default_factory=list)
    gone: list[FindingInfo] = field(default_factory=list)
    failures: list[ItemFailure] = field(default_factory=list)
    seconds: float = 0.0
    compared: int = 0  # images compared with the catalogue
    compare_seconds: float = 0.0  # time the comparing threads spent, summed
    seen: int = 0  # findings seen (new or not)
    delivered: int = 0  # new findings the webhook took
    undelivered: list[ItemFailure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def new(self) -> list[FindingInfo]:
        """The findings no scan had reported before."""
        return [f for f in self.findings if f.new]

    @property
    def images_per_s(self) -> float:
        """Images handled (compared, found unchanged or failed) per second of the scan."""
        return sum(self.images.values()) / self.seconds if self.seconds else 0.0

    @property
    def ok(self) -> bool:
        """True unless the scan failed as a whole."""
        return self.status == RunStatus.OK

    def counts(self) -> dict[str, int]:
        """The scan's counts as the store records them ("pages ok", "images unchanged"...)."""
        out = {f"pages {k}": v for k, v in self.pages.items()}
        out.update({f"images {k}": v for k, v in self.images.items()})
        out.update({"findings new": len(self.new), "findings seen": self.seen,
                    "findings gone": len(self.gone)})
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the findings themselves are listed apart)."""
        return {"scan": self.scan_id, "targets": self.targets, "watch": self.watch,
                "status": str(self.status), "reason": self.reason,
                "pages": dict(self.pages), "images": dict(self.images),
                "new": len(self.new), "reported": len(self.findings), "seen": self.seen,
                "gone": [f.to_dict() for f in self.gone],
                "seconds": round(self.seconds, 3), "compared": self.compared,
                "images_per_s": round(self.images_per_s, 2),
                "delivered": self.delivered,
                "undelivered": [f.to_dict() for f in self.undelivered],
                "failures": [f.to_dict() for f in self.failures], "notes": self.notes}


@dataclass(frozen=True)
class _Fetched:
    """An image's bytes, to compare with the catalogue."""

    url: str
    data: bytes
    sha256: str
    etag: str | None
    last_modified: str | None


@dataclass
class _Image:
    """An image URL while a scan handles it: the pages it is on, and whether its result
    has gone to the store (after which new pages are linked apart)."""

    pages: set[int] = field(default_factory=set)
    written: bool = False


def match_record(m: Match) -> CopyRecord:
    """A copy as the store keeps it: the match without the catalogue's metadata (read
    from the catalogue when shown), and up to MAX_PAIRS of its keypoint pairs."""
    match = m.to_dict()
    match.pop("metadata", None)
    pairs = None
    if m.pairs is not None and len(m.pairs):
        p = np.asarray(m.pairs, np.float32).reshape(-1, 4)
        if len(p) > MAX_PAIRS:
            p = p[np.linspace(0, len(p) - 1, MAX_PAIRS).round().astype(int)]
        pairs = p.tobytes()
    return CopyRecord(m.id, str(m.verdict), float(m.score), match, pairs)


def picture_of(img: DecodedImage, size: int, quality: int) -> tuple[bytes, float]:
    """A JPEG of a decoded image (its working gray image in its colours, longest side at
    most size) and its scale (picture pixels per working-image pixel)."""
    gray = img.gray
    f = min(1.0, size / max(gray.shape))
    small = cv2.resize(gray, (max(1, round(gray.shape[1] * f)), max(1, round(gray.shape[0] * f))),
                       interpolation=cv2.INTER_AREA) if f < 1 else gray
    if img.colour is not None:
        ycc = cv2.cvtColor(cv2.resize(img.colour, small.shape[::-1],
                                      interpolation=cv2.INTER_LINEAR), cv2.COLOR_RGB2YCrCb)
        ycc[:, :, 0] = small
        small = cv2.cvtColor(ycc, cv2.COLOR_YCrCb2BGR)
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 image
        raise ValueError("the picture could not be encoded")
    return buf.tobytes(), small.shape[1] / gray.shape[1]


def _decode_status(exc: DecodeError) -> ScanStatus:
    if isinstance(exc, NotAnImageError):
        return ScanStatus.NOT_AN_IMAGE
    if isinstance(exc, ImageTooLargeError):
        return ScanStatus.TOO_LARGE
    return ScanStatus.DECODE_ERROR


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]


class Scanner:
    """Runs scans of one catalogue: its store, its search engine (loaded once, shared by
    every scan this scanner runs) and the URL policy its fetches go through."""

    def __init__(self, settings: Settings, store: Engine, engine: SearchEngine,
                 policy: UrlPolicy | None = None) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.policy = policy
        self.sessions = session_factory(store)

    def scan(self, targets: list[str], options: ScanOptions,
             on_finding: Callable[[FindingInfo], None] | None = None,
             on_progress: Callable[[int, int], None] | None = None) -> ScanReport:
        """Scan targets (page URLs, lists, images.json files, folders); see the module.
        on_finding(finding) is called for each finding reported as it is recorded (a new
        one is then recorded as reported: see the module), on_progress(images done, images
        found) as images are handled. The scan is recorded in the store (running, then ok,
        failed or interrupted)."""
        if not targets:
            raise ScanError("nothing to scan: give a page URL, a list of images, an "
                            "images.json or a folder")
        if self.engine.size == 0:
            raise ScanError("the catalogue has no indexed images: run `echoimage index "
                            "build` first")
        secret = self.settings.webhook_secret
        if options.notify and secret is None:
            raise ScanError(NO_SECRET)
        report = ScanReport(targets=list(targets), watch=options.watch)
        with self.sessions.begin() as session:
            report.scan_id = scans.start_scan(session, list(targets), options.watch)
            watch_id = scans.watch_id(session, options.watch) if options.watch else None
        t0 = time.perf_counter()
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # each comparing thread is one core's worth
        try:
            run = _Run(self, report, options, watch_id, on_finding, on_progress)
            run_interruptibly(run.run())
        except BaseException as exc:
            report.status, report.reason = run_end(exc)
            report.seconds = time.perf_counter() - t0
            self._finish(report)
            raise
        finally:
            cv2.setNumThreads(threads)
        report.seconds = time.perf_counter() - t0
        read = sum(n for k, n in report.pages.items()
                   if k in (ScanStatus.OK, ScanStatus.UNCHANGED))
        if not read:
            report.status = RunStatus.FAILED
            first = report.failures[0] if report.failures else None
            report.reason = "no target could be read" + (
                f" ({first.url}: {first.status}: {first.reason})" if first else "")
        else:
            report.status = RunStatus.OK
        self._finish(report)
        return report

    def _finish(self, report: ScanReport) -> None:
        try:
            with self.sessions.begin() as session:
                scans.finish_scan(session, report.scan_id, report.status, report.counts(),
                                  report.reason)
        except EchoImageError as exc:  # the store itself failed: the scan's error stands
            log.warning("could not record the end of scan %d: %s", report.scan_id, exc)


class _Run:
    """One scan while it runs, on one event loop."""

    def __init__(self, scanner: Scanner, report: ScanReport, options: ScanOptions,
                 watch_id: int | None, on_finding: Callable[[FindingInfo], None] | None,
                 on_progress: Callable[[int, int], None] | None) -> None:
        s = scanner.settings
        self.scanner = scanner
        self.settings = s
        self.report = report
        self.options = options
        self.watch_id = watch_id
        self.on_finding = on_finding
        self.on_progress = on_progress
        self.seq = scanner.engine.live.current().seq  # the catalogue compared with
        self.k = s.default_k
        self.threads = s.scan_threads or os.cpu_count() or 1
        self.images: dict[str, _Image] = {}
        self.pending: list[ImageRecord] = []
        self.links: list[tuple[int, str]] = []  # (page id, image url) of written images
        self.emitted: set[int] = set()
        self.reported: set[int] = set()  # new findings shown and recorded as reported
        self.seen: set[int] = set()
        self.done = 0
        self.notes = report.notes
        self.next_start: dict[str, float] = {}
        self.last_flush = time.monotonic()

    # --- the store, in one thread ------------------------------------------------------------

    async def _db(self, fn: Callable[[Session], T], surely: bool = False) -> T:
        """fn(session) in the store thread, in a transaction of its own; surely: done even
        when the scan is cancelled (Ctrl-C) before the store thread comes to it (the end
        of the run waits for the store thread)."""
        def call() -> T:
            with self.scanner.sessions.begin() as session:
                return fn(session)

        done = asyncio.get_running_loop().run_in_executor(self.db, call)
        return await (asyncio.shield(done) if surely else done)

    # --- the run ---------------------------------------------------------------------------------

    async def run(self) -> None:
        s = self.settings
        self.db = ThreadPoolExecutor(1, thread_name_prefix="echoimage-scan-store")
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="echoimage-scan")
        self.queue: asyncio.Queue[_Fetched | None] = asyncio.Queue(s.scan_queue)
        self.slots = asyncio.Semaphore(s.http_concurrency)
        self.flushing = asyncio.Lock()
        base = FetchConfig.from_settings(s)
        page_config = FetchConfig.from_settings(
            s, require_image=False, max_bytes=min(s.max_bytes, PAGE_MAX_BYTES))
        try:
            async with self._fetcher(page_config) as pages, self._fetcher(base) as images:
                self.fetcher = images
                self.client = PoliteClient(pages, s.scrape_delay, page_config.user_agent,
                                           self.notes)
                async with asyncio.TaskGroup() as tg:
                    for _ in range(self.threads):
                        tg.create_task(self._comparer())
                    tg.create_task(self._produce())
                await self._flush()
                await self._deliver()
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.db.shutdown(wait=True)

    def _fetcher(self, config: FetchConfig) -> Fetcher:
        policy = self.scanner.policy
        return GuardedFetcher(config, policy) if policy is not None else Fetcher(config)

    async def _produce(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            for target in self.report.targets:
                async for visit in self._visits(target):
                    tasks += await self._visit(visit)
            await asyncio.gather(*tasks)
        finally:
            for _ in range(self.threads):
                await self.queue.put(None)

    # --- targets ---------------------------------------------------------------------------------

    async def _visits(self, target: str) -> AsyncIterator[Visit]:
        """The pages (or lists) a target stands for, as they are read."""
        target = target.strip()
        if is_url(target):
            kind = source_kind(target)
            if kind in ("json", "jsonl", "csv", "text"):
                for visit in await self._remote_list(target, kind):
                    yield visit
                return

            async def known(url: str) -> scans.KnownPage | None:
                return await self._db(lambda s: scans.known_page(s, url))

            async for visit in crawl(target, self.options.follow_pages, self.options.filters,
                                     self.client, known, self.notes):
                yield visit
            return
        try:
            uri, kind, items = await asyncio.to_thread(read_local_source, target)
            if isinstance(items, FolderListing):
                entries = await asyncio.to_thread(lambda: [{"url": i.url} for i in items])
                yield self._list_visit(uri, "folder", target, entries)
                return
            for visit in self._listed(uri, target, [{"url": i.url, **i.metadata}
                                                    for i in items]):
                yield visit
        except (CatalogueError, OSError) as exc:
            yield failed_visit(target, "list", target, ScanStatus.UNREADABLE,
                               _one_line(str(exc)))

    async def _remote_list(self, url: str, kind: str) -> list[Visit]:
        """A list of images (or an images.json) behind a URL, fetched through the page
        fetcher (robots.txt, the delay, the SSRF guard)."""
        result = await self.client.get(url)
        if result is None or not result.ok or result.data is None:
            why = "disallowed by robots.txt" if result is None else (result.reason or
                                                                     str(result.status))
            status = ScanStatus.DISALLOWED if result is None else \
                ScanStatus.of_fetch(result.status)
            return [failed_visit(url, "list", url, status, why)]
        try:
            items = list(parse_catalogue(result.data, kind, url, url))
        except CatalogueError as exc:
            return [failed_visit(url, "list", url, ScanStatus.UNREADABLE, str(exc))]
        return self._listed(url, url, [{"url": i.url, **i.metadata} for i in items])

    def _listed(self, uri: str, target: str, entries: list[dict[str, Any]]) -> list[Visit]:
        """The visits of a list: one per page its entries name (an images.json the scraper
        wrote says on which page each image is), the list itself for the others."""
        by_page: dict[str, list[dict[str, Any]]] = {}
        for e in entries:
            page = e.get("page")
            key = page if isinstance(page, str) and is_url(page) else uri
            by_page.setdefault(key, []).append(e)
        if uri not in by_page:
            by_page = {uri: [], **by_page}
        return [self._list_visit(page, "list", target, listed)
                for page, listed in by_page.items()]

    @staticmethod
    def _list_visit(uri: str, kind: str, target: str, entries: list[dict[str, Any]]) -> Visit:
        seen: set[str] = set()
        unique = [e for e in entries if not (e["url"] in seen or seen.add(e["url"]))]
        return Visit(scans.PageRecord(uri, kind, ScanStatus.OK, images=unique, links=[]),
                     target, unique)

    # --- pages -------------------------------------------------------------------------------

    async def _visit(self, visit: Visit) -> list[asyncio.Task[None]]:
        """Record a visit, and start on the images it shows that this scan has not met."""
        rec = visit.record
        self.report.pages[rec.status] += 1
        if not visit.read:
            self.report.failures.append(ItemFailure(rec.kind, rec.url, rec.status,
                                                    rec.reason or str(rec.status)))
        when = repo.now()
        page_id, gone = await self._db(
            lambda s: scans.save_page(s, rec, self.report.scan_id, self.watch_id, when))
        await self._gone(gone)
        fresh: list[str] = []
        for entry in visit.entries:
            url = entry["url"]
            image = self.images.get(url)
            if image is None:
                self.images[url] = _Image({page_id})
                fresh.append(url)
            elif image.written:
                self.links.append((page_id, url))
            else:
                image.pages.add(page_id)
        if not fresh:
            return []
        known = await self._db(lambda s: scans.known_images(s, fresh))
        self._progress()
        return [asyncio.create_task(self._image(url, known.get(url))) for url in fresh]

    # --- images ------------------------------------------------------------------------------

    async def _image(self, url: str, known: KnownImage | None) -> None:
        """Fetch one image (conditionally when it was compared with this catalogue
        already), then queue it for comparing, or record why not."""
        async with self.slots:
            current = known is not None and known.queried_seq == self.seq and \
                known.status in (ScanStatus.OK, ScanStatus.UNCHANGED)
            got = await (self._fetch(url, known if current else None) if is_url(url)
                         else self._read(url, known if current else None))
            if isinstance(got, _Fetched):
                await self.queue.put(got)
            else:
                await self._record(got)

    async def _fetch(self, url: str, known: KnownImage | None) -> ImageRecord | _Fetched:
        if not await self.client.allows(url):
            return ImageRecord(url, ScanStatus.DISALLOWED, "disallowed by robots.txt")
        await self._pace(url)
        res = await self.fetcher.fetch(url, known.etag if known else None,
                                       known.last_modified if known else None)
        if res.status == FetchStatus.NOT_MODIFIED:
            return ImageRecord(url, ScanStatus.UNCHANGED, etag=res.etag,
                               last_modified=res.last_modified)
        if not res.ok or res.data is None:
            return ImageRecord(url, ScanStatus.of_fetch(res.status), res.reason or res.status)
        sha = hashlib.sha256(res.data).hexdigest()
        if known is not None and known.sha256 == sha:
            return ImageRecord(url, ScanStatus.UNCHANGED, etag=res.etag,
                               last_modified=res.last_modified, sha256=sha)
        return _Fetched(url, res.data, sha, res.etag, res.last_modified)

    async def _read(self, url: str, known: KnownImage | None) -> ImageRecord | _Fetched:
        """A local image: unchanged when its size and modification time are (its marker,
        kept as its ETag) or its bytes hash as before."""
        marker = await asyncio.to_thread(file_marker, url)
        if marker is None:
            return ImageRecord(url, ScanStatus.GONE, "no such file")
        if known is not None and known.etag == marker:
            return ImageRecord(url, ScanStatus.UNCHANGED, etag=marker)
        got = await asyncio.to_thread(read_local, url, self.settings.max_bytes)
        if got.data is None:
            status = {LocalStatus.NOT_FOUND: ScanStatus.GONE,
                      LocalStatus.TOO_LARGE: ScanStatus.TOO_LARGE}.get(
                got.status, ScanStatus.UNREADABLE)
            return ImageRecord(url, status, got.reason or str(got.status))
        sha = hashlib.sha256(got.data).hexdigest()
        if known is not None and known.sha256 == sha:
            return ImageRecord(url, ScanStatus.UNCHANGED, etag=marker, sha256=sha)
        return _Fetched(url, got.data, sha, marker, None)

    async def _pace(self, url: str) -> None:
        """Space the starts of image requests to one host by scan_image_delay seconds."""
        delay = self.settings.scan_image_delay
        if delay <= 0:
            return
        host = urlsplit(url).netloc.lower()
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self.next_start.get(host, now))
        self.next_start[host] = start + delay
        if start > now:
            await asyncio.sleep(start - now)

    async def _comparer(self) -> None:
        """Compare queued images with the catalogue in the thread pool until told to stop."""
        loop = asyncio.get_running_loop()
        while (item := await self.queue.get()) is not None:
            t0 = time.perf_counter()
            record = await loop.run_in_executor(self.pool, self._compare, item)
            self.report.compare_seconds += time.perf_counter() - t0
            await self._record(record)

    def _compare(self, f: _Fetched) -> ImageRecord:
        """Compare an image with the catalogue (in a pool thread)."""
        s = self.settings
        base = {"etag": f.etag, "last_modified": f.last_modified, "sha256": f.sha256,
                "queried_seq": self.seq}
        try:
            # only the copies are kept: the nearest images are not scored to be shown
            res = self.scanner.engine.query_bytes(f.data, self.k, copies_only=True)
        except DecodeError as exc:
            return ImageRecord(f.url, _decode_status(exc), _one_line(str(exc)), copies=[],
                               **base)
        copies = [match_record(m) for m in res.copies]
        picture, scale = None, None
        if copies and res.image is not None:
            picture, scale = picture_of(res.image, s.scan_picture_size, s.scan_picture_quality)
        return ImageRecord(f.url, ScanStatus.OK, width=res.width, height=res.height,
                           copies=copies, picture=picture, picture_scale=scale, **base)

    # --- results -----------------------------------------------------------------------------

    async def _record(self, record: ImageRecord) -> None:
        self.report.images[record.status] += 1
        if record.copies is not None and record.status != ScanStatus.UNCHANGED:
            self.report.compared += 1
        if record.status not in (ScanStatus.OK, ScanStatus.UNCHANGED):
            self.report.failures.append(ItemFailure("image", record.url, record.status,
                                                    record.reason or str(record.status)))
        self.pending.append(record)
        self.done += 1
        self._progress()
        if len(self.pending) >= self.settings.batch_size or \
                time.monotonic() - self.last_flush >= FLUSH_SECONDS:
            await self._flush()

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.done, len(self.images))

    async def _flush(self) -> None:
        """Write the results gathered so far in one transaction, and report the findings
        they show."""
        async with self.flushing:
            records, self.pending = self.pending, []
            links, self.links = self.links, []
            self.last_flush = time.monotonic()
            if not records and not links:
                return
            placements: list[tuple[int, str]] = list(links)
            for r in records:
                image = self.images.get(r.url)
                if image is None:
                    continue
                image.written = True
                if r.status in (ScanStatus.OK, ScanStatus.UNCHANGED):
                    placements += [(p, r.url) for p in sorted(image.pages)]
            scan_id, when = self.report.scan_id, repo.now()

            def write(session: Session) -> tuple[list[int], list[FindingInfo], list[FindingInfo]]:
                ids, gone = scans.save_images(session, records, when) if records else ({}, [])
                missing = sorted({u for _, u in placements if u not in ids})
                if missing:
                    ids.update({u: k.id for u, k in scans.known_images(session, missing).items()})
                seen = scans.link_findings(
                    session, [(p, ids[u]) for p, u in placements if u in ids], scan_id, when)
                return (seen, scans.findings_by_id(session, seen),
                        scans.findings_by_id(session, gone))

            seen, infos, gone = await self._db(write)
        self.seen.update(seen)
        self.report.seen = len(self.seen)
        await self._gone_infos(gone)
        shown: list[int] = []
        for info in infos:
            if info.id in self.emitted or not (info.new or self.options.report_all):
                continue
            self.emitted.add(info.id)
            self.report.findings.append(info)
            if self.on_finding is not None:
                self.on_finding(info)
                if info.new:
                    shown.append(info.id)
        if shown and not self.options.notify:
            # shown as they are found: reported now, so that a scan stopped before its end
            # (Ctrl-C, kill -9) does not show them as new again; with a webhook a finding
            # is reported once the webhook took it (_deliver)
            self.reported.update(shown)
            when = repo.now()
            await self._db(lambda s: scans.mark_reported(s, shown, when), surely=True)

    async def _gone(self, ids: list[int]) -> None:
        if ids:
            await self._gone_infos(await self._db(lambda s: scans.findings_by_id(s, ids)))

    async def _gone_infos(self, infos: Iterable[FindingInfo]) -> None:
        self.report.gone += infos

    # --- the end: webhook deliveries, and the findings marked reported -------------------------

    async def _deliver(self) -> None:
        new = [f.id for f in self.report.findings if f.new]
        if not new:
            return
        delivered = new
        notify = self.options.notify
        if notify:
            s = self.settings
            assert s.webhook_secret is not None
            hook = Webhook(notify, s.webhook_secret.get_secret_value(), s.user_agent,
                           s.webhook_retries, s.webhook_timeout, self.scanner.policy)
            slots = asyncio.Semaphore(DELIVERIES)
            by_id = {f.id: f for f in self.report.findings}

            async def send(i: int) -> bool:
                async with slots:
                    payload = {"event": "finding", "scan": self.report.scan_id,
                               **by_id[i].to_dict()}
                    got = await hook.deliver(payload, str(i))
                if not got.ok:
                    self.report.undelivered.append(ItemFailure(
                        "webhook", notify, "undelivered",
                        f"finding {i}: {got.reason or 'failed'}"))
                return got.ok

            async with hook:
                oks = await asyncio.gather(*(send(i) for i in new))
            delivered = [i for i, ok in zip(new, oks, strict=True) if ok]
            self.report.delivered = len(delivered)
        delivered = [i for i in delivered if i not in self.reported]
        if delivered:
            when = repo.now()
            await self._db(lambda s: scans.mark_reported(s, delivered, when), surely=True)
