"""Serialise features to the bytes the store keeps, and back."""

from __future__ import annotations

import cv2
import numpy as np

from echoimage.types import OrbFeatures


def encode_thumbnail(thumb: np.ndarray) -> bytes:
    """Lossless PNG of a grayscale thumbnail (fast compression level)."""
    ok, buf = cv2.imencode(".png", thumb, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("thumbnail could not be encoded")
    return buf.tobytes()


def decode_thumbnail(data: bytes) -> np.ndarray:
    """Inverse of encode_thumbnail()."""
    thumb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if thumb is None:
        raise ValueError("stored thumbnail is corrupt")
    return thumb


def encode_orb(orb: OrbFeatures) -> tuple[bytes, bytes]:
    """Keypoints (float32 N×5) and descriptors (uint8 N×32) as raw bytes."""
    return orb.keypoints.astype(np.float32).tobytes(), orb.descriptors.astype(np.uint8).tobytes()


def decode_orb(keypoints: bytes, descriptors: bytes) -> OrbFeatures:
    """Inverse of encode_orb()."""
    kp = np.frombuffer(keypoints, np.float32).reshape(-1, 5)
    desc = np.frombuffer(descriptors, np.uint8).reshape(-1, 32)
    if kp.shape[0] != desc.shape[0]:
        raise ValueError("stored keypoints and descriptors disagree in count")
    return OrbFeatures(kp, desc)
