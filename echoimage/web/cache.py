"""A short-lived in-memory cache of recent queries, for the match images and the results page.

Each entry holds a query's results, with its decoded image (the working image, not the
uploaded bytes), under a random token. Entries expire after a TTL and the least recently used are
dropped beyond a maximum count. Uploads never reach the catalogue.

With several serving processes (`echoimage serve --workers N`) the results page and the
match images of a query may be asked of another process than the one that answered it: each
entry is then also kept in a shared directory (``shared``: a private directory that `serve`
makes in memory, /dev/shm, and removes when it stops), where the others find it. Alone, a
process writes nothing.
"""

from __future__ import annotations

import logging
import os
import pickle
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echoimage.api import QueryResult
from echoimage.types import DecodedImage, Match

log = logging.getLogger(__name__)


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

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lock")
        state["_pngs"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.Lock())

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
                 clock: Callable[[], float] = time.monotonic, shared: Path | None = None,
                 on_lookup: Callable[[str], None] | None = None) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("ttl must be positive and max_entries at least 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, CachedQuery] = OrderedDict()
        self._lock = threading.Lock()
        self.shared = shared
        self._on_lookup = on_lookup
        if shared is not None:
            shared.mkdir(mode=0o700, parents=True, exist_ok=True)

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
            self._keep(entry)
        if self.shared is not None:
            self._share(entry)
        return entry

    def _keep(self, entry: CachedQuery) -> None:
        self._entries[entry.token] = entry
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def get(self, token: str) -> CachedQuery | None:
        """The live entry for token, or None when it is unknown or has expired (another
        process's entry is read from the shared directory)."""
        with self._lock:
            self._expire()
            entry = self._entries.get(token)
            if entry is not None:
                self._entries.move_to_end(token)
        result = "hit"
        if entry is None and self.shared is not None:
            entry = self._from_shared(token)
            result = "shared"
        if self._on_lookup is not None:
            self._on_lookup(result if entry is not None else "miss")
        return entry

    # --- the shared directory -------------------------------------------------------------

    def _path(self, token: str) -> Path | None:
        assert self.shared is not None
        if not token or not all(c.isalnum() or c in "-_" for c in token) or len(token) > 64:
            return None  # not a token this cache made
        return self.shared / token

    def _share(self, entry: CachedQuery) -> None:
        """Write entry where the other processes find it (atomically: temp file + rename)."""
        assert self.shared is not None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.shared, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                pickle.dump((time.time(), entry), f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, self.shared / entry.token)
        except OSError as exc:  # a full /dev/shm: this process still has the entry
            log.warning("cannot share query %s with the other processes: %s", entry.token,
                        exc)

    def _from_shared(self, token: str) -> CachedQuery | None:
        path = self._path(token)
        if path is None:
            return None
        try:
            with path.open("rb") as f:
                wall, entry = pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError):
            return None
        age = time.time() - wall
        if age >= self.ttl:
            return None
        entry.created = self._clock() - age  # on this process's clock
        with self._lock:
            self._keep(entry)
        return entry

    def _purge_shared(self) -> None:
        assert self.shared is not None
        cutoff = time.time() - self.ttl
        try:
            files = [(p.stat().st_mtime, p) for p in self.shared.iterdir()]
        except OSError:
            return
        files.sort()
        # expired ones, and the oldest beyond what every process could hold
        excess = len(files) - self.max_entries * 8
        for n, (mtime, p) in enumerate(files):
            if mtime <= cutoff or n < excess:
                p.unlink(missing_ok=True)

    def purge(self) -> None:
        """Drop expired entries now (the server calls this periodically, so an idle server
        does not keep the last queries past their TTL)."""
        with self._lock:
            self._expire()
        if self.shared is not None:
            self._purge_shared()

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()

    def _expire(self) -> None:
        cutoff = self._clock() - self.ttl
        for token in [t for t, e in self._entries.items() if e.created <= cutoff]:
            del self._entries[token]
