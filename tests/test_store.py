"""The store through its typed repository: round trips, statuses, failures, fingerprints."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import (
    indexed_features,
    jpeg,
    photo,
    png,
)
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from support.pgserver import PASSWORD_ROLE, free_port

from echoimage.cli import cli
from echoimage.config import Settings
from echoimage.errors import StoreError
from echoimage.search.rerank import ssim
from echoimage.store import repo
from echoimage.store.codec import (
    compact_row,
    decode_orb,
    decode_thumbnail,
    encode_orb,
    encode_thumbnail,
)
from echoimage.store.db import current_revision, head_revision, open_store, session_factory
from echoimage.store.models import FeatureRow, Run
from echoimage.types import CatalogueItem, ImageFeatures, RunStatus, Status

pytestmark = [pytest.mark.usefixtures("no_network"), pytest.mark.stores]


def features(data: bytes) -> ImageFeatures:
    return indexed_features(data)


@pytest.fixture(scope="module")
def feats() -> dict[str, tuple[bytes, ImageFeatures]]:
    """Encoded bytes and features of a few photos."""
    out = {}
    for name, data in [("camera", png(photo("camera"))), ("coffee", jpeg(photo("coffee"))),
                       ("rocket", jpeg(photo("rocket")))]:
        out[name] = (data, features(data))
    return out


@pytest.fixture
def engine(make_settings) -> Iterator[Engine]:
    eng = open_store(make_settings())
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return session_factory(engine)


def add(sessions: sessionmaker[Session], *urls: str, meta: dict | None = None) -> dict[str, int]:
    """Add pending images; their ids by URL."""
    with sessions.begin() as s:
        sid = repo.source_id(s, "/catalogue", "dir")
        repo.add_pending(s, [CatalogueItem(u, "/catalogue", meta or {}) for u in urls], sid)
        return {u: k.id for u, k in repo.known_images(s, list(urls)).items()}


def index(sessions: sessionmaker[Session], image_id: int, data: bytes,
          f: ImageFeatures) -> None:
    with sessions.begin() as s:
        repo.save_features(s, image_id, hashlib.sha256(data).hexdigest(), len(data), f)


def test_open_store_migrates_to_head(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()


def test_open_store_without_migrate_refuses_empty_store(make_settings) -> None:
    with pytest.raises(StoreError, match="db upgrade"):
        open_store(make_settings(), migrate=False)


def test_features_round_trip(sessions, feats) -> None:
    ids = add(sessions, "/c/camera.png", "/c/coffee.jpg")
    for url, name in [("/c/camera.png", "camera"), ("/c/coffee.jpg", "coffee")]:
        index(sessions, ids[url], *feats[name])
    with sessions() as s:
        got = repo.candidates(s, list(ids.values()))
    assert set(got) == set(ids.values())
    for url, name in [("/c/camera.png", "camera"), ("/c/coffee.jpg", "coffee")]:
        data, f = feats[name]
        c = got[ids[url]]
        assert c.url == url and c.sha256 == hashlib.sha256(data).hexdigest()
        # the thumbnail is stored as a JPEG (q50: SSIM with the original ~0.91), the
        # keypoints as positions in 1/64 pixel
        assert c.thumbnail.dtype == np.uint8 and c.thumbnail.shape == f.thumbnail.shape
        assert ssim(c.thumbnail, f.thumbnail) > 0.88
        np.testing.assert_allclose(c.orb.keypoints, f.orb.keypoints[:, :2], atol=1 / 128)
        np.testing.assert_array_equal(c.orb.descriptors, f.orb.descriptors)
        assert (c.width, c.height) == (f.width, f.height)
        assert c.work_scale == pytest.approx(f.work_scale)
    with sessions() as s:
        ids_arr, codes = repo.indexed_hashes(s)
    assert ids_arr.dtype == np.int64 and codes.shape == (2, 8) and codes.dtype == np.uint8
    by_id = dict(zip(ids_arr.tolist(), (c.tobytes() for c in codes), strict=True))
    assert by_id[ids["/c/camera.png"]] == feats["camera"][1].phash


def test_candidates_of_nothing_and_unknown(sessions) -> None:
    with sessions() as s:
        assert repo.candidates(s, []) == {}
        assert repo.candidates(s, [12345]) == {}


def test_codec_round_trips(feats) -> None:
    f = feats["rocket"][1]
    stored = encode_thumbnail(f.thumbnail)
    assert stored[:2] == b"\xff\xd8" and len(stored) < 0.6 * f.thumbnail.size  # a JPEG
    assert ssim(decode_thumbnail(stored), f.thumbnail) > 0.88  # q50
    kp, desc = encode_orb(f.orb)
    assert len(kp) == 4 * len(f.orb)  # two uint16 per keypoint
    back = decode_orb(kp, desc)
    np.testing.assert_allclose(back.keypoints, f.orb.keypoints[:, :2], atol=1 / 128)
    np.testing.assert_array_equal(back.descriptors, f.orb.descriptors)
    empty = decode_orb(b"", b"")
    assert len(empty) == 0
    with pytest.raises(ValueError):
        decode_orb(f.orb.keypoints.tobytes(), f.orb.descriptors[:-1].tobytes())
    with pytest.raises(ValueError):
        decode_thumbnail(b"ten bytes!")  # not a square number of pixels


def test_legacy_rows_are_read_and_compacted(feats) -> None:
    """Rows of row format 1 (a raw thumbnail, float32 N×5 keypoints) are read as they are
    and rewritten compactly by compact_row."""
    f = feats["coffee"][1]
    raw_thumb = f.thumbnail.tobytes()
    raw_kp = f.orb.keypoints.astype(np.float32).tobytes()
    desc = f.orb.descriptors.tobytes()
    np.testing.assert_array_equal(decode_thumbnail(raw_thumb), f.thumbnail)
    np.testing.assert_array_equal(decode_orb(raw_kp, desc).keypoints, f.orb.keypoints)
    new = compact_row(raw_thumb, raw_kp, desc)
    assert new is not None and len(new[0]) + len(new[1]) < 0.5 * (len(raw_thumb) + len(raw_kp))
    assert compact_row(new[0], new[1], desc) is None  # already compact


def test_an_old_store_is_converted_resumably(make_settings, feats) -> None:
    """A store of row format 1 is converted in batches by the next writer; a conversion
    stopped half way goes on from where it stopped."""
    from sqlalchemy import update

    from echoimage.store.db import compact_rows
    from echoimage.store.models import FeatureRow

    settings = make_settings()
    engine = open_store(settings)
    sessions = session_factory(engine)
    ids = add(sessions, *(f"/c/{i}.jpg" for i in range(5)))
    for image_id in ids.values():
        index(sessions, image_id, *feats["camera"])
    f = feats["camera"][1]
    with sessions.begin() as s:  # back to the old encoding, as an older EchoImage wrote it
        s.execute(update(FeatureRow).values(
            thumbnail=f.thumbnail.tobytes(), keypoints=f.orb.keypoints.tobytes()))
        repo.set_row_format(s, 1)
    with sessions.begin() as s:  # stopped after two rows
        first = repo.legacy_feature_ids(s, 0, 2)
        assert repo.compact_features(s, first) == 2
    assert compact_rows(engine, batch=2) == 3
    with sessions() as s:
        assert repo.row_format(s) == 2 and repo.legacy_feature_ids(s, 0, 10) == []
        got = repo.candidates(s, list(ids.values()))
    assert all(ssim(c.thumbnail, f.thumbnail) > 0.88 for c in got.values())
    assert compact_rows(engine) == 0
    engine.dispose()


def test_add_pending_is_idempotent_and_keeps_metadata(sessions) -> None:
    ids = add(sessions, "/c/a.jpg", "/c/b.jpg", "/c/a.jpg", meta={"title": "A"})
    assert len(ids) == 2
    again = add(sessions, "/c/a.jpg", "/c/c.jpg")
    assert again["/c/a.jpg"] == ids["/c/a.jpg"]
    with sessions() as s:
        assert repo.status_counts(s) == {Status.PENDING: 3}
        assert repo.image_info(s, ids["/c/a.jpg"])["metadata"] == {"title": "A"}
        assert repo.image_info(s, 999) is None


def test_status_counts(sessions, feats) -> None:
    ids = add(sessions, "/c/1.png", "/c/2.jpg", "/c/3.jpg", "/c/4.jpg")
    index(sessions, ids["/c/1.png"], *feats["camera"])
    index(sessions, ids["/c/2.jpg"], *feats["coffee"])
    with sessions.begin() as s:
        repo.save_failure(s, ids["/c/3.jpg"], Status.DECODE_ERROR, "corrupt or truncated image")
    with sessions() as s:
        assert repo.status_counts(s) == {Status.INDEXED: 2, Status.DECODE_ERROR: 1,
                                         Status.PENDING: 1}
        reasons = repo.failure_reasons(s)
    assert reasons == [("/c/3.jpg", Status.DECODE_ERROR, "corrupt or truncated image")]


def test_save_failure_drops_features(sessions, feats) -> None:
    ids = add(sessions, "/c/camera.png")
    image_id = ids["/c/camera.png"]
    index(sessions, image_id, *feats["camera"])
    with sessions.begin() as s:
        repo.save_failure(s, image_id, Status.NOT_AN_IMAGE, "not an image")
    with sessions() as s:
        assert repo.candidates(s, [image_id]) == {}
        n = s.scalar(select(func.count()).select_from(FeatureRow)
                     .where(FeatureRow.image_id == image_id))
        assert n == 0
        info = repo.image_info(s, image_id)
        assert info["status"] == Status.NOT_AN_IMAGE and info["reason"] == "not an image"
        assert info["indexed_at"] is None
        ids_arr, _ = repo.indexed_hashes(s)
        assert image_id not in ids_arr.tolist()
        assert repo.ids_by_sha256(s, hashlib.sha256(feats["camera"][0]).hexdigest()) == []


def test_save_failure_refuses_indexed_status(sessions) -> None:
    ids = add(sessions, "/c/x.jpg")
    with sessions.begin() as s, pytest.raises(ValueError):
        repo.save_failure(s, ids["/c/x.jpg"], Status.INDEXED, "no")


def test_reason_is_capped(sessions) -> None:
    ids = add(sessions, "/c/x.jpg")
    with sessions.begin() as s:
        repo.save_failure(s, ids["/c/x.jpg"], Status.DECODE_ERROR, "x" * 5000)
    with sessions() as s:
        assert len(repo.image_info(s, ids["/c/x.jpg"])["reason"]) <= 2000


def test_ids_by_sha256(sessions, feats) -> None:
    data, f = feats["coffee"]
    ids = add(sessions, "/c/coffee.jpg", "/c/coffee-copy.jpg", "/c/camera.png")
    index(sessions, ids["/c/coffee.jpg"], data, f)
    index(sessions, ids["/c/coffee-copy.jpg"], data, f)
    index(sessions, ids["/c/camera.png"], *feats["camera"])
    sha = hashlib.sha256(data).hexdigest()
    with sessions() as s:
        assert repo.ids_by_sha256(s, sha) == sorted([ids["/c/coffee.jpg"],
                                                      ids["/c/coffee-copy.jpg"]])
        assert repo.ids_by_sha256(s, "0" * 64) == []


def test_with_bytes_gives_the_first_entries_of_each_content(sessions, feats) -> None:
    """with_bytes: the indexed entries of each sha256, in id order, at most `most` of each
    (a placeholder kept under thousands of URLs does not fill an answer)."""
    data, f = feats["coffee"]
    urls = [f"/c/coffee-{n}.jpg" for n in range(4)]
    ids = add(sessions, *urls, "/c/camera.png", "/c/pending.jpg")
    for url in urls:
        index(sessions, ids[url], data, f)
    index(sessions, ids["/c/camera.png"], *feats["camera"])
    coffee, camera = (hashlib.sha256(d).hexdigest() for d in (data, feats["camera"][0]))
    with sessions() as s:
        both = repo.with_bytes(s, [coffee, camera, "0" * 64])
        assert both == {coffee: [(ids[u], u) for u in urls],
                        camera: [(ids["/c/camera.png"], "/c/camera.png")]}
        assert repo.with_bytes(s, [coffee], most=2) == {
            coffee: [(ids[u], u) for u in urls[:2]]}
        assert repo.with_bytes(s, []) == {}


def test_store_state_tracks_the_indexed_set(sessions, feats) -> None:
    with sessions() as s:
        empty = repo.store_state(s)
    assert (empty.count, empty.max_id, empty.seq) == (0, 0, 1) and len(empty.store_id) == 36
    ids = add(sessions, "/c/a.png", "/c/b.jpg", "/c/c.jpg")
    with sessions() as s:
        assert repo.store_state(s) == empty  # pending images are not part of it

    index(sessions, ids["/c/a.png"], *feats["camera"])
    with sessions() as s:
        one = repo.store_state(s)
    assert one.count == 1 and one.max_id == ids["/c/a.png"] and one.seq == empty.seq + 1

    index(sessions, ids["/c/c.jpg"], *feats["rocket"])
    with sessions() as s:
        two = repo.store_state(s)
    assert two.count == 2 and two.max_id == ids["/c/c.jpg"]

    index(sessions, ids["/c/a.png"], *feats["coffee"])  # re-indexed: same count and max id
    with sessions() as s:
        again = repo.store_state(s)
        changed = repo.changed_since(s, two.seq, 10)
    assert (again.count, again.max_id) == (two.count, two.max_id)
    assert again.seq == two.seq + 1 and again.store_id == two.store_id
    assert changed is not None and [(c.id, c.seq) for c in changed] == [(ids["/c/a.png"],
                                                                         again.seq)]

    with sessions.begin() as s:  # an indexed image fails on a later run
        repo.save_failure(s, ids["/c/c.jpg"], Status.GONE, "HTTP 404")
    with sessions() as s:
        after = repo.store_state(s)
        gone = repo.changed_since(s, again.seq, 10)
    assert after.count == 1 and after.seq == again.seq + 1
    assert gone is not None and [(c.id, c.indexed) for c in gone] == [(ids["/c/c.jpg"], False)]


def test_store_state_is_stable_without_changes(sessions, feats) -> None:
    ids = add(sessions, "/c/a.png")
    index(sessions, ids["/c/a.png"], *feats["camera"])
    with sessions() as s:
        first = repo.store_state(s)
    with sessions() as s:
        assert repo.store_state(s) == first


def test_runs_are_recorded(sessions) -> None:
    t0 = time.time()
    with sessions.begin() as s:
        run = repo.start_run(s, "build", ["/c"])
    time.sleep(0.2)  # the run's work
    with sessions.begin() as s:
        repo.finish_run(s, run, "ok", {"indexed": 3})
    elapsed = time.time() - t0
    with sessions() as s:
        runs = repo.recent_runs(s)
    assert runs[0]["id"] == run and runs[0]["status"] == "ok"
    # the duration is the run's: from its start to its end
    assert runs[0]["counts"] == {"indexed": 3} and 0.2 <= runs[0]["duration_s"] <= elapsed


def test_runs_found_running_say_why_they_were_interrupted(sessions) -> None:
    """A run whose process is gone, one still going in a live process and one of another
    machine: each is marked interrupted by the next run, with its own reason."""
    import socket
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    owners = {"gone": f"pid {dead.pid} on {host}", "alive": repo.run_owner(),
              "elsewhere": "pid 1 on another-machine"}
    ids = {}
    for name, owner in owners.items():  # as each process recorded itself (start_run)
        with sessions.begin() as s:
            run = Run(kind="build", started_at=repo.now(), status=RunStatus.RUNNING,
                      sources=[f"/{name}"], reason=owner)
            s.add(run)
            s.flush()
            ids[name] = run.id
    with sessions() as s:  # before another run starts, a gone process shows at once
        shown = {r["id"]: r for r in repo.recent_runs(s)}
    assert shown[ids["gone"]]["status"] == "interrupted"
    assert f"({owners['gone']}) is gone" in shown[ids["gone"]]["reason"]
    assert shown[ids["elsewhere"]]["status"] == "running"
    assert shown[ids["elsewhere"]]["process"] == owners["elsewhere"]
    with sessions.begin() as s:
        new = repo.start_run(s, "update", [])
    with sessions() as s:
        runs = {r["id"]: r for r in repo.recent_runs(s)}
    assert runs[new]["status"] == "running" and runs[new]["process"] == repo.run_owner()
    assert runs[new]["reason"] is None
    for name in owners:
        assert runs[ids[name]]["status"] == "interrupted" and runs[ids[name]]["process"] is None
    why = {name: runs[ids[name]]["reason"] for name in owners}
    assert why["gone"] == f"its process ({owners['gone']}) was gone when run {new} started: killed"
    assert why["alive"] == f"still running ({owners['alive']}) when run {new} started"
    assert why["elsewhere"].startswith(f"found running ({owners['elsewhere']}) when run {new}")
    # a run still going that ends later records its own end over that
    with sessions.begin() as s:
        repo.finish_run(s, ids["alive"], RunStatus.OK, {"indexed": 1})
    with sessions() as s:
        alive = {r["id"]: r for r in repo.recent_runs(s)}[ids["alive"]]
    assert alive["status"] == "ok" and alive["reason"] is None


def test_over_long_urls_and_validators_are_not_kept(sessions, feats) -> None:
    """A URL longer than `images.url` is skipped (PostgreSQL would refuse the whole batch),
    an HTTP validator longer than its column is not kept."""
    long_url = "https://example.com/" + "x" * repo.MAX_URL
    ids = add(sessions, "/c/ok.jpg", long_url)
    assert set(ids) == {"/c/ok.jpg"}
    data, f = feats["camera"]
    with sessions.begin() as s:
        repo.save_features(s, ids["/c/ok.jpg"], hashlib.sha256(data).hexdigest(), len(data), f,
                           etag='"' + "e" * 600 + '"', last_modified="Mon, 01 Jan 2024")
    with sessions() as s:
        known = repo.known_images(s)["/c/ok.jpg"]
    assert known.etag is None and known.last_modified == "Mon, 01 Jan 2024"


# --- PostgreSQL failures reach the user as one line ------------------------------------------

def _store_error(tmp_path: Path, url: str) -> str:
    """The StoreError that opening (and creating) a store at url raises."""
    with pytest.raises(StoreError) as info:
        open_store(Settings(data_dir=tmp_path / "data", database_url=url))
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_unreachable_postgresql_server_is_a_one_line_error(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://echo:secret@127.0.0.1:{free_port()}/echo"
    message = _store_error(tmp_path, url)
    assert message.startswith("store unreachable (postgresql+psycopg://echo:***@127.0.0.1")
    assert "secret" not in message and "refused" in message
    # and through the CLI: an error line and exit status 1, no traceback
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "d"), "index", "status"],
                                env={"ECHOIMAGE_DATABASE_URL": url})
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.startswith("Error: store unreachable")
    assert result.output.strip().count("\n") == 0


@pytest.mark.postgres
def test_missing_postgresql_database_is_a_one_line_error(tmp_path: Path, postgres) -> None:
    server = postgres.get()
    message = _store_error(tmp_path, server.url("no_such_database"))
    assert 'database "no_such_database" does not exist' in message
    assert "create that database" in message


@pytest.mark.postgres
def test_refused_postgresql_login_is_a_one_line_error(tmp_path: Path, postgres) -> None:
    server = postgres.get()
    message = _store_error(tmp_path, server.url("postgres", PASSWORD_ROLE, "wrong"))
    assert "password authentication failed" in message and "wrong" not in message
    assert "check the user and password" in message


@pytest.mark.postgres
def test_connections_the_server_closed_are_replaced(tmp_path: Path, postgres) -> None:
    """Pooled connections the server closed (a restart, a killed session) are replaced on
    their next use instead of failing it."""
    server = postgres.get()
    name = server.create_database()
    engine = open_store(Settings(data_dir=tmp_path / "data", database_url=server.url(name)))
    try:
        with session_factory(engine)() as s:
            before = repo.store_state(s)
        server.disconnect(name)
        with session_factory(engine)() as s:
            assert repo.store_state(s) == before
    finally:
        engine.dispose()
        server.drop_database(name)


def test_a_forked_child_opens_its_own_connections(engine: Engine) -> None:
    """A child forked while the parent holds pooled connections opens new ones (two
    processes on one socket would corrupt each other's conversations), and the parent's
    stay usable."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT count(*) FROM images").scalar()
        parent_conn = id(conn.connection.dbapi_connection)
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 when it used a connection of its own
        code = 3
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT count(*) FROM images").scalar()
                code = 0 if id(conn.connection.dbapi_connection) != parent_conn else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with engine.connect() as conn:
        assert id(conn.connection.dbapi_connection) == parent_conn
        assert conn.exec_driver_sql("SELECT count(*) FROM images").scalar() == 0


