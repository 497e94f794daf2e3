"""The public Python API: a `Catalogue` (opened with `echoimage.open`) builds, updates,
queries, de-duplicates, repairs and reports on one store. It is the one door: the CLI and
the web server are thin layers over it and import nothing below this module (the names
they need besides `Catalogue` are exported here).

    import echoimage

    with echoimage.open("shop-data") as catalogue:
        catalogue.build("photos/")
        result = catalogue.query("upload.jpg", k=3)
        for m in result.copies:
            print(m.verdict, m.score, m.url, m.metadata)
"""

from __future__ import annotations

import importlib
import io
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from echoimage.aio import run_interruptibly
from echoimage.config import Settings
from echoimage.errors import (
    EchoImageError,
    EmptyCatalogueError,
    QueryInputError,
    SettingsError,
)
from echoimage.types import CatalogueItem, Picture, SourceListing

if TYPE_CHECKING:
    from PIL import Image
    from sqlalchemy import Engine

    from echoimage.catalogue.scan import ScanReport
    from echoimage.catalogue.scrape import ScrapeFilters, ScrapeReport
    from echoimage.catalogue.scrape import write_catalogue as write_catalogue
    from echoimage.features.limits import agree_pillow_limit as agree_pillow_limit
    from echoimage.features.sniff import sniff_format as sniff_format
    from echoimage.fetch.client import FetchConfig as FetchConfig
    from echoimage.fetch.client import FetcherFactory
    from echoimage.fetch.client import FetchResult as FetchResult
    from echoimage.fetch.local import is_url as is_url
    from echoimage.fetch.local import path_url as path_url
    from echoimage.fetch.ssrf import AllowList as AllowList
    from echoimage.fetch.ssrf import GuardedFetcher as GuardedFetcher
    from echoimage.fetch.ssrf import UrlPolicy
    from echoimage.index.build import IndexReport
    from echoimage.indexing.remove import RemoveReport
    from echoimage.indexing.runs import BuildSummary
    from echoimage.indexing.verify import VerifyReport
    from echoimage.search.dedupe import DedupeResult
    from echoimage.search.engine import QueryResult, SearchEngine
    from echoimage.store.repo import SourceInfo
    from echoimage.store.scans import FindingGroup, FindingInfo, FoundPicture, WatchInfo

#: what `Catalogue.query` accepts: a file path, an http(s) URL, encoded image bytes, a
#: numpy array (H×W gray or H×W×3 RGB, uint8) or a Pillow image
QueryInput: TypeAlias = "str | os.PathLike[str] | bytes | np.ndarray | Image.Image"

#: the source that images added by URL over the HTTP API belong to
API_SOURCE = "api:images"

