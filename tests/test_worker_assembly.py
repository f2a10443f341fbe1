"""Process workers that load a whole batch of cheap samples also collate it: same bytes, fewer hand-overs."""

import hashlib
import os

import numpy as np
import pytest
from conftest import decode_index

from keras_sepseq import (
    ArrayField,
    FieldSequence,
    ImageField,
    PaddedSequence,
    SampleError,
    SeparatedSequence,
    collates_anywhere,
)

pytestmark = pytest.mark.usefixtures("every_worker_loads")  # these tests are about the workers


def batch_digest(batch) -> str:
    digest = hashlib.sha256()
    for value in batch:
        parts = sorted(value.items()) if isinstance(value, dict) else [("", value)]
        for name, array in parts:
            array = np.asarray(array)
            digest.update(f"{name}{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def served(seq, epochs: int = 3) -> list[list[str]]:
    """The digest of every batch of `epochs` epochs, asked for in order; closes `seq`."""
    try:
        out = []
        for _ in range(epochs):
            seq.on_epoch_begin()
            out.append([batch_digest(seq[p]) for p in range(len(seq))])
            seq.on_epoch_end()
        return out
    finally:
        seq.close()


def sequences(tmp_path, count: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        paths.append(str(tmp_path / f"seq_{i:03d}.npy"))
        np.save(paths[-1], rng.normal(size=(int(rng.integers(3, 30)), 4)).astype(np.float32))
    return paths


MAKERS = {
    "images-labels": lambda data, tmp_path, **kw: SeparatedSequence(*data, batch_size=6, seed=4, **kw),
    "named-fields-and-weights": lambda data, tmp_path, **kw: FieldSequence(
        {"pixels": ImageField(data[0], dtype="float16"), "index": ArrayField(np.arange(len(data[0])))},
        {"label": ArrayField(data[1])},
        6,
        seed=4,
        sample_weights=np.linspace(0.5, 2.0, len(data[0])),
        **kw,
    ),
    "padded-sequences": lambda data, tmp_path, **kw: PaddedSequence(
        sequences(tmp_path, len(data[0])), np.arange(len(data[0])) % 3, batch_size=6, seed=4, **kw
    ),
}


@pytest.mark.parametrize("make", MAKERS.values(), ids=MAKERS.keys())
def test_batches_collated_by_process_workers_are_the_bytes_collated_here(indexed_dataset, tmp_path, make):
    data = indexed_dataset(40)
    alone = served(make(data, tmp_path, workers=1))
    seq = make(data, tmp_path, workers=2, use_multiprocessing=True)
    assert seq.assembles_in_workers()
    pool = seq._worker_pool()
    assert served(seq) == alone
    assert pool.assembled >= 10  # cheap samples: whole batches went to workers, which collated them
    assert alone[0] != alone[1]  # epochs differ, and the workers followed them


def test_worker_collated_batches_hold_the_samples_of_their_position(indexed_dataset):
    data = indexed_dataset(30)
    seq = SeparatedSequence(*data, batch_size=4, seed=9, workers=2, use_multiprocessing=True)
    try:
        pool = seq._worker_pool()
        for _ in range(3):
            seq.on_epoch_begin()
            seen = []
            for position in range(len(seq)):
                x, y = seq[position]
                assert decode_index(x).tolist() == seq.batch_indices(position).tolist() == y.tolist()
                seen.extend(y.tolist())
            assert sorted(seen) == list(range(30))
            seq.on_epoch_end()
        assert pool.assembled > 0
    finally:
        seq.close()


class CollatesHere(SeparatedSequence):
    """Overrides collate without marking it: it must only run in the calling process."""

    def collate(self, indices, items, position=None):
        x, y = super().collate(indices, items, position)
        return x, np.full(len(y), os.getpid())


class MarkedCollate(SeparatedSequence):
    @collates_anywhere
    def collate(self, indices, items, position=None):
        x, y = super().collate(indices, items, position)
        return x, np.full(len(y), os.getpid())


def test_an_unmarked_collate_override_runs_in_the_calling_process_only(indexed_dataset):
    seq = CollatesHere(*indexed_dataset(24), batch_size=4, workers=2, use_multiprocessing=True)
    assert not seq.assembles_in_workers()
    try:
        pids = {int(p) for position in range(len(seq)) for p in seq[position][1]}
        assert pids == {os.getpid()} and seq._pool.assembled == 0
    finally:
        seq.close()


def test_a_marked_collate_runs_in_the_workers(indexed_dataset):
    seq = MarkedCollate(*indexed_dataset(24), batch_size=4, workers=2, use_multiprocessing=True)
    assert seq.assembles_in_workers()
    try:
        pids = {int(p) for _ in range(2) for position in range(len(seq)) for p in seq[position][1]}
        assert pids - {os.getpid()}  # some batches were assembled by a worker process
    finally:
        seq.close()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"on_error": "skip"}, id="skipping-bad-samples"),
        pytest.param({"cache": "memory"}, id="memory-cache"),
        pytest.param({"augment": lambda sample, rng: sample}, id="augment"),
    ],
)
def test_batches_are_collated_here_when_the_calling_process_must_see_the_items(indexed_dataset, options):
    seq = SeparatedSequence(*indexed_dataset(12), batch_size=4, workers=2, use_multiprocessing=True, **options)
    try:
        assert not seq.assembles_in_workers()
        for position in range(len(seq)):
            seq[position]
        assert seq._pool.assembled == 0
    finally:
        seq.close()


