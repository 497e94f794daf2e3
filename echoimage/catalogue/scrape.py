"""ImageSpaceDB's page scraper done properly: image URLs of web pages → an ``images.json``.

Markup is parsed with the standard library's ``html.parser.HTMLParser`` (tolerant of broken
markup, streaming, no document tree) and CSS with ``tinycss2``. What is found on a page:

* ``<img>``: one image, the best the tag offers: the largest candidate of its srcsets
  (``srcset`` and the lazy loaders' ``data-srcset``, ``data-lazy-srcset``), else the lazy
  loaders' URL (``data-lazy-src``, ``data-original``, ``data-src``, ``data-lazy``,
  ``data-echo``), else ``src``;
* ``<picture>``: one image for all its ``<source>``s and its ``<img>`` fallback, the largest;
* ``<a href="….jpg">``: the linked full-size image, one image with the ``<img>`` inside the
  link (its thumbnail), the full size first; a link is an image only when its file name has
  an image's extension (``sources.IMAGE_EXTENSIONS``), since most links are pages (a
  product's, around its thumbnail); one with no extension around an ``<img>``
  (``<a href="/cdn/full/123">``) is taken as an image of its own with
  ``ScrapeFilters.keep_no_extension``;
* ``<video poster>``, ``<link rel=preload as=image>`` (``imagesrcset`` too),
  ``<link rel=image_src>``, Open Graph and Twitter images (``og:image``,
  ``og:image:secure_url``, ``og:image:url``, ``twitter:image``);
* CSS backgrounds: ``url()`` and ``image-set()`` (the largest) in ``background`` and
  ``background-image`` of ``style`` attributes, ``<style>`` blocks and linked stylesheets
  (with their ``@import``s), and the lazy loaders' ``data-bg``/``data-background-image``
  and ``data-bgset``.

Every other reference says "image" by where it stands, so its URL is kept whatever its
extension, or none (``/cdn/img123``, ``photo.php?id=3``; what is no image EchoImage reads
is refused when fetched, with its reason), unless ``ScrapeFilters.extensions`` names the
only extensions to keep: what that passes over is counted in a note of the page
(``ExtensionSkip``), never dropped silently.

URLs are resolved against the page (or the stylesheet), normalised (scheme and host in
lower case, default port and dot segments dropped, percent-encoding made uniform) and
fragments dropped, so every image is listed once. The scraper honours robots.txt (Protego)
for the pages and stylesheets it reads, waits a per-host delay between its requests (more
if robots.txt asks for it) and names itself with the user agent of the settings.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import math
import os
import posixpath
import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

import tinycss2
from protego import Protego
from yarl import URL

from echoimage.catalogue.sources import IMAGE_EXTENSIONS
from echoimage.errors import CatalogueError
from echoimage.fetch.client import FetchConfig, Fetcher, FetchResult, FetchStatus
from echoimage.types import counted

#: pages are HTML, not images: a smaller cap than the image fetcher's
PAGE_MAX_BYTES = 10 * 1024 * 1024
#: how deep a stylesheet's @import chain is followed
CSS_IMPORT_DEPTH = 3

_HTML_TYPES = ("text/html", "application/xhtml+xml")
_CHARSET_HEADER = re.compile(r"charset\s*=\s*[\"']?([\w.:-]+)", re.IGNORECASE)
_CHARSET_META = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?([\w.:-]+)", re.IGNORECASE)
_WORDS = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")

#: attributes that hold a srcset, the lazy loaders' first
SRCSET_ATTRIBUTES = ("data-srcset", "data-lazy-srcset", "srcset")
#: <img> attributes that hold one URL, in order of preference: lazy loaders put the real
#: image in data-* and a placeholder in src
SRC_ATTRIBUTES = ("data-lazy-src", "data-original", "data-src", "data-lazy", "data-echo",
                  "src")
#: attributes of any element that lazy loaders fill with a background image's URL
BACKGROUND_ATTRIBUTES = ("data-bg", "data-background", "data-background-image")
#: <meta> properties (or names) that give the page's image
META_IMAGES = ("og:image", "og:image:url", "og:image:secure_url", "twitter:image",
               "twitter:image:src")
#: CSS properties whose url()s are images
CSS_IMAGE_PROPERTIES = ("background", "background-image")


class ExtensionSkip(StrEnum):
    """Why a URL a page offers as an image was passed over for its extension."""

    #: an image URL whose extension ScrapeFilters.extensions does not keep
    EXTENSION_NOT_KEPT = "extension-not-kept"


def skip_note(skipped: Counter[ExtensionSkip]) -> str | None:
    """"2 image URLs skipped: extension not kept", or None when none was."""
    n = skipped[ExtensionSkip.EXTENSION_NOT_KEPT]
    return f"{counted(n, 'image URL')} skipped: extension not kept" if n else None


def words(text: str) -> list[str]:
    """The lower-case words of a name: split at punctuation, digits and camelCase."""
    return [w.lower() for w in _WORDS.findall(text)]


@dataclass(frozen=True)
class ScrapeFilters:
    """Which image URLs to keep: by the words of the file name and by its extension.

    An image reference (an ``<img>``, a CSS background, an og:image...) is kept whatever
    its extension, or none, unless extensions names the only ones to keep (a URL with no
    extension is still kept). A link (``<a href>``) is an image when its extension is one
    of IMAGE_EXTENSIONS or of extensions; with keep_no_extension, a link with no extension
    around an ``<img>`` is an image too (one of its own: the ``<img>`` stays one).

    A skip word (``logo``; ``category-menu``, several words in a row) skips an image whose
    file name has it among its words (``site-logo.png``, ``siteLogo.png``, ``logos.png``),
    not one whose URL merely contains its letters (``silicone-case.jpg``, ``/lexicon/``,
    ``iconic-shop.com``).
    """

    skip_words: tuple[str, ...] = ("logo", "icon", "favicon", "category-menu", "sprite")
    extensions: tuple[str, ...] | None = None
    keep_no_extension: bool = False

    @property
    def link_extensions(self) -> frozenset[str]:
        """The extensions that make a link an image's (and keep it from being followed)."""
        return IMAGE_EXTENSIONS.union(self.extensions or ())

    def skipped_by(self, url: str) -> str | None:
        """The skip word url's file name has, or None."""
        name = posixpath.basename(urlsplit(url).path)
        have = words(name)
        for skip in self.skip_words:
            want = words(skip)
            if not want:
                continue
            for i in range(len(have) - len(want) + 1):
                window = have[i:i + len(want)]
                if window[:-1] == want[:-1] and window[-1] in (want[-1], want[-1] + "s"):
                    return skip
        return None

    def extension_kept(self, url: str) -> bool:
        """False when extensions is given and url has an extension not among them."""
        ext = _extension(url)
        return not ext or self.extensions is None or ext in self.extensions

    def accepts(self, url: str) -> bool:
        """True when url, an image reference, names an image worth cataloguing."""
        return self.skipped_by(url) is None and self.extension_kept(url)


