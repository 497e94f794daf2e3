"""Fetcher against a real aiohttp server on 127.0.0.1: statuses, retries, caps, redirects."""

from __future__ import annotations

import asyncio
import gzip
import io
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from helpers import free_port
from PIL import Image

from echoimage import __version__
from echoimage.fetch.client import (
    RETRYABLE_STATUSES,
    FetchConfig,
    Fetcher,
    FetchResult,
    FetchStatus,
    fetch_bytes,
    parse_retry_after,
    url_problem,
)
from echoimage.fetch.ssrf import UrlPolicy

ETAG = '"v1"'
LAST_MODIFIED = "Wed, 01 Jan 2025 00:00:00 GMT"
HUGE_TOTAL = 4 * 1024 * 1024
HUGE_CHUNK = 8 * 1024


def _encode(fmt: str) -> bytes:
    img = Image.new("RGB", (64, 48), (200, 30, 30))
    for x in range(0, 64, 8):
        for y in range(48):
            img.putpixel((x, y), (0, 0, 255))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


PNG = _encode("PNG")
JPEG = _encode("JPEG")
HTML = b"<!doctype html><html><body><p>not an image at all</p></body></html>"

CFG = FetchConfig(
    connect_timeout=1.0, read_timeout=2.0, total_timeout=5.0, retries=2,
    backoff_base=0.01, backoff_max=0.05,
)


@dataclass
class State:
    """What the test server saw."""

    hits: dict[str, int] = field(default_factory=dict)
    user_agents: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    huge_sent: int = 0
    huge_aborted: bool = False
    huge_done: asyncio.Event = field(default_factory=asyncio.Event)

    def hit(self, name: str) -> int:
        self.hits[name] = self.hits.get(name, 0) + 1
        return self.hits[name]


