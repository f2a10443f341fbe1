"""Golden hashes: what every batch holds, for fixed seeds, must not change when the code underneath is rebuilt.

Each case hashes every batch of two epochs (dtype, shape and bytes of each array), the state `get_state()`
returns, and, for directory caches, the cache's fingerprint. The same hash must come out with `workers=1`,
threads and processes, and with no cache, a memory cache and a directory cache (that is part of the check).
A changed hash means batches changed for users: update `GOLDEN` only for a change that is meant, and say why
in the commit.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from keras_sepseq import PaddedSequence, SeparatedSequence
from keras_sepseq.cache import fingerprint

N = 37  # batches of 8 leave a remainder; one sample is broken in the "skip" cases

MODES = {
    "inline": dict(workers=1),
    "threads": dict(workers=2),
    "processes": dict(workers=2, use_multiprocessing=True),
}


def write_images(folder, broken: bool) -> tuple[list[str], list[str]]:
    """N PNGs of differing sizes and content, N .npy labels; with `broken`, image 5 is not an image."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(1234)
    images, labels = [], []
    for i in range(N):
        h, w = 6 + i % 4, 5 + i % 3
        path = os.path.join(folder, f"image_{i:03d}.png")
        if broken and i == 5:
            with open(path, "wb") as f:
                f.write(b"not a png")
        else:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        label = os.path.join(folder, f"label_{i:03d}.npy")
        np.save(label, np.array([i, i * 3], dtype=np.int64))
        images.append(path)
        labels.append(label)
    return images, labels


def write_sequences(folder, broken: bool) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(99)
    paths = []
    for i in range(N):
        path = os.path.join(folder, f"seq_{i:03d}.npy")
        if broken and i == 5:
            with open(path, "wb") as f:
                f.write(b"not an npy")
        else:
            np.save(path, rng.normal(size=(2 + (i * 7) % 11, 3)).astype(np.float32))
        paths.append(path)
    return paths


def batches_hash(seq, epochs: int = 2) -> str:
    digest = hashlib.sha256()
    for _ in range(epochs):
        for i in range(len(seq)):
            for array in seq[i]:
                array = np.ascontiguousarray(np.asarray(array))
                digest.update(f"{array.dtype.str}{array.shape}".encode())
                digest.update(array.tobytes())
        seq.on_epoch_end()
    return digest.hexdigest()[:16]


def state_hash(seq) -> str:
    return hashlib.sha256(json.dumps(seq.get_state(), sort_keys=True).encode()).hexdigest()[:16]


CASES = {
    "separated": dict(kind="separated", image_size=(7, 6)),
    "separated uint8 grayscale": dict(kind="separated", image_size=(7, 6), color_mode="grayscale", dtype="uint8"),
    "separated skip": dict(kind="separated", image_size=(7, 6), on_error="skip", broken=True),
    "separated shard 1 of 3": dict(kind="separated", image_size=(7, 6), num_shards=3, shard_index=1),
    "separated shard drop": dict(kind="separated", image_size=(7, 6), num_shards=2, shard_index=0, drop_remainder=True),
    "padded": dict(kind="padded"),
    "padded bucketed": dict(kind="padded", bucket_by_length=True),
    "padded bucketed shard": dict(kind="padded", bucket_by_length=True, num_shards=2, shard_index=1),
    "padded maxlen skip": dict(kind="padded", maxlen=6, on_error="skip", broken=True),
}

GOLDEN = {  # (batches, get_state()), recorded 2026-12-01 at e0afab6 plus the sharding-seed change (seeds given here)
    "separated": ("ee179e8c183bb235", "93d246ca1242e70d"),
    "separated uint8 grayscale": ("3282d29472933f75", "93d246ca1242e70d"),
    "separated skip": ("7a927fa3eb88b5b6", "93d246ca1242e70d"),
    "separated shard 1 of 3": ("49c367c41a712833", "16ae3ca9a5df2301"),
    "separated shard drop": ("e76cf9b0983b50f8", "e030c03101d88e47"),
    "padded": ("dd5a3c5851ce088a", "66956c46f3163513"),
    "padded bucketed": ("6d46a5c83b4c88cd", "30600a673ed19eb5"),
    "padded bucketed shard": ("cf3107fe413017ab", "3e8217788307c6b8"),
    "padded maxlen skip": ("87b25a8e3ab8f225", "afc7f6b66c25d591"),
}

FINGERPRINTS = {  # directory caches (SeparatedSequence only: PaddedSequence refuses them)
    "separated": "53e6fa71fc6232fc",  # decoder revision 3 (16-bit color TIFF), 2026-12-01
}


def build(case: dict, folder, **options):
    case = dict(case)
    kind, broken = case.pop("kind"), case.pop("broken", False)
    case.setdefault("seed", 11)
    if kind == "separated":
        images, labels = write_images(folder, broken)
        return SeparatedSequence(images, labels, batch_size=8, **case, **options)
    sequences = write_sequences(folder, broken)
    return PaddedSequence(sequences, np.arange(N) % 4, batch_size=8, **case, **options)


COMBINATIONS = [
    pytest.param(name, mode, cache, id=f"{name}, {mode}, {cache}")
    for name in CASES
    for mode in MODES
    for cache in ("no cache", "memory", "directory")
    if not (cache == "directory" and CASES[name]["kind"] == "padded")  # PaddedSequence has no directory cache
]


@pytest.mark.filterwarnings("ignore:keras_sepseq skipped 1 bad sample")
@pytest.mark.parametrize("name, mode, cache", COMBINATIONS)
def test_batches_match_the_golden_hash(tmp_path, name, mode, cache):
    options = dict(MODES[mode])
    if cache == "memory":
        options["cache"] = "memory"
    elif cache == "directory":
        options["cache"] = str(tmp_path / "cache")
    seq = build(CASES[name], tmp_path / "data", **options)
    try:
        got = (batches_hash(seq), state_hash(seq))
    finally:
        seq.close()
    assert got == GOLDEN[name], f"{name!r}: {got}"


@pytest.mark.parametrize("kind", list(FINGERPRINTS))
def test_directory_cache_fingerprints_are_stable(tmp_path, monkeypatch, kind):
    """A directory cache written today must be found by tomorrow's code: its fingerprint may not drift."""
    monkeypatch.chdir(tmp_path)  # relative paths: the key does not depend on where tmp_path is
    seq = build(CASES[kind], "data", cache="cache")
    assert fingerprint(*seq.cache_key()) == FINGERPRINTS[kind]


# Saved by get_state() on 2026-12-01 (e0afab6 plus this change), with the order it restores.
SAVED_STATE = {
    "format": 1, "seed": 11, "epoch": 3, "num_samples": 37, "batch_size": 8, "shuffle": True, "drop_remainder": False,
    "num_shards": 2, "shard_index": 1, "bucket_by_length": True, "maxlen": None,
}  # fmt: skip
SAVED_ORDER = [22, 0, 27, 13, 2, 24, 35, 32, 21, 4, 23, 9, 31, 6, 28, 17, 3, 36, 25]


def test_a_state_saved_today_resumes_the_same_order(tmp_path):
    seq = build({**CASES["padded bucketed shard"], "seed": None}, tmp_path / "data")  # the seed comes from the state
    seq.set_state(json.loads(json.dumps(SAVED_STATE)))
    assert [int(i) for p in range(len(seq)) for i in seq.batch_indices(p)] == SAVED_ORDER
    assert seq.get_state() == SAVED_STATE
