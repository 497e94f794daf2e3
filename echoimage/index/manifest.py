"""Sidecar JSON next to every index file: what it holds and what store state it reflects."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from echoimage.errors import IndexFileError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Manifest:
    """Parameters, entry count, schema revision and checksum of one index file."""

    kind: str
    ntotal: int  # entries in the index (images for the hash index, descriptors for local)
    images: int  # indexed images of the store it was built from
    max_id: int
    store_id: str  # the store it was built from (made with the store)
    seq: int  # the store's last change number it includes
    schema_revision: str
    sha256: str
    built_at: str
    params: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: Path) -> str:
    """Checksum of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write data to path through a temp file, fsync and rename. IndexFileError with a
    one-line reason when it cannot be written (the temp file is removed, the old file kept)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise IndexFileError(f"disk full while writing the index file {path}") from None
        raise IndexFileError(f"cannot write the index file {path}: "
                             f"{exc.strerror or exc}") from None


def ensure_index_dir(directory: Path) -> None:
    """Make the index directory; a file in its place (not ours: the directory holds only
    derived files) is moved aside, with a log line, so the index can be rebuilt."""
    if directory.exists() and not directory.is_dir():
        aside = directory.with_name(f"{directory.name}.moved-aside-{time.time_ns()}")
        log.warning("%s is not a directory: moved it to %s and rebuilding the index there",
                    directory, aside)
        try:
            directory.rename(aside)
        except OSError as exc:
            raise IndexFileError(f"{directory} is not a directory and cannot be moved aside: "
                                 f"{exc.strerror or exc}") from None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IndexFileError(f"cannot create the index directory {directory}: "
                             f"{exc.strerror or exc}") from None


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Atomically write the manifest JSON."""
    atomic_write_bytes(path, json.dumps(asdict(manifest), indent=2).encode())


def read_manifest(path: Path) -> Manifest | None:
    """The manifest at path, or None if missing or unreadable."""
    try:
        data = json.loads(path.read_text())
        return Manifest(**data)
    except (OSError, ValueError, TypeError):  # missing, not JSON, an older layout
        return None
