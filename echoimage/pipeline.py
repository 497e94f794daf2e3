"""Wire the stages: catalogue → fetch → decode/features (process pool) → store → index.

`build_index` is the library function behind `echoimage index build`. Work is resumable:
items are recorded as pending before any is processed, each batch of results is written in
one transaction, and a re-run picks up what is still pending or retryable.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
import select
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from echoimage import catalogue as cat
from echoimage.config import Settings
from echoimage.errors import (
    CatalogueError,
    DecodeError,
    EchoImageError,
    ImageTooLargeError,
    NotAnImageError,
)
from echoimage.features.decode import decode_image, sniff_format
from echoimage.features.extract import extract_features
from echoimage.fetch.local import LocalStatus, file_marker, read_local
from echoimage.index.build import update_index_files
from echoimage.sample import ensure_sample
from echoimage.store import repo
from echoimage.store.db import open_store, session_factory
from echoimage.store.models import RETRYABLE, TRANSIENT, RunStatus, Status
from echoimage.types import CatalogueItem


@dataclass(frozen=True)
class WorkItem:
    """One catalogue image to (re)index, with what the store already knows of it."""

    image_id: int
    url: str
    etag: str | None = None
    last_modified: str | None = None
    sha256: str | None = None  # known content hash: same bytes → "unchanged", no feature work
    was_indexed: bool = False
    reextract: bool = False  # its stored features were made with other parameters


@dataclass(frozen=True)
class WorkResult:
    """What the fetch and feature stages made of one catalogue image."""

    image_id: int
    status: str
    reason: str | None = None
    sha256: str | None = None
    nbytes: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    record: repo.FeatureRecord | None = None
    cpu_s: float = 0.0


if TYPE_CHECKING:
    from echoimage.fetch.client import FetcherFactory

log = logging.getLogger(__name__)

UNCHANGED = "unchanged"
#: runs of at most this many images to process skip the worker processes
INLINE_MAX = 4


@dataclass
class BuildSummary:
    """Counts of one indexing run, and the reasons for what failed."""

    kind: str = "build"
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    net_wait_seconds: float = 0.0
    index_entries: int = 0
    index: dict[str, Any] = field(default_factory=dict)  # what the index update did
    sources: list[str] = field(default_factory=list)
    processed: int = 0  # images that went through decoding and feature extraction
    #: the processing phase (what the progress bar shows): images it handled (read or
    #: fetched, then decoded and extracted unless unchanged or failed) and its seconds,
    #: from the bar's start to its end; `seconds` is the whole run (listing the sources,
    #: recording them, processing, writing the index)
    work_items: int = 0
    work_seconds: float = 0.0
    skipped: Counter[str] = field(default_factory=Counter)  # files a folder source passed over

    @property
    def work_rate(self) -> float:
        """Images handled per second of the processing phase (the bar's final rate)."""
        return self.work_items / self.work_seconds if self.work_seconds else 0.0

    def merge(self, other: BuildSummary) -> None:
        """Add another summary's counts, failures, processed images and times (a part of
        this run done elsewhere)."""
        self.counts.update(other.counts)
        self.failures.extend(other.failures)
        self.processed += other.processed
        self.cpu_seconds += other.cpu_seconds
        self.net_wait_seconds += other.net_wait_seconds

    def as_dict(self) -> dict:
        """JSON-ready form."""
        return {"kind": self.kind, "counts": dict(self.counts), "processed": self.processed,
                "seconds": round(self.seconds, 3),
                "cpu_seconds": round(self.cpu_seconds, 3),
                "net_wait_seconds": round(self.net_wait_seconds, 3),
                "work_items": self.work_items, "work_seconds": round(self.work_seconds, 3),
                "work_rate": round(self.work_rate, 3),
                "index_entries": self.index_entries, "index": self.index,
                "sources": self.sources, "skipped": dict(self.skipped),
                "failures": [{"url": u, "status": s, "reason": r} for u, s, r in self.failures]}


def _exit_with(pid: int) -> None:
    """Exit this worker as soon as process pid (the run that started it) is gone.

    A pool worker's parent is the forkserver, which outlives a killed main process for as
    long as its workers hold the pool's pipes: without this, kill -9 of a build would leave
    the workers and the forkserver blocked forever. A pidfd becomes readable when the
    process exits (no polling, no pid reuse); where there is none, poll once a second.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        select.select([fd], [], [])
        os._exit(1)
    while True:
        time.sleep(1.0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:
            pass


def _init_worker(main_pid: int) -> None:
    threading.Thread(target=_exit_with, args=(main_pid,), daemon=True,
                     name="exit-with-main").start()
    cv2.setNumThreads(1)


def _noop(_: int) -> None:
    """A task that only makes the pool start a worker."""


def process_bytes(image_id: int, data: bytes, params: FeatureParams,
                  etag: str | None = None, last_modified: str | None = None,
                  known_sha256: str | None = None) -> WorkResult:
    """Decode bytes and extract features; a failure comes back as a status, never raised."""
    t0 = time.process_time()
    sha = hashlib.sha256(data).hexdigest()
    if known_sha256 is not None and sha == known_sha256:
        return WorkResult(image_id, UNCHANGED, None, sha, len(data), etag, last_modified,
                          cpu_s=time.process_time() - t0)
    try:
        img = decode_image(data, params.max_pixels, params.work_size, params.colour_size)
        feats = extract_features(img, params.thumb_size, params.orb_features)
    except DecodeError as exc:
        if isinstance(exc, ImageTooLargeError):
            status = Status.TOO_LARGE
        elif isinstance(exc, NotAnImageError) and sniff_format(data) is None:
            status = Status.NOT_AN_IMAGE
        else:
            status = Status.DECODE_ERROR
        return WorkResult(image_id, status, str(exc), sha, len(data), etag, last_modified,
                          cpu_s=time.process_time() - t0)
    except Exception as exc:  # noqa: BLE001 - one image's surprise must not end the run
        log.warning("feature extraction failed on image %d: %s: %s", image_id,
                    type(exc).__name__, exc)
        log.debug("feature extraction failed on image %d", image_id, exc_info=True)
        return WorkResult(image_id, Status.DECODE_ERROR,
                          f"feature extraction failed: {type(exc).__name__}: "
                          f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                          sha, len(data), etag, last_modified, cpu_s=time.process_time() - t0)
    record = repo.encode_features(image_id, sha, len(data), feats, etag, last_modified,
                                  params.key, params.thumb_quality, params.colour_quality)
    return WorkResult(image_id, Status.INDEXED, None, sha, len(data), etag, last_modified,
                      record, cpu_s=time.process_time() - t0)


def process_path(item: WorkItem, params: FeatureParams, max_bytes: int) -> WorkResult:
    """Read a local file and process it; a missing, unreadable or special file is a
    status (never waited on)."""
    etag = file_marker(item.url)
    if item.was_indexed and etag is not None and etag == item.etag:
        return WorkResult(item.image_id, UNCHANGED, etag=etag)
    got = read_local(item.url, max_bytes)
    if got.data is None:
        if got.status == LocalStatus.NOT_FOUND:
            status = Status.GONE if item.was_indexed else Status.MISSING
        else:
            status = _LOCAL_STATUS[got.status]
        return WorkResult(item.image_id, status, got.reason)
    return process_bytes(item.image_id, got.data, params, etag, None, item.sha256)


#: store status of a local file that could not be read (a missing one: see process_path)
_LOCAL_STATUS = {LocalStatus.NOT_A_FILE: Status.NOT_AN_IMAGE,
                 LocalStatus.TOO_LARGE: Status.TOO_LARGE,
                 LocalStatus.UNREADABLE: Status.MISSING}


@dataclass(frozen=True)
class FeatureParams:
    """What a feature worker needs (picklable), built from Settings."""

    max_pixels: int
    work_size: int
    thumb_size: int
    orb_features: int
    thumb_quality: int
    colour_size: int
    colour_quality: int

    @property
    def key(self) -> str:
        """What a store row records of the parameters its features were extracted with
        (the pixel cap only decides whether an image is refused, and the thumbnail's JPEG
        quality how it is stored, not the features). The colour preview's size and quality
        are left out too: they change only what the page shows, and rows indexed before
        colour was kept are not re-extracted for it (their colour_distance is None)."""
        return f"work{self.work_size}-thumb{self.thumb_size}-orb{self.orb_features}"


def feature_params(settings: Settings) -> FeatureParams:
    """The feature parameters of these settings."""
    return FeatureParams(settings.max_pixels, settings.work_size, settings.thumb_size,
                         settings.orb_features, settings.thumb_quality, settings.colour_size,
                         settings.colour_quality)


def feature_key(params: FeatureParams) -> str:
    """The parameters' key (see FeatureParams.key)."""
    return params.key


def resolve_sources(settings: Settings, sources: list[str]
                    ) -> Iterator[tuple[str, str, Iterable[CatalogueItem]]]:
    """(uri, kind, items) of each source; no source means the bundled sample catalogue."""
    if not sources:
        sources = [str(ensure_sample(settings.data_dir / "sample"))]
    for source in sources:
        if cat.is_url(source):
            yield _remote_source(settings, source)
        else:
            yield cat.read_local_source(source)


def _remote_source(settings: Settings, url: str) -> tuple[str, str, Iterable[CatalogueItem]]:
    """A catalogue file behind a URL, or a single image URL."""
    kind = cat.source_kind(url)
    if kind == "url":
        return url, "url", [CatalogueItem(url, url)]
    from echoimage.fetch.client import FetchConfig, fetch_bytes

    res = fetch_bytes(url, FetchConfig(require_image=False, max_bytes=settings.max_bytes))
    if res.status != "ok" or res.data is None:
        raise CatalogueError(f"cannot fetch catalogue {url}: {res.reason or res.status}")
    return url, kind, list(cat.parse_catalogue(res.data, kind, url, url))


@contextmanager
def work_phase(summary: BuildSummary, total: int, progress: bool, desc: str
               ) -> Iterator[Callable[[int], None]]:
    """The processing phase of a run: a progress bar on stderr and the summary's
    work_items and work_seconds, counted together (the bar's final rate is their ratio:
    smoothing=0 makes tqdm show the average since its start rather than a recent rate).
    Yields advance(n), to call as images are handled."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="img", disable=not progress, file=sys.stderr, desc=desc,
               dynamic_ncols=True, smoothing=0)
    t0 = time.time()  # tqdm's clock, started with the bar

    def advance(n: int) -> None:
        summary.work_items += n
        bar.update(n)

    try:
        yield advance
    finally:
        summary.work_seconds += time.time() - t0
        bar.close()


class Indexer:
    """Runs the work set of one build or update through fetch, features and the store.

    Local files are read by the feature workers; URLs are fetched on the event loop while
    the process pool extracts features, so downloads and CPU work overlap.
    """

    def __init__(self, settings: Settings, engine: Engine, progress: bool = True,
                 fetcher: FetcherFactory | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> None:
        self.settings = settings
        self.fetcher = fetcher  # how URLs are fetched (default: a plain Fetcher)
        self.on_progress = on_progress  # (done, total) after each image
        self.engine = engine
        self.sessions = session_factory(engine)
        self.progress = progress
        self.params = feature_params(settings)
        self._since_flush = 0  # rows changed since the index files were last brought up

    def run(self, work: list[WorkItem], summary: BuildSummary) -> None:
        """Process the work items; results are written in batched transactions."""
        # a local file whose size and mtime are as recorded needs no worker at all
        same = [w for w in work if w.was_indexed and not cat.is_url(w.url)
                and w.etag is not None and file_marker(w.url) == w.etag]
        if same:
            items = {w.image_id: w for w in same}
            for i in range(0, len(same), 1000):
                self._write([WorkResult(w.image_id, UNCHANGED, etag=w.etag)
                             for w in same[i:i + 1000]], items, summary)
            done = set(items)
            work = [w for w in work if w.image_id not in done]
        if not work:
            return
        if self.settings.cluster:
            self._run_cluster(work, summary)
            return
        if len(work) <= INLINE_MAX:
            # a handful of images (a one-image update): starting worker processes would
            # cost more than the work; a thread of this process does it
            with ThreadPoolExecutor(1) as inline:
                asyncio.run(self._run(inline, 1, work, summary))
            return
        workers = self.settings.workers or os.cpu_count() or 1
        # forkserver: a plain fork after OpenCV has started its thread pool can deadlock
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["echoimage.pipeline"])
        try:
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(os.getpid(),)) as pool:
                # start every worker now: spawning one later would stall the fetch loop
                list(pool.map(_noop, range(workers)))
                asyncio.run(self._run(pool, workers, work, summary))
        except BrokenProcessPool:
            raise EchoImageError(
                "a feature worker died (killed, or out of memory): the images indexed so "
                "far are saved; run the command again to go on") from None

    async def _run(self, pool: Executor, workers: int, work: list[WorkItem],
                   summary: BuildSummary) -> None:
        """The processing phase, timed and counted by work_phase."""
        with work_phase(summary, len(work), self.progress, summary.kind) as advance:
            await self._run_phase(pool, workers, work, summary, advance)

    async def _run_phase(self, pool: Executor, workers: int, work: list[WorkItem],
                         summary: BuildSummary, advance: Callable[[int], None]) -> None:
        """Local files to the pool; URLs fetched here, their bytes to the pool; advance(1)
        per image handled."""
        from echoimage.fetch.client import FetchConfig, Fetcher

        loop = asyncio.get_running_loop()
        items = {w.image_id: w for w in work}
        pending: list[WorkResult] = []
        cpu_slots = asyncio.Semaphore(workers * 2)
        tasks: set[asyncio.Task[None]] = set()

        done = 0

        def on_result(res: WorkResult) -> None:
            nonlocal done
            pending.append(res)
            summary.cpu_seconds += res.cpu_s
            if len(pending) >= self.settings.batch_size:
                self._write(pending, items, summary)
                pending.clear()
            advance(1)
            done += 1
            if self.on_progress is not None:
                self.on_progress(done, len(work))

        async def do_local(item: WorkItem) -> None:
            async with cpu_slots:
                res = await loop.run_in_executor(pool, process_path, item, self.params,
                                                 self.settings.max_bytes)
            on_result(res)

        async def do_remote(item: WorkItem, fres: Any) -> None:
            res = fetched_result(item, fres)
            if res is None:
                async with cpu_slots:
                    res = await loop.run_in_executor(
                        pool, process_bytes, item.image_id, fres.data, self.params,
                        fres.etag, fres.last_modified, item.sha256 if item.was_indexed else None)
            on_result(res)

        async def submit(coro: Any) -> None:
            nonlocal tasks
            while len(tasks) >= workers * 4:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    t.result()
            tasks.add(asyncio.create_task(coro))

        try:
            for item in work:
                if not cat.is_url(item.url):
                    await submit(do_local(item))
            remote = [(w.image_id, w.url, w.etag if w.was_indexed else None,
                       w.last_modified if w.was_indexed else None)
                      for w in work if cat.is_url(w.url)]
            if remote:
                cfg = FetchConfig(max_bytes=self.settings.max_bytes,
                                  total_timeout=self.settings.http_timeout,
                                  concurrency=self.settings.http_concurrency,
                                  per_host=self.settings.http_per_host)
                async with (self.fetcher or Fetcher)(cfg) as fetcher:
                    async for key, fres in fetcher.fetch_many(remote):
                        summary.net_wait_seconds += fres.wait_s
                        await submit(do_remote(items[key], fres))
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            if pending:
                self._write(pending, items, summary)
                pending.clear()

    def _write(self, results: list[WorkResult], items: dict[int, WorkItem],
               summary: BuildSummary) -> None:
        """One transaction for a batch of results."""
        self._changed(write_results(self.sessions, results, items, summary))

    def _changed(self, rows: int) -> None:
        """Count changed rows; a long run makes its work searchable (and durable in the
        index) as it goes."""
        self._since_flush += rows
        if self._since_flush >= self.settings.index_flush_rows:
            self._since_flush = 0
            update_index_files(self.settings, self.engine, retrain=False)

    def _run_cluster(self, work: list[WorkItem], summary: BuildSummary) -> None:
        """The work as shard tasks on the Dask cluster (see echoimage.cluster)."""
        from echoimage.cluster import ClusterClient, ShardJob, index_shard, shards_of

        assert self.settings.cluster is not None
        items = {w.image_id: w for w in work}
        write = self.engine.dialect.name != "sqlite"
        job = ShardJob(self.params, self.settings.model_dump(mode="json"), write)
        done = 0
        with (ClusterClient(self.settings.cluster) as cluster,
              work_phase(summary, len(work), self.progress,
                         f"{summary.kind} (cluster)") as advance):
            from distributed import as_completed

            client = cluster.client
            shards = shards_of(work, self.settings.cluster_shard_size)
            log.info("%d images in %d shards on the cluster at %s", len(work), len(shards),
                     client.scheduler.address)
            futures = client.map(index_shard, shards, job=job, pure=False)
            try:
                for fut in as_completed(futures):
                    out = fut.result()
                    summary.merge(out.summary)  # its times; its counts if it wrote
                    if out.results is not None:
                        self._write(out.results, items, summary)
                    else:
                        self._changed(out.changed)
                    advance(out.items)
                    done += out.items
                    if self.on_progress is not None:
                        self.on_progress(done, len(work))
            finally:
                client.cancel(futures)


def write_results(sessions: sessionmaker[Session], results: list[WorkResult],
                  items: dict[int, WorkItem], summary: BuildSummary) -> int:
    """Write a batch of results in one transaction and count them in the summary; returns
    how many image rows changed."""
    changed = 0
    with sessions.begin() as session:
        records = []
        for r in results:
            item = items[r.image_id]
            status = r.status
            if status == Status.INDEXED and r.record is not None:
                records.append(r.record)
                if item.reextract:
                    status = "re-extracted"
                elif item.was_indexed:
                    status = "changed"
            elif status == UNCHANGED:
                repo.mark_unchanged(session, r.image_id, r.etag, r.last_modified)
            elif item.was_indexed and status in TRANSIENT:
                repo.note_attempt(session, r.image_id, r.reason or status)
                status = f"kept ({status})"
                summary.failures.append((item.url, r.status, r.reason or ""))
            else:
                repo.save_failure(session, r.image_id, status, r.reason or status,
                                  r.sha256, r.nbytes)
                summary.failures.append((item.url, status, r.reason or ""))
            summary.counts[status] += 1
            if r.sha256 is not None and r.status != UNCHANGED:
                summary.processed += 1
            if r.status != UNCHANGED and not status.startswith("kept"):
                changed += 1
        repo.save_feature_records(session, records)
    return changed


def fetched_result(item: WorkItem, fres: Any) -> WorkResult | None:
    """The result of a fetch that brought no bytes to process (not modified, or failed);
    None when its bytes are to be processed."""
    if fres.status == "ok" and fres.data is not None:
        return None
    if fres.status == "not-modified":
        return WorkResult(item.image_id, UNCHANGED, etag=fres.etag,
                          last_modified=fres.last_modified)
    return WorkResult(item.image_id, fetch_to_store_status(fres.status),
                      fres.reason or fres.status)


def fetch_to_store_status(status: str) -> str:
    """Map a fetch status onto a store status."""
    return {
        "gone": Status.GONE, "timeout": Status.TIMEOUT, "too-large": Status.TOO_LARGE,
        "not-an-image": Status.NOT_AN_IMAGE, "bad-url": Status.BAD_URL,
        "redirect-loop": Status.REDIRECT_ERROR, "too-many-redirects": Status.REDIRECT_ERROR,
    }.get(status, Status.HTTP_ERROR)


def run_end(exc: BaseException) -> tuple[RunStatus, str]:
    """The status and one-line reason of a run that ended with exc."""
    if isinstance(exc, KeyboardInterrupt):
        return RunStatus.INTERRUPTED, "interrupted (Ctrl-C)"
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if isinstance(exc, EchoImageError) and text:
        return RunStatus.FAILED, text
    return RunStatus.FAILED, f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@contextmanager
def recorded_run(sessions: sessionmaker[Session], summary: BuildSummary,
                 sources: list[str]) -> Iterator[None]:
    """Record a run in the store: 'running' while the block runs, then 'ok', or 'failed' /
    'interrupted' with the reason (run_end), with the summary's counts and duration."""
    t0 = time.perf_counter()
    with sessions.begin() as session:
        run_id = repo.start_run(session, summary.kind, sources)
    try:
        yield
    except BaseException as exc:
        status, reason = run_end(exc)
        try:
            with sessions.begin() as session:
                repo.finish_run(session, run_id, status, dict(summary.counts), reason)
        except EchoImageError as store_exc:  # the store itself failed (a full disk)
            log.warning("could not record the end of run %d (%s): %s", run_id, reason,
                        store_exc)
        raise
    summary.seconds = time.perf_counter() - t0
    with sessions.begin() as session:
        repo.finish_run(session, run_id, RunStatus.OK, dict(summary.counts))


def index_work(settings: Settings, engine: Engine, work: Iterable[WorkItem],
               summary: BuildSummary, progress: bool, fetcher: FetcherFactory | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> None:
    """Process the work items, then bring the index files up to the store's last change."""
    indexer = Indexer(settings, engine, progress, fetcher, on_progress)
    indexer.run(sorted(work, key=lambda w: w.image_id), summary)
    report = update_index_files(settings, engine)
    summary.index_entries = report.images
    summary.index = report.as_dict()


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


def _build(settings: Settings, engine: Engine,
           resolved: Iterable[tuple[str, str, Iterable[CatalogueItem]]], sources: list[str],
           progress: bool, fetcher: FetcherFactory | None,
           on_progress: Callable[[int, int], None] | None = None) -> BuildSummary:
    sessions = session_factory(engine)
    summary = BuildSummary(kind="build")
    read = [(uri, kind, list(items), items) for uri, kind, items in resolved]  # all, first
    with recorded_run(sessions, summary, sources):
        work: dict[int, WorkItem] = {}
        for uri, kind, items, listing in read:
            summary.sources.append(uri)
            if isinstance(listing, cat.FolderListing):
                summary.skipped.update(listing.skipped)
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


def data_dir_size(settings: Settings) -> dict[str, int]:
    """Bytes on disk of the store file (SQLite) and the index directory."""
    out = {}
    db = settings.data_dir / "echoimage.sqlite3"
    if not settings.database_url and db.exists():
        out["store_file"] = sum(p.stat().st_size for p in db.parent.glob(db.name + "*"))
    idx = Path(settings.index_dir)
    out["index_files"] = sum(p.stat().st_size for p in idx.glob("*") if p.is_file()) \
        if idx.exists() else 0
    return out
