"""Faults: bad files in catalogues and queries, special files, a full or read-only disk,
damaged stores and index files, kill -9 at random moments.

Every case either works or is reported in one line (never a traceback), never hangs, and a
re-run finishes with nothing lost or duplicated; `index verify` passes afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, jpeg, photo, png, synthetic, write

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
    assert reasons["nowhere.jpg"] == "file not found"  # where dangling.jpg points
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
