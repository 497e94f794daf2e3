"""SQLAlchemy 2.0 tables. The schema itself is created only by the Alembic migrations."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from echoimage.types import Status

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name every constraint."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


#: statuses a later run tries again
RETRYABLE = frozenset({Status.PENDING, Status.HTTP_ERROR, Status.TIMEOUT, Status.MISSING})
#: failures of an image's bytes: `index update` checks them again (conditionally, as it
#: does indexed images) and indexes the image once its bytes change
RECHECKED = frozenset({Status.DECODE_ERROR, Status.NOT_AN_IMAGE, Status.TOO_LARGE})
#: transient failures: an image indexed before keeps its old entry
TRANSIENT = frozenset({Status.HTTP_ERROR, Status.TIMEOUT})


class Source(Base):
    """A catalogue source that was read (provenance of images)."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    uri: Mapped[str] = mapped_column(String(2048), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    #: a web page source: the same-site links followed when it is scraped (else NULL)
    follow_pages: Mapped[int | None] = mapped_column(Integer, nullable=True)


class ImageRow(Base):
    """One catalogue image: where it is, what became of it, and its identity."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048), unique=True)
    source_id: Mapped[int | None] = mapped_column(ForeignKey("sources.id"), index=True)
    status: Mapped[str] = mapped_column(String(32), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    format: Mapped[str | None] = mapped_column(String(16))
    nbytes: Mapped[int | None] = mapped_column(Integer)
    etag: Mapped[str | None] = mapped_column(String(512))
    last_modified: Mapped[str | None] = mapped_column(String(128))
    meta: Mapped[dict | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # last change of status or features: the change feed serving engines follow
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    indexed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    gone_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # the change number (StoreInfo.seq) of the row's last change of status or features:
    # readers of the index ask for the rows changed after the number their files include
    seq: Mapped[int] = mapped_column(BigInteger, index=True, server_default="1")


class FeatureRow(Base):
    """Per-image features the query needs, so catalogue images are never fetched again."""

    __tablename__ = "features"

    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    phash: Mapped[bytes] = mapped_column(LargeBinary(8))
    dhash: Mapped[bytes] = mapped_column(LargeBinary(8))
    thumbnail: Mapped[bytes] = mapped_column(LargeBinary)  # raw thumb_size² uint8
    thumb_size: Mapped[int] = mapped_column(Integer)
    n_keypoints: Mapped[int] = mapped_column(Integer)
    keypoints: Mapped[bytes] = mapped_column(LargeBinary)  # float32 N×5
    descriptors: Mapped[bytes] = mapped_column(LargeBinary)  # uint8 N×32
    work_scale: Mapped[float] = mapped_column(Float)
    # extraction parameters (indexing.work.FeatureParams.key); rows made with others are
    # re-extracted (indexed: finding stale rows must not read the large rows themselves)
    params: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    # a small colour JPEG for display and a colour signature for colour_distance (NULL on
    # rows indexed before colour was kept: filled when the row is next extracted)
    colour_preview: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    colour_signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class StoreInfo(Base):
    """The store's identity and change counter (one row, id 1)."""

    __tablename__ = "store_info"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: made with the store: index files built from another store are never used
    store_id: Mapped[str] = mapped_column(String(36))
    #: the last change number handed out; bumped in the transaction that makes the change,
    #: whose row lock also orders concurrent writers' commits by their numbers
    seq: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: how feature rows are encoded (2: compact, see store/codec.py; 1: rows to convert)
    row_format: Mapped[int] = mapped_column(Integer, server_default="1")


#: the feature row format this code writes
ROW_FORMAT = 2


