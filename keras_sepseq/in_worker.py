"""What a process worker runs: its setup, and loading (and, for a whole batch, collating) a chunk of samples.

The worker pool (`keras_sepseq.engine`) starts process workers with
`init_process_worker` and sends each chunk to `load_chunk_in_process`.

Example:

>>> init_process_worker(seq)  # doctest: +SKIP
>>> seconds, cpu, items = load_chunk_in_process([3, 1])  # doctest: +SKIP
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any, NamedTuple

import numpy as np

from keras_sepseq.errors import SampleError
from keras_sepseq.shared_slots import pack_items
from keras_sepseq.storage import supplied

__all__ = ["Assembled", "init_process_worker", "load_chunk_in_process"]

# Process workers: the dataset lives in a module global, set once per process.
_WORKER_DATASET: Any = None


def init_process_worker(dataset: Any) -> None:
    """Sets up a process worker: keeps its copy of `dataset`, and leaves Ctrl-C to the pool's process.

    Args:
        dataset: The sequence whose samples the worker loads.

    Example:

    >>> init_process_worker(seq)  # doctest: +SKIP
    """
    global _WORKER_DATASET
    _WORKER_DATASET = dataset
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:  # OpenCV's thread pool does not survive fork(): run its parallel loops inline here
        cv2.setNumThreads(0)
    # Ctrl-C goes to the whole process group: let the main process decide, workers just stop when told.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Assembled(NamedTuple):
    """A batch a process worker assembled (`collate`d) itself, in place of the items of its samples."""

    batch: tuple


def load_chunk_in_process(
    indices: list[int],
    slot: tuple[str, int, int] | None = None,
    contents: dict[str, Any] | None = None,
    epoch: int | None = None,
    position: int | None = None,
) -> tuple[float, float, Any]:
    """Loads a chunk in a process worker (set up by `init_process_worker`).

    Args:
        indices: The chunk's sample indices.
        slot: `(shared memory name, offset, size)` to leave the arrays in
            (`SharedSlots.where`), or `None` for the pipe.
        contents: The bytes of the chunk's objects in storage, read by the
            pool's process (which keeps the credentials); `None` for local
            files.
        epoch: The epoch of the chunk's batch (see `EpochOrder.loading_epoch`).
        position: With a position, the chunk is that whole batch, collated
            here unless a sample failed (the calling process then decides
            what to do).

    Returns:
        `(seconds, CPU seconds it took, result)`, the result the items (or
        `SampleError`s), or an `Assembled` batch, packed into the slot
        where they fit (`InSlot`).

    Example:

    >>> seconds, cpu, items = load_chunk_in_process([3, 1])  # doctest: +SKIP
    """
    start, cpu = time.perf_counter(), time.thread_time()
    dataset = _WORKER_DATASET
    with dataset.loading_epoch(epoch):
        if contents is None:  # local files
            items = dataset.try_load_items(indices)
        else:
            with supplied(contents):
                items = dataset.try_load_items(indices)
    result: Any = items
    if position is not None and not any(isinstance(item, SampleError) for item in items):
        if epoch is not None and dataset.epoch != epoch:
            dataset.set_epoch(epoch)  # this process's own copy: collate sees the batch's epoch, as the caller's does
        result = Assembled(dataset.collate(np.asarray(indices, dtype=np.int64), items, position))
    return time.perf_counter() - start, time.thread_time() - cpu, pack_items(result, slot)