#: names of the layers below, exported here (imported on first use, so that importing
#: this module stays light): name → (module, name there)
_EXPORTS = {
    "QueryResult": ("echoimage.search.engine", "QueryResult"),
    "BuildSummary": ("echoimage.indexing.runs", "BuildSummary"),
    "RemoveReport": ("echoimage.indexing.remove", "RemoveReport"),
    "VerifyReport": ("echoimage.indexing.verify", "VerifyReport"),
    "IndexReport": ("echoimage.index.build", "IndexReport"),
    "DedupeResult": ("echoimage.search.dedupe", "DedupeResult"),
    "DEDUPE_CSV_FIELDS": ("echoimage.search.dedupe", "CSV_FIELDS"),
    "dedupe_csv_rows": ("echoimage.search.dedupe", "csv_rows"),
    "SourceInfo": ("echoimage.store.repo", "SourceInfo"),
    "ScrapeFilters": ("echoimage.catalogue.scrape", "ScrapeFilters"),
    "ScrapeReport": ("echoimage.catalogue.scrape", "ScrapeReport"),
    "write_catalogue": ("echoimage.catalogue.scrape", "write_catalogue"),
    "FetchConfig": ("echoimage.fetch.client", "FetchConfig"),
    "FetchResult": ("echoimage.fetch.client", "FetchResult"),
    "AllowList": ("echoimage.fetch.ssrf", "AllowList"),
    "UrlPolicy": ("echoimage.fetch.ssrf", "UrlPolicy"),
    "GuardedFetcher": ("echoimage.fetch.ssrf", "GuardedFetcher"),
    "is_url": ("echoimage.fetch.local", "is_url"),
    "path_url": ("echoimage.fetch.local", "path_url"),
    "sniff_format": ("echoimage.features.sniff", "sniff_format"),
    "agree_pillow_limit": ("echoimage.features.limits", "agree_pillow_limit"),
    "ScanReport": ("echoimage.catalogue.scan", "ScanReport"),
    "FindingInfo": ("echoimage.store.scans", "FindingInfo"),
    "FindingGroup": ("echoimage.store.scans", "FindingGroup"),
    "FoundPicture": ("echoimage.store.scans", "FoundPicture"),
    "WatchInfo": ("echoimage.store.scans", "WatchInfo"),
    "SIGNATURE_HEADER": ("echoimage.catalogue.notify", "SIGNATURE_HEADER"),
    "verify_signature": ("echoimage.catalogue.notify", "verify"),
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'echoimage.api' has no attribute {name!r}")


def open(location: str | os.PathLike[str] | None = None, **settings: Any) -> Catalogue:  # noqa: A001
    """Open the catalogue at location: a data directory (created by the first build), or a
    database URL (``sqlite:///…``, ``postgresql+psycopg://…``, the index files then in
    ``index_dir``). With none, the settings' own (``ECHOIMAGE_DATA_DIR``,
    ``ECHOIMAGE_DATABASE_URL``; ``./echoimage-data``). Keyword arguments override any
    setting of `echoimage.config.Settings` (``max_k=100``, ``workers=4``, …).
    """
    if location is not None:
        where = os.fspath(location)
        key = "database_url" if "://" in where else "data_dir"
        settings = {key: where, **settings}
    return Catalogue(make_settings(**settings))


def make_settings(**values: Any) -> Settings:
    """Settings from values and the environment (ECHOIMAGE_*); a value a setting cannot
    take is a SettingsError naming it, in one line."""
    import difflib

    from pydantic import ValidationError

    for name in values:
        if name not in Settings.model_fields:  # a typo would be dropped without a word
            near = difflib.get_close_matches(name, list(Settings.model_fields), 1)
            raise SettingsError(f"no setting is called {name!r}"
                                + (f": did you mean {near[0]!r}?" if near else ""))
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            + (f" (got {err['input']!r})" if not isinstance(err.get("input"), dict) else "")
            for err in exc.errors())
        raise SettingsError(f"invalid settings: {problems} (an argument, or ECHOIMAGE_"
                            "<NAME> in the environment)") from None


@dataclass(frozen=True)
class IndexState:
    """The index being searched beside the store: its change number, the store's, and
    its size."""

    seq: int  # the store change number the index being searched includes
    store_seq: int  # the store's last change number
    entries: int  # images in the index being searched
    refreshed_at: float  # when it was loaded or last refreshed (time.time())

    @property
    def lag(self) -> int:
        """Store changes the index does not include yet."""
        return max(0, self.store_seq - self.seq)


