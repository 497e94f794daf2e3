"""A run and its bookkeeping: its summary (counts, failures, times), its record in the
store (running, then ok, failed or interrupted with the reason), its processing phase (a
progress bar, timed), and writing a batch of results with their counts."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from echoimage.errors import EchoImageError
from echoimage.indexing.work import WorkItem, WorkResult
from echoimage.store import repo
from echoimage.store.models import TRANSIENT
from echoimage.types import Outcome, RunStatus, Status, counted

log = logging.getLogger(__name__)


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
    #: files folder sources passed over, by what they look like ("SVG", "PDF", ...)
    skipped: Counter[str] = field(default_factory=Counter)
    #: where the CPU time went: the feature workers' cpu_seconds by stage (read, sha256,
    #: decode, thumbnail, hashes, orb, colour signature, encode), the store writes (the
    #: thread that writes the batches) and the index files' update (the whole process)
    stage_cpu: Counter[str] = field(default_factory=Counter)
    store_cpu_seconds: float = 0.0
    index_cpu_seconds: float = 0.0

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
        self.stage_cpu.update(other.stage_cpu)
        self.store_cpu_seconds += other.store_cpu_seconds
        self.net_wait_seconds += other.net_wait_seconds

    def add_cpu(self, result: WorkResult) -> None:
        """Count a work result's feature-worker CPU time, in all and by stage."""
        self.cpu_seconds += result.cpu_s
        if result.stages:
            self.stage_cpu.update(result.stages)

    def as_dict(self) -> dict:
        """JSON-ready form."""
        return {"kind": self.kind, "counts": dict(self.counts), "processed": self.processed,
                "seconds": round(self.seconds, 3),
                "cpu_seconds": round(self.cpu_seconds, 3),
                "stage_cpu": {k: round(v, 3) for k, v in self.stage_cpu.items()},
                "store_cpu_seconds": round(self.store_cpu_seconds, 3),
                "index_cpu_seconds": round(self.index_cpu_seconds, 3),
                "net_wait_seconds": round(self.net_wait_seconds, 3),
                "work_items": self.work_items, "work_seconds": round(self.work_seconds, 3),
                "work_rate": round(self.work_rate, 3),
                "index_entries": self.index_entries, "index": self.index,
                "sources": self.sources, "skipped": dict(self.skipped),
                "failures": [{"url": u, "status": s, "reason": r} for u, s, r in self.failures]}

    def skipped_note(self) -> str | None:
        """"2 files skipped: 1 SVG, 1 PDF", or None when the sources skipped nothing."""
        total = sum(self.skipped.values())
        if not total:
            return None
        kinds = ", ".join(f"{n} {kind}" for kind, n in
                          sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"{total} file{'s' if total != 1 else ''} skipped: {kinds}"


@contextmanager
def work_phase(summary: BuildSummary, total: int, progress: bool, desc: str
               ) -> Iterator[Callable[[int], None]]:
    """The processing phase of a run: a progress bar on stderr (with progress, and only
    when stderr is a terminal: never into a log or cron mail) and the summary's
    work_items and work_seconds, counted together (the bar's final rate is their ratio:
    smoothing=0 makes tqdm show the average since its start rather than a recent rate).
    Yields advance(n), to call as images are handled."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="img", disable=None if progress else True, file=sys.stderr,
               desc=desc, dynamic_ncols=True, smoothing=0)
    t0 = time.time()  # tqdm's clock, started with the bar

    def advance(n: int) -> None:
        summary.work_items += n
        bar.update(n)

    try:
        yield advance
    finally:
        summary.work_seconds += time.time() - t0
        bar.close()


def write_results(sessions: sessionmaker[Session], results: list[WorkResult],
                  items: dict[int, WorkItem], summary: BuildSummary) -> int:
    """Write a batch of results in one transaction and count them in the summary; returns
    how many image rows changed."""
    changed = 0
    t0 = time.thread_time()
    with sessions.begin() as session:
        records = []
        for r in results:
            item = items[r.image_id]
            counted: str = r.status
            kept = False  # a transient failure of an indexed image: its entry stays
            if r.status == Status.INDEXED and r.record is not None:
                records.append(r.record)
                if item.reextract:
                    counted = Outcome.RE_EXTRACTED
                elif item.was_indexed:
                    counted = Outcome.CHANGED
            elif r.status == Outcome.UNCHANGED:
                repo.mark_unchanged(session, r.image_id, r.etag, r.last_modified)
                if item.recheck is not None:  # the bytes that failed, as they were
                    counted = Outcome.skipped(item.recheck)
            elif item.was_indexed and r.status in TRANSIENT:
                repo.note_attempt(session, r.image_id, r.reason or r.status)
                counted, kept = Outcome.kept(r.status), True
                summary.failures.append((item.url, r.status, r.reason or ""))
            else:
                repo.save_failure(session, r.image_id, r.status, r.reason or r.status,
                                  r.sha256, r.nbytes, r.etag, r.last_modified, r.size)
                summary.failures.append((item.url, r.status, r.reason or ""))
            summary.counts[counted] += 1
            if r.sha256 is not None and r.status != Outcome.UNCHANGED:
                summary.processed += 1
            if r.status != Outcome.UNCHANGED and not kept:
                changed += 1
        repo.save_feature_records(session, records)
    summary.store_cpu_seconds += time.thread_time() - t0
    return changed


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
def one_runner(sessions: sessionmaker[Session], store: Engine) -> Iterator[None]:
    """The block runs as the catalogue's only runner: a build or update that finds another
    going says so in one line (the log's warning) and waits for it to end, then does what
    is left (so nothing is done twice and its counts are true)."""
    from echoimage.store.db import run_lock

    def waiting() -> None:
        with sessions() as session:
            going = [r for r in repo.recent_runs(session, 20)
                     if r["status"] == RunStatus.RUNNING]
        who = (f" (run {going[0]['id']}, {going[0]['kind']}"
               + (f", {going[0]['process']}" if going[0]["process"] else "") + ")"
               if going else "")
        log.warning("another build or update of this catalogue is running%s: waiting for "
                    "it to finish", who)

    with run_lock(store, waiting):
        yield


@contextmanager
def recorded_run(sessions: sessionmaker[Session], summary: BuildSummary,
                 sources: list[str], earlier: float) -> Iterator[None]:
    """Record a run in the store: 'running' while the block runs, then 'ok' (with the
    sources it could not read, if any: unread_sources), or 'failed' / 'interrupted' with
    the reason (run_end), with the summary's counts and duration. The duration (the
    summary's seconds, and the recorded start to the recorded end) is the whole run: the
    block and the earlier seconds the run spent before it could be recorded (a build
    reads its sources before anything is created)."""
    t0 = time.perf_counter() - earlier
    with sessions.begin() as session:
        run_id = repo.start_run(session, summary.kind, sources,
                                repo.now() - timedelta(seconds=earlier))
    try:
        yield
    except BaseException as exc:
        summary.seconds = time.perf_counter() - t0
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
        repo.finish_run(session, run_id, RunStatus.OK, dict(summary.counts),
                        unread_sources(summary))


def unread_sources(summary: BuildSummary) -> str | None:
    """What a run that finished says of the sources it could not read (an update keeps
    their images as they were), in one line: the first, and how many more; None when it
    read them all."""
    unread = [(uri, why) for uri, status, why in summary.failures
              if status == Outcome.SOURCE_UNREADABLE]
    if not unread:
        return None
    uri, why = unread[0]
    more = f" (and {len(unread) - 1} more)" if len(unread) > 1 else ""
    said = why if uri in why else f"{uri}: {why}"
    return (f"{counted(len(unread), 'source')} could not be read, their images kept as they "
            f"were: {said}{more}")
