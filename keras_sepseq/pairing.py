"""Pairing input files with label files by a key taken from their names."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, overload

from keras_sepseq.listing import glob_files, matching, read_manifest
from keras_sepseq.storage import display_url, is_url

Key = Callable[[str], Hashable] | str | None

_LAST_DIGITS = re.compile(r"(\d+)(?!.*\d)")
_SHOWN = 5


def default_key(path: str) -> Hashable:
    """The default pairing key: the last run of digits in the file stem, as an int.

    Falls back to the whole stem when it holds no digit. Only the file name
    counts, not its folder; the stem drops the last extension only.

    Args:
        path: A file path.

    Returns:
        An `int` (`image_001.png` gives 1) or the stem (`cat.png` gives
        `"cat"`).

    Example:

    >>> default_key("data/image_001.png"), default_key("scan_17.png"), default_key("cat.png")
    (1, 17, 'cat')
    """
    stem = os.path.splitext(os.path.basename(path))[0]
    match = _LAST_DIGITS.search(stem)
    return int(match.group(1)) if match else stem


@dataclass
class Matching:
    """How the files of two patterns pair up: what `match_files` found.

    Attributes:
        image_paths: Paired input files, in sorted key order.
        label_paths: Their label files, position by position.
        orphan_images: Input files with no label file of the same key.
        orphan_labels: Label files with no input file of the same key.
        duplicate_images: Keys that several input files share, with them.
        duplicate_labels: Keys that several label files share, with them.

    Example:

    >>> matching = match_files("data/image_*.png", "data/label_*.npy")  # doctest: +SKIP
    >>> len(matching.image_paths), matching.orphan_labels  # doctest: +SKIP
    (998, ['data/label_0999.npy'])
    """

    image_paths: list[str]
    label_paths: list[str]
    orphan_images: list[str] = field(default_factory=list)
    orphan_labels: list[str] = field(default_factory=list)
    duplicate_images: dict = field(default_factory=dict)
    duplicate_labels: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every file found exactly one partner."""
        return not (self.orphan_images or self.orphan_labels or self.duplicate_images or self.duplicate_labels)


def match_files(
    image_pattern: str | os.PathLike,
    label_pattern: str | os.PathLike,
    *,
    key: Key = None,
    storage_options: dict[str, Any] | None = None,
    manifest: str | os.PathLike | None = None,
) -> Matching:
    """Globs images and labels and pairs them by key, reporting (not raising) orphans and duplicates.

    Files that share a key on one side are left out of the pairs and listed
    as duplicates. `pair_files` is the strict version.

    Args:
        image_pattern: A glob pattern for the input files.
        label_pattern: A glob pattern for the label files.
        key: As for `pair_files`.
        storage_options: As for `pair_files`.
        manifest: As for `pair_files`.

    Returns:
        A `Matching`.

    Raises:
        ValueError: If a pattern matches no file, or `key` is malformed or
            a regular-expression key does not match a file name.

    Example:

    >>> matching = match_files("data/image_*.png", "data/label_*.npy")  # doctest: +SKIP
    >>> matching.ok, len(matching.image_paths), matching.orphan_labels  # doctest: +SKIP
    (False, 998, ['data/label_1002.npy'])
    """
    key_fn = _key_function(key)
    listed = _listing(manifest, storage_options)
    images, duplicate_images = _index("image_pattern", image_pattern, key_fn, listed, storage_options)
    labels, duplicate_labels = _index("label_pattern", label_pattern, key_fn, listed, storage_options)
    paired = sorted((k for k in images if k in labels), key=_sort_key)
    return Matching(
        image_paths=[images[k] for k in paired],
        label_paths=[labels[k] for k in paired],
        orphan_images=sorted(images[k] for k in images if k not in labels and k not in duplicate_labels),
        orphan_labels=sorted(labels[k] for k in labels if k not in images and k not in duplicate_images),
        duplicate_images=duplicate_images,
        duplicate_labels=duplicate_labels,
    )


@overload
def pair_files(
    *,
    key: Key = None,
    storage_options: dict[str, Any] | None = None,
    manifest: str | os.PathLike | None = None,
    **patterns: str | os.PathLike,
) -> dict[str, list[str]]: ...


