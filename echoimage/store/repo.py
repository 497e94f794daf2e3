"""Typed queries on the store. They return types.py objects or plain values, never ORM rows.

Concurrent writers (two builds, a build and an update, in separate processes) are kept from
duplicating rows and from losing changes in two ways. The unique constraints on
`images.url` and `sources.uri` are the last word, and rows are added with
``INSERT ... ON CONFLICT DO NOTHING``, so a URL two writers add at once is recorded once. And
every function here that writes begins by taking the store's write lock (`lock_writes`) for
the rest of the transaction, so writing transactions run one after the other, as SQLite
runs them anyway: a read-then-write sequence (a source looked up, then added; features
deleted, then inserted) is never interleaved with another writer's, no two writers can
deadlock on each other's rows, and change numbers are committed in their order.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import Insert, Table, bindparam, case, func, insert, select, update
from sqlalchemy.orm import Session

from echoimage.store.codec import (
    FeatureRecord,
    compact_row,
    decode_orb,
    decode_thumbnail,
    encode_features,
)
from echoimage.store.models import FeatureRow, ImageRow, Run, Source, StoreInfo
from echoimage.types import Candidate, CatalogueItem, ImageFeatures, Picture, RunStatus, Status

log = logging.getLogger(__name__)

#: the longest catalogue URL the store keeps (`images.url`; longer ones are skipped: every
#: database but SQLite refuses them)
MAX_URL = ImageRow.__table__.c.url.type.length
_MAX_ETAG = ImageRow.__table__.c.etag.type.length
_MAX_LAST_MODIFIED = ImageRow.__table__.c.last_modified.type.length


#: the largest value of an Integer column (PostgreSQL's are 32-bit)
INT32_MAX = 2**31 - 1


def now() -> datetime:
    """The current time in UTC."""
    return datetime.now(UTC)


def _validator(value: str | None, limit: int) -> str | None:
    """An HTTP validator as stored: one longer than its column is not kept (a cut one
    would never match again; the image is then fetched in full next time)."""
    return value if value is None or len(value) <= limit else None


@dataclass(frozen=True)
class KnownImage:
    """What the store knows of a catalogue URL before a run touches it."""

    id: int
    url: str
    status: str
    sha256: str | None
    etag: str | None
    last_modified: str | None
    source_id: int | None
    width: int | None = None
    height: int | None = None
    nbytes: int | None = None

    def pixels(self) -> int | None:
        """Its width x height, where known (indexed, or refused over the pixel cap)."""
        return self.width * self.height if self.width and self.height else None


@dataclass(frozen=True)
class StoreState:
    """Fingerprint of the indexed set; the index manifest must agree with it."""

    count: int
    max_id: int
    seq: int  # the last change number handed out
    store_id: str


#: key of the PostgreSQL advisory lock that serialises writing transactions (any number
#: unique to EchoImage; advisory locks are per database)
WRITE_LOCK_KEY = 0x6563686F  # "echo"


def lock_writes(session: Session) -> None:
    """Take the store's write lock until the end of the session's transaction (again in
    the same transaction: nothing more happens).

    PostgreSQL: a transaction-level advisory lock. SQLite: the database's own write lock,
    taken now (``BEGIN IMMEDIATE``, waiting up to the busy timeout) rather than at the
    first write, so what the transaction reads before it writes is still true when it
    writes.
    """
    conn = session.connection()
    name = conn.dialect.name
    if name == "postgresql":
        txn = session.get_transaction()
        if session.info.get("write_locked") is not txn:  # the transaction that holds it
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")
            session.info["write_locked"] = txn
    elif name == "sqlite":
        dbapi = conn.connection.dbapi_connection
        if dbapi is not None and not dbapi.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


def insert_ignoring_duplicates(session: Session, table: Table, key: str) -> Insert:
    """``INSERT ... ON CONFLICT (key) DO NOTHING`` in the session's dialect (a plain INSERT
    in others: the unique constraint still refuses a duplicate)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing(index_elements=[key])
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=[key])
    return insert(table)


