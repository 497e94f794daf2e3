"""Taking images or whole sources out of the catalogue.

A removed image keeps its row as a tombstone (status ``removed``, features dropped, a change
number like any change), so the index drops it at once and `index update` does not bring it
back from a source that still lists it; building that source again explicitly does. A
removed source is forgotten (its images removed, its record deleted), so updates no longer
read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine

from echoimage.config import Settings
from echoimage.errors import CatalogueError
from echoimage.index.build import update_index_files
from echoimage.store import repo
from echoimage.store.db import session_factory


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


def remove_images(settings: Settings, store: Engine, refs: Sequence[str]) -> RemoveReport:
    """Take images (by id or URL) out of the catalogue; the index follows at once."""
    report = RemoveReport()
    with session_factory(store).begin() as session:
        found, report.unknown = repo.images_by_ref(session, refs)
        report.removed = repo.remove_images(session, list(found.values()))
    done = {i for i, _ in report.removed}
    report.already = [ref for ref, i in found.items() if i not in done]
    if report.removed:
        report.index = update_index_files(settings, store).as_dict()
    return report


def remove_source(settings: Settings, store: Engine, refs: Sequence[str]) -> RemoveReport:
    """Take every image of a source out of the catalogue and forget the source: the first
    of refs (its URI, number, or the other names of it the caller knows) that names one."""
    with session_factory(store).begin() as session:
        src = next(filter(None, (repo.find_source(session, ref) for ref in refs)), None)
        if src is None:
            raise CatalogueError(f"no recorded source is {refs[0]!r} (see `echoimage "
                                 "catalogue sources`)")
        report = RemoveReport(source=src.uri)
        report.removed = repo.remove_images(session, repo.image_ids_of_source(session, src.id))
        repo.forget_source(session, src.id)
    report.index = update_index_files(settings, store).as_dict()
    return report
