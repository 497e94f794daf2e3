"""The live index against an oracle: after any sequence of add / change / remove updates, the
segments (merged, compacted, or held in memory as a delta) answer exactly like an index
rebuilt from the same store with the same quantizer, at the index layer and end to end."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    MAX_PIXELS,
    WORK_SIZE,
    faiss_threads_of,
    jpeg,
    mirror,
    search_engine,
    synthetic,
)

import echoimage.index.build as build_mod
from echoimage.config import Settings
from echoimage.features.decode import decode_image
from echoimage.features.extract import extract_features
from echoimage.index.build import (
    IndexAction,
    load_parts,
    read_quantizer,
    rebuild_index_files,
    snapshot,
    update_index_files,
)
from echoimage.index.local import LocalParams, is_two_level, probes
from echoimage.index.manifest import read_manifest
from echoimage.index.parts import PartSet
from echoimage.search.engine import SearchEngine
from echoimage.search.live import LiveIndex
from echoimage.store import repo
from echoimage.store.db import open_store, session_factory
from echoimage.store.models import Status
from echoimage.types import CatalogueItem, ImageFeatures

pytestmark = [pytest.mark.usefixtures("no_network"), pytest.mark.stores]

#: enough synthetic images for an IVF index with the small settings below
POOL = 48


@pytest.fixture(scope="module")
def pool() -> list[tuple[bytes, ImageFeatures]]:
    """Synthetic images (JPEG bytes) and their features, computed once."""
    out = []
    for i in range(POOL):
        data = jpeg(synthetic(1000 + i, 320), 90)
        out.append((data, extract_features(decode_image(data, MAX_PIXELS, WORK_SIZE), 256, 300)))
    return out


def ivf_settings(data_dir: Path) -> Settings:
    """An IVF local index from a few thousand descriptors (16+ lists, 4 searched), one
    worker."""
    return Settings(data_dir=data_dir, workers=1, orb_features=300, local_flat_max=500,
                    local_min_lists=16, local_nprobe=4, local_wide_nprobe=4)


class Catalogue:
    """A store changed directly through the repository (no fetching), image by image."""

    def __init__(self, settings: Settings, pool: list[tuple[bytes, ImageFeatures]]) -> None:
        self.settings = settings
        self.engine = open_store(settings)
        self.sessions = session_factory(self.engine)
        self.pool = pool
        self.urls: dict[str, int] = {}  # url → pool index it holds now

    def add(self, url: str, which: int) -> None:
        data, feats = self.pool[which]
        with self.sessions.begin() as s:
            repo.add_pending(s, [CatalogueItem(url, "test")], None)
            image_id = repo.known_images(s, [url])[url].id
            repo.save_features(s, image_id, hashlib.sha256(data + url.encode()).hexdigest(),
                               len(data), feats, params="test")
        self.urls[url] = which

    def remove(self, url: str) -> None:
        with self.sessions.begin() as s:
            image_id = repo.known_images(s, [url])[url].id
            repo.save_failure(s, image_id, Status.GONE, "HTTP 404")
        del self.urls[url]

    def close(self) -> None:
        self.engine.dispose()


def random_step(cat: Catalogue, rng: np.random.Generator, n: int, step: int) -> None:
    """Add, change (other features under the same URL) and remove a few images."""
    for j in range(n):
        op = rng.random()
        live = sorted(cat.urls)
        if op < 0.5 or len(live) < 6:
            cat.add(f"/cat/{step}-{j}.jpg", int(rng.integers(POOL)))
        elif op < 0.8:
            cat.add(str(rng.choice(live)), int(rng.integers(POOL)))  # changed
        else:
            cat.remove(str(rng.choice(live)))


def oracle(settings: Settings, tmp_path: Path, name: str,
           copy_store: Callable[[Settings, Path], Settings]) -> Settings:
    """A copy of the store whose index is rebuilt from scratch with the same quantizer."""
    shutil.rmtree(tmp_path / name, ignore_errors=True)
    copy = copy_store(settings, tmp_path / name)
    manifest = read_manifest(settings.index_dir)
    assert manifest is not None and manifest.layout == "ivf"
    quantizer = read_quantizer(settings.index_dir, manifest)
    engine = open_store(copy)
    try:
        rebuild_index_files(copy, engine, "oracle", quantizer=quantizer)
    finally:
        engine.dispose()
    return copy


def file_parts(settings: Settings) -> PartSet:
    manifest = read_manifest(settings.index_dir)
    assert manifest is not None
    parts, quantizer = load_parts(settings.index_dir, manifest)
    return PartSet(parts, quantizer, probes(quantizer, LocalParams.from_settings(settings)))


def assert_same_answers(a: PartSet, b: PartSet, settings: Settings,
                        rng: np.random.Generator, expected_ids: set[int]) -> None:
    """Same live images, same pHash neighbours, same votes."""
    np.testing.assert_array_equal(a.live_ids(), b.live_ids())
    assert set(a.live_ids().tolist()) == expected_ids
    assert sorted(a.live_local_ids().tolist()) == sorted(b.live_local_ids().tolist())
    codes = rng.integers(0, 256, (16, 8), dtype=np.uint8)
    ha, hb = a.search_hashes(codes, 7), b.search_hashes(codes, 7)
    for x, y in zip(ha.ids + ha.distances, hb.ids + hb.distances, strict=True):
        np.testing.assert_array_equal(x, y)
    lp = LocalParams.from_settings(settings)
    for part in b.parts:  # queries near stored descriptors, with bits flipped
        if part.local.ntotal == 0:
            continue
        from echoimage.index.local import local_ids

        ids = local_ids(part.local)
        for image_id in rng.choice(np.unique(ids), size=min(5, len(np.unique(ids))),
                                   replace=False):
            descs = _descriptors_of(settings, int(image_id))
            noisy = descs ^ (rng.integers(0, 256, descs.shape, dtype=np.uint8)
                             & rng.integers(0, 256, descs.shape, dtype=np.uint8)
                             & rng.integers(0, 256, descs.shape, dtype=np.uint8))
            assert a.vote(noisy, lp, 10) == b.vote(noisy, lp, 10)


def _descriptors_of(settings: Settings, image_id: int) -> np.ndarray:
    engine = open_store(settings)
    try:
        with session_factory(engine)() as s:
            blob = repo.descriptors_of(s, [image_id], settings.local_per_image)[image_id]
    finally:
        engine.dispose()
    return np.frombuffer(blob, np.uint8).reshape(-1, 32)


def indexed_ids(cat: Catalogue) -> set[int]:
    with cat.sessions() as s:
        return {k.id for k in repo.known_images(s).values() if k.status == Status.INDEXED}


@pytest.fixture
def cat(tmp_path: Path, pool, store_url: str | None) -> Iterator[Catalogue]:
    """An empty store with the small IVF settings, changed through the repository."""
    catalogue = Catalogue(ivf_settings(tmp_path / "live"), pool)
    yield catalogue
    catalogue.close()


@pytest.fixture
def small_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Merge after 3 segments; compact into the base when they hold a tenth of it."""
    monkeypatch.setattr(build_mod, "MAX_SEGMENTS", 3)
    monkeypatch.setattr(build_mod, "COMPACT_SHARE", 0.1)


