"""Datasets in S3, read through obstore from an S3 server on 127.0.0.1 (moto's, behind a proxy).

The proxy (`keras_sepseq.s3_server`) adds latency, fails a share of reads
(503s and dropped connections) and refuses chosen keys with 403, so these
tests exercise the real client, the HTTP path and the retries.
"""

from __future__ import annotations

import json
import math
import pickle
import re

import numpy as np
import pytest
from conftest import decode_index, indexed_objects
from PIL import Image

import keras_sepseq as ks
from keras_sepseq.cli import main
from keras_sepseq.errors import SampleError

pytest.importorskip("obstore")
s3_server = pytest.importorskip("keras_sepseq.s3_server")

N = 40


@pytest.fixture(scope="module")
def server():
    with s3_server.LoopbackS3(latency=0.002, seed=7) as server:
        server.upload("data", indexed_objects(N))
        yield server


@pytest.fixture
def s3(server):
    """The server with no failures or refusals and fresh counts."""
    server.configure(latency=0.002, fail=0.0, deny=[])
    server.reset()
    return server


def paired(server) -> tuple[list[str], list[str]]:
    return ks.pair_files("s3://data/img/*.png", "s3://data/lbl/*.npy", storage_options=server.storage_options)


def epoch(seq) -> list[int]:
    seen = []
    for i in range(len(seq)):
        x, y = seq[i]
        assert decode_index(x).tolist() == np.asarray(y).tolist()  # each image with its own label
        seen.extend(np.asarray(y).tolist())
    seq.on_epoch_end()
    return seen


def test_pair_files_lists_each_prefix_once(s3):
    images, labels = paired(s3)
    assert images == [f"s3://data/img/image_{i:04d}.png" for i in range(N)]
    assert labels == [f"s3://data/lbl/label_{i:04d}.npy" for i in range(N)]
    stats = s3.stats()
    assert (
        stats["list"] == 2 and stats["get"] == 0 and stats["head"] == 0
    )  # one listing per pattern, no per-file request


def test_listing_costs_a_request_per_page_not_per_key(s3):
    keys = 2_100  # S3 pages hold 1,000 keys: three pages
    s3.upload("many", {f"k/{i:05d}.npy": b"x" for i in range(keys)})
    s3.reset()
    found = ks.pair_files("s3://many/k/*.npy", "s3://many/k/*.npy", storage_options=s3.storage_options, key=str)[0]
    assert len(found) == keys
    assert s3.stats()["list"] == 2 * math.ceil(keys / 1000)  # two patterns, three pages each


@pytest.mark.parametrize(
    "options",
    [{"workers": 1}, {"workers": 2}, {"workers": 2, "use_multiprocessing": True}],
    ids=["workers=1", "2-threads", "2-processes"],
)
def test_every_sample_once_per_epoch_and_aligned(s3, options):
    images, labels = paired(s3)
    seq = ks.SeparatedSequence(
        images, labels, batch_size=6, seed=1, dtype="uint8", storage_options=s3.storage_options, **options
    )
    try:
        orders = [epoch(seq) for _ in range(2)]
    finally:
        seq.close()
    assert all(sorted(order) == list(range(N)) for order in orders)
    assert orders[0] != orders[1]  # reshuffled
    assert s3.stats()["get"] == 2 * 2 * N  # every object read once per epoch, nothing read twice


@pytest.mark.parametrize(
    "options",
    [{"workers": 1}, {"workers": 2}, {"workers": 2, "use_multiprocessing": True}],
    ids=["workers=1", "2-threads", "2-processes"],
)
def test_transient_failures_are_retried_and_reported(s3, options):
    s3.configure(fail=0.02)
    images, labels = paired(s3)
    seq = ks.SeparatedSequence(images, labels, batch_size=8, seed=2, storage_options=s3.storage_options, **options)
    try:
        with pytest.warns(UserWarning, match=r"keras_sepseq read objects again \d+ time\(s\) this epoch") as caught:
            orders = [epoch(seq) for _ in range(4)]
    finally:
        seq.close()
    assert all(sorted(order) == list(range(N)) for order in orders)
    ours = [str(w.message) for w in caught if "read objects again" in str(w.message)]
    assert sum(int(text.split("again ")[1].split(" ")[0]) for text in ours) == seq.remote_stats["retries"]
    stats = s3.stats()
    assert stats["failed"] > 0  # 2% of about 320 reads failed...
    assert seq.remote_stats["failures"] == 0 and seq.remote_stats["retries"] > 0  # ...and were read again
    # The proxy's 503 names itself; a dropped connection is named by the client.
    assert re.search(
        r"HTTP 503: .*injected failure|error sending request|connection closed",
        seq.remote_stats["last_retry"],
    )


