"""The HTTP API and the page through an ASGI client: every route and every error class.

URL queries are tested against aiohttp servers on 127.0.0.1 (no internet): one allow-listed
by its exact host:port (standing in for a public site), one not (standing in for an internal
service), so a redirect from the first to the second is an SSRF attempt that must be refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import Built, write_catalogue
from fastapi import FastAPI, HTTPException
from helpers import (
    REPO,
    avif,
    build_index,
    free_port,
    header_only_png,
    heic,
    jpeg,
    photo,
    png,
    resize,
    rotate,
    synthetic,
    to_rgb,
    web_page,
)

from echoimage.config import Settings
from echoimage.errors import QueryLimitError
from echoimage.fetch.client import FetchConfig, FetchResult
from echoimage.fetch.ssrf import (
    AllowList,
    GuardedFetcher,
    GuardedResolver,
    UrlPolicy,
    address_problem,
)
from echoimage.store.db import open_store
from echoimage.types import FetchStatus, Match
from echoimage.web.app import create_app
from echoimage.web.cache import QueryCache
from echoimage.web.config import WebSettings
from echoimage.web.inputs import fetch_query, http_error, parse_k
from echoimage.web.visual import match_image, restore_aspect

pytestmark = pytest.mark.usefixtures("no_network")
#: the async tests share the module's event loop with the app and the test servers
module_loop = pytest.mark.asyncio(loop_scope="module")

MAX_UPLOAD = 400_000
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RESULT_KEYS = list(Match(0, "", 0.0, False, False, 0.0, 0, 0, 0, "identity", "").to_dict())


def copy_of(name: str, factor: float = 0.6, degrees: float = 4.0, quality: int = 80) -> bytes:
    """A transformed copy of a catalogue photo: smaller, slightly rotated, re-compressed."""
    return jpeg(rotate(resize(to_rgb(photo(name)), factor), degrees), quality)


# --- servers the URL queries reach ---------------------------------------------------------

def origin_app(internal_port: int) -> web.Application:
    """The allow-listed "public" site: an image, redirects (to an internal port, to file://),
    a page, a 404, a slow answer and a body over the cap."""
    routes = web.RouteTableDef()
    # encoded before the server listens: HEVC takes seconds on a busy machine, past the
    # URL fetch's timeout
    coffee_heic_bytes = heic(rotate(resize(to_rgb(photo("coffee")), 0.6), 4.0))

    @routes.get("/coffee.jpg")
    async def coffee(request: web.Request) -> web.Response:
        return web.Response(body=copy_of("coffee"), content_type="image/jpeg")

    @routes.get("/coffee.heic")
    async def coffee_heic(request: web.Request) -> web.Response:
        return web.Response(body=coffee_heic_bytes, content_type="image/heic")

    @routes.get("/to-internal.jpg")
    async def to_internal(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{internal_port}/secret.jpg")

    @routes.get("/to-localhost.jpg")
    async def to_localhost(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{internal_port}/secret.jpg")

    @routes.get("/to-metadata.jpg")
    async def to_metadata(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    @routes.get("/to-file.jpg")
    async def to_file(request: web.Request) -> web.Response:
        raise web.HTTPFound("file:///etc/passwd")

    @routes.get("/to-coffee.jpg")
    async def to_coffee(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/coffee.jpg")

    @routes.get("/page.html")
    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><p>hello</p>", content_type="text/html")

    @routes.get("/missing.jpg")
    async def missing(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    @routes.get("/slow.jpg")
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(body=copy_of("coffee"), content_type="image/jpeg")

    @routes.get("/huge.jpg")
    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await resp.prepare(request)
        await resp.write(b"\xff\xd8\xff\xe0" + b"\0" * 60_000)
        for _ in range(20):
            await resp.write(b"\0" * 60_000)
        return resp

    app = web.Application()
    app.add_routes(routes)
    return app


@dataclass
class Internal:
    """The internal service: counts the requests that reached it (must stay 0)."""

    hits: int = 0


def internal_app(state: Internal) -> web.Application:
    async def secret(request: web.Request) -> web.Response:
        state.hits += 1
        return web.Response(body=copy_of("coffee"), content_type="image/jpeg")

    app = web.Application()
    app.router.add_get("/secret.jpg", secret)
    return app


@dataclass
class Env:
    """The app under test, its client and the two servers."""

    app: FastAPI
    client: httpx.AsyncClient
    built: Built
    origin: str
    internal: str
    internal_state: Internal

    def url_of(self, name: str) -> str:
        return self.built.catalogue.url(name)


def web_settings(allow: list[str], **kw: object) -> WebSettings:
    values: dict[str, object] = dict(max_upload_bytes=MAX_UPLOAD, url_allowlist=allow,
                                     url_timeout=1.5, cache_ttl=60.0, cache_entries=16)
    values.update(kw)
    return WebSettings(**values)  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(built: Built) -> AsyncIterator[Env]:
    state = Internal()
    internal = TestServer(internal_app(state), host="127.0.0.1")
    await internal.start_server()
    origin = TestServer(origin_app(internal.port or 0), host="127.0.0.1")
    await origin.start_server()
    app = create_app(built.settings.model_copy(update={"max_k": 20}),
                     web_settings([f"127.0.0.1:{origin.port}"]))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                     base_url="http://testserver") as client:
            yield Env(app, client, built, f"http://127.0.0.1:{origin.port}",
                      f"http://127.0.0.1:{internal.port}", state)
    await origin.close()
    await internal.close()


async def upload(env: Env, data: bytes, name: str = "query.jpg", **fields: str
                 ) -> httpx.Response:
    return await env.client.post("/api/search", files={"file": (name, data, "image/jpeg")},
                                 data=fields)


def detail(resp: httpx.Response) -> str:
    body = resp.json()
    assert set(body) == {"detail"}, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body["detail"]


# --- searching ---------------------------------------------------------------------------

@module_loop
async def test_upload_finds_the_original_first(env: Env) -> None:
    resp = await upload(env, copy_of("coffee"), k="3")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["query"] == "query.jpg"
    assert len(body["results"]) == 3
    top = body["results"][0]
    assert top["url"] == env.url_of("coffee")
    assert top["duplicate"] is True and top["exact"] is False
    assert top["orb_inliers"] > 20 and top["region"] is not None
    # the schema of `echoimage query --json`, field for field and in order
    for result in body["results"]:
        assert list(result) == RESULT_KEYS
    assert body["results"][1]["duplicate"] is False
    assert body["width"] > 0 and body["height"] > 0 and body["format"] == "JPEG"
    assert set(body["timings_ms"]) >= {"decode_ms", "shortlist_ms", "rerank_ms"}


@module_loop
async def test_exact_bytes_are_an_exact_match(env: Env) -> None:
    data = env.built.catalogue.files["chelsea"].read_bytes()
    body = (await upload(env, data, "chelsea.jpg", k="1")).json()
    assert body["results"][0]["url"] == env.url_of("chelsea")
    assert body["results"][0]["exact"] is True


@module_loop
async def test_mirrored_png_upload(env: Env) -> None:
    arr = np.ascontiguousarray(resize(to_rgb(photo("astronaut")), 0.5)[:, ::-1])
    resp = await env.client.post("/api/search", files={"file": ("m.png", png(arr), "image/png")})
    assert resp.status_code == 200, resp.text
    top = resp.json()["results"][0]
    assert top["url"] == env.url_of("astronaut") and top["orientation"].startswith("mirror")


@module_loop
@pytest.mark.parametrize("fmt", ["heic", "avif"])
async def test_heic_and_avif_uploads(env: Env, fmt: str) -> None:
    arr = rotate(resize(to_rgb(photo("rocket")), 0.6), 4.0)
    data = heic(arr) if fmt == "heic" else avif(arr)
    resp = await env.client.post("/api/search",
                                 files={"file": (f"IMG.{fmt}", data, f"image/{fmt}")})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["format"] == ("HEIF" if fmt == "heic" else "AVIF")
    assert body["results"][0]["url"] == env.url_of("rocket")
    assert body["results"][0]["duplicate"] is True


@module_loop
async def test_heic_url_query(env: Env) -> None:
    resp = await env.client.post("/api/search", json={"url": f"{env.origin}/coffee.heic"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["results"][0]["url"] == env.url_of("coffee")


@module_loop
async def test_default_k(env: Env) -> None:
    body = (await upload(env, copy_of("rocket"))).json()
    assert len(body["results"]) == Settings().default_k == 5


@pytest.mark.parametrize("k", ["0", "-2", "abc", "21", "2.5", "+3", "1_0", "\u0663", "3e0",
                               "true", "99999999999999999999999"])
@module_loop
async def test_bad_k_is_422(env: Env, k: str) -> None:
    resp = await upload(env, copy_of("rocket"), k=k)
    assert resp.status_code == 422
    said = detail(resp)  # and what was given
    assert said.startswith("k must be a whole number from 1 to 20, not "), said


@module_loop
async def test_k_as_a_file_is_422(env: Env) -> None:
    resp = await env.client.post("/api/search", files={"k": ("k.txt", b"3", "text/plain")},
                                 data={"url": f"{env.origin}/coffee.jpg"})
    assert resp.status_code == 422 and "k must be" in detail(resp)


@pytest.mark.parametrize("k", ["true", "false", "1.5", "2.0", "1e1", '"1"', '"3"', "[]", "{}"])
@module_loop
async def test_json_k_must_be_a_json_integer(env: Env, k: str) -> None:
    body = f'{{"url": "{env.origin}/coffee.jpg", "k": {k}}}'.encode()
    resp = await env.client.post("/api/search", content=body,
                                 headers={"Content-Type": "application/json"})
    assert resp.status_code == 422, resp.text
    text = detail(resp)
    assert text.startswith("bad JSON body: k: ") and "\n" not in text


@pytest.mark.parametrize(("k", "expected"), [("null", Settings().default_k), ("1", 1),
                                             ("3", 3)])
@module_loop
async def test_json_k_integer_or_null(env: Env, k: str, expected: int) -> None:
    body = f'{{"url": "{env.origin}/coffee.jpg", "k": {k}}}'.encode()
    resp = await env.client.post("/api/search", content=body,
                                 headers={"Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["results"]) == expected


@pytest.mark.parametrize("value", [True, False, 2.0, b"3", "+3", "\u0663", "9" * 5000])
def test_parse_k_takes_only_integers_and_digit_strings(value: object) -> None:
    with pytest.raises(HTTPException) as err:
        parse_k(value, 5, 20)
    assert err.value.status_code == 422 and "k must be" in str(err.value.detail)
    assert parse_k(" 007 ", 5, 20) == 7 and parse_k(7, 5, 20) == 7 and parse_k(None, 5, 20) == 5


@module_loop
async def test_json_k_over_the_maximum_is_422(env: Env) -> None:
    resp = await env.client.post("/api/search",
                                 json={"url": f"{env.origin}/coffee.jpg", "k": 21})
    assert resp.status_code == 422 and "k must be a whole number from 1 to 20" in detail(resp)


async def test_the_apps_own_settings_cap_k(built: Built) -> None:
    """The cap on k is the app's Settings (not the environment's): create_app(Settings(
    max_k=10)) refuses k=50 with 422 and says why, on the API and on the page, and its
    page offers at most 10."""
    app = create_app(built.settings.model_copy(update={"max_k": 10, "default_k": 3}),
                     web_settings([]))
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://testserver") as client:
        api = await client.post("/api/search", files={"file": ("q.jpg", copy_of("rocket"))},
                                data={"k": "50"})
        assert api.status_code == 422
        assert detail(api) == "k must be a whole number from 1 to 10, not 50"
        page = await client.post("/search", files={"file": ("q.jpg", copy_of("rocket"))},
                                 data={"k": "50"})
        assert page.status_code == 422 and "from 1 to 10, not 50" in page.text
        form = (await client.get("/")).text
        assert 'max="10"' in form and 'value="3"' in form
        ok = await client.post("/api/search", files={"file": ("q.jpg", copy_of("rocket"))})
        assert ok.status_code == 200 and len(ok.json()["results"]) == 3


def test_a_query_over_the_engines_cap_is_a_4xx() -> None:
    """Should a k past max_k reach the engine, its QueryLimitError is a 422 with the
    engine's one-line reason, not a 500."""
    err = http_error(QueryLimitError("k must be between 1 and 10 (max_k), not 50"))
    assert err.status_code == 422 and err.detail == "k must be between 1 and 10 (max_k), not 50"


