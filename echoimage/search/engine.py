"""SearchEngine: loads the shortlist index and the store once; answers many queries.

A query runs a cascade of rounds, each only while no candidate is a copy yet
(`search.evidence`: proof, and a score at `duplicate_threshold`). The whole query's
keypoints are detected once (1,500, so that overlaid text cannot take them all); every
round uses a prefix of them, and its mirror image's descriptors come from the same
detection.

1. **hash**: the pHash neighbours of the whole query (8 orientations) and of its content
   boxes, and any image with the same bytes;
2. **votes**: the cells of a collage, by their hashes; then one search of the
   local-feature index for the keypoints of every view (the whole query, its mirror
   image, its content boxes and cells), each group proposing the images it votes for most
   (at least `min_votes`); in a large catalogue it probes the nearest share of each
   keypoint's lists (`probe_share_for`), and a query that goes on searches the rest of
   them, and its next keypoints' nearest share;
3. **deep**: the candidates that are still plausible copies (`stop_inliers` inliers or a
   pHash within `stop_hash` bits, fewer in a large catalogue: `stop_hash_for`;
   `scripts/bench_calibrate.py` says what each rule costs), the most promising first,
   matched with all the query's keypoints against all their stored ones; with none, the
   cascade stops;
4. **normalised**: for a query whose grey levels are crushed into a few (a strong gamma,
   haze, low light: `features.photometric`), the same hash and vote search on a view with
   its histogram equalised.

An answer shows the k best-scoring images, copies first: the hash round scores the whole
query's k nearest hashes at least, so that there are k to show. A query that asks for its
copies only (`copies_only`) is answered with them alone, and its hash round scores only
the neighbours nearer than chance ones come in a catalogue of its size
(`SearchEngine._hash_reach`): at 100,000 entries a no-copy query's nearest hashes are
chance neighbours, and scoring them to show them took about a fifth of a query's CPU.

`QueryResult.rounds` says how long each round that ran took (and the answer: SSIM,
metadata and colour of the results shown).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import cv2
import faiss
import numpy as np
from sqlalchemy import Engine

from echoimage.config import Settings
from echoimage.errors import EmptyCatalogueError, QueryLimitError
from echoimage.features.colour import colour_distance, colour_signature
from echoimage.features.decode import decode_image
from echoimage.features.dihedral import NAMES, is_mirror, orient
from echoimage.features.hashes import fine_hash, hamming, hash_input, oriented_phashes
from echoimage.features.orb import mirror_features, orb_detect
from echoimage.features.photometric import chroma_noise, needs_normalising, normalised
from echoimage.features.regions import collage_cells, content_boxes
from echoimage.features.thumbnail import thumbnail
from echoimage.index.local import LocalParams, Voted, count_votes
from echoimage.index.parts import nearest_lists, next_probes, probe_count
from echoimage.search import evidence
from echoimage.search.explain import describe
from echoimage.search.live import LiveIndex, Snapshot
from echoimage.search.rerank import (
    SsimReference,
    match_orb,
    missing_under_hash,
    region,
    spread,
    told_detail,
)
from echoimage.search.shortlist import Shortlisted, shortlist
from echoimage.search.verdict import verdict
from echoimage.store import repo
from echoimage.store.db import session_factory
from echoimage.types import Candidate, DecodedImage, Match, OrbFeatures

if TYPE_CHECKING:
    from echoimage.cluster import ClusterClient
    from echoimage.search.shards import ShardedVotes

log = logging.getLogger(__name__)

#: the cascade's rounds, in the order they run; then the answer (SSIM, metadata and colour
#: of the results shown)
ROUNDS = ("hash", "votes", "more_votes", "deep", "normalised", "answer")


@dataclass
class QueryResult:
    """Ranked matches of one query (each with its verdict), timings in milliseconds (per
    stage, and per round of the cascade that ran), the decoded query image and whether
    the matches are the copies alone (copies_only)."""

    matches: list[Match]
    timings: dict[str, float] = field(default_factory=dict)
    width: int = 0
    height: int = 0
    image: DecodedImage | None = field(default=None, repr=False)
    rounds: dict[str, float] = field(default_factory=dict)
    copies_only: bool = False

    @property
    def copies(self) -> list[Match]:
        """The matches that are copies (every verdict but `different`)."""
        return [m for m in self.matches if m.verdict.is_copy]

    @property
    def found(self) -> bool:
        """True when some match is a copy; False means "no copy found"."""
        return bool(self.copies)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: found, the results in rank order, whether they are the copies
        alone, the timings and rounds."""
        return {"found": self.found, "results": [m.to_dict() for m in self.matches],
                "copies_only": self.copies_only,
                "timings": {k: round(v, 2) for k, v in self.timings.items()},
                "rounds": {k: round(v, 2) for k, v in self.rounds.items()}}