def test_colour_round_trip_and_rows_from_before_colour(make_settings) -> None:
    """The preview and signature are stored and counted; a store migrated from before
    schema 0006 keeps its rows, with no colour (read as none)."""
    from echoimage.store.db import downgrade, upgrade

    settings = make_settings()
    engine = open_store(settings)
    sessions = session_factory(engine)
    data = jpeg(photo("astronaut"))
    coloured = indexed_features(data, settings.colour_size)
    ids = add(sessions, "/c/a.jpg", "/c/b.jpg")
    index(sessions, ids["/c/a.jpg"], data, coloured)
    index(sessions, ids["/c/b.jpg"], data, features(data))  # no colour version
    with sessions() as s:
        sigs = repo.colour_signatures(s, list(ids.values()))
        picture, gray = repo.picture(s, ids["/c/a.jpg"]), repo.picture(s, ids["/c/b.jpg"])
        sizes = repo.storage_bytes(s)
    assert picture is not None and gray is not None and gray.preview is None
    preview = picture.preview
    assert sigs == {ids["/c/a.jpg"]: coloured.colour_signature}
    assert preview is not None and preview[:2] == b"\xff\xd8"
    assert sizes["colour_previews"] == len(preview)
    assert sizes["colour_signatures"] == len(coloured.colour_signature or b"")
    assert sizes["features_per_image"] * 2 >= sum(
        sizes[k] for k in ("thumbnails", "keypoints", "descriptors", "colour_previews",
                           "colour_signatures"))
    downgrade(engine, "0005")
    upgrade(engine)
    with sessions() as s:
        assert repo.colour_signatures(s, list(ids.values())) == {}
        kept = repo.picture(s, ids["/c/a.jpg"])
        assert kept is not None and kept.preview is None
        assert set(repo.candidates(s, list(ids.values()))) == set(ids.values())
        assert repo.storage_bytes(s)["colour_previews"] == 0
    engine.dispose()