@pytest.mark.parametrize(("seed", "two_level"), [(1, False), (2, False), (3, False),
                                               (4, True)])
def test_incremental_updates_answer_like_a_rebuild(tmp_path: Path, cat: Catalogue, seed: int,
                                                   two_level: bool, small_merges: None,
                                                   copy_store) -> None:
    """With the default two-level quantizer and with a flat one (local_flat_quantizer_max
    set): the parts are IVF indexes over copies of it, merged and compacted alike."""
    rng = np.random.default_rng(seed)
    if not two_level:
        cat.settings = cat.settings.model_copy(update={"local_flat_quantizer_max": 8192})
    settings = cat.settings
    for i in range(30):
        cat.add(f"/cat/first-{i}.jpg", i % POOL)
    first = update_index_files(settings, cat.engine)
    assert first.action == IndexAction.REBUILT
    actions = []
    for step in range(10):
        random_step(cat, rng, int(rng.integers(1, 6)), step)
        report = update_index_files(settings, cat.engine)
        actions.append(report.action)
        copy = oracle(settings, tmp_path, f"oracle-{step}", copy_store)
        assert_same_answers(file_parts(settings), file_parts(copy), settings, rng,
                            indexed_ids(cat))
    # the incremental path was taken, merges and compactions among it, never a retrain
    assert IndexAction.REBUILT not in actions
    assert IndexAction.SEGMENT in actions
    assert {IndexAction.MERGED, IndexAction.COMPACTED} & set(actions)
    assert is_two_level(file_parts(settings).quantizer) == two_level


