"""The index a query searches: the parts of the index files plus a delta of the store rows
changed after them, held as one immutable snapshot that is replaced whole.

Before each query the engine asks for the current snapshot (`current`): one cheap read of
the store's change number and a stat of the manifest. When either moved on, a serving
process refreshes in a background thread (new segments are read, parts it already holds are
kept, the delta is rebuilt) and swaps the new snapshot in; the query goes on with the one it
has, so it never waits for index maintenance. A one-shot process refreshes at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass

import faiss
from sqlalchemy import Engine

from echoimage.config import Settings
from echoimage.errors import EchoImageError, IndexFileError, IndexStaleError
from echoimage.index.binary import IndexFileDamaged
from echoimage.index.build import (
    delta_part,
    in_memory_index,
    load_parts,
    misfit,
    rebuild_index_files,
    snapshot,
    update_index_files,
)
from echoimage.index.local import LocalParams, probes
from echoimage.index.manifest import MANIFEST_NAME, IndexManifest, read_manifest
from echoimage.index.parts import ListMemo, Part, PartSet
from echoimage.store import repo
from echoimage.store.db import is_readonly, session_factory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """What a query searches: immutable, replaced whole."""

    parts: PartSet
    seq: int  # the store's change number it agrees with
    files_seq: int  # the change number the index files (or the in-memory base) include
    file_parts: tuple[Part, ...]  # the parts that come from the files (or memory)
    quantizer: faiss.IndexBinary | None
    manifest: IndexManifest | None  # None: built in memory (a read-only store)
    manifest_key: tuple[int, int, int] | None
    loaded_at: float

    @property
    def size(self) -> int:
        """Indexed images."""
        return self.parts.size


class LiveIndex:
    """The current snapshot of a store's index, and how it is kept current.

    rebuild: index files that are missing, damaged or do not fit the store are rebuilt (else
    IndexStaleError). background: refresh in a thread (a serving process) rather than at
    the next query.
    """

    #: store rows past which a reader writes them to the files as a segment (when it can)
    #: rather than hold them as a delta searched in memory
    delta_max = 1000

    def __init__(self, settings: Settings, store: Engine, rebuild: bool = True,
                 background: bool = False) -> None:
        self.settings = settings
        self.store = store
        self.sessions = session_factory(store)
        self.rebuild = rebuild
        self.background = background
        self._snap: Snapshot | None = None
        self._lock = threading.Lock()  # one refresh at a time
        self._kick_lock = threading.Lock()
        self._again = False
        self._thread: threading.Thread | None = None
        # the delta's rows keep their IVF lists from one refresh to the next
        self._memo = ListMemo()
        self.refresh()

    # --- reading ---------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The snapshot as it is (no store read)."""
        assert self._snap is not None
        return self._snap

    def current(self) -> Snapshot:
        """The snapshot to answer a query from. When the store or the index files moved on:
        refreshed now (one-shot), or in the background while the query goes on."""
        snap = self.snapshot()
        if not self._stale(snap):
            return snap
        if not self.background:
            self.refresh()
            return self.snapshot()
        self._kick()
        return snap

    def _manifest_key(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.settings.index_dir / MANIFEST_NAME)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def _stale(self, snap: Snapshot) -> bool:
        with self.sessions() as session:
            seq = repo.current_seq(session)
        if seq != snap.seq:
            return True
        return snap.manifest is not None and self._manifest_key() != snap.manifest_key

    # --- refreshing ------------------------------------------------------------------------

    def _kick(self) -> None:
        """Start a background refresh, or ask the running one to go round again."""
        with self._kick_lock:
            if self._thread is not None and self._thread.is_alive():
                self._again = True
                return
            self._again = False
            self._thread = threading.Thread(target=self._background_refresh, daemon=True,
                                            name="echoimage-index-refresh")
            self._thread.start()

    def _background_refresh(self) -> None:
        # one FAISS thread, as queries have: OpenMP threads that spin for a core while the
        # delta's rows are assigned to lists take it from the queries being answered
        faiss.omp_set_num_threads(1)
        while True:
            try:
                self.refresh()
            except EchoImageError as exc:
                log.error("index refresh failed (%s); still answering from change %d", exc,
                          self.snapshot().seq)
            except Exception:  # a bug: say so, keep serving the snapshot there is
                log.exception("index refresh failed; still answering from change %d",
                              self.snapshot().seq)
            with self._kick_lock:
                if not self._again:
                    return
                self._again = False

    def wait(self, timeout: float = 30.0) -> None:
        """Wait for a running background refresh to finish (tests, benchmarks)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def refresh(self) -> bool:
        """Bring the snapshot up to the store's last change now; True if it changed."""
        with self._lock:
            t0 = time.perf_counter()
            old = self._snap
            key = self._manifest_key()
            if old is not None and (old.manifest is None or key == old.manifest_key):
                base = (old.file_parts, old.quantizer, old.files_seq, old.manifest, key)
            else:
                base = self._load_files(old)
            file_parts, quantizer, files_seq, manifest, key = base
            with snapshot(self.store) as session:
                delta, seq = delta_part(session, files_seq, self.settings, quantizer,
                                        self._memo)
            if delta is not None and len(delta.touched) > self.delta_max and \
                    manifest is not None and self.rebuild and not is_readonly(self.store):
                # far behind the store: bring the files up to date, then read them
                self._write_files()
                file_parts, quantizer, files_seq, manifest, key = self._load_files(old)
                with snapshot(self.store) as session:
                    delta, seq = delta_part(session, files_seq, self.settings, quantizer,
                                            self._memo)
            parts = (*file_parts, delta) if delta is not None else file_parts
            lp = LocalParams.from_settings(self.settings)
            new = Snapshot(PartSet(parts, quantizer, probes(quantizer, lp)), seq, files_seq,
                           file_parts, quantizer, manifest, key, time.time())
            self._snap = new
            if old is not None and (old.seq, old.manifest_key) != (new.seq, new.manifest_key):
                log.info("index refreshed to change %d in %.0f ms (%d images, %d parts%s)",
                         seq, (time.perf_counter() - t0) * 1000, new.size, len(parts),
                         f", {len(delta.touched)} changed rows in memory" if delta else "")
            return old is None or old.seq != new.seq or old.manifest_key != new.manifest_key

    def _write_files(self) -> None:
        try:
            update_index_files(self.settings, self.store)
        except IndexFileError as exc:
            log.warning("%s: keeping the index in memory", exc)

    def _load_files(self, old: Snapshot | None
                    ) -> tuple[tuple[Part, ...], faiss.IndexBinary | None, int,
                               IndexManifest | None, tuple[int, int, int] | None]:
        """The parts of the index files (rebuilt first when they cannot serve this store;
        built in memory when the store or the files cannot be written)."""
        cache = {p.name: p for p in old.file_parts} if old is not None else {}
        directory = self.settings.index_dir
        for _ in range(3):
            key = self._manifest_key()
            manifest = read_manifest(directory)
            damaged = False
            why = "there is no index" if manifest is None else None
            if manifest is not None:
                with self.sessions() as session:
                    why = misfit(manifest, repo.store_state(session), self.settings)
            if why is None:
                assert manifest is not None
                try:
                    parts, quantizer = load_parts(directory, manifest, cache, mmap=True)
                    return parts, quantizer, manifest.seq, manifest, key
                except IndexFileDamaged as exc:
                    if self._manifest_key() != key:  # replaced while being read: again
                        continue
                    why, damaged = str(exc), True
            if not self.rebuild:
                raise IndexStaleError(f"the index files cannot be used ({why}): run "
                                      "`echoimage index update`")
            if is_readonly(self.store):
                log.warning("the index files in %s cannot be used (%s) and the store is "
                            "read-only: searching an index rebuilt in memory; run `echoimage "
                            "index update` where the store can be written", directory, why)
                return self._in_memory()
            try:
                if damaged:
                    log.warning("%s: rebuilding the index from the store", why)
                    rebuild_index_files(self.settings, self.store, why)
                else:  # missing or not for this store: the writer says what it does
                    update_index_files(self.settings, self.store)
            except IndexFileError as exc:
                log.warning("%s: searching an index rebuilt in memory", exc)
                return self._in_memory()
        raise IndexStaleError(f"the index in {directory} keeps changing while it is read")

    def _in_memory(self) -> tuple[tuple[Part, ...], faiss.IndexBinary | None, int, None, None]:
        t0 = time.perf_counter()
        pset, seq = in_memory_index(self.settings, self.store)
        log.info("index built in memory in %.1f s", time.perf_counter() - t0)
        return pset.parts, pset.quantizer, seq, None, None
