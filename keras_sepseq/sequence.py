"""`BaseSequence`: the `keras.utils.PyDataset` contract, composing the parts every keras_sepseq dataset shares.

The parts live in modules of their own: the epoch order, shards and
resumable state (`keras_sepseq.order`), the error policy
(`keras_sepseq.error_policy`), validation (`keras_sepseq.validation`),
tf.data export (`keras_sepseq.tf_data`), the worker pool
(`keras_sepseq.engine`) and the caches (`keras_sepseq.cache`). This module
holds what joins them: how `seq[i]` is served. Subclasses implement
`load_item` and `collate`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from keras_sepseq.augment import Augmentation
from keras_sepseq.buffers import BatchBuffers
from keras_sepseq.cache import DirectoryCache, MemoryCache, fingerprint, parse_bytes
from keras_sepseq.checks import check_int
from keras_sepseq.engine import Assembled, WorkerPool
from keras_sepseq.error_policy import BadSample, ErrorPolicy
from keras_sepseq.errors import SampleError
from keras_sepseq.fetching import RemoteReading
from keras_sepseq.keras_integration import (
    keras_adapter_shards,
    keras_frame,
    keras_next_order,
    keras_order_after_signature,
    keras_request_order,
)
from keras_sepseq.options import SequenceOptions, resolve_options
from keras_sepseq.order import EpochOrder, _twice_sharded, detect_shard, epoch_order
from keras_sepseq.tf_data import TfDataExport, batches_dataset
from keras_sepseq.validation import Validating, ValidationReport

if TYPE_CHECKING:
    from collections.abc import Callable

    from typing_extensions import Unpack


__all__ = [
    "BadSample",
    "BaseSequence",
    "ValidationReport",
    "batches_dataset",
    "collates_anywhere",
    "detect_shard",
    "epoch_order",
]


def collates_anywhere(collate: Callable) -> Callable:
    """Marks a `collate` method as safe to run in a process worker (see `BaseSequence.assembles_in_workers`).

    Mark a `collate` whose batch depends only on its arguments, the
    dataset's options and its epoch (a worker's copy of the dataset is
    switched to the epoch of the batch it assembles), never on state the
    calling process changes while training.

    Args:
        collate: The method.

    Returns:
        The same method, marked.

    Example:

    >>> class Sums(BaseSequence):
    ...     @collates_anywhere
    ...     def collate(self, indices, items, position=None):
    ...         return (np.stack(items),)
    """
    collate.collates_anywhere = True  # type: ignore[attr-defined]
    return collate


class BaseSequence(EpochOrder, ErrorPolicy, RemoteReading, Validating, TfDataExport, keras.utils.PyDataset):
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
        **options: The options every sequence shares, below (declared once,
            in `keras_sepseq.options.SequenceOptions`).

    Keyword Args:
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
        storage_options: Storage options (fsspec-style or obstore keys) for paths that are URLs
            (`s3://...`, `gs://...`, `https://...`): credentials,
            `client_kwargs={"endpoint_url": ...}` and the like, as pandas
            and Dask take them (see `keras_sepseq.storage`). Credentials
            stay in this process: workers receive bytes, not keys.
        reads_in_flight: How many object reads run at once, ahead of the
            workers that decode (see `keras_sepseq.fetching`). Defaults
            to 128 (2,500 reads/s at a 50 ms round trip); raise it for
            higher latency or more cores.

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

    def __init__(self, num_samples: int, batch_size: int = 32, **options: Unpack[SequenceOptions]) -> None:
        o = resolve_options(dict(options), owner=type(self).__name__)
        # Keras runs no workers of its own: it would start a pool per epoch (see keras_sepseq.engine).
        super().__init__(
            workers=1,
            use_multiprocessing=False,
            max_queue_size=check_int("max_queue_size", o["max_queue_size"], minimum=1),
        )
        self.num_workers = check_int("workers", o["workers"], minimum=0)
        self.use_processes = bool(o["use_multiprocessing"])
        self._pool: WorkerPool | None = None
        self.buffers = BatchBuffers()  # batch arrays are recycled once nothing else holds them
        cache = o["cache"]
        if cache is not None and not isinstance(cache, (str, os.PathLike)):
            raise ValueError(f"`cache` must be None, 'memory' or a directory path. Received: cache={cache!r}")
        self.cache = cache if cache in (None, "memory") else os.fspath(cache)
        self.cache_budget = parse_bytes(o["cache_budget"])
        self._cache: MemoryCache | DirectoryCache | None = None
        self.init_error_policy(on_error=o["on_error"], max_errors=o["max_errors"], retries=o["retries"])
        self.init_remote_reading(storage_options=o["storage_options"], reads_in_flight=o["reads_in_flight"])
        self.augmentation: Augmentation | None = None
        if o["augment"] is not None:
            if not hasattr(self, "fields"):
                raise ValueError(
                    "`augment` works on sequences of named fields (FieldSequence, SeparatedSequence, PaddedSequence); "
                    f"{type(self).__name__} has none."
                )
            self.augmentation = Augmentation(o["augment"])
        self.init_order(
            num_samples,
            batch_size,
            shuffle=o["shuffle"],
            seed=o["seed"],
            drop_remainder=o["drop_remainder"],
            num_shards=o["num_shards"],
            shard_index=o["shard_index"],
            shard=o["shard"],
        )

    def on_epoch_end(self) -> None:
        """Moves to the next epoch's order (Keras calls this between epochs).

        The order is computed here, in the main process, so that process
        workers forked for the next epoch inherit it. A directory cache is
        written to disk.
        """
        self.set_epoch(self.epoch + 1)
        self.drop_stale_read_ahead(self.epoch)
        if self._cache is not None:
            self._cache.flush()
        self.report_retries()
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
            # Keras's structure read (`seq[0]`, `seq[1]` before `fit`): objects in storage are read once, not
            # twice (with a cache, the samples themselves are kept).
            structure = self.reads_remote and cache is None and keras_frame(self, "get_tf_dataset") is not None
            with self.keeping_reads(structure):
                result = self._load_missing(indices[missing], position)
            if isinstance(result, Assembled):  # collated by a process worker: see assembles_in_workers
                return result.batch
            loaded = result
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

    def _load_missing(self, wanted: np.ndarray, position: int) -> list[Any] | Assembled:
        """The samples at `wanted` of the batch at `position`, loaded here or by the worker pool."""
        pool = self._worker_pool() if self.parallel else None
        if pool is None or pool.loads_here(self.epoch):  # no workers, or the tuner found this thread fastest
            if self.reads_remote:
                self._read_ahead_batches(self._upcoming_positions(position))
            return self.try_load_items([int(i) for i in wanted])
        # When this thread loads every batch itself, there is nothing to prefetch (nor to work out).
        upcoming = [] if pool.tuner.inline else self._to_load(self._upcoming_positions(position))
        return pool.load((self.epoch, position), wanted, upcoming)

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
                self,
                workers=self.num_workers,
                use_processes=self.use_processes,
                max_queue_size=self.max_queue_size,
                fetch=self.fetch_samples if self.reads_remote else None,
                assemble=self.use_processes and self.assembles_in_workers(),
                lend=self.cache is None,  # a cache keeps items; whole batches are only made without one
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
        elif self.reads_remote:
            self._read_ahead_batches((keras_next_order(self) or [])[: self.max_queue_size])

    def _read_ahead_batches(self, positions: list[int]) -> None:
        """When this thread loads every batch (no pool), starts reading the objects of the batches at `positions`
        (in this epoch), in that order, `reads_in_flight` reads on their way at most: it then decodes one batch
        while the next ones' round trips pass, instead of waiting for each (`workers=1` read the bench's photos
        from S3, 50 ms added per request, at 0.31-0.33x of local disk before; docs/benchmarks.md)."""
        epoch, covered = self.__dict__.get("_batches_read_ahead", (None, set()))
        if epoch != self.epoch:  # positions of an earlier epoch
            covered = set()
            self.__dict__["_batches_read_ahead"] = (self.epoch, covered)
        room = self.reads_in_flight - self.reads_ahead_in_flight()
        for key, indices in self._to_load([p for p in positions if p not in covered]):
            if room <= 0:
                return
            room -= self.read_ahead(indices.tolist(), key[0], room)  # in flight counted once, not per batch
            if room > 0:  # every object of the batch is on its way (or in hand): not looked at again
                covered.add(key[1])

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

    def _upcoming_positions(self, position: int) -> list[int]:
        """The batches likely to be asked for next, to prefetch; empty when unknown.

        Batches asked for in order are followed by the next ones. When Keras's
        PyDataset generator is asking, its own (possibly shuffled) batch order
        is read from the generator, so that `fit(shuffle=True)` prefetches too.
        Nothing is prefetched for Keras's signature read (`seq[0]`, `seq[1]`
        before training): Keras moves to the next epoch's order right after
        it, so those batches would be decoded for nothing; for data in
        object storage, the objects of that next epoch's first batches
        start reading then instead (`_read_ahead_first_batches`).
        """
        previous, self._last_position = getattr(self, "_last_position", None), position
        limit = self.max_queue_size
        order = keras_request_order(self, position)  # what fit asks for: the common case, checked first
        if order is not None:
            return order[:limit]
        if keras_frame(self, "get_tf_dataset") is not None:
            if position == 0 and self.reads_remote:
                self._read_ahead_first_batches()
            return []
        if previous is None or position in (0, previous + 1):
            return list(range(position + 1, min(len(self), position + 1 + limit)))
        return []

    def _read_ahead_first_batches(self) -> None:
        """Under `fit`, while Keras reads batches 0 and 1 for their structure, starts reading the objects of the
        batches its first epoch will ask for first (see `keras_order_after_signature`): their round trip then
        passes while Keras sets training up, instead of at the start of the epoch."""
        order = keras_order_after_signature(self)
        if order:
            epoch, size = self.epoch + 1, self.batch_size
            samples = self.order_for_epoch(epoch)
            indices = np.concatenate([samples[p * size : (p + 1) * size] for p in order[: self.max_queue_size]])
            cache = self.sample_cache()
            if cache is not None and len(indices):  # what a cache holds is not read again (a second fit)
                indices = indices[~cache.filled_mask(indices)]
            self.read_ahead(indices.tolist(), epoch)

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

    def assembles_in_workers(self) -> bool:
        """Whether process workers may assemble whole batches (`collate`) of cheap samples themselves.

        Samples cheap enough to go to a worker in whole batches (see
        `keras_sepseq.tuning`) are then collated in the worker, which sends
        the batch's arrays instead of one item per sample: the main process
        only copies the batch out of shared memory. It needs a `collate`
        marked `@collates_anywhere` (a function of its arguments and the
        dataset's options alone, as the built-in classes' are; a subclass
        that overrides `collate` always collates in the calling process),
        `on_error="raise"` (skipping bad samples is decided where errors
        are recorded), no cache (the cache keeps items) and no `augment`.
        The batches are the same bytes either way.

        Returns:
            True when those conditions hold.

        Example:

        >>> SeparatedSequence(images, labels, use_multiprocessing=True).assembles_in_workers()  # doctest: +SKIP
        True
        """
        return (
            getattr(type(self).collate, "collates_anywhere", False)
            and self.on_error == "raise"
            and self.cache is None
            and getattr(self, "augmentation", None) is None
        )

    def collate_placeholder(self, indices: np.ndarray, items: list[Any], position: int | None = None) -> tuple:
        """`collate` for the weight-0 placeholder a batch of only bad samples is served as; never augmented.

        Args:
            indices: The placeholder's sample index.
            items: Its item.
            position: As for `collate`.

        Returns:
            The batch.
        """
        return self.collate(indices, items, position)

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
        self.close_fetcher()
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
        state.pop("_loading", None)  # per thread, see loading_epoch
        state["augmentation"] = None  # workers load; augmentation runs where batches are assembled
        return self.remote_state(state)  # no credentials: workers get the bytes fetched for them