@dataclass(frozen=True)
class ParsedPage:
    """Images (ImageSpaceDB dicts, deduplicated, filtered), links and stylesheets of one
    page."""

    images: list[dict[str, str]]
    links: list[str]
    base_url: str
    stylesheets: list[str] = field(default_factory=list)
    #: what was passed over for its extension (see ExtensionSkip)
    skipped: Counter[ExtensionSkip] = field(default_factory=Counter)


@dataclass(frozen=True)
class ScrapeReport:
    """Images found (first-seen order, no duplicate URL), notes on skipped pages, pages read,
    pages that could not be read for a reason that may pass (a timeout, a 5xx, a
    connection error): the images once found there may still be there, and what all pages
    and stylesheets passed over for its extension (each page's count is also a note)."""

    images: list[dict[str, str]]
    notes: list[str]
    pages: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)
    skipped: Counter[ExtensionSkip] = field(default_factory=Counter)


#: a page fetch that failed so may succeed next time (a 404 or 410 is the page gone)
TRANSIENT_FETCH = frozenset({FetchStatus.HTTP_ERROR, FetchStatus.TIMEOUT,
                             FetchStatus.CONNECTION_ERROR})


def _extension(url: str) -> str:
    """Lowercase extension of the URL path's last segment ('' when it has none)."""
    path = urlsplit(url).path
    return posixpath.splitext(posixpath.basename(path))[1].lower()


def parse_srcset(value: str) -> list[tuple[str, str | None]]:
    """(url, descriptor) candidates of a srcset, following the HTML parsing rules.

    URLs may contain commas (``w_100,h_80``); a comma only separates candidates after the URL.
    """
    out: list[tuple[str, str | None]] = []
    pos, n = 0, len(value)
    while pos < n:
        while pos < n and (value[pos].isspace() or value[pos] == ","):
            pos += 1
        if pos >= n:
            break
        start = pos
        while pos < n and not value[pos].isspace():
            pos += 1
        url = value[start:pos]
        descriptor: str | None = None
        if url.endswith(","):
            url = url.rstrip(",")
        else:
            start, depth = pos, 0
            while pos < n:
                c = value[pos]
                if c == "(":
                    depth += 1
                elif c == ")" and depth:
                    depth -= 1
                elif c == "," and depth == 0:
                    break
                pos += 1
            found = value[start:pos].split()
            descriptor = found[0].lower() if found else None
            pos += 1
        if url:
            out.append((url, descriptor))
    return out


