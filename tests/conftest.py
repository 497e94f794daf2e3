"""Shared fixtures: a generated catalogue, an index built over it once, and Settings.

The catalogue is made of photos scikit-image ships (no download) written in a few formats.
They are mutually unrelated, so a transformed copy of one of them has exactly one right
answer. Tests that change a store work on their own copy (`built_copy`) or data directory.

Store back ends: tests of modules marked `stores` run once on SQLite and once on a real
PostgreSQL server (`tests/support/pgserver.py`, started once per session) through the
`backend` fixture;
`store_url` gives such a test its own empty database and points ECHOIMAGE_DATABASE_URL at
it, so every Settings the test makes (and every CLI process it starts) uses it. Tests marked
`sqlite_only` stay on SQLite. Without a server the PostgreSQL variants are skipped, or fail
under CI=true.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import CATALOGUE_PHOTOS, build_index, jpeg, photo, png, webp, write
from sqlalchemy import make_url
from support.pgserver import PgServer, PgUnavailable, start_server

from echoimage.config import Settings
from echoimage.indexing.runs import BuildSummary

#: file format of each catalogue photo (the rest are JPEG)
CATALOGUE_FORMATS = {"camera": "png", "moon": "png", "coins": "webp", "page": "png"}

#: the store back ends tests of `stores` modules run on
BACKENDS = (pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres))
URL_ENV = "ECHOIMAGE_DATABASE_URL"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the store tests of `stores` modules on every back end (once per module each)."""
    node = metafunc.definition
    if ("backend" in metafunc.fixturenames and node.get_closest_marker("stores")
            and not node.get_closest_marker("sqlite_only")):
        metafunc.parametrize("backend", BACKENDS, indirect=True, scope="module")


class _Postgres:
    """The session's PostgreSQL server, started on first use (or why there is none)."""

    def __init__(self) -> None:
        self.server: PgServer | None = None
        self.why: str | None = None

    def get(self) -> PgServer:
        """The running server; skips the test (fails it under CI=true) without one."""
        if self.server is None and self.why is None:
            try:
                self.server = start_server()
            except PgUnavailable as exc:
                self.why = str(exc)
        if self.server is None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"PostgreSQL tests cannot run: {self.why}", pytrace=False)
            pytest.skip(f"no PostgreSQL server: {self.why}")
        return self.server

    def stop(self) -> None:
        """Stop the server, if one was started."""
        if self.server is not None:
            self.server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[_Postgres]:
    """The session's PostgreSQL server (started when a test first needs it, always
    stopped at the end of the session)."""
    pg = _Postgres()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="module")
def backend(request: pytest.FixtureRequest) -> str:
    """The store back end: "sqlite" unless the test runs in a `stores` module."""
    return getattr(request, "param", "sqlite")


def new_store(request: pytest.FixtureRequest, backend: str, template: str | None = None
              ) -> str | None:
    """A store URL for the back end: None for SQLite (a file in the data directory), for
    PostgreSQL a new database (empty, or a copy of template) dropped when `request`'s scope
    ends."""
    if backend == "sqlite":
        return None
    server = request.getfixturevalue("postgres").get()
    name = server.create_database(template=template)
    request.addfinalizer(lambda: server.drop_database(name))
    return server.url(name)


@pytest.fixture
def store_url(backend: str, request: pytest.FixtureRequest,
              monkeypatch: pytest.MonkeyPatch) -> str | None:
    """This test's store: None on SQLite, else the URL of a new, empty PostgreSQL database;
    ECHOIMAGE_DATABASE_URL is set to it (unset on SQLite)."""
    url = new_store(request, backend)
    if url is None:
        monkeypatch.delenv(URL_ENV, raising=False)
    else:
        monkeypatch.setenv(URL_ENV, url)
    return url


@pytest.fixture(scope="module")
def module_store_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """A store for a module's shared fixtures (None on SQLite)."""
    return new_store(request, backend)


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


