"""Frozen dataclasses that cross stages: catalogue → fetch → features → store → search."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CatalogueItem:
    """One image named by a catalogue: a URL or an absolute local path."""

    url: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceListing:
    """A catalogue source as read: its uri as the store records it, its kind (dir, json,
    jsonl, csv, text, image, url, page: a web page scraped, or api for images added over
    the HTTP API) and its items."""

    uri: str
    kind: str
    items: Iterable[CatalogueItem]
    #: files a folder source passed over, by what they look like ("SVG", "PDF", ...),
    #: counted while its items are iterated
    skipped: Counter[str] = field(default_factory=Counter)
    #: a web page source: the same-site links it follows (None for other kinds)
    follow_pages: int | None = None
    #: a web page source: pages that could not be read this time (a timeout, a 5xx): the
    #: images last found on them are kept, not marked gone
    unread_pages: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DecodedImage:
    """A decoded, EXIF-oriented, alpha-flattened grayscale image at working resolution."""

    gray: np.ndarray  # uint8 HxW, longest side <= work_size
    width: int  # original width in pixels, after EXIF orientation
    height: int
    format: str
    frames: int = 1
    # RGB uint8 HxWx3 of the same picture, longest side <= the colour size asked for (None
    # when none was asked for)
    colour: np.ndarray | None = None

    @property
    def scale(self) -> float:
        """Original pixels per working-image pixel."""
        return max(self.width, self.height) / max(self.gray.shape)


@dataclass(frozen=True)
class OrbFeatures:
    """ORB keypoints (x, y, size, angle, response; working-image pixels) and descriptors."""

    keypoints: np.ndarray  # float32 Nx5
    descriptors: np.ndarray  # uint8 Nx32

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])


@dataclass(frozen=True)
class ImageFeatures:
    """Everything the index and the re-ranker need about one image."""

    thumbnail: np.ndarray  # uint8 256x256
    orb: OrbFeatures
    phash: bytes  # 8 bytes
    dhash: bytes  # 8 bytes
    width: int
    height: int
    format: str
    work_scale: float  # original pixels per ORB keypoint pixel
    colour: np.ndarray | None = None  # small RGB uint8 image (the display preview)
    colour_signature: bytes | None = None  # see echoimage.features.colour


@dataclass(frozen=True)
class Candidate:
    """A catalogue image's stored features, as the re-ranker reads them."""

    id: int
    url: str
    sha256: str
    phash: bytes
    thumbnail: np.ndarray
    orb: OrbFeatures
    width: int
    height: int
    work_scale: float


@dataclass(frozen=True)
class Picture:
    """What the store keeps to show a catalogue image: its square grayscale thumbnail, its
    original width and height (0 when unknown), its keypoints' scale (original pixels per
    working-image pixel) and its colour preview (JPEG bytes; None for a row indexed before
    colour was kept)."""

    id: int
    thumbnail: np.ndarray
    width: int
    height: int
    work_scale: float
    preview: bytes | None


class Status(StrEnum):
    """Values of images.status (what became of a catalogue image)."""

    PENDING = "pending"
    INDEXED = "indexed"
    DECODE_ERROR = "decode-error"
    NOT_AN_IMAGE = "not-an-image"
    TOO_LARGE = "too-large"
    MISSING = "missing"
    HTTP_ERROR = "http-error"
    GONE = "gone"
    TIMEOUT = "timeout"
    BAD_URL = "bad-url"
    REDIRECT_ERROR = "redirect-error"
    REMOVED = "removed"  # taken out of the catalogue by its owner (kept as a tombstone)


class RunStatus(StrEnum):
    """Values of runs.status (how an indexing run went)."""

    RUNNING = "running"
    OK = "ok"
    FAILED = "failed"  # it raised: runs.reason is the error's one line
    INTERRUPTED = "interrupted"  # Ctrl-C, or found still running by a later run


class Outcome(StrEnum):
    """What a build or update did with an image or a source besides giving an image a
    store status (`Status`): the other keys of a run's counts."""

    UNCHANGED = "unchanged"  # re-checked: the same bytes (or not modified)
    CHANGED = "changed"  # indexed before, indexed again with new bytes
    RE_EXTRACTED = "re-extracted"  # indexed before with other feature parameters
    ALREADY_INDEXED = "already-indexed"  # a build: indexed before, not fetched again
    KNOWN_FAILURE = "known-failure"  # a build: failed before for a lasting reason
    SOURCE_UNREADABLE = "source-unreadable"  # an update: a source could not be read

    @staticmethod
    def kept(status: Status) -> str:
        """The count of an indexed image whose re-check failed transiently (status): its
        entry is kept."""
        return f"kept ({status})"

    @staticmethod
    def skipped(status: Status) -> str:
        """The count of an image an update leaves alone for its lasting status."""
        return f"skipped ({status})"


class FetchStatus(StrEnum):
    """What became of one URL (FetchResult.status, echoimage.fetch.client)."""

    OK = "ok"
    NOT_MODIFIED = "not-modified"
    GONE = "gone"
    HTTP_ERROR = "http-error"
    TIMEOUT = "timeout"
    TOO_LARGE = "too-large"
    NOT_AN_IMAGE = "not-an-image"
    REDIRECT_LOOP = "redirect-loop"
    TOO_MANY_REDIRECTS = "too-many-redirects"
    CONNECTION_ERROR = "connection-error"
    BAD_URL = "bad-url"
    # the address the host resolved to when connecting was refused by a URL policy (the
    # server's SSRF guard, echoimage.fetch.ssrf; the URL itself passed its check)
    REFUSED = "refused"


