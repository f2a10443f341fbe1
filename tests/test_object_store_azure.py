"""Azure Blob Storage through obstore, against Azurite (Microsoft's emulator, from npm) in its own process.

`.ci/run` installs Azurite (`npm install --prefix .ci/node azurite`); elsewhere the tests look for
`azurite-blob` on PATH and are skipped without it (but fail in CI, where it must be there).
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest
from conftest import decode_index, indexed_objects

import keras_sepseq as ks
from keras_sepseq import object_store, storage
from keras_sepseq.errors import SampleError

pytest.importorskip("obstore")

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
"""Azurite's well-known development account and key (published by Microsoft; not a secret)."""

N = 10


def azurite_command() -> str | None:
    here = os.path.join(os.path.dirname(__file__), "..", ".ci", "node", "node_modules", ".bin", "azurite-blob")
    return shutil.which("azurite-blob") or (os.path.abspath(here) if os.path.exists(here) else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    """Azurite's blob service on a free loopback port, with container `data` holding N indexed pairs."""
    command = azurite_command()
    if command is None:
        if os.environ.get("CI"):
            pytest.fail("azurite-blob is not installed: .ci/run installs it with npm")
        pytest.skip("azurite-blob is not installed (npm install azurite)")
    port = free_port()
    process = subprocess.Popen(
        [command, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence", "--silent",
         "--skipApiVersionCheck", "--disableTelemetry"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path_factory.mktemp("azurite"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail(f"Azurite did not start on 127.0.0.1:{port} within 60 s")
                time.sleep(0.2)
        endpoint = f"http://127.0.0.1:{port}/{ACCOUNT}"
        _create_container(endpoint, "data")
        import obstore
        from obstore.store import AzureStore

        store = AzureStore(
            "data", endpoint=endpoint, account_name=ACCOUNT, account_key=KEY, client_options={"allow_http": True}
        )
        for key, data in indexed_objects(N).items():
            obstore.put(store, key, data)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _create_container(endpoint: str, name: str) -> None:
    """Creates a container (obstore writes objects but makes no containers): Azure's own SDK does it."""
    blob = pytest.importorskip("azure.storage.blob")
    connection = f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={endpoint};"
    blob.BlobServiceClient.from_connection_string(connection).create_container(name)


@pytest.fixture(autouse=True)
def fresh_clients(monkeypatch):
    for name in [n for n in os.environ if n.startswith("AZURE_")]:
        monkeypatch.delenv(name)
    object_store.forget_clients()
    yield
    object_store.forget_clients()


def keyed(endpoint: str) -> dict:
    return {"endpoint_url": endpoint, "account_name": ACCOUNT, "account_key": KEY}


def epoch(seq) -> list[int]:
    seen = []
    for i in range(len(seq)):
        x, y = seq[i]
        assert decode_index(x).tolist() == np.asarray(y).tolist()  # each image with its own label
        seen += np.asarray(y).tolist()
    seq.on_epoch_end()
    return seen


@pytest.mark.parametrize(
    "workers",
    [{"workers": 1}, {"workers": 2}, {"workers": 2, "use_multiprocessing": True}],
    ids=["workers=1", "2-threads", "2-processes"],
)
def test_a_container_is_listed_and_read_exactly_once(azurite, workers):
    options = keyed(azurite)
    images, labels = ks.pair_files("az://data/img/*.png", "az://data/lbl/*.npy", storage_options=options)
    assert images == [f"az://data/img/image_{i:04d}.png" for i in range(N)]
    seq = ks.SeparatedSequence(images, labels, batch_size=4, seed=0, storage_options=options, **workers)
    try:
        orders = [epoch(seq) for _ in range(2)]
    finally:
        seq.close()
    assert all(sorted(order) == list(range(N)) for order in orders) and orders[0] != orders[1]
    assert seq.remote_stats["client"] == "obstore AzureStore"
    assert seq.remote_stats["credentials"] == "storage_options keys"
    assert KEY.encode() not in pickle.dumps(seq)


def test_credentials_from_environment_variables(azurite, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", ACCOUNT)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", KEY)
    options = {"endpoint_url": azurite}
    assert storage.read_url("az://data/lbl/label_0003.npy", options)[:6] == b"\x93NUMPY"
    assert storage.client_description("az://data/lbl/label_0003.npy", options)["credentials"] == (
        "environment variables (AZURE_STORAGE_ACCOUNT_KEY)"
    )


def test_a_wrong_key_and_a_missing_blob_are_named_without_the_key(azurite):
    wrong = {**keyed(azurite), "account_key": "V3Jvbmcga2V5IGZvciB0ZXN0aW5nIG9ubHkgMTIzNDU2Nzg5MA=="}
    with pytest.raises(PermissionError) as caught:
        storage.read_url("az://data/lbl/label_0001.npy", wrong)
    assert str(caught.value).startswith("access refused to az://data/lbl/label_0001.npy (HTTP 403")
    assert wrong["account_key"] not in str(caught.value)
    labels = [f"az://data/lbl/label_{i:04d}.npy" for i in range(3)]
    labels[1] = "az://data/lbl/missing.npy"
    images = [f"az://data/img/image_{i:04d}.png" for i in range(3)]
    seq = ks.SeparatedSequence(images, labels, batch_size=3, shuffle=False, storage_options=keyed(azurite))
    with pytest.raises(
        SampleError,
        match=r"sample 1, file 'az://data/lbl/missing\.npy': cannot load label: FileNotFoundError: no such object",
    ):
        seq[0]
