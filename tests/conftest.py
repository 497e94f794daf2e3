"""Shared fixtures: a generated catalogue, an index built over it once, and Settings.

The catalogue is made of photos scikit-image ships (no download) written in a few formats.
They are mutually unrelated, so a transformed copy of one of them has exactly one right
answer. Tests that change a store work on their own copy (`built_copy`) or data directory.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import CATALOGUE_PHOTOS, jpeg, photo, png, webp, write

from echoimage.config import Settings
from echoimage.pipeline import BuildSummary, build_index

#: file format of each catalogue photo (the rest are JPEG)
CATALOGUE_FORMATS = {"camera": "png", "moon": "png", "coins": "webp", "page": "png"}


@dataclass
class Catalogue:
    """A directory of generated catalogue images, by photo name."""

    root: Path
    files: dict[str, Path] = field(default_factory=dict)

    def url(self, name: str) -> str:
        """The URL the store records for a photo: its absolute, resolved path."""
        return str(self.files[name].resolve())

    @property
    def urls(self) -> set[str]:
        """Every image's URL."""
        return {self.url(n) for n in self.files}


@dataclass
class Built:
    """A data directory whose store and index hold the catalogue."""

    settings: Settings
    catalogue: Catalogue
    summary: BuildSummary


def write_catalogue(root: Path, names: tuple[str, ...] = CATALOGUE_PHOTOS) -> Catalogue:
    """Write the photos into root (JPEG q92 unless CATALOGUE_FORMATS says otherwise)."""
    cat = Catalogue(root)
    for name in names:
        fmt = CATALOGUE_FORMATS.get(name, "jpg")
        arr = photo(name)
        data = {"png": png, "webp": webp}.get(fmt, jpeg)(arr)
        cat.files[name] = write(root / f"{name}.{fmt}", data)
    return cat


@pytest.fixture(scope="session")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> Catalogue:
    """Twelve unrelated photos in JPEG, PNG and WebP (read-only for tests)."""
    return write_catalogue(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, catalogue: Catalogue) -> Built:
    """The catalogue indexed once per session (read-only for tests: copy it to change it)."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("built-data"), workers=2)
    summary = build_index(settings, [str(catalogue.root)], progress=False)
    assert summary.counts["indexed"] == len(catalogue.files), summary.as_dict()
    return Built(settings, catalogue, summary)


@pytest.fixture
def built_copy(built: Built, tmp_path: Path) -> Built:
    """A private copy of the built data directory that a test may change."""
    data_dir = tmp_path / "data"
    shutil.copytree(built.settings.data_dir, data_dir)
    settings = built.settings.model_copy(update={"data_dir": data_dir})
    return Built(settings, built.catalogue, built.summary)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings factory: a fresh data directory under tmp_path, one worker by default."""
    count = 0

    def factory(**overrides: Any) -> Settings:
        nonlocal count
        count += 1
        values: dict[str, Any] = {"data_dir": tmp_path / f"data{count}", "workers": 1}
        values.update(overrides)
        return Settings(**values)

    return factory


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any connection attempt that leaves the machine (loopback and Unix sockets ok)."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if host not in ("127.0.0.1", "::1", "localhost"):
                raise AssertionError(f"test tried to reach the network: {address!r}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield
