"""ImageSpaceDB's page scraper done properly: image URLs of web pages → an ``images.json``.

Markup is parsed with the standard library's ``html.parser.HTMLParser``: it is tolerant (real
pages are full of unclosed and misnested tags, and it never raises on them), streaming (it
calls back per tag and keeps no document tree), and it adds no dependency.

Per ``<img>`` one URL is kept, the best the page offers: the largest ``data-srcset`` or
``srcset`` candidate, else ``data-lazy-src``, ``data-src``, ``src`` (lazy loaders put the real
image in ``data-*`` and a placeholder in ``src``). Each ``<source>`` of a ``<picture>`` adds
its largest candidate.
"""

from __future__ import annotations

import codecs
import json
import os
import posixpath
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

from echoimage.errors import CatalogueError
from echoimage.fetch.client import FetchConfig, Fetcher, FetchResult, FetchStatus

#: pages are HTML, not images: a smaller cap than the image fetcher's
PAGE_MAX_BYTES = 10 * 1024 * 1024

_HTML_TYPES = ("text/html", "application/xhtml+xml")
_CHARSET_HEADER = re.compile(r"charset\s*=\s*[\"']?([\w.:-]+)", re.IGNORECASE)
_CHARSET_META = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?([\w.:-]+)", re.IGNORECASE)


@dataclass(frozen=True)
class ScrapeFilters:
    """Which image URLs to keep: by words in the URL and by file extension."""

    skip_words: tuple[str, ...] = ("logo", "icon", "favicon", "category-menu", "sprite")
    extensions: tuple[str, ...] = (
        ".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif",
    )
    keep_no_extension: bool = False

    def accepts(self, url: str) -> bool:
        """True when url names an image worth cataloguing."""
        text = url.lower()
        if any(word in text for word in self.skip_words):
            return False
        ext = _extension(url)
        if not ext:
            return self.keep_no_extension
        return ext in self.extensions


@dataclass(frozen=True)
class ParsedPage:
    """Images (ImageSpaceDB dicts, deduplicated, filtered) and links of one page."""

    images: list[dict[str, str]]
    links: list[str]
    base_url: str


@dataclass(frozen=True)
class ScrapeReport:
    """Images found (first-seen order, no duplicate URL), notes on skipped pages, pages read."""

    images: list[dict[str, str]]
    notes: list[str]
    pages: list[str] = field(default_factory=list)


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
            words = value[start:pos].split()
            descriptor = words[0].lower() if words else None
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


def largest_candidate(srcset: str) -> str | None:
    """The largest srcset candidate: by ``w`` descriptor, else by ``x``, else the last one."""
    cands = parse_srcset(srcset)
    if not cands:
        return None
    widths = [(w, url) for url, d in cands if (w := _number(d, "w")) is not None]
    if widths:
        return max(widths, key=lambda t: t[0])[1]
    if any(_number(d, "x") is not None for _, d in cands):
        return max(cands, key=lambda c: _density(c[1]))[0]
    return cands[-1][0]


def _density(descriptor: str | None) -> float:
    """Pixel density of a srcset descriptor; none means 1x."""
    if descriptor is None:
        return 1.0
    return _number(descriptor, "x") or 0.0


