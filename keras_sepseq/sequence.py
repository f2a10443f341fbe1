"""The machinery shared by every keras_sepseq dataset: order, epochs, batches, errors.

`BaseSequence` owns what does not depend on the data format: the epoch
order (a pure function of seed and epoch, so threads, processes and restarts
agree), batch index arithmetic, and wrapping of loader failures into a
`SampleError` that names the file. Subclasses implement `load_batch`.
"""

from __future__ import annotations

import math
import numbers
import os
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import keras
import numpy as np

from keras_sepseq.cache import DEFAULT_BUDGET, DirectoryCache, MemoryCache, fingerprint, parse_bytes
from keras_sepseq.checks import check_choice, check_int, check_labels, check_paths, check_targets
from keras_sepseq.engine import BatchBuffers, WorkerPool
from keras_sepseq.errors import SampleError, TooManyErrorsError
from keras_sepseq.keras_integration import (
    adapter_batches,
    adapter_signature,
    distribution_data_shards,
    keras_adapter_shards,
    keras_frame,
    keras_next_order,
    keras_request_order,
    keras_shards_py_datasets,
    wrap_get_tf_dataset,
)
from keras_sepseq.stacking import copy_same_kind, stack_arrays

__all__ = [
    "BadSample",
    "BaseSequence",
    "ValidationReport",
    "batches_dataset",
    "check_choice",
    "check_int",
    "check_labels",
    "check_paths",
    "check_targets",
    "copy_same_kind",
    "detect_shard",
    "epoch_order",
    "stack_arrays",
]


