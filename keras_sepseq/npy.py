"""Reading `.npy` files safely: whole arrays without unpickling, shapes from the header alone.

numpy parses a `.npy` header with `ast.literal_eval`, and CPython before
3.11.8 and 3.12.1 can fail that parse spuriously when several threads
parse at once ("SystemError: AST constructor recursion depth mismatch",
python/cpython#106905). Worker threads load many `.npy` files at once, so
headers are parsed here under one lock, and the data, the bulk of the work,
is read outside it.

The parse is also most of the cost of reading a small label file (about
20 of 22 microseconds, all of it holding the GIL), and the files of one
dataset nearly always share their header bytes, so parsed headers are kept
by their exact bytes: a file whose header matches one seen before skips the
parse.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from keras_sepseq.storage import is_url, open_file

_HEADER_LOCK = threading.Lock()
_MAGIC = b"\x93NUMPY"
_PARSED: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}  # header bytes -> parse; under _HEADER_LOCK
_MAX_PARSED = 4096  # distinct headers kept (one per shape and dtype); later ones are parsed each time


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """`(shape, fortran_order, dtype)` of an open `.npy` file positioned at its start; `None` for version 3.

    Leaves `f` at the first byte of the data.
    """
    start = f.read(12)  # magic (6), version (2), header length (2 in version 1, 4 in version 2)
    if start.startswith(b"PK"):
        raise ValueError("expected a .npy array, got an .npz archive")
    if start[:6] != _MAGIC:
        raise ValueError(f"not a .npy file: it starts with {start[:6]!r}, not the .npy magic string")
    if start[6:8] == b"\x01\x00" and len(start) == 12:
        length, header_start = int.from_bytes(start[8:10], "little"), 10
    elif start[6:8] == b"\x02\x00" and len(start) == 12:
        length, header_start = int.from_bytes(start[8:12], "little"), 12
    else:
        length = None  # version 3, an unknown version, or too short: numpy decides below
    if length is not None:
        f.seek(header_start)
        key = start[:header_start] + f.read(length)
        parsed = _PARSED.get(key)  # a dict read is atomic; only writes take the lock
        if parsed is not None:
            return parsed
    f.seek(0)
    fmt = np.lib.format
    version = fmt.read_magic(f)
    with _HEADER_LOCK:
        try:
            if version == (1, 0):
                parsed = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                parsed = fmt.read_array_header_2_0(f)
            else:
                return None
        except (ValueError, SyntaxError) as e:
            raise ValueError(f"the .npy header cannot be read: {e}") from e
        if length is not None and len(_PARSED) < _MAX_PARSED:
            _PARSED[key] = parsed
    return parsed


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
    with open_file(path) as f:  # a local file, or a URL's bytes
        header = _read_header(f)
        if header is None:  # version 3.0 (utf-8 header): let numpy read it, under the lock
            f.seek(0)
            with _HEADER_LOCK:
                return np.load(f, allow_pickle=False)
        shape, fortran_order, dtype = header
        if dtype.hasobject:
            raise ValueError("the .npy file holds Python objects (pickled data), which are never unpickled")
        size = math.prod(shape) * dtype.itemsize
        buffer = np.empty(size, dtype=np.uint8)
        read = f.readinto(buffer)  # type: ignore[attr-defined]  # a file or BytesIO; an ndarray is a writable buffer
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
    with open_file(path) as f:
        header = _read_header(f)
        if header is None:
            with _HEADER_LOCK:
                if not is_url(path):
                    return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
                f.seek(0)
                return tuple(np.load(f, allow_pickle=False).shape)
        shape, _, dtype = header
        if dtype.hasobject:
            raise ValueError("the .npy file holds Python objects (pickled data), which are never unpickled")
        expected = math.prod(shape) * dtype.itemsize
        data_start = f.tell()
        available = f.seek(0, 2) - data_start
    if available < expected:
        raise ValueError(
            f"the .npy file is truncated: its header promises {expected} bytes of data for shape {shape}, "
            f"but only {available} follow"
        )
    return tuple(shape)