@module_loop
async def test_json_body_url_query(env: Env) -> None:
    resp = await env.client.post("/api/search",
                                 json={"url": f"{env.origin}/coffee.jpg", "k": 2})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["query"] == f"{env.origin}/coffee.jpg"
    assert len(body["results"]) == 2
    assert body["results"][0]["url"] == env.url_of("coffee")


@module_loop
async def test_form_url_query_follows_a_safe_redirect(env: Env) -> None:
    resp = await env.client.post("/api/search", data={"url": f"{env.origin}/to-coffee.jpg"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["results"][0]["url"] == env.url_of("coffee")


@pytest.mark.parametrize("body", [b"{", b'{"k": 3}', b'{"url": "http://x/a.jpg", "k": 0}',
                                  b'{"url": 5}'])
@module_loop
async def test_bad_json_is_422(env: Env, body: bytes) -> None:
    resp = await env.client.post("/api/search", content=body,
                                 headers={"Content-Type": "application/json"})
    assert resp.status_code == 422
    assert detail(resp).startswith("bad JSON body")


@module_loop
async def test_neither_or_both_inputs_is_400(env: Env) -> None:
    resp = await env.client.post("/api/search", data={"k": "3"})
    assert resp.status_code == 400 and "file" in detail(resp)
    no_file = {"file": ("", b"", "application/octet-stream")}
    resp = await env.client.post("/api/search", files=no_file, data={"url": ""})
    assert resp.status_code == 400
    resp = await upload(env, copy_of("coffee"), url=f"{env.origin}/coffee.jpg")
    assert resp.status_code == 400 and "not both" in detail(resp)


@module_loop
async def test_unsupported_content_type_is_415(env: Env) -> None:
    resp = await env.client.post("/api/search", content=copy_of("coffee"),
                                 headers={"Content-Type": "image/jpeg"})
    assert resp.status_code == 415 and "multipart/form-data" in detail(resp)


# --- upload limits -------------------------------------------------------------------------

@module_loop
async def test_upload_over_the_cap_is_413(env: Env) -> None:
    big = jpeg(synthetic(7, size=1400), quality=100)
    assert len(big) > MAX_UPLOAD
    resp = await upload(env, big)
    assert resp.status_code == 413
    assert f"{MAX_UPLOAD:,}" in detail(resp)


@module_loop
async def test_cap_is_enforced_while_streaming(env: Env) -> None:
    """A chunked body without Content-Length is cut off once past the cap, not read whole."""
    sent = 0
    boundary = "b0undary"

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"big.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
        yield head + b"\xff\xd8\xff\xe0"
        for _ in range(200):  # would be 13 MB
            sent += 65536
            yield b"\0" * 65536

    resp = await env.client.post(
        "/api/search", content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert resp.status_code == 413, resp.text
    assert sent < 3 * MAX_UPLOAD
    detail(resp)


@module_loop
async def test_declared_length_over_the_cap_is_413_before_reading(env: Env) -> None:
    resp = await env.client.post(
        "/api/search", content=b"x" * 10,
        headers={"Content-Type": "multipart/form-data; boundary=x",
                 "Content-Length": str(50 * MAX_UPLOAD)})
    assert resp.status_code == 413


@pytest.mark.parametrize("data", [b"just some text, not a picture\n" * 20,
                                  b"<!doctype html><html><body>hi</body></html>",
                                  b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + b"0" * 100])
@module_loop
async def test_not_an_image_is_415(env: Env, data: bytes) -> None:
    resp = await upload(env, data, "notes.jpg")
    assert resp.status_code == 415
    assert detail(resp).startswith("not an image")


@module_loop
async def test_corrupt_image_is_422(env: Env) -> None:
    data = copy_of("coffee")
    resp = await upload(env, data[:200] + b"\0" * 300, "broken.jpg")
    assert resp.status_code == 422
    assert detail(resp).startswith("cannot decode the image")


@module_loop
async def test_empty_file_is_422(env: Env) -> None:
    resp = await upload(env, b"", "empty.jpg")
    assert resp.status_code == 422 and "empty" in detail(resp)


@module_loop
async def test_pixel_cap_applies(env: Env) -> None:
    resp = await env.client.post(
        "/api/search", files={"file": ("bomb.png", header_only_png(20000, 20000), "image/png")})
    assert resp.status_code == 422
    assert "too large" in detail(resp) and "pixels" in detail(resp)


# --- URL queries: SSRF and fetch failures -----------------------------------------------------

async def url_query(env: Env, url: str) -> httpx.Response:
    return await env.client.post("/api/search", json={"url": url})


@pytest.mark.parametrize("path", ["/secret.jpg"])
@module_loop
async def test_loopback_url_is_refused(env: Env, path: str) -> None:
    resp = await url_query(env, env.internal + path)
    assert resp.status_code == 400
    assert "is a loopback address (ECHOIMAGE_URL_ALLOWLIST on the server allows it)" in \
        detail(resp), detail(resp)
    assert env.internal_state.hits == 0


@pytest.mark.parametrize("url", [
    "http://localhost:{port}/secret.jpg",
    "http://127.1:{port}/secret.jpg",
    "http://2130706433:{port}/secret.jpg",
    "http://[::ffff:127.0.0.1]:{port}/secret.jpg",
    "http://[::1]:{port}/secret.jpg",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/a.jpg",
    "http://0.0.0.0:{port}/secret.jpg",
])
@module_loop
async def test_private_addresses_are_refused(env: Env, url: str) -> None:
    port = env.internal.rsplit(":", 1)[1]
    resp = await url_query(env, url.format(port=port))
    assert resp.status_code == 400, resp.text
    assert "address" in detail(resp)
    assert env.internal_state.hits == 0


@pytest.mark.parametrize("path, words", [
    ("/to-internal.jpg", ["refused", "loopback"]),
    ("/to-localhost.jpg", ["refused", "localhost", "loopback"]),
    ("/to-metadata.jpg", ["refused", "metadata"]),
    ("/to-file.jpg", ["file", "only http and https"]),
])
@module_loop
async def test_redirect_to_a_forbidden_target_is_refused(env: Env, path: str,
                                                         words: list[str]) -> None:
    """The first hop is allow-listed (exact host:port); the redirect target is not."""
    resp = await url_query(env, env.origin + path)
    assert resp.status_code == 400, resp.text
    text = detail(resp)
    for word in words:
        assert word in text
    assert env.internal_state.hits == 0


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/a.jpg", "file:///etc/passwd",
                                 "gopher://example.org/", "javascript:alert(1)",
                                 "http://user:pw@127.0.0.1/a.jpg"])
@module_loop
async def test_non_http_urls_are_refused(env: Env, url: str) -> None:
    resp = await url_query(env, url)
    assert resp.status_code == 400, resp.text


@pytest.mark.parametrize("path, status, word", [
    ("/page.html", 415, "not an image"),
    ("/missing.jpg", 502, "404"),
    ("/huge.jpg", 413, "cap"),
    ("/slow.jpg", 504, "timed out"),
])
@module_loop
async def test_upstream_failures(env: Env, path: str, status: int, word: str) -> None:
    resp = await url_query(env, env.origin + path)
    assert resp.status_code == status, resp.text
    text = detail(resp)
    assert word in text or (status == 504 and "within" in text)


@module_loop
async def test_dns_rebinding_is_stopped_at_connect_time() -> None:
    """A name that passed the check but resolves to loopback when connecting is refused."""

    class Rebinding:
        async def resolve(self, host: str, port: int = 0, family: int = 0) -> list[dict]:
            return [{"hostname": host, "host": "127.0.0.1", "port": port, "family": 2,
                     "proto": 6, "flags": 4}]

        async def close(self) -> None:
            return None

    resolver = GuardedResolver(UrlPolicy())
    resolver._inner = Rebinding()  # type: ignore[assignment]
    with pytest.raises(OSError, match="loopback"):
        await resolver.resolve("images.example.org", 80)
    allowed = GuardedResolver(UrlPolicy(AllowList.parse(["images.example.org"])))
    allowed._inner = Rebinding()  # type: ignore[assignment]
    assert (await allowed.resolve("images.example.org", 80))[0]["host"] == "127.0.0.1"


async def test_an_address_refused_at_connect_time_is_a_400() -> None:
    """A URL whose check passed but whose host resolves to a forbidden address when the
    fetcher connects (DNS rebinding) is a REFUSED fetch, not retried, and a URL query that
    meets one is a 400 (the status is the fetch's, not a word found in its message)."""

    class Rebound(UrlPolicy):
        async def check(self, url: str) -> str | None:
            return None  # what a check that saw a public address says

    cfg = FetchConfig(retries=2, backoff_base=0.01)
    async with GuardedFetcher(cfg, Rebound()) as fetcher:
        res = await fetcher.fetch("http://localhost:9/a.jpg")
    assert res.status == FetchStatus.REFUSED and res.attempts == 1, res
    assert res.reason is not None and "loopback" in res.reason

    class Service:
        async def fetch(self, url: str) -> FetchResult:
            return res

    with pytest.raises(HTTPException) as err:
        await fetch_query(Service(), "http://localhost:9/a.jpg")  # type: ignore[arg-type]
    assert err.value.status_code == 400 and "loopback" in str(err.value.detail)


@pytest.mark.parametrize("addr, problem", [
    ("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("172.16.0.1", "private"),
    ("192.168.1.1", "private"), ("169.254.169.254", "metadata"), ("169.254.1.1", "link-local"),
    ("100.64.0.1", "non-public"), ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"),
    ("::1", "loopback"), ("fe80::1", "link-local"), ("fd00:ec2::254", "metadata"),
    ("fc00::1", "private"), ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"),
    ("64:ff9b::a9fe:a9fe", "metadata"), ("2002:7f00:1::", "loopback"), ("ff02::1", "multicast"),
    ("8.8.8.8", None), ("93.184.216.34", None), ("2606:4700:4700::1111", None),
])
def test_address_policy(addr: str, problem: str | None) -> None:
    found = address_problem(ipaddress.ip_address(addr))
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


def test_allow_list_entries() -> None:
    allow = AllowList.parse(["images.local", "127.0.0.1:8080", "[::1]:9000", "10.0.0.0/8",
                             "192.168.1.5"])
    assert allow.permits_host("IMAGES.local.", 443)
    assert allow.permits_host("127.0.0.1", 8080) and not allow.permits_host("127.0.0.1", 8081)
    assert allow.permits_host("[::1]", 9000) and not allow.permits_host("::1", 80)
    assert allow.permits_address(ipaddress.ip_address("10.9.8.7"))
    assert allow.permits_address(ipaddress.ip_address("192.168.1.5"))
    assert not allow.permits_address(ipaddress.ip_address("192.168.1.6"))
    with pytest.raises(ValueError):
        AllowList.parse(["http://x/"])


def test_web_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECHOIMAGE_URL_ALLOWLIST", "images.local, 127.0.0.1:8080;10.0.0.0/8")
    monkeypatch.setenv("ECHOIMAGE_MAX_UPLOAD_BYTES", "1234")
    ws = WebSettings()
    assert ws.url_allowlist == ["images.local", "127.0.0.1:8080", "10.0.0.0/8"]
    assert ws.max_upload_bytes == 1234
    monkeypatch.setenv("ECHOIMAGE_MAX_UPLOAD_BYTES", "0")
    with pytest.raises(ValueError):
        WebSettings()


# --- catalogue, pictures, stats ------------------------------------------------------------

@module_loop
async def test_image_metadata(env: Env) -> None:
    body = (await upload(env, copy_of("camera"), k="1")).json()
    image_id = body["results"][0]["id"]
    resp = await env.client.get(f"/api/images/{image_id}")
    assert resp.status_code == 200
    info = resp.json()
    assert info["url"] == env.url_of("camera") and info["status"] == "indexed"
    assert info["width"] == 512 and info["height"] == 512 and info["format"] == "PNG"
    assert info["source"] and info["sha256"] and info["indexed_at"]
    assert info["thumbnail"] == f"/api/images/{image_id}/thumbnail.png"
    resp = await env.client.get("/api/images/999999")
    assert resp.status_code == 404 and "999999" in detail(resp)


@module_loop
async def test_thumbnail_is_served_from_the_store(env: Env) -> None:
    body = (await upload(env, copy_of("coffee"), k="1")).json()
    image_id = body["results"][0]["id"]
    resp = await env.client.get(f"/api/images/{image_id}/thumbnail.png")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/png"
    assert resp.content.startswith(PNG_MAGIC)
    w, h = int.from_bytes(resp.content[16:20], "big"), int.from_bytes(resp.content[20:24], "big")
    assert (w, h) == (256, 171)  # coffee is 600x400: the square thumbnail's aspect restored
    resp = await env.client.get("/api/images/999999/thumbnail.png")
    assert resp.status_code == 404
    detail(resp)


@module_loop
async def test_match_and_query_images(env: Env) -> None:
    body = (await upload(env, copy_of("coffee"), k="2")).json()
    token = body["query_token"]
    first, second = (r["id"] for r in body["results"])
    for path in (f"/api/matches/{token}/{first}.png", f"/api/matches/{token}/{second}.png",
                 f"/api/queries/{token}/image.png", body["links"]["query_image"],
                 body["links"]["match_image"].format(id=first)):
        resp = await env.client.get(path)
        assert resp.status_code == 200, path
        assert resp.headers["content-type"] == "image/png"
        assert resp.content.startswith(PNG_MAGIC)
    again = await env.client.get(f"/api/queries/{token}")
    assert again.status_code == 200 and again.json()["results"] == body["results"]
    resp = await env.client.get(f"/api/matches/{token}/999999.png")
    assert resp.status_code == 404 and "not among" in detail(resp)
    for path in ("/api/matches/nope/1.png", "/api/queries/nope", "/api/queries/nope/image.png"):
        resp = await env.client.get(path)
        assert resp.status_code == 404 and "expired" in detail(resp)


@pytest.mark.parametrize("image_id", ["0", "-1", "9223372036854775808",
                                      "99999999999999999999", "-9223372036854775809"])
@module_loop
async def test_ids_out_of_range_are_404(env: Env, image_id: str) -> None:
    token = (await upload(env, copy_of("coffee"), k="1")).json()["query_token"]
    for path in (f"/api/images/{image_id}", f"/api/images/{image_id}/thumbnail.png",
                 f"/api/matches/{token}/{image_id}.png"):
        resp = await env.client.get(path)
        assert resp.status_code == 404, path
        assert image_id in detail(resp)


@module_loop
async def test_largest_id_is_an_ordinary_unknown_id(env: Env) -> None:
    resp = await env.client.get(f"/api/images/{2**63 - 1}")
    assert resp.status_code == 404 and str(2**63 - 1) in detail(resp)
    resp = await env.client.get("/api/images/abc")
    assert resp.status_code == 422  # not an id at all


@module_loop
async def test_screenshot_upload_says_which_part_matched(env: Env) -> None:
    page, (x, y, w, h) = web_page(photo("coffee"), 5)
    body = (await upload(env, jpeg(page, 85), k="1")).json()
    top = body["results"][0]
    assert top["url"].endswith("coffee.jpg") and top["duplicate"] is True
    assert top["query_box"] == pytest.approx([x, y, w, h], abs=3)
    resp = await env.client.get(body["links"]["match_image"].format(id=top["id"]))
    assert resp.status_code == 200 and resp.content.startswith(PNG_MAGIC)


@module_loop
async def test_uploads_are_not_added_to_the_catalogue(env: Env) -> None:
    before = (await env.client.get("/api/stats")).json()
    await upload(env, jpeg(synthetic(99)))
    after = (await env.client.get("/api/stats")).json()
    assert after["total_images"] == before["total_images"] == len(env.built.catalogue.files)
    assert after["index"]["entries"] == before["index"]["entries"]
    assert after["server"]["queries"] == before["server"]["queries"] + 1


@module_loop
async def test_stats_and_health(env: Env) -> None:
    token = (await upload(env, copy_of("coffee"))).json()["query_token"]
    resp = await env.client.get("/api/stats")
    assert resp.status_code == 200
    stats = resp.json()
    n = len(env.built.catalogue.files)
    assert stats["images"] == {"indexed": n} and stats["index"]["entries"] == n
    cache = env.app.state.service.cache  # the query just made is among those it counts
    assert stats["server"]["query_threads"] == env.app.state.service.threads >= 1
    assert cache.get(token) is not None
    assert 1 <= stats["server"]["cached_queries"] == len(cache) <= cache.max_entries
    last = stats["runs"][0]  # the build that made the catalogue
    assert (last["kind"], last["status"], last["reason"]) == ("build", "ok", None)
    assert last["counts"] == {"indexed": n}
    resp = await env.client.get("/health")
    assert resp.json() == {"status": "ok", "index_entries": n}


@module_loop
async def test_openapi_docs(env: Env) -> None:
    resp = await env.client.get("/docs")
    assert resp.status_code == 200 and "swagger" in resp.text.lower()
    paths = (await env.client.get("/openapi.json")).json()["paths"]
    for path in ("/api/search", "/api/images/{image_id}", "/api/images/{image_id}/thumbnail.png",
                 "/api/images/{image_id}/preview", "/api/matches/{token}/{image_id}.png",
                 "/api/stats", "/health"):
        assert path in paths
    body = paths["/api/search"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}


@module_loop
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_api_docs_load_nothing_from_elsewhere(env: Env, page: str) -> None:
    """The docs pages name only this server's URLs; each asset answers 200 with its type."""
    resp = await env.client.get(page)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    assert "http://" not in resp.text and "https://" not in resp.text  # no CDN
    assets = re.findall(r'(?:src|href)="(/[^"]+)"', resp.text)
    assert assets, resp.text
    kinds = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for url in assets:
        got = await env.client.get(url)
        assert got.status_code == 200, url
        assert got.headers["content-type"].startswith(kinds[Path(url).suffix]), (url, got.headers)
        assert len(got.content) > (100_000 if url.endswith((".js", ".css")) else 100)
    if page == "/docs":
        assert {Path(u).name for u in assets} >= {"swagger-ui-bundle.js", "swagger-ui.css"}
    else:
        assert "redoc.standalone.js" in {Path(u).name for u in assets}


# --- the page --------------------------------------------------------------------------------

@module_loop
async def test_home_page_is_a_plain_form(env: Env) -> None:
    resp = await env.client.get("/")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
    html = resp.text
    for needle in ('enctype="multipart/form-data"', 'type="file"', 'name="url"', 'name="k"',
                   '<label for="file"', '<label for="url"', '<label for="k"', 'lang="en"'):
        assert needle in html
    assert "http://" not in html and "https://cdn" not in html  # nothing from a CDN
    assert "default-src 'self'" in resp.headers["content-security-policy"]
    assert "<script>" not in html  # no inline script: the CSP forbids it
    for asset in ("/static/style.css", "/static/app.js"):
        resp = await env.client.get(asset)
        assert resp.status_code == 200


@module_loop
async def test_form_post_redirects_to_results(env: Env) -> None:
    resp = await env.client.post("/search", files={"file": ("cup.jpg", copy_of("coffee"),
                                                            "image/jpeg")}, data={"k": "3"})
    assert resp.status_code == 303
    page = await env.client.get(resp.headers["location"])
    assert page.status_code == 200
    html = page.text
    first = html.index('data-rank="1"')
    assert html.index(env.url_of("coffee")) > first
    assert 'data-verdict="duplicate"' in html[first:first + 300]
    assert html.count('class="card"') == 3
    assert "/api/matches/" in html and "/preview" in html and "cup.jpg" in html


@module_loop
async def test_form_errors_are_shown_on_the_page(env: Env) -> None:
    resp = await env.client.post("/search", files={"file": ("x.txt", b"hello " * 50,
                                                            "text/plain")})
    assert resp.status_code == 415
    assert 'role="alert"' in resp.text and "not an image" in resp.text
    resp = await env.client.post("/search", data={"url": env.internal + "/secret.jpg",
                                                  "k": "4"})
    assert resp.status_code == 400 and "loopback" in resp.text
    assert f'value="{env.internal}/secret.jpg"' in resp.text  # the form keeps the URL


@module_loop
async def test_page_escapes_what_users_control(env: Env) -> None:
    name = '<script>alert("x")</script>.jpg'
    resp = await env.client.post("/search", files={"file": (name, copy_of("moon"),
                                                            "image/jpeg")})
    page = await env.client.get(resp.headers["location"])
    assert "<script>alert" not in page.text and "&lt;script&gt;" in page.text


def test_a_card_names_the_other_entries_with_the_same_file() -> None:
    """A copy's card lists its also_at (links for URLs, escaped); a card without shows
    nothing of it."""
    from echoimage.types import Match, Verdict
    from echoimage.web.render import card

    m = Match(id=3, url="https://shop.example/a.jpg", score=1.0, duplicate=True, exact=False,
              ssim=0.9, orb_matches=40, orb_inliers=30, hash_distance=2, orientation="none",
              sha256="ab", verdict=Verdict.DUPLICATE,
              also_at=["https://shop.example/old/a.jpg", "/srv/<archive>/a.jpg"])
    html = card(1, m, "tok", 0.5)
    assert 'class="also-at">The same file also at:' in html
    assert 'href="https://shop.example/old/a.jpg"' in html
    assert "/srv/&lt;archive&gt;/a.jpg" in html and "<archive>" not in html
    assert "also-at" not in card(1, replace(m, also_at=[]), "tok", 0.5)


@module_loop
async def test_expired_results_page(env: Env) -> None:
    resp = await env.client.get("/results/not-a-token")
    assert resp.status_code == 404 and "expired, or never were" in resp.text


# --- cache, drawing, concurrency, reload ------------------------------------------------------

def test_query_cache_expires_and_bounds() -> None:
    now = [0.0]
    cache = QueryCache(ttl=10.0, max_entries=2, clock=lambda: now[0])
    result = type("R", (), {"matches": [], "image": type("I", (), {})()})()
    a = cache.add("a", result, 1)  # type: ignore[arg-type]
    b = cache.add("b", result, 1)  # type: ignore[arg-type]
    assert cache.get(a.token) is a  # a is now the most recently used
    c = cache.add("c", result, 1)  # type: ignore[arg-type]
    assert cache.get(b.token) is None and len(cache) == 2
    now[0] = 9.0
    assert cache.get(c.token) is c
    now[0] = 10.5
    cache.purge()
    assert cache._entries == {}  # gone without anyone asking for them
    assert cache.get(a.token) is None and cache.get(c.token) is None and len(cache) == 0
    assert a.token != c.token and len(a.token) >= 20


def test_match_drawing() -> None:
    q = np.full((100, 200), 100, np.uint8)
    cat = np.full((300, 300), 200, np.uint8)
    pairs = np.array([[10, 10, 30, 30], [190, 90, 290, 290]], np.float32)
    region = np.array([[20, 20], [280, 20], [280, 280], [20, 280]], np.float64)
    out = match_image(q, cat, pairs, region, height=150, gap=10)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[0] == 150
    assert out.shape[1] == 300 + 10 + 150
    plain = match_image(q, cat, None, None, height=150, gap=10)
    assert (out != plain).any(axis=2).sum() > 500  # lines, circles and the outline
    boxed = match_image(q, cat, None, None, height=150, gap=10, query_box=(50, 20, 100, 60))
    diff = (boxed != plain).any(axis=2)
    ys, xs = np.nonzero(diff)
    assert (xs.min(), xs.max()) == pytest.approx((74, 226), abs=2)  # the box, on the query
    assert (ys.min(), ys.max()) == pytest.approx((29, 121), abs=2)
    thumb = np.zeros((256, 256), np.uint8)
    assert restore_aspect(thumb, 600, 400, 256).shape == (171, 256)
    with pytest.raises(ValueError):
        match_image(q, cat, height=4)


@module_loop
async def test_overload_answers_503_instead_of_queueing_forever(built: Built) -> None:
    app = create_app(built.settings, web_settings([], query_threads=1, max_waiting=0))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                     base_url="http://testserver") as client:
            data = [copy_of(n, factor=0.9) for n in ("coffee", "rocket", "camera", "moon")]
            resps = await asyncio.gather(*(
                client.post("/api/search", files={"file": ("q.jpg", d, "image/jpeg")})
                for d in data))
            codes = sorted(r.status_code for r in resps)
            assert codes[0] == 200 and codes[-1] == 503, codes
            busy = next(r for r in resps if r.status_code == 503)
            assert busy.headers["retry-after"] == "1" and "busy" in detail(busy)
            assert (await client.get("/health")).status_code == 200


@module_loop
async def test_idle_server_forgets_queries_after_the_ttl(built: Built) -> None:
    app = create_app(built.settings, web_settings([], cache_ttl=0.3))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                     base_url="http://testserver") as client:
            resp = await client.post("/api/search", files={"file": (
                "q.jpg", copy_of("coffee"), "image/jpeg")})
            token = resp.json()["query_token"]
            cache = app.state.service.cache
            assert token in cache._entries
            deadline = time.monotonic() + 5.0  # no request in between: the janitor purges
            while cache._entries and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert cache._entries == {}


