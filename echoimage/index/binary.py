"""The hash shortlist: a FAISS IndexBinaryIDMap2 over 64-bit pHashes keyed by image id."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np

from echoimage.index.manifest import (
    Manifest,
    atomic_write_bytes,
    ensure_index_dir,
    read_manifest,
    write_manifest,
)
from echoimage.store.repo import StoreState

log = logging.getLogger(__name__)

HASH_BITS = 64
INDEX_NAME = "phash.faissbin"


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


@dataclass(frozen=True)
class Hits:
    """Shortlist answer for each query row: ids and Hamming distances, -1 padding removed."""

    ids: list[np.ndarray]
    distances: list[np.ndarray]


def search(index: faiss.IndexBinary, queries: np.ndarray, k: int) -> Hits:
    """k nearest codes for each query row; an empty index gives empty answers."""
    nq = queries.shape[0]
    if index.ntotal == 0 or k <= 0:
        empty = np.zeros(0, np.int64)
        return Hits([empty] * nq, [empty] * nq)
    k = min(k, index.ntotal)
    dist, ids = index.search(np.ascontiguousarray(queries, dtype=np.uint8), k)
    out_i, out_d = [], []
    for row_d, row_i in zip(dist, ids, strict=True):
        keep = row_i >= 0
        out_i.append(row_i[keep])
        out_d.append(row_d[keep].astype(np.int64))
    return Hits(out_i, out_d)


def make_manifest(index: faiss.IndexBinary, name: str, state: StoreState,
                  schema_revision: str, params: dict | None = None, sha256: str = ""
                  ) -> Manifest:
    """The manifest of an index built from the store in `state` (sha256 of its file, or ""
    for an index held only in memory)."""
    return Manifest(
        kind=name, ntotal=int(index.ntotal), images=state.count, max_id=state.max_id,
        store_id=state.store_id, seq=state.seq, schema_revision=schema_revision,
        sha256=sha256, built_at=datetime.now(UTC).isoformat(), params=params or {},
    )


def save_index(index: faiss.IndexBinary, directory: Path, name: str, state: StoreState,
               schema_revision: str, params: dict | None = None) -> Manifest:
    """Write index and manifest atomically (the index first, then its manifest)."""
    ensure_index_dir(directory)
    path = directory / name
    data = faiss.serialize_index_binary(index).tobytes()
    atomic_write_bytes(path, data)
    manifest = make_manifest(index, name, state, schema_revision, params,
                             hashlib.sha256(data).hexdigest())
    write_manifest(directory / f"{name}.json", manifest)
    return manifest


def load_index(directory: Path, name: str) -> tuple[faiss.IndexBinary, Manifest] | None:
    """The index and its manifest, or None when either is missing, unreadable or damaged, or
    they disagree (logged: the caller rebuilds the index from the store)."""
    path = directory / name
    manifest = read_manifest(directory / f"{name}.json")
    if manifest is None:
        log.info("no usable manifest for index %s", path)
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.warning("cannot read index file %s (%s): it will be rebuilt from the store",
                    path, exc.strerror or exc)
        return None
    if hashlib.sha256(data).hexdigest() != manifest.sha256:
        log.warning("index file %s does not match its manifest's checksum: it will be "
                    "rebuilt from the store", path)
        return None
    try:
        index = faiss.deserialize_index_binary(np.frombuffer(data, dtype=np.uint8))
    except (RuntimeError, ValueError, MemoryError) as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        log.warning("index file %s cannot be read by FAISS (%s): it will be rebuilt from "
                    "the store", path, detail[:200])
        return None
    if index.ntotal != manifest.ntotal:
        log.warning("index file %s holds %d entries, its manifest says %d: it will be "
                    "rebuilt from the store", path, index.ntotal, manifest.ntotal)
        return None
    return index, manifest


def is_fresh(manifest: Manifest, state: StoreState, schema_revision: str) -> bool:
    """True when the manifest describes exactly the store's indexed set: the same store,
    the same last change, the same count."""
    return (manifest.store_id == state.store_id and manifest.seq == state.seq
            and manifest.images == state.count and manifest.max_id == state.max_id
            and manifest.schema_revision == schema_revision)


def belongs_to(manifest: Manifest, state: StoreState) -> bool:
    """True when the index was built from this store, at or before its last change (files
    copied from another store, or newer than a store restored from a backup, are not)."""
    return manifest.store_id == state.store_id and manifest.seq <= state.seq
