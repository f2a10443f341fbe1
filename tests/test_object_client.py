"""S3 reads through obstore where it can, s3fs where it cannot: translation, errors, fallback, fork safety."""

from __future__ import annotations

import multiprocessing
import warnings

import numpy as np
import pytest

from keras_sepseq import object_client, storage
from keras_sepseq.object_client import ObjectStoreError, UseFsspec, s3_reader

obstore = pytest.importorskip("obstore")
pytest.importorskip("s3fs")
s3_server = pytest.importorskip("keras_sepseq.s3_server")

SECRET = s3_server.CREDENTIALS["secret"]


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


@pytest.mark.parametrize(
    "options, expected",
    [
        pytest.param(
            {"key": "a", "secret": "b", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1"}},
            ({"access_key_id": "a", "secret_access_key": "b", "endpoint": "http://127.0.0.1:9", "region": "eu-west-1"},
             {"allow_http": True}),
            id="keys-endpoint-region",
        ),
        pytest.param(
            {"key": "a", "secret": "b", "token": "t", "endpoint_url": "https://minio.example"},
            ({"access_key_id": "a", "secret_access_key": "b", "session_token": "t", "endpoint": "https://minio.example"},
             {"allow_http": False}),
            id="session-token-top-level-endpoint",
        ),
        pytest.param({"anon": True}, ({"skip_signature": True}, {}), id="anonymous"),
        pytest.param({"profile": "work"}, None, id="profile-needs-s3fs"),
        pytest.param({"key": "a", "secret": "b", "config_kwargs": {"s3": {"addressing_style": "virtual"}}}, None,
                     id="botocore-config-needs-s3fs"),
        pytest.param({"key": "a", "secret": "b", "client_kwargs": {"verify": False}}, None, id="client-kwarg-needs-s3fs"),
        pytest.param({}, None, id="no-credentials-needs-s3fs"),
    ],
)  # fmt: skip
def test_storage_options_translate_to_obstore_or_leave_the_url_to_s3fs(monkeypatch, options, expected):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    got = object_client._translate(options)
    if expected is None:
        assert got is None
        return
    config, client = got
    assert config == expected[0]
    assert {k: v for k, v in client.items() if k != "timeout"} == expected[1]


def test_credentials_in_the_environment_are_enough_for_obstore(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    assert object_client._translate({}) is not None


class GenericError(Exception):
    """Stands in for obstore.exceptions.GenericError (only its message is read)."""


class PermissionDeniedError(Exception):
    pass


BODY = '<?xml version="1.0"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
SENT = "Generic S3 error: Error performing GET http://127.0.0.1:5/b/k in 1ms - "


@pytest.mark.parametrize(
    "error, kind, text",
    [
        pytest.param(FileNotFoundError("Object at location k not found: ... 404 Not Found"), FileNotFoundError,
                     "no such object: s3://b/k", id="404"),
        pytest.param(GenericError(SENT + "Server returned non-2xx status code: 403 Forbidden: "
                                  + BODY.format(code="AccessDenied", message="Access Denied")),
                     PermissionError, "access refused to s3://b/k (HTTP 403: AccessDenied Access Denied)", id="403"),
        pytest.param(PermissionDeniedError("denied"), PermissionError, "access refused to s3://b/k", id="denied"),
        pytest.param(GenericError(SENT + "Server returned non-2xx status code: 503 Service Unavailable: "
                                  + BODY.format(code="SlowDown", message="Please reduce your request rate.")
                                  + "\n\nDebug source:\nGeneric { secret: ... }"),
                     ObjectStoreError, "HTTP 503: SlowDown Please reduce your request rate.", id="503-slow-down"),
        pytest.param(GenericError(SENT + "HTTP error: error sending request\n\nDebug source: ..."), ConnectionError,
                     "HTTP error: error sending request", id="dropped-connection"),
        pytest.param(GenericError(SENT + "Server returned non-2xx status code: 301 Moved Permanently: "
                                  + BODY.format(code="PermanentRedirect", message="use the eu endpoint")),
                     UseFsspec, "HTTP 301: PermanentRedirect use the eu endpoint", id="301-other-region"),
        pytest.param(GenericError("Generic S3 error: something obstore cannot do"), UseFsspec,
                     "Generic S3 error: something obstore cannot do", id="unknown"),
    ],
)  # fmt: skip
def test_obstore_errors_become_what_s3fs_raises_in_one_line(error, kind, text):
    mapped = object_client._mapped(error, "s3://b/k")
    assert type(mapped) is kind
    assert str(mapped).startswith(text) and "\n" not in str(mapped) and "Debug" not in str(mapped)
    assert storage.is_transient(mapped) == (kind in (ObjectStoreError, ConnectionError))


def test_obstore_reads_the_loopback_bucket_with_one_get_per_object(s3):
    reader = s3_reader("s3://things/k/3.bin", s3.storage_options)
    assert reader is not None
    assert [storage.read_url(f"s3://things/k/{i}.bin", s3.storage_options) for i in range(8)] == [
        bytes([i]) * (i + 1) for i in range(8)
    ]
    assert s3.stats()["get"] == 8 and s3.stats()["head"] == 0


def test_missing_and_refused_objects_are_named_without_credentials(s3):
    with pytest.raises(FileNotFoundError, match=r"no such object: s3://things/k/none\.bin$"):
        storage.read_url("s3://things/k/none.bin", s3.storage_options)
    s3.configure(deny=["things/k/5"])
    with pytest.raises(PermissionError, match=r"access refused to s3://things/k/5\.bin") as refused:
        storage.read_url("s3://things/k/5.bin", s3.storage_options)
    assert SECRET not in str(refused.value) and s3_server.CREDENTIALS["key"] not in str(refused.value)


def test_transient_failures_through_obstore_are_retried_and_counted(s3):
    s3.configure(fail=0.5)
    stats = storage.StorageStats()
    got = [storage.read_url(f"s3://things/k/{i}.bin", s3.storage_options, stats=stats, attempts=20) for i in range(8)]
    assert got == [bytes([i]) * (i + 1) for i in range(8)]
    counts = stats.as_dict()
    assert counts["retries"] == s3.stats()["failed"] > 0 and counts["failures"] == 0
    assert ("HTTP 503" in stats.last_retry) or ("ConnectionError" in stats.last_retry)


def test_a_store_obstore_cannot_read_goes_to_s3fs_for_good_with_one_warning(s3, monkeypatch):
    options = {**s3.storage_options, "key": "other-key"}  # a store of its own in the readers' cache
    calls = []

    def redirected(store, path):
        calls.append(path)
        raise GenericError(
            SENT + "Server returned non-2xx status code: 301 Moved Permanently: "
            + BODY.format(code="PermanentRedirect", message="another region")
        )  # fmt: skip

    monkeypatch.setattr(obstore, "get", redirected)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = [storage.read_url(f"s3://things/k/{i}.bin", options) for i in range(3)]
    assert got == [bytes([i]) * (i + 1) for i in range(3)]  # read by s3fs
    assert calls == ["k/0.bin"]  # obstore was asked once, then never again for this store
    ours = [str(w.message) for w in caught if "obstore could not read" in str(w.message)]
    assert ours == ["keras_sepseq: obstore could not read s3://things (HTTP 301: PermanentRedirect another region); "
                    "reading it through s3fs from now on."]  # fmt: skip


def test_the_environment_variable_sends_every_read_to_s3fs(s3, monkeypatch):
    monkeypatch.setenv(object_client.CLIENT_VARIABLE, "s3fs")
    assert s3_reader("s3://things/k/1.bin", s3.storage_options) is None
    assert storage.read_url("s3://things/k/1.bin", s3.storage_options) == b"\x01\x01"


def _read_in_child(url, options, queue):
    try:
        queue.put(("reader", s3_reader(url, options) is None, storage.read_url(url, options)))
    except BaseException as e:  # reported to the parent, which fails the test
        queue.put(("error", repr(e), b""))


def test_a_process_forked_after_obstore_ran_reads_through_s3fs_instead_of_hanging(s3):
    url = "s3://things/k/2.bin"
    assert storage.read_url(url, s3.storage_options) == b"\x02" * 3  # obstore's threads run in this process
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(url, s3.storage_options, queue))
    child.start()
    child.join(60)
    alive = child.is_alive()
    if alive:
        child.kill()
    assert not alive, "the forked child hung reading through obstore"
    kind, no_reader, data = queue.get(timeout=5)
    assert (kind, no_reader, data) == ("reader", True, b"\x02" * 3)


def test_bytes_read_through_obstore_and_s3fs_are_the_same(s3, monkeypatch):
    urls = [f"s3://things/k/{i}.bin" for i in range(8)]
    fast = [storage.read_url(u, s3.storage_options) for u in urls]
    monkeypatch.setenv(object_client.CLIENT_VARIABLE, "s3fs")
    slow = [storage.read_url(u, s3.storage_options) for u in urls]
    assert fast == slow and all(isinstance(b, bytes) for b in fast)
    assert np.frombuffer(fast[7], np.uint8).tolist() == [7] * 8
