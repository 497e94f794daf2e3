"""Indexing over HTTP against a real aiohttp server on 127.0.0.1 (no internet).

`build_index` and `update_index` are synchronous and run their own event loop, so the test
server runs in a background thread with its own loop. It serves an ImageSpaceDB
``/images.json`` whose content a test changes between runs, images at ``/img/<name>.jpg``
from an in-memory dict (strong ETag = sha256 of the bytes, Last-Modified, 304 to a matching
If-None-Match), and a set of misbehaving routes. It counts the requests per route and how
many were conditional.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner
from helpers import (
    ServerThread,
    build_index,
    interrupted_build,
    jpeg,
    mirror,
    photo,
    search_engine,
    store_snapshot,
    synthetic,
    update_index,
    write,
)
from sqlalchemy import select

from echoimage.api import Catalogue
from echoimage.catalogue.reader import CatalogueReader
from echoimage.cli import cli
from echoimage.config import Settings
from echoimage.index.manifest import read_manifest
from echoimage.indexing.work import FeatureParams
from echoimage.search.engine import SearchEngine
from echoimage.store import repo
from echoimage.store.db import open_store, session_factory
from echoimage.store.models import FeatureRow, ImageRow, Status

pytestmark = [pytest.mark.usefixtures("no_network"), pytest.mark.stores]

REPO = Path(__file__).resolve().parents[1]

HTTP_TIMEOUT = 1.0  # Settings.http_timeout of these tests (the whole request)
SLOW_S = 3 * HTTP_TIMEOUT  # /slow.jpg answers after this long
MAX_BYTES = 1_000_000  # Settings.max_bytes; /big.jpg is larger
HTML = (b"<!doctype html><html><head><title>Not found</title></head>"
        b"<body><p>This is a page, not a picture.</p></body></html>")

#: the good photos of the build test (unrelated scikit-image photos, JPEG q92)
GOOD = ("astronaut", "coffee", "chelsea", "rocket", "brick", "clock")


@functools.cache
def photo_jpeg(name: str) -> bytes:
    """A scikit-image photo as JPEG q92."""
    return jpeg(photo(name), 92)


@functools.cache
def synthetic_jpeg(i: int) -> bytes:
    """A distinct 300 px synthetic photo as JPEG q85."""
    return jpeg(synthetic(i), 85)


def etag_of(data: bytes) -> str:
    """The strong ETag the server gives a body: its quoted sha256."""
    return f'"{hashlib.sha256(data).hexdigest()}"'


# --- the server ---------------------------------------------------------------------------

@dataclass
class Served:
    """What the server serves (tests change it between runs) and what it saw."""

    images: dict[str, bytes] = field(default_factory=dict)
    modified: dict[str, str] = field(default_factory=dict)  # Last-Modified per image
    fail: dict[str, int] = field(default_factory=dict)  # image name -> status to answer
    catalogue: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0  # seconds before answering an /img/ request
    delays: dict[str, float] = field(default_factory=dict)  # ... per image name
    hits: Counter[str] = field(default_factory=Counter)  # requests per path
    conditional: Counter[str] = field(default_factory=Counter)  # ... with a validator
    answered_304: Counter[str] = field(default_factory=Counter)
    flaky_failures: int = 2
    slow_s: float = SLOW_S  # how long /slow.jpg takes to answer
    catalogue_delay: float = 0.0  # seconds before answering /images.json
    pages: int = 0  # /pages/<n>.html for n < pages: image /img/p<n>.jpg, a link to the next
    page_delay: float = 0.0  # seconds before answering a page
    base: str = ""

    def url(self, name: str) -> str:
        """URL of an image served from the in-memory dict."""
        return f"{self.base}/img/{name}.jpg"

    @property
    def catalogue_url(self) -> str:
        """URL of the ImageSpaceDB catalogue."""
        return f"{self.base}/images.json"

    def put(self, name: str, data: bytes, listed: bool = True, **meta: Any) -> str:
        """Serve data at /img/<name>.jpg (new bytes: new ETag and Last-Modified); list it."""
        self.images[name] = data
        self.modified[name] = formatdate(time.time(), usegmt=True)
        url = self.url(name)
        if listed and not any(e["url"] == url for e in self.catalogue):
            self.catalogue.append({"url": url, **meta})
        return url

    def unlist(self, url: str) -> None:
        """Drop a URL from images.json (the image itself is still served)."""
        self.catalogue[:] = [e for e in self.catalogue if e["url"] != url]

    def reset_counts(self) -> None:
        """Forget the requests seen so far."""
        self.hits.clear()
        self.conditional.clear()
        self.answered_304.clear()

    def image_hits(self) -> Counter[str]:
        """Requests per /img/ path."""
        return Counter({p: n for p, n in self.hits.items() if p.startswith("/img/")})


def _not_modified(request: web.Request, etag: str, last_modified: str) -> bool:
    """RFC 9110: If-None-Match wins; If-Modified-Since only without it."""
    inm = request.headers.get("If-None-Match")
    if inm is not None:
        tags = [t.strip() for t in inm.split(",")]
        return "*" in tags or etag in tags or f"W/{etag}" in tags
    ims = request.headers.get("If-Modified-Since")
    if ims is not None:
        try:
            return parsedate_to_datetime(last_modified) <= parsedate_to_datetime(ims)
        except (TypeError, ValueError):
            return False
    return False


def make_app(served: Served) -> web.Application:
    routes = web.RouteTableDef()

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        served.hits[request.path] += 1
        if "If-None-Match" in request.headers or "If-Modified-Since" in request.headers:
            served.conditional[request.path] += 1
        resp = await handler(request)
        if resp.status == 304:
            served.answered_304[request.path] += 1
        return resp

    @routes.get("/images.json")
    async def images_json(request: web.Request) -> web.StreamResponse:
        if served.catalogue_delay:
            await asyncio.sleep(served.catalogue_delay)
        return web.Response(body=json.dumps(served.catalogue).encode(),
                            content_type="application/json")

    @routes.get("/pages/{n:\\d+}.html")
    async def page(request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        if served.page_delay:
            await asyncio.sleep(served.page_delay)
        if n >= served.pages:
            return web.Response(status=404, text="no such page")
        more = f'<a href="/pages/{n + 1}.html">next</a>' if n + 1 < served.pages else ""
        return web.Response(text=f'<!doctype html><html><body><img src="/img/p{n}.jpg">{more}'
                                 "</body></html>", content_type="text/html")

    @routes.get("/img/{name}.jpg")
    async def image(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        delay = served.delays.get(name, served.delay)
        if delay:
            await asyncio.sleep(delay)
        if name in served.fail:
            return web.Response(status=served.fail[name], text="failing on purpose")
        data = served.images.get(name)
        if data is None:
            return web.Response(status=404, text="no such image")
        headers = {"ETag": etag_of(data), "Last-Modified": served.modified[name],
                   "Cache-Control": "max-age=60"}
        if _not_modified(request, headers["ETag"], headers["Last-Modified"]):
            return web.Response(status=304, headers=headers)
        return web.Response(body=data, content_type="image/jpeg", headers=headers)

    @routes.get("/slow.jpg")
    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(served.slow_s)
        return web.Response(body=photo_jpeg("camera"), content_type="image/jpeg")

    @routes.get("/flaky.jpg")
    async def flaky(request: web.Request) -> web.StreamResponse:
        if served.hits["/flaky.jpg"] <= served.flaky_failures:
            return web.Response(status=500, text="internal error")
        return web.Response(body=photo_jpeg("coins"), content_type="image/jpeg")

    @routes.get("/gone404.jpg")
    async def gone404(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text="not found")

    @routes.get("/gone410.jpg")
    async def gone410(request: web.Request) -> web.StreamResponse:
        return web.Response(status=410, text="gone")

    @routes.get("/loop.jpg")
    async def loop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/loop.jpg")

    @routes.get("/big.jpg")
    async def big(request: web.Request) -> web.StreamResponse:
        body = photo_jpeg("moon") + bytes(MAX_BYTES + 500_000)
        return web.Response(body=body, content_type="image/jpeg")

    @routes.get("/bigstream.jpg")
    async def bigstream(request: web.Request) -> web.StreamResponse:
        # no Content-Length: the cap must be enforced while streaming
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(photo_jpeg("moon"))
        for _ in range(2 * MAX_BYTES // 65536):
            await resp.write(bytes(65536))
        await resp.write_eof()
        return resp

    @routes.get("/lying.jpg")
    async def lying(request: web.Request) -> web.StreamResponse:
        return web.Response(body=HTML, content_type="image/jpeg")

    @routes.get("/truncated.jpg")
    async def truncated(request: web.Request) -> web.StreamResponse:
        data = photo_jpeg("page")
        return web.Response(body=data[: len(data) // 2], content_type="image/jpeg")

    @routes.get("/text.txt")
    async def text_txt(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"just some plain text, served as a PNG\n" * 4,
                            content_type="image/png")

    app = web.Application(middlewares=[count])
    app.add_routes(routes)
    return app


@pytest.fixture
def served() -> Iterator[Served]:
    """A running server and its state."""
    state = Served()
    server = ServerThread(make_app(state))
    state.base = server.start()
    try:
        yield state
    finally:
        server.stop()


@pytest.fixture(scope="module")
def warm_forkserver() -> None:
    """Start multiprocessing's forkserver (with the feature workers' preload) before a build.

    The runner's first feature worker is spawned from inside its fetch event loop; in a
    process whose forkserver is not running yet that blocks the loop for about a second
    (see test_first_worker_spawn_stalls_fetches), which would make in-flight fetches with
    the short timeouts of these tests time out and be retried. Once per process, so the
    in-process tests below count requests deterministically.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["echoimage.indexing.work"])
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        pool.submit(os.getpid).result(timeout=60)


