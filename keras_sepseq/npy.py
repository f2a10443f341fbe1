"""Reading `.npy` files safely: whole arrays without unpickling, shapes from the header alone."""

from __future__ import annotations

import numpy as np


def load_npy(path: str) -> np.ndarray:
    """Reads one `.npy` file, never unpickling.

    Args:
        path: A `.npy` file.

    Returns:
        The stored array (0-d for a scalar).

    Raises:
        OSError: If the file is missing or unreadable.
        ValueError: If the file is not a `.npy` array, is truncated, holds
            Python objects (`allow_pickle=False`), or is an `.npz` archive.

    Example:

    >>> load_npy("label_001.npy")  # doctest: +SKIP
    array(3)
    """
    with open(path, "rb") as f:
        start = f.read(6)
    if start != b"\x93NUMPY" and not start.startswith(b"PK"):
        raise ValueError(f"not a .npy file: it starts with {start!r}, not the .npy magic string")
    value = np.load(path, allow_pickle=False)
    if not isinstance(value, np.ndarray):
        value.close()
        raise ValueError("expected a .npy array, got an .npz archive")
    return value


def npy_shape(path: str) -> tuple[int, ...]:
    """Reads the shape of a `.npy` array from its header, without reading the data.

    Args:
        path: A `.npy` file.

    Returns:
        The array's shape.

    Raises:
        OSError: If the file is missing or unreadable.
        ValueError: If the file does not start with a valid `.npy` header,
            or the data is shorter than the header promises.

    Example:

    >>> npy_shape("features_017.npy")  # doctest: +SKIP
    (412, 40)
    """
    fmt = np.lib.format
    with open(path, "rb") as f:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:  # (3, 0): utf-8 header; let numpy parse it through a memory map
            return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        if dtype.hasobject:
            raise ValueError("the .npy file holds Python objects, which are never unpickled")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        data_start = f.tell()
        available = f.seek(0, 2) - data_start
        if available < expected:
            raise ValueError(
                f"the .npy file is truncated: its header promises {expected} bytes of data for shape {shape}, "
                f"but only {available} follow"
            )
    return tuple(shape)
