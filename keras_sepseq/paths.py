"""A compact, cheaply picklable array of file paths.

A list of a million Python strings costs about 100 MB of RAM and pickles
slowly; process workers started with spawn or forkserver receive a pickled
copy of the dataset every epoch. `PathArray` keeps the paths as one UTF-8
byte buffer plus an offsets array (the layout Arrow uses for strings), with
the common directory prefix stored once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Union, overload

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]


class PathArray(Sequence):
    """An immutable sequence of paths stored in two numpy arrays.

    Indexing returns `str`. Construction only manipulates strings: it never
    opens or stats a file.

    Args:
        paths: Any iterable of `str` or `os.PathLike` objects, or another
            `PathArray` (returned unchanged by `PathArray.coerce`).
        name: The argument name used in error messages. Defaults to
            `"paths"`.

    Raises:
        TypeError: If an element is neither a `str` nor an `os.PathLike`.
        ValueError: If an element is an empty string.

    Example:

    >>> paths = PathArray(["data/img_0.png", "data/img_1.png"])
    >>> len(paths), paths[1]
    (2, 'data/img_1.png')
    """

    __slots__ = ("_prefix", "_buffer", "_offsets")
    _prefix: str
    _buffer: np.ndarray
    _offsets: np.ndarray

    def __init__(self, paths: Iterable[PathLike], *, name: str = "paths") -> None:
        if isinstance(paths, PathArray):
            self._prefix = paths._prefix
            self._buffer = paths._buffer
            self._offsets = paths._offsets
            return
        strings = [_as_str(p, name, i) for i, p in enumerate(paths)]
        prefix = os.path.commonprefix(strings) if strings else ""
        # Cut the shared prefix at a separator so that it reads as a folder.
        cut = max(prefix.rfind("/"), prefix.rfind(os.sep)) + 1
        prefix = prefix[:cut]
        encoded = [s[cut:].encode("utf-8", "surrogateescape") for s in strings]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        total = int(lengths.sum())
        offsets = np.zeros(len(encoded) + 1, dtype=np.int32 if total < 2**31 else np.int64)
        np.cumsum(lengths, out=offsets[1:], dtype=offsets.dtype)
        self._prefix = prefix
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self._offsets = offsets

    @classmethod
    def coerce(cls, paths: Iterable[PathLike] | PathArray, *, name: str = "paths") -> PathArray:
        """Returns `paths` as a `PathArray`, without copying one.

        Args:
            paths: A `PathArray` or an iterable of paths.
            name: The argument name used in error messages.

        Returns:
            A `PathArray` holding the same paths in the same order.

        Example:

        >>> PathArray.coerce(["a.png"])[0]
        'a.png'
        """
        return paths if isinstance(paths, cls) else cls(paths, name=name)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"path index {index} is out of range for {n} paths")
        start, stop = self._offsets[i], self._offsets[i + 1]
        return self._prefix + self._buffer[start:stop].tobytes().decode("utf-8", "surrogateescape")

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        shown = ", ".join(repr(p) for p in self[:3])
        more = ", ..." if len(self) > 3 else ""
        return f"PathArray([{shown}{more}], n={len(self)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PathArray):
            return NotImplemented
        return list(self) == list(other)

    def __getstate__(self):
        return (self._prefix, self._buffer, self._offsets)

    def __setstate__(self, state) -> None:
        self._prefix, self._buffer, self._offsets = state

    @property
    def nbytes(self) -> int:
        """Bytes held by the two arrays (the prefix is not counted)."""
        return int(self._buffer.nbytes + self._offsets.nbytes)


def is_path_sequence(values: object) -> bool:
    """Tells whether `values` looks like a sequence of file paths.

    Args:
        values: Anything passed as `labels` or `label_paths`.

    Returns:
        `True` for a `PathArray`, a numpy string array, or a non-empty list
        or tuple whose first element is a `str` or `os.PathLike`.

    Example:

    >>> is_path_sequence(["a.npy"]), is_path_sequence([0, 1])
    (True, False)
    """
    if isinstance(values, PathArray):
        return True
    if isinstance(values, np.ndarray):
        if values.dtype.kind in "US":
            return True
        return values.dtype == object and values.size > 0 and _is_path(values.flat[0])
    if isinstance(values, (list, tuple)) and values:
        return _is_path(values[0])
    return False


def _is_path(value: object) -> bool:
    return isinstance(value, (str, os.PathLike))


def _as_str(value: object, name: str, index: int) -> str:
    if isinstance(value, np.str_):
        value = str(value)
    if isinstance(value, bytes):
        raise TypeError(
            f"`{name}` must hold str or os.PathLike paths. "
            f"Received: {name}[{index}]={value!r} of type bytes; decode it first."
        )
    try:
        text = os.fspath(value)  # type: ignore[call-overload]  # anything else raises TypeError, handled below
    except TypeError:
        raise TypeError(
            f"`{name}` must hold str or os.PathLike paths. "
            f"Received: {name}[{index}]={value!r} of type {type(value).__name__}."
        ) from None
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text:
        raise ValueError(f"`{name}` must not hold empty paths. Received: {name}[{index}]=''.")
    return text
