"""A throwaway PostgreSQL server for the tests and the cluster benchmark.

`initdb` and `pg_ctl` make and start a cluster in a temporary directory, listening on a free
TCP port of 127.0.0.1 only (and a Unix socket inside that directory). Tests run as root, so
the server runs as the `postgres` OS user (`runuser`); as any other user it runs as that
user. Durability is switched off (fsync, synchronous commit): the cluster is thrown away.

Each test gets its own database (`create_database`, `drop_database`); superuser `postgres`
connects without a password, role `PASSWORD_ROLE` only with `PASSWORD`.
"""

from __future__ import annotations

import atexit
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

#: a role that must give its password (to test a refused login)
PASSWORD_ROLE = "echoimage_pw"
PASSWORD = "right-password"

_HBA = f"""\
local all all trust
host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
"""


class PgUnavailable(Exception):
    """No PostgreSQL server can be started here (one line saying why)."""


def find_bindir() -> Path:
    """The directory of `initdb`, `pg_ctl` and `postgres`: $ECHOIMAGE_PG_BINDIR when set
    (and then only it), else Debian's newest /usr/lib/postgresql/N/bin, else `pg_config
    --bindir`, else where the `pg_ctl` on PATH really lives (Debian's wrappers on PATH are
    symlinks)."""
    candidates: list[Path] = []
    if os.environ.get("ECHOIMAGE_PG_BINDIR"):
        return _complete(Path(os.environ["ECHOIMAGE_PG_BINDIR"]))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted((p for p in debian.iterdir() if p.name.isdigit()),
                          key=lambda p: int(p.name), reverse=True)
        candidates += [v / "bin" for v in versions]
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            candidates.append(Path(out))
        except (OSError, subprocess.SubprocessError):
            pass
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for d in candidates:
        try:
            return _complete(d)
        except PgUnavailable:
            continue
    raise PgUnavailable("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: "
                        "install Debian's `postgresql` package (make test does)")


def _complete(d: Path) -> Path:
    """d, if it holds initdb, pg_ctl and postgres."""
    if all(os.access(d / b, os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
        return d
    raise PgUnavailable(f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) in {d}")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in a temporary directory (start, databases, stop)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="echoimage-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"
        self.port = 0
        self.running = False
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:  # initdb refuses root: run as postgres
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError:
                raise PgUnavailable("running as root and there is no `postgres` OS user to "
                                    "run the server as") from None
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self.root.chmod(0o700)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if self._user is not None:
            cmd = ["runuser", "-u", self._user.pw_name, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=self.root, check=False)

    def start(self, attempts: int = 3) -> None:
        """initdb, then pg_ctl start on a free port (another port if that one was taken)."""
        done = self._run(self.bindir / "initdb", "-D", self.data, "-U", "postgres",
                         "-E", "UTF8", "--locale=C", "--auth=trust", "--no-sync")
        if done.returncode != 0:
            raise PgUnavailable(f"initdb failed: {_last_line(done.stderr or done.stdout)}")
        hba = self.data / "pg_hba.conf"
        self._write_as_owner(hba, _HBA)
        why = "?"
        for _ in range(attempts):
            self.port = free_port()
            opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                    f"-c unix_socket_directories={self.root} -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
                    "-c shared_buffers=32MB")
            done = self._run(self.bindir / "pg_ctl", "-D", self.data, "-l", self.logfile,
                             "-o", opts, "-w", "-t", "60", "start", timeout=90)
            if done.returncode == 0:
                self.running = True
                atexit.register(self.stop)
                self._setup_roles()
                return
            why = _last_line(self._log_tail() or done.stderr or done.stdout)
        raise PgUnavailable(f"PostgreSQL did not start: {why}")

    def _write_as_owner(self, path: Path, text: str) -> None:
        path.write_text(text)
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace").strip()
        except OSError:
            return ""

    def _setup_roles(self) -> None:
        self.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'")

    def url(self, dbname: str, user: str = "postgres", password: str | None = None) -> str:
        """SQLAlchemy URL of a database on this server (psycopg 3, TCP)."""
        auth = f"{user}:{password}" if password else user
        return f"postgresql+psycopg://{auth}@127.0.0.1:{self.port}/{dbname}"

    def execute(self, sql: str) -> None:
        """Run one statement as the superuser, outside any transaction."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                             dbname="postgres", autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, template: str | None = None, name: str | None = None) -> str:
        """A new database (empty, or a copy of template); returns its name."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        _check_name(name)
        sql = f'CREATE DATABASE "{name}"'
        if template:
            _check_name(template)
            sql += f' TEMPLATE "{template}"'
        self.execute(sql)
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, closing whatever is still connected to it."""
        _check_name(name)
        if self.running:
            self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def disconnect(self, name: str) -> None:
        """Close every connection to a database (so it can serve as a template)."""
        _check_name(name)
        self.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     f"WHERE datname = '{name}' AND pid <> pg_backend_pid()")

    def stop(self) -> None:
        """Stop the server (immediate shutdown: nothing is kept) and remove its directory;
        safe to call twice."""
        if self.running:
            self.running = False
            done = self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", "immediate",
                             "-w", "stop", timeout=60)
            if done.returncode != 0:
                log.warning("pg_ctl stop failed: %s", _last_line(done.stderr))
        shutil.rmtree(self.root, ignore_errors=True)


def _check_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"not a plain database name: {name!r}")


def _last_line(text: str) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else "no message"


def start_server() -> PgServer:
    """A running throwaway server, or PgUnavailable saying why there is none."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PgUnavailable("the PostgreSQL driver is not installed: pip install "
                            "'echoimage[postgres]'") from None
    server = None
    try:
        server = PgServer(find_bindir())
        server.start()
    except (PgUnavailable, OSError, subprocess.SubprocessError) as exc:
        if server is not None:
            server.stop()
        if isinstance(exc, PgUnavailable):
            raise
        raise PgUnavailable(f"PostgreSQL could not be started: {exc}") from None
    return server
