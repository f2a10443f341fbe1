"""Reading S3 objects (and http(s):// URLs) through libcurl (pycurl) when it is installed: one I/O thread per store.

On this project's 2-core machine a GET through s3fs costs 1.1-1.2 ms of CPU
in the reading process (botocore builds, signs and parses each request in
Python), through obstore (Rust's `object_store`, one blocked thread per
read) 0.21-0.29 ms, and through libcurl's multi interface 0.06-0.09 ms
(0.12-0.15 ms with `keras_sepseq.fetching`'s retries and counting):
libcurl signs (AWS Signature Version 4), sends and parses in C, and one
thread drives a hundred reads in flight instead of a hundred threads
taking turns at the GIL. The first epoch from S3 is CPU-bound on small
machines, so the client's CPU decides its speed (docs/benchmarks.md).

libcurl reads only what it is told: keys from `storage_options` or the
`AWS_*` environment variables, not `~/.aws` profiles or botocore's other
sources. So it is used for an `s3://` URL only when

- `pycurl` imports (`pip install "keras-sepseq[s3]"` installs it),
- `KERAS_SEPSEQ_S3_CLIENT` is not `s3fs`,
- the platform has `select.poll` (Linux, macOS; not Windows),
- every key of `storage_options` translates (`key`, `secret`, `token`,
  `anon`, `endpoint_url`, `client_kwargs={"endpoint_url", "region_name"}`),
  and
- credentials are in the options, in `AWS_ACCESS_KEY_ID` and
  `AWS_SECRET_ACCESS_KEY`, or `anon=True`.

Otherwise s3fs reads, as it lists buckets in every case. A store that
answers in a way s3fs could handle (a redirect to another region, a
request it shapes otherwise) is handed to s3fs for good, with one warning;
404 and 403 are answers, and go to the error policy as from s3fs.

`http://` and `https://` URLs are read the same way, one reader per web
server, when no `storage_options` are given (`http_reader`): 0.19-0.27 ms
of CPU per read against 0.63-0.86 ms through fsspec's HTTP file system.

Reads are tried once here (`keras_sepseq.fetching` and `read_url` retry
transient failures and count them). Failures become the exceptions s3fs
raises (`FileNotFoundError`, `PermissionError`, `ConnectionError`, or an
`OSError` carrying the HTTP `status`), with a message of one line that
names the URL and never the credentials.

Example:

>>> reader = s3_reader("s3://bucket/a.png", {"anon": True})  # doctest: +SKIP
>>> reader("s3://bucket/a.png")  # doctest: +SKIP
b'\\x89PNG...'
"""

from __future__ import annotations

import collections
import heapq
import io
import math
import os
import select
import sys
import threading
import time
import urllib.parse
import warnings
from collections.abc import Mapping
from typing import Any

from keras_sepseq.object_read import ObjectRead
from keras_sepseq.object_requests import (
    ObjectStoreError,
    UseFsspec,
    answer_error,
    ca_bundle,
    connection_error,
    display_url,
    object_url,
    translate,
)

__all__ = ["CurlReader", "ObjectStoreError", "UseFsspec", "curl_reader", "http_reader", "s3_reader"]

CLIENT_VARIABLE = "KERAS_SEPSEQ_S3_CLIENT"
"""Set to `s3fs` to read every `s3://` URL through s3fs."""

HTTP_CLIENT_VARIABLE = "KERAS_SEPSEQ_HTTP_CLIENT"
"""Set to `fsspec` to read every `http(s)://` URL through fsspec's HTTP file system (aiohttp)."""

CONNECT_TIMEOUT = 30
"""Seconds to open a connection before the read fails (transiently)."""

STALL_SECONDS = 60
"""A read that receives nothing for this long fails (transiently); large objects may take longer in all."""

BLOCKING_IN_FLIGHT = 16
"""Reads on the wire at once, at least, once threads read objects one at a time (`read_url`)."""

_USER_AGENT = "keras-sepseq (libcurl)"

HTTP_SETTINGS: Mapping[str, Any] = {"key": None, "secret": None, "token": None, "anon": True, "endpoint": "",
                                     "region": "", "direct": True}  # fmt: skip
"""A web server's reader: no signing, URLs requested as they are."""


_READERS: dict[tuple, CurlReader | None] = {}
_ORPHANS: list[Any] = []
_LOCK = threading.Lock()


