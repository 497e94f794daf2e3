"""Page scraper against a real aiohttp server on 127.0.0.1, and the images.json writer."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from click.testing import CliRunner, Result
from helpers import free_port

from echoimage.catalogue.scrape import (
    ExtensionSkip,
    ScrapeFilters,
    decode_html,
    largest_candidate,
    parse_page,
    parse_srcset,
    scrape,
    write_catalogue,
)
from echoimage.cli import cli
from echoimage.errors import CatalogueError
from echoimage.fetch.client import FetchConfig

GIF_DATA_URI = "data:image/gif;base64,R0lGODlhAQABAAAAACH5BAEKAAEALAAAAAABAAEAAAICTAEAOw=="

INDEX = f"""<!DOCTYPE html>
<html><head>
<title>Gallery</title>
<link rel="icon" href="/favicon.ico">
<base href="/assets/">
</head><body>
<img src="/img/site-logo.png" alt="Logo">
<img src="/favicon.png">
<img src="photo1.jpg" alt="First   photo">
<img src="/img/small.jpg" alt="Responsive"
     srcset="/img/p-320.jpg 320w, /img/p-1280.jpg 1280w, /img/p-640.jpg 640w">
<img src="{GIF_DATA_URI}" data-src="lazy.png" alt="Lazy">
<img src="{GIF_DATA_URI}">
<img data-lazy-src="/img/lazier.webp">
<picture>
  <source type="image/avif" srcset="pic-1x.avif 1x, pic-2x.avif 2x">
  <source data-srcset="pic-a.webp 400w, pic-b.webp 800w">
  <img src="pic.jpg" alt="Pictured">
