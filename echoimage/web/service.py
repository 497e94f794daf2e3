"""What the routes call: one `WebService` per process owns the catalogue (`echoimage.api`,
its store and search engine), the query thread pool, the URL fetcher and the recent-query
cache.

Queries run in a bounded thread pool (OpenCV and FAISS release the GIL), so the event loop
keeps serving while they run. Admission is bounded: ``threads`` searches run at once and
``max_waiting`` more may wait for a thread; past that a search is refused at once
(`ServerBusy`: 503 with Retry-After) instead of waiting for seconds. With
``load_in_background`` the index loads after the server starts listening: until it is
loaded `ready` is False and searches are refused (`NotReady`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import cv2
import numpy as np

from echoimage.api import (
    AllowList,
    Catalogue,
    FetchConfig,
    FetchResult,
    GuardedFetcher,
    QueryResult,
    UrlPolicy,
)
from echoimage.config import Settings
from echoimage.errors import EchoImageError
from echoimage.types import FetchStatus, Match, Picture
from echoimage.web.balance import Loads
from echoimage.web.cache import CachedQuery, QueryCache
from echoimage.web.config import WebSettings
from echoimage.web.jobs import Job, JobManager
from echoimage.web.metrics import Metrics
from echoimage.web.visual import (
    colourise,
    encode_png,
    match_image,
    preview_rgb,
    restore_aspect,
)

if TYPE_CHECKING:
    from echoimage.api import DedupeResult

T = TypeVar("T")

log = logging.getLogger(__name__)

USER_AGENT = "EchoImage/0.1 (query fetch; +https://github.com/echoimage/echoimage)"


class ServerBusy(Exception):
    """Every query thread is taken and the queue is full: the search is refused."""


class NotReady(Exception):
    """The index is not loaded yet (or could not be loaded): the search is refused."""


@dataclass
class Counters:
    """Queries answered and failed since start."""

    queries: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0


class WebService:
    """Catalogue, thread pool, fetcher and cache of one server process."""

    def __init__(self, settings: Settings, web: WebSettings, catalogue: Catalogue) -> None:
        self.settings = settings
        self.web = web
        self.catalogue = catalogue  # its search engine loaded (index and store) once ready
        self.metrics = Metrics()
        shared = web.shared_dir
        self.cache = QueryCache(web.cache_ttl, web.cache_entries,
                                shared=shared / "queries" if shared else None,
                                on_lookup=lambda result: self.metrics.cache.labels(result).inc())
        self.jobs = JobManager(web.job_threads, shared=shared / "jobs" if shared else None)
        # how busy the other serving processes are (with several): `sheds`
        self.loads = Loads(shared / "loads") if shared else None
        self._dedupe: dict[bool, DedupeResult] = {}  # by crops: the latest groups found
        self.threads = web.threads
        # FAISS's OpenMP thread count is per calling thread: SearchEngine.query_image sets
        # one thread in whichever pool thread runs it
        self.executor = ThreadPoolExecutor(self.threads, thread_name_prefix="echoimage-query")
        self.slots = asyncio.Semaphore(self.threads)
        self.counters = Counters()
        self.started = time.monotonic()
        self.policy = UrlPolicy(AllowList.parse(web.url_allowlist),
                                hint="ECHOIMAGE_URL_ALLOWLIST on the server allows it")
        t = web.url_timeout
        self.fetch_config = FetchConfig(
            concurrency=16, per_host=4, connect_timeout=min(5.0, t), read_timeout=t,
            total_timeout=t, retries=0, max_redirects=web.url_max_redirects,
            max_bytes=web.max_upload_bytes, user_agent=USER_AGENT, require_image=True,
        )
        self.fetcher = GuardedFetcher(self.fetch_config, self.policy)
        self._old_cv2_threads: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ready = False  # the index is loaded: searches are taken
        self.load_error: str | None = None  # why the index could not be loaded
        self._behind_since: float | None = None
        self.metrics.capacity.set(self.threads + web.max_waiting)

    @classmethod
    async def start(cls, settings: Settings, web: WebSettings) -> WebService:
        """Open the fetcher and load the search engine (index + store) once, off the event
        loop: before returning, or (load_in_background) after, while the server already
        answers /healthz and /readyz."""
        catalogue = Catalogue(settings, serving=True)
        try:
            service = cls(settings, web, catalogue)
        except BaseException:
            catalogue.close()
            raise
        try:  # whatever fails, what was opened is closed (the load file, the threads)
            service._old_cv2_threads = cv2.getNumThreads()
            cv2.setNumThreads(1)  # process-wide: OpenCV's own pool would oversubscribe too
            await service.fetcher.__aenter__()
            service._tasks.append(asyncio.create_task(service._purge_forever()))
            if web.load_in_background:
                service._tasks.append(asyncio.create_task(service._load()))
            else:
                await service._load()
                if service.load_error is not None:
                    raise NotReady(service.load_error)
        except BaseException:
            try:
                await service.close()
            except Exception:  # the first error is the one to tell
                log.exception("closing the server that failed to start")
            raise
        return service

    async def _load(self) -> None:
        """Load the index; then keep the metrics of the index current."""
        t0 = time.perf_counter()
        try:
            await asyncio.to_thread(lambda: self.catalogue.search_engine)
        except EchoImageError as exc:
            self.load_error = str(exc)
            log.error("the index could not be loaded: %s", exc)
            return
        except Exception as exc:  # a bug: not ready, and say why
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("the index could not be loaded")
            return
        self.ready = True
        self.metrics.ready.set(1)
        self._publish()
        log.info("index loaded in %.1f s: %d entries (process %d)",
                 time.perf_counter() - t0, self.catalogue.size, os.getpid())
        if self.web.metrics:
            self._tasks.append(asyncio.create_task(self._watch_index()))

    async def _watch_index(self) -> None:
        while True:
            await self.update_index_metrics()
            await asyncio.sleep(self.web.metrics_interval)

    async def update_index_metrics(self) -> None:
        """Read the index's change number and the store's into the metrics (a process
        behind the store starts refreshing)."""
        if not self.ready:
            return
        try:
            state = await asyncio.to_thread(self.catalogue.index_state)
        except EchoImageError as exc:
            log.warning("cannot read the index's state: %s", exc)
            return
        m = self.metrics
        m.index_seq.set(state.seq)
        m.store_seq.set(state.store_seq)
        m.lag.set(state.lag)
        m.entries.set(state.entries)
        now = time.monotonic()
        if state.lag == 0:
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = now
        m.lag_seconds.set(0.0 if self._behind_since is None else now - self._behind_since)

    async def _purge_forever(self) -> None:
        interval = min(30.0, self.cache.ttl / 2)
        while True:
            await asyncio.sleep(interval)
            self.cache.purge()

    async def close(self) -> None:
        """Stop the pool, close the fetcher and the store connections."""
        for task in self._tasks:
            task.cancel()
        self.metrics.close()
        self.jobs.close()
        if self.loads is not None:
            self.loads.close()
        await self.fetcher.__aexit__(None, None, None)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.cache.clear()
        await asyncio.to_thread(self.catalogue.close)  # store connections, cluster client
        if self._old_cv2_threads is not None:
            cv2.setNumThreads(self._old_cv2_threads)

    @property
    def index_size(self) -> int | None:
        """Indexed images in the index being searched; None while it is loading (never
        waits for the load)."""
        return self.catalogue.size if self.ready else None

    # --- running work off the event loop -------------------------------------------------

    def busy(self) -> bool:
        """True when every query thread is taken and the waiting line is full."""
        return self.counters.waiting >= self.web.max_waiting and self.slots.locked()

    def sheds(self) -> bool:
        """Whether an answered search's connection is to be closed: with several serving
        processes, when searches wait in this one and another process holds fewer
        searches than this one (`echoimage.web.balance`). A kept-alive connection stays
        with the process that accepted it, and a burst of new ones may all go to one
        process while another idles; a client whose connection is closed connects again,
        and a process free to accept takes it."""
        c = self.counters
        if self.loads is None or c.waiting == 0:
            return False
        least = self.loads.least_other()
        return least is not None and least < c.running + c.waiting

    def _publish(self) -> None:
        """Publish the queries this process holds (none taken before its index loads)."""
        if self.loads is not None:
            c = self.counters
            self.loads.publish(c.running + c.waiting if self.ready else None)

    def admit(self) -> None:
        """Refuse a search now if it cannot be taken: NotReady before the index is loaded,
        ServerBusy when the queue is full."""
        if not self.ready:
            self.metrics.refused.labels("loading").inc()
            raise NotReady(self.load_error or "the index is loading")
        if self.busy():
            self.metrics.refused.labels("busy").inc()
            raise ServerBusy()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) in the query pool, waiting for a free thread first."""
        c, m = self.counters, self.metrics
        c.waiting += 1
        m.waiting.inc()
        self._publish()
        try:
            await self.slots.acquire()
        except BaseException:  # the wait cancelled: one query fewer held
            c.waiting -= 1
            m.waiting.dec()
            self._publish()
            raise
        c.waiting -= 1
        m.waiting.dec()
        c.running += 1
        m.running.inc()
        self._publish()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            c.running -= 1
            m.running.dec()
            self.slots.release()
            self._publish()

    # --- queries ---------------------------------------------------------------------------

    def _search(self, data: bytes, k: int, colour_sensitive: bool | None,
                copies_only: bool | None) -> QueryResult:
        res = self.catalogue.query(data, k, colour_sensitive, copies_only)
        res.timings = {key: round(v, 2) for key, v in res.timings.items()}
        return res

    async def search(self, data: bytes, label: str, k: int,
                     colour_sensitive: bool | None = None, copies_only: bool | None = None
                     ) -> CachedQuery:
        """Decode and search in the pool (copies_only: see `Catalogue.query`); the answer
        is cached under a new token.

        Raises DecodeError, EmptyCatalogueError and other EchoImageErrors for the edge to map.
        """
        self.admit()  # again: a URL query was fetched since the request was admitted
        try:
            res = await self.run(self._search, data, k, colour_sensitive, copies_only)
        except Exception:
            self.counters.failed += 1
            raise
        self.counters.queries += 1
        self.metrics.observe_search(res.found, res.timings, res.copies_only)
        return self.cache.add(label, res, k)

    async def fetch(self, url: str) -> FetchResult:
        """Fetch a query URL through the SSRF guard, within the time cap."""
        try:
            async with asyncio.timeout(self.web.url_timeout):
                return await self.fetcher.fetch(url)
        except TimeoutError:
            return FetchResult(url, FetchStatus.TIMEOUT,
                               reason=f"no complete answer within {self.web.url_timeout:g} s")

    # --- pictures -----------------------------------------------------------------------------

    def query_png(self, entry: CachedQuery) -> bytes:
        """The query's working image as PNG (longest side <= query_work_size), in its
        colours."""
        return entry.png("query", lambda: encode_png(_query_picture(entry)))

    def match_png(self, entry: CachedQuery, match: Match) -> bytes | None:
        """Query | catalogue image with the keypoint pairs behind the match and its region;
        None if the catalogue image is gone."""

        def make() -> bytes:
            cand = self.catalogue.picture(match.id)
            if cand is None:
                raise LookupError(match.id)
            original = self.catalogue.original(match.id, ORIGINAL_LONGEST, self.policy)
            return draw_match(_query_picture(entry), 1.0 / (entry.image.scale or 1.0),
                              match.pairs, match.region, match.query_box, cand, original)

        try:
            return entry.png(f"match-{match.id}", make)
        except LookupError:
            return None

    def finding_png(self, finding_id: int) -> bytes | None:
        """The image a scan found (its stored picture) beside the catalogue image it
        copies, with the keypoint pairs and region of the match; None for an unknown
        finding, or one whose picture or catalogue image is no longer kept."""
        found = self.catalogue.found_picture(finding_id)
        if found is None or found.picture is None:
            return None
        cand = self.catalogue.picture(found.catalogue_id)
        qpicture = preview_rgb(found.picture)
        if cand is None or qpicture is None:
            return None
        pairs = None
        if found.pairs is not None:  # query side: working pixels → picture pixels
            pairs = found.pairs.astype(np.float64)
            pairs[:, :2] *= found.scale
        longest = max(found.width, found.height)
        from_original = max(qpicture.shape[:2]) / longest if longest else found.scale
        original = self.catalogue.original(found.catalogue_id, ORIGINAL_LONGEST, self.policy)
        return draw_match(np.ascontiguousarray(qpicture[:, :, ::-1]), from_original, pairs,
                          found.region, found.query_box, cand, original)

    # --- the catalogue's duplicates ------------------------------------------------------------

    def duplicates(self, crops: bool) -> tuple[DedupeResult | None, Job | None]:
        """The groups of duplicates as of the store's current change, or the job working
        them out (started if none is running)."""
        seq = self.catalogue.change_number()
        cached = self._dedupe.get(crops)
        if cached is not None and cached.seq == seq:
            return cached, None
        params = {"crops": crops, "seq": seq}
        job = self.jobs.find("dedupe", params)
        if job is None:
            def run(job: Job) -> None:
                result = self.catalogue.dedupe(crops, job.progress)
                self._dedupe[crops] = result
                job.result = result.summary()

            job = self.jobs.submit("dedupe", params, run)
        return None, job

    # --- numbers ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Catalogue counts by status, the index being served, this server's counters and
        the latest indexing runs (a change of the store starts a background refresh; the
        answer says what is served now)."""
        stats = self.catalogue.stats()
        runs = stats.pop("runs")
        c = self.counters
        return {
            **stats,
            "server": {"uptime_s": round(time.monotonic() - self.started, 3),
                       "queries": c.queries, "failed_queries": c.failed, "running": c.running,
                       "waiting": c.waiting, "query_threads": self.threads,
                       "max_waiting": self.web.max_waiting, "pid": os.getpid(),
                       "cached_queries": len(self.cache), "cache_ttl_s": self.cache.ttl},
            "runs": runs,
        }


#: the longest side a match picture's catalogue image is read at (it is drawn 300 px high,
#: up to 600 wide; twice that keeps it sharp on a high-density screen)
ORIGINAL_LONGEST = 1200


def draw_match(query: np.ndarray, from_original: float, pairs: Any,
               region: list[list[float]] | None, query_box: list[float] | None,
               cand: Picture, original: np.ndarray | None = None) -> bytes:
    """PNG of query (its picture; from_original: its pixels per original pixel of the
    query) beside the catalogue image cand, with the keypoint pairs (query picture pixels,
    catalogue working pixels), the matched region (catalogue original pixels) and the part
    of the query that matched (query_box, original pixels). The catalogue image is drawn
    from original (it read again at its own resolution, RGB) when given, else from what
    the store keeps (the thumbnail in the preview's colours)."""
    box = None
    if query_box:  # a part of the query matched: outline it
        x, y, w, h = (round(v * from_original) for v in query_box)
        box = (x, y, w, h)
    width = cand.width or cand.thumbnail.shape[1]
    height = cand.height or cand.thumbnail.shape[0]
    work_longest = max(16, round(max(width, height) / (cand.work_scale or 1.0)))
    if original is not None:
        catalogue = np.ascontiguousarray(original[:, :, ::-1])  # RGB → BGR
    else:
        catalogue = colourise(restore_aspect(cand.thumbnail, width, height, work_longest),
                              preview_rgb(cand.preview))
    shown = max(catalogue.shape[:2])
    reg = None
    if region:  # in the image's own pixels
        reg = np.asarray(region, np.float64) * (shown / max(width, height))
    if pairs is not None:  # catalogue side in working-image pixels
        pairs = np.array(pairs, np.float64).reshape(-1, 4)
        pairs[:, 2:4] *= shown / work_longest
    return encode_png(match_image(query, catalogue, pairs, reg, query_box=box))


def _query_picture(entry: CachedQuery) -> np.ndarray:
    """The query's working image in its colours (gray when it was decoded without)."""
    return colourise(entry.image.gray, entry.image.colour)