def _number(descriptor: str | None, unit: str) -> float | None:
    if descriptor is None or not descriptor.endswith(unit):
        return None
    try:
        return float(descriptor[:-1])
    except ValueError:
        return None


def ranked(cands: list[tuple[str, str | None]]) -> list[str]:
    """Candidates (url, descriptor) from the largest to the smallest: by ``w`` descriptor
    when any has one (those without come after), else by density (none means 1x; among
    equals, the later first, as a browser picks)."""
    if not cands:
        return []
    widths = [(w, -i, url) for i, (url, d) in enumerate(cands)
              if (w := _number(d, "w")) is not None]
    if widths:
        first = [url for _, _, url in sorted(widths, reverse=True)]
        return first + [url for url, d in cands if _number(d, "w") is None]
    dens = [(_density(d), i, url) for i, (url, d) in enumerate(cands)]
    return [url for _, _, url in sorted(dens, reverse=True)]


def largest_candidate(srcset: str) -> str | None:
    """The largest srcset candidate: by ``w`` descriptor, else by ``x``, else the last one."""
    order = ranked(parse_srcset(srcset))
    return order[0] if order else None


def _density(descriptor: str | None) -> float:
    """Pixel density of a srcset descriptor; none means 1x."""
    if descriptor is None:
        return 1.0
    return _number(descriptor, "x") or 0.0


# --- CSS ---------------------------------------------------------------------------------

def _css_url(token: Any) -> str | None:
    """The URL of a url() token (unquoted or quoted), or of a string (in image-set())."""
    if token.type == "url":
        return str(token.value)
    if token.type == "function" and token.lower_name == "url":
        strings = [t for t in token.arguments if t.type == "string"]
        return str(strings[0].value) if strings else None
    if token.type == "string":
        return str(token.value)
    return None


def _image_set(token: Any) -> list[str]:
    """The candidates of an image-set(), from the largest resolution to the smallest."""
    cands: list[tuple[str, str | None]] = []
    url: str | None = None
    res: str | None = None
    for t in [*token.arguments, None]:
        if t is None or (t.type == "literal" and t.value == ","):
            if url is not None:
                cands.append((url, res))
            url, res = None, None
        elif url is None:
            url = _css_url(t)
        elif t.type == "dimension" and t.lower_unit in ("x", "dppx"):
            res = f"{t.value}x"
        elif t.type == "dimension" and t.lower_unit == "dpi":
            res = f"{t.value / 96}x"
    return ranked(cands)


def _value_groups(tokens: Iterable[Any]) -> list[list[str]]:
    """Image groups of a declaration's value: one per url(), one per image-set()."""
    groups: list[list[str]] = []
    for t in tokens:
        if t.type == "function" and t.lower_name in ("image-set", "-webkit-image-set"):
            if cands := _image_set(t):
                groups.append(cands)
        elif (url := _css_url(t)) is not None and t.type != "string":
            groups.append([url])
        elif t.type == "function":  # url()s nested in another function (cross-fade())
            groups.extend(_value_groups(t.arguments))
    return groups


def _declaration_groups(nodes: Iterable[Any], imports: list[str]) -> list[list[str]]:
    """Image groups of background declarations among nodes (declarations, nested rules,
    at-rules); @import URLs go to imports."""
    groups: list[list[str]] = []
    for node in nodes:
        if node.type == "declaration" and node.lower_name in CSS_IMAGE_PROPERTIES:
            groups.extend(_value_groups(node.value))
        elif node.type == "qualified-rule":
            groups.extend(_declaration_groups(
                tinycss2.parse_blocks_contents(node.content, skip_comments=True,
                                               skip_whitespace=True), imports))
        elif node.type == "at-rule":
            if node.lower_at_keyword == "import":
                urls = [u for t in node.prelude if (u := _css_url(t)) is not None]
                imports.extend(urls[:1])
            elif node.content is not None:
                groups.extend(_declaration_groups(
                    tinycss2.parse_blocks_contents(node.content, skip_comments=True,
                                                   skip_whitespace=True), imports))
    return groups


def css_images(css: str, inline: bool = False) -> tuple[list[list[str]], list[str]]:
    """(image groups, @import URLs) of a stylesheet, or of a style attribute with inline.

    A group is the candidates of one image, largest first: one url(), or one image-set().
    """
    imports: list[str] = []
    if inline:
        nodes = tinycss2.parse_blocks_contents(css, skip_comments=True, skip_whitespace=True)
    else:
        nodes = tinycss2.parse_stylesheet(css, skip_comments=True, skip_whitespace=True)
    return _declaration_groups(nodes, imports), imports


# --- HTML --------------------------------------------------------------------------------