#: PostgreSQL databases of the built catalogue: read by tests, and a pristine copy that
#: nobody connects to (the template of `built_copy`)
BUILT_DB, BUILT_TEMPLATE = "built", "built_template"


@pytest.fixture(scope="session")
def built_stores(tmp_path_factory: pytest.TempPathFactory, catalogue: Catalogue
                 ) -> dict[str, Built]:
    """The catalogue built once per session on each back end that asks for it."""
    return {}


@pytest.fixture(scope="module")
def built(built_stores: dict[str, Built], backend: str, catalogue: Catalogue,
          tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Built:
    """The catalogue indexed once per session and back end (read-only for tests: copy it
    to change it)."""
    if backend in built_stores:
        return built_stores[backend]
    url = None
    server = None
    if backend == "postgresql":
        server = request.getfixturevalue("postgres").get()
        url = server.url(server.create_database(name=BUILT_DB))
    settings = Settings(data_dir=tmp_path_factory.mktemp(f"built-{backend}"), workers=2,
                        database_url=url)
    summary = build_index(settings, [str(catalogue.root)], progress=False)
    assert summary.counts["indexed"] == len(catalogue.files), summary.as_dict()
    if server is not None:
        server.disconnect(BUILT_DB)
        server.create_database(template=BUILT_DB, name=BUILT_TEMPLATE)
    built_stores[backend] = Built(settings, catalogue, summary)
    return built_stores[backend]


@pytest.fixture
def built_copy(built: Built, backend: str, tmp_path: Path, request: pytest.FixtureRequest,
               monkeypatch: pytest.MonkeyPatch) -> Built:
    """A private copy of the built data directory (and PostgreSQL database) that a test may
    change; ECHOIMAGE_DATABASE_URL names the copy's database on PostgreSQL."""
    data_dir = tmp_path / "data"
    shutil.copytree(built.settings.data_dir, data_dir)
    url = new_store(request, backend, template=BUILT_TEMPLATE)
    if url is None:
        monkeypatch.delenv(URL_ENV, raising=False)
    else:
        monkeypatch.setenv(URL_ENV, url)
    settings = built.settings.model_copy(update={"data_dir": data_dir, "database_url": url})
    return Built(settings, built.catalogue, built.summary)


@pytest.fixture
def make_settings(tmp_path: Path, store_url: str | None, backend: str,
                  request: pytest.FixtureRequest) -> Callable[..., Settings]:
    """Settings factory: a fresh data directory under tmp_path, one worker by default, and
    a store of its own (the first one is `store_url`'s)."""
    count = 0

    def factory(**overrides: Any) -> Settings:
        nonlocal count
        count += 1
        url = store_url if count == 1 else new_store(request, backend)
        values: dict[str, Any] = {"data_dir": tmp_path / f"data{count}", "workers": 1,
                                  "database_url": url}
        values.update(overrides)
        return Settings(**values)

    return factory


@pytest.fixture
def copy_store(request: pytest.FixtureRequest) -> Callable[[Settings, Path], Settings]:
    """copy(settings, data_dir): Settings of a copy of settings' store (the SQLite files, or
    a PostgreSQL database made from it as a template) beside an empty data_dir."""

    def copy(settings: Settings, data_dir: Path) -> Settings:
        data_dir.mkdir(parents=True, exist_ok=True)
        if not settings.database_url:
            for f in settings.data_dir.glob("echoimage.sqlite3*"):
                shutil.copy(f, data_dir / f.name)
            return settings.model_copy(update={"data_dir": data_dir})
        server = request.getfixturevalue("postgres").get()
        source = make_url(settings.database_url).database
        assert source
        server.disconnect(source)  # a template must have no connections (pools reconnect)
        name = server.create_database(template=source)
        request.addfinalizer(lambda: server.drop_database(name))
        return settings.model_copy(update={"data_dir": data_dir,
                                           "database_url": server.url(name)})

    return copy


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