def epoch_order(num_samples: int, *, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Returns the sample order of one epoch.

    The order depends only on its arguments, so every worker, thread or
    process, and every restarted job computes the same one.

    Args:
        num_samples: How many samples the dataset has.
        seed: A non-negative integer.
        epoch: The epoch number (any non-negative integer).
        shuffle: If `False`, the order is `0, 1, ..., num_samples - 1`.
            Defaults to `True`.

    Returns:
        An int64 array holding each of `0 .. num_samples - 1` exactly once.

    Example:

    >>> sorted(epoch_order(5, seed=0, epoch=3)) == [0, 1, 2, 3, 4]
    True
    """
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    return np.random.default_rng([seed, epoch]).permutation(num_samples).astype(np.int64, copy=False)


ON_ERROR = ("raise", "skip")
RETRY_DELAY = 0.05  # seconds before the first retry; doubles after each


class BadSample(NamedTuple):
    """A sample that failed: its index, its file and the reason, in words."""

    index: int  # type: ignore[assignment]  # the field shadows tuple.index, as in any NamedTuple with that name
    path: str | None
    reason: str


@dataclass
class ValidationReport:
    """What `validate()` found.

    Attributes:
        num_samples: How many samples were checked.
        bad: The bad samples, `(index, path, reason)`, by index.
        input_shapes: How many samples had each input shape.
        input_dtypes: ... each input dtype.
        label_shapes: ... each label shape.
        label_dtypes: ... each label dtype.
        label_values: For integer scalar labels, how many samples had each
            value (class counts).
    """

    num_samples: int
    bad: list[BadSample] = field(default_factory=list)
    input_shapes: Counter = field(default_factory=Counter)
    input_dtypes: Counter = field(default_factory=Counter)
    label_shapes: Counter = field(default_factory=Counter)
    label_dtypes: Counter = field(default_factory=Counter)
    label_values: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        """Whether no sample was bad."""
        return not self.bad

    def count(self, input_shape, input_dtype, label_shape, label_dtype, label_value) -> None:
        """Adds one good sample's description to the counts."""
        self.input_shapes[input_shape] += 1
        self.input_dtypes[input_dtype] += 1
        if label_shape is not None:
            self.label_shapes[label_shape] += 1
            self.label_dtypes[label_dtype] += 1
        if label_value is not None:
            self.label_values[label_value] += 1

    def to_dict(self) -> dict:
        """The report as plain JSON-friendly data."""
        keyed = lambda c: {str(k): v for k, v in sorted(c.items(), key=lambda kv: -kv[1])}  # noqa: E731
        return {
            "num_samples": self.num_samples,
            "ok": self.ok,
            "bad": [b._asdict() for b in self.bad],
            "input_shapes": keyed(self.input_shapes),
            "input_dtypes": keyed(self.input_dtypes),
            "label_shapes": keyed(self.label_shapes),
            "label_dtypes": keyed(self.label_dtypes),
            "label_values": {str(k): v for k, v in sorted(self.label_values.items())},
        }

    def __str__(self) -> str:
        lines = [
            f"{self.num_samples:,} samples checked: {self.num_samples - len(self.bad):,} good, {len(self.bad):,} bad"
        ]
        for title, counter in [("input shapes", self.input_shapes), ("input dtypes", self.input_dtypes),
                               ("label shapes", self.label_shapes), ("label dtypes", self.label_dtypes)]:  # fmt: skip
            if counter:
                shown = ", ".join(f"{k}: {v:,}" for k, v in counter.most_common(5))
                more = f", ... {len(counter) - 5} more" if len(counter) > 5 else ""
                lines.append(f"  {title}: {shown}{more}")
        if self.label_values:
            lines.append("  classes: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(self.label_values.items())[:20]))
        for bad in self.bad[:20]:
            lines.append(f"  bad sample {bad.index} {bad.path!r}: {bad.reason}")
        if len(self.bad) > 20:
            lines.append(f"  ... {len(self.bad) - 20} more bad samples")
        return "\n".join(lines)


def _check_max_errors(value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0:
        return int(value)
    if isinstance(value, float) and 0.0 < value < 1.0:
        return value
    raise ValueError(
        f"`max_errors` must be None, a count >= 0, or a fraction between 0 and 1. Received: max_errors={value!r}"
    )


def detect_shard() -> tuple[int, int]:
    """`(num_shards, shard_index)` this process should serve in a multi-host job, or `(1, 0)`.

    In order:

    - Under a multi-process `keras.distribution` (the JAX backend across
      hosts): `(1, 0)` when Keras splits a PyDataset's batches across
      processes itself (Keras 3.16 and later, with `auto_shard_dataset=True`,
      the default of `DataParallel`); otherwise the distribution's data
      shards (`min(num_model_replicas, num_processes)` and this process's
      shard, so processes holding parts of one model replica read the same
      data).
    - On the JAX backend without a distribution: `jax.process_count()` and
      `jax.process_index()`.
    - Otherwise from `TF_CONFIG` (the chief first, then the workers, as
      `tf.distribute` numbers them).

    Returns:
        `(num_shards, shard_index)`.

    Raises:
        ValueError: If `TF_CONFIG` is set but malformed.

    Example:

    >>> detect_shard()  # one process, no TF_CONFIG  # doctest: +SKIP
    (1, 0)
    """
    shards = distribution_data_shards()
    if shards is not None:
        return (1, 0) if keras_shards_py_datasets() is not None else shards
    if keras.backend.backend() == "jax":
        import jax

        if jax.process_count() > 1:
            return jax.process_count(), jax.process_index()
    raw = os.environ.get("TF_CONFIG")
    if raw:
        import json

        try:
            config = json.loads(raw)
            cluster, task = config.get("cluster", {}), config["task"]
            members = [("chief", i) for i in range(len(cluster.get("chief", [])))]
            members += [("worker", i) for i in range(len(cluster.get("worker", [])))]
            if task["type"] in ("chief", "worker"):
                return len(members), members.index((task["type"], int(task["index"])))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"TF_CONFIG is not a valid cluster description ({e}). Received: {raw!r}") from None
    return 1, 0


def _twice_sharded(ours: int, keras_shards: int) -> str:
    return (
        f"Keras splits this dataset's batches across {keras_shards} processes itself (the distribution's "
        f"`auto_shard_dataset=True`), and the dataset was built with num_shards={ours}: each process would train on "
        f"1/{ours * keras_shards} of the data. Build it with shard='auto' (which leaves the split to Keras) or "
        "num_shards=1, or give the distribution auto_shard_dataset=False."
    )


class BaseSequence(keras.utils.PyDataset):
    """A `keras.utils.PyDataset` over indexed samples with a reproducible order.

    Batch `i` of an epoch holds the samples at positions
    `i * batch_size .. (i + 1) * batch_size - 1` of that epoch's order. The
    order is reshuffled in `on_epoch_end` (Keras stops its workers before
    calling it), from `(seed, epoch)` alone: every sample appears exactly
    once per epoch however many times Keras calls the hook, and the same
    seed gives the same sequence of orders.

    Subclasses implement `load_item(index)`, which loads one sample
    anywhere (in a worker thread or process), and `collate(indices, items,
    position)`, which assembles a batch in the calling process.

    Parallelism is keras_sepseq's own (see `keras_sepseq.engine`): Keras is
    told to use no workers (`seq.workers` reads 1), and with `workers > 1`
    or `use_multiprocessing=True` a persistent pool of threads or processes
    loads each batch's samples in parallel and prefetches batches asked for
    in order. `close()` stops the pool; it also stops when the object is
    garbage-collected and at exit.

    Args:
        num_samples: How many samples there are.
        batch_size: Samples per batch. Defaults to 32.
        shuffle: Reshuffle the order every epoch. Defaults to `True`.
        seed: Non-negative integer seed; `None` (the default) draws one at
            construction, available as `seq.seed`, except in a sharded job
            (`num_shards > 1`, or a multi-process `keras.distribution`),
            where `None` means 0: hosts that build their sequences
            independently must draw the same order, as with torch's
            `DistributedSampler`. Pass the same seed on every host to vary it.
        drop_remainder: Leave out the last, smaller batch. Defaults to
            `False`.
        workers: As for `keras.utils.PyDataset`. Defaults to 1.
        use_multiprocessing: As for `keras.utils.PyDataset`. Defaults to
            `False`.
        max_queue_size: As for `keras.utils.PyDataset`. Defaults to 10.
        cache: `None` (the default), `"memory"`, or a directory: keep
            each sample once loaded, and serve later epochs from the cache
            (see `keras_sepseq.cache`).
        cache_budget: The most bytes `cache="memory"` may hold, as an int
            or a string such as `"4GB"`. Defaults to 2 GiB.
        on_error: `"raise"` (the default): a sample that cannot be loaded
            raises a `SampleError` naming its file, index and reason.
            `"skip"`: it is left out of its batch, recorded in `seq.errors`,
            and summarised in one warning per epoch; batches then carry a
            `sample_weight` (1 per real sample) so that a batch whose
            samples all failed can still be served, as one placeholder of
            weight 0. A sample whose shapes differ from those of the first
            sample (in file order) that loads is bad too.
        max_errors: With `on_error="skip"`, stop with a
            `TooManyErrorsError` once more samples than this failed: a
            count, or a fraction of the dataset (a float below 1). `None`
            (the default) never stops.
        retries: Read a file again this many times, after 50 ms, 100 ms,
            ..., when reading it raised an `OSError` (say, a network file
            system hiccup). Defaults to 0.
        num_shards: Split each epoch across this many hosts (see
            `shard_members`). Defaults to 1.
        shard_index: This host's shard, `0 .. num_shards - 1`. Defaults to 0.
        shard: `"auto"` reads `num_shards` and `shard_index` from JAX's
            process count and index or from `TF_CONFIG` (see
            `detect_shard`). Defaults to `None`.

    Raises:
        ValueError: If an argument is out of range; the message names it.

    Example:

    >>> class Squares(BaseSequence):
    ...     def load_item(self, index):
    ...         return float(index)
    ...     def collate(self, indices, items, position=None):
    ...         x = np.array(items, dtype="float32")
    ...         return x, x ** 2
    >>> seq = Squares(10, batch_size=4, shuffle=False)
    >>> x, y = seq[2]
    >>> len(seq), y.tolist()
    (3, [64.0, 81.0])
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int = 32,
        *,
        shuffle: bool = True,
        seed: int | None = None,
        drop_remainder: bool = False,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        cache: str | os.PathLike | None = None,
        cache_budget: int | str = DEFAULT_BUDGET,
        on_error: str = "raise",
        max_errors: int | float | None = None,
        retries: int = 0,
        num_shards: int = 1,
        shard_index: int = 0,
        shard: str | None = None,
    ) -> None:
        # Keras runs no workers of its own: it would start a pool per epoch (see keras_sepseq.engine).
        super().__init__(
            workers=1, use_multiprocessing=False, max_queue_size=check_int("max_queue_size", max_queue_size, minimum=1)
        )
        self.num_workers = check_int("workers", workers, minimum=0)
        self.use_processes = bool(use_multiprocessing)
        self._pool: WorkerPool | None = None
        self.buffers = BatchBuffers()  # batch arrays are recycled once nothing else holds them
        if cache is not None and not isinstance(cache, (str, os.PathLike)):
            raise ValueError(f"`cache` must be None, 'memory' or a directory path. Received: cache={cache!r}")
        self.cache = cache if cache in (None, "memory") else os.fspath(cache)
        self.cache_budget = parse_bytes(cache_budget)
        self._cache: MemoryCache | DirectoryCache | None = None
        self.on_error = check_choice("on_error", on_error, ON_ERROR)
        self.max_errors = _check_max_errors(max_errors)
        self.retries = check_int("retries", retries, minimum=0)
        self._errors: dict[int, BadSample] = {}
        self._skipped_this_epoch: list[int] = []
        self._reference: tuple | None = None
        self._num_samples = check_int("num_samples", num_samples, minimum=1)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.drop_remainder = bool(drop_remainder)
        if shard not in (None, "auto"):
            raise ValueError(f"`shard` must be None or 'auto'. Received: shard={shard!r}")
        if shard == "auto":
            num_shards, shard_index = detect_shard()
        self.num_shards = check_int("num_shards", num_shards, minimum=1)
        keras_sharding = keras_shards_py_datasets()
        if self.num_shards > 1 and keras_sharding is not None:
            raise ValueError(_twice_sharded(self.num_shards, keras_sharding[0]))
        self.shard_index = check_int("shard_index", shard_index, minimum=0)
        if self.shard_index >= self.num_shards:
            raise ValueError(
                f"`shard_index` must be below `num_shards`. Received: shard_index={shard_index}, num_shards={num_shards}"
            )
        if self.num_shards > self._num_samples:
            raise ValueError(f"`num_shards`={self.num_shards} is more than the {self._num_samples} samples.")
        if self.drop_remainder and self.batch_size > self.shard_size:
            raise ValueError(
                f"`drop_remainder=True` with batch_size={self.batch_size} and only "
                f"{self.shard_size} samples{' per shard' if self.num_shards > 1 else ''} leaves no batch at all."
            )
        self.shuffle = bool(shuffle)
        if seed is None:
            # Hosts build their sequences independently: they must agree on the order without talking.
            sharded = self.num_shards > 1 or distribution_data_shards() is not None
            seed = 0 if sharded else int(np.random.SeedSequence().generate_state(1, dtype=np.uint32)[0])
        self.seed = check_int("seed", seed, minimum=0)
        self.epoch = 0
        self._order: np.ndarray | None = None  # computed on first use, see `order`

    @property
    def num_samples(self) -> int:
        """How many samples the dataset holds."""
        return self._num_samples

    @property
    def shard_size(self) -> int:
        """Samples this shard serves per epoch: the same on every shard (see `shard_members`)."""
        if self.num_shards == 1:
            return self._num_samples
        if self.drop_remainder:
            return self._num_samples // self.num_shards
        return math.ceil(self._num_samples / self.num_shards)

    def __len__(self) -> int:
        if self.drop_remainder:
            return self.shard_size // self.batch_size
        return math.ceil(self.shard_size / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Switches to the sample order of `epoch`.

        Args:
            epoch: A non-negative integer.

        Raises:
            ValueError: If `epoch` is not a non-negative integer.

        Example:

        >>> seq.set_epoch(0)  # doctest: +SKIP
        """
        self.epoch = check_int("epoch", epoch, minimum=0)
        self._order = None

    @property
    def order(self) -> np.ndarray:
        """The sample order of the current epoch (computed on first use)."""
        if self._order is None:
            self._order = self.order_for_epoch(self.epoch)
        return self._order

    def order_for_epoch(self, epoch: int) -> np.ndarray:
        """Computes the sample order of `epoch`. Override to change how samples are ordered.

        The result must depend only on the dataset's settings and `epoch`,
        and hold each of this shard's samples (`shard_members(epoch)`; all
        samples with one shard) exactly once; batch `i` is
        `order[i * batch_size:(i + 1) * batch_size]`.

        Args:
            epoch: The epoch number.

        Returns:
            An int64 array of `shard_size` sample indices.

        Example:

        >>> seq.order_for_epoch(3)  # doctest: +SKIP
        array([4, 0, 3, 1, 2])
        """
        return self.shard_members(epoch)

    def shard_members(self, epoch: int) -> np.ndarray:
        """The samples this shard serves in `epoch`, in the epoch's order.

        Every shard draws the same global order from `(seed, epoch)` and
        takes every `num_shards`-th sample of it, starting at `shard_index`:
        shards are disjoint, together cover the dataset, and reshuffle in
        step. So that every shard has the same number of batches (unequal
        counts deadlock collective training), the global order wraps around
        to fill the last round, repeating at most `num_shards - 1` samples
        per epoch; with `drop_remainder=True` the last round is dropped
        instead (at most `num_shards - 1` samples left out per epoch).

        Args:
            epoch: The epoch number.

        Returns:
            `shard_size` sample indices.

        Example:

        >>> seq.shard_members(0)  # doctest: +SKIP
        """
        order = epoch_order(self._num_samples, seed=self.seed, epoch=epoch, shuffle=self.shuffle)
        if self.num_shards == 1:
            return order
        size = self.shard_size
        if not self.drop_remainder:
            order = np.concatenate([order, order[: size * self.num_shards - self._num_samples]])
        return order[self.shard_index :: self.num_shards][:size]

    def get_state(self) -> dict:
        """A small, picklable (and JSON-friendly) record of where the dataset is: seed, epoch, shard.

        Save it with your checkpoints; `set_state` in a new process restores
        the same epoch order, so a job resumed at batch `k` serves exactly
        the samples that batches `0 .. k-1` of that epoch did not.

        Returns:
            A dict.

        Example:

        >>> state = seq.get_state()  # doctest: +SKIP
        >>> fresh.set_state(state)  # doctest: +SKIP
        """
        return {"format": 1, "seed": self.seed, "epoch": self.epoch, **self._order_settings()}

    def set_state(self, state: dict) -> None:
        """Restores what `get_state` returned: the seed and epoch, after checking the settings match.

        Args:
            state: A dict from `get_state`.

        Raises:
            ValueError: If `state` is not such a dict, or was saved with other
                settings that decide the order (sample count, batch size,
                shuffle, sharding...); the message lists them.

        Example:

        >>> seq.set_state({"format": 1, "seed": 3, "epoch": 7, ...})  # doctest: +SKIP
        """
        if not isinstance(state, dict) or state.get("format") != 1 or "seed" not in state or "epoch" not in state:
            raise ValueError(f"`state` must be a dict returned by get_state(). Received: {state!r}")
        mine = self._order_settings()
        differ = [f"{k}: saved {state.get(k)!r}, here {v!r}" for k, v in mine.items() if state.get(k) != v]
        if differ:
            raise ValueError("`state` was saved with other settings that decide the order: " + "; ".join(differ))
        self.seed = check_int("seed", state["seed"], minimum=0)
        self.set_epoch(state["epoch"])

    def _order_settings(self) -> dict:
        return {
            "num_samples": self._num_samples,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_remainder": self.drop_remainder,
            "num_shards": self.num_shards,
            "shard_index": self.shard_index,
        }

    def on_epoch_end(self) -> None:
        """Moves to the next epoch's order (Keras calls this between epochs).

        The order is computed here, in the main process, so that process
        workers forked for the next epoch inherit it. A directory cache is
        written to disk.
        """
        self.set_epoch(self.epoch + 1)
        if self._cache is not None:
            self._cache.flush()
        skipped, self._skipped_this_epoch = self._skipped_this_epoch, []
        if skipped:
            unique = sorted(set(skipped))
            shown = ", ".join(f"{i} ({self._errors[i].path!r})" for i in unique[:3])
            warnings.warn(
                f"keras_sepseq skipped {len(unique)} bad sample(s) this epoch (first: {shown}); "
                f"{len(self._errors)} in all so far, listed with reasons in seq.errors.",
                stacklevel=2,
            )
        self.order  # noqa: B018 (computes and caches it)

    def batch_position(self, index: int) -> int:
        """Turns a batch index (negative counts from the end) into a position in `0 .. len - 1`.

        Args:
            index: The batch index.

        Returns:
            The position.

        Raises:
            TypeError: If `index` is not an integer.
            IndexError: If `index` is out of range.

        Example:

        >>> seq.batch_position(-1) == len(seq) - 1  # doctest: +SKIP
        True
        """
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, numbers.Integral):
            raise TypeError(f"batch index must be an integer. Received: {index!r}")
        position = int(index) + n if index < 0 else int(index)
        if not 0 <= position < n:
            raise IndexError(f"batch index {index} is out of range for a dataset of {n} batches")
        return position

    def batch_indices(self, index: int) -> np.ndarray:
        """Returns the sample indices of batch `index` in the current epoch.

        Args:
            index: The batch position; negative values count from the end.

        Returns:
            An int64 array of `batch_size` indices (fewer in a last partial
            batch).

        Raises:
            TypeError: If `index` is not an integer.
            IndexError: If `index` is out of range.

        Example:

        >>> seq.batch_indices(0)  # doctest: +SKIP
        array([7, 2, 9, 0])
        """
        start = self.batch_position(index) * self.batch_size
        return self.order[start : start + self.batch_size]

    @property
    def parallel(self) -> bool:
        """Whether batches load in a worker pool (`workers > 1` or `use_multiprocessing=True`)."""
        return self.num_workers > 1 or (self.use_processes and self.num_workers > 0)

    def __getitem__(self, index: int):
        position = self.batch_position(index)
        indices = self.batch_indices(position)
        cache = self.sample_cache()
        if cache is not None:
            slabs = cache.slabs_for(indices)
            if slabs is not None:
                batch = self.collate_cached(indices, slabs, position)
                if batch is not NotImplemented:
                    return batch if self.on_error == "raise" else batch + (np.ones(len(indices), np.float32),)
        items: list[Any] = [None] * len(indices)
        missing = []
        for k, i in enumerate(indices):
            cached = None if cache is None else cache.get(int(i))
            if cached is None:
                missing.append(k)
            else:
                items[k] = cached
        if missing:
            wanted = indices[missing]
            if not self.parallel:
                loaded = self.try_load_items([int(i) for i in wanted])
            else:
                pool = self._worker_pool()
                loaded = pool.load((self.epoch, position), wanted, self._to_load(self._upcoming_positions(position)))
            for k, item in zip(missing, loaded):
                items[k] = item
                if cache is not None and not isinstance(item, SampleError):
                    cache.put(int(indices[k]), item)
        if self.on_error == "raise":
            for item in items:
                if isinstance(item, SampleError):
                    raise item
            return self.collate(indices, items, position)
        return self._collate_skipping(indices, items, position)

    def sample_cache(self) -> MemoryCache | DirectoryCache | None:
        """The cache of loaded samples (created on first use), or `None` without `cache`.

        Returns:
            A `MemoryCache`, a `DirectoryCache`, or `None`.

        Example:

        >>> seq.sample_cache().nbytes  # doctest: +SKIP
        """
        if self.cache is None:
            return None
        if self._cache is None:
            if self.cache == "memory":
                self._cache = MemoryCache(
                    self.num_samples, budget=self.cache_budget, fixed_shape=self.fixed_sample_shape()
                )
            else:
                self._cache = DirectoryCache(
                    self.cache, fingerprint=fingerprint(*self.cache_key()), sources=self.cache_sources()
                )
        return self._cache

    def fixed_sample_shape(self) -> bool:
        """Whether every sample has one shape, which lets caches preallocate. Subclasses say.

        Returns:
            `False` in `BaseSequence`.
        """
        return False

    def cache_key(self) -> tuple:
        """What decides the content of a directory cache: settings and paths. Subclasses extend it.

        Returns:
            A tuple of strings, numbers and path sequences.
        """
        return (type(self).__module__, type(self).__qualname__, self.num_samples)

    def cache_sources(self) -> Sequence[str]:
        """The file of each sample whose size and mtime invalidate its cache entry.

        Returns:
            A sequence of paths.

        Raises:
            NotImplementedError: In `BaseSequence` itself.
        """
        raise NotImplementedError("a directory cache needs cache_sources() to list each sample's file")

    def _worker_pool(self) -> WorkerPool:
        if self._pool is None or self._pool.closed:
            self._pool = WorkerPool(
                self, workers=self.num_workers, use_processes=self.use_processes, max_queue_size=self.max_queue_size
            )
            self._pool.start()
        return self._pool

    def on_epoch_begin(self) -> None:
        """Starts the worker pool, if it is not running, and the epoch's first batches loading.

        Keras calls this from the main thread, so process workers are
        forked before the epoch's loading threads are busy, rather than
        from inside one of them. Under Keras, the batches its generator
        will ask for first (see `keras_next_order`) start loading now,
        while Keras sets up the epoch, instead of when the first is asked
        for.
        """
        if self.num_shards > 1 and keras_adapter_shards(self) > 1:
            raise ValueError(_twice_sharded(self.num_shards, keras_adapter_shards(self)))
        if self.parallel:
            pool = self._worker_pool()
            order = keras_next_order(self)
            if order:
                pool.prefetch(self._to_load(order[: self.max_queue_size]))

    def _to_load(self, positions: list[int]) -> list[tuple[tuple, np.ndarray]]:
        """`((epoch, position), indices)` of the batches at `positions`, without samples the cache holds."""
        cache = self.sample_cache()
        batches = []
        for p in positions:
            indices = self.batch_indices(p)
            if cache is not None:
                indices = indices[~cache.filled_mask(indices)]
            if len(indices):
                batches.append(((self.epoch, p), indices))
        return batches

    def _collate_skipping(self, indices: np.ndarray, items: list[Any], position: int) -> tuple:
        keep = []
        for k, (index, item) in enumerate(zip(indices, items)):
            index = int(index)
            if not isinstance(item, SampleError):
                problem = self.item_problem(index, item)
                if problem is None:
                    keep.append(k)
                    continue
                item = SampleError(problem, path=self.sample_path(index), index=index)
            self._record_error(item)
        if keep:
            batch = self.collate(indices[keep], [items[k] for k in keep], position)
            weights = np.ones(len(keep), np.float32)
        else:  # every sample failed: one placeholder that counts for nothing
            first, item = self.reference_item()
            batch = self.collate(np.array([first]), [item], position)
            weights = np.zeros(1, np.float32)
        if len(batch) == 3:
            return batch[0], batch[1], batch[2] * weights.reshape((-1,) + (1,) * (batch[2].ndim - 1))
        # Without labels (predict), there is no loss to weight: inputs only. Outputs then skip the bad samples.
        return batch + (weights,) if len(batch) == 2 else batch

    def _record_error(self, error: SampleError) -> None:
        index = cast(int, error.index)  # errors from loading always carry their sample index
        if index not in self._errors:
            self._errors[index] = BadSample(index, error.path, error.reason)
        self._skipped_this_epoch.append(index)
        if self.max_errors is not None:
            limit = self.max_errors if isinstance(self.max_errors, int) else self.max_errors * self.num_samples
            if len(self._errors) > limit:
                shown = "; ".join(f"sample {b.index} {b.path!r}: {b.reason}" for b in self.errors[:3])
                raise TooManyErrorsError(
                    f"{len(self._errors)} of {self.num_samples} samples failed, over max_errors={self.max_errors} "
                    f"(first: {shown}). Run seq.validate() for the full list."
                )

    @property
    def errors(self) -> list[BadSample]:
        """The samples that failed so far with `on_error="skip"`: `(index, path, reason)`, by index.

        Example:

        >>> seq.errors  # doctest: +SKIP
        [BadSample(index=17, path='data/img_17.png', reason='cannot load image: ...')]
        """
        return [self._errors[k] for k in sorted(self._errors)]

    def deferred_scaling(self) -> dict[int, float]:
        """The batch elements that may reach a TensorFlow graph as `uint8`, to be scaled there. Subclasses say.

        When Keras trains on the TensorFlow backend, or through
        `to_tf_dataset()`, a batch goes from Python into a tf.data graph.
        An image batch crosses as `uint8` in a quarter of the bytes of
        `float32`, and the graph then computes `float32(pixels) * scale`
        (cast to the element's dtype) in C++, outside the Python lock: the
        same numbers `collate` would have produced, at lower cost to the
        Python threads that also decode. While such a batch is assembled,
        `scaling_deferred` is `True` and `collate` may return these
        elements as unscaled `uint8`; whatever it returns in another dtype
        is passed through unchanged.

        Returns:
            `{element index: scale}`; `{}` (the default) defers nothing.

        Example:

        >>> seq.deferred_scaling()  # doctest: +SKIP
        {0: 0.00392156862745098}
        """
        return {}

    @property
    def scaling_deferred(self) -> bool:
        """Whether the batch being assembled in this thread goes to a graph that applies `deferred_scaling()`."""
        return getattr(_DEFERRING, "dataset", None) is self

    def output_signature(self) -> tuple:
        """The `tf.TensorSpec`s of a batch, `None` where sizes vary. Subclasses say.

        Raises:
            NotImplementedError: In `BaseSequence` itself.
        """
        raise NotImplementedError("subclasses of BaseSequence describe their batches in output_signature()")

    def to_tf_dataset(self, prefetch: int = 2) -> Any:
        """This dataset as a `tf.data.Dataset` with an exact `output_signature`.

        Each pass over the dataset is one epoch: batches in order (each
        epoch's samples shuffled as usual), then `on_epoch_end`. Loading
        still runs on keras_sepseq's workers; tf.data autotuning is turned
        off on the generator, which avoids the epoch-start stall of Keras's
        own generator-backed path. Use it to compose with tf.data,
        `tf.distribute` or the tf.data service.

        Args:
            prefetch: Batches tf.data keeps ready ahead of the consumer.
                Defaults to 2.

        Returns:
            A `tf.data.Dataset` of `(x, y)`, `(x, y, sample_weight)` or `(x,)`.

        Example:

        >>> ds = seq.to_tf_dataset()  # doctest: +SKIP
        >>> model.fit(ds, epochs=10, shuffle=False)  # the dataset orders itself  # doctest: +SKIP
        """
        import tensorflow as tf

        signature = self.output_signature()

        def one_epoch():
            for position in range(len(self)):
                yield self[position]
            self.on_epoch_end()

        options = tf.data.Options()
        options.autotune.enabled = False
        dataset = batches_dataset(self, one_epoch, signature).with_options(options)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(self)))
        return dataset.prefetch(prefetch) if prefetch else dataset

    def validate(self, progress: bool = True, *, workers: int | None = None) -> ValidationReport:
        """Loads every sample once, in parallel, and reports what it found; never raises for bad data.

        Each sample is loaded with `load_item` (so custom hooks are checked
        too) and judged as `on_error="skip"` would judge it: a sample that
        fails, or whose shapes differ from the first loadable sample's, is
        bad. Nothing is cached and `seq.errors` is not changed.

        Args:
            progress: Show a `keras.utils.Progbar`. Defaults to `True`.
            workers: Threads to load with; defaults to the larger of
                `workers` and the number of cores.

        Returns:
            A `ValidationReport`: bad samples with reasons, shape, dtype and
            label counts. `print(report)` gives a summary.

        Example:

        >>> report = seq.validate()  # doctest: +SKIP
        >>> report.ok, len(report.bad)  # doctest: +SKIP
        (False, 3)
        """
        from concurrent.futures import ThreadPoolExecutor

        threads = workers or max(self.num_workers, os.cpu_count() or 1)
        bar = keras.utils.Progbar(self.num_samples, unit_name="sample") if progress else None
        report = ValidationReport(self.num_samples)
        reference = None
        chunk = 256
        with ThreadPoolExecutor(threads) as pool:
            starts = range(0, self.num_samples, chunk)
            for start, items in zip(
                starts,
                pool.map(lambda a: [self.try_load_item(i) for i in range(a, min(a + chunk, self.num_samples))], starts),
            ):
                for index, item in enumerate(items, start):
                    if isinstance(item, SampleError):
                        report.bad.append(BadSample(index, item.path, item.reason))
                        continue
                    signature = self.item_signature(item)
                    if reference is None:
                        reference = (index, signature)
                    elif signature != reference[1]:
                        report.bad.append(BadSample(
                            index, self.sample_path(index),
                            f"its shapes {signature} differ from {reference[1]}, those of sample {reference[0]} "
                            f"({self.sample_path(reference[0])!r}), the first that loads",
                        ))  # fmt: skip
                    report.count(*self.describe_item(index, item))
                if bar is not None:
                    bar.update(min(start + chunk, self.num_samples))
        return report

    def describe_item(self, index: int, item: Any) -> tuple:
        """`(input_shape, input_dtype, label_shape, label_dtype, label_value)` of a loaded sample, for reports.

        Any entry may be `None`; `label_value` is set for integer scalar labels.
        """
        x, y = item if isinstance(item, tuple) else (item, None)
        labels = getattr(self, "labels", None)
        if y is None and isinstance(labels, np.ndarray):
            y = labels[index]
        y = None if y is None else np.asarray(y)
        value = int(y) if y is not None and y.ndim == 0 and y.dtype.kind in "iub" else None
        return (
            np.shape(x), str(np.asarray(x).dtype),
            None if y is None else y.shape, None if y is None else str(y.dtype), value,
        )  # fmt: skip

    def try_load_items(self, indices: list[int]) -> list[Any]:
        """`try_load_item` for several samples: one worker chunk. Override to load a chunk at once.

        Args:
            indices: Sample indices.

        Returns:
            One item or `SampleError` per index, in order.
        """
        return [self.try_load_item(i) for i in indices]

    def try_load_item(self, index: int) -> Any:
        """`load_item(index)`, or the `SampleError` it raised (returned, not raised).

        Workers call this, so that one bad sample does not take its
        neighbours down, and the calling process decides what to do.

        Args:
            index: The sample index.

        Returns:
            The item, or a `SampleError` naming the file and reason.

        Example:

        >>> seq.try_load_item(3)  # doctest: +SKIP
        """
        try:
            return self.load_item(index)
        except SampleError as e:
            return e
        except MemoryError:
            raise
        except Exception as e:
            error = SampleError(
                f"cannot load sample: {type(e).__name__}: {e}", path=self.sample_path(index), index=index
            )
            error.__cause__ = e
            return error

    def sample_path(self, index: int) -> str | None:
        """The file that names sample `index` in messages (its input file). Subclasses say.

        Returns:
            A path, or `None` in `BaseSequence`.
        """
        return None

    def item_signature(self, item: Any) -> Any:
        """What must be equal between samples for them to share a batch: by default, the arrays' shapes.

        Args:
            item: A loaded item.

        Returns:
            A comparable value.
        """
        return tuple(None if a is None else np.shape(a) for a in (item if isinstance(item, tuple) else (item,)))

    def reference_item(self) -> tuple[int, Any]:
        """The first sample, in file order, that loads: `(index, item)`. Computed once.

        With `on_error="skip"`, samples whose `item_signature` differs from
        this one's are bad, so the same file is judged the same way in every
        batch and worker.

        Returns:
            `(index, item)`.

        Raises:
            TooManyErrorsError: If no sample loads at all.
        """
        if self._reference is None:  # unless set_reference() chose one
            for index in range(self.num_samples):
                item = self.try_load_item(index)
                if not isinstance(item, SampleError):
                    self._reference = (index, item, self.item_signature(item))
                    break
                self._record_error(item)
            else:
                raise TooManyErrorsError(
                    f"none of the {self.num_samples} samples could be loaded: {self.errors[0].reason}"
                )
        return self._reference[0], self._reference[1]

    def set_reference(self, index: int) -> None:
        """Makes sample `index` the one whose shapes every other sample must have (with `on_error="skip"`).

        By default the reference is the first sample, in file order, that
        loads; set it explicitly when that one is the odd one out.

        Args:
            index: A sample that loads.

        Raises:
            ValueError: If `index` is out of range.
            SampleError: If that sample cannot be loaded.

        Example:

        >>> seq.set_reference(12)  # doctest: +SKIP
        """
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < self.num_samples:
            raise ValueError(f"`index` must be a sample index in 0..{self.num_samples - 1}. Received: index={index!r}")
        item = self.try_load_item(int(index))
        if isinstance(item, SampleError):
            raise item
        self._reference = (int(index), item, self.item_signature(item))

    def item_problem(self, index: int, item: Any) -> str | None:
        """Why a loaded sample cannot join a batch, or `None`. Used with `on_error="skip"`.

        Args:
            index: The sample index.
            item: Its loaded item.

        Returns:
            A reason in words, or `None`.
        """
        first, _ = self.reference_item()
        expected = cast(tuple, self._reference)[2]
        got = self.item_signature(item)
        if got != expected:
            return (
                f"its shapes {got} differ from {expected}, those of sample {first} "
                f"({self.sample_path(first)!r}), the first that loads"
            )
        return None

    def _upcoming_positions(self, position: int) -> list[int]:
        """The batches likely to be asked for next, to prefetch; empty when unknown.

        Batches asked for in order are followed by the next ones. When Keras's
        PyDataset generator is asking, its own (possibly shuffled) batch order
        is read from the generator, so that `fit(shuffle=True)` prefetches too.
        Nothing is prefetched for Keras's signature read (`seq[0]`, `seq[1]`
        before training): Keras moves to the next epoch's order right after
        it, so those batches would be decoded for nothing.
        """
        previous, self._last_position = getattr(self, "_last_position", None), position
        limit = self.max_queue_size
        order = keras_request_order(self, position)  # what fit asks for: the common case, checked first
        if order is not None:
            return order[:limit]
        if keras_frame(self, "get_tf_dataset") is not None:
            return []
        if previous is None or position in (0, previous + 1):
            return list(range(position + 1, min(len(self), position + 1 + limit)))
        return []

    def load_item(self, index: int) -> Any:
        """Loads sample `index`. Runs in the calling thread or in a worker.

        Args:
            index: The sample index.

        Returns:
            Whatever `collate` expects for one sample.

        Raises:
            NotImplementedError: In `BaseSequence` itself.
        """
        raise NotImplementedError("subclasses of BaseSequence implement load_item(index)")

    def collate(self, indices: np.ndarray, items: list[Any], position: int | None = None) -> tuple:
        """Assembles the batch of the samples at `indices` from their loaded `items`.

        Args:
            indices: Sample indices, in batch order.
            items: `load_item(i)` for each of `indices`.
            position: The batch's position in the epoch, or `None` for a
                batch made outside the epoch order.

        Returns:
            `(x,)`, `(x, y)` or `(x, y, sample_weight)`.

        Raises:
            NotImplementedError: In `BaseSequence` itself.
        """
        raise NotImplementedError("subclasses of BaseSequence implement collate(indices, items, position)")

    def collate_cached(self, indices: np.ndarray, slabs: tuple, position: int | None = None) -> Any:
        """Assembles a batch straight from a cache's arrays, when every sample of it is cached.

        Optional: return `NotImplemented` (the default) to have the cached
        items passed to `collate` one by one instead.

        Args:
            indices: Sample indices, in batch order.
            slabs: For each item slot, the cache's array whose row `i` holds
                sample `i` (or `None`); read the rows at `indices`, never
                write.
            position: As for `collate`.

        Returns:
            The batch, or `NotImplemented`.
        """
        return NotImplemented

    def load_batch(self, indices: np.ndarray, position: int | None = None) -> tuple:
        """Loads the samples at `indices` in the calling thread and assembles their batch.

        Args:
            indices: Sample indices, in batch order.
            position: As for `collate`. Defaults to `None`.

        Returns:
            The batch, as `seq[i]` returns it.

        Raises:
            SampleError: If a sample cannot be loaded.

        Example:

        >>> x, y = seq.load_batch(np.array([0, 5, 9]))  # doctest: +SKIP
        """
        indices = np.asarray(indices, dtype=np.int64)
        return self.collate(indices, [self.load_item(int(i)) for i in indices], position)

    def close(self) -> None:
        """Stops the worker pool, if one is running. The next batch starts a new one.

        Example:

        >>> seq.close()  # doctest: +SKIP
        """
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        if self._cache is not None:
            self._cache.flush()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pool"] = None  # a pool belongs to the process that started it
        state["_cache"] = None  # workers never read the cache; it stays with the process that fills it
        state["_errors"], state["_skipped_this_epoch"] = {}, []  # kept by the process that collates
        state.pop("_keras_cursor", None)
        return state

    def load_sample(self, loader: Callable[[str], Any], path: str, index: int, what: str) -> np.ndarray:
        """Calls `loader(path)`, turning any failure into a `SampleError`; retries `OSError`s.

        Args:
            loader: A hook such as `load_input` or `load_target`.
            path: The file to load.
            index: The sample index, for the message.
            what: `"image"`, `"label"` or similar, for the message.

        Returns:
            The loaded value as a numpy array.

        Raises:
            SampleError: Naming `path`, `index` and the original error,
                chained from it.

        Example:

        >>> seq.load_sample(np.load, "y_0.npy", 0, "label")  # doctest: +SKIP
        """
        value: Any = None
        for attempt in range(self.retries + 1):
            try:
                value = loader(path)
                break
            except (SampleError, MemoryError):
                raise
            except OSError as e:
                if attempt < self.retries:
                    time.sleep(RETRY_DELAY * 2**attempt)
                    continue
                tried = f" (tried {attempt + 1} times)" if attempt else ""
                raise SampleError(f"cannot load {what}{tried}: {type(e).__name__}: {e}", path=path, index=index) from e
            except Exception as e:
                raise SampleError(f"cannot load {what}: {type(e).__name__}: {e}", path=path, index=index) from e
        if not isinstance(value, np.ndarray):
            try:
                value = np.asarray(value)
            except Exception as e:
                raise SampleError(
                    f"the {what} loader returned {type(value).__name__}, not an array", path=path, index=index
                ) from e
        return value


