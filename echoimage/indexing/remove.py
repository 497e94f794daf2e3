"""Managing the catalogue: its sources, and taking images or whole sources out of it.

A removed image keeps its row as a tombstone (status ``removed``, features dropped, a change
number like any change), so the index drops it at once and `index update` does not bring it
back from a source that still lists it; building that source again explicitly does. A
removed source is forgotten (its images removed, its record deleted), so updates no longer
read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from echoimage.config import Settings
from echoimage.errors import CatalogueError
from echoimage.index.build import update_index_files
from echoimage.store import repo
from echoimage.store.db import open_store, session_factory


@dataclass
class RemoveReport:
    """What a removal took out of the catalogue."""

    removed: list[tuple[int, str]] = field(default_factory=list)  # (id, url)
    unknown: list[str] = field(default_factory=list)  # refs that name no image
    already: list[str] = field(default_factory=list)  # refs of images removed before
    source: str | None = None
    index: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"removed": [{"id": i, "url": u} for i, u in self.removed],
                "unknown": self.unknown, "already_removed": self.already,
                "source": self.source, "index": self.index}


def _engine(settings: Settings, engine: Engine | None) -> tuple[Engine, bool]:
    if engine is not None:
        return engine, False
    return open_store(settings, create=False), True


def remove_images(settings: Settings, refs: list[str], engine: Engine | None = None
                  ) -> RemoveReport:
    """Take images (by id or URL) out of the catalogue; the index follows at once."""
    eng, own = _engine(settings, engine)
    try:
        report = RemoveReport()
        with session_factory(eng).begin() as session:
            found, report.unknown = repo.images_by_ref(session, refs)
            report.removed = repo.remove_images(session, list(found.values()))
        done = {i for i, _ in report.removed}
        report.already = [ref for ref, i in found.items() if i not in done]
        if report.removed:
            report.index = update_index_files(settings, eng).as_dict()
        return report
    finally:
        if own:
            eng.dispose()


def remove_source(settings: Settings, ref: str, engine: Engine | None = None) -> RemoveReport:
    """Take every image of a source out of the catalogue and forget the source."""
    eng, own = _engine(settings, engine)
    try:
        with session_factory(eng).begin() as session:
            src = repo.find_source(session, ref) or repo.find_source(session, _as_path(ref))
            if src is None:
                raise CatalogueError(f"no recorded source is {ref!r} (see `echoimage "
                                     "catalogue sources`)")
            report = RemoveReport(source=src.uri)
            report.removed = repo.remove_images(session, repo.image_ids_of_source(session,
                                                                                  src.id))
            repo.forget_source(session, src.id)
        report.index = update_index_files(settings, eng).as_dict()
        return report
    finally:
        if own:
            eng.dispose()


def _as_path(ref: str) -> str:
    """How the store names a local source given as a (relative) path."""
    from echoimage.catalogue import _absolute, is_url
    from echoimage.fetch.local import path_url

    return ref if is_url(ref) else path_url(_absolute(Path(ref)))


def list_sources(settings: Settings) -> list[repo.SourceInfo]:
    """The recorded sources with their images' counts by status."""
    eng = open_store(settings, create=False)
    try:
        with session_factory(eng)() as session:
            return repo.source_infos(session)
    finally:
        eng.dispose()
