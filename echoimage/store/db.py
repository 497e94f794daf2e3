"""Engine and session factory from Settings, SQLite pragmas, Alembic upgrade, and the one
place where database failures become one-line `StoreError`s.

Commands that write the catalogue open the store with ``create=True`` (the data directory and
the schema are made when missing). Commands that only read it (queries, the web server,
status) never create a store: a missing or empty store is an error that says where it was
looked for. When the store cannot be written (a read-only mount, a full disk) a reader opens
it read-only instead.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import logging
import os
import re
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event, inspect, make_url
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import ArgumentError, DatabaseError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from echoimage.config import Settings
from echoimage.errors import StoreError

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: SQLite's words for "this connection cannot write here" (read-only mount, no room for its
#: shared-memory file): a reader then opens the store read-only
_CANNOT_WRITE = ("unable to open database file", "readonly database", "disk i/o error",
                 "database or disk is full")


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without SQLAlchemy's decorations."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_store_error(exc: BaseException, shown: str, connecting: bool = False) -> str:
    """One line that says what went wrong with the store at `shown` and what to do
    (connecting: the failure came while connecting to it)."""
    detail = _first_line(exc)
    low = detail.lower()
    err = getattr(getattr(exc, "orig", None), "sqlite_errorcode", None)
    if "disk is full" in low or "no space left" in low or isinstance(exc, OSError) and \
            exc.errno == errno.ENOSPC:
        return f"disk full while writing the store at {shown}: free some space and run the " \
               "command again (nothing written so far is lost)"
    if "malformed" in low or "not a database" in low or err == 11:
        return (f"the store at {shown} is damaged ({detail}): restore it from a backup, or "
                "move it away and build the catalogue again with `echoimage index build`")
    if "readonly" in low or "read-only" in low:
        return f"the store at {shown} cannot be written ({detail})"
    if "database is locked" in low:
        return f"the store at {shown} is locked by another process ({detail}); try again"
    if connecting:
        hint = ""
        if "database" in low and "does not exist" in low:
            hint = ": create that database first, or correct ECHOIMAGE_DATABASE_URL"
        elif "authentication failed" in low or "no password supplied" in low:
            hint = ": check the user and password in ECHOIMAGE_DATABASE_URL"
        return f"store unreachable ({shown}): {detail}{hint}"
    return f"store error at {shown}: {detail}"


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    u = make_url(url)
    if not u.drivername.startswith("sqlite") or u.database in (None, "", ":memory:"):
        return None
    db = u.database
    if db.startswith("file:"):  # a URI filename
        db = db[5:].split("?", 1)[0]
    return Path(db)


#: engines made here, for the fork hook
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
_FORK_HOOK: list[bool] = []


def _forget_connections_after_fork() -> None:
    """In a forked child: start new connection pools, leaving the parent's connections
    (sockets it is still using) alone."""
    for engine in list(_ENGINES):
        engine.dispose(close=False)


def _track(engine: Engine) -> None:
    """Register an engine with the fork hook (installed with the first engine)."""
    if not _FORK_HOOK and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_connections_after_fork)
        _FORK_HOOK.append(True)
    _ENGINES.add(engine)


def make_engine(url: str, readonly: bool = False) -> Engine:
    """An engine; SQLite gets WAL, foreign keys and a busy timeout (or, read-only, none of
    what would write). Database failures surface as StoreError with a one-line reason. A
    forked child process never uses the parent's pooled connections: it opens its own."""
    shown = make_url(url).render_as_string(hide_password=True)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            if readonly:
                cur.execute("PRAGMA query_only=ON")
            else:
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)

    @event.listens_for(engine, "handle_error")
    def _one_line(ctx: ExceptionContext) -> None:
        if ctx.is_pre_ping:
            # a pooled connection the server closed (restarted, or killed the session):
            # the pool replaces it with a new one; only a failure of that one is an error
            return
        exc = ctx.sqlalchemy_exception
        if isinstance(exc, DatabaseError) and not isinstance(exc, IntegrityError):
            raise StoreError(describe_store_error(exc, shown, ctx.connection is None)
                             ) from exc

    _track(engine)
    return engine


