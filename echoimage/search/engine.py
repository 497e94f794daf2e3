"""SearchEngine: loads the shortlist index and the store once; answers many queries."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
from sqlalchemy import Engine

from echoimage.config import Settings
from echoimage.errors import EmptyCatalogueError, QueryLimitError
from echoimage.features.colour import colour_distance, colour_signature
from echoimage.features.decode import decode_image
from echoimage.features.dihedral import NAMES, is_mirror, orient
from echoimage.features.hashes import hamming, hash_input, oriented_phashes
from echoimage.features.orb import orb_features
from echoimage.features.regions import collage_cells, content_boxes
from echoimage.features.thumbnail import thumbnail
from echoimage.index.local import LocalParams
from echoimage.search.explain import describe
from echoimage.search.live import LiveIndex, Snapshot
from echoimage.search.rerank import SsimReference, fuse, match_orb, region, ssim_counts
from echoimage.search.shortlist import Shortlisted, shortlist
from echoimage.search.verdict import verdict
from echoimage.store import repo
from echoimage.store.db import session_factory
from echoimage.types import Candidate, DecodedImage, Match, OrbFeatures

if TYPE_CHECKING:
    from echoimage.cluster import ClusterClient
    from echoimage.search.shards import ShardedVotes

log = logging.getLogger(__name__)


@dataclass
class QueryResult:
    """Ranked matches of one query (each with its verdict), plus timings in milliseconds
    and the decoded query image."""

    matches: list[Match]
    timings: dict[str, float] = field(default_factory=dict)
    width: int = 0
    height: int = 0
    image: DecodedImage | None = field(default=None, repr=False)

    @property
    def copies(self) -> list[Match]:
        """The matches that are copies (every verdict but `different`)."""
        return [m for m in self.matches if m.verdict.is_copy]

    @property
    def found(self) -> bool:
        """True when some match is a copy; False means "no copy found"."""
        return bool(self.copies)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: found, the results in rank order, the timings."""
        return {"found": self.found, "results": [m.to_dict() for m in self.matches],
                "timings": {k: round(v, 2) for k, v in self.timings.items()}}


