"""URLs as paths (keras_sepseq.storage, keras_sepseq.fetching): helpers, and sequences over a loopback S3 server.

The server is moto's, in its own process (conftest's `loopback_s3`); failures, latency and refusals through
its proxy are in test_object_storage.py.
"""

from __future__ import annotations

import hashlib
import pickle
import sys
import uuid

import numpy as np
import pytest
from conftest import decode_index, index_image, npy_bytes, png_bytes

import keras_sepseq as ks
from keras_sepseq import listing, storage
from keras_sepseq.errors import SampleError


@pytest.mark.parametrize(
    "path, expected",
    [
        ("s3://bucket/a.png", True),
        ("gs://bucket/a.png", True),
        ("https://host/a.png", True),
        ("file:///x/a.png", True),
        ("/data/a.png", False),
        ("data/a.png", False),
        ("C:/data/a.png", False),
    ],
    ids=["s3", "gs", "https", "file", "absolute", "relative", "drive-letter"],
)
def test_is_url(path, expected):
    assert storage.is_url(path) is expected


@pytest.mark.parametrize(
    "url, shown",
    [
        ("https://user:pw@host:8080/a.png?X-Amz-Signature=abc&X-Amz-Credential=k", "https://host:8080/a.png"),
        ("s3://bucket/a/b.png", "s3://bucket/a/b.png"),
        ("local/a.png", "local/a.png"),
    ],
    ids=["userinfo-and-signed-query", "plain-s3", "local"],
)
def test_display_url_drops_credentials(url, shown):
    assert storage.display_url(url) == shown


def test_public_options_drop_every_secret_at_every_level():
    options = {
        "key": "AKIAEXAMPLE",
        "secret": "s3cr3t",
        "token": "tok",
        "anon": False,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:1", "aws_secret_access_key": "s3cr3t", "region_name": "r"},
        "config_kwargs": {"connect_timeout": 5},
    }
    public = storage.public_options(options)
    assert public == {
        "anon": False,
        "client_kwargs": {"endpoint_url": "http://127.0.0.1:1", "region_name": "r"},
        "config_kwargs": {"connect_timeout": 5},
    }
    assert options["secret"] == "s3cr3t"  # the caller's copy is untouched


class _Status(Exception):
    def __init__(self, status):
        super().__init__(f"HTTP {status}")
        self.status = status


@pytest.mark.parametrize(
    "error, transient",
    [
        (TimeoutError("read timed out"), True),
        (ConnectionResetError("reset by peer"), True),
        (_Status(503), True),
        (_Status(500), True),
        (_Status(429), True),
        (_Status(408), True),
        (_Status(404), False),
        (_Status(403), False),
        (FileNotFoundError("s3://b/k"), False),
        (PermissionError("denied"), False),
        (OSError("SlowDown: please reduce your request rate"), True),
        (ValueError("not an image"), False),
    ],
    ids=["timeout", "reset", "503", "500", "429", "408", "404", "403", "missing", "forbidden", "slowdown", "value"],
)
def test_transient_errors_are_told_from_permanent_ones(error, transient):
    assert storage.is_transient(error) is transient


def test_an_error_chained_from_an_http_answer_takes_its_status():
    try:
        try:
            raise _Status(502)
        except _Status as cause:
            raise OSError("wrapped") from cause
    except OSError as e:
        assert storage.is_transient(e)


def test_read_url_reads_and_names_a_missing_object(s3_dataset, tmp_path):
    images, labels, options = s3_dataset(1)
    stats = storage.StorageStats()
    assert storage.read_url(labels[0], options, stats=stats) == npy_bytes(np.array(0, dtype=np.int64))
    missing = labels[0].replace("label_0000", "missing")
    with pytest.raises(FileNotFoundError, match=rf"^no such object: {missing}$"):
        storage.read_url(missing, options, stats=stats)
    assert stats.as_dict()["requests"] == 2 and stats.as_dict()["failures"] == 1
    (tmp_path / "a.bin").write_bytes(b"abc")
    assert storage.read_url(f"file://{tmp_path}/a.bin") == b"abc"  # file:// is a local file


def test_missing_obstore_names_the_extra(monkeypatch):
    from keras_sepseq import object_store

    monkeypatch.setitem(sys.modules, "obstore.store", None)  # as if obstore were not installed
    monkeypatch.setattr(object_store, "_STORES", {})
    with pytest.raises(ImportError, match=r"reading gs:// URLs needs obstore.*pip install 'keras-sepseq\[remote\]'"):
        storage.read_url("gs://bucket/a.png")