@module_loop
async def test_queries_run_off_the_event_loop(env: Env) -> None:
    """While searches run in the pool, cheap requests are still answered."""
    counters = env.app.state.service.counters
    searches = [asyncio.create_task(upload(env, copy_of(n, factor=0.9)))
                for n in ("coffee", "rocket", "camera", "moon", "clock", "brick")]
    deadline = time.monotonic() + 30
    while counters.running == 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.001)
    assert counters.running, "no search started"
    health = await env.client.get("/health")
    assert health.status_code == 200
    assert counters.running + counters.waiting > 0  # answered while queries were in flight
    assert all(r.status_code == 200 for r in await asyncio.gather(*searches))


@module_loop
async def test_new_index_is_picked_up_without_restart(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", workers=1)
    first = write_catalogue(tmp_path / "cat1", ("coffee", "rocket", "camera"))
    await asyncio.to_thread(build_index, settings, [str(first.root)], False)
    app = create_app(settings, web_settings([]))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                     base_url="http://testserver") as client:
            stats = (await client.get("/api/stats")).json()
            assert stats["index"]["entries"] == 3
            before = (await client.post("/api/search", files={"file": (
                "q.jpg", copy_of("chelsea"), "image/jpeg")}, data={"k": "1"})).json()
            assert before["results"][0]["duplicate"] is False

            # `echoimage index build` in another process, as cron would run `index update`
            second = write_catalogue(tmp_path / "cat2", ("chelsea", "moon"))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "echoimage", "--data-dir", str(settings.data_dir),
                "index", "build", "-q", "--workers", "1", str(second.root),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await proc.communicate()
            assert proc.returncode == 0, out.decode()

            # the first query after the build still answers (from the snapshot it has) and
            # starts a background refresh; once it is done, the new images are answered
            first_after = (await client.post("/api/search", files={"file": (
                "q.jpg", copy_of("chelsea"), "image/jpeg")}, data={"k": "1"}))
            assert first_after.status_code == 200
            live = app.state.service.catalogue.search_engine.live
            await asyncio.to_thread(live.wait, 10.0)
            after = (await client.post("/api/search", files={"file": (
                "q.jpg", copy_of("chelsea"), "image/jpeg")}, data={"k": "1"}))
            top = after.json()["results"][0]
            assert top["url"] == second.url("chelsea") and top["duplicate"] is True
            stats = (await client.get("/api/stats")).json()
            assert stats["index"]["entries"] == 5 and stats["total_images"] == 5
            assert stats["index"]["seq"] == stats["index"]["files_seq"]
            assert (await client.get("/health")).json()["index_entries"] == 5


