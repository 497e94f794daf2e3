"""Hardened async downloader: one aiohttp session, bounded concurrency, manual redirects,
retries with full-jitter backoff, a size cap enforced while streaming, and image sniffing.

``Fetcher.fetch`` never raises for a problem with one URL: it returns a ``FetchResult`` whose
``status`` (one of ``FetchStatus``) and one-line ``reason`` say what happened.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urljoin

import aiohttp
from yarl import URL

from echoimage.config import Settings
from echoimage.features.sniff import sniff_format
from echoimage.types import FetchStatus, counted

K = TypeVar("K")

#: hook that vets a URL before it is requested; returns a refusal reason or None
UrlCheck = Callable[[str], Awaitable[str | None]]

DEFAULT_USER_AGENT: str = Settings.model_fields["user_agent"].default
_IMAGE_ACCEPT = ("image/avif,image/webp,image/heic,image/heif,image/png,image/jpeg,image/*;q=0.9,"
                 "*/*;q=0.5")
_PAGE_ACCEPT = "text/html,application/xhtml+xml;q=0.9,*/*;q=0.5"
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_SNIFF_BYTES = 16
_REASON_MAX = 300


#: fetch statuses that a later run should try again (transient by nature)
RETRYABLE_STATUSES = frozenset({
    FetchStatus.HTTP_ERROR, FetchStatus.TIMEOUT, FetchStatus.CONNECTION_ERROR,
})


def is_retryable_http(code: int) -> bool:
    """True for HTTP codes retried within one fetch: 408, 429 and every 5xx."""
    return code in (408, 429) or 500 <= code <= 599


#: the Settings a FetchConfig takes its limits from (see FetchConfig.from_settings)
_SETTINGS = Settings.model_fields


@dataclass(frozen=True)
class FetchConfig:
    """Limits and policy of a Fetcher. Times are in seconds, sizes in bytes.

    The timeouts apply to each request (one redirect hop, one try); ``check_url`` is awaited
    for the first URL and every redirect target and returns a refusal reason or None. The
    limits that are settings (concurrency, per_host, total_timeout, max_bytes) default to
    the defaults of `Settings` (``http_concurrency``, ``http_per_host``, ``http_timeout``,
    ``max_bytes``); a run builds its config with `from_settings`.
    """

    concurrency: int = _SETTINGS["http_concurrency"].default
    per_host: int = _SETTINGS["http_per_host"].default
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    total_timeout: float = _SETTINGS["http_timeout"].default
    retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_redirects: int = 5
    max_bytes: int = _SETTINGS["max_bytes"].default
    user_agent: str = DEFAULT_USER_AGENT
    require_image: bool = True
    check_url: UrlCheck | None = None

    @classmethod
    def from_settings(cls, settings: Settings, **changes: Any) -> FetchConfig:
        """The fetch limits of settings (its max_bytes, http_timeout, http_concurrency,
        http_per_host and user_agent), with changes (``require_image=False``, …)."""
        return cls(**{"concurrency": settings.http_concurrency,
                      "per_host": settings.http_per_host,
                      "total_timeout": settings.http_timeout, "max_bytes": settings.max_bytes,
                      "user_agent": settings.user_agent, **changes})

    def __post_init__(self) -> None:
        for name in ("concurrency", "per_host", "max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("connect_timeout", "read_timeout", "total_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("retries", "backoff_base", "backoff_max", "max_redirects"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclass(frozen=True)
class FetchResult:
    """What became of one URL: the bytes when status is "ok", otherwise a one-line reason."""

    url: str
    status: str
    data: bytes | None = None
    reason: str | None = None
    http_status: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    final_url: str | None = None  # last URL of the redirect chain (requested or refused)
    attempts: int = 0  # tries of the whole chain: 1 + retries used
    elapsed_s: float = 0.0
    wait_s: float = 0.0  # time spent in requests and body reads, not in backoff sleeps
    #: a body over the cap (too-large): its size as declared, or at least what was read
    nbytes: int | None = None

    @property
    def ok(self) -> bool:
        """True when the body was fetched."""
        return self.status == FetchStatus.OK

    @property
    def retryable(self) -> bool:
        """True when a later run should try this URL again."""
        return self.status in RETRYABLE_STATUSES


@dataclass(frozen=True)
class _Outcome:
    """One pass over the redirect chain (internal)."""

    status: str
    reason: str | None = None
    data: bytes | None = None
    http_status: int | None = None
    etag: str | None = None
    last_modified: str | None = None
    content_type: str | None = None
    final_url: str | None = None
    retry: bool = False
    retry_after: float | None = None
    nbytes: int | None = None  # a body over the cap: its declared size, or what was read


def scheme_refusal(url: str, scheme: str) -> str:
    """Why a URL of this scheme is not fetched; a host written without its scheme
    (``127.0.0.1:8101``, ``shop.example/a.jpg``, where yarl reads a scheme or none) is
    told what it was taken for."""
    said = f"unsupported scheme {scheme or '(none)'!r}: only http and https are fetched"
    host = scheme or url.split("/", 1)[0]  # "127.0.0.1" of 127.0.0.1:8101, not "mailto"
    if "://" not in url and ("." in host or host == "localhost"):
        said += f" (for a web address, write http://{url})"
    return said


class AddressRefused(OSError):
    """A URL policy refused the address a host resolved to (raised by a guarded resolver,
    echoimage.fetch.ssrf; the fetch is then FetchStatus.REFUSED)."""


def _refusal(exc: BaseException) -> AddressRefused | None:
    """The AddressRefused behind a connection error (aiohttp wraps what its resolver
    raised), or None."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None or isinstance(seen, AddressRefused):
            return seen
        seen = getattr(seen, "os_error", None) or seen.__cause__
    return None


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _REASON_MAX else line[: _REASON_MAX - 1] + "…"


