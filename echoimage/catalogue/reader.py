"""Catalogue sources as a build or an update reads them (the `SourceReader` that
`echoimage.indexing` is given): local files and folders, catalogue files behind a URL
(fetched), single image URLs, web pages (scraped, with the same-site pages they link to),
and the bundled sample catalogue."""

from __future__ import annotations

import logging
import posixpath
from typing import Any
from urllib.parse import urlsplit

from echoimage.aio import run_interruptibly
from echoimage.catalogue.sample import ensure_sample
from echoimage.catalogue.sources import (
    IMAGE_EXTENSIONS,
    FolderListing,
    content_kind,
    parse_catalogue,
    read_local_source,
    source_kind,
)
from echoimage.config import Settings
from echoimage.errors import CatalogueError
from echoimage.fetch.local import is_url
from echoimage.types import CatalogueItem, FetchStatus, SourceListing

log = logging.getLogger(__name__)

#: the kind of a web page source (scraped again by every update)
PAGE = "page"


class CatalogueReader:
    """Reads catalogue sources for the catalogue of settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def read(self, source: str, kind: str | None = None, follow_pages: int | None = None
             ) -> SourceListing:
        """A source's uri (as the store records it), kind and items; a CatalogueError with
        a one-line reason when it cannot be read. kind is the kind recorded when the source
        was first read (an update's: a URL is then read as it was, without finding out
        again what it is); follow_pages, the same-site links a web page source follows."""
        if is_url(source):
            return self._remote(source, kind, follow_pages or 0)
        uri, kind, items = read_local_source(source)
        if isinstance(items, FolderListing):  # its counter fills as the folder is listed
            return SourceListing(uri, kind, items, items.skipped)
        return SourceListing(uri, kind, items)

    def sample(self) -> str:
        """The bundled sample catalogue's folder (written on first use)."""
        return str(ensure_sample(self.settings.data_dir / "sample"))

    def _remote(self, url: str, kind: str | None, follow_pages: int) -> SourceListing:
        """A catalogue file behind a URL, a single image URL, or a web page."""
        if kind == PAGE:
            return self._scraped(url, follow_pages, self._scrape(url, follow_pages))
        named = source_kind(url)
        if named == "url" and (kind == "url" or _image_name(url)):
            return SourceListing(url, "url", [CatalogueItem(url, url)])
        from echoimage.fetch.client import FetchConfig, FetchResult, fetch_bytes

        if named == "url":  # a name that does not say: a page, an image or a catalogue
            got = self._scrape(url, follow_pages, find_out=True)
            if not isinstance(got, FetchResult):
                if not got.images:
                    raise CatalogueError(f"{url}: no image found on the {len(got.pages)} "
                                         "page(s) read")
                return self._scraped(url, follow_pages, got)
            res = got
        else:
            res = fetch_bytes(url, FetchConfig.from_settings(self.settings,
                                                             require_image=False))
        if res.status == FetchStatus.TOO_LARGE and named == "url":
            return SourceListing(url, "url", [CatalogueItem(url, url)])  # an image's size
        if res.status != FetchStatus.OK or res.data is None:
            raise CatalogueError(f"cannot fetch catalogue {url}: {res.reason or res.status}")
        found = content_kind(res.data, url, None if named == "url" else named)
        if found == "image":
            return SourceListing(url, "url", [CatalogueItem(url, url)])
        return SourceListing(url, found, list(parse_catalogue(res.data, found, url, url)))

    def _scrape(self, url: str, follow_pages: int, find_out: bool = False) -> Any:
        """The scrape of the page url (ScrapeReport); with find_out, the url fetched once
        first and scraped only if it is a page (else its FetchResult)."""
        from echoimage.catalogue.scrape import ScrapeFilters, page_or_file, scrape
        from echoimage.fetch.client import FetchConfig

        config = FetchConfig.from_settings(self.settings)
        delay = self.settings.scrape_delay
        if find_out:
            return run_interruptibly(page_or_file(url, follow_pages, ScrapeFilters(), config,
                                                  delay=delay))
        return run_interruptibly(scrape([url], follow_pages, ScrapeFilters(), config,
                                        delay=delay))

    @staticmethod
    def _scraped(url: str, follow_pages: int, report: Any) -> SourceListing:
        """A scraped page's listing: each image with the page it was found on (and its
        alt text) as metadata."""
        for note in report.notes:
            log.info("%s", note)
        items = [CatalogueItem(e["url"], url, {k: v for k, v in e.items()
                                                if k != "url" and v})
                 for e in report.images]
        return SourceListing(url, PAGE, items, follow_pages=follow_pages,
                             unread_pages=frozenset(report.unread))


def _image_name(url: str) -> bool:
    """Whether url's file name has an image's extension (it is read as an image URL)."""
    try:
        path = urlsplit(url).path
    except ValueError:
        return True  # malformed: fetched as an image, refused with its reason
    return posixpath.splitext(path)[1].lower() in IMAGE_EXTENSIONS
