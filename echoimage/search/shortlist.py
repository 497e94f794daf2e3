"""Hash shortlist over all eight dihedral orientations of the query."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from echoimage.features.hashes import oriented_phashes
from echoimage.index.binary import search


@dataclass(frozen=True)
class Shortlisted:
    """A catalogue image the shortlist proposes, with the orientation that matched it."""

    id: int
    hash_distance: int
    orientation: int
    view: int = 0  # 0: the whole query; n: its n-th content box
    fixed: bool = False  # the orientation is known (not a guess from a far hash)


def shortlist(index: faiss.IndexBinary, small: np.ndarray, k: int,
              delta: faiss.IndexBinary | None = None,
              removed: frozenset[int] = frozenset()) -> list[Shortlisted]:
    """Top-k ids per orientation, merged: each id keeps its best (distance, orientation).

    delta holds entries changed since index was built and removed the ids whose entry in
    index is out of date. Sorted by distance, then orientation, then id (stable ties).
    """
    codes = np.frombuffer(b"".join(oriented_phashes(small)), np.uint8).reshape(8, 8)
    best: dict[int, tuple[int, int]] = {}
    for idx, skip in ((index, removed), (delta, frozenset())):
        if idx is None:
            continue
        hits = search(idx, codes, k + len(skip))
        for o, (ids, dists) in enumerate(zip(hits.ids, hits.distances, strict=True)):
            for i, d in zip(ids.tolist(), dists.tolist(), strict=True):
                if i in skip:
                    continue
                if i not in best or (d, o) < best[i]:
                    best[i] = (d, o)
    out = [Shortlisted(i, d, o) for i, (d, o) in best.items()]
    out.sort(key=lambda s: (s.hash_distance, s.orientation, s.id))
    return out