def test_a_bad_sample_in_a_worker_collated_batch_is_raised_here_with_its_file(indexed_dataset):
    images, labels = indexed_dataset(60)
    with open(images[57], "wb") as f:
        f.write(b"not a png")
    seq = SeparatedSequence(images, labels, batch_size=4, seed=2, workers=2, use_multiprocessing=True, shuffle=False)
    try:
        # Two epochs without the bad batch: by the second, the pool has measured how cheap these samples are
        # (the first chunks of processes forked from a large test process cost far more, and up to 10 batches
        # are prefetched with what was measured before them), and whole batches go to workers, which collate them.
        for _ in range(2):
            for position in range(14):
                seq[position]
            seq.on_epoch_end()
        assert seq._pool.assembled > 0
        assert seq._pool.tuner.chunks(4) == 1  # the bad batch, too, goes to one worker whole
        with pytest.raises(SampleError, match="image_0057"):
            seq[14]
        assert seq[13][1].tolist() == [52, 53, 54, 55]  # the pool goes on after the error
    finally:
        seq.close()


def test_a_batch_that_cannot_be_collated_in_a_worker_raises_here_as_it_would_in_one_process(tmp_path):
    from conftest import index_image, png_bytes

    from keras_sepseq import ShapeMismatchError

    images, labels = [], []
    for i in range(40):
        images.append(str(tmp_path / f"image_{i:03d}.png"))
        (tmp_path / f"image_{i:03d}.png").write_bytes(png_bytes(index_image(i, (7, 5) if i == 37 else (6, 5))))
        labels.append(i)
    messages = []
    for options in ({"workers": 1}, {"workers": 2, "use_multiprocessing": True}):
        seq = SeparatedSequence(images, np.array(labels), batch_size=4, shuffle=False, **options)
        try:
            for position in range(9):
                seq[position]
            with pytest.raises(ShapeMismatchError) as raised:
                seq[9]
            messages.append(str(raised.value))
        finally:
            seq.close()
    assert "image_037.png" in messages[0] and messages[0] == messages[1]


def test_batches_lent_from_shared_memory_stay_intact_while_held_and_free_their_slot_when_dropped(indexed_dataset):
    data = indexed_dataset(240)
    seq = SeparatedSequence(*data, batch_size=4, seed=3, workers=2, use_multiprocessing=True, max_queue_size=4)
    try:
        pool = seq._worker_pool()
        seq.on_epoch_begin()
        held, copies = [], []
        for position in range(len(seq)):  # every batch kept: far more than there are slots
            x, y = seq[position]
            held.append((x, y))
            copies.append((x.copy(), y.copy()))
        slots = pool._slots
        assert slots is not None and pool.assembled > 0
        block = np.frombuffer(slots.memory.buf, np.uint8)
        start = block.__array_interface__["data"][0]
        end = start + block.nbytes

        def in_slot(x):
            return start <= x.__array_interface__["data"][0] < end

        lent = [x for x, _ in held if in_slot(x)]  # views of a slot, not copies
        assert 0 < len(lent) <= slots.count - pool.workers  # past that, batches were copied out, slots kept free
        for (x, y), (x_copy, y_copy) in zip(held, copies):  # nothing was written over a batch still held
            assert np.array_equal(x, x_copy) and np.array_equal(y, y_copy)
            assert decode_index(x).tolist() == y.tolist()
        seq.on_epoch_end()
        del held, lent, x, y, block
        assert slots.spare() == slots.count  # every slot back once its batch is gone
        seq.on_epoch_begin()
        assert sorted(v for p in range(len(seq)) for v in seq[p][1].tolist()) == list(range(240))
        seq.on_epoch_end()
    finally:
        seq.close()


def test_a_batch_lent_from_shared_memory_outlives_its_sequence(indexed_dataset, monkeypatch):
    import gc
    import sys

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    data = indexed_dataset(120)
    before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    seq = SeparatedSequence(*data, batch_size=4, shuffle=False, workers=2, use_multiprocessing=True)
    seq._worker_pool()
    kept = [seq[p] for p in range(len(seq))][-1]
    assert seq._pool.assembled > 0
    seq.close()
    assert decode_index(kept[0]).tolist() == kept[1].tolist() == [116, 117, 118, 119]
    assert not (set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()) - before  # unlinked
    del kept
    gc.collect()
    assert unraisable == []
