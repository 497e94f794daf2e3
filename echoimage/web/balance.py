"""How busy each serving process of `echoimage serve --workers N` is, for the others to read.

A kept-alive connection stays with the process that accepted it, and a burst of new ones
may all go to one process (it accepts every connection waiting when it wakes) while another
idles. A process that holds more searches than another closes the connection of a search it
answers (`WebService.sheds`): the client connects again, and a process free to accept
takes it. For that each process publishes the queries it holds (running and waiting:
searches, and the pictures drawn for them) in a file of its own in the directory the
processes share, memory-mapped, and reads the others'. A process that takes no searches
yet (its index still loading) publishes that it does not, and draws no connections.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from pathlib import Path

_SLOT = struct.Struct("<q")
#: what a process that takes no searches (yet) publishes
NOT_TAKING = -1


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
        self._path.write_bytes(_SLOT.pack(NOT_TAKING))
        with self._path.open("r+b") as f:
            self._own: mmap.mmap | None = mmap.mmap(f.fileno(), _SLOT.size)
        self._others: dict[int, mmap.mmap] = {}
        self._scanned = float("-inf")

    def publish(self, queries: int | None) -> None:
        """Say how many queries this process holds (running and waiting), or (None) that
        it takes none; nothing once closed."""
        if self._own is not None:
            _SLOT.pack_into(self._own, 0, NOT_TAKING if queries is None else queries)

    def least_other(self) -> int | None:
        """The fewest queries any other live process taking searches holds; None when
        there is none (or this one is closed)."""
        if self._own is None:
            return None
        now = time.monotonic()
        if now - self._scanned >= self.rescan:
            self._scan()
            self._scanned = now
        held = [n for m in self._others.values() if (n := _SLOT.unpack_from(m, 0)[0]) >= 0]
        return min(held, default=None)

    def _scan(self) -> None:
        try:
            names = [p.name for p in self.folder.iterdir()]
        except OSError:
            return
        found = {int(n) for n in names if n.isdecimal() and int(n) != self.pid}
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
        if self._own is not None:
            self._own.close()
            self._own = None
        self._path.unlink(missing_ok=True)
