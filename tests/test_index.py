"""The FAISS hash shortlist against a brute-force oracle; files, manifests and staleness."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy
from helpers import (
    build_index,
    crop,
    faiss_threads_of,
    indexed_features,
    jpeg,
    photo,
    search_engine,
    synthetic,
    to_gray,
    write,
)

from echoimage.config import Settings
from echoimage.errors import IndexStaleError
from echoimage.features.dihedral import NAMES, orient
from echoimage.features.hashes import hash_input, phash
from echoimage.index.binary import (
    IndexFileDamaged,
    build_binary_index,
    read_index_file,
    search,
    write_index_file,
)
from echoimage.index.build import index_params, misfit
from echoimage.index.local import LAYOUT, LocalParams
from echoimage.index.manifest import IndexManifest, read_manifest
from echoimage.search.live import LiveIndex
from echoimage.search.shortlist import shortlist
from echoimage.store import repo
from echoimage.store.db import open_store, session_factory
from echoimage.store.models import FeatureRow, ImageRow, Status
from echoimage.store.repo import StoreState
from echoimage.types import CatalogueItem

pytestmark = [pytest.mark.usefixtures("no_network"), pytest.mark.stores]


# --- oracle -----------------------------------------------------------------------------

def make_binary_dataset(nb: int, nq: int, seed: int = 123, dups: int = 0
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded 64-bit codes (uint8 N×8), non-contiguous int64 ids, and queries.

    Half of the queries are database codes with a few flipped bits, so there are near
    neighbours; `dups` database codes are repeated to force ties.
    """
    rs = np.random.RandomState(seed)
    xb = rs.randint(0, 256, (nb, 8)).astype(np.uint8)
    if dups:
        xb[nb - dups:] = xb[:dups]
    ids = np.cumsum(rs.randint(1, 5000, nb)).astype(np.int64)  # unique, with gaps
    xq = rs.randint(0, 256, (nq, 8)).astype(np.uint8)
    near = rs.choice(nb, nq // 2, replace=False)
    xq[: nq // 2] = xb[near]
    flips = rs.randint(0, 64, (nq // 2, 3))
    for row, bits in enumerate(flips):
        for b in bits:
            xq[row, b // 8] ^= np.uint8(1 << (b % 8))
    return xb, ids, xq


POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def brute_force(xb: np.ndarray, xq: np.ndarray) -> np.ndarray:
    """Hamming distance of every query to every database code (nq × nb)."""
    return POPCOUNT[np.bitwise_xor(xq[:, None, :], xb[None, :, :])].sum(axis=2)


def knn_intersection_measure(i1: list[np.ndarray], i2: list[np.ndarray]) -> float:
    """faiss.contrib.evaluation's measure, for ragged result lists."""
    total = sum(len(a) for a in i1)
    inter = sum(np.intersect1d(a, b).size for a, b in zip(i1, i2, strict=True))
    return inter / total if total else 1.0


@pytest.mark.parametrize("k", [1, 10, 50])
@pytest.mark.parametrize("dups", [0, 40])
def test_search_matches_brute_force(k: int, dups: int) -> None:
    xb, ids, xq = make_binary_dataset(2000, 60, dups=dups)
    hits = search(build_binary_index(ids, xb), xq, k)
    dist = brute_force(xb, xq)
    id_to_row = {int(i): r for r, i in enumerate(ids)}
    ref_ids: list[np.ndarray] = []
    got_ids: list[np.ndarray] = []
    nearest: list[bool] = []
    for q in range(len(xq)):
        got_i, got_d = hits.ids[q], hits.distances[q]
        assert len(got_i) == len(got_d) == k
        assert (got_i >= 0).all()
        assert np.all(np.diff(got_d) >= 0)  # ascending
        # every reported distance is the true distance of the reported id
        assert [dist[q, id_to_row[int(i)]] for i in got_i] == got_d.tolist()
        # and the distances are the k smallest (ties allowed: compare distances, not ids)
        order = np.argsort(dist[q], kind="stable")
        ref_d = dist[q, order]
        assert got_d.tolist() == ref_d[:k].tolist()
        assert len(set(got_i.tolist())) == k
        # ids strictly closer than the k-th distance must all be there; at the cut any of
        # the tied ids may be chosen (faiss's check_ref_knn_with_draws)
        cut = ref_d[k - 1]
        below = set(ids[dist[q] < cut].tolist())
        assert below <= set(got_i.tolist())
        if k < len(ref_d) and cut < ref_d[k]:  # no tie across the cut: the very same set
            assert set(got_i.tolist()) == set(ids[order[:k]].tolist())
        ref_ids.append(ids[order[:k]])
        got_ids.append(got_i)
        nearest.append(q < len(xq) // 2 and got_d[0] <= 3)
    # the planted near neighbours (3 flipped bits) are all found first
    assert sum(nearest) == len(xq) // 2
    recall = knn_intersection_measure(got_ids, ref_ids)  # ties make it < 1 legitimately
    assert recall > (0.99 if k == 1 else 0.5)


@pytest.mark.parametrize("nprobe", [3, 40])  # 40 > the 32 lists: empty probes (-1) too
def test_local_neighbours_scan_by_list_finds_each_rows_hits(nprobe: int) -> None:
    """neighbours() scans an IVF part list by list (a query's rows share lists): each row
    gets exactly the entries within max_distance in the lists it was assigned, as a search
    of that row alone finds them."""
    import faiss

    from echoimage.index.local import (
        LocalParams,
        local_part,
        neighbours,
        quantizer_of,
        train_quantizer,
    )

    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (64, 32), dtype=np.uint8)  # 64 clusters of descriptors
    flips = rng.random((64 * 40, 256)) < 0.08  # ~20 bits from their cluster's centre
    xb = np.packbits(np.unpackbits(np.repeat(base, 40, axis=0), axis=1) ^ flips, axis=1)
    ids = np.arange(len(xb), dtype=np.int64)  # one per entry: its row of xb
    params = dataclasses.replace(LocalParams.from_settings(Settings()), min_lists=32)
    part = local_part(ids, xb, train_quantizer(xb, params))
    xq = np.ascontiguousarray(xb[rng.choice(len(xb), 50, replace=False)])
    assigned = quantizer_of(part).search(xq, nprobe)
    rows, dists, found = neighbours(part, xq, params, assigned)
    assert len(rows) > 50
    lists = part.invlists
    for r in range(len(xq)):
        member = np.concatenate([
            faiss.rev_swig_ptr(lists.get_ids(int(li)), lists.list_size(int(li))).astype(np.int64)
            for li in assigned[1][r] if li >= 0])
        d = np.unpackbits(xb[member] ^ xq[r], axis=1).sum(axis=1)
        near = d <= params.max_distance
        want = sorted(zip(d[near].tolist(), member[near].tolist(), strict=True))
        got = sorted(zip(dists[rows == r].tolist(), found[rows == r].tolist(), strict=True))
        assert got == want


def test_known_lists_build_the_part_the_quantizer_would() -> None:
    """local_part with each row's list given (`ListMemo`) holds what it holds when the
    quantizer assigns them; the memo assigns only rows it has not seen at that change
    number, and forgets everything under another quantizer."""
    import faiss

    from echoimage.index.local import LocalParams, local_part, train_quantizer
    from echoimage.index.parts import ListMemo

    rng = np.random.default_rng(5)
    xb = rng.integers(0, 256, (3000, 32), dtype=np.uint8)
    params = dataclasses.replace(LocalParams.from_settings(Settings()), min_lists=32)
    quantizer = train_quantizer(xb, params)
    counts = np.array([100, 250, 150], np.int64)
    ids = np.repeat(np.array([7, 8, 9], np.int64), counts)
    descs = xb[:500]
    memo = ListMemo()
    lists = memo.lists(quantizer, [(7, 1), (8, 2), (9, 3)], counts, descs)
    assert memo.assigned == 500

    def contents(index) -> list[tuple[int, int, bytes]]:
        inv = index.invlists
        return sorted(
            (li, int(i), bytes(c)) for li in range(index.nlist) for i, c in zip(
                faiss.rev_swig_ptr(inv.get_ids(li), inv.list_size(li)),
                faiss.rev_swig_ptr(inv.get_codes(li), inv.list_size(li) * 32).reshape(-1, 32),
                strict=True))

    assert contents(local_part(ids, descs, quantizer, lists)) == \
        contents(local_part(ids, descs, quantizer))
    # image 8 gone, 9 changed (change 4), 10 new: only 9's and 10's rows are assigned
    more = np.concatenate([xb[:100], xb[600:700], xb[900:950]])
    again = memo.lists(quantizer, [(7, 1), (9, 4), (10, 5)], np.array([100, 100, 50]), more)
    assert memo.assigned == 650
    assert np.array_equal(again[:100], lists[:100])
    assert np.array_equal(again, memo.lists(quantizer, [(7, 1), (9, 4), (10, 5)],
                                            np.array([100, 100, 50]), more))
    assert memo.assigned == 650
    memo.lists(train_quantizer(xb, params, seed=1), [(7, 1)], np.array([100]), xb[:100])
    assert memo.assigned == 750
    with pytest.raises(ValueError, match="rows"):
        memo.lists(quantizer, [(7, 1)], np.array([99]), xb[:100])


def test_the_quantizer_trains_on_one_faiss_thread(monkeypatch) -> None:
    """k-means is many short parallel loops, whose OpenMP threads spin while they wait for
    a core on a busy machine: the quantizer trains on one thread whoever asks for it, and
    the caller's setting comes back."""
    import faiss
    import faiss.contrib.clustering as clustering

    from echoimage.index.local import LocalParams, is_two_level, train_quantizer

    seen = faiss_threads_of(monkeypatch, clustering, "two_level_clustering")
    xb = np.random.default_rng(3).integers(0, 256, (3000, 32), dtype=np.uint8)
    params = dataclasses.replace(LocalParams.from_settings(Settings()), min_lists=32)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        assert is_two_level(train_quantizer(xb, params))
        assert seen == [1] and faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(before)


def test_exact_duplicates_are_found_at_distance_zero() -> None:
    xb, ids, _ = make_binary_dataset(500, 2, dups=50)
    hits = search(build_binary_index(ids, xb), xb[:50], 2)
    for q in range(50):
        assert hits.distances[q].tolist() == [0, 0]
        assert set(hits.ids[q].tolist()) == {int(ids[q]), int(ids[450 + q])}


def test_empty_index_returns_empty_answers() -> None:
    index = build_binary_index(np.zeros(0, np.int64), np.zeros((0, 8), np.uint8))
    assert index.ntotal == 0
    xq = np.random.RandomState(123).randint(0, 256, (3, 8)).astype(np.uint8)
    hits = search(index, xq, 5)
    assert len(hits.ids) == len(hits.distances) == 3
    for i, d in zip(hits.ids, hits.distances, strict=True):
        assert i.size == 0 and d.size == 0


def test_k_larger_than_ntotal_has_no_padding() -> None:
    xb, ids, xq = make_binary_dataset(7, 4)
    hits = search(build_binary_index(ids, xb), xq, 100)
    for i, d in zip(hits.ids, hits.distances, strict=True):
        assert sorted(i.tolist()) == sorted(ids.tolist())
        assert (i >= 0).all() and len(d) == 7


def test_k_zero_answers_nothing() -> None:
    xb, ids, xq = make_binary_dataset(20, 2)
    hits = search(build_binary_index(ids, xb), xq, 0)
    assert all(i.size == 0 for i in hits.ids)


def test_build_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        build_binary_index(np.arange(3, dtype=np.int64), np.zeros((3, 4), np.uint8))
    with pytest.raises(ValueError):
        build_binary_index(np.arange(2, dtype=np.int64), np.zeros((3, 8), np.uint8))
    with pytest.raises(ValueError):
        build_binary_index(np.arange(3, dtype=np.int64), np.zeros(24, np.uint8))


# --- files and manifests ----------------------------------------------------------------

def test_index_file_round_trip(tmp_path: Path) -> None:
    xb, ids, xq = make_binary_dataset(300, 10)
    index = build_binary_index(ids, xb)
    ref = write_index_file(index, tmp_path / "h.faissbin")
    assert ref.sha256 == hashlib.sha256((tmp_path / "h.faissbin").read_bytes()).hexdigest()
    assert ref.bytes == (tmp_path / "h.faissbin").stat().st_size
    again = read_index_file(tmp_path, ref)
    a, b = search(index, xq, 10), search(again, xq, 10)
    for x, y in zip(a.ids + a.distances, b.ids + b.distances, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_damaged_index_files_are_refused(tmp_path: Path) -> None:
    xb, ids, _ = make_binary_dataset(300, 10)
    ref = write_index_file(build_binary_index(ids, xb), tmp_path / "h.faissbin")
    path = tmp_path / "h.faissbin"
    good = path.read_bytes()
    path.write_bytes(good[:-3] + bytes(b ^ 0xFF for b in good[-3:]))
    with pytest.raises(IndexFileDamaged, match="checksum"):
        read_index_file(tmp_path, ref)
    junk = bytes(len(good))
    path.write_bytes(junk)
    with pytest.raises(IndexFileDamaged, match="cannot be read by FAISS"):
        read_index_file(tmp_path, dataclasses.replace(
            ref, sha256=hashlib.sha256(junk).hexdigest()))
    path.unlink()
    with pytest.raises(IndexFileDamaged, match="cannot read"):
        read_index_file(tmp_path, ref)


def test_a_mapped_file_as_written_is_not_read_whole(tmp_path: Path, monkeypatch) -> None:
    """A mapped index file with its recorded size and modification time is taken as
    written (hashing would read it all); a changed one, or one read without mapping, is
    checked byte for byte."""
    from echoimage.index import binary

    xb, ids, xq = make_binary_dataset(300, 10)
    path = tmp_path / "h.faissbin"
    ref = write_index_file(build_binary_index(ids, xb), path)
    assert ref.mtime_ns == path.stat().st_mtime_ns
    hashed = []
    real = binary.hashlib.sha256

    def counting():  # noqa: ANN202
        hashed.append(1)
        return real()

    monkeypatch.setattr(binary.hashlib, "sha256", counting)
    assert search(read_index_file(tmp_path, ref, mmap=True), xq, 3).ids
    assert not hashed
    read_index_file(tmp_path, ref)
    assert len(hashed) == 1
    read_index_file(tmp_path, dataclasses.replace(ref, mtime_ns=None), mmap=True)
    assert len(hashed) == 2  # a manifest from before mtimes were recorded
    good = path.read_bytes()
    path.write_bytes(good[:-3] + bytes(b ^ 0xFF for b in good[-3:]))
    os.utime(path, ns=(ref.mtime_ns + 10**9, ref.mtime_ns + 10**9))
    with pytest.raises(IndexFileDamaged, match="checksum"):
        read_index_file(tmp_path, ref, mmap=True)


def test_manifest_round_trip_and_refusals(built) -> None:
    manifest = read_manifest(built.settings.index_dir)
    assert manifest is not None
    assert IndexManifest.from_json(manifest.to_json()) == manifest
    assert manifest.images == len(built.catalogue.files) and manifest.segments == ()
    assert manifest.params == index_params(built.settings)
    for bad in ("{not json", json.dumps({"format": 1}), json.dumps({"format": 2})):
        with pytest.raises((ValueError, TypeError, KeyError)):
            IndexManifest.from_json(bad)


def test_misfit(built) -> None:
    s = built.settings
    manifest = read_manifest(s.index_dir)
    assert manifest is not None
    state = _store_state(s)
    assert misfit(manifest, state, s) is None
    assert misfit(manifest, dataclasses.replace(state, seq=state.seq + 5), s) is None
    assert "newer than the store" in misfit(
        manifest, dataclasses.replace(state, seq=manifest.seq - 1), s)
    assert "another store" in misfit(manifest, dataclasses.replace(state, store_id="x"), s)
    other = s.model_copy(update={"local_per_image": 100})
    assert "other parameters" in misfit(manifest, state, other)
    # files written before a migration that changed nothing they read (the scan tables)
    # still serve; before one that changed the feature rows, or by newer code, they do not
    for rev, fits in (("0006", True), ("0007", True), ("0005", True), ("0004", False),
                      ("0001", False), ("9999", False)):
        at = dataclasses.replace(manifest, schema_revision=rev)
        assert (misfit(at, state, s) is None) is fits, rev
        if not fits:
            assert "another schema revision" in misfit(at, state, s)


# --- the engine never answers from a stale index ----------------------------------------

def _index_new_image(settings, data: bytes, url: str) -> int:
    """Put an indexed image into the store directly, behind the index's back."""
    engine = open_store(settings)
    try:
        with session_factory(engine).begin() as s:
            repo.add_pending(s, [CatalogueItem(url, "test")], None)
            image_id = repo.known_images(s, [url])[url].id
            repo.save_features(s, image_id, hashlib.sha256(data).hexdigest(), len(data),
                               indexed_features(data))
    finally:
        engine.dispose()
    return image_id


def _store_state(settings) -> StoreState:
    engine = open_store(settings)
    try:
        with session_factory(engine)() as s:
            return repo.store_state(s)
    finally:
        engine.dispose()


def _assert_fresh_on_disk(settings) -> None:
    manifest = read_manifest(settings.index_dir)
    assert manifest is not None
    state = _store_state(settings)
    assert misfit(manifest, state, settings) is None and manifest.seq == state.seq


def test_engine_rebuilds_deleted_index(built_copy) -> None:
    s = built_copy.settings
    (s.index_dir / "manifest.json").unlink()
    with pytest.raises(IndexStaleError):
        search_engine(s, rebuild=False)
    engine = search_engine(s)
    assert engine.size == len(built_copy.catalogue.files)
    _assert_fresh_on_disk(s)
    top = engine.query_bytes(jpeg(photo("rocket"), 70), 1).matches[0]
    assert top.url == built_copy.catalogue.url("rocket")


def test_engine_rebuilds_an_index_laid_out_otherwise(built_copy) -> None:
    """Index files from a version that laid the index out differently are rebuilt."""
    s = built_copy.settings
    path = s.index_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["params"]["layout"] = "ivf-4sqrt-train40"
    path.write_text(json.dumps(manifest))
    with pytest.raises(IndexStaleError):
        search_engine(s, rebuild=False)
    search_engine(s)
    assert json.loads(path.read_text())["params"]["layout"] == LAYOUT


def test_engine_catches_up_with_a_store_changed_behind_its_back(built_copy, tmp_path) -> None:
    s = built_copy.settings
    data = jpeg(synthetic(5))
    url = str(write(tmp_path / "new.jpg", data))
    new_id = _index_new_image(s, data, url)
    # the files on disk are now behind the store; the engine searches the difference from
    # memory (no rebuild needed, so it works even when rebuilding is not allowed)
    manifest = read_manifest(s.index_dir)
    assert manifest is not None and manifest.seq < _store_state(s).seq
    engine = search_engine(s, rebuild=False)
    assert engine.size == len(built_copy.catalogue.files) + 1
    assert len(engine.live.snapshot().parts.parts) == 2  # the base and the delta
    top = engine.query_bytes(data, 1).matches[0]
    assert (top.id, top.exact) == (new_id, True)


def test_engine_writes_a_large_delta_to_the_files(built_copy, tmp_path, monkeypatch) -> None:
    s = built_copy.settings
    data = jpeg(synthetic(5))
    url = str(write(tmp_path / "new.jpg", data))
    new_id = _index_new_image(s, data, url)
    monkeypatch.setattr(LiveIndex, "delta_max", 0)  # any change is worth a segment
    engine = search_engine(s)
    assert engine.size == len(built_copy.catalogue.files) + 1
    _assert_fresh_on_disk(s)  # (a small, flat index: rebuilt whole; a large one: a segment)
    assert len(engine.live.snapshot().parts.parts) == 1  # nothing left in memory
    top = engine.query_bytes(data, 1).matches[0]
    assert (top.id, top.exact) == (new_id, True)


def test_engine_takes_an_old_index_put_back(built_copy, tmp_path) -> None:
    """Index files of the same store at an earlier change are still right: the engine
    searches the later changes from memory."""
    s = built_copy.settings
    old = tmp_path / "old-index"
    shutil.copytree(s.index_dir, old)
    data = jpeg(synthetic(6))
    url = str(write(tmp_path / "new.jpg", data))
    _index_new_image(s, data, url)
    search_engine(s)
    shutil.rmtree(s.index_dir)
    shutil.copytree(old, s.index_dir)
    engine = search_engine(s)
    assert engine.size == len(built_copy.catalogue.files) + 1
    assert engine.query_bytes(data, 1).matches[0].url == url


def test_live_engine_picks_up_a_new_build(built_copy, tmp_path) -> None:
    s = built_copy.settings
    engine = search_engine(s)
    extra = tmp_path / "extra"
    data = jpeg(synthetic(7))
    write(extra / "seven.jpg", data)
    build_index(s, [str(extra)], progress=False)
    top = engine.query_bytes(data, 1).matches[0]
    assert top.url == str((extra / "seven.jpg").resolve()) and top.exact
    assert engine.size == len(built_copy.catalogue.files) + 1


def test_live_engine_never_answers_from_a_stale_index(built_copy, tmp_path) -> None:
    s = built_copy.settings
    engine = search_engine(s)
    data = jpeg(synthetic(8))
    url = str(write(tmp_path / "eight.jpg", data))
    new_id = _index_new_image(s, data, url)
    # the store now holds an image the loaded index does not: the engine must notice
    res = engine.query_bytes(jpeg(np.ascontiguousarray(synthetic(8)[:, ::-1]), 80), 3)
    assert res.matches and res.matches[0].id == new_id


# --- the dihedral shortlist -------------------------------------------------------------

@pytest.fixture(scope="module")
def photo_index():
    names = ["camera", "astronaut", "coffee", "rocket", "chelsea", "moon", "page", "brick"]
    grays = {n: to_gray(photo(n)) for n in names}
    ids = np.arange(101, 101 + len(names), dtype=np.int64)
    codes = np.frombuffer(b"".join(phash(hash_input(grays[n])) for n in names),
                          np.uint8).reshape(-1, 8)
    return build_binary_index(ids, codes), dict(zip(names, ids.tolist(), strict=True)), grays


@pytest.mark.parametrize("o", range(8), ids=NAMES)
@pytest.mark.parametrize("name", ["camera", "astronaut", "coffee", "rocket"])
def test_shortlist_finds_turned_and_mirrored_copies(photo_index, name: str, o: int) -> None:
    index, ids, grays = photo_index
    query = orient(grays[name], o)
    listed = shortlist(index, hash_input(query), 4)
    best = listed[0]
    assert best.id == ids[name]
    assert best.hash_distance <= 2
    # the reported orientation turns the query back onto the catalogue image
    np.testing.assert_array_equal(orient(query, best.orientation), grays[name])
    assert [x.id for x in listed].count(ids[name]) == 1  # each id once, at its best


def test_shortlist_orientation_names(photo_index) -> None:
    index, ids, grays = photo_index
    cam = grays["camera"]
    expect = {"identity": cam, "rot270": np.rot90(cam), "rot180": np.rot90(cam, 2),
              "rot90": np.rot90(cam, 3), "mirror": cam[:, ::-1],
              "mirror+rot90": np.rot90(cam[:, ::-1])}
    for name, query in expect.items():
        best = shortlist(index, hash_input(np.ascontiguousarray(query)), 2)[0]
        assert (best.id, NAMES[best.orientation]) == (ids["camera"], name)


def test_shortlist_sorted_and_complete(photo_index) -> None:
    index, ids, grays = photo_index
    listed = shortlist(index, hash_input(grays["coffee"]), 32)
    assert sorted(x.id for x in listed) == sorted(ids.values())  # k > ntotal: everything
    keys = [(x.hash_distance, x.orientation, x.id) for x in listed]
    assert keys == sorted(keys)


def test_shortlist_on_empty_index() -> None:
    index = build_binary_index(np.zeros(0, np.int64), np.zeros((0, 8), np.uint8))
    assert shortlist(index, hash_input(to_gray(photo("camera"))), 5) == []


@pytest.mark.parametrize(("exact_count", "two_level"), [(True, False), (False, False),
                                                        (False, True)])
def test_rebuild_streams_the_store_into_the_index(built_copy, monkeypatch, exact_count,
                                                  two_level) -> None:
    """A rebuild reads the local descriptors piece by piece and trains on a sample of
    images (a large store estimates its descriptor count from that sample): the index holds
    exactly the store's prefixes, and a query still finds its photo through the IVF index
    (with the default two-level quantizer, or a flat one when settings ask for it)."""
    from echoimage.index import build
    from echoimage.index.build import load_parts, rebuild_index_files, training_sample
    from echoimage.index.local import is_two_level, local_ids, nlist_for, quantizer_of

    if not exact_count:
        monkeypatch.setattr(build, "EXACT_COUNT_MAX", 1)
    update: dict[str, int] = {"local_flat_max": 1000, "local_min_lists": 16}
    if not two_level:  # a flat quantizer: the default up to 8,192 lists before
        update["local_flat_quantizer_max"] = 8192
    s = built_copy.settings.model_copy(update=update)
    engine = open_store(s)
    try:
        with session_factory(engine)() as session:
            # every indexed image's descriptor prefix, read in one query
            rows = session.execute(
                sqlalchemy.select(FeatureRow.image_id, FeatureRow.descriptors)
                .join(ImageRow, ImageRow.id == FeatureRow.image_id)
                .where(ImageRow.status == Status.INDEXED).order_by(FeatureRow.image_id)).all()
            prefixes = [bytes(d)[:32 * s.local_per_image] for _, d in rows]
            lids = np.repeat([i for i, _ in rows], [len(p) // 32 for p in prefixes])
            descs = np.frombuffer(b"".join(prefixes), np.uint8).reshape(-1, 32)
            pieces = list(repo.iter_local_descriptors(session, s.local_per_image, batch=3))
            assert len(pieces) > 2
            assert np.array_equal(np.concatenate([p[0] for p in pieces]), lids)
            assert np.array_equal(np.concatenate([p[1] for p in pieces]), descs)
            assert repo.local_descriptor_count(session, s.local_per_image) == len(lids)
            ids, _ = repo.indexed_hashes(session)
            few, _ = training_sample(session, ids, s.local_per_image, 40)
            every, mean = training_sample(session, ids, s.local_per_image, 10 ** 6)
        assert 0 < len(few) < len(descs) and np.array_equal(every, descs)
        assert mean == pytest.approx(len(descs) / len(ids))
        rebuild_index_files(s, engine)
    finally:
        engine.dispose()
    manifest = read_manifest(s.index_dir)
    assert manifest is not None and manifest.layout == "ivf"
    (base,), quantizer = load_parts(s.index_dir, manifest)
    assert quantizer_of(base.local) is not None
    assert is_two_level(quantizer) == two_level
    if two_level:  # 4·√n lists
        lp = LocalParams.from_settings(s)
        assert quantizer.ntotal == nlist_for(len(lids), lp) > 4 * np.sqrt(len(lids)) - 1
    assert np.array_equal(np.sort(local_ids(base.local)), np.sort(lids))
    engine = search_engine(s)
    top = engine.query_bytes(jpeg(photo("rocket"), 70), 1).matches[0]
    assert top.url == built_copy.catalogue.url("rocket")
    assert engine.live.current().parts.nprobe == (16 if two_level else 8)
    # a part of the photo, found by its votes with the first search probing half the lists
    half = search_engine(s.model_copy(update={"vote_probe_lists_entries": 1}))
    part = half.query_bytes(jpeg(crop(photo("rocket"), 0.5), 85), 1).matches[0]
    assert part.url == built_copy.catalogue.url("rocket") and part.duplicate
