"""FAISS binary indexes: the pHash index (IndexBinaryIDMap2 over 64-bit codes keyed by image
id), k-NN search with the -1 padding stripped, and reading and writing index files."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from echoimage.index.manifest import FileRef, atomic_write

log = logging.getLogger(__name__)

HASH_BITS = 64


def build_binary_index(ids: np.ndarray, codes: np.ndarray, bits: int = HASH_BITS
                       ) -> faiss.IndexBinaryIDMap2:
    """An exact Hamming index of codes (uint8 N×bits/8) that answers with ids (int64)."""
    if codes.ndim != 2 or codes.shape[1] * 8 != bits:
        raise ValueError(f"codes must be N×{bits // 8} uint8")
    if ids.shape[0] != codes.shape[0]:
        raise ValueError("ids and codes differ in length")
    index = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(bits))
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(codes, dtype=np.uint8),
                           np.ascontiguousarray(ids, dtype=np.int64))
    return index


def id_array(index: Any) -> np.ndarray:
    """The sorted ids of an IDMap index."""
    if not index.ntotal:
        return np.zeros(0, np.int64)
    return np.sort(faiss.vector_to_array(index.id_map))


def codes_of(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """(ids, codes) of an IDMap over a flat binary index, in insertion order."""
    flat = faiss.downcast_IndexBinary(index.index)
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    codes = faiss.vector_to_array(flat.xb).reshape(-1, flat.code_size)
    return ids, codes


@dataclass(frozen=True)
class Hits:
    """Shortlist answer for each query row: ids and Hamming distances, -1 padding removed."""

    ids: list[np.ndarray]
    distances: list[np.ndarray]


def search(index: faiss.IndexBinary, queries: np.ndarray, k: int,
           exclude: np.ndarray | None = None) -> Hits:
    """k nearest codes for each query row, leaving out the ids in exclude (an IDMap index
    only); an empty index gives empty answers."""
    nq = queries.shape[0]
    live = index.ntotal - (len(exclude) if exclude is not None else 0)
    if index.ntotal == 0 or k <= 0 or live <= 0:
        empty = np.zeros(0, np.int64)
        return Hits([empty] * nq, [empty] * nq)
    k = min(k, index.ntotal)
    q = np.ascontiguousarray(queries, dtype=np.uint8)
    if exclude is not None and len(exclude):
        sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.ascontiguousarray(exclude,
                                                                             np.int64)))
        dist, ids = index.search(q, k, params=faiss.SearchParameters(sel=sel))
    else:
        dist, ids = index.search(q, k)
    out_i, out_d = [], []
    for row_d, row_i in zip(dist, ids, strict=True):
        keep = row_i >= 0
        out_i.append(row_i[keep])
        out_d.append(row_d[keep].astype(np.int64))
    return Hits(out_i, out_d)


def write_index_file(index: faiss.IndexBinary, path: Path) -> FileRef:
    """Write a FAISS binary index atomically, streaming it (no second copy in memory)."""
    digest = hashlib.sha256()
    size = 0

    def write(fh: Any) -> None:
        nonlocal size

        def chunk(data: bytes) -> int:
            nonlocal size
            digest.update(data)
            fh.write(data)
            size += len(data)
            return len(data)

        writer = faiss.PyCallbackIOWriter(chunk)
        faiss.write_index_binary(index, writer)
        del writer

    atomic_write(path, write)
    return FileRef(path.name, digest.hexdigest(), size, path.stat().st_mtime_ns)


class IndexFileDamaged(Exception):
    """An index file is missing, does not match its checksum or cannot be read."""


def _as_written(path: Path, ref: FileRef) -> bool:
    """Whether path still has the size and modification time its writer recorded."""
    try:
        st = path.stat()
    except OSError:
        return False
    return ref.mtime_ns is not None and (st.st_size, st.st_mtime_ns) == (ref.bytes,
                                                                         ref.mtime_ns)


def read_index_file(directory: Path, ref: FileRef, mmap: bool = False) -> faiss.IndexBinary:
    """Read an index file after checking its checksum; IndexFileDamaged says why not.

    A file mapped (mmap) is read only where searches look, and hashing it would read all
    of it (0.6 s for the 600 MB of a 100k catalogue, at every start of a query command):
    when it still has the size and modification time recorded when it was written, it is
    taken as written. Any change to it since is checked byte for byte, and
    `index verify` (which reads without mapping) always checks every byte."""
    path = directory / ref.name
    if not (mmap and _as_written(path, ref)):
        try:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise IndexFileDamaged(f"cannot read {path} ({exc.strerror or exc})") from None
        if digest.hexdigest() != ref.sha256:
            raise IndexFileDamaged(f"{path} does not match its checksum in the manifest")
    try:
        flags = faiss.IO_FLAG_MMAP if mmap else 0
        return faiss.read_index_binary(str(path), flags)
    except (RuntimeError, ValueError, MemoryError) as exc:
        text = str(exc).strip()
        detail = text.splitlines()[-1] if text else type(exc).__name__
        raise IndexFileDamaged(f"{path} cannot be read by FAISS ({detail[:200]})") from None
