"""`keras-sepseq bench --small`: small samples, the engine's own cost, and what threads could reach on more cores.

Three measurements, all in one run so that their ratios compare:

1. Loaders alone (no model), iterating `seq[i]` for nine epochs; the median
   of the five in which the load tuner keeps its settings is reported
   (`STEADY_EPOCHS`),
   as the median over interleaved rounds of all settings (each ratio the median of the rounds' own ratios,
   `paired_ratio`): 8x8 PNGs with scalar `.npy` labels (`SeparatedSequence`)
   and short `.npy` sequences (`PaddedSequence`), with `workers=1`, two
   threads and two processes, and `tf.data` (`read_file` + `decode_png`,
   `AUTOTUNE`, labels in memory) on the same PNGs; and the photos
   workload (batch 32, resized) with the same three settings; and `workers=1`
   once more (`AGAIN`), whose ratio to the first shows how far apart this
   machine puts two measurements of the same code.
2. The engine's own cost: a dataset whose loader returns a prepared array,
   so that nothing is read or decoded; CPU time per sample in the calling
   process and in all processes together.
3. The time per sample that threads cannot overlap (held under the GIL,
   or spent handing it over), from the speed-up of two threads over one
   (Karp-Flatt). `1 / that time` is the most samples per second any number
   of threads can load; it is compared with 16 and 64 cores' worth of
   single-core decoding of the photos workload.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from keras_sepseq.memory import _children

_FORMAT = 1

EPOCHS = 9
"""Epochs each loader runs in `run_small`."""

AGAIN = "workers=1 again"
"""A second `workers=1` in every round: the ratio of two measurements of the same code, i.e. what this machine's
noise alone makes of a ratio. Threads that the load tuner settled on the calling thread run that same code
(`WorkerPool.loads_here`), so their ratio is parity within this one's spread."""

STEADY_EPOCHS = (2, 3, 6, 7, 8)
"""The epochs (from 0) whose median is a run's steady rate: not those in which the load tuner compares settings
(0, 1 and 4: `tuning.RETUNE_AT`), nor the one after epoch 4, in which it may still measure its choice again.
Five epochs of ~0.12 s rather than two: this machine's speed varies by 10-15% at that scale."""


def make_small_dataset(directory: str, *, samples: int = 6000, seed: int = 0) -> dict[str, list[str]]:
    """Writes (once) `samples` 8x8 RGB PNGs, scalar `.npy` labels, and `.npy` sequences of 20-200 x 13.

    Args:
        directory: The folder; a `small.json` written last marks it complete.
        samples: Samples of each kind. Defaults to 6000.
        seed: Random seed. Defaults to 0.

    Returns:
        `{"images": [...], "labels": [...], "sequences": [...]}` paths.

    Example:

    >>> files = make_small_dataset("/tmp/small", samples=64)  # doctest: +SKIP
    """
    from PIL import Image

    files = {
        "images": [os.path.join(directory, f"img_{i:06d}.png") for i in range(samples)],
        "labels": [os.path.join(directory, f"label_{i:06d}.npy") for i in range(samples)],
        "sequences": [os.path.join(directory, f"seq_{i:06d}.npy") for i in range(samples)],
    }
    marker, settings = os.path.join(directory, "small.json"), {"format": _FORMAT, "samples": samples, "seed": seed}
    try:
        with open(marker) as f:
            if json.load(f) == settings:
                return files
    except (OSError, ValueError):
        pass
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(samples):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(files["images"][i])
        np.save(files["labels"][i], np.int64(i % 10))
        steps = int(rng.integers(20, 201))
        np.save(files["sequences"][i], rng.normal(size=(steps, 13)).astype(np.float32))
    with open(marker, "w") as f:
        json.dump(settings, f)
    return files


