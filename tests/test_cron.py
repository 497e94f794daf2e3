"""scripts/reindex-cron.sh: the scheduled `index update` under flock, logged, failing loudly.

The script is run with bash as cron or systemd would run it, against a tiny local catalogue
(a directory of two photos), with the repo's own echoimage program (or a stub standing in
for a long update).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import build_index, jpeg, photo, write

from echoimage.config import Settings
from echoimage.store import repo
from echoimage.store.db import open_store, session_factory

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "reindex-cron.sh"
#: the script's own log format: "<ISO time> [<pid>] <text>"
LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[\d+\] (.*)$")


def echoimage_bin() -> Path:
    """The echoimage program the script runs by default (the repo's .venv)."""
    default = REPO / ".venv" / "bin" / "echoimage"
    return default if default.exists() else Path(sys.executable).with_name("echoimage")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory whose store indexed a two-photo catalogue directory."""
    root = tmp_path / "catalogue"
    for name in ("coffee", "clock"):
        write(root / f"{name}.jpg", jpeg(photo(name)))
    settings = Settings(data_dir=tmp_path / "data", workers=1)
    summary = build_index(settings, [str(root)], progress=False)
    assert summary.counts["indexed"] == 2
    return settings.data_dir


def base_env(data_dir: Path | None, **extra: str) -> dict[str, str]:
    """The caller's environment without any ECHOIMAGE_* setting, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHOIMAGE")}
    if data_dir is not None:
        env["ECHOIMAGE_DATA_DIR"] = str(data_dir)
    if echoimage_bin() != REPO / ".venv" / "bin" / "echoimage":
        env["ECHOIMAGE_BIN"] = str(echoimage_bin())
    env.update(extra)
    return env


def run_script(env: dict[str, str], *args: str, timeout: float = 120
               ) -> subprocess.CompletedProcess[str]:
    """Run the script with bash, from an unrelated directory (as cron does)."""
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, cwd="/", capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def log_lines(data_dir: Path) -> list[str]:
    """The texts of the log's lines; every line must carry a timestamp and a pid."""
    out = []
    for line in (data_dir / "reindex.log").read_text().splitlines():
        m = LINE.match(line)
        assert m, f"log line without a timestamp: {line!r}"
        out.append(m.group(1))
    return out


def summaries(lines: list[str]) -> list[dict]:
    """The `--json` summaries the update printed, in order."""
    return [json.loads(t) for t in lines if t.startswith("{")]


def run_count(data_dir: Path) -> int:
    """Indexing runs recorded in the store."""
    engine = open_store(Settings(data_dir=data_dir))
    try:
        with session_factory(engine)() as s:
            return len(repo.recent_runs(s, limit=1000))
    finally:
        engine.dispose()


@pytest.fixture
def held_lock(data_dir: Path) -> Iterator[Path]:
    """The script's lock, held by this process (flock(2), as flock(1) takes it)."""
    lock = data_dir / "reindex.lock"
    with open(lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield lock
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def test_script_is_bash_and_strict() -> None:
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text and "flock -n" in text
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_run_updates_and_logs(data_dir: Path) -> None:
    runs = run_count(data_dir)
    res = run_script(base_env(data_dir))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""  # cron mails nothing on success
    lines = log_lines(data_dir)
    assert lines[0].startswith("start: ") and "index update -q --json" in lines[0]
    assert lines[-1].startswith("done: index update ok in ")
    [summary] = summaries(lines)
    assert summary["kind"] == "update" and summary["counts"] == {"unchanged": 2}
    assert run_count(data_dir) == runs + 1
    assert re.match(r"pid=\d+ started=\S+ epoch=\d+$", (data_dir / "reindex.lock").read_text())

    # a new photo in the catalogue: the next run indexes it, and the log grows
    write(data_dir.parent / "catalogue" / "rocket.jpg", jpeg(photo("rocket")))
    res = run_script(base_env(None), str(data_dir))  # the data dir as an argument
    assert res.returncode == 0, res.stderr
    lines = log_lines(data_dir)
    assert [t.split(":")[0] for t in lines if not t.startswith("{")] == \
        ["start", "done", "start", "done"]
    assert summaries(lines)[-1]["counts"] == {"unchanged": 2, "indexed": 1}
    custom_log = data_dir / "logs" / "custom.log"
    res = run_script(base_env(data_dir, ECHOIMAGE_REINDEX_LOG=str(custom_log)))
    assert res.returncode == 0, res.stderr
    assert "done: index update ok" in custom_log.read_text()
    assert run_count(data_dir) == runs + 3


def test_locked_run_does_not_update(data_dir: Path, held_lock: Path) -> None:
    runs = run_count(data_dir)
    held_lock.write_text(f"pid=4242 started=2025-01-01T00:00:00+0000 epoch={time.time():.0f}\n")
    t0 = time.monotonic()
    res = run_script(base_env(data_dir))
    assert res.returncode == 0, res.stderr  # skipping is not a failure
    assert time.monotonic() - t0 < 10
    lines = log_lines(data_dir)
    assert len(lines) == 1
    assert lines[0].startswith("previous run still going (pid=4242 ")
    assert run_count(data_dir) == runs  # no second update ran
    assert held_lock.read_text().startswith("pid=4242 ")  # the holder's note is kept


def test_stuck_holder_fails_the_skipped_run(data_dir: Path, held_lock: Path) -> None:
    since = time.time() - 1000
    held_lock.write_text(f"pid=4242 started=2025-01-01T00:00:00+0000 epoch={since:.0f}\n")
    res = run_script(base_env(data_dir, ECHOIMAGE_REINDEX_STUCK_AFTER="600"))
    assert res.returncode == 1
    assert "stuck?" in res.stderr
    [line] = log_lines(data_dir)
    assert line.startswith("previous run still going after ") and "stuck?" in line


def test_overlapping_runs(tmp_path: Path) -> None:
    """Two real runs of the script: the second finds the first inside its update."""
    calls = tmp_path / "calls"
    stub = write(tmp_path / "bin" / "echoimage",
                 b'#!/usr/bin/env bash\necho "$$ $*" >> "$STUB_CALLS"\n'
                 b'sleep "$STUB_SLEEP"\necho \'{"kind": "update", "counts": {}}\'\n')
    stub.chmod(0o755)
    data_dir = tmp_path / "data"
    env = base_env(data_dir, ECHOIMAGE_BIN=str(stub), STUB_CALLS=str(calls), STUB_SLEEP="3")
    first = subprocess.Popen(["bash", str(SCRIPT)], env=env, cwd="/", text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not (calls.exists() and calls.read_text()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert calls.exists(), "the first run did not start its update"
        second = run_script({**env, "STUB_SLEEP": "0"})
        assert second.returncode == 0, second.stderr
        assert first.poll() is None, "the first run should still be going"
    finally:
        out, err = first.communicate(timeout=30)
    assert first.returncode == 0, err
    assert len(calls.read_text().splitlines()) == 1  # only the first ran the update
    lines = log_lines(data_dir)
    skipped = [t for t in lines if t.startswith("previous run still going")]
    assert len(skipped) == 1 and f"pid={first.pid} " in skipped[0]
    assert lines[-1].startswith("done: ")
    # once the first is done, the lock is free again
    third = run_script({**env, "STUB_SLEEP": "0"})
    assert third.returncode == 0 and len(calls.read_text().splitlines()) == 2


def test_failing_update_exits_nonzero_and_logs(data_dir: Path, tmp_path: Path) -> None:
    not_a_dir = write(tmp_path / "plain-file", b"x")
    bad = f"sqlite:///{not_a_dir}/store.sqlite3"  # cannot be opened
    res = run_script(base_env(data_dir, ECHOIMAGE_DATABASE_URL=bad))
    assert res.returncode == 1
    assert "index update failed with status 1" in res.stderr
    lines = log_lines(data_dir)
    assert lines[0].startswith("start: ")
    assert any(t.startswith("Error: cannot read the store") and "Not a directory" in t
               for t in lines), lines
    assert lines[-1].startswith("FAILED: index update exited with status 1")
    # the lock was released: the next run (with a working store) goes ahead
    res = run_script(base_env(data_dir))
    assert res.returncode == 0, res.stderr
    assert log_lines(data_dir)[-1].startswith("done: ")


def test_usage_errors(tmp_path: Path) -> None:
    res = run_script(base_env(None))
    assert res.returncode == 2 and "usage:" in res.stderr
    data_dir = tmp_path / "data"
    res = run_script(base_env(data_dir, ECHOIMAGE_BIN=str(tmp_path / "no-such-echoimage")))
    assert res.returncode == 127 and "not found" in res.stderr
    [line] = log_lines(data_dir)
    assert line.startswith("FAILED: echoimage program not found")


def test_failure_log_hides_the_database_password(data_dir: Path) -> None:
    pytest.importorskip("psycopg")
    url = "postgresql+psycopg://echo:s3cret-pw@127.0.0.1:1/echo"  # nothing listens on :1
    res = run_script(base_env(data_dir, ECHOIMAGE_DATABASE_URL=url))
    assert res.returncode == 1
    log = (data_dir / "reindex.log").read_text()
    assert "store unreachable" in log
    assert "s3cret-pw" not in log


def test_unparsable_database_url_is_one_line(data_dir: Path) -> None:
    res = run_script(base_env(data_dir, ECHOIMAGE_DATABASE_URL="not a database url"))
    assert res.returncode != 0
    lines = log_lines(data_dir)
    assert lines[-1].startswith("FAILED: ")
    assert not any(t.startswith("Traceback") for t in lines)
    assert any(t.startswith("Error: ") for t in lines)