class Catalogue:
    """One store and its index: build, update, query, dedupe, verify, status, remove.

    The catalogue owns one store engine (opened on first use; a command that only reads
    never creates a store) and one search engine (the index files, loaded on the first
    query), both kept until `close`; a query after a build or update sees its changes. A
    serving catalogue (the web server's) refreshes its index in a background thread, so a
    query never waits for a refresh.
    """

    def __init__(self, settings: Settings | None = None, serving: bool = False) -> None:
        self.settings = settings or Settings()
        self.serving = serving
        self._store: Engine | None = None
        self._writes = False  # the store was opened (or made ready) to be written
        self._search: SearchEngine | None = None
        self._lock = threading.RLock()  # a server's threads open each once between them

    def __repr__(self) -> str:
        where = self.settings.database_url or str(self.settings.data_dir)
        return f"<Catalogue {where}>"

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the search engine (its cluster client) and the store's connections."""
        if self._search is not None:
            self._search.close()
            self._search = None
        if self._store is not None:
            self._store.dispose()
            self._store = None

    # --- the store --------------------------------------------------------------------------

    def open_store(self, create: bool = False) -> Engine:
        """The store's SQLAlchemy engine, opened on first use. Reading (create false)
        never creates a store: a missing one is a StoreError that says where it looked;
        create (a build) makes the data directory and the schema when they are missing.
        """
        from echoimage.store import db

        with self._lock:
            if self._store is None:
                self._store = db.open_store(self.settings, create=create)
                self._writes = create
            elif create and not self._writes:
                db.ready_to_write(self.settings, self._store)
                self._writes = True
            return self._store

    def upgrade(self) -> str:
        """Create or migrate the store's schema to the newest revision; returns it."""
        from echoimage.store.db import current_revision

        return current_revision(self.open_store(create=True)) or ""

    # --- indexing ---------------------------------------------------------------------------

    def build(self, *sources: str | os.PathLike[str], sample: bool = False,
              progress: bool = False, follow_pages: int | None = None) -> BuildSummary:
        """Index catalogue sources (folders, images.json/JSONL/CSV/text files, image files,
        URLs, web pages); incremental: indexed images are skipped, an interrupted build
        resumes. With sample (or no source on an empty store), the bundled sample
        catalogue too. A web page (a URL that is neither an image nor a catalogue file) is
        a source itself: it is scraped, with up to follow_pages same-site pages, and every
        update scrapes it again. Every source is read first: one that cannot be read is a
        CatalogueError, and nothing (no data directory, no store) is created."""
        from echoimage.catalogue.reader import CatalogueReader
        from echoimage.indexing.build import build_index, check_no_source, read_sources

        if not sources and not sample:
            check_no_source(self.settings, self._held())
        t0 = time.perf_counter()
        listings = read_sources(CatalogueReader(self.settings),
                                [os.fspath(s) for s in sources], sample, follow_pages)
        summary = build_index(self.settings, self.open_store(create=True), listings,
                              time.perf_counter() - t0, progress)
        self._changed()
        return summary

    def _held(self) -> int:
        """Images the store holds (0 when there is no store yet: none is created)."""
        from echoimage.store import repo
        from echoimage.store.db import session_factory, store_exists

        if self._store is None and not store_exists(self.settings):
            return 0
        with session_factory(self.open_store())() as session:
            return sum(repo.status_counts(session).values())

    def update(self, progress: bool = False) -> BuildSummary:
        """Re-read every recorded source: index new and changed images, drop vanished ones
        (a catalogue that does not exist is a StoreError: there is nothing to update)."""
        from echoimage.catalogue.reader import CatalogueReader
        from echoimage.indexing.update import update_index
        from echoimage.store.db import require_existing

        if self._store is None:
            require_existing(self.settings)
        summary = update_index(self.settings, self.open_store(create=True),
                               CatalogueReader(self.settings), progress)
        self._changed()
        return summary

    def add(self, items: Iterable[CatalogueItem], source: str = API_SOURCE,
            kind: str = "api", url_policy: UrlPolicy | None = None,
            on_progress: Callable[[int, int], None] | None = None,
            follow_pages: int | None = None) -> BuildSummary:
        """Add items to the catalogue as source's (of kind: ``api`` for images added by
        hand, ``page`` for a scraped page's, which followed follow_pages links) and index
        them; every URL is fetched through url_policy when given (a server's SSRF guard);
        on_progress(done, total) after each image. An update re-checks images added by
        hand but never marks one gone for being unlisted (no file lists them); a page is
        scraped again like a page built with `build`."""
        from echoimage.indexing.build import index_items

        fetcher = _guarded(url_policy) if url_policy is not None else None
        summary = index_items(self.settings, self.open_store(create=True),
                              SourceListing(source, kind, list(items),
                                            follow_pages=follow_pages),
                              False, fetcher, on_progress)
        self._changed()
        return summary

    def remove(self, *images: str | int) -> RemoveReport:
        """Take images (ids or URLs/paths) out of the catalogue; the index follows."""
        from echoimage.indexing.remove import remove_images

        report = remove_images(self.settings, self.open_store(), [str(i) for i in images])
        self._changed()
        return report

    def remove_source(self, source: str) -> RemoveReport:
        """Take every image of a source (its URI, path or number: see `sources`) out of
        the catalogue and forget the source, so that updates no longer read it."""
        from echoimage.catalogue.sources import source_uri
        from echoimage.indexing.remove import remove_source

        report = remove_source(self.settings, self.open_store(), [source, source_uri(source)])
        self._changed()
        return report

    def rebuild(self, reason: str = "asked for") -> IndexReport:
        """Rebuild the index files from the store from scratch (retraining the quantizer);
        never needed for correctness."""
        from echoimage.index.build import rebuild_index_files

        report = rebuild_index_files(self.settings, self.open_store(), reason)
        self._changed()
        return report

    def verify(self, repair: bool = True) -> VerifyReport:
        """Check that the store and the index files agree; repair what does not (unless
        repair is false)."""
        from echoimage.indexing.verify import verify_index

        report = verify_index(self.settings, self.open_store(), repair)
        self._changed()
        return report

    def _changed(self) -> None:
        """The store or the index files changed: a loaded index follows at once (a
        serving one refreshes in the background)."""
        if self._search is not None:
            self._search.live.current()

    # --- searching --------------------------------------------------------------------------

    @property
    def search_engine(self) -> SearchEngine:
        """The search engine, loaded on first use (a StoreError naming where it looked when
        there is no catalogue there)."""
        with self._lock:
            if self._search is None:
                from echoimage.search.engine import SearchEngine

                self._search = SearchEngine(self.settings, self.open_store(),
                                            background=self.serving)
            return self._search

    @property
    def size(self) -> int:
        """Indexed images in the index being searched (loading it on first use)."""
        return self.search_engine.size

    @property
    def loaded(self) -> bool:
        """True once the search engine (the index) is loaded."""
        return self._search is not None

    def index_state(self) -> IndexState:
        """The index being searched beside the store's last change (loading the index on
        first use); an index behind the store starts refreshing (in the background when
        serving)."""
        snap = self.search_engine.live.current()
        return IndexState(snap.seq, self.change_number(), snap.size, snap.loaded_at)

    def query(self, image: QueryInput, k: int | None = None,
              colour_sensitive: bool | None = None, copies_only: bool | None = None
              ) -> QueryResult:
        """The k (default: the settings' default_k) catalogue images most like image, best
        first, each with its verdict
        (`exact`, `duplicate`, `partial`, `recoloured`, `different`) and the evidence
        behind its score; `result.copies` are those that are copies, `result.found` says
        whether there is any. copies_only (None: the settings' copies_only): the copies
        alone (at most k; none when it finds none), which spares scoring the nearest
        images to show them. Raises an
        EchoImageError (one-line reason) for an unreadable query, and QueryLimitError (a
        ValueError too) for k outside 1..max_k."""
        data = query_bytes(image, self.settings)
        try:
            return self.search_engine.query_bytes(
                data, self.settings.default_k if k is None else k,
                colour_sensitive=colour_sensitive, copies_only=copies_only)
        except EmptyCatalogueError as exc:
            raise EmptyCatalogueError(f"{exc}: {self._empty_hint()}") from None

    def _empty_hint(self) -> str:
        """What to do about a catalogue with nothing to search, from what it holds: never
        a bare `index build` (on an empty store it adds the sample photos)."""
        from echoimage.store import repo
        from echoimage.store.db import session_factory
        from echoimage.types import RunStatus, Status, counted

        with session_factory(self.open_store())() as session:
            counts = repo.status_counts(session)
            last = repo.recent_runs(session, 1)
        held = sum(counts.values())
        add = ("add images with `echoimage index build SOURCE` (a folder, an images.json, "
               "an image or page URL)")
        if not held:
            return f"it is empty; {add}"
        if set(counts) == {Status.REMOVED}:
            return f"its {held} images were all removed; {add}"
        listed = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        none = f"none of its {counted(held, 'image')} is indexed"
        if last and last[0]["status"] == RunStatus.RUNNING:  # its images come as it goes
            run = last[0]
            return (f"{none} yet ({listed}): run {run['id']} ({run['kind']}, "
                    f"{run['process']}) is indexing them; search again in a moment "
                    "(`echoimage index status` shows how far it is)")
        from echoimage.store.models import RETRYABLE

        if any(status in RETRYABLE for status in counts):
            return (f"{none} yet ({listed}): `echoimage index update` tries them again, "
                    "`echoimage index status` says why they failed")
        return f"{none} ({listed}): `echoimage index status` says why"

    def query_many(self, images: Iterable[QueryInput], k: int | None = None,
                   colour_sensitive: bool | None = None, copies_only: bool | None = None,
                   ) -> Iterator[tuple[QueryInput, QueryResult | EchoImageError]]:
        """Query each image in turn: (image, its result or the EchoImageError that said why
        it could not be searched), so one bad query does not stop the rest."""
        for image in images:
            try:
                yield image, self.query(image, k, colour_sensitive, copies_only)
            except EchoImageError as exc:
                yield image, exc

    # --- the catalogue itself ---------------------------------------------------------------

    def dedupe(self, crops: bool = False,
               progress: Callable[[int], None] | None = None) -> DedupeResult:
        """Groups of duplicates among the catalogue's own images, each naming a keeper;
        with crops, images that are a part of another too (slower)."""
        from echoimage.search.dedupe import find_duplicates

        return find_duplicates(self.settings, self.open_store(), crops, progress)

    def status(self) -> dict[str, Any]:
        """Counts by status, the index's freshness and layout, sizes in bytes, recent runs
        and failures (what `echoimage index status --json` prints)."""
        from echoimage.indexing.status import status_report

        return status_report(self.settings, self.open_store())

    def stats(self) -> dict[str, Any]:
        """Images by status, the index being searched (its size, change number and parts;
        a change of the store starts a background refresh when serving, and the answer
        says what is searched now) and the latest indexing runs."""
        from datetime import UTC, datetime

        from echoimage.store import repo

        snap = self.search_engine.live.current()
        with self.search_engine.sessions() as session:
            counts = repo.status_counts(session)
            runs = repo.recent_runs(session)
        return {
            "images": counts,
            "total_images": sum(counts.values()),
            "index": {"entries": snap.size, "seq": snap.seq, "files_seq": snap.files_seq,
                      "parts": len(snap.parts.parts),
                      "refreshed_at": datetime.fromtimestamp(snap.loaded_at, UTC).isoformat(),
                      "in_memory": snap.manifest is None},
            "runs": runs,
        }

    def change_number(self) -> int:
        """The store's last change number (each change to an image takes the next one)."""
        from echoimage.store import repo
        from echoimage.store.db import session_factory

        with session_factory(self.open_store())() as session:
            return repo.current_seq(session)

    def sources(self) -> list[SourceInfo]:
        """The recorded catalogue sources with their images' counts by status."""
        from echoimage.store import repo
        from echoimage.store.db import session_factory

        with session_factory(self.open_store())() as session:
            return repo.source_infos(session)

    def image(self, image_id: int) -> dict[str, Any] | None:
        """One catalogue image's record: url, status, size, metadata, source; None if
        unknown."""
        from echoimage.store import repo
        from echoimage.store.db import session_factory

        with session_factory(self.open_store())() as session:
            return repo.image_info(session, image_id)

    def original(self, image_id: int, longest: int, url_policy: UrlPolicy | None = None
                 ) -> np.ndarray | None:
        """An indexed image at its own resolution (its longest side at most longest), in
        colour (RGB), read again from its file or URL (through url_policy when given); None
        when it cannot be read or is no longer what was indexed (other bytes): then only
        what the store keeps (`picture`) can show it."""
        import hashlib

        from echoimage.features.decode import decode_image

        info = self.image(image_id)
        if info is None or info["sha256"] is None:
            return None
        data = _read_original(info["url"], self.settings, url_policy)
        if data is None or hashlib.sha256(data).hexdigest() != info["sha256"]:
            return None
        try:
            img = decode_image(data, self.settings.max_pixels, max(16, longest), max(8, longest))
        except EchoImageError:
            return None
        return img.colour

    def picture(self, image_id: int) -> Picture | None:
        """What the store keeps to show an indexed image: its grayscale thumbnail, size,
        keypoint scale and colour preview; None when it has none (not indexed)."""
        from echoimage.store import repo
        from echoimage.store.db import session_factory

        with session_factory(self.open_store())() as session:
            return repo.picture(session, image_id)

    # --- scanning other people's pages for copies -------------------------------------------

    def scan(self, *targets: str | os.PathLike[str], follow_pages: int = 0,
             report_all: bool = False, notify: str | None = None,
             url_policy: UrlPolicy | None = None,
             on_finding: Callable[[FindingInfo], None] | None = None,
             on_progress: Callable[[int, int], None] | None = None,
             _watch: str | None = None) -> ScanReport:
        """Look for copies of the catalogue's images on targets: page URLs (scraped, and up
        to follow_pages pages of their site linked from each), lists of image URLs or paths,
        images.json files and folders. Every copy is a finding remembered in the store; the
        report lists the new ones (every one seen with report_all), those found gone, and
        each page or image that could not be read with its status and reason. A re-scan
        fetches and compares only what changed. notify: a webhook URL that receives each new
        finding (signed with the webhook_secret setting). Every URL goes through url_policy
        (default: the scan_allowlist setting's; private addresses refused)."""
        from echoimage.catalogue.scan import ScanOptions

        options = ScanOptions(follow_pages=follow_pages, report_all=report_all,
                              notify=notify, watch=_watch)
        return self._scanner(url_policy).scan([os.fspath(t) for t in targets], options,
                                              on_finding, on_progress)

    def scan_watches(self, *names: str, report_all: bool = False,
                     url_policy: UrlPolicy | None = None,
                     on_finding: Callable[[FindingInfo], None] | None = None,
                     on_progress: Callable[[int, int], None] | None = None
                     ) -> list[ScanReport]:
        """Scan the named watches (all of them when none is named), one after the other,
        each with its own targets, pages to follow and webhook. A name that is no watch is
        a ScanError before anything is scanned."""
        from echoimage.errors import ScanError

        found = self.watches(*names)
        missing = sorted(set(names) - {w.name for w in found})
        if missing:
            raise ScanError(f"no watch named {', '.join(missing)} (see `echoimage watch list`)")
        return [self.scan(*w.targets, follow_pages=w.follow_pages, report_all=report_all,
                          notify=w.notify, url_policy=url_policy, on_finding=on_finding,
                          on_progress=on_progress, _watch=w.name) for w in found]

    def _scanner(self, url_policy: UrlPolicy | None) -> Any:
        from echoimage.catalogue.scan import Scanner
        from echoimage.fetch.ssrf import AllowList, UrlPolicy
        from echoimage.store.db import require_existing

        if self._store is None:
            require_existing(self.settings)
        store = self.open_store(create=True)
        if url_policy is None:
            url_policy = UrlPolicy(AllowList.parse(self.settings.scan_allowlist),
                                   hint="ECHOIMAGE_SCAN_ALLOWLIST lets a scan reach it")
        return Scanner(self.settings, store, self.search_engine, url_policy)

    def findings(self, watch: str | None = None, catalogue_image: int | None = None,
                 since: str | datetime | None = None, include_gone: bool = False,
                 page: int = 1, per_page: int = 50) -> tuple[int, list[FindingInfo]]:
        """(how many, a page of) the findings of scans, newest first: of a watch, of a
        catalogue image, first seen since a time (ISO 8601 or a datetime); those found
        gone only with include_gone."""
        from echoimage.store import scans

        flt = _finding_filter(watch, catalogue_image, since, include_gone)
        with self._reading() as session:
            return scans.list_findings(session, flt, (max(1, page) - 1) * per_page, per_page)

    def finding_groups(self, watch: str | None = None, catalogue_image: int | None = None,
                       since: str | datetime | None = None, include_gone: bool = False,
                       page: int = 1, per_page: int = 20, per_group: int = 12
                       ) -> tuple[int, list[FindingGroup]]:
        """The findings grouped by catalogue image, the image found newest first: (how many
        catalogue images have findings, a page of groups of up to per_group findings)."""
        from echoimage.store import scans

        flt = _finding_filter(watch, catalogue_image, since, include_gone)
        with self._reading() as session:
            return scans.finding_groups(session, flt, (max(1, page) - 1) * per_page,
                                        per_page, per_group)

    def found_picture(self, finding_id: int) -> FoundPicture | None:
        """The stored picture of a finding's image and its match (keypoint pairs, region),
        for drawing it beside the catalogue image; None for an unknown finding."""
        from echoimage.store import scans

        with self._reading() as session:
            return scans.found_picture(session, finding_id)

    def recent_scans(self, limit: int = 5) -> list[dict[str, Any]]:
        """The latest scans, newest first: status, targets or watch, counts, duration."""
        from echoimage.store import scans

        with self._reading() as session:
            return scans.recent_scans(session, limit)

    def add_watch(self, name: str, *targets: str | os.PathLike[str], follow_pages: int = 0,
                  notify: str | None = None) -> bool:
        """Save targets as a named watch (replacing one of that name) for scan_watches
        and `echoimage scan --watches`; True when the name is new."""
        from echoimage.catalogue.notify import NO_SECRET
        from echoimage.errors import ScanError
        from echoimage.fetch.local import is_url
        from echoimage.store import scans
        from echoimage.store.db import require_existing, session_factory

        name = name.strip()
        if not name or len(name) > 128 or any(c.isspace() for c in name):
            raise ScanError(f"a watch name is one word of at most 128 characters, not "
                            f"{name[:40]!r}")
        if not targets:
            raise ScanError("a watch needs at least one target")
        if follow_pages < 0:
            raise ScanError("follow_pages must not be negative")
        if notify and self.settings.webhook_secret is None:  # refused now, not by cron later
            raise ScanError(NO_SECRET)
        kept = [t if is_url(t) else _absolute_target(t) for t in map(os.fspath, targets)]
        if self._store is None:
            require_existing(self.settings)
        with session_factory(self.open_store(create=True)).begin() as session:
            return scans.add_watch(session, name, kept, follow_pages, notify)

    def watches(self, *names: str) -> list[WatchInfo]:
        """The watches (those named, all by name otherwise), each with its last scan and
        how many findings its pages hold."""
        from echoimage.store import scans

        with self._reading() as session:
            return scans.watches(session, list(names) if names else None)

    def remove_watch(self, name: str) -> bool:
        """Forget a watch (its findings stay); False when there is none of that name."""
        from echoimage.store import scans
        from echoimage.store.db import require_existing, session_factory

        if self._store is None:
            require_existing(self.settings)
        with session_factory(self.open_store(create=True)).begin() as session:
            return scans.remove_watch(session, name)

    def _reading(self) -> Any:
        """A session on the store, for reading."""
        from echoimage.store.db import session_factory

        return session_factory(self.open_store())()


