"""Faults: bad files in catalogues and queries, special files, a full or read-only disk,
damaged stores and index files, kill -9 at random moments.

Every case either works or is reported in one line (never a traceback), never hangs, and a
re-run finishes with nothing lost or duplicated; `index verify` passes afterwards.

SQLite only (not a `stores` module): the cases are SQLite's by nature (a deleted, truncated
or damaged store file, its write-ahead log, a full or read-only mount under the store
file, rows edited in the file behind the index). PostgreSQL's failures (server down, login
refused, unknown database, closed connections) are in test_store.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from fuzzing import (
    SEED_HTML,
    FuzzTally,
    catalogue_runner,
    fuzz,
    query_runner,
    run_indexer,
    run_page,
    seed_catalogues,
    seed_images,
)
from helpers import REPO, jpeg, photo, png, search_engine, synthetic, write

#: a command that runs longer than this has hung
HANG_S = 120


def echoimage(data_dir: Path, *args: str | Path, timeout: float = HANG_S,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI in a subprocess (bytes out: file names need not be UTF-8)."""
    cmd = [sys.executable, "-m", "echoimage", "--data-dir", str(data_dir),
           *[os.fsencode(a) if isinstance(a, Path) else a for a in args]]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def no_traceback(proc: subprocess.CompletedProcess[bytes]) -> str:
    """The process's stderr, asserting it holds no traceback."""
    err = proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, err
    return err


def summary(proc: subprocess.CompletedProcess[bytes]) -> dict:
    """The --json summary a build or an update printed."""
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
    return json.loads(proc.stdout)


# --- special files and odd names in a catalogue folder ----------------------------------------

@pytest.fixture
def odd_folder(tmp_path: Path) -> Path:
    """Three good photos, one whose name is not valid UTF-8, and, all named *.jpg: a symlink
    loop, a dangling symlink, a symlink to a good photo, a named pipe, a socket, a folder."""
    root = tmp_path / "odd"
    for i, name in enumerate(("coffee", "astronaut", "rocket")):
        write(root / f"{i}-{name}.jpg", jpeg(photo(name)))
    latin1 = os.fsencode(root) + b"/caf\xe9-chelsea.jpg"  # Latin-1, not UTF-8
    with open(latin1, "wb") as fh:
        fh.write(jpeg(photo("chelsea")))
    os.symlink("loop.jpg", root / "loop.jpg")
    os.symlink("nowhere.jpg", root / "dangling.jpg")
    os.symlink("0-coffee.jpg", root / "link-to-coffee.jpg")
    os.mkfifo(root / "pipe.jpg")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "socket.jpg"))
    sock.close()
    (root / "folder.jpg").mkdir()
    return root


def test_odd_folder_builds_without_hang_or_loss(tmp_path: Path, odd_folder: Path) -> None:
    data = tmp_path / "data"
    out = summary(echoimage(data, "index", "build", "-q", "--json", odd_folder))
    # 3 good photos and the Latin-1 name; the symlink to coffee names the same file
    assert out["counts"]["indexed"] == 4, out
    reasons = {f["url"].rsplit("/", 1)[-1]: f["reason"] for f in out["failures"]}
    assert reasons["loop.jpg"] == "not a regular file: a symbolic link loop"
    # named by its own name, not its missing target's (which the user cannot find)
    assert reasons["dangling.jpg"] == "file not found" and "nowhere.jpg" not in reasons
    assert reasons["pipe.jpg"] == "not a regular file: a named pipe"
    assert reasons["socket.jpg"].startswith("not a regular file")
    assert all("\n" not in r for r in reasons.values())

    again = summary(echoimage(data, "index", "build", "-q", "--json", odd_folder))
    assert again["counts"].get("indexed", 0) == 0 and again["counts"]["already-indexed"] == 4
    assert again["index_entries"] == 4

    query = write(tmp_path / "q.jpg", jpeg(photo("chelsea")[10:-10, 10:-10], quality=70))
    found = echoimage(data, "query", "--json", query)
    assert found.returncode == 0, no_traceback(found)
    top = json.loads(found.stdout)["results"][0]
    assert top["url"].endswith("/caf%E9-chelsea.jpg") and top["duplicate"]


