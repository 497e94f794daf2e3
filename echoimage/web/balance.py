"""How busy each serving process of `echoimage serve --workers N` is, for the others to read.

A kept-alive connection stays with the process that accepted it, and a burst of new ones
may all go to one process (it accepts every connection waiting when it wakes) while another
idles. A process that holds more searches than another closes the connection of a search it
answers (`WebService.sheds`): the client connects again, and a process free to accept
takes it. For that each process publishes its searches (running and waiting) in a file of
its own in the directory the processes share, memory-mapped, and reads the others'.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path

_SLOT = struct.Struct("<q")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process with that pid: alive
        return True
    return True


class Loads:
    """This process's searches, published in folder/<pid>, and the other live processes'.

    The set of other processes is read again at most every `rescan` seconds (uvicorn
    restarts a process that dies, under a new pid); a file whose process is gone is
    removed."""

    def __init__(self, folder: Path, rescan: float = 1.0, pid: int | None = None) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder = folder
        self.rescan = rescan
        self.pid = os.getpid() if pid is None else pid  # (another: a test's stand-in)
        self._path = folder / str(self.pid)
        self._path.write_bytes(b"\0" * _SLOT.size)
        with self._path.open("r+b") as f:
            self._own = mmap.mmap(f.fileno(), _SLOT.size)
        self._others: dict[int, mmap.mmap] = {}
        self._scanned = float("-inf")

    def publish(self, searches: int) -> None:
        """Say how many searches this process holds (running and waiting)."""
        _SLOT.pack_into(self._own, 0, searches)

    def least_other(self) -> int | None:
        """The fewest searches any other live process holds; None when there is none."""
        now = time.monotonic()
        if now - self._scanned >= self.rescan:
            self._scan()
            self._scanned = now
        if not self._others:
            return None
        return min(_SLOT.unpack_from(m, 0)[0] for m in self._others.values())

    def _scan(self) -> None:
        try:
            names = [p.name for p in self.folder.iterdir()]
        except OSError:
            return
        found = {int(n) for n in names if n.isdigit() and int(n) != self.pid}
        for pid in list(self._others):
            if pid not in found or not _alive(pid):
                self._others.pop(pid).close()
        for pid in sorted(found - set(self._others)):
            path = self.folder / str(pid)
            if not _alive(pid):
                path.unlink(missing_ok=True)
                continue
            try:
                with path.open("rb") as f:
                    self._others[pid] = mmap.mmap(f.fileno(), _SLOT.size,
                                                  access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # gone, or not yet written
                continue

    def close(self) -> None:
        """Stop publishing: this process's file is removed."""
        for m in self._others.values():
            m.close()
        self._others.clear()
        self._own.close()
        self._path.unlink(missing_ok=True)
