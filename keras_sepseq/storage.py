"""Files in object storage: URLs (`s3://`, `gs://`, `az://`, `https://`) read through obstore, with retries.

Everything that takes a path takes a URL too. This module is the one place
that tells them apart and reads them:

- `open_file(path)` opens a local file or a URL for reading; the decoders
  (`decode_image`, `load_npy`, masks) and custom loaders use it;
- `read_url` fetches an object's bytes through its store's obstore client
  (`keras_sepseq.object_store`), retrying transient failures (timeouts,
  dropped connections, HTTP 408, 429 and 5xx) with backoff and jitter,
  and sending permanent ones (403, 404) on at once, as local files do;
  `file://` URLs are read as local files;
- listing a bucket and reading manifests are `keras_sepseq.listing`'s job;
- `public_options` keeps only the entries of `storage_options` known not
  to be secret before they are pickled or shown, and `display_url`
  strips a URL of its user, password and query.

obstore is optional (`pip install "keras-sepseq[remote]"`): a missing one
raises an `ImportError` naming the extra. Reads in flight, separate from
decoding, are `keras_sepseq.fetching`'s job.

Example:

>>> from keras_sepseq import storage
>>> storage.is_url("s3://bucket/images/0001.png"), storage.is_url("images/0001.png")
(True, False)
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import IO, Any

from keras_sepseq.object_store import (
    RemoteError,
    display_url,
    is_url,
    protocol,
    public_options,
    read_once,
    store_for,
)

__all__ = [
    "RemoteError",
    "StorageStats",
    "after_failure",
    "client_description",
    "display_url",
    "has_supply",
    "is_transient",
    "is_url",
    "local_path",
    "named_error",
    "open_file",
    "protocol",
    "public_options",
    "read_url",
    "supplied",
]

ATTEMPTS = 6
"""Tries per object before a transient failure counts as the sample's error."""

BACKOFF_SECONDS = 0.05
"""The first wait before trying again; it doubles (with jitter) each time, up to `BACKOFF_LIMIT`."""

BACKOFF_LIMIT = 2.0


def local_path(url: str) -> str:
    """The local path of a `file://` URL (percent-escapes decoded).

    Example:

    >>> local_path("file:///data/a%20b.png")
    '/data/a b.png'
    """
    return urllib.parse.unquote(urllib.parse.urlparse(url).path)