class _Query:
    """One query on its way through the cascade: its views, what was proposed and scored,
    and the time each stage and round took."""

    def __init__(self, img: DecodedImage, snap: Snapshot, exact_ids: set[int]) -> None:
        self.img = img
        self.snap = snap
        self.exact_ids = exact_ids
        self.views: list[_View] = []
        self.proposed: dict[int, list[Shortlisted]] = {}
        self.cands: dict[int, Candidate] = {}
        self.best: dict[int, Match] = {}
        self.votes: dict[int, int] = {}  # the most votes each image got from one group
        # the vote search's groups of keypoints (view, mirrored) and each one's hits so far
        self.groups: list[tuple[int, bool]] = []
        self.hits: dict[tuple[int, bool], tuple[np.ndarray, ...]] = {}
        # lists the first vote search probed of each row, when not all (vote_probe_lists;
        # set by the votes round, read by the next)
        self.probed = 0
        self.spent = {"features_ms": 0.0, "shortlist_ms": 0.0, "rerank_ms": 0.0}
        self.rounds: dict[str, float] = {}
        self.round = ROUNDS[0]
        self._since = time.perf_counter()
        self._noisy: bool | None = None
        self._hash_alone: dict[int, bool] = {}
        self._fine: dict[int, bytes] = {}

    def hash_alone(self, v: int, s: Settings) -> bool:
        """Whether a near hash may prove a copy seen from view v by itself: the view is at
        most hash_proof_max_side of the query's own pixels, its grey levels are crushed
        (or it is their normalised view), or the query is drowned in colour noise. Any
        other view has the detail to agree geometrically with a real copy."""
        if v not in self._hash_alone:
            view = self.views[v]
            small = max(view.gray.shape) * max(1.0, self.img.scale) <= s.hash_proof_max_side
            self._hash_alone[v] = small or view.is_normalised or view.crushed() \
                or self.noisy(s)
        return self._hash_alone[v]

    def fine_of(self, cand: Candidate) -> bytes:
        """The catalogue image's `fine_hash`, of its stored thumbnail (once per query)."""
        if cand.id not in self._fine:
            self._fine[cand.id] = fine_hash(cand.thumbnail)
        return self._fine[cand.id]

    def noisy(self, s: Settings) -> bool:
        """Whether the query is drowned in colour noise (`photometric.chroma_noise`)."""
        if self._noisy is None:
            colour = self.img.colour
            self._noisy = colour is not None and min(colour.shape[:2]) > 1 and \
                chroma_noise(colour) >= s.noisy_chroma
        return self._noisy

    def lap(self, stage: str) -> None:
        """Charge the time since the last lap to a stage and to the current round."""
        now = time.perf_counter()
        ms = (now - self._since) * 1000
        self.spent[stage] += ms
        self.rounds[self.round] = self.rounds.get(self.round, 0.0) + ms
        self._since = now


def stop_hash_for(settings: Settings, entries: int) -> int:
    """The stop rule's pHash distance in a catalogue of `entries`: stop_hash up to
    stop_hash_entries (to the nearest tenfold), stop_hash_per_decade bits fewer for each
    tenfold beyond (14 bits up to ~3,000 entries, 12 to ~30,000, 10 to ~300,000, 8 to
    ~3M with the defaults)."""
    s = settings
    decades = max(0, round(math.log10(max(entries, 1) / s.stop_hash_entries)))
    return s.stop_hash - s.stop_hash_per_decade * decades


