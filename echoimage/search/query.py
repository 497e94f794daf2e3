"""Read a query argument: a local file path or an http(s) URL → bytes."""

from __future__ import annotations

from pathlib import Path

from echoimage.catalogue import is_url
from echoimage.config import Settings
from echoimage.errors import DecodeError, FetchError


def read_query(arg: str, settings: Settings) -> bytes:
    """The bytes of a query image; FetchError/DecodeError with a one-line reason."""
    if is_url(arg):
        from echoimage.fetch.client import FetchConfig, fetch_bytes

        res = fetch_bytes(arg, FetchConfig(max_bytes=settings.max_bytes,
                                           total_timeout=settings.http_timeout))
        if res.status != "ok" or res.data is None:
            raise FetchError(f"cannot fetch {arg}: {res.reason or res.status}")
        return res.data
    path = Path(arg)
    try:
        size = path.stat().st_size
        if size > settings.max_bytes:
            raise DecodeError(f"file is {size:,} bytes, over the cap of {settings.max_bytes:,}")
        return path.read_bytes()
    except FileNotFoundError:
        raise FetchError(f"no such file: {arg}") from None
    except IsADirectoryError:
        raise FetchError(f"is a directory: {arg}") from None
    except OSError as exc:
        raise FetchError(f"cannot read {arg}: {exc.strerror}") from None