@pytest.fixture
def settings(tmp_path: Path, warm_forkserver: None, store_url: str | None) -> Settings:
    """A fresh data directory and store; short HTTP timeout and byte cap; two feature
    workers."""
    return Settings(data_dir=tmp_path / "data", workers=2, http_timeout=HTTP_TIMEOUT,
                    max_bytes=MAX_BYTES)


# --- store helpers ------------------------------------------------------------------------

def store_view(settings: Settings) -> dict[str, dict[str, Any]]:
    """image_info of every image in the store, by URL."""
    engine = open_store(settings)
    try:
        with session_factory(engine)() as s:
            return {url: repo.image_info(s, k.id) for url, k in repo.known_images(s).items()}
    finally:
        engine.dispose()


def feature_blobs(settings: Settings) -> dict[str, bytes]:
    """The stored descriptors of every image with features, by URL."""
    engine = open_store(settings)
    try:
        with session_factory(engine)() as s:
            rows = s.execute(select(ImageRow.url, FeatureRow.descriptors)
                             .join(FeatureRow, FeatureRow.image_id == ImageRow.id)).all()
            return {r[0]: bytes(r[1]) for r in rows}
    finally:
        engine.dispose()


def top_url(search: SearchEngine, data: bytes, k: int = 3) -> str | None:
    """URL of the best duplicate match of a query, or None."""
    matches = search.query_bytes(data, k).matches
    return matches[0].url if matches and matches[0].duplicate else None


