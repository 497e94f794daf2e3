"""Hash shortlist over all eight dihedral orientations of the query."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from echoimage.features.hashes import oriented_phashes
from echoimage.index.binary import search
from echoimage.index.parts import PartSet


@dataclass(frozen=True)
class Shortlisted:
    """A catalogue image the shortlist proposes, with the orientation that matched it."""

    id: int
    hash_distance: int
    orientation: int
    view: int = 0  # 0: the whole query; n: its n-th content box
    fixed: bool = False  # the orientation is known (not a guess from a far hash)


def shortlist(index: PartSet | faiss.IndexBinary, small: np.ndarray, k: int
              ) -> list[Shortlisted]:
    """Top-k ids per orientation, merged: each id keeps its best (distance, orientation).

    index is the live index's parts (or one pHash index). Sorted by distance, then
    orientation, then id (stable ties).
    """
    codes = np.frombuffer(b"".join(oriented_phashes(small)), np.uint8).reshape(8, 8)
    hits = index.search_hashes(codes, k) if isinstance(index, PartSet) else \
        search(index, codes, k)
    best: dict[int, tuple[int, int]] = {}
    for o, (ids, dists) in enumerate(zip(hits.ids, hits.distances, strict=True)):
        for i, d in zip(ids.tolist(), dists.tolist(), strict=True):
            if i not in best or (d, o) < best[i]:
                best[i] = (d, o)
    out = [Shortlisted(i, d, o) for i, (d, o) in best.items()]
    out.sort(key=lambda s: (s.hash_distance, s.orientation, s.id))
    return out
