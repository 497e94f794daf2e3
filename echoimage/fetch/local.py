"""Local files: how the store names them (and tells them from URLs), and reading one
safely.

Only regular files (and symbolic links to them) are images. A named pipe, a socket or a
device with an image's name is refused without being waited on: the file is opened with
``O_NONBLOCK`` and checked with ``fstat`` before a byte is read. A file whose name is not
valid UTF-8 is named by a ``file://`` URL with its raw bytes percent-encoded, so that the
store (which holds text) can record it and the reader finds the same bytes again.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote, unquote_to_bytes, urlsplit


def is_url(s: str) -> bool:
    """True for http(s) URLs (well-formed or not: a malformed one is refused per image by the
    fetcher, with its reason); anything else names a local file."""
    return s[:8].lower().startswith(("http://", "https://"))


def path_url(path: str | os.PathLike[str]) -> str:
    """The name the store records for a local file: its path, or a ``file://`` URL when
    the path is not valid UTF-8."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "file://" + quote(os.fsencode(text))
    return text


def local_path(url: str) -> str:
    """Inverse of path_url(): the path to open (undecodable bytes as surrogate escapes)."""
    if url.startswith("file://"):
        return os.fsdecode(unquote_to_bytes(urlsplit(url).path))
    return url


def file_marker(url: str) -> str | None:
    """A cheap change marker for a local file (size and modification time), None when it
    cannot be read."""
    try:
        st = os.stat(local_path(url))
    except (OSError, ValueError):
        return None
    return f"{st.st_size}-{st.st_mtime_ns}"


class LocalStatus(StrEnum):
    """Why a local file could not be read."""

    NOT_FOUND = "not-found"
    NOT_A_FILE = "not-a-file"
    TOO_LARGE = "too-large"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class LocalRead:
    """The bytes of a local file, or why there are none (a one-line reason)."""

    data: bytes | None
    status: LocalStatus | None = None
    reason: str = ""
    size: int | None = None  # a file over the cap: its size (at least)


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def read_local(url: str, max_bytes: int, head: bool = False) -> LocalRead:
    """Read a regular file of at most max_bytes; never blocks on a special file. With head,
    only its first max_bytes are read (a longer file is no error)."""
    path = local_path(url)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return LocalRead(None, LocalStatus.NOT_FOUND, "file not found")
    except IsADirectoryError:
        return LocalRead(None, LocalStatus.NOT_A_FILE, "not a regular file: a directory")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return LocalRead(None, LocalStatus.NOT_A_FILE,
                             "not a regular file: a symbolic link loop")
        if exc.errno in (errno.ENXIO, errno.ENODEV):  # a socket or a device without a reader
            return LocalRead(None, LocalStatus.NOT_A_FILE, "not a regular file")
        return LocalRead(None, LocalStatus.UNREADABLE,
                         f"cannot read file: {exc.strerror or exc}")
    except ValueError as exc:  # a NUL byte in the path
        return LocalRead(None, LocalStatus.UNREADABLE, f"cannot read file: {exc}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
            return LocalRead(None, LocalStatus.NOT_A_FILE, f"not a regular file: {kind}")
        if head:
            return LocalRead(os.read(fd, max_bytes))
        if st.st_size > max_bytes:
            return LocalRead(None, LocalStatus.TOO_LARGE,
                             f"file is {st.st_size:,} bytes, over the cap of {max_bytes:,}",
                             st.st_size)
        chunks = []
        total = 0
        while chunk := os.read(fd, 1 << 20):
            total += len(chunk)
            if total > max_bytes:  # grew while being read
                return LocalRead(None, LocalStatus.TOO_LARGE,
                                 f"file is over the cap of {max_bytes:,} bytes", total)
            chunks.append(chunk)
        return LocalRead(b"".join(chunks))
    except OSError as exc:
        return LocalRead(None, LocalStatus.UNREADABLE, f"cannot read file: {exc.strerror or exc}")
    finally:
        os.close(fd)