_DEFERRING = threading.local()  # .dataset: the sequence whose batch this thread assembles for batches_dataset


def _deferrable(dataset: BaseSequence, signature: Any) -> dict[int, float]:
    """The part of `dataset.deferred_scaling()` that applies to a flat tuple `signature` of floating tensors."""
    import tensorflow as tf

    if not isinstance(signature, tuple) or not all(isinstance(s, tf.TensorSpec) for s in signature):
        return {}
    plan = dataset.deferred_scaling()
    return {k: float(v) for k, v in plan.items() if 0 <= k < len(signature) and signature[k].dtype.is_floating}


def batches_dataset(dataset: BaseSequence, batches: Callable[[], Iterator], signature: tuple):
    """A `tf.data.Dataset` of the batches `batches()` yields, the elements of `deferred_scaling()` scaled in the graph.

    While `batches()` assembles a batch (in TensorFlow's generator thread),
    `dataset.scaling_deferred` is `True`; each deferred element then crosses
    as the `uint8` array `collate` returned, or, if `collate` returned
    another dtype, as that array in a second, otherwise empty slot. The
    graph multiplies the `uint8` one by the scale in float32 and casts it
    to the signature's dtype, which gives the bits `write_pixels` gives.

    Args:
        dataset: The sequence the batches come from.
        batches: Returns a fresh iterator of batches (tuples) per pass.
        signature: The `tf.TensorSpec` of each batch element, as delivered.

    Returns:
        A `tf.data.Dataset` whose `element_spec` matches `signature`.

    Example:

    >>> ds = batches_dataset(seq, lambda: (seq[i] for i in range(len(seq))), seq.output_signature())  # doctest: +SKIP
    """
    import tensorflow as tf

    plan = _deferrable(dataset, signature)
    if not plan:
        return tf.data.Dataset.from_generator(batches, output_signature=signature)
    crossing = tuple(
        (tf.TensorSpec(spec.shape, tf.uint8), spec) if k in plan else spec for k, spec in enumerate(signature)
    )  # fmt: skip

    def split(value: Any, spec: Any) -> tuple[np.ndarray, np.ndarray]:
        value = np.asarray(value)
        if value.dtype == np.uint8:
            return value, np.empty((0,) + value.shape[1:], spec.dtype.as_numpy_dtype)
        return np.empty((0,) + value.shape[1:], np.uint8), value

    def generate():
        iterator = iter(batches())
        while True:
            _DEFERRING.dataset = dataset
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                _DEFERRING.dataset = None
            yield tuple(split(value, signature[k]) if k in plan else value for k, value in enumerate(batch))

    @tf.autograph.experimental.do_not_convert  # plain graph code: nothing for AutoGraph to rewrite
    def scale(*elements):
        out = list(elements)
        for k, factor in plan.items():
            raw, ready = elements[k]
            dtype = signature[k].dtype
            out[k] = tf.cond(
                tf.shape(ready)[0] > 0,
                lambda ready=ready: ready,
                lambda raw=raw, factor=factor, dtype=dtype: tf.cast(tf.cast(raw, tf.float32) * np.float32(factor), dtype),
            )  # fmt: skip
        return tuple(out)

    return tf.data.Dataset.from_generator(generate, output_signature=crossing).map(scale)