def probe_share_for(settings: Settings, entries: int) -> float:
    """The share of its IVF lists the first vote search probes in a catalogue of
    `entries`: vote_probe_lists from vote_probe_lists_entries on, every list below."""
    s = settings
    return s.vote_probe_lists if entries >= s.vote_probe_lists_entries else 1.0


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

    def query_bytes(self, data: bytes, k: int, colour_sensitive: bool | None = None,
                    copies_only: bool | None = None) -> QueryResult:
        """Decode the query bytes with the indexer's decoder and search."""
        t0 = time.perf_counter()
        img = self.decode(data)
        t1 = time.perf_counter()
        res = self.query_image(img, k, sha256=hashlib.sha256(data).hexdigest(),
                               colour_sensitive=colour_sensitive, copies_only=copies_only)
        res.timings["decode_ms"] = (t1 - t0) * 1000
        return res

    def decode(self, data: bytes) -> DecodedImage:
        """Query bytes decoded as every query is: the indexer's decoder, at the query's
        working size, with the colour version colour_distance reads."""
        s = self.settings
        return decode_image(data, s.max_pixels, s.query_work_size, s.colour_size)

    def query_image(self, img: DecodedImage, k: int, sha256: str | None = None,
                    colour_sensitive: bool | None = None, copies_only: bool | None = None
                    ) -> QueryResult:
        """Run the cascade (see the module docstring); results de-duplicated by URL and
        content hash, copies first, then by score; with copies_only (None:
        Settings.copies_only), the copies alone (none for a query that finds none).

        Each result shown gets its catalogue entry's metadata, its colour_distance (when
        the query has a colour version and the catalogue row a signature), its verdict
        (echoimage.search.verdict), colour-sensitive or not (None:
        Settings.colour_sensitive), and a few words on why it is a copy or not.
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
        copies_only = s.copies_only if copies_only is None else copies_only
        q = _Query(img, snap, set())
        q.views = [_View(img.gray, (0, 0, img.gray.shape[1], img.gray.shape[0]), s,
                         s.query_orb_features)]
        q.views += [_View(img.gray[y:y + h, x:x + w], (x, y, w, h), s, s.box_orb_features)
                    for x, y, w, h in content_boxes(img.gray, s.max_boxes)]
        q.lap("features_ms")
        self._hash_round(q, k, sha256, copies_only)
        if not self._found(q):
            q.round = "votes"
            self._vote_round(q)
        if not self._found(q) and self._plausible(q):
            q.round = "more_votes"
            self._more_votes(q)
            if not self._found(q) and (promising := self._promising(q)):
                q.round = "deep"
                self._deep_round(q, promising)
        if not self._found(q) and s.normalise and q.views[0].crushed():
            q.round = "normalised"
            self._normalised_round(q)
        q.round = "answer"
        matches = sorted(q.best.values(), key=_rank)
        if copies_only:
            matches = [m for m in matches if m.exact or m.duplicate]
        shown = [self._with_ssim(m, q) for m in _dedupe(matches)[:k]]
        shown = sorted(self._described(shown, q, colour_sensitive), key=_rank)
        q.lap("rerank_ms")
        return QueryResult(shown, q.spent, width=img.width, height=img.height, image=img,
                           rounds=q.rounds, copies_only=copies_only)

    # --- the rounds ------------------------------------------------------------------------

    def _hash_round(self, q: _Query, k: int, sha256: str | None, copies_only: bool = False
                    ) -> None:
        """The whole query's hash neighbours (up to rerank_n within max_hash_distance, k
        at least, to be shown; for copies only, those within `_hash_reach`), the content
        boxes' close ones, and the images with the same bytes."""
        s = self.settings
        listed = shortlist(q.snap.parts, q.views[0].small, s.shortlist_k)
        reach = self._hash_reach(q) if copies_only else s.max_hash_distance
        chosen = [c for c in listed if c.hash_distance <= reach][:max(s.rerank_n, k)]
        if len(chosen) < k and not copies_only:
            chosen = listed[:k]
        for c in chosen:
            q.proposed[c.id] = [c]
        self._box_proposals(q, 1)
        with self.sessions() as session:
            if sha256:
                q.exact_ids = set(repo.ids_by_sha256(session, sha256))
            q.cands = repo.candidates(session, sorted(set(q.proposed) | q.exact_ids))
            if not copies_only:
                self._k_contents(q, session, listed[len(chosen):], k)
        for i in sorted(q.exact_ids - set(q.proposed)):
            self._propose(q, i, 0)
        q.lap("shortlist_ms")
        self._rerank(q, q.proposed, s.rerank_descriptors)

    def _k_contents(self, q: _Query, session: Any, more: list[Shortlisted], k: int) -> None:
        """Propose further hash neighbours (more, nearest first) while the proposed images
        hold fewer than k contents: an answer shows one result per content (`_dedupe`),
        and entries with the same bytes would leave it short of k."""
        more = [c for c in more if c.id not in q.proposed]  # a content box's stay its own
        while more:
            contents = {q.cands[i].sha256 or f"#{i}" for i in q.proposed if i in q.cands}
            if len(contents) >= k:
                return
            batch, more = more[:k - len(contents)], more[k - len(contents):]
            for c in batch:
                q.proposed[c.id] = [c]
            q.cands.update(repo.candidates(session, [c.id for c in batch]))

    def _hash_reach(self, q: _Query) -> int:
        """How far in pHash bits the hash round of a query for copies only scores the
        whole query's neighbours: as near as chance neighbours come in a catalogue of
        this size (`stop_hash_for`); farther ones are as near as unrelated images are,
        and a copy among them is proven by geometry, which the vote search finds, or by a
        near hash, which is nearer. A query whose keypoints say little has them scored as
        far as max_hash_distance: one drowned in colour noise (`_Query.noisy`: the noise
        moves its pHash 10-20 bits from its original, and the finer hash proves such a
        copy), or whose grey levels are crushed into a few (`_View.crushed`)."""
        s = self.settings
        if q.noisy(s) or q.views[0].crushed():
            return s.max_hash_distance
        return min(s.max_hash_distance, stop_hash_for(s, q.snap.size))

    def _vote_round(self, q: _Query) -> None:
        """The cells of a collage become views, their close hash neighbours re-ranked
        first; then one vote search for the first vote_probe_descriptors keypoints of every
        view and of the mirrored whole query (probing a share of the lists in a large
        catalogue: `probe_share_for`), each group proposing the images it votes for most (a
        mirror fixed), matched with the first vote_rerank_descriptors."""
        s = self.settings
        first = len(q.views)
        q.views += [_View(q.img.gray[y:y + h, x:x + w], (x, y, w, h), s, s.box_orb_features)
                    for x, y, w, h in collage_cells(q.img.gray)]
        q.lap("features_ms")
        if len(q.views) > first:
            cells = self._box_proposals(q, first)
            self._load(q, set(cells))
            q.lap("shortlist_ms")
            self._rerank(q, cells, s.rerank_descriptors)
            if self._found(q):
                return
        q.groups = [(v, False) for v in range(len(q.views))] + [(0, True)]
        share = probe_share_for(s, q.snap.size)
        if share < 1.0 and q.snap.quantizer is not None:  # IVF lists, not all probed
            q.probed = probe_count(q.snap.parts.nprobe, share)
        self._vote(q, q.groups, 0, s.vote_probe_descriptors, share)

    def _more_votes(self, q: _Query) -> None:
        """The same groups' next keypoints, up to local_query_descriptors each, vote too
        (counted with the first): a crop of little texture, a copy under overlaid text.
        Where the first votes probed only the nearest of their lists, the first keypoints
        search their other lists now, so that a query that goes on has every list's votes
        for them, and the next keypoints search the same share of theirs, the nearest
        (scripts/bench_calibrate.py --data at 100k: the same copies found, the non-copies'
        second votes ~30% faster; README, "Scores")."""
        s = self.settings
        if q.probed:
            self._vote(q, q.groups, 0, s.local_query_descriptors,
                       probed=(s.vote_probe_descriptors, q.probed))
        else:
            self._vote(q, q.groups, s.vote_probe_descriptors, s.local_query_descriptors)

    def _vote(self, q: _Query, groups: Sequence[tuple[int, bool]], start: int, stop: int,
              lists: float = 1.0, probed: tuple[int, int] | None = None) -> None:
        """Keypoints start..stop of each group (view, mirrored) vote, with the hits of the
        keypoints before them kept from an earlier call; the images voted for are
        re-ranked. lists: the share of the IVF lists a vote search probes that these
        probe (the nearest first); probed = (k, n): the first k keypoints of each group
        probed their nearest n lists already, and search only the others; the next ones
        search their nearest n (`next_probes`)."""
        descs = [q.views[v].orb(mirror).descriptors[start:stop] for v, mirror in groups]
        q.lap("features_ms")
        fresh = self._voted(q, groups, self._vote_groups(q, groups, descs, start, lists,
                                                         probed))
        for i, m in q.best.items():
            if m.votes != (votes := q.votes.get(i, 0)):
                q.best[i] = replace(m, votes=votes)
        q.lap("shortlist_ms")
        self._rerank(q, fresh, self.settings.vote_rerank_descriptors)

    def _deep_round(self, q: _Query, promising: list[Match]) -> None:
        """The most promising candidates (deep_rerank_n at most) matched with all the
        query's keypoints against all their stored ones (a small crop may hold few of the
        strongest; heavy noise leaves few keypoints of the photo among many of its own)."""
        s = self.settings
        order = sorted(promising, key=lambda m: (-m.score, -m.orb_inliers, -m.votes,
                                                 m.hash_distance, m.id))
        _keep_best(q.best, {m.id: self._best(q, q.proposed[m.id], q.cands[m.id], None,
                                             s.query_orb_features)
                            for m in order[:s.deep_rerank_n]})
        q.lap("rerank_ms")

    def _normalised_round(self, q: _Query) -> None:
        """A normalised view of the whole query (its histogram equalised): its hash
        neighbours and the images its keypoints (and its mirror's) vote for, as the first
        rounds do."""
        s = self.settings
        q.views.append(_View(normalised(q.img.gray), q.views[0].box, s, s.query_orb_features,
                             is_normalised=True))
        v = len(q.views) - 1
        q.lap("features_ms")
        fresh = self._box_proposals(q, v, s.max_hash_distance)
        self._load(q, set(fresh))
        q.lap("shortlist_ms")
        self._rerank(q, fresh, s.rerank_descriptors)
        if not self._found(q):
            self._vote(q, [(v, False), (v, True)], 0, s.local_query_descriptors)

    # --- deciding --------------------------------------------------------------------------

    def _found(self, q: _Query) -> bool:
        """True when some candidate is already a copy."""
        return any(m.duplicate for m in q.best.values())

    def _plausible(self, q: _Query) -> bool:
        """Whether a copy is still plausible after the first votes: some image got
        stop_votes votes from one group, or some candidate is promising (`_promising`).
        Otherwise the cascade stops: the later rounds found so few copies among the
        queries like these that they are not worth their time (README, "Scores")."""
        return max(q.votes.values(), default=0) >= self.settings.stop_votes or \
            bool(self._promising(q))

    def _promising(self, q: _Query) -> list[Match]:
        """The candidates that are still plausible copies: stop_inliers inliers, or a pHash
        nearer than chance neighbours come in a catalogue of this size (`stop_hash_for`)."""
        s = self.settings
        near = stop_hash_for(s, q.snap.size)
        return [m for m in q.best.values()
                if m.orb_inliers >= s.stop_inliers or m.hash_distance <= near]

    # --- proposing -------------------------------------------------------------------------

    def _box_proposals(self, q: _Query, first: int, within: int | None = None
                       ) -> dict[int, list[Shortlisted]]:
        """Propose the close hash neighbours (box_k, within box_max_distance unless said
        otherwise) of views first.. (content boxes, collage cells); returns what was added,
        by image."""
        s = self.settings
        within = s.box_max_distance if within is None else within
        fresh: dict[int, list[Shortlisted]] = {}
        for v in range(first, len(q.views)):
            for c in shortlist(q.snap.parts, q.views[v].small, s.box_k):
                if c.hash_distance <= within:
                    sl = Shortlisted(c.id, c.hash_distance, c.orientation, v)
                    q.proposed.setdefault(c.id, []).append(sl)
                    fresh.setdefault(c.id, []).append(sl)
        return fresh

    def _load(self, q: _Query, ids: set[int]) -> None:
        """Read the candidates among ids not read yet (gone from the store: left out)."""
        missing = sorted(ids - set(q.cands))
        if missing:
            with self.sessions() as session:
                q.cands.update(repo.candidates(session, missing))

    def _vote_groups(self, q: _Query, groups: Sequence[tuple[int, bool]],
                     descs: Sequence[np.ndarray], start: int, lists: float = 1.0,
                     probed: tuple[int, int] | None = None) -> list[list[Voted]]:
        """One search of the local-feature index for several groups of query descriptors
        (each group's from its keypoint `start` on; probing `lists` of the IVF lists a
        search probes, the nearest first, or, after an earlier search (`probed`), the
        lists `next_probes` says); per group,
        its hits added to those it had (q.hits), the vote_n images with the most votes, at
        least min_votes."""
        s = self.settings
        params = LocalParams.from_settings(s)
        rows = [np.ascontiguousarray(d, np.uint8) for d in descs]
        bounds = np.cumsum([0] + [len(r) for r in rows])
        done = None
        if probed is not None:
            done = (np.concatenate([start + np.arange(len(r)) < probed[0] for r in rows]),
                    probed[1])
        if bounds[-1]:
            found_q = np.ascontiguousarray(np.concatenate(rows))
            if self.shards is not None:
                found, dists, ids = self.shards.hits(q.snap, found_q, params, lists, done)
            else:
                assigned = next_probes(
                    nearest_lists(q.snap.parts.assign(found_q), lists), done)
                found, dists, ids = q.snap.parts.hits(found_q, params, assigned)
        out = []
        for g, (lo, hi) in zip(groups, zip(bounds[:-1], bounds[1:], strict=True),
                               strict=True):
            had = q.hits.get(g, (np.zeros(0, np.int64),) * 3)
            if hi > lo:
                mine = (found >= lo) & (found < hi)
                # a row is its keypoint's number in the group, in every search: a keypoint
                # searched again (in other lists) keeps its row, and votes once
                new = (found[mine] - lo + start, dists[mine], ids[mine])
                had = tuple(np.concatenate([a, b]) for a, b in zip(had, new, strict=True))
                q.hits[g] = had
            voted = count_votes(*had, params, s.vote_n)
            out.append([c for c in voted if c.votes >= s.min_votes])
        return out

    def _voted(self, q: _Query, groups: Sequence[tuple[int, bool]],
               voted: Sequence[list[Voted]]) -> dict[int, list[Shortlisted]]:
        """Propose the images the groups (view, mirrored) voted for, each from the group
        that gave it the most votes as it is, and from the one that did mirrored (in the
        mirror orientation: a symmetric texture votes both ways); their votes are kept in
        q.votes. Returns what was proposed."""
        top: dict[tuple[int, bool], tuple[int, int]] = {}
        for (v, mirror), vs in zip(groups, voted, strict=True):
            for c in vs:
                q.votes[c.id] = max(q.votes.get(c.id, 0), c.votes)
                if (c.id, mirror) not in top or c.votes > top[c.id, mirror][0]:
                    top[c.id, mirror] = (c.votes, v)
        self._load(q, {i for i, _ in top})
        fresh: dict[int, list[Shortlisted]] = {}
        for (i, mirror), (_, v) in top.items():
            if props := self._propose(q, i, v, NAMES.index("mirror") if mirror else None):
                fresh.setdefault(i, []).extend(props)
        return fresh

    @staticmethod
    def _propose(q: _Query, i: int, v: int, orientation: int | None = None
                 ) -> list[Shortlisted]:
        """Propose image i as seen from view v, unless already proposed so. Without an
        orientation, the one its hash is nearest in (a guess); with one, that orientation
        fixed (known from elsewhere, as a mirror from mirrored votes). Returns what was
        added."""
        fixed = orientation is not None
        if i not in q.cands or any(c.view == v and c.fixed == fixed
                                   for c in q.proposed.get(i, [])):
            return []
        codes = q.views[v].oriented()
        if orientation is None:
            d, o = min((hamming(h, q.cands[i].phash), o) for o, h in enumerate(codes))
        else:
            d, o = hamming(codes[orientation], q.cands[i].phash), orientation
        q.proposed.setdefault(i, []).append(Shortlisted(i, d, o, v, fixed=fixed))
        return [q.proposed[i][-1]]

    # --- scoring ---------------------------------------------------------------------------

    def _rerank(self, q: _Query, proposed: dict[int, list[Shortlisted]], head: int) -> None:
        """Score each proposed image (still in the store) with its strongest keypoints,
        against the query's first `head`; each image keeps its best match so far."""
        _keep_best(q.best, {i: self._best(q, props, q.cands[i],
                                          self.settings.rerank_keypoints, head)
                            for i, props in proposed.items() if i in q.cands})
        q.lap("rerank_ms")

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

    def _best(self, q: _Query, props: list[Shortlisted], cand: Candidate,
              keypoints: int | None, head: int) -> Match:
        """The best-scoring of a candidate's proposals, each in its orientations."""
        scored = [self._score(q, t, cand, keypoints, head)
                  for c in props for t in self._orientations(c)]
        return max(scored, key=_strength)

    def _score(self, q: _Query, c: Shortlisted, cand: Candidate, keypoints: int | None,
               head: int) -> Match:
        """Score one proposal: SSIM (where it can count), ORB of the view's first `head`
        keypoints against the candidate's first `keypoints` stored ones (all when None),
        the spread of the inliers and the hash distance, made a probability by
        search.evidence."""
        s = self.settings
        view, img = q.views[c.view], q.img
        exact = cand.id in q.exact_ids
        mirror = is_mirror(c.orientation)
        sim = view.ssim_ref(c.orientation).compare(cand.thumbnail) \
            if evidence.ssim_counts(c.hash_distance) else float("nan")
        orb = cand.orb
        if keypoints is not None and len(orb) > keypoints:
            orb = OrbFeatures(orb.keypoints[:keypoints], orb.descriptors[:keypoints])
        om = match_orb(view.orb_head(mirror, head), orb, s.ratio_test, s.ransac_px)
        reg = trans = pairs = None
        covered = 0.0
        if om.pairs is not None:  # in the whole query's working pixels
            covered = spread(om.pairs[:, :2], om.homography, view.gray.shape,
                             (cand.width / cand.work_scale, cand.height / cand.work_scale))
            pairs = om.pairs.copy()
            if mirror:  # matched on the mirrored view: flip x back
                pairs[:, 0] = view.gray.shape[1] - 1 - pairs[:, 0]
            pairs[:, 0] += view.box[0]
            pairs[:, 1] += view.box[1]
        if om.homography is not None:
            reg = region(om.homography, view.gray.shape, cand.work_scale,
                         (cand.width, cand.height))
            trans = describe(om.homography, mirror, reg, cand, img.scale)
        alone = q.hash_alone(c.view, s)
        # the detail the query shows, in its own levels (equalising a crushed query
        # turns its flat black into flat grey: the normalised view is told by the whole)
        shown = q.views[0] if view.is_normalised else view
        rule = evidence.MODEL.rule
        missing = inside = float("nan")
        if om.homography is not None:
            missing, inside = told_detail(om, covered,
                                          shown.mirrored() if mirror else shown.gray,
                                          om.homography, cand.thumbnail,
                                          (cand.width / cand.work_scale,
                                           cand.height / cand.work_scale))
        proven = rule.geometric(om.inliers, om.matches, covered, missing, inside)
        near = 0 <= c.hash_distance <= rule.near_hash
        if alone and near and not proven:
            # the hash aligns the two as wholes (in its orientation): a query that shows
            # flat what the catalogue image has detail in is another picture of its layout
            flat = missing_under_hash(shown.thumb(c.orientation), cand.thumbnail)
            alone = not flat > rule.max_missing
            if math.isnan(missing):  # the inliers' own, where told, stays theirs
                missing = flat
        fine = -1
        if alone and rule.fine_near >= 0 and q.noisy(s) and not near and not proven:
            # heavy noise moves the 64-bit pHash a few bits too far: the finer hash of the
            # two thumbnails (in the orientation that matched) still tells its copies
            fine = hamming(shown.fine(c.orientation), q.fine_of(cand))
        ev = evidence.Evidence(exact, om.inliers, om.matches, covered, sim, c.hash_distance,
                               alone, missing, fine, inside)
        score = evidence.score(ev)
        copy = evidence.is_copy(ev, score, s.duplicate_threshold)
        return Match(
            id=cand.id, url=cand.url, score=score, duplicate=copy, exact=exact,
            ssim=sim, orb_matches=om.matches, orb_inliers=om.inliers,
            hash_distance=c.hash_distance, orientation=NAMES[c.orientation],
            sha256=cand.sha256, region=reg, transform=trans, votes=q.votes.get(cand.id, 0),
            query_box=_shown_box(view, c.view, img), pairs=pairs, spread=covered,
            hash_alone=alone, missing=missing, fine_distance=fine, interior=inside,
        )

    # --- the answer ------------------------------------------------------------------------

    def _described(self, shown: list[Match], q: _Query, colour_sensitive: bool | None
                   ) -> list[Match]:
        """The shown matches with their catalogue entries' metadata, colour_distance,
        verdict and why, and each copy's other entries with the same bytes (also_at).

        The query's colours are those of the part that matched (query_box), or else the
        nearest of the whole query's and its content boxes' (a picture inside a border or
        a page keeps its colours, the page around it does not count). A match covering
        only part of the catalogue image is compared as such (see colour_distance).
        """
        img = q.img
        if not shown:  # no store read for an answer of nothing (copies only, none found)
            return []
        sigs: dict[int, bytes] = {}
        ids = [m.id for m in shown]
        shas = sorted({m.sha256 for m in shown if m.sha256 and (m.duplicate or m.exact)})
        with self.sessions() as session:
            meta = repo.metadata_of(session, ids)
            if img.colour is not None:
                sigs = repo.colour_signatures(session, ids)
            same = repo.with_bytes(session, shas)  # a copy's other entries (see _dedupe)
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
                    [_shown_box(v, i, img) for i, v in enumerate(q.views)]
                dist = min(colour_distance(signature(b), sigs[m.id], covered) for b in boxes)
            also = [url for i, url in same.get(m.sha256, []) if i != m.id]
            m = replace(m, colour_distance=dist, metadata=meta.get(m.id, {}), also_at=also)
            m = replace(m, verdict=verdict(m, self.settings, colour_sensitive))
            out.append(replace(m, why=evidence.why(evidence.Evidence.of(m), m.duplicate,
                                                   bool((m.transform or {}).get("mirror")))))
        return out

    def _with_ssim(self, m: Match, q: _Query) -> Match:
        """m with its SSIM, if scoring left it out (where it cannot move the score; shown
        all the same)."""
        if not np.isnan(m.ssim):
            return m
        v = next((i for i, view in enumerate(q.views)
                  if _shown_box(view, i, q.img) == m.query_box), 0)
        sim = q.views[v].ssim_ref(NAMES.index(m.orientation)).compare(
            q.cands[m.id].thumbnail)
        return replace(m, ssim=sim)


