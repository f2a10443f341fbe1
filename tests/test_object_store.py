"""keras_sepseq.object_store: options, credentials, keys and secrets, against real servers on 127.0.0.1.

S3 is moto's server behind keras_sepseq's proxy (which records the access key id that signed each request, so
a test can tell which credentials reached the server); HTTP is Python's own file server. Each runs in its own
process or thread, started and stopped here.
"""

from __future__ import annotations

import datetime
import functools
import pickle
import threading
import warnings
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import decode_index, index_image, indexed_objects, npy_bytes, png_bytes

import keras_sepseq as ks
from keras_sepseq import object_store, storage
from keras_sepseq.errors import SampleError

pytest.importorskip("obstore")
s3_server = pytest.importorskip("keras_sepseq.s3_server")


@pytest.fixture(autouse=True)
def fresh_clients():
    """Every test makes its clients from the environment it sets up."""
    object_store.forget_clients()
    yield
    object_store.forget_clients()


@pytest.mark.parametrize(
    "url, options, config",
    [
        ("s3://b/k", {"key": "AK", "secret": "SK", "token": "T"},
         {"access_key_id": "AK", "secret_access_key": "SK", "session_token": "T"}),
        ("s3://b/k", {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "eu-west-1"}},
         {"endpoint": "http://127.0.0.1:9000", "region": "eu-west-1"}),
        ("s3://b/k", {"anon": True, "requester_pays": True}, {"skip_signature": True, "request_payer": True}),
        ("s3://b/k", {"config_kwargs": {"s3": {"addressing_style": "virtual"}}}, {"virtual_hosted_style_request": True}),
        ("s3://b/k", {"role_arn": "arn:aws:iam::1:role/r"}, {"role_arn": "arn:aws:iam::1:role/r"}),
        ("gs://b/k", {"token": "/keys/sa.json"}, {"service_account_path": "/keys/sa.json"}),
        ("az://c/k", {"account_name": "acct", "account_key": "AKEY"}, {"account_name": "acct", "account_key": "AKEY"}),
        ("abfs://c@acct.dfs.core.windows.net/k", {"sas_token": "sv=1&sig=x"}, {"sas_key": "sv=1&sig=x"}),
    ],
    ids=["s3-keys", "s3-client-kwargs", "s3-anon-requester-pays", "s3-virtual-host", "s3-obstore-key",
         "gcs-token-file", "azure-account-key", "azure-sas"],
)  # fmt: skip
def test_fsspec_style_options_translate_once(url, options, config):
    translated = object_store.translate(url, options)
    assert translated.config == config
    assert "AK" not in repr(translated) and "SK" not in repr(translated)  # repr never shows values


@pytest.mark.parametrize(
    "url, options, message",
    [
        ("s3://b/k", {"secrt": "x"}, r"unknown storage option 'secrt' for s3:// URLs; did you mean 'secret'\?"),
        ("s3://b/k", {"endpoint_ur": "x"}, r"unknown storage option 'endpoint_ur' .*did you mean 'endpoint_url'\?"),
        ("gs://b/k", {"project": "p"}, r"unknown storage option 'project' for gs:// URLs"),
        ("s3://b/k", {"client_kwargs": {"verify_ssl": False}}, r"unknown storage option 'client_kwargs.verify_ssl'"),
    ],
    ids=["typo", "close-to-fsspec-key", "gcs-unknown", "client-kwargs-unknown"],
)
def test_an_unknown_option_is_named_with_the_closest_known_one(url, options, message):
    with pytest.raises(ValueError, match=message):
        object_store.translate(url, options)


def test_public_options_keep_only_what_is_known_to_be_public():
    options = {
        "key": "AKIA1", "secret": "S1", "headers": {"Authorization": "Bearer T1"}, "sas_token": "sig=T2",
        "credential_provider": object(), "client_kwargs": {"endpoint_url": "https://u:PW@host:9000?sig=Q", "region_name": "r"},
        "anon": False,
    }  # fmt: skip
    public = object_store.public_options(options)
    assert public == {"client_kwargs": {"endpoint_url": "https://host:9000", "region_name": "r"}, "anon": False}