def _ours_in_keras_tf_dataset(adapter: Any, dataset: Any) -> Any:
    """What Keras's `PyDatasetAdapter.get_tf_dataset` returns, for keras_sepseq datasets: tf.data autotuning off and
    images crossing into the graph as `uint8` (see `BaseSequence.deferred_scaling`). Other datasets are left alone.

    Keras wraps a PyDataset that runs no workers of its own (ours tell it
    `workers=1`) in `from_generator(...).prefetch(AUTOTUNE)` with autotuning
    on, which waits before asking for the first batch of one epoch in two
    (figures in docs/benchmarks.md); with autotuning off, as Keras itself
    sets it when its own workers run, every epoch starts at once. Our
    worker pool prefetches already, so the autotuner has nothing to tune.
    """
    sequence = getattr(adapter, "py_dataset", None)
    if isinstance(sequence, BaseSequence) and getattr(adapter, "enqueuer", None) is None:
        import tensorflow as tf

        signature = adapter_signature(adapter)
        batches = adapter_batches(adapter)
        if batches is not None and _deferrable(sequence, signature):
            # The same generator Keras built (its batch order, its epochs), with images crossing as uint8.
            dataset = batches_dataset(sequence, batches, signature).prefetch(tf.data.AUTOTUNE)
        options = tf.data.Options()
        options.autotune.enabled = False
        dataset = dataset.with_options(options)
    return dataset


wrap_get_tf_dataset(_ours_in_keras_tf_dataset)
