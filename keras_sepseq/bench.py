"""`keras-sepseq bench`: input pipelines compared end to end through `model.fit`, on the same files.

Every candidate feeds the same tiny model (its training step is cheap, so the
input pipeline is what is measured), in one process, one after another:

1. the classic `tf.data` recipe (`from_tensor_slices` of paths, `map` of
   read + decode + convert + resize with `AUTOTUNE`, `shuffle`, `batch`,
   `prefetch`);
2. the classic Python generator (per-sample decode, `np.stack`);
3. a plain `keras.utils.PyDataset` written the obvious way, with Keras's own
   thread workers;
4. `SeparatedSequence` with thread workers, process workers, and the memory
   cache and the directory cache;
5. the same `fit` fed from numpy arrays already in RAM (the ceiling of any
   PyDataset on this machine), and the decode limit: the single-core rate
   of decoding and resizing the same files, times the cores used.

The first epoch ("cold": it includes starting workers, and for cached modes
filling the cache) and the later ("steady") epochs are timed separately.
The model is built and its training step traced before any candidate runs,
so no candidate pays for tracing. Files are read once beforehand, so every
candidate finds them in the OS page cache. Ratios come from one run, on one
machine, at one time: compare them, not absolute rates across machines.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from keras_sepseq import bench_candidates
from keras_sepseq.memory import PeakMemory, rss_bytes

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
NUM_CLASSES = 10
_FORMAT_VERSION = 1


# Data.


def synthetic_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photo-like RGB image: smooth color fields, a few shapes and sensor noise.

    Args:
        rng: The random generator.
        height: Image height.
        width: Image width.

    Returns:
        A `uint8` array of shape `(height, width, 3)`.

    Example:

    >>> synthetic_image(np.random.default_rng(0), 240, 320).shape
    (240, 320, 3)
    """
    from PIL import Image

    coarse = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    yy, xx = np.mgrid[:height, :width]
    for _ in range(int(rng.integers(2, 6))):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        radius = rng.integers(10, max(11, min(height, width) // 3))
        field[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = rng.integers(0, 256, size=3)
    field += rng.normal(0, 6, size=field.shape)
    return np.clip(field, 0, 255).astype(np.uint8)


def make_bench_dataset(directory: str, *, samples: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Writes (once) `samples` images of 200 to 360 px, half PNG and half JPEG, with `.npy` labels.

    Args:
        directory: The folder; a `dataset.json` written last marks it
            complete, and a later call with the same settings reuses it.
        samples: How many image/label pairs.
        seed: Random seed. Defaults to 0.

    Returns:
        `(image_paths, label_paths)`.

    Raises:
        ValueError: If `samples < 1`.

    Example:

    >>> images, labels = make_bench_dataset("/tmp/bench", samples=64)  # doctest: +SKIP
    """
    from PIL import Image

    if samples < 1:
        raise ValueError(f"`samples` must be >= 1. Received: samples={samples}")
    images = [os.path.join(directory, f"img_{i:06d}.{'png' if i % 2 == 0 else 'jpg'}") for i in range(samples)]
    labels = [os.path.join(directory, f"label_{i:06d}.npy") for i in range(samples)]
    manifest = os.path.join(directory, "dataset.json")
    settings = {"format": _FORMAT_VERSION, "samples": samples, "seed": seed}
    try:
        with open(manifest) as f:
            if json.load(f) == settings:
                return images, labels
    except (OSError, ValueError):
        pass
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    for image_path, label_path in zip(images, labels):
        height, width = (int(v) for v in rng.integers(200, 361, size=2))
        pixels = synthetic_image(rng, height, width)
        if image_path.endswith(".png"):
            Image.fromarray(pixels).save(image_path)
        else:
            Image.fromarray(pixels).save(image_path, quality=90)
        np.save(label_path, np.int64(rng.integers(0, NUM_CLASSES)))
    with open(manifest, "w") as f:
        json.dump(settings, f)
    return images, labels


def images_in(directory: str) -> list[str]:
    """The image files below `directory` (recursively), sorted.

    Args:
        directory: A folder.

    Returns:
        Paths with an extension in `IMAGE_EXTENSIONS`.

    Raises:
        ValueError: If there is none.

    Example:

    >>> images_in("photos")  # doctest: +SKIP
    """
    found = sorted(
        p for p in glob.glob(os.path.join(glob.escape(directory), "**", "*"), recursive=True)
        if p.lower().endswith(IMAGE_EXTENSIONS)
    )  # fmt: skip
    if not found:
        raise ValueError(f"`--dir` holds no image files ({', '.join(IMAGE_EXTENSIONS)}). Received: --dir={directory!r}")
    return found


# Measurement helpers.


@dataclass
class Result:
    """One candidate's measurements.

    Attributes:
        name: The candidate.
        cold: Images/s in the first epoch (the median over rounds).
        steady: The median images/s of the later epochs (a median, because
            Keras's generator-backed tf.data sometimes stalls for about a
            second at an epoch's start, which a mean of short epochs would
            let dominate), then the median over rounds.
        peak_rss_mb: Peak memory (PSS, see `process_tree_rss`) of the process tree while it ran
            (the highest over rounds).
        epochs: Images/s of each epoch, one list per round.
        best: The fastest later epoch of any round: on two cores even
            `fit` on numpy arrays alternates between fast and slow epochs
            (about 12,000 and 7,000 images/s here, with no steal time), so
            the best epoch shows what a candidate can do when the machine
            lets it.
        note: What it is, in words.
    """

    name: str
    cold: float
    steady: float
    peak_rss_mb: float
    epochs: list[list[float]] = field(default_factory=list)
    note: str = ""
    best: float = 0.0


def decode_rate(paths: list[str], size: tuple[int, int], seconds: float = 3.0) -> float:
    """Single-thread rate of `decode_image` + resize on `paths`, in images/s.

    Args:
        paths: Image files.
        size: `(height, width)` to resize to.
        seconds: Stop after about this long. Defaults to 3.

    Returns:
        Images per second.

    Example:

    >>> decode_rate(paths, (128, 128))  # doctest: +SKIP
    """
    from keras_sepseq.images import decode_image

    start, done = time.perf_counter(), 0
    for path in paths:
        decode_image(path, image_size=size)
        done += 1
        if time.perf_counter() - start > seconds:
            break
    return done / (time.perf_counter() - start)


class _GrainIndices:
    """Grain data source: sample indices (module level, so that Grain's spawned workers can unpickle it)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


if importlib.util.find_spec("grain") is not None:  # optional: only `bench` compares with Grain
    import grain.python as _grain

    class _GrainDecode(_grain.MapTransform):
        """Grain map transform: the same `decode_image` call SeparatedSequence makes."""

        def __init__(self, paths: list[str], size: tuple[int, int]) -> None:
            self.paths, self.size = list(paths), size

        def map(self, index: int) -> dict[str, np.ndarray]:
            from keras_sepseq.images import decode_image

            return {"x": decode_image(self.paths[index], image_size=self.size), "index": np.int64(index)}


def loader_rates(
    paths: list[str], size: tuple[int, int], batch_size: int, workers: int, epochs: int = 3
) -> dict[str, list[float]]:
    """Images/s of the loaders alone (no model), per epoch: keras_sepseq's workers, and Grain's if installed.

    Each loader yields float32 batches in [0, 1], as `fit` would get them;
    the first epoch includes starting the workers. Grain
    (`pip install grain`) is the engine the performance issue names as an
    alternative for process workers: its `DataLoader` spawns workers and
    moves batches through shared memory. Here it runs the same
    `decode_image` per sample and transfers uint8 batches.

    Args:
        paths: Image files.
        size: `(height, width)`.
        batch_size: Samples per batch.
        workers: Threads or processes.
        epochs: Epochs per loader. Defaults to 3: after the first, Grain's
            workers have decoded ahead into the second; the last is fair.

    Returns:
        `{name: [images/s per epoch]}`; Grain is missing when not installed.

    Example:

    >>> loader_rates(paths, (128, 128), 32, 2)  # doctest: +SKIP
    """
    from keras_sepseq.bench_small import epoch_rates
    from keras_sepseq.separated import SeparatedSequence

    labels = np.zeros(len(paths), np.int64)
    rates: dict[str, list[float]] = {}
    for name, processes in [
        (f"SeparatedSequence, {workers} threads", False),
        (f"SeparatedSequence, {workers} processes", True),
    ]:
        seq = SeparatedSequence(
            paths, labels, batch_size, image_size=size, seed=0, workers=workers, use_multiprocessing=processes
        )
        rates[name] = epoch_rates(seq, epochs)
    if "_GrainDecode" not in globals():
        return rates
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # Grain reads absl flags; a plain script never parses them
    sampler = _grain.IndexSampler(
        num_records=len(paths), num_epochs=epochs, shard_options=_grain.NoSharding(), shuffle=True, seed=0
    )
    loader = _grain.DataLoader(
        data_source=_GrainIndices(len(paths)), sampler=sampler,
        operations=[_GrainDecode(paths, size), _grain.Batch(batch_size)], worker_count=workers, worker_buffer_size=2,
    )  # fmt: skip
    name, seen, start = f"Grain DataLoader, {workers} processes", 0, time.perf_counter()
    rates[name] = []
    for batch in loader:
        np.multiply(batch["x"], np.float32(1 / 255), dtype=np.float32)
        seen += len(batch["x"])
        if seen >= len(paths) * (len(rates[name]) + 1):
            now = time.perf_counter()
            rates[name].append(len(paths) / (now - start))
            start = now
    return rates


def measure_construction(num_paths: int = 1_000_000) -> dict[str, dict[str, float]]:
    """Builds `SeparatedSequence` and `PaddedSequence` over `num_paths` made-up paths, and measures it.

    The paths point nowhere: construction must not touch any file.

    Args:
        num_paths: How many samples. Defaults to 1,000,000.

    Returns:
        For each class: `seconds` to construct, `rss_mb` added, and
        `pickle_mb`, the size of the pickled object.

    Example:

    >>> measure_construction(1000)["SeparatedSequence"]["pickle_mb"] < 1
    True
    """
    import gc
    import pickle

    from keras_sepseq.padded import PaddedSequence
    from keras_sepseq.separated import SeparatedSequence

    root = "/data/keras_sepseq/does-not-exist"
    images = [f"{root}/images/img_{i:07d}.png" for i in range(num_paths)]
    labels = [f"{root}/labels/img_{i:07d}.npy" for i in range(num_paths)]
    results = {}
    for name, make in [
        ("SeparatedSequence", lambda: SeparatedSequence(images, labels, batch_size=32, image_size=(128, 128), seed=0)),
        ("PaddedSequence", lambda: PaddedSequence(labels, np.zeros(num_paths, np.int64), batch_size=32, seed=0)),
    ]:
        gc.collect()
        before = rss_bytes(os.getpid())
        start = time.perf_counter()
        seq = make()
        len(seq)
        seconds = time.perf_counter() - start
        added = rss_bytes(os.getpid()) - before
        results[name] = {
            "paths": num_paths,
            "seconds": seconds,
            "rss_mb": added / 2**20,
            "pickle_mb": len(pickle.dumps(seq, protocol=pickle.HIGHEST_PROTOCOL)) / 2**20,
        }
        del seq
    return results


def tiny_model(size: tuple[int, int], batch_size: int) -> Any:
    """The bench's model: small enough that the input pipeline, not the model, sets the pace; compiled, warmed up.

    Args:
        size: `(height, width)` of its RGB input.
        batch_size: The batch size it is warmed up with.

    Returns:
        A compiled `keras.Sequential` with `NUM_CLASSES` logits.

    Example:

    >>> model = tiny_model((128, 128), 32)  # doctest: +SKIP
    """
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input(size + (3,)),
            keras.layers.Conv2D(8, 3, strides=4, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(NUM_CLASSES),
        ]
    )
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    warm_x = np.zeros((batch_size * 2,) + size + (3,), np.float32)
    model.fit(warm_x, np.zeros(batch_size * 2, np.int64), batch_size=batch_size, epochs=1, verbose=0)
    return model


def epoch_timer(samples: int) -> Any:
    """A Keras callback whose `rates` lists samples per second of each epoch (`samples` served per epoch).

    Epoch times only: a batch-level hook would make Keras synchronize and
    convert logs every step.

    Args:
        samples: Samples in one epoch.

    Returns:
        A `keras.callbacks.Callback` with a `rates` list.

    Example:

    >>> timer = epoch_timer(2000)  # doctest: +SKIP
    """
    import keras

    class Timer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.rates: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.rates.append(samples / (time.perf_counter() - self.start))

    return Timer()


def run_bench(
    paths: list[str],
    labels: np.ndarray,
    *,
    image_size: tuple[int, int] = (128, 128),
    batch_size: int = 32,
    epochs: int = 4,
    workers: int = 2,
    only: list[str] | None = None,
    scale_paths: int = 1_000_000,
    repeats: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Runs every candidate through `model.fit` on the same files and returns the measurements.

    Args:
        paths: Image files.
        labels: One integer class (0 to 9) per image.
        image_size: `(height, width)` every candidate resizes to. Defaults
            to `(128, 128)`.
        batch_size: Defaults to 32.
        epochs: Epochs per candidate: one cold, the rest steady (at least
            2). Defaults to 4.
        workers: Workers (threads or processes) for the parallel
            candidates; the decode limit counts `min(workers, cores)`
            cores. Defaults to 2.
        only: Names of candidates to run (default: all).
        scale_paths: Also build both classes over this many made-up paths
            and report time, memory and pickle size (0 to skip). Defaults
            to 1,000,000.
        repeats: Rounds over all candidates (and the decode limit), each
            with fresh datasets and caches; the report gives medians. On a
            shared machine whose speed drifts, interleaved rounds keep the
            ratios fair. Defaults to 1.
        log: Where progress lines go. Defaults to `print`.

    Returns:
        A dict with `results` (a list of `Result` dicts), `decode_limit`,
        `ratios`, `loaders` (see `loader_rates`), `construction` and the
        settings.

    Raises:
        ValueError: If `epochs < 2` or `repeats < 1`.

    Example:

    >>> report = run_bench(paths, labels, epochs=2)  # doctest: +SKIP
    """
    from keras_sepseq.separated import SeparatedSequence

    if epochs < 2:
        raise ValueError(f"`epochs` must be >= 2 (one cold, then steady). Received: epochs={epochs}")
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1. Received: repeats={repeats}")
    labels = np.asarray(labels, dtype=np.int64)
    size = (int(image_size[0]), int(image_size[1]))
    cores = min(workers, os.cpu_count() or 1)
    for path in paths:  # every candidate then finds the files in the page cache
        with open(path, "rb") as f:
            f.read()

    model = tiny_model(size, batch_size)

    steps = -(-len(paths) // batch_size)
    margin = max(2, size[0] // 8)  # augmented candidates resize this much larger, then crop back to `size`
    larger = (size[0] + margin, size[1] + margin)

    def augmentation() -> list:
        import keras

        return [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomCrop(size[0], size[1]),
            keras.layers.RandomBrightness(0.1, value_range=(0.0, 1.0)),
        ]

    cache_dir = ""  # a fresh folder each round, so that every round's first epoch is cold
    candidates: list[tuple[str, str, Callable[[], Any] | None, dict]] = [
        ("tf.data pipeline", "the classic recipe: from_tensor_slices, map(AUTOTUNE), shuffle, batch, prefetch",
         lambda: bench_candidates.tf_pipeline(paths, labels, size, batch_size, 0), {}),
        ("Python generator", "per-sample Pillow decode, np.stack, no workers",
         lambda: bench_candidates.generator(paths, labels, size, batch_size, 0), {"steps_per_epoch": steps}),
        (f"plain PyDataset, {workers} threads", "Pillow decode + np.stack in __getitem__, Keras's thread workers",
         lambda: bench_candidates.plain_pydataset(paths, labels, size, batch_size, workers), {}),
        (f"SeparatedSequence, {workers} threads", "",
         lambda: SeparatedSequence(paths, labels, batch_size, image_size=size, seed=0, workers=workers), {}),
        (f"SeparatedSequence, {workers} processes", "",
         lambda: SeparatedSequence(paths, labels, batch_size, image_size=size, seed=0, workers=workers, use_multiprocessing=True), {}),
        ("SeparatedSequence, cache='memory'", "threads; decoded uint8 samples kept in RAM after epoch 1",
         lambda: SeparatedSequence(paths, labels, batch_size, image_size=size, seed=0, workers=workers,
                                   cache="memory", cache_budget="64GB"), {}),
        ("SeparatedSequence, cache=<dir>", "threads; decoded samples kept in memory-mapped files",
         lambda: SeparatedSequence(paths, labels, batch_size, image_size=size, seed=0, workers=workers,
                                   cache=cache_dir), {}),
        ("numpy arrays in RAM", "fit(x, y) on float32 arrays decoded beforehand: the ceiling",
         None, {}),
        ("tf.data pipeline, augmented", "the recipe plus tf.image random_crop, random_flip_left_right, random_brightness",
         lambda: bench_candidates.tf_augmented_pipeline(paths, labels, size, batch_size, 0, margin), {}),
        ("SeparatedSequence, cache='memory', augmented", "threads; Keras RandomFlip, RandomCrop, RandomBrightness after the cache",
         lambda: SeparatedSequence(paths, labels, batch_size, image_size=larger, seed=0, workers=workers,
                                   cache="memory", cache_budget="64GB", augment=augmentation()), {}),
    ]  # fmt: skip
    runs: dict[str, list[tuple[list[float], float]]] = {}
    singles = []
    for round_index in range(repeats):
        cache_dir = tempfile.mkdtemp(prefix="keras_sepseq_bench_cache_")
        if repeats > 1:
            log(f"round {round_index + 1} of {repeats}")
        for name, _note, make, fit_kwargs in candidates:
            if only and not any(o.lower() in name.lower() for o in only):
                continue
            timer = epoch_timer(len(paths))
            with PeakMemory() as memory:
                if make is None:
                    x = np.stack([bench_candidates.pil_load(p, size) for p in paths])
                    model.fit(x, labels, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[timer])
                    del x
                else:
                    data = make()
                    shuffle = (
                        {"shuffle": False} if not hasattr(data, "num_batches") else {}
                    )  # tf.data, generator: own order
                    model.fit(data, epochs=epochs, verbose=0, callbacks=[timer], **shuffle, **fit_kwargs)
                    if hasattr(data, "close"):
                        data.close()
                    del data
            runs.setdefault(name, []).append((timer.rates, memory.peak / 2**20))
            log(f"{name:<42} cold {timer.rates[0]:8,.0f}/s  steady {float(np.median(timer.rates[1:])):8,.0f}/s  "
                f"peak memory {memory.peak / 2**20:6,.0f} MB")  # fmt: skip
        shutil.rmtree(cache_dir, ignore_errors=True)
        singles.append(decode_rate(paths, size))
    notes = {name: note for name, note, _, _ in candidates}
    results = [
        Result(
            name,
            float(np.median([rates[0] for rates, _ in rounds])),
            float(np.median([np.median(rates[1:]) for rates, _ in rounds])),
            max(peak for _, peak in rounds),
            [rates for rates, _ in rounds],
            notes[name],
            max(max(rates[1:]) for rates, _ in rounds),
        )
        for name, rounds in runs.items()
    ]

    loaders = loader_rates(paths, size, batch_size, workers)
    for name, rates in loaders.items():
        log(f"{name + ', loader only':<42} " + "  ".join(f"epoch {k + 1} {r:8,.0f}/s" for k, r in enumerate(rates)))
    scale = measure_construction(scale_paths) if scale_paths else {}
    for name, m in scale.items():
        log(f"{name} over {m['paths']:,} paths: built in {m['seconds']:.2f} s, +{m['rss_mb']:.0f} MB RSS, "
            f"pickles to {m['pickle_mb']:.1f} MB, no file opened")  # fmt: skip
    single = float(np.median(singles))
    limit = single * cores
    log(f"{'decode limit':<42} {single:,.0f}/s on one core x {cores} cores = {limit:,.0f}/s")
    reference = next((r for r in results if r.name == "tf.data pipeline"), None)
    ceiling = next((r for r in results if r.name == "numpy arrays in RAM"), None)
    ratios = {}
    for r in results:
        ratios[r.name] = {
            "cold_vs_pipeline": r.cold / reference.cold if reference else None,
            "steady_vs_pipeline": r.steady / reference.steady if reference else None,
            "cold_vs_decode_limit": r.cold / limit,
            "steady_vs_numpy": r.steady / ceiling.steady if ceiling else None,
            "best_vs_numpy": r.best / ceiling.best if ceiling else None,
        }
    augmented = {r.name: r for r in results}
    ours = augmented.get("SeparatedSequence, cache='memory', augmented")
    theirs = augmented.get("tf.data pipeline, augmented")
    plain = augmented.get("SeparatedSequence, cache='memory'")
    if ours is not None:
        ratios[ours.name].update(
            {
                "cold_vs_augmented_pipeline": ours.cold / theirs.cold if theirs else None,
                "steady_vs_augmented_pipeline": ours.steady / theirs.steady if theirs else None,
                "steady_vs_unaugmented_cache": ours.steady / plain.steady if plain else None,
            }
        )
        for key, value in ratios[ours.name].items():
            if key.endswith(("augmented_pipeline", "unaugmented_cache")) and value is not None:
                log(f"augmented cache {key.replace('_', ' ')}: {value:.2f}x")
    return {
        "settings": {"samples": len(paths), "image_size": list(size), "batch_size": batch_size, "epochs": epochs,
                     "workers": workers, "cores": os.cpu_count(), "repeats": repeats},
        "decode_limit": {"single_core": single, "cores_used": cores, "images_per_second": limit},
        "results": [asdict(r) for r in results],
        "construction": scale,
        "loaders": loaders,
        "ratios": ratios,
    }  # fmt: skip
