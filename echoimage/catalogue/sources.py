"""Catalogue sources → CatalogueItems. Parsing only; fetching a remote catalogue file is
the caller's job (it passes the bytes).

A source is a directory (searched recursively), an ImageSpaceDB ``images.json``
(``[{"url": ...}, ...]``; extra keys become metadata), JSON Lines or CSV with a ``url``
column, a text file with one path or URL per line, a single image file, or a URL.

A file is recognised by its content, not its name: an image (by its first bytes, whatever
its extension) is one image; a file is a catalogue only if it parses as one; anything else
(an SVG, a PDF, an HTML page saved to disk, binary data) is refused in one line that says
what it looks like, before any of it is recorded. A folder lists its images (by extension,
or by content for a file with another extension) and counts what it skipped and why.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from echoimage.errors import CatalogueError
from echoimage.features.sniff import looks_like, sniff_format
from echoimage.fetch.local import LocalStatus, is_url, local_path, path_url, read_local
from echoimage.types import CatalogueItem

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".avif",
    ".heic", ".heif", ".hif", ".pgm", ".ppm", ".pnm", ".jfif",
})


#: bytes of a file read to tell what it is
HEAD_BYTES = 4096
#: catalogue kinds named by a file's extension
_EXTENSION_KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv"}


def source_kind(source: str) -> str:
    """What kind of catalogue source a string names by itself: url, dir, json, jsonl, csv,
    image or text (a local file's content decides in the end: see read_local_source)."""
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
    loop or a dangling link keeps its own name, in its resolved folder: reading it says
    why it is no image; resolving it would name its missing target instead)."""
    try:
        return path.resolve(strict=True)
    except FileNotFoundError:  # missing, or a dangling link
        try:
            return path.parent.resolve() / path.name
        except (OSError, RuntimeError):
            return Path(os.path.abspath(path))
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


class FolderListing:
    """The images below a folder, recursively, in a stable (sorted) order, and the files
    skipped on the way (``skipped``: how many of each kind, counted while iterating).

    A file with an image's extension is listed whatever it holds (reading it says why it is
    no image, if it is not: a special file too); a file with another extension (or none)
    is listed when its first bytes are an image's, and skipped otherwise. Hidden files are
    passed over. Names that are not valid UTF-8 are kept (as ``file://`` URLs, see
    fetch.local). A folder that cannot be read is logged and skipped.
    """

    def __init__(self, root: Path, source: str) -> None:
        self.root = root
        self.source = source
        self.skipped: Counter[str] = Counter()

    def __iter__(self) -> Iterator[CatalogueItem]:
        self.skipped.clear()

        def unreadable(exc: OSError) -> None:
            log.warning("cannot read folder %s: %s", path_url(exc.filename or self.root),
                        exc.strerror or exc)

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=unreadable):
            dirnames.sort()
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                url = path_url(_absolute(Path(dirpath) / name))
                if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                    got = read_local(url, HEAD_BYTES, head=True)
                    if got.data is None:
                        self.skipped["special file" if got.status == LocalStatus.NOT_A_FILE
                                     else "unreadable"] += 1
                        continue
                    if sniff_format(got.data) is None:
                        self.skipped[looks_like(got.data)] += 1
                        continue
                yield CatalogueItem(url, self.source)



def walk_dir(root: Path, source: str) -> FolderListing:
    """The images below root (see FolderListing)."""
    return FolderListing(root, source)


def content_kind(data: bytes, source: str, hint: str | None = None) -> str:
    """What a file's bytes are as a catalogue source: "image", or the kind of catalogue
    (json, jsonl, csv, text) they parse as; hint is the kind its name suggests (json, jsonl
    and csv are then required to parse as such, with that kind's error). CatalogueError,
    naming what the bytes look like, for anything else."""
    if sniff_format(data[:HEAD_BYTES]) is not None:
        return "image"
    _require_text(data, source)
    if hint in ("json", "jsonl", "csv"):
        return hint
    text = data.decode("utf-8-sig", errors="replace").lstrip()
    if text.startswith(("[", "{")):
        try:
            json.loads(text)
        except ValueError:
            return "jsonl" if _is_json_lines(text) else "json"
        return "json"
    first = next((line for line in text.splitlines() if line.strip()), "")
    if "url" in next(csv.reader([first]), []):
        return "csv"
    return "text"


def _is_json_lines(text: str) -> bool:
    """True when every non-blank line of text is a JSON value."""
    for line in text.splitlines():
        if line.strip():
            try:
                json.loads(line)
            except ValueError:
                return False
    return True


def _require_text(data: bytes, source: str) -> None:
    """CatalogueError unless data is text (a catalogue's), naming what it looks like."""
    what = looks_like(data[:HEAD_BYTES])
    if what not in ("text", "an empty file"):
        raise CatalogueError(f"{source}: neither an image nor a catalogue file (looks like "
                             f"{what})")


def _is_entry(line: str) -> bool:
    """True for a line a list of images holds: a URL, a path with a folder in it, or a
    file name with an image's extension."""
    return (is_url(line) or line.startswith("file://") or "/" in line or "\\" in line
            or Path(line).suffix.lower() in IMAGE_EXTENSIONS)


def parse_catalogue(data: bytes, kind: str, source: str, base: str | None
                    ) -> Iterator[CatalogueItem]:
    """Items of a catalogue file's content. base resolves relative entries.

    Content that is not text (an image, a PDF, binary data) is refused whatever the kind,
    and a list of images must hold only URLs and paths: CatalogueError, in one line.
    """
    _require_text(data, source)
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
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                if not _is_entry(line):
                    raise CatalogueError(
                        f"{source}: not a list of images: line {n} is neither a URL nor an "
                        f"image's path ({line[:60]!r})")
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


def read_local_source(source: str, max_bytes: int = 1 << 30
                      ) -> tuple[str, str, FolderListing | list[CatalogueItem]]:
    """(canonical uri, kind, items) of a local source; URL sources are not handled here.

    A file is read (to at most max_bytes) and parsed here, so that a file that is no
    catalogue is refused before any of it is recorded; a folder is listed as it is iterated.
    """
    kind = source_kind(source)
    if kind in ("url",) or is_url(source):
        raise CatalogueError(f"{source} is a URL; fetch it first")
    path = _absolute(Path(source))
    uri = path_url(path)
    if kind == "dir":
        return uri, kind, walk_dir(path, uri)
    head = read_local(uri, HEAD_BYTES, head=True)
    if head.data is not None and sniff_format(head.data) is not None:
        return uri, "image", [CatalogueItem(uri, uri)]
    got = read_local(uri, max_bytes) if head.data is not None else head
    if got.data is None:
        raise CatalogueError(f"cannot read {source}: {got.reason}")
    if not got.data and path.suffix.lower() in IMAGE_EXTENSIONS:
        # an empty list of images is a catalogue (with nothing in it yet); an empty file
        # named as an image is an image that was not written
        raise CatalogueError(f"{source}: an empty file (not an image)")
    hint = _EXTENSION_KINDS.get(path.suffix.lower())
    kind = content_kind(got.data, uri, hint)
    return uri, kind, list(parse_catalogue(got.data, kind, uri, str(path.parent)))


def source_uri(ref: str) -> str:
    """How the store names a source given as a URL or a (relative) path."""
    return ref if is_url(ref) else path_url(_absolute(Path(ref)))
