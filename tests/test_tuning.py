"""The load tuner: chunk sizes from the measured cost of a sample, and how many threads load at once."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from keras_sepseq import SeparatedSequence, tuning
from keras_sepseq.tuning import CHUNK_SECONDS, COMPARE_BELOW, PROBE_CHUNKS, PROBE_QUEUES, PROBE_SECONDS, LoadTuner


@pytest.mark.parametrize(
    "sample_seconds, size, workers, chunks",
    [
        pytest.param(None, 64, 2, 2, id="nothing-measured-one-chunk-per-worker"),
        pytest.param(None, 3, 8, 3, id="never-more-chunks-than-samples"),
        pytest.param(25e-6, 64, 2, 1, id="cheap-samples-whole-batch"),
        pytest.param(CHUNK_SECONDS / 20, 64, 8, 4, id="chunks-of-at-least-CHUNK_SECONDS"),
        pytest.param(3e-3, 32, 2, 2, id="photos-split-across-workers"),
        pytest.param(3e-3, 32, 16, 16, id="photos-split-across-16"),
    ],
)
def test_chunks_follow_the_measured_sample_cost(sample_seconds, size, workers, chunks):
    tuner = LoadTuner(workers, threads=False)
    tuner.sample_seconds = sample_seconds
    assert tuner.chunks(size) == chunks


def test_record_smooths_worker_time_per_sample_and_divides_by_sharing():
    tuner = LoadTuner(2, threads=True)
    tuner.record(10, 0.010)  # 1 ms per sample
    assert tuner.sample_seconds == pytest.approx(1e-3)
    tuner.record(10, 0.020, sharing=2)  # two threads at once: 1 ms of its own per sample
    assert tuner.sample_seconds == pytest.approx(1e-3)
    tuner.record(0, 1.0)  # nothing to learn from
    assert tuner.sample_seconds == pytest.approx(1e-3)


@pytest.mark.parametrize("workers", [pytest.param(2, id="2-processes"), pytest.param(8, id="8-processes")])
def test_a_cold_first_chunk_is_forgotten_at_the_first_cheap_one(workers):
    tuner = LoadTuner(workers, threads=False)
    tuner.record(2, 0.2)  # a fresh process: imports and first calls, 100 ms per sample
    assert tuner.chunks(4) == min(4, workers)
    tuner.record(2, 60e-6)  # then 30 us per sample: whole batches go to one worker at once
    assert tuner.sample_seconds == pytest.approx(30e-6) and tuner.chunks(4) == 1
    tuner.record(2, 100e-6)  # a little costlier (a busy machine): averaged in, not taken
    assert tuner.sample_seconds == pytest.approx(0.8 * 30e-6 + 0.2 * 50e-6)
    tuner.record(2, 2 * 4 * 36e-6)  # four times dearer than the estimate: still averaged in
    assert tuner.sample_seconds == pytest.approx(0.8 * (0.8 * 30e-6 + 0.2 * 50e-6) + 0.2 * 4 * 36e-6)


@pytest.mark.parametrize(
    "threads, sample_seconds",
    [pytest.param(False, 30e-6, id="process-its-cpu-time"), pytest.param(True, 5e-3, id="thread-its-wall-time")],
)
def test_a_process_chunk_costs_its_cpu_time_a_thread_chunk_its_wall_time(threads, sample_seconds):
    tuner = LoadTuner(2, threads=threads)
    tuner.record(2, 0.01, cpu_seconds=60e-6)  # 5 ms per sample on the clock, 30 us of it working
    assert tuner.sample_seconds == pytest.approx(sample_seconds) and tuner.cheapest_seconds == pytest.approx(30e-6)


def test_the_cost_that_decides_whether_to_compare_is_cpu_time_where_known():
    tuner = LoadTuner(2, threads=True)
    tuner.record(10, 0.010, sharing=2, cpu_seconds=0.001)  # 1 ms per sample of wall time, 100 us of it CPU
    assert tuner.cheapest_seconds == pytest.approx(1e-4)
    assert tuner.sample_seconds == pytest.approx(5e-4)
    tuner.record(10, 0.010)  # a process worker: its wall time; the least cost measured counts
    assert tuner.cheapest_seconds == pytest.approx(1e-4)
    tuner.record(10, 0.0005, cpu_seconds=0.0005)
    assert tuner.cheapest_seconds == pytest.approx(5e-5)
    tuner._tuning = False  # as if an earlier comparison had ended
    tuner.new_epoch()  # epoch 0, a comparison epoch, measures afresh
    assert tuner._tuning and tuner.cheapest_seconds is None


def test_a_thread_worker_measures_its_own_cpu_time():
    tuner = LoadTuner(2, threads=True)
    tuner.run(lambda chunk: time.sleep(0.05) or chunk, [1, 2])  # waiting, not working
    assert tuner.cheapest_seconds < 0.005 and tuner.sample_seconds > 0.02


def deliver(tuner: LoadTuner, rates: dict[int, float]) -> list[int]:
    """Feeds the tuner batches at the samples/s `rates` gives for each limit, until it settles; the limits seen."""
    seen = []
    for _ in range(200):
        if not tuner._tuning:
            break
        seen.append(tuner.limit)
        samples = 64
        tuner.delivered(samples, samples / rates[tuner.limit], tuner.limit)
    return seen


@pytest.mark.parametrize(
    "rates, chosen, tried",
    [
        pytest.param({2: 27_000, 1: 30_000, 0: 39_000}, 0, [2, 1, 0], id="gil-bound-caller-alone-fastest"),
        pytest.param({2: 50_000, 1: 26_000, 0: 25_000}, 2, [2, 1, 0], id="decode-bound-keeps-all-threads"),
        pytest.param({2: 52_000, 1: 40_000, 0: 80_000}, 0, [2, 1, 0], id="one-thread-slowest-caller-alone-fastest"),
        pytest.param({8: 40_000, 4: 20_000, 2: 12_000, 1: 9_000, 0: 8_000}, 8, [8, 4], id="decode-bound-stops-halving"),
        pytest.param({2: 30_000, 1: 30_500, 0: 30_200}, 2, [2, 1, 0], id="ties-keep-all-threads"),
        pytest.param({4: 10_000, 2: 20_000, 1: 15_000, 0: 11_000}, 2, [4, 2, 1, 0], id="best-in-the-middle"),
    ],
)
def test_threads_settle_on_the_fastest_limit(rates, chosen, tried):
    tuner = LoadTuner(max(rates), threads=True)
    seen = deliver(tuner, rates)
    assert tuner.limit == chosen
    assert sorted(set(seen), reverse=True) == tried
    assert tuner.capacity == pytest.approx({k: rates[k] for k in tried})


@pytest.mark.parametrize(
    "rates, chosen", [({2: 50_000, 0: 38_000}, 2), ({2: 30_000, 0: 38_000}, 0)], ids=["processes-win", "caller-wins"]
)
def test_processes_are_compared_with_the_caller_alone(rates, chosen):
    tuner = LoadTuner(2, threads=False)
    seen = deliver(tuner, rates)
    assert sorted(set(seen), reverse=True) == [2, 0]  # never one process: processes share no GIL
    assert tuner.limit == chosen


@pytest.mark.parametrize("threads", [True, False], ids=["threads", "processes"])
@pytest.mark.parametrize(
    "cheapest_seconds, compared",
    [
        pytest.param(25e-6, True, id="small-png-compared"),
        pytest.param(COMPARE_BELOW * 0.9, True, id="just-below-compared"),
        pytest.param(COMPARE_BELOW, False, id="at-the-bound-not-compared"),
        pytest.param(1e-3, False, id="photo-not-compared"),
    ],
)
def test_only_cheap_samples_are_compared(cheapest_seconds, compared, threads):
    tuner = LoadTuner(2, threads=threads)
    tuner.new_epoch()
    # Even where fewer workers would measure faster, costly samples keep every worker: the comparison costs more.
    rates = {2: 20_000, 1: 40_000, 0: 60_000}
    seen = []
    for _ in range(200):
        if not tuner._tuning:
            break
        seen.append(tuner.limit)
        tuner.record(64, 64 * cheapest_seconds)
        tuner.delivered(64, 64 / rates[tuner.limit], tuner.limit)
    assert not tuner._tuning
    assert tuner.cheapest_seconds == pytest.approx(cheapest_seconds)
    if compared:
        assert tuner.limit == 0 and set(seen) == ({2, 1, 0} if threads else {2, 0})
    else:
        assert tuner.limit == 2 and set(seen) == {2} and tuner.capacity == pytest.approx({2: 20_000})


def test_a_cold_first_chunk_does_not_make_cheap_samples_look_costly():
    tuner = LoadTuner(2, threads=False)
    tuner.record(6, 0.3)  # a fresh process: imports and first calls, 50 ms per sample
    seen = []
    for _ in range(200):
        if not tuner._tuning:
            break
        seen.append(tuner.limit)
        tuner.record(6, 6 * 30e-6)
        tuner.delivered(6, 6 / {2: 20_000, 0: 30_000}[tuner.limit], tuner.limit)
    assert set(seen) == {2, 0} and tuner.limit == 0


def test_costly_samples_are_looked_at_again_in_the_next_comparison_epoch():
    tuner = LoadTuner(2, threads=True)
    tuner.new_epoch()
    while tuner._tuning:  # a cold disk: 2 ms per sample
        tuner.record(64, 64 * 2e-3)
        tuner.delivered(64, 0.1, tuner.limit)
    assert tuner.limit == 2
    tuner.new_epoch()  # epoch 1, from the page cache: 20 us per sample, and one thread alone is faster
    assert tuner._tuning
    for _ in range(200):
        if not tuner._tuning:
            break
        tuner.record(64, 64 * 20e-6)
        tuner.delivered(64, 64 / {2: 20_000, 1: 25_000, 0: 40_000}[tuner.limit], tuner.limit)
    assert tuner.limit == 0


def test_batches_of_another_limit_and_the_prefetched_start_of_an_epoch_are_not_counted():
    tuner = LoadTuner(2, threads=True, queue=3)
    tuner.new_epoch()
    for _ in range(3):  # prefetched while the caller was busy elsewhere: uncounted
        tuner.delivered(64, 1e-6, 2)
    for _ in range(PROBE_CHUNKS):
        tuner.delivered(64, 1.0, 1)  # loaded under another limit
    assert tuner._probe[2] == 0 and tuner.limit == 2
    for _ in range(PROBE_CHUNKS):
        tuner.delivered(64, max(PROBE_SECONDS, 1e-3), 2)
    assert tuner.limit == 1 and tuner.capacity[2] == pytest.approx(64 / max(PROBE_SECONDS, 1e-3))


@pytest.mark.parametrize(
    ("threads", "queue", "batches"),
    [(True, 10, PROBE_CHUNKS), (False, 10, PROBE_QUEUES * 10), (False, 1, PROBE_CHUNKS)],
    ids=["threads-8-batches", "processes-three-queues", "processes-short-queue-8-batches"],
)
def test_a_process_pool_is_measured_over_three_prefetch_queues(threads, queue, batches):
    tuner = LoadTuner(2, threads=threads, queue=queue)
    tuner.new_epoch()
    for _ in range(queue):  # the epoch's prefetched start: uncounted
        tuner.delivered(64, 1e-3, 2)
    for _ in range(batches - 1):
        tuner.delivered(64, max(PROBE_SECONDS, 1e-3), 2)
    assert tuner.limit == 2 and tuner.capacity == {}
    tuner.delivered(64, max(PROBE_SECONDS, 1e-3), 2)
    assert tuner.capacity == {2: pytest.approx(64 / max(PROBE_SECONDS, 1e-3))}
    assert tuner.limit == (1 if threads else 0)  # the next setting is measured


def test_the_calling_process_is_measured_over_8_batches_from_an_epochs_first_batch():
    tuner = LoadTuner(2, threads=False, queue=10)
    tuner.new_epoch()
    for _ in range(10):  # prefetched by the pool while the caller was busy elsewhere: uncounted
        tuner.delivered(64, 1e-3, 2)
    for _ in range(PROBE_QUEUES * 10):
        tuner.delivered(64, 2 * PROBE_SECONDS, 2)
    assert tuner.limit == 0  # the calling process is measured next, over 8 batches
    for _ in range(PROBE_CHUNKS):
        tuner.delivered(64, PROBE_SECONDS, 0)
    assert tuner.limit == 0 and tuner.watching and tuner.capacity[0] == pytest.approx(64 / PROBE_SECONDS)
    tuner.epochs = 1  # the next epoch is not one that compares again (`RETUNE_AT`)
    tuner.new_epoch()
    for _ in range(PROBE_CHUNKS - 1):  # the calling process prefetched nothing: its epoch's first batch counts
        tuner.delivered(64, PROBE_SECONDS, 0)
    assert tuner.watching
    tuner.delivered(64, PROBE_SECONDS, 0)
    assert not tuner.watching and tuner.limit == 0


def test_settings_are_compared_again_at_epochs_1_4_16():
    tuner = LoadTuner(2, threads=True)
    compared = []
    for epoch in range(20):
        tuner.new_epoch()
        if tuner._tuning:
            compared.append(epoch)
        tuner._tuning = False  # as if the comparison ended within the epoch
    assert compared == [0, 1, 4, 16]


def test_the_gate_lets_limit_threads_load_at_once():
    tuner = LoadTuner(3, threads=True)
    tuner._tuning = False
    tuner.limit = 1
    active, most = [0], [0]
    lock = threading.Lock()

    def load(chunk):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        return chunk

    threads = [threading.Thread(target=tuner.run, args=(load, [k])) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert most[0] == 1
    tuner.limit = 0  # the caller loads; chunks already given to threads still run, one at a time
    assert tuner.run(load, [7]) == [7]


@pytest.fixture
def small_pngs(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(256):
        path = tmp_path / f"{i:04d}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
        images.append(str(path))
        labels.append(i)
    return images, np.array(labels)


def same_epoch(seq, reference, after_each=lambda: None):
    """One epoch of `seq` and of `reference`, every batch asserted equal; `after_each()` after every batch."""
    reference.on_epoch_begin()
    seq.on_epoch_begin()
    for p in range(len(seq)):
        x, y = seq[p]
        ex, ey = reference[p]
        np.testing.assert_array_equal(x, ex)
        np.testing.assert_array_equal(y, ey)
        after_each()
    seq.on_epoch_end()
    reference.on_epoch_end()


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_whatever_the_tuner_decides_every_sample_comes_once_in_order(small_pngs, processes, monkeypatch):
    monkeypatch.setattr(tuning, "PROBE_CHUNKS", 2)  # compare within the few batches of a tiny dataset
    monkeypatch.setattr(tuning, "PROBE_SECONDS", 0.0)
    images, labels = small_pngs
    reference = SeparatedSequence(images, labels, 16, image_size=(8, 8), seed=3)
    seq = SeparatedSequence(images, labels, 16, image_size=(8, 8), seed=3, workers=2, use_multiprocessing=processes)
    try:
        limits = set()
        for _ in range(6):
            same_epoch(seq, reference, lambda: limits.add(seq._pool.tuner.limit))
        assert len(limits) >= 2  # it did compare settings
        assert seq._pool.hits + seq._pool.misses + seq._pool.inline == 6 * len(seq)
    finally:
        seq.close()


def test_once_settled_on_the_calling_thread_batches_skip_the_pool_until_the_next_comparison(small_pngs):
    images, labels = small_pngs
    reference = SeparatedSequence(images, labels, 16, image_size=(8, 8), seed=3)
    seq = SeparatedSequence(images, labels, 16, image_size=(8, 8), seed=3, workers=2)

    def epoch():
        same_epoch(seq, reference)

    try:
        epoch()
        epoch()  # epochs 0 and 1 compare settings
        pool = seq._pool
        pool.tuner.limit, pool.tuner._tuning = 0, False  # as if the comparison had found the calling thread fastest
        before = (pool.inline, pool.hits, pool.misses)
        epoch()  # epoch 2: no comparison
        epoch()  # epoch 3
        assert (pool.inline, pool.hits, pool.misses) == (before[0] + 2 * len(seq), before[1], before[2])
        assert not pool.loads_here(seq.epoch + 1)  # a new epoch's first batch goes through the pool
        seq.on_epoch_begin()
        seq[0]  # epoch 4 compares again: all threads load
        assert pool.tuner.tuning and pool.tuner.limit == 2 and not pool.loads_here(seq.epoch)
    finally:
        seq.close()


def deliver_while(tuner, busy, rates):
    """Delivers batches at `rates[limit]` while `busy(tuner)`; returns how many."""
    for count in range(500):
        if not busy(tuner):
            return count
        tuner.delivered(64, 64 / rates[tuner.limit], tuner.limit)
    raise AssertionError("the tuner never settled")


def comparing(tuner):
    return tuner.tuning


def watching(tuner):
    return tuner.watching


def test_a_choice_that_lags_another_settings_rate_is_compared_again_once_per_epoch():
    tuner = LoadTuner(2, threads=True)
    tuner.new_epoch()
    # A pause of the machine while the calling thread was measured: it looked slower than two threads.
    deliver_while(tuner, comparing, {2: 30_000, 1: 22_000, 0: 20_000})
    assert tuner.limit == 2 and tuner.watching
    # Measured again, two threads deliver what they really do: less than 0.8x what one thread measured.
    truth = {2: 14_000, 1: 22_000, 0: 35_000}
    assert deliver_while(tuner, watching, truth) >= PROBE_CHUNKS
    assert tuner.tuning and tuner.limit == 2 and tuner.capacity == {}
    deliver_while(tuner, comparing, truth)
    assert tuner.limit == 0 and tuner.watching and tuner.capacity == pytest.approx(truth)
    # Lags again: not compared a third time this epoch, but the setting measured faster (one thread) is tried.
    deliver_while(tuner, watching, {2: 14_000, 1: 22_000, 0: 10_000})
    assert tuner.limit == 1 and not tuner.tuning and not tuner.watching
    assert tuner.capacity == pytest.approx({2: 14_000, 1: 22_000, 0: 10_000})


def test_a_choice_that_holds_up_is_kept_and_no_longer_watched():
    tuner = LoadTuner(2, threads=True)
    tuner.new_epoch()
    rates = {2: 27_000, 1: 30_000, 0: 39_000}
    deliver_while(tuner, comparing, rates)
    assert tuner.limit == 0 and tuner.watching
    # Slower than measured, but still faster than the best other setting: kept, at the rate measured last.
    assert deliver_while(tuner, watching, {2: 27_000, 1: 30_000, 0: 33_000}) >= PROBE_CHUNKS
    assert not tuner.tuning and tuner.limit == 0 and tuner.capacity == pytest.approx({**rates, 0: 33_000})


@pytest.mark.parametrize(
    "compared, measured_again, settled",
    [
        # bench --small, short sequences: one thread measured 9% faster than the calling thread in a burst, then
        # ran at 0.75x of it; the calling thread, measured again, holds up.
        pytest.param(
            {2: 38_400, 1: 55_700, 0: 51_200}, {2: 38_400, 1: 41_800, 0: 50_000}, 0, id="burst-for-one-thread"
        ),
        pytest.param({2: 30_000, 1: 22_000, 0: 20_000}, {2: 20_000, 1: 22_000, 0: 29_000}, 1, id="two-then-one"),
        pytest.param({2: 27_000, 1: 30_000, 0: 39_000}, {2: 27_000, 1: 30_000, 0: 37_500}, 0, id="within-5pc-kept"),
    ],
)
def test_a_choice_slower_than_another_setting_when_measured_again_moves_to_it(compared, measured_again, settled):
    tuner = LoadTuner(2, threads=True)
    tuner.new_epoch()
    deliver_while(tuner, comparing, compared)
    deliver_while(tuner, watching, measured_again)
    assert not tuner.tuning and not tuner.watching
    assert tuner.limit == settled


def test_a_choice_moves_at_most_twice_after_a_comparison():
    tuner = LoadTuner(2, threads=True)
    tuner.new_epoch()
    deliver_while(tuner, comparing, {2: 30_000, 1: 30_500, 0: 30_200})
    assert tuner.limit == 2 and tuner.watching  # ties keep every thread
    for measured, moved_to in [(27_000, 1), (27_000, 0)]:  # each measures slower than another, once more
        deliver_while(
            tuner, lambda t, limit=tuner.limit: t.watching and t.limit == limit, dict.fromkeys((2, 1, 0), measured)
        )
        assert tuner.limit == moved_to and tuner.watching
    deliver_while(tuner, watching, dict.fromkeys((2, 1, 0), 25_000))  # slower again: the third time, it stays
    assert tuner.limit == 0 and not tuner.watching and not tuner.tuning
    assert tuner.capacity == pytest.approx({2: 27_000, 1: 27_000, 0: 25_000})


def test_a_comparison_epoch_replaces_a_check_still_running():
    tuner = LoadTuner(2, threads=True)
    tuner.new_epoch()
    deliver_while(tuner, comparing, {2: 27_000, 1: 30_000, 0: 39_000})
    assert tuner.watching
    tuner.new_epoch()  # epoch 1 compares again before the check of epoch 0's choice ended
    assert tuner.tuning and not tuner.watching and tuner.capacity == {} and tuner.limit == 2
