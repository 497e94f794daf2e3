"""Catalogue sources → CatalogueItems. Parsing only; fetching a remote catalogue file is
the caller's job (it passes the bytes).

A source is a directory (searched recursively), an ImageSpaceDB ``images.json``
(``[{"url": ...}, ...]``; extra keys become metadata), JSON Lines or CSV with a ``url``
column, a text file with one path or URL per line, a single image file, or a URL.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from echoimage.errors import CatalogueError
from echoimage.fetch.local import is_url, local_path, path_url
from echoimage.types import CatalogueItem

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".avif",
    ".pgm", ".ppm", ".pnm", ".jfif",
})


def source_kind(source: str) -> str:
    """What kind of catalogue source a string names: url, dir, json, jsonl, csv, image, text."""
    if is_url(source):
        try:
            path = urlparse(source).path.lower()
        except ValueError:  # a malformed URL: fetched as an image, refused with its reason
            return "url"
        for ext, kind in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"),
                          (".csv", "csv"), (".txt", "text")):
            if path.endswith(ext):
                return kind
        return "url"
    p = Path(source)
    if p.is_dir():
        return "dir"
    if not p.exists():
        raise CatalogueError(f"catalogue source not found: {source}")
    ext = p.suffix.lower()
    if ext in (".jsonl", ".ndjson"):
        return "jsonl"
    if ext == ".json":
        return "json"
    if ext == ".csv":
        return "csv"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return "text"


def _resolve(entry: str, base: str | None) -> str:
    """A URL as is; a local path made absolute (relative to the catalogue file's folder).
    An entry that is neither (a malformed URL, a NUL byte in a path) is kept as written:
    reading it later says why it is no image."""
    entry = entry.strip()
    if is_url(entry):
        return entry
    try:
        if entry.startswith("file://"):
            entry = local_path(entry)
        if base is not None and is_url(base):
            from urllib.parse import urljoin

            return urljoin(base, entry)
        p = Path(entry).expanduser()
        if not p.is_absolute() and base is not None:
            p = Path(base) / p
        return path_url(_absolute(p))
    except (ValueError, RuntimeError):  # a NUL byte; "~nosuchuser/..."
        return entry


def _absolute(path: Path) -> Path:
    """path made absolute with its symbolic links resolved where they can be (a link
    loop or a dangling link stays as it is: reading it says why it is no image)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def walk_dir(root: Path, source: str) -> Iterator[CatalogueItem]:
    """Files with an image's extension below root, recursively, in a stable (sorted) order.

    Names that are not valid UTF-8 are kept (as ``file://`` URLs, see fetch.local); special
    files are listed too, so that each is recorded with the reason it is no image. A folder
    that cannot be read is logged and skipped.
    """
    def unreadable(exc: OSError) -> None:
        log.warning("cannot read folder %s: %s", path_url(exc.filename or root),
                    exc.strerror or exc)

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames.sort()
        for name in sorted(filenames):
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS and not name.startswith("."):
                yield CatalogueItem(path_url(_absolute(Path(dirpath) / name)), source)


def parse_catalogue(data: bytes, kind: str, source: str, base: str | None
                    ) -> Iterator[CatalogueItem]:
    """Items of a catalogue file's content. base resolves relative entries."""
    text = data.decode("utf-8-sig", errors="replace")
    if kind == "json":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise CatalogueError(f"{source}: not valid JSON ({exc})") from None
        if isinstance(doc, dict) and isinstance(doc.get("images"), list):
            doc = doc["images"]
        if not isinstance(doc, list):
            raise CatalogueError(f"{source}: expected a JSON list of {{\"url\": ...}} objects")
        for n, entry in enumerate(doc):
            yield _entry(entry, source, base, f"entry {n}")
    elif kind == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entry = json.loads(line)
                except ValueError:
                    raise CatalogueError(f"{source}: line {n} is not valid JSON") from None
                yield _entry(entry, source, base, f"line {n}")
    elif kind == "csv":
        reader = csv.DictReader(io.StringIO(text))
        n = 1
        try:
            if not reader.fieldnames or "url" not in reader.fieldnames:
                raise CatalogueError(f"{source}: CSV needs a 'url' column")
            for n, row in enumerate(reader, 2):
                yield _entry(dict(row), source, base, f"row {n}")
        except csv.Error as exc:
            raise CatalogueError(f"{source}: row {n + 1} is not valid CSV ({exc})") from None
    elif kind == "text":
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                yield CatalogueItem(_resolve(line, base), source)
    else:
        raise CatalogueError(f"{source}: unknown catalogue kind {kind!r}")


def _entry(entry: object, source: str, base: str | None, where: str) -> CatalogueItem:
    if isinstance(entry, str):
        return CatalogueItem(_resolve(entry, base), source)
    if isinstance(entry, dict) and isinstance(entry.get("url"), str) and entry["url"].strip():
        meta = {k: v for k, v in entry.items() if k != "url" and v not in (None, "")}
        return CatalogueItem(_resolve(entry["url"], base), source, meta)
    raise CatalogueError(f"{source}: {where} has no \"url\"")


def read_local_source(source: str) -> tuple[str, str, Iterator[CatalogueItem]]:
    """(canonical uri, kind, items) of a local source; URL sources are not handled here."""
    kind = source_kind(source)
    if kind in ("url",) or is_url(source):
        raise CatalogueError(f"{source} is a URL; fetch it first")
    path = _absolute(Path(source))
    uri = path_url(path)
    if kind == "dir":
        return uri, kind, walk_dir(path, uri)
    if kind == "image":
        return uri, kind, iter([CatalogueItem(uri, uri)])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CatalogueError(f"cannot read {source}: {exc.strerror}") from None
    return uri, kind, parse_catalogue(data, kind, uri, str(path.parent))


def source_uri(ref: str) -> str:
    """How the store names a source given as a URL or a (relative) path."""
    return ref if is_url(ref) else path_url(_absolute(Path(ref)))