@module_loop
async def test_empty_catalogue_is_503(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "empty", workers=1)
    open_store(settings).dispose()  # a store with no indexed image yet
    app = create_app(settings, web_settings([]))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                     base_url="http://testserver") as client:
            resp = await client.post("/api/search", files={"file": (
                "q.jpg", copy_of("coffee"), "image/jpeg")})
            assert resp.status_code == 503 and "index build" in detail(resp)
            assert (await client.get("/health")).json()["index_entries"] == 0


# --- serve() -----------------------------------------------------------------------------------

@pytest.fixture
def fake_uvicorn(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    seen: dict = {}

    def run(app: FastAPI, **kw: object) -> None:
        seen.update(kw, app=app)

    monkeypatch.setattr("echoimage.web.app.uvicorn.run", run)
    monkeypatch.setattr("echoimage.web.app.run_processes", run)  # several processes
    yield seen


def test_serve_runs_uvicorn(built: Built, fake_uvicorn: dict) -> None:
    from echoimage.web.app import serve

    port = free_port()
    serve(built.settings, "127.0.0.1", port, WebSettings(serve_workers=1))
    assert fake_uvicorn["host"] == "127.0.0.1" and fake_uvicorn["port"] == port
    assert isinstance(fake_uvicorn["app"], FastAPI)
    assert json.dumps(fake_uvicorn["app"].openapi())  # the schema builds


# --- a real server under hostile input -------------------------------------------------------

@dataclass
class Served:
    """`echoimage serve` running in a subprocess; its stderr is the server's log."""

    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def raw(self, request: bytes, *, close_early: bool = False) -> bytes:
        """Send raw bytes; the whole answer, or b"" when close_early hangs up right away."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(request)
            if close_early:
                return b""
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    def stop(self) -> str:
        """Stop the server (as Ctrl+C does) and return its log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=30)
        return self.log.read_text()


