"""Everything keras_sepseq reads from Keras beyond its public API, in one place.

Three things here go past `keras.utils.PyDataset`'s public contract, each
only to make loading faster, never to decide what a batch holds:

- reading the batch order of Keras's PyDataset generator (its frame), so
  that `fit(shuffle=True)` prefetches the batches it will ask for next;
- predicting, when an epoch begins (or, under `fit`, while Keras reads the
  first batches for their structure), the order that generator will use;
- wrapping `PyDatasetAdapter.get_tf_dataset`, so that keras_sepseq datasets
  cross into TensorFlow as uint8 with tf.data autotuning off.

They are gated by the Keras versions they were tested on
(`TESTED_KERAS`). Any other Keras gets the correct, slower path: no
frame reading, no prediction, no wrapper, and one warning saying so.
Setting the environment variable `KERAS_SEPSEQ_NO_KERAS_PATCH=1` before
the first import leaves Keras's adapter unwrapped on any version.

Which process trains on which data (`data_sharding`) uses Keras's public
distribution API only, and is correct on every version.
"""

from __future__ import annotations

import functools
import os
import random
import sys
import warnings
from collections.abc import Callable
from typing import Any

import keras

TESTED_KERAS = ("3.15", "3.16")
"""The `major.minor` Keras versions whose internals this module was tested against."""

NO_PATCH_VARIABLE = "KERAS_SEPSEQ_NO_KERAS_PATCH"

_warned = False


def keras_version() -> tuple[int, int]:
    """`(major, minor)` of the installed Keras.

    Returns:
        Two integers; `(0, 0)` when the version string cannot be read.

    Example:

    >>> keras_version() >= (3, 0)
    True
    """
    try:
        major, minor = keras.version().split(".")[:2]
        return int(major), int(minor)
    except (ValueError, AttributeError):
        return 0, 0


def recognised() -> bool:
    """Whether this Keras is one whose internals keras_sepseq was tested on (see `TESTED_KERAS`).

    On any other version it warns once and returns `False`; callers then
    take the correct, slower path.

    Returns:
        `True` for a tested version.

    Example:

    >>> recognised() in (True, False)
    True
    """
    global _warned
    version = "{}.{}".format(*keras_version())
    if version in TESTED_KERAS:
        return True
    if not _warned:
        _warned = True
        warnings.warn(
            f"keras_sepseq was tested with Keras {' and '.join(TESTED_KERAS)}; with Keras {keras.version()} it does "
            "not read Keras's internals: batches are the same, but prefetching under fit(shuffle=True) and the "
            "uint8 crossing into TensorFlow are off.",
            stacklevel=3,
        )
    return False


def keras_frame(dataset: Any, function: str, depth: int = 8) -> Any:
    """The frame of a Keras adapter's `function` working on `dataset`, among the callers; else `None`.

    Args:
        dataset: The dataset being indexed.
        function: A `PyDatasetAdapter` method name, e.g. `"get_tf_dataset"`.
        depth: How many frames up to look. Defaults to 8.

    Returns:
        The frame, or `None` (also on a Keras version not in `TESTED_KERAS`).

    Example:

    >>> keras_frame(object(), "get_tf_dataset") is None  # not called from Keras
    True
    """
    if not recognised():
        return None
    frame: Any = sys._getframe(1)
    for _ in range(depth):
        frame = frame.f_back
        if frame is None:
            return None
        if frame.f_code.co_name == function and getattr(frame.f_locals.get("self"), "py_dataset", None) is dataset:
            return frame
    return None


def _adapter_sharding(adapter: Any) -> tuple[int, int]:
    """`(step, start)` of the batches a Keras adapter asks for: `(1, 0)` unless Keras shards the dataset (3.16+)."""
    step = getattr(adapter, "_num_data_shards", 1)
    start = getattr(adapter, "_data_shard_id", 0)
    return (step, start) if isinstance(step, int) and isinstance(start, int) and step >= 1 else (1, 0)