@dataclass
class _Group:
    """The candidates of one image (first accepted wins), and its alt text."""

    srcsets: list[tuple[str, str | None]] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    alt: str = ""
    lead: list[str] = field(default_factory=list)  # before the srcsets (a linked full size)
    bare: bool = False  # a link with no extension around an <img>: an image or a page

    def candidates(self) -> list[str]:
        return self.lead + ranked(self.srcsets) + self.urls


class _PageParser(HTMLParser):
    """Collects image groups, links, stylesheets and the first <base href> of a page."""

    def __init__(self, image_link: Callable[[str], bool]) -> None:
        super().__init__(convert_charrefs=True)
        self.image_link = image_link  # whether an <a href> names an image
        self.base: str | None = None
        self.groups: list[_Group] = []
        self.links: list[str] = []
        self.stylesheets: list[str] = []
        self._pictures: list[_Group] = []  # open <picture>s
        self._anchor: _Group | None = None  # an open <a> to an image, until its <img>
        self._bare: str | None = None  # an open <a> with no extension, until its <img>
        self._bare_group: _Group | None = None  # its group, once an <img> came inside
        self._og: _Group | None = None  # the last og:image (its :url/:secure_url join it)
        self._style: list[str] | None = None  # text of an open <style>

    def _add(self, group: _Group) -> _Group:
        self.groups.append(group)
        return group

    def _css(self, text: str, inline: bool) -> None:
        groups, imports = css_images(text, inline)
        for cands in groups:
            self._add(_Group(urls=cands))
        self.stylesheets.extend(imports)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): v.strip() for k, v in attrs if v is not None}
        if a.get("style"):
            self._css(a["style"], inline=True)
        for key in BACKGROUND_ATTRIBUTES:
            if value := a.get(key):
                if "url(" in value:
                    self._css(f"background-image: {value}", inline=True)
                else:
                    self._add(_Group(urls=[value]))
        if bgset := a.get("data-bgset"):
            self._add(_Group(srcsets=parse_srcset(bgset)))
        handler = getattr(self, f"_start_{tag}", None)
        if handler is not None:
            handler(a)

    def _start_base(self, a: dict[str, str]) -> None:
        if self.base is None and a.get("href"):
            self.base = a["href"]

    def _start_a(self, a: dict[str, str]) -> None:
        self._anchor = None
        self._bare = self._bare_group = None
        href = a.get("href", "")
        if not href:
            return
        self.links.append(href)
        if self.image_link(href):
            self._anchor = self._add(_Group(lead=[href]))
        elif not _extension(href):
            self._bare = href

    def _around_image(self) -> None:
        """An <img> or <picture> inside an open link with no extension: the link becomes a
        group of its own (kept or counted by parse_page), before the image's."""
        if self._bare is not None:
            self._bare_group = self._add(_Group(urls=[self._bare], bare=True))
            self._bare = None

    def _start_picture(self, a: dict[str, str]) -> None:
        self._around_image()
        group = self._anchor or self._add(_Group())
        self._anchor = None
        self._pictures.append(group)

    def _start_source(self, a: dict[str, str]) -> None:
        if self._pictures:
            for key in SRCSET_ATTRIBUTES:
                self._pictures[-1].srcsets += parse_srcset(a.get(key, ""))

    def _start_img(self, a: dict[str, str]) -> None:
        if self._pictures:
            group = self._pictures[-1]
        else:
            self._around_image()
            group = self._anchor or self._add(_Group())
            self._anchor = None
        for key in SRCSET_ATTRIBUTES:
            group.srcsets += parse_srcset(a.get(key, ""))
        group.urls += [a[key] for key in SRC_ATTRIBUTES if a.get(key)]
        group.alt = group.alt or " ".join(a.get("alt", "").split())
        if self._bare_group is not None:
            self._bare_group.alt = self._bare_group.alt or group.alt

    def _start_video(self, a: dict[str, str]) -> None:
        if a.get("poster"):
            self._add(_Group(urls=[a["poster"]]))

    def _start_link(self, a: dict[str, str]) -> None:
        rel = a.get("rel", "").lower().split()
        href = a.get("href", "")
        if "stylesheet" in rel and href:
            self.stylesheets.append(href)
        elif "preload" in rel and a.get("as", "").lower() == "image":
            self._add(_Group(srcsets=parse_srcset(a.get("imagesrcset", "")),
                             urls=[href] if href else []))
        elif "image_src" in rel and href:
            self._add(_Group(urls=[href]))

    def _start_meta(self, a: dict[str, str]) -> None:
        key = (a.get("property") or a.get("name") or "").lower()
        content = a.get("content", "")
        if key not in META_IMAGES or not content:
            return
        if key == "og:image":
            self._og = self._add(_Group(urls=[content]))
        elif key.startswith("og:image:"):  # of the last og:image: its secure URL first
            if self._og is None:
                self._og = self._add(_Group())
            self._og.urls.insert(0, content)
        else:
            self._add(_Group(urls=[content]))

    def _start_style(self, a: dict[str, str]) -> None:
        self._style = []

    def handle_data(self, data: str) -> None:
        if self._style is not None:
            self._style.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "picture" and self._pictures:
            self._pictures.pop()
        elif tag == "a":
            self._anchor = None
            self._bare = self._bare_group = None
        elif tag == "style" and self._style is not None:
            self._css("".join(self._style), inline=False)
            self._style = None