@pytest.fixture
def served(built_copy: Built, tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "echoimage", "--data-dir", str(built_copy.settings.data_dir),
           "serve", "--workers", "1", "--port", str(port)]
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    server = Served(port, proc, log)
    try:
        deadline = time.monotonic() + 120
        while "index loaded" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _post(path: str, media: str, body: bytes, *, chunked: bool = False,
          length: int | None = None) -> bytes:
    framing = ("Transfer-Encoding: chunked" if chunked
               else f"Content-Length: {len(body) if length is None else length}")
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {media}\r\n"
            f"{framing}\r\n\r\n").encode() + body


MULTIPART = "multipart/form-data; boundary=b0undary"
FILE_PART = (b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="q.jpg"\r\n'
             b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff\xe0")
#: a first chunk, then a chunk size that is not hexadecimal
BROKEN_CHUNKS = b"4\r\n--b0\r\nnot-a-size\r\n\r\n"


def test_hostile_requests_leave_one_line_each_and_no_traceback(served: Served) -> None:
    """Broken chunked framing and clients that hang up mid-body are refused with 400 where
    an answer can still be sent, and logged in one line each, without a traceback."""
    broken = [_post("/api/search", MULTIPART, BROKEN_CHUNKS, chunked=True),
              _post("/api/search", "application/json", BROKEN_CHUNKS, chunked=True),
              _post("/api/search", "application/x-www-form-urlencoded", BROKEN_CHUNKS,
                    chunked=True),
              _post("/search", MULTIPART, BROKEN_CHUNKS, chunked=True)]
    for request in broken:
        assert served.raw(request).startswith(b"HTTP/1.1 400 "), request
    hung_up = [_post("/api/search", MULTIPART, FILE_PART, length=100_000),
               _post("/api/search", "application/json", b'{"url": "http://exa', length=500),
               _post("/search", "application/x-www-form-urlencoded", b"url=http", length=500)]
    for request in hung_up:
        served.raw(request, close_early=True)
    refused = len(broken) + len(hung_up)
    deadline = time.monotonic() + 20
    while served.log.read_text().count("body incomplete") < refused:
        if time.monotonic() > deadline or "Traceback" in served.log.read_text():
            break
        time.sleep(0.05)
    # routes that answer without reading the body race uvicorn's own 400 (a late response
    # into a closed connection): many times over, still no traceback
    for n in range(30):
        served.raw([b"GET /health", b"PUT /health", b"POST /api/search"][n % 3]
                   + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n" + BROKEN_CHUNKS)
    health = served.raw(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    assert health.startswith(b"HTTP/1.1 200 ")
    log = served.stop()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log
    assert log.count("body incomplete") == refused, log


@pytest.mark.parametrize(("host", "token", "warns"), [
    ("127.0.0.1", None, False), ("::1", None, False), ("localhost", None, False),
    ("0.0.0.0", None, True), ("192.168.1.5", None, True), ("[::]", None, True),
    ("0.0.0.0", "s3cret", False)])
def test_serve_warns_when_open_to_others(built: Built, fake_uvicorn: dict,
                                         monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture, host: str,
                                         token: str | None, warns: bool) -> None:
    """Listening beyond loopback with no search token logs one warning naming the fix."""
    from echoimage.web.app import serve

    if token:
        monkeypatch.setenv("ECHOIMAGE_SEARCH_TOKEN", token)
    else:
        monkeypatch.delenv("ECHOIMAGE_SEARCH_TOKEN", raising=False)
    with caplog.at_level("WARNING", logger="echoimage.web.app"):
        serve(built.settings, host, free_port())
    said = [r.getMessage() for r in caplog.records if r.name == "echoimage.web.app"]
    assert bool(said) == warns, said
    if warns:
        assert len(said) == 1 and "ECHOIMAGE_SEARCH_TOKEN" in said[0] and host in said[0]


def test_serve_without_a_catalogue_is_one_line(tmp_path: Path, fake_uvicorn: dict) -> None:
    from click.testing import CliRunner

    from echoimage.cli import cli

    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "none"), "serve"])
    assert result.exit_code == 1 and "no catalogue in" in result.output
    assert "Traceback" not in result.output and not fake_uvicorn
    assert not (tmp_path / "none").exists()