def copy_of(name: str) -> bytes:
    """A transformed copy of a photo: mirrored, recompressed as JPEG q70."""
    return jpeg(mirror(photo(name)), 70)


# --- (a) + (b): build over HTTP -------------------------------------------------------------

#: each misbehaving route: (store status, a piece of its one-line reason)
BAD = {
    "/slow.jpg": (Status.TIMEOUT, "timed out"),
    "/gone404.jpg": (Status.GONE, "HTTP 404"),
    "/gone410.jpg": (Status.GONE, "HTTP 410"),
    "/loop.jpg": (Status.REDIRECT_ERROR, "redirect loop"),
    "/big.jpg": (Status.TOO_LARGE, "exceeds the cap"),
    "/bigstream.jpg": (Status.TOO_LARGE, "exceeds the cap"),
    "/lying.jpg": (Status.NOT_AN_IMAGE, "looks like HTML"),
    "/truncated.jpg": (Status.DECODE_ERROR, "truncated"),
    "/text.txt": (Status.NOT_AN_IMAGE, "not an image"),
}


def test_build_over_http(served: Served, settings: Settings) -> None:
    for name in GOOD:
        served.put(name, photo_jpeg(name), title=f"Photo of {name}", licence="CC0")
    # a relative entry is resolved against the catalogue's URL
    served.images["grass"] = photo_jpeg("grass")
    served.modified["grass"] = formatdate(usegmt=True)
    served.catalogue.append({"url": "img/grass.jpg", "title": "relative"})
    for path in ["/flaky.jpg", *BAD]:
        served.catalogue.append({"url": served.base + path, "title": path})

    t0 = time.perf_counter()
    summary = build_index(settings, [served.catalogue_url], progress=False)
    took = time.perf_counter() - t0

    n_good = len(GOOD) + 2  # + grass (relative) + flaky
    assert summary.counts[Status.INDEXED] == n_good, summary.as_dict()
    assert summary.index_entries == n_good
    assert summary.sources == [served.catalogue_url]
    assert sum(summary.counts.values()) == n_good + len(BAD)
    assert took < 30, f"build took {took:.1f} s"

    view = store_view(settings)
    assert len(view) == n_good + len(BAD)
    for name in GOOD:
        info = view[served.url(name)]
        assert info["status"] == Status.INDEXED and info["reason"] is None
        assert info["metadata"] == {"title": f"Photo of {name}", "licence": "CC0"}
        assert info["source"] == served.catalogue_url
        assert info["sha256"] == hashlib.sha256(photo_jpeg(name)).hexdigest()
        assert info["bytes"] == len(photo_jpeg(name))
        assert info["indexed_at"] is not None and info["gone_at"] is None
    relative = view[served.url("grass")]  # stored under its absolute URL
    assert relative["status"] == Status.INDEXED
    assert relative["metadata"] == {"title": "relative"}
    flaky = view[served.base + "/flaky.jpg"]
    assert flaky["status"] == Status.INDEXED  # two 500s, retried within one fetch
    assert served.hits["/flaky.jpg"] == served.flaky_failures + 1

    failures = {url: (status, reason) for url, status, reason in summary.failures}
    for path, (status, needle) in BAD.items():
        url = served.base + path
        info = view[url]
        assert info["status"] == status, (path, info)
        reason = info["reason"]
        assert reason and needle in reason and "\n" not in reason, (path, reason)
        assert len(reason) <= 300
        assert failures[url] == (status, reason)
        assert info["source"] == served.catalogue_url
        assert info["metadata"] == {"title": path}
        assert (info["gone_at"] is not None) == (status == Status.GONE)
    # the slow image was tried 1 + 3 times (timeouts are retried), and no more
    assert served.hits["/slow.jpg"] == 4
    # nothing was fetched twice except what is retried on purpose
    once = {p: n for p, n in served.hits.items() if p not in ("/slow.jpg", "/flaky.jpg")}
    assert set(once.values()) == {1}, served.hits
    assert sum(served.conditional.values()) == 0  # a first build has no validators

    # (b) a transformed copy finds the HTTP image, by its URL
    search = search_engine(settings)
    assert search.size == n_good
    for name in ("astronaut", "chelsea"):
        matches = search.query_bytes(copy_of(name), 3).matches
        assert matches[0].url == served.url(name) and matches[0].duplicate
        assert matches[0].orientation == "mirror"
    assert top_url(search, photo_jpeg("coins")) == served.base + "/flaky.jpg"

    # a second build fetches no indexed image again; only the timeout is retried, and now
    # that the server is quick again it is indexed
    served.reset_counts()
    served.slow_s = 0.0
    again = build_index(settings, [served.catalogue_url], progress=False)
    assert dict(again.counts) == {"already-indexed": n_good, "known-failure": len(BAD) - 1,
                                  Status.INDEXED: 1}, again.as_dict()
    assert served.hits == Counter({"/images.json": 1, "/slow.jpg": 1})
    assert store_view(settings)[served.base + "/slow.jpg"]["reason"] is None
    assert top_url(search, copy_of("camera")) == served.base + "/slow.jpg"


