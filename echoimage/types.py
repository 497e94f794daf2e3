"""Frozen dataclasses that cross stages: catalogue → fetch → features → store → search."""

from __future__ import annotations

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
        }
