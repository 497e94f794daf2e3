"""Builds, updates and the sharded vote search on a real Dask cluster: a `dask scheduler`
and two `dask worker` processes on 127.0.0.1 (tests/daskcluster.py), on SQLite (the client
writes) and on PostgreSQL (the workers write)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from daskcluster import start_cluster
from helpers import build_index, crop, jpeg, mirror, search_engine, synthetic, verify_index, write
from sqlalchemy import func, select
from support.daskcluster import DaskCluster

from echoimage.config import Settings
from echoimage.index.local import LocalParams, count_votes
from echoimage.index.parts import nearest_lists, query_rows
from echoimage.search.shards import ShardedVotes
from echoimage.store import repo
from echoimage.store.db import open_store, session_factory
from echoimage.store.models import FeatureRow, ImageRow, Status

pytestmark = [pytest.mark.usefixtures("no_network"), pytest.mark.stores, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """A scheduler and two workers for the module."""
    c = start_cluster(2, log_dir=tmp_path_factory.mktemp("dask"))
    yield c
    c.stop()


def folder(root: Path, n: int, first: int = 0) -> Path:
    """n synthetic photos (and one file that is not an image) in root."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(first, first + n):
        write(root / f"p{i:03d}.jpg", jpeg(synthetic(7000 + i, 320), 90))
    (root / "notes.jpg").write_bytes(b"not an image at all")
    return root


def rows(settings: Settings) -> dict[str, tuple[str, bytes | None]]:
    """url → (status, pHash) of every image of the store; fails on duplicate rows."""
    engine = open_store(settings, create=False)
    try:
        with session_factory(engine)() as s:
            got = s.execute(select(ImageRow.url, ImageRow.status, FeatureRow.phash)
                            .outerjoin(FeatureRow, FeatureRow.image_id == ImageRow.id)).all()
            n_features = s.scalar(select(func.count()).select_from(FeatureRow))
    finally:
        engine.dispose()
    out = {u: (str(st), ph) for u, st, ph in got}
    assert len(out) == len(got), "an image has two rows"
    assert n_features == sum(1 for st, _ in out.values() if st == Status.INDEXED)
    return out


def test_cluster_build_is_a_local_build(cluster: DaskCluster, tmp_path: Path,
                                        store_url: str | None, copy_store) -> None:
    """The same statuses and features as the local process pool; resumable the same
    way (a second run has nothing to do)."""
    photos = folder(tmp_path / "photos", 10)
    settings = Settings(data_dir=tmp_path / "data", cluster=cluster.address,
                        cluster_shard_size=3)
    summary = build_index(settings, [str(photos)], progress=False)
    assert summary.counts["indexed"] == 10 and summary.counts["not-an-image"] == 1, \
        summary.as_dict()
    assert summary.processed == 11 and summary.index_entries == 10
    assert [f[0] for f in summary.failures] == [str((photos / "notes.jpg").resolve())]
    local = Settings(data_dir=tmp_path / "local",
                     database_url=None)
    build_index(local, [str(photos)], progress=False)
    assert rows(settings) == rows(local)
    again = build_index(settings, [str(photos)], progress=False)
    assert again.counts == {"already-indexed": 10, "known-failure": 1}
    assert verify_index(settings).ok
    engine = search_engine(settings)
    top = engine.query_bytes(jpeg(crop(synthetic(7004, 320), 0.7), 80), 1).matches[0]
    assert top.url == str((photos / "p004.jpg").resolve()) and top.duplicate