# --- a build's duration --------------------------------------------------------------------

#: a build's slow sources: a web page source of PAGES pages, one linked from the other, each
#: answering after PAGE_S seconds; a catalogue file, or a folder's listing, taking READ_S
PAGES, PAGE_S = 5, 0.3
READ_S = PAGES * PAGE_S


@pytest.mark.parametrize("kind", ["page", "catalogue", "folder"])
def test_a_builds_duration_is_the_whole_run(served: Served, settings: Settings,
                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            kind: str) -> None:
    """A build's duration counts the reading of its sources, done before anything is
    recorded (pages scraped one after another, a catalogue file answering slowly, a folder
    listed slowly), as an update's does: its seconds, and the run `index status` shows,
    cover the reading and the processing phase; so does the duration of a build
    interrupted after the reading."""
    quick = settings.model_copy(update={"scrape_delay": 0.0, "http_timeout": 10 * READ_S})
    for i in range(PAGES):
        served.put(f"p{i}", synthetic_jpeg(300 + i), listed=kind == "catalogue")
    follow_pages = None
    if kind == "page":
        served.pages, served.page_delay, follow_pages = PAGES, PAGE_S, PAGES
        source = served.base + "/pages/0.html"
    elif kind == "catalogue":
        served.catalogue_delay = READ_S
        source = served.catalogue_url
    else:
        folder = tmp_path / "folder"
        for i in range(PAGES):
            write(folder / f"p{i}.jpg", synthetic_jpeg(300 + i))
        source = str(folder)
        read = CatalogueReader.read

        def slow_read(self: CatalogueReader, *args: Any, **kwargs: Any) -> Any:
            time.sleep(READ_S)
            return read(self, *args, **kwargs)

        monkeypatch.setattr(CatalogueReader, "read", slow_read)
    with Catalogue(quick) as cat:
        summary = cat.build(source, follow_pages=follow_pages)
        assert summary.counts == {Status.INDEXED: PAGES}, summary.as_dict()
        assert summary.seconds >= READ_S + summary.work_seconds, summary.as_dict()
        [run] = cat.status()["runs"][:1]
        assert run["status"] == "ok" and run["duration_s"] >= READ_S, run

        def interrupted(*args: Any, **kwargs: Any) -> None:
            raise KeyboardInterrupt  # Ctrl-C once the sources are read and recorded

        monkeypatch.setattr("echoimage.indexing.build.index_work", interrupted)
        with pytest.raises(KeyboardInterrupt):
            cat.build(source, follow_pages=follow_pages)
        [run] = cat.status()["runs"][:1]
        assert run["status"] == "interrupted" and run["duration_s"] >= READ_S, run


# --- (c), (d), (e): update over HTTP ----------------------------------------------------------

