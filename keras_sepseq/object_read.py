"""`ObjectRead`: one object being read, a future with a handful of slots instead of `concurrent.futures.Future`.

A first epoch from object storage keeps a few hundred reads in flight,
each alive for a round trip. A `Future` brings a `Condition`, its waiter
deque and two lists, all tracked by Python's cyclic garbage collector; at
two futures per read (the reader's and the retrying fetcher's) and the
callbacks around them, reads in flight pushed 80 young collections and,
every other epoch of 2,000 photos, a full collection through TensorFlow's
half a million objects: 280-320 ms with every thread stopped, against
2-8 young collections for the same epoch from local disk
(docs/benchmarks.md). An `ObjectRead` is one tracked object; its waiting
event is made only when a thread blocks on it, and retries reuse it.

It offers what the worker pool and `keras_sepseq.fetching` use of a
future: `result`, `exception`, `done`, `cancelled`, `cancel` (only before
the read starts) and `add_done_callback`.

Example:

>>> read = ObjectRead("s3://bucket/a.png")
>>> read.add_done_callback(lambda r: print(len(r.result())))
>>> read._finish(b"abc", None)
3
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

__all__ = ["ObjectRead"]

_PENDING, _RUNNING, _DONE, _CANCELLED = range(4)
_LOCK = threading.Lock()  # state changes of every read: held for a few instructions, never while calling out
_LOG = logging.getLogger(__name__)


class ObjectRead:
    """A read of the object at `url`: queued, on the wire, or finished with bytes or an exception.

    Args:
        url: The object's URL.
        owner: Who retries and counts it (a `keras_sepseq.fetching.Fetcher`),
            or `None` for a single try.

    Example:

    >>> read = ObjectRead("s3://bucket/a.png")
    >>> read.cancel(), read.cancelled()
    (True, True)
    """

    __slots__ = ("_callbacks", "_error", "_event", "_state", "_value", "attempt", "owner", "started", "url")

    def __init__(self, url: str, owner: Any = None) -> None:
        self.url, self.owner, self.attempt, self.started = url, owner, 0, 0.0
        self._state = _PENDING
        self._value: Any = None
        self._error: BaseException | None = None
        self._callbacks: Any = None  # None, one callable, or a list of them
        self._event: threading.Event | None = None

    def __repr__(self) -> str:
        state = ("queued", "reading", "done", "cancelled")[self._state]
        return f"ObjectRead({self.url!r}, {state})"

    def cancel(self) -> bool:
        """Drops the read if it is not on the wire; returns whether it is cancelled."""
        with _LOCK:
            if self._state == _CANCELLED:
                return True
            if self._state != _PENDING:
                return False
            self._state = _CANCELLED
            callbacks, self._callbacks = self._callbacks, None
            event = self._event
        if event is not None:
            event.set()
        self._call(callbacks)
        return True

    def cancelled(self) -> bool:
        """Whether the read was cancelled before it started."""
        return self._state == _CANCELLED

    def done(self) -> bool:
        """Whether the read finished or was cancelled."""
        return self._state in (_DONE, _CANCELLED)

    def add_done_callback(self, callback: Callable[[ObjectRead], Any]) -> None:
        """Calls `callback(self)` once the read is done (at once if it is), on the thread that finished it."""
        with _LOCK:
            if self._state not in (_DONE, _CANCELLED):
                held = self._callbacks
                if held is None:
                    self._callbacks = callback
                elif isinstance(held, list):
                    held.append(callback)
                else:
                    self._callbacks = [held, callback]
                return
        self._call(callback)

    def result(self, timeout: float | None = None) -> Any:
        """The object's bytes, waiting for them; raises the read's exception, or `CancelledError`."""
        self._wait(timeout)
        if self._state == _CANCELLED:
            raise CancelledError()
        if self._error is not None:
            raise self._error
        return self._value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The read's exception (`None` if it succeeded), waiting for it; raises `CancelledError` if cancelled."""
        self._wait(timeout)
        if self._state == _CANCELLED:
            raise CancelledError()
        return self._error

    def _wait(self, timeout: float | None) -> None:
        with _LOCK:
            if self._state in (_DONE, _CANCELLED):
                return
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        if not event.wait(timeout):
            raise FutureTimeout()

    def _begin(self) -> bool:
        """Marks the read as on the wire; `False` if it was cancelled (or is running or done already)."""
        with _LOCK:
            if self._state != _PENDING:
                return False
            self._state = _RUNNING
            return True

    def _again(self) -> None:
        """Marks a read that failed, to be tried again, as queued (it can be cancelled while it waits)."""
        with _LOCK:
            if self._state == _RUNNING:
                self._state = _PENDING

    def _finish(self, value: Any, error: BaseException | None) -> None:
        """Ends the read with `value` or `error` (nothing happens if it ended already) and runs the callbacks."""
        with _LOCK:
            if self._state in (_DONE, _CANCELLED):
                return
            self._state, self._value, self._error = _DONE, value, error
            callbacks, self._callbacks = self._callbacks, None
            event = self._event
        if event is not None:
            event.set()
        self._call(callbacks)

    def _call(self, callbacks: Any) -> None:
        for callback in callbacks if isinstance(callbacks, list) else (callbacks,) if callbacks else ():
            try:
                callback(self)
            except Exception:  # as concurrent.futures does: a failing callback must not stop the I/O thread
                _LOG.exception("keras_sepseq: a callback of the read of %s failed", self.url)
