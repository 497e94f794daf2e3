"""Peak memory (RSS) of this process and of a process tree.
"""

from __future__ import annotations

import os
import resource
import threading


def rss_mb(kb: float) -> float:
    """KB as MB, rounded to 0.1."""
    return round(kb / 1024, 1)


def status_kb() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon and RssFile of this process (KB; empty off Linux)."""
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                key = line.split(":", 1)[0]
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


def self_peak_rss_mb() -> float:
    """Peak RSS of this process (ru_maxrss), MB."""
    return rss_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def children_peak_rss_mb() -> float:
    """Largest peak RSS of any waited-for child (ru_maxrss of RUSAGE_CHILDREN), MB."""
    return rss_mb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


class ProcessTreePeak:
    """Samples VmHWM/VmRSS of this process's descendants (Linux /proc) while active.

    Pool workers started through the forkserver are its children, not ours, so
    RUSAGE_CHILDREN never sees them; sampling /proc does.
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.max_child_kb = 0  # largest VmHWM of a single descendant
        self.max_total_kb = 0  # largest sum of VmRSS over descendants at one instant
        self.processes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: set[int] = set()

    @staticmethod
    def _descendants(root: int) -> list[int]:
        children: dict[int, list[int]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    stat = fh.read()
            except OSError:
                continue
            ppid = int(stat.rsplit(b")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(name))
        out, todo = [], [root]
        while todo:
            for c in children.get(todo.pop(), []):
                out.append(c)
                todo.append(c)
        return out

    def sample(self) -> None:
        """Read the memory of every current descendant once."""
        total = 0
        for pid in self._descendants(os.getpid()):
            try:
                with open(f"/proc/{pid}/status") as fh:
                    status = fh.read()
            except OSError:
                continue
            self._seen.add(pid)
            for line in status.splitlines():
                if line.startswith("VmHWM:"):
                    self.max_child_kb = max(self.max_child_kb, int(line.split()[1]))
                elif line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        self.max_total_kb = max(self.max_total_kb, total)
        self.processes = len(self._seen)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except (OSError, ValueError, IndexError):
                pass

    def __enter__(self) -> ProcessTreePeak:
        if os.path.isdir("/proc"):
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def as_dict(self) -> dict[str, float | int]:
        """JSON-ready peaks in MB."""
        return {"max_single_child_mb": rss_mb(self.max_child_kb),
                "max_children_total_mb": rss_mb(self.max_total_kb),
                "processes_seen": self.processes}
