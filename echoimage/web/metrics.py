"""Prometheus metrics of the web server (`GET /metrics`), with `prometheus-client`.

One `Metrics` per application. With several serving processes (`echoimage serve --workers
N`) the values live in prometheus-client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``,
set by `serve` before the workers start): whichever process answers a scrape reports the
sum of all of them (gauges: as each one's mode says). Alone, the metrics are kept in the
application's own registry. Nothing is registered in prometheus-client's global registry.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Mapping
from enum import StrEnum

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)


class SearchMode(StrEnum):
    """The `mode` label of the search metrics."""

    FULL = "full"  # the k nearest images, each scored
    COPIES_ONLY = "copies_only"  # the copies alone


#: the environment variable prometheus-client's multiprocess mode reads
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

CONTENT_TYPE = CONTENT_TYPE_LATEST

#: request latency buckets (seconds): a query takes tens to hundreds of milliseconds
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0,
                   10.0, 30.0)
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)


class _FilesCollector(multiprocess.MultiProcessCollector):
    """prometheus-client's multiprocess collector, leaving out the files it cannot read yet
    or any more: a starting process creates its file before it sizes it, and one read at 0
    bytes fails the whole scrape (prometheus/client_python#1199); a process's file may go
    between the listing and the read."""

    def collect(self) -> Iterable:
        files = []
        for name in glob.glob(os.path.join(self._path, "*.db")):
            try:
                if os.path.getsize(name) > 0:
                    files.append(name)
            except OSError:
                continue
        return self.merge(files, accumulate=True)


def _forget_the_dead(path: str) -> None:
    """Drop the live gauges of serving processes that are gone without closing (kill -9,
    a crash: uvicorn starts another under a new pid), which would count in the sums, the
    lowest change number and the highest lag for good; counters stay (what they
    counted happened)."""
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid = name.rsplit("_", 1)[-1].removesuffix(".db")
        if pid.isdecimal() and not _alive(int(pid)):
            try:
                multiprocess.mark_process_dead(int(pid), path)
            except FileNotFoundError:  # another process's scrape dropped them first
                pass


def _alive(pid: int) -> bool:
    """Whether a process of this pid exists (a pid taken again by another process reads as
    alive: its gauges then stay until that one is gone too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def multiprocess_dir() -> str | None:
    """The multiprocess directory, when this process writes its metrics there."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The server's metrics (names start with ``echoimage_``)."""

    def __init__(self) -> None:
        self.shared = multiprocess_dir()
        self.registry = CollectorRegistry(auto_describe=True)
        # in multiprocess mode the values go to files; a scrape reads them all
        reg = None if self.shared else self.registry

        self.requests = Counter(
            "echoimage_http_requests", "HTTP requests answered, by route and status",
            ["method", "route", "status"], registry=reg)
        self.latency = Histogram(
            "echoimage_http_request_duration_seconds",
            "Time from a request's arrival to its answer, by route",
            ["method", "route"], buckets=LATENCY_BUCKETS, registry=reg)
        self.stages = Histogram(
            "echoimage_search_stage_seconds",
            "Time a search spent in each stage of the query (decode, features, shortlist, "
            "rerank), by mode: full (the k nearest, scored) or copies_only",
            ["stage", "mode"], buckets=STAGE_BUCKETS, registry=reg)
        self.searches = Counter(
            "echoimage_searches", "Searches answered, by result: found (some result is a "
            "copy) or no_copy, and by mode: full or copies_only", ["result", "mode"],
            registry=reg)
        self.refused = Counter(
            "echoimage_search_refused",
            "Searches refused with 503 and Retry-After: busy (the queue was full) or "
            "loading (the index is not loaded yet)", ["reason"], registry=reg)
        def gauge(name: str, doc: str, mode: str) -> Gauge:
            """A gauge; mode says how the processes' values combine (see prometheus-client's
            multiprocess mode)."""
            return Gauge(name, doc, registry=reg, multiprocess_mode=mode)

        self.waiting = gauge("echoimage_queries_waiting",
                             "Searches waiting for a query thread", "livesum")
        self.running = gauge("echoimage_queries_running", "Searches running", "livesum")
        self.capacity = gauge("echoimage_queries_capacity",
                              "Searches the server takes at once before refusing: query "
                              "threads plus queue places", "livesum")
        self.ready = gauge("echoimage_ready_processes",
                           "Serving processes with their index loaded", "livesum")
        self.index_seq = gauge("echoimage_index_change_number",
                               "The store change number the index being searched includes "
                               "(the lowest of the serving processes)", "livemin")
        self.store_seq = gauge("echoimage_store_change_number",
                               "The store's last change number", "livemax")
        self.lag = gauge("echoimage_index_lag_changes",
                         "Store changes the index being searched does not include yet (the "
                         "highest of the serving processes)", "livemax")
        self.lag_seconds = gauge("echoimage_index_lag_seconds",
                                 "Seconds a serving process has been behind the store (0 when "
                                 "it is current; the highest of the processes)", "livemax")
        self.entries = gauge("echoimage_index_entries", "Images in the index being searched",
                             "livemax")
        self.cache = Counter(
            "echoimage_query_cache_lookups",
            "Lookups of a recent query (results page, match images, /api/queries) by "
            "result: hit, shared (found in another process's record) or miss",
            ["result"], registry=reg)

    def observe_search(self, found: bool, timings_ms: Mapping[str, float],
                       copies_only: bool) -> None:
        """Count an answered search and its stage times, by its mode (a search for copies
        only skips scoring what only fills the answer: its stages take less)."""
        mode = SearchMode.COPIES_ONLY if copies_only else SearchMode.FULL
        self.searches.labels("found" if found else "no_copy", mode).inc()
        for stage, ms in timings_ms.items():
            self.stages.labels(stage.removesuffix("_ms"), mode).observe(ms / 1000)

    def render(self) -> bytes:
        """The metrics in Prometheus' text format (every process's, in multiprocess
        mode)."""
        if self.shared:
            _forget_the_dead(self.shared)
            registry = CollectorRegistry()
            _FilesCollector(registry, path=self.shared)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def close(self) -> None:
        """This process is done: its live gauges leave the multiprocess files."""
        if self.shared:
            multiprocess.mark_process_dead(os.getpid(), self.shared)
