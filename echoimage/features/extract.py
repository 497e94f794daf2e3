"""Compose the feature functions: the one call indexing and querying both make."""

from __future__ import annotations

from echoimage.features.colour import colour_signature
from echoimage.features.hashes import dhash, hash_input, phash
from echoimage.features.orb import orb_features
from echoimage.features.thumbnail import thumbnail
from echoimage.types import DecodedImage, ImageFeatures


def extract_features(img: DecodedImage, thumb_size: int, nfeatures: int) -> ImageFeatures:
    """Thumbnail, ORB and hashes of a decoded image; its colour version and colour
    signature when it was decoded with one."""
    small = hash_input(img.gray)
    return ImageFeatures(
        thumbnail=thumbnail(img.gray, thumb_size),
        orb=orb_features(img.gray, nfeatures),
        phash=phash(small),
        dhash=dhash(small),
        width=img.width,
        height=img.height,
        format=img.format,
        work_scale=img.scale,
        colour=img.colour,
        colour_signature=None if img.colour is None else colour_signature(img.colour),
    )