def test_query_of_special_files_is_one_line(tmp_path: Path, odd_folder: Path) -> None:
    data = tmp_path / "data"
    summary(echoimage(data, "index", "build", "-q", "--json", odd_folder))
    latin1 = Path(os.fsdecode(os.fsencode(odd_folder) + b"/caf\xe9-chelsea.jpg"))
    proc = echoimage(data, "query", "--json", odd_folder / "pipe.jpg",
                     odd_folder / "loop.jpg", odd_folder / "folder.jpg", latin1)
    no_traceback(proc)
    assert proc.returncode == 1
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line.get("error", "") for line in lines[:3]] == [
        f"{odd_folder}/pipe.jpg: not a regular file: a named pipe",
        f"{odd_folder}/loop.jpg: not a regular file: a symbolic link loop",
        f"{odd_folder}/folder.jpg: not a regular file: a directory"]
    assert lines[3]["results"][0]["score"] == 1.0


def test_text_mode_query_prints_undecodable_names(tmp_path: Path, odd_folder: Path) -> None:
    data = tmp_path / "data"
    summary(echoimage(data, "index", "build", "-q", "--json", odd_folder))
    latin1 = Path(os.fsdecode(os.fsencode(odd_folder) + b"/caf\xe9-chelsea.jpg"))
    proc = echoimage(data, "query", latin1)
    no_traceback(proc)
    assert proc.returncode == 0 and b"caf%E9-chelsea.jpg" in proc.stdout


def test_unreadable_png_and_synthetic_neighbours(tmp_path: Path) -> None:
    """A folder of many small images with a corrupt one among them: all good ones indexed."""
    root = tmp_path / "many"
    for i in range(6):
        write(root / f"s{i}.png", png(synthetic(i, 160)))
    write(root / "broken.png", png(synthetic(99, 160))[:300])
    out = summary(echoimage(tmp_path / "data", "index", "build", "-q", "--json", root))
    assert out["counts"]["indexed"] == 6 and out["counts"]["decode-error"] == 1


# --- processes ---------------------------------------------------------------------------------

def _session_pids(sid: int) -> list[int]:
    """Live processes of a session (zombies excluded)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(entry))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_build_is_killed(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for i in range(120):
        write(root / f"s{i:03d}.png", png(synthetic(i, 400)))
    data = tmp_path / "data"
    data.mkdir()
    cmd = [sys.executable, "-m", "echoimage", "--data-dir", str(data), "index", "build",
           str(root), "-q", "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "ECHOIMAGE_BATCH_SIZE": "4"})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_session_pids(proc.pid)) < 4:
            time.sleep(0.05)  # main, forkserver, two workers (and the resource tracker)
        assert len(_session_pids(proc.pid)) >= 4, "the workers never started"
        os.kill(proc.pid, signal.SIGKILL)  # the main process only
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _session_pids(proc.pid):
            time.sleep(0.05)
        assert _session_pids(proc.pid) == [], "orphans left behind"
    finally:
        for pid in _session_pids(proc.pid):
            os.kill(pid, signal.SIGKILL)


# --- a store or index that lies ---------------------------------------------------------------

def query_coffee(data: Path, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    """`query --json` of a re-encoded crop of coffee (in the built catalogue)."""
    q = tmp_path / "q-coffee.jpg"
    if not q.exists():
        write(q, jpeg(photo("coffee")[20:-20, 30:-30], quality=70))
    return echoimage(data, "query", "--json", q)


def one_error_line(proc: subprocess.CompletedProcess[bytes], *words: str) -> str:
    """A failed command's one-line reason (JSON error of query --json, else stderr)."""
    no_traceback(proc)
    assert proc.returncode == 1
    out = proc.stdout.decode()
    text = json.loads(out.splitlines()[0])["error"] if out.strip() else \
        proc.stderr.decode().strip()
    assert "\n" not in text.strip(), text
    for w in words:
        assert w in text, text
    return text


def top_url(proc: subprocess.CompletedProcess[bytes]) -> str:
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout.splitlines()[0])["results"][0]["url"]


def test_deleted_store_beside_index_files(built_copy, tmp_path: Path) -> None:
    data = built_copy.settings.data_dir
    for f in data.glob("echoimage.sqlite3*"):
        f.unlink()
    one_error_line(query_coffee(data, tmp_path), "is missing", "index files")
    assert not (data / "echoimage.sqlite3").exists()  # not created anew as an empty store
    one_error_line(echoimage(data, "index", "status"), "is missing")