@module_loop
async def test_colour_sensitive_search_and_preview(env: Env) -> None:
    """colour_sensitive in JSON and in the form: a hue-turned copy is `recoloured` with it
    and a duplicate without; each result has its colour_distance; the preview is a colour
    JPEG."""
    import cv2

    hsv = cv2.cvtColor(photo("coffee"), cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] = ((hsv[..., 0].astype(int) + 128) % 256).astype(np.uint8)
    data = jpeg(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL), 90)
    verdicts = {}
    for flag in (None, "on", "false"):
        resp = await upload(env, data, **({"colour_sensitive": flag} if flag else {}))
        assert resp.status_code == 200, resp.text
        top = resp.json()["results"][0]
        assert top["url"] == env.url_of("coffee") and top["colour_distance"] > 0.5
        verdicts[flag] = top["verdict"]
    assert verdicts == {None: "duplicate", "on": "recoloured", "false": "duplicate"}
    bad = await upload(env, data, colour_sensitive="maybe")
    assert bad.status_code == 422 and "colour_sensitive" in detail(bad)
    resp = await env.client.post("/api/search", json={"url": f"{env.origin}/coffee.jpg",
                                                      "colour_sensitive": True})
    assert resp.status_code == 200, resp.text
    top = resp.json()["results"][0]
    assert top["verdict"] == "duplicate" and top["colour_distance"] < 0.1
    bad = await env.client.post("/api/search", json={"url": f"{env.origin}/coffee.jpg",
                                                     "colour_sensitive": "yes"})
    assert bad.status_code == 422
    preview = await env.client.get(f"/api/images/{top['id']}/preview")
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/jpeg"
    img = cv2.imdecode(np.frombuffer(preview.content, np.uint8), cv2.IMREAD_COLOR)
    spread = img.astype(int).max(axis=2) - img.astype(int).min(axis=2)
    assert spread.mean() > 20  # coffee is brown and red: a colour image, not a gray one
    assert (await env.client.get("/api/images/999999/preview")).status_code == 404