def client_description(url: str, options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Which client reads `url` and where its credentials come from, in words (no secret).

    Args:
        url: A URL.
        options: The storage options.

    Returns:
        `{"client": ..., "credentials": ...}`.

    Example:

    >>> client_description("s3://bucket/a.png", {"anon": True})
    {'client': 'obstore S3Store', 'credentials': 'anonymous (unsigned requests)'}
    """
    if protocol(url) == "file":
        return {"client": "local files", "credentials": "none"}
    store, _, how = store_for(url, options)
    return {"client": f"obstore {type(store).__name__}", "credentials": how.source}


class StorageStats:
    """Counts of what reading objects cost: requests, retries, bytes, failures. Thread-safe.

    Attributes:
        requests: Reads tried, retries included.
        retries: Reads tried again after a transient failure.
        failures: Objects that could not be read (after retries, or a
            permanent error).
        bytes: Bytes read.
        seconds: Time spent in reads, summed over the reads in flight.
        list_pages: Pages of listings (at most 1,000 keys each).

    Example:

    >>> stats = StorageStats()
    >>> stats.as_dict()["retries"]
    0
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = self.retries = self.failures = self.bytes = self.list_pages = 0
        self.seconds = 0.0
        self.last_retry: str | None = None

    def add(self, **counts: Any) -> None:
        """Adds to the named counters."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def as_dict(self) -> dict[str, Any]:
        """The counters as a dict."""
        with self._lock:
            return {
                "requests": self.requests,
                "retries": self.retries,
                "failures": self.failures,
                "bytes": self.bytes,
                "list_pages": self.list_pages,
                "seconds": round(self.seconds, 3),
                "last_retry": self.last_retry,
            }

    def __repr__(self) -> str:
        return f"StorageStats({self.as_dict()})"

    def __reduce__(self):
        return (StorageStats, ())  # a copy sent to a worker counts from zero there


_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def _status(error: BaseException) -> int | None:
    """The HTTP status behind `error` or its causes, if any says."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 8:
        for name in ("status", "status_code", "code"):
            value = getattr(current, name, None)
            if isinstance(value, int) and 100 <= value < 600:
                return value
        current, seen = current.__cause__ or current.__context__, seen + 1
    return None


def is_transient(error: BaseException) -> bool:
    """Whether reading again may succeed: timeouts, dropped connections, HTTP 408, 429 and 5xx.

    Missing objects (404), refused access (401, 403) and other 4xx answers
    are permanent.

    Args:
        error: What a read raised.

    Returns:
        `True` if the read is worth trying again.

    Example:

    >>> is_transient(TimeoutError()), is_transient(FileNotFoundError("s3://b/k"))
    (True, False)
    """
    status = _status(error)
    if status is not None:
        return status in (408, 429) or status >= 500
    if isinstance(error, _PERMANENT):
        return False
    if isinstance(error, (TimeoutError, ConnectionError)):
        return True
    if isinstance(error, RemoteError):
        return error.transient  # no HTTP answer: the connection failed, dropped or timed out (or TLS refused)
    return (
        isinstance(error, OSError)
        and re.search(r"slow ?down|reduce your request rate|timed? ?out", str(error), re.I) is not None
    )


def read_url(
    url: str,
    options: Mapping[str, Any] | None = None,
    *,
    stats: StorageStats | None = None,
    attempts: int = ATTEMPTS,
    rng: random.Random | None = None,
) -> bytes:
    """Reads the whole object at `url`, trying again after transient failures with exponential backoff.

    Args:
        url: The object's URL (`file://` reads a local file).
        options: Storage options (see `keras_sepseq.object_store.translate`).
        stats: Where requests, retries and failures are counted.
        attempts: Tries before giving up on a transient failure.
        rng: Draws the backoff jitter (a private generator; the global
            `random` state is never used).

    Returns:
        The object's bytes.

    Raises:
        FileNotFoundError: If the object does not exist (the URL is named).
        PermissionError: If access is refused.
        ValueError: If the URL, its key or an option is not understood.
        OSError: If transient failures outlast `attempts` tries; the
            message says how many.

    Example:

    >>> read_url("s3://bucket/labels/0001.npy", {"anon": True})  # doctest: +SKIP
    b"\\x93NUMPY..."
    """
    if protocol(url) == "file":
        with open(local_path(url), "rb") as f:
            return f.read()
    shown = display_url(url)
    for attempt in range(attempts):
        start = time.perf_counter()
        try:
            data = read_once(url, options)
        except (ImportError, ValueError):
            raise  # not installed, or not a URL, key or option obstore takes: trying again changes nothing
        except Exception as e:
            time.sleep(after_failure(e, shown, attempt, attempts, time.perf_counter() - start, stats, rng))
            continue
        if stats is not None:
            stats.add(requests=1, bytes=len(data), seconds=time.perf_counter() - start)
        return data
    raise AssertionError("unreachable")  # the loop returns or raises


def after_failure(
    error: BaseException,
    url: str,
    attempt: int,
    attempts: int,
    seconds: float,
    stats: StorageStats | None,
    rng: random.Random | None,
) -> float:
    """Counts a failed try at reading `url`; returns the backoff before the next, or raises when there is none.

    Args:
        error: What the try raised.
        url: The URL to name (credentials removed).
        attempt: Which try failed, from 0.
        attempts: Tries allowed.
        seconds: How long the try took.
        stats: Where the request, retry or failure is counted.
        rng: Draws the backoff jitter (made when `None`).

    Returns:
        Seconds to wait before trying again (exponential, with jitter).

    Raises:
        OSError: `named_error(error, ...)` when `error` is permanent or
            the tries are used up (a `FileNotFoundError` or
            `PermissionError` where it says so).

    Example:

    >>> after_failure(TimeoutError("slow"), "s3://b/k", 0, 6, 0.1, None, random.Random(0)) < 0.1
    True
    """
    if attempt + 1 < attempts and is_transient(error):
        if stats is not None:
            stats.add(requests=1, retries=1, seconds=seconds)
            stats.last_retry = f"{url}: {type(error).__name__}: {error}"
        rng = rng or random.Random()  # made only when needed: seeding one reads os.urandom
        return min(BACKOFF_LIMIT, BACKOFF_SECONDS * 2**attempt) * (0.5 + rng.random())
    if stats is not None:
        stats.add(requests=1, failures=1, seconds=seconds)
    raise named_error(error, url, attempt + 1) from error


def named_error(error: BaseException, url: str, tries: int) -> OSError:
    """An error of the same family as `error` whose message names `url` (and how often it was tried)."""
    detail = str(error) or type(error).__name__
    tried = f" (tried {tries} times)" if tries > 1 else ""
    status = _status(error)
    if isinstance(error, FileNotFoundError) or status == 404:
        return FileNotFoundError(f"no such object: {url}")
    if isinstance(error, PermissionError) or status in (401, 403):
        return PermissionError(detail if url in detail else f"access refused to {url} ({detail})")
    return OSError(f"cannot read {url}{tried}: {type(error).__name__}: {detail}")


# What the worker pool fetched ahead for the chunk a thread is loading, and the options loads use.
_LOCAL = threading.local()


@contextlib.contextmanager
def supplied(contents: Mapping[str, Any] | None, options: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Within the block, `open_file` serves these URLs from `contents` and reads others with `options`.

    Args:
        contents: `{url: bytes or the exception reading it raised}`, as
            `keras_sepseq.fetching` fetched them; `None` for none.
        options: Storage options for URLs not supplied.

    Example:

    >>> with supplied({"s3://b/a.npy": b"..."}):  # doctest: +SKIP
    ...     open_file("s3://b/a.npy").read()
    """
    before = getattr(_LOCAL, "contents", None), getattr(_LOCAL, "options", None)
    _LOCAL.contents, _LOCAL.options = contents, options
    try:
        yield
    finally:
        _LOCAL.contents, _LOCAL.options = before


def has_supply() -> bool:
    """Whether the calling thread is inside `supplied(...)` with contents (the worker pool fetched ahead)."""
    return getattr(_LOCAL, "contents", None) is not None


def open_file(path: str | os.PathLike) -> IO[bytes]:
    """Opens a local file or a URL for reading bytes: what decoders and custom loaders use.

    A URL's bytes come from what the worker pool fetched ahead when it
    did, else they are read now (retrying transient failures).

    Args:
        path: A local path or a URL.

    Returns:
        A binary file object; close it (or use `with`).

    Raises:
        FileNotFoundError: If the file or object does not exist.
        PermissionError: If access is refused.
        OSError: If it cannot be read.

    Example:

    >>> with open_file("s3://bucket/labels/0001.npy") as f:  # doctest: +SKIP
    ...     data = f.read()
    """
    if not is_url(path):
        return open(path, "rb")
    url = str(path)
    if protocol(url) == "file":
        return open(local_path(url), "rb")
    contents = getattr(_LOCAL, "contents", None)
    if contents is not None and url in contents:
        value = contents[url]
        if isinstance(value, BaseException):
            raise value
        return io.BytesIO(value)
    return io.BytesIO(read_url(url, getattr(_LOCAL, "options", None)))