@overload
def pair_files(
    image_pattern: str | os.PathLike,
    label_pattern: str | os.PathLike,
    *,
    key: Key = None,
    storage_options: dict[str, Any] | None = None,
    manifest: str | os.PathLike | None = None,
) -> tuple[list[str], list[str]]: ...


def pair_files(
    image_pattern: str | os.PathLike | None = None,
    label_pattern: str | os.PathLike | None = None,
    *,
    key: Key = None,
    storage_options: dict[str, Any] | None = None,
    manifest: str | os.PathLike | None = None,
    **patterns: str | os.PathLike,
) -> Any:
    """Globs images and labels (or any number of named patterns) and pairs them by a key taken from each file name.

    `image_001.png` pairs with `label_001.npy`, and `scan_17.png` with
    `17.npy` (default key: the last run of digits in the stem, compared as
    an integer, else the whole stem). Patterns accept `**` for recursion.
    With named patterns instead of the two positional ones, any number of
    files per sample pair up: `pair_files(t1="scans/*_t1.png",
    t2="scans/*_t2.png", mask="masks/*.png")` returns
    `{"t1": [...], "t2": [...], "mask": [...]}`, ready for fields of those
    names.

    Patterns may be URLs (`"s3://bucket/images/*.png"`): each is listed
    with one paginated listing of its prefix, never a request per file; or
    not at all with `manifest`.

    Args:
        image_pattern: A glob pattern for the input files.
        label_pattern: A glob pattern for the label files.
        key: How to compute a file's key: `None` (the default,
            `default_key`); a callable taking the path; or a regular
            expression searched in the file name, whose first group (or
            whole match) is the key.
        storage_options: Storage options (fsspec-style or obstore keys) for URL patterns (credentials,
            `client_kwargs={"endpoint_url": ...}`), as sequences take them.
        manifest: A text file with one path per line, or a CSV file whose
            first column holds paths (local or a URL; relative paths start
            from its folder): the patterns are matched against its paths
            instead of listing files or buckets.
        **patterns: Named glob patterns, instead of `image_pattern` and
            `label_pattern` (at least two).

    Returns:
        `(image_paths, label_paths)`: two lists of equal length, paired
        position by position, in sorted key order (numbers before names);
        with named patterns, a dict of such lists by name.

    Raises:
        ValueError: If a pattern matches no file; if files on either side
            have no partner; if several files on one side share a key; if a
            regular-expression key does not match a file name. The message
            gives the counts and the first few files.

    Example:

    >>> images, labels = pair_files("data/image_*.png", "data/label_*.npy")  # doctest: +SKIP
    >>> images[0], labels[0]  # doctest: +SKIP
    ('data/image_000.png', 'data/label_000.npy')
    >>> files = pair_files(t1="scans/*_t1.png", t2="scans/*_t2.png", mask="masks/*.png")  # doctest: +SKIP
    >>> sorted(files), len(files["mask"])  # doctest: +SKIP
    (['mask', 't1', 't2'], 120)
    """
    if patterns:
        if image_pattern is not None or label_pattern is not None:
            raise ValueError(
                "pair_files takes either two patterns (image_pattern, label_pattern) or named patterns, not both. "
                f"Received positional patterns and {sorted(patterns)}"
            )
        return _pair_named(patterns, key, _listing(manifest, storage_options), storage_options)
    if image_pattern is None or label_pattern is None:
        raise ValueError("pair_files needs `image_pattern` and `label_pattern`, or at least two named patterns.")
    m = match_files(image_pattern, label_pattern, key=key, storage_options=storage_options, manifest=manifest)
    for name, clashes in (("image_pattern", m.duplicate_images), ("label_pattern", m.duplicate_labels)):
        _refuse_duplicates(name, clashes)
    problems = []
    total_images, total_labels = len(m.image_paths) + len(m.orphan_images), len(m.label_paths) + len(m.orphan_labels)
    for side, orphans, total, partner in (
        ("image", m.orphan_images, total_images, "label"),
        ("label", m.orphan_labels, total_labels, "image"),
    ):
        if orphans:
            problems.append(
                f"{len(orphans)} of {total} {side} files have no {partner} file with the same key "
                f"(first: {_show(orphans)})"
            )
    if problems:
        raise ValueError("pair_files found unpaired files: " + "; ".join(problems) + ".")
    return m.image_paths, m.label_paths