def keras_request_order(dataset: Any, position: int) -> list[int] | None:
    """Reads, from the calling Keras generator, which batches it will ask `dataset` for next.

    Keras's `PyDatasetAdapter._finite_generator` shuffles a list of batch
    indices (for `fit(shuffle=True)`) and asks for them one by one (from
    Keras 3.16, every `num_data_shards`-th of them when Keras shards the
    dataset). When `dataset[position]` is called from that generator, this
    returns the batches it will ask for after `position`, so that they can
    be prefetched; otherwise (another caller, or a Keras whose generator
    looks different) `None`. It only guides prefetching: what each batch
    holds never depends on it.

    Args:
        dataset: The dataset being indexed; must have `max_queue_size`.
        position: The batch being asked for now.

    Returns:
        The upcoming batch positions, or `None`.

    Example:

    >>> keras_request_order(object(), 0) is None  # not called from Keras
    True
    """
    frame = keras_frame(dataset, "_finite_generator")
    if frame is None:
        return None
    indices = frame.f_locals.get("indices")
    if not isinstance(indices, (list, range)):
        return None
    step, _ = _adapter_sharding(frame.f_locals.get("self"))
    cursor = getattr(dataset, "_keras_cursor", None)
    if cursor is None or cursor[0] is not indices or cursor[1] >= len(indices) or indices[cursor[1]] != position:
        try:
            where = indices.index(position)
        except ValueError:
            return None
    else:
        where = cursor[1]
    dataset._keras_cursor = (indices, where + step)
    return list(indices[where + step :: step][: dataset.max_queue_size])


def keras_next_order(dataset: Any) -> list[int] | None:
    """Predicts, when Keras starts an epoch, the batch order its generator will ask `dataset` for.

    Called from `on_epoch_begin` under Keras's `PyDatasetAdapter`: the
    adapter's generator asks for batches in order, or, with
    `fit(shuffle=True)`, in a shuffled order: on Keras 3.15 the order
    `random.shuffle` gives when it starts, which a copy of the `random`
    module's state predicts (nothing draws from it in between; the copy
    leaves the global state untouched); from Keras 3.16 the order of
    `random.Random(epoch)` with the adapter's epoch count, and only every
    `num_data_shards`-th batch of it when Keras shards the dataset. Like
    `keras_request_order`, it only guides prefetching: a wrong guess costs
    nothing but the guess.

    Args:
        dataset: The dataset whose epoch begins.

    Returns:
        The predicted batch positions, or `None` when not called from Keras.

    Example:

    >>> keras_next_order(object()) is None  # not called from Keras
    True
    """
    frame = keras_frame(dataset, "on_epoch_begin")
    if frame is None:
        return None
    return _generator_order(dataset, frame.f_locals["self"], epochs_ahead=0)


def keras_order_after_signature(dataset: Any) -> list[int] | None:
    """Predicts, while `fit` reads `dataset`'s first batches for their structure, the batch order of its first epoch.

    On the TensorFlow backend, Keras's `PyDatasetAdapter.get_tf_dataset`
    reads `dataset[0]` and `dataset[1]` before training; `fit` then ends
    that epoch (`on_epoch_end`) and starts its first. Only `fit` shuffles
    (its adapter's `shuffle` is `True` unless `fit(shuffle=False)`), so the
    prediction is made for shuffled adapters only, as `keras_next_order`
    makes it, one epoch ahead; otherwise (`evaluate`, `predict`, which may
    not end the epoch) `None`. Like `keras_next_order`, it only guides
    reading ahead: a wrong guess costs the reads.

    Args:
        dataset: The dataset being indexed.

    Returns:
        The predicted batch positions, or `None`.

    Example:

    >>> keras_order_after_signature(object()) is None  # not called from Keras
    True
    """
    frame = keras_frame(dataset, "get_tf_dataset")
    if frame is None or not getattr(frame.f_locals["self"], "shuffle", False):
        return None
    return _generator_order(dataset, frame.f_locals["self"], epochs_ahead=1)


def _generator_order(dataset: Any, adapter: Any, epochs_ahead: int) -> list[int]:
    """The batch order `adapter`'s generator will use `epochs_ahead` epochs from now (see `keras_next_order`)."""
    order = list(range(len(dataset)))
    if getattr(adapter, "shuffle", False):
        epoch = getattr(adapter, "_epoch", None)
        if isinstance(epoch, int):  # Keras 3.16: the generator seeds its own Random with the epoch
            generator = random.Random(epoch + epochs_ahead)
        else:  # Keras 3.15: the global `random` state, read without drawing from it
            generator = random.Random()
            generator.setstate(random.getstate())
        generator.shuffle(order)
    step, start = _adapter_sharding(adapter)
    return order[start::step]