def _describe(exc: BaseException) -> str:
    msg = str(exc)
    return _one_line(f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__)


def url_problem(url: str) -> str | None:
    """Why url cannot be fetched (not http(s), no host, malformed), or None when it can."""
    if not url or not url.strip():
        return "empty URL"
    if any(ord(c) < 32 or ord(c) == 127 for c in url.strip()):
        return "malformed URL (control characters)"
    try:
        parsed = URL(url.strip())
    except (ValueError, TypeError) as exc:
        return _one_line(f"malformed URL ({exc})")
    scheme = parsed.scheme.lower()
    if scheme not in ("http", "https"):
        return scheme_refusal(url.strip(), scheme)
    host = parsed.raw_host
    if not host or any(c.isspace() for c in host):
        return "malformed URL (no valid host)"
    return None


def parse_retry_after(value: str | None, cap: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), capped."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isdigit():
        return min(float(value), cap)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - datetime.now(UTC)).total_seconds(), 0.0), cap)


def _normalise(url: str) -> str:
    """URL without fragment, as yarl canonicalises it (for redirect-loop detection)."""
    try:
        return str(URL(url).with_fragment(None))
    except ValueError:
        return url


class Fetcher:
    """Async context manager owning one aiohttp session; fetch() and fetch_many() use it."""

    def __init__(self, config: FetchConfig | None = None, check_url: UrlCheck | None = None,
                 *, rng: random.Random | None = None) -> None:
        config = config or FetchConfig()
        if check_url is not None:
            config = replace(config, check_url=check_url)
        self.config = config
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        cfg = self.config
        connector = aiohttp.TCPConnector(limit=cfg.concurrency, limit_per_host=cfg.per_host)
        timeout = aiohttp.ClientTimeout(
            total=cfg.total_timeout, sock_connect=cfg.connect_timeout,
            sock_read=cfg.read_timeout,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": cfg.user_agent},
            auto_decompress=True,
            cookie_jar=aiohttp.DummyCookieJar(),  # a crawl must not accumulate cookies
            trust_env=False,
        )
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, url: str, etag: str | None = None,
                    last_modified: str | None = None) -> FetchResult:
        """Fetch one URL, with retries and redirects. Never raises for a per-URL problem."""
        if self._session is None:
            raise RuntimeError("Fetcher is not open; use 'async with Fetcher(...)'")
        start = time.monotonic()
        cfg = self.config
        headers = {"Accept": _IMAGE_ACCEPT if cfg.require_image else _PAGE_ACCEPT}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        waited = [0.0]
        attempts = 0
        while True:
            attempts += 1
            try:
                out = await self._chain(url.strip() if url else url, headers, waited)
            except Exception as exc:  # the contract: never raise for a per-URL problem
                out = _Outcome(FetchStatus.CONNECTION_ERROR, f"unexpected {_describe(exc)}")
            if not out.retry or attempts > cfg.retries:
                break
            if out.retry_after is not None:
                delay = out.retry_after
            else:
                ceiling = min(cfg.backoff_max, cfg.backoff_base * 2.0 ** min(attempts - 1, 60))
                delay = self._rng.uniform(0.0, ceiling)
            await asyncio.sleep(delay)
        reason = out.reason
        if out.retry and attempts > 1 and reason:
            reason = f"{reason} (after {attempts} attempts)"
        new_etag, new_lm = out.etag, out.last_modified
        if out.status == FetchStatus.NOT_MODIFIED:  # a 304 may omit the validators
            new_etag, new_lm = new_etag or etag, new_lm or last_modified
        return FetchResult(
            url=url,
            status=out.status,
            data=out.data,
            reason=reason,
            http_status=out.http_status,
            etag=new_etag,
            last_modified=new_lm,
            content_type=out.content_type,
            final_url=out.final_url,
            attempts=attempts,
            elapsed_s=time.monotonic() - start,
            wait_s=waited[0],
            nbytes=out.nbytes,
        )

    async def _chain(self, url: str, headers: dict[str, str], waited: list[float]) -> _Outcome:
        """One attempt: follow redirects by hand, vetting every hop."""
        cfg = self.config
        current = url
        seen = {_normalise(current)}
        hops = 0
        while True:
            problem = url_problem(current)
            if problem is not None:
                where = "" if hops == 0 else f"redirect to {current!r}: "
                return _Outcome(FetchStatus.BAD_URL, _one_line(where + problem),
                                final_url=current)
            if cfg.check_url is not None:
                try:
                    refusal = await cfg.check_url(current)
                except Exception as exc:  # a failing hook is a per-URL problem too
                    return _Outcome(FetchStatus.CONNECTION_ERROR,
                                    f"URL check failed: {_describe(exc)}",
                                    final_url=current, retry=True)
                if refusal is not None:
                    return _Outcome(FetchStatus.BAD_URL, _one_line(f"refused {current}: {refusal}"),
                                    final_url=current)
            out, location = await self._hop(current, headers, waited)
            if location is None:
                return out
            try:
                target = urljoin(current, location.strip())
            except ValueError as exc:
                return _Outcome(FetchStatus.BAD_URL, f"bad redirect location: {_describe(exc)}",
                                http_status=out.http_status, final_url=current)
            hops += 1
            key = _normalise(target)
            if key in seen:
                return _Outcome(FetchStatus.REDIRECT_LOOP,
                                _one_line(f"redirect loop: {current} redirects back to "
                                          f"{target} (after {counted(hops, 'redirect')})"),
                                http_status=out.http_status, final_url=target)
            if hops > cfg.max_redirects:
                return _Outcome(FetchStatus.TOO_MANY_REDIRECTS,
                                f"too many redirects: more than {cfg.max_redirects}",
                                http_status=out.http_status, final_url=target)
            seen.add(key)
            current = target

    async def _hop(self, url: str, headers: dict[str, str], waited: list[float]
                   ) -> tuple[_Outcome, str | None]:
        """One request. Returns (outcome, redirect location or None)."""
        assert self._session is not None
        t0 = time.monotonic()
        try:
            async with self._session.get(url, headers=headers, allow_redirects=False) as resp:
                code = resp.status
                common = {
                    "http_status": code,
                    "final_url": url,
                    "content_type": resp.headers.get("Content-Type"),
                    "etag": resp.headers.get("ETag"),
                    "last_modified": resp.headers.get("Last-Modified"),
                }
                if code in _REDIRECT_CODES:
                    location = resp.headers.get("Location")
                    if location:
                        return _Outcome(FetchStatus.HTTP_ERROR, **common), location
                    return _Outcome(FetchStatus.HTTP_ERROR,
                                    f"HTTP {code} redirect without a Location", **common), None
                if code == 304:
                    return _Outcome(FetchStatus.NOT_MODIFIED, **common), None
                if code in (404, 410):
                    return _Outcome(FetchStatus.GONE, f"HTTP {code} {resp.reason or ''}".strip(),
                                    **common), None
                if code >= 300 or code < 200:
                    retry = is_retryable_http(code)
                    after = (parse_retry_after(resp.headers.get("Retry-After"),
                                               self.config.backoff_max) if retry else None)
                    reason = _one_line(f"HTTP {code} {resp.reason or ''}")
                    return _Outcome(FetchStatus.HTTP_ERROR, reason, retry=retry,
                                    retry_after=after, **common), None
                return await self._read_body(resp, common), None
        except TimeoutError as exc:
            return _Outcome(FetchStatus.TIMEOUT, _one_line(f"timed out: {exc}" if str(exc)
                                                            else "timed out"),
                            final_url=url, retry=True), None
        except aiohttp.InvalidURL as exc:
            return _Outcome(FetchStatus.BAD_URL, f"malformed URL: {_describe(exc)}",
                            final_url=url), None
        except aiohttp.ClientSSLError as exc:
            return _Outcome(FetchStatus.CONNECTION_ERROR, f"TLS error: {_describe(exc)}",
                            final_url=url), None
        except (aiohttp.ClientError, OSError) as exc:
            refused = _refusal(exc)
            if refused is not None:
                return _Outcome(FetchStatus.REFUSED, _one_line(str(refused)), final_url=url
                                ), None
            return _Outcome(FetchStatus.CONNECTION_ERROR, _describe(exc), final_url=url,
                            retry=True), None
        finally:
            waited[0] += time.monotonic() - t0

    async def _read_body(self, resp: aiohttp.ClientResponse, common: dict[str, Any]) -> _Outcome:
        """Stream the body, aborting as soon as it is too large or plainly not an image."""
        cfg = self.config
        cap = cfg.max_bytes
        declared = resp.content_length
        if declared is not None and declared > cap:
            resp.close()
            return _Outcome(FetchStatus.TOO_LARGE,
                            f"Content-Length {declared:,} exceeds the cap of {cap:,} bytes",
                            nbytes=declared, **common)
        buf = bytearray()
        sniffed = not cfg.require_image
        async for chunk in resp.content.iter_any():
            buf += chunk
            if len(buf) > cap:
                resp.close()  # drop the connection rather than drain the rest
                return _Outcome(FetchStatus.TOO_LARGE,
                                f"body exceeds the cap of {cap:,} bytes", nbytes=len(buf),
                                **common)
            if not sniffed and len(buf) >= _SNIFF_BYTES:
                sniffed = True
                if sniff_format(bytes(buf[:_SNIFF_BYTES])) is None:
                    resp.close()
                    return _Outcome(FetchStatus.NOT_AN_IMAGE,
                                    _not_image_reason(bytes(buf), common["content_type"]),
                                    **common)
        data = bytes(buf)
        if not sniffed and sniff_format(data) is None:
            return _Outcome(FetchStatus.NOT_AN_IMAGE,
                            _not_image_reason(data, common["content_type"]), **common)
        return _Outcome(FetchStatus.OK, data=data, **common)

    async def fetch_many(self, items: Iterable[tuple[K, str, str | None, str | None]]
                         ) -> AsyncIterator[tuple[K, FetchResult]]:
        """Fetch (key, url, etag, last_modified) items, yielding (key, result) as they finish.

        At most 2 x concurrency items are taken from ``items`` ahead of the consumer, and a
        semaphore lets at most ``concurrency`` of them talk to the network at once. A consumer
        that stops early should close the generator (``contextlib.aclosing``) to cancel the rest.
        """
        limit = self.config.concurrency
        sem = asyncio.Semaphore(limit)

        async def run(key: K, url: str, etag: str | None, lm: str | None
                      ) -> tuple[K, FetchResult]:
            async with sem:
                return key, await self.fetch(url, etag, lm)

        source = iter(items)
        pending: set[asyncio.Task[tuple[K, FetchResult]]] = set()
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < 2 * limit:
                    try:
                        key, url, etag, lm = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.add(asyncio.create_task(run(key, url, etag, lm)))
                if not pending:
                    return
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)


def _not_image_reason(head: bytes, content_type: str | None) -> str:
    if not head:
        return "empty body"
    served = f" served as {content_type}" if content_type else ""
    if head.lstrip()[:1] == b"<":
        return _one_line(f"not an image (looks like HTML/XML){served}")
    return _one_line(f"not an image (unknown signature {head[:8].hex()}){served}")


def fetch_bytes(url: str, config: FetchConfig | None = None) -> FetchResult:
    """Fetch one URL synchronously (for the CLI query path); not for use inside a loop."""

    async def one() -> FetchResult:
        async with Fetcher(config) as fetcher:
            return await fetcher.fetch(url)

    return asyncio.run(one())


#: how a run makes its fetcher from a config (`Fetcher`, or the web server's guarded one)
FetcherFactory = Callable[[FetchConfig], Fetcher]