def _searches(metrics: str, mode: str, name: str = "echoimage_searches_total") -> float:
    """The searches /metrics counts in a mode (full or copies_only), found or not (or,
    with name, a stage histogram's count)."""
    return sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith(name + "{") and f'mode="{mode}"' in line)


@module_loop
async def test_a_search_for_copies_only(env: Env) -> None:
    """copies_only in the form and in JSON: the copies alone (none for an unrelated
    image, which shows its nearest images by default); a value that is no flag is 422;
    /metrics counts the searches answered so."""
    before = (await env.client.get("/metrics")).text
    unrelated = png(synthetic(11, 320))
    shown = await upload(env, unrelated)
    assert shown.status_code == 200 and shown.json()["results"]
    alone = await upload(env, unrelated, copies_only="true")
    assert alone.status_code == 200, alone.text
    assert alone.json()["found"] is False and alone.json()["results"] == []
    assert alone.json()["copies_only"] is True and shown.json()["copies_only"] is False
    copy = await upload(env, jpeg(photo("coffee")[40:, 30:], 85), copies_only="on")
    assert [r["url"] for r in copy.json()["results"]] == [env.url_of("coffee")]
    bad = await upload(env, unrelated, copies_only="maybe")
    assert bad.status_code == 422 and detail(bad) == "copies_only must be true or false"
    resp = await env.client.post("/api/search", json={"url": f"{env.origin}/coffee.jpg",
                                                      "copies_only": True})
    assert resp.status_code == 200, resp.text
    assert [r["verdict"] for r in resp.json()["results"]] == ["duplicate"]
    bad = await env.client.post("/api/search", json={"url": f"{env.origin}/coffee.jpg",
                                                     "copies_only": "yes"})
    assert bad.status_code == 422
    unset = await env.client.post("/api/search", json={"url": f"{env.origin}/coffee.jpg",
                                                       "copies_only": None, "k": 3})
    assert unset.status_code == 200 and len(unset.json()["results"]) == 3  # the default
    # the page sends a hidden "off" and, when checked, the box's "on" after it: the last
    for values, results in ((["off", "on"], 0), (["off"], 5)):
        resp = await upload(env, unrelated, copies_only=values)  # type: ignore[arg-type]
        assert resp.status_code == 200 and len(resp.json()["results"]) == results
    # alone: the unrelated image, the copy, the JSON query, the page's checked box; in
    # full: the first, the null, the unchecked box; each with its stage times by mode
    after = (await env.client.get("/metrics")).text
    for mode, n in (("copies_only", 4), ("full", 3)):
        assert _searches(after, mode) == _searches(before, mode) + n
        stages = [_searches(m, mode, "echoimage_search_stage_seconds_count")
                  for m in (before, after)]
        assert stages[1] - stages[0] == 4 * n  # decode, features, shortlist, rerank