def test_truncated_store(built_copy, tmp_path: Path) -> None:
    data = built_copy.settings.data_dir
    for f in data.glob("echoimage.sqlite3-*"):
        f.unlink()
    (data / "echoimage.sqlite3").write_bytes(b"")
    one_error_line(query_coffee(data, tmp_path), "empty (0 bytes)")
    assert (data / "echoimage.sqlite3").stat().st_size == 0  # left for the user to look at


def test_garbage_store(built_copy, tmp_path: Path) -> None:
    data = built_copy.settings.data_dir
    db = data / "echoimage.sqlite3"
    _root_page(db, "images")  # everything checkpointed into the file first
    db.write_bytes(os.urandom(db.stat().st_size))
    one_error_line(query_coffee(data, tmp_path), "damaged")
    one_error_line(echoimage(data, "index", "update", "-q"), "damaged")


def _root_page(db: Path, table: str) -> tuple[int, int]:
    import sqlite3

    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = con.execute("PRAGMA page_size").fetchone()[0]
        root = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?",
                           (table,)).fetchone()[0]
    finally:
        con.close()
    return root, page_size


@pytest.mark.parametrize("table", ["images", "features"])
def test_damaged_table_pages(built_copy, tmp_path: Path, table: str) -> None:
    data = built_copy.settings.data_dir
    db = data / "echoimage.sqlite3"
    root, size = _root_page(db, table)
    with open(db, "r+b") as fh:
        fh.seek((root - 1) * size)
        fh.write(b"\xa5" * size)
    one_error_line(query_coffee(data, tmp_path), "damaged", "malformed")
    if table == "images":  # a build reads the images table (features: only what it writes)
        one_error_line(echoimage(data, "index", "build", "-q", built_copy.catalogue.root),
                       "damaged")


def test_index_files_of_another_store_are_rebuilt(built_copy, tmp_path: Path) -> None:
    """Index files copied in from another data directory (another catalogue) are never used."""
    data = built_copy.settings.data_dir
    other = tmp_path / "other"
    for i in range(3):
        write(other / f"s{i}.png", png(synthetic(i, 200)))
    summary(echoimage(tmp_path / "other-data", "index", "build", "-q", "--json", other))
    shutil.rmtree(data / "index")
    shutil.copytree(tmp_path / "other-data" / "index", data / "index")
    proc = query_coffee(data, tmp_path)
    assert top_url(proc) == built_copy.catalogue.url("coffee")
    assert "built from another store" in proc.stderr.decode()


def test_index_newer_than_a_restored_store_is_rebuilt(built_copy, tmp_path: Path) -> None:
    """A store restored from an older backup, beside index files that include images added
    after the backup: those images are not answered."""
    data = built_copy.settings.data_dir
    backup = tmp_path / "backup.sqlite3"
    _root_page(data / "echoimage.sqlite3", "images")  # checkpointed: the file is complete
    shutil.copy(data / "echoimage.sqlite3", backup)
    extra = tmp_path / "extra"
    write(extra / "rocket-copy-source.png", png(synthetic(7, 300)))
    summary(echoimage(data, "index", "build", "-q", "--json", extra))
    for f in data.glob("echoimage.sqlite3*"):
        f.unlink()
    shutil.copy(backup, data / "echoimage.sqlite3")
    q = write(tmp_path / "q-extra.png", png(synthetic(7, 300)))
    proc = echoimage(data, "query", "--json", q)
    no_traceback(proc)
    results = json.loads(proc.stdout.splitlines()[0])["results"]
    assert all("rocket-copy-source" not in r["url"] for r in results), results
    assert "newer than the store" in proc.stderr.decode()


def test_garbage_index_with_a_matching_checksum_is_rebuilt(built_copy, tmp_path: Path) -> None:
    data = built_copy.settings.data_dir
    manifest = data / "index" / "manifest.json"
    doc = json.loads(manifest.read_text())
    for ref in doc["base"]["files"].values():
        path = data / "index" / ref["name"]
        junk = os.urandom(path.stat().st_size)
        path.write_bytes(junk)
        ref["sha256"] = hashlib.sha256(junk).hexdigest()
    manifest.write_text(json.dumps(doc))
    proc = query_coffee(data, tmp_path)
    assert top_url(proc) == built_copy.catalogue.url("coffee")
    err = proc.stderr.decode()
    assert "cannot be read" in err and "rebuilding the index" in err


def test_index_directory_replaced_by_a_file(built_copy, tmp_path: Path) -> None:
    data = built_copy.settings.data_dir
    shutil.rmtree(data / "index")
    (data / "index").write_text("not a directory")
    proc = query_coffee(data, tmp_path)
    assert top_url(proc) == built_copy.catalogue.url("coffee")
    assert "is not a directory: moved it to" in proc.stderr.decode()
    assert (data / "index").is_dir()


