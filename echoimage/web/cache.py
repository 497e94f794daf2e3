"""A short-lived in-memory cache of recent queries, for the match images and the results page.

Each entry holds a query's results, with its decoded image (the working image, not the
uploaded bytes), under a random token. Entries expire after a TTL and the least recently used are
dropped beyond a maximum count. Nothing is written to disk, and uploads never reach the
catalogue.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from echoimage.api import QueryResult
from echoimage.types import DecodedImage, Match


@dataclass
class CachedQuery:
    """One answered query: its label (file name or URL) and results (with the decoded
    image)."""

    token: str
    label: str
    result: QueryResult
    k: int
    created: float
    _pngs: dict[str, bytes] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def image(self) -> DecodedImage:
        """The decoded query the engine searched (kept with its result)."""
        assert self.result.image is not None
        return self.result.image

    def match(self, image_id: int) -> Match | None:
        """The result for a catalogue image, if it is among this query's results."""
        return next((m for m in self.result.matches if m.id == image_id), None)

    def png(self, key: str, make: Callable[[], bytes]) -> bytes:
        """A rendered PNG of this query (made on first use, then kept with the entry)."""
        with self._lock:
            found = self._pngs.get(key)
        if found is None:
            found = make()
            with self._lock:
                self._pngs[key] = found
        return found


class QueryCache:
    """Token → CachedQuery with a TTL and an LRU bound; safe to use from several threads."""

    def __init__(self, ttl: float, max_entries: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("ttl must be positive and max_entries at least 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, CachedQuery] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._entries)

    def expires_in(self, entry: CachedQuery) -> float:
        """Seconds until entry expires (0 when it has)."""
        return max(0.0, entry.created + self.ttl - self._clock())

    def add(self, label: str, result: QueryResult, k: int) -> CachedQuery:
        """Keep a query's results (and its decoded image) under a new random token."""
        entry = CachedQuery(secrets.token_urlsafe(16), label, result, k, self._clock())
        with self._lock:
            self._expire()
            self._entries[entry.token] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return entry

    def get(self, token: str) -> CachedQuery | None:
        """The live entry for token, or None when it is unknown or has expired."""
        with self._lock:
            self._expire()
            entry = self._entries.get(token)
            if entry is not None:
                self._entries.move_to_end(token)
            return entry

    def purge(self) -> None:
        """Drop expired entries now (the server calls this periodically, so an idle server
        does not keep the last queries past their TTL)."""
        with self._lock:
            self._expire()

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()

    def _expire(self) -> None:
        cutoff = self._clock() - self.ttl
        for token in [t for t, e in self._entries.items() if e.created <= cutoff]:
            del self._entries[token]