def epoch_rates(seq: Any, epochs: int = 4, tuning: list | None = None, cpu: list | None = None) -> list[float]:
    """Samples/s of iterating every batch of `seq`, per epoch (the first includes starting workers).

    Args:
        seq: A keras_sepseq sequence; closed afterwards.
        epochs: Epochs. Defaults to 4.
        tuning: Where to append, after each epoch, what the worker pool's
            load tuner had decided: `{"limit", "capacity"}` (threads loading
            at once, 0 for the calling thread; samples/s it measured per
            limit), or `None` without a pool. A slow round then explains
            itself in `bench --small --json`.
        cpu: Where to append, after each epoch, `[CPU seconds of this
            process, CPU seconds of its child processes (the workers),
            samples]` spent on it.

    Returns:
        One rate per epoch.
    """
    rates = []
    try:
        for _ in range(epochs):
            workers = _children(os.getpid()) if cpu is not None else []
            start, seen, here, there = time.perf_counter(), 0, time.process_time(), _cpu_seconds(workers)
            seq.on_epoch_begin()
            for position in range(len(seq)):
                seen += len(seq[position][1])
            seq.on_epoch_end()
            rates.append(seen / (time.perf_counter() - start))
            if cpu is not None:
                cpu.append([time.process_time() - here, _cpu_seconds(workers) - there, seen])
            if tuning is not None:
                pool = getattr(seq, "_pool", None)
                tuner = None if pool is None else pool.tuner
                tuning.append(
                    None
                    if tuner is None
                    else {"limit": tuner.limit, "capacity": {str(k): round(v) for k, v in tuner.capacity.items()}}
                )
    finally:
        seq.close()
    return rates


