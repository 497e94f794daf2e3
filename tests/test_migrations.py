"""Alembic migrations on a temporary SQLite file and a PostgreSQL database: up, down, up; CLI;
models match schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import Engine, inspect

from echoimage.cli import cli
from echoimage.config import Settings
from echoimage.store.db import (
    current_revision,
    downgrade,
    head_revision,
    make_engine,
    open_store,
    upgrade,
)
from echoimage.store.models import Base

pytestmark = [pytest.mark.usefixtures("no_network"), pytest.mark.stores]

TABLES = {"sources", "images", "features", "runs", "store_info", "scan_pages", "scan_images",
          "scan_matches", "findings", "watches", "watch_pages", "scans"}


@pytest.fixture
def engine(tmp_path: Path, store_url: str | None) -> Iterator[Engine]:
    """An engine on an empty store."""
    eng = make_engine(store_url or f"sqlite:///{tmp_path / 'store.sqlite3'}")
    yield eng
    eng.dispose()


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def schema_diff(engine: Engine) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                     "compare_server_default": True})
        return compare_metadata(ctx, Base.metadata)


def test_upgrade_downgrade_upgrade(engine: Engine) -> None:
    assert current_revision(engine) is None and tables(engine) == set()
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    assert tables(engine) == TABLES
    downgrade(engine, "base")
    assert current_revision(engine) is None
    assert tables(engine) == set()
    upgrade(engine, "head")
    assert current_revision(engine) == head_revision()
    assert tables(engine) == TABLES
    assert schema_diff(engine) == []


def test_revisions_read_without_alembic_agree_with_it(engine: Engine) -> None:
    """head_revision and current_revision read the migration files and the version table
    themselves (a query command does not import Alembic): they say what Alembic says, at
    every revision of the history."""
    from alembic.script import ScriptDirectory

    from echoimage.store.db import alembic_config

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert head_revision() == script.get_current_head()
    for rev in reversed([r.revision for r in script.walk_revisions()]):
        upgrade(engine, rev)
        with engine.connect() as conn:
            alembic_says = MigrationContext.configure(conn).get_current_revision()
        assert current_revision(engine) == alembic_says == rev


def test_index_revision_reads_what_each_migration_says() -> None:
    """index_revision skips the migrations that say the index files read nothing they
    change, as their modules (loaded by Alembic) say it."""
    from alembic.script import ScriptDirectory

    from echoimage.store.db import _migrations, alembic_config, index_revision

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    said = {r.revision: bool(getattr(r.module, "index_unchanged", False))
            for r in script.walk_revisions()}
    assert said == {rev: m.index_unchanged for rev, m in _migrations().items()}
    assert said["0008"] and not said["0001"]
    for rev in said:
        got = index_revision(rev)
        assert got is not None and not said[got] and got <= rev
        assert all(said[r] for r in said if got < r <= rev)
    assert index_revision() == index_revision(head_revision())
    assert index_revision("no-such-revision") is None


def test_a_query_does_not_import_alembic(tmp_path: Path) -> None:
    """Opening a current store to read (what a query does) imports no Alembic."""
    import subprocess
    import sys

    from helpers import REPO

    store = tmp_path / "d"
    upgrade_engine = open_store(Settings(data_dir=store))
    upgrade_engine.dispose()
    code = "\n".join([
        "import sys",
        "from echoimage.config import Settings",
        "from echoimage.store.db import open_store",
        f"open_store(Settings(data_dir={str(store)!r}), create=False).dispose()",
        "assert not [m for m in sys.modules if m.startswith('alembic')]"])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_models_match_migrated_schema(engine: Engine) -> None:
    upgrade(engine)
    assert schema_diff(engine) == []


def test_metadata_tables_are_the_migrated_ones() -> None:
    assert set(Base.metadata.tables) == TABLES


def test_migrated_indexes_and_constraints(engine: Engine) -> None:
    upgrade(engine)
    insp = inspect(engine)
    index_names = {ix["name"] for ix in insp.get_indexes("images")}
    assert {"ix_images_status", "ix_images_sha256", "ix_images_indexed_at",
            "ix_images_source_id"} <= index_names
    uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("images")}
    assert ("url",) in uniques
    fks = insp.get_foreign_keys("features")
    assert fks and fks[0]["referred_table"] == "images"
    assert fks[0]["options"].get("ondelete") == "CASCADE"


def test_upgrade_is_idempotent(engine: Engine) -> None:
    upgrade(engine)
    upgrade(engine)
    assert current_revision(engine) == head_revision()


def test_db_upgrade_command(tmp_path: Path, store_url: str | None) -> None:
    data_dir = tmp_path / "data"
    result = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "db", "upgrade"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert head_revision() in result.output
    engine = make_engine(Settings(data_dir=data_dir).db_url)
    try:
        assert current_revision(engine) == head_revision()
        assert tables(engine) == TABLES
    finally:
        engine.dispose()
    again = CliRunner().invoke(cli, ["--data-dir", str(data_dir), "db", "upgrade"])
    assert again.exit_code == 0 and head_revision() in again.output


def test_db_upgrade_via_database_url(tmp_path: Path) -> None:
    """The URL variable moves the store out of the data directory (a SQLite file here)."""
    url = f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}"
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "data"), "db", "upgrade"],
                                env={"ECHOIMAGE_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert (tmp_path / "elsewhere.sqlite3").exists()
    assert not (tmp_path / "data" / "echoimage.sqlite3").exists()


def test_open_store_upgrades_an_old_store(tmp_path: Path, store_url: str | None) -> None:
    settings = Settings(data_dir=tmp_path)
    settings.ensure_dirs()
    engine = make_engine(settings.db_url)
    upgrade(engine)
    downgrade(engine, "base")
    engine.dispose()
    engine = open_store(settings)
    try:
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_a_failed_upgrade_leaves_no_half_made_schema(engine: Engine,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The migrations run in one transaction: a failure (or a kill) half way through leaves
    the store as it was, and the next upgrade makes the whole schema."""
    from alembic import op

    from echoimage.errors import StoreError

    real = op.create_index
    calls = []

    def failing(*args, **kwargs):  # after some tables were created
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(op, "create_index", failing)
    with pytest.raises((RuntimeError, StoreError)):
        upgrade(engine)
    assert tables(engine) == set() and current_revision(engine) is None
    monkeypatch.setattr(op, "create_index", real)
    upgrade(engine)
    assert tables(engine) == TABLES and current_revision(engine) == head_revision()