def _absolute_target(target: str) -> str:
    """A local target as a watch keeps it: an absolute path (a watch runs from anywhere)."""
    from pathlib import Path

    return str(Path(target).expanduser().resolve())


def _finding_filter(watch: str | None, catalogue_image: int | None,
                    since: str | datetime | None, include_gone: bool) -> Any:
    from echoimage.store.scans import FindingFilter

    if isinstance(since, str):
        try:
            since = datetime.fromisoformat(since.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"since must be an ISO 8601 time (2026-12-01 or "
                             f"2026-12-01T10:00:00+00:00), not {since[:40]!r}") from None
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return FindingFilter(watch, catalogue_image, since, include_gone)


def _read_original(url: str, settings: Settings, url_policy: UrlPolicy | None
                   ) -> bytes | None:
    """The bytes of a catalogue image's file or URL (a URL through url_policy when given),
    or None when they cannot be read."""
    import asyncio

    from echoimage.fetch.local import is_url, read_local

    if not is_url(url):
        return read_local(url, settings.max_bytes).data
    from echoimage.fetch.client import FetchConfig, Fetcher

    async def one() -> bytes | None:
        config = FetchConfig.from_settings(settings, total_timeout=min(
            settings.http_timeout, ORIGINAL_TIMEOUT))
        make = _guarded(url_policy) if url_policy is not None else Fetcher
        async with make(config) as fetcher:
            res = await fetcher.fetch(url)
        return res.data if res.ok else None

    return asyncio.run(one())


