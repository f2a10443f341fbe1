"""`VolumeStore`: decoded volumes kept for their patches, in memory and optionally on local disk.

A volume yields several patches an epoch, in neighbouring batches (see
`PatchSequence`); the store keeps the volumes of those batches decoded in
memory (least recently used first out, up to a count), so each is decoded
once per epoch in a process, however many threads ask for it at once. With
a directory, decoded volumes are also written there as `.npy` files and
read back memory-mapped: every epoch after the first reads patches
straight from them, in every process, and memory holds only the pages
touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from keras_sepseq.cache import format_bytes
from keras_sepseq.errors import CacheBudgetError
from keras_sepseq.storage import display_url, is_url

__all__ = ["VolumeStore"]

Entry = tuple[tuple, np.ndarray | None]  # the volume's items (one per field) and its foreground voxels


def _in_memory(entry: Entry) -> int:
    """Bytes an entry holds in memory: its arrays, not its memory maps (those are pages of a file)."""
    items, foreground = entry
    arrays = [a for a in (*items, foreground) if isinstance(a, np.ndarray) and not isinstance(a, np.memmap)]
    return sum(a.nbytes for a in arrays if a.base is None or not isinstance(a.base, np.memmap))


_SIGNING = re.compile(
    r"x-amz-.*|x-goog-.*|signature|expires|awsaccesskeyid|googleaccessid|token|"
    r"sv|ss|srt|sp|se|st|spr|sig|sr|sdd|skoid|sktid|skt|ske|sks|skv|saoid|suoid|scid",
    re.IGNORECASE,
)
"""Query parameters that sign a URL (AWS, Google, Azure SAS) rather than name the object."""


def _url_identity(url: str) -> list[str]:
    """What names the object at `url`, for a cache record: the URL without user, password or query, and a
    digest of the query parameters that are not signatures (a URL signed again names the same object)."""
    query = urllib.parse.urlsplit(url).query
    kept = sorted((k, v) for k, v in urllib.parse.parse_qsl(query, keep_blank_values=True) if not _SIGNING.fullmatch(k))
    return [display_url(url), hashlib.sha256(repr(kept).encode()).hexdigest()[:16]]


class VolumeStore:
    """Decoded volumes by volume index: loaded once, shared by the threads of a process.

    Args:
        capacity: How many volumes to keep in memory (`None`: all of them).
        directory: A folder for memory-mapped copies, or `None`.
        sources: Columns of files (one column per field backed by files,
            one file per volume) whose sizes and modification times make a
            copy on disk stale (with `directory`).
        budget: The most bytes the entries kept in memory may hold
            (`cache_budget` with `cache="memory"`), or `None`.

    Example:

    >>> store = VolumeStore(capacity=8)
    >>> items, foreground = store.get(3, lambda: ((np.zeros((4, 4, 4)),), None))
    """

    def __init__(
        self,
        capacity: int | None,
        directory: str | None = None,
        sources: Sequence[Sequence[str]] = (),
        budget: int | None = None,
    ) -> None:
        self.capacity = capacity
        self.directory = directory
        self.sources = sources
        self.budget = budget
        self._bytes = 0  # of the entries kept in memory (memory maps count nothing)
        self._entries: OrderedDict[int, Entry] = OrderedDict()
        self._loading: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self.decodes = 0
        self.hits = 0

    def get(self, index: int, load: Callable[[], Entry]) -> Entry:
        """The entry of volume `index`, calling `load()` only if no thread has it or is loading it.

        Args:
            index: The volume index.
            load: Decodes the volume: returns `(items, foreground)`.

        Returns:
            `(items, foreground)`.

        Raises:
            Exception: Whatever `load` raised (not kept: the next call tries again).
        """
        while True:
            with self._lock:
                entry = self._entries.get(index)
                if entry is not None:
                    self._entries.move_to_end(index)
                    self.hits += 1
                    return entry
                waiting = self._loading.get(index)
                if waiting is None:
                    self._loading[index] = threading.Event()
                    break
            waiting.wait()
        try:
            entry = self._from_disk(index)
            if entry is None:
                entry = load()
                self.decodes += 1
                entry = self._to_disk(index, entry)
            size = _in_memory(entry)
            with self._lock:
                if self.budget is not None and self._bytes + size > self.budget:
                    raise CacheBudgetError(
                        f"cache='memory' would hold {format_bytes(self._bytes + size)} with volume {index} "
                        f"({len(self._entries) + 1} volumes), over cache_budget={format_bytes(self.budget)}. Raise "
                        "`cache_budget`, cache to a folder with cache='<directory>' (memory-mapped), or keep "
                        "fewer volumes with volumes_in_memory."
                    )
                self._entries[index] = entry
                self._bytes += size
                while self.capacity is not None and len(self._entries) > self.capacity:
                    _, dropped = self._entries.popitem(last=False)
                    self._bytes -= _in_memory(dropped)
            return entry
        finally:
            with self._lock:
                self._loading.pop(index).set()

    def _paths(self, index: int) -> tuple[str, str]:
        directory = os.path.join(str(self.directory), f"{index}")
        return directory, directory + ".json"

    def _stamp(self, index: int) -> list:
        """Every file of the volume with its size and modification time (URLs by name and digest: not stat-ed)."""
        stamp: list = []
        for column in self.sources:
            source = column[index]
            if is_url(source):
                stamp.append(_url_identity(source))
            else:
                stat = os.stat(source)
                stamp.append([source, stat.st_size, stat.st_mtime_ns])
        return stamp

    def _from_disk(self, index: int) -> Entry | None:
        if self.directory is None:
            return None
        folder, record = self._paths(index)
        try:
            with open(record) as f:
                saved = json.load(f)
            if saved["stamp"] != self._stamp(index):
                return None
            items = tuple(
                None if kind == "none" else np.load(os.path.join(folder, f"{k}.npy"), mmap_mode="r")
                for k, kind in enumerate(saved["items"])
            )
            foreground = np.load(os.path.join(folder, "fg.npy"), mmap_mode="r") if saved["foreground"] else None
        except (OSError, ValueError, KeyError):
            return None
        return items, foreground

    def _to_disk(self, index: int, entry: Entry) -> Entry:
        if self.directory is None:
            return entry
        items, foreground = entry
        if not all(item is None or isinstance(item, np.ndarray) for item in items):
            return entry
        folder, record = self._paths(index)
        os.makedirs(folder, exist_ok=True)
        suffix = f".{os.getpid()}.{threading.get_ident()}.tmp"
        for k, item in enumerate(items):
            if item is not None:
                _save(os.path.join(folder, f"{k}.npy"), item, suffix)
        if foreground is not None:
            _save(os.path.join(folder, "fg.npy"), foreground, suffix)
        saved: dict[str, Any] = {
            "stamp": self._stamp(index),
            "items": ["none" if item is None else "array" for item in items],
            "foreground": foreground is not None,
        }
        with open(record + suffix, "w") as f:
            json.dump(saved, f)
        os.replace(record + suffix, record)  # last: a record only ever names complete files
        return self._from_disk(index) or entry

    def stats(self) -> dict[str, int]:
        """`{"decodes": ..., "hits": ..., "in_memory": ..., "bytes_in_memory": ...}` in this process so far."""
        with self._lock:
            return {
                "decodes": self.decodes, "hits": self.hits, "in_memory": len(self._entries),
                "bytes_in_memory": self._bytes,
            }  # fmt: skip

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_entries"], state["_loading"], state["_lock"] = OrderedDict(), {}, None
        state["decodes"] = state["hits"] = 0
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _save(path: str, array: np.ndarray, suffix: str) -> None:
    with open(path + suffix, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
    os.replace(path + suffix, path)