class Run(Base):
    """One `index build` or `index update` run and its counts per state."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))
    counts: Mapped[dict | None] = mapped_column(JSON)
    sources: Mapped[list | None] = mapped_column(JSON)
    #: why it failed or was interrupted; while it runs, the process doing it
    #: ("pid 1234 on HOST", see repo.run_owner), so that a run whose process is gone can be
    #: told from one still going
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)


# --- scans: other people's pages, the images they show, and the copies found there -------


class ScanPage(Base):
    """A page a scan read (or a list of images: a URL list, an images.json, a folder): what
    it showed the last time, and how to tell whether it changed since."""

    __tablename__ = "scan_pages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # page, list or folder
    status: Mapped[str] = mapped_column(String(32))  # a ScanStatus
    reason: Mapped[str | None] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(String(512))
    last_modified: Mapped[str | None] = mapped_column(String(128))
    sha256: Mapped[str | None] = mapped_column(String(64))  # of the body last read
    #: the image URLs it showed the last time it was read, in order
    images: Mapped[list | None] = mapped_column(JSON)
    #: its links to pages of the same site (what --follow-pages follows)
    links: Mapped[list | None] = mapped_column(JSON)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    gone_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ScanImage(Base):
    """An image a scan found on a page: its validators and content hash (a re-scan fetches
    and compares only what changed) and the catalogue change number it was compared with."""

    __tablename__ = "scan_images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048), unique=True)
    status: Mapped[str] = mapped_column(String(32))  # a ScanStatus
    reason: Mapped[str | None] = mapped_column(Text)
    etag: Mapped[str | None] = mapped_column(String(512))
    last_modified: Mapped[str | None] = mapped_column(String(128))
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    #: the catalogue's change number when it was last compared with the catalogue (NULL:
    #: never); a catalogue that changed since makes the next scan compare it again
    queried_seq: Mapped[int | None] = mapped_column(BigInteger)
    #: a small JPEG of it and its pixels per working-image pixel, kept while it holds a
    #: copy (the findings page draws the match from it)
    picture: Mapped[bytes | None] = mapped_column(LargeBinary)
    picture_scale: Mapped[float | None] = mapped_column(Float)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    gone_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ScanMatch(Base):
    """A catalogue image a scanned image is a copy of, as its last comparison found."""

    __tablename__ = "scan_matches"

    image_id: Mapped[int] = mapped_column(
        ForeignKey("scan_images.id", ondelete="CASCADE"), primary_key=True)
    catalogue_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True, index=True)
    verdict: Mapped[str] = mapped_column(String(16))
    score: Mapped[float] = mapped_column(Float)
    #: the match as `query --json` gives it (evidence, region, transform, query_box)
    match: Mapped[dict] = mapped_column(JSON)
    #: the keypoint pairs behind it: float32 N×4 (scanned image x, y in its working
    #: pixels; catalogue x, y in the catalogue image's)
    pairs: Mapped[bytes | None] = mapped_column(LargeBinary)


class Finding(Base):
    """A copy of a catalogue image shown on a page: where, and since when."""

    __tablename__ = "findings"
    __table_args__ = (UniqueConstraint("page_id", "image_id", "catalogue_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # (page_id, image_id, catalogue_id) is unique: its index serves lookups by page
    page_id: Mapped[int] = mapped_column(ForeignKey("scan_pages.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("scan_images.id", ondelete="CASCADE"),
                                          index=True)
    catalogue_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"),
                                              index=True)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    #: when it was found gone (its page or image gone, the image no longer on the page or
    #: no longer a copy) and why; NULL while it is there
    gone_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    gone_reason: Mapped[str | None] = mapped_column(Text)
    first_scan: Mapped[int | None] = mapped_column(Integer)
    last_scan: Mapped[int | None] = mapped_column(Integer)
    #: when a scan reported it (printed it as it was found or, with a webhook, delivered
    #: it; without either, at the scan's end): NULL for a finding no scan has reported yet
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Watch(Base):
    """Named scan targets that `echoimage scan --watches` runs."""

    __tablename__ = "watches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    targets: Mapped[list] = mapped_column(JSON)
    follow_pages: Mapped[int] = mapped_column(Integer)
    notify: Mapped[str | None] = mapped_column(String(2048))  # a webhook URL
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_scan: Mapped[int | None] = mapped_column(Integer)


class WatchPage(Base):
    """A page a watch's scans read (the findings of a watch are those on its pages)."""

    __tablename__ = "watch_pages"

    watch_id: Mapped[int] = mapped_column(ForeignKey("watches.id", ondelete="CASCADE"),
                                          primary_key=True)
    page_id: Mapped[int] = mapped_column(ForeignKey("scan_pages.id", ondelete="CASCADE"),
                                         primary_key=True, index=True)


class ScanRun(Base):
    """One scan: its targets (or watch), status (a RunStatus) and counts."""

    __tablename__ = "scans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))
    targets: Mapped[list] = mapped_column(JSON)
    watch: Mapped[str | None] = mapped_column(String(128))
    counts: Mapped[dict | None] = mapped_column(JSON)
    #: why it failed or was interrupted; while it runs, the process doing it
    reason: Mapped[str | None] = mapped_column(Text)
