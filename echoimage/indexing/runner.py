"""The runner: one run's work set through fetch, features and the store.

Local files are read by the feature workers; URLs are fetched on the event loop while a
process pool extracts features, so downloads and CPU work overlap. Results are written in
batched transactions. A `Backend` (the Dask cluster's, `echoimage.indexing.dask_backend`)
can take the processing over: it is given the runner, and hands its results back to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Executor, InvalidStateError, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import Engine

from echoimage.aio import run_interruptibly
from echoimage.config import Settings
from echoimage.errors import EchoImageError
from echoimage.fetch.local import file_marker, is_url
from echoimage.index.build import update_index_files
from echoimage.index.local import one_faiss_thread
from echoimage.indexing.runs import BuildSummary, work_phase, write_results
from echoimage.indexing.work import (
    FeatureParams,
    WorkItem,
    WorkResult,
    fetched_result,
    init_worker,
    noop,
    process_bytes,
    process_path,
)
from echoimage.store.db import session_factory
from echoimage.types import Outcome

if TYPE_CHECKING:
    from echoimage.fetch.client import FetcherFactory

#: runs of at most this many images to process skip the worker processes
INLINE_MAX = 4


class Backend(Protocol):
    """Processes a run's work somewhere else than the runner's own pool."""

    def run(self, runner: Runner, work: list[WorkItem], summary: BuildSummary) -> None:
        """Process work, handing results back with runner.write (or, where the backend
        wrote them itself, runner.changed) and progress with runner.handled."""


class Runner:
    """Runs the work set of one build or update through fetch, features and the store."""

    def __init__(self, settings: Settings, store: Engine, progress: bool,
                 fetcher: FetcherFactory | None = None,
                 on_progress: Callable[[int, int], None] | None = None,
                 backend: Backend | None = None) -> None:
        self.settings = settings
        self.fetcher = fetcher  # how URLs are fetched (default: a plain Fetcher)
        self.on_progress = on_progress  # (done, total) after each image
        self.backend = backend  # None: the runner's own process pool
        self.store = store
        self.sessions = session_factory(store)
        self.progress = progress
        self.params = FeatureParams.from_settings(settings)
        self._since_flush = 0  # rows changed since the index files were last brought up

    def run(self, work: list[WorkItem], summary: BuildSummary) -> None:
        """Process the work items; results are written in batched transactions."""
        # a local file whose size and mtime are as recorded needs no worker at all
        same = [w for w in work if not is_url(w.url)
                and w.etag is not None and file_marker(w.url) == w.etag]
        if same:
            items = {w.image_id: w for w in same}
            for i in range(0, len(same), 1000):
                self.write([WorkResult(w.image_id, Outcome.UNCHANGED, etag=w.etag)
                            for w in same[i:i + 1000]], items, summary)
            done = set(items)
            work = [w for w in work if w.image_id not in done]
        if not work:
            return
        if self.backend is not None:
            self.backend.run(self, work, summary)
            return
        if len(work) <= INLINE_MAX:
            # a handful of images (a one-image update): starting worker processes would
            # cost more than the work; a thread of this process does it
            with ThreadPoolExecutor(1) as inline:
                run_interruptibly(self._run(inline, 1, work, summary))
            return
        workers = self.settings.workers or os.cpu_count() or 1
        from loky import ProcessPoolExecutor

        # loky starts each worker as a new interpreter (fork + exec) that imports only the
        # modules of the tasks it is given: never the calling script, so a script without a
        # `__main__` guard builds as well as the command line (multiprocessing's spawn and
        # forkserver run the script again in every worker); a plain fork after OpenCV has
        # started its threads could deadlock
        try:
            pool = ProcessPoolExecutor(workers, initializer=init_worker,
                                       initargs=(os.getpid(), self.params.max_pixels,
                                                 self.settings.worker_nice))
        except OSError as exc:
            raise EchoImageError(f"cannot start the feature workers: {exc}") from None
        try:
            # start every worker now (a first task makes loky start them all: one spawned
            # later would stall the fetch loop) without waiting for them to be ready: the
            # first fetches and the store go on while the workers import their modules
            pool.submit(noop, 0)
            run_interruptibly(self._run(pool, workers, work, summary))
        except BrokenProcessPool as exc:
            raise EchoImageError(
                f"a feature worker died ({worker_death(exc)}): the images indexed so far "
                "are saved; run the command again to go on") from None
        finally:
            with _quiet_cancelled_race():
                pool.shutdown(wait=True, kill_workers=True)

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
            summary.add_cpu(res)
            if len(pending) >= self.settings.batch_size:
                self.write(pending, items, summary)
                pending.clear()
            advance(1)
            done += 1
            self.handled(done, len(work))

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
                        fres.etag, fres.last_modified, item.sha256)
            on_result(res)

        async def submit(job: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
            # the coroutine is made only once it is scheduled: one made and then abandoned
            # by Ctrl-C while waiting for room would be "never awaited"
            nonlocal tasks
            while len(tasks) >= workers * 4:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    t.result()
            tasks.add(asyncio.create_task(job(*args)))

        try:
            for item in work:
                if not is_url(item.url):
                    await submit(do_local, item)
            remote = [(w.image_id, w.url, w.etag, w.last_modified)
                      for w in work if is_url(w.url)]
            if remote:
                cfg = FetchConfig.from_settings(self.settings)
                async with (self.fetcher or Fetcher)(cfg) as fetcher:
                    async for key, fres in fetcher.fetch_many(remote):
                        summary.net_wait_seconds += fres.wait_s
                        await submit(do_remote, items[key], fres)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            if tasks:  # let the cancelled ones finish (no "task was destroyed" warning)
                await asyncio.gather(*tasks, return_exceptions=True)
            if pending:
                self.write(pending, items, summary)
                pending.clear()

    # --- what a backend hands back ----------------------------------------------------

    def write(self, results: list[WorkResult], items: dict[int, WorkItem],
              summary: BuildSummary) -> None:
        """Write a batch of results in one transaction (counted in summary)."""
        self.changed(write_results(self.sessions, results, items, summary))

    def changed(self, rows: int) -> None:
        """Count changed rows; a long run makes its work searchable (and durable in the
        index) as it goes."""
        self._since_flush += rows
        if self._since_flush >= self.settings.index_flush_rows:
            self._since_flush = 0
            with one_faiss_thread():
                update_index_files(self.settings, self.store, retrain=False)

    def handled(self, done: int, total: int) -> None:
        """done of the run's total images are handled (on_progress, if any)."""
        if self.on_progress is not None:
            self.on_progress(done, total)


