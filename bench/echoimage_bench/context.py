"""What one benchmark run carries from stage to stage: settings, photos, records, the log.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np


class Log:
    """Progress lines on stderr, with the time since the start of the run."""

    def __init__(self, enabled: bool, prefix: str = "bench") -> None:
        self.enabled = enabled
        self.prefix = prefix
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[{self.prefix} {time.perf_counter() - self.t0:6.0f}s] {msg}",
                  file=sys.stderr, flush=True)

    def loop(self, what: str, total: int) -> Callable[[int], None]:
        """A callback(done) that logs done/total with a rate every ~15 s."""
        start = last = time.perf_counter()

        def tick(done: int) -> None:
            nonlocal last
            now = time.perf_counter()
            if done == total or now - last >= 15:
                last = now
                r = done / max(now - start, 1e-9)
                eta = (total - done) / r if r > 0 else 0
                self(f"{what}: {done}/{total} ({r:.1f}/s, ~{eta:.0f}s left)")

        return tick


@dataclass
class QueryRecord:
    """One positive query of the recall sweep."""

    transform: str
    photo: int
    rank: int | None
    top_score: float
    top_dup: bool
    e2e_ms: float
    phash_rank: int | None
    phash_top_dist: int
    phash_truth_dist: int
    # the top result's colour_distance and exactness (colour-sensitive verdicts)
    top_colour: float | None = None
    top_exact: bool = False
    without_proof: int = 0  # results called copies without proof (never any)


@dataclass
class RunContext:
    """State shared by the phases of one run."""

    log: Log
    seed: int
    settings: Any
    catalogue: list[Path]
    urls: list[str]  # store URL of each catalogue photo
    url_ids: dict[str, int]
    query_photos: list[int]  # indices into catalogue
    phash_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    phash_codes: np.ndarray = field(default_factory=lambda: np.zeros((0, 8), np.uint8))
    id_urls: dict[int, str] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)
    images: dict[int, np.ndarray] = field(default_factory=dict)


def machine_info() -> dict[str, Any]:
    """The machine and library versions a run's figures were measured with."""
    import faiss
    import skimage
    import sqlalchemy

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(),
            "machine": platform.machine(), "python": platform.python_version(),
            "numpy": np.__version__, "opencv": cv2.__version__, "faiss": faiss.__version__,
            "scikit_image": skimage.__version__, "sqlalchemy": sqlalchemy.__version__,
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def list_photos(photo_dir: Path) -> list[Path]:
    """The image files below photo_dir (by extension, not hidden), sorted."""
    from echoimage.catalogue.sources import IMAGE_EXTENSIONS

    if not photo_dir.is_dir():
        raise ValueError(f"not a directory: {photo_dir}")
    files = sorted(p.resolve() for p in photo_dir.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not p.name.startswith("."))
    return files


def split_photos(files: Sequence[Path], seed: int, negatives_fraction: float
                 ) -> tuple[list[Path], list[Path]]:
    """(catalogue, negatives), each sorted: a seeded random `negatives_fraction` held out."""
    if not 0 <= negatives_fraction < 1:
        raise ValueError("negatives_fraction must be in [0, 1)")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(files))
    n_neg = int(round(negatives_fraction * len(files)))
    neg = {int(i) for i in perm[:n_neg]}
    catalogue = [f for i, f in enumerate(files) if i not in neg]
    negatives = [f for i, f in enumerate(files) if i in neg]
    return catalogue, negatives


def indexed_images(settings: Any) -> dict[str, int]:
    """URL → store id of every indexed image of settings' store."""
    from echoimage.store import repo
    from echoimage.store.db import open_store, session_factory

    engine = open_store(settings, create=False)
    try:
        with session_factory(engine)() as session:
            known = repo.known_images(session)
    finally:
        engine.dispose()
    return {u: k.id for u, k in known.items() if k.status == "indexed"}


def stored_photos(data_dir: Path) -> dict[str, tuple[int, str]]:
    """File name → (store id, URL) of the indexed photos of an existing catalogue (its
    padding, rows with no file behind them, left out)."""
    from echoimage.config import Settings

    if not (data_dir / "echoimage.sqlite3").exists():
        raise ValueError(f"{data_dir} holds no catalogue")
    known = indexed_images(Settings(data_dir=data_dir, database_url=None))
    return {u.rsplit("/", 1)[-1]: (i, u) for u, i in known.items() if "://" not in u}


def query_subset(indexed: Sequence[int], seed: int, limit: int | None) -> list[int]:
    """The catalogue photos to query: all of indexed, or a seeded subset of limit."""
    if limit is None or limit >= len(indexed):
        return list(indexed)
    rng = np.random.default_rng([seed, 0x11A])
    return sorted(rng.choice(indexed, size=limit, replace=False).tolist())


def read_bgr(path: Path) -> np.ndarray | None:
    """A photo as a BGR array (None when it cannot be decoded)."""
    img = cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_COLOR)
    return img


def catalogue_photo(ctx: RunContext, i: int) -> np.ndarray:
    """Catalogue photo i as a BGR array (read once, then kept in ctx)."""
    img = ctx.images.get(i)
    if img is None:
        img = read_bgr(ctx.catalogue[i])
        if img is None:
            raise ValueError(f"cannot read {ctx.catalogue[i]}")
        ctx.images[i] = img
    return img


def end_phase(ctx: RunContext, name: str, t0: float) -> None:
    """Record and log the seconds a phase took since t0."""
    ctx.phases[name] = round(time.perf_counter() - t0, 2)
    ctx.log(f"{name} done in {ctx.phases[name]:.1f}s")


def build_catalogue(settings: Any, *sources: str) -> Any:
    """Index sources into the catalogue of settings, as `echoimage index build` does (no
    progress bar); returns its BuildSummary."""
    from echoimage.api import Catalogue

    with Catalogue(settings) as catalogue:
        return catalogue.build(*sources)


def search_engine(settings: Any, rebuild: bool = True, background: bool = False) -> Any:
    """A SearchEngine on the store of settings, opened for reading as a query opens it
    (close it with `engine.store.dispose()`)."""
    from echoimage.search.engine import SearchEngine
    from echoimage.store.db import open_store

    return SearchEngine(settings, open_store(settings, create=False), rebuild=rebuild,
                        background=background)