#: seconds a picture's original may take to fetch before its stored preview is shown
ORIGINAL_TIMEOUT = 10.0


def scrape_pages(pages: list[str], follow_pages: int = 0, filters: ScrapeFilters | None = None,
                 url_policy: UrlPolicy | None = None, settings: Settings | None = None
                 ) -> ScrapeReport:
    """Collect the image URLs of web pages (and of up to follow_pages same-site pages
    linked from each), like `echoimage catalogue scrape`, with the fetch limits of settings;
    every URL is fetched through url_policy when given (a server's SSRF guard)."""
    from echoimage.catalogue.scrape import ScrapeFilters, scrape
    from echoimage.fetch.client import FetchConfig

    settings = settings or Settings()
    config = FetchConfig.from_settings(settings)
    fetcher = _guarded(url_policy) if url_policy is not None else None
    return run_interruptibly(scrape(pages, follow_pages, filters or ScrapeFilters(), config,
                                    fetcher, delay=settings.scrape_delay))


def _guarded(policy: UrlPolicy) -> FetcherFactory:
    """A fetcher factory whose fetchers go through the policy (`fetch.ssrf`)."""
    from echoimage.fetch.ssrf import GuardedFetcher

    def make(config: FetchConfig) -> GuardedFetcher:
        return GuardedFetcher(config, policy)

    return make


def query_bytes(image: QueryInput, settings: Settings) -> bytes:
    """The encoded bytes of a query given as any `QueryInput`."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        from echoimage.search.query import read_query

        return read_query(os.fspath(image), settings)
    if isinstance(image, np.ndarray):
        return _array_png(image)
    if hasattr(image, "save") and hasattr(image, "mode"):  # a Pillow image
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise QueryInputError(f"cannot query a {type(image).__name__}: give a path, a URL, bytes, "
                    "a numpy array or a Pillow image")


def _array_png(arr: np.ndarray) -> bytes:
    """A uint8 H×W (gray), H×W×3 (RGB) or H×W×4 (RGBA) array as PNG bytes."""
    import cv2

    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or \
            (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise QueryInputError(f"a query array must be uint8 H×W, H×W×3 (RGB) or H×W×4 (RGBA), "
                        f"not {arr.dtype} {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 array it accepts
        raise QueryInputError("the query array could not be encoded")
    return buf.tobytes()


__all__ = ["API_SOURCE", "Catalogue", "Picture", "QueryInput", "make_settings", "open",
           "query_bytes", "scrape_pages", *_EXPORTS]