def test_an_unknown_scheme_is_named():
    with pytest.raises(
        ValueError, match=r"keras_sepseq reads no memory:// URLs \(it reads .*s3://.*\). Received: 'memory://x/a.png'"
    ):
        storage.read_url("memory://x/a.png")


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("s3://b/img/*.png", ["s3://b/img/1.png", "s3://b/img/2.png"]),
        ("s3://b/img/**/*.png", ["s3://b/img/1.png", "s3://b/img/2.png", "s3://b/img/sub/3.png"]),
        ("s3://b/img/?.png", ["s3://b/img/1.png", "s3://b/img/2.png"]),
        ("s3://b/img/[!1].png", ["s3://b/img/2.png"]),
        ("s3://b/lbl/*.npy", ["s3://b/lbl/1.npy"]),
    ],
    ids=["star", "double-star", "question-mark", "negated-class", "other-folder"],
)
def test_manifest_entries_are_matched_like_glob(pattern, expected):
    listed = ["s3://b/img/2.png", "s3://b/img/1.png", "s3://b/img/sub/3.png", "s3://b/lbl/1.npy", "s3://b/img/1.jpg"]
    assert listing.matching(pattern, listed) == expected


def test_read_manifest_text_and_csv(tmp_path):
    text = tmp_path / "files.txt"
    text.write_text("# the training set\nimages/1.png\n\ns3://other/2.png\n")
    assert listing.read_manifest(text) == [str(tmp_path / "images" / "1.png"), "s3://other/2.png"]
    table = tmp_path / "files.csv"
    table.write_text("path,label\nimages/1.png,3\nimages/2.png,4\n")
    assert listing.read_manifest(table) == [str(tmp_path / "images" / n) for n in ("1.png", "2.png")]
    assert listing.read_manifest(table, column="label") == [str(tmp_path / n) for n in ("3", "4")]
    with pytest.raises(ValueError, match=r"has no column 'nope'; its columns: \['path', 'label'\]"):
        listing.read_manifest(table, column="nope")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match="lists no path"):
        listing.read_manifest(empty)


def test_pair_files_lists_a_bucket_and_a_manifest(s3_dataset, tmp_path):
    images, labels, options = s3_dataset(12)
    root = images[0].rsplit("/img/", 1)[0]
    assert ks.pair_files(f"{root}/img/*.png", f"{root}/lbl/*.npy", storage_options=options) == (images, labels)
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("\n".join(images[:5] + labels[:5]))
    found = ks.pair_files(f"{root}/img/*.png", f"{root}/lbl/*.npy", manifest=manifest, storage_options=options)
    assert found == (images[:5], labels[:5])
    with pytest.raises(ValueError, match=r"`image_pattern` matched no files in the manifest"):
        ks.pair_files(f"{root}/img/*.jpg", f"{root}/lbl/*.npy", manifest=manifest)


def batches_digest(seq) -> tuple[str, list[int]]:
    digest, seen = hashlib.sha256(), []
    for i in range(len(seq)):
        x, y = seq[i]
        digest.update(np.ascontiguousarray(x).tobytes())
        digest.update(np.ascontiguousarray(y).tobytes())
        assert decode_index(x).tolist() == np.asarray(y).tolist()  # image and label of one sample stay together
        seen.extend(np.asarray(y).tolist())
    seq.on_epoch_end()
    return digest.hexdigest(), seen


@pytest.mark.parametrize(
    "options",
    [{"workers": 1}, {"workers": 2}, {"workers": 2, "use_multiprocessing": True}],
    ids=["workers=1", "2-threads", "2-processes"],
)
def test_urls_give_the_bytes_of_local_files(options, s3_dataset, indexed_dataset):
    images, labels, storage_options = s3_dataset(21)
    local_images, local_labels = indexed_dataset(21)
    remote = ks.SeparatedSequence(
        images, labels, batch_size=4, seed=3, dtype="uint8", storage_options=storage_options, **options
    )
    local = ks.SeparatedSequence(local_images, local_labels, batch_size=4, seed=3, dtype="uint8")
    try:
        for _ in range(2):
            digest, seen = batches_digest(remote)
            assert sorted(seen) == list(range(21))  # every sample once
            assert digest == batches_digest(local)[0]
        assert remote.remote_stats["requests"] == 2 * 2 * 21  # two epochs, two files per sample, no more
    finally:
        remote.close()


