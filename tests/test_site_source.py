"""A website as a catalogue source that stays current: `index build PAGE_URL` scrapes a
small shop served by aiohttp on 127.0.0.1 (every way a page refers to an image, robots.txt,
same-site links) and indexes each image once with the page it was found on; after the site
changes (5 images removed, 5 replaced, 5 added), one `index update` makes the catalogue
match it exactly. The README's "Keep a website current" recipe runs as written, with the
test site standing in for shop.example."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner
from helpers import REPO, jpeg, png, synthetic
from test_scrape_site import (
    EXPECTED,
    GIF,
    INDEX,
    MORE_CSS,
    PAGE2,
    PAGE3,
    ROBOTS,
    SECRET,
    SITE_CSS,
)

from echoimage.cli import cli
from echoimage.config import Settings
from echoimage.store.db import open_store, session_factory
from echoimage.store.models import ImageRow, Source
from echoimage.types import Status

pytestmark = pytest.mark.usefixtures("no_network")

#: references taken off the site (each is on one line of one page or stylesheet)
REMOVED = ["/img/lz.jpg", "/img/video-poster.jpg", "/img/page3.jpg", "/img/tw.jpg",
           "/img/more-2x.jpg"]
#: images whose bytes change at the same URL (found through og:image, a stylesheet, a
#: srcset, a link to the full size and a <picture>)
REPLACED = ["/img/og.jpg", "/img/css-hero.jpg", "/img/p-1280.jpg",
            "/img/full/product-1.jpg", "/img/pic-1600.avif"]
#: images added, each a different way: (page, markup)
ADDED = [
    ("/shop/page2.html", '<img src="/img/new-0.jpg" alt="New 0">'),
    ("/shop/page2.html", '<img src="/img/new-1-s.jpg" srcset="/img/new-1.jpg 2x">'),
    ("/shop/page3.html", '<div style="background-image: url(/img/new-2.jpg)"></div>'),
    ("/shop/index.html", '<a href="/img/full/new-3.jpg"><img src="/img/t3.jpg"></a>'),
    ("/shop/index.html", '<img src="/img/p.gif" data-original="/img/new-4.jpg">'),
]
ADDED_PATHS = {"/img/new-0.jpg", "/img/new-1.jpg", "/img/new-2.jpg", "/img/full/new-3.jpg",
               "/img/new-4.jpg"}


def image_bytes(path: str, version: int = 0) -> bytes:
    """The bytes the site serves at path (a distinct picture per path and version)."""
    seed = int(hashlib.sha256(f"{path}:{version}".encode()).hexdigest()[:6], 16) % 100_000
    pixels = synthetic(seed, 240)
    return png(pixels) if path.endswith(".png") else jpeg(pixels, 88)


@dataclass
class Shop:
    """A shop site that can change: its pages, stylesheets and images, and what it was
    asked (path, If-None-Match)."""

    server: TestServer | None = None
    changed: bool = False
    down: set[str] = field(default_factory=set)  # pages answering 503
    requests: list[tuple[str, str | None]] = field(default_factory=list)

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path)).rstrip("/") if path == "" else \
            str(self.server.make_url(path))

    def texts(self, host: str) -> dict[str, str]:
        """Pages and stylesheets by path, as the site is now."""
        index = INDEX.replace("{HOST}", host).replace("{GIF}", GIF)
        texts = {"/shop/index.html": index, "/shop/page2.html": PAGE2,
                 "/shop/page3.html": PAGE3, "/private/secret.html": SECRET,
                 "/css/site.css": SITE_CSS, "/css/more.css": MORE_CSS}
        if self.changed:
            for path, text in texts.items():
                lines = [ln for ln in text.splitlines()
                         if not any(f'"{p}"' in ln or f"({p})" in ln or f"url({p})" in ln
                                    for p in REMOVED)]
                texts[path] = "\n".join(lines) + "\n"
            for page, markup in ADDED:
                texts[page] = texts[page].replace("</body>", f"{markup}\n</body>")
        texts["/products"] = texts["/shop/index.html"]  # the README's example page
        return texts

    def images(self) -> dict[str, bytes]:
        """Image bytes by path, as the site is now."""
        paths = set(EXPECTED) | {"/img/secret.jpg"}
        if self.changed:
            paths = (paths - set(REMOVED)) | ADDED_PATHS
        return {p: image_bytes(p, 1 if self.changed and p in REPLACED else 0)
                for p in paths}

    def listed(self) -> set[str]:
        """URLs of the images the site shows now (robots.txt keeps /private/ out)."""
        return {self.url(p) for p in self.images() if p != "/img/secret.jpg"}


async def start_shop(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Shop:
    shop = Shop()

    async def handler(request: web.Request) -> web.StreamResponse:
        shop.requests.append((request.path, request.headers.get("If-None-Match")))
        if request.path == "/robots.txt":
            return web.Response(text=ROBOTS, content_type="text/plain")
        if request.path in shop.down:
            return web.Response(status=503, text="busy")
        texts = shop.texts(request.host)
        if request.path in texts:
            kind = "text/css" if request.path.endswith(".css") else "text/html"
            return web.Response(text=texts[request.path], content_type=kind)
        data = shop.images().get(request.path)
        if data is None:
            return web.Response(status=404, text="not found")
        etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        kind = "image/png" if request.path.endswith(".png") else "image/jpeg"
        return web.Response(body=data, content_type=kind, headers={"ETag": etag})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    shop.server = await aiohttp_server(app, host="127.0.0.1")
    return shop


def catalogue_rows(data_dir: Path) -> tuple[dict[str, tuple[str, str | None, dict]],
                                            list[Source]]:
    """url → (status, sha256, metadata) of every image row, and the sources."""
    engine = open_store(Settings(data_dir=data_dir), create=False)
    try:
        with session_factory(engine)() as session:
            rows = {r.url: (r.status, r.sha256, r.meta or {})
                    for r in session.query(ImageRow).all()}
            sources = session.query(Source).all()
            session.expunge_all()
    finally:
        engine.dispose()
    return rows, sources


def assert_matches_the_site(shop: Shop, data_dir: Path) -> dict[str, tuple]:
    """The catalogue's indexed images are exactly the site's, with the site's bytes."""
    rows, _ = catalogue_rows(data_dir)
    indexed = {u: r for u, r in rows.items() if r[0] == Status.INDEXED}
    assert set(indexed) == shop.listed(), sorted(set(indexed) ^ shop.listed())
    served = {shop.url(p): hashlib.sha256(b).hexdigest() for p, b in shop.images().items()}
    assert {u: r[1] for u, r in indexed.items()} == {u: served[u] for u in indexed}
    return rows