def next_seq(session: Session, n: int = 1) -> int:
    """Reserve n consecutive change numbers; returns the first.

    The counter row is updated in the caller's transaction, which holds the write lock:
    concurrent writers commit in the order of their numbers, so a reader that has seen
    change N has seen every change before it.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    lock_writes(session)
    last = session.execute(
        update(StoreInfo).where(StoreInfo.id == 1).values(seq=StoreInfo.seq + n)
        .returning(StoreInfo.seq)).scalar_one()
    return int(last) - n + 1


#: the store's change number, asked before every query (a statement built once)
_SEQ = select(StoreInfo.seq).where(StoreInfo.id == 1)


def current_seq(session: Session) -> int:
    """The last change number handed out (0 for a store without any change)."""
    return int(session.scalar(_SEQ) or 0)


def source_id(session: Session, uri: str, kind: str, follow_pages: int | None = None) -> int:
    """Id of a catalogue source, recorded on first use; a source read again records its
    kind and follow_pages as read this time (a page URL once read as an image URL)."""
    lock_writes(session)
    ts = now()
    found = session.scalar(select(Source.id).where(Source.uri == uri))
    if found is None:  # (inserted only when missing: a conflict would use up an id)
        session.execute(insert_ignoring_duplicates(session, Source.__table__, "uri").values(
            uri=uri, kind=kind, added_at=ts, last_read_at=ts, follow_pages=follow_pages))
        found = session.scalar(select(Source.id).where(Source.uri == uri))
        assert found is not None
    else:
        session.execute(update(Source).where(Source.id == found).values(
            last_read_at=ts, kind=kind, follow_pages=follow_pages))
    return int(found)


@dataclass(frozen=True)
class RecordedSource:
    """A recorded source as an update reads it again."""

    uri: str
    kind: str
    follow_pages: int | None = None


def list_sources(session: Session) -> list[RecordedSource]:
    """Every recorded source, oldest first."""
    return [RecordedSource(r.uri, r.kind, r.follow_pages)
            for r in session.execute(select(Source).order_by(Source.id)).scalars()]


def images_of_source(session: Session, uri: str) -> dict[str, KnownImage]:
    """Known images first recorded from the source uri, by URL."""
    sid = session.scalar(select(Source.id).where(Source.uri == uri))
    if sid is None:
        return {}
    return {k.url: k for k in known_images(session).values() if k.source_id == sid}


def known_images(session: Session, urls: Sequence[str] | None = None) -> dict[str, KnownImage]:
    """Known images by URL (all of them, or those among urls)."""
    stmt = select(ImageRow.id, ImageRow.url, ImageRow.status, ImageRow.sha256, ImageRow.etag,
                  ImageRow.last_modified, ImageRow.source_id, ImageRow.width, ImageRow.height,
                  ImageRow.nbytes)
    out: dict[str, KnownImage] = {}
    if urls is None:
        for row in session.execute(stmt):
            out[row.url] = KnownImage(*row)
        return out
    urls = list(urls)
    for i in range(0, len(urls), 500):
        for row in session.execute(stmt.where(ImageRow.url.in_(urls[i : i + 500]))):
            out[row.url] = KnownImage(*row)
    return out


def stale_feature_ids(session: Session, params: str) -> set[int]:
    """Images whose stored features were extracted with other parameters than params (or
    before parameters were recorded). Read from the params index alone, never the rows."""
    stmt = select(FeatureRow.image_id).where(
        (FeatureRow.params.is_(None)) | (FeatureRow.params != params))
    return set(session.scalars(stmt))


def add_pending(session: Session, items: Iterable[CatalogueItem], source: int | None) -> int:
    """Insert catalogue items the store does not know yet, as pending (a URL another
    writer adds at the same time is recorded once). Returns how many were new."""
    items = list(items)
    if not items:
        return 0
    lock_writes(session)
    known = known_images(session, [it.url for it in items])
    ts = now()
    seen: set[str] = set()
    rows = []
    for it in items:
        if it.url in known or it.url in seen:
            continue
        seen.add(it.url)
        if len(it.url) > MAX_URL:
            log.warning("skipped a catalogue URL of %d characters (at most %d are kept): "
                        "%s…", len(it.url), MAX_URL, it.url[:80])
            continue
        rows.append({"url": it.url, "source_id": source, "status": Status.PENDING,
                     "meta": it.metadata or None, "attempts": 0, "created_at": ts,
                     "updated_at": ts})
    if not rows:
        return 0
    table = ImageRow.__table__
    stmt = insert_ignoring_duplicates(session, table, "url").returning(table.c.id)
    return len(session.execute(stmt, rows).all())


def save_features(session: Session, image_id: int, sha256: str, nbytes: int,
                  feats: ImageFeatures, etag: str | None = None,
                  last_modified: str | None = None, params: str | None = None) -> None:
    """Record one indexed image and (re)place its features."""
    save_feature_records(session, [encode_features(image_id, sha256, nbytes, feats, etag,
                                                   last_modified, params)])


def save_feature_records(session: Session, records: Sequence[FeatureRecord]) -> None:
    """Record many indexed images and (re)place their features, in bulk statements."""
    if not records:
        return
    lock_writes(session)
    ts = now()
    ids = [r.image_id for r in records]
    session.execute(FeatureRow.__table__.delete().where(FeatureRow.image_id.in_(ids)))
    session.execute(FeatureRow.__table__.insert(), [
        {"image_id": r.image_id, "phash": r.phash, "dhash": r.dhash, "thumbnail": r.thumbnail,
         "thumb_size": r.thumb_size, "n_keypoints": r.n_keypoints, "keypoints": r.keypoints,
         "descriptors": r.descriptors, "work_scale": r.work_scale, "params": r.params,
         "colour_preview": r.colour_preview, "colour_signature": r.colour_signature}
        for r in records
    ])
    table = ImageRow.__table__
    stmt = table.update().where(table.c.id == bindparam("b_id")).values(
        status=Status.INDEXED, reason=None, sha256=bindparam("b_sha"),
        width=bindparam("b_w"), height=bindparam("b_h"), format=bindparam("b_fmt"),
        nbytes=bindparam("b_n"), etag=bindparam("b_etag"), last_modified=bindparam("b_lm"),
        updated_at=ts, indexed_at=ts, gone_at=None, attempts=table.c.attempts + 1,
        seq=bindparam("b_seq"))
    first = next_seq(session, len(records))
    session.execute(stmt, [
        {"b_id": r.image_id, "b_sha": r.sha256, "b_w": r.width, "b_h": r.height,
         "b_fmt": r.format, "b_n": r.nbytes, "b_etag": _validator(r.etag, _MAX_ETAG),
         "b_lm": _validator(r.last_modified, _MAX_LAST_MODIFIED),
         "b_seq": first + n}
        for n, r in enumerate(records)
    ])


def mark_unchanged(session: Session, image_id: int, etag: str | None = None,
                   last_modified: str | None = None) -> None:
    """Note that an indexed image was checked and found unchanged (new validators kept).

    updated_at is left alone: it is the change feed serving engines follow."""
    lock_writes(session)
    values: dict[str, Any] = {}
    if etag is not None:
        values["etag"] = _validator(etag, _MAX_ETAG)
    if last_modified is not None:
        values["last_modified"] = _validator(last_modified, _MAX_LAST_MODIFIED)
    if values:
        session.execute(update(ImageRow).where(ImageRow.id == image_id).values(**values))


def note_attempt(session: Session, image_id: int, reason: str) -> None:
    """A transient failure on an indexed image: keep its entry, remember the reason
    (updated_at is left alone: the entry the index holds did not change)."""
    lock_writes(session)
    session.execute(update(ImageRow).where(ImageRow.id == image_id).values(
        reason=f"last check failed: {reason}"[:2000], attempts=ImageRow.attempts + 1))


def save_failure(session: Session, image_id: int, status: str, reason: str,
                 sha256: str | None = None, nbytes: int | None = None,
                 etag: str | None = None, last_modified: str | None = None,
                 size: tuple[int, int] | None = None) -> None:
    """Record why an image could not be indexed; its old features (if any) are dropped.
    The failure's own sha256, size and validators are kept as given (bytes refused:
    for `index update` to check them again conditionally), and none given are none:
    nothing of the bytes before stands for the image. size: the (width, height) of
    bytes refused over the pixel cap (`index update` fetches them again once the cap
    allows them); nbytes of a file refused over the byte cap: its size (at least)."""
    if status == Status.INDEXED:
        raise ValueError("a failure cannot have status 'indexed'")
    lock_writes(session)
    ts = now()
    session.execute(FeatureRow.__table__.delete().where(FeatureRow.image_id == image_id))
    values: dict[str, Any] = dict(status=status, reason=reason[:2000], updated_at=ts,
                                  indexed_at=None, attempts=ImageRow.attempts + 1,
                                  seq=next_seq(session))
    width, height = size if size is not None and sha256 is not None else (None, None)
    # a refused file's size or a crafted header's may not fit the 32-bit columns: kept
    # as what they are at least
    nbytes, width, height = (None if v is None else min(v, INT32_MAX)
                             for v in (nbytes, width, height))
    values.update(sha256=sha256, nbytes=nbytes, etag=_validator(etag, _MAX_ETAG),
                  last_modified=_validator(last_modified, _MAX_LAST_MODIFIED),
                  width=width, height=height)
    if status == Status.GONE:
        values["gone_at"] = ts
    session.execute(update(ImageRow).where(ImageRow.id == image_id).values(**values))


def store_state(session: Session) -> StoreState:
    """Count and max id of the indexed images, the last change number and the store id."""
    row = session.execute(
        select(func.count(ImageRow.id), func.max(ImageRow.id))
        .where(ImageRow.status == Status.INDEXED)
    ).one()
    info = session.execute(select(StoreInfo.seq, StoreInfo.store_id)
                           .where(StoreInfo.id == 1)).one()
    return StoreState(int(row[0] or 0), int(row[1] or 0), int(info[0]), str(info[1]))


@dataclass(frozen=True)
class ChangedImage:
    """An image row changed after some change number: its current status and pHash."""

    id: int
    indexed: bool
    phash: bytes | None
    seq: int


def changed_since(session: Session, seq: int, limit: int | None = None
                  ) -> list[ChangedImage] | None:
    """Images whose row changed after change number seq (light: no descriptors), or None
    if more than limit did."""
    stmt = (select(ImageRow.id, ImageRow.status, FeatureRow.phash, ImageRow.seq)
            .outerjoin(FeatureRow, FeatureRow.image_id == ImageRow.id)
            .where(ImageRow.seq > seq).order_by(ImageRow.id))
    rows = session.execute(stmt if limit is None else stmt.limit(limit + 1)).all()
    if limit is not None and len(rows) > limit:
        return None
    return [ChangedImage(r[0], r[1] == Status.INDEXED and r[2] is not None, r[2], r[3])
            for r in rows]


def descriptors_of(session: Session, ids: Sequence[int], per_image: int) -> dict[int, bytes]:
    """The first per_image stored ORB descriptors of the given images."""
    out: dict[int, bytes] = {}
    ids = [int(i) for i in ids]
    for i in range(0, len(ids), 500):
        for r in session.execute(
            select(FeatureRow.image_id, func.substr(FeatureRow.descriptors, 1, 32 * per_image))
            .where(FeatureRow.image_id.in_(ids[i:i + 500]))
        ):
            out[r[0]] = bytes(r[1] or b"")
    return out


def indexed_hashes(session: Session) -> tuple[np.ndarray, np.ndarray]:
    """Ids (int64) and pHashes (uint8 N×8) of every indexed image, by id."""
    rows = session.execute(
        select(FeatureRow.image_id, FeatureRow.phash)
        .join(ImageRow, ImageRow.id == FeatureRow.image_id)
        .where(ImageRow.status == Status.INDEXED)
        .order_by(FeatureRow.image_id)
    ).all()
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    codes = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.uint8).reshape(-1, 8)
    return ids, codes


def _stack_descriptors(rows: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    blobs = [bytes(r[1] or b"") for r in rows]
    counts = np.fromiter((len(b) // 32 for b in blobs), dtype=np.int64, count=len(rows))
    ids = np.repeat(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)), counts)
    descs = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(-1, 32)
    return ids, descs


def iter_local_descriptors(session: Session, per_image: int, batch: int = 20_000
                           ) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """The first per_image stored ORB descriptors of every indexed image, with their ids
    repeated per descriptor, (int64 N, uint8 N×32) in pieces of `batch` images by id (a
    million images' prefixes are ~5 GB: a builder adds them piece by piece).

    Each piece takes the next indexed ids from `images` (small rows), then reads that id
    range of `features` by its primary key: every large row is read once (a join ordered by
    id let SQLite walk all the remaining rows again for every piece)."""
    last = -1
    while True:
        ids = list(session.scalars(
            select(ImageRow.id).where(ImageRow.status == Status.INDEXED, ImageRow.id > last)
            .order_by(ImageRow.id).limit(batch)))
        if not ids:
            return
        wanted = set(ids)
        rows = [r for r in session.execute(
            select(FeatureRow.image_id,
                   func.substr(FeatureRow.descriptors, 1, 32 * per_image))
            .where(FeatureRow.image_id >= ids[0], FeatureRow.image_id <= ids[-1])
            .order_by(FeatureRow.image_id)) if r[0] in wanted]
        if rows:
            yield _stack_descriptors(rows)
        last = ids[-1]


def local_descriptor_count(session: Session, per_image: int) -> int:
    """How many descriptors `iter_local_descriptors` yields (reads every features row up
    to its keypoint count, past the thumbnail: for small stores)."""
    n = FeatureRow.n_keypoints
    kept = case((n < per_image, n), else_=per_image)
    return int(session.scalar(
        select(func.coalesce(func.sum(kept), 0))
        .join(ImageRow, ImageRow.id == FeatureRow.image_id)
        .where(ImageRow.status == Status.INDEXED)) or 0)


# the statements every query runs, built once: building a SELECT costs more than SQLite
# takes to answer one (~0.3 ms of the ~0.5); ":ids" is a list of ids (an expanding IN)
_IDS = bindparam("ids", expanding=True)
_CANDIDATES = (
    select(ImageRow.id, ImageRow.url, ImageRow.sha256, ImageRow.width, ImageRow.height,
           FeatureRow.phash, FeatureRow.thumbnail, FeatureRow.keypoints, FeatureRow.descriptors,
           FeatureRow.work_scale)
    .join(FeatureRow, FeatureRow.image_id == ImageRow.id)
    .where(ImageRow.id.in_(_IDS), ImageRow.status == Status.INDEXED))
_METADATA = select(ImageRow.id, ImageRow.meta).where(ImageRow.id.in_(_IDS))
_SIGNATURES = (select(FeatureRow.image_id, FeatureRow.colour_signature)
               .where(FeatureRow.image_id.in_(_IDS), FeatureRow.colour_signature.is_not(None)))
#: the most entries `with_bytes` gives for one sha256 (a placeholder image a site uses for
#: thousands of products would fill every answer that shows it)
SAME_BYTES_MAX = 20
_SAME_BYTES_RANKED = (
    select(ImageRow.sha256, ImageRow.id, ImageRow.url,
           func.row_number().over(partition_by=ImageRow.sha256, order_by=ImageRow.id)
           .label("n"))
    .where(ImageRow.sha256.in_(bindparam("shas", expanding=True)),
           ImageRow.status == Status.INDEXED)
    .subquery())
_SAME_BYTES = (select(_SAME_BYTES_RANKED.c.sha256, _SAME_BYTES_RANKED.c.id,
                      _SAME_BYTES_RANKED.c.url)
               .where(_SAME_BYTES_RANKED.c.n <= bindparam("most"))
               .order_by(_SAME_BYTES_RANKED.c.id))
_BY_SHA256 = (select(ImageRow.id)
              .where(ImageRow.sha256 == bindparam("sha256"), ImageRow.status == Status.INDEXED)
              .order_by(ImageRow.id))


def candidates(session: Session, ids: Sequence[int]) -> dict[int, Candidate]:
    """Stored features of the given indexed images, by id."""
    if not len(ids):
        return {}
    rows = session.execute(_CANDIDATES, {"ids": [int(i) for i in ids]}).all()
    return {
        r.id: Candidate(id=r.id, url=r.url, sha256=r.sha256 or "", phash=r.phash,
                        thumbnail=decode_thumbnail(r.thumbnail),
                        orb=decode_orb(r.keypoints, r.descriptors), width=r.width or 0,
                        height=r.height or 0, work_scale=r.work_scale)
        for r in rows
    }


def metadata_of(session: Session, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """The catalogue entries' extra keys (images.json), by id (only images that have some)."""
    if not len(ids):
        return {}
    rows = session.execute(_METADATA, {"ids": [int(i) for i in ids]})
    return {r.id: r.meta for r in rows if r.meta}


def colour_signatures(session: Session, ids: Sequence[int]) -> dict[int, bytes]:
    """Colour signatures of the given images, by id (images without one are left out: rows
    extracted before colour was kept)."""
    if not len(ids):
        return {}
    rows = session.execute(_SIGNATURES, {"ids": [int(i) for i in ids]})
    return {int(r[0]): bytes(r[1]) for r in rows}


def with_bytes(session: Session, shas: Sequence[str], most: int = SAME_BYTES_MAX
               ) -> dict[str, list[tuple[int, str]]]:
    """The indexed images whose bytes have each sha256: (id, url), the first `most` in id
    order, by sha256."""
    out: dict[str, list[tuple[int, str]]] = {}
    if shas:
        for sha, i, url in session.execute(_SAME_BYTES, {"shas": list(shas), "most": most}):
            out.setdefault(sha, []).append((int(i), url))
    return out


def ids_by_sha256(session: Session, sha256: str) -> list[int]:
    """Indexed images whose source bytes have this sha256."""
    return list(session.scalars(_BY_SHA256, {"sha256": sha256}))


def status_counts(session: Session) -> dict[str, int]:
    """Number of images in each status."""
    rows = session.execute(select(ImageRow.status, func.count()).group_by(ImageRow.status))
    return {status: int(n) for status, n in rows}


def failure_reasons(session: Session, limit: int = 20) -> list[tuple[str, str, str]]:
    """(url, status, reason) of the most recent failures."""
    rows = session.execute(
        select(ImageRow.url, ImageRow.status, ImageRow.reason)
        .where(ImageRow.status.not_in([Status.INDEXED, Status.PENDING]))
        .order_by(ImageRow.updated_at.desc()).limit(limit)
    )
    return [(r[0], r[1], r[2] or "") for r in rows]


def image_info(session: Session, image_id: int) -> dict[str, Any] | None:
    """Metadata, provenance and status of one image."""
    row = session.get(ImageRow, image_id)
    if row is None:
        return None
    src = session.get(Source, row.source_id) if row.source_id else None
    return {
        "id": row.id, "url": row.url, "status": row.status, "reason": row.reason,
        "sha256": row.sha256, "width": row.width, "height": row.height, "format": row.format,
        "bytes": row.nbytes, "metadata": row.meta or {},
        "source": src.uri if src else None,
        "created_at": row.created_at.isoformat() if row.created_at else None,
        "indexed_at": row.indexed_at.isoformat() if row.indexed_at else None,
        "gone_at": row.gone_at.isoformat() if row.gone_at else None,
    }


def picture(session: Session, image_id: int) -> Picture | None:
    """The stored thumbnail, size, keypoint scale and colour preview of an image that has
    features (an indexed one), or None."""
    row = session.execute(
        select(FeatureRow.thumbnail, FeatureRow.work_scale, FeatureRow.colour_preview,
               ImageRow.width, ImageRow.height)
        .join(ImageRow, ImageRow.id == FeatureRow.image_id)
        .where(FeatureRow.image_id == image_id)).first()
    if row is None:
        return None
    return Picture(image_id, decode_thumbnail(row.thumbnail), row.width or 0,
                   row.height or 0, row.work_scale,
                   bytes(row.colour_preview) if row.colour_preview is not None else None)


def run_owner() -> str:
    """This process as a running run records it in runs.reason."""
    return f"pid {os.getpid()} on {socket.gethostname()}"


_OWNER = re.compile(r"pid (\d+) on (\S+)")


def owner_gone(owner: str | None) -> bool | None:
    """Whether the process a running run recorded (run_owner) has exited: None when that
    cannot be told from here (another machine, or nothing recorded)."""
    m = _OWNER.fullmatch(owner or "")
    if m is None or m[2] != socket.gethostname():
        return None
    try:
        os.kill(int(m[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def start_run(session: Session, kind: str, sources: list[str],
              started_at: datetime | None = None) -> int:
    """Record the start of an indexing run (at started_at when it began before it could be
    recorded, now otherwise). Runs still 'running' are marked 'interrupted' with the reason:
    their process is gone (killed, the machine stopped), or it was still going (it then
    records 'ok' or 'failed' over that when it ends; `scripts/reindex-cron.sh` never
    overlaps its own runs)."""
    run = Run(kind=kind, started_at=started_at or now(), status=RunStatus.RUNNING,
              sources=sources, reason=run_owner())
    session.add(run)
    session.flush()
    for other in session.scalars(select(Run).where(Run.status == RunStatus.RUNNING,
                                                   Run.id != run.id)):
        owner = other.reason or "its process was not recorded"
        gone = owner_gone(other.reason)
        if gone:
            why = f"its process ({owner}) was gone when run {run.id} started: killed"
        elif gone is None:
            why = (f"found running ({owner}) when run {run.id} started: killed, or still "
                   "going elsewhere")
        else:
            why = f"still running ({owner}) when run {run.id} started"
        other.status, other.reason = RunStatus.INTERRUPTED, why
    return run.id


def finish_run(session: Session, run_id: int, status: RunStatus, counts: dict[str, int],
               reason: str | None = None) -> None:
    """Record the end of an indexing run with its counts per state and, when it ended
    badly or left a source unread, why."""
    session.execute(update(Run).where(Run.id == run_id).values(
        finished_at=now(), status=status, counts=counts, reason=reason))


def recent_runs(session: Session, limit: int = 5) -> list[dict[str, Any]]:
    """The latest runs, newest first, with why each that ended badly did (`reason`) and
    the process doing each that is running (`process`). A run still recorded as running
    whose process is gone is shown as interrupted, with that reason."""
    out = []
    for r in session.scalars(select(Run).order_by(Run.id.desc()).limit(limit)):
        dur = (r.finished_at - r.started_at).total_seconds() if r.finished_at else None
        status, reason, process = r.status, r.reason, None
        if status == RunStatus.RUNNING:
            process, reason = r.reason, None
            if owner_gone(process):
                status, process = RunStatus.INTERRUPTED, None
                reason = (f"its process ({r.reason}) is gone: it was killed before it could "
                          "record its end")
        out.append({"id": r.id, "kind": r.kind, "status": status,
                    "started_at": r.started_at.isoformat(), "duration_s": dur,
                    "counts": r.counts or {}, "sources": r.sources or [],
                    "reason": reason, "process": process})
    return out


def storage_bytes(session: Session) -> dict[str, int]:
    """Bytes of feature data in the store, by column (colour: previews and signatures)."""
    row = session.execute(select(
        func.coalesce(func.sum(func.length(FeatureRow.thumbnail)), 0),
        func.coalesce(func.sum(func.length(FeatureRow.keypoints)), 0),
        func.coalesce(func.sum(func.length(FeatureRow.descriptors)), 0),
        func.count(FeatureRow.image_id),
        func.coalesce(func.sum(func.length(FeatureRow.colour_preview)), 0),
        func.coalesce(func.sum(func.length(FeatureRow.colour_signature)), 0),
    )).one()
    images = int(row[3])
    features = sum(int(row[i]) for i in (0, 1, 2, 4, 5)) + 16 * images
    return {"thumbnails": int(row[0]), "keypoints": int(row[1]), "descriptors": int(row[2]),
            "colour_previews": int(row[4]), "colour_signatures": int(row[5]),
            "hashes": 16 * images, "images": images,
            "features_per_image": round(features / images) if images else 0}


@dataclass(frozen=True)
class IndexedRow:
    """What verification compares with the index: an indexed image's pHash, the number of
    its keypoints and the change number of its row."""

    id: int
    phash: bytes | None  # None: an indexed image without features (a broken row)
    n_keypoints: int
    seq: int


def indexed_rows(session: Session) -> list[IndexedRow]:
    """Every indexed image, with or without a features row, by id."""
    rows = session.execute(
        select(ImageRow.id, FeatureRow.phash, FeatureRow.n_keypoints, ImageRow.seq)
        .outerjoin(FeatureRow, FeatureRow.image_id == ImageRow.id)
        .where(ImageRow.status == Status.INDEXED).order_by(ImageRow.id)
    ).all()
    return [IndexedRow(r[0], r[1], int(r[2] or 0), int(r[3])) for r in rows]


def orphan_feature_ids(session: Session) -> list[int]:
    """Images that are not indexed but still have a features row."""
    return list(session.scalars(
        select(FeatureRow.image_id).join(ImageRow, ImageRow.id == FeatureRow.image_id)
        .where(ImageRow.status != Status.INDEXED).order_by(FeatureRow.image_id)))


def requeue(session: Session, ids: Sequence[int], reason: str) -> None:
    """Send indexed images back to pending (fetched and indexed again by the next build or
    update), dropping whatever features they have."""
    ids = [int(i) for i in ids]
    if not ids:
        return
    lock_writes(session)
    first = next_seq(session, len(ids))
    session.execute(FeatureRow.__table__.delete().where(FeatureRow.image_id.in_(ids)))
    for n, image_id in enumerate(ids):
        session.execute(update(ImageRow).where(ImageRow.id == image_id).values(
            status=Status.PENDING, reason=reason, indexed_at=None, updated_at=now(),
            seq=first + n))


def drop_features(session: Session, ids: Sequence[int]) -> None:
    """Delete the features rows of these images."""
    ids = [int(i) for i in ids]
    if ids:
        lock_writes(session)
        session.execute(FeatureRow.__table__.delete().where(FeatureRow.image_id.in_(ids)))


@dataclass(frozen=True)
class SourceInfo:
    """A recorded catalogue source and its images by status."""

    id: int
    uri: str
    kind: str
    added_at: str
    last_read_at: str | None
    counts: dict[str, int]
    follow_pages: int | None = None  # a web page source: the same-site links it follows


def source_infos(session: Session) -> list[SourceInfo]:
    """Every recorded source with the counts of its images by status, oldest first."""
    counts: dict[int | None, dict[str, int]] = {}
    for sid, status, n in session.execute(
            select(ImageRow.source_id, ImageRow.status, func.count())
            .group_by(ImageRow.source_id, ImageRow.status)):
        counts.setdefault(sid, {})[status] = int(n)
    out = []
    for src in session.scalars(select(Source).order_by(Source.id)):
        out.append(SourceInfo(src.id, src.uri, src.kind, src.added_at.isoformat(),
                              src.last_read_at.isoformat() if src.last_read_at else None,
                              counts.get(src.id, {}), src.follow_pages))
    return out


def find_source(session: Session, ref: str) -> Source | None:
    """A source by its URI, its number, or (a local path) its resolved path."""
    found = session.scalar(select(Source).where(Source.uri == ref))
    if found is None and ref.isdigit():
        found = session.get(Source, int(ref))
    return found


def images_by_ref(session: Session, refs: Sequence[str]) -> tuple[dict[str, int], list[str]]:
    """Image ids of refs (an id, or a URL as stored); (ref → id, refs not found)."""
    found: dict[str, int] = {}
    missing = []
    for ref in refs:
        row = session.scalar(select(ImageRow.id).where(ImageRow.url == ref))
        if row is None and ref.isdigit() and int(ref) < 2 ** 63:
            row = session.scalar(select(ImageRow.id).where(ImageRow.id == int(ref)))
        if row is None:
            missing.append(ref)
        else:
            found[ref] = int(row)
    return found, missing


def remove_images(session: Session, ids: Sequence[int]) -> list[tuple[int, str]]:
    """Take images out of the catalogue: status removed, features dropped, one change
    number each (the index drops them). Returns (id, url) of those not removed before."""
    lock_writes(session)
    rows = session.execute(select(ImageRow.id, ImageRow.url).where(
        ImageRow.id.in_([int(i) for i in ids]), ImageRow.status != Status.REMOVED)
        .order_by(ImageRow.id)).all()
    if not rows:
        return []
    first = next_seq(session, len(rows))
    gone = [int(r[0]) for r in rows]
    session.execute(FeatureRow.__table__.delete().where(FeatureRow.image_id.in_(gone)))
    ts = now()
    for n, image_id in enumerate(gone):
        session.execute(update(ImageRow).where(ImageRow.id == image_id).values(
            status=Status.REMOVED, reason="removed from the catalogue", indexed_at=None,
            updated_at=ts, gone_at=ts, seq=first + n))
    return [(int(r[0]), r[1]) for r in rows]


def image_ids_of_source(session: Session, source_id: int) -> list[int]:
    """Every image first recorded from a source."""
    return list(session.scalars(select(ImageRow.id).where(ImageRow.source_id == source_id)))


def forget_source(session: Session, source_id: int) -> None:
    """Delete a source's record (its images keep their rows, without a source)."""
    lock_writes(session)
    session.execute(update(ImageRow).where(ImageRow.source_id == source_id)
                    .values(source_id=None))
    session.execute(Source.__table__.delete().where(Source.id == source_id))


def row_format(session: Session) -> int:
    """How the store's feature rows are encoded (see store_info.row_format)."""
    return int(session.scalar(select(StoreInfo.row_format).where(StoreInfo.id == 1)) or 1)


def legacy_feature_ids(session: Session, after: int, limit: int) -> list[int]:
    """Ids (above after) of feature rows still in row format 1: a raw thumbnail or float32
    keypoints, told by their lengths alone (read from the row headers, not the blobs)."""
    return list(session.scalars(
        select(FeatureRow.image_id).where(
            FeatureRow.image_id > after,
            (func.length(FeatureRow.thumbnail) == FeatureRow.thumb_size * FeatureRow.thumb_size)
            | (func.length(FeatureRow.keypoints) == 20 * FeatureRow.n_keypoints))
        .order_by(FeatureRow.image_id).limit(limit)))


def compact_features(session: Session, ids: Sequence[int]) -> int:
    """Rewrite these feature rows the row-format-2 way (an unchanged image: no change
    number). Returns how many were rewritten."""
    lock_writes(session)
    done = 0
    for r in session.execute(select(FeatureRow.image_id, FeatureRow.thumbnail,
                                    FeatureRow.keypoints, FeatureRow.descriptors)
                             .where(FeatureRow.image_id.in_([int(i) for i in ids]))):
        new = compact_row(r[1], r[2], r[3])
        if new is not None:
            session.execute(update(FeatureRow).where(FeatureRow.image_id == r[0])
                            .values(thumbnail=new[0], keypoints=new[1]))
            done += 1
    return done


def set_row_format(session: Session, value: int) -> None:
    """Record how the store's feature rows are encoded."""
    lock_writes(session)
    session.execute(update(StoreInfo).where(StoreInfo.id == 1).values(row_format=value))
