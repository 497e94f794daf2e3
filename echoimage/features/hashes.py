"""64-bit perceptual hashes (pHash, dHash) as bytes, computed with OpenCV + numpy, and a
finer 256-bit one of a thumbnail (`fine_hash`).

pHash follows imagehash.phash (32x32 input, 2-D DCT, top-left 8x8 against its median),
dHash follows imagehash.dhash (9x8 input, horizontal gradient signs). Bits are packed
big-endian with numpy.packbits, the order FAISS binary indexes compare.
"""

from __future__ import annotations

import cv2
import numpy as np

from echoimage.features.dihedral import orient

HASH_BYTES = 8


def hash_input(gray: np.ndarray) -> np.ndarray:
    """The 32x32 float32 image every hash of one orientation is computed from."""
    if gray.ndim != 2:
        raise ValueError("hash_input expects a 2-D grayscale array")
    return cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)


def phash(small: np.ndarray) -> bytes:
    """pHash of a 32x32 hash input: 64 bits, DCT low frequencies above their median."""
    if small.shape != (32, 32):
        raise ValueError("phash expects the 32x32 output of hash_input()")
    low = cv2.dct(np.ascontiguousarray(small, dtype=np.float32))[:8, :8]
    return np.packbits((low > np.median(low)).ravel()).tobytes()


def dhash(small: np.ndarray) -> bytes:
    """dHash of a 32x32 hash input: 64 bits, signs of horizontal gradients on 9x8."""
    if small.shape != (32, 32):
        raise ValueError("dhash expects the 32x32 output of hash_input()")
    tiny = cv2.resize(small, (9, 8), interpolation=cv2.INTER_AREA)
    return np.packbits((tiny[:, 1:] > tiny[:, :-1]).ravel()).tobytes()


def oriented_phashes(small: np.ndarray) -> list[bytes]:
    """pHash of the 32x32 hash input in each of the eight dihedral orientations."""
    return [phash(orient(small, o)) for o in range(8)]


def fine_hash(thumb: np.ndarray) -> bytes:
    """256 bits of a grayscale thumbnail: its 2-D DCT at 64x64, the top-left 16x16 against
    their median. Heavy noise moves it less, for its length, than the 64-bit pHash: a noisy
    copy's is within 41 of 256 bits of its original's at the median (bsds500 under
    perception's heavy noise, 70 at most), where no two of bsds500's photos come within
    82 in any orientation; but different products photographed alike come within 10."""
    if thumb.ndim != 2:
        raise ValueError("fine_hash expects a 2-D grayscale array")
    small = cv2.resize(thumb, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:16, :16]
    return np.packbits((low > np.median(low)).ravel()).tobytes()


def hamming(a: bytes, b: bytes) -> int:
    """Hamming distance between two hashes of the same length."""
    if len(a) != len(b):
        raise ValueError(f"hash lengths differ: {len(a)} != {len(b)} bytes")
    x = np.bitwise_xor(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8))
    return int(np.unpackbits(x).sum())


def to_hex(h: bytes) -> str:
    """Lossless hex form of a hash."""
    return h.hex()


def from_hex(s: str) -> bytes:
    """Inverse of to_hex()."""
    return bytes.fromhex(s)