async def run_cli(*args: str, delay: str = "0") -> dict:
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, list(args),
        env={"ECHOIMAGE_SCRAPE_DELAY": delay}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.stores
async def test_a_site_built_then_kept_current(aiohttp_server, tmp_path: Path,
                                              store_url: str | None) -> None:
    shop = await start_shop(aiohttp_server)
    data = str(tmp_path / "data")
    start = shop.url("/shop/index.html")
    built = await run_cli("--data-dir", data, "index", "build", start, "--follow-pages", "10",
                          "--json", "-q")
    assert built["counts"] == {"indexed": len(EXPECTED)}, built
    rows = assert_matches_the_site(shop, tmp_path / "data")
    assert len(rows) == len(EXPECTED)  # every image found once, nothing else recorded
    assert rows[shop.url("/img/css-hero.jpg")][2] == {"page": start}
    assert rows[shop.url("/img/tw.jpg")][2] == {"page": shop.url("/shop/page2.html")}
    assert rows[shop.url("/img/full/product-1.jpg")][2]["alt"] == "Product 1"
    assert ("/private/secret.html", None) not in shop.requests  # robots.txt
    _, sources = catalogue_rows(tmp_path / "data")
    assert [(s.uri, s.kind, s.follow_pages) for s in sources] == [(start, "page", 10)]

    # the site changes: 5 images taken off it, 5 replaced at the same URL, 5 added
    shop.changed = True
    shop.requests.clear()
    updated = await run_cli("--data-dir", data, "index", "update", "--json", "-q")
    unchanged = len(EXPECTED) - len(REMOVED) - len(REPLACED)
    assert updated["counts"] == {"indexed": 5, "changed": 5, "gone": 5,
                                 "unchanged": unchanged}, updated
    rows = assert_matches_the_site(shop, tmp_path / "data")
    gone = {u for u, r in rows.items() if r[0] == Status.GONE}
    assert gone == {shop.url(p) for p in REMOVED}
    assert len(rows) == len(EXPECTED) + len(ADDED)  # nothing twice
    # the unchanged images cost a 304: asked with their ETag
    asked = {p for p, etag in shop.requests if etag}
    assert {shop.url(p) for p in asked} >= {u for u in shop.listed()
                                            if u not in {shop.url(a) for a in ADDED_PATHS}}

    # a page that does not answer this time: the images last found on it are kept
    shop.down = {"/shop/page3.html"}
    again = await run_cli("--data-dir", data, "index", "update", "--json", "-q")
    assert "gone" not in again["counts"], again
    rows = assert_matches_the_site(shop, tmp_path / "data")
    assert {u for u, r in rows.items() if r[0] == Status.GONE} == gone
    # and when the page is taken off the site (404), its images are gone
    shop.down = set()
    page3_only = {"/img/p3-src.jpg", "/img/p3-bg.jpg", "/img/new-2.jpg"}
    original = Shop.texts

    def without_page3(self: Shop, host: str) -> dict[str, str]:
        texts = original(self, host)
        del texts["/shop/page3.html"]
        return texts

    Shop.texts = without_page3  # type: ignore[method-assign]
    try:
        last = await run_cli("--data-dir", data, "index", "update", "--json", "-q")
    finally:
        Shop.texts = original  # type: ignore[method-assign]
    assert last["counts"]["gone"] == len(page3_only), last
    rows, _ = catalogue_rows(tmp_path / "data")
    assert {u for u, r in rows.items() if r[0] == Status.GONE} == \
        gone | {shop.url(p) for p in page3_only}