class SearchEngine:
    """Answers queries from the store and its live index (`search.live.LiveIndex`).

    The index files are loaded once and rebuilt when missing, damaged or built for another
    store or other parameters. Before every query the engine takes the live index's current
    snapshot: rows the store changed after the files were written are searched from an
    in-memory delta, so a query never answers from an index that disagrees with the store;
    a serving process (background=True) refreshes in a thread, so a query never waits.
    """

    def __init__(self, settings: Settings, store: Engine, rebuild: bool = True,
                 background: bool = False) -> None:
        self.settings = settings
        self.store = store
        self.sessions = session_factory(store)
        self.live = LiveIndex(settings, store, rebuild=rebuild, background=background)
        self.cluster: ClusterClient | None = None
        self.shards: ShardedVotes | None = None
        if settings.cluster and settings.index_shards > 1:
            # the vote search fans out to index shards held on the cluster's workers
            from echoimage.cluster import ClusterClient
            from echoimage.search.shards import ShardedVotes

            self.cluster = ClusterClient(settings.cluster)
            self.shards = ShardedVotes(self.cluster.client, settings, settings.index_shards)
            self.shards.place(self.live.current())

    def close(self) -> None:
        """Release the cluster client (and a local cluster), if any."""
        if self.cluster is not None:
            self.cluster.close()
            self.cluster, self.shards = None, None

    def refresh(self) -> bool:
        """Bring the index up to the store's last change now; True if anything changed."""
        return self.live.refresh()

    @property
    def size(self) -> int:
        """Number of indexed catalogue images."""
        return self.live.snapshot().size

    def query_bytes(self, data: bytes, k: int, colour_sensitive: bool | None = None
                    ) -> QueryResult:
        """Decode the query bytes with the indexer's decoder and search."""
        t0 = time.perf_counter()
        img = self.decode(data)
        t1 = time.perf_counter()
        res = self.query_image(img, k, sha256=hashlib.sha256(data).hexdigest(),
                               colour_sensitive=colour_sensitive)
        res.timings["decode_ms"] = (t1 - t0) * 1000
        return res

    def decode(self, data: bytes) -> DecodedImage:
        """Query bytes decoded as every query is: the indexer's decoder, at the query's
        working size, with the colour version colour_distance reads."""
        s = self.settings
        return decode_image(data, s.max_pixels, s.query_work_size, s.colour_size)

    def query_image(self, img: DecodedImage, k: int, sha256: str | None = None,
                    colour_sensitive: bool | None = None) -> QueryResult:
        """Shortlist, re-rank and fuse; results de-duplicated by URL and content hash.

        The shortlist is the union of: the pHash neighbours of the whole query in all 8
        orientations; the images its ORB descriptors vote for; the pHash neighbours of each
        content box (a picture inside a border, a screenshot, a captioned copy); and any
        image with the same sha256 (an exact copy). Each result shown gets its catalogue
        entry's metadata, its colour_distance (when the query has a colour version and the
        catalogue row a signature) and its verdict (echoimage.search.verdict), colour-
        sensitive or not (None: Settings.colour_sensitive).
        """
        if not 1 <= k <= self.settings.max_k:
            raise QueryLimitError(f"k must be between 1 and {self.settings.max_k} (max_k), "
                                  f"not {k}")
        # per calling thread (queries come from thread pools, e.g. the web server's): nested
        # OpenMP threads only oversubscribe the cores; a FAISS IVF vote search in a pool
        # thread left at the default cost ~3x more than with one thread
        faiss.omp_set_num_threads(1)
        snap = self.live.current()
        if snap.size == 0:
            raise EmptyCatalogueError("the catalogue has no indexed images")
        s = self.settings
        spent = {"features_ms": 0.0, "shortlist_ms": 0.0, "rerank_ms": 0.0}
        since = [time.perf_counter()]

        def lap(stage: str) -> None:
            now = time.perf_counter()
            spent[stage] += (now - since[0]) * 1000
            since[0] = now

        views = [_View(img.gray, (0, 0, img.gray.shape[1], img.gray.shape[0]), s)]
        views += [_View(img.gray[y:y + h, x:x + w], (x, y, w, h), s)
                  for x, y, w, h in content_boxes(img.gray, s.max_boxes)]
        lap("features_ms")

        n = max(s.rerank_n, k)
        listed = shortlist(snap.parts, views[0].small, s.shortlist_k)
        chosen = [c for c in listed if c.hash_distance <= s.max_hash_distance][:n]
        if len(chosen) < k:
            chosen = listed[:k]
        proposed: dict[int, list[Shortlisted]] = {}
        for c in chosen:
            proposed[c.id] = [c]
        self._box_proposals(snap, views, 1, proposed)
        with self.sessions() as session:
            exact_ids = set(repo.ids_by_sha256(session, sha256)) if sha256 else set()
            cands = repo.candidates(session, sorted(set(proposed) | exact_ids))
        for i in sorted(exact_ids - set(proposed)):
            self._propose(proposed, cands, views, i, 0)
        lap("shortlist_ms")
        best = self._rerank(proposed, cands, views, img, exact_ids, {})
        lap("rerank_ms")
        votes: dict[int, int] = {}
        if not _confident(best, s.duplicate_threshold):
            # a collage: each cell is a view of its own, looked up by its hashes first
            first = len(views)
            views += [_View(img.gray[y:y + h, x:x + w], (x, y, w, h), s)
                      for x, y, w, h in collage_cells(img.gray)]
            fresh = self._box_proposals(snap, views, first, proposed)
            self._load(cands, set(fresh))
            lap("shortlist_ms")
            _keep_best(best, self._rerank(fresh, cands, views, img, exact_ids, {}))
            lap("rerank_ms")
        if not _confident(best, s.duplicate_threshold):
            # no hash neighbour is a copy: each view's own keypoints vote for images (a
            # crop, a picture inside a page), proposed as seen from the view that voted
            vote_view: dict[int, int] = {}
            for v, view in enumerate(views):
                for i, count in self._votes(snap, view.orb(False).descriptors).items():
                    if count > votes.get(i, 0):
                        votes[i], vote_view[i] = count, v
            self._load(cands, set(votes))
            for i, m in best.items():
                best[i] = replace(m, votes=votes.get(i, 0))
            fresh = {i: props for i, v in vote_view.items()
                     if (props := self._propose(proposed, cands, views, i, v))}
            lap("shortlist_ms")
            _keep_best(best, self._rerank(fresh, cands, views, img, exact_ids, votes))
            lap("rerank_ms")
        if not _confident(best, s.duplicate_threshold):
            # a mirrored crop: the mirrored query's keypoints vote (ORB is not mirror-
            # invariant), proposing images in the mirror orientation. Overlaid text,
            # stickers and frames have the strongest corners and would take most of the
            # view's keypoints: a wider set reaches the photo under them (a mirrored,
            # turned crop under a caption)
            views.append(_View(img.gray, views[0].box, s, s.wide_orb_features,
                               s.wide_rerank_descriptors))
            fresh = self._voted(snap, views, len(views) - 1, True, proposed, cands, votes)
            lap("shortlist_ms")
            _keep_best(best, self._rerank(fresh, cands, views, img, exact_ids, votes))
            lap("rerank_ms")
        if not _confident(best, s.duplicate_threshold):
            # the wide set as it is (text or stickers on a copy that is not mirrored)
            fresh = self._voted(snap, views, len(views) - 1, False, proposed, cands, votes)
            lap("shortlist_ms")
            _keep_best(best, self._rerank(fresh, cands, views, img, exact_ids, votes))
            lap("rerank_ms")
        if not _confident(best, s.duplicate_threshold):
            # match the most promising against all their stored keypoints (a small crop
            # may hold few of the strongest)
            order = sorted(best.values(), key=lambda m: (-m.score, -m.orb_inliers, -m.votes,
                                                         m.hash_distance, m.id))
            _keep_best(best, {m.id: self._best(proposed[m.id], cands[m.id], views, img,
                                               m.id in exact_ids, m.votes, None)
                              for m in order[:s.deep_rerank_n]
                              if len(cands[m.id].orb) > s.rerank_keypoints})
            lap("rerank_ms")
        matches = sorted(best.values(),
                         key=lambda m: (not m.exact, -m.score, m.hash_distance, m.id))
        shown = [self._with_ssim(m, cands, views, img) for m in _dedupe(matches)[:k]]
        shown = self._described(shown, img, views, colour_sensitive)
        lap("rerank_ms")
        return QueryResult(shown, spent, width=img.width, height=img.height, image=img)

    def _described(self, shown: list[Match], img: DecodedImage, views: list[_View],
                   colour_sensitive: bool | None) -> list[Match]:
        """The shown matches with their catalogue entries' metadata, colour_distance and
        verdict.

        The query's colours are those of the part that matched (query_box), or else the
        nearest of the whole query's and its content boxes' (a picture inside a border or
        a page keeps its colours, the page around it does not count). A match covering
        only part of the catalogue image is compared as such (see colour_distance).
        """
        sigs: dict[int, bytes] = {}
        ids = [m.id for m in shown]
        with self.sessions() as session:
            meta = repo.metadata_of(session, ids)
            if img.colour is not None and shown:
                sigs = repo.colour_signatures(session, ids)
        own: dict[tuple[float, ...] | None, bytes] = {}

        def signature(box: list[float] | None) -> bytes:
            key = None if box is None else tuple(box)
            if key not in own:
                own[key] = colour_signature(_colour_part(img, box))
            return own[key]

        out = []
        for m in shown:
            dist = None
            if m.id in sigs:
                covered = float((m.transform or {}).get("covered_fraction") or 1.0)
                covered = min(1.0, max(covered, 0.01))
                boxes = [m.query_box] if m.query_box else \
                    [_shown_box(v, i, img) for i, v in enumerate(views)]
                dist = min(colour_distance(signature(b), sigs[m.id], covered) for b in boxes)
            m = replace(m, colour_distance=dist, metadata=meta.get(m.id, {}))
            out.append(replace(m, verdict=verdict(m, self.settings, colour_sensitive)))
        return out

    @staticmethod
    def _with_ssim(m: Match, cands: dict[int, Candidate], views: list[_View],
                   img: DecodedImage) -> Match:
        """m with its SSIM, if scoring left it out (it could not change the score)."""
        if not np.isnan(m.ssim):
            return m
        v = next((i for i, view in enumerate(views) if _shown_box(view, i, img) == m.query_box),
                 0)
        sim = views[v].ssim_ref(NAMES.index(m.orientation)).compare(cands[m.id].thumbnail)
        return replace(m, ssim=sim)

    def _box_proposals(self, snap: Snapshot, views: list[_View], first: int,
                       proposed: dict[int, list[Shortlisted]]
                       ) -> dict[int, list[Shortlisted]]:
        """Propose the close hash neighbours (box_k, within box_max_distance) of views
        first.. (content boxes, collage cells); returns what was added, by image."""
        s = self.settings
        fresh: dict[int, list[Shortlisted]] = {}
        for v in range(first, len(views)):
            for c in shortlist(snap.parts, views[v].small, s.box_k):
                if c.hash_distance <= s.box_max_distance:
                    sl = Shortlisted(c.id, c.hash_distance, c.orientation, v)
                    proposed.setdefault(c.id, []).append(sl)
                    fresh.setdefault(c.id, []).append(sl)
        return fresh

    def _load(self, cands: dict[int, Candidate], ids: set[int]) -> None:
        """Read the candidates among ids not read yet (gone from the store: left out)."""
        missing = sorted(ids - set(cands))
        if missing:
            with self.sessions() as session:
                cands.update(repo.candidates(session, missing))

    def _votes(self, snap: Snapshot, descriptors: np.ndarray) -> dict[int, int]:
        """Images with at least min_votes of these query descriptors among their near
        neighbours in the local-feature index (its top vote_n), with their votes."""
        s = self.settings
        lp = LocalParams.from_settings(s)
        voted = self.shards.vote(snap, descriptors, lp, s.vote_n) \
            if self.shards is not None else snap.parts.vote(descriptors, lp, s.vote_n)
        return {cv.id: cv.votes for cv in voted if cv.votes >= s.min_votes}

    def _voted(self, snap: Snapshot, views: list[_View], v: int, mirror: bool,
               proposed: dict[int, list[Shortlisted]], cands: dict[int, Candidate],
               votes: dict[int, int]) -> dict[int, list[Shortlisted]]:
        """The images view v's keypoints (mirrored or not) vote for, proposed from view v
        (mirrored: in the mirror orientation); their votes are kept in votes. Returns
        what was proposed."""
        counted = self._votes(snap, views[v].orb(mirror).descriptors)
        self._load(cands, set(counted))
        orientation = NAMES.index("mirror") if mirror else None
        fresh = {}
        for i, count in counted.items():
            if props := self._propose(proposed, cands, views, i, v, orientation):
                fresh[i] = props
                votes[i] = max(votes.get(i, 0), count)
        return fresh

    @staticmethod
    def _propose(proposed: dict[int, list[Shortlisted]], cands: dict[int, Candidate],
                 views: list[_View], i: int, v: int, orientation: int | None = None
                 ) -> list[Shortlisted]:
        """Propose image i as seen from view v, unless already proposed so. Without an
        orientation, the one its hash is nearest in (a guess); with one, that orientation
        fixed (known from elsewhere, as a mirror from mirrored votes). Returns what was
        added."""
        fixed = orientation is not None
        if i not in cands or any(c.view == v and c.fixed == fixed
                                 for c in proposed.get(i, [])):
            return []
        codes = views[v].oriented()
        if orientation is None:
            d, o = min((hamming(h, cands[i].phash), o) for o, h in enumerate(codes))
        else:
            d, o = hamming(codes[orientation], cands[i].phash), orientation
        proposed.setdefault(i, []).append(Shortlisted(i, d, o, v, fixed=fixed))
        return [proposed[i][-1]]

    def _rerank(self, proposed: dict[int, list[Shortlisted]], cands: dict[int, Candidate],
                views: list[_View], img: DecodedImage, exact_ids: set[int],
                votes: dict[int, int]) -> dict[int, Match]:
        """Score each proposed image (still in the store) with its strongest keypoints."""
        return {i: self._best(props, cands[i], views, img, i in exact_ids, votes.get(i, 0),
                              self.settings.rerank_keypoints)
                for i, props in proposed.items() if i in cands}

    def _orientations(self, c: Shortlisted) -> list[Shortlisted]:
        """The orientations to score a proposal in. A near hash fixes the orientation; a
        far one hardly does: try the query as it is too (ORB is rotation-invariant; only a
        mirror needs the flipped query), and past orientation_guess_distance only that."""
        s = self.settings
        if c.fixed or c.orientation == 0 or c.hash_distance <= s.orientation_max_distance:
            return [c]
        as_is = Shortlisted(c.id, c.hash_distance, 0, c.view)
        far = c.hash_distance > s.orientation_guess_distance
        return [as_is] if far or not is_mirror(c.orientation) else [as_is, c]

    def _best(self, props: list[Shortlisted], cand: Candidate, views: list[_View],
              img: DecodedImage, exact: bool, votes: int, keypoints: int | None) -> Match:
        """The best-scoring of a candidate's proposals, each in its orientations."""
        scored = [self._score(t, cand, views[t.view], img, exact, votes, keypoints)
                  for c in props for t in self._orientations(c)]
        return max(scored, key=lambda m: (m.score, m.orb_inliers))

    def _score(self, c: Shortlisted, cand: Candidate, view: _View, img: DecodedImage,
               exact: bool, votes: int, keypoints: int | None = None) -> Match:
        """Score one proposal: SSIM, ORB against the candidate's first `keypoints` stored
        keypoints (all when None) and the hash distance, fused."""
        s = self.settings
        mirror = is_mirror(c.orientation)
        # SSIM only where it can count (computed for display at the end otherwise)
        sim = view.ssim_ref(c.orientation).compare(cand.thumbnail) \
            if ssim_counts(c.hash_distance) else float("nan")
        orb = cand.orb
        if keypoints is not None and len(orb) > keypoints:
            orb = OrbFeatures(orb.keypoints[:keypoints], orb.descriptors[:keypoints])
        om = match_orb(view.orb_head(mirror), orb, s.ratio_test, s.ransac_px)
        score = 1.0 if exact else fuse(sim, om.inliers, c.hash_distance)
        reg = trans = pairs = None
        if om.pairs is not None:  # in the whole query's working pixels
            pairs = om.pairs.copy()
            if mirror:  # matched on the mirrored view: flip x back
                pairs[:, 0] = view.gray.shape[1] - 1 - pairs[:, 0]
            pairs[:, 0] += view.box[0]
            pairs[:, 1] += view.box[1]
        if om.homography is not None:
            reg = region(om.homography, view.gray.shape, cand.work_scale,
                         (cand.width, cand.height))
            trans = describe(om.homography, mirror, reg, cand, img.scale)
        box = _shown_box(view, c.view, img)
        return Match(
            id=cand.id, url=cand.url, score=score,
            duplicate=exact or score >= s.duplicate_threshold, exact=exact,
            ssim=sim, orb_matches=om.matches, orb_inliers=om.inliers,
            hash_distance=c.hash_distance, orientation=NAMES[c.orientation],
            sha256=cand.sha256, region=reg, transform=trans, votes=votes, query_box=box,
            pairs=pairs,
        )