def keras_shards_py_datasets() -> tuple[int, int] | None:
    """`(num_data_shards, data_shard_id)` when Keras itself splits a PyDataset across processes; else `None`.

    From Keras 3.16, under a multi-process `keras.distribution` whose
    `auto_shard_dataset` is `True` (the default of `DataParallel`), each
    process asks a PyDataset only for every `num_data_shards`-th batch.
    Keras 3.15 refuses a PyDataset in that case instead. Read from the
    distribution's public attributes, so it holds on any Keras version that
    has them.

    Returns:
        The shard count and this process's shard, or `None`.

    Example:

    >>> keras_shards_py_datasets() is None  # no distribution set
    True
    """
    distribution = keras.distribution.distribution()
    if distribution is None or not getattr(distribution, "auto_shard_dataset", False):
        return None
    if getattr(distribution, "num_processes", 1) <= 1 or not hasattr(type(distribution), "num_data_shards"):
        return None
    return int(distribution.num_data_shards), int(distribution.data_shard_id)


def distribution_data_shards() -> tuple[int, int] | None:
    """`(num_data_shards, data_shard_id)` of the active multi-process `keras.distribution`, or `None`.

    Processes that hold parts of one model replica (`ModelParallel`) read
    the same data: the count is `min(num_model_replicas, num_processes)`, as
    Keras computes it.

    Returns:
        The shard count and this process's shard, or `None` without a
        multi-process distribution.

    Example:

    >>> distribution_data_shards() is None  # no distribution set
    True
    """
    distribution = keras.distribution.distribution()
    processes = getattr(distribution, "num_processes", 1) if distribution is not None else 1
    if distribution is None or processes <= 1:
        return None
    shards = min(int(distribution.num_model_replicas), int(processes))
    return shards, int(distribution.data_shard_id)


def keras_adapter_shards(dataset: Any) -> int:
    """How many shards the Keras adapter calling `dataset` splits its batches into (1 when unknown or none).

    Args:
        dataset: The dataset being indexed or starting an epoch.

    Returns:
        A count >= 1.

    Example:

    >>> keras_adapter_shards(object())
    1
    """
    for function in ("on_epoch_begin", "_finite_generator"):
        frame = keras_frame(dataset, function)
        if frame is not None:
            return _adapter_sharding(frame.f_locals.get("self"))[0]
    return 1


def wrap_get_tf_dataset(replace: Callable[[Any, Any], Any]) -> bool:
    """Wraps Keras's `PyDatasetAdapter.get_tf_dataset` once with `replace(adapter, dataset)`.

    `replace` gets the adapter and the `tf.data.Dataset` Keras built, and
    returns the dataset to use (the same one for datasets it does not
    handle). Skipped on a Keras not in `TESTED_KERAS`, when the adapter has
    no such method, or when `KERAS_SEPSEQ_NO_KERAS_PATCH=1` is set.

    Args:
        replace: The function applied to every dataset Keras builds.

    Returns:
        Whether Keras's adapter is wrapped now.

    Example:

    >>> wrap_get_tf_dataset(lambda adapter, dataset: dataset)  # doctest: +SKIP
    True
    """
    if os.environ.get(NO_PATCH_VARIABLE, "") not in ("", "0") or not recognised():
        return False
    try:
        from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
    except ImportError:
        return False
    original = getattr(PyDatasetAdapter, "get_tf_dataset", None)
    if not callable(original):
        return False
    if getattr(original, "keras_sepseq_wrapped", False):
        return True

    @functools.wraps(original)
    def wrapped(adapter):
        return replace(adapter, original(adapter))

    wrapped.keras_sepseq_wrapped = True  # type: ignore[attr-defined]
    PyDatasetAdapter.get_tf_dataset = wrapped
    return True


def adapter_signature(adapter: Any) -> Any:
    """The output signature Keras's adapter computed, or `None`."""
    return getattr(adapter, "_output_signature", None)


def adapter_batches(adapter: Any) -> Callable | None:
    """The adapter's batch generator factory (`_get_iterator`), or `None`."""
    batches = getattr(adapter, "_get_iterator", None)
    return batches if callable(batches) else None
