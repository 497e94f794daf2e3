"""Wire the stages: catalogue → fetch → decode/features (process pool) → store → index.

`build_index` is the library function behind `echoimage index build`. Work is resumable:
items are recorded as pending before any is processed, each batch of results is written in
one transaction, and a re-run picks up what is still pending or retryable.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
from sqlalchemy import Engine

from echoimage import catalogue as cat
from echoimage.config import Settings
from echoimage.errors import CatalogueError, DecodeError, EchoImageError
from echoimage.features.decode import decode_image, sniff_format
from echoimage.features.extract import extract_features
from echoimage.sample import ensure_sample
from echoimage.search.engine import rebuild_index
from echoimage.store import repo
from echoimage.store.db import open_store, session_factory
from echoimage.store.models import Status
from echoimage.types import CatalogueItem, ImageFeatures


@dataclass(frozen=True)
class WorkResult:
    """What the feature worker made of one catalogue image."""

    image_id: int
    status: str
    reason: str | None = None
    sha256: str | None = None
    nbytes: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    features: ImageFeatures | None = None
    cpu_s: float = 0.0


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
    sources: list[str] = field(default_factory=list)

    @property
    def processed(self) -> int:
        """Images that went through decode and feature extraction in this run."""
        return sum(n for s, n in self.counts.items() if s not in ("already-indexed",))

    def as_dict(self) -> dict:
        """JSON-ready form."""
        return {"kind": self.kind, "counts": dict(self.counts), "seconds": round(self.seconds, 3),
                "cpu_seconds": round(self.cpu_seconds, 3),
                "net_wait_seconds": round(self.net_wait_seconds, 3),
                "index_entries": self.index_entries, "sources": self.sources,
                "failures": [{"url": u, "status": s, "reason": r} for u, s, r in self.failures]}


def local_etag(path: str) -> str | None:
    """A cheap change marker for a local file: size and modification time."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}-{st.st_mtime_ns}"


def _init_worker() -> None:
    cv2.setNumThreads(1)


def process_bytes(image_id: int, data: bytes, params: tuple[int, int, int, int],
                  etag: str | None = None, last_modified: str | None = None) -> WorkResult:
    """Decode bytes and extract features; a failure comes back as a status, never raised."""
    t0 = time.process_time()
    max_pixels, work_size, thumb_size, nfeatures = params
    sha = hashlib.sha256(data).hexdigest()
    try:
        img = decode_image(data, max_pixels, work_size)
        feats = extract_features(img, thumb_size, nfeatures)
    except DecodeError as exc:
        reason = str(exc)
        if reason.startswith("image too large"):
            status = Status.TOO_LARGE
        elif reason.startswith("not an image") or reason == "empty file":
            status = Status.NOT_AN_IMAGE if sniff_format(data) is None else Status.DECODE_ERROR
        else:
            status = Status.DECODE_ERROR
        return WorkResult(image_id, status, reason, sha, len(data), etag, last_modified,
                          cpu_s=time.process_time() - t0)
    return WorkResult(image_id, Status.INDEXED, None, sha, len(data), etag, last_modified,
                      feats, cpu_s=time.process_time() - t0)


def process_path(image_id: int, path: str, params: tuple[int, int, int, int],
                 max_bytes: int) -> WorkResult:
    """Read a local file and process it; a missing or unreadable file is a status."""
    etag = local_etag(path)
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            return WorkResult(image_id, Status.TOO_LARGE,
                              f"file is {size:,} bytes, over the cap of {max_bytes:,}")
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return WorkResult(image_id, Status.MISSING, "file not found")
    except OSError as exc:
        return WorkResult(image_id, Status.MISSING, f"cannot read file: {exc.strerror}")
    return process_bytes(image_id, data, params, etag)


def feature_params(settings: Settings) -> tuple[int, int, int, int]:
    """The feature parameters a worker needs (picklable)."""
    return (settings.max_pixels, settings.work_size, settings.thumb_size, settings.orb_features)


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


