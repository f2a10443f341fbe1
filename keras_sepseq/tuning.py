"""How a worker pool splits its work, decided from what loading a sample costs, not from an option.

Two decisions depend on the cost of a sample, which users should not have
to know:

- How many chunks a batch is split into. Handing a chunk to a worker
  costs a few microseconds for a thread and a few hundred for a process
  (a pipe message, a wake-up, a shared-memory hand-over). A batch of
  expensive samples (photos, ~2 ms each) is split across all workers, so
  that even a batch nobody prefetched loads in parallel; a batch of cheap
  samples (an 8x8 PNG, ~25 us) goes to one worker whole, and the workers
  load several prefetched batches side by side instead.
- How many threads load at once. Work that holds the GIL (the Python
  around every small read and decode) does not run faster in two threads:
  it runs slower, since every system call hands the GIL over between
  cores. The tuner measures how many samples per second reach the caller
  (the time between batches handed over, so the caller's own work and
  whatever the threads cost it are counted) with all threads loading, then with half as many, down to one
  thread and then none (the calling thread loads, with no hand-over at
  all), and keeps the fastest; it measures again at the start of epochs
  1, 4, 16, 64... (the page cache, a directory cache or the data itself
  can change the answer), and measures the chosen setting once more right
  after (a pause or a burst of the machine during one measurement can make
  it choose wrong): if the choice then lags another setting's rate by 20%,
  the settings are compared again, once per epoch at most; by 5%, the
  tuner moves to that setting and measures it in turn. Process workers share no GIL: a process pool is only
  compared with the calling process loading alone, over more batches (`PROBE_QUEUES`), since its batches
  arrive in bursts. Samples that take a
  worker a quarter of a millisecond or more are not compared at all
  (`COMPARE_BELOW`): every worker loads them, since the comparison would
  cost more than it could find.

What comes out never depends on these decisions: only how fast.

Example:

>>> tuner = LoadTuner(workers=2, threads=True)
>>> tuner.chunks(64)  # nothing measured yet: one chunk per worker
2
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["LoadTuner"]

CHUNK_SECONDS = 0.002
"""A chunk should take at least this long in a worker; cheaper work goes to fewer, larger chunks."""

PROBE_CHUNKS = 8
"""Batches measured at least at each setting before the tuner compares them."""

PROBE_SECONDS = 0.02
"""Seconds measured at least at each setting (batches of cheap samples come in bursts)."""

PROBE_QUEUES = 3
"""A process pool is measured over at least this many prefetch queues' worth of batches (`queue`).

Its batches reach the caller in bursts of up to a queue at a time (a worker process collates a whole batch of
cheap samples, and several finish together), so a probe of `PROBE_CHUNKS` batches measured whether a burst fell
inside it more than the pool: for `bench --small`'s short sequences, 46,000-61,000 samples/s over 16 batches
against 65,000-76,000 over whole epochs, and the calling process (58,000-61,000, steady) won the comparison in
about half the rounds. Over three queues (30 batches) the pool measured 70,000-84,000 in 8 of 8 comparisons
(docs/benchmarks.md). Threads, and the calling process, hand over each batch as it is loaded, and keep
`PROBE_CHUNKS`."""

BETTER_BY = 1.05
"""Fewer loading threads are kept only when they deliver at least this many times more samples per second."""

RETUNE_AT = frozenset(4**k for k in range(16)) | {0}
"""The epochs (counted from 0) at whose start the settings are compared again."""

GIVE_UP_BELOW = 0.8
"""Halving stops once a limit delivers less than this share of the best rate measured (above one thread); a
settled choice measured again below this share of another setting's rate starts a new comparison."""

SWITCHES = 2
"""Times a settled choice may move to another setting measured faster, after one comparison (see `_check`)."""

