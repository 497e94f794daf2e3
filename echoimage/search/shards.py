"""The local-feature index split into shards held by Dask actors on a cluster's workers.

With ``--cluster`` and ``index_shards`` N > 1, a query's vote search fans out: image ids are
partitioned by ``id % N``; each shard is a `VoteShard` actor that builds its part of the
index from the store's rows of its partition (with the quantizer of the engine's index
files, so that lists mean the same everywhere) and keeps it live by the store's change
sequence: a vote asks for the engine's snapshot change number, and a shard behind it reads
the rows changed since its base first. The client assigns the query descriptors to lists
once, every shard returns each descriptor's nearest entries in its partition (as many as a
vote counts: `nearest_per_row`), and the client counts the votes of the union, which is the
vote of one whole index. The pHash index stays whole in the client (8 bytes per image).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from echoimage.index.local import LocalParams, Voted, count_votes, probes
from echoimage.index.parts import (
    Part,
    PartSet,
    assign_lists,
    nearest_lists,
    nearest_per_row,
    next_probes,
    query_rows,
)

if TYPE_CHECKING:
    from distributed import Client

    from echoimage.config import Settings

log = logging.getLogger(__name__)

#: a shard rebuilds its base when the rows changed since it hold more than this share of it
REBASE_SHARE = 0.1


def _in(ids: np.ndarray, shard: int, shards: int) -> np.ndarray:
    return (ids % shards) == shard


class VoteShard:
    """One shard of the local-feature index (a Dask actor: methods run one at a time)."""

    def __init__(self, settings: dict[str, Any], shard: int, shards: int,
                 quantizer: bytes | None) -> None:
        from echoimage.config import Settings
        from echoimage.store.db import open_store

        faiss.omp_set_num_threads(1)
        self.settings = Settings(**settings)
        self.shard, self.shards = shard, shards
        self.params = LocalParams.from_settings(self.settings)
        self.quantizer = faiss.deserialize_index_binary(np.frombuffer(quantizer, np.uint8)) \
            if quantizer is not None else None
        self.nprobe = probes(self.quantizer, self.params)
        self.store = open_store(self.settings, create=False)
        self.lock = threading.Lock()
        t0 = time.perf_counter()
        self.base = self._base()
        self.parts = PartSet((self.base,), self.quantizer, self.nprobe)
        self.seq = self.base.seq
        log.info("shard %d/%d: %d images, %d descriptors in %.1f s", shard, shards,
                 len(self.base.ids), self.base.local.ntotal, time.perf_counter() - t0)

    def _base(self) -> Part:
        from echoimage.index.binary import build_binary_index
        from echoimage.index.build import snapshot, stored_local
        from echoimage.store import repo

        with snapshot(self.store) as session:
            state = repo.store_state(session)
            ids, codes = repo.indexed_hashes(session)
            mine = _in(ids, self.shard, self.shards)
            local = stored_local(session, self.params.per_image, self.quantizer,
                                 lambda lids: _in(lids, self.shard, self.shards))
        return Part(f"shard-{self.shard}-{state.seq}", state.seq,
                    build_binary_index(ids[mine], codes[mine]), local, np.zeros(0, np.int64))

    def _catch_up(self, seq: int) -> None:
        """Read the rows changed after the base (the store may be past seq: a newer
        state answers for an older one, as a serving process's delta does)."""
        from echoimage.index.build import changed_rows, rows_part, snapshot
        from echoimage.store import repo

        with snapshot(self.store) as session:
            now = repo.current_seq(session)
            if now <= self.seq:
                return
            _, rows = changed_rows(session, self.base.seq, self.params.per_image)
        m, lm = _in(rows.ids, self.shard, self.shards), _in(rows.local_ids, self.shard,
                                                            self.shards)
        rows.ids, rows.codes = rows.ids[m], rows.codes[m]
        rows.local_ids, rows.descs = rows.local_ids[lm], np.ascontiguousarray(rows.descs[lm])
        rows.touched = rows.touched[_in(rows.touched, self.shard, self.shards)]
        if len(rows.touched) > REBASE_SHARE * max(1, len(self.base.ids)):
            self.base = self._base()
            self.parts = PartSet((self.base,), self.quantizer, self.nprobe)
        else:
            delta = rows_part(f"shard-{self.shard}-delta-{now}", now, rows, self.quantizer)
            self.parts = PartSet((self.base, delta), self.quantizer, self.nprobe)
        self.seq = max(now, self.base.seq)

    def nearest(self, q: np.ndarray, assigned: tuple[np.ndarray, np.ndarray] | None,
                seq: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each query row's nearest live entries of this shard (rows, distances, ids), as
        of change number seq or later."""
        with self.lock:
            if seq > self.seq:
                self._catch_up(seq)
            parts = self.parts
        return nearest_per_row(*parts.hits(q, self.params, assigned), self.params.neighbours)


class ShardedVotes:
    """The vote search of an engine, fanned out to N `VoteShard` actors on the cluster."""

    def __init__(self, client: Client, settings: Settings, shards: int) -> None:
        self.client = client
        self.settings = settings
        self.shards = shards
        self.actors: list[Any] = []
        self.key: str | None = None  # which quantizer the actors hold
        self.quantizer: faiss.IndexBinary | None = None
        self.nprobe = 0

    def place(self, snap: Any) -> None:
        """(Re)start the actors with the quantizer of snapshot snap, spread over the
        workers."""
        quantizer, key = snap.quantizer, _quantizer_key(snap)
        workers = sorted(self.client.scheduler_info()["workers"])
        if not workers:
            from echoimage.cluster import ClusterError

            raise ClusterError("the cluster has no workers for the index shards")
        blob = faiss.serialize_index_binary(quantizer).tobytes() if quantizer is not None \
            else None
        settings = self.settings.model_dump(mode="json")
        futures = [self.client.submit(VoteShard, settings, i, self.shards, blob, actor=True,
                                      workers=[workers[i % len(workers)]], pure=False)
                   for i in range(self.shards)]
        self.actors = [f.result() for f in futures]
        self.quantizer, self.key = quantizer, key
        self.nprobe = probes(quantizer, LocalParams.from_settings(self.settings))
        log.info("%d index shards on %d workers", self.shards, len(workers))

    def vote(self, snap: Any, descriptors: np.ndarray, params: LocalParams, top: int
             ) -> list[Voted]:
        """The vote of the whole index for the snapshot snap (its quantizer, its change
        number)."""
        if len(descriptors) == 0 or top <= 0:
            return []
        return count_votes(*self.hits(snap, query_rows(descriptors, params), params),
                           params, top)

    def hits(self, snap: Any, q: np.ndarray, params: LocalParams, lists: float = 1.0,
             probed: tuple[np.ndarray, int] | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each query row's nearest entries of the whole index (rows, distances, ids), as
        many as a vote counts, for the snapshot snap: what `count_votes` takes. lists: the
        share of its lists each row probes (the nearest); probed: what an earlier search
        probed, so that these rows probe what `next_probes` says."""
        if _quantizer_key(snap) != self.key:
            self.place(snap)
        if len(q) == 0:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        assigned = next_probes(
            nearest_lists(assign_lists(self.quantizer, q, self.nprobe), lists), probed)
        futures = [a.nearest(q, assigned, snap.seq) for a in self.actors]
        found = [f.result() for f in futures]
        rows, dists, ids = (np.concatenate([f[j] for f in found]) for j in range(3))
        return rows, dists, ids


def _quantizer_key(snap: Any) -> str:
    """What identifies the quantizer of a snapshot (its training, or 'flat')."""
    manifest = snap.manifest
    if snap.quantizer is None or manifest is None or manifest.trained is None:
        return "flat" if snap.quantizer is None else f"memory-{id(snap.quantizer)}"
    return str(manifest.trained["file"]["sha256"])