@module_loop
async def test_a_server_that_answers_with_copies_only(env: Env) -> None:
    """ECHOIMAGE_COPIES_ONLY (Settings.copies_only) makes copies only the server's
    default: a search that says nothing gets the copies alone, one that says false the
    nearest images too; the page's box starts checked."""
    settings = env.built.settings.model_copy(update={"copies_only": True})
    app = create_app(settings, web_settings([]))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                     base_url="http://testserver") as client:
            unrelated = png(synthetic(11, 320))

            async def search(**fields: str) -> list[dict[str, object]]:
                resp = await client.post("/api/search", data=fields,
                                         files={"file": ("q.png", unrelated, "image/png")})
                assert resp.status_code == 200, resp.text
                return resp.json()["results"]

            assert await search() == []
            assert len(await search(copies_only="false")) == 5
            assert await search(copies_only="true") == []
            metrics = (await client.get("/metrics")).text
            assert _searches(metrics, "copies_only") == 2  # the setting's and the asked
            assert _searches(metrics, "full") == 1
            page = (await client.get("/")).text
            assert 'id="copies_only" name="copies_only" type="checkbox"\n' \
                   '                      value="on" checked>' in page


@module_loop
async def test_match_picture_from_the_real_resolution(env: Env) -> None:
    """The catalogue side of a match picture is the image itself at its own resolution
    (read again from its file: it is as it was indexed), not the stored 256 px thumbnail in
    the 192 px preview's colours scaled up; a file that changed since falls back to them."""
    import dataclasses

    import cv2

    body = (await upload(env, copy_of("coffee"), k="1")).json()
    token, top = body["query_token"], body["results"][0]
    service = env.app.state.service
    entry = service.cache.get(token)
    # no lines or region drawn over it, so that the picture itself can be compared
    bare = dataclasses.replace(entry.match(top["id"]), pairs=None, region=None,
                               query_box=None)
    drawing = cv2.imdecode(np.frombuffer(
        await asyncio.to_thread(service.match_png, entry, bare), np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imread(top["url"], cv2.IMREAD_COLOR)
    h = drawing.shape[0]
    w = round(original.shape[1] * h / original.shape[0])
    expected = cv2.resize(original, (w, h), interpolation=cv2.INTER_AREA)
    side = drawing[:, -w:].astype(np.float32)
    error = float(np.abs(side - expected).mean())
    assert error < 2.0, error
    # the stored thumbnail scaled up is what a changed file gets (and much further off)
    entry._pngs.clear()
    real = service.catalogue.original
    service.catalogue.original = lambda *a, **k: None
    try:
        fallback = cv2.imdecode(np.frombuffer(
            await asyncio.to_thread(service.match_png, entry, bare), np.uint8),
            cv2.IMREAD_COLOR)
    finally:
        service.catalogue.original = real
    worse = float(np.abs(fallback[:, -w:].astype(np.float32) - expected).mean())
    assert worse > 2 * error, (worse, error)