# --- read-only and full disks (small tmpfs mounts) -------------------------------------------

@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """mount(name, size): a tmpfs of that size at tmp_path/name (needs root; fails under CI
    where it cannot be mounted, skips elsewhere)."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(where)], capture_output=True, text=True)
        if proc.returncode != 0:
            msg = f"cannot mount a tmpfs: {proc.stderr.strip()}"
            if os.environ.get("CI") == "true":
                pytest.fail(msg)
            pytest.skip(msg)
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def remount(where: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(where)], check=True)


def test_queries_on_a_read_only_mount(tmpfs: Callable[[str, str], Path], catalogue,
                                      tmp_path: Path) -> None:
    ro = tmpfs("ro", "64M")
    data = ro / "data"
    summary(echoimage(data, "index", "build", "-q", "--json", catalogue.root))
    remount(ro, "ro")
    assert top_url(query_coffee(data, tmp_path)) == catalogue.url("coffee")
    status = echoimage(data, "index", "status", "--json")
    assert status.returncode == 0, no_traceback(status)
    assert json.loads(status.stdout)["index"]["fresh"]

    remount(ro, "rw")
    for manifest in (data / "index").glob("*.json"):
        manifest.unlink()  # the index files no longer describe the store
    remount(ro, "ro")
    proc = query_coffee(data, tmp_path)
    assert top_url(proc) == catalogue.url("coffee")
    assert "read-only: searching an index rebuilt in memory" in proc.stderr.decode()
    one_error_line(echoimage(data, "index", "update", "-q"), "cannot")


def test_full_disk_build_then_resume(tmpfs: Callable[[str, str], Path],
                                     tmp_path: Path) -> None:
    small = tmpfs("small", "1500k")  # room for about 20 of the 60 rows
    photos = tmp_path / "photos"
    for i in range(60):
        write(photos / f"s{i:02d}.png", png(synthetic(i, 300)))
    data = small / "data"
    first = echoimage(data, "index", "build", "-q", photos)
    text = one_error_line(first, "disk full")
    assert str(small) in text

    remount(small, "size=64M")
    out = summary(echoimage(data, "index", "build", "-q", "--json", photos))
    assert out["index_entries"] == 60
    assert out["counts"].get("indexed", 0) + out["counts"].get("already-indexed", 0) == 60
    status = json.loads(echoimage(data, "index", "status", "--json").stdout)
    assert status["counts"] == {"indexed": 60} and status["index"]["fresh"]


def test_query_on_a_full_disk(tmpfs: Callable[[str, str], Path], catalogue,
                              tmp_path: Path) -> None:
    disk = tmpfs("full", "24M")
    data = disk / "data"
    summary(echoimage(data, "index", "build", "-q", "--json", catalogue.root))
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # every last block
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    with pytest.raises(OSError):
        (disk / "one-more").write_bytes(b"x")
    assert top_url(query_coffee(data, tmp_path)) == catalogue.url("coffee")


# --- index verify -------------------------------------------------------------------------------

def verify(data: Path, *args: str) -> tuple[int, dict]:
    proc = echoimage(data, "index", "verify", "--json", *args)
    no_traceback(proc)
    return proc.returncode, json.loads(proc.stdout)


def sql(data: Path, statement: str, *params: object) -> None:
    """Change the store behind EchoImage's back (no change number taken)."""
    import sqlite3

    con = sqlite3.connect(data / "echoimage.sqlite3")
    try:
        con.execute(statement, params)
        con.commit()
    finally:
        con.close()


def test_verify_passes_on_a_healthy_store(built_copy) -> None:
    rc, report = verify(built_copy.settings.data_dir)
    assert rc == 0 and report["ok"] and report["problems"] == {} and not report["repaired"]
    assert report["store_indexed"] == report["index_images"] == len(built_copy.catalogue.files)


