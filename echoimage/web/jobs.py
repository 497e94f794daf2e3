"""Background jobs of the web server: adding pages or images to the catalogue, de-duplicating
it. A job runs a library function in a thread of its own pool (never the query pool), and
records its status, progress, counts and one-line errors for `GET /api/jobs/{id}`.

With several serving processes the job runs in the process that took it, and its record
is also written (as JSON, when it starts, ends and at most once a second as it goes) to a
shared directory, where the other processes read it for `GET /api/jobs/{id}`."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from echoimage.errors import EchoImageError

log = logging.getLogger(__name__)


class JobStatus(StrEnum):
    """Where a job is."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass
class Job:
    """One background job and what it has done so far."""

    id: str
    kind: str
    params: dict[str, Any]
    status: JobStatus = JobStatus.QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    done: int = 0
    total: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # why the whole job failed (one line)
    finished: threading.Event = field(default_factory=threading.Event, repr=False,
                                      compare=False)
    on_change: Callable[[Job], None] | None = field(default=None, repr=False, compare=False)
    _shared_at: float = field(default=0.0, repr=False, compare=False)

    def wait(self, timeout: float) -> bool:
        """Wait until the job is done or failed (at most timeout seconds); True if it is."""
        return self.finished.wait(timeout)

    def progress(self, done: int, total: int | None = None) -> None:
        """Record progress (from the job's thread)."""
        self.done = done
        if total is not None:
            self.total = total
        now = time.monotonic()
        if self.on_change is not None and now - self._shared_at >= 1.0:
            self._shared_at = now
            self.on_change(self)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (times in ISO 8601, UTC, as the rest of the API gives them)."""
        return {"id": self.id, "kind": self.kind, "status": str(self.status),
                "params": self.params, "created_at": _iso(self.created_at),
                "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
                "progress": {"done": self.done, "total": self.total},
                "counts": self.counts, "errors": self.errors[:50],
                "error": self.error, "result": self.result}


def _iso(t: float | None) -> str | None:
    """A time.time() value in ISO 8601, UTC."""
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


class JobManager:
    """Runs jobs in a small thread pool and keeps the most recent ones."""

    def __init__(self, workers: int = 2, keep: int = 200, shared: Path | None = None) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="echoimage-job")
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self.shared = shared
        if shared is not None:
            shared.mkdir(mode=0o700, parents=True, exist_ok=True)

    def submit(self, kind: str, params: dict[str, Any], fn: Callable[[Job], None]) -> Job:
        """Queue fn(job); the job's status follows what fn does (an EchoImageError or any
        other exception fails it with a one-line reason)."""
        job = Job(uuid.uuid4().hex, kind, params)
        if self.shared is not None:
            job.on_change = self._share
            self._share(job)
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > self.keep:
                oldest = next(iter(self._jobs.values()))
                if oldest.status in (JobStatus.QUEUED, JobStatus.RUNNING):
                    break
                self._jobs.popitem(last=False)
        self.pool.submit(self._run, job, fn)
        return job

    def _run(self, job: Job, fn: Callable[[Job], None]) -> None:
        job.status, job.started_at = JobStatus.RUNNING, time.time()
        if job.on_change is not None:
            job.on_change(job)
        try:
            fn(job)
            job.status = JobStatus.DONE
        except EchoImageError as exc:
            job.status, job.error = JobStatus.FAILED, str(exc)
            log.info("job %s (%s) failed: %s", job.id, job.kind, exc)
        except Exception as exc:  # a bug: the job fails, the server goes on
            job.status = JobStatus.FAILED
            job.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.exception("job %s (%s) failed", job.id, job.kind)
        finally:
            job.finished_at = time.time()
            if job.on_change is not None:
                job.on_change(job)
            job.finished.set()

    def _share(self, job: Job) -> None:
        """Write the job's record for the other processes (temp file + rename)."""
        assert self.shared is not None
        tmp = self.shared / f".{job.id}.{threading.get_ident()}"
        try:
            tmp.write_text(json.dumps(job.as_dict()))
            os.replace(tmp, self.shared / f"{job.id}.json")
        except OSError as exc:
            log.warning("cannot share job %s with the other processes: %s", job.id, exc)

    def get(self, job_id: str) -> Job | None:
        """A job by id (None if unknown or forgotten)."""
        with self._lock:
            return self._jobs.get(job_id)

    def record(self, job_id: str) -> dict[str, Any] | None:
        """A job's record (`Job.as_dict`): this process's, or another's from the shared
        directory; None if unknown or forgotten."""
        job = self.get(job_id)
        if job is not None:
            return job.as_dict()
        if self.shared is None or not job_id.isalnum() or len(job_id) > 64:
            return None
        try:
            return json.loads((self.shared / f"{job_id}.json").read_text())
        except (OSError, ValueError):
            return None

    def find(self, kind: str, params: dict[str, Any]) -> Job | None:
        """The newest queued or running job of this kind and params, if any."""
        with self._lock:
            for job in reversed(self._jobs.values()):
                if job.kind == kind and job.params == params and job.status in (
                        JobStatus.QUEUED, JobStatus.RUNNING):
                    return job
        return None

    def close(self) -> None:
        """Stop taking jobs; running ones finish in their threads."""
        self.pool.shutdown(wait=False, cancel_futures=True)
