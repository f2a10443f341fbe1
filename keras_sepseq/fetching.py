"""Reads of remote objects kept in flight ahead of decoding, on I/O threads of the process that holds the credentials.

A read from object storage waits 20-100 ms for the network and costs
almost no CPU; decoding what it returns costs CPU and no waiting. Doing
both in one worker idles the core for the whole round trip. Here they
are separate stages: when the worker pool queues a chunk of samples, a
`Fetcher` starts reading every object the chunk needs (`reads_in_flight`
at once, across all queued chunks), and the chunk goes to a decoding
worker only once its bytes are in. Process workers receive the bytes with
the chunk, so they never hold credentials or open a connection.

Objects are read on the process's I/O threads (`IO_THREADS` at most,
shared by every sequence), `reads_in_flight` at once per sequence, one
`storage.read_url` per object (retries and counts included); each read
waits in obstore's Rust client with the GIL released.

`RemoteReading` gives every sequence the options (`storage_options`,
`reads_in_flight`), the per-sample list of URLs and the statistics.

Example:

>>> fetcher = Fetcher(reads_in_flight=16)
>>> futures = fetcher.fetch(["s3://bucket/a.bin"])  # doctest: +SKIP
>>> wait_all(futures)["s3://bucket/a.bin"]  # doctest: +SKIP
b'abc'
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from keras_sepseq import storage
from keras_sepseq.checks import check_int

__all__ = ["Fetcher", "Pending", "RemoteReading", "wait_all", "when_all"]


IO_THREADS = 256
"""Threads that read objects in one process, at most, however many sequences read at once; each sequence
keeps at most its own `reads_in_flight` of them busy."""

_POOL: list[Any] = [None, 0]  # the process's I/O threads, and the process they belong to
_POOL_LOCK = threading.Lock()


def _io_pool() -> ThreadPoolExecutor:
    """The I/O threads of this process (made on first use, and again in a forked child)."""
    with _POOL_LOCK:
        if _POOL[0] is None or _POOL[1] != os.getpid():
            _POOL[:] = [ThreadPoolExecutor(IO_THREADS, thread_name_prefix="keras_sepseq_io"), os.getpid()]
        return _POOL[0]


class Fetcher:
    """Reads objects, up to `reads_in_flight` at once, with retries and stats, on the process's I/O threads.

    Args:
        reads_in_flight: Reads in flight at most for this fetcher (the
            process has `IO_THREADS` threads for all of them).
        options: Storage options (credentials stay in this process).
        stats: Where requests, retries and failures are counted.

    Example:

    >>> fetcher = Fetcher(reads_in_flight=8)
    >>> fetcher.close()
    """

    def __init__(
        self,
        reads_in_flight: int = 16,
        options: Mapping[str, Any] | None = None,
        stats: storage.StorageStats | None = None,
    ) -> None:
        self.reads_in_flight = max(1, int(reads_in_flight))
        self.options = dict(options or {})
        self.stats = stats if stats is not None else storage.StorageStats()
        self._lock = threading.Lock()
        self._waiting: collections.deque[tuple[str, Future]] = collections.deque()
        self._running = 0
        self._closed = False
        self._rng = random.Random()  # backoff jitter; never the global `random` state

    def __repr__(self) -> str:
        return f"Fetcher(reads_in_flight={self.reads_in_flight})"  # never the options

    def __reduce__(self):
        raise TypeError("a Fetcher holds credentials and threads of its process: it is not pickled")

    def fetch(self, urls: list[str]) -> dict[str, Pending]:
        """Starts reading `urls` (in order, `reads_in_flight` at once); returns a future of each one's bytes.

        Args:
            urls: Object URLs; repeated ones are read once.

        Returns:
            `{url: future}`: a `concurrent.futures.Future` of the bytes
            (or of the error); cancelling one not yet started drops it.
        """
        futures: dict[str, Pending] = {}
        with self._lock:
            for url in urls:
                if url not in futures:
                    future: Future = Future()
                    futures[url] = future
                    if self._closed:
                        future.set_exception(OSError(f"cannot read {storage.display_url(url)}: the reader was closed"))
                    else:
                        self._waiting.append((url, future))
            self._start_more()
        return futures

    def _start_more(self) -> None:
        """Hands waiting reads to the I/O threads while fewer than `reads_in_flight` run (the lock is held)."""
        while self._running < self.reads_in_flight and self._waiting:
            url, future = self._waiting.popleft()
            if future.set_running_or_notify_cancel():  # False: cancelled while it waited
                self._running += 1
                _io_pool().submit(self._read, url, future)

    def _read(self, url: str, future: Future) -> None:
        try:
            future.set_result(storage.read_url(url, self.options, stats=self.stats, rng=self._rng))
        except BaseException as e:  # noqa: BLE001 (the sample's loader raises it, under the error policy)
            future.set_exception(e)
        finally:
            with self._lock:
                self._running -= 1
                if not self._closed:
                    self._start_more()

    def close(self) -> None:
        """Cancels the reads not started; those on their way end on their own. Later reads fail at once."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = list(self._waiting), collections.deque()
        for _, future in waiting:
            future.cancel()


