"""The worker pool: persistent across epochs, parallel within a batch, prefetching, failing fast."""

import os
import pickle
import signal
import time

import numpy as np
import pytest
from conftest import decode_index

from keras_sepseq import SampleError, SeparatedSequence, tuning
from keras_sepseq.buffers import BatchBuffers
from keras_sepseq.engine import WorkerDiedError, WorkerPool

MODES = [
    pytest.param(False, id="threads"),
    pytest.param(True, id="processes"),
]


class WhoLoaded(SeparatedSequence):
    """Labels report the process and thread that loaded each sample."""

    def load_target(self, path):
        import threading

        return np.array([os.getpid(), threading.get_ident() % 2**31], dtype=np.int64)


@pytest.fixture
def dataset(indexed_dataset):
    return indexed_dataset(24)


def epochs_of(seq, epochs, order=None):
    served = []
    for _ in range(epochs):
        positions = range(len(seq)) if order is None else order(len(seq))
        batches = {p: seq[p] for p in positions}
        served.append([batches[p] for p in range(len(seq))])
        seq.on_epoch_end()
    return served


def test_keras_sees_no_workers_of_its_own(dataset):
    seq = SeparatedSequence(*dataset, batch_size=4, workers=3, use_multiprocessing=True)
    assert (seq.workers, seq.use_multiprocessing) == (1, False)
    assert (seq.num_workers, seq.use_processes, seq.parallel) == (3, True, True)
    assert not SeparatedSequence(*dataset, workers=1).parallel


@pytest.mark.parametrize("processes", MODES)
def test_workers_persist_across_epochs(dataset, processes):
    seq = WhoLoaded(dataset[0], dataset[1], batch_size=8, workers=2, use_multiprocessing=processes, seed=0)
    column = 0 if processes else 1
    try:
        per_epoch = []
        for epoch in epochs_of(seq, 4):
            per_epoch.append({who for _, y in epoch for who in y[:, column].tolist()})
        everyone = set().union(*per_epoch)
        assert 1 <= len(everyone) <= 2  # never more than the two workers started once
        if processes:
            assert os.getpid() not in everyone
    finally:
        seq.close()


@pytest.mark.parametrize("batch_size, workers, chunks", [(8, 2, [4, 4]), (5, 3, [2, 2, 1]), (2, 4, [1, 1])])
def test_each_batch_of_costly_samples_is_split_across_the_workers(dataset, batch_size, workers, chunks):
    seq = SeparatedSequence(*dataset, batch_size=batch_size, workers=workers)
    seq[0]
    seq._pool.tuner.sample_seconds = 0.01  # as measured for large photos
    jobs = seq._pool._submit((0, 0), seq.batch_indices(0))
    assert [len(job.chunk) for job in jobs] == chunks
    assert [len(job.future.result()) for job in jobs] == chunks
    seq._pool.tuner.sample_seconds = 1e-6  # cheap samples: one worker takes the whole batch
    jobs = seq._pool._submit((0, 0), seq.batch_indices(0))
    assert [len(job.chunk) for job in jobs] == [len(seq.batch_indices(0))]
    seq.close()


@pytest.mark.parametrize("processes", MODES)
@pytest.mark.parametrize("request_order", ["in order", "reversed", "shuffled"])
def test_any_request_order_serves_the_same_batches(dataset, processes, request_order):
    orders = {
        "in order": lambda n: range(n),
        "reversed": lambda n: range(n - 1, -1, -1),
        "shuffled": lambda n: np.random.default_rng(n).permutation(n).tolist(),
    }
    reference = SeparatedSequence(*dataset, batch_size=5, seed=7, dtype="uint8")
    parallel = SeparatedSequence(
        *dataset, batch_size=5, seed=7, dtype="uint8", workers=2, use_multiprocessing=processes
    )
    try:
        for expected, got in zip(epochs_of(reference, 3), epochs_of(parallel, 3, orders[request_order])):
            for (ex, ey), (gx, gy) in zip(expected, got):
                np.testing.assert_array_equal(gx, ex)
                np.testing.assert_array_equal(gy, ey)
                np.testing.assert_array_equal(decode_index(gx), gy)
    finally:
        parallel.close()


