"""Engine and session factory from Settings, SQLite pragmas, and Alembic upgrade."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from echoimage.config import Settings
from echoimage.errors import StoreError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str) -> Engine:
    """An engine; SQLite gets WAL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def alembic_config(url: str) -> Config:
    """Alembic configuration pointing at migrations/ and the given URL."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest migration revision the code knows."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the migrations up to revision on this engine's database."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot migrate the store: {exc}") from exc


def downgrade(engine: Engine, revision: str) -> None:
    """Run the migrations down to revision."""
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def open_store(settings: Settings, migrate: bool = True) -> Engine:
    """Engine for the settings' store; upgrades the schema when migrate is true."""
    settings.ensure_dirs()
    try:
        shown = make_url(settings.db_url).render_as_string(hide_password=True)
    except ArgumentError:
        raise StoreError(f"not a database URL: {settings.db_url!r}") from None
    try:
        engine = make_engine(settings.db_url)
        rev = current_revision(engine)
    except (SQLAlchemyError, ImportError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StoreError(f"store unreachable ({shown}): {detail}") from None
    if rev != head_revision():
        if not migrate:
            raise StoreError(
                f"store schema is at {rev or 'nothing'}, not {head_revision()}: "
                "run `echoimage db upgrade`"
            )
        upgrade(engine)
    return engine


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that do not expire objects on commit."""
    return sessionmaker(engine, expire_on_commit=False)
