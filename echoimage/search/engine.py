"""SearchEngine: loads the shortlist index and the store once; answers many queries."""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from sqlalchemy import Engine

from echoimage.config import Settings
from echoimage.errors import EmptyCatalogueError, IndexFileError, IndexStaleError
from echoimage.features.decode import decode_image
from echoimage.features.dihedral import NAMES, is_mirror, orient
from echoimage.features.hashes import hamming, hash_input, oriented_phashes
from echoimage.features.orb import orb_features
from echoimage.features.regions import content_boxes
from echoimage.features.thumbnail import thumbnail
from echoimage.index.binary import (
    INDEX_NAME,
    belongs_to,
    build_binary_index,
    is_fresh,
    load_index,
    make_manifest,
    save_index,
)
from echoimage.index.local import (
    LAYOUT,
    LOCAL_INDEX_NAME,
    build_local_index,
    set_nprobe,
    vote,
)
from echoimage.index.manifest import Manifest, read_manifest
from echoimage.search.rerank import SsimReference, fuse, match_orb, region
from echoimage.search.shortlist import Shortlisted, shortlist
from echoimage.store import repo
from echoimage.store.db import head_revision, is_readonly, open_store, session_factory
from echoimage.types import Candidate, DecodedImage, Match, OrbFeatures

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltIndexes:
    """Both shortlist indexes built from one snapshot of the store, with their manifests
    (manifests with an empty checksum until the files are written)."""

    hashes: Any
    local: Any
    hash_manifest: Manifest
    local_manifest: Manifest


def build_indexes(settings: Settings, engine: Engine) -> BuiltIndexes:
    """Build both shortlist indexes in memory from one snapshot of the store."""
    lp = settings.local_params
    bind = engine if engine.dialect.name == "sqlite" else engine.execution_options(
        isolation_level="REPEATABLE READ")
    with session_factory(bind)() as session:  # one transaction: one snapshot
        state = repo.store_state(session)
        ids, codes = repo.indexed_hashes(session)
        lids, ldescs = repo.local_descriptors(session, lp.per_image)
    revision = head_revision()
    local = build_local_index(lids, ldescs, lp)
    index = build_binary_index(ids, codes)
    local_params = {"per_image": lp.per_image, "layout": LAYOUT, "bits": 256,
                    "type": "IVF" if ldescs.shape[0] > lp.flat_max else "Flat",
                    "descriptors": int(ldescs.shape[0])}
    hash_params = {"bits": 64, "hash": "phash", "type": "IndexBinaryIDMap2(Flat)"}
    return BuiltIndexes(index, local,
                        make_manifest(index, INDEX_NAME, state, revision, hash_params),
                        make_manifest(local, LOCAL_INDEX_NAME, state, revision, local_params))


def save_indexes(settings: Settings, built: BuiltIndexes) -> Manifest:
    """Write both indexes atomically with their manifests (the local index first: readers
    watch the hash one). IndexFileError when they cannot be written."""
    state = repo.StoreState(built.hash_manifest.images, built.hash_manifest.max_id,
                            built.hash_manifest.seq, built.hash_manifest.store_id)
    rev = built.hash_manifest.schema_revision
    save_index(built.local, settings.index_dir, LOCAL_INDEX_NAME, state, rev,
               built.local_manifest.params)
    return save_index(built.hashes, settings.index_dir, INDEX_NAME, state, rev,
                      built.hash_manifest.params)


def rebuild_index(settings: Settings, engine: Engine) -> Manifest:
    """Rebuild both shortlist indexes from one snapshot of the store and write them."""
    return save_indexes(settings, build_indexes(settings, engine))


def current_manifest(settings: Settings, engine: Engine) -> Manifest | None:
    """The hash index's manifest if both index files already describe the store exactly
    (same store, same last change, same parameters), else None."""
    hm = read_manifest(settings.index_dir / f"{INDEX_NAME}.json")
    lm = read_manifest(settings.index_dir / f"{LOCAL_INDEX_NAME}.json")
    if hm is None or lm is None or not _local_fits(lm, settings):
        return None
    with session_factory(engine)() as session:
        state = repo.store_state(session)
    rev = head_revision()
    if not (is_fresh(hm, state, rev) and is_fresh(lm, state, rev)):
        return None
    if not all((settings.index_dir / m.kind).is_file() for m in (hm, lm)):
        return None
    return hm


def _local_fits(manifest: Manifest, settings: Settings) -> bool:
    """True when a local index file was built for these settings and this layout."""
    return (manifest.params.get("per_image") == settings.local_per_image
            and manifest.params.get("layout") == LAYOUT)


@dataclass
class QueryResult:
    """Ranked matches of one query, plus timings in milliseconds."""

    matches: list[Match]
    timings: dict[str, float] = field(default_factory=dict)
    width: int = 0
    height: int = 0


