"""The public Python API: a `Catalogue` (opened with `echoimage.open`) builds, updates,
queries, de-duplicates and reports on one store. The CLI and the web server are thin layers
over it.

    import echoimage

    with echoimage.open("shop-data") as catalogue:
        catalogue.build("photos/")
        result = catalogue.query("upload.jpg", k=3)
        for m in result.copies:
            print(m.verdict, m.score, m.url, m.metadata)
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from echoimage.config import Settings
from echoimage.errors import EchoImageError

if TYPE_CHECKING:
    from PIL import Image

    from echoimage.indexing.remove import RemoveReport
    from echoimage.indexing.runs import BuildSummary
    from echoimage.search.dedupe import DedupeResult
    from echoimage.search.engine import QueryResult, SearchEngine

#: what `Catalogue.query` accepts: a file path, an http(s) URL, encoded image bytes, a
#: numpy array (H×W gray or H×W×3 RGB, uint8) or a Pillow image
QueryInput: TypeAlias = "str | os.PathLike[str] | bytes | np.ndarray | Image.Image"


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
    return Catalogue(Settings(**settings))


class Catalogue:
    """One store and its index: build, update, query, dedupe, status, remove.

    The search engine (the index files and the store connection) is loaded on the first
    query and kept until `close`; a query after a build or update sees its changes. A
    serving catalogue (the web server's) refreshes its index in a background thread, so a
    query never waits for a refresh.
    """

    def __init__(self, settings: Settings | None = None, serving: bool = False) -> None:
        self.settings = settings or Settings()
        self.serving = serving
        self._engine: SearchEngine | None = None

    def __repr__(self) -> str:
        where = self.settings.database_url or str(self.settings.data_dir)
        return f"<Catalogue {where}>"

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the search engine (its store connections and cluster client)."""
        if self._engine is not None:
            self._engine.close()
            self._engine.engine.dispose()
            self._engine = None

    # --- indexing ---------------------------------------------------------------------------

    def build(self, *sources: str | os.PathLike[str], sample: bool = False,
              progress: bool = False) -> BuildSummary:
        """Index catalogue sources (folders, images.json/JSONL/CSV/text files, image files,
        URLs); incremental: indexed images are skipped, an interrupted build resumes. With
        sample (or no source on an empty store), the bundled sample catalogue too."""
        from echoimage.indexing.build import build_index

        return build_index(self.settings, [os.fspath(s) for s in sources], progress=progress,
                           sample=sample)

    def update(self, progress: bool = False) -> BuildSummary:
        """Re-read every recorded source: index new and changed images, drop vanished ones."""
        from echoimage.indexing.update import update_index

        return update_index(self.settings, progress=progress)

    def remove(self, *images: str | int) -> RemoveReport:
        """Take images (ids or URLs/paths) out of the catalogue; the index follows."""
        from echoimage.indexing.remove import remove_images

        return remove_images(self.settings, [str(i) for i in images])

    # --- searching --------------------------------------------------------------------------

    @property
    def engine(self) -> SearchEngine:
        """The search engine, loaded on first use (a StoreError naming where it looked when
        there is no catalogue there)."""
        if self._engine is None:
            from echoimage.search.engine import SearchEngine

            self._engine = SearchEngine(self.settings, background=self.serving)
        return self._engine

    def query(self, image: QueryInput, k: int = 5,
              colour_sensitive: bool | None = None) -> QueryResult:
        """The k catalogue images most like image, best first, each with its verdict
        (`exact`, `duplicate`, `partial`, `recoloured`, `different`) and the evidence
        behind its score; `result.copies` are those that are copies, `result.found` says
        whether there is any. Raises an EchoImageError (one-line reason) for an unreadable
        query, and ValueError for k outside 1..max_k."""
        return self.engine.query_bytes(query_bytes(image, self.settings), k,
                                       colour_sensitive=colour_sensitive)

    def query_many(self, images: Iterable[QueryInput], k: int = 5,
                   colour_sensitive: bool | None = None,
                   ) -> Iterator[tuple[QueryInput, QueryResult | EchoImageError]]:
        """Query each image in turn: (image, its result or the EchoImageError that said why
        it could not be searched), so one bad query does not stop the rest."""
        for image in images:
            try:
                yield image, self.query(image, k, colour_sensitive)
            except EchoImageError as exc:
                yield image, exc

    # --- the catalogue itself ---------------------------------------------------------------

    def dedupe(self, crops: bool = False,
               progress: Callable[[int], None] | None = None) -> DedupeResult:
        """Groups of duplicates among the catalogue's own images, each naming a keeper;
        with crops, images that are a part of another too (slower)."""
        from echoimage.search.dedupe import find_duplicates

        engine = self._engine.engine if self._engine is not None else None
        return find_duplicates(self.settings, crops=crops, progress=progress, engine=engine)

    def status(self) -> dict[str, Any]:
        """Counts by status, the index's freshness and layout, sizes in bytes, recent runs
        and failures (what `echoimage index status --json` prints)."""
        from echoimage.indexing.status import status_report

        return status_report(self.settings)

    def image(self, image_id: int) -> dict[str, Any] | None:
        """One catalogue image's record: url, status, size, metadata, source; None if
        unknown."""
        from echoimage.store import repo

        with self.engine.sessions() as session:
            return repo.image_info(session, image_id)


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
    raise TypeError(f"cannot query a {type(image).__name__}: give a path, a URL, bytes, "
                    "a numpy array or a Pillow image")


def _array_png(arr: np.ndarray) -> bytes:
    """A uint8 H×W (gray), H×W×3 (RGB) or H×W×4 (RGBA) array as PNG bytes."""
    import cv2

    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or \
            (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise TypeError(f"a query array must be uint8 H×W, H×W×3 (RGB) or H×W×4 (RGBA), "
                        f"not {arr.dtype} {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr))
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 array it accepts
        raise TypeError("the query array could not be encoded")
    return buf.tobytes()


__all__ = ["Catalogue", "QueryInput", "open", "query_bytes"]