def tf_png_rates(images: list[str], labels: np.ndarray, batch_size: int, epochs: int = 4) -> list[float]:
    """Samples/s of `tf.data` on the PNGs: `read_file` + `decode_png` + float32, `AUTOTUNE`, batched, prefetched.

    Args:
        images: PNG files.
        labels: Labels, in memory.
        batch_size: Samples per batch.
        epochs: Epochs. Defaults to 4.

    Returns:
        One rate per epoch.
    """
    import tensorflow as tf

    def load(path, label):
        pixels = tf.io.decode_png(tf.io.read_file(path), channels=3)
        return tf.cast(pixels, tf.float32) / 255.0, label

    dataset = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .map(load, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    rates = []
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for x, _y in dataset.as_numpy_iterator():
            seen += len(x)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of processes `pids` (Linux `/proc`; 0 for those gone)."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def engine_cost(workers: int, processes: bool, samples: int = 64_000, batch_size: int = 64) -> dict[str, float]:
    """Microseconds of CPU per sample the engine costs when loading costs nothing.

    The dataset's loader returns a prepared 8x8x3 float32 array; the rest
    (order, chunks, workers, stacking, labels) is the real machinery. The
    second of two epochs is measured.

    Args:
        workers: Workers (1: the calling thread loads).
        processes: Process workers instead of threads.
        samples: Samples per epoch. Defaults to 64,000.
        batch_size: Samples per batch. Defaults to 64.

    Returns:
        `caller_us` (CPU of the calling process, all its threads),
        `total_us` (with the worker processes), `wall_us`.

    Example:

    >>> engine_cost(1, False, samples=6400)["total_us"] < 50  # doctest: +SKIP
    True
    """
    from keras_sepseq.field_sequence import FieldSequence
    from keras_sepseq.fields import ArrayField, Field
    from keras_sepseq.paths import PathArray
    from keras_sepseq.stacking import stack_arrays

    prepared = np.zeros((8, 8, 3), np.float32)

    class Prepared(Field):
        kind = "prepared array"

        def read(self, path: str) -> np.ndarray:
            return prepared

        def batch(self, indices, items, *, position=None, empty=np.empty):
            return stack_arrays(items, str, what="array", empty=empty)

    seq = FieldSequence(
        {"x": Prepared(paths=PathArray([f"prepared/{i}" for i in range(samples)]))},
        {"y": ArrayField(np.zeros(samples, np.int64))},
        batch_size,
        seed=0,
        workers=workers,
        use_multiprocessing=processes,
    )
    try:
        for epoch in range(2):
            if epoch == 1:
                pids = _children(os.getpid())
                wall, caller, others = time.perf_counter(), time.process_time(), _cpu_seconds(pids)
            seq.on_epoch_begin()
            for position in range(len(seq)):
                seq[position]
            seq.on_epoch_end()
        wall, caller = time.perf_counter() - wall, time.process_time() - caller
        others = _cpu_seconds(pids) - others
    finally:
        seq.close()
    return {
        "caller_us": caller / samples * 1e6,
        "total_us": (caller + others) / samples * 1e6,
        "wall_us": wall / samples * 1e6,
    }


def gil_seconds_per_sample(load: Callable[[int], Any], count: int, seconds: float = 2.0) -> dict[str, float]:
    """Seconds per sample of `load(i)` that do not run in parallel (held under the GIL), and its seconds alone.

    One thread loads for `seconds`, then two threads together: from the
    speed-up `s` of two threads over one, the serial fraction is
    `e = 2 / s - 1` (the Karp-Flatt metric for two cores, clamped to
    [0, 1]); `e` times the time per sample is the time that two threads
    could not overlap: the GIL, and what handing it over costs. Needs two
    free cores.

    Args:
        load: Loads sample `i` (e.g. a sequence's `load_item`).
        count: Samples available (`load` cycles through `0..count-1`).
        seconds: Measuring time of each run. Defaults to 2.

    Returns:
        `gil_s` (serial seconds per sample), `alone_s` (seconds per sample
        in one thread) and `speedup` (two threads over one).

    Example:

    >>> gil_seconds_per_sample(seq.load_item, len(seq.images), 1.0)  # doctest: +SKIP
    """

    def rate(threads: int) -> float:
        done = [0] * threads
        deadline = time.perf_counter() + seconds

        def work(k: int) -> None:
            i = k
            while time.perf_counter() < deadline:
                load(i % count)
                done[k] += 1
                i += threads

        start = time.perf_counter()
        workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return sum(done) / (time.perf_counter() - start)

    for i in range(min(count, 1000)):  # every file in the page cache, the decoders warm
        load(i)
    one, two = rate(1), rate(2)
    speedup = two / one
    serial = min(1.0, max(0.0, 2 / speedup - 1))
    return {"gil_s": serial / one, "alone_s": 1 / one, "speedup": speedup}


def run_small(
    folder: str,
    photos: list[str],
    image_size: tuple[int, int],
    *,
    samples: int = 6000,
    workers: int = 2,
    seconds: float = 2.0,
    rounds: int = 3,
) -> dict[str, Any]:
    """Runs the three measurements of this module; returns them as a dict for `format_small`.

    Args:
        folder: Where the small files are written (once).
        photos: Image files of the photos workload (for the GIL measurement
            and the single-core decode rate).
        image_size: `(height, width)` the photos are resized to.
        samples: Small samples of each kind. Defaults to 6000.
        workers: Threads or processes of the parallel loaders. Defaults to 2.
        seconds: Measuring time of each GIL run. Defaults to 2.
        rounds: Rounds over all loader settings, interleaved, so that a
            slow minute of a shared machine hits every setting. Defaults to 3.

    Returns:
        `{"loaders": {workload: {setting: [steady rate per round]}}, "engine": {setting: costs}, "gil": {...},
        "tuning": {workload: {setting: [per round, per epoch: the tuner's limit and capacity, or None]}},
        "cpu": {workload: {setting: [per round, per epoch: [CPU s here, CPU s in workers, samples]]}}}`;
        a round's steady rate is the median of its epochs `STEADY_EPOCHS` (of `EPOCHS`).

    Example:

    >>> report = run_small("/tmp/small", photos, (128, 128), samples=600)  # doctest: +SKIP
    """
    from keras_sepseq.bench import decode_rate
    from keras_sepseq.padded import PaddedSequence
    from keras_sepseq.separated import SeparatedSequence

    files = make_small_dataset(folder, samples=samples)
    labels = np.arange(samples) % 10
    settings = {
        "workers=1": (1, False),
        f"{workers} threads": (workers, False),
        f"{workers} processes": (workers, True),
        AGAIN: (1, False),  # the same code as workers=1: how far apart two measurements of it fall
    }
    loaders: dict[str, dict[str, list[float]]] = {"small PNGs": {}, "short sequences": {}, "photos": {}}
    photo_labels = np.zeros(len(photos), np.int64)

    def steady(rates: list[float]) -> float:
        return float(np.median([rates[e] for e in STEADY_EPOCHS]))

    tuning: dict[str, dict[str, list[list]]] = {}
    cpu: dict[str, dict[str, list[list]]] = {}

    def decided(setting: str, workload: str) -> list:
        """A new round's list of the tuner's decisions after each epoch, kept in the report."""
        rounds = tuning.setdefault(workload, {}).setdefault(setting, [])
        rounds.append([])
        return rounds[-1]

    def spent(setting: str, workload: str) -> list:
        """A new round's list of CPU seconds per epoch, here and in the workers, kept in the report."""
        rounds = cpu.setdefault(workload, {}).setdefault(setting, [])
        rounds.append([])
        return rounds[-1]

    for round_ in range(max(1, rounds)):
        # Every other round in reverse order, so that a machine slowing down (or speeding up) over a round, or
        # what the run before leaves behind, does not favour the settings that run first.
        for name, (count, processes) in list(settings.items())[:: -1 if round_ % 2 else 1]:
            png = SeparatedSequence(files["images"], files["labels"], 64, image_size=(8, 8), seed=0, workers=count,
                                    use_multiprocessing=processes)  # fmt: skip
            loaders["small PNGs"].setdefault(name, []).append(
                steady(epoch_rates(png, EPOCHS, tuning=decided(name, "small PNGs"), cpu=spent(name, "small PNGs")))
            )
            sequences = PaddedSequence(
                files["sequences"], labels, 64, seed=0, workers=count, use_multiprocessing=processes
            )
            loaders["short sequences"].setdefault(name, []).append(
                steady(epoch_rates(sequences, EPOCHS, decided(name, "short sequences"), spent(name, "short sequences")))
            )
            pictures = SeparatedSequence(photos, photo_labels, 32, image_size=image_size, seed=0, workers=count,
                                         use_multiprocessing=processes)  # fmt: skip
            loaders["photos"].setdefault(name, []).append(
                steady(epoch_rates(pictures, EPOCHS, tuning=decided(name, "photos"), cpu=spent(name, "photos")))
            )
        loaders["small PNGs"].setdefault("tf.data", []).append(
            steady(tf_png_rates(files["images"], labels, 64, EPOCHS))
        )
    engine = {
        name: engine_cost(count, processes, samples=samples * 10)
        for name, (count, processes) in settings.items()
        if name != AGAIN
    }
    gil = {}
    small = SeparatedSequence(files["images"], files["labels"], 64, image_size=(8, 8))
    gil["small PNGs"] = gil_seconds_per_sample(small.load_item, samples, seconds)
    photo_seq = SeparatedSequence(photos, photo_labels, 32, image_size=image_size)
    gil["photos"] = gil_seconds_per_sample(photo_seq.load_item, len(photos), seconds)
    gil["photos"]["decode_rate"] = decode_rate(photos, image_size, seconds)
    return {
        "samples": samples, "workers": workers, "loaders": loaders, "engine": engine, "gil": gil, "tuning": tuning,
        "cpu": cpu,
    }  # fmt: skip


def paired_ratio(rates: list[float], base: list[float]) -> float:
    """The median over rounds of `rates[k] / base[k]`: each setting against the other measured in the same round.

    A round runs every setting one after the other within a few seconds; the
    machine's speed drifts by 10-20% between rounds (other tenants), so a
    ratio of the two medians mixes rounds, while each round's own ratio does
    not (the same code path measured twice was 0.88x-1.17x itself by the
    former, in three rounds).

    Args:
        rates: One rate per round.
        base: The rate it is compared with, one per round.

    Returns:
        The median of the per-round ratios.

    Example:

    >>> paired_ratio([110.0, 90.0, 105.0], [100.0, 90.0, 100.0])
    1.05
    """
    return float(np.median([a / b for a, b in zip(rates, base)]))


def _parity_notes(report: dict[str, Any], workload: str, rates: dict[str, list[float]]) -> list[str]:
    """What the `AGAIN` measurement says of a workload's ratios, and where its threads loaded in steady epochs."""
    if AGAIN not in rates:
        return []
    own = [a / b for a, b in zip(rates[AGAIN], rates["workers=1"])]
    notes = [
        f"  {'':16s} the same code measured twice: per-round ratios {min(own):.2f}-{max(own):.2f}x "
        "(this machine's noise; a ratio inside it is parity)"
    ]
    threads = f"{report['workers']} threads"
    decided = report.get("tuning", {}).get(workload, {}).get(threads)
    if decided:
        limits = [epochs[e]["limit"] for epochs in decided for e in STEADY_EPOCHS if e < len(epochs) and epochs[e]]
        if limits.count(0):
            notes.append(
                f"  {'':16s} {threads}: the calling thread loaded (the workers=1 code) in {limits.count(0)} of "
                f"{len(limits)} measured epochs"
            )
    return notes


def process_costs(report: dict[str, Any], workload: str) -> tuple[float, float] | None:
    """Seconds of CPU per sample of a workload's process pool, in the main process and in the workers.

    Summed over the measured epochs (`STEADY_EPOCHS`) in which the pool
    loaded (the tuner's limit above 0) in every round.

    Args:
        report: What `run_small` returned.
        workload: One of its workloads.

    Returns:
        `(main process, workers)` seconds per sample, or `None` where
        nothing was measured.

    Example:

    >>> process_costs(report, "small PNGs")  # doctest: +SKIP
    (4e-06, 3.1e-05)
    """
    setting = f"{report['workers']} processes"
    rounds = report.get("cpu", {}).get(workload, {}).get(setting, [])
    decisions = report.get("tuning", {}).get(workload, {}).get(setting, [])
    here = there = samples = 0.0
    for k, epochs in enumerate(rounds):
        for e in STEADY_EPOCHS:
            limit = decisions[k][e]["limit"] if k < len(decisions) and e < len(decisions[k]) else None
            if e < len(epochs) and limit:
                here, there, samples = here + epochs[e][0], there + epochs[e][1], samples + epochs[e][2]
    return (here / samples, there / samples) if samples and there > 0 else None


def _process_lines(report: dict[str, Any]) -> list[str]:
    """What process workers reach on 16 and 64 cores: the main process's CPU per sample is not shared."""
    lines = []
    for workload in report["loaders"]:
        costs = process_costs(report, workload)
        if costs is None:
            continue
        here, there = costs
        reach = {n: min(n / (here + there), 1 / here) for n in (16, 64)}
        lines.append(
            f"  {workload:16s} main process {here * 1e6:5.1f} us + workers {there * 1e6:6.1f} us per sample: at "
            f"most {1 / here:,.0f}/s (the main process); on 16 cores {reach[16]:,.0f}/s, on 64 {reach[64]:,.0f}/s"
        )
        rate = report["gil"].get(workload, {}).get("decode_rate")
        if rate:
            verdict = "processes keep up" if reach[16] >= 16 * rate else "processes cannot"
            lines.append(f"  {'':16s} 16 x single-core decode = {16 * rate:,.0f}/s: {verdict} on 16 cores")
    if lines:
        lines.insert(0, f"what {report['workers']} processes cost, and reach on more cores (epochs the pool loaded):")
    return lines


def format_small(report: dict[str, Any]) -> str:
    """The report of `run_small` as text: rates, ratios, engine cost, GIL ceilings and what they mean.

    Args:
        report: What `run_small` returned.

    Returns:
        Lines of text.
    """
    workers = report["workers"]
    rounds = len(next(iter(report["loaders"].values()))["workers=1"])
    lines = [
        f"loaders alone ({report['samples']} small samples of each kind, batch 64; the photos, batch 32; no model; "
        f"epochs {', '.join(str(e + 1) for e in STEADY_EPOCHS)} of {EPOCHS}; rates: median of {rounds} interleaved "
        "rounds; ratios: median of the rounds' ratios):"
    ]
    for workload, rates in report["loaders"].items():
        median = {name: float(np.median(values)) for name, values in rates.items()}
        for name, value in median.items():
            ratio = f"{paired_ratio(rates[name], rates['workers=1']):5.2f}x workers=1"
            if "tf.data" in median and name != "tf.data":
                ratio += f", {paired_ratio(rates[name], rates['tf.data']):5.2f}x tf.data"
            spread = f"(rounds {min(rates[name]):,.0f}-{max(rates[name]):,.0f})"
            lines.append(f"  {workload:16s} {name:15s} {value:>10,.0f} samples/s  {ratio}  {spread}")
        lines.extend(_parity_notes(report, workload, rates))
    lines.append("engine's own cost (the loader returns a prepared array; CPU per sample):")
    for name, cost in report["engine"].items():
        lines.append(
            f"  {name:12s} calling process {cost['caller_us']:5.1f} us, all processes {cost['total_us']:5.1f} us "
            f"(wall {cost['wall_us']:4.1f} us)"
        )
    lines.append(
        "time per sample threads cannot overlap (GIL; Karp-Flatt from 1 and 2 threads), and what threads reach:"
    )
    for workload, g in report["gil"].items():
        per_core = 1 / g["alone_s"]
        measured = g["gil_s"] > 0
        ceiling = 1 / g["gil_s"] if measured else math.inf
        reach = {n: min(n * per_core, ceiling) for n in (16, 64)}
        limit = (
            f"threads reach at most {ceiling:,.0f}/s"
            if measured
            else "no serial part measurable (two threads at least twice one), no ceiling seen"
        )
        lines.append(
            f"  {workload:12s} 2 threads {g['speedup']:.2f}x one; serial (GIL) {g['gil_s'] * 1e6:6.1f} us "
            f"of {g['alone_s'] * 1e6:6.1f} us per sample: {limit}; on 16 cores {reach[16]:,.0f}/s, "
            f"on 64 {reach[64]:,.0f}/s"
        )
        if "decode_rate" in g:
            target = 16 * g["decode_rate"]
            verdict = (
                "threads keep up: decoding, not the engine, is the limit"
                if ceiling >= target
                else f"threads cannot: use use_multiprocessing=True ({workers} processes ran at the rates above)"
            )
            ratio = f"{ceiling / target:.1f}" if measured else "unbounded"
            lines.append(
                f"  {'':12s} 16 x single-core decode = {target:,.0f}/s; GIL ceiling / that = {ratio}: " + verdict
            )
    lines.extend(_process_lines(report))
    return "\n".join(lines)