class _View:
    """The whole query or a content box of it, with features computed on first use."""

    def __init__(self, gray: np.ndarray, box: tuple[int, int, int, int], s: Settings,
                 features: int | None = None, head: int | None = None) -> None:
        self.gray = np.ascontiguousarray(gray)
        self.box = box
        self.small = hash_input(self.gray)
        self._settings = s
        self._features = features or s.query_orb_features
        self._head = head or s.rerank_descriptors
        self._thumb: np.ndarray | None = None
        self._orbs: dict[bool, OrbFeatures] = {}
        self._refs: dict[int, SsimReference] = {}
        self._oriented: list[bytes] | None = None

    def oriented(self) -> list[bytes]:
        """pHashes of the view in the 8 dihedral orientations."""
        if self._oriented is None:
            self._oriented = oriented_phashes(self.small)
        return self._oriented

    def orb(self, mirror: bool) -> OrbFeatures:
        """ORB of the view, or of its mirror image (ORB is not mirror-invariant)."""
        if mirror not in self._orbs:
            gray = np.ascontiguousarray(self.gray[:, ::-1]) if mirror else self.gray
            self._orbs[mirror] = orb_features(gray, self._features)
        return self._orbs[mirror]

    def orb_head(self, mirror: bool) -> OrbFeatures:
        """The first rerank_descriptors keypoints (spread over the view) for matching."""
        orb = self.orb(mirror)
        n = self._head
        return orb if len(orb) <= n else OrbFeatures(orb.keypoints[:n], orb.descriptors[:n])

    def ssim_ref(self, o: int) -> SsimReference:
        """SSIM reference of the view's thumbnail turned by orientation o."""
        if o not in self._refs:
            if self._thumb is None:
                self._thumb = thumbnail(self.gray, self._settings.thumb_size)
            self._refs[o] = SsimReference(orient(self._thumb, o))
        return self._refs[o]


