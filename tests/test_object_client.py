"""S3 reads through libcurl where it can, s3fs where it cannot: translation, signing, errors, fallback, forks."""

from __future__ import annotations

import multiprocessing
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import warnings

import numpy as np
import pytest

from keras_sepseq import object_client, object_requests, storage
from keras_sepseq.fetching import Fetcher, wait_all
from keras_sepseq.object_client import CurlReader, ObjectStoreError, UseFsspec, s3_reader

try:
    object_client._pycurl()  # as the library loads it: a plain import after TensorFlow's fails
except ImportError as e:
    pytest.skip(f"pycurl does not load: {e}", allow_module_level=True)
pytest.importorskip("s3fs")
s3_server = pytest.importorskip("keras_sepseq.s3_server")

KEY, SECRET = s3_server.CREDENTIALS["key"], s3_server.CREDENTIALS["secret"]


@pytest.fixture(scope="module")
def server():
    with s3_server.LoopbackS3(seed=3) as server:
        server.upload("things", {f"k/{i}.bin": bytes([i]) * (i + 1) for i in range(8)})
        yield server


@pytest.fixture
def s3(server, monkeypatch):
    monkeypatch.delenv(object_client.CLIENT_VARIABLE, raising=False)
    server.configure(latency=0.0, fail=0.0, deny=[])
    server.reset()
    return server


def _settings(key=None, secret=None, token=None, anon=False, endpoint="", region="us-east-1"):
    return {"key": key, "secret": secret, "token": token, "anon": anon, "endpoint": endpoint, "region": region}


@pytest.mark.parametrize(
    "options, expected",
    [
        pytest.param(
            {"key": "a", "secret": "b", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1"}},
            _settings("a", "b", endpoint="http://127.0.0.1:9", region="eu-west-1"), id="keys-endpoint-region",
        ),
        pytest.param(
            {"key": "a", "secret": "b", "token": "t", "endpoint_url": "https://minio.example"},
            _settings("a", "b", "t", endpoint="https://minio.example"), id="session-token-top-level-endpoint",
        ),
        pytest.param({"anon": True}, _settings(anon=True), id="anonymous"),
        pytest.param({"profile": "work"}, None, id="profile-needs-s3fs"),
        pytest.param({"key": "a", "secret": "b", "config_kwargs": {"s3": {"addressing_style": "virtual"}}}, None,
                     id="botocore-config-needs-s3fs"),
        pytest.param({"key": "a", "secret": "b", "client_kwargs": {"verify": False}}, None, id="client-kwarg-needs-s3fs"),
        pytest.param({}, None, id="no-credentials-needs-s3fs"),
    ],
)  # fmt: skip
def test_storage_options_translate_for_libcurl_or_leave_the_url_to_s3fs(monkeypatch, options, expected):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    assert object_requests.translate(options) == expected


def test_credentials_region_and_endpoint_from_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "t")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    assert object_requests.translate({}) == _settings("a", "b", "t", endpoint="http://127.0.0.1:9", region="ap-south-1")


@pytest.mark.parametrize(
    "settings, bucket, key, url",
    [
        pytest.param(_settings(endpoint="http://127.0.0.1:9/"), "data", "img/0001.png",
                     "http://127.0.0.1:9/data/img/0001.png", id="endpoint-path-style"),
        pytest.param(_settings(region="eu-west-1"), "data", "img/0001.png",
                     "https://data.s3.eu-west-1.amazonaws.com/img/0001.png", id="aws-virtual-hosted"),
        pytest.param(_settings(), "my.dotted.bucket", "a", "https://s3.us-east-1.amazonaws.com/my.dotted.bucket/a",
                     id="aws-dotted-bucket-path-style"),
        pytest.param(_settings(endpoint="http://h"), "data", "odd dir/ümlaut +plus=eq&~(1)%.png",
                     "http://h/data/odd%20dir/%C3%BCmlaut%20%2Bplus%3Deq%26~%281%29%25.png", id="key-percent-encoded"),
    ],
)  # fmt: skip
def test_object_urls(settings, bucket, key, url):
    assert object_requests.object_url(settings, bucket, key) == url


BODY = b'<?xml version="1.0"?>\n<Error><Code>%s</Code><Message>%s</Message></Error>'