FALLS_AT_ONCE = 4
"""A chunk this many times cheaper per sample than the smoothed cost replaces it instead of being averaged in.

A fresh process worker's first chunk (imports, first calls) can cost a thousand times its later ones; averaged
in at a fifth per chunk, it would keep cheap batches split across workers for thirty chunks or more. A sample
does not become four times cheaper otherwise; a costlier chunk (a busy machine, a cold disk) is averaged in."""

COMPARE_BELOW = 0.00025
"""Settings are compared only for samples that take a worker less than this (CPU seconds per sample, the least
measured since the comparison started: a worker's first chunk, cold, costs many times its later ones).

Threads lose to one thread where each sample is a few system calls and a little Python: every call hands the
GIL between cores, a few microseconds each, as much as the work itself. A sample that takes a quarter of a
millisecond or more (a photo's decode, say) loses a few percent to that at most, while comparing runs a
dozen batches with fewer workers than there are: 0.5-0.6x of the first epoch's rate for the bench's photos
(docs/benchmarks.md). Such samples are loaded by every worker without a comparison. The worker thread's
CPU time is what counts, not its wall time: waiting for the GIL or the disk makes a sample slow, not
costly (an 8x8 PNG took a thread 50-65 us of CPU, and 80-120 us of wall time, beside another thread)."""