def alembic_config(url: str) -> Config:
    """Alembic configuration pointing at the packaged migrations and the given URL (Alembic
    is imported here, by what migrates: a reader that finds the schema current never
    imports it, which is a third of a query command's start-up)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


_REVISION = re.compile(r'^(down_revision|revision)\s*=\s*(?:"([^"]*)"|None)', re.M)
_INDEX_UNCHANGED = re.compile(r"^index_unchanged\s*=\s*True\b", re.M)


@dataclass(frozen=True)
class _Migration:
    down: str | None
    index_unchanged: bool  # the index files read nothing it changes


@functools.cache
def _migrations() -> dict[str, _Migration]:
    """Every migration the code knows, by revision, read from the migration files'
    `revision`, `down_revision` and `index_unchanged` lines (without importing Alembic)."""
    out = {}
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        found = dict(_REVISION.findall(text))
        if "revision" in found:
            out[found["revision"]] = _Migration(found.get("down_revision") or None,
                                                bool(_INDEX_UNCHANGED.search(text)))
    return out


@functools.cache
def head_revision() -> str:
    """The newest migration revision the code knows: the one no migration revises (the
    same as Alembic's head: tests/test_migrations.py checks that they agree)."""
    known = _migrations()
    heads = set(known) - {m.down for m in known.values()}
    if len(heads) != 1:  # pragma: no cover - a broken package
        raise StoreError(f"the store's migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def index_revision(revision: str | None = None) -> str | None:
    """The revision the index files of a store at `revision` (default: the head) depend
    on: the newest at or before it whose migration changed what they read (a migration
    saying `index_unchanged = True`, such as one adding the scan tables, does not). Index
    files written at any revision with the same index revision still serve; None for a
    revision the code does not know (written by newer code)."""
    known = _migrations()
    rev: str | None = head_revision() if revision is None else revision
    while rev is not None and rev in known and known[rev].index_unchanged:
        rev = known[rev].down
    return rev if rev is None or rev in known else None


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database (Alembic's
    version table, read without Alembic)."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        found = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all()
    if len(found) > 1:  # pragma: no cover - EchoImage's history has no branches
        raise StoreError(f"the store's schema is at several revisions: {sorted(found)}")
    return found[0] if found else None


def _lock_schema(conn: Connection) -> None:
    """Start the migration transaction holding the store's write lock, so that processes
    opening a new store at the same time migrate it one after the other (the second finds
    it at head). SQLite: an immediate transaction (the driver would run DDL outside any
    transaction, and a kill between two CREATE TABLEs would leave a half-made schema);
    PostgreSQL (whose DDL is transactional): the writers' advisory lock."""
    from echoimage.store.repo import WRITE_LOCK_KEY

    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run the migrations up to revision on this engine's database, in one transaction
    (a run killed half way leaves the schema as it was)."""
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    try:
        with engine.begin() as conn:
            _lock_schema(conn)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot migrate the store: {_first_line(exc)}") from exc


def downgrade(engine: Engine, revision: str) -> None:
    """Run the migrations down to revision."""
    from alembic import command

    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        _lock_schema(conn)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


#: how a reader is pointed at another catalogue (named in its "no catalogue" errors)
POINT_ELSEWHERE = "--data-dir (ECHOIMAGE_DATA_DIR) or ECHOIMAGE_DATABASE_URL"


def _where_looked(path: Path, settings: Settings) -> str:
    """Where a reader looked for a store that is not there, in words."""
    if settings.database_url:
        return f"no catalogue at {path} (ECHOIMAGE_DATABASE_URL; the file does not exist)"
    default = settings.data_dir == Settings.model_fields["data_dir"].default
    where = f"the default data directory ./{settings.data_dir}" if default else "the data " \
        f"directory {settings.data_dir}"
    return f"no catalogue in {where} ({path.resolve()} does not exist)"


def _check_existing(path: Path, settings: Settings) -> None:
    """A reader's store file must exist and hold something; else say where it looked."""
    index_files = settings.index_dir.is_dir() and any(settings.index_dir.iterdir())
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if index_files:
            raise StoreError(
                f"the store {path} is missing but index files are in {settings.index_dir}: "
                "the store was deleted or moved; restore it, or build the catalogue again "
                "with `echoimage index build`") from None
        raise StoreError(
            f"{_where_looked(path, settings)}: build one with `echoimage index build "
            f"SOURCE`, or point {POINT_ELSEWHERE} at an existing one") from None
    except OSError as exc:
        raise StoreError(f"cannot read the store {path}: {exc.strerror or exc}") from None
    if size == 0:
        beside = " beside existing index files" if index_files else ""
        raise StoreError(
            f"the store {path} is empty (0 bytes){beside}: it was truncated or never built; "
            "restore it from a backup, or move it away and build the catalogue again with "
            "`echoimage index build`")


def _store_url(settings: Settings) -> tuple[str, Path | None]:
    """The store's URL as shown (no password) and its SQLite file, if it is one; a URL
    that cannot be parsed is a StoreError."""
    try:
        shown = make_url(settings.db_url).render_as_string(hide_password=True)
    except ArgumentError:
        raise StoreError(f"not a database URL: {settings.db_url!r}") from None
    return shown, _sqlite_path(settings.db_url)


def store_exists(settings: Settings) -> bool:
    """Whether the settings' store exists (a SQLite file, or a database with the schema),
    found without creating anything."""
    _, path = _store_url(settings)
    if path is not None:
        return path.exists()
    engine = make_engine(settings.db_url)
    try:
        return current_revision(engine) is not None
    finally:
        engine.dispose()


#: PostgreSQL advisory lock of a catalogue's runner (a build or an update): held by one
#: process at a time, for its whole run (the writers' lock is another key, per transaction)
RUN_LOCK_KEY = 0x72756E6E  # "runn"


@contextmanager
def run_lock(store: Engine, waiting: Callable[[], None]) -> Iterator[None]:
    """Hold the catalogue's run lock for the block: one build or update of a store at a
    time, from any process or machine. When another holds it, waiting() is called once and
    the block waits its turn (a holder that dies releases it: the kernel drops a dead
    process's file lock, the server a dead connection's advisory lock). SQLite: an flock
    on a file beside the store; PostgreSQL: a session-level advisory lock on a connection
    kept for the block."""
    path = _sqlite_path(str(store.url))
    if path is not None:
        lock_path = path.with_name(path.name + ".run-lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise StoreError(f"cannot open the run lock {lock_path}: "
                             f"{exc.strerror or exc}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                waiting()
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock
        return
    if store.dialect.name != "postgresql":  # pragma: no cover - the two stores supported
        yield
        return
    with store.connect() as conn:
        got = conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({RUN_LOCK_KEY})").scalar()
        conn.commit()
        if not got:
            waiting()
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({RUN_LOCK_KEY})")
            conn.commit()
        try:
            yield
        finally:
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({RUN_LOCK_KEY})")
            conn.commit()


def require_existing(settings: Settings) -> None:
    """For a command that changes a catalogue but never starts one (`index update`): a
    SQLite store must already exist, else a StoreError saying where it looked (and no data
    directory is created)."""
    _, path = _store_url(settings)
    if path is not None:
        _check_existing(path, settings)


def _readonly_engine(path: Path) -> Engine:
    """A read-only engine on a SQLite file: through SQLite's shared memory when it can be
    made, else (a read-only mount or a full disk, and nothing waiting in the WAL) as an
    immutable file."""
    uri = quote(str(path.resolve()))
    engine = make_engine(f"sqlite:///file:{uri}?mode=ro&uri=true", readonly=True)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").scalar()
        return engine
    except StoreError:
        engine.dispose()
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise StoreError(
            f"cannot read the store {path}: its directory cannot be written (read-only or "
            "full) and changes are still waiting in its write-ahead log; open it once where "
            "it can be written")
    return make_engine(f"sqlite:///file:{uri}?immutable=1&uri=true", readonly=True)


def _cannot_write(exc: StoreError) -> bool:
    cause = exc.__cause__
    text = _first_line(cause if cause is not None else exc).lower()
    return any(words in text for words in _CANNOT_WRITE)


def _make_writable(settings: Settings, path: Path | None) -> None:
    """The data and index directories made, and a SQLite store's directory writable (else a
    StoreError: a read-only directory or mount)."""
    try:
        settings.ensure_dirs()
    except OSError as exc:
        raise StoreError(f"cannot create the data directory {settings.data_dir}: "
                         f"{exc.strerror or exc}") from None
    if path is not None and not os.access(path.parent, os.W_OK):
        raise StoreError(f"cannot write the store in {path.parent} (a read-only "
                         "directory or mount): this command writes the catalogue")


def open_store(settings: Settings, migrate: bool = True, create: bool = True) -> Engine:
    """Engine for the settings' store; upgrades the schema when migrate is true.

    With create false (readers), a missing or empty store is a StoreError, and a store that
    cannot be written is opened read-only (its schema must then be current).
    """
    shown, path = _store_url(settings)
    if create:
        _make_writable(settings, path)
    elif path is not None:
        _check_existing(path, settings)
    readonly = False
    try:
        engine = make_engine(settings.db_url)
        rev = current_revision(engine)
        if rev is not None and not create:
            with engine.connect() as conn:  # reading also needs what WAL mode writes
                conn.exec_driver_sql("SELECT 1 FROM images LIMIT 1").all()
    except StoreError as exc:
        if create or path is None or not _cannot_write(exc):
            raise
        log.info("the store %s cannot be written (%s): opening it read-only", path, exc)
        engine = _readonly_engine(path)
        readonly = True
        try:
            rev = current_revision(engine)
        except StoreError:
            engine.dispose()
            raise
    except ImportError as exc:
        raise StoreError(f"store unreachable ({shown}): {_first_line(exc)}: install the "
                         "database driver (PostgreSQL: pip install 'echoimage[postgres]')"
                         ) from None
    except SQLAlchemyError as exc:
        raise StoreError(f"store unreachable ({shown}): {_first_line(exc)}") from None
    if rev is None and not create:
        engine.dispose()
        raise StoreError(f"{shown} holds no EchoImage catalogue (no schema): build one with "
                         f"`echoimage index build SOURCE`, or point {POINT_ELSEWHERE} at an "
                         "existing one")
    if rev != head_revision():
        if not migrate or readonly:
            engine.dispose()
            why = "it is read-only; " if readonly else ""
            raise StoreError(
                f"store schema is at {rev or 'nothing'}, not {head_revision()}: {why}run "
                "`echoimage db upgrade` where it can be written")
        upgrade(engine)
    if create and migrate:
        compact_rows(engine)
    return engine


def ready_to_write(settings: Settings, engine: Engine) -> None:
    """Make an engine that open_store opened for reading (create=False) fit for a command
    that writes the catalogue, as open_store(create=True) would have opened it: the
    directories made, a store that cannot be written refused, old rows converted."""
    _, path = _store_url(settings)
    _make_writable(settings, path)
    if is_readonly(engine):  # opened so because it could not be written then
        raise StoreError(f"the store {path} cannot be written (it was opened read-only): "
                         "this command writes the catalogue")
    compact_rows(engine)


def compact_rows(engine: Engine, batch: int = 500) -> int:
    """Convert the feature rows of an older store to the compact row format, in batches of
    one transaction each (a run that is stopped goes on where it stopped next time).
    Returns how many rows were rewritten."""
    from echoimage.store import repo
    from echoimage.store.models import ROW_FORMAT

    sessions = session_factory(engine)
    with sessions() as session:
        if repo.row_format(session) >= ROW_FORMAT:
            return 0
    done, last = 0, 0
    log.warning("converting the store's feature rows to the compact format (once; it can "
                "be stopped and goes on next time)")
    while True:
        with sessions.begin() as session:
            ids = repo.legacy_feature_ids(session, last, batch)
            if not ids:
                repo.set_row_format(session, ROW_FORMAT)
                break
            done += repo.compact_features(session, ids)
            last = ids[-1]
        if done and done % 10_000 < batch:
            log.warning("… %d rows converted", done)
    log.warning("store converted: %d rows rewritten in the compact format", done)
    return done


def is_readonly(engine: Engine) -> bool:
    """True for an engine opened read-only by open_store."""
    return "mode=ro" in str(engine.url) or "immutable=1" in str(engine.url)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that do not expire objects on commit."""
    return sessionmaker(engine, expire_on_commit=False)