@pytest.mark.parametrize(
    "status, body, kind, text",
    [
        pytest.param(404, BODY % (b"NoSuchKey", b"gone"), FileNotFoundError, "no such object: s3://b/k", id="404"),
        pytest.param(403, BODY % (b"AccessDenied", b"Access Denied"), PermissionError,
                     "access refused to s3://b/k (HTTP 403: AccessDenied Access Denied)", id="403"),
        pytest.param(503, BODY % (b"SlowDown", b"Please reduce your request rate."), ObjectStoreError,
                     "HTTP 503: SlowDown Please reduce your request rate.", id="503-slow-down"),
        pytest.param(500, b"", ObjectStoreError, "HTTP 500", id="500-no-body"),
        pytest.param(301, BODY % (b"PermanentRedirect", b"use the eu endpoint"), UseFsspec,
                     "HTTP 301: PermanentRedirect use the eu endpoint", id="301-other-region"),
    ],
)  # fmt: skip
def test_answers_become_what_s3fs_raises_in_one_line(status, body, kind, text):
    mapped = object_requests.answer_error(status, body, "s3://b/k")
    assert type(mapped) is kind and str(mapped) == text
    assert storage.is_transient(mapped) == (kind is ObjectStoreError)


@pytest.mark.parametrize(
    "code, message, kind",
    [
        pytest.param(7, "Failed to connect to 127.0.0.1 port 9", ConnectionError, id="refused"),
        pytest.param(52, "Empty reply from server", ConnectionError, id="empty-reply"),
        pytest.param(56, "Recv failure: Connection reset by peer", ConnectionError, id="reset"),
        pytest.param(28, "Operation too slow", ConnectionError, id="stalled"),
        pytest.param(60, "SSL certificate problem", UseFsspec, id="tls-certificate"),
    ],
)  # fmt: skip
def test_connection_failures_are_transient_and_the_rest_goes_to_s3fs(code, message, kind):
    mapped = object_requests.connection_error(code, message, "s3://b/k")
    assert type(mapped) is kind and str(mapped) == f"libcurl error {code}: {message}"
    assert storage.is_transient(mapped) == (kind is ConnectionError)


def test_a_server_that_stops_answering_times_out_through_libcurls_own_deadline(monkeypatch):
    """libcurl's timers (here its low-speed limit) fire from the loop's own deadline, with no timer callback."""
    monkeypatch.setattr(object_client, "STALL_SECONDS", 1)
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
    reader = CurlReader("bucket", _settings("AKID", "secret", "", endpoint=endpoint, region="us-east-1"))
    start = time.perf_counter()
    try:
        with pytest.raises(ConnectionError, match=r"^libcurl error 28: Operation too slow"):
            reader("s3://bucket/never.bin")
    finally:
        listener.close()
        for connection in accepted:
            connection.close()
    assert 1.0 <= time.perf_counter() - start < 5.0 and len(accepted) == 1


def _capture_requests(count):
    """A server on 127.0.0.1 that answers `count` requests with 200 "ok" and keeps their text."""
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[str] = []

    def serve():
        with listener:
            for _ in range(count):
                connection, _ = listener.accept()
                with connection:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        data += connection.recv(65536)
                    seen.append(data.decode())
                    connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", seen


