"""Files in object storage: URLs (`s3://`, `gs://`, `https://`, `memory://`...) read through fsspec.

Everything that takes a path takes a URL too. This module is the one place
that tells them apart and reads them:

- `open_file(path)` opens a local file or a URL for reading; the decoders
  (`decode_image`, `load_npy`, masks) and custom loaders use it;
- `read_url` fetches an object's bytes (S3 objects through libcurl where
  it can, see `keras_sepseq.object_client`), retrying transient failures
  (timeouts, dropped connections, HTTP 429 and 5xx) with backoff and
  sending permanent ones (403, 404) on at once, as local files do;
- listing a bucket and reading manifests are `keras_sepseq.listing`'s job;
- `public_options` strips credentials from `storage_options` before they
  are pickled or shown, and `display_url` from a URL.

fsspec and the file-system packages (s3fs, gcsfs, aiohttp) are optional:
a missing one raises an `ImportError` naming the extra to install. Reads
in flight, separate from decoding, are `keras_sepseq.fetching`'s job.

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
from collections.abc import Iterator, Mapping
from typing import IO, Any

from keras_sepseq.object_client import UseFsspec, curl_reader
from keras_sepseq.object_requests import display_url, is_url, protocol

__all__ = [
    "StorageStats",
    "after_failure",
    "display_url",
    "filesystem",
    "has_supply",
    "is_transient",
    "is_url",
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

EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http"}
"""The keras-sepseq extra that installs each protocol's file system."""

_SECRET = re.compile(r"key|secret|token|password|passwd|credential|session|signature|auth", re.IGNORECASE)


def public_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """`storage_options` without credentials: every entry whose name looks like a key, secret or token is dropped.

    Used for what is pickled to process workers, shown in `repr` or kept
    in state; the caller's copy keeps its credentials.

    Args:
        options: fsspec storage options, possibly nested.

    Returns:
        A copy without the secret entries, at every level.

    Example:

    >>> public_options({"key": "AKIA...", "secret": "x", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}})
    {'client_kwargs': {'endpoint_url': 'http://127.0.0.1:9000'}}
    """
    if not options:
        return {}
    return {
        name: public_options(value) if isinstance(value, Mapping) else value
        for name, value in options.items()
        if not _SECRET.search(str(name))
    }


def _missing_package(url: str, error: ImportError) -> ImportError:
    extra = EXTRAS.get(protocol(url))
    hint = f"pip install 'keras-sepseq[{extra}]'" if extra else "install the fsspec package for this protocol"
    return ImportError(f"reading {protocol(url)}:// URLs needs a package that is not installed ({error}): {hint}")


_FILESYSTEMS: dict[tuple, Any] = {}
_FILESYSTEMS_LOCK = threading.Lock()