def _colour_part(img: DecodedImage, box: list[float] | None) -> np.ndarray:
    """The query's colour version, or the part of it inside box (original pixels)."""
    colour = img.colour
    assert colour is not None
    if box is None:
        return colour
    f = colour.shape[1] / max(1, img.width)
    x, y, w, h = box
    x0, y0 = min(colour.shape[1] - 1, int(x * f)), min(colour.shape[0] - 1, int(y * f))
    x1, y1 = max(x0 + 1, round((x + w) * f)), max(y0 + 1, round((y + h) * f))
    return colour[y0:y1, x0:x1]


def _shown_box(view: _View, v: int, img: DecodedImage) -> list[float] | None:
    """The query_box of a match found through view v (None for the whole query)."""
    whole = view.box == (0, 0, img.gray.shape[1], img.gray.shape[0])
    return None if v == 0 or whole else [round(z * img.scale, 1) for z in view.box]


def _keep_best(best: dict[int, Match], scored: dict[int, Match]) -> None:
    """Merge new scores into best: each image keeps its better match."""
    for i, m in scored.items():
        best[i] = max(best[i], m, key=lambda x: (x.score, x.orb_inliers)) if i in best else m


def _confident(best: dict[int, Match], threshold: float) -> bool:
    """True when some candidate is already a duplicate."""
    return any(m.exact or m.score >= threshold for m in best.values())


def _dedupe(matches: list[Match]) -> list[Match]:
    """Keep the first (best) match per URL and per content hash."""
    seen_urls: set[str] = set()
    seen_sha: set[str] = set()
    out = []
    for m in matches:
        if m.url in seen_urls or (m.sha256 and m.sha256 in seen_sha):
            continue
        seen_urls.add(m.url)
        if m.sha256:
            seen_sha.add(m.sha256)
        out.append(m)
    return out