def test_requests_are_signed_as_botocore_signs_them():
    """libcurl's AWS Signature Version 4 matches botocore's for the same request, odd keys and a session token."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    keys = ["img/0001.png", "odd dir/ümlaut +plus=eq&~(1)%.png", "a//double"]
    endpoint, seen = _capture_requests(len(keys))
    reader = CurlReader("bucket", _settings("AKID", "se/cr+et", "TOKEN", endpoint=endpoint, region="eu-west-1"))
    assert [reader(f"s3://bucket/{key}") for key in keys] == [b"ok"] * len(keys)
    for key, request in zip(keys, seen):
        line, *rest = request.split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest if ":" in h)}
        path = line.split()[1]
        assert urllib.parse.unquote(path) == f"/bucket/{key}"
        ours = AWSRequest(method="GET", url=endpoint + path, headers={
            "x-amz-date": headers["x-amz-date"], "x-amz-content-sha256": headers["x-amz-content-sha256"],
            "X-Amz-Security-Token": "TOKEN"})  # fmt: skip
        ours.context["timestamp"] = headers["x-amz-date"]
        signer = S3SigV4Auth(Credentials("AKID", "se/cr+et", "TOKEN"), "s3", "eu-west-1")
        signature = signer.signature(signer.string_to_sign(ours, signer.canonical_request(ours)), ours)
        assert headers["authorization"].endswith(f"Signature={signature}")
        assert headers["x-amz-security-token"] == "TOKEN" and "se/cr+et" not in request


def test_pycurl_loads_after_tensorflow_and_calls_its_own_libcurl():
    """TensorFlow exports its own libcurl's symbols; pycurl loaded after it must still use the libcurl it was built for."""
    code = (
        "import tensorflow\n"
        "from keras_sepseq import object_client\n"
        "pycurl = object_client._pycurl()\n"
        "print(pycurl.version_info()[1])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == object_client._pycurl().version_info()[1]


def test_libcurl_reads_the_loopback_bucket_with_one_get_per_object(s3):
    assert isinstance(s3_reader("s3://things/k/3.bin", s3.storage_options), CurlReader)
    assert [storage.read_url(f"s3://things/k/{i}.bin", s3.storage_options) for i in range(8)] == [
        bytes([i]) * (i + 1) for i in range(8)
    ]
    assert s3.stats()["get"] == 8 and s3.stats()["head"] == 0


def test_the_fetcher_keeps_reads_in_flight_on_one_thread_and_each_object_is_read_once(s3):
    s3.configure(latency=0.05)
    urls = [f"s3://things/k/{i % 8}.bin" for i in range(16)]  # each twice: read once
    fetcher = Fetcher(8, s3.storage_options)
    before = {t.name for t in threading.enumerate()}
    start = time.perf_counter()
    got = wait_all(fetcher.fetch(urls))
    took = time.perf_counter() - start
    fetcher.close()
    assert got == {f"s3://things/k/{i}.bin": bytes([i]) * (i + 1) for i in range(8)}
    assert s3.stats()["get"] == 8 and fetcher.stats.as_dict()["requests"] == 8
    assert took < 8 * 0.05  # in flight together, not one after the other
    assert not {t.name for t in threading.enumerate()} - before - {"keras_sepseq_curl"}  # no thread per read


def test_missing_and_refused_objects_are_named_without_credentials(s3):
    with pytest.raises(FileNotFoundError, match=r"no such object: s3://things/k/none\.bin$"):
        storage.read_url("s3://things/k/none.bin", s3.storage_options)
    s3.configure(deny=["things/k/5"])
    with pytest.raises(PermissionError, match=r"access refused to s3://things/k/5\.bin") as refused:
        storage.read_url("s3://things/k/5.bin", s3.storage_options)
    got = wait_all(Fetcher(4, s3.storage_options).fetch(["s3://things/k/5.bin", "s3://things/k/none.bin"]))
    assert isinstance(got["s3://things/k/5.bin"], PermissionError)
    assert str(got["s3://things/k/none.bin"]) == "no such object: s3://things/k/none.bin"
    for error in (refused.value, *got.values()):
        assert SECRET not in str(error) and KEY not in str(error)


@pytest.mark.parametrize("path", ["read_url", "fetcher"])
def test_transient_failures_are_retried_and_counted(s3, path, monkeypatch):
    monkeypatch.setattr(storage, "ATTEMPTS", 20)
    s3.configure(fail=0.5)
    urls = [f"s3://things/k/{i}.bin" for i in range(8)]
    stats = storage.StorageStats()
    if path == "read_url":
        got = [storage.read_url(u, s3.storage_options, stats=stats, attempts=20) for u in urls]
    else:
        contents = wait_all(Fetcher(8, s3.storage_options, stats).fetch(urls))
        got = [contents[u] for u in urls]
    assert got == [bytes([i]) * (i + 1) for i in range(8)]
    counts = stats.as_dict()
    # libcurl itself sends a request again, once and uncounted, when a kept-alive connection closes before any
    # answer (as a server's idle timeout can close it): some of the proxy's dropped connections are never seen.
    assert 0 < counts["retries"] <= s3.stats()["failed"] and counts["failures"] == 0
    assert counts["requests"] == 8 + counts["retries"]
    assert ("HTTP 503" in stats.last_retry) or ("ConnectionError" in stats.last_retry)


def _redirecting_server():
    """Answers every request with S3's 301 PermanentRedirect, counting them."""
    listener = socket.create_server(("127.0.0.1", 0))
    calls: list[str] = []
    body = BODY % (b"PermanentRedirect", b"another region")
    answer = b"HTTP/1.1 301 Moved Permanently\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    def serve():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                data = b""
                while True:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    while b"\r\n\r\n" in data:
                        head, data = data.split(b"\r\n\r\n", 1)
                        calls.append(head.split(b" ")[1].decode())
                        connection.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    return listener, f"http://127.0.0.1:{listener.getsockname()[1]}", calls


def test_a_store_libcurl_cannot_read_goes_to_s3fs_for_good_with_one_warning(s3, monkeypatch):
    options = {**s3.storage_options, "key": "other-key"}  # a reader of its own in the readers' cache
    listener, elsewhere, calls = _redirecting_server()
    real = object_requests.object_url
    monkeypatch.setattr(object_client, "object_url", lambda settings, bucket, key: real(
        {**settings, "endpoint": elsewhere}, bucket, key))  # fmt: skip
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = [storage.read_url(f"s3://things/k/{i}.bin", options) for i in range(2)]
            got += [wait_all(Fetcher(4, options).fetch(["s3://things/k/2.bin"]))["s3://things/k/2.bin"]]
    finally:
        listener.close()
    assert got == [bytes([i]) * (i + 1) for i in range(3)]  # read by s3fs
    assert calls == ["/things/k/0.bin"]  # libcurl was asked once, then never again for this store
    ours = [str(w.message) for w in caught if "libcurl could not read" in str(w.message)]
    assert ours == ["keras_sepseq: libcurl could not read s3://things (HTTP 301: PermanentRedirect another region); "
                    "reading it through s3fs from now on."]  # fmt: skip


def test_a_reader_whose_thread_fails_hands_every_read_to_s3fs(s3, monkeypatch):
    options = {**s3.storage_options, "key": "third-key"}

    def broken(*args):
        raise RuntimeError("injected")

    reader = s3_reader("s3://things/k/1.bin", options)
    assert reader is not None
    monkeypatch.setattr(reader, "_start", broken)  # this reader only: other readers' threads still run
    with pytest.warns(UserWarning, match=r"the libcurl reader of s3://things stopped \(RuntimeError: injected\)"):
        assert storage.read_url("s3://things/k/1.bin", options) == b"\x01\x01"
    assert not reader.usable
    assert storage.read_url("s3://things/k/3.bin", options) == b"\x03" * 4


def test_closing_the_fetcher_drops_reads_not_started(s3):
    s3.configure(latency=0.2)
    fetcher = Fetcher(1, {**s3.storage_options, "key": "fourth-key"})
    futures = fetcher.fetch([f"s3://things/k/{i}.bin" for i in range(8)])
    time.sleep(0.05)
    fetcher.close()
    got = wait_all(futures)
    time.sleep(0.4)
    assert sum(isinstance(v, bytes) for v in got.values()) <= 1 and s3.stats()["get"] <= 2


def test_the_environment_variable_sends_every_read_to_s3fs(s3, monkeypatch):
    monkeypatch.setenv(object_client.CLIENT_VARIABLE, "s3fs")
    assert s3_reader("s3://things/k/1.bin", s3.storage_options) is None
    assert storage.read_url("s3://things/k/1.bin", s3.storage_options) == b"\x01\x01"


def test_without_poll_every_read_goes_to_s3fs_quietly(s3, monkeypatch):
    import select

    monkeypatch.delattr(select, "poll")  # as on Windows, which has neither poll nor epoll
    monkeypatch.delattr(select, "epoll", raising=False)
    assert s3_reader("s3://things/k/1.bin", {**s3.storage_options, "key": "windows-key"}) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert storage.read_url("s3://things/k/1.bin", s3.storage_options | {"key": "windows-key"}) == b"\x01\x01"


def test_a_reader_holds_credentials_it_never_shows_or_pickles(s3):
    import pickle

    reader = s3_reader("s3://things/k/1.bin", s3.storage_options)
    assert SECRET not in repr(reader) and KEY not in repr(reader)
    with pytest.raises(TypeError, match="not sent to other processes"):
        pickle.dumps(reader)


def _read_in_child(url, options, queue):
    try:
        reader = s3_reader(url, options)
        queue.put(("reader", type(reader).__name__, id(reader), storage.read_url(url, options)))
    except BaseException as e:  # reported to the parent, which fails the test
        queue.put(("error", repr(e), 0, b""))


def test_a_forked_process_reads_through_its_own_reader(s3):
    url = "s3://things/k/2.bin"
    assert storage.read_url(url, s3.storage_options) == b"\x02" * 3  # the I/O thread runs in this process
    parents = id(s3_reader(url, s3.storage_options))
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(url, s3.storage_options, queue))
    child.start()
    child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "the forked child hung reading"
    kind, name, ident, data = queue.get(timeout=5)
    assert (kind, name, data) == ("reader", "CurlReader", b"\x02" * 3) and ident != parents
    assert storage.read_url(url, s3.storage_options) == b"\x02" * 3  # the parent's reader still reads