def _forget_after_fork() -> None:
    # A forked child must not free its parent's readers: cleaning up libcurl's connections there could close
    # a TLS session the parent still uses. They are kept, unused, and the child makes its own.
    _ORPHANS.append(dict(_READERS))
    _READERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def s3_reader(url: str, options: Mapping[str, Any] | None) -> CurlReader | None:
    """The reader of `s3://` URLs of `url`'s bucket through libcurl, or `None` where s3fs should read.

    Args:
        url: An `s3://` (or `s3a://`) URL.
        options: The fsspec storage options, as the user gave them.

    Returns:
        A `CurlReader` (shared by every caller with the same bucket and
        options in this process), or `None` (see the module docstring).

    Example:

    >>> s3_reader("s3://bucket/a.png", {"profile": "work"}) is None  # a profile: s3fs reads
    True
    """
    if os.environ.get(CLIENT_VARIABLE, "").strip().lower() == "s3fs" or not hasattr(select, "poll"):
        return None  # asked for, or no poll() to wait on sockets with (Windows): s3fs reads
    scheme, _, rest = url.partition("://")
    if scheme not in ("s3", "s3a") or not rest:
        return None
    bucket = rest.split("/", 1)[0]
    return _shared((bucket, repr(sorted((options or {}).items(), key=lambda kv: kv[0]))), bucket, options or {})


def _shared(key: tuple, bucket: str, options: Mapping[str, Any] | None) -> CurlReader | None:
    """The reader cached under `key` in this process, made on first use (`_make_reader(bucket, options)`)."""
    with _LOCK:
        if key not in _READERS:
            _READERS[key] = _make_reader(bucket, options)
        return _READERS[key]


def _pycurl() -> Any:
    """Imports pycurl so that it calls its own libcurl, not TensorFlow's; raises `ImportError` if it cannot.

    TensorFlow's library exports the symbols of the libcurl built into it
    (8.11 in TensorFlow 2.21) to everything loaded after it, so a plain
    `import pycurl` after `import tensorflow` binds pycurl's extension to
    that libcurl and fails ("link-time version (8.11.0) is older than
    compile-time version"). Loading the extension with `RTLD_DEEPBIND`
    (Linux) makes it look up symbols in its own libraries first; the flags
    are put back at once.
    """
    if "pycurl" in sys.modules:
        return sys.modules["pycurl"]
    flags = sys.getdlopenflags() if hasattr(sys, "getdlopenflags") else None
    deep = getattr(os, "RTLD_DEEPBIND", 0)
    with _IMPORT_LOCK:
        try:
            if flags is not None and deep:
                sys.setdlopenflags(flags | deep)
            import pycurl
        finally:
            if flags is not None and deep:
                sys.setdlopenflags(flags)
    return pycurl


_IMPORT_LOCK = threading.Lock()


def http_reader(url: str, options: Mapping[str, Any] | None) -> CurlReader | None:
    """The reader of `http(s)://` URLs of `url`'s host through libcurl, or `None` where fsspec should read.

    fsspec's HTTP file system (aiohttp) cost 0.63-0.86 ms of CPU per read
    of a 90 KB photo on this project's machine, libcurl 0.19-0.27 ms
    (docs/benchmarks.md). libcurl
    reads only plain GETs: with any `storage_options` (headers, `auth`,
    `client_kwargs`...), with `KERAS_SEPSEQ_HTTP_CLIENT=fsspec`, or
    without `select.poll`, fsspec reads. Redirects are followed (to
    http(s) only); compressed answers are decoded, as aiohttp does.

    Args:
        url: An `http://` or `https://` URL.
        options: The fsspec storage options, as the user gave them.

    Returns:
        A `CurlReader` shared by every caller reading from the same scheme,
        host and port in this process, or `None`.

    Example:

    >>> http_reader("https://example.com/a.png", {"headers": {"Authorization": "..."}}) is None
    True
    """
    if os.environ.get(HTTP_CLIENT_VARIABLE, "").strip().lower() == "fsspec" or not hasattr(select, "poll"):
        return None
    parts = urllib.parse.urlsplit(url)
    if options or parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    origin = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"  # never a user or password
    return _shared(("http", origin), origin, None)


def curl_reader(url: str, options: Mapping[str, Any] | None) -> CurlReader | None:
    """The libcurl reader of `url` (`s3_reader` or `http_reader`), or `None` where fsspec should read.

    Args:
        url: Any URL.
        options: The fsspec storage options, as the user gave them.

    Returns:
        A `CurlReader`, or `None` for other schemes and where fsspec reads.

    Example:

    >>> curl_reader("memory://doc/a.bin", None) is None
    True
    """
    scheme = url.partition("://")[0].lower()
    if scheme in ("s3", "s3a"):
        return s3_reader(url, options)
    if scheme in ("http", "https"):
        return http_reader(url, options)
    return None