class LoadTuner:
    """Decides how many chunks a batch loads in and how many threads load at once.

    Args:
        workers: The pool's threads or processes.
        threads: Whether the workers are threads (which share the GIL).
        queue: Batches prefetched ahead: that many at the start of an
            epoch were loaded while the caller did something else, and
            are not counted.
        compare: Compare settings at all. `False` keeps every worker
            loading (for data read from object storage, whose rate
            depends on reads in flight more than on the workers').

    Example:

    >>> tuner = LoadTuner(workers=4, threads=True)
    >>> items = tuner.run(lambda chunk: [i * 2 for i in chunk], [1, 2, 3])  # in a worker thread
    >>> items
    [2, 4, 6]
    """

    def __init__(self, workers: int, *, threads: bool, queue: int = 0, compare: bool = True) -> None:
        self.workers = max(1, int(workers))
        self.threads = bool(threads)
        self.limit = self.workers
        """Threads allowed to load at once (`workers` or 0 for processes); 0: the calling thread loads."""
        self.sample_seconds: float | None = None
        """Worker time per sample divided by the threads loading at once, smoothed (`None` before the first)."""
        self.cheapest_seconds: float | None = None
        """The least worker CPU time per sample of a chunk since the comparison started (`None` before the first)."""
        self.capacity: dict[int, float] = {}
        """Samples per second measured with that many threads loading, in the last comparison."""
        self._condition = threading.Condition()
        self._active = 0
        self._probe: list[float] = [0.0, 0.0, 0]  # at `limit`: samples, seconds, batches delivered
        self.compare = bool(compare)
        self._tuning = self.compare and (self.workers > 1 or not self.threads)
        self._watching = False  # measuring the setting a comparison just settled on
        self._switches = 0  # moves to another setting since the last comparison (see `_check`)
        self._rechecked = -2  # the epoch of the last comparison started again by the check
        self.epochs = -1  # the epochs started so far, minus one
        self.queue = max(0, int(queue))
        self._skip = 0  # batches still to pass uncounted this epoch

    def chunks(self, size: int) -> int:
        """How many chunks a batch of `size` samples is split into.

        Args:
            size: Samples to load.

        Returns:
            At least 1, at most `min(size, workers)`.
        """
        most = max(1, min(size, self.limit))
        if self.sample_seconds is None:
            return most
        per_chunk = max(1, math.ceil(CHUNK_SECONDS / max(self.sample_seconds, 1e-9)))
        return max(1, min(most, math.ceil(size / per_chunk)))

    def new_epoch(self) -> None:
        """Starts an epoch: compares settings again at epochs 1, 4, 16, 64... (counted from 0), from all workers.

        The first epoch may read from a cold disk, the second from the page
        cache; later comparisons are rarer, since each costs a few batches
        at slower settings.
        """
        with self._condition:
            self.epochs += 1
            compare = not self._tuning and self.epochs in RETUNE_AT and self.compare
            if compare and (self.workers > 1 or not self.threads):
                self._start_comparison()
            # What workers prefetched while the caller was busy elsewhere is not counted; the calling thread
            # prefetches nothing.
            self._skip = self.queue if self.limit else 0

    def run(self, load: Callable[[Any], list], chunk: Any) -> list:
        """Runs `load(chunk)` in a worker thread, when the limit lets it, and measures it.

        Args:
            load: Loads a chunk and returns one item per sample.
            chunk: The chunk (a list of sample indices).

        Returns:
            What `load` returned.
        """
        with self._condition:
            while self._active >= max(1, self.limit):  # chunks queued before a switch to 0 still run
                self._condition.wait()
            self._active += 1
            sharing = self._active
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return load(chunk)
        finally:
            seconds, cpu = time.perf_counter() - start, time.thread_time() - cpu
            with self._condition:
                sharing = max(sharing, self._active)
                self._active -= 1
                self._condition.notify()
                self.record(len(chunk), seconds, sharing, cpu)

    @property
    def tuning(self) -> bool:
        """Whether settings are being compared (batches delivered are measured)."""
        return self._tuning

    @property
    def watching(self) -> bool:
        """Whether the setting a comparison settled on is being measured once more (see `_check`)."""
        return self._watching

    @property
    def inline(self) -> bool:
        """Whether the calling thread should load batches itself (measured fastest for these samples)."""
        return self.limit == 0

    def record(self, samples: int, seconds: float, sharing: int = 1, cpu_seconds: float | None = None) -> None:
        """Takes note of one chunk: `samples` loaded in `seconds` while `sharing` threads loaded.

        Args:
            samples: Samples in the chunk.
            seconds: Worker time it took.
            sharing: Threads that loaded at the same time, itself included.
            cpu_seconds: The worker thread's CPU time for it, where known.
                It decides whether settings are compared (`COMPARE_BELOW`)
                and, for a process worker, which shares no GIL, also the
                chunk size; else `seconds` does.
        """
        if samples <= 0 or seconds <= 0:
            return
        # A process shares no GIL: its CPU time is its work (its wall time on a busy machine is also other programs').
        per_sample = (seconds if self.threads or cpu_seconds is None else cpu_seconds) / samples / sharing
        if self.sample_seconds is None or per_sample * FALLS_AT_ONCE <= self.sample_seconds:
            self.sample_seconds = per_sample  # the first, or the estimate was a cold start's: take the new one
        else:
            self.sample_seconds = 0.8 * self.sample_seconds + 0.2 * per_sample
        cost = (seconds if cpu_seconds is None else cpu_seconds) / samples
        self.cheapest_seconds = cost if self.cheapest_seconds is None else min(self.cheapest_seconds, cost)

    def delivered(self, samples: int, seconds: float, level: int) -> None:
        """Takes note of one batch handed to the caller, `seconds` after the one before it.

        Args:
            samples: Samples in the batch.
            seconds: Time since the caller got the previous batch.
            level: The limit the batch was loaded under; batches loaded
                under another (prefetched before a change) are not counted.
        """
        with self._condition:
            if not (self._tuning or self._watching) or level != self.limit or seconds <= 0:
                return
            if self._skip > 0:
                self._skip -= 1
                return
            probe = self._probe
            probe[0] += samples
            probe[1] += seconds
            probe[2] += 1
            # A process pool's batches come in bursts; the calling thread's and thread workers' one by one.
            batches = PROBE_CHUNKS if self.threads or not self.limit else max(PROBE_CHUNKS, PROBE_QUEUES * self.queue)
            if probe[2] >= batches and probe[1] >= PROBE_SECONDS:
                if self._tuning:
                    self._compare(probe[0] / probe[1])
                else:  # watching
                    self._check(probe[0] / probe[1])

    def _start_comparison(self) -> None:
        """Called with the condition held: every worker loads again, and each setting is measured anew."""
        self._tuning, self._watching, self._switches = True, False, 0
        self.capacity = {}
        self.cheapest_seconds = None  # the samples from now on decide whether to compare (a cold disk's may not)
        self._set_limit(self.workers)

    def _check(self, rate: float) -> None:
        """Called with the condition held, once the settled setting was measured again: keeps it, or moves on.

        A comparison measures each setting over a few dozen milliseconds: a pause of the machine in one of
        them can make it choose a setting 2.5x slower than the best (seen once in three `bench --small`
        rounds), and a burst in another can make a setting look 9% faster than it is (one thread for short
        sequences, which then ran 0.7x the calling thread's rate for twelve epochs). The choice is measured
        for one more probe (`PROBE_CHUNKS` or `PROBE_QUEUES`, `PROBE_SECONDS`), and that rate replaces its first
        one:

        - below `GIVE_UP_BELOW` times the best rate measured for another setting, every setting is compared
          again (once per epoch at most): the other measurements may be as wrong;
        - else, below the best other rate divided by `BETTER_BY`, the tuner moves to that setting and
          measures it once more in turn (`SWITCHES` moves per comparison at most, then it stays);
        - else the choice stands, and is no longer watched.
        """
        self._probe = [0.0, 0.0, 0]
        self.capacity[self.limit] = rate
        others = {limit: measured for limit, measured in self.capacity.items() if limit != self.limit}
        best = max(others, key=others.__getitem__) if others else None
        if best is not None and rate < GIVE_UP_BELOW * others[best] and self._rechecked != self.epochs:
            self._rechecked = self.epochs
            self._start_comparison()
        elif best is not None and rate * BETTER_BY < others[best] and self._switches < SWITCHES:
            self._switches += 1
            self._set_limit(best)  # still watching: the new choice is measured once more too
        else:
            self._watching = False

    def _compare(self, rate: float) -> None:
        """Called with the condition held, once `limit` was measured: halves it, or settles on the best.

        Halving goes on while fewer threads are not clearly slower (two
        threads sharing the GIL can be no faster than one, yet the calling
        thread alone much faster); the fastest limit measured wins, a
        smaller one only when it is `BETTER_BY` faster than a larger one.
        """
        first = not self.capacity
        self.capacity[self.limit] = rate
        if first and self.cheapest_seconds is not None and self.cheapest_seconds >= COMPARE_BELOW:
            self._tuning = False  # costly samples: every worker loads, nothing to gain from comparing
            return
        best = max(self.capacity.values())
        # One thread handing every batch over is no evidence against none: the calling thread alone is always tried.
        if self.limit > 0 and (rate >= GIVE_UP_BELOW * best or (self.threads and self.limit == 1)):
            # Processes share no GIL: fewer would only be slower; the calling process alone may not be.
            self._set_limit(self.limit // 2 if self.threads else 0)  # 1 // 2 = 0: the calling thread loads
            return
        chosen = self.workers
        for limit in sorted(self.capacity, reverse=True):
            if self.capacity[limit] >= self.capacity[chosen] * BETTER_BY:
                chosen = limit
        self._set_limit(chosen)
        self._tuning = False
        self._watching = True  # measured once more right away (`_check`)

    def _set_limit(self, limit: int) -> None:
        self.limit = limit
        self._probe = [0.0, 0.0, 0]
        self._condition.notify_all()

    def __repr__(self) -> str:
        per_sample = "?" if self.sample_seconds is None else f"{self.sample_seconds * 1e6:.0f} us"
        return f"LoadTuner(workers={self.workers}, threads={self.threads}, limit={self.limit}, sample={per_sample})"
