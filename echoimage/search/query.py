"""Read a query argument: a local file path or an http(s) URL → bytes."""

from __future__ import annotations

from echoimage.config import Settings
from echoimage.errors import FetchError, ImageTooLargeError
from echoimage.fetch.local import LocalStatus, is_url, path_url, read_local
from echoimage.types import FetchStatus


def read_query(arg: str, settings: Settings) -> bytes:
    """The bytes of a query image; FetchError/DecodeError with a one-line reason."""
    if is_url(arg):
        from echoimage.fetch.client import FetchConfig, fetch_bytes

        res = fetch_bytes(arg, FetchConfig.from_settings(settings))
        if res.status != FetchStatus.OK or res.data is None:
            raise FetchError(f"cannot fetch {arg}: {res.reason or res.status}")
        return res.data
    got = read_local(arg, settings.max_bytes)
    if got.data is not None:
        return got.data
    if got.status == LocalStatus.TOO_LARGE:
        raise ImageTooLargeError(got.reason)
    if got.status == LocalStatus.NOT_FOUND:
        raise FetchError(f"no such file: {path_url(arg)}")
    raise FetchError(f"{path_url(arg)}: {got.reason}")
