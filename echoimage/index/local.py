"""The local-feature index: a prefix of each image's ORB descriptors in a FAISS binary index,
keyed by image id; query descriptors vote for the images of their near neighbours.

Flat (exact) search while the index is small; an IVF index once it holds more than
``flat_max`` descriptors. Measured on 2 cores: a flat scan of 250-300 query descriptors
costs ~14 ms at 50k descriptors and ~340 ms at 1M; IVF with nprobe 16 costs ~2 ms at 50k and
~12 ms at 1M, and found the same crops as the flat scan on the 500-photo benchmark, so IVF
starts at 20k.

The IVF index has 4·√n lists (at least ``min_lists``, at most 262,144) under a two-level
quantizer: k-means of √nlist coarse centroids, then of each coarse cluster's share of the
fine ones (FAISS's `two_level_clustering`, 20 descriptors per list), the fine centroids held
in a small IVF index over the coarse ones, of which ``coarse_nprobe`` are searched to assign
a descriptor; a query descriptor searches ``wide_nprobe`` lists. Against 2·√n lists under a
flat quantizer (every descriptor compared with every centroid, 8 lists searched), which
indexes up to ``flat_quantizer_max`` lists still get (0 by default: none), it trains in a
tenth of the CPU and finds more of a crop's true neighbour pairs in fewer entries (measured
on the assignment alone, the pairs of 300 crop and JPEG queries within 48 bits of their
photo's stored descriptors: at 100k images 0.72-0.76 of the first 64 keypoints' pairs in
the lists the first votes probe, against 0.66-0.72, a no-copy query's first votes scanning
1.01M entries against 1.16M, and training 21 s of CPU against 245 s; at 500 photos 0.88-0.90
against 0.82-0.85). At 1M images, with 8,192 lists a vote search scanned ~18k entries per
list probed, and FAISS's k-means was slow to train.

The trained quantizer is kept: every part of the index (the base and each segment) is an
IVF index over a copy of the same quantizer, so a query assigns its descriptors to lists
once and searches every part with those lists (`search_preassigned`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import faiss
import numpy as np

from echoimage.config import Settings

DESC_BITS = 256
DESC_BYTES = DESC_BITS // 8
TRAIN_PER_LIST = 20
NLIST_PER_SQRT = 2
#: lists per √n once they are more than flat_quantizer_max (two-level quantizer)
WIDE_NLIST_PER_SQRT = 4
MAX_LISTS = 262_144
#: how the index is laid out (lists per descriptor count, training, one IVF per part);
#: recorded in the manifest so that index files laid out otherwise are rebuilt
LAYOUT = f"ivf-{NLIST_PER_SQRT}sqrt-train{TRAIN_PER_LIST}-parts"


@dataclass(frozen=True)
class LocalParams:
    """How the local index is built and searched (from the ``local_*`` settings)."""

    per_image: int  # descriptors kept per catalogue image (a spread_order prefix)
    flat_max: int  # above this many descriptors, use IVF
    nprobe: int  # lists a query descriptor searches (flat quantizer)
    wide_nprobe: int  # the same, two-level quantizer (smaller lists)
    query_descriptors: int
    neighbours: int
    max_distance: int  # Hamming bits (of 256) for a neighbour to count as a vote
    min_lists: int  # the fewest IVF lists
    flat_quantizer_max: int  # more lists: a two-level quantizer
    coarse_nprobe: int = 16  # coarse lists a two-level quantizer searches

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalParams:
        """The local-feature index parameters of settings."""
        s = settings
        return cls(per_image=s.local_per_image, flat_max=s.local_flat_max,
                   nprobe=s.local_nprobe, wide_nprobe=s.local_wide_nprobe,
                   query_descriptors=s.local_query_descriptors,
                   neighbours=s.local_neighbours, max_distance=s.local_max_distance,
                   min_lists=s.local_min_lists, flat_quantizer_max=s.local_flat_quantizer_max)


def is_two_level(quantizer: faiss.IndexBinary | None) -> bool:
    """True for a two-level quantizer (an IVF index of the fine centroids)."""
    return isinstance(quantizer, faiss.IndexBinaryIVF)


def probes(quantizer: faiss.IndexBinary | None, params: LocalParams) -> int:
    """Lists a query descriptor searches with this quantizer."""
    return params.wide_nprobe if is_two_level(quantizer) else params.nprobe


def nlist_for(n: int, params: LocalParams) -> int:
    """IVF lists for n descriptors: 4·√n (a two-level quantizer), or 2·√n while that is no
    more than flat_quantizer_max (a flat one; see the module docstring)."""
    nlist = NLIST_PER_SQRT * np.sqrt(n)
    if nlist > params.flat_quantizer_max:
        nlist = WIDE_NLIST_PER_SQRT * np.sqrt(n)
    return int(min(max(params.min_lists, nlist), MAX_LISTS))


def check_descriptors(ids: np.ndarray, descs: np.ndarray) -> None:
    """ValueError unless descs is N×32 uint8 with one id per row."""
    if descs.ndim != 2 or descs.shape[1] != DESC_BYTES:
        raise ValueError("descriptors must be N×32 uint8")
    if ids.shape[0] != descs.shape[0]:
        raise ValueError("ids and descriptors differ in length")


@contextmanager
def one_faiss_thread() -> Iterator[None]:
    """FAISS's OpenMP at one thread in the calling thread while the block runs (as for
    queries and dedupe). OpenMP's threads spin while they wait for a core: on a busy
    2-core machine, training and filling the local-feature index of 200 bsds500 photos took
    0.6 s of CPU with one thread and 2.5-3.4 s with two, and the two-level quantizer of
    500 photos (34 small k-means runs) trained in 0.4 s with one and 24-70 s with two. At
    1M images' size one thread took 154 s against 88 idle, 118 s against 215 with a core
    busy."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def train_quantizer(descs: np.ndarray, params: LocalParams, seed: int = 0,
                    total: int | None = None) -> faiss.IndexBinary:
    """The IVF quantizer for these descriptors (or for `total` descriptors that descs is a
    sample of): k-means centroids of a sample of 20 per list (FAISS asks for 39: half the
    training time, the same crops found); flat, or two-level beyond flat_quantizer_max
    lists."""
    n = descs.shape[0]
    nlist = nlist_for(total if total is not None else n, params)
    if n < nlist:
        raise ValueError(f"{n} descriptors are too few to train {nlist} lists")
    rng = np.random.default_rng(seed)
    sample = descs[rng.choice(n, size=min(n, TRAIN_PER_LIST * nlist), replace=False)]
    with one_faiss_thread():  # whoever calls: k-means is many short parallel loops
        if nlist > params.flat_quantizer_max:
            return _two_level_quantizer(np.ascontiguousarray(sample), nlist, params, seed)
        quantizer = faiss.IndexBinaryFlat(DESC_BITS)  # owned here: outlives the IVF below
        ivf = faiss.IndexBinaryIVF(quantizer, DESC_BITS, nlist)
        ivf.cp.min_points_per_centroid = TRAIN_PER_LIST
        ivf.train(np.ascontiguousarray(sample))
    return quantizer