def _make_reader(bucket: str, options: Mapping[str, Any] | None) -> CurlReader | None:
    """A reader of `bucket` with S3 `options`, or of the origin `bucket` (`scheme://host`) with `None`."""
    try:
        _pycurl()
    except ImportError:
        return None
    settings = translate(options) if options is not None else HTTP_SETTINGS
    return None if settings is None else CurlReader(bucket, settings)


class CurlReader:
    """Reads the objects of one bucket, or of one web server, through libcurl's multi interface, on one I/O thread.

    Calls may come from any thread: `submit` queues a read and returns its
    future at once; the I/O thread keeps up to `in_flight` reads on the
    wire and finishes the futures (on itself: callbacks must be quick).

    Args:
        bucket: The bucket's name; for a web server (`settings` is
            `HTTP_SETTINGS`), its `scheme://host[:port]`.
        settings: What `translate` made of the storage options.
        in_flight: Reads on the wire at most (`allow` raises it; a
            blocking read raises it to `BLOCKING_IN_FLIGHT`).

    Example:

    >>> reader = s3_reader("s3://data/a.bin", options)  # doctest: +SKIP
    >>> reader.submit("s3://data/a.bin").result()  # doctest: +SKIP
    b'...'
    """

    def __init__(self, bucket: str, settings: Mapping[str, Any], in_flight: int = 1) -> None:
        self.bucket = bucket
        self.direct = bool(settings.get("direct"))  # a web server: URLs are requested as they are
        self.store = bucket if self.direct else f"s3://{bucket}"  # as messages name it
        self.fallback = "fsspec" if self.direct else "s3fs"
        self.usable = True
        self.in_flight = max(1, int(in_flight))
        self._settings = dict(settings)
        self._lock = threading.Lock()
        self._queue: collections.deque[ObjectRead] = collections.deque()
        self._later: list[tuple[float, int, ObjectRead]] = []  # (when, order, read): reads tried again later
        self._order = 0
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._waking = False

    def __repr__(self) -> str:
        return f"CurlReader(bucket={self.bucket!r}, in_flight={self.in_flight})"  # never the credentials

    def __reduce__(self):
        raise TypeError("a CurlReader holds credentials and a thread; it is not sent to other processes")

    def allow(self, in_flight: int) -> None:
        """Lets at least `in_flight` reads be on the wire at once.

        Args:
            in_flight: Reads in flight the caller wants.
        """
        self.in_flight = max(self.in_flight, int(in_flight))

    def __call__(self, url: str) -> bytes:
        """Reads `url` once, waiting for it.

        Args:
            url: A URL of this reader's bucket (`s3://`) or web server.

        Returns:
            The object's bytes.

        Raises:
            FileNotFoundError: If there is no such object.
            PermissionError: If access is refused.
            ConnectionError: If the connection failed or dropped.
            ObjectStoreError: On another HTTP error (with `status`).
            UseFsspec: If s3fs (or fsspec, for a web server) should read this store.
        """
        self.allow(BLOCKING_IN_FLIGHT)
        return self.submit(url).result()

    def submit(self, url: str, owner: Any = None) -> ObjectRead:
        """Queues a read of `url`; the returned `ObjectRead` holds its bytes or its exception.

        Args:
            url: A URL of this reader's bucket (`s3://`) or web server.
            owner: Who retries and counts the read (a
                `keras_sepseq.fetching.Fetcher`: its `_counted`,
                `_after_failure` and `_read_elsewhere`), or `None` for one
                try whose failure is the read's exception.

        Returns:
            The read; cancelling it before it starts drops it.
        """
        read = ObjectRead(url, owner)
        self._enqueue(read, 0.0)
        return read

    def cancel_owned(self, owner: Any) -> None:
        """Cancels the reads of `owner` that are not on the wire (its sequence closed)."""
        with self._lock:
            waiting = [r for r in self._queue if r.owner is owner] + [r for *_, r in self._later if r.owner is owner]
        for read in waiting:
            read.cancel()

    def _enqueue(self, read: ObjectRead, delay: float) -> None:
        wake = refused = False
        with self._lock:
            if not self.usable:
                refused = True
            else:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="keras_sepseq_curl", daemon=True)
                    self._thread.start()
                if delay > 0:
                    self._order += 1
                    heapq.heappush(self._later, (time.monotonic() + delay, self._order, read))
                else:
                    self._queue.append(read)
                wake, self._waking = not self._waking, True
        if refused:
            self._give_up(read, UseFsspec(read.url))
            return
        if wake:
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already

    # The I/O thread: everything below runs on it alone (libcurl's handles are not shared between threads).

    def _run(self) -> None:
        pycurl = _pycurl()

        multi = pycurl.CurlMulti()
        # epoll (Linux) or poll, directly: the selectors module's keys cost a few microseconds per event and per
        # (un)registration, and libcurl registers a connection's socket afresh for every transfer.
        poller = select.epoll() if hasattr(select, "epoll") else select.poll()
        poller.register(self._wake_r, select.POLLIN)
        watched: dict[int, int] = {}

        def on_socket(event: int, fd: int, _multi: Any, _data: Any) -> None:
            mask = (select.POLLIN if event & pycurl.POLL_IN else 0) | (select.POLLOUT if event & pycurl.POLL_OUT else 0)
            if event == pycurl.POLL_REMOVE or not mask:  # not watched (POLL_NONE: libcurl waits for nothing yet)
                if watched.pop(fd, None) is not None:
                    try:
                        poller.unregister(fd)
                    except (KeyError, ValueError, OSError):
                        pass
                return
            if watched.get(fd) == mask:
                return
            try:
                if fd in watched:
                    poller.modify(fd, mask)
                else:
                    poller.register(fd, mask)
            except (KeyError, ValueError, OSError):  # a number closed and reused unseen: watch it afresh
                try:
                    poller.unregister(fd)
                except (KeyError, ValueError, OSError):
                    pass
                poller.register(fd, mask)
            watched[fd] = mask

        # No timer callback: the loop asks libcurl for its next deadline (`multi.timeout()`) once per turn,
        # instead of libcurl calling into Python (and taking the GIL) about twice per read to move it.
        multi.setopt(pycurl.M_SOCKETFUNCTION, on_socket)
        free: list[Any] = []
        active: dict[Any, tuple[ObjectRead, io.BytesIO]] = {}
        try:
            self._loop(multi, poller, free, active)
        except BaseException as e:  # noqa: BLE001 (nothing may wait forever: every read goes to s3fs instead)
            self._stopped(f"{type(e).__name__}: {e}", [read for read, _ in active.values()])

    def _stopped(self, why: str, active: list[ObjectRead]) -> None:
        """The I/O thread failed: every read in flight or queued, and every later one, goes to s3fs."""
        with self._lock:
            self.usable = False
        warnings.warn(f"keras_sepseq: the libcurl reader of {self.store} stopped ({why}); "
                      f"reading through {self.fallback} from now on.", stacklevel=2)  # fmt: skip
        with self._lock:
            waiting = list(self._queue) + [r for *_, r in self._later]
            self._queue.clear()
            self._later.clear()
        for read in active + waiting:
            self._give_up(read, UseFsspec(why))

    def _loop(self, multi: Any, poller: Any, free: list, active: dict) -> None:
        pycurl = _pycurl()
        wake, seconds = self._wake_r, isinstance(poller, getattr(select, "epoll", ()))  # epoll waits in seconds
        readable, writable = select.POLLIN | select.POLLERR | select.POLLHUP, select.POLLOUT | select.POLLERR
        socket_in, socket_out, socket_action = pycurl.CSELECT_IN, pycurl.CSELECT_OUT, multi.socket_action

        while True:
            self._finish(multi, free, active)  # first: a finished read frees a place for a queued one
            self._start(multi, free, active)
            due = multi.timeout()  # milliseconds to libcurl's next deadline; -1: none
            if due == 0:
                socket_action(pycurl.SOCKET_TIMEOUT, 0)
                continue
            timeout = 1.0 if due < 0 else min(1.0, due / 1000)
            if self._later:
                timeout = min(timeout, self._later[0][0] - time.monotonic())
            timeout = max(0.0, timeout)
            for fd, event in poller.poll(timeout if seconds else math.ceil(timeout * 1000)):
                if fd == wake:
                    self._drain_wakeups()
                    continue
                socket_action(fd, (socket_in if event & readable else 0) | (socket_out if event & writable else 0))

    def _drain_wakeups(self) -> None:
        # Read first, then let `submit` wake the loop again: the other way round, a wake-up written between the
        # two would be read here while `_waking` stayed set, and the next read queued would wait for the select's
        # timeout (seen: a second, now and then, before a first batch).
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            self._waking = False

    def _start(self, multi: Any, free: list[Any], active: dict) -> None:
        """Puts queued reads (and retries whose time came) on the wire, up to `in_flight`."""
        now = time.monotonic()
        while len(active) < self.in_flight:
            with self._lock:
                if self._later and self._later[0][0] <= now:
                    read = heapq.heappop(self._later)[2]
                elif self._queue:
                    read = self._queue.popleft()
                else:
                    return
            if not read._begin():
                continue  # cancelled while it waited: the sequence closed
            if not self.usable:
                self._give_up(read, UseFsspec(read.url))
                continue
            read.started = time.perf_counter()
            handle = free.pop() if free else self._new_handle()
            buffer = io.BytesIO()
            if self.direct:
                handle.setopt(handle.URL, read.url)
            else:
                path = read.url.partition("://")[2].split("/", 1)
                handle.setopt(handle.URL, object_url(self._settings, self.bucket, path[1] if len(path) > 1 else ""))
            handle.setopt(handle.WRITEDATA, buffer)
            active[handle] = (read, buffer)
            multi.add_handle(handle)

    def _new_handle(self) -> Any:
        pycurl = _pycurl()

        handle = pycurl.Curl()
        handle.setopt(pycurl.NOSIGNAL, 1)
        handle.setopt(pycurl.USERAGENT, _USER_AGENT)  # pycurl's own names every library it links: 150 bytes
        handle.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
        handle.setopt(pycurl.CONNECTTIMEOUT, CONNECT_TIMEOUT)
        handle.setopt(pycurl.LOW_SPEED_LIMIT, 1)
        handle.setopt(pycurl.LOW_SPEED_TIME, STALL_SECONDS)
        bundle = ca_bundle()
        if bundle:
            handle.setopt(pycurl.CAINFO, bundle)
        settings = self._settings
        if self.direct:  # a web server: follow its redirects and decode what it compresses, as aiohttp does
            handle.setopt(pycurl.FOLLOWLOCATION, 1)
            handle.setopt(pycurl.MAXREDIRS, 5)
            handle.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTP | pycurl.PROTO_HTTPS)
            handle.setopt(pycurl.ACCEPT_ENCODING, "")
        if settings["key"]:
            handle.setopt(pycurl.AWS_SIGV4, f"aws:amz:{settings['region']}:s3")
            handle.setopt(pycurl.USERNAME, str(settings["key"]))
            handle.setopt(pycurl.PASSWORD, str(settings["secret"]))
            if settings["token"]:
                handle.setopt(pycurl.HTTPHEADER, [f"x-amz-security-token: {settings['token']}"])
        return handle

    def _finish(self, multi: Any, free: list[Any], active: dict) -> None:
        """Ends the reads libcurl is done with: their bytes, a retry, or their exception."""
        while True:
            queued, done, failed = multi.info_read()
            for handle in done:
                read, buffer = active.pop(handle)
                multi.remove_handle(handle)
                status = int(handle.getinfo(handle.RESPONSE_CODE))
                free.append(handle)
                if status == 200:
                    self._complete(read, buffer.getvalue(), None)
                else:
                    error = answer_error(status, buffer.getvalue(), display_url(read.url), direct=self.direct)
                    self._complete(read, None, error)
            for handle, code, message in failed:
                read, _ = active.pop(handle)
                multi.remove_handle(handle)
                free.append(handle)
                self._complete(read, None, connection_error(int(code), str(message), display_url(read.url)))
            if not queued:
                return

    def _complete(self, read: ObjectRead, data: bytes | None, error: Exception | None) -> None:
        """A try of `read` ended: counted and finished, queued again after a backoff, or handed to s3fs."""
        owner, seconds = read.owner, time.perf_counter() - read.started
        if error is None:
            if owner is not None:
                owner._counted(read, len(data or b""), seconds)
            read._finish(data, None)
        elif isinstance(error, UseFsspec):
            self._give_up(read, error)
        elif owner is None:
            read._finish(None, error)
        else:
            try:
                delay = owner._after_failure(read, error, seconds)
            except OSError as final:
                read._finish(None, final)
            else:
                read._again()
                self._enqueue(read, delay)

    def _give_up(self, read: ObjectRead, error: UseFsspec) -> None:
        """This store is s3fs's from now on (one warning); an owned read is read through it, else fails so."""
        warn = False
        with self._lock:
            if self.usable:
                self.usable, warn = False, True
        if warn:
            warnings.warn(
                f"keras_sepseq: libcurl could not read {self.store} ({error}); reading it through {self.fallback} "
                "from now on.",
                stacklevel=2,
            )
        if read.owner is not None:
            read.owner._read_elsewhere(read)
        else:
            read._finish(None, error)
