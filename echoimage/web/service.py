"""What the routes call: one `WebService` per process owns the catalogue (`echoimage.api`,
its store and search engine), the query thread pool, the URL fetcher and the recent-query
cache.

Queries run in a bounded thread pool (OpenCV and FAISS release the GIL), so the event loop
keeps serving while they run; when every thread is busy, queries wait on a semaphore, and
past ``max_waiting`` waiting queries the server says it is busy instead of thrashing.
"""

from __future__ import annotations

import asyncio
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
from echoimage.types import FetchStatus, Match
from echoimage.web.cache import CachedQuery, QueryCache
from echoimage.web.config import WebSettings
from echoimage.web.jobs import Job, JobManager
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

USER_AGENT = "EchoImage/0.1 (query fetch; +https://github.com/echoimage/echoimage)"


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
        self.catalogue = catalogue  # its search engine loaded (index and store)
        self.cache = QueryCache(web.cache_ttl, web.cache_entries)
        self.jobs = JobManager(web.job_threads)
        self._dedupe: dict[bool, DedupeResult] = {}  # by crops: the latest groups found
        self.threads = web.threads
        # FAISS's OpenMP thread count is per calling thread: SearchEngine.query_image sets
        # one thread in whichever pool thread runs it
        self.executor = ThreadPoolExecutor(self.threads, thread_name_prefix="echoimage-query")
        self.slots = asyncio.Semaphore(self.threads)
        self.counters = Counters()
        self.started = time.monotonic()
        self.policy = UrlPolicy(AllowList.parse(web.url_allowlist))
        t = web.url_timeout
        self.fetch_config = FetchConfig(
            concurrency=16, per_host=4, connect_timeout=min(5.0, t), read_timeout=t,
            total_timeout=t, retries=0, max_redirects=web.url_max_redirects,
            max_bytes=web.max_upload_bytes, user_agent=USER_AGENT, require_image=True,
        )
        self.fetcher = GuardedFetcher(self.fetch_config, self.policy)
        self._old_cv2_threads: int | None = None
        self._janitor: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, settings: Settings, web: WebSettings) -> WebService:
        """Load the search engine (index + store) once, off the event loop, and open the
        fetcher."""
        catalogue = Catalogue(settings, serving=True)
        await asyncio.to_thread(lambda: catalogue.search_engine)
        service = cls(settings, web, catalogue)
        service._old_cv2_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # process-wide: OpenCV's own pool would oversubscribe too
        await service.fetcher.__aenter__()
        service._janitor = asyncio.create_task(service._purge_forever())
        return service

    async def _purge_forever(self) -> None:
        interval = min(30.0, self.cache.ttl / 2)
        while True:
            await asyncio.sleep(interval)
            self.cache.purge()

    async def close(self) -> None:
        """Stop the pool, close the fetcher and the store connections."""
        if self._janitor is not None:
            self._janitor.cancel()
        self.jobs.close()
        await self.fetcher.__aexit__(None, None, None)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.cache.clear()
        await asyncio.to_thread(self.catalogue.close)  # store connections, cluster client
        if self._old_cv2_threads is not None:
            cv2.setNumThreads(self._old_cv2_threads)

    # --- running work off the event loop -------------------------------------------------

    def busy(self) -> bool:
        """True when every query thread is taken and the waiting line is full."""
        return self.counters.waiting >= self.web.max_waiting and self.slots.locked()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) in the query pool, waiting for a free thread first."""
        c = self.counters
        c.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            c.waiting -= 1
        c.running += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            c.running -= 1
            self.slots.release()

    # --- queries ---------------------------------------------------------------------------

    def _search(self, data: bytes, k: int, colour_sensitive: bool | None) -> QueryResult:
        res = self.catalogue.query(data, k, colour_sensitive)
        res.timings = {key: round(v, 2) for key, v in res.timings.items()}
        return res

    async def search(self, data: bytes, label: str, k: int,
                     colour_sensitive: bool | None = None) -> CachedQuery:
        """Decode and search in the pool; the answer is cached under a new token.

        Raises DecodeError, EmptyCatalogueError and other EchoImageErrors for the edge to map.
        """
        try:
            res = await self.run(self._search, data, k, colour_sensitive)
        except Exception:
            self.counters.failed += 1
            raise
        self.counters.queries += 1
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
            preview = preview_rgb(cand.preview)
            qpicture = _query_picture(entry)
            box = None
            if match.query_box:  # a part of the query matched: outline it
                f = entry.image.scale or 1.0
                x, y, w, h = (round(v / f) for v in match.query_box)
                box = (x, y, w, h)
            width = cand.width or cand.thumbnail.shape[1]
            height = cand.height or cand.thumbnail.shape[0]
            scale = cand.work_scale or 1.0
            work_longest = max(16, round(max(width, height) / scale))
            # the image itself at its own resolution when it can still be read as it was
            # indexed; else what the store keeps (the thumbnail in the preview's colours)
            original = self.catalogue.original(match.id, ORIGINAL_LONGEST, self.policy)
            if original is not None:
                catalogue = np.ascontiguousarray(original[:, :, ::-1])  # RGB → BGR
            else:
                catalogue = colourise(restore_aspect(cand.thumbnail, width, height,
                                                     work_longest), preview)
            shown = max(catalogue.shape[:2])
            region = pairs = None
            if match.region:  # in the image's own pixels
                region = np.asarray(match.region, np.float64) * (shown / max(width, height))
            if match.pairs is not None:  # catalogue side in working-image pixels
                pairs = np.array(match.pairs, np.float64).reshape(-1, 4)
                pairs[:, 2:4] *= shown / work_longest
            return encode_png(match_image(qpicture, catalogue, pairs, region,
                                          query_box=box))

        try:
            return entry.png(f"match-{match.id}", make)
        except LookupError:
            return None

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
                       "cached_queries": len(self.cache), "cache_ttl_s": self.cache.ttl},
            "runs": runs,
        }


#: the longest side a match picture's catalogue image is read at (it is drawn 300 px high,
#: up to 600 wide; twice that keeps it sharp on a high-density screen)
ORIGINAL_LONGEST = 1200


def _query_picture(entry: CachedQuery) -> np.ndarray:
    """The query's working image in its colours (gray when it was decoded without)."""
    return colourise(entry.image.gray, entry.image.colour)
