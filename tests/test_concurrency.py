"""Concurrent writers: `echoimage index build` and `index update` run by separate OS
processes at the same time on one store and data directory, over overlapping sources.

Each ends successfully, every image is in the store exactly once with one features row,
every change got a number of its own, and `echoimage index verify` finds the index files in
agreement with the store. Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, jpeg, synthetic, write
from sqlalchemy import text

from echoimage.config import Settings
from echoimage.store.db import open_store
from echoimage.store.models import Status

pytestmark = [pytest.mark.usefixtures("no_network"), pytest.mark.stores, pytest.mark.slow]

#: images per catalogue directory
PER_DIR = 24


@functools.cache
def image_bytes(i: int) -> bytes:
    """Catalogue image i: a distinct 200 px synthetic JPEG."""
    return jpeg(synthetic(i, 200), 85)


def make_dirs(root: Path, names: str) -> dict[str, list[Path]]:
    """Directories root/<name> of PER_DIR distinct images each."""
    out = {}
    for k, name in enumerate(names):
        out[name] = [write(root / name / f"{name}{i:03d}.jpg", image_bytes(k * 100 + i))
                     for i in range(PER_DIR)]
    return out


def start(data_dir: Path, *args: str) -> subprocess.Popen[bytes]:
    """`echoimage --data-dir DATA ARGS` in a process of its own (the store URL, if any,
    comes from ECHOIMAGE_DATABASE_URL); small batches make the writers interleave."""
    env = {**os.environ, "ECHOIMAGE_BATCH_SIZE": "3"}
    cmd = [sys.executable, "-m", "echoimage", "--data-dir", str(data_dir), *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def finish(*procs: subprocess.Popen[bytes], timeout: float = 120) -> list[str]:
    """Wait for the processes; each must succeed. Their standard outputs."""
    deadline = time.monotonic() + timeout
    outs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        assert proc.returncode == 0, (proc.args, err.decode(errors="replace")[-3000:])
        outs.append(out.decode())
    return outs


def check_store(settings: Settings, files: list[Path]) -> None:
    """Every file once, indexed, with one features row; one change number per change; and
    `index verify` finds the index files in agreement with the store."""
    engine = open_store(settings, create=False)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT url, status, seq FROM images")).all()
            features = conn.execute(text("SELECT image_id FROM features")).scalars().all()
            ids = conn.execute(text("SELECT id FROM images")).scalars().all()
            sources = conn.execute(text("SELECT uri FROM sources")).scalars().all()
            last = conn.execute(text("SELECT seq FROM store_info")).scalar_one()
    finally:
        engine.dispose()
    urls = [r[0] for r in rows]
    assert sorted(urls) == sorted(str(p.resolve()) for p in files)  # each once, none lost
    assert {r[1] for r in rows} == {Status.INDEXED}
    assert sorted(features) == sorted(ids)  # one features row per image
    assert len(sources) == len(set(sources))
    seqs = [r[2] for r in rows]
    assert len(set(seqs)) == len(seqs) and max(seqs) <= last  # a number per change
    result = subprocess.run([sys.executable, "-m", "echoimage", "--data-dir",
                             str(settings.data_dir), "index", "verify", "--dry-run", "--json"],
                            cwd=REPO, capture_output=True, timeout=120)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    report = json.loads(result.stdout)
    assert report["ok"] and report["problems"] == {} and report["files"] is None, report
    assert report["store_indexed"] == len(files)


def test_two_builds_over_overlapping_sources(tmp_path: Path, store_url: str | None) -> None:
    """Two builds start together on an empty store (both create the schema), one over
    directories a and b, the other over b and c: b's images are added, fetched and written
    by both."""
    dirs = make_dirs(tmp_path / "cat", "abc")
    data_dir = tmp_path / "data"
    root = tmp_path / "cat"
    first = start(data_dir, "index", "build", str(root / "a"), str(root / "b"), "-q",
                  "--workers", "1")
    second = start(data_dir, "index", "build", str(root / "b"), str(root / "c"), "-q",
                   "--workers", "1")
    finish(first, second)
    check_store(Settings(data_dir=data_dir), [p for d in dirs.values() for p in d])


def test_a_build_beside_an_update(tmp_path: Path, store_url: str | None) -> None:
    """An update that re-extracts every image of a and b (changed files) runs beside a
    build that adds b again and c."""
    root = tmp_path / "cat"
    dirs = make_dirs(root, "abc")
    data_dir = tmp_path / "data"
    finish(start(data_dir, "index", "build", str(root / "a"), str(root / "b"), "-q",
                 "--workers", "1"))
    for p in dirs["a"] + dirs["b"]:  # touched: the update reads and extracts them again
        os.utime(p, (time.time() + 5, time.time() + 5))
    update = start(data_dir, "index", "update", "-q")
    build = start(data_dir, "index", "build", str(root / "b"), str(root / "c"), "-q",
                  "--workers", "1")
    finish(update, build)
    check_store(Settings(data_dir=data_dir), [p for d in dirs.values() for p in d])


def test_one_runner_at_a_time(tmp_path: Path, store_url: str | None) -> None:
    """Two `index update`s started while another run holds the catalogue: each says in one
    line that it waits, then they run one after the other; 30 new images are extracted
    once, and the counts are true (the first indexes 30, the second finds them unchanged:
    before, both extracted them and both reported `indexed: 30`)."""
    from echoimage.store.db import run_lock

    root = tmp_path / "cat"
    dirs = make_dirs(root, "a")
    data_dir = tmp_path / "data"
    finish(start(data_dir, "index", "build", str(root / "a"), "-q", "--workers", "1"))
    new = [write(root / "a" / f"new{i:03d}.jpg", image_bytes(500 + i)) for i in range(30)]
    settings = Settings(data_dir=data_dir)
    engine = open_store(settings, create=False)
    waits: list[int] = []
    try:
        with run_lock(engine, lambda: waits.append(1)):
            assert waits == []  # nobody else holds it
            logs = [tmp_path / f"update{n}.log" for n in range(2)]
            env = {**os.environ, "ECHOIMAGE_BATCH_SIZE": "3"}
            updates = []
            for log in logs:
                with open(log, "wb") as err:
                    updates.append(subprocess.Popen(
                        [sys.executable, "-m", "echoimage", "--data-dir", str(data_dir),
                         "index", "update", "--json"], cwd=REPO, env=env,
                        stdout=subprocess.PIPE, stderr=err))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not all(
                    b"waiting" in log.read_bytes() for log in logs):
                assert all(p.poll() is None for p in updates)  # nothing runs meanwhile
                time.sleep(0.1)
        outs = []
        for proc in updates:
            out, _ = proc.communicate(timeout=180)
            assert proc.returncode == 0
            outs.append(json.loads(out))
        errs = [log.read_text() for log in logs]
    finally:
        engine.dispose()
    for err in errs:
        assert err.startswith("echoimage: another build or update of this catalogue is "
                              "running"), err
        assert err.count("\n") == 1 and err.rstrip().endswith("waiting for it to finish"), err
    counts = sorted((o["counts"] for o in outs), key=lambda c: -c.get("indexed", 0))
    assert counts[0] == {"indexed": 30, "unchanged": PER_DIR}
    assert counts[1] == {"unchanged": PER_DIR + 30}
    assert sum(o["processed"] for o in outs) == 30  # each new image extracted once
    check_store(settings, dirs["a"] + new)


def _stat(pid: int) -> tuple[int, int]:
    """A process's parent pid and niceness (fields 4 and 19 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[16])