class _PageParser(HTMLParser):
    """Collects raw image candidates, links and the first <base href> of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.base: str | None = None
        self.images: list[tuple[list[str], list[str]]] = []  # (candidates, [alt])
        self.links: list[str] = []
        self._picture_depth = 0
        self._picture_sources: list[list[str]] = []  # alt holders of the open picture

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): v for k, v in attrs if v is not None}
        if tag == "base":
            if self.base is None and a.get("href", "").strip():
                self.base = a["href"].strip()
        elif tag == "a":
            if a.get("href", "").strip():
                self.links.append(a["href"].strip())
        elif tag == "picture":
            self._picture_depth += 1
        elif tag == "source" and self._picture_depth > 0:
            cands = [c for key in ("data-srcset", "srcset")
                     if (c := largest_candidate(a.get(key, ""))) is not None]
            if cands:
                alt: list[str] = [""]
                self.images.append((cands, alt))
                self._picture_sources.append(alt)
        elif tag == "img":
            cands = [c for key in ("data-srcset", "srcset")
                     if (c := largest_candidate(a.get(key, ""))) is not None]
            cands += [a[key].strip() for key in ("data-lazy-src", "data-src", "src")
                      if a.get(key, "").strip()]
            alt_text = " ".join(a.get("alt", "").split())
            if self._picture_depth > 0:
                for holder in self._picture_sources:
                    holder[0] = holder[0] or alt_text
            if cands:
                self.images.append((cands, [alt_text]))

    def handle_endtag(self, tag: str) -> None:
        if tag == "picture" and self._picture_depth > 0:
            self._picture_depth -= 1
            if self._picture_depth == 0:
                self._picture_sources = []


def _absolute(raw: str, base: str) -> str | None:
    """raw resolved against base, without fragment; None for data:, non-http(s) or junk."""
    raw = raw.strip()
    if not raw or raw[:5].lower() == "data:":
        return None
    try:
        url = urldefrag(urljoin(base, raw)).url
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return url


def parse_page(html: str, page_url: str, filters: ScrapeFilters | None = None) -> ParsedPage:
    """Image entries (``{"url", "page", "alt"}``) and http(s) links of one HTML page."""
    filters = filters or ScrapeFilters()
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    base = page_url
    if parser.base is not None:
        base = _absolute(parser.base, page_url) or page_url
    images: list[dict[str, str]] = []
    seen: set[str] = set()
    for cands, alt in parser.images:
        for raw in cands:
            url = _absolute(raw, base)
            if url is not None and filters.accepts(url):
                if url not in seen:
                    seen.add(url)
                    images.append({"url": url, "page": page_url, "alt": alt[0]})
                break
    links: list[str] = []
    seen_links: set[str] = set()
    for raw in parser.links:
        url = _absolute(raw, base)
        if url is not None and url not in seen_links:
            seen_links.add(url)
            links.append(url)
    return ParsedPage(images=images, links=links, base_url=base)


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


def _is_html(content_type: str | None) -> bool:
    if not content_type:
        return True
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime in _HTML_TYPES


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


async def scrape(pages: list[str], follow_pages: int = 0,
                 filters: ScrapeFilters = ScrapeFilters(),
                 fetcher_config: FetchConfig | None = None,
                 fetcher: Callable[[FetchConfig], Fetcher] | None = None) -> ScrapeReport:
    """Image URLs of pages, plus of up to follow_pages same-host linked pages per start page.

    Links are followed breadth first, no page is read twice, and a page that cannot be read
    is a note, not an error; CatalogueError when no page at all could be read. Images keep
    first-seen order with no duplicate URL.
    """
    if follow_pages < 0:
        raise ValueError("follow_pages must not be negative")
    images: list[dict[str, str]] = []
    seen_images: set[str] = set()
    notes: list[str] = []
    read: list[str] = []
    visited: set[str] = set()
    budget: dict[int, int] = {}
    hosts: dict[int, set[str]] = {}
    level: list[tuple[str, int]] = []  # (page URL, index of the start page it came from)
    for seed, page in enumerate(pages):
        page = page.strip()
        key = urldefrag(page).url
        if key in visited:
            continue
        visited.add(key)
        budget[seed] = follow_pages
        hosts[seed] = {h} if (h := _host(page)) else set()
        level.append((page, seed))

    async with (fetcher or Fetcher)(_page_config(fetcher_config)) as pages_fetcher:
        while level:
            results: dict[int, FetchResult] = {}
            batch = ((n, url, None, None) for n, (url, _) in enumerate(level))
            async for n, result in pages_fetcher.fetch_many(batch):
                results[n] = result
            next_level: list[tuple[str, int]] = []
            for n, (url, seed) in enumerate(level):
                result = results[n]
                if not result.ok or result.data is None:
                    notes.append(_skip_note(url, result))
                    continue
                if not _is_html(result.content_type):
                    notes.append(f"{url}: skipped, not an HTML page ({result.content_type})")
                    continue
                page_url = result.final_url or url
                visited.add(urldefrag(page_url).url)
                if (h := _host(page_url)) is not None:
                    hosts[seed].add(h)
                parsed = parse_page(decode_html(result.data, result.content_type), page_url,
                                    filters)
                read.append(page_url)
                if not parsed.images:
                    notes.append(f"{page_url}: no images found")
                for entry in parsed.images:
                    if entry["url"] not in seen_images:
                        seen_images.add(entry["url"])
                        images.append(entry)
                for link in parsed.links:
                    if budget[seed] <= 0:
                        break
                    if _host(link) not in hosts[seed] or _extension(link) in filters.extensions:
                        continue
                    if link in visited:
                        continue
                    visited.add(link)
                    budget[seed] -= 1
                    next_level.append((link, seed))
            level = next_level
    if not read:
        raise CatalogueError(f"no page could be read: {_summary(notes) or 'no page given'}")
    return ScrapeReport(images=images, notes=notes, pages=read)


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
