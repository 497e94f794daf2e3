"""Typed queries on the scan tables: the pages and images scans read, the copies found in
them (scan_matches), where they are shown (findings), watches and the scans themselves.

Like `echoimage.store.repo`, functions return plain values and dataclasses, never ORM rows,
and every function that writes takes the store's write lock first (`repo.lock_writes`), so
scans beside builds, updates and other scans never interleave their read-then-write steps.
Findings are unique per (page, image, catalogue image): a re-run refreshes them, it never
adds a second one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session

from echoimage.store import repo
from echoimage.store.models import (
    Finding,
    ImageRow,
    ScanImage,
    ScanMatch,
    ScanPage,
    ScanRun,
    Watch,
    WatchPage,
)
from echoimage.types import RunStatus, ScanStatus

_MAX_URL = ScanImage.__table__.c.url.type.length
_MAX_ETAG = ScanImage.__table__.c.etag.type.length
_MAX_LAST_MODIFIED = ScanImage.__table__.c.last_modified.type.length
_MAX_REASON = 500


def _clip(value: str | None, limit: int) -> str | None:
    """A validator as stored: one longer than its column is not kept (see repo)."""
    return value if value is None or len(value) <= limit else None


def _reason(value: str | None) -> str | None:
    return value if value is None or len(value) <= _MAX_REASON else value[:_MAX_REASON - 1] + "…"


# --- pages ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class KnownPage:
    """What the store knows of a page (or a list) before a scan reads it again."""

    id: int
    url: str
    status: str
    etag: str | None
    last_modified: str | None
    sha256: str | None
    images: list[dict[str, Any]]
    links: list[str]


@dataclass(frozen=True)
class PageRecord:
    """A page as a scan read it: its status, validators and what it shows (images: the
    entries with at least a "url"; links: same-site pages). images is None when it was not
    read (a failure): what it showed before is kept."""

    url: str
    kind: str
    status: ScanStatus
    reason: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    sha256: str | None = None
    images: list[dict[str, Any]] | None = None
    links: list[str] | None = None


def known_page(session: Session, url: str) -> KnownPage | None:
    """The stored state of a page, or None for a page never read."""
    row = session.scalar(select(ScanPage).where(ScanPage.url == url))
    if row is None:
        return None
    return KnownPage(row.id, row.url, row.status, row.etag, row.last_modified, row.sha256,
                     list(row.images or []), list(row.links or []))


def save_page(session: Session, page: PageRecord, scan_id: int, watch_id: int | None,
              when: datetime) -> tuple[int, list[int]]:
    """Record a page as read: its state, and (when read) the findings of images it no
    longer shows marked gone; a gone page's findings all gone. Returns (page id, findings
    made gone)."""
    repo.lock_writes(session)
    row = session.scalar(select(ScanPage).where(ScanPage.url == page.url))
    old_urls: set[str] = set()
    if row is None:
        row = ScanPage(url=page.url, kind=page.kind, status=page.status, first_seen=when)
        session.add(row)
    else:
        old_urls = {e["url"] for e in row.images or []}
    row.kind, row.status, row.reason = page.kind, page.status, _reason(page.reason)
    gone: list[int] = []
    if page.images is not None:  # read (or unchanged)
        row.images, row.last_seen, row.gone_at = page.images, when, None
        if page.links is not None:
            row.links = page.links
        row.etag = _clip(page.etag, _MAX_ETAG)
        row.last_modified = _clip(page.last_modified, _MAX_LAST_MODIFIED)
        if page.sha256 is not None:
            row.sha256 = page.sha256
    elif page.status == ScanStatus.GONE and row.gone_at is None:
        row.gone_at = when
    session.flush()
    if watch_id is not None:
        _link_watch(session, watch_id, row.id)
    if page.status == ScanStatus.GONE:
        gone = _mark_gone(session, Finding.page_id == row.id, when,
                          f"page gone ({page.reason or 'gone'})")
    elif page.images is not None:
        dropped = old_urls - {e["url"] for e in page.images}
        if dropped:
            ids = select(ScanImage.id).where(ScanImage.url.in_(sorted(dropped)))
            gone = _mark_gone(session, (Finding.page_id == row.id)
                              & Finding.image_id.in_(ids), when,
                              "the image is no longer on the page")
    return row.id, gone


def _link_watch(session: Session, watch_id: int, page_id: int) -> None:
    """Remember that the watch's scans read the page."""
    if session.get(WatchPage, (watch_id, page_id)) is None:
        session.add(WatchPage(watch_id=watch_id, page_id=page_id))
        session.flush()