def _feature_workers(parent: int) -> dict[int, int]:
    """The loky feature workers the process `parent` started: pid → niceness."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid, nice = _stat(int(entry.name))
            if ppid == parent and b"popen_loky" in (entry / "cmdline").read_bytes():
                out[int(entry.name)] = nice
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return out


@pytest.mark.parametrize("nice", [None, 0])
def test_the_feature_workers_yield_to_a_server(tmp_path: Path, nice: int | None) -> None:
    """A build's feature workers run worker_nice (10 unless set) nicer than the command,
    so that a server on the machine answers first; the command itself does not."""
    dirs = make_dirs(tmp_path / "cat", "ab")
    env = {**os.environ}
    if nice is not None:
        env["ECHOIMAGE_WORKER_NICE"] = str(nice)
    cmd = [sys.executable, "-m", "echoimage", "--data-dir", str(tmp_path / "data"), "index",
           "build", str(tmp_path / "cat"), "-q", "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    seen: dict[int, int] = {}
    command: set[int] = set()  # the command's own niceness while its workers ran
    while proc.poll() is None:
        workers = _feature_workers(proc.pid)
        try:
            if workers:
                command.add(_stat(proc.pid)[1])
        except OSError:
            break  # it ended meanwhile
        seen.update(workers)
        time.sleep(0.01)
    finish(proc)
    own = _stat(os.getpid())[1]
    assert command == {own}, command
    assert len(seen) == 2, seen
    want = own if nice == 0 else min(own + 10, 19)
    assert set(seen.values()) == {want}, (own, seen)
    check_store(Settings(data_dir=tmp_path / "data"), [p for d in dirs.values() for p in d])
