"""Batch arrays handed out again once nothing outside refers to them (`BatchBuffers`)."""

from __future__ import annotations

import math
import sys
import threading
from typing import Any

import numpy as np

__all__ = ["BatchBuffers"]


def _free_refcount() -> int:
    """`sys.getrefcount` of a list element bound to one local name, with no other reference."""
    probe = [object()]
    item = probe[0]  # the same references as in BatchBuffers.empty: the list's and one name's
    return sys.getrefcount(item)


class BatchBuffers:
    """Hands out large batch arrays again once nothing outside refers to them.

    A fresh multi-megabyte array per batch costs the kernel zeroed pages and
    the allocator a map and unmap, which shows through `model.fit` (figures
    in docs/benchmarks.md). Reuse is safe
    because an array is handed out again only when its reference count
    shows that this object alone holds it: a batch kept by the caller,
    aliased by a TensorFlow tensor or viewed by any array is never
    overwritten. Arrays under `min_bytes` are not worth it and are plain
    `np.empty`.

    Args:
        limit: The most arrays kept. Defaults to 4.
        min_bytes: Smaller arrays are not recycled. Defaults to 1 MiB.

    Example:

    >>> buffers = BatchBuffers()
    >>> a = buffers.empty((32, 128, 128, 3), np.float32); del a
    >>> b = buffers.empty((32, 128, 128, 3), np.float32)  # the same memory again
    """

    _FREE = _free_refcount()

    def __init__(self, limit: int = 4, min_bytes: int = 1 << 20) -> None:
        self.limit = limit
        self.min_bytes = min_bytes
        self._arrays: list[np.ndarray] = []
        self._lock = threading.Lock()
        self.reused = 0

    def empty(self, shape: tuple, dtype: Any) -> np.ndarray:
        """An uninitialized array of `shape` and `dtype`, recycled where possible.

        Args:
            shape: The array shape.
            dtype: The array dtype.

        Returns:
            An array whose contents are undefined, as from `np.empty`.
        """
        dtype = np.dtype(dtype)
        shape = tuple(int(d) for d in shape)
        if math.prod(shape) * dtype.itemsize < self.min_bytes:
            return np.empty(shape, dtype)
        with self._lock:
            spare = None  # where a free array of another shape (a last, shorter batch, say) can make room
            for k in range(len(self._arrays)):
                array = self._arrays[k]  # held by the list and this name only, when nobody else has it
                if sys.getrefcount(array) <= self._FREE:
                    if array.shape == shape and array.dtype == dtype:
                        self.reused += 1
                        return array
                    spare = k
            array = np.empty(shape, dtype)
            if len(self._arrays) < self.limit:
                self._arrays.append(array)
            elif spare is not None:
                self._arrays[spare] = array
            return array

    def __getstate__(self) -> dict:
        return {"limit": self.limit, "min_bytes": self.min_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)  # type: ignore[misc]