def run_work(runner: Runner, work: Iterable[WorkItem], summary: BuildSummary) -> None:
    """Process the work items in id order, then bring the index files up to the store's
    last change."""
    runner.run(sorted(work, key=lambda w: w.image_id), summary)
    t0 = time.process_time()
    with one_faiss_thread():
        report = update_index_files(runner.settings, runner.store)
    summary.index_cpu_seconds += time.process_time() - t0
    summary.index_entries = report.images
    summary.index = report.as_dict()


class _CancelledRaceFilter(logging.Filter):
    """Drops loky's report of its manager thread failing a future that asyncio has already
    cancelled (InvalidStateError): after Ctrl-C the run's tasks cancel their pending work
    items while the pool shuts down and fails them too; nothing is lost, the run is
    recorded as interrupted, and the report would only print a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, InvalidStateError)


@contextmanager
def _quiet_cancelled_race() -> Iterator[None]:
    """While a pool shuts down: `_CancelledRaceFilter` on concurrent.futures' logger."""
    logger = logging.getLogger("concurrent.futures")
    quiet = _CancelledRaceFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def worker_death(exc: BaseException) -> str:
    """How a feature worker died, in a few words (from the pool's error)."""
    text = str(exc)
    for signal_name, what in (("SIGKILL", "killed: out of memory, or by kill -9"),
                              ("SIGSEGV", "it crashed"), ("SIGTERM", "terminated")):
        if signal_name in text:
            return what
    return "killed, or out of memory"