</picture>
<img src="doc.svg"><img src="/img/no-extension">
<img src="img/category-menu-arrow.png"><img src="ui-sprite.png">
<img src="photo1.jpg#again" alt="duplicate">
<img src="/img/p-1280.jpg" alt="duplicate too">
<p>Unclosed <b>markup <i>everywhere
<a href="/site/page2.html">next page</a>
<a href="/site/missing.html">broken link</a>
<a href="http://other.invalid/page.html">another host</a>
<a href="/img/big.jpg">an image link, not a page</a>
<a href="mailto:someone@example.invalid">mail</a>
</body></html>
"""

PAGE2 = """<html><body>
<img src="/img/second.png" alt="Second">
<img src="/assets/photo1.jpg" alt="seen on the first page">
<a href="/site/index.html">home</a>
<a href="/site/page3.html">deeper</a>
</body></html>
"""

PAGE3 = '<html><body><img src="/img/third.gif"></body></html>'

#: a page whose only images are filtered out (a logo, a sprite, a data: URI)
NO_IMAGES = f"""<html><body><p>Nothing to see.</p>
<img src="/img/site-logo.png"><img src="ui-sprite"><img src="{GIF_DATA_URI}">
</body></html>"""

#: a page whose images are on a CDN that names them with no extension, one in each way a
#: page refers to an image; its links have no extension either, but are pages
CDN_PAGE = f"""<!doctype html><html><head>
<meta property="og:image" content="/cdn/og">
<link rel="preload" as="image" href="/cdn/hero">
<style>.banner {{ background-image: url(/cdn/banner) }}</style>
</head><body>
<div style="background: url('/cdn/inline') center"></div>
<div data-bg="/cdn/lazy-bg"></div>
<img src="/cdn/img123" alt="Plain">
<img src="{GIF_DATA_URI}" data-src="/cdn/lazy">
<img src="/cdn/p?w=400" srcset="/cdn/p?w=400 400w, /cdn/p?w=1200 1200w">
<picture><source srcset="/cdn/pic/800 800w, /cdn/pic/1600 1600w"><img src="/cdn/pic/400"></picture>
<video poster="/cdn/poster"></video>
<a href="/product/7"><img src="/cdn/thumb7" alt="Seven"></a>
<a href="/about">About us</a>
<a href="/"><img src="/cdn/brand"></a>
<a href="/files/full.png">the full size</a>
</body></html>"""

#: the image URLs of CDN_PAGE (paths), in page order
CDN_IMAGES = ["/cdn/og", "/cdn/hero", "/cdn/banner", "/cdn/inline", "/cdn/lazy-bg",
              "/cdn/img123", "/cdn/lazy", "/cdn/p?w=1200", "/cdn/pic/1600", "/cdn/poster",
              "/cdn/thumb7", "/cdn/brand", "/files/full.png"]


@dataclass
class Site:
    """The running test server and the paths it was asked for."""

    server: TestServer
    hits: list[str] = field(default_factory=list)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


@pytest.fixture
async def site(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Site:
    hits: list[str] = []
    pages = {"/site/index.html": INDEX, "/site/page2.html": PAGE2, "/site/page3.html": PAGE3,
             "/site/empty.html": NO_IMAGES, "/site/cdn.html": CDN_PAGE}

    async def handler(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        if request.path in pages:
            return web.Response(text=pages[request.path], content_type="text/html")
        if request.path == "/site/image.png":
            return web.Response(body=b"\x89PNG\r\n\x1a\n", content_type="image/png")
        return web.Response(status=404, text="not found")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    server = await aiohttp_server(app)
    return Site(server, hits)


CFG = FetchConfig(connect_timeout=1.0, read_timeout=2.0, total_timeout=5.0, retries=1,
                  backoff_base=0.01, backoff_max=0.05)


async def test_scrape_one_page_extracts_and_filters(site: Site) -> None:
    report = await scrape([site.url("/site/index.html")], fetcher_config=CFG, delay=0)
    page = site.url("/site/index.html")
    assert report.images == [
        {"url": site.url("/assets/photo1.jpg"), "page": page, "alt": "First photo"},
        {"url": site.url("/img/p-1280.jpg"), "page": page, "alt": "Responsive"},
        {"url": site.url("/assets/lazy.png"), "page": page, "alt": "Lazy"},
        {"url": site.url("/img/lazier.webp"), "page": page, "alt": ""},
        # one image per <picture>: the largest of its sources and its <img>
        {"url": site.url("/assets/pic-b.webp"), "page": page, "alt": "Pictured"},
        # an <img> is an image whatever its extension, or none
        {"url": site.url("/assets/doc.svg"), "page": page, "alt": ""},
        {"url": site.url("/img/no-extension"), "page": page, "alt": ""},
        {"url": site.url("/img/big.jpg"), "page": page, "alt": ""},  # a linked image
    ]
    assert report.pages == [page]
    assert report.notes == []
    # follow_pages=0: no link followed; robots.txt read first
    assert site.hits == ["/robots.txt", "/site/index.html"]


async def test_follow_pages_breadth_first_with_broken_start_page(site: Site) -> None:
    report = await scrape([site.url("/site/index.html"), site.url("/site/missing.html")],
                          follow_pages=1, fetcher_config=CFG, delay=0)
    urls = [e["url"] for e in report.images]
    assert urls[-1] == site.url("/img/second.png")  # from the followed page, after page one
    assert urls.count(site.url("/assets/photo1.jpg")) == 1
    assert report.images[0]["alt"] == "First photo"  # first-seen entry wins
    assert report.notes == [f"{site.url('/site/missing.html')}: skipped, HTTP 404"]
    assert report.pages == [site.url("/site/index.html"), site.url("/site/page2.html")]
    assert sorted(site.hits) == ["/robots.txt", "/site/index.html", "/site/missing.html",
                                 "/site/page2.html"]


async def test_follow_links_notes_404_and_never_revisits(site: Site) -> None:
    report = await scrape([site.url("/site/index.html")], follow_pages=5, fetcher_config=CFG,
                          delay=0)
    assert f"{site.url('/site/missing.html')}: skipped, HTTP 404" in report.notes
    assert site.url("/img/third.gif") in [e["url"] for e in report.images]
    assert site.hits.count("/site/index.html") == 1
    assert "/img/big.jpg" not in site.hits  # image links are not crawled as pages
    assert report.pages == [site.url(p) for p in
                            ("/site/index.html", "/site/page2.html", "/site/page3.html")]


async def test_non_html_page_is_noted(site: Site) -> None:
    report = await scrape([site.url("/site/image.png"), "ftp://127.0.0.1/x",
                           site.url("/site/page3.html")], fetcher_config=CFG, delay=0)
    assert [e["url"] for e in report.images] == [site.url("/img/third.gif")]
    assert report.notes[0].startswith(f"{site.url('/site/image.png')}: skipped, not an HTML")
    assert report.notes[1].startswith("ftp://127.0.0.1/x: skipped, bad-url")


async def test_scrape_fails_when_no_start_page_can_be_read(site: Site) -> None:
    refused = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(CatalogueError) as err:
        await scrape([site.url("/site/missing.html"), site.url("/site/image.png"), refused],
                     follow_pages=3, fetcher_config=CFG, delay=0)
    message = str(err.value)
    assert message.startswith("no page could be read: ") and "\n" not in message
    assert f"{site.url('/site/missing.html')}: skipped, HTTP 404" in message
    assert "not an HTML page" in message and refused in message


def test_parse_page_base_and_no_extension() -> None:
    html = '<base href="https://cdn.example.invalid/i/"><img src="a"><img src="b.JPG">'
    for filters in (ScrapeFilters(), ScrapeFilters(keep_no_extension=True),
                    ScrapeFilters(extensions=(".jpg",))):
        parsed = parse_page(html, "https://example.invalid/p", filters)
        assert [e["url"] for e in parsed.images] == ["https://cdn.example.invalid/i/a",
                                                     "https://cdn.example.invalid/i/b.JPG"]
        assert not parsed.skipped


def test_image_references_with_no_extension_are_images_links_are_pages() -> None:
    """Every way a page refers to an image keeps a URL with no extension; a link with none
    is a page (not followed here, not an image), also around an <img>."""
    page = "https://shop.example.invalid/cdn.html"
    parsed = parse_page(CDN_PAGE, page)
    assert [e["url"] for e in parsed.images] == \
        ["https://shop.example.invalid" + p for p in CDN_IMAGES]
    assert parsed.images[5]["alt"] == "Plain" and parsed.images[10]["alt"] == "Seven"
    assert not parsed.skipped  # /product/7 and /about are pages
    assert {"https://shop.example.invalid/product/7",
            "https://shop.example.invalid/about"} <= set(parsed.links)


def test_keep_no_extension_takes_links_around_images() -> None:
    page = "https://shop.example.invalid/cdn.html"
    parsed = parse_page(CDN_PAGE, page, ScrapeFilters(keep_no_extension=True))
    urls = [e["url"].removeprefix("https://shop.example.invalid") for e in parsed.images]
    assert urls == CDN_IMAGES[:10] + ["/product/7"] + CDN_IMAGES[10:]  # and its thumbnail
    assert parsed.images[10]["alt"] == "Seven" and not parsed.skipped
    assert "/about" not in urls and "/" not in urls  # no <img> inside; not a file


def test_extensions_keep_only_those_and_say_what_they_passed_over() -> None:
    html = ('<img src="/a.jpg"><img src="/b.png"><img src="/c"><img src="/d.svg" '
            'srcset="/d.jpg 2x"><a href="/e.png">full size</a><img src="/site-logo.gif">')
    parsed = parse_page(html, "https://x.invalid/p", ScrapeFilters(extensions=(".jpg",)))
    assert [e["url"] for e in parsed.images] == ["https://x.invalid/a.jpg",
                                                 "https://x.invalid/c",
                                                 "https://x.invalid/d.jpg"]
    # /b.png and the link to /e.png; the logo is skipped for its name, not its extension
    assert parsed.skipped == {ExtensionSkip.EXTENSION_NOT_KEPT: 2}


def test_srcset_parsing() -> None:
    value = "https://img.invalid/w_100,h_80/c.jpg 100w, https://img.invalid/w_900,h_700/c.jpg 900w"
    assert [u for u, _ in parse_srcset(value)] == [
        "https://img.invalid/w_100,h_80/c.jpg", "https://img.invalid/w_900,h_700/c.jpg"]
    assert largest_candidate(value) == "https://img.invalid/w_900,h_700/c.jpg"
    assert largest_candidate("a.jpg, b.jpg 3x, c.jpg 2x") == "b.jpg"
    assert largest_candidate("a.jpg, b.jpg") == "b.jpg"
    assert largest_candidate("a.jpg 2x, b.jpg") == "a.jpg"
    assert largest_candidate("  ") is None


def test_filters() -> None:
    f = ScrapeFilters()
    assert f.accepts("https://x.invalid/photos/cat.jpeg?size=large")
    assert not f.accepts("https://x.invalid/brand/LOGO-dark.png")
    assert not f.accepts("https://x.invalid/img/social-icons.png")  # a plural
    assert not f.accepts("https://x.invalid/img/headerLogo.webp")  # camelCase
    assert not f.accepts("https://x.invalid/img/category-menu-arrow.png")  # two words
    # an image reference is an image whatever its extension, or none
    assert f.accepts("https://x.invalid/photo.svg") and f.accepts("https://x.invalid/photo")
    only = ScrapeFilters(extensions=(".jpg",))
    assert only.accepts("https://x.invalid/photo") and only.accepts("https://x.invalid/a.jpg")
    assert not only.accepts("https://x.invalid/photo.svg")


@pytest.mark.parametrize("url", [
    "https://shop.example/img/silicone-case.jpg",  # "icon" inside a word
    "https://shop.example/lexicon/entry.jpg",
    "https://iconic-shop.example/products/bag.jpg",
    "https://shop.example/icons/photo-of-a-lamp.jpg",  # folders are not the file's name
    "https://shop.example/img/logotype-history.jpg",
    "https://shop.example/img/menu-category.png",  # the words of category-menu, not in a row
])
def test_skip_words_match_the_file_names_words_only(url: str) -> None:
    assert ScrapeFilters().accepts(url)
    assert ScrapeFilters().skipped_by(url) is None


def test_decode_html_charsets() -> None:
    text = "<p>café</p>"
    assert decode_html(text.encode("latin-1"), "text/html; charset=ISO-8859-1") == text
    meta = '<meta charset="windows-1252"><p>café</p>'
    assert decode_html(meta.encode("cp1252"), "text/html") == meta
    assert decode_html(text.encode("utf-8"), None) == text
    assert decode_html(text.encode("utf-8"), "text/html; charset=bogus-charset") == text


def test_write_catalogue_merges_without_duplicates(tmp_path: Path) -> None:
    a = {"url": "https://x.invalid/a.jpg", "page": "https://x.invalid/", "alt": "A"}
    b = {"url": "https://x.invalid/b.jpg", "page": "https://x.invalid/", "alt": ""}
    c = {"url": "https://x.invalid/c.jpg", "page": "https://x.invalid/2", "alt": "C"}
    target = tmp_path / "images.json"
    assert write_catalogue([a, b, a], target, add=False) == 2
    assert json.loads(target.read_text()) == [a, b]
    b_again = dict(b, alt="changed")
    assert write_catalogue([b_again, c], tmp_path, add=True) == 1  # a folder means images.json
    assert json.loads(target.read_text()) == [a, b, c]
    assert write_catalogue([c], target, add=False) == 1
    assert json.loads(target.read_text()) == [c]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.json"]


def test_write_catalogue_refuses_to_merge_into_a_non_list(tmp_path: Path) -> None:
    target = tmp_path / "images.json"
    target.write_text('{"not": "a list"}')
    with pytest.raises(CatalogueError):
        write_catalogue([{"url": "https://x.invalid/a.jpg"}], target, add=True)
    assert json.loads(target.read_text()) == {"not": "a list"}


def test_write_catalogue_refuses_to_replace_a_file_with_nothing(tmp_path: Path) -> None:
    target = tmp_path / "images.json"
    target.write_text('[{"url": "https://x.invalid/a.jpg"}]')
    for add in (False, True):
        with pytest.raises(CatalogueError, match="no image URLs"):
            write_catalogue([], target, add=add)
        assert target.read_text() == '[{"url": "https://x.invalid/a.jpg"}]'
    with pytest.raises(CatalogueError):
        write_catalogue([], tmp_path / "new.json", add=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.json"]


def test_write_catalogue_with_nothing_new_leaves_the_file_alone(tmp_path: Path) -> None:
    target = tmp_path / "images.json"
    text = '[{"url": "https://x.invalid/a.jpg", "alt": "kept as written"}]'
    target.write_text(text)
    target.chmod(0o600)
    before = target.stat()
    assert write_catalogue([{"url": "https://x.invalid/a.jpg"}], target, add=True) == 0
    after = target.stat()
    assert target.read_text() == text
    assert (after.st_ino, after.st_mtime_ns, after.st_mode) == (
        before.st_ino, before.st_mtime_ns, before.st_mode)


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test; the old one comes back afterwards."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
@pytest.mark.parametrize("existing", [False, True])
def test_written_catalogue_has_ordinary_permissions(tmp_path: Path, umask: Callable[[int], None],
                                                    mask: int, existing: bool) -> None:
    target = tmp_path / "images.json"
    if existing:
        target.write_text("[]")
        target.chmod(0o600)
    umask(mask)
    write_catalogue([{"url": "https://x.invalid/a.jpg"}], target, add=False)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


# --- `echoimage catalogue scrape` against the test server ---------------------------------

async def scrape_cli(*args: str) -> Result:
    """The command in a worker thread: it runs its own event loop, the server keeps ours."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, cli, ["catalogue", "scrape", *args],
                                   catch_exceptions=False)


