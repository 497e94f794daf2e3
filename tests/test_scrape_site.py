"""The scraper on a small website served by aiohttp on 127.0.0.1 that uses every way a page
refers to an image: every image is found exactly once, robots.txt keeps it out of one path,
and its requests to the host are spaced by the delay (checked on the times the server
recorded them, not on the test's clock)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner

from echoimage import __version__
from echoimage.catalogue.scrape import scrape
from echoimage.cli import cli
from echoimage.config import Settings
from echoimage.fetch.client import FetchConfig

pytestmark = pytest.mark.usefixtures("no_network")

GIF = "data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw=="

INDEX = """<!doctype html>
<html><head>
<title>Shop</title>
<meta property="og:image" content="/img/og.jpg">
<meta property="og:image:secure_url" content="/img/og.jpg">
<meta name="twitter:image" content="/img/og.jpg">
<link rel="icon" href="/favicon.ico">
<link rel="stylesheet" href="/css/site.css">
<link rel="preload" as="image" href="/img/hero-800.jpg"
      imagesrcset="/img/hero-800.jpg 800w, /img/hero-1600.jpg 1600w">
<style>
  .banner { background: #fff url("/img/banner.jpg") no-repeat; }
  @media (min-width: 800px) {
    .wide { background-image: image-set("/img/wide-1x.jpg" 1x, "/img/wide-2x.jpg" 2x); }
  }
  .logo { background-image: url(/img/site-logo.png); }
</style>
</head><body>
<div class="banner"></div>
<div style="background-image: url('/img/inline.jpg'); color: red"></div>
<div class="lazy" data-bg="/img/lazy-bg.jpg"></div>
<img src="{GIF}" data-original="/img/orig.jpg" alt="Original">
<img src="/img/placeholder.gif" data-src="/img/dsrc.jpg">
<img src="/img/ds-400.jpg" data-srcset="/img/ds-400.jpg 400w, /img/ds-900.jpg 900w">
<img data-lazy-src="/img/lz.jpg">
<img src="/img/p-320.jpg" srcset="/img/p-320.jpg 320w, /img/p-1280.jpg 1280w" alt="Plain">
<picture>
  <source type="image/avif" srcset="/img/pic-800.avif 800w, /img/pic-1600.avif 1600w">
  <source type="image/webp" srcset="/img/pic-800.webp 800w">
  <img src="/img/pic-400.jpg" alt="Pictured">
</picture>
<a href="/img/full/product-1.jpg"><img src="/img/thumb/product-1.jpg" alt="Product 1"></a>
<a href="/img/full/poster-big.png">Download the poster</a>
<video poster="/img/video-poster.jpg" src="/media/clip.mp4"></video>
<img src="/img/silicone-case.jpg"><img src="/lexicon/word.jpg">
<img src="/img/site-logo.png"><img src="/img/favicon-32.png">
<img src="/img/./orig.jpg#zoom"><img src="//{HOST}/img/inline.jpg">
<img src="HTTP://{HOST}/img/p-1280.jpg">
<a href="/shop/page2.html">page 2</a>
<a href="/private/secret.html">staff only</a>
<a href="/shop/page3.html#top">page 3</a>
</body></html>
"""

PAGE2 = """<html><head>
<meta name="twitter:image" content="/img/tw.jpg">
<link rel="stylesheet" href="/css/site.css">
</head><body>
<img src="/img/p-1280.jpg"><img src="/img/page2.jpg">
<a href="/shop/index.html">home</a>
</body></html>
"""

PAGE3 = """<html><head><link rel="image_src" href="/img/p3-src.jpg"></head><body>
<section style="background: url(/img/p3-bg.jpg) center / cover"></section>
<img src="/img/page3.jpg">
</body></html>
"""

SECRET = '<html><body><img src="/img/secret.jpg"></body></html>'

SITE_CSS = """@import url("/css/more.css");
/* a comment with url(/img/not-this.jpg) in it */
.hero { background-image: url(../img/css-hero.jpg); }
.again { background: url(/img/banner.jpg); }
.sprite { background: url(/img/sprite.png) -10px 0; }
"""

MORE_CSS = """.more {
  background-image: -webkit-image-set(url(/img/more-1x.jpg) 1x, url(/img/more-2x.jpg) 2x);
}
"""

#: every image of the site, once (paths)
EXPECTED = {
    "/img/og.jpg", "/img/hero-1600.jpg", "/img/banner.jpg", "/img/wide-2x.jpg",
    "/img/inline.jpg", "/img/lazy-bg.jpg", "/img/orig.jpg", "/img/dsrc.jpg",
    "/img/ds-900.jpg", "/img/lz.jpg", "/img/p-1280.jpg", "/img/pic-1600.avif",
    "/img/full/product-1.jpg", "/img/full/poster-big.png", "/img/video-poster.jpg",
    "/img/silicone-case.jpg", "/lexicon/word.jpg", "/img/tw.jpg", "/img/page2.jpg",
    "/img/page3.jpg", "/img/p3-src.jpg", "/img/p3-bg.jpg", "/img/css-hero.jpg",
    "/img/more-2x.jpg",
}

ROBOTS = "User-agent: *\nDisallow: /private/\n"


@dataclass
class Site:
    """The server, and each request it got: (path, time it arrived, user agent)."""

    server: TestServer
    robots: str
    requests: list[tuple[str, float, str]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    @property
    def paths(self) -> list[str]:
        return [p for p, _, _ in self.requests]

    def gaps(self, start: int = 0, end: int | None = None) -> list[float]:
        """Seconds between the requests start to end, one after the other."""
        times = [t for _, t, _ in self.requests[start:end]]
        return [b - a for a, b in zip(times, times[1:], strict=False)]


async def start_site(aiohttp_server: Callable[..., Awaitable[TestServer]],
                     robots: str) -> Site:
    site: Site | None = None

    async def handler(request: web.Request) -> web.StreamResponse:
        assert site is not None
        site.requests.append((request.path, time.monotonic(),
                              request.headers.get("User-Agent", "")))
        host = request.host
        index = INDEX.replace("{HOST}", host).replace("{GIF}", GIF)
        html = {"/shop/index.html": index, "/shop/page2.html": PAGE2, "/shop/page3.html": PAGE3,
                "/private/secret.html": SECRET,
                "/products": index, "/sale": PAGE3}  # the README's example pages
        css = {"/css/site.css": SITE_CSS, "/css/more.css": MORE_CSS}
        if request.path == "/robots.txt":
            return web.Response(text=site.robots, content_type="text/plain")
        if request.path in html:
            return web.Response(text=html[request.path], content_type="text/html")
        if request.path in css:
            return web.Response(text=css[request.path], content_type="text/css")
        return web.Response(status=404, text="not found")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = await aiohttp_server(app, host="127.0.0.1")
    site = Site(server, robots)
    return site


CFG = FetchConfig(connect_timeout=1.0, read_timeout=2.0, total_timeout=5.0, retries=0)


async def test_every_image_once_robots_and_delay(aiohttp_server) -> None:
    site = await start_site(aiohttp_server, ROBOTS)
    report = await scrape([site.url("/shop/index.html")], follow_pages=10, fetcher_config=CFG,
                          delay=0.3)
    urls = [e["url"] for e in report.images]
    assert len(urls) == len(set(urls)), urls
    assert set(urls) == {site.url(p) for p in EXPECTED}, sorted(
        set(urls) ^ {site.url(p) for p in EXPECTED})
    by_url = {e["url"]: e for e in report.images}
    assert by_url[site.url("/img/full/product-1.jpg")]["alt"] == "Product 1"
    assert by_url[site.url("/img/css-hero.jpg")]["page"] == site.url("/shop/index.html")
    # robots.txt first and once; the disallowed page never asked for; nothing read twice
    assert site.paths[0] == "/robots.txt"
    assert "/private/secret.html" not in site.paths
    assert sorted(site.paths) == sorted([
        "/robots.txt", "/shop/index.html", "/shop/page2.html", "/shop/page3.html",
        "/css/site.css", "/css/more.css"])
    assert f"{site.url('/private/secret.html')}: skipped, disallowed by robots.txt" \
        in report.notes
    # the per-host delay, on the server's own record of when each request arrived
    assert min(site.gaps()) >= 0.3, site.gaps()
    # a clear user agent: EchoImage and its version
    agents = {ua for _, _, ua in site.requests}
    assert agents == {Settings().user_agent}
    assert Settings().user_agent.startswith(f"EchoImage/{__version__} ")


async def test_crawl_delay_and_agent_group_of_robots_txt(aiohttp_server) -> None:
    robots = ("User-agent: *\nDisallow: /\n\n"
              "User-agent: EchoImage\nDisallow: /shop/page2.html\nCrawl-delay: 0.5\n")
    site = await start_site(aiohttp_server, robots)
    report = await scrape([site.url("/shop/index.html")], follow_pages=1, fetcher_config=CFG,
                          delay=0.0)
    assert "/shop/page2.html" not in site.paths  # EchoImage's own group applies
    assert "/shop/index.html" in site.paths
    assert min(site.gaps()) >= 0.5, site.gaps()
    assert any("robots.txt asks for 0.5 s" in n for n in report.notes), report.notes


def readme_scrape_commands() -> list[list[str]]:
    """The `echoimage catalogue scrape` lines of the README, as argument lists."""
    from test_readme import COMMANDS

    return [args for args in COMMANDS if args[:2] == ["catalogue", "scrape"]]


@pytest.mark.slow
async def test_the_readmes_scrape_commands_run_as_written(aiohttp_server, tmp_path: Path,
                                                          monkeypatch) -> None:
    """The README's scrape lines, on the test site standing in for shop.example (with the
    default delay: they take a few seconds)."""
    site = await start_site(aiohttp_server, ROBOTS)
    commands = readme_scrape_commands()
    assert len(commands) == 2
    monkeypatch.chdir(tmp_path)
    outputs = []
    for args in commands:
        args = [a.replace("https://shop.example", site.url("").rstrip("/")) for a in args]
        start = len(site.requests)
        result = await asyncio.to_thread(CliRunner().invoke, cli, args,
                                         catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
        assert min(site.gaps(start)) >= Settings().scrape_delay  # within one run
    written = [e["url"] for e in json.loads((tmp_path / "images.json").read_text())]
    assert sorted(written) == sorted(site.url(p) for p in EXPECTED)
    assert "0 new; images.json unchanged" in outputs[1]  # /sale's images were all found


async def test_cli_scrape_of_the_site(aiohttp_server, tmp_path: Path) -> None:
    site = await start_site(aiohttp_server, ROBOTS)
    target = tmp_path / "images.json"
    env = {"ECHOIMAGE_SCRAPE_DELAY": "0.2", "ECHOIMAGE_USER_AGENT": "EchoImage/test (+ops)"}
    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["catalogue", "scrape", site.url("/shop/index.html"),
                                  "--follow-pages", "10", "-o", str(target)],
        env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    written = [e["url"] for e in json.loads(target.read_text())]
    assert sorted(written) == sorted(site.url(p) for p in EXPECTED)
    assert f"{len(EXPECTED)} image URLs from 3 pages" in result.output
    assert {ua for _, _, ua in site.requests} == {"EchoImage/test (+ops)"}
    assert min(site.gaps()) >= 0.2