@pytest.mark.parametrize(
    "url, parts",
    [
        ("s3://bucket/a/b.png", ("s3", "bucket", "a/b.png")),
        ("gs://bucket/a.png", ("gs", "bucket", "a.png")),
        ("az://container/x/y.npy", ("az", "container", "x/y.npy")),
        ("https://host:8443/data/a.png", ("https", "https://host:8443", "data/a.png")),
        ("s3://bucket/a/../../other/x.png", ("s3", "bucket", "a/../../other/x.png")),
    ],
    ids=["s3", "gcs", "azure", "https", "dot-dot-kept-as-written"],
)
def test_urls_split_into_store_and_key_as_written(url, parts):
    assert object_store.split_url(url) == parts


def test_redact_strikes_secrets_and_signed_parts_of_urls():
    text = "GET https://u:PW@h/k?X-Amz-Signature=SIG failed with key AKIASECRET"
    assert object_store.redact(text, ["AKIASECRET"]) == "GET https://h/k failed with key ***"


@pytest.fixture(scope="module")
def server():
    with s3_server.LoopbackS3() as server:
        server.upload("data", indexed_objects(12))
        server.upload("other", {"x.png": png_bytes(index_image(99)), "secret.npy": npy_bytes(np.array(99))})
        yield server


@pytest.fixture
def s3(server):
    server.configure(latency=0.0, fail=0.0, deny=[])
    server.reset()
    return server


def urls(n: int = 12) -> tuple[list[str], list[str]]:
    return [f"s3://data/img/image_{i:04d}.png" for i in range(n)], [
        f"s3://data/lbl/label_{i:04d}.npy" for i in range(n)
    ]


def endpoint_only(server) -> dict:
    return {"endpoint_url": server.endpoint, "region_name": "us-east-1"}


def epoch(seq) -> list[int]:
    seen = []
    for i in range(len(seq)):
        x, y = seq[i]
        assert decode_index(x).tolist() == np.asarray(y).tolist()
        seen += np.asarray(y).tolist()
    seq.on_epoch_end()
    return seen


def test_a_key_with_dot_dot_never_reaches_another_bucket(s3):
    images, labels = urls(4)
    labels[2] = "s3://data/lbl/../../other/secret.npy"  # on a path-style endpoint, /other/secret.npy
    seq = ks.SeparatedSequence(images, labels, batch_size=4, shuffle=False, storage_options=s3.storage_options)
    with pytest.raises(
        SampleError, match=r"sample 2, file 's3://data/lbl/\.\./\.\./other/secret\.npy'.*not a valid key"
    ):
        seq[0]
    skipping = ks.SeparatedSequence(
        images, labels, batch_size=4, shuffle=False, storage_options=s3.storage_options, on_error="skip"
    )
    x, y, w = skipping[0]
    assert y.tolist() == [0, 1, 3] and [e.index for e in skipping.errors] == [2]
    assert set(s3.stats()["buckets"]) == {"data"}  # no request for the other bucket, ever


def test_credentials_from_environment_variables(s3, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-value")
    seq = ks.SeparatedSequence(*urls(), batch_size=4, seed=0, storage_options=endpoint_only(s3), workers=2)
    try:
        assert sorted(epoch(seq)) == list(range(12))
    finally:
        seq.close()
    assert set(s3.stats()["keys"]) == {"AKIDFROMENV"}
    assert seq.remote_stats["client"] == "obstore S3Store"
    assert seq.remote_stats["credentials"] == "environment variables (AWS_ACCESS_KEY_ID)"


@pytest.mark.parametrize("how", ["option", "AWS_PROFILE"])
def test_credentials_from_a_profile_file(s3, monkeypatch, tmp_path, how):
    pytest.importorskip("boto3")
    (tmp_path / "credentials").write_text(
        "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = d\n"
        "[work]\naws_access_key_id = AKIDWORKPROFILE\naws_secret_access_key = profile-secret-value\n"
    )
    (tmp_path / "config").write_text("[profile work]\nregion = us-east-1\n")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    options = endpoint_only(s3)
    if how == "option":
        options["profile"] = "work"
    else:
        monkeypatch.setenv("AWS_PROFILE", "work")
    seq = ks.SeparatedSequence(*urls(), batch_size=6, seed=1, storage_options=options)
    assert sorted(epoch(seq)) == list(range(12))
    assert set(s3.stats()["keys"]) == {"AKIDWORKPROFILE"}
    assert seq.remote_stats["credentials"] == "AWS profile 'work' (boto3, refreshed)"
    assert b"profile-secret-value" not in pickle.dumps(seq)


def test_short_lived_credentials_are_refreshed_mid_epoch(s3):
    issued = []
    lock = threading.Lock()

    def provider():  # hands out credentials that expire a second after they are issued
        with lock:
            issued.append(f"AKIDSHORT{len(issued):04d}")
            key = issued[-1]
        expires = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=1)
        return {"access_key_id": key, "secret_access_key": "short", "token": "t", "expires_at": expires}

    s3.configure(latency=0.05)  # 12 batches of 2 objects: over a second an epoch
    options = {**endpoint_only(s3), "credential_provider": provider}
    seq = ks.SeparatedSequence(*urls(), batch_size=1, seed=2, storage_options=options)
    try:
        orders = [epoch(seq) for _ in range(2)]
    finally:
        seq.close()
    assert all(sorted(order) == list(range(12)) for order in orders)  # nothing lost while keys changed
    keys = s3.stats()["keys"]
    assert len(keys) >= 2 and set(keys) <= set(issued)  # refreshed, and only issued keys were used
    assert seq.remote_stats["failures"] == 0 and seq.remote_stats["credentials"] == "credential provider function"
    assert "credential_provider" not in pickle.loads(pickle.dumps(seq)).storage_options