@dataclass(frozen=True)
class _Snapshot:
    """The shortlist indexes a query searches, replaced whole (never mutated).

    index/local come from the files, which include the store's changes up to base_seq;
    delta/delta_local hold the images whose rows changed after that, and removed the ids
    whose file entries are out of date, so together they agree with the store as of seq.
    """

    index: Any
    local: Any
    manifest: Manifest
    mtime: float | None
    base_seq: int
    seq: int = -1
    delta: Any = None
    delta_local: Any = None
    removed: frozenset[int] = frozenset()
    size: int = 0  # indexed images, as of seq


def _id_array(index: Any) -> np.ndarray:
    """The sorted ids of an IDMap index."""
    return np.sort(faiss.vector_to_array(index.id_map)) if index.ntotal else np.zeros(0, np.int64)


class SearchEngine:
    """Answers queries from the store and the derived shortlist indexes.

    The index files are loaded once and rebuilt when missing, corrupt or built for other
    parameters. Before every query the engine compares the store's latest change with the
    one it has seen: rows changed since the files were built are searched from a small
    in-memory delta (up to `delta_max` of them; beyond that the files are rebuilt), so a
    query never answers from an index that disagrees with the store. A newer index written
    by `index build` / `index update` is picked up by its manifest.
    """

    #: changed rows past which the files are rebuilt rather than patched in memory (the
    #: delta's descriptors are searched exhaustively: ~14 ms per 500 rows)
    delta_max = 1000

    def __init__(self, settings: Settings, engine: Engine | None = None,
                 rebuild: bool = True) -> None:
        # one query is too small to share across threads; spinning OpenMP threads cost
        # more than the scan itself on a busy machine
        faiss.omp_set_num_threads(1)
        self.settings = settings
        self.engine = engine or open_store(settings, create=False)
        self.sessions = session_factory(self.engine)
        self._rebuild = rebuild
        self._lock = threading.RLock()
        self.snap: _Snapshot | None = None
        self._main_ids = np.zeros(0, np.int64)
        self.load()

    @property
    def manifest_path(self) -> Path:
        """Where the hash index manifest lives."""
        return self.settings.index_dir / f"{INDEX_NAME}.json"

    @property
    def index(self) -> Any:
        """The hash index loaded from its file."""
        return self.snap.index if self.snap else None

    @property
    def local(self) -> Any:
        """The local-feature index loaded from its file."""
        return self.snap.local if self.snap else None

    @property
    def manifest(self) -> Manifest | None:
        """Manifest of the loaded hash index."""
        return self.snap.manifest if self.snap else None

    def load(self, force_rebuild: bool = False) -> None:
        """Load the index files (rebuilding them when unusable), then catch up."""
        with self._lock:
            loaded = None if force_rebuild else self._load_files()
            if loaded is None:
                if not self._rebuild:
                    raise IndexStaleError(
                        "the shortlist index is missing or does not match the store: "
                        "run `echoimage index build`")
                loaded = self._rebuilt()
            (index, manifest), (local, _) = loaded
            set_nprobe(local, self.settings.local_nprobe)
            self._main_ids = _id_array(index)
            self.snap = _Snapshot(index, local, manifest, self._mtime(), manifest.seq)
            if not self._catch_up(force=True):
                if force_rebuild:
                    raise IndexStaleError("the store changes faster than the index can be "
                                          "rebuilt")
                if not self._rebuild:
                    raise IndexStaleError("the shortlist index is far behind the store: "
                                          "run `echoimage index build`")
                self.load(force_rebuild=True)

    def _rebuilt(self) -> tuple[tuple[Any, Manifest], tuple[Any, Manifest]]:
        """Indexes rebuilt from the store, written to their files when they can be (a
        read-only or full disk: kept in memory, with a log line)."""
        t0 = time.perf_counter()
        built = build_indexes(self.settings, self.engine)
        if is_readonly(self.engine):
            log.warning("the index in %s does not match the store, which is read-only: "
                        "searching an index rebuilt in memory (%.1f s); run `echoimage index "
                        "update` where the store can be written", self.settings.index_dir,
                        time.perf_counter() - t0)
        else:
            try:
                save_indexes(self.settings, built)
                log.info("index rebuilt from the store in %.1f s",
                         time.perf_counter() - t0)
                loaded = self._load_files()
                if loaded is not None:
                    return loaded
            except IndexFileError as exc:
                log.warning("%s: searching an index rebuilt in memory", exc)
        return (built.hashes, built.hash_manifest), (built.local, built.local_manifest)

    def _load_files(self) -> tuple[Any, Any] | None:
        """Both index files, if both are intact, agree with each other, fit the code and
        were built from this store at or before its last change."""
        rev = head_revision()
        hashes = load_index(self.settings.index_dir, INDEX_NAME)
        local = load_index(self.settings.index_dir, LOCAL_INDEX_NAME)
        if hashes is None or local is None:
            return None
        hm, lm = hashes[1], local[1]
        if hm.schema_revision != rev or lm.schema_revision != rev:
            return None
        if (hm.store_id, hm.seq, hm.images) != (lm.store_id, lm.seq, lm.images):
            return None
        if not _local_fits(lm, self.settings):
            return None
        with self.sessions() as session:
            state = repo.store_state(session)
        if not belongs_to(hm, state):
            log.warning("the index files in %s were not built from this store (or are newer "
                        "than it, as after restoring an older backup of the store): they "
                        "will be rebuilt", self.settings.index_dir)
            return None
        return hashes, local

    def _catch_up(self, force: bool = False) -> bool:
        """Bring the snapshot up to the store's last change. False if too far behind."""
        snap = self.snap
        assert snap is not None
        with self.sessions() as session:
            seq = repo.current_seq(session)
            if seq == snap.seq and not force:
                return True
            changed = repo.changed_since(session, snap.base_seq, self.delta_max)
            if changed is None:
                return False
            live = [c for c in changed if c.indexed and c.phash is not None]
            descs = repo.descriptors_of(session, [c.id for c in live],
                                        self.settings.local_per_image)
        removed = frozenset(c.id for c in changed)
        delta = delta_local = None
        if live:
            ids = np.array([c.id for c in live], np.int64)
            codes = np.frombuffer(b"".join(c.phash for c in live), np.uint8).reshape(-1, 8)
            delta = build_binary_index(ids, codes)
            blobs = [descs.get(c.id, b"") for c in live]
            lids = np.repeat(ids, [len(b) // 32 for b in blobs])
            arr = np.frombuffer(b"".join(blobs), np.uint8).reshape(-1, 32)
            delta_local = build_local_index(lids, arr, replace(self.settings.local_params,
                                                               flat_max=1 << 62))
        stale = int(np.isin(np.fromiter(removed, np.int64, len(removed)), self._main_ids).sum())
        size = len(self._main_ids) - stale + len(live)
        self.snap = replace(snap, seq=seq, delta=delta, delta_local=delta_local,
                            removed=removed, size=size)
        return True

    def _mtime(self) -> float | None:
        try:
            return self.manifest_path.stat().st_mtime_ns / 1e9
        except OSError:
            return None

    def refresh(self) -> bool:
        """Make the snapshot agree with the store: load newer index files written by
        another process, patch in rows changed since. True if anything was reloaded."""
        with self._lock:
            if self.snap is None or self._mtime() != self.snap.mtime:
                self.load()
                return True
            if not self._catch_up():
                self.load(force_rebuild=True)
                return True
            return False

    @property
    def size(self) -> int:
        """Number of indexed catalogue images."""
        return self.snap.size if self.snap is not None else 0

    def query_bytes(self, data: bytes, k: int = 5) -> QueryResult:
        """Decode the query bytes with the indexer's decoder and search."""
        t0 = time.perf_counter()
        img = decode_image(data, self.settings.max_pixels, self.settings.query_work_size)
        t1 = time.perf_counter()
        res = self.query_image(img, k, sha256=hashlib.sha256(data).hexdigest())
        res.timings["decode_ms"] = (t1 - t0) * 1000
        return res

    def query_image(self, img: DecodedImage, k: int = 5, sha256: str | None = None
                    ) -> QueryResult:
        """Shortlist, re-rank and fuse; results de-duplicated by URL and content hash.

        The shortlist is the union of: the pHash neighbours of the whole query in all 8
        orientations; the images its ORB descriptors vote for; the pHash neighbours of each
        content box (a picture inside a border, a screenshot, a captioned copy); and any
        image with the same sha256 (an exact copy).
        """
        if k < 1:
            raise ValueError("k must be at least 1")
        # per calling thread (queries come from thread pools, e.g. the web server's): nested
        # OpenMP threads only oversubscribe the cores; a FAISS IVF vote search in a pool
        # thread left at the default cost ~3x more than with one thread
        faiss.omp_set_num_threads(1)
        self.refresh()
        snap = self.snap
        assert snap is not None
        if snap.size == 0:
            raise EmptyCatalogueError(
                "the catalogue has no indexed images: run `echoimage index build` first")
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
        listed = shortlist(snap.index, views[0].small, s.shortlist_k, snap.delta,
                           snap.removed)
        chosen = [c for c in listed if c.hash_distance <= s.max_hash_distance][:n]
        if len(chosen) < k:
            chosen = listed[:k]
        proposed: dict[int, list[Shortlisted]] = {}
        for c in chosen:
            proposed[c.id] = [c]
        for v, view in enumerate(views[1:], 1):
            for c in shortlist(snap.index, view.small, s.box_k, snap.delta, snap.removed):
                if c.hash_distance <= s.box_max_distance:
                    proposed.setdefault(c.id, []).append(
                        Shortlisted(c.id, c.hash_distance, c.orientation, v))
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
            # no hash neighbour is a copy: each view's own keypoints vote for images (a
            # crop, a picture inside a page), proposed as seen from the view that voted
            vote_view: dict[int, int] = {}
            for v, view in enumerate(views):
                for i, count in self._votes(view.orb(False).descriptors).items():
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
            # invariant), proposing images in the mirror orientation
            mvotes = self._votes(views[0].orb(True).descriptors)
            self._load(cands, set(mvotes))
            fresh = {}
            for i, count in mvotes.items():
                if props := self._propose(proposed, cands, views, i, 0, NAMES.index("mirror")):
                    fresh[i] = props
                    votes[i] = max(votes.get(i, 0), count)
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
        return QueryResult(_dedupe(matches)[:k], spent, width=img.width, height=img.height)

    def _load(self, cands: dict[int, Candidate], ids: set[int]) -> None:
        """Read the candidates among ids not read yet (gone from the store: left out)."""
        missing = sorted(ids - set(cands))
        if missing:
            with self.sessions() as session:
                cands.update(repo.candidates(session, missing))

    def _votes(self, descriptors: np.ndarray) -> dict[int, int]:
        """Images with at least min_votes of these query descriptors among their near
        neighbours in the local-feature index (its top vote_n), with their votes."""
        s, snap = self.settings, self.snap
        assert snap is not None
        return {cv.id: cv.votes for cv in vote(snap.local, descriptors, s.local_params,
                                               s.vote_n, snap.delta_local, snap.removed)
                if cv.votes >= s.min_votes}

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
        sim = view.ssim_ref(c.orientation).compare(cand.thumbnail)
        orb = cand.orb
        if keypoints is not None and len(orb) > keypoints:
            orb = OrbFeatures(orb.keypoints[:keypoints], orb.descriptors[:keypoints])
        om = match_orb(view.orb_head(mirror), orb, s.ratio_test, s.ransac_px)
        score = 1.0 if exact else fuse(sim, om.inliers, c.hash_distance)
        reg = trans = None
        if om.homography is not None:
            reg = region(om.homography, view.gray.shape, cand.work_scale,
                         (cand.width, cand.height))
            trans = _describe(om.homography, mirror, reg, cand, img.scale)
        x, y, w, h = view.box
        box = None if c.view == 0 else [round(v * img.scale, 1) for v in (x, y, w, h)]
        return Match(
            id=cand.id, url=cand.url, score=score,
            duplicate=exact or score >= s.duplicate_threshold, exact=exact,
            ssim=sim, orb_matches=om.matches, orb_inliers=om.inliers,
            hash_distance=c.hash_distance, orientation=NAMES[c.orientation],
            sha256=cand.sha256, region=reg, transform=trans, votes=votes, query_box=box,
        )


class _View:
    """The whole query or a content box of it, with features computed on first use."""

    def __init__(self, gray: np.ndarray, box: tuple[int, int, int, int], s: Settings) -> None:
        self.gray = np.ascontiguousarray(gray)
        self.box = box
        self.small = hash_input(self.gray)
        self._settings = s
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
            self._orbs[mirror] = orb_features(gray, self._settings.query_orb_features)
        return self._orbs[mirror]

    def orb_head(self, mirror: bool) -> OrbFeatures:
        """The first rerank_descriptors keypoints (spread over the view) for matching."""
        orb = self.orb(mirror)
        n = self._settings.rerank_descriptors
        return orb if len(orb) <= n else OrbFeatures(orb.keypoints[:n], orb.descriptors[:n])

    def ssim_ref(self, o: int) -> SsimReference:
        """SSIM reference of the view's thumbnail turned by orientation o."""
        if o not in self._refs:
            if self._thumb is None:
                self._thumb = thumbnail(self.gray, self._settings.thumb_size)
            self._refs[o] = SsimReference(orient(self._thumb, o))
        return self._refs[o]


def _describe(h: np.ndarray, mirror: bool, reg: list[list[float]], cand: Candidate,
              query_scale: float) -> dict[str, Any]:
    """From a homography: scale (catalogue pixels per query pixel), rotation, mirror and
    the fraction of the catalogue image the query covers."""
    a = h[:2, :2]
    det = float(np.linalg.det(a))
    scale = math.sqrt(abs(det))
    rotation = math.degrees(math.atan2(a[1, 0], a[0, 0]))
    pts = np.array(reg, dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]
    area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    total = float(cand.width * cand.height) or 1.0
    return {"scale": round(scale * cand.work_scale / query_scale, 3),
            "rotation_deg": round(rotation, 1), "mirror": mirror,
            "covered_fraction": round(min(area / total, 1.0), 3)}


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