def test_in_memory_delta_answers_like_a_rebuild(tmp_path: Path, cat: Catalogue,
                                                copy_store) -> None:
    rng = np.random.default_rng(7)
    settings = cat.settings
    for i in range(30):
        cat.add(f"/cat/first-{i}.jpg", i)
    update_index_files(settings, cat.engine)
    live = LiveIndex(settings, cat.engine)
    for step in range(4):  # the store moves on; the files do not
        random_step(cat, rng, 4, step)
        live.refresh()
        snap = live.snapshot()
        assert snap.files_seq < snap.seq and len(snap.parts.parts) == 2
        copy = oracle(settings, tmp_path, f"oracle-{step}", copy_store)
        assert_same_answers(snap.parts, file_parts(copy), settings, rng, indexed_ids(cat))


def test_a_refresh_assigns_only_the_rows_new_since_the_last(cat: Catalogue) -> None:
    """A serving process rebuilds its delta at every change of the store: the rows the last
    delta held keep their lists (`ListMemo`), a changed image's new rows are assigned again,
    and the delta is the one a fresh assignment gives."""
    for i in range(30):
        cat.add(f"/cat/first-{i}.jpg", i)
    update_index_files(cat.settings, cat.engine)
    live = LiveIndex(cat.settings, cat.engine)
    rows = [len(cat.pool[i][1].orb.descriptors[:cat.settings.local_per_image])
            for i in range(POOL)]
    start = live._memo.assigned
    cat.add("/cat/a.jpg", 30)
    cat.add("/cat/b.jpg", 31)
    live.refresh()
    assert live._memo.assigned - start == rows[30] + rows[31]
    cat.add("/cat/c.jpg", 32)
    live.refresh()
    assert live._memo.assigned - start == rows[30] + rows[31] + rows[32]
    cat.add("/cat/a.jpg", 33)  # changed: other features under the same URL
    live.refresh()
    assert live._memo.assigned - start == rows[30] + rows[31] + rows[32] + rows[33]
    delta = live.snapshot().parts.parts[-1].local
    fresh = LiveIndex(cat.settings, cat.engine).snapshot().parts.parts[-1].local
    assert delta.ntotal == fresh.ntotal == rows[31] + rows[32] + rows[33]
    assert list_contents(delta) == list_contents(fresh)


def list_contents(index) -> list[tuple[int, int]]:
    """(list, id) of every entry of an IVF index, sorted."""
    import faiss

    lists = index.invlists
    return sorted((li, int(i)) for li in range(index.nlist)
                  for i in faiss.rev_swig_ptr(lists.get_ids(li), lists.list_size(li)))