def test_batches_asked_in_order_are_prefetched(dataset):
    seq = SeparatedSequence(*dataset, batch_size=4, workers=2, max_queue_size=3)
    seq[0]
    assert len(seq._pool._pending) == 3
    seq[1]
    assert sorted(p for _, p in seq._pool._pending) == [2, 3, 4]
    seq.on_epoch_end()
    seq[0]  # a new epoch drops what was prefetched for the old one
    assert {epoch for epoch, _ in seq._pool._pending} == {1}
    seq.close()


@pytest.mark.parametrize("processes", MODES)
def test_a_broken_file_in_a_worker_is_named(dataset, processes):
    images, labels = dataset
    os.remove(images[5])
    seq = SeparatedSequence(images, labels, batch_size=24, shuffle=False, workers=2, use_multiprocessing=processes)
    try:
        with pytest.raises(
            SampleError, match=f"sample 5, file '{images[5]}': cannot load image: FileNotFoundError"
        ) as info:
            seq[0]
        assert info.value.path == images[5] and info.value.index == 5
    finally:
        seq.close()


def shared_blocks():
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def test_a_killed_worker_process_fails_fast(dataset):
    before = shared_blocks()
    seq = SeparatedSequence(*dataset, batch_size=4, workers=2, use_multiprocessing=True, max_queue_size=1)
    seq[0]
    assert seq._pool._slots is not None
    for pid in list(seq._pool._executor._processes):
        os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(WorkerDiedError, match="worker process died unexpectedly"):
        for i in range(len(seq)):
            seq[i]
    assert time.monotonic() - start < 10
    assert seq._pool is None or seq._pool.closed
    assert shared_blocks() <= before  # its shared memory was unlinked
    x, _ = seq[0]  # a fresh pool starts on the next batch
    assert x.shape[0] == 4
    seq.close()


def test_process_workers_return_arrays_through_shared_memory(dataset, monkeypatch):
    monkeypatch.setattr(tuning, "CHUNK_SECONDS", 0.0)  # every batch in one chunk per worker, as for large images
    monkeypatch.setattr(tuning.LoadTuner, "delivered", lambda *args: None)  # and never loaded by the caller
    before = shared_blocks()
    seq = SeparatedSequence(*dataset, batch_size=4, workers=2, use_multiprocessing=True, shuffle=False, dtype="uint8")
    reference = SeparatedSequence(*dataset, batch_size=4, shuffle=False, dtype="uint8")
    kept = []
    for _epoch in range(3):
        for p in range(len(seq)):
            x, y = seq[p]
            kept.append((x, y, reference[p]))
    pool = seq._pool
    assert pool._slots is not None and pool._slots.slot_bytes >= 2 * 4 * 6 * 5 * 3  # twice a batch of four images
    # The slots are sized from the first chunk; chunks a worker had already started by then use the pipe, none after.
    assert pool.through_shared_memory >= 2 * 2 * len(seq)
    for x, y, (x_ref, y_ref) in kept:  # slots were reused many times: nothing kept was overwritten
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(decode_index(x), y)
    name = pool._slots.memory.name.lstrip("/")
    assert name in shared_blocks() - before
    seq.close()
    assert name not in shared_blocks()  # unlinked when the pool stops


def test_chunks_too_big_for_a_slot_come_through_the_pipe(tmp_path):
    from PIL import Image

    sizes = [(4, 4)] * 8 + [(60, 50)] * 2 + [(4, 4)] * 2  # the first chunks size the slots; two images do not fit
    paths = []
    for i, size in enumerate(sizes):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.full(size + (3,), i, np.uint8)).save(paths[-1])
    seq = SeparatedSequence(
        paths, np.arange(12), batch_size=1, workers=2, use_multiprocessing=True, shuffle=False, dtype="uint8"
    )
    for i, size in enumerate(sizes):
        x, y = seq[i]
        assert x.shape == (1,) + size + (3,) and (x == i).all() and y.tolist() == [i]
    assert 0 < seq._pool.through_shared_memory < len(sizes)
    seq.close()


def test_without_room_for_shared_memory_results_use_the_pipe(dataset, monkeypatch):
    from keras_sepseq import engine

    monkeypatch.setattr(engine, "SHARED_MEMORY_LIMIT", 1024)  # not even one slot per worker
    seq = SeparatedSequence(*dataset, batch_size=4, workers=2, use_multiprocessing=True, dtype="uint8")
    for p in range(len(seq)):
        x, y = seq[p]
        np.testing.assert_array_equal(decode_index(x), y)
    assert seq._pool._slots is None and seq._pool.through_shared_memory == 0
    seq.close()


