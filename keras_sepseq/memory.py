"""Memory of this process and its worker processes, read from `/proc` (Linux; zero elsewhere).

`keras-sepseq bench` reports peak memory with `PeakMemory`; the soak test
judges memory across epochs with `process_tree_memory(anonymous=True)`.
"""

from __future__ import annotations

import glob
import os
import threading

__all__ = ["PeakMemory", "process_tree_memory", "process_tree_rss", "rss_bytes"]


def _proc_kib(path: str, key: str) -> int | None:
    """The value of a `key: N kB` line of a /proc file, in bytes; `None` if unreadable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes(pid: int) -> int:
    return _proc_kib(f"/proc/{pid}/status", "VmRSS:") or 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(task) as f:
                found.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return found


def process_tree_memory(*, anonymous: bool = False) -> dict[int, int]:
    """Memory of this process and of each of its children, in bytes, by pid (Linux; empty elsewhere).

    Each process counts its proportional share of the pages it shares
    (PSS, from `/proc/<pid>/smaps_rollup`): forked workers share most of
    their parent's pages copy-on-write, and summing plain RSS would count
    those once per worker. Where PSS is not available, RSS.

    Args:
        anonymous: Count only anonymous and shared-memory pages (`Pss_Anon`
            plus `Pss_Shmem`): the heap, stacks and shared-memory blocks,
            where a leak grows. Library pages, which the default counts, are
            shared with every other process that maps the same files, so
            another TensorFlow program starting or ending moves PSS by tens
            of megabytes; these two fields do not move with it. Defaults to
            `False`.

    Returns:
        `{pid: bytes}`, this process first.

    Example:

    >>> os.getpid() in process_tree_memory()
    True
    """
    keys = ("Pss_Anon:", "Pss_Shmem:") if anonymous else ("Pss:",)
    memory = {}
    for pid in [os.getpid(), *_children(os.getpid())]:
        parts = [_proc_kib(f"/proc/{pid}/smaps_rollup", key) for key in keys]
        memory[pid] = rss_bytes(pid) if None in parts else sum(p for p in parts if p is not None)
    return memory


def process_tree_rss() -> int:
    """The sum of `process_tree_memory()` over this process and its children, in bytes.

    Returns:
        Bytes; 0 where `/proc` is missing.

    Example:

    >>> process_tree_rss() >= sum(process_tree_memory(anonymous=True).values()) >= 0
    True
    """
    return sum(process_tree_memory().values())


class PeakMemory:
    """Samples `process_tree_rss()` in a thread while in a `with` block; `.peak` holds the maximum.

    Once a second by default: reading PSS walks the page tables, which
    costs enough CPU to slow the candidates measured when sampled often
    (figures in docs/benchmarks.md).

    Args:
        interval: Seconds between samples. Defaults to 1.

    Example:

    >>> with PeakMemory() as memory:
    ...     _ = np.ones(10**6)
    >>> memory.peak > 0 or not os.path.exists("/proc")
    True
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        self.peak = process_tree_rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, process_tree_rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, process_tree_rss())
