"""Catalogue sources as a build or an update reads them (the `SourceReader` that
`echoimage.indexing` is given): local files and folders, catalogue files behind a URL
(fetched), single image URLs, and the bundled sample catalogue."""

from __future__ import annotations

from echoimage.catalogue.sample import ensure_sample
from echoimage.catalogue.sources import (
    FolderListing,
    parse_catalogue,
    read_local_source,
    source_kind,
)
from echoimage.config import Settings
from echoimage.errors import CatalogueError
from echoimage.fetch.local import is_url
from echoimage.types import CatalogueItem, FetchStatus, SourceListing


class CatalogueReader:
    """Reads catalogue sources for the catalogue of settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def read(self, source: str) -> SourceListing:
        """A source's uri (as the store records it), kind and items; a CatalogueError with
        a one-line reason when it cannot be read."""
        if is_url(source):
            return self._remote(source)
        uri, kind, items = read_local_source(source)
        if isinstance(items, FolderListing):  # its counter fills as the folder is listed
            return SourceListing(uri, kind, items, items.skipped)
        return SourceListing(uri, kind, items)

    def sample(self) -> str:
        """The bundled sample catalogue's folder (written on first use)."""
        return str(ensure_sample(self.settings.data_dir / "sample"))

    def _remote(self, url: str) -> SourceListing:
        """A catalogue file behind a URL, or a single image URL."""
        kind = source_kind(url)
        if kind == "url":
            return SourceListing(url, "url", [CatalogueItem(url, url)])
        from echoimage.fetch.client import FetchConfig, fetch_bytes

        res = fetch_bytes(url, FetchConfig.from_settings(self.settings, require_image=False))
        if res.status != FetchStatus.OK or res.data is None:
            raise CatalogueError(f"cannot fetch catalogue {url}: {res.reason or res.status}")
        return SourceListing(url, kind, list(parse_catalogue(res.data, kind, url, url)))