def test_update_checks_an_image_that_failed_for_its_bytes_again(served: Served,
                                                                settings: Settings) -> None:
    """A served image that cannot be decoded is asked for again by each update, with the
    validators of the bytes that failed: a 304 leaves the failure as it was (nothing
    downloaded); new bytes are indexed."""
    whole = photo_jpeg("rocket")
    url = served.put("rocket", whole[:3000])  # cut short
    served.put("coffee", photo_jpeg("coffee"))
    first = build_index(settings, [served.catalogue_url], progress=False)
    assert dict(first.counts) == {Status.INDEXED: 1, Status.DECODE_ERROR: 1}
    served.reset_counts()
    same = update_index(settings, progress=False)
    assert dict(same.counts) == {"unchanged": 1, f"skipped ({Status.DECODE_ERROR})": 1}
    assert served.answered_304 == Counter({"/img/rocket.jpg": 1, "/img/coffee.jpg": 1})
    served.put("rocket", whole)
    served.reset_counts()
    fixed = update_index(settings, progress=False)
    assert dict(fixed.counts) == {"unchanged": 1, Status.INDEXED: 1}, fixed.as_dict()
    assert served.conditional["/img/rocket.jpg"] == 1
    assert not served.answered_304["/img/rocket.jpg"]  # asked with the old ETag: got 200
    assert top_url(search_engine(settings), copy_of("rocket")) == url


def test_update_fetches_an_image_over_the_pixel_cap_again_once_the_cap_allows_it(
        served: Served, settings: Settings) -> None:
    """A served photo refused over the pixel cap is asked for conditionally while the cap
    is below its size (a 304, nothing downloaded); once the cap allows it, the next update
    asks without validators and indexes it."""
    url = served.put("rocket", photo_jpeg("rocket"))  # 640x427
    served.put("coffee", photo_jpeg("coffee"))
    tight = settings.model_copy(update={"max_pixels": 250_000})
    first = build_index(tight, [served.catalogue_url], progress=False)
    assert dict(first.counts) == {Status.INDEXED: 1, Status.TOO_LARGE: 1}, first.as_dict()
    served.reset_counts()
    same = update_index(tight, progress=False)
    assert dict(same.counts) == {"unchanged": 1, f"skipped ({Status.TOO_LARGE})": 1}
    assert served.answered_304 == Counter({"/img/rocket.jpg": 1, "/img/coffee.jpg": 1})
    served.reset_counts()
    raised = update_index(settings, progress=False)
    assert dict(raised.counts) == {"unchanged": 1, Status.INDEXED: 1}, raised.as_dict()
    assert served.image_hits()["/img/rocket.jpg"] == 1
    assert not served.conditional["/img/rocket.jpg"]  # fetched from scratch
    assert top_url(search_engine(settings), copy_of("rocket")) == url


def test_update_asks_for_a_refused_body_conditionally(served: Served,
                                                     settings: Settings) -> None:
    """A body refused before it was read whole (a page served as image/jpeg, told by its
    first bytes; one over the byte cap, by its Content-Length) keeps the validators the
    server gave it: an update asks with them, and a 304 leaves the failure as it was,
    nothing downloaded. New bytes are indexed; a body over the cap is fetched again from
    scratch once the cap allows its size."""
    page = b"<!doctype html><html><head><title>Not found</title></head><body>" + \
        b"<p>this product is gone</p>" * 40 + b"</body></html>"
    url = served.put("rocket", page)
    coffee = photo_jpeg("coffee")
    served.put("coffee", coffee)
    tight = settings.model_copy(update={"max_bytes": len(coffee) - 1})
    first = build_index(tight, [served.catalogue_url], progress=False)
    assert dict(first.counts) == {Status.NOT_AN_IMAGE: 1, Status.TOO_LARGE: 1}, \
        first.as_dict()
    engine = open_store(settings)
    with session_factory(engine)() as s:
        kept = {k.url: (k.etag, k.last_modified) for k in repo.known_images(s).values()}
    engine.dispose()
    # the ETag only: a page's Last-Modified (an error page's is now) would make an older
    # image answer If-Modified-Since with a 304
    assert kept == {url: (etag_of(page), None),
                    served.url("coffee"): (etag_of(coffee), None)}
    served.reset_counts()
    same = update_index(tight, progress=False)
    assert dict(same.counts) == {f"skipped ({Status.NOT_AN_IMAGE})": 1,
                                 f"skipped ({Status.TOO_LARGE})": 1}, same.as_dict()
    assert same.failures == []
    assert served.answered_304 == Counter({"/img/rocket.jpg": 1, "/img/coffee.jpg": 1})
    served.put("rocket", photo_jpeg("rocket"))
    served.reset_counts()
    raised = update_index(settings, progress=False)
    assert dict(raised.counts) == {Status.INDEXED: 2}, raised.as_dict()
    assert served.conditional["/img/rocket.jpg"] == 1  # asked with the page's ETag: a 200
    assert not served.conditional["/img/coffee.jpg"]  # the cap allows it: from scratch
    assert top_url(search_engine(settings), copy_of("rocket")) == url