def test_verify_repairs_an_indexed_image_without_features(built_copy) -> None:
    data = built_copy.settings.data_dir
    sql(data, "DELETE FROM features WHERE image_id = (SELECT min(id) FROM images)")
    rc, report = verify(data, "--dry-run")
    assert rc == 1 and not report["ok"]
    assert report["problems"]["indexed in the store without features"]["count"] == 1
    assert any("back to pending" in a for a in report["would_repair"])
    rc, report = verify(data)
    assert rc == 0 and report["ok"] and report["repaired"]
    rc, report = verify(data)
    assert rc == 0 and report["problems"] == {} and report["store_indexed"] == 11
    summary(echoimage(data, "index", "update", "-q", "--json"))  # fetched and indexed again
    rc, report = verify(data)
    assert rc == 0 and report["store_indexed"] == report["index_images"] == 12


def test_verify_finds_rows_changed_behind_the_index(built_copy) -> None:
    data = built_copy.settings.data_dir
    sql(data, "UPDATE features SET phash = X'0000000000000000' WHERE image_id = "
              "(SELECT min(id) FROM images)")
    sql(data, "UPDATE images SET status = 'gone' WHERE id = (SELECT max(id) FROM images)")
    rc, report = verify(data, "--dry-run")
    assert rc == 1
    assert set(report["problems"]) >= {"with another pHash in the index than in the store",
                                       "in the index but not indexed in the store",
                                       "not indexed but with features in the store"}
    rc, report = verify(data)
    assert rc == 0 and "rebuild the index files from the store" in report["repaired"]
    assert verify(data)[1]["problems"] == {}


# --- fuzzed input -------------------------------------------------------------------------------

#: mutated inputs per reader in `make test` (scripts/faults.py runs as many as asked)
FUZZ_N = int(os.environ.get("ECHOIMAGE_FUZZ_N", "2000"))


def _assert_clean(tally: FuzzTally) -> None:
    print(f"fuzz: {tally.as_dict()}")
    assert not tally.crashes, tally.crashes[:5]
    assert not tally.hangs, tally.hangs[:5]
    assert not tally.bad_reasons, tally.bad_reasons[:5]


def test_fuzzed_images_through_the_indexer() -> None:
    seeds = list(seed_images().values())
    tally = FuzzTally()
    fuzz(tally, "indexer", seeds, np.random.default_rng(20261127), FUZZ_N, run_indexer)
    _assert_clean(tally)
    assert tally.accepted and tally.refused  # both outcomes were exercised


def test_fuzzed_images_as_queries(built) -> None:
    seeds = list(seed_images().values())
    tally = FuzzTally()
    fuzz(tally, "query", seeds, np.random.default_rng(7), FUZZ_N // 3,
         query_runner(search_engine(built.settings)))
    _assert_clean(tally)


