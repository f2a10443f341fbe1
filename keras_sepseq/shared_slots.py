"""Shared memory for process workers' results: a chunk's arrays left in a slot instead of pickled through a pipe.

`SharedSlots` (in the pool's process) is a block of equal slots; a worker
packs a chunk's items with `pack_items` (pickle protocol 5, the arrays'
bytes copied into the slot) and sends back a few hundred bytes; the pool
reads them out with `SharedSlots.read`.

Example:

>>> slots = SharedSlots(4, 1 << 20)  # doctest: +SKIP
>>> slots.close()  # doctest: +SKIP
"""

from __future__ import annotations

import os
import pickle
import threading
import weakref
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any, NamedTuple, cast

import numpy as np

__all__ = [
    "SHARED_MEMORY_LIMIT",
    "InSlot",
    "SharedSlots",
    "aligned",
    "attach_shared_memory",
    "item_bytes",
    "pack_items",
]


_ATTACHED: dict[str, shared_memory.SharedMemory] = {}  # in a worker: the pool's shared memory, by name


def attach_shared_memory(name: str) -> shared_memory.SharedMemory:
    """Opens, in a worker, the shared memory block `name` that the pool's process created and will unlink.

    Before Python 3.13 opening registers the block with the resource
    tracker, which workers share with the process that started them (the
    pool starts it first): the same entry, removed when that process
    unlinks the block.
    """
    try:
        return shared_memory.SharedMemory(name=name, track=False)  # type: ignore[call-arg]  # Python >= 3.13
    except TypeError:
        return shared_memory.SharedMemory(name=name)


class InSlot(NamedTuple):
    """A chunk's items, pickled with their arrays' bytes left in a shared memory slot at `spans`."""

    payload: bytes
    spans: list[tuple[int, int]]


def pack_items(items: list[Any], slot: tuple[str, int, int] | None) -> Any:
    """`items` with their arrays' bytes left in shared memory `slot` where they fit, else `items`."""
    if slot is None:
        return items
    name, offset, size = slot
    if item_bytes(items) > size:
        return items  # does not fit: through the pipe, as without shared memory
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(items, protocol=5, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    if sum(aligned(v.nbytes) for v in views) > size:  # arrays `item_bytes` does not see (in a dict, say)
        return items
    if name not in _ATTACHED:
        for old in _ATTACHED.values():
            old.close()
        _ATTACHED.clear()
        _ATTACHED[name] = attach_shared_memory(name)
    memory, spans = cast(memoryview, _ATTACHED[name].buf), []
    for view in views:
        memory[offset : offset + view.nbytes] = view
        spans.append((offset, view.nbytes))
        offset += aligned(view.nbytes)
    return InSlot(payload, spans)


def aligned(nbytes: int) -> int:
    """`nbytes` rounded up to a multiple of 64 (where each array starts in a slot)."""
    return -(-nbytes // 64) * 64


def item_bytes(value: Any) -> int:
    """Bytes of the arrays in a loaded item or a batch (arrays, and tuples, lists and dicts of them)."""
    if isinstance(value, np.ndarray):
        return aligned(value.nbytes)
    if isinstance(value, (tuple, list)):
        return sum(item_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(item_bytes(v) for v in value.values())
    return 0


class SharedSlots:
    """A shared memory block in equal slots: process workers leave a chunk's arrays in one, not in the pipe.

    Returning a chunk of decoded images through the pipe of a process pool
    costs a pickle copy in the worker, two kernel copies, a wake-up of the
    receiving thread per 64 KiB, and an unpickle copy (figures in
    docs/benchmarks.md). Through a
    slot, the worker copies the arrays into shared memory once and sends
    a few hundred bytes; the main process copies them out once. The block
    is reserved in full when created (`posix_fallocate`), so a small
    `/dev/shm` gives a clear fallback to the pipe at creation rather than a
    worker killed by SIGBUS while writing.

    Args:
        count: Number of slots.
        slot_bytes: Bytes per slot.

    Raises:
        OSError: If the block cannot be created or reserved.

    Example:

    >>> slots = SharedSlots(4, 1 << 20)  # doctest: +SKIP
    >>> slot = slots.take(); slots.give(slot); slots.close()  # doctest: +SKIP
    """

    def __init__(self, count: int, slot_bytes: int) -> None:
        self.count, self.slot_bytes = int(count), int(slot_bytes)
        self.memory: shared_memory.SharedMemory | None = shared_memory.SharedMemory(
            create=True, size=self.count * self.slot_bytes
        )
        try:
            fd = getattr(self.memory, "_fd", -1)
            if fd >= 0 and hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, self.count * self.slot_bytes)
        except OSError:
            self.close()
            raise
        self._free = list(range(self.count))
        self._lock = threading.Lock()

    def take(self) -> int | None:
        """A free slot's number, or `None` when all are in use."""
        with self._lock:
            return self._free.pop() if self._free else None

    def give(self, slot: int) -> None:
        """Returns slot `slot` for reuse."""
        with self._lock:
            self._free.append(slot)

    def where(self, slot: int) -> tuple[str, int, int]:
        """`(block name, offset, size)` of slot `slot`, as a worker is told."""
        return self._block().name, slot * self.slot_bytes, self.slot_bytes

    def spare(self) -> int:
        """How many slots are free."""
        with self._lock:
            return len(self._free)

    def read(self, packed: InSlot, *, lend: Callable[[], None] | None = None) -> Any:
        """What a worker left in a slot: its arrays copied out (the slot can be reused at once), or lent.

        Args:
            packed: What the worker sent back.
            lend: Instead of copies, return arrays that are views of the
                slot, and call `lend()` once none of them is left (the slot
                can be reused then). For a batch handed to the caller as it
                is: copying a batch of photos out of shared memory cost the
                main process ~40 us per 128x128 sample (docs/benchmarks.md).
                `lend()` is called exactly once, also if reading fails.

        Returns:
            The unpickled result.
        """
        memory = cast(memoryview, self._block().buf)
        if lend is None or not packed.spans:
            buffers: list[Any] = [bytearray(memory[offset : offset + n]) for offset, n in packed.spans]
            if lend is not None:
                lend()
            return pickle.loads(packed.payload, buffers=buffers)
        start, end = packed.spans[0][0], max(offset + n for offset, n in packed.spans)
        try:
            base = np.frombuffer(memory, np.uint8, count=end - start, offset=start)
        except BaseException:
            lend()
            raise
        weakref.finalize(base, lend)  # every array read from the slot refers to `base`, down its chain of bases
        return pickle.loads(packed.payload, buffers=[base[o - start : o - start + n] for o, n in packed.spans])

    def _block(self) -> shared_memory.SharedMemory:
        if self.memory is None:
            raise RuntimeError("the shared-memory block was closed")
        return self.memory

    def close(self) -> None:
        """Releases and unlinks the block. Safe to call twice."""
        memory, self.memory = getattr(self, "memory", None), None
        if memory is not None:
            try:
                memory.close()
            except BufferError:
                # Arrays still use it (a batch lent to the caller, or one held by a traceback): the mapping goes
                # with the last of them (an mmap unmaps itself when collected). Left to the block's object, it
                # would fail to close again when collected ("Exception ignored ... exported pointers exist").
                memory._mmap = None  # type: ignore[attr-defined]
                memory.close()  # the descriptor
            try:
                memory.unlink()
            except FileNotFoundError:
                pass


SHARED_MEMORY_LIMIT = 256 << 20
"""The most bytes of shared memory a process pool uses for results (and never more than a quarter of `/dev/shm`'s free space)."""