class Verdict(StrEnum):
    """What a result is to the query, from its evidence (see echoimage.search.verdict)."""

    EXACT = "exact"  # the same bytes
    DUPLICATE = "duplicate"  # a copy of the whole catalogue image (edited, re-encoded, framed)
    PARTIAL = "partial"  # a copy of a part of the catalogue image (a crop)
    RECOLOURED = "recoloured"  # colour-sensitive mode: a copy in clearly different colours
    DIFFERENT = "different"  # not a copy: the nearest image the catalogue has

    @property
    def is_copy(self) -> bool:
        """True for every verdict but `different`."""
        return self is not Verdict.DIFFERENT


@dataclass(frozen=True)
class Match:
    """One ranked result of a query, with the evidence behind its score (the probability
    that it is a copy, see echoimage.search.evidence)."""

    id: int
    url: str
    score: float
    duplicate: bool
    exact: bool
    ssim: float
    orb_matches: int
    orb_inliers: int
    hash_distance: int
    orientation: str
    sha256: str
    region: list[list[float]] | None = None
    transform: dict[str, Any] | None = None
    votes: int = 0
    query_box: list[float] | None = None  # x, y, w, h of the part of the query that matched
    verdict: Verdict = Verdict.DIFFERENT
    # 0 (same colours) .. 1 (nothing alike); None when the catalogue row has no colour
    # signature yet (indexed before colour was kept)
    colour_distance: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # the catalogue entry's extra keys
    # the keypoint pairs behind orb_inliers: float32 N×4 (query x, y in the query's working
    # pixels; catalogue x, y in its working pixels), for drawing the match
    pairs: np.ndarray | None = field(default=None, compare=False, repr=False)
    # how much of the matched area the inliers span, 0..1 (0 without geometric agreement)
    spread: float = 0.0
    # a few words on why the result is a copy, or why not (see echoimage.search.evidence)
    why: str = ""
    # of a copy, the other catalogue entries with the same bytes (their URLs): results are
    # one per content, so these are not results of their own
    also_at: list[str] = field(default_factory=list)
    # whether a near hash could prove this copy by itself (the query's view too small,
    # crushed or noisy for geometric agreement, and not flat where the catalogue image
    # has detail; see echoimage.search.evidence.Evidence)
    hash_alone: bool = field(default=True, compare=False, repr=False)
    # the share of the catalogue image's detail the query shows flat, aligned by the
    # inliers' transform or else by the hash (NaN: not told; see
    # echoimage.search.rerank.missing_detail)
    missing: float = field(default=float("nan"), compare=False, repr=False)
    # bits of the 256-bit fine hash apart, told for a noisy query only (-1: not told; see
    # echoimage.features.hashes.fine_hash)
    fine_distance: int = field(default=-1, compare=False, repr=False)
    # the share of the inliers inside their hull, off its outline (NaN: not told; see
    # echoimage.search.rerank.interior)
    interior: float = field(default=float("nan"), compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the contract's field order."""
        return {
            "id": self.id,
            "url": self.url,
            "score": round(self.score, 4),
            "duplicate": self.duplicate,
            "exact": self.exact,
            "ssim": round(self.ssim, 4),
            "orb_matches": self.orb_matches,
            "orb_inliers": self.orb_inliers,
            "hash_distance": self.hash_distance,
            "orientation": self.orientation,
            "votes": self.votes,
            "sha256": self.sha256,
            "region": self.region,
            "transform": self.transform,
            "query_box": self.query_box,
            "verdict": str(self.verdict),
            "colour_distance": None if self.colour_distance is None
            else round(self.colour_distance, 4),
            "metadata": self.metadata,
            "why": self.why,
            "also_at": self.also_at,
        }


class ScanStatus(StrEnum):
    """What became of a page or an image in a scan (echoimage.catalogue.scan): each one
    that was not read has one of these with a one-line reason, and the scan goes on."""

    OK = "ok"  # read (a page parsed; an image compared with the catalogue)
    UNCHANGED = "unchanged"  # the same as last time (not modified, or the same bytes)
    GONE = "gone"  # 404 or 410, or a local file no longer there: its findings are gone
    DISALLOWED = "disallowed"  # robots.txt keeps EchoImage out
    NOT_HTML = "not-html"  # a page target that is no HTML page (nor an image list)
    NOT_AN_IMAGE = "not-an-image"
    DECODE_ERROR = "decode-error"
    TOO_LARGE = "too-large"
    HTTP_ERROR = "http-error"
    TIMEOUT = "timeout"
    REDIRECT_ERROR = "redirect-error"  # a redirect loop or too many redirects
    CONNECTION_ERROR = "connection-error"
    BAD_URL = "bad-url"
    REFUSED = "refused"  # the URL policy (SSRF guard) refused its address
    UNREADABLE = "unreadable"  # a local file or list that cannot be read

    @property
    def transient(self) -> bool:
        """True when a later scan may well read it: its findings are kept as they were."""
        return self in (ScanStatus.HTTP_ERROR, ScanStatus.TIMEOUT,
                        ScanStatus.CONNECTION_ERROR, ScanStatus.DISALLOWED)

    @classmethod
    def of_fetch(cls, status: str) -> ScanStatus:
        """The scan status of a fetch's (FetchStatus)."""
        return _FETCH_TO_SCAN.get(status) or cls(status)


_FETCH_TO_SCAN = {
    FetchStatus.NOT_MODIFIED: ScanStatus.UNCHANGED,
    FetchStatus.REDIRECT_LOOP: ScanStatus.REDIRECT_ERROR,
    FetchStatus.TOO_MANY_REDIRECTS: ScanStatus.REDIRECT_ERROR,
}


def counted(n: int, noun: str, nouns: str | None = None) -> str:
    """n and its noun, singular for one: "1 page", "3 pages", "2 copies" (nouns: the
    plural where it is not noun + "s")."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"