@pytest.mark.parametrize("add", [False, True])
@pytest.mark.parametrize("path", ["/site/missing.html", "/site/empty.html", "refused"])
async def test_cli_scrape_that_finds_nothing_keeps_the_file(site: Site, tmp_path: Path,
                                                            path: str, add: bool) -> None:
    target = tmp_path / "images.json"
    target.write_text('[{"url": "https://x.invalid/a.jpg"}]\n')
    before = target.stat()
    url = f"http://127.0.0.1:{free_port()}/" if path == "refused" else site.url(path)
    result = await scrape_cli(url, "-o", str(target), "--add" if add else "--replace")
    assert result.exit_code != 0, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and ("no page could be read" in error[0]
                                or "no image URLs" in error[0]), result.output
    assert target.read_text() == '[{"url": "https://x.invalid/a.jpg"}]\n'
    assert target.stat().st_ino == before.st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.json"]


async def test_scrape_of_images_with_no_extension(site: Site) -> None:
    report = await scrape([site.url("/site/cdn.html")], fetcher_config=CFG, delay=0)
    assert [e["url"] for e in report.images] == [site.url(p) for p in CDN_IMAGES]
    assert report.notes == [] and not report.skipped
    assert site.hits == ["/robots.txt", "/site/cdn.html"]  # no link taken for an image