def test_bytes_read_through_libcurl_and_s3fs_are_the_same(s3, monkeypatch):
    urls = [f"s3://things/k/{i}.bin" for i in range(8)]
    fast = [storage.read_url(u, s3.storage_options) for u in urls]
    monkeypatch.setenv(object_client.CLIENT_VARIABLE, "s3fs")
    slow = [storage.read_url(u, s3.storage_options) for u in urls]
    assert fast == slow and all(isinstance(b, bytes) for b in fast)
    assert np.frombuffer(fast[7], np.uint8).tolist() == [7] * 8


def test_https_is_checked_against_the_bundle_botocore_uses(monkeypatch):
    """Over TLS, with the server's certificate trusted through AWS_CA_BUNDLE: libcurl and s3fs read the same bytes."""
    pytest.importorskip("cryptography")
    monkeypatch.delenv(object_client.CLIENT_VARIABLE, raising=False)
    with s3_server.LoopbackS3(tls=True) as server:
        assert server.endpoint.startswith("https://127.0.0.1:")
        server.upload("secure", {"a.bin": b"\x01" * 70_000})
        monkeypatch.setenv("AWS_CA_BUNDLE", server.ca_file)
        reader = s3_reader("s3://secure/a.bin", server.storage_options)
        assert isinstance(reader, CurlReader)
        assert reader("s3://secure/a.bin") == b"\x01" * 70_000
        assert wait_all(Fetcher(4, server.storage_options).fetch(["s3://secure/a.bin"])) == {
            "s3://secure/a.bin": b"\x01" * 70_000
        }
        monkeypatch.setenv(object_client.CLIENT_VARIABLE, "s3fs")
        assert storage.read_url("s3://secure/a.bin", server.storage_options) == b"\x01" * 70_000
        assert server.stats()["get"] == 3
        folder = server.ca_file
    assert not os.path.exists(folder)  # the certificate goes with the server