def _mark_gone(session: Session, where: Any, when: datetime, reason: str) -> list[int]:
    """Mark the findings that are still there among where gone; returns their ids."""
    ids = list(session.scalars(select(Finding.id).where(where, Finding.gone_at.is_(None))))
    if ids:
        session.execute(update(Finding).where(Finding.id.in_(ids))
                        .values(gone_at=when, gone_reason=reason))
    return ids


# --- images --------------------------------------------------------------------------------

@dataclass(frozen=True)
class KnownImage:
    """What the store knows of a scanned image before a scan looks at it again."""

    id: int
    url: str
    status: str
    etag: str | None
    last_modified: str | None
    sha256: str | None
    queried_seq: int | None


def known_images(session: Session, urls: Sequence[str]) -> dict[str, KnownImage]:
    """The stored state of the scanned images among urls."""
    out: dict[str, KnownImage] = {}
    for lo in range(0, len(urls), 500):
        for r in session.execute(select(
                ScanImage.id, ScanImage.url, ScanImage.status, ScanImage.etag,
                ScanImage.last_modified, ScanImage.sha256, ScanImage.queried_seq)
                .where(ScanImage.url.in_(urls[lo:lo + 500]))):
            out[r.url] = KnownImage(*r)
    return out


def copies_by_sha256(session: Session, sha256: str, seq: int) -> list[CopyRecord] | None:
    """The copies found in another scanned image with these bytes, compared at change seq
    (None when there is none: these bytes must be compared)."""
    image_id = session.scalar(select(ScanImage.id).where(
        ScanImage.sha256 == sha256, ScanImage.queried_seq == seq).limit(1))
    if image_id is None:
        return None
    rows = session.execute(select(ScanMatch).where(ScanMatch.image_id == image_id)).scalars()
    return [CopyRecord(r.catalogue_id, r.verdict, r.score, dict(r.match), r.pairs)
            for r in rows]


@dataclass(frozen=True)
class CopyRecord:
    """A catalogue image a scanned image is a copy of: its verdict, score, the match as
    `query --json` gives it, and the keypoint pairs (float32 N×4 bytes) behind it."""

    catalogue_id: int
    verdict: str
    score: float
    match: dict[str, Any]
    pairs: bytes | None = None


@dataclass
class ImageRecord:
    """What a scan learnt of an image. copies is None when it was not compared this time
    (unchanged, or not read); picture is kept only with copies."""

    url: str
    status: ScanStatus
    reason: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    queried_seq: int | None = None
    copies: list[CopyRecord] | None = None
    picture: bytes | None = None
    picture_scale: float | None = None


def save_images(session: Session, records: Sequence[ImageRecord], when: datetime
                ) -> tuple[dict[str, int], list[int]]:
    """Record a batch of images as a scan found them: their state, their copies (replaced
    when compared again; findings of copies no longer found are marked gone) and, for an
    image gone (404/410), its findings gone. Returns (image id by url, findings made
    gone)."""
    repo.lock_writes(session)
    urls = [r.url[:_MAX_URL] for r in records]
    rows = {row.url: row for row in session.scalars(
        select(ScanImage).where(ScanImage.url.in_(urls)))}
    for r, url in zip(records, urls, strict=True):
        if url not in rows:
            rows[url] = ScanImage(url=url, status=r.status, first_seen=when)
            session.add(rows[url])
    session.flush()
    gone: list[int] = []
    for r, url in zip(records, urls, strict=True):
        row = rows[url]
        row.status, row.reason = r.status, _reason(r.reason)
        if r.status in (ScanStatus.OK, ScanStatus.UNCHANGED):
            row.last_seen, row.gone_at = when, None
            if r.etag is not None or r.last_modified is not None or r.status == ScanStatus.OK:
                row.etag = _clip(r.etag, _MAX_ETAG)
                row.last_modified = _clip(r.last_modified, _MAX_LAST_MODIFIED)
        elif r.status == ScanStatus.GONE:
            if row.gone_at is None:
                row.gone_at = when
            gone += _mark_gone(session, Finding.image_id == row.id, when,
                               f"image gone ({r.reason or 'gone'})")
        if r.sha256 is not None:
            row.sha256 = r.sha256
        if r.width is not None:
            row.width, row.height = r.width, r.height
        if r.copies is not None:
            row.queried_seq = r.queried_seq
            row.picture = r.picture if r.copies else None
            row.picture_scale = r.picture_scale if r.copies else None
            gone += _replace_copies(session, row.id, r.copies, when)
    return {url: rows[url].id for url in urls}, gone