def normalise(raw: str, base: str) -> str | None:
    """raw resolved against base and normalised (scheme and host in lower case, no default
    port, no dot segments, uniform percent-encoding), without fragment; None for data:,
    non-http(s) or junk."""
    raw = raw.strip()
    if not raw or raw[:5].lower() == "data:":
        return None
    try:
        url = URL(urldefrag(urljoin(base, raw)).url)
    except (ValueError, TypeError):
        return None
    if url.scheme not in ("http", "https") or not url.host:
        return None
    return str(url.with_fragment(None))


def _pick(groups: Iterable[list[str]], base: str, filters: ScrapeFilters,
          skipped: Counter[ExtensionSkip]) -> list[str]:
    """Of each group, the first candidate that resolves and that filters accept; a group
    left with none because of an extension filters do not keep is counted in skipped."""
    picked: list[str] = []
    for cands in groups:
        by_extension = False
        for raw in cands:
            url = normalise(raw, base)
            if url is None:
                continue
            if filters.accepts(url):
                picked.append(url)
                break
            by_extension |= filters.skipped_by(url) is None
        else:
            if by_extension:
                skipped[ExtensionSkip.EXTENSION_NOT_KEPT] += 1
    return picked


def parse_page(html: str, page_url: str, filters: ScrapeFilters | None = None) -> ParsedPage:
    """Image entries (``{"url", "page", "alt"}``), http(s) links and stylesheets of one
    HTML page (the stylesheets' images are found by scrape(), which reads them)."""
    filters = filters or ScrapeFilters()
    parser = _PageParser(lambda href: _extension(href) in filters.link_extensions)
    parser.feed(html)
    parser.close()
    if parser._style is not None:  # a <style> never closed
        parser.handle_endtag("style")
    base = page_url
    if parser.base is not None:
        base = normalise(parser.base, page_url) or page_url
    images: list[dict[str, str]] = []
    seen: set[str] = set()
    skipped: Counter[ExtensionSkip] = Counter()
    itself = normalise(page_url, page_url)
    for group in parser.groups:
        if group.bare:  # a link with no extension around an <img>: a page, mostly
            url = normalise(group.urls[0], base)
            if not filters.keep_no_extension or url is None or url == itself \
                    or not posixpath.basename(urlsplit(url).path):
                continue  # a page, or not a file: the page itself, a folder, a site's root
        for url in _pick([group.candidates()], base, filters, skipped):
            if url not in seen:
                seen.add(url)
                images.append({"url": url, "page": page_url, "alt": group.alt})
    return ParsedPage(images=images, links=_unique(parser.links, base), base_url=base,
                      stylesheets=_unique(parser.stylesheets, base), skipped=skipped)


def _unique(raws: Iterable[str], base: str) -> list[str]:
    """raws resolved and normalised, first-seen order, no duplicate."""
    out: list[str] = []
    seen: set[str] = set()
    for raw in raws:
        url = normalise(raw, base)
        if url is not None and url not in seen:
            seen.add(url)
            out.append(url)
    return out


def decode_html(data: bytes, content_type: str | None) -> str:
    """Page bytes → text: charset from the header, else a BOM, else <meta charset>, else UTF-8."""
    candidates: list[str] = []
    if content_type and (m := _CHARSET_HEADER.search(content_type)):
        candidates.append(m.group(1))
    if data.startswith(codecs.BOM_UTF8):
        candidates.append("utf-8-sig")
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        candidates.append("utf-16")
    if m := _CHARSET_META.search(data[:4096]):
        candidates.append(m.group(1).decode("ascii", "replace"))
    for name in candidates:
        try:
            codecs.lookup(name)
        except LookupError:
            continue
        return data.decode(name, errors="replace")
    return data.decode("utf-8", errors="replace")


