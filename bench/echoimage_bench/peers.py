"""The peers EchoImage is measured against, each a 256-bit hash with its index: Meta's PDQ
(the `pdqhash` bindings) and Thorn `perception`'s PHash with hash_size 16, the hasher its
documentation recommends for most uses.

Both are optional dependencies of the benchmark (the ``peers`` extra; `make venv` installs
them). `load_peers` returns those that import and says why the others were skipped. A peer
hashes an RGB image into packed bits; `PeerIndex` is an exact Hamming search over the
catalogue's codes (a FAISS `IndexBinaryFlat`, the brute-force scan imagededup and HMA's
small indexes do).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

#: Meta's documented match rule for PDQ: Hamming distance <= 31 of 256 bits
PDQ_THRESHOLD = 31

#: perception's recommended PHash threshold, a normalised Hamming distance (distance
#: < 0.2 is a duplicate, in `perception.tools.deduplicate`); 51 of 256 bits
PHASH16_THRESHOLD = 0.2

HashFn = Callable[[np.ndarray], bytes]


@dataclass(frozen=True)
class Peer:
    """A peer hasher: RGB uint8 image -> packed bits, and its documented match rule
    (distance <= `threshold` bits)."""

    name: str
    label: str
    bits: int
    threshold: int
    rule: str
    version: str
    hash_rgb: HashFn

    def hash_bgr(self, img: np.ndarray) -> bytes:
        """The hash of a BGR uint8 image (as OpenCV decodes it)."""
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"a peer hashes a BGR uint8 HxWx3 array, got {img.dtype} "
                             f"{img.shape}")
        return self.hash_rgb(np.ascontiguousarray(img[..., ::-1]))


def _pack(bits: np.ndarray, n: int) -> bytes:
    flat = np.asarray(bits).reshape(-1)
    if flat.size != n:
        raise ValueError(f"expected {n} bits, got {flat.size}")
    return np.packbits(flat.astype(bool)).tobytes()


def pdq_peer() -> Peer:
    """Meta's PDQ through `pdqhash` (raises ImportError when it is not installed)."""
    import importlib.metadata

    import pdqhash

    def hash_rgb(rgb: np.ndarray) -> bytes:
        bits, _quality = pdqhash.compute(rgb)
        return _pack(bits, 256)

    return Peer("pdq", "PDQ", 256, PDQ_THRESHOLD, f"distance ≤ {PDQ_THRESHOLD} bits (Meta)",
                importlib.metadata.version("pdqhash"), hash_rgb)


def perception_phash_peer() -> Peer:
    """perception's PHash(hash_size=16) (raises ImportError when it is not installed)."""
    import importlib.metadata

    from perception.hashers import PHash

    hasher = PHash(hash_size=16)
    bits = hasher.hash_length
    # perception calls a pair duplicates when distance / bits < threshold
    limit = int(np.ceil(PHASH16_THRESHOLD * bits)) - 1

    def hash_rgb(rgb: np.ndarray) -> bytes:
        return _pack(hasher.compute(rgb, hash_format="vector"), bits)

    return Peer("perception_phash", "perception PHash16", bits, limit,
                f"normalised distance < {PHASH16_THRESHOLD} (≤ {limit} bits; perception)",
                importlib.metadata.version("perception"), hash_rgb)


#: the peers' factories, in report order
PEER_FACTORIES: dict[str, Callable[[], Peer]] = {
    "pdq": pdq_peer,
    "perception_phash": perception_phash_peer,
}

#: what installs each peer's package
INSTALL_HINT = {
    "pdq": "pdqhash (pip install -c constraints.txt -e './bench[peers]', or make venv)",
    "perception_phash": "perception (make venv installs it; see bench/pyproject.toml)",
}


def load_peers(names: list[str] | None = None) -> tuple[list[Peer], dict[str, str]]:
    """The peers that can run here, and {name: why it was skipped} for the others."""
    peers, skipped = [], {}
    for name in names if names is not None else list(PEER_FACTORIES):
        try:
            peers.append(PEER_FACTORIES[name]())
        except ImportError as exc:
            skipped[name] = f"not installed ({exc}); it needs {INSTALL_HINT[name]}"
            log.info("peer %s skipped: %s", name, exc)
    return peers, skipped


class PeerIndex:
    """An exact Hamming index over a peer's catalogue codes (FAISS IndexBinaryFlat)."""

    def __init__(self, bits: int) -> None:
        import faiss

        if bits % 8:
            raise ValueError("bits must be a multiple of 8")
        self.bits = bits
        self._index = faiss.IndexBinaryFlat(bits)
        self.keys: list[str] = []

    def add(self, key: str, code: bytes) -> None:
        """Add one catalogue code under key."""
        if len(code) * 8 != self.bits:
            raise ValueError(f"code has {len(code) * 8} bits, the index {self.bits}")
        self._index.add(np.frombuffer(code, np.uint8).reshape(1, -1))
        self.keys.append(key)

    def __len__(self) -> int:
        return len(self.keys)

    def search(self, code: bytes, k: int) -> list[tuple[str, int]]:
        """The k nearest catalogue keys and their Hamming distances, nearest first."""
        if len(code) * 8 != self.bits:
            raise ValueError(f"code has {len(code) * 8} bits, the index {self.bits}")
        if not self.keys:
            return []
        dist, ids = self._index.search(np.frombuffer(code, np.uint8).reshape(1, -1),
                                       min(k, len(self.keys)))
        return [(self.keys[int(i)], int(d)) for d, i in zip(dist[0], ids[0], strict=True)
                if i >= 0]
