"""Compose the feature functions: the one call indexing and querying both make."""

from __future__ import annotations

import time

from echoimage.features.colour import colour_signature
from echoimage.features.hashes import dhash, hash_input, phash
from echoimage.features.orb import orb_features
from echoimage.features.thumbnail import thumbnail
from echoimage.types import DecodedImage, ImageFeatures


class Stages:
    """CPU seconds of this process per stage of one image's work (a build's split of where
    an image's time goes): lap(stage) charges the time since the previous lap to stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.process_time()

    def lap(self, stage: str) -> None:
        """Charge the CPU time since the previous lap (or the start) to stage."""
        now = time.process_time()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now

    @property
    def total(self) -> float:
        """CPU seconds charged to any stage."""
        return sum(self.seconds.values())


def extract_features(img: DecodedImage, thumb_size: int, nfeatures: int,
                     stages: Stages | None = None) -> ImageFeatures:
    """Thumbnail, ORB and hashes of a decoded image; its colour version and colour
    signature when it was decoded with one. With stages, each step's CPU time is charged
    to it.

    One resize chain: the hashes' 32x32 input is made from the thumbnail when the
    thumbnail is a reduction of the image (its 8x8 blocks are area averages of the same
    regions; bsds500: 0.06 pHash bits differ on average from the image's own 32x32, at
    most 2), at a fiftieth of the cost.
    """
    lap = stages.lap if stages is not None else _no_lap
    thumb = thumbnail(img.gray, thumb_size)
    lap("thumbnail")
    small = hash_input(thumb if min(img.gray.shape) >= thumb_size else img.gray)
    ph, dh = phash(small), dhash(small)
    lap("hashes")
    orb = orb_features(img.gray, nfeatures)
    lap("orb")
    signature = None if img.colour is None else colour_signature(img.colour)
    lap("colour signature")
    return ImageFeatures(
        thumbnail=thumb,
        orb=orb,
        phash=ph,
        dhash=dh,
        width=img.width,
        height=img.height,
        format=img.format,
        work_scale=img.scale,
        colour=img.colour,
        colour_signature=signature,
    )


def _no_lap(stage: str) -> None:
    """A lap nobody times."""
