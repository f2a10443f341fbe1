"""Epoch order, shards and resumable state: which samples batch `i` of an epoch holds.

Everything here is a pure function of the dataset's order settings, the
seed and the epoch (`epoch_order`, `EpochOrder.shard_members`), so that
threads, processes, hosts and a job resumed in a new process agree on it
without talking to each other. `EpochOrder` is the part of every sequence
that holds these settings; `BaseSequence` composes it.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import threading
from collections.abc import Iterator

import keras
import numpy as np

from keras_sepseq.checks import check_int
from keras_sepseq.keras_integration import distribution_data_shards, keras_shards_py_datasets

__all__ = ["EpochOrder", "detect_shard", "epoch_order"]


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


class EpochOrder:
    """The order part of a sequence: batch size, shuffling, seed, epoch, shards and resumable state.

    A mixin of `BaseSequence` (use that): it holds no loading logic, and its
    methods depend only on the settings given to `init_order` and the epoch.
    """

    def init_order(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int | None,
        drop_remainder: bool,
        num_shards: int,
        shard_index: int,
        shard: str | None,
    ) -> None:
        """Checks and stores the order settings (called by `BaseSequence.__init__`).

        Args:
            num_samples: How many samples there are.
            batch_size: Samples per batch.
            shuffle: Reshuffle the order every epoch.
            seed: Non-negative integer seed, or `None` (see `BaseSequence`).
            drop_remainder: Leave out the last, smaller batch.
            num_shards: How many hosts split each epoch.
            shard_index: This host's shard.
            shard: `None` or `"auto"` (see `detect_shard`).

        Raises:
            ValueError: If an argument is out of range; the message names it.
        """
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

    @contextlib.contextmanager
    def loading_epoch(self, epoch: int | None) -> Iterator[None]:
        """Within it, this thread loads samples for `epoch` (`None`: the current one); see `epoch_being_loaded`.

        The worker pool enters it around each chunk with the epoch of the
        chunk's batch, so that process workers (whose copy of the dataset
        keeps the epoch it was started in) and thread workers still busy when
        the epoch moves on load for the batch's own epoch.

        Args:
            epoch: The epoch of the batch being loaded, or `None`.

        Yields:
            Nothing.
        """
        local = self.__dict__.get("_loading")
        if local is None:
            local = self.__dict__["_loading"] = threading.local()
        before = getattr(local, "epoch", None)
        local.epoch = epoch
        try:
            yield
        finally:
            local.epoch = before

    @property
    def epoch_being_loaded(self) -> int:
        """The epoch whose samples this thread is loading: what `loading_epoch` set, else `epoch`.

        A `load_item` whose result depends on the epoch (random patches,
        say) reads this, never `epoch`.
        """
        local = self.__dict__.get("_loading")
        epoch = None if local is None else getattr(local, "epoch", None)
        return self.epoch if epoch is None else epoch

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