def _replace_copies(session: Session, image_id: int, copies: Sequence[CopyRecord],
                    when: datetime) -> list[int]:
    """Replace an image's copies; its findings of catalogue images it no longer copies are
    marked gone (returned)."""
    session.execute(delete(ScanMatch).where(ScanMatch.image_id == image_id))
    for c in copies:
        session.add(ScanMatch(image_id=image_id, catalogue_id=c.catalogue_id,
                              verdict=c.verdict, score=c.score, match=c.match, pairs=c.pairs))
    keep = [c.catalogue_id for c in copies]
    session.flush()
    return _mark_gone(session, (Finding.image_id == image_id)
                      & Finding.catalogue_id.not_in(keep), when,
                      "the image changed and is no longer a copy")


def link_findings(session: Session, placements: Iterable[tuple[int, int]], scan_id: int,
                  when: datetime) -> list[int]:
    """The findings of images shown on pages ((page id, image id) pairs): one per copy
    the image holds, made when new, else marked seen now (and no longer gone). Returns the
    ids of the findings seen, new or not."""
    repo.lock_writes(session)
    pairs = sorted(set(placements))
    if not pairs:
        return []
    image_ids = sorted({i for _, i in pairs})
    copies: dict[int, list[int]] = {}
    for i, c in session.execute(select(ScanMatch.image_id, ScanMatch.catalogue_id)
                                .where(ScanMatch.image_id.in_(image_ids))):
        copies.setdefault(i, []).append(c)
    wanted = [(p, i, c) for p, i in pairs for c in copies.get(i, [])]
    if not wanted:
        return []
    have = {(r.page_id, r.image_id, r.catalogue_id): r.id for r in session.execute(
        select(Finding.id, Finding.page_id, Finding.image_id, Finding.catalogue_id)
        .where(Finding.image_id.in_(sorted({i for _, i, _ in wanted}))))}
    seen = [have[w] for w in wanted if w in have]
    if seen:
        session.execute(update(Finding).where(Finding.id.in_(seen)).values(
            last_seen=when, last_scan=scan_id, gone_at=None, gone_reason=None))
    for p, i, c in wanted:
        if (p, i, c) not in have:
            row = Finding(page_id=p, image_id=i, catalogue_id=c, first_seen=when,
                          last_seen=when, first_scan=scan_id, last_scan=scan_id)
            session.add(row)
            session.flush()
            seen.append(row.id)
    return seen


def mark_reported(session: Session, ids: Sequence[int], when: datetime) -> None:
    """Findings a scan has reported (printed, and delivered to its webhook)."""
    repo.lock_writes(session)
    for lo in range(0, len(ids), 500):
        session.execute(update(Finding).where(Finding.id.in_(ids[lo:lo + 500]),
                                              Finding.reported_at.is_(None))
                        .values(reported_at=when))


# --- reading findings ----------------------------------------------------------------------