async def test_cli_scrape_of_images_with_no_extension(site: Site, tmp_path: Path) -> None:
    target = tmp_path / "images.json"
    result = await scrape_cli(site.url("/site/cdn.html"), "-o", str(target))
    assert result.exit_code == 0, result.output
    assert [e["url"] for e in json.loads(target.read_text())] == \
        [site.url(p) for p in CDN_IMAGES]
    assert "note:" not in result.stderr, result.stderr
    assert f"{len(CDN_IMAGES)} image URLs from 1 page;" in result.stdout
    taken = await scrape_cli(site.url("/site/cdn.html"), "-o", str(target), "--replace",
                             "--keep-no-extension")
    assert taken.exit_code == 0 and "note:" not in taken.stderr, taken.output
    assert site.url("/product/7") in [e["url"] for e in json.loads(target.read_text())]
    only = await scrape_cli(site.url("/site/cdn.html"), "-o", str(target), "--replace",
                            "--extension", "jpg")
    assert [e["url"] for e in json.loads(target.read_text())] == \
        [site.url(p) for p in CDN_IMAGES if "." not in p]
    assert f"note: {site.url('/site/cdn.html')}: 1 image URL skipped: extension not kept" \
        in only.stderr, only.output


async def test_cli_scrape_writes_and_adds(site: Site, tmp_path: Path) -> None:
    target = tmp_path / "images.json"
    result = await scrape_cli(site.url("/site/page3.html"), "-o", str(target))
    assert result.exit_code == 0, result.output
    assert [e["url"] for e in json.loads(target.read_text())] == [site.url("/img/third.gif")]
    before = target.stat()
    result = await scrape_cli(site.url("/site/page3.html"), "-o", str(target), "--add")
    assert result.exit_code == 0, result.output
    assert "0 new" in result.output and "unchanged" in result.output
    assert target.stat().st_mtime_ns == before.st_mtime_ns
    # an existing file (maybe edited) is neither replaced nor read over without being asked
    asked = len(site.hits)
    again = await scrape_cli(site.url("/site/page3.html"), "-o", str(target))
    assert again.exit_code == 1 and again.output == (
        f"Error: {target} exists: --add merges the new image URLs into it, --replace "
        "replaces it (its edits are lost)\n"), again.output
    assert len(site.hits) == asked and target.stat().st_mtime_ns == before.st_mtime_ns
    both = await scrape_cli(site.url("/site/page3.html"), "-o", str(target), "--add",
                            "--replace")
    assert both.exit_code == 2 and "not both" in both.output
    replaced = await scrape_cli(site.url("/site/page3.html"), "-o", str(target), "--replace")
    assert replaced.exit_code == 0 and "1 new in" in replaced.output, replaced.output