def test_a_missing_object_is_named_in_a_sample_error(s3):
    images, labels = paired(s3)
    labels[5] = "s3://data/lbl/label_9999.npy"
    seq = ks.SeparatedSequence(
        images,
        labels,
        batch_size=4,
        shuffle=False,
        workers=2,
        use_multiprocessing=True,
        storage_options=s3.storage_options,
    )
    try:
        with pytest.raises(
            SampleError,
            match=r"sample 5, file 's3://data/lbl/label_9999.npy': cannot load label: "
            r"FileNotFoundError: no such object: s3://data/lbl/label_9999.npy",
        ):
            seq[1]
    finally:
        seq.close()


def test_objects_missing_from_reads_ahead_are_named_for_their_own_samples(s3):
    images, labels = paired(s3)
    labels[5], images[30] = "s3://data/lbl/label_9999.npy", "s3://data/img/image_9999.png"
    seq = ks.SeparatedSequence(
        images, labels, batch_size=4, shuffle=False, on_error="skip", storage_options=s3.storage_options
    )
    try:
        batches = [seq[i] for i in range(len(seq))]  # workers=1: batch k reads batches k+1... ahead
        stats = seq.remote_stats
    finally:
        seq.close()
    served = [int(v) for _, y, _ in batches for v in np.asarray(y)]
    assert served == [i for i in range(N) if i not in (5, 30)]
    assert [(e.index, e.path) for e in seq.errors] == [
        (5, "s3://data/lbl/label_9999.npy"),
        (30, "s3://data/img/image_9999.png"),
    ]
    assert seq.errors[1].reason.startswith("cannot load image: FileNotFoundError: no such object: ")
    assert stats["read_ahead_used"] == 2 * N - 2 * 4  # both missing objects were among the reads ahead
    assert stats["retries"] == 0  # permanent: not tried again


def test_a_forbidden_object_is_named_and_skipped(s3):
    s3.configure(deny=["data/img/image_0007.png"])
    images, labels = paired(s3)
    seq = ks.SeparatedSequence(
        images, labels, batch_size=4, shuffle=False, on_error="skip", workers=2, storage_options=s3.storage_options
    )
    try:
        x, y, w = seq[1]
    finally:
        seq.close()
    assert y.tolist() == [4, 5, 6] and w.tolist() == [1.0, 1.0, 1.0]
    [bad] = seq.errors
    assert (bad.index, bad.path) == (7, "s3://data/img/image_0007.png")
    assert bad.reason.startswith("cannot load image: PermissionError: access refused to s3://data/img/image_0007.png")
    assert seq.remote_stats["retries"] == 0  # permanent: not tried again


def test_a_directory_cache_makes_later_epochs_offline(s3, tmp_path):
    images, labels = paired(s3)
    seq = ks.SeparatedSequence(
        images,
        labels,
        batch_size=8,
        seed=4,
        image_size=(6, 5),
        cache=tmp_path / "cache",
        workers=2,
        storage_options=s3.storage_options,
    )
    try:
        first = epoch(seq)
        s3.reset()
        later = [epoch(seq) for _ in range(2)]
    finally:
        seq.close()
    assert sorted(first) == list(range(N)) and all(sorted(order) == list(range(N)) for order in later)
    assert s3.stats()["requests"] == 0


def test_validate_inspect_and_preview_work_on_a_bucket(s3, tmp_path, capsys):
    images, labels = paired(s3)
    seq = ks.SeparatedSequence(images, labels, batch_size=8, storage_options=s3.storage_options)
    report = seq.validate(progress=False)
    assert report.ok and report.num_samples == N and report.label_values == {i: 1 for i in range(N)}
    options = [
        f"--storage-option=client_kwargs.endpoint_url={s3.endpoint}",
        "--storage-option=client_kwargs.region_name=us-east-1",
        "--storage-option=key=testing",
        "--storage-option=secret=testing",
    ]
    assert main(["inspect", "s3://data/img/*.png", "s3://data/lbl/*.npy", "--json", *options]) == 0
    inspected = json.loads(capsys.readouterr().out)
    assert inspected["pairs"] == N and inspected["image_sizes"] == {"5x6": N} and inspected["bad"] == []
    sheet = tmp_path / "sheet.png"
    assert (
        main(["preview", "s3://data/img/*.png", "s3://data/lbl/*.npy", "--out", str(sheet), "--n", "4", *options]) == 0
    )
    assert "wrote" in capsys.readouterr().out and Image.open(sheet).size[0] > 0


def test_credentials_stay_in_the_calling_process(s3):
    images, labels = paired(s3)
    options = {**s3.storage_options, "secret": "never-" + "shown-7f3a"}
    seq = ks.SeparatedSequence(
        images, labels, batch_size=8, storage_options=options, workers=2, use_multiprocessing=True
    )
    try:
        epoch(seq)
    finally:
        seq.close()
    assert b"never-shown-7f3a" not in pickle.dumps(seq)