#: photos of the update test; each is served at /img/<name>.jpg
UPDATE = ("astronaut", "coffee", "chelsea", "rocket", "brick", "clock")


def test_update_over_http(served: Served, settings: Settings) -> None:
    urls = {name: served.put(name, photo_jpeg(name), title=name) for name in UPDATE}
    built = build_index(settings, [served.catalogue_url], progress=False)
    assert dict(built.counts) == {Status.INDEXED: len(UPDATE)}
    before = store_view(settings)
    blobs = feature_blobs(settings)
    # (e) a serving engine, made before any update and never recreated
    search = search_engine(settings)
    assert top_url(search, copy_of("rocket")) == urls["rocket"]

    # 1. nothing changed: one conditional request per image, every one a 304
    served.reset_counts()
    t0 = time.perf_counter()
    same = update_index(settings, progress=False)
    took_304 = time.perf_counter() - t0
    assert dict(same.counts) == {"unchanged": len(UPDATE)}, same.as_dict()
    assert same.failures == []
    img_hits = served.image_hits()
    assert img_hits == Counter({f"/img/{n}.jpg": 1 for n in UPDATE})
    assert served.conditional == img_hits and served.answered_304 == img_hits
    # no feature work: no CPU time in workers, the same features, the same indexed_at
    assert same.cpu_seconds == 0.0
    assert feature_blobs(settings) == blobs
    after = store_view(settings)
    assert {u: i["indexed_at"] for u, i in after.items()} == \
        {u: i["indexed_at"] for u, i in before.items()}
    assert same.index_entries == len(UPDATE)
    assert took_304 < 15, f"a 304-only update took {took_304:.1f} s"

    # 2. the server changes: new bytes for one, 404 for one, one dropped from images.json,
    #    one new URL, and a transient 503 on an indexed image
    served.put("coffee", photo_jpeg("coins"))  # same URL, other picture: a new ETag
    served.fail["chelsea"] = 404
    served.unlist(urls["rocket"])
    urls["hubble"] = served.put("hubble", photo_jpeg("hubble_deep_field"), title="new")
    served.fail["brick"] = 503
    served.reset_counts()
    upd = update_index(settings, progress=False)
    assert dict(upd.counts) == {
        "changed": 1, Status.GONE: 2, Status.INDEXED: 1, "unchanged": 2,
        f"kept ({Status.HTTP_ERROR})": 1,
    }, upd.as_dict()
    assert upd.index_entries == len(UPDATE) - 2 + 1
    assert "/img/rocket.jpg" not in served.hits  # a URL no longer listed is not fetched
    assert served.hits["/img/hubble.jpg"] == 1 and served.conditional["/img/hubble.jpg"] == 0
    assert served.conditional["/img/coffee.jpg"] == 1  # asked with the old ETag: got 200
    assert served.answered_304 == Counter({"/img/astronaut.jpg": 1, "/img/clock.jpg": 1})
    assert served.hits["/img/brick.jpg"] == 4  # 503 is retried within the fetch

    view = store_view(settings)
    gone = {urls["chelsea"]: "HTTP 404", urls["rocket"]: "no longer in the catalogue"}
    for url, reason in gone.items():
        info = view[url]
        assert info["status"] == Status.GONE and reason in info["reason"], info
        assert info["gone_at"] is not None
        assert info["metadata"] == {"title": url.rsplit("/", 1)[1][:-4]}  # kept
    assert view[urls["coffee"]]["status"] == Status.INDEXED
    assert view[urls["coffee"]]["sha256"] == hashlib.sha256(photo_jpeg("coins")).hexdigest()
    assert view[urls["hubble"]]["status"] == Status.INDEXED
    assert view[urls["hubble"]]["metadata"] == {"title": "new"}
    # (d) the transient failure keeps the old entry and says why
    brick = view[urls["brick"]]
    assert brick["status"] == Status.INDEXED
    assert brick["sha256"] == before[urls["brick"]]["sha256"]
    assert brick["indexed_at"] == before[urls["brick"]]["indexed_at"]
    assert "503" in brick["reason"]
    assert urls["brick"] in feature_blobs(settings)

    # (e) the engine made before the update answers from the updated index
    assert top_url(search, copy_of("coins")) == urls["coffee"]  # the new content
    assert top_url(search, copy_of("coffee")) != urls["coffee"]  # not the old one
    for name in ("chelsea", "rocket"):  # gone: never returned, even for exact bytes
        for data in (copy_of(name), photo_jpeg(name)):
            returned = {m.url for m in search.query_bytes(data, 10).matches}
            assert urls[name] not in returned
    assert top_url(search, copy_of("brick")) == urls["brick"]  # kept through the 503
    assert top_url(search, copy_of("hubble_deep_field")) == urls["hubble"]
    assert top_url(search, copy_of("astronaut")) == urls["astronaut"]
    assert search.size == len(UPDATE) - 2 + 1  # (refreshed by the queries)
    # and a fresh engine agrees
    fresh = search_engine(settings)
    assert fresh.size == search.size
    assert top_url(fresh, copy_of("coins")) == urls["coffee"]

    # the index manifest agrees with the store
    manifest = read_manifest(settings.index_dir)
    assert manifest is not None and manifest.images == len(UPDATE) - 1

    # `index status --json` shows the last run and its counts
    res = CliRunner().invoke(cli, ["--data-dir", str(settings.data_dir), "index", "status",
                                   "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    last = report["runs"][0]
    assert last["kind"] == "update" and last["status"] == "ok"
    assert last["counts"] == dict(upd.counts)
    assert last["sources"] == [served.catalogue_url]
    # the recorded duration is the run's (the summary's seconds, timed in the process)
    assert last["duration_s"] is not None and abs(last["duration_s"] - upd.seconds) < 2.0
    assert last["duration_s"] > 0
    assert [r["kind"] for r in report["runs"][:3]] == ["update", "update", "build"]
    assert report["counts"] == {Status.INDEXED: len(UPDATE) - 1, Status.GONE: 2}
    assert report["index"]["entries"] == len(UPDATE) - 1 and report["index"]["fresh"]

    # 3. the 503 clears: the kept image is simply unchanged again (its ETag still matches)
    served.fail.pop("brick")
    served.reset_counts()
    calm = update_index(settings, progress=False)
    assert calm.counts["unchanged"] == len(UPDATE) - 1
    assert served.answered_304["/img/brick.jpg"] == 1
    # the 404 is still in the catalogue, so it is asked for again (it may come back)
    assert calm.counts[Status.GONE] == 1 and served.hits["/img/chelsea.jpg"] == 1


def test_update_timeout_keeps_entry(served: Served, settings: Settings) -> None:
    """A timeout on an indexed image is transient: counted 'kept (timeout)', still found."""
    urls = {name: served.put(name, photo_jpeg(name)) for name in ("coffee", "clock")}
    build_index(settings, [served.catalogue_url], progress=False)
    served.delay = SLOW_S
    upd = update_index(settings.model_copy(update={"http_timeout": 0.3}), progress=False)
    assert dict(upd.counts) == {f"kept ({Status.TIMEOUT})": 2}, upd.as_dict()
    view = store_view(settings)
    assert all(view[u]["status"] == Status.INDEXED for u in urls.values())
    assert "timed out" in view[urls["clock"]]["reason"]
    served.delay = 0.0
    assert top_url(search_engine(settings), copy_of("clock")) == urls["clock"]


def feature_params_of(settings: Settings) -> dict[str, tuple[str | None, int]]:
    """(params, n_keypoints) of every image with features, by URL."""
    engine = open_store(settings)
    try:
        with session_factory(engine)() as s:
            rows = s.execute(select(ImageRow.url, FeatureRow.params, FeatureRow.n_keypoints)
                             .join(FeatureRow, FeatureRow.image_id == ImageRow.id)).all()
            return {r[0]: (r[1], r[2]) for r in rows}
    finally:
        engine.dispose()


def test_update_re_extracts_features_made_with_other_parameters(served: Served,
                                                                  settings: Settings) -> None:
    """A store indexed with other feature settings (an older version): the update fetches
    those images without validators (a 304 has no bytes to extract from) and extracts them
    again; the next update is back to cheap conditional requests."""
    names = ("astronaut", "coffee", "brick")
    urls = {n: served.put(n, photo_jpeg(n)) for n in names}
    old = settings.model_copy(update={"orb_features": 300})
    build_index(old, [served.catalogue_url], progress=False)
    assert {p for p, _ in feature_params_of(settings).values()} == {
        FeatureParams.from_settings(old).key}
    served.reset_counts()
    upd = update_index(settings, progress=False)
    assert dict(upd.counts) == {"re-extracted": len(names)}, upd.as_dict()
    assert sum(served.conditional.values()) == 0
    assert served.image_hits() == Counter({f"/img/{n}.jpg": 1 for n in names})
    now = feature_params_of(settings)
    assert {p for p, _ in now.values()} == {FeatureParams.from_settings(settings).key}
    assert all(now[u][1] > 300 for u in urls.values())  # textured photos: > 300 keypoints
    served.reset_counts()
    again = update_index(settings, progress=False)
    assert dict(again.counts) == {"unchanged": len(names)}
    assert served.conditional == served.image_hits()
    # rows from before parameters were recorded count as made with other ones
    engine = open_store(settings)
    with session_factory(engine).begin() as s:
        s.execute(FeatureRow.__table__.update().values(params=None))
    engine.dispose()
    assert dict(update_index(settings, progress=False).counts) == {"re-extracted": len(names)}


def test_unchanged_update_processes_nothing(served: Served, settings: Settings) -> None:
    served.put("clock", photo_jpeg("clock"))
    build_index(settings, [served.catalogue_url], progress=False)
    same = update_index(settings, progress=False)
    assert dict(same.counts) == {"unchanged": 1}
    assert same.processed == 0  # docstring: "went through decode and feature extraction"


def test_unchanged_update_leaves_serving_engine_alone(served: Served, settings: Settings
                                                     ) -> None:
    """An update that finds nothing changed moves no change number: the index files stay as
    they are and a serving engine keeps the snapshot it has (nothing reloaded)."""
    urls = {n: served.put(n, photo_jpeg(n)) for n in ("coffee", "clock", "rocket", "brick")}
    build_index(settings, [served.catalogue_url], progress=False)
    search = search_engine(settings)
    assert top_url(search, copy_of("clock")) == urls["clock"]
    before = search.live.snapshot()
    files = sorted(p.name for p in settings.index_dir.iterdir())
    with session_factory(search.store)() as s:
        mark = repo.current_seq(s)
    same = update_index(settings, progress=False)
    assert dict(same.counts) == {"unchanged": 4}
    assert same.index["action"] == "unchanged"
    assert top_url(search, copy_of("clock")) == urls["clock"]
    assert search.live.snapshot() is before
    assert sorted(p.name for p in settings.index_dir.iterdir()) == files
    with session_factory(search.store)() as s:
        assert repo.changed_since(s, mark, 100) == []  # nothing changed


# --- (f): resume over HTTP --------------------------------------------------------------------

RESUME_N = 200


def test_resume_over_http(served: Served, settings: Settings) -> None:
    urls = [served.put(f"s{i:03d}", synthetic_jpeg(i)) for i in range(RESUME_N)]
    served.delay = 0.05  # ~160 requests/s at 8 per host: the build takes a few seconds
    before, killed, log = interrupted_build(settings.data_dir, served.catalogue_url, RESUME_N,
                                            timeout=40)
    assert killed, f"the build was not interrupted mid-run: {log.read_text()[-2000:]}"
    assert 0 < before < RESUME_N
    first_hits = served.image_hits()

    served.reset_counts()
    served.delay = 0.0
    summary = build_index(settings, [served.catalogue_url], progress=False)
    assert summary.counts["already-indexed"] == before
    assert summary.counts[Status.INDEXED] == RESUME_N - before
    assert summary.failures == []
    second_hits = served.image_hits()
    # what was indexed before the kill is not fetched again; the rest exactly once
    assert sum(second_hits.values()) == RESUME_N - before
    assert all(n == 1 for n in second_hits.values())
    assert all(first_hits[p] + second_hits[p] >= 1 for p in
               (f"/img/s{i:03d}.jpg" for i in range(RESUME_N)))

    snap = store_snapshot(settings, runs=5)
    known, counts, state, ids, runs = snap.known, snap.counts, snap.state, snap.ids, snap.runs
    assert sorted(known) == sorted(urls)  # every URL once
    assert counts == {Status.INDEXED: RESUME_N}
    assert len(ids) == len(set(ids.tolist())) == RESUME_N  # one feature row each
    assert [r["status"] for r in runs[:2]] == ["ok", "interrupted"]
    manifest = read_manifest(settings.index_dir)
    assert manifest is not None and manifest.images == state.count == RESUME_N
    assert manifest.seq == state.seq


# --- the first worker spawn stalls the fetch loop --------------------------------------------

def test_first_worker_spawn_stalls_fetches(served: Served, tmp_path: Path) -> None:
    """A fresh `echoimage index build` process, 8 images answered 20 ms apart, a 0.3 s
    HTTP timeout: every image should be requested once."""
    names = [f"s{i}" for i in range(8)]
    for i, name in enumerate(names):
        served.put(name, synthetic_jpeg(100 + i))
        served.delays[name] = 0.02 * (i + 1)
    env = {**os.environ, "ECHOIMAGE_HTTP_TIMEOUT": "0.3"}
    cmd = [sys.executable, "-m", "echoimage", "--data-dir", str(tmp_path / "data"), "index",
           "build", served.catalogue_url, "-q", "--json", "--workers", "2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["counts"] == {Status.INDEXED: len(names)}
    # every image answered well within the timeout, so none needs a second request
    assert served.image_hits() == Counter({f"/img/{n}.jpg": 1 for n in names})