async def test_a_page_url_that_is_an_image_or_a_catalogue(aiohttp_server,
                                                          tmp_path: Path) -> None:
    """A URL whose name does not say what it is is read by what it serves: an image is one
    image, a page with no image is refused in one line and nothing is created."""
    shop = await start_shop(aiohttp_server)
    data = tmp_path / "data"
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["--data-dir", str(data), "index", "build", "-q",
                                  shop.url("/private/secret.html")],
        env={"ECHOIMAGE_SCRAPE_DELAY": "0"})
    assert result.exit_code == 1
    assert result.output == (f"Error: {shop.url('/private/secret.html')}: disallowed by "
                             f"robots.txt for {Settings().user_agent}\n")
    assert not data.exists()


# --- the README's recipe ------------------------------------------------------------------

def readme_recipe() -> tuple[list[str], str]:
    """The shell lines and the crontab line of the README's "Keep a website current"."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Keep a website current"):]
    section = section[:section.index("\n### ", 5)]
    shell = re.search(r"```sh\n(.*?)```", section, re.S)
    cron = re.search(r"```cron\n(.*?)```", section, re.S)
    assert shell is not None and cron is not None
    lines = [ln.split("  #")[0].strip() for ln in shell.group(1).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")], cron.group(1).strip()


@pytest.mark.slow
async def test_the_readmes_website_recipe_runs_as_written(aiohttp_server,
                                                          tmp_path: Path) -> None:
    """Each line of the recipe, run by bash from the repository with the test site for
    https://shop.example and a temporary folder for /srv/shop (and the default scrape
    delay): the build, then after the site changed, the cron script (the crontab line's
    command): the catalogue matches the site."""
    shop = await start_shop(aiohttp_server)
    lines, cron = readme_recipe()
    data = tmp_path / "srv-shop"

    def as_here(line: str) -> str:
        return line.replace("https://shop.example", shop.url("")).replace(
            "/srv/shop", str(data)).replace("/opt/echoimage/", "")

    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOIMAGE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"

    async def bash(line: str) -> str:
        proc = await asyncio.to_thread(subprocess.run, ["bash", "-c", as_here(line)],
                                       cwd=REPO, env=env, capture_output=True, text=True,
                                       timeout=600)
        assert proc.returncode == 0, (line, proc.stdout, proc.stderr)
        return proc.stdout

    for line in lines:
        if "reindex-cron.sh" not in line:
            await bash(line)
    assert_matches_the_site(shop, data)
    shop.changed = True
    command = cron.split(None, 5)[5]  # the crontab line's command, after the schedule
    assert command.startswith("ECHOIMAGE_DATA_DIR=/srv/shop ") and "reindex-cron.sh" in command
    assert any(command.split()[-1].endswith(ln.split()[-1]) for ln in lines
               if "reindex-cron.sh" in ln)  # the recipe runs what cron runs
    await bash(command)
    assert_matches_the_site(shop, data)
    log = (data / "reindex.log").read_text()
    assert '"gone": 5' in log and '"changed": 5' in log, log
