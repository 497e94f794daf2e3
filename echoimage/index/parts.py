"""An index held in memory as immutable parts: the base, the segments, and (in a serving
process) a delta of store rows not yet in any segment.

Each part holds some images' pHashes and local descriptors, and the ids whose entries in the
parts before it it replaces (changed images) or removes (gone ones). Nothing is ever
changed in place: an image changed in a newer part is *shadowed* in the older ones, and
searches leave shadowed entries out exactly (the hash search through an id selector, the
local search by a range search whose hits are filtered before the nearest are kept), so a
set of parts answers like one index rebuilt from the same rows with the same quantizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np

from echoimage.index.binary import Hits, id_array, search
from echoimage.index.local import LocalParams, Voted, count_votes, neighbours


@dataclass(frozen=True)
class Part:
    """One immutable piece of the index."""

    name: str
    seq: int  # the store's last change number it includes
    hashes: faiss.IndexBinaryIDMap2  # one pHash per image
    local: faiss.IndexBinary  # the images' local descriptors (IVF or flat)
    touched: np.ndarray  # sorted ids whose entries in older parts it replaces or removes
    ids: np.ndarray = field(init=False)  # sorted ids of the images it holds

    def __post_init__(self) -> None:
        object.__setattr__(self, "ids", id_array(self.hashes))
        object.__setattr__(self, "touched", np.unique(np.asarray(self.touched, np.int64)))


class PartSet:
    """Parts, oldest first, searched as one index."""

    def __init__(self, parts: tuple[Part, ...], quantizer: faiss.IndexBinary | None,
                 nprobe: int) -> None:
        self.parts = parts
        self.quantizer = quantizer
        self.nprobe = min(nprobe, quantizer.ntotal) if quantizer is not None else nprobe
        shadowed, superseded = [], []
        later = np.zeros(0, np.int64)
        for n, part in enumerate(reversed(parts)):
            shadowed.append(part.ids[np.isin(part.ids, later, assume_unique=True)])
            superseded.append(later)
            if n < len(parts) - 1:  # nothing is older than the oldest part
                later = np.union1d(later, np.union1d(part.touched, part.ids))
        #: per part, the ids of its images that newer parts replace or remove
        self.shadowed = tuple(reversed(shadowed))
        #: per part, every id newer parts replace, remove or hold (its local entries of
        #: these ids are out of date, whether or not it holds their pHash)
        self.superseded = tuple(reversed(superseded))

    @property
    def size(self) -> int:
        """Live images."""
        return sum(len(p.ids) - len(s) for p, s in zip(self.parts, self.shadowed, strict=True))

    def live_ids(self) -> np.ndarray:
        """Sorted ids of the live images."""
        live = [p.ids[~np.isin(p.ids, s, assume_unique=True)]
                for p, s in zip(self.parts, self.shadowed, strict=True)]
        return np.sort(np.concatenate(live)) if live else np.zeros(0, np.int64)

    def live_local_ids(self) -> np.ndarray:
        """The image id of every live local entry (for verification)."""
        from echoimage.index.local import local_ids

        out = []
        for p, s in zip(self.parts, self.superseded, strict=True):
            ids = local_ids(p.local)
            out.append(ids[~np.isin(ids, s)])
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    @property
    def descriptors(self) -> int:
        """Local entries, shadowed ones included."""
        return sum(int(p.local.ntotal) for p in self.parts)

    def search_hashes(self, codes: np.ndarray, k: int) -> Hits:
        """The k nearest live pHashes to each code row (ties by id)."""
        per_row: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(len(codes))]
        for part, shadow in zip(self.parts, self.shadowed, strict=True):
            hits = search(part.hashes, codes, k, exclude=shadow)
            for r, (ids, dists) in enumerate(zip(hits.ids, hits.distances, strict=True)):
                per_row[r].append((ids, dists))
        out_i, out_d = [], []
        for found in per_row:
            ids = np.concatenate([f[0] for f in found]) if found else np.zeros(0, np.int64)
            dists = np.concatenate([f[1] for f in found]) if found else np.zeros(0, np.int64)
            order = np.lexsort((ids, dists))[:k]
            out_i.append(ids[order])
            out_d.append(dists[order])
        return Hits(out_i, out_d)

    def vote(self, descriptors: np.ndarray, params: LocalParams, top: int) -> list[Voted]:
        """Images with the most query descriptors among their near neighbours (one vote per
        query descriptor per image), most votes first, ties by id."""
        if len(descriptors) == 0 or top <= 0 or not self.parts:
            return []
        q = query_rows(descriptors, params)
        return count_votes(*self.hits(q, params, self.assign(q)), params, top)

    def assign(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The lists each query row searches, from the shared quantizer."""
        return assign_lists(self.quantizer, q, self.nprobe)

    def hits(self, q: np.ndarray, params: LocalParams,
             assigned: tuple[np.ndarray, np.ndarray] | None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every live entry within max_distance of each query row: (rows, distances, ids)."""
        rows, dists, ids = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], \
            [np.zeros(0, np.int64)]
        for part, shadow in zip(self.parts, self.superseded, strict=True):
            r, d, i = neighbours(part.local, q, params, assigned)
            if len(shadow) and len(i):
                keep = ~np.isin(i, shadow)
                r, d, i = r[keep], d[keep], i[keep]
            rows.append(r)
            dists.append(d)
            ids.append(i)
        return np.concatenate(rows), np.concatenate(dists), np.concatenate(ids)


def assign_lists(quantizer: faiss.IndexBinary | None, q: np.ndarray, nprobe: int
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """The nprobe lists each query row searches (distances, list numbers); None without a
    quantizer (flat parts)."""
    return quantizer.search(q, nprobe) if quantizer is not None else None


class ListMemo:
    """The IVF lists of the local descriptors of images as they were at a change number,
    kept from one delta to the next.

    A serving process rebuilds its delta of changed store rows at every change of the
    store (`search.live`); assigning their descriptors to lists is most of that work, and
    grows with the delta. With the memo, an image row the last delta held keeps its lists
    and only the rows new since are assigned. It holds the last delta's rows only, and
    forgets them when the quantizer is another one."""

    def __init__(self) -> None:
        self._quantizer: faiss.IndexBinary | None = None
        self._lists: dict[tuple[int, int], np.ndarray] = {}
        self.assigned = 0  # descriptor rows assigned by the quantizer (all calls)

    def lists(self, quantizer: faiss.IndexBinary, keys: list[tuple[int, int]],
              counts: np.ndarray, descs: np.ndarray) -> np.ndarray:
        """The list of every row of descs: keys[i] = (image id, change number) owns the
        next counts[i] rows."""
        if quantizer is not self._quantizer:
            self._quantizer, self._lists = quantizer, {}
        bounds = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        if bounds[-1] != len(descs):
            raise ValueError(f"counts cover {bounds[-1]} rows, not {len(descs)}")
        new = [i for i, k in enumerate(keys) if k not in self._lists]
        if new:
            rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in new])
            found = rows  # (empty: no descriptors to assign)
            if len(rows):  # each row's nearest list, as an IVF index's add assigns it
                _, nearest = quantizer.search(np.ascontiguousarray(descs[rows], np.uint8), 1)
                found = nearest.ravel().astype(np.int64)
            self.assigned += len(rows)
            cut = np.cumsum([bounds[i + 1] - bounds[i] for i in new])[:-1]
            for i, got in zip(new, np.split(found, cut), strict=True):
                self._lists[keys[i]] = got
        self._lists = {k: self._lists[k] for k in keys}
        out = [self._lists[k] for k in keys]
        return np.concatenate(out) if out else np.zeros(0, np.int64)


def probe_count(nprobe: int, share: float) -> int:
    """How many of a row's nprobe lists a search probing `share` of them probes (the
    nearest; at least one)."""
    return nprobe if share >= 1.0 else max(1, round(nprobe * share))


def nearest_lists(assigned: tuple[np.ndarray, np.ndarray] | None, share: float
                  ) -> tuple[np.ndarray, np.ndarray] | None:
    """Of an assignment (distances, lists; nearest first), the nearest `share` of each
    row's lists (`probe_count`)."""
    if assigned is None or share >= 1.0:
        return assigned
    n = probe_count(assigned[1].shape[1], share)
    return np.ascontiguousarray(assigned[0][:, :n]), np.ascontiguousarray(assigned[1][:, :n])