class Pending(Protocol):
    """What the worker pool uses of a read in flight (a `concurrent.futures.Future`).

    Example:

    >>> def size(read: Pending) -> int:
    ...     return len(read.result())
    """

    def result(self, timeout: float | None = None) -> Any: ...

    def done(self) -> bool: ...

    def add_done_callback(self, fn: Callable[[Any], Any]) -> None: ...

    def cancel(self) -> bool: ...


def wait_all(futures: Mapping[str, Pending]) -> dict[str, Any]:
    """Waits for every future; returns `{url: bytes or the exception}` (failures are values, not raised).

    Args:
        futures: As `Fetcher.fetch` returns them.

    Returns:
        What `storage.supplied` takes.
    """
    contents: dict[str, Any] = {}
    for url, future in futures.items():
        try:
            contents[url] = future.result()
        except BaseException as e:  # noqa: BLE001 (the sample's loader raises it, under the error policy)
            contents[url] = e
    return contents


def when_all(futures: Mapping[str, Pending], callback: Callable[[dict[str, Any]], None]) -> None:
    """Calls `callback(contents)` once every future is done (at once if they are), on the thread that finished last.

    A future keeps its done-callbacks after running them (`concurrent.futures` never clears the list), so
    the callback given to the futures lets go of them, and of `callback`, once the last is done: holding
    them would make a reference cycle through every future's bytes, freed only when the cyclic garbage
    collector runs. Before this was so, a first epoch read from S3 grew the process by the size of the
    objects it read (110-140 MB per 2,000 photos), and the kernel's zeroing of the new pages took 14% of its
    CPU (docs/benchmarks.md).

    Args:
        futures: As `Fetcher.fetch` returns them.
        callback: Receives what `wait_all` returns.
    """
    if not futures:
        callback({})
        return
    remaining = len(futures)
    held: Mapping[str, Pending] | None = futures
    call: Callable[[dict[str, Any]], None] | None = callback
    lock = threading.Lock()

    def one_done(_: Any) -> None:
        nonlocal remaining, held, call
        with lock:
            remaining -= 1
            if remaining:
                return
            done, then, held, call = held, call, None, None
        if done is not None and then is not None:  # always: only the last future gets here, once
            then(wait_all(done))

    for future in list(futures.values()):
        future.add_done_callback(one_done)