def _refuse_duplicates(name: str, clashes: dict) -> None:
    """Raises, naming pattern `name` and its first keys shared by several files, if there are any."""
    if clashes:
        shown = "; ".join(
            f"key {k!r}: {_show(v)}" for k, v in sorted(clashes.items(), key=lambda kv: _sort_key(kv[0]))[:_SHOWN]
        )
        raise ValueError(
            f"`{name}` matched several files with the same key ({len(clashes)} duplicate keys, "
            f"first: {shown}). Pass `key=` to tell them apart."
        )


def _pair_named(
    patterns: dict[str, str | os.PathLike], key: Key, listed: list[str] | None, storage_options: dict[str, Any] | None
) -> dict[str, list[str]]:
    """`pair_files` with named patterns: every name's files by key, orphans and duplicates named by pattern."""
    if len(patterns) < 2:
        raise ValueError(f"pair_files needs at least two named patterns. Received: {sorted(patterns)}")
    key_fn = _key_function(key)
    indexed = {name: _index(name, pattern, key_fn, listed, storage_options) for name, pattern in patterns.items()}
    for name, (_, clashes) in indexed.items():
        _refuse_duplicates(name, clashes)
    keys = [set(files) for files, _ in indexed.values()]
    common = set.intersection(*keys)
    problems = []
    for name, (files, _) in indexed.items():
        orphans = sorted(files[k] for k in files if k not in common)
        if orphans:
            problems.append(
                f"{len(orphans)} of {len(files)} `{name}` files lack a partner in another pattern (first: {_show(orphans)})"
            )
    if problems:
        raise ValueError("pair_files found unpaired files: " + "; ".join(problems) + ".")
    ordered = sorted(common, key=_sort_key)
    return {name: [files[k] for k in ordered] for name, (files, _) in indexed.items()}


def _key_function(key: Key) -> Callable[[str], Hashable]:
    if key is None:
        return default_key
    if isinstance(key, str):
        try:
            regex = re.compile(key)
        except re.error as e:
            raise ValueError(f"`key` is not a valid regular expression ({e}). Received: key={key!r}") from None

        def regex_key(path: str) -> Hashable:
            match = regex.search(os.path.basename(path))
            if match is None:
                raise ValueError(f"`key` regular expression {key!r} does not match the file name of {path!r}")
            return match.group(1) if regex.groups else match.group(0)

        return regex_key
    if callable(key):
        return key
    raise ValueError(f"`key` must be None, a callable or a regular expression string. Received: key={key!r}")


def _listing(manifest: str | os.PathLike | None, storage_options: dict[str, Any] | None) -> list[str] | None:
    """The paths `manifest` lists (absolute, for matching), or `None` to list files and buckets."""
    if manifest is None:
        return None
    return [p if is_url(p) else os.path.abspath(p) for p in read_manifest(manifest, storage_options)]


def _index(
    name: str,
    pattern: str | os.PathLike,
    key_fn: Callable[[str], Hashable],
    listed: list[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[dict, dict]:
    pattern = os.fspath(pattern)
    if listed is None:
        files = glob_files(pattern, storage_options)
    else:
        files = matching(pattern if is_url(pattern) else os.path.abspath(pattern), listed)
    if not files:
        where = "" if listed is None else " in the manifest"
        raise ValueError(f"`{name}` matched no files{where}. Received: {name}={display_url(pattern)!r}")
    by_key: dict[Hashable, list[str]] = {}
    for path in files:
        by_key.setdefault(key_fn(path), []).append(path)
    clashes = {k: v for k, v in by_key.items() if len(v) > 1}
    return {k: v[0] for k, v in by_key.items() if len(v) == 1}, clashes


def _sort_key(key: Hashable) -> tuple:
    if isinstance(key, int) and not isinstance(key, bool):
        return (0, key, "")
    return (1, 0, str(key))


def _show(paths: list[str]) -> str:
    shown = ", ".join(repr(p) for p in paths[:_SHOWN])
    return shown + (f", ... {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else "")
