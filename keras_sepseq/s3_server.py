"""An S3-compatible server on 127.0.0.1, for tests and `bench`: moto's server behind a proxy that adds latency and failures.

Object storage is tested against a real server and the real client (obstore
over HTTP), not a mock. `LoopbackS3` starts, in a child process (so that
serving requests does not compete for the caller's GIL):

- moto's S3 server (`moto[server]`, from the package registry) on a free
  loopback port, and
- a small proxy in front of it that waits `latency` seconds before each
  request, fails a share `fail` of object reads (half with HTTP 503, half
  by closing the connection), refuses chosen keys with 403, and counts
  requests by kind (object reads, listings, heads, writes). An object read
  again, unchanged, gets moto's earlier answer from the proxy: moto costs
  a few milliseconds of CPU per request, which on a small machine would
  measure moto rather than the client. Writes and listings go to moto.

With `tls=True` the proxy serves HTTPS, with a certificate for 127.0.0.1
made for the server (`ca_file`, the one clients must trust).

Only loopback addresses are used; the child ends with the `with` block,
or when the process that started it exits.

Example:

>>> with LoopbackS3(latency=0.05) as server:  # doctest: +SKIP
...     server.upload({"photos/0001.jpg": data})
...     seq = SeparatedSequence(urls, labels, storage_options=server.storage_options)
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import ipaddress
import json
import os
import random
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from typing import Any

__all__ = ["LoopbackS3"]

CREDENTIALS = {"key": "testing", "secret": "testing"}
"""moto accepts any credentials; these are dummies, never real ones."""

REGION = "us-east-1"
_CONTROL = "/__keras_sepseq__"
_HEAD_LIMIT = 1 << 20
_XML = {"Content-Type": "application/xml"}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class LoopbackS3:
    """An S3 server on 127.0.0.1 with a latency and failure-injecting proxy, in a child process.

    Args:
        latency: Seconds added to every request through the proxy.
        fail: Share of object reads (GET of a key) that fail: half with a
            503 answer, half with the connection closed unanswered.
        seed: Seeds which requests fail (the proxy's own generator).
        start_timeout: Seconds to wait for the server to come up.
        tls: Serve the proxy over HTTPS, with a certificate for 127.0.0.1
            made for this server (needs `cryptography`, which moto needs);
            clients trust it through `ca_file` (`AWS_CA_BUNDLE=ca_file`).

    Raises:
        ImportError: If `moto[server]` is not installed (`pip install
            'keras-sepseq[test]'`).
        RuntimeError: If the server does not start within `start_timeout`.

    Example:

    >>> with LoopbackS3() as server:  # doctest: +SKIP
    ...     server.create_bucket("data")
    ...     server.stats()["get"]
    0
    """

    def __init__(
        self, *, latency: float = 0.0, fail: float = 0.0, seed: int = 0, start_timeout: float = 60.0, tls: bool = False
    ) -> None:
        try:
            import moto  # noqa: F401
        except ImportError as e:
            raise ImportError(f"LoopbackS3 needs moto's server ({e}): pip install 'keras-sepseq[test]'") from None
        self.latency, self.fail, self.seed, self.start_timeout = float(latency), float(fail), int(seed), start_timeout
        self._process: subprocess.Popen | None = None
        self.endpoint = self.direct_endpoint = ""
        self.tls = bool(tls)
        self.ca_file = ""
        """With `tls=True`: the certificate to trust (PEM), removed by `stop`."""
        self._folder: str | None = None

    def __enter__(self) -> LoopbackS3:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        """Starts the child process and waits until both servers answer."""
        command = [sys.executable, "-m", "keras_sepseq.s3_server", str(self.latency), str(self.fail), str(self.seed)]
        if self.tls:
            self._folder = tempfile.mkdtemp(prefix="keras_sepseq_s3_tls_")
            self.ca_file, cert_file, key_file = _self_signed(self._folder)
            command += [cert_file, key_file]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        stdout = self._process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], self.start_timeout)
        line = stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError(f"the loopback S3 server did not start within {self.start_timeout} s")
        ports = json.loads(line)
        self.endpoint = f"{'https' if self.tls else 'http'}://127.0.0.1:{ports['proxy']}"
        self.direct_endpoint = f"http://127.0.0.1:{ports['moto']}"

    def stop(self) -> None:
        """Stops the child process (closing its stdin; killed after 10 s). Safe to call twice."""
        process, self._process = self._process, None
        folder, self._folder = self._folder, None
        if folder:
            shutil.rmtree(folder, ignore_errors=True)
        if process is None:
            return
        try:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        finally:
            if process.stdout is not None:
                process.stdout.close()

    @property
    def storage_options(self) -> dict[str, Any]:
        """Storage options that read through the proxy (latency and failures applied)."""
        return self.options(self.endpoint)

    @property
    def direct_options(self) -> dict[str, Any]:
        """Storage options that reach moto directly (for uploads)."""
        return self.options(self.direct_endpoint)

    @staticmethod
    def options(endpoint: str) -> dict[str, Any]:
        """Storage options (fsspec-style) for an S3 endpoint, with the dummy credentials."""
        return {**CREDENTIALS, "client_kwargs": {"endpoint_url": endpoint, "region_name": REGION}}

    def create_bucket(self, name: str) -> None:
        """Creates bucket `name` (directly, not through the proxy)."""
        self._control("bucket", {"name": name})

    def upload(self, bucket: str, objects: dict[str, bytes]) -> None:
        """Writes `{key: bytes}` into `bucket` directly, many at once; creates the bucket if needed."""
        import obstore
        from obstore.store import S3Store

        self.create_bucket(bucket)
        store = S3Store(
            bucket, endpoint=self.direct_endpoint, access_key_id=CREDENTIALS["key"],
            secret_access_key=CREDENTIALS["secret"], region=REGION, client_options={"allow_http": True},
        )  # fmt: skip

        async def put_all() -> None:
            limit = asyncio.Semaphore(32)

            async def put(key: str, data: bytes) -> None:
                async with limit:
                    await obstore.put_async(store, key, data)

            await asyncio.gather(*(put(key, data) for key, data in objects.items()))

        asyncio.run(put_all())

    def fill(self, bucket: str, prefix: str, count: int) -> None:
        """Writes `count` one-byte objects `prefix0000000.bin`, ... into `bucket` (created if needed), fast."""
        self.create_bucket(bucket)
        self._control("fill", {"bucket": bucket, "prefix": prefix, "count": count})

    def stats(self) -> dict[str, Any]:
        """Requests the proxy has seen, by kind: `get`, `list`, `head`, `put`, `other`, `failed`, `requests`;
        `keys`: `{access key id: requests it signed}` (`"(unsigned)"` for anonymous ones); and `buckets`:
        `{bucket: requests whose path names it}`."""
        return self._control("stats")

    def cpu_seconds(self) -> float:
        """CPU seconds the server's process has used so far (from `/proc`; 0 where there is none)."""
        process = self._process
        try:
            with open(f"/proc/{process.pid if process else 0}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0.0

    def reset(self) -> None:
        """Sets the proxy's request counts back to zero."""
        self._control("reset")

    def configure(
        self,
        *,
        latency: float | None = None,
        fail: float | None = None,
        deny: list[str] | None = None,
        regions: dict[str, str] | None = None,
    ) -> None:
        """Changes the latency, the failure share, the `bucket/key` prefixes refused with 403, or the buckets that
        live in another region, from now on.

        Args:
            latency: Seconds added to every request.
            fail: Share of object reads that fail.
            deny: `bucket/key` prefixes answered with 403.
            regions: `{bucket: region}`: a request to such a bucket signed for any other region is answered
                as AWS answers it, 301 PermanentRedirect with the bucket's region in `x-amz-bucket-region`.
        """
        self._control("configure", {"latency": latency, "fail": fail, "deny": deny, "regions": regions})

    def _control(self, what: str, body: dict | None = None) -> Any:
        address = self.endpoint.split("://", 1)[1]
        connection = (
            http.client.HTTPSConnection(address, timeout=60, context=ssl.create_default_context(cafile=self.ca_file))
            if self.tls
            else http.client.HTTPConnection(address, timeout=60)
        )
        try:
            connection.request("POST", f"{_CONTROL}/{what}", body=json.dumps(body or {}))
            answer = connection.getresponse()
            data = answer.read()
            if answer.status != 200:
                raise RuntimeError(f"the loopback S3 proxy refused {what}: {data[:200]!r}")
            return json.loads(data)
        finally:
            connection.close()


class _Proxy:
    """The proxy: one asyncio event loop on its own thread, each connection's requests answered in order.

    A thread per connection (`http.server`'s `ThreadingHTTPServer`, as this proxy was first written) spent
    0.18-0.22 ms of CPU per request with 50 ms of latency, on the two cores the client under measurement
    runs on; coroutines on asyncio's streams 0.078-0.082 (0.044-0.046 of it in Python); protocol callbacks
    (`_Connection`), which answer a kept read with one timer and one write, 0.066-0.072 (0.032-0.038 in
    Python; the rest is the kernel's loopback TCP). Requests that go on to moto (writes, listings, first
    reads of an object) wait for it on a thread of the loop's executor, with a blocking client.
    """

    def __init__(
        self, upstream: int, latency: float, fail: float, seed: int, tls: ssl.SSLContext | None = None
    ) -> None:
        self.upstream, self.latency, self.fail, self.tls = upstream, latency, fail, tls
        self.rng = random.Random(seed)
        self.denied: tuple[str, ...] = ()
        self.regions: dict[str, str] = {}
        self.counts: Counter = Counter()
        self.keys: Counter = Counter()  # access key ids that signed requests (never the secrets)
        self.buckets: Counter = Counter()  # requests by the bucket their path names
        self.wire: dict[str, bytes] = {}  # object reads moto answered, by path, as sent (headers and body)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._tasks: set[asyncio.Future] = set()  # control requests and moto's answers under way
        ready = threading.Event()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(ready),), daemon=True)
        self._thread.start()
        if not ready.wait(60) or not self.port:
            raise RuntimeError("the loopback S3 proxy did not start")

    async def _serve(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        server = await loop.create_server(lambda: _Connection(self), "127.0.0.1", 0, ssl=self.tls)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await self._stopped.wait()

    def shutdown(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(10)

    def answer(self, connection: _Connection, request: _Request) -> None:
        """Decides `request`'s fate now and answers it on `connection` after the latency (on the loop's thread)."""
        loop = asyncio.get_running_loop()
        if request.path.startswith(_CONTROL):
            self._keep(loop.create_task(self._control(connection, request)))
            return
        kind = request.kind()
        signed = re.search(r"Credential=([^/,\s]+)/", request.headers.get("authorization", ""))
        self.keys[signed.group(1) if signed else "(unsigned)"] += 1
        self.buckets[request.path.lstrip("/").split("/", 1)[0].split("?", 1)[0]] += 1
        self.counts[kind] += 1
        self.counts["requests"] += 1
        failing = kind == "get" and self.rng.random() < self.fail
        drop = failing and self.rng.random() < 0.5
        if failing:
            self.counts["failed"] += 1
        head = request.method == "HEAD"
        if drop:  # the connection closes with no answer: a reset, as a flaky network gives
            send: Any = connection.abort
        elif failing:
            send = functools.partial(connection.send, _answer_bytes(503, _XML, _ERROR), request.closes)
        elif (moved := self._moved(request)) is not None:
            send = functools.partial(connection.send, moved, request.closes)
        elif any(request.path.startswith(prefix) for prefix in self.denied):
            send = functools.partial(connection.send, _answer_bytes(403, _XML, _DENIED, head=head), request.closes)
        else:
            send = functools.partial(self._object, connection, request, kind)
        if self.latency:
            loop.call_later(self.latency, send)
        else:
            send()

    def _moved(self, request: _Request) -> bytes | None:
        """AWS's 301 answer when `request` names a bucket of another region than the one it was signed for."""
        bucket = request.path.lstrip("/").split("/", 1)[0].split("?", 1)[0]
        region = self.regions.get(bucket)
        signed = re.search(r"Credential=[^/]+/\d+/([^/]+)/", request.headers.get("authorization", ""))
        if region is None or (signed is not None and signed.group(1) == region):
            return None
        self.counts["redirected"] += 1
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>PermanentRedirect</Code><Message>The bucket you '
            f"are attempting to access must be addressed using the specified endpoint. Please send all future "
            f"requests to this endpoint.</Message><Endpoint>{bucket}.s3.{region}.amazonaws.com</Endpoint>"
            f"<Bucket>{bucket}</Bucket></Error>"
        ).encode()
        return _answer_bytes(301, {**_XML, "x-amz-bucket-region": region}, body, head=request.method == "HEAD")

    def _object(self, connection: _Connection, request: _Request, kind: str) -> None:
        """Answers a read, a listing or a write: from the reads kept, or from moto (on an executor thread)."""
        cacheable = kind == "get" and "range" not in request.headers
        wire = self.wire.get(request.path) if cacheable else None
        if wire is not None:
            connection.send(wire, request.closes)
            return
        if not cacheable and kind != "head":  # a write or a listing: forget what was read
            self.wire.clear()
        asked = asyncio.get_running_loop().run_in_executor(None, self._upstream, request)

        def answered(future: asyncio.Future) -> None:
            if future.cancelled() or future.exception() is not None:  # moto failed: closed unanswered
                connection.abort()
                return
            status, headers, data = future.result()
            wire = _answer_bytes(status, headers, data, head=request.method == "HEAD")  # built once, sent often
            if cacheable and status == 200:
                self.wire[request.path] = wire
            connection.send(wire, request.closes)

        self._keep(asked).add_done_callback(answered)

    def _keep(self, future: asyncio.Future) -> asyncio.Future:
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)
        return future

    def _upstream(self, request: _Request) -> tuple[int, dict[str, str], bytes]:
        """moto's answer to `request` (on an executor thread)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.upstream, timeout=120)
        try:
            headers = {k: v for k, v in request.original_headers if k.lower() not in _HOP_BY_HOP | {"expect"}}
            connection.request(request.method, request.path, body=request.body or None, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            return answer.status, {k: v for k, v in answer.getheaders() if k.lower() not in _HOP_BY_HOP}, data
        finally:
            connection.close()

    async def _control(self, connection: _Connection, request: _Request) -> None:
        status, answer = await self._controlled(request.path[len(_CONTROL) + 1 :], request.body)
        wire = _answer_bytes(status, {"Content-Type": "application/json"}, json.dumps(answer).encode())
        connection.send(wire, request.closes)

    async def _controlled(self, what: str, body: bytes) -> tuple[int, Any]:
        request = json.loads(body or b"{}")
        if what == "stats":
            kinds = ("requests", "get", "list", "head", "put", "other", "failed", "redirected")
            counts = {k: self.counts.get(k, 0) for k in kinds}
            return 200, {**counts, "keys": dict(self.keys), "buckets": dict(self.buckets)}
        if what == "reset":
            self.counts.clear()
            self.keys.clear()
            self.buckets.clear()
        elif what == "configure":
            if request.get("latency") is not None:
                self.latency = float(request["latency"])
            if request.get("fail") is not None:
                self.fail = float(request["fail"])
            if request.get("regions") is not None:
                self.regions = dict(request["regions"])
            if request.get("deny") is not None:
                self.denied = tuple(f"/{prefix}" for prefix in request["deny"])
        elif what == "fill":  # many tiny keys at once, written into moto's store in this process
            self.wire.clear()
            await asyncio.get_running_loop().run_in_executor(None, _fill, request)
        elif what == "bucket":
            self.wire.clear()
            bucket = _Request("PUT", f"/{request['name']}", [], b"")
            status, _, _ = await asyncio.get_running_loop().run_in_executor(None, self._upstream, bucket)
            return 200, {"status": status}
        else:
            return 404, {}
        return 200, {}


class _Connection(asyncio.Protocol):
    """One client connection: requests parsed from what arrives, answered one at a time, in order."""

    def __init__(self, proxy: _Proxy) -> None:
        self.proxy = proxy
        self.transport: Any = None
        self.buffer = bytearray()
        self.answering = False  # a request is being answered: the next one waits (HTTP/1.1 answers in order)
        self.continued = False  # "100 Continue" was sent for the request at the buffer's head
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # an answer must not wait for the client's delayed ACK (see `_answer_bytes`)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.answering:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def send(self, wire: bytes, closes: bool) -> None:
        """Sends one answer, then reads the next request (or closes, after a `Connection: close` one)."""
        if self.closed:
            return
        self.transport.write(wire)
        if closes:
            self.closed = True
            self.transport.close()
            return
        self.answering = False
        self._next()

    def abort(self) -> None:
        """Closes the connection with no answer."""
        self.closed = True
        self.transport.abort()

    def _next(self) -> None:
        try:
            request, taken = _parse(self.buffer)
        except ValueError:
            self.send(_answer_bytes(400, {"Connection": "close"}, b""), closes=True)
            return
        if request is None:
            if taken and not self.continued:  # the head is in, a body announced with `Expect` is not
                self.continued = True
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        del self.buffer[:taken]
        self.answering, self.continued = True, False
        self.proxy.answer(self, request)


class _Request:
    """One parsed request: method, path, headers (lower-cased names; the originals kept for forwarding), body."""

    def __init__(self, method: str, path: str, original_headers: list[tuple[str, str]], body: bytes) -> None:
        self.method, self.path, self.original_headers, self.body = method, path, original_headers, body
        self.headers = {k.lower(): v for k, v in original_headers}
        self.closes = self.headers.get("connection", "").lower() == "close"

    @classmethod
    def parse(cls, head: bytes) -> _Request | None:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return None
        headers = []
        for line in lines[1:]:
            if line:
                name, colon, value = line.partition(":")
                if not colon:
                    return None
                headers.append((name.strip(), value.strip()))
        request = cls(parts[0], parts[1], headers, b"")
        if parts[2] == "HTTP/1.0" and request.headers.get("connection", "").lower() != "keep-alive":
            request.closes = True
        return request

    def kind(self) -> str:
        path, _, query = self.path.partition("?")
        if self.method == "GET":
            return "list" if "list-type" in query or path.rstrip("/").count("/") <= 1 else "get"
        return {"HEAD": "head", "PUT": "put"}.get(self.method, "other")


def _parse(buffer: bytearray) -> tuple[_Request | None, int]:
    """The request at the head of `buffer` and the bytes it took; `(None, 0)` while its head is incomplete.

    `(None, n > 0)` while its head is in and its body is not (`n` is then only nonzero when the request
    waits for "100 Continue"). A chunked body goes on to moto with a `Content-Length` (`Transfer-Encoding`
    is hop-by-hop: not forwarded).

    Raises:
        ValueError: If the request is malformed, or its head longer than `_HEAD_LIMIT`.
    """
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > _HEAD_LIMIT:
            raise ValueError("request head too long")
        return None, 0
    request = _Request.parse(bytes(buffer[: end + 4]))
    if request is None:
        raise ValueError("malformed request head")
    waiting = int(request.headers.get("expect", "").lower() == "100-continue")
    position = end + 4
    if "chunked" in request.headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return None, waiting
            size = int(bytes(buffer[position:line_end]).split(b";", 1)[0].strip(), 16)  # ValueError: malformed
            position = line_end + 2
            if size == 0:
                while True:  # trailers, if any, up to the empty line
                    line_end = buffer.find(b"\r\n", position)
                    if line_end < 0:
                        return None, waiting
                    empty, position = line_end == position, line_end + 2
                    if empty:
                        break
                request.original_headers = [
                    (k, v) for k, v in request.original_headers if k.lower() != "transfer-encoding"
                ]
                request.body = b"".join(parts)
                return request, position
            if len(buffer) < position + size + 2:
                return None, waiting
            parts.append(bytes(buffer[position : position + size]))
            position += size + 2
    length = int(request.headers.get("content-length") or 0)  # ValueError: malformed
    if length < 0:
        raise ValueError("negative Content-Length")
    if len(buffer) < position + length:
        return None, waiting
    request.body = bytes(buffer[position : position + length])
    return request, position + length


def _answer_bytes(status: int, headers: dict[str, str], data: bytes, head: bool = False) -> bytes:
    """An answer as sent, in one write: status line, headers, `Content-Length` and (unless to a HEAD) the body.

    Headers and body written apart, Nagle's algorithm would hold the body back for the client's delayed ACK
    (measured: 98 ms per read with latency=0.05 and 128 reads in flight).
    """
    lines = [f"HTTP/1.1 {status} {http.client.responses.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in headers.items() if name.lower() != "content-length"]
    length = headers.get("Content-Length", headers.get("content-length", str(len(data)))) if head else str(len(data))
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else data)


def _fill(request: dict) -> None:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    for i in range(int(request["count"])):
        backend.put_object(request["bucket"], f"{request['prefix']}{i:07d}.bin", b"x")


_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
)
_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>keras_sepseq loopback proxy: injected failure</Message></Error>"
)


def _self_signed(folder: str) -> tuple[str, str, str]:
    """A CA made now, and a certificate for 127.0.0.1 it signed, written into `folder` (PEM).

    Returns:
        `(ca, cert, key)` paths: clients trust `ca`; the server presents
        `cert` (the leaf, then the CA) with `key`. A leaf of its own, not
        the CA itself: rustls (obstore's TLS) refuses a CA used as the
        server's certificate.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def built(subject: str, public: Any, issuer: str, signer: Any, ca: bool) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = built("keras_sepseq loopback CA", ca_key.public_key(), "keras_sepseq loopback CA", ca_key, True)
    leaf = built("127.0.0.1", key.public_key(), "keras_sepseq loopback CA", ca_key, False)
    ca_file, cert_file, key_file = (os.path.join(folder, n) for n in ("ca.pem", "loopback.pem", "loopback.key"))
    pem = serialization.Encoding.PEM
    with open(ca_file, "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(cert_file, "wb") as f:
        f.write(leaf.public_bytes(pem) + ca.public_bytes(pem))
    with open(key_file, "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ca_file, cert_file, key_file


def _serve(latency: float, fail: float, seed: int, cert_file: str = "", key_file: str = "") -> None:
    """In the child: starts moto and the proxy, prints their ports, serves until stdin closes."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto_server.start()
    _, moto_port = moto_server.get_host_and_port()
    tls = None
    if cert_file:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(cert_file, key_file)
    proxy = _Proxy(moto_port, latency, fail, seed, tls)
    print(json.dumps({"moto": moto_port, "proxy": proxy.port}), flush=True)
    sys.stdin.read()  # until the parent closes it, or exits
    proxy.shutdown()
    moto_server.stop()


if __name__ == "__main__":
    _serve(float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:6])
