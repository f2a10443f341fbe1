"""Caches of loaded samples: decode each sample once, serve later epochs from memory or disk.

A cache holds what `load_item` returned for a sample (for images: the
decoded, resized pixels in their source precision, and the label). It lives
in the process that assembles batches, so it fills and serves the same way
with thread and process workers.

- `MemoryCache` keeps samples in RAM within a stated byte budget: when
  every sample has one shape (e.g. `image_size` set) it preallocates one
  array for all of them, checks the budget before allocating, and refuses
  with a clear message when the dataset would not fit; otherwise it counts
  bytes as samples arrive and refuses at the first sample over the budget.
- `DirectoryCache` keeps samples in memory-mapped `.npy` files in a folder,
  so a cache survives restarts. A cache folder is specific to the dataset's
  files and decode settings (a fingerprint names it), and each sample is
  reloaded when its source file's size or modification time changed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import threading
from typing import Any

import numpy as np

from keras_sepseq.errors import CacheBudgetError
from keras_sepseq.storage import is_url

DEFAULT_BUDGET = 2 * 1024**3
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_bytes(value: int | str, *, name: str = "cache_budget") -> int:
    """Parses a byte count: an int, or a string such as `"512MB"` or `"4 GiB"`.

    Args:
        value: The count.
        name: The argument name for messages.

    Returns:
        The number of bytes.

    Raises:
        ValueError: If `value` is not a positive size.

    Example:

    >>> parse_bytes("1.5GB"), parse_bytes("2GiB"), parse_bytes(1000)
    (1500000000, 2147483648, 1000)
    """
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be a number of bytes or a size such as '4GB'. Received: {name}={value!r}")
    if isinstance(value, (int, np.integer)) and value > 0:
        return int(value)
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", value)
        if match and match.group(2).upper() in _UNITS and float(match.group(1)) > 0:
            return int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    raise ValueError(f"`{name}` must be a number of bytes or a size such as '4GB'. Received: {name}={value!r}")


def format_bytes(count: float) -> str:
    """Formats a byte count for messages: `1.5 GB`.

    Args:
        count: Bytes.

    Returns:
        The count with a decimal unit.

    Example:

    >>> format_bytes(1_500_000_000)
    '1.5 GB'
    """
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000:
            return f"{count:.3g} {unit}"
        count /= 1000
    return f"{count:.3g} TB"


def _item_arrays(item: Any) -> tuple:
    return item if isinstance(item, tuple) else (item,)


class MemoryCache:
    """Keeps loaded samples in RAM, within `budget` bytes.

    Args:
        num_samples: How many samples the dataset has.
        budget: The most bytes the cache may hold.
        fixed_shape: Every sample has one shape: preallocate one array per
            item slot at the first sample, after checking the whole
            dataset fits the budget. Otherwise samples are kept one by one.

    Example:

    >>> cache = MemoryCache(100, budget=10**6, fixed_shape=True)
    >>> cache.put(3, (np.zeros((2, 2), np.uint8), None)); cache.get(3)[0].shape
    (2, 2)
    """

    def __init__(self, num_samples: int, *, budget: int = DEFAULT_BUDGET, fixed_shape: bool = False) -> None:
        self.num_samples = num_samples
        self.budget = budget
        self.fixed_shape = fixed_shape
        self.slabs: list[np.ndarray | None] | None = None  # one array per item slot, when shapes are fixed
        self.filled = np.zeros(num_samples, dtype=bool)
        self.loose: dict[int, tuple] = {}
        self.nbytes = 0

    def filled_mask(self, indices: np.ndarray) -> np.ndarray:
        """Which of `indices` are in the cache."""
        return self.filled[indices]

    def slabs_for(self, indices: np.ndarray) -> tuple | None:
        """The cache's own arrays, one per item slot (row `i` holds sample `i`), if all of `indices` are in them.

        Reading the rows of a batch straight from these (rather than
        gathering them into a new array first) saves a copy per batch.

        Args:
            indices: Sample indices.

        Returns:
            A tuple of arrays (or `None` slots) not to be written to, or
            `None` if any sample is missing or kept apart.
        """
        if self.slabs is None or self.loose or not self.filled[indices].all():
            return None
        return tuple(self.slabs)

    def get(self, index: int) -> tuple | None:
        """The cached item of sample `index`, or `None`."""
        if not self.filled[index]:
            return None
        if index in self.loose:
            return self.loose[index]
        return tuple(None if slab is None else slab[index] for slab in self.slabs or ())

    def put(self, index: int, item: Any) -> None:
        """Stores sample `index`'s item.

        Raises:
            ValueError: If the cache would exceed its budget; the message
                gives the sizes and what to do.
        """
        arrays = _item_arrays(item)
        if self.fixed_shape and self.slabs is None:
            total = self.num_samples * sum(a.nbytes for a in arrays if a is not None)
            self._check(total, arrays)
            self.slabs = [None if a is None else np.empty((self.num_samples,) + a.shape, a.dtype) for a in arrays]
            self.nbytes = total
        if self.slabs is not None and self._fits(arrays):
            for slab, array in zip(self.slabs, arrays):
                if slab is not None:
                    slab[index] = array
        else:
            size = sum(a.nbytes for a in arrays if a is not None)
            self._check(self.nbytes + size, arrays, estimate=False)
            self.loose[index] = tuple(None if a is None else np.array(a, copy=True) for a in arrays)
            self.nbytes += size
        self.filled[index] = True

    def _fits(self, arrays: tuple) -> bool:
        return all(
            (slab is None and a is None)
            or (slab is not None and a is not None and slab.shape[1:] == a.shape and slab.dtype == a.dtype)
            for slab, a in zip(self.slabs or (), arrays)
        )

    def _check(self, total: int, arrays: tuple, estimate: bool = True) -> None:
        if total > self.budget:
            shapes = ", ".join(f"{a.shape} {a.dtype}" for a in arrays if a is not None)
            what = (
                f"needs about {format_bytes(total)} for {self.num_samples:,} samples of {shapes}"
                if estimate
                else (f"reached {format_bytes(total)} after samples of {shapes}")
            )
            raise CacheBudgetError(
                f"cache='memory' {what}, over cache_budget={format_bytes(self.budget)}. Raise `cache_budget`, "
                "set `image_size` smaller, or cache to a folder with cache='<directory>'."
            )

    def flush(self) -> None:
        """Nothing to write for a memory cache."""


class DirectoryCache:
    """Keeps loaded samples in memory-mapped `.npy` files under `directory`.

    Samples must have one shape (set `image_size`). The folder
    `directory/<fingerprint>` holds one `.npy` per item slot, plus
    `state.npy` recording, per sample, whether it is filled and the size and
    modification time of its source file when it was. Sources in object
    storage (URLs) are not checked again, so that later epochs make no
    request: clear the folder when objects change in place.

    Args:
        directory: The cache's root folder (created if missing).
        fingerprint: Identifies the dataset's files and decode settings.
        sources: The source path of each sample (stat-ed to detect changes).

    Example:

    >>> cache = DirectoryCache("/tmp/cache", fingerprint="ab12", sources=paths)  # doctest: +SKIP
    """

    _STATE = np.dtype([("filled", "u1"), ("size", "<i8"), ("mtime_ns", "<i8")])

    def __init__(self, directory: str, *, fingerprint: str, sources) -> None:
        top = os.fspath(directory)
        self.root = os.path.join(top, fingerprint)
        self.sources = sources
        self.num_samples = len(sources)
        for folder in (top, self.root):
            if not os.path.lexists(folder):
                os.makedirs(folder, mode=0o700, exist_ok=True)
            _check_folder(folder)
        state_path = self._file("state.npy")
        self.state = _created(
            state_path,
            lambda path: np.lib.format.open_memmap(path, mode="w+", dtype=self._STATE, shape=(self.num_samples,)),
        )
        if self.state.shape != (self.num_samples,) or self.state.dtype != self._STATE:
            raise ValueError(
                f"the cache file {state_path} holds {self.state.shape} {self.state.dtype} records, not one per sample "
                f"of {self.num_samples}: remove the folder {self.root}"
            )
        self.slabs: list[np.ndarray | None] | None = self._open_slabs()
        self._views: tuple | None = None  # the slabs as plain arrays, made on first use

    def _file(self, name: str) -> str:
        """The path of a file of this cache, refusing one that is a symbolic link (it could point anywhere)."""
        path = os.path.join(self.root, name)
        if os.path.islink(path):
            raise ValueError(f"the cache file {path} is a symbolic link: keras_sepseq writes no file through one")
        return path

    def _open_slabs(self):
        layout_path = self._file("layout.json")
        if not os.path.exists(layout_path):
            return None
        with open(layout_path) as f:
            layout = json.load(f)
        return [
            None if slot is None else np.load(self._file(f"slot{k}.npy"), mmap_mode="r+")
            for k, slot in enumerate(layout)
        ]

    def _stat(self, index: int) -> tuple[int, int]:
        source = self.sources[index]
        if is_url(source):  # an object in storage is not asked about again: later epochs make no request
            return -1, -1
        st = os.stat(source)
        return st.st_size, st.st_mtime_ns

    def filled_mask(self, indices: np.ndarray) -> np.ndarray:
        """Which of `indices` were cached (their source files are checked only on `get`)."""
        return self.state["filled"][indices].astype(bool)

    def slabs_for(self, indices: np.ndarray) -> tuple | None:
        """The memory-mapped arrays, one per item slot, if all of `indices` are cached and unchanged.

        Args:
            indices: Sample indices.

        Returns:
            A tuple of arrays (or `None` slots) not to be written to, or
            `None`.
        """
        if self.slabs is None:
            return None
        records = self.state[indices]
        if not records["filled"].all():
            return None
        try:
            stats = np.array([self._stat(int(i)) for i in indices], dtype=np.int64).reshape(-1, 2)
        except OSError:
            return None
        if not (np.array_equal(stats[:, 0], records["size"]) and np.array_equal(stats[:, 1], records["mtime_ns"])):
            return None
        if self._views is None:  # plain arrays over the maps: reading a row of a np.memmap costs more Python
            self._views = tuple(None if slab is None else slab.view(np.ndarray) for slab in self.slabs)
        return self._views

    def get(self, index: int) -> tuple | None:
        """The cached item of sample `index`, or `None` if absent or its source file changed."""
        record = self.state[index]
        if not record["filled"] or self.slabs is None:
            return None
        try:
            if self._stat(index) != (int(record["size"]), int(record["mtime_ns"])):
                return None
        except OSError:
            return None  # let the loader report the missing file
        return tuple(None if slab is None else np.array(slab[index]) for slab in self.slabs)

    def put(self, index: int, item: Any) -> None:
        """Stores sample `index`'s item and its source file's size and mtime.

        Raises:
            ValueError: If the item's shape differs from the cached ones.
        """
        arrays = _item_arrays(item)
        slabs = self.slabs if self.slabs is not None else self._create_slabs(arrays)
        for k, (slab, a) in enumerate(zip(slabs, arrays)):
            if slab is not None and a is not None and slab.shape[1:] == a.shape and slab.dtype == a.dtype:
                slab[index] = a
            elif slab is not None or a is not None:
                raise ValueError(
                    f"cache=<directory> needs every sample to have one shape: sample {index} "
                    f"({self.sources[index]!r}) has {None if a is None else (a.shape, str(a.dtype))} in slot {k}, "
                    f"the cache holds {None if slab is None else (slab.shape[1:], str(slab.dtype))}. Set `image_size`."
                )
        size, mtime = self._stat(index)
        self.state[index] = (1, size, mtime)

    def _create_slabs(self, arrays: tuple) -> list[np.ndarray | None]:
        """Makes the slot files and then `layout.json`, each published whole: the first process to publish a
        file wins, the others open it (no process ever truncates what another wrote)."""
        layout = []
        for k, a in enumerate(arrays):
            layout.append(None if a is None else {"shape": list(a.shape), "dtype": a.dtype.str})
            if a is not None:
                shape = (self.num_samples,) + a.shape
                _created(
                    self._file(f"slot{k}.npy"),
                    lambda path, a=a, shape=shape: np.lib.format.open_memmap(
                        path, mode="w+", dtype=a.dtype, shape=shape
                    ),
                )
        _created(self._file("layout.json"), lambda path: _write_json(path, layout))
        self.slabs, self._views = self._open_slabs(), None
        return self.slabs or []

    def flush(self) -> None:
        """Writes the memory maps to disk."""
        for array in [self.state] + [s for s in (self.slabs or []) if s is not None]:
            array.flush()


def _check_folder(folder: str) -> None:
    """Refuses a cache folder that is a symbolic link or that another user owns (it could be made to hold
    what they choose, or to overwrite their files)."""
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode):
        raise ValueError(f"the cache folder {folder} is a symbolic link: give the folder it points to, if it is yours")
    if not stat.S_ISDIR(info.st_mode):
        raise ValueError(f"the cache folder {folder} is not a folder")
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise PermissionError(
            f"the cache folder {folder} belongs to user id {info.st_uid}, not to this user ({os.geteuid()}): "
            "a cache must be in a folder of your own"
        )


def _reserve(path: str) -> None:
    """Gives the (sparse) file at `path` its blocks now, so that a full disk is an error naming the cache here,
    not a SIGBUS later, when a memory-mapped write finds no room."""
    if not hasattr(os, "posix_fallocate"):
        return
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            folder = os.path.dirname(path)
            raise OSError(
                e.errno,
                f"the cache folder {folder} has no room for {format_bytes(size)} more (disk full or over quota)",
            ) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve: written as it goes
            raise
    finally:
        os.close(fd)


def _write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f)


def _created(path: str, make: Any) -> Any:
    """The file at `path` opened for use, made by `make(temporary path)` and published under `path` only if
    no other process has published it first (a hard link fails if `path` exists; no file is ever half-made
    under its name). Returns the memory map (or `None` for other files) of whichever file won."""
    if not os.path.exists(path):
        temporary = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        try:
            made = make(temporary)
            if made is not None:
                made.flush()
                del made
                _reserve(temporary)
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass  # another process published it first: use theirs
            except OSError:  # a file system without hard links: rename, where no other process got there first
                if not os.path.exists(path):
                    os.replace(temporary, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
    if path.endswith(".npy"):
        return np.load(path, mmap_mode="r+")
    return None


def fingerprint(*parts: Any) -> str:
    """A short hash of the settings and paths that decide what a cache holds.

    Args:
        *parts: Strings, numbers, or iterables of paths.

    Returns:
        16 hex digits.

    Example:

    >>> fingerprint("rgb", (128, 128), ["a.png"]) == fingerprint("rgb", (128, 128), ["a.png"])
    True
    """
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, (str, int, float, tuple, type(None))):
            digest.update(repr(part).encode())
        else:
            for path in part:
                digest.update(os.fsencode(path) + b"\0")
        digest.update(b"\x1f")
    return digest.hexdigest()[:16]