def make_app(state: State) -> web.Application:
    routes = web.RouteTableDef()

    @routes.get("/img.png")
    async def img_png(request: web.Request) -> web.StreamResponse:
        state.hit("img.png")
        state.user_agents.append(request.headers.get("User-Agent", ""))
        headers = {"ETag": ETAG, "Last-Modified": LAST_MODIFIED}
        if (request.headers.get("If-None-Match") == ETAG
                or request.headers.get("If-Modified-Since") == LAST_MODIFIED):
            return web.Response(status=304, headers=headers)
        return web.Response(body=PNG, content_type="image/png", headers=headers)

    @routes.get("/img.jpg")
    async def img_jpg(request: web.Request) -> web.StreamResponse:
        return web.Response(body=JPEG, content_type="image/jpeg")

    @routes.get("/slow")
    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        await resp.prepare(request)
        await resp.write(PNG[:20])
        try:
            await asyncio.sleep(1.0)
            await resp.write(PNG[20:])
        except (ConnectionError, asyncio.CancelledError):
            pass
        return resp

    @routes.get("/flaky")
    async def flaky(request: web.Request) -> web.StreamResponse:
        if state.hit("flaky") <= 2:
            return web.Response(status=500, text="boom")
        return web.Response(body=PNG, content_type="image/png")

    @routes.get("/throttled")
    async def throttled(request: web.Request) -> web.StreamResponse:
        if state.hit("throttled") == 1:
            return web.Response(status=429, headers={"Retry-After": "0"})
        return web.Response(body=PNG, content_type="image/png")

    @routes.get("/always-503")
    async def always_503(request: web.Request) -> web.StreamResponse:
        state.hit("always-503")
        return web.Response(status=503)

    @routes.get("/forbidden")
    async def forbidden(request: web.Request) -> web.StreamResponse:
        state.hit("forbidden")
        return web.Response(status=403)

    @routes.get("/missing")
    async def missing(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404)

    @routes.get("/removed")
    async def removed(request: web.Request) -> web.StreamResponse:
        return web.Response(status=410)

    @routes.get("/loop/a")
    async def loop_a(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/loop/b")

    @routes.get("/loop/b")
    async def loop_b(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently("/loop/a")

    @routes.get("/chain/{n}")
    async def chain(request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        if n >= 20:
            return web.Response(body=PNG, content_type="image/png")
        raise web.HTTPFound(f"/chain/{n + 1}")

    @routes.get("/huge")
    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        block = PNG[:16] + bytes(HUGE_CHUNK - 16)
        try:
            while state.huge_sent < HUGE_TOTAL:
                await resp.write(block)
                state.huge_sent += len(block)
                block = bytes(HUGE_CHUNK)
                await asyncio.sleep(0.001)
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            state.huge_aborted = True
        finally:
            state.huge_done.set()
        return resp

    @routes.get("/declared-huge")
    async def declared_huge(request: web.Request) -> web.StreamResponse:
        return web.Response(body=PNG + bytes(200_000), content_type="image/png")

    @routes.get("/html-as-jpeg")
    async def html_as_jpeg(request: web.Request) -> web.StreamResponse:
        return web.Response(body=HTML, content_type="image/jpeg")

    @routes.get("/png-as-text")
    async def png_as_text(request: web.Request) -> web.StreamResponse:
        return web.Response(body=PNG, content_type="text/plain")

    @routes.get("/gzip")
    async def gzipped(request: web.Request) -> web.StreamResponse:
        return web.Response(body=gzip.compress(PNG), headers={
            "Content-Type": "image/png", "Content-Encoding": "gzip"})

    @routes.get("/truncated.jpg")
    async def truncated(request: web.Request) -> web.StreamResponse:
        return web.Response(body=JPEG[: len(JPEG) // 2], content_type="image/jpeg")

    @routes.get("/to-file")
    async def to_file(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("file:///etc/passwd")

    @routes.get("/to-private")
    async def to_private(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/private/img.png")

    @routes.get("/private/img.png")
    async def private(request: web.Request) -> web.StreamResponse:
        state.hit("private")
        return web.Response(body=PNG, content_type="image/png")

    @routes.get("/count/{i}")
    async def count(request: web.Request) -> web.StreamResponse:
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            await asyncio.sleep(0.02)
        finally:
            state.in_flight -= 1
        return web.Response(body=PNG, content_type="image/png")

    app = web.Application()
    app.add_routes(routes)
    return app


@dataclass(frozen=True)
class Site:
    """The running test server and what it saw."""

    server: TestServer
    state: State

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


@pytest.fixture
async def site(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Site:
    state = State()
    return Site(await aiohttp_server(make_app(state)), state)


async def _fetch(site: Site, path: str, config: FetchConfig = CFG,
                 etag: str | None = None, last_modified: str | None = None) -> FetchResult:
    async with Fetcher(config) as fetcher:
        return await fetcher.fetch(site.url(path), etag=etag, last_modified=last_modified)


async def _fetch_url(url: str) -> FetchResult:
    async with Fetcher(CFG) as fetcher:
        return await fetcher.fetch(url)


async def test_ok_image_and_headers(site: Site) -> None:
    res = await _fetch(site, "/img.png")
    assert res.status == "ok" and res.ok
    assert res.data == PNG
    assert res.http_status == 200
    assert res.etag == ETAG and res.last_modified == LAST_MODIFIED
    assert res.content_type == "image/png"
    assert res.final_url == site.url("/img.png")
    assert res.attempts == 1 and res.reason is None
    assert 0 < res.wait_s <= res.elapsed_s
    # the settings' user agent: EchoImage and its version
    assert site.state.user_agents[0] == f"EchoImage/{__version__} (+https://github.com/" \
        "echoimage/echoimage)"
    jpg = await _fetch(site, "/img.jpg")
    assert jpg.status == "ok" and jpg.data == JPEG


async def test_conditional_requests_give_not_modified(site: Site) -> None:
    res = await _fetch(site, "/img.png", etag=ETAG)
    assert res.status == "not-modified" and res.http_status == 304 and res.data is None
    assert res.etag == ETAG
    res = await _fetch(site, "/img.png", last_modified=LAST_MODIFIED)
    assert res.status == "not-modified"
    res = await _fetch(site, "/img.png", etag='"other"')
    assert res.status == "ok" and res.data == PNG


async def test_slow_body_times_out(site: Site) -> None:
    cfg = FetchConfig(read_timeout=0.2, total_timeout=5.0, retries=1, backoff_base=0.01)
    started = time.monotonic()
    res = await _fetch(site, "/slow", cfg)
    assert res.status == "timeout"
    assert res.attempts == 2
    assert res.reason and "\n" not in res.reason
    assert time.monotonic() - started < 1.5


async def test_500_twice_then_ok(site: Site) -> None:
    res = await _fetch(site, "/flaky")
    assert res.status == "ok" and res.attempts == 3 and res.data == PNG


async def test_429_retry_after_zero_then_ok(site: Site) -> None:
    cfg = FetchConfig(retries=2, backoff_base=5.0, backoff_max=5.0)  # only Retry-After is short
    started = time.monotonic()
    res = await _fetch(site, "/throttled", cfg)
    assert res.status == "ok" and res.attempts == 2
    assert time.monotonic() - started < 2.0


async def test_persistent_5xx_is_retryable_http_error(site: Site) -> None:
    res = await _fetch(site, "/always-503")
    assert res.status == "http-error" and res.http_status == 503
    assert res.attempts == 3 == site.state.hits["always-503"]
    assert "after 3 attempts" in (res.reason or "")
    assert res.retryable and "http-error" in RETRYABLE_STATUSES


async def test_403_is_not_retried(site: Site) -> None:
    res = await _fetch(site, "/forbidden")
    assert res.status == "http-error" and res.http_status == 403 and res.attempts == 1


@pytest.mark.parametrize("path,code", [("/missing", 404), ("/removed", 410)])
async def test_404_and_410_are_gone(site: Site, path: str, code: int) -> None:
    res = await _fetch(site, path)
    assert res.status == "gone" and res.http_status == code and res.attempts == 1
    assert not res.retryable


async def test_redirect_loop(site: Site) -> None:
    res = await _fetch(site, "/loop/a")
    assert res.status == "redirect-loop"
    assert "loop" in (res.reason or "")
    assert res.attempts == 1


async def test_too_many_redirects(site: Site) -> None:
    res = await _fetch(site, "/chain/0")
    assert res.status == "too-many-redirects"
    assert "more than 5" in (res.reason or "")
    ok = await _fetch(site, "/chain/16")  # four hops: within the cap
    assert ok.status == "ok" and ok.final_url == site.url("/chain/20")


async def test_streamed_body_over_cap_aborts_early(site: Site) -> None:
    cap = 64 * 1024
    started = time.monotonic()
    res = await _fetch(site, "/huge", FetchConfig(max_bytes=cap, retries=0))
    took = time.monotonic() - started
    assert res.status == "too-large" and res.data is None
    assert "cap" in (res.reason or "")
    await asyncio.wait_for(site.state.huge_done.wait(), timeout=5)
    assert site.state.huge_aborted
    assert site.state.huge_sent < HUGE_TOTAL // 4
    assert took < 0.5  # sending everything takes more than 512 × 1 ms


async def test_declared_content_length_over_cap(site: Site) -> None:
    res = await _fetch(site, "/declared-huge", FetchConfig(max_bytes=100_000, retries=0))
    assert res.status == "too-large" and "Content-Length" in (res.reason or "")


async def test_content_type_is_not_trusted(site: Site) -> None:
    html = await _fetch(site, "/html-as-jpeg")
    assert html.status == "not-an-image" and html.data is None
    assert "HTML" in (html.reason or "") and html.attempts == 1
    png = await _fetch(site, "/png-as-text")
    assert png.status == "ok" and png.data == PNG and png.content_type == "text/plain"
    page = await _fetch(site, "/html-as-jpeg", FetchConfig(require_image=False))
    assert page.status == "ok" and page.data == HTML


async def test_gzip_is_decoded(site: Site) -> None:
    res = await _fetch(site, "/gzip")
    assert res.status == "ok" and res.data == PNG


async def test_truncated_image_is_fetched_as_is(site: Site) -> None:
    res = await _fetch(site, "/truncated.jpg")
    assert res.status == "ok" and res.data == JPEG[: len(JPEG) // 2]


@pytest.mark.parametrize("url", [
    "ftp://127.0.0.1/img.png", "file:///etc/passwd", "javascript:alert(1)", "not a url",
    "http://", "http://127.0.0.1:99999/x", "",
])
async def test_bad_urls_are_refused_without_network(url: str) -> None:
    async with Fetcher(CFG) as fetcher:
        res = await fetcher.fetch(url)
    assert res.status == "bad-url" and res.attempts == 1 and res.http_status is None
    assert res.reason and "\n" not in res.reason
    assert url_problem(url) is not None


async def test_redirect_to_non_http_scheme(site: Site) -> None:
    res = await _fetch(site, "/to-file")
    assert res.status == "bad-url" and "file" in (res.reason or "")


async def test_check_url_hook_vets_every_hop(site: Site) -> None:
    seen: list[str] = []

    async def check(url: str) -> str | None:
        seen.append(url)
        return "private address" if "/private/" in url else None

    async with Fetcher(CFG, check_url=check) as fetcher:
        res = await fetcher.fetch(site.url("/to-private"))
        direct = await fetcher.fetch(site.url("/private/img.png"))
        fine = await fetcher.fetch(site.url("/img.png"))
    assert res.status == "bad-url" and "private address" in (res.reason or "")
    assert direct.status == "bad-url"
    assert fine.status == "ok"
    assert "private" not in site.state.hits
    assert seen[:2] == [site.url("/to-private"),
                        site.url("/private/img.png")]


async def test_connection_refused_is_retried_connection_error() -> None:
    res = await _fetch_url(f"http://127.0.0.1:{free_port()}/img.png")
    assert res.status == "connection-error" and res.attempts == 3 and res.retryable


async def test_fetch_many_bounds_concurrency(site: Site) -> None:
    limit = 4
    consumed = 0

    def items() -> Iterator[tuple[int, str, str | None, str | None]]:
        nonlocal consumed
        for i in range(50):
            consumed += 1
            yield i, site.url(f"/count/{i}"), None, None

    keys: list[int] = []
    async with Fetcher(FetchConfig(concurrency=limit, per_host=8)) as fetcher:
        async for key, res in fetcher.fetch_many(items()):
            assert consumed - len(keys) <= 2 * limit  # never the whole input up front
            assert res.status == "ok" and res.url.endswith(f"/count/{key}")
            keys.append(key)
    assert sorted(keys) == list(range(50))
    assert 2 <= site.state.max_in_flight <= limit


async def test_fetch_bytes_sync_helper(site: Site) -> None:
    res = await asyncio.to_thread(fetch_bytes, site.url("/img.png"), CFG)
    assert res.status == "ok" and res.data == PNG


def test_parse_retry_after() -> None:
    assert parse_retry_after("0", 30) == 0
    assert parse_retry_after("120", 30) == 30
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 30) == 0  # in the past
    assert parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT", 30) == 30
    assert parse_retry_after("soon", 30) is None
    assert parse_retry_after(None, 30) is None


def test_statuses_and_config_validation() -> None:
    assert RETRYABLE_STATUSES <= set(FetchStatus)
    assert {"ok", "not-modified", "gone", "bad-url"}.isdisjoint(RETRYABLE_STATUSES)
    with pytest.raises(ValueError):
        FetchConfig(concurrency=0)
    with pytest.raises(ValueError):
        FetchConfig(read_timeout=0)


@pytest.mark.parametrize("url,told", [
    ("127.0.0.1:8101", "unsupported scheme '127.0.0.1': only http and https are fetched "
                       "(for a web address, write http://127.0.0.1:8101)"),
    ("localhost:8080/a.jpg", "(for a web address, write http://localhost:8080/a.jpg)"),
    ("shop.example/p.html", "unsupported scheme '(none)': only http and https are fetched "
                            "(for a web address, write http://shop.example/p.html)"),
    ("ftp://shop.example/a.jpg", "unsupported scheme 'ftp': only http and https are fetched"),
    ("mailto:sales@shop.example", "unsupported scheme 'mailto': only http and https are "
                                  "fetched"),
    ("tel:+1.555.1234", "unsupported scheme 'tel': only http and https are fetched"),
])
def test_an_address_without_its_scheme_is_told_how_to_write_it(url: str, told: str) -> None:
    """A host written without http:// (yarl reads "127.0.0.1" as its scheme) is told what
    to write, by the fetcher's check and by the scan's policy alike; another scheme
    (mailto:, tel:) is not."""
    for said in (url_problem(url), asyncio.run(UrlPolicy().check(url))):
        assert said is not None and said.endswith(told), said  # a hint or none, as told
