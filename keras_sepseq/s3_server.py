"""An S3-compatible server on 127.0.0.1, for tests and `bench`: moto's server behind a proxy that adds latency and failures.

Object storage is tested against a real server and the real client (s3fs
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

Only loopback addresses are used; the child ends with the `with` block,
or when the process that started it exits.

Example:

>>> with LoopbackS3(latency=0.05) as server:  # doctest: +SKIP
...     server.upload({"photos/0001.jpg": data})
...     seq = SeparatedSequence(urls, labels, storage_options=server.storage_options)
"""

from __future__ import annotations

import http.client
import json
import os
import random
import select
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["LoopbackS3"]

CREDENTIALS = {"key": "testing", "secret": "testing"}
"""moto accepts any credentials; these are dummies, never real ones."""

REGION = "us-east-1"
_CONTROL = "/__keras_sepseq__"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class LoopbackS3:
    """An S3 server on 127.0.0.1 with a latency and failure-injecting proxy, in a child process.

    Args:
        latency: Seconds added to every request through the proxy.
        fail: Share of object reads (GET of a key) that fail: half with a
            503 answer, half with the connection closed unanswered.
        seed: Seeds which requests fail (the proxy's own generator).
        start_timeout: Seconds to wait for the server to come up.

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

    def __init__(self, *, latency: float = 0.0, fail: float = 0.0, seed: int = 0, start_timeout: float = 60.0) -> None:
        try:
            import moto  # noqa: F401
        except ImportError as e:
            raise ImportError(f"LoopbackS3 needs moto's server ({e}): pip install 'keras-sepseq[test]'") from None
        self.latency, self.fail, self.seed, self.start_timeout = float(latency), float(fail), int(seed), start_timeout
        self._process: subprocess.Popen | None = None
        self.endpoint = self.direct_endpoint = ""

    def __enter__(self) -> LoopbackS3:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> None:
        """Starts the child process and waits until both servers answer."""
        command = [sys.executable, "-m", "keras_sepseq.s3_server", str(self.latency), str(self.fail), str(self.seed)]
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        stdout = self._process.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], self.start_timeout)
        line = stdout.readline() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError(f"the loopback S3 server did not start within {self.start_timeout} s")
        ports = json.loads(line)
        self.endpoint = f"http://127.0.0.1:{ports['proxy']}"
        self.direct_endpoint = f"http://127.0.0.1:{ports['moto']}"

    def stop(self) -> None:
        """Stops the child process (closing its stdin; killed after 10 s). Safe to call twice."""
        process, self._process = self._process, None
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
        """fsspec options that read through the proxy (latency and failures applied)."""
        return self.options(self.endpoint)

    @property
    def direct_options(self) -> dict[str, Any]:
        """fsspec options that reach moto directly (for uploads)."""
        return self.options(self.direct_endpoint)

    @staticmethod
    def options(endpoint: str) -> dict[str, Any]:
        """fsspec options for an S3 endpoint, with the dummy credentials."""
        return {**CREDENTIALS, "client_kwargs": {"endpoint_url": endpoint, "region_name": REGION}}

    def create_bucket(self, name: str) -> None:
        """Creates bucket `name` (directly, not through the proxy)."""
        self._control("bucket", {"name": name})

    def upload(self, bucket: str, objects: dict[str, bytes]) -> None:
        """Writes `{key: bytes}` into `bucket` directly, many at once; creates the bucket if needed."""
        import fsspec

        self.create_bucket(bucket)
        fs = fsspec.filesystem("s3", skip_instance_cache=True, **self.direct_options)
        fs.pipe({f"{bucket}/{key}": data for key, data in objects.items()})

    def fill(self, bucket: str, prefix: str, count: int) -> None:
        """Writes `count` one-byte objects `prefix0000000.bin`, ... into `bucket` (created if needed), fast."""
        self.create_bucket(bucket)
        self._control("fill", {"bucket": bucket, "prefix": prefix, "count": count})

    def stats(self) -> dict[str, int]:
        """Requests the proxy has seen, by kind: `get`, `list`, `head`, `put`, `other`, `failed`, `requests`."""
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
        self, *, latency: float | None = None, fail: float | None = None, deny: list[str] | None = None
    ) -> None:
        """Changes the latency, the failure share, or the `bucket/key` prefixes refused with 403, from now on."""
        self._control("configure", {"latency": latency, "fail": fail, "deny": deny})

    def _control(self, what: str, body: dict | None = None) -> Any:
        connection = http.client.HTTPConnection(self.endpoint.split("://", 1)[1], timeout=60)
        try:
            connection.request("POST", f"{_CONTROL}/{what}", body=json.dumps(body or {}))
            answer = connection.getresponse()
            data = answer.read()
            if answer.status != 200:
                raise RuntimeError(f"the loopback S3 proxy refused {what}: {data[:200]!r}")
            return json.loads(data)
        finally:
            connection.close()


class _Proxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, upstream: int, latency: float, fail: float, seed: int) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream, self.latency, self.fail = upstream, latency, fail
        self.rng = random.Random(seed)
        self.denied: tuple[str, ...] = ()
        self.counts: Counter = Counter()
        self.answers: dict[str, tuple[int, dict[str, str], bytes]] = {}  # object reads moto answered, by path
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # An answer goes out as two writes (headers, then body): with Nagle's algorithm on, the body waits for the
    # client's delayed ACK of the headers, 40 ms on Linux, on top of `latency` (measured: 98 ms per read with
    # latency=0.05 and 128 reads in flight, 1,300 reads/s; with it off, 2,100-2,300 reads/s).
    disable_nagle_algorithm = True
    server: _Proxy

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _kind(self) -> str:
        path, _, query = self.path.partition("?")
        if self.command == "GET":
            return "list" if "list-type" in query or path.rstrip("/").count("/") <= 1 else "get"
        return {"HEAD": "head", "PUT": "put"}.get(self.command, "other")

    def _handle(self) -> None:
        body = self._body()
        if self.path.startswith(_CONTROL):
            self._control(self.path[len(_CONTROL) + 1 :], body)
            return
        kind = self._kind()
        server = self.server
        with server.lock:
            server.counts[kind] += 1
            server.counts["requests"] += 1
            failing = kind == "get" and server.rng.random() < server.fail
            drop = failing and server.rng.random() < 0.5
            if failing:
                server.counts["failed"] += 1
            latency = server.latency
            denied = any(self.path.startswith(prefix) for prefix in server.denied)
        if latency:
            time.sleep(latency)
        if drop:  # the connection closes with no answer: a reset, as a flaky network gives
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if failing:
            self._answer(503, {"Content-Type": "application/xml"}, _ERROR)
            return
        if denied:
            self._answer(403, {"Content-Type": "application/xml"}, _DENIED, head=self.command == "HEAD")
            return
        if kind == "get" and "Range" not in self.headers:
            with server.lock:
                kept = server.answers.get(self.path)
            if kept is not None:  # an object read before and not written since: moto's answer again
                self._answer(*kept)
                return
        elif kind != "head":  # a write or a listing: forget what was read
            with server.lock:
                server.answers.clear()
        connection = http.client.HTTPConnection("127.0.0.1", server.upstream, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection.request(self.command, self.path, body=body or None, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            out = {k: v for k, v in answer.getheaders() if k.lower() not in _HOP_BY_HOP}
        finally:
            connection.close()
        if kind == "get" and answer.status == 200 and "Range" not in self.headers:
            with server.lock:
                server.answers[self.path] = (answer.status, out, data)
        self._answer(answer.status, out, data, head=self.command == "HEAD")

    def _answer(self, status: int, headers: dict[str, str], data: bytes, head: bool = False) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", headers.get("Content-Length", str(len(data))) if head else str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _control(self, what: str, body: bytes) -> None:
        server, request = self.server, json.loads(body or b"{}")
        with server.lock:
            if what == "stats":
                answer: Any = {
                    k: server.counts.get(k, 0) for k in ("requests", "get", "list", "head", "put", "other", "failed")
                }
            elif what == "reset":
                server.counts.clear()
                answer = {}
            elif what == "configure":
                if request.get("latency") is not None:
                    server.latency = float(request["latency"])
                if request.get("fail") is not None:
                    server.fail = float(request["fail"])
                if request.get("deny") is not None:
                    server.denied = tuple(f"/{prefix}" for prefix in request["deny"])
                answer = {}
            elif what == "fill":  # many tiny keys at once, written into moto's store in this process
                from moto.core import DEFAULT_ACCOUNT_ID
                from moto.s3.models import s3_backends

                backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
                for i in range(int(request["count"])):
                    backend.put_object(request["bucket"], f"{request['prefix']}{i:07d}.bin", b"x")
                answer = {}
            elif what == "bucket":
                connection = http.client.HTTPConnection("127.0.0.1", server.upstream, timeout=60)
                try:
                    connection.request("PUT", f"/{request['name']}")
                    status = connection.getresponse().status
                finally:
                    connection.close()
                answer = {"status": status}
            else:
                self._answer(404, {}, b"{}")
                return
        self._answer(200, {"Content-Type": "application/json"}, json.dumps(answer).encode())

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle  # noqa: N815 (http.server's names)


_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
)
_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>keras_sepseq loopback proxy: injected failure</Message></Error>"
)


def _serve(latency: float, fail: float, seed: int) -> None:
    """In the child: starts moto and the proxy, prints their ports, serves until stdin closes."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    moto_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto_server.start()
    _, moto_port = moto_server.get_host_and_port()
    proxy = _Proxy(moto_port, latency, fail, seed)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    print(json.dumps({"moto": moto_port, "proxy": proxy.server_address[1]}), flush=True)
    sys.stdin.read()  # until the parent closes it, or exits
    proxy.shutdown()
    moto_server.stop()


if __name__ == "__main__":
    _serve(float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]))