def test_a_background_refresh_runs_faiss_on_one_thread(cat: Catalogue,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A serving process's refresh thread assigns the store's new rows to lists on one
    FAISS thread, as its queries run: OpenMP threads spinning for a core would take it from
    the queries being answered."""
    import echoimage.search.live as live_mod

    for i in range(30):
        cat.add(f"/cat/first-{i}.jpg", i)
    update_index_files(cat.settings, cat.engine)
    seen = faiss_threads_of(monkeypatch, live_mod, "delta_part")
    live = LiveIndex(cat.settings, cat.engine, background=True)
    before = live.snapshot().seq
    seen.clear()
    cat.add("/cat/later.jpg", 30)
    live.current()  # stale: a refresh starts in the background
    live.wait()
    assert live.snapshot().seq > before
    assert seen and set(seen) == {1}


def test_engine_answers_like_a_rebuilt_engine(tmp_path: Path, cat: Catalogue,
                                              small_merges: None, copy_store) -> None:
    """End to end: transformed copies of catalogue images get the same ranked results."""
    rng = np.random.default_rng(11)
    settings = cat.settings
    for i in range(30):
        cat.add(f"/cat/first-{i}.jpg", i)
    update_index_files(settings, cat.engine)
    for step in range(6):
        random_step(cat, rng, 5, step)
        update_index_files(settings, cat.engine)
    copy = oracle(settings, tmp_path, "oracle", copy_store)
    live, fresh = search_engine(settings), search_engine(copy)
    for which in sorted(set(cat.urls.values()))[:8]:
        arr = synthetic(1000 + which, 320)
        for query in (jpeg(arr[20:-40, 30:], 70), jpeg(mirror(arr), 80)):
            a = [m.to_dict() for m in live.query_bytes(query, 5).matches]
            b = [m.to_dict() for m in fresh.query_bytes(query, 5).matches]
            assert a == b


def test_one_image_update_touches_only_a_segment(cat: Catalogue) -> None:
    settings = cat.settings
    for i in range(30):
        cat.add(f"/cat/first-{i}.jpg", i)
    update_index_files(settings, cat.engine)
    base = read_manifest(settings.index_dir).base  # type: ignore[union-attr]
    cat.add("/cat/one-more.jpg", 40)
    report = update_index_files(settings, cat.engine)
    manifest = read_manifest(settings.index_dir)
    assert report.action == IndexAction.SEGMENT and report.changed == 1
    assert manifest is not None and manifest.base == base  # the base was not rewritten
    assert [s.images for s in manifest.segments] == [1]
    again = update_index_files(settings, cat.engine)
    assert again.action == IndexAction.UNCHANGED


def test_retraining_is_decided_by_growth(cat: Catalogue) -> None:
    settings = cat.settings
    for i in range(20):
        cat.add(f"/cat/first-{i}.jpg", i)
    update_index_files(settings, cat.engine)
    trained = read_manifest(settings.index_dir).trained  # type: ignore[union-attr]
    assert trained is not None

    def grow(n: int) -> None:
        for j in range(n):
            cat.add(f"/cat/more-{n}-{j}.jpg", j % POOL)

    grow(20)  # 2x the trained descriptors: segments
    assert update_index_files(settings, cat.engine).action == IndexAction.SEGMENT
    grow(50)  # past 4x: the quantizer no longer fits
    report = update_index_files(settings, cat.engine)
    assert report.action == IndexAction.REBUILT and "grew" in report.reason
    manifest = read_manifest(settings.index_dir)
    assert manifest is not None and manifest.trained["nlist"] >= trained["nlist"]
    assert manifest.last_retrain["reason"] == report.reason


def test_snapshot_reads_one_state(cat: Catalogue) -> None:
    """Reads in a snapshot session do not see a commit made after it started."""
    cat.add("/cat/a.jpg", 0)
    with snapshot(cat.engine) as s:
        before = repo.current_seq(s)
        cat.add("/cat/b.jpg", 1)
        assert repo.current_seq(s) == before
        assert "/cat/b.jpg" not in repo.known_images(s)


def test_searching_processes_map_large_parts(cat: Catalogue, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    """Large IVF parts are memory-mapped by searching processes (not copied in) and answer
    like the parts read into memory."""
    import faiss

    for i in range(30):
        cat.add(f"/cat/first-{i}.jpg", i)
    update_index_files(cat.settings, cat.engine)
    read = LiveIndex(cat.settings, cat.engine).snapshot().parts
    monkeypatch.setattr(build_mod, "MMAP_FROM", 0)
    mapped = LiveIndex(cat.settings, cat.engine).snapshot().parts
    lists = faiss.downcast_InvertedLists(mapped.parts[0].local.invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists)
    assert not isinstance(faiss.downcast_InvertedLists(read.parts[0].local.invlists),
                          faiss.OnDiskInvertedLists)
    assert_same_answers(mapped, read, cat.settings, np.random.default_rng(3),
                        indexed_ids(cat))


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_a_query_that_goes_on_searches_every_list_of_its_first_keypoints(
        cat: Catalogue, monkeypatch: pytest.MonkeyPatch, share: float) -> None:
    """After first votes that probed half their lists, the second votes search the first
    keypoints' other lists and the next keypoints' nearest half: over both, every list of
    the first keypoints once, the nearest half of the next ones'; with every list probed,
    the next keypoints' every list. Either way each keypoint's hits are kept under its own
    row."""
    from collections import Counter

    for i in range(30):
        cat.add(f"/cat/other-{i}.jpg", i)
    update_index_files(cat.settings, cat.engine)
    calls: list[tuple[np.ndarray, np.ndarray]] = []
    real = PartSet.hits

    def hits(self: PartSet, q, params, assigned):  # type: ignore[no-untyped-def]
        calls.append((q.copy(), assigned[1].copy()))
        return real(self, q, params, assigned)

    monkeypatch.setattr(PartSet, "hits", hits)
    queries = []
    more_votes = SearchEngine._more_votes

    def keep(self: SearchEngine, q) -> None:  # type: ignore[no-untyped-def]
        queries.append(q)
        more_votes(self, q)

    monkeypatch.setattr(SearchEngine, "_more_votes", keep)
    settings = cat.settings.model_copy(update={
        "vote_probe_lists": share, "vote_probe_lists_entries": 1, "stop_votes": 0})
    engine = search_engine(settings)
    engine.query_bytes(jpeg(synthetic(5001, 320), 85), 5)  # no copy: every round runs
    assert len(calls) >= 2 and len(queries) == 1
    # the whole query's hits, kept over both searches: a full search's, row for row
    q = queries[0]
    descs = np.ascontiguousarray(
        q.views[0].orb(False).descriptors[:settings.local_query_descriptors])
    parts, params = q.snap.parts, LocalParams.from_settings(settings)
    nprobe = parts.nprobe
    first = settings.vote_probe_descriptors
    full = parts.assign(descs)
    lists = full[1].copy()
    if share < 1.0:
        lists[first:, nprobe // 2:] = -1  # the next keypoints: their nearest half
    want = sorted(zip(*(a.tolist() for a in real(parts, descs, params, (full[0], lists))),
                      strict=True))
    assert sorted(zip(*(a.tolist() for a in q.hits[0, False]), strict=True)) == want
    if share == 1.0:
        return
    (q1, l1), (q2, l2) = calls[:2]
    assert l1.shape[1] == nprobe // 2
    searched = Counter((d.tobytes(), int(li)) for ds, ls in ((q1, l1), (q2, l2))
                       for d, row in zip(ds, ls, strict=True) for li in row if li >= 0)
    every = parts.assign(q2)[1]
    assert every.shape[1] == nprobe
    # q2 holds each group's keypoints in turn, its first `first` of them first
    expected: Counter[tuple[bytes, int]] = Counter()
    k = 0
    for v, flipped in q.groups:
        n = len(q.views[v].orb(flipped).descriptors[:settings.local_query_descriptors])
        for r in range(n):
            row = every[k + r] if r < first else every[k + r][:nprobe // 2]
            expected.update((q2[k + r].tobytes(), int(li)) for li in row if li >= 0)
        k += n
    assert k == len(q2)
    assert searched == expected


def test_the_first_votes_probe_their_share_of_the_lists(cat: Catalogue,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """vote_probe_lists: the first vote search probes that share of the lists (the nearest
    ones, at least one) in a catalogue of vote_probe_lists_entries or more, every later one
    all of them; a smaller catalogue probes all."""
    for i in range(30):
        cat.add(f"/cat/first-{i}.jpg", i)
    update_index_files(cat.settings, cat.engine)
    widths: list[int] = []
    real = PartSet.hits

    def hits(self: PartSet, q, params, assigned):  # type: ignore[no-untyped-def]
        widths.append(assigned[1].shape[1])
        return real(self, q, params, assigned)

    monkeypatch.setattr(PartSet, "hits", hits)
    other = jpeg(synthetic(5000, 320), 85)  # no copy: every vote round runs
    seen = {}
    size = search_engine(cat.settings).size
    for share, entries in ((1.0, 1), (0.5, size), (0.25, size), (0.5, size + 1)):
        widths.clear()
        engine = search_engine(cat.settings.model_copy(update={
            "vote_probe_lists": share, "vote_probe_lists_entries": entries,
            "stop_votes": 0}))
        engine.query_bytes(other, 5)
        seen[share, entries] = list(widths)
    nprobe = search_engine(cat.settings).live.current().parts.nprobe
    assert [seen[k][0] for k in seen] == [nprobe, nprobe // 2, 1, nprobe]
    for k in seen:  # the second votes (and the normalised view's) probe every list
        assert len(seen[k]) >= 2 and set(seen[k][1:]) == {nprobe}