@pytest.fixture
def http_folder(tmp_path):
    """A folder served over HTTP on 127.0.0.1 (Python's own file server), and its base URL."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format, *args):  # noqa: A002
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=10)


def test_https_urls_with_a_manifest(http_folder, indexed_dataset):
    folder, base = http_folder
    images, labels = indexed_dataset(9)  # written under tmp_path/data, which the server serves
    (folder / "manifest.txt").write_text("\n".join(f"data/{p.rsplit('/', 1)[1]}" for p in images + labels))
    urls, label_urls = ks.pair_files(
        f"{base}/data/image_*.png", f"{base}/data/label_*.npy", manifest=f"{base}/manifest.txt"
    )
    assert urls == [f"{base}/data/image_{i:04d}.png" for i in range(9)]
    seq = ks.SeparatedSequence(urls, label_urls, batch_size=4, seed=0, workers=2, use_multiprocessing=True)
    try:
        assert sorted(epoch(seq)) == list(range(9))
        label_urls[2] = f"{base}/data/missing.npy"
        broken = ks.SeparatedSequence(urls, label_urls, batch_size=3, shuffle=False)
        with pytest.raises(
            SampleError, match=rf"sample 2, file '{base}/data/missing.npy': cannot load label: FileNotFoundError"
        ):
            broken[0]
    finally:
        seq.close()


def test_without_workers_the_next_batches_objects_are_read_ahead(s3):
    images, labels = paired(s3)
    seq = ks.SeparatedSequence(
        images, labels, batch_size=6, shuffle=False, storage_options=s3.storage_options, reads_in_flight=24
    )
    try:
        seen = epoch(seq)
        stats = seq.remote_stats
    finally:
        seq.close()
    assert seen == list(range(N))  # in order, each image with its own label
    assert s3.stats()["get"] == 2 * N  # each object read once
    # While a batch decodes, the objects of the next ones (24 at most on their way) are read: every batch but
    # the first takes its objects from those reads instead of waiting a round trip for its own.
    assert stats["read_ahead_used"] == 2 * N - 2 * 6


@pytest.mark.parametrize(
    "options",
    [{"workers": 0}, {"workers": 2}, {"workers": 2, "use_multiprocessing": True}],
    ids=["no-workers", "2-threads", "2-processes"],
)
def test_fit_reads_its_first_epoch_ahead_while_keras_reads_the_structure(s3, options):
    import keras
    from index_model import DecodeIndex, Seen

    if keras.backend.backend() != "tensorflow":
        pytest.skip("only the TensorFlow backend reads batches for their structure before training")
    images, labels = paired(s3)
    keras.utils.set_random_seed(0)
    seen = Seen(N)
    model = keras.Sequential([keras.Input((6, 5, 3)), DecodeIndex()])
    model.compile(optimizer="sgd", loss="mse", metrics=[seen])
    seq = ks.SeparatedSequence(images, labels, batch_size=6, seed=1, storage_options=s3.storage_options, **options)
    per_epoch = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: per_epoch.append(
            (keras.ops.convert_to_numpy(seen.counts).tolist(), float(keras.ops.convert_to_numpy(seen.wrong)))
        )
    )
    try:
        model.fit(seq, epochs=2, verbose=0, callbacks=[record])  # shuffle=True: Keras orders the batches too
        stats = seq.remote_stats
    finally:
        seq.close()
    assert per_epoch == [([1.0] * N, 0.0)] * 2  # every sample once per epoch, each image with its own label
    # Every object is read once per epoch: the 2 batches Keras reads for the structure (24 objects) are kept
    # for the first epoch, which asks for them again. The first epoch's objects were read ahead, in the order fit
    # asked for them (the structure read takes its 24 from those, and puts them back); without workers, so were
    # the second epoch's (with workers, the pool's prefetch reads them).
    assert s3.stats()["get"] == 2 * 2 * N
    assert stats["read_ahead_used"] == (2 * 2 * N if options["workers"] == 0 else 2 * N) + 2 * 2 * 6


def test_a_second_fit_over_a_filled_cache_reads_nothing_ahead(s3, tmp_path):
    import keras
    from index_model import DecodeIndex

    if keras.backend.backend() != "tensorflow":
        pytest.skip("only the TensorFlow backend reads batches for their structure before training")
    images, labels = paired(s3)
    model = keras.Sequential([keras.Input((6, 5, 3)), DecodeIndex()])
    model.compile(optimizer="sgd", loss="mse")
    seq = ks.SeparatedSequence(
        images,
        labels,
        batch_size=6,
        seed=1,
        workers=2,
        image_size=(6, 5),
        cache=str(tmp_path / "cache"),
        storage_options=s3.storage_options,
    )
    try:
        model.fit(seq, epochs=1, verbose=0)  # fills the cache
        first = s3.stats()["get"]
        s3.reset()
        model.fit(seq, epochs=1, verbose=0)
        # The first fit read each object once: batches 0 and 1 (read for the structure) went into the cache too.
        assert s3.stats()["get"] == 0 and first == 2 * N
        assert 0 < seq.remote_stats["read_ahead_used"] <= 2 * N  # the first fit's, none since
    finally:
        seq.close()
