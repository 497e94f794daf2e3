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

import fcntl
import mmap
import os
import struct
import time
from pathlib import Path

_SLOT = struct.Struct("<q")
#: what a process that takes no searches (yet) publishes
NOT_TAKING = -1


def _held(fd: int) -> bool:
    """Whether the process that wrote a load file still holds its lock (a process's lock
    goes with it, however it ends, and a new process that took its pid has no such lock)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


class Loads:
    """This process's searches, published in folder/<pid>, and the other live processes'.

    Each process holds an exclusive lock on its file while it lives: a file nobody holds is
    a gone process's (uvicorn restarts a process that dies, under a new pid, and the old pid
    may go to any other process) and is removed. The set of other processes is read again
    at most every `rescan` seconds."""

    def __init__(self, folder: Path, rescan: float = 1.0) -> None:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.folder = folder
        self.rescan = rescan
        self.pid = os.getpid()
        self._path = folder / str(self.pid)
        # written and locked under another name, then renamed: the others never see the
        # file unlocked (which would say its process is gone) or not yet whole
        new = folder / f".{self.pid}.new"
        fd = os.open(new, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, _SLOT.pack(NOT_TAKING))
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.replace(new, self._path)
            self._own: mmap.mmap | None = mmap.mmap(fd, _SLOT.size)
        except BaseException:  # a full disk, say: nothing left behind
            os.close(fd)
            new.unlink(missing_ok=True)
            self._path.unlink(missing_ok=True)
            raise
        self._fd: int | None = fd
        self._others: dict[int, tuple[int, mmap.mmap]] = {}  # pid: (fd, mapping)
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
        held = [n for _, m in self._others.values()
                if (n := _SLOT.unpack_from(m, 0)[0]) >= 0]
        return min(held, default=None)

    def _forget(self, pid: int) -> None:
        fd, m = self._others.pop(pid)
        m.close()
        os.close(fd)

    def _scan(self) -> None:
        try:
            names: list[str] | None = [p.name for p in self.folder.iterdir()]
        except OSError:  # the folder gone: the processes known are still told by their locks
            names = None
        found = {int(n) for n in names or () if n.isdecimal() and int(n) != self.pid}
        for pid, (fd, _) in list(self._others.items()):
            if (names is not None and pid not in found) or not _held(fd):
                self._forget(pid)
        for pid in sorted(found - set(self._others)):
            path = self.folder / str(pid)
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:  # gone since the listing
                continue
            try:
                if not _held(fd):
                    if os.stat(path).st_ino == os.fstat(fd).st_ino:  # not a new one since
                        path.unlink(missing_ok=True)
                    os.close(fd)
                    continue
                self._others[pid] = (fd, mmap.mmap(fd, _SLOT.size, access=mmap.ACCESS_READ))
            except (OSError, ValueError):  # not a load file
                os.close(fd)

    def close(self) -> None:
        """Stop publishing: this process's file is removed."""
        for pid in list(self._others):
            self._forget(pid)
        if self._own is not None:
            self.publish(None)  # for whoever reads it before it is gone
            self._own.close()
            self._own = None
            self._path.unlink(missing_ok=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
