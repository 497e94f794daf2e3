"""Settings of the web server only (environment variables ``ECHOIMAGE_*``).

The catalogue's settings (data directory, store, feature and decoder limits, how many
results a query gets: default_k and max_k) stay in `echoimage.config.Settings`; this class
adds what only `echoimage serve` needs.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from echoimage.config import comma_separated


class AccessLog(StrEnum):
    """How the server logs each request."""

    JSON = "json"  # one JSON object per line: timing, status, a search's outcome and stages
    TEXT = "text"  # uvicorn's own line
    OFF = "off"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class WebSettings(BaseSettings):
    """Limits and policy of the HTTP server.

    ``ECHOIMAGE_URL_ALLOWLIST`` is a comma-separated list of host names (``images.local``),
    ``host:port`` pairs (``127.0.0.1:8080``, ``[::1]:8080``), IP addresses or CIDR networks
    (``10.1.0.0/16``) that URL queries may reach although they resolve to a loopback,
    private, link-local or otherwise non-public address.
    """

    model_config = SettingsConfigDict(env_prefix="ECHOIMAGE_", extra="ignore")

    # uploads and URL queries
    max_upload_bytes: int = 20 * 1024 * 1024
    url_allowlist: Annotated[list[str], NoDecode] = []
    url_timeout: float = 10.0
    url_max_redirects: int = 5

    # serving processes (`echoimage serve`): each loads the index (memory-mapped: the
    # processes share its pages) and answers queries on its own; 0: one per usable core
    serve_workers: int = 0
    # seconds the supervisor waits for a worker process to answer its health check
    # (starting up included: importing OpenCV, FAISS and the rest takes seconds on a busy
    # machine) before it restarts it
    worker_healthcheck_timeout: int = 60
    # admission, per process: queries running at once (0: the cores each process has,
    # usable cores / serve_workers, at least 1), and queries let wait for one of them;
    # past that a search is refused at once with 503 and Retry-After
    query_threads: int = 0
    max_waiting: int = 8
    retry_after: int = 1  # seconds a refused client is asked to wait
    # /metrics (Prometheus text format); the index's change number and lag are read
    # every metrics_interval seconds (which also starts a refresh of an idle process)
    metrics: bool = True
    metrics_interval: float = 5.0
    access_log: AccessLog = AccessLog.JSON
    # `echoimage serve` loads the index after it starts listening: /healthz answers at
    # once, /readyz and searches say 503 until the index is loaded; False (create_app's
    # default): the application's start-up waits for the load
    load_in_background: bool = False
    # where several processes of one server share recent queries and job records (set by
    # `echoimage serve --workers N`; None: in this process's memory only)
    shared_dir: Path | None = None

    # the short-lived in-memory cache of recent queries (for the match images)
    cache_ttl: float = 600.0
    cache_entries: int = 64

    # the management API (adding pages and images, removing images) exists only with a
    # token; searching needs one only when search_token is set
    api_token: SecretStr | None = None
    search_token: SecretStr | None = None
    job_threads: int = 2  # background jobs (catalogue changes, dedupe) running at once
    max_api_urls: int = 1000  # image URLs one POST /api/catalogue/images may add

    @field_validator("url_allowlist", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return comma_separated(value)

    @field_validator("max_upload_bytes", "url_timeout", "cache_entries", "cache_ttl",
                     "metrics_interval", "retry_after", "worker_healthcheck_timeout")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator("api_token", "search_token", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("query_threads", "max_waiting", "url_max_redirects", "serve_workers")
    @classmethod
    def _not_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must not be negative")
        return value

    @property
    def processes(self) -> int:
        """Serving processes (`serve_workers`, or one per usable core)."""
        return self.serve_workers or usable_cores()

    @property
    def threads(self) -> int:
        """Queries that run at once in one process (the query thread pool's size)."""
        return self.query_threads or max(1, usable_cores() // self.processes)