def next_probes(assigned: tuple[np.ndarray, np.ndarray] | None,
                probed: tuple[np.ndarray, int] | None
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """The lists a search after one that probed the nearest n lists of some rows probes:
    probed = (rows, n), those rows (a boolean mask) search their other lists, the rows
    new since search their nearest n as those did (-1: not searched)."""
    if assigned is None or probed is None:
        return assigned
    rows, n = probed
    lists = assigned[1].copy()
    lists[rows, :n] = -1
    lists[~rows, n:] = -1
    return assigned[0], lists


def query_rows(descriptors: np.ndarray, params: LocalParams) -> np.ndarray:
    """The query descriptors a vote searches with (the first query_descriptors)."""
    return np.ascontiguousarray(descriptors[: params.query_descriptors], dtype=np.uint8)


def nearest_per_row(rows: np.ndarray, dists: np.ndarray, ids: np.ndarray, k: int
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Of search hits, each query row's k nearest (ties by id): all that `count_votes`
    keeps of them, so the hits of disjoint shards cut this way count as the whole."""
    if len(rows) == 0:
        return rows, dists, ids
    order = np.lexsort((ids, dists, rows))
    rows, dists, ids = rows[order], dists[order], ids[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    keep = rank < k
    return rows[keep], dists[keep], ids[keep]