def _two_level_quantizer(sample: np.ndarray, nlist: int, params: LocalParams, seed: int
                         ) -> faiss.IndexBinaryIVF:
    """nlist centroids by two-level k-means (on ±1 floats, binarised at 0 as FAISS's own
    binary IVF training does), held in an IVF index over √nlist coarse centroids."""
    from faiss.contrib.clustering import two_level_clustering

    bits = np.unpackbits(sample, axis=1, bitorder="little").astype(np.float32) * 2 - 1
    coarse = max(2, round(np.sqrt(nlist)))
    centroids, _ = two_level_clustering(bits, coarse, nlist, clustering_niter=10,
                                        seed=seed, min_points_per_centroid=1)
    del bits
    fine = np.ascontiguousarray(np.packbits(centroids > 0, axis=1, bitorder="little"))
    level1 = faiss.IndexBinaryFlat(DESC_BITS)
    quantizer = faiss.IndexBinaryIVF(level1, DESC_BITS, coarse)
    quantizer.own_fields = True
    level1.this.disown()
    quantizer.cp.min_points_per_centroid = 1
    quantizer.train(fine)
    quantizer.add(fine)  # list numbers 0..nlist-1
    quantizer.nprobe = params.coarse_nprobe
    return quantizer


def copy_quantizer(quantizer: faiss.IndexBinary) -> faiss.IndexBinary:
    """An independent copy of a quantizer (flat or two-level)."""
    return faiss.deserialize_index_binary(faiss.serialize_index_binary(quantizer))


def quantizer_of(index: faiss.IndexBinary) -> faiss.IndexBinary | None:
    """The trained quantizer of an IVF part (None for a flat one); valid while the part
    lives."""
    if isinstance(index, faiss.IndexBinaryIVF):
        return faiss.downcast_IndexBinary(index.quantizer)
    return None


def empty_part(quantizer: faiss.IndexBinary | None) -> faiss.IndexBinary:
    """An empty local index: IVF over a copy of the trained quantizer, or flat."""
    if quantizer is None:
        return faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(DESC_BITS))
    q = copy_quantizer(quantizer)
    ivf = faiss.IndexBinaryIVF(q, DESC_BITS, q.ntotal)
    ivf.own_fields = True
    q.this.disown()
    assert ivf.is_trained
    return ivf