class _View:
    """The whole query, a part of it (a content box, a collage cell) or another version of
    it (normalised), with features computed on first use: `features` keypoints, detected
    once; the mirror image's descriptors of the first `mirrored` of them."""

    def __init__(self, gray: np.ndarray, box: tuple[int, int, int, int], s: Settings,
                 features: int, is_normalised: bool = False) -> None:
        self.gray = np.ascontiguousarray(gray)
        self.box = box
        self.is_normalised = is_normalised  # the query's levels equalised (it was crushed)
        self._crushed: bool | None = None
        self.small = hash_input(self.gray)
        self._settings = s
        self._features = features
        self._mirrored = max(s.vote_rerank_descriptors, s.rerank_descriptors,
                             s.local_query_descriptors)
        self._thumb: np.ndarray | None = None
        self._turned: dict[int, np.ndarray] = {}
        self._fines: dict[int, bytes] = {}
        self._flipped: np.ndarray | None = None
        self._orbs: dict[bool, OrbFeatures] = {}
        self._keypoints: tuple[cv2.KeyPoint, ...] = ()
        self._refs: dict[int, SsimReference] = {}
        self._oriented: list[bytes] | None = None

    def oriented(self) -> list[bytes]:
        """pHashes of the view in the 8 dihedral orientations."""
        if self._oriented is None:
            self._oriented = oriented_phashes(self.small)
        return self._oriented

    def orb(self, mirror: bool) -> OrbFeatures:
        """ORB of the view (spread order), or of its mirror image (ORB is not
        mirror-invariant): the keypoints are detected once, the mirror's descriptors
        computed for the first of them."""
        if False not in self._orbs:
            self._orbs[False], self._keypoints = orb_detect(self.gray, self._features)
        if mirror and True not in self._orbs:
            self._orbs[True] = mirror_features(self.gray, self._keypoints[:self._mirrored],
                                               self._features)
        return self._orbs[mirror]

    def orb_head(self, mirror: bool, n: int) -> OrbFeatures:
        """The first n keypoints (spread over the view) for matching."""
        orb = self.orb(mirror)
        return orb if len(orb) <= n else OrbFeatures(orb.keypoints[:n], orb.descriptors[:n])

    def mirrored(self) -> np.ndarray:
        """The view's grey pixels mirrored left to right (the frame of its mirror's
        keypoints)."""
        if self._flipped is None:
            self._flipped = np.ascontiguousarray(self.gray[:, ::-1])
        return self._flipped

    def crushed(self) -> bool:
        """Whether the view's grey levels are crushed into a few (`needs_normalising`),
        told once: the normalised round and the hash's proof both ask."""
        if self._crushed is None:
            s = self._settings
            self._crushed = needs_normalising(self.gray, s.crushed_bits, s.crushed_span)
        return self._crushed

    def thumb(self, o: int) -> np.ndarray:
        """The view's thumbnail turned by orientation o (as its hash and SSIM see it)."""
        if o not in self._turned:
            if self._thumb is None:
                self._thumb = thumbnail(self.gray, self._settings.thumb_size)
            self._turned[o] = np.ascontiguousarray(orient(self._thumb, o))
        return self._turned[o]

    def fine(self, o: int) -> bytes:
        """The `fine_hash` of the view's thumbnail turned by orientation o."""
        if o not in self._fines:
            self._fines[o] = fine_hash(self.thumb(o))
        return self._fines[o]

    def ssim_ref(self, o: int) -> SsimReference:
        """SSIM reference of the view's thumbnail turned by orientation o."""
        if o not in self._refs:
            self._refs[o] = SsimReference(self.thumb(o))
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


def _strength(m: Match) -> tuple[bool, float, int]:
    """Which of two matches of one image is the better: a copy, then the higher score,
    then more inliers."""
    return m.duplicate, m.score, m.orb_inliers


def _rank(m: Match) -> tuple[bool, bool, float, int, int]:
    """Result order: the same bytes, then copies, then by score, hash distance and id."""
    return not m.exact, not m.duplicate, -m.score, m.hash_distance, m.id


def _keep_best(best: dict[int, Match], scored: dict[int, Match]) -> None:
    """Merge new scores into best: each image keeps its better match."""
    for i, m in scored.items():
        best[i] = max(best[i], m, key=_strength) if i in best else m


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