def test_a_wrong_endpoint_is_named_without_the_secret(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "AKIDWRONG", "secret": "wrong-endpoint-secret"}
    with pytest.raises(OSError) as caught:
        storage.read_url("s3://data/img/image_0000.png", options, attempts=2)
    message = str(caught.value)
    assert message.startswith(
        "cannot read s3://data/img/image_0000.png (tried 2 times): RemoteError: connection refused"
    )
    assert "wrong-endpoint-secret" not in message and "AKIDWRONG" not in message


def test_a_forbidden_object_is_named_and_not_retried(s3):
    s3.configure(deny=["data/lbl/label_0003"])
    stats = storage.StorageStats()
    with pytest.raises(
        PermissionError,
        match=r"^access refused to s3://data/lbl/label_0003\.npy \(HTTP 403: AccessDenied Access Denied\)$",
    ):
        storage.read_url("s3://data/lbl/label_0003.npy", s3.storage_options, stats=stats)
    assert stats.as_dict()["requests"] == 1 and stats.as_dict()["retries"] == 0


@pytest.fixture(scope="module")
def tls_server():
    with s3_server.LoopbackS3(tls=True) as server:
        server.upload("secure", {"a.npy": npy_bytes(np.arange(3))})
        yield server


def test_https_is_verified_and_trusts_the_ca_bundle_users_set(tls_server, monkeypatch):
    for name in ("AWS_CA_BUNDLE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    stats = storage.StorageStats()
    with pytest.raises(
        OSError, match=r"^cannot read s3://secure/a\.npy: RemoteError: TLS: the server's certificate is not trusted"
    ):
        storage.read_url("s3://secure/a.npy", tls_server.storage_options, stats=stats)
    assert stats.as_dict()["retries"] == 0  # a certificate refused now is refused next time too
    monkeypatch.setenv("AWS_CA_BUNDLE", tls_server.ca_file)
    object_store.forget_clients()
    assert storage.read_url("s3://secure/a.npy", tls_server.storage_options) == npy_bytes(np.arange(3))


@pytest.fixture
def web(tmp_path):
    """tmp_path served over HTTP by Python's own file server, and the paths it asked for."""
    asked = []

    class Recording(SimpleHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            asked.append(self.path)
            super().do_GET()

        def log_message(self, format, *args):  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Recording, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()
    thread.join(10)


def test_signed_urls_are_sent_with_their_query_and_never_shown(web, tmp_path):
    base, asked = web
    (tmp_path / "a.npy").write_bytes(npy_bytes(np.arange(4)))
    signed = f"{base}/a.npy?X-Amz-Signature=SIGNATURE123&X-Amz-Credential=AKIDQUERY"
    object_store._WARNED.discard("query")
    with pytest.warns(UserWarning, match=r"with a query string \(signed URLs\) through Python's urllib"):
        assert storage.read_url(signed) == npy_bytes(np.arange(4))
    assert asked == ["/a.npy?X-Amz-Signature=SIGNATURE123&X-Amz-Credential=AKIDQUERY"]  # the query as written
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        with pytest.raises(FileNotFoundError) as caught:
            storage.read_url(f"{base}/missing.npy?X-Amz-Signature=SIGNATURE123")
    assert str(caught.value) == f"no such object: {base}/missing.npy"


def test_a_bucket_in_another_region_is_followed_there_with_one_warning(s3):
    s3.upload("faraway", {"img/a.png": png_bytes(index_image(5)), "lbl/a.npy": npy_bytes(np.array(5))})
    s3.configure(regions={"faraway": "eu-west-1"})  # answers 301, as AWS does, unless signed for eu-west-1
    try:
        with pytest.warns(UserWarning, match=r"s3://faraway is in region 'eu-west-1', not 'us-east-1'"):
            found = ks.pair_files(
                "s3://faraway/img/*.png", "s3://faraway/lbl/*.npy", storage_options=s3.storage_options
            )
        assert found == (["s3://faraway/img/a.png"], ["s3://faraway/lbl/a.npy"])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the region is known now: no more redirects, no more warnings
            x, y = ks.SeparatedSequence(*found, batch_size=1, storage_options=s3.storage_options)[0]
        assert decode_index(x).tolist() == [5] and y.tolist() == [5]
        assert s3.stats()["redirected"] == 2  # the first listing, and the unsigned HEAD that asked the region
    finally:
        s3.configure(regions={})


def test_reads_of_every_sequence_share_a_bounded_number_of_threads(s3):
    from keras_sepseq import fetching

    s3.configure(latency=0.05)
    images, labels = urls()
    wanted = images + labels
    fetchers = [fetching.Fetcher(200, s3.storage_options) for _ in range(3)]
    try:
        futures = [f.fetch(wanted) for f in fetchers]
        contents = [fetching.wait_all(f) for f in futures]
        io_threads = [t for t in threading.enumerate() if t.name.startswith("keras_sepseq_io")]
        assert 0 < len(io_threads) <= fetching.IO_THREADS
        expected = npy_bytes(np.array(3, dtype=np.int64))
        assert all(c[labels[3]] == expected for c in contents)
    finally:
        for f in fetchers:
            f.close()


def test_a_fetcher_keeps_its_reads_in_flight_and_cancels_the_rest_when_closed(s3):
    from keras_sepseq import fetching

    s3.configure(latency=0.2)
    images, labels = urls()
    fetcher = fetching.Fetcher(2, s3.storage_options)
    futures = fetcher.fetch(images)
    fetcher.close()
    outcomes = [f.cancelled() for f in futures.values()]
    assert outcomes == [False, False] + [True] * 10  # the two on their way end; the ten waiting never start
    assert [len(f.result()) > 0 for f in list(futures.values())[:2]] == [True, True]
    assert s3.stats()["get"] == 2
    with pytest.raises(OSError, match=r"cannot read s3://data/img/image_0000\.png: the reader was closed"):
        fetcher.fetch(images[:1])[images[0]].result()


def test_a_volume_cache_keeps_no_secret_of_the_urls_it_was_filled_from(tmp_path):
    from keras_sepseq.volume_store import VolumeStore

    signed = "https://me:PASSWORD1@host.example/scan.nii.gz?X-Amz-Signature=SIGNATURE1&X-Amz-Security-Token=TOKEN1"
    store = VolumeStore(1, str(tmp_path / "cache"), [[signed]])
    store.get(0, lambda: ((np.arange(8.0).reshape(2, 2, 2),), None))
    written = b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert b"host.example/scan.nii.gz" in written  # the record names the file...
    assert not any(secret in written for secret in (b"PASSWORD1", b"SIGNATURE1", b"TOKEN1"))  # ...never its secrets
    again = VolumeStore(1, str(tmp_path / "cache"), [[signed]])
    again.get(0, lambda: pytest.fail("the copy on disk is current: nothing is decoded"))
    resigned = VolumeStore(1, str(tmp_path / "cache"), [[signed.replace("SIGNATURE1", "SIGNATURE2")]])
    resigned.get(0, lambda: pytest.fail("a URL signed again names the same object: nothing is decoded"))
    other = VolumeStore(1, str(tmp_path / "cache"), [[signed.replace("?X-Amz", "?version=2&X-Amz")]])
    decoded = []
    other.get(0, lambda: decoded.append(1) or ((np.zeros((2, 2, 2)),), None))
    assert decoded == [1]  # a query that names another object (another version) is another file
