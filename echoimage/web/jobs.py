"""Background jobs of the web server: adding pages or images to the catalogue, de-duplicating
it. A job runs a library function in a thread of its own pool (never the query pool), and
records its status, progress, counts and one-line errors for `GET /api/jobs/{id}`."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
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

    def wait(self, timeout: float) -> bool:
        """Wait until the job is done or failed (at most timeout seconds); True if it is."""
        return self.finished.wait(timeout)

    def progress(self, done: int, total: int | None = None) -> None:
        """Record progress (from the job's thread)."""
        self.done = done
        if total is not None:
            self.total = total

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"id": self.id, "kind": self.kind, "status": str(self.status),
                "params": self.params, "created_at": self.created_at,
                "started_at": self.started_at, "finished_at": self.finished_at,
                "progress": {"done": self.done, "total": self.total},
                "counts": self.counts, "errors": self.errors[:50],
                "error": self.error, "result": self.result}


class JobManager:
    """Runs jobs in a small thread pool and keeps the most recent ones."""

    def __init__(self, workers: int = 2, keep: int = 200) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="echoimage-job")
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, kind: str, params: dict[str, Any], fn: Callable[[Job], None]) -> Job:
        """Queue fn(job); the job's status follows what fn does (an EchoImageError or any
        other exception fails it with a one-line reason)."""
        job = Job(uuid.uuid4().hex, kind, params)
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
            job.finished.set()

    def get(self, job_id: str) -> Job | None:
        """A job by id (None if unknown or forgotten)."""
        with self._lock:
            return self._jobs.get(job_id)

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