def test_close_stops_the_pool_and_pickling_leaves_it_behind(dataset):
    seq = SeparatedSequence(*dataset, batch_size=4, workers=2, use_multiprocessing=True)
    seq[0]
    pool = seq._pool
    copy = pickle.loads(pickle.dumps(seq))
    assert copy._pool is None
    seq.close()
    assert pool.closed and seq._pool is None
    np.testing.assert_array_equal(copy[0][1], seq[0][1])
    seq.close()


@pytest.mark.parametrize("shuffle", [False, True], ids=["fit in order", "fit shuffles batches"])
def test_batches_are_prefetched_in_the_order_keras_asks(dataset, shuffle, every_worker_loads):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    seq = SeparatedSequence(*dataset, batch_size=2, workers=2, max_queue_size=4, seed=3, dtype="uint8")
    served = []
    for _ in range(2):
        adapter = PyDatasetAdapter(seq, shuffle=shuffle)
        for x, y in adapter.get_numpy_iterator():
            np.testing.assert_array_equal(decode_index(x), y)
            served.append(y)
        adapter.on_epoch_end()
    assert sorted(np.concatenate(served[:12]).tolist()) == list(range(24))
    assert sorted(np.concatenate(served[12:]).tolist()) == list(range(24))
    # Only the first batch of each epoch was not prefetched: Keras's own order was followed.
    assert (seq._pool.hits, seq._pool.misses) == (22, 2)
    seq.close()


@pytest.mark.parametrize("processes", MODES)
@pytest.mark.parametrize("shuffle", [False, True], ids=["fit in order", "fit shuffles batches"])
def test_the_first_batches_of_each_epoch_load_while_keras_starts_it(dataset, processes, shuffle, every_worker_loads):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    seq = SeparatedSequence(*dataset, batch_size=2, workers=2, max_queue_size=4, seed=3, dtype="uint8",
                            use_multiprocessing=processes)  # fmt: skip
    adapter = PyDatasetAdapter(seq, shuffle=shuffle)
    for epoch in range(3):
        adapter.on_epoch_begin()  # as Keras does: predicts its order, prefetches the first batches
        assert [key[0] for key in seq._pool._pending] == [epoch] * 4
        served = []
        for x, y in adapter.get_numpy_iterator():
            np.testing.assert_array_equal(decode_index(x), y)
            served.append(y)
        adapter.on_epoch_end()
        assert sorted(np.concatenate(served).tolist()) == list(range(24))
    # Every batch, the first of each epoch included, was loading before Keras asked for it.
    assert (seq._pool.hits, seq._pool.misses) == (36, 0)
    seq.close()


def test_a_batch_that_was_not_prefetched_goes_ahead_of_queued_prefetches(dataset):
    loaded = []

    class Logged(SeparatedSequence):
        def load_item(self, index):
            loaded.append(index)
            time.sleep(0.02)
            return super().load_item(index)

    seq = Logged(*dataset, batch_size=1, shuffle=False)
    pool = WorkerPool(seq, workers=1, use_processes=False, max_queue_size=8)
    pool.prefetch([((0, p), seq.batch_indices(p)) for p in range(8)])  # a wrong guess: batches 0..7
    items = pool.load((0, 20), seq.batch_indices(20), [])
    assert [int(label) for _, label in items] == [20]
    assert loaded.index(20) <= 1  # at most the one prefetch already running went first
    for p in range(8):  # the guessed batches still load, after it, and are served from the queue
        assert [int(label) for _, label in pool.load((0, p), seq.batch_indices(p), [])] == [p]
    assert sorted(loaded) == sorted(list(range(8)) + [20])
    assert (pool.hits, pool.misses) == (8, 1)
    pool.close()


def test_request_order_is_unknown_outside_keras(dataset):
    from keras_sepseq.keras_integration import keras_request_order

    seq = SeparatedSequence(*dataset, batch_size=2)
    assert keras_request_order(seq, 0) is None


SHAPE = (8, 128, 128, 3)  # 1.5 MiB of float32: large enough to be recycled