@dataclass(frozen=True)
class FindingInfo:
    """A copy of a catalogue image found on a page: where (page, image URL), what (the
    catalogue image with its metadata, verdict, score, region and transform) and since when.
    new: no scan had reported it before."""

    id: int
    page: str
    image: str
    catalogue_id: int
    catalogue_url: str
    metadata: dict[str, Any]
    verdict: str
    score: float
    match: dict[str, Any]
    first_seen: datetime
    last_seen: datetime
    gone_at: datetime | None = None
    gone_reason: str | None = None
    reported_at: datetime | None = None
    new: bool = False
    watches: list[str] = field(default_factory=list)

    @property
    def region(self) -> list[list[float]] | None:
        """The found image's outline in the catalogue image's pixels."""
        return self.match.get("region")

    @property
    def transform(self) -> dict[str, Any] | None:
        """Scale, rotation, mirror and covered fraction of the catalogue image."""
        return self.match.get("transform")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (`scan --json`, `GET /api/findings`, the webhook's body)."""
        return {
            "id": self.id, "new": self.new, "page": self.page, "image": self.image,
            "catalogue": {"id": self.catalogue_id, "url": self.catalogue_url,
                          "metadata": self.metadata},
            "verdict": self.verdict, "score": round(self.score, 4),
            "region": self.region, "transform": self.transform,
            "query_box": self.match.get("query_box"),
            "evidence": {k: self.match.get(k) for k in (
                "ssim", "orb_matches", "orb_inliers", "hash_distance", "orientation",
                "exact", "colour_distance") if k in self.match},
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "gone_at": self.gone_at.isoformat() if self.gone_at else None,
            "gone_reason": self.gone_reason,
            "watches": self.watches,
        }


def _finding_query() -> Select[Any]:
    return (select(Finding, ScanPage.url, ScanImage.url, ImageRow.url, ImageRow.meta,
                   ScanMatch.verdict, ScanMatch.score, ScanMatch.match)
            .join(ScanPage, ScanPage.id == Finding.page_id)
            .join(ScanImage, ScanImage.id == Finding.image_id)
            .join(ImageRow, ImageRow.id == Finding.catalogue_id)
            .outerjoin(ScanMatch, (ScanMatch.image_id == Finding.image_id)
                       & (ScanMatch.catalogue_id == Finding.catalogue_id)))


def _utc(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite hands back naive ones)."""
    from datetime import UTC

    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _infos(session: Session, stmt: Select[Any]) -> list[FindingInfo]:
    rows = session.execute(stmt).all()
    ids = [r[0].id for r in rows]
    watches: dict[int, list[str]] = {}
    if ids:
        page_ids = sorted({r[0].page_id for r in rows})
        names: dict[int, list[str]] = {}
        for page_id, name in session.execute(
                select(WatchPage.page_id, Watch.name).join(Watch, Watch.id == WatchPage.watch_id)
                .where(WatchPage.page_id.in_(page_ids)).order_by(Watch.name)):
            names.setdefault(page_id, []).append(name)
        watches = {r[0].id: names.get(r[0].page_id, []) for r in rows}
    out = []
    for f, page, image, cat_url, meta, verdict, score, match in rows:
        reported = _utc(f.reported_at)
        out.append(FindingInfo(
            f.id, page, image, f.catalogue_id, cat_url, dict(meta or {}),
            verdict or "gone", float(score or 0.0), dict(match or {}), _utc(f.first_seen),
            _utc(f.last_seen), _utc(f.gone_at), f.gone_reason, reported, reported is None,
            watches.get(f.id, [])))
    return out


def findings_by_id(session: Session, ids: Sequence[int]) -> list[FindingInfo]:
    """The findings with these ids, in that order."""
    if not ids:
        return []
    got: dict[int, FindingInfo] = {}
    for lo in range(0, len(ids), 500):
        for info in _infos(session, _finding_query().where(Finding.id.in_(ids[lo:lo + 500]))):
            got[info.id] = info
    return [got[i] for i in ids if i in got]


@dataclass(frozen=True)
class FindingFilter:
    """Which findings to list: of a watch (its pages), of a catalogue image, first seen
    since a time; gone ones only with include_gone."""

    watch: str | None = None
    catalogue_id: int | None = None
    since: datetime | None = None
    include_gone: bool = False

    def apply(self, session: Session, stmt: Select[Any]) -> Select[Any]:
        """stmt restricted to the findings this filter selects."""
        if self.watch is not None:
            stmt = stmt.where(Finding.page_id.in_(
                select(WatchPage.page_id).join(Watch, Watch.id == WatchPage.watch_id)
                .where(Watch.name == self.watch)))
        if self.catalogue_id is not None:
            stmt = stmt.where(Finding.catalogue_id == self.catalogue_id)
        if self.since is not None:
            stmt = stmt.where(Finding.first_seen >= self.since)
        if not self.include_gone:
            stmt = stmt.where(Finding.gone_at.is_(None))
        return stmt


def list_findings(session: Session, flt: FindingFilter, offset: int, limit: int
                  ) -> tuple[int, list[FindingInfo]]:
    """(how many findings the filter selects, a page of them newest first)."""
    total = session.scalar(flt.apply(session, select(func.count(Finding.id)))) or 0
    stmt = flt.apply(session, _finding_query()).order_by(
        Finding.first_seen.desc(), Finding.id.desc()).offset(offset).limit(limit)
    return int(total), _infos(session, stmt)


@dataclass(frozen=True)
class FindingGroup:
    """The findings of one catalogue image, newest first."""

    catalogue_id: int
    catalogue_url: str
    metadata: dict[str, Any]
    total: int
    findings: list[FindingInfo]


def finding_groups(session: Session, flt: FindingFilter, offset: int, limit: int,
                   per_group: int) -> tuple[int, list[FindingGroup]]:
    """(how many catalogue images have findings under the filter, a page of them: the one
    found newest first, each with its newest per_group findings)."""
    newest = func.max(Finding.first_seen)
    grouped = flt.apply(session, select(Finding.catalogue_id, newest.label("newest"),
                                        func.count(Finding.id).label("n"))
                        ).group_by(Finding.catalogue_id)
    total = session.scalar(select(func.count()).select_from(grouped.subquery())) or 0
    rows = session.execute(grouped.order_by(newest.desc(), Finding.catalogue_id.desc())
                           .offset(offset).limit(limit)).all()
    groups = []
    for cat_id, _, n in rows:
        stmt = flt.apply(session, _finding_query().where(Finding.catalogue_id == cat_id)) \
            .order_by(Finding.first_seen.desc(), Finding.id.desc()).limit(per_group)
        infos = _infos(session, stmt)
        if not infos:
            continue
        groups.append(FindingGroup(cat_id, infos[0].catalogue_url, infos[0].metadata, int(n),
                                   infos))
    return int(total), groups


@dataclass(frozen=True)
class FoundPicture:
    """What the findings page draws a finding's match from: the found image's stored
    picture (JPEG) and its scale (picture pixels per working-image pixel), and the keypoint
    pairs and region of its match."""

    finding_id: int
    catalogue_id: int
    picture: bytes | None
    scale: float
    pairs: np.ndarray | None
    region: list[list[float]] | None
    query_box: list[float] | None
    width: int
    height: int


def found_picture(session: Session, finding_id: int) -> FoundPicture | None:
    """The picture and match of a finding (None for an unknown one)."""
    row = session.execute(
        select(Finding.catalogue_id, ScanImage.picture, ScanImage.picture_scale,
               ScanImage.width, ScanImage.height, ScanMatch.pairs, ScanMatch.match)
        .join(ScanImage, ScanImage.id == Finding.image_id)
        .outerjoin(ScanMatch, (ScanMatch.image_id == Finding.image_id)
                   & (ScanMatch.catalogue_id == Finding.catalogue_id))
        .where(Finding.id == finding_id)).first()
    if row is None:
        return None
    cat_id, picture, scale, width, height, pairs, match = row
    arr = np.frombuffer(pairs, np.float32).reshape(-1, 4) if pairs else None
    match = dict(match or {})
    return FoundPicture(finding_id, cat_id, bytes(picture) if picture else None,
                        float(scale or 1.0), arr, match.get("region"), match.get("query_box"),
                        int(width or 0), int(height or 0))


# --- watches ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class WatchInfo:
    """A named set of scan targets."""

    name: str
    targets: list[str]
    follow_pages: int
    notify: str | None
    created_at: datetime
    last_scan: dict[str, Any] | None = None
    findings: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (`watch list --json`)."""
        return {"name": self.name, "targets": self.targets, "follow_pages": self.follow_pages,
                "notify": self.notify, "created_at": self.created_at.isoformat(),
                "last_scan": self.last_scan, "findings": self.findings}


def add_watch(session: Session, name: str, targets: list[str], follow_pages: int,
              notify: str | None) -> bool:
    """Add a watch, or replace the one of that name; True when it is new."""
    repo.lock_writes(session)
    row = session.scalar(select(Watch).where(Watch.name == name))
    new = row is None
    if row is None:
        row = Watch(name=name, created_at=repo.now())
        session.add(row)
    row.targets, row.follow_pages, row.notify = targets, follow_pages, notify
    session.flush()
    return new


def remove_watch(session: Session, name: str) -> bool:
    """Forget a watch (its findings stay); False when there is none of that name."""
    repo.lock_writes(session)
    row = session.scalar(select(Watch).where(Watch.name == name))
    if row is None:
        return False
    session.execute(delete(WatchPage).where(WatchPage.watch_id == row.id))
    session.delete(row)
    return True


def watch_id(session: Session, name: str) -> int | None:
    """The id of the watch of that name, if any."""
    return session.scalar(select(Watch.id).where(Watch.name == name))


def watches(session: Session, names: Sequence[str] | None = None) -> list[WatchInfo]:
    """The watches (those named, in that order; all by name otherwise), each with its
    last scan and how many findings its pages hold now."""
    stmt = select(Watch).order_by(Watch.name)
    if names is not None:
        stmt = stmt.where(Watch.name.in_(list(names)))
    rows = list(session.scalars(stmt))
    scan_ids = [w.last_scan for w in rows if w.last_scan is not None]
    runs = {r.id: r for r in session.scalars(select(ScanRun).where(ScanRun.id.in_(scan_ids)))}
    out = []
    for w in rows:
        count = session.scalar(select(func.count(Finding.id)).where(
            Finding.gone_at.is_(None), Finding.page_id.in_(
                select(WatchPage.page_id).where(WatchPage.watch_id == w.id)))) or 0
        run = runs.get(w.last_scan) if w.last_scan is not None else None
        out.append(WatchInfo(w.name, list(w.targets), w.follow_pages, w.notify,
                             _utc(w.created_at) or w.created_at,
                             _run_dict(run) if run is not None else None, int(count)))
    if names is not None:
        order = {n: i for i, n in enumerate(names)}
        out.sort(key=lambda w: order[w.name])
    return out


# --- scans -----------------------------------------------------------------------------------

def start_scan(session: Session, targets: list[str], watch: str | None) -> int:
    """Record the start of a scan; scans still recorded as running whose process is gone
    are marked interrupted (killed)."""
    repo.lock_writes(session)
    run = ScanRun(started_at=repo.now(), status=RunStatus.RUNNING, targets=targets,
                  watch=watch, reason=repo.run_owner())
    session.add(run)
    session.flush()
    for other in session.scalars(select(ScanRun).where(ScanRun.status == RunStatus.RUNNING,
                                                       ScanRun.id != run.id)):
        if repo.owner_gone(other.reason):
            other.status = RunStatus.INTERRUPTED
            other.reason = f"its process ({other.reason}) was gone when scan {run.id} " \
                           "started: killed"
    return run.id


def finish_scan(session: Session, scan_id: int, status: RunStatus, counts: dict[str, int],
                reason: str | None = None) -> None:
    """Record the end of a scan with its counts and, when it ended badly, why."""
    repo.lock_writes(session)
    session.execute(update(ScanRun).where(ScanRun.id == scan_id).values(
        finished_at=repo.now(), status=status, counts=counts, reason=reason))
    run = session.get(ScanRun, scan_id)
    if run is not None and run.watch is not None:
        session.execute(update(Watch).where(Watch.name == run.watch)
                        .values(last_scan=scan_id))


def _run_dict(r: ScanRun) -> dict[str, Any]:
    status, reason = r.status, r.reason
    if status == RunStatus.RUNNING:
        reason = None
        if repo.owner_gone(r.reason):
            status, reason = RunStatus.INTERRUPTED, f"its process ({r.reason}) is gone"
    started, finished = _utc(r.started_at), _utc(r.finished_at)
    return {"id": r.id, "status": status, "watch": r.watch, "targets": list(r.targets),
            "started_at": started.isoformat() if started else None,
            "duration_s": (finished - started).total_seconds() if finished and started
            else None, "counts": r.counts or {}, "reason": reason}


def recent_scans(session: Session, limit: int = 5) -> list[dict[str, Any]]:
    """The latest scans, newest first."""
    return [_run_dict(r) for r in session.scalars(
        select(ScanRun).order_by(ScanRun.id.desc()).limit(limit))]
