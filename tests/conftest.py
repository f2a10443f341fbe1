"""Fixtures that write tiny datasets into `tmp_path`; nothing is downloaded."""

from __future__ import annotations

import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
from PIL import Image


def index_image(index: int, size: tuple[int, int] = (6, 5)) -> np.ndarray:
    """An RGB image whose red and green channels encode `index` (< 65536)."""
    image = np.zeros(size + (3,), dtype=np.uint8)
    image[..., 0] = index % 256
    image[..., 1] = index // 256
    image[..., 2] = 7
    return image


def png_bytes(array: np.ndarray) -> bytes:
    """The bytes of `array` saved as a PNG file."""
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """The bytes of `array` saved as a `.npy` file."""
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def decode_index(x: np.ndarray) -> np.ndarray:
    """Reads back the indices of a batch made from `index_image` files."""
    x = np.asarray(x)
    if x.dtype.kind == "f":
        x = np.rint(x * 255)
    x = x.astype(np.int64)
    return x[:, 0, 0, 0] + 256 * x[:, 0, 0, 1]


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not; Linux `/proc`)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def write_indexed_dataset(folder, n: int, *, size=(6, 5), label_shape=(), prefix=("image", "label")):
    """Writes `n` PNG + .npy pairs where image i encodes i and label i holds i."""
    os.makedirs(folder, exist_ok=True)
    images, labels = [], []
    for i in range(n):
        image_path = os.path.join(folder, f"{prefix[0]}_{i:04d}.png")
        label_path = os.path.join(folder, f"{prefix[1]}_{i:04d}.npy")
        Image.fromarray(index_image(i, size)).save(image_path)
        np.save(label_path, np.full(label_shape, i, dtype=np.int64))
        images.append(image_path)
        labels.append(label_path)
    return images, labels


@pytest.fixture
def every_worker_loads(monkeypatch):
    """The load tuner compares no settings: every batch goes to the workers, as it does for costly samples.

    Otherwise, for cheap samples, it loads a dozen batches in the calling process to compare, and may keep
    that (correctly: the bytes are the same), whenever the timing lets it finish. For tests about the workers
    or the prefetch queue, not about the tuner (tests/test_tuning.py).
    """
    from keras_sepseq import tuning

    monkeypatch.setattr(tuning, "COMPARE_BELOW", 0.0)


@pytest.fixture
def indexed_dataset(tmp_path):
    """A factory: `indexed_dataset(n, **options)` -> (image_paths, label_paths)."""

    def make(n: int = 10, **options):
        return write_indexed_dataset(tmp_path / "data", n, **options)

    return make


def indexed_objects(n: int) -> dict[str, bytes]:
    """`{key: bytes}` of n indexed pairs: `img/image_0000.png` (encodes 0) and `lbl/label_0000.npy` (holds 0)..."""
    objects = {}
    for i in range(n):
        objects[f"img/image_{i:04d}.png"] = png_bytes(index_image(i))
        objects[f"lbl/label_{i:04d}.npy"] = npy_bytes(np.array(i, dtype=np.int64))
    return objects


@pytest.fixture(scope="session")
def loopback_s3():
    """One S3 server (moto's, behind keras_sepseq's proxy) on 127.0.0.1 for the session, in its own process."""
    pytest.importorskip("obstore")
    s3_server = pytest.importorskip("keras_sepseq.s3_server")
    with s3_server.LoopbackS3() as server:
        yield server


@pytest.fixture
def s3_dataset(loopback_s3):
    """A factory: `s3_dataset(n)` writes n indexed PNG + .npy pairs into a fresh bucket; returns
    `(image URLs, label URLs, storage_options)`."""
    import uuid

    def make(n: int = 20) -> tuple[list[str], list[str], dict]:
        bucket = f"t{uuid.uuid4().hex[:10]}"
        loopback_s3.upload(bucket, indexed_objects(n))
        images = [f"s3://{bucket}/img/image_{i:04d}.png" for i in range(n)]
        labels = [f"s3://{bucket}/lbl/label_{i:04d}.npy" for i in range(n)]
        return images, labels, loopback_s3.storage_options

    return make
