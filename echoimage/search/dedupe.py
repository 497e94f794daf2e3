"""De-duplicating a catalogue: groups of its own images that are copies of each other.

Pairs are proposed, confirmed and grouped:

* **proposed** by pHashes: each image's stored thumbnail is hashed as a whole in all 8
  orientations (mirrors and quarter turns), as its central 80% (a copy that is a crop of
  it) and, when it has flat margins, without them (a copy with a border: it is the part
  inside); every catalogue pHash within `dedupe_hash_radius` bits of one of these (within
  `dedupe_wide_radius` of the whole image as it is: a slightly rotated copy) is a
  candidate. With `crops`, each image's stored descriptors also vote in the local-feature
  index, as a query's do, proposing the images it may be a part of.
* **confirmed** with the query's evidence and decision (`search.evidence`): a pair is a
  copy only with proof, the same bytes, a pHash within 5 bits where one of the two cannot
  show its own detail (origin's view or the other image at most `hash_proof_max_side`
  pixels, or the levels of one crushed where the other's are not) and the view does not
  show the other's detail flat, or geometric agreement (RANSAC inliers of the stored
  keypoints, of the two thumbnails' for a mirrored pair, spread over the match and
  leaving the other's detail shown), and a score (the model's probability, SSIM of the
  two thumbnails in the matching orientation among its inputs) at `duplicate_threshold`.
* **grouped** by union-find over confirmed pairs. Each group names a keeper: the member with
  the most pixels of content (its pixels inside any flat border: a white-bordered copy is
  not kept over its original), among those within KEEP_TOLERANCE of the most the one with
  the least border, then the one indexed first, then the lowest id.

Everything is read from the store and the index; no image is fetched or decoded again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import faiss
import numpy as np
from sqlalchemy import Engine, select

from echoimage.config import Settings
from echoimage.features.dihedral import NAMES, is_mirror, orient
from echoimage.features.hashes import dhash, hamming, hash_input, oriented_phashes, phash
from echoimage.features.orb import orb_detect
from echoimage.features.photometric import needs_normalising
from echoimage.index.binary import build_binary_index
from echoimage.index.build import snapshot
from echoimage.index.local import LocalParams
from echoimage.search import evidence
from echoimage.search.rerank import (
    SsimReference,
    match_orb,
    missing_under_hash,
    spread,
    told_detail,
)
from echoimage.store import repo
from echoimage.store.codec import decode_orb, decode_thumbnail
from echoimage.store.db import session_factory
from echoimage.store.models import FeatureRow, ImageRow, Status
from echoimage.types import OrbFeatures

#: images whose features are read and hashed together
BATCH = 256
#: the quick ORB check: the first keypoints of one image against the first of the other;
#: below QUICK_CLOSE inliers the pair is not a copy, between that and a duplicate's count
#: the full match decides (copies match 130-220 of 300 keypoints, unrelated images < 10)
QUICK_QUERY, QUICK_CAND, QUICK_CLOSE = 100, 250, 8
#: the least share of an image's keypoint area its ORB matches must span to count
MIN_COVER = 0.25
#: keypoints detected on each of two thumbnails to match a mirrored pair (the stored
#: descriptors are not mirror-invariant)
MIRROR_KEYPOINTS = 500


class View(StrEnum):
    """What of an image proposed a pair (a link's `via`), most trusted first."""

    WHOLE = "whole"  # the whole thumbnail, in any orientation
    CENTRAL_CROP = "central-crop"  # its central 80% (the other image is a crop of it)
    INSIDE_BORDER = "inside-border"  # what is inside its flat margins (the other is framed)
    VOTES = "votes"  # its descriptors' votes (the other is a part of it)


#: a view's rank when two propose the same pair (the first is kept)
_RANK = {view: n for n, view in enumerate(View)}


@dataclass(frozen=True)
class Proposal:
    """Why a pair is a candidate: origin's view, turned by orientation, is within distance
    pHash bits of the other image (64 for votes: no hash), or has its votes."""

    distance: int
    view: View
    orientation: int
    origin: int
    votes: int = 0


@dataclass(frozen=True)
class Link:
    """A confirmed pair: b is a copy of a (a's view, turned by orientation, matches b)."""

    a: int
    b: int
    score: float
    hash_distance: int
    ssim: float  # NaN: not computed (the hashes too far apart for it to count)
    orb_inliers: int
    orientation: str
    via: View  # what proposed it
    votes: int = 0
    proof: evidence.Proof = evidence.Proof.NONE  # what proves it a copy

    def evidence(self) -> dict[str, Any]:
        """The evidence as a JSON-ready dict."""
        return {"score": round(self.score, 4), "hash_distance": self.hash_distance,
                "ssim": None if np.isnan(self.ssim) else round(self.ssim, 4),
                "orb_inliers": self.orb_inliers,
                "orientation": self.orientation, "via": self.via, "votes": self.votes,
                "proof": self.proof.value}


@dataclass(frozen=True)
class Member:
    """One image of a group."""

    id: int
    url: str
    width: int
    height: int
    indexed_at: str
    keep: bool
    link: Link | None  # the strongest link that ties it to another member (None: keeper)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; `id` and `url` as in query results."""
        out: dict[str, Any] = {"id": self.id, "url": self.url, "keep": self.keep,
                               "width": self.width, "height": self.height,
                               "indexed_at": self.indexed_at}
        if self.link is not None:
            other = self.link.b if self.link.a == self.id else self.link.a
            out.update(linked_to=other, **self.link.evidence())
        return out


@dataclass(frozen=True)
class Group:
    """Images that are copies of each other, the keeper first."""

    number: int
    members: tuple[Member, ...]
    links: tuple[Link, ...]

    @property
    def keeper(self) -> Member:
        """The member to keep."""
        return self.members[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (one line of `dedupe --json`)."""
        return {"group": self.number, "keep": self.keeper.id, "size": len(self.members),
                "members": [m.to_dict() for m in self.members],
                "links": [{"a": ln.a, "b": ln.b, **ln.evidence()} for ln in self.links]}


@dataclass
class DedupeResult:
    """The groups of a catalogue, and what finding them cost."""

    groups: list[Group]
    images: int
    seq: int  # the store's change number the groups are of
    crops: bool
    candidates: int = 0  # pairs checked
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        """Images that are not their group's keeper."""
        return sum(len(g.members) - 1 for g in self.groups)

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts and timings."""
        return {"groups": len(self.groups), "duplicates": self.duplicates,
                "images": self.images, "seq": self.seq, "crops": self.crops,
                "candidates": self.candidates, "seconds": round(self.seconds, 3),
                "ms_per_image": round(1000 * self.seconds / max(self.images, 1), 3),
                "stages_s": {k: round(v, 3) for k, v in self.stages.items()}}


@dataclass(frozen=True)
class _Row:
    id: int
    url: str
    width: int
    height: int
    indexed_at: str
    phash: bytes
    dhash: bytes
    sha256: str | None = None
    nbytes: int = 0  # the file's size


@dataclass
class _Feats:
    """An image's stored thumbnail and keypoints (in working pixels, `work_scale` original
    pixels each), read when needed."""

    thumb: np.ndarray
    orb: OrbFeatures
    work_scale: float = 1.0


def margins(thumb: np.ndarray, flat: float = 6.0, least: int = 8
            ) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) inside flat margins of a thumbnail (rows/columns of nearly one value,
    from the edges in), or None when there are none or almost nothing is left."""
    t = thumb.astype(np.float32)
    rows, cols = t.std(axis=1), t.std(axis=0)

    def run(values: np.ndarray) -> int:
        n = 0
        while n < len(values) and values[n] < flat:
            n += 1
        return n

    top, bottom = run(rows), run(rows[::-1])
    left, right = run(cols), run(cols[::-1])
    if max(top, bottom, left, right) < least:
        return None
    h, w = thumb.shape
    x, y, ww, hh = left, top, w - left - right, h - top - bottom
    if ww < w // 3 or hh < h // 3:
        return None
    return x, y, ww, hh


def view_pixels(thumb: np.ndarray) -> dict[View, np.ndarray]:
    """The parts of a thumbnail an image is proposed from: whole, its central 80%, and
    (when it has flat margins) what is inside them."""
    h, w = thumb.shape
    cy, cx = h // 10, w // 10
    out = {View.WHOLE: thumb,
           View.CENTRAL_CROP: np.ascontiguousarray(thumb[cy:h - cy, cx:w - cx])}
    box = margins(thumb)
    if box is not None:
        x, y, bw, bh = box
        out[View.INSIDE_BORDER] = np.ascontiguousarray(thumb[y:y + bh, x:x + bw])
    return out


def _views(thumb: np.ndarray) -> list[tuple[View, list[bytes], list[bytes]]]:
    """(view, its pHash and dHash per orientation searched: all 8 for the whole
    thumbnail, the view as it is for its parts)."""
    out = []
    for view, px in view_pixels(thumb).items():
        small = hash_input(px)
        whole = view == View.WHOLE
        turns = range(8) if whole else range(1)
        out.append((view, oriented_phashes(small) if whole else [phash(small)],
                    [dhash(orient(small, o)) for o in turns]))
    return out


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        root = x
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while self.parent.get(x, x) != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class Deduper:
    """Finds the groups of one store (see the module docstring)."""

    def __init__(self, settings: Settings, store: Engine, crops: bool,
                 only: set[int] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.sessions = session_factory(store)
        self.crops = crops
        self.only = only  # propose from these images only (the benchmark's timing samples)
        self.dhash: dict[int, bytes] = {}
        self.rows: dict[int, _Row] = {}
        self._feats: dict[int, _Feats] = {}
        # per image and view, for the run: whether its levels are crushed
        self._crushed_views: dict[tuple[int, View], bool] = {}
        # per image and orientation: its thumbnail's keypoints, as long as its features
        self._thumb_orbs: dict[tuple[int, int], OrbFeatures] = {}

    def _features(self, ids: list[int]) -> dict[int, _Feats]:
        """Stored thumbnails and keypoints of ids (cached for this run)."""
        missing = [i for i in ids if i not in self._feats]
        if missing:
            with self.sessions() as s:
                for r in s.execute(select(FeatureRow.image_id, FeatureRow.thumbnail,
                                          FeatureRow.keypoints, FeatureRow.descriptors,
                                          FeatureRow.work_scale)
                                   .where(FeatureRow.image_id.in_(missing))):
                    self._feats[r[0]] = _Feats(decode_thumbnail(r[1]), decode_orb(r[2], r[3]),
                                               float(r[4] or 1.0))
        return {i: self._feats[i] for i in ids if i in self._feats}

    def run(self, progress: Callable[[int], None] | None = None) -> DedupeResult:
        """Propose, confirm and group; progress(images done) after each batch."""
        t0 = time.perf_counter()
        s = self.settings
        with snapshot(self.store) as session:
            seq = repo.current_seq(session)
            rows = [_Row(r[0], r[1], int(r[2] or 0), int(r[3] or 0),
                         r[4].isoformat() if r[4] else "", r[5], r[6], r[7], int(r[8] or 0))
                    for r in session.execute(
                        select(ImageRow.id, ImageRow.url, ImageRow.width, ImageRow.height,
                               ImageRow.indexed_at, FeatureRow.phash, FeatureRow.dhash,
                               ImageRow.sha256, ImageRow.nbytes)
                        .join(FeatureRow, FeatureRow.image_id == ImageRow.id)
                        .where(ImageRow.status == Status.INDEXED).order_by(ImageRow.id))]
        by_id = self.rows = {r.id: r for r in rows}
        self.dhash = {r.id: r.dhash for r in rows}
        ids = np.array([r.id for r in rows], np.int64)
        codes = np.frombuffer(b"".join(r.phash for r in rows), np.uint8).reshape(-1, 8)
        index = build_binary_index(ids, codes)
        stages = {"read": time.perf_counter() - t0}
        parts = None
        if self.crops:
            from echoimage.search.live import LiveIndex

            parts = LiveIndex(s, self.store).snapshot().parts
        candidates: dict[tuple[int, int], Proposal] = {}
        done = 0
        proposing = rows if self.only is None else [r for r in rows if r.id in self.only]
        for lo in range(0, len(proposing), BATCH):
            batch = proposing[lo:lo + BATCH]
            t1 = time.perf_counter()
            feats = self._features([r.id for r in batch])
            self._propose(index, batch, feats, candidates, parts)
            self._feats.clear()  # confirmation reads what it needs again, chunk by chunk
            stages["propose"] = stages.get("propose", 0.0) + time.perf_counter() - t1
            done += len(batch)
            if progress is not None:
                progress(done)
        t2 = time.perf_counter()
        links = []
        joined = _UnionFind()
        # nearest pHashes first; a pair whose images are already in one group needs no
        # confirming (a cluster of n near-identical images costs ~n confirmations, not n²)
        pairs = sorted(candidates.items(), key=lambda kv: (kv[1].distance, kv[0]))
        for lo in range(0, len(pairs), BATCH):
            chunk = [(k, v) for k, v in pairs[lo:lo + BATCH]
                     if joined.find(k[0]) != joined.find(k[1])]
            self._features(sorted({i for (a, b), _ in chunk for i in (a, b)}))
            for (a, b), proposal in chunk:
                if joined.find(a) == joined.find(b):
                    continue
                link = self._confirm(a, b, proposal)
                if link is not None:
                    links.append(link)
                    joined.union(a, b)
            self._feats.clear()
            self._thumb_orbs.clear()
        stages["confirm"] = time.perf_counter() - t2
        linked = sorted({i for ln in links for i in (ln.a, ln.b)})
        content = {i: content_fraction(f.thumb) for i, f in self._features(linked).items()}
        self._feats.clear()
        groups = _group(links, by_id, content)
        return DedupeResult(groups, len(rows), seq, self.crops, len(candidates),
                            time.perf_counter() - t0, stages)

    def _propose(self, index: Any, batch: list[_Row], feats: dict[int, _Feats],
                 candidates: dict[tuple[int, int], Proposal], parts: Any) -> None:
        """Candidate pairs of a batch of images: pHash range search of their views (and,
        with crops, votes of their descriptors)."""
        s = self.settings
        queries, owners = [], []  # per code: (image id, view, orientation, its dHash)
        for r in batch:
            f = feats.get(r.id)
            if f is None:
                continue
            for view, codes, dcodes in _views(f.thumb):
                for o, (code, dcode) in enumerate(zip(codes, dcodes, strict=True)):
                    queries.append(code)
                    owners.append((r.id, view, o, dcode))
        # the whole image as it is reaches further (a slightly rotated or re-framed copy);
        # every other code (turned, mirrored, parts) proposes only near pHashes
        for wide in (True, False):
            chosen = [n for n, (_, view, o, _) in enumerate(owners)
                      if (view == View.WHOLE and o == 0) == wide]
            if not chosen:
                continue
            q = np.frombuffer(b"".join(queries[n] for n in chosen), np.uint8).reshape(-1, 8)
            radius = s.dedupe_wide_radius if wide else s.dedupe_hash_radius
            lims, dist, found = index.range_search(q, radius + 1)
            for row, n in enumerate(chosen):
                owner, view, o, dcode = owners[n]
                for j in range(int(lims[row]), int(lims[row + 1])):
                    other, d = int(found[j]), int(dist[j])
                    if other == owner:
                        continue
                    # a pHash this far off is a copy only when the dHash agrees too: a
                    # copy's is within 17 bits, a chance neighbour's ~25 (bsds500)
                    if d >= s.dedupe_dhash_from and hamming(dcode, self.dhash[other]) > \
                            s.dedupe_dhash_max:
                        continue
                    _offer(candidates, other, Proposal(d, view, o, owner))
        if parts is not None:
            lp = LocalParams.from_settings(s)
            for r in batch:
                f = feats.get(r.id)
                if f is None or not len(f.orb):
                    continue
                for v in parts.vote(f.orb.descriptors[:lp.query_descriptors], lp, s.vote_n):
                    if v.id != r.id and v.votes >= s.min_votes:
                        _offer(candidates, v.id, Proposal(64, View.VOTES, 0, r.id, v.votes))

    def _confirm(self, a: int, b: int, proposal: Proposal) -> Link | None:
        """The pair as a query would find it: origin's view (turned by o) against the
        other, a copy only with proof and a score at the threshold (`search.evidence`);
        None when it is not one.

        Cheapest evidence first: the bytes, the hash, SSIM (where it can count), then ORB
        on a first few keypoints, then (when that is close) on as many as a query
        matches. A copy matches hundreds of keypoints; unrelated images a handful."""
        s = self.settings
        d, view, o, origin = proposal.distance, proposal.view, proposal.orientation, \
            proposal.origin
        other = b if origin == a else a
        feats = self._features([origin, other])
        if origin not in feats or other not in feats or origin not in self.rows or \
                other not in self.rows:
            return None  # changed since it was proposed (or indexed since rows were read)
        fo, ft = feats[origin], feats[other]
        ro, rt = self.rows[origin], self.rows[other]
        part = view_pixels(fo.thumb).get(view, fo.thumb) if view != View.VOTES else fo.thumb
        sim = missing = float("nan")
        near = 0 <= d <= evidence.MODEL.rule.near_hash
        alone = near and self._hash_alone(ro, rt, fo, ft, part, view)
        if view != View.VOTES and (evidence.ssim_counts(d) or alone):
            turned = np.ascontiguousarray(orient(
                part if part.shape == fo.thumb.shape else _square(part, fo.thumb.shape[0]), o))
            if evidence.ssim_counts(d):
                sim = SsimReference(turned).compare(ft.thumb)
            if alone:
                # as a query's: the hash aligns the two as wholes; a view that shows flat
                # what the other has detail in is another picture of the same layout
                missing = missing_under_hash(turned, ft.thumb)
                alone = not missing > evidence.MODEL.rule.max_missing
        ev = evidence.Evidence(
            exact=bool(ro.sha256) and ro.sha256 == rt.sha256, inliers=0, matches=0,
            spread=0.0, ssim=sim, hash_distance=d, hash_alone=alone, missing=missing)
        score = evidence.score(ev)
        if not evidence.is_copy(ev, score, s.duplicate_threshold):
            full = (s.rerank_descriptors, s.rerank_keypoints)
            # a part of another image (votes): all its keypoints, no quick check (the part
            # may hold few of the other's first keypoints)
            steps = [(s.rerank_descriptors, None)] if view == View.VOTES else [
                (QUICK_QUERY, QUICK_CAND), full]
            if is_mirror(o):  # the stored descriptors cannot match a mirror image
                steps = [(MIRROR_KEYPOINTS, None)]
            for n_query, n_cand in steps:
                ev = self._geometry(ev, (ro, fo), (rt, ft), o, n_query, n_cand)
                score = evidence.score(ev)
                if evidence.is_copy(ev, score, s.duplicate_threshold) or \
                        ev.inliers < QUICK_CLOSE:
                    break
        if not evidence.is_copy(ev, score, s.duplicate_threshold):
            return None
        return Link(origin, other, score, d if d <= 64 else -1, sim, ev.inliers, NAMES[o],
                    view, proposal.votes, ev.proof())

    def _hash_alone(self, ro: _Row, rt: _Row, fo: _Feats, ft: _Feats, part: np.ndarray,
                    view: View) -> bool:
        """Whether a near hash may prove the pair a copy by itself, as it may a query's:
        one of the two cannot show its own detail (origin's view at most
        hash_proof_max_side of its pixels, or the other image; the levels of one crushed
        where the other's are not). Noise is not told (its colour is not read);
        noisy_chroma 0 lets the hash prove any pair, as it does any query."""
        s = self.settings
        if s.noisy_chroma <= 0:
            return True
        share = max(part.shape[0] / fo.thumb.shape[0], part.shape[1] / fo.thumb.shape[1])
        sides = [side for side in (max(ro.width, ro.height) * share, max(rt.width, rt.height))
                 if side > 0]  # 0: not known
        if sides and min(sides) <= s.hash_proof_max_side:
            return True
        return self._crushed(ro.id, view, part) != self._crushed(rt.id, View.WHOLE, ft.thumb)

    def _crushed(self, i: int, view: View, pixels: np.ndarray) -> bool:
        """Whether image i's view (these pixels of its thumbnail) has crushed levels."""
        if (i, view) not in self._crushed_views:
            s = self.settings
            self._crushed_views[i, view] = needs_normalising(pixels, s.crushed_bits,
                                                             s.crushed_span)
        return self._crushed_views[i, view]

    def _thumb_orb(self, i: int, thumb: np.ndarray, o: int, n: int) -> OrbFeatures:
        """ORB of image i's thumbnail turned by o (n keypoints), for mirrored pairs."""
        if (i, o) not in self._thumb_orbs:
            self._thumb_orbs[i, o] = orb_detect(np.ascontiguousarray(orient(thumb, o)), n)[0]
        return self._thumb_orbs[i, o]

    def _geometry(self, ev: evidence.Evidence, origin: tuple[_Row, _Feats],
                  other: tuple[_Row, _Feats], o: int, n_query: int, n_cand: int | None
                  ) -> evidence.Evidence:
        """ev with the geometric evidence of origin's first n_query keypoints against the
        other's first n_cand (all: None): RANSAC inliers (of a pair not near in pHash,
        counted only when they span enough of one image: _covers), their spread and the
        other's detail they leave flat. A mirrored pair (orientation o) is matched on the
        two thumbnails, origin's mirrored."""
        s = self.settings
        (ro, fo), (rt, ft) = origin, other
        t = float(fo.thumb.shape[0])
        if is_mirror(o):
            view = np.ascontiguousarray(orient(fo.thumb, o))
            head = self._thumb_orb(ro.id, fo.thumb, o, n_query)
            cand = self._thumb_orb(rt.id, ft.thumb, 0, n_query)
            own, frame, to_own = (t, t), (t, t), np.eye(3)
        else:
            known = _frame(ro, fo), _frame(rt, ft)
            if known[0] is None or known[1] is None:  # keypoints in frames not known
                return replace(ev, inliers=0, matches=0, spread=0.0)
            own, frame = known
            view = fo.thumb
            head = OrbFeatures(fo.orb.keypoints[:n_query], fo.orb.descriptors[:n_query])
            cand = ft.orb if n_cand is None else OrbFeatures(ft.orb.keypoints[:n_cand],
                                                             ft.orb.descriptors[:n_cand])
            to_own = np.diag([own[0] / t, own[1] / t, 1.0])  # thumbnail → working pixels
        om = match_orb(head, cand, s.ratio_test, s.ransac_px)
        # two images near in pHash are held to the query's rule (spread, detail shown);
        # others must match over a real share of one of them too: a distant hash may
        # have only an overlay in common (_covers)
        if om.homography is None or not (
                ev.near_hash() or _covers(om.pairs, head.keypoints, cand.keypoints)):
            return replace(ev, inliers=0, matches=om.matches, spread=0.0)
        covered = spread(om.pairs[:, :2], om.homography, (round(own[1]), round(own[0])),
                         frame)
        missing, inside = told_detail(om, covered, view, om.homography @ to_own, ft.thumb,
                                      frame)
        return replace(ev, inliers=om.inliers, matches=om.matches, spread=covered,
                       missing=missing, interior=inside)


def _frame(row: _Row, f: _Feats) -> tuple[float, float] | None:
    """An image's working frame (width, height), in which its stored keypoints lie; None
    when its size is not known."""
    if not row.width or not row.height or not f.work_scale > 0:
        return None
    return row.width / f.work_scale, row.height / f.work_scale


def _offer(candidates: dict[tuple[int, int], Proposal], other: int, new: Proposal) -> None:
    """Keep the best proposal of each pair (nearest hash; the most trusted view first)."""
    key = (min(new.origin, other), max(new.origin, other))
    old = candidates.get(key)
    if old is None or (new.distance, _RANK[new.view]) < (old.distance, _RANK[old.view]):
        candidates[key] = new


def _covers(pairs: np.ndarray | None, query_kp: np.ndarray, cand_kp: np.ndarray) -> bool:
    """True when, in one of the two images, the matched keypoints span at least MIN_COVER
    of the area its keypoints span. Two catalogue images that share only an overlay (the
    same caption banner, a watermark) match on that strip in both; a copy that is a part of
    another matches all over itself."""
    if pairs is None or not len(pairs):
        return False

    def share(points: np.ndarray, every: np.ndarray) -> float:
        # the middle 90% of each: a few stray inliers do not make a strip an area
        span = np.subtract(*np.percentile(points, [95, 5], axis=0))
        full = np.maximum(np.subtract(*np.percentile(every[:, :2], [95, 5], axis=0)), 1.0)
        return float(span[0] * span[1] / (full[0] * full[1]))

    return max(share(pairs[:, :2], query_kp), share(pairs[:, 2:4], cand_kp)) >= MIN_COVER


def _square(part: np.ndarray, side: int) -> np.ndarray:
    import cv2

    return cv2.resize(part, (side, side), interpolation=cv2.INTER_AREA)


#: content areas within this share of a group's largest count as the same (the border is
#: found on the 256 px thumbnail): the one with the least border among them is kept
KEEP_TOLERANCE = 0.1
#: borders within this share of the image of the least count as the same: a copy's JPEG
#: noise moves a border's edge on the thumbnail by a pixel or two
BORDER_TOLERANCE = 0.02


def content_fraction(thumb: np.ndarray) -> float:
    """The share of an image inside its flat margins (1.0 when it has none)."""
    box = margins(thumb)
    if box is None:
        return 1.0
    h, w = thumb.shape
    return box[2] * box[3] / float(w * h)


def keeper_order(ids: Iterable[int], rows: dict[int, _Row], content: dict[int, float]
                 ) -> list[int]:
    """A group's members, the one to keep first: the most pixels of content (inside any
    border); among those within KEEP_TOLERANCE of the most, the least border (within
    BORDER_TOLERANCE), then the most pixels, then the most bytes (of two alike, the one
    encoded better: a lossless original over its low-quality JPEG), then the first
    indexed, then the lowest id."""
    ids = list(ids)

    def area(i: int) -> float:
        return rows[i].width * rows[i].height * content.get(i, 1.0)

    most = max(area(i) for i in ids)
    near = {i for i in ids if area(i) >= most * (1 - KEEP_TOLERANCE)}
    least = max(content.get(i, 1.0) for i in near)  # the least border
    return sorted(ids, key=lambda i: (i not in near,
                                      content.get(i, 1.0) < least - BORDER_TOLERANCE,
                                      -rows[i].width * rows[i].height, -rows[i].nbytes,
                                      rows[i].indexed_at, i))


def _group(links: list[Link], rows: dict[int, _Row], content: dict[int, float]
           ) -> list[Group]:
    """Union-find over links; the keeper (keeper_order) first; groups largest first."""
    uf = _UnionFind()
    for ln in links:
        uf.union(ln.a, ln.b)
    members: dict[int, set[int]] = {}
    for ln in links:
        root = uf.find(ln.a)
        members.setdefault(root, set()).update((ln.a, ln.b))
    best_link: dict[int, Link] = {}
    for ln in links:
        for i in (ln.a, ln.b):
            if i not in best_link or ln.score > best_link[i].score:
                best_link[i] = ln
    groups = []
    for root, ids in members.items():
        order = keeper_order(ids, rows, content)
        group_links = tuple(sorted((ln for ln in links if uf.find(ln.a) == root),
                                   key=lambda ln: (ln.a, ln.b)))
        ms = tuple(Member(i, rows[i].url, rows[i].width, rows[i].height, rows[i].indexed_at,
                          n == 0, None if n == 0 else best_link[i])
                   for n, i in enumerate(order))
        groups.append(Group(0, ms, group_links))
    groups.sort(key=lambda g: (-len(g.members), g.keeper.id))
    return [Group(n, g.members, g.links) for n, g in enumerate(groups, 1)]


def find_duplicates(settings: Settings, store: Engine, crops: bool,
                    progress: Callable[[int], None] | None = None) -> DedupeResult:
    """The groups of duplicates among the catalogue's indexed images."""
    faiss.omp_set_num_threads(1)
    return Deduper(settings, store, crops).run(progress)


def csv_rows(result: DedupeResult) -> Iterator[dict[str, Any]]:
    """One row per group member (`dedupe --csv`)."""
    for g in result.groups:
        for m in g.members:
            ev = m.link.evidence() if m.link else {}
            linked = (m.link.b if m.link.a == m.id else m.link.a) if m.link else ""
            yield {"group": g.number, "id": m.id, "url": m.url, "keep": m.keep,
                   "width": m.width, "height": m.height, "linked_to": linked,
                   **{k: ev.get(k, "") for k in ("score", "hash_distance", "ssim",
                                                  "orb_inliers", "orientation", "via",
                                                  "proof")}}


CSV_FIELDS = ("group", "id", "url", "keep", "width", "height", "linked_to", "score",
              "hash_distance", "ssim", "orb_inliers", "orientation", "via", "proof")