class Indexer:
    """Runs the work set of one build or update through fetch, features and the store."""

    def __init__(self, settings: Settings, engine: Engine, progress: bool = True) -> None:
        self.settings = settings
        self.engine = engine
        self.sessions = session_factory(engine)
        self.progress = progress
        self.params = feature_params(settings)

    def run(self, work: list[tuple[int, str, str | None, str | None]],
            summary: BuildSummary) -> None:
        """Process (id, url, etag, last_modified) items; results are written in batches."""
        if not work:
            return
        workers = self.settings.workers or os.cpu_count() or 1
        # forkserver: a plain fork after OpenCV has started its thread pool can deadlock
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["echoimage.pipeline"])
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            asyncio.run(self._run(pool, workers, work, summary))

    async def _run(self, pool: ProcessPoolExecutor, workers: int,
                   work: list[tuple[int, str, str | None, str | None]],
                   summary: BuildSummary) -> None:
        from tqdm import tqdm

        loop = asyncio.get_running_loop()
        bar = tqdm(total=len(work), unit="img", disable=not self.progress, file=sys.stderr,
                   desc="indexing", dynamic_ncols=True)
        urls = {w[0]: w[1] for w in work}
        pending: list[WorkResult] = []
        cpu_slots = asyncio.Semaphore(workers * 2)
        fetcher = None
        remote = [w for w in work if cat.is_url(w[1])]
        local = [w for w in work if not cat.is_url(w[1])]

        async def on_result(res: WorkResult) -> None:
            pending.append(res)
            summary.cpu_seconds += res.cpu_s
            if len(pending) >= self.settings.batch_size:
                self._write(pending, urls, summary)
                pending.clear()
            bar.update(1)

        async def do_local(item: tuple[int, str, str | None, str | None]) -> None:
            async with cpu_slots:
                res = await loop.run_in_executor(pool, process_path, item[0], item[1],
                                                 self.params, self.settings.max_bytes)
            await on_result(res)

        async def do_remote(key: int, fres) -> None:  # type: ignore[no-untyped-def]
            if fres.status == "ok" and fres.data is not None:
                async with cpu_slots:
                    res = await loop.run_in_executor(pool, process_bytes, key, fres.data,
                                                     self.params, fres.etag, fres.last_modified)
            elif fres.status == "not-modified":
                res = WorkResult(key, "unchanged")
            else:
                res = WorkResult(key, _fetch_status(fres.status), fres.reason or fres.status)
            await on_result(res)

        tasks: set[asyncio.Task] = set()
        try:
            for item in local:
                if len(tasks) >= workers * 4:
                    done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    for t in done:
                        t.result()
                tasks.add(asyncio.create_task(do_local(item)))
            if remote:
                from echoimage.fetch.client import FetchConfig, Fetcher

                t_net = time.perf_counter()
                cfg = FetchConfig(max_bytes=self.settings.max_bytes,
                                  total_timeout=self.settings.http_timeout)
                async with Fetcher(cfg) as fetcher:
                    async for key, fres in fetcher.fetch_many(remote):
                        summary.net_wait_seconds += fres.wait_s
                        while len(tasks) >= workers * 4:
                            done, tasks = await asyncio.wait(
                                tasks, return_when=asyncio.FIRST_COMPLETED)
                            for t in done:
                                t.result()
                        tasks.add(asyncio.create_task(do_remote(key, fres)))
                del t_net
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            if pending:
                self._write(pending, urls, summary)
                pending.clear()
            bar.close()

    def _write(self, results: list[WorkResult], urls: dict[int, str],
               summary: BuildSummary) -> None:
        """One transaction for a batch of results."""
        with self.sessions.begin() as session:
            for r in results:
                if r.status == Status.INDEXED and r.features is not None:
                    assert r.sha256 is not None and r.nbytes is not None
                    repo.save_features(session, r.image_id, r.sha256, r.nbytes, r.features,
                                       r.etag, r.last_modified)
                elif r.status == "unchanged":
                    repo.mark_unchanged(session, r.image_id)
                else:
                    repo.save_failure(session, r.image_id, r.status, r.reason or r.status,
                                      r.sha256, r.nbytes)
                    summary.failures.append((urls[r.image_id], r.status, r.reason or ""))
                summary.counts[r.status] += 1


def _fetch_status(status: str) -> str:
    """Map a fetch status onto a store status."""
    return {
        "gone": Status.GONE, "timeout": Status.TIMEOUT, "too-large": Status.TOO_LARGE,
        "not-an-image": Status.NOT_AN_IMAGE,
    }.get(status, Status.HTTP_ERROR)


def build_index(settings: Settings, sources: list[str], progress: bool = True) -> BuildSummary:
    """Index the catalogue sources (the sample catalogue if none): new and retryable items.

    Already-indexed URLs are not fetched again (`index update` re-checks them).
    """
    t0 = time.perf_counter()
    engine = open_store(settings)
    sessions = session_factory(engine)
    summary = BuildSummary(kind="build")
    work_ids: set[int] = set()
    with sessions.begin() as session:
        run_id = repo.start_run(session, "build", sources)
    try:
        for uri, kind, items in resolve_sources(settings, sources):
            summary.sources.append(uri)
            items = list(items)
            with sessions.begin() as session:
                sid = repo.source_id(session, uri, kind)
                for i in range(0, len(items), 1000):
                    repo.add_pending(session, items[i:i + 1000], sid)
                known = repo.known_images(session, [it.url for it in items])
            for k in known.values():
                if k.status in Status.RETRYABLE:
                    work_ids.add(k.id)
                elif k.status == Status.INDEXED:
                    summary.counts["already-indexed"] += 1
                else:
                    summary.counts["known-failure"] += 1
        with sessions() as session:
            work = [(k.id, k.url, None, None) for k in repo.known_images(session).values()
                    if k.id in work_ids]
        work.sort()
        Indexer(settings, engine, progress).run(work, summary)
        manifest = rebuild_index(settings, engine)
        summary.index_entries = manifest.ntotal
    except (EchoImageError, KeyboardInterrupt):
        with sessions.begin() as session:
            repo.finish_run(session, run_id, "failed", dict(summary.counts))
        raise
    summary.seconds = time.perf_counter() - t0
    with sessions.begin() as session:
        repo.finish_run(session, run_id, "ok", dict(summary.counts))
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