def test_a_released_batch_array_is_handed_out_again():
    buffers = BatchBuffers()
    first = buffers.empty(SHAPE, np.float32)
    address = first.ctypes.data
    del first
    again = buffers.empty(SHAPE, np.float32)
    assert again.ctypes.data == address and buffers.reused == 1


@pytest.mark.parametrize(
    "hold",
    [lambda a: a, lambda a: a[0], lambda a: a.reshape(-1), lambda a: memoryview(a), lambda a: (a, "in a tuple")],
    ids=["the array", "a view", "a reshaped view", "a memoryview", "a tuple holding it"],
)
def test_an_array_still_referred_to_is_never_handed_out(hold):
    buffers = BatchBuffers()
    array = buffers.empty(SHAPE, np.float32)
    address = array.ctypes.data
    kept = hold(array)
    del array
    other = buffers.empty(SHAPE, np.float32)
    assert other.ctypes.data != address and buffers.reused == 0
    assert kept is not None


def test_small_or_differently_shaped_arrays_are_fresh_and_the_pool_is_bounded():
    buffers = BatchBuffers(limit=2)
    small = buffers.empty((4, 4), np.float32)
    assert small.shape == (4, 4) and buffers._arrays == []
    held = [buffers.empty(SHAPE, np.float32) for _ in range(5)]
    assert len(buffers._arrays) == 2 and len({a.ctypes.data for a in held}) == 5
    del held
    assert buffers.empty(SHAPE[:1] + (64, 64, 3), np.float32).shape == (8, 64, 64, 3)  # replaces a free one
    assert len(buffers._arrays) == 2
    assert pickle.loads(pickle.dumps(buffers))._arrays == []


@pytest.mark.parametrize("cache", [None, "memory"], ids=["decoded", "cached"])
def test_batches_kept_by_the_caller_are_never_overwritten(tmp_path, cache):
    from conftest import write_indexed_dataset

    images, labels = write_indexed_dataset(tmp_path / "data", 40)
    seq = SeparatedSequence(
        images, labels, batch_size=8, image_size=(128, 128), interpolation="nearest", seed=3, cache=cache
    )
    for _epoch in range(3):
        kept = [seq[i] for i in range(len(seq))]
        seen = np.concatenate([decode_index(x) for x, _ in kept])
        assert sorted(seen.tolist()) == list(range(40))  # nothing overwritten by a later batch
        for x, y in kept:
            np.testing.assert_array_equal(decode_index(x), y)
        del kept
        for i in range(len(seq)):  # released at once: these batches reuse one array
            x, y = seq[i]
            np.testing.assert_array_equal(decode_index(x), y)
        seq.on_epoch_end()
    assert seq.buffers.reused > 0


def test_nothing_is_prefetched_for_the_batches_keras_reads_for_its_signature(dataset):
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    images, labels = dataset
    seq = SeparatedSequence(images, labels, batch_size=4, workers=2, seed=0)
    PyDatasetAdapter(seq, shuffle=True).get_tf_dataset()  # reads seq[0] and seq[1]
    assert seq._pool is not None and len(seq._pool._pending) == 0
    seq[0]  # any other caller asking in order gets the next batches prefetched
    assert len(seq._pool._pending) > 0
    seq.close()


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_shared_memory_works_with_every_start_method_and_leaks_nothing(dataset, method, tmp_path):
    import subprocess
    import sys
    import textwrap

    images, labels = dataset
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""
        import multiprocessing, os
        import numpy as np
        from keras_sepseq import SeparatedSequence

        if __name__ == "__main__":
            multiprocessing.set_start_method({method!r})
            images, labels = {list(images)!r}, {list(labels)!r}
            seq = SeparatedSequence(images, labels, batch_size=4, workers=2, use_multiprocessing=True, shuffle=False)
            reference = SeparatedSequence(images, labels, batch_size=4, shuffle=False)
            for _ in range(2):
                for p in range(len(seq)):
                    for got, want in zip(seq[p], reference[p]):
                        assert got.tobytes() == want.tobytes()
            assert seq._pool.through_shared_memory > 0
            name = seq._pool._slots.memory.name.lstrip("/")
            seq.close()
            assert name not in (os.listdir("/dev/shm") if os.path.isdir("/dev/shm") else [])
            print("ok")
    """)
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
    assert "resource_tracker" not in done.stderr and "leaked" not in done.stderr