def test_the_certificates_are_botocores_then_the_systems(monkeypatch):
    for name in ("AWS_CA_BUNDLE", "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.delenv(name, raising=False)
    system = __import__("ssl").get_default_verify_paths().cafile
    assert object_requests.ca_bundle() in ({system} if system else {None, __import__("certifi").where()})
    monkeypatch.setenv("SSL_CERT_FILE", "/somewhere/else.pem")
    assert object_requests.ca_bundle() == "/somewhere/else.pem"
    monkeypatch.setenv("AWS_CA_BUNDLE", "/for/aws.pem")
    assert object_requests.ca_bundle() == "/for/aws.pem"


def test_reads_queued_from_many_threads_never_wait_for_a_lost_wake_up(s3):
    """Every read submitted while the I/O thread drains its wake-ups is started at once, not after a timeout."""
    reader = s3_reader("s3://things/k/0.bin", {**s3.storage_options, "key": "fifth-key"})
    assert reader is not None
    reader.allow(64)
    slowest: list[float] = []

    def client(k):
        worst = 0.0
        for i in range(150):
            start = time.perf_counter()
            assert reader.submit(f"s3://things/k/{(i + k) % 8}.bin").result(timeout=30) == bytes([(i + k) % 8]) * (
                (i + k) % 8 + 1
            )
            worst = max(worst, time.perf_counter() - start)
        slowest.append(worst)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(slowest) == 6 and max(slowest) < 0.5  # a lost wake-up waits out the selector's 1 s timeout


class _Files:
    """An HTTP server on 127.0.0.1 serving `folder`, counting GETs; `redirect_to` makes it answer 302 instead."""

    def __init__(self, folder, redirect_to: str = ""):
        from functools import partial
        from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

        self.gets: list[str] = []
        files = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the name http.server calls)
                files.gets.append(self.path)
                if not redirect_to:
                    return super().do_GET()
                self.send_response(302)
                self.send_header("Location", redirect_to + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def web(tmp_path, monkeypatch):
    monkeypatch.delenv(object_client.HTTP_CLIENT_VARIABLE, raising=False)
    (tmp_path / "k").mkdir()
    for i in range(8):
        (tmp_path / "k" / f"{i}.bin").write_bytes(bytes([i]) * (i + 1))
    files = _Files(tmp_path)
    yield files
    files.close()


def test_http_urls_are_read_through_libcurl_once_each_with_redirects_followed(web, tmp_path):
    urls = [f"{web.url}/k/{i}.bin" for i in range(8)]
    reader = object_client.http_reader(urls[0], None)
    assert isinstance(reader, CurlReader) and reader.direct and object_client.curl_reader(urls[1], {}) is reader
    got = wait_all(Fetcher(4, {}).fetch(urls))
    assert [got[url] for url in urls] == [bytes([i]) * (i + 1) for i in range(8)]
    assert storage.read_url(urls[3]) == b"\x03" * 4
    assert sorted(web.gets) == sorted([f"/k/{i}.bin" for i in range(8)] + ["/k/3.bin"])  # each once, plus read_url
    moved = _Files(tmp_path, redirect_to=web.url)
    try:
        url = f"{moved.url}/k/5.bin"
        assert object_client.http_reader(url, {}) is not reader  # a reader per web server
        assert storage.read_url(url) == wait_all(Fetcher(2, {}).fetch([url]))[url] == b"\x05" * 6
        assert moved.gets == ["/k/5.bin"] * 2 and web.gets.count("/k/5.bin") == 3
    finally:
        moved.close()


def test_a_missing_http_object_is_named_without_credentials(web):
    url = web.url.replace("http://", "http://me:s3cr3t@") + "/k/nothing.bin?X-Amz-Signature=abc"
    shown = f"{web.url}/k/nothing.bin"
    with pytest.raises(FileNotFoundError, match=f"^no such object: {re.escape(shown)}$") as caught:
        storage.read_url(url)
    assert "s3cr3t" not in str(caught.value) and "abc" not in str(caught.value)
    assert "s3cr3t" not in repr(object_client.http_reader(url, {}))
    got = wait_all(Fetcher(2, {}).fetch([url]))[url]
    assert isinstance(got, FileNotFoundError) and str(got) == f"no such object: {shown}"
    assert web.gets == ["/k/nothing.bin?X-Amz-Signature=abc"] * 2  # a 404 is an answer: never tried again


@pytest.mark.parametrize(
    "url, options, variable, expected",
    [
        ("https://example.com/a.png", None, "", True),
        ("http://example.com:8080/a.png", {}, "", True),
        ("https://example.com/a.png", {"headers": {"Authorization": "Bearer x"}}, "", False),
        ("https://example.com/a.png", None, "fsspec", False),
        ("gs://bucket/a.png", None, "", False),
        ("memory://doc/a.png", None, "", False),
    ],
    ids=["https", "http-port", "headers-to-fsspec", "asked-for-fsspec", "gs", "memory"],
)
def test_which_urls_libcurl_reads(url, options, variable, expected, monkeypatch):
    monkeypatch.setenv(object_client.HTTP_CLIENT_VARIABLE, variable)
    assert isinstance(object_client.curl_reader(url, options), CurlReader) is expected


def test_a_web_servers_other_answers_are_errors_of_the_url_not_a_switch_to_fsspec():
    gone = object_requests.answer_error(410, b"", "https://host/a.png", direct=True)
    assert isinstance(gone, ObjectStoreError) and gone.status == 410 and not storage.is_transient(gone)
    assert isinstance(object_requests.answer_error(410, b"", "s3://b/a.png"), UseFsspec)  # S3: s3fs decides
