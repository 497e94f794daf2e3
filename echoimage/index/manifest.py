"""The index directory's manifest: which files make up the index, what store and which change
they include, and how the local index was trained, compacted and laid out.

The index is a base (a full build, or the last compaction) plus segments, each holding the
images that changed in a range of the store's change numbers and the ids it replaces in the
parts before it (the Lucene way). Every file is written atomically (temp file, fsync,
rename) before the manifest that names it; the manifest is replaced last, so a reader sees
either the old index or the new one, never a mixture.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from echoimage.errors import IndexFileError

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
#: manifests of another format (or none) mean: rebuild
FORMAT = 2


class Layout(StrEnum):
    """How the local-feature index is organised."""

    FLAT = "flat"  # searched exhaustively (small catalogues)
    IVF = "ivf"  # inverted lists under a trained quantizer


@dataclass(frozen=True)
class FileRef:
    """One file of the index: its name in the index directory, checksum and size, and its
    modification time when written (None in manifests from before it was recorded)."""

    name: str
    sha256: str
    bytes: int
    mtime_ns: int | None = None


@dataclass(frozen=True)
class PartInfo:
    """A base or a segment: the changes (from_seq, seq] of the store it holds."""

    name: str
    from_seq: int
    seq: int
    images: int  # images with an entry in this part
    descriptors: int  # local-index entries
    touched: int  # ids whose entries in older parts this part replaces or removes
    files: dict[str, FileRef] = field(default_factory=dict)


@dataclass(frozen=True)
class IndexManifest:
    """The whole index as of one change of one store."""

    store_id: str
    seq: int  # the store's last change number the index includes
    schema_revision: str
    images: int  # live images (store's indexed images as of seq)
    params: dict[str, Any]  # what the index was built for (must match the settings)
    layout: Layout
    base: PartInfo
    segments: tuple[PartInfo, ...] = ()
    trained: dict[str, Any] | None = None  # IVF: descriptors, nlist, seq, at, file
    last_compaction: dict[str, Any] | None = None
    last_retrain: dict[str, Any] | None = None
    updated_at: str = ""
    format: int = FORMAT

    @property
    def parts(self) -> tuple[PartInfo, ...]:
        """Base first, then the segments, oldest first."""
        return (self.base, *self.segments)

    def file_names(self) -> set[str]:
        """Every file the index is made of."""
        names = {ref.name for part in self.parts for ref in part.files.values()}
        if self.trained and self.trained.get("file"):
            names.add(self.trained["file"]["name"])
        return names

    def to_json(self) -> str:
        """JSON text of the manifest."""
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> IndexManifest:
        """Inverse of to_json(); ValueError/TypeError/KeyError on anything else."""
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError("not a manifest of this format")

        def part(d: dict[str, Any]) -> PartInfo:
            files = {k: FileRef(**v) for k, v in d.pop("files").items()}
            return PartInfo(**d, files=files)

        doc["layout"] = Layout(doc["layout"])
        doc["base"] = part(doc["base"])
        doc["segments"] = tuple(part(s) for s in doc["segments"])
        return cls(**doc)

    def with_updates(self, **changes: Any) -> IndexManifest:
        """A copy with fields replaced (and updated_at set to now)."""
        from datetime import UTC, datetime

        return replace(self, **changes, updated_at=datetime.now(UTC).isoformat())


def read_manifest(directory: Path) -> IndexManifest | None:
    """The manifest in an index directory, or None if missing, unreadable or of an older
    format (logged when it exists but cannot be used)."""
    path = directory / MANIFEST_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read the index manifest %s (%s): the index will be rebuilt",
                    path, exc.strerror or exc)
        return None
    try:
        return IndexManifest.from_json(data.decode("utf-8"))
    except (ValueError, TypeError, KeyError, AttributeError):
        log.warning("the index manifest %s is damaged or of another version: the index "
                    "will be rebuilt", path)
        return None


def file_sha256(path: Path) -> str:
    """Checksum of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _index_file_error(exc: OSError, path: Path) -> IndexFileError:
    if exc.errno == errno.ENOSPC:
        return IndexFileError(f"disk full while writing the index file {path}")
    return IndexFileError(f"cannot write the index file {path}: {exc.strerror or exc}")


def atomic_write(path: Path, write: Any) -> None:
    """Call write(binary file) on a temp file beside path, fsync, rename over path.
    IndexFileError with a one-line reason when it cannot be written (the temp file is
    removed, an old file at path kept)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise _index_file_error(exc, path) from None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write data to path atomically (see atomic_write)."""
    atomic_write(path, lambda fh: fh.write(data))


def write_manifest(directory: Path, manifest: IndexManifest) -> None:
    """Atomically replace the manifest: the switch from one index to the next."""
    atomic_write_bytes(directory / MANIFEST_NAME, manifest.to_json().encode())


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