def local_part(ids: np.ndarray, descs: np.ndarray, quantizer: faiss.IndexBinary | None,
               lists: np.ndarray | None = None) -> faiss.IndexBinary:
    """A local index of descriptors (uint8 N×32) with their image ids (int64, repeated per
    image): IVF over the quantizer, or flat without one. lists: each row's IVF list, when
    already known (`ListMemo`); else the quantizer assigns them."""
    check_descriptors(ids, descs)
    index = empty_part(quantizer)
    if not len(ids):
        return index
    x = np.ascontiguousarray(descs, np.uint8)
    xids = np.ascontiguousarray(ids, np.int64)
    if lists is None or not isinstance(index, faiss.IndexBinaryIVF):
        index.add_with_ids(x, xids)
    else:
        if lists.shape != (len(ids),):
            raise ValueError(f"{len(ids)} rows need as many lists, got {lists.shape}")
        known = np.ascontiguousarray(lists, np.int64)
        index.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(xids), faiss.swig_ptr(known))
    return index


def local_ids(index: faiss.IndexBinary) -> np.ndarray:
    """The image id of every entry of a local index (any order)."""
    if isinstance(index, faiss.IndexBinaryIVF):
        lists = index.invlists
        out = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
               for i in range(index.nlist) if lists.list_size(i)]
        return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)
    if index.ntotal == 0:
        return np.zeros(0, np.int64)
    return faiss.vector_to_array(index.id_map).astype(np.int64)


@dataclass(frozen=True)
class Voted:
    """A catalogue image proposed by local-feature votes."""

    id: int
    votes: int


def list_order(dq: np.ndarray, iq: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A query's (row, list) pairs ordered by list, as one-probe searches: (the row of
    each, its list as an n×1 array, its quantizer distance as an n×1 array); the empty
    probes (list -1) left out.

    FAISS scans the lists query row by query row; a query's rows share many lists (at
    100k images half the lists a vote search probes were probed by another of its rows),
    and scanned one after another each such list is read from memory once, then from the
    cache (the vote search at 100k: ~20% less time, the same hits)."""
    lists = iq.ravel()
    rows = np.repeat(np.arange(iq.shape[0], dtype=np.int64), iq.shape[1])
    keep = np.flatnonzero(lists >= 0)
    order = keep[np.argsort(lists[keep], kind="stable")]
    return (rows[order], np.ascontiguousarray(lists[order].reshape(-1, 1), np.int64),
            np.ascontiguousarray(dq.ravel()[order].reshape(-1, 1)))


def neighbours(index: faiss.IndexBinary, q: np.ndarray, params: LocalParams,
               assigned: tuple[np.ndarray, np.ndarray] | None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every entry within max_distance of each query row: (rows, distances, ids).

    A range search, not a k-NN one, so that entries another part replaces can be dropped
    afterwards without changing which entries are a row's nearest. IVF parts search the
    lists the query rows were assigned to (assigned = (distances, lists) from the shared
    quantizer)."""
    radius = params.max_distance + 1
    if index.ntotal == 0 or len(q) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    if isinstance(index, faiss.IndexBinaryIVF):
        if assigned is None:
            raise ValueError("an IVF part needs the query's list assignment")
        by_list, lists, dq = list_order(*assigned)
        if len(by_list) == 0:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        index.nprobe = 1  # every caller alike: the probes are the pairs' rows
        lims, dist, ids = index.range_search_preassigned(
            np.ascontiguousarray(q[by_list]), radius, lists, dq)
    else:
        by_list = np.arange(len(q), dtype=np.int64)
        lims, dist, ids = index.range_search(q, radius)
    rows = np.repeat(by_list, np.diff(lims).astype(np.int64))
    dist = np.asarray(dist).astype(np.int64)
    keep = dist <= params.max_distance
    return rows[keep], dist[keep], np.asarray(ids, np.int64)[keep]


def count_votes(rows: np.ndarray, dist: np.ndarray, ids: np.ndarray, params: LocalParams,
                top: int) -> list[Voted]:
    """Keep each query row's `neighbours` nearest entries (ties by id), then one vote per
    query row per image: the images with most votes first, ties by id."""
    if len(rows) == 0 or top <= 0:
        return []
    order = np.lexsort((ids, dist, rows))
    rows, ids = rows[order], ids[order]
    starts = np.searchsorted(rows, rows, side="left")
    rank = np.arange(len(rows)) - starts
    keep = rank < params.neighbours
    pairs = np.unique(np.stack([rows[keep], ids[keep]], axis=1), axis=0)
    img_ids, counts = np.unique(pairs[:, 1], return_counts=True)
    order = np.lexsort((img_ids, -counts))[:top]
    return [Voted(int(img_ids[i]), int(counts[i])) for i in order]