def filesystem(url: str, options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec file system for `url` and the path within it, one instance per process, protocol and options.

    Args:
        url: A URL.
        options: fsspec storage options (credentials, `endpoint_url`...).

    Returns:
        `(filesystem, path)`.

    Raises:
        ImportError: If fsspec or the protocol's package is missing; names
            the extra to install.
        ValueError: If fsspec does not know the protocol.

    Example:

    >>> fs, path = filesystem("memory://bucket/a.png")
    >>> path
    '/bucket/a.png'
    """
    try:
        import fsspec
    except ImportError as e:
        raise _missing_package(url, e) from None
    merged = _defaults(url, options)
    # Per process: an instance made before a fork() is tied to its parent's event loop ("not fork-safe").
    key = (os.getpid(), protocol(url), repr(sorted(merged.items(), key=lambda kv: kv[0])))
    with _FILESYSTEMS_LOCK:
        fs = _FILESYSTEMS.get(key)
    if fs is None:
        try:
            # An instance of our own (not fsspec's shared one), so that setting its retries touches no one else's.
            fs, _ = fsspec.core.url_to_fs(url, skip_instance_cache=True, **merged)
            if protocol(url) in ("s3", "s3a") and "retries" not in (options or {}):
                fs.retries = 1  # s3fs's own retry loop: read_url retries, and counts
        except ImportError as e:
            raise _missing_package(url, e) from None
        except ValueError as e:
            if "protocol" in str(e).lower():
                raise ValueError(
                    f"no fsspec file system reads {protocol(url)}:// URLs. Received: {display_url(url)!r}"
                ) from e
            raise
        with _FILESYSTEMS_LOCK:
            fs = _FILESYSTEMS.setdefault(key, fs)
    return fs, fs._strip_protocol(url)


def _defaults(url: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """`options` with keras_sepseq's defaults for the protocol under them.

    For S3, the client does not retry on its own (`read_url` does, and
    counts): botocore's and s3fs's silent retries would hide the failures
    the stats report, and stack their waits on top of ours. Connections
    are pooled for many reads in flight, and an object is one GET.
    """
    merged = dict(options or {})
    if protocol(url) in ("s3", "s3a"):
        config = dict(merged.get("config_kwargs") or {})
        config.setdefault("retries", {"max_attempts": 0})
        config.setdefault("max_pool_connections", 128)
        merged["config_kwargs"] = config
        # One GET per object: s3fs would first ask for the size (a HEAD, one more round trip) to split large
        # objects into concurrent range reads; per-sample files are small, and many are read at once anyway.
        merged.setdefault("max_concurrency", 1)
    return merged


class StorageStats:
    """Counts of what reading objects cost: requests, retries, bytes, failures. Thread-safe.

    Attributes:
        requests: Reads tried, retries included.
        retries: Reads tried again after a transient failure.
        failures: Objects that could not be read (after retries, or a
            permanent error).
        bytes: Bytes read.
        seconds: Time spent in reads, summed over the reads in flight.

    Example:

    >>> stats = StorageStats()
    >>> stats.as_dict()["retries"]
    0
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = self.retries = self.failures = self.bytes = 0
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
        response = getattr(current, "response", None)
        if isinstance(response, Mapping):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, int):
                return status
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
    names = {cls.__name__ for cls in type(error).__mro__}
    if "HTTPClientError" in names:  # botocore's connection errors and timeouts (not missing credentials)
        return True
    if type(error).__module__.split(".")[0] in ("aiohttp", "urllib3", "requests", "http"):
        return True  # the connection dropped or timed out (answers with a status are judged above)
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
        url: The object's URL.
        options: fsspec storage options.
        stats: Where requests, retries and failures are counted.
        attempts: Tries before giving up on a transient failure.
        rng: Draws the backoff jitter (a private generator; the global
            `random` state is never used).

    Returns:
        The object's bytes.

    Raises:
        FileNotFoundError: If the object does not exist (the URL is named).
        PermissionError: If access is refused.
        OSError: If transient failures outlast `attempts` tries; the
            message says how many.

    Example:

    >>> import fsspec
    >>> fsspec.filesystem("memory").pipe("/doc/a.bin", b"abc")
    >>> read_url("memory://doc/a.bin")
    b'abc'
    """
    fast = curl_reader(url, options)
    fs, path = (None, "") if fast is not None else filesystem(url, options)
    shown = display_url(url)
    for attempt in range(attempts):
        start = time.perf_counter()
        try:
            if fast is not None:
                try:
                    data = fast(url)
                except UseFsspec:  # libcurl cannot read this store as s3fs would: s3fs reads, in this attempt
                    fast = None
            if fast is None:
                if fs is None:
                    fs, path = filesystem(url, options)
                data = fs.cat_file(path)
        except ImportError:
            raise  # libcurl handed the store to s3fs, which is not installed: the message names the extra
        except Exception as e:
            time.sleep(after_failure(e, shown, attempt, attempts, time.perf_counter() - start, stats, rng))
            continue
        if stats is not None:
            stats.add(requests=1, bytes=len(data), seconds=time.perf_counter() - start)
        return bytes(data)
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
    contents = getattr(_LOCAL, "contents", None)
    if contents is not None and url in contents:
        value = contents[url]
        if isinstance(value, BaseException):
            raise value
        return io.BytesIO(value)
    return io.BytesIO(read_url(url, getattr(_LOCAL, "options", None)))