def _mime(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _is_html(content_type: str | None) -> bool:
    return not content_type or _mime(content_type) in _HTML_TYPES


def _skip_note(url: str, result: FetchResult) -> str:
    if result.status in (FetchStatus.GONE, FetchStatus.HTTP_ERROR) and result.http_status:
        return f"{url}: skipped, HTTP {result.http_status}"
    return f"{url}: skipped, {result.status}: {result.reason or 'no reason given'}"


def _page_config(config: FetchConfig | None) -> FetchConfig:
    config = config or FetchConfig()
    return replace(config, require_image=False, max_bytes=min(config.max_bytes, PAGE_MAX_BYTES))


def _host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


def _site(url: str) -> str:
    """scheme://host:port of url: what robots.txt and the delay apply to."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.lower()}"


# --- politeness: robots.txt and the per-host delay ---------------------------------------

class PoliteClient:
    """Fetches pages and stylesheets as a polite crawler: robots.txt (read once per site,
    with Protego; RFC 9309: a 4xx means no rules, a 5xx means keep out, and a site that
    does not answer at all is skipped with the reason) decides what may be fetched, and
    requests to one site are spaced by at least delay seconds (or the site's Crawl-delay,
    when it asks for more), one at a time."""

    def __init__(self, fetcher: Fetcher, delay: float, user_agent: str,
                 notes: list[str]) -> None:
        self.fetcher = fetcher
        self.delay = delay
        self.user_agent = user_agent
        self.notes = notes
        self._rules: dict[str, Protego | FetchResult | None] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self._turns: dict[str, asyncio.Lock] = {}
        self._last: dict[str, float] = {}
        self._delays: dict[str, float] = {}

    @asynccontextmanager
    async def _turn(self, site: str) -> AsyncIterator[None]:
        """One request to site at a time, delay seconds after the end of the last one."""
        loop = asyncio.get_running_loop()
        async with self._turns.setdefault(site, asyncio.Lock()):
            wait = self._last.get(site, -math.inf) + self._delays.get(site, self.delay)
            if (pause := wait - loop.time()) > 0:
                await asyncio.sleep(pause)
            try:
                yield
            finally:
                self._last[site] = loop.time()

    async def _robots(self, site: str) -> Protego | FetchResult | None:
        """The robots.txt rules of site (None: no rules, everything allowed), or the failed
        fetch of a site that did not answer."""
        async with self._loading.setdefault(site, asyncio.Lock()):
            if site in self._rules:
                return self._rules[site]
            async with self._turn(site):
                res = await self.fetcher.fetch(f"{site}/robots.txt")
            rules: Protego | FetchResult | None
            if res.ok and res.data is not None:
                rules = Protego.parse(res.data.decode("utf-8", errors="replace"))
                asked = rules.crawl_delay(self.user_agent)
                if asked is not None and asked > self.delay:
                    self._delays[site] = float(asked)
                    self.notes.append(f"{site}: robots.txt asks for {asked:g} s between "
                                      "requests; waiting that long")
            elif res.http_status is not None and 400 <= res.http_status < 500:
                rules = None
            elif res.http_status is not None:
                rules = Protego.parse("User-agent: *\nDisallow: /\n")
                self.notes.append(f"{site}: robots.txt answered HTTP {res.http_status}; "
                                  "nothing fetched there")
            else:
                rules = res
            self._rules[site] = rules
            return rules

    async def get(self, url: str, etag: str | None = None,
                  last_modified: str | None = None) -> FetchResult | None:
        """The fetch result of url (conditional on the validators given), or None when
        robots.txt disallows it."""
        if _host(url) is None or urlsplit(url).scheme not in ("http", "https"):
            return await self.fetcher.fetch(url)  # refused by the fetcher, with its reason
        site = _site(url)
        rules = await self._robots(site)
        if isinstance(rules, FetchResult):  # the site did not answer: say why
            return replace(rules, url=url, final_url=None)
        if rules is not None and not rules.can_fetch(url, self.user_agent):
            return None
        async with self._turn(site):
            return await self.fetcher.fetch(url, etag, last_modified)

    async def allows(self, url: str) -> bool:
        """Whether the robots.txt of url's site lets EchoImage fetch it (read once per
        site; a site whose robots.txt cannot be fetched at all is not refused here: the
        fetch itself then says why it fails). For what is fetched apart from get (images,
        without the pages' delay)."""
        if _host(url) is None or urlsplit(url).scheme not in ("http", "https"):
            return True
        rules = await self._robots(_site(url))
        return not isinstance(rules, Protego) or rules.can_fetch(url, self.user_agent)


# --- the crawl ---------------------------------------------------------------------------

def _got(url: str, result: FetchResult | None, notes: list[str]) -> bool:
    """True when result holds url's bytes; else a note says why not (robots.txt when it
    is None)."""
    if result is None:
        notes.append(f"{url}: skipped, disallowed by robots.txt")
        return False
    if not result.ok or result.data is None:
        notes.append(_skip_note(url, result))
        return False
    return True


async def _stylesheet_images(client: PoliteClient, sheets: list[tuple[str, str]],
                             seen: set[str], filters: ScrapeFilters, notes: list[str],
                             unread: list[str],
                             skipped: Counter[ExtensionSkip] | None = None
                             ) -> list[dict[str, str]]:
    """Images of stylesheets [(url, page)] and of their @imports, each sheet read once; the
    page of a sheet that could not be read for a reason that may pass goes to unread;
    what a sheet passes over for its extension is a note (and counted in skipped)."""
    images: list[dict[str, str]] = []
    level = [(u, p) for u, p in sheets if u not in seen]
    for _ in range(CSS_IMPORT_DEPTH + 1):
        if not level:
            break
        seen.update(u for u, _ in level)
        results = await asyncio.gather(*(client.get(u) for u, _ in level))
        next_level: list[tuple[str, str]] = []
        for (url, page), res in zip(level, results, strict=True):
            if not _got(url, res, notes):
                if res is not None and res.status in TRANSIENT_FETCH:
                    unread.append(page)
                continue
            if _mime(res.content_type) not in ("text/css", ""):
                notes.append(f"{url}: skipped, not a stylesheet ({res.content_type})")
                continue
            base = res.final_url or url
            groups, imports = css_images(decode_html(res.data, res.content_type))
            passed: Counter[ExtensionSkip] = Counter()
            images += [{"url": u, "page": page, "alt": ""}
                       for u in _pick(groups, base, filters, passed)]
            if note := skip_note(passed):
                notes.append(f"{url}: {note}")
                if skipped is not None:
                    skipped.update(passed)
            next_level += [(u, page) for u in _unique(imports, base) if u not in seen]
        level = next_level
    return images


async def scrape(pages: list[str], follow_pages: int = 0,
                 filters: ScrapeFilters = ScrapeFilters(),
                 fetcher_config: FetchConfig | None = None,
                 fetcher: Callable[[FetchConfig], Fetcher] | None = None, *,
                 delay: float) -> ScrapeReport:
    """Image URLs of pages (and of their stylesheets), plus of up to follow_pages same-host
    linked pages per start page.

    Links are followed breadth first, no page or stylesheet is read twice, robots.txt is
    honoured and requests to one host are at least delay seconds apart (see PoliteClient);
    a page that cannot be read is a note, not an error; CatalogueError when no page at
    all could be read. Images keep first-seen order with no duplicate URL.
    """
    _check(follow_pages, delay)
    config = _page_config(fetcher_config)
    async with (fetcher or Fetcher)(config) as pages_fetcher:
        client = PoliteClient(pages_fetcher, delay, config.user_agent, [])
        return await crawl(client, pages, follow_pages, filters)


def _check(follow_pages: int, delay: float) -> None:
    if follow_pages < 0:
        raise CatalogueError(f"follow_pages must not be negative, not {follow_pages}")
    if delay < 0:
        raise CatalogueError(f"the scrape delay must not be negative, not {delay}")


async def page_or_file(url: str, follow_pages: int = 0,
                       filters: ScrapeFilters = ScrapeFilters(),
                       fetcher_config: FetchConfig | None = None,
                       fetcher: Callable[[FetchConfig], Fetcher] | None = None, *,
                       delay: float) -> ScrapeReport | FetchResult:
    """A URL whose name does not say what it is, fetched once as the scraper fetches
    (robots.txt, the delay, the user agent): an HTML page is scraped from there (with up
    to follow_pages same-site pages), the ScrapeReport; anything else (an image, a
    catalogue file) comes back as its FetchResult for the caller to read. CatalogueError
    when robots.txt disallows the URL."""
    from echoimage.features.sniff import sniff_format

    _check(follow_pages, delay)
    config = _page_config(fetcher_config)
    async with (fetcher or Fetcher)(config) as pages_fetcher:
        client = PoliteClient(pages_fetcher, delay, config.user_agent, [])
        result = await client.get(url)
        if result is None:
            raise CatalogueError(f"{url}: disallowed by robots.txt for {config.user_agent}")
        if not result.ok or result.data is None or sniff_format(result.data[:4096]) or \
                _mime(result.content_type) not in _HTML_TYPES:
            return result
        return await crawl(client, [url], follow_pages, filters, {url: result})


async def crawl(client: PoliteClient, pages: list[str], follow_pages: int,
                filters: ScrapeFilters, fetched: dict[str, FetchResult] | None = None
                ) -> ScrapeReport:
    """The crawl of scrape() through client; fetched holds start pages already fetched."""
    images: list[dict[str, str]] = []
    seen_images: set[str] = set()
    seen_sheets: set[str] = set()
    notes = client.notes
    read: list[str] = []
    unread: list[str] = []
    skipped: Counter[ExtensionSkip] = Counter()
    visited: set[str] = set()
    budget: dict[int, int] = {}
    hosts: dict[int, set[str]] = {}
    level: list[tuple[str, int]] = []  # (page URL, index of the start page it came from)
    for seed, page in enumerate(pages):
        page = page.strip()
        key = normalise(page, page) or page
        if key in visited:
            continue
        visited.add(key)
        budget[seed] = follow_pages
        hosts[seed] = {h} if (h := _host(page)) else set()
        level.append((page, seed))

    def keep(found: Iterable[dict[str, str]]) -> None:
        for entry in found:
            if entry["url"] not in seen_images:
                seen_images.add(entry["url"])
                images.append(entry)

    async def get(url: str) -> FetchResult | None:
        if fetched and url in fetched:
            return fetched.pop(url)
        return await client.get(url)

    while level:
        results = await asyncio.gather(*(get(url) for url, _ in level))
        next_level: list[tuple[str, int]] = []
        sheets: list[tuple[str, str]] = []
        for (url, seed), result in zip(level, results, strict=True):
            if not _got(url, result, notes):
                if result is not None and result.status in TRANSIENT_FETCH:
                    unread.append(url)
                continue
            if not _is_html(result.content_type):
                notes.append(f"{url}: skipped, not an HTML page ({result.content_type})")
                continue
            page_url = result.final_url or url
            visited.add(normalise(page_url, page_url) or page_url)
            if (h := _host(page_url)) is not None:
                hosts[seed].add(h)
            parsed = parse_page(decode_html(result.data, result.content_type), page_url,
                                filters)
            read.append(page_url)
            keep(parsed.images)
            sheets += [(s, page_url) for s in parsed.stylesheets]
            skipped.update(parsed.skipped)
            if note := page_note(page_url, parsed):
                notes.append(note)
            for link in parsed.links:
                if budget[seed] <= 0:
                    break
                if _host(link) not in hosts[seed] or _extension(link) in filters.link_extensions:
                    continue
                if link in visited:
                    continue
                visited.add(link)
                budget[seed] -= 1
                next_level.append((link, seed))
        keep(await _stylesheet_images(client, sheets, seen_sheets, filters, notes, unread,
                                      skipped))
        level = next_level
    if not read:
        raise CatalogueError(f"no page could be read: {_summary(notes) or 'no page given'}")
    return ScrapeReport(images=images, notes=notes, pages=read, unread=unread, skipped=skipped)


def page_note(page_url: str, parsed: ParsedPage) -> str | None:
    """The note of a parsed page that shows no image, or passed some over for their
    extension (None when neither)."""
    passed = skip_note(parsed.skipped)
    if not parsed.images and not parsed.stylesheets:
        return f"{page_url}: no images found" + (f" ({passed})" if passed else "")
    return f"{page_url}: {passed}" if passed else None


def _summary(notes: list[str], shown: int = 3) -> str:
    """The first notes on one line, and how many more there are."""
    text = "; ".join(notes[:shown])
    if len(notes) > shown:
        text += f"; and {len(notes) - shown} more"
    return text


def _entry_url(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("url"), str):
        return entry["url"]
    return None


def write_catalogue(images: Iterable[dict[str, Any]], path: str | os.PathLike[str],
                    add: bool) -> int:
    """Write images to an ImageSpaceDB ``images.json`` (path or its folder); returns new URLs.

    With add, entries of an existing file are kept and only unseen URLs are appended (a file
    that gains none is not rewritten); without, the file is replaced. CatalogueError, and the
    file is left as it was, when images hold no URL. The write is atomic (temp file + rename)
    and the file gets the permissions of any newly created file (0666 less the umask).
    """
    target = Path(path)
    if target.is_dir():
        target = target / "images.json"
    existing: list[Any] = []
    if add and target.exists():
        try:
            doc = json.loads(target.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:
            raise CatalogueError(f"cannot merge into {target}: {exc}") from None
        if isinstance(doc, dict) and isinstance(doc.get("images"), list):
            doc = doc["images"]
        if not isinstance(doc, list):
            raise CatalogueError(f"cannot merge into {target}: not a JSON list")
        existing = doc
    seen = {u for e in existing if (u := _entry_url(e)) is not None}
    merged = list(existing)
    offered = added = 0
    for entry in images:
        url = _entry_url(entry)
        if url is None:
            continue
        offered += 1
        if url in seen:
            continue
        seen.add(url)
        merged.append(entry)
        added += 1
    if not offered:
        kept = "; it is left as it was" if target.exists() else ""
        raise CatalogueError(f"no image URLs to write to {target}{kept}")
    if add and not added and target.exists():
        return 0
    _replace(target, merged)
    return added


def _replace(target: Path, doc: list[Any]) -> None:
    """Write doc as JSON to a new file beside target, then rename it over target.

    The temp file is created with mode 0666 like any new file, so the umask decides its
    permissions (``tempfile.mkstemp`` would make it 0600).
    """
    tmp = target.parent / f".images-{secrets.token_hex(8)}.json"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise CatalogueError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, ensure_ascii=False, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CatalogueError(f"cannot write {target}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