def test_fuzzed_catalogue_files_and_pages() -> None:
    tally = FuzzTally()
    rng = np.random.default_rng(11)
    for name, (kind, data) in seed_catalogues().items():
        fuzz(tally, f"catalogue-{name}", [data], rng, FUZZ_N // 3, catalogue_runner(kind))
    fuzz(tally, "page", [SEED_HTML], rng, FUZZ_N // 3, run_page)
    _assert_clean(tally)


# --- kill -9 at random moments --------------------------------------------------------------

#: settings that make a small catalogue use the IVF layout, segments and mid-run flushes
SEGMENTED = {"ECHOIMAGE_LOCAL_FLAT_MAX": "500", "ECHOIMAGE_LOCAL_MIN_LISTS": "16",
             "ECHOIMAGE_INDEX_FLUSH_ROWS": "10", "ECHOIMAGE_BATCH_SIZE": "4"}


def _killed_at(data: Path, args: list[str | Path], delay: float) -> bool:
    """Run the CLI, SIGKILL it and its workers after delay seconds. True if it was killed
    (False: it finished first)."""
    cmd = [sys.executable, "-m", "echoimage", "--data-dir", str(data), *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, env={**os.environ, **SEGMENTED})
    try:
        proc.wait(timeout=delay)
        err = proc.stderr.read().decode() if proc.stderr else ""
        assert proc.returncode == 0 and "Traceback" not in err, err
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return True
    finally:
        if proc.stderr:
            proc.stderr.close()


def _edit_folder(root: Path, rng: np.random.Generator, round_no: int) -> None:
    """New, changed and removed images, as a catalogue changes between updates."""
    files = sorted(root.glob("*.png"))
    for i in range(6):
        write(root / f"r{round_no}-{i}.png", png(synthetic(5000 + 100 * round_no + i, 260)))
    for path in rng.choice(files, size=3, replace=False):
        write(path, png(synthetic(int(rng.integers(9000, 9999)), 260)))
    for path in rng.choice(sorted(set(files)), size=3, replace=False):
        path.unlink(missing_ok=True)


def test_kill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(int(os.environ.get("ECHOIMAGE_KILL_SEED", "1127")))
    root = tmp_path / "photos"
    for i in range(40):
        write(root / f"s{i:02d}.png", png(synthetic(i, 260)))
    data = tmp_path / "data"
    kills = 0
    for round_no in range(5):
        if round_no:
            _edit_folder(root, rng, round_no)
        args = ["index", "build", "-q", root] if round_no == 0 else ["index", "update", "-q"]
        kills += _killed_at(data, args, float(rng.uniform(0.2, 2.0)))
        done = echoimage(data, *args, env=SEGMENTED)  # the re-run finishes the job
        assert done.returncode == 0, no_traceback(done)
        expected = {str(p.resolve()) for p in root.glob("*.png")}
        engine = store_snapshot_counts(data)
        assert engine["indexed_urls"] == expected, round_no  # nothing lost, nothing extra
        rc, report = verify(data, "--dry-run")
        assert rc == 0 and report["problems"] == {} and report["files"] is None, report
        assert report["index_images"] == len(expected)
    assert kills >= 2  # most rounds were killed part-way
    some = sorted(root.glob("*.png"))[len(expected) // 2]
    found = json.loads(echoimage(data, "query", "--json", some).stdout)["results"][0]
    assert found["url"] == str(some.resolve()) and found["exact"]


def store_snapshot_counts(data: Path) -> dict:
    import sqlite3

    con = sqlite3.connect(f"file:{data / 'echoimage.sqlite3'}?mode=ro", uri=True)
    try:
        urls = {u for (u,) in con.execute("SELECT url FROM images WHERE status = 'indexed'")}
    finally:
        con.close()
    return {"indexed_urls": urls}


# --- every data file corrupted in turn --------------------------------------------------------

@pytest.fixture(scope="module")
def segmented(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A data directory whose index has an IVF base, a quantizer and a segment."""
    tmp = tmp_path_factory.mktemp("segmented")
    root = tmp / "photos"
    for i in range(24):
        write(root / f"s{i:02d}.png", png(synthetic(i, 260)))
    data = tmp / "data"
    assert echoimage(data, "index", "build", "-q", root, env=SEGMENTED).returncode == 0
    write(root / "extra.png", png(synthetic(99, 260)))
    assert echoimage(data, "index", "update", "-q", env=SEGMENTED).returncode == 0
    manifest = json.loads((data / "index" / "manifest.json").read_text())
    assert manifest["layout"] == "ivf" and manifest["segments"]
    return root, data


def _data_files(data: Path) -> list[str]:
    return sorted(str(p.relative_to(data)) for p in data.rglob("*")
                  if p.is_file() and not p.name.startswith("."))


def cli_run(data: Path, *args: str | Path) -> tuple[int, str]:
    """The CLI in this process (faster than a subprocess): (exit code, stdout); an
    exception other than the CLI's own exit is a traceback a user would have seen."""
    from click.testing import CliRunner

    from echoimage.cli import cli

    result = CliRunner().invoke(cli, ["--data-dir", str(data), *map(str, args)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"traceback from {args}") from result.exception
    return result.exit_code, result.stdout


@pytest.mark.parametrize("how", ["garbage", "truncate", "delete"])
def test_each_data_file_corrupted_in_turn(segmented: tuple[Path, Path], tmp_path: Path,
                                          how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in SEGMENTED.items():
        monkeypatch.setenv(key, value)
    root, source = segmented
    q = root / "s05.png"
    for rel in _data_files(source):
        data = tmp_path / f"{how}-{rel.replace('/', '_')}"
        shutil.copytree(source, data)
        path = data / rel
        if how == "garbage":
            path.write_bytes(os.urandom(path.stat().st_size))
        elif how == "truncate":
            path.write_bytes(b"")
        else:
            path.unlink()
        rc, out = cli_run(data, "query", "--json", q)
        line = json.loads(out.splitlines()[0])
        if rel.startswith("echoimage.sqlite3"):  # the store: a one-line reason, or right
            if rc:
                assert "\n" not in line["error"] and "store" in line["error"], (rel, line)
                continue
        assert rc == 0, (rel, line)
        assert line["results"][0]["url"] == str(q.resolve()), (rel, line)
        rc, out = cli_run(data, "index", "verify", "--json", "--dry-run")
        report = json.loads(out)
        assert rc == 0 and report["problems"] == {}, (rel, report)
