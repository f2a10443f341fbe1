"""The loopback S3 proxy speaks enough HTTP/1.1 for any client: chunked bodies, 100-continue, HTTP/1.0, bad input."""

import socket

import pytest

s3_server = pytest.importorskip("keras_sepseq.s3_server")


@pytest.fixture(scope="module")
def server():
    with s3_server.LoopbackS3() as server:
        server.create_bucket("proxied")
        yield server


def raw_exchange(server, request: bytes, timeout: float = 10.0) -> bytes:
    """Sends `request` bytes to the proxy and returns everything it answers until it closes the connection."""
    host, port = server.endpoint.split("://", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def stored(server, key: str) -> bytes:
    """The object as moto holds it, read directly with a signed request."""
    from keras_sepseq import storage

    return storage.read_url(f"s3://{key}", server.direct_options)


def test_a_chunked_upload_reaches_moto_whole(server):
    body = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"
    answer = raw_exchange(
        server,
        b"PUT /proxied/chunked.txt HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + body,
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert stored(server, "proxied/chunked.txt") == b"hello, world"


def test_expect_100_continue_is_answered_before_the_body(server):
    host, port = server.endpoint.split("://", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"PUT /proxied/continued.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n"
            b"Connection: close\r\n\r\n"
        )
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"data")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert stored(server, "proxied/continued.txt") == b"data"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /proxied HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n",
        b"NOT-HTTP\r\n\r\n",
        b"GET /proxied HTTP/1.1\r\nno colon here\r\n\r\n",
        b"PUT /proxied/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["bad_content_length", "bad_request_line", "bad_header", "bad_chunk_size"],
)
def test_malformed_requests_get_400_and_a_closed_connection(server, request_bytes):
    answer = raw_exchange(server, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close" in answer


def test_http_1_0_closes_after_one_answer_and_keep_alive_answers_twice(server):
    server.configure(latency=0.0, fail=0.0, deny=[])
    # Unsigned reads: moto answers 403, which is all these need (one answer, or two, then the connection closes).
    one = raw_exchange(server, b"GET /proxied/chunked.txt HTTP/1.0\r\n\r\n")
    assert one.startswith(b"HTTP/1.1 403 ") and one.count(b"HTTP/1.1 ") == 1
    two = raw_exchange(
        server,
        b"GET /proxied/chunked.txt HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /proxied/chunked.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert two.startswith(b"HTTP/1.1 403 ") and two.count(b"HTTP/1.1 403 ") == 2


def test_an_injected_reset_closes_the_connection_unanswered(server):
    server.configure(latency=0.0, fail=1.0)
    server.reset()
    answers = []
    try:
        for _ in range(20):
            try:
                answers.append(raw_exchange(server, b"GET /proxied/chunked.txt HTTP/1.1\r\nConnection: close\r\n\r\n"))
            except ConnectionResetError:  # the proxy aborts the connection: reported as a reset, or as b""
                answers.append(b"")
    finally:
        server.configure(fail=0.0)
    assert b"" in answers  # about half of the failures close unanswered, the rest answer 503
    assert any(a.startswith(b"HTTP/1.1 503 ") for a in answers)
    assert all(a == b"" or a.startswith(b"HTTP/1.1 503 ") for a in answers)
    assert server.stats()["failed"] == 20