def test_a_missing_object_is_a_sample_error_naming_its_url(s3_dataset):
    images, labels, options = s3_dataset(6)
    labels[4] = labels[4].replace("label_0004", "gone_0004")
    seq = ks.SeparatedSequence(images, labels, batch_size=3, shuffle=False, workers=2, storage_options=options)
    try:
        with pytest.raises(SampleError, match=rf"sample 4, file '{labels[4]}': cannot load label: FileNotFoundError"):
            seq[1]
    finally:
        seq.close()
    skipping = ks.SeparatedSequence(
        images, labels, batch_size=3, shuffle=False, on_error="skip", storage_options=options
    )
    x, y, w = skipping[1]
    assert y.tolist() == [3, 5] and w.tolist() == [1.0, 1.0]
    assert [(e.index, e.path) for e in skipping.errors] == [(4, labels[4])]
    assert skipping.errors[0].reason == f"cannot load label: FileNotFoundError: no such object: {labels[4]}"


def test_credentials_never_reach_pickles_state_or_messages(s3_dataset):
    images, labels, server_options = s3_dataset(4)
    secret = "s3cr3t-" + uuid.uuid4().hex  # moto accepts any key
    endpoint = server_options["client_kwargs"]["endpoint_url"]
    options = {
        "key": "AKIA" + secret,
        "secret": secret,
        "client_kwargs": {"region_name": "us-east-1", "endpoint_url": endpoint},
    }
    seq = ks.SeparatedSequence(images, labels, batch_size=2, storage_options=options)
    seq[0]
    shipped = pickle.dumps(seq)
    assert secret.encode() not in shipped
    assert pickle.loads(shipped).storage_options == {
        "client_kwargs": {"region_name": "us-east-1", "endpoint_url": endpoint}
    }
    assert seq.remote_stats["credentials"] == "storage_options keys" and secret not in str(seq.remote_stats)
    assert secret not in repr(seq) and secret not in str(seq.get_state())
    assert seq.storage_options["secret"] == secret  # the caller keeps them


def test_storage_options_and_reads_in_flight_are_checked():
    with pytest.raises(TypeError, match=r"`storage_options` must be a dict of storage options, or None. Received: str"):
        ks.SeparatedSequence(["a.png"], [0], storage_options="key=1")
    with pytest.raises(ValueError, match="reads_in_flight"):
        ks.SeparatedSequence(["a.png"], [0], reads_in_flight=0)


def test_from_directory_and_from_table_read_urls(loopback_s3):
    bucket = f"cls{uuid.uuid4().hex[:8]}"
    options = loopback_s3.storage_options
    objects = {
        f"{name}/sub/img_{i}.png": png_bytes(index_image(i))
        for name, ids in (("cat", [0, 1, 2]), ("dog", [3, 4]))
        for i in ids
    }
    objects["table.csv"] = b"photo,label\n" + b"".join(f"cat/sub/img_{i}.png,{i}\n".encode() for i in range(3))
    loopback_s3.upload(bucket, objects)
    seq = ks.from_directory(f"s3://{bucket}", batch_size=5, shuffle=False, dtype="uint8", storage_options=options)
    x, y = seq[0]
    assert seq.class_names == ["cat", "dog"] and y.tolist() == [0, 0, 0, 1, 1]
    assert decode_index(x).tolist() == [0, 1, 2, 3, 4]
    table = ks.from_table(
        f"s3://{bucket}/table.csv",
        "photo",
        "label",
        batch_size=3,
        shuffle=False,
        dtype="uint8",
        storage_options=options,
    )
    x, y = table[0]
    assert decode_index(x).tolist() == y.tolist() == [0, 1, 2]


@pytest.mark.parametrize("done_before", [False, True], ids=["done-after", "done-before"])
def test_when_all_lets_go_of_the_reads_once_done(done_before):
    """No reference cycle keeps a chunk's bytes alive until the cyclic GC runs (it grew S3 runs by ~130 MB an epoch)."""
    import gc
    import weakref
    from concurrent.futures import Future

    from keras_sepseq.fetching import when_all

    class Payload:  # bytes cannot be weakly referenced; this stands for them
        pass

    gc.disable()
    try:
        payloads = [Payload(), Payload()]
        refs = [weakref.ref(p) for p in payloads]
        futures = {"s3://b/a": Future(), "s3://b/b": Future()}
        got: list[dict] = []
        if done_before:
            for future, payload in zip(futures.values(), payloads):
                future.set_result(payload)
        when_all(futures, got.append)
        assert len(got) == (1 if done_before else 0)
        if not done_before:
            for future, payload in zip(futures.values(), payloads):
                future.set_result(payload)
        assert len(got) == 1 and [got[0][url] for url in futures] == payloads
        del payloads, futures, got, future, payload
        assert [ref() for ref in refs] == [None, None]
    finally:
        gc.enable()