def test_cluster_update_from_the_command_line(cluster: DaskCluster, tmp_path: Path,
                                              store_url: str | None) -> None:
    """`index build --cluster` then `index update --cluster` after files changed, were
    added and removed."""
    photos = folder(tmp_path / "photos", 6)
    data = tmp_path / "data"
    cli = [sys.executable, "-m", "echoimage", "--data-dir", str(data)]
    built = subprocess.run([*cli, "index", "build", "-q", "--json", "--cluster",
                            cluster.address, str(photos)], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["counts"]["indexed"] == 6
    (photos / "p000.jpg").unlink()
    write(photos / "p001.jpg", jpeg(mirror(synthetic(9001, 320)), 90))
    folder(photos, 2, first=50)
    updated = subprocess.run([*cli, "index", "update", "-q", "--json", "--cluster",
                              cluster.address], capture_output=True, text=True, timeout=300)
    assert updated.returncode == 0, updated.stderr
    counts = json.loads(updated.stdout)["counts"]
    assert counts.get("indexed") == 2 and counts.get("changed") == 1, counts
    assert counts.get("gone") == 1, counts
    status = rows(Settings(data_dir=data))
    assert status[str((photos / "p000.jpg").resolve())][0] == Status.GONE
    assert sum(1 for st, _ in status.values() if st == Status.INDEXED) == 7


def test_killing_a_worker_mid_build_loses_and_duplicates_nothing(
        tmp_path: Path, store_url: str | None) -> None:
    """kill -9 of a worker (no nanny to bring it back) in the middle of a build: Dask
    runs its tasks again on the other worker, the build completes, each image once."""
    c = start_cluster(2, nanny=False, log_dir=tmp_path)
    try:
        photos = folder(tmp_path / "photos", 40)
        settings = Settings(data_dir=tmp_path / "data", cluster=c.address,
                            cluster_shard_size=2)
        result: dict[str, object] = {}

        def run() -> None:
            try:
                result["summary"] = build_index(settings, [str(photos)], progress=False)
            except BaseException as exc:  # noqa: BLE001 - reported by the test below
                result["error"] = exc

        t = threading.Thread(target=run)
        t.start()
        engine = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until some of the work is stored
            try:
                engine = engine or open_store(settings, create=False)
                with session_factory(engine)() as s:
                    done = repo.status_counts(s).get(Status.INDEXED, 0)
            except Exception:  # noqa: BLE001 - the store may not exist yet
                done = 0
            if done >= 6:
                break
            time.sleep(0.05)
        assert done < 40, "the build ended before a worker could be killed"
        c.kill_worker(0)
        t.join(300)
        if engine is not None:
            engine.dispose()
        assert "error" not in result, result.get("error")
        summary = result["summary"]
        assert summary.counts["indexed"] == 40, summary.as_dict()  # type: ignore[attr-defined]
        status = rows(settings)
        assert sum(1 for st, _ in status.values() if st == Status.INDEXED) == 40
        assert verify_index(settings).ok
    finally:
        c.stop()


# --- the sharded vote search --------------------------------------------------------------

@pytest.fixture(scope="module")
def ivf_store(tmp_path_factory: pytest.TempPathFactory, module_store_url: str | None
              ) -> Settings:
    """40 photos with an IVF local index (small settings), built locally."""
    root = tmp_path_factory.mktemp("shards")
    photos = folder(root / "photos", 40)
    settings = Settings(data_dir=root / "data", database_url=module_store_url, workers=2,
                        orb_features=300, local_flat_max=500, local_min_lists=16,
                        local_nprobe=4, local_wide_nprobe=4)
    build_index(settings, [str(photos)], progress=False)
    return settings


@pytest.mark.parametrize("shards", [1, 2, 4])
def test_sharded_votes_are_the_whole_index_votes(cluster: DaskCluster, ivf_store: Settings,
                                                 shards: int) -> None:
    """An oracle: the votes of 1, 2 and 4 shards are the unsharded index's, for
    descriptors near stored ones and for random ones, and so are whole answers."""
    from distributed import Client

    engine = search_engine(ivf_store)
    snap = engine.live.current()
    assert snap.quantizer is not None  # IVF: shards search the lists the client assigns
    lp = LocalParams.from_settings(ivf_store)
    rng = np.random.default_rng(shards)
    with Client(cluster.address) as client:
        sharded = ShardedVotes(client, ivf_store, shards)
        sharded.place(snap)
        store = open_store(ivf_store, create=False)
        with session_factory(store)() as s:
            ids, _ = repo.indexed_hashes(s)
            blobs = repo.descriptors_of(s, ids.tolist(), lp.per_image)
        store.dispose()
        for image_id in rng.choice(ids, 8, replace=False):
            descs = np.frombuffer(blobs[int(image_id)], np.uint8).reshape(-1, 32)
            noisy = descs ^ (rng.integers(0, 256, descs.shape, dtype=np.uint8)
                             & rng.integers(0, 256, descs.shape, dtype=np.uint8)
                             & rng.integers(0, 256, descs.shape, dtype=np.uint8))
            for q in (descs, noisy, rng.integers(0, 256, descs.shape, dtype=np.uint8)):
                assert sharded.vote(snap, q, lp, 10) == snap.parts.vote(q, lp, 10)
                # probing half the lists (vote_probe_lists): half of each row's, the same
                rows = query_rows(q, lp)
                half = nearest_lists(snap.parts.assign(rows), 0.5)
                assert half is not None and half[1].shape[1] == lp.nprobe // 2
                assert count_votes(*sharded.hits(snap, rows, lp, 0.5), lp, 10) == \
                    count_votes(*snap.parts.hits(rows, lp, half), lp, 10)
        engine.shards = sharded
        whole = search_engine(ivf_store)
        # and with the first votes probing half the lists (vote_probe_lists)
        half = ivf_store.model_copy(update={"vote_probe_lists": 0.5,
                                            "vote_probe_lists_entries": 1})
        engine_half, whole_half = search_engine(half), search_engine(half)
        engine_half.shards = ShardedVotes(client, half, shards)
        for seed, frac in ((7003, 0.5), (7011, 0.4), (7020, 1.0)):
            data = jpeg(crop(synthetic(seed, 320), frac), 85)
            for x, y in ((engine, whole), (engine_half, whole_half)):
                a, b = x.query_bytes(data, 3), y.query_bytes(data, 3)
                assert [(m.id, m.score, m.votes) for m in a.matches] == \
                    [(m.id, m.score, m.votes) for m in b.matches]


def test_sharded_engine_stays_live(cluster: DaskCluster, tmp_path: Path,
                                   store_url: str | None, copy_store, ivf_store: Settings
                                   ) -> None:
    """With --cluster and 2 shards, an image added to the store after the shards were
    placed is found by its votes (the shards catch up with the change number)."""
    settings = copy_store(ivf_store, tmp_path / "copy").model_copy(
        update={"cluster": cluster.address, "index_shards": 2})
    engine = search_engine(settings)
    try:
        assert engine.shards is not None
        new = tmp_path / "new"
        write(new / "late.jpg", jpeg(synthetic(8123, 320), 90))
        build_index(settings.model_copy(update={"cluster": None}), [str(new)],
                    progress=False)
        engine.refresh()
        res = engine.query_bytes(jpeg(crop(synthetic(8123, 320), 0.45), 85), 1)
        assert res.matches[0].url == str((new / "late.jpg").resolve())
        assert res.matches[0].votes > 0
    finally:
        engine.close()
