"""Reading `.npy` files safely: whole arrays without unpickling, shapes from the header alone.

numpy parses a `.npy` header with `ast.literal_eval`, and CPython before
3.11.8 and 3.12.1 can fail that parse spuriously when several threads
parse at once ("SystemError: AST constructor recursion depth mismatch",
python/cpython#106905). Worker threads load many `.npy` files at once, so
headers are parsed here under one lock, and the data, the bulk of the work,
is read outside it.
"""

from __future__ import annotations

import threading

import numpy as np

_HEADER_LOCK = threading.Lock()
_MAGIC = b"\x93NUMPY"


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """`(shape, fortran_order, dtype)` of an open `.npy` file positioned at its start; `None` for version 3."""
    start = f.read(6)
    f.seek(0)
    if start.startswith(b"PK"):
        raise ValueError("expected a .npy array, got an .npz archive")
    if start != _MAGIC:
        raise ValueError(f"not a .npy file: it starts with {start!r}, not the .npy magic string")
    fmt = np.lib.format
    version = fmt.read_magic(f)
    with _HEADER_LOCK:
        if version == (1, 0):
            return fmt.read_array_header_1_0(f)
        if version == (2, 0):
            return fmt.read_array_header_2_0(f)
    return None


def load_npy(path: str) -> np.ndarray:
    """Reads one `.npy` file, never unpickling.

    Args:
        path: A `.npy` file.

    Returns:
        The stored array (0-d for a scalar).

    Raises:
        OSError: If the file is missing or unreadable.
        ValueError: If the file is not a `.npy` array (an `.npz` archive, a
            text file...), holds Python objects (never unpickled), or is
            shorter than its header promises.

    Example:

    >>> load_npy("label_001.npy")  # doctest: +SKIP
    array(3)
    """
    with open(path, "rb") as f:
        header = _read_header(f)
        if header is None:  # version 3.0 (utf-8 header): let numpy read it, under the lock
            with _HEADER_LOCK:
                return np.load(path, allow_pickle=False)
        shape, fortran_order, dtype = header
        if dtype.hasobject:
            raise ValueError("the .npy file holds Python objects (pickled data), which are never unpickled")
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        buffer = np.empty(size, dtype=np.uint8)
        read = f.readinto(buffer)
    if read < size:
        raise ValueError(
            f"the .npy file is truncated: its header promises {size} bytes of data for shape {shape}, "
            f"but only {read} follow"
        )
    return buffer.view(dtype).reshape(shape, order="F" if fortran_order else "C")


def npy_shape(path: str) -> tuple[int, ...]:
    """Reads the shape of a `.npy` array from its header, without reading the data.

    Args:
        path: A `.npy` file.

    Returns:
        The array's shape.

    Raises:
        OSError: If the file is missing or unreadable.
        ValueError: If the file is not a `.npy` array, holds Python objects,
            or is shorter than its header promises.

    Example:

    >>> npy_shape("features_017.npy")  # doctest: +SKIP
    (412, 40)
    """
    with open(path, "rb") as f:
        header = _read_header(f)
        if header is None:
            with _HEADER_LOCK:
                return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        shape, _, dtype = header
        if dtype.hasobject:
            raise ValueError("the .npy file holds Python objects (pickled data), which are never unpickled")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        data_start = f.tell()
        available = f.seek(0, 2) - data_start
    if available < expected:
        raise ValueError(
            f"the .npy file is truncated: its header promises {expected} bytes of data for shape {shape}, "
            f"but only {available} follow"
        )
    return tuple(shape)