class RemoteReading:
    """Mixin for sequences: URLs as paths, `storage_options`, reads in flight, and what reading cost.

    Example:

    >>> seq.remote_stats  # doctest: +SKIP
    {'requests': 1200, 'retries': 3, 'failures': 0, 'bytes': 98304000, 'seconds': 61.2, 'last_retry': ...}
    """

    storage_options: dict[str, Any]
    reads_in_flight: int
    epoch: int

    def init_remote_reading(self, *, storage_options: Any, reads_in_flight: Any) -> None:
        """Checks and keeps the options; nothing is opened until a URL is read."""
        if storage_options is not None and not isinstance(storage_options, Mapping):
            raise TypeError(
                f"`storage_options` must be a dict of storage options, or None. Received: {type(storage_options).__name__}"
            )
        self.storage_options = dict(storage_options or {})
        self.reads_in_flight = check_int("reads_in_flight", reads_in_flight, minimum=1)
        self._storage_stats = storage.StorageStats()
        self._fetcher: Fetcher | None = None

    def path_columns(self) -> list[Sequence[str]]:
        """One sequence of paths per part of a sample that is read from files; `[]` by default. Subclasses say.

        Returns:
            Sequences indexed by sample (a `PathArray`, a list...).
        """
        return []

    def _url_columns(self) -> list[Sequence[str]]:
        """The path columns with a URL among their paths (checked once, over every path)."""
        columns = self.__dict__.get("_url_columns_found")
        if columns is None:
            columns = [c for c in self.path_columns() if any(map(storage.is_url, c))]
            self.__dict__["_url_columns_found"] = columns
        return columns

    def sample_urls(self, index: int) -> list[str]:
        """The URLs sample `index` reads (its files in object storage); `[]` when all are local.

        Args:
            index: The sample index.

        Returns:
            URLs, to be fetched ahead of decoding.
        """
        return [p for p in (c[index] for c in self._url_columns()) if storage.is_url(p)]

    @property
    def reads_remote(self) -> bool:
        """Whether any sample reads a URL (then workers get their bytes fetched ahead)."""
        return bool(self._url_columns())

    @property
    def remote_stats(self) -> dict[str, Any]:
        """Requests, retries, failures, bytes and seconds spent reading objects in this process so far.

        `read_ahead_used` counts the objects a batch took from the reads
        started while Keras read the first batches for their structure
        (see `read_ahead`).

        Example:

        >>> seq.remote_stats["retries"]  # doctest: +SKIP
        3
        """
        stats = {**self._storage_stats.as_dict(), "read_ahead_used": sum(self.__dict__.get("_read_ahead_used", ()))}
        return {**stats, **self.remote_client()}

    def remote_client(self) -> dict[str, str]:
        """Which client reads this sequence's objects and where its credentials come from (`{}` when all is local).

        Example:

        >>> seq.remote_client()  # doctest: +SKIP
        {'client': 'obstore S3Store', 'credentials': "AWS profile 'work' (boto3, refreshed)"}
        """
        found = self.__dict__.get("_remote_client")
        if found is None:
            columns = self._url_columns()
            url = next((p for p in columns[0] if storage.is_url(p)), None) if columns else None
            found = storage.client_description(url, self.storage_options) if url else {}
            self.__dict__["_remote_client"] = found
        return found

    def fetcher(self) -> Fetcher:
        """The I/O threads that read this sequence's objects ahead (started on first use)."""
        if self._fetcher is None:
            self._fetcher = Fetcher(self.reads_in_flight, self.storage_options, self._storage_stats)
        return self._fetcher

    def fetch_samples(self, indices: list[int]) -> dict[str, Pending]:
        """Starts reading every object the samples at `indices` need; `{}` for local data.

        Args:
            indices: Sample indices.

        Returns:
            `{url: future}`.
        """
        if not self.reads_remote:
            return {}
        urls = [url for i in indices for url in self.sample_urls(int(i))]
        ahead = self.__dict__.get("_read_ahead")
        if ahead:
            taken = {url: read for url, read in ((u, ahead.pop(u, None)) for u in urls) if read is not None}
            if taken:  # appends are atomic: several threads call this
                self.__dict__.setdefault("_read_ahead_used", []).append(len(taken))
            rest = [url for url in urls if url not in taken]
            futures = self.fetcher().fetch(rest) if rest else {}
            futures.update(taken)
        else:
            futures = self.fetcher().fetch(urls) if urls else {}
        if self.__dict__.get("_keeping_reads"):  # see `keeping_reads`
            self.__dict__.setdefault("_read_ahead", {}).update(futures)
            self.__dict__["_read_ahead_epoch"] = max(self.__dict__.get("_read_ahead_epoch", 0), self.epoch + 1)
        return futures

    @contextlib.contextmanager
    def keeping_reads(self, keep: bool = True) -> Iterator[None]:
        """Within the block, the objects read are kept, as if read ahead, for the next batch that needs them.

        Under `fit`, Keras reads the first two batches for their structure
        and then starts the epoch, which asks for the same samples again
        (at other positions when it shuffles): their objects are then read
        once, not twice. Kept reads no batch took are let go at the end of
        the next epoch (`drop_stale_read_ahead`).

        Args:
            keep: Whether to keep them (`False`: the block changes nothing).

        Yields:
            Nothing.

        Example:

        >>> with seq.keeping_reads():  # doctest: +SKIP
        ...     structure = seq[0]
        """
        if not keep:
            yield
            return
        self.__dict__["_keeping_reads"] = True
        try:
            yield
        finally:
            self.__dict__.pop("_keeping_reads", None)

    def read_ahead(self, indices: Sequence[int], epoch: int, room: int | None = None) -> int:
        """Starts reading the objects of samples an epoch will load first, before any batch asks for them.

        `fetch_samples` then takes these reads instead of starting its own;
        `drop_read_ahead` lets go of those no batch took. At most
        `reads_in_flight` reads ahead are on their way at once.

        Args:
            indices: Sample indices, in the order they will be needed.
            epoch: The epoch they are read for (`drop_stale_read_ahead`).
            room: How many reads may start, when the caller knows it (it
                counted `reads_ahead_in_flight` for several calls); by
                default `reads_in_flight` less those on their way.

        Returns:
            How many objects started reading.

        Example:

        >>> seq.read_ahead(seq.order_for_epoch(1)[:64], epoch=1)  # doctest: +SKIP
        64
        """
        if not self.reads_remote:
            return 0
        ahead: dict[str, Pending] = self.__dict__.setdefault("_read_ahead", {})
        self.__dict__["_read_ahead_epoch"] = epoch
        urls = [u for i in indices for u in self.sample_urls(int(i)) if u not in ahead]
        if room is None:
            room = self.reads_in_flight - self.reads_ahead_in_flight()
        urls = list(dict.fromkeys(urls))[: max(0, room)]
        if urls:
            ahead.update(self.fetcher().fetch(urls))
        return len(urls)

    def reads_ahead_in_flight(self) -> int:
        """How many reads ahead are still on their way (those done wait, bytes in hand, for their batch).

        Returns:
            A count, at most `reads_in_flight` from `read_ahead`'s own reads.

        Example:

        >>> seq.read_ahead(range(64), epoch=seq.epoch)  # doctest: +SKIP
        64
        >>> seq.reads_ahead_in_flight()  # a round trip later: all done  # doctest: +SKIP
        0
        """
        ahead = self.__dict__.get("_read_ahead")
        return sum(not read.done() for read in list(ahead.values())) if ahead else 0  # list(): other threads pop

    def drop_stale_read_ahead(self, epoch: int) -> None:
        """Lets go of reads ahead made for an epoch before `epoch` that no batch took (a wrong guess).

        Args:
            epoch: The epoch now current.
        """
        if self.__dict__.get("_read_ahead") and self.__dict__.get("_read_ahead_epoch", epoch) < epoch:
            self.drop_read_ahead()

    def drop_read_ahead(self) -> None:
        """Cancels the reads ahead not started and forgets the others."""
        ahead = self.__dict__.pop("_read_ahead", None) or {}
        for read in list(ahead.values()):
            read.cancel()

    def remote_supply(self, indices: list[int]) -> contextlib.AbstractContextManager[None]:
        """Within the block, the samples at `indices` read their objects from bytes fetched all at once.

        Nothing to do when the worker pool supplied them already, or when
        every file is local.

        Args:
            indices: Sample indices.

        Returns:
            A context manager.
        """
        if not self.reads_remote or storage.has_supply():
            return contextlib.nullcontext()
        return storage.supplied(wait_all(self.fetch_samples(indices)), self.storage_options)

    def report_retries(self) -> None:
        """Warns, once per epoch (from `on_epoch_end`), when reads were tried again after transient failures."""
        stats = self._storage_stats
        reported = getattr(self, "_retries_reported", 0)
        if stats.retries > reported:
            self._retries_reported = stats.retries
            warnings.warn(
                f"keras_sepseq read objects again {stats.retries - reported} time(s) this epoch after transient "
                f"failures (last: {stats.last_retry}); every sample was still served. Counts: seq.remote_stats.",
                stacklevel=3,
            )

    def close_fetcher(self) -> None:
        """Stops the I/O threads."""
        self.drop_read_ahead()
        fetcher, self._fetcher = getattr(self, "_fetcher", None), None
        if fetcher is not None:
            fetcher.close()

    def remote_state(self, state: dict) -> dict:
        """`state` (a `__dict__` copy being pickled) without credentials or I/O threads."""
        state["storage_options"] = storage.public_options(state.get("storage_options"))
        state["_fetcher"] = None
        state.pop("_remote_client", None)
        state.pop("_read_ahead", None)  # reads in flight stay in the process that made them
        state.pop("_keeping_reads", None)
        return state
