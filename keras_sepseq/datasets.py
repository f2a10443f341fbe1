"""Datasets described by folders or tables, and splits that cannot leak.

- `from_directory`: one subfolder per class, like
  `keras.utils.image_dataset_from_directory`, as a `SeparatedSequence`.
- `from_table`: a CSV file or a DataFrame with a path column per field and
  label columns, as a `FieldSequence`.
- `split_by_key`: train, validation and test sets that are disjoint, cover
  the data, keep groups together (one patient in one split), and assign
  each sample by a stable hash of its key, so adding files later never moves
  an existing sample to another split.

Example:

>>> train = from_directory("flowers", image_size=(128, 128), split="train")  # doctest: +SKIP
>>> train.class_names  # doctest: +SKIP
['daisy', 'rose', 'tulip']
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from keras_sepseq.fields import ArrayField, Field, ImageField
from keras_sepseq.listing import glob_files, join_path
from keras_sepseq.masks import IMAGE_EXTENSIONS, MaskField
from keras_sepseq.options import IMAGE_DEFAULTS, MASK_DEFAULTS
from keras_sepseq.storage import display_url, is_url, read_url

__all__ = ["from_directory", "from_table", "split_by_key"]

DEFAULT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}


def _unit_hash(value: Any, salt: str) -> float:
    """A number in [0, 1) that depends only on `value` and `salt`: the same on every machine and Python."""
    digest = hashlib.sha256(f"{salt}\x1f{value}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _check_fractions(fractions: Any) -> dict[str, float]:
    if not isinstance(fractions, Mapping) or not fractions:
        raise ValueError(f"`fractions` must be a dict of split name to fraction. Received: fractions={fractions!r}")
    out = {}
    for name, value in fractions.items():
        if not isinstance(name, str) or isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"`fractions` must map names to fractions >= 0. Received: {name!r}: {value!r}")
        out[name] = float(value)
    if abs(sum(out.values()) - 1.0) > 1e-9:
        raise ValueError(f"`fractions` must add up to 1. Received: {fractions!r} (sum {sum(out.values()):.6g})")
    return out


def split_by_key(
    keys: Sequence[Any],
    *,
    fractions: Mapping[str, float] | None = None,
    groups: Sequence[Any] | None = None,
    stratify: Sequence[Any] | None = None,
    salt: str = "keras_sepseq",
) -> dict[str, np.ndarray]:
    """Splits samples into named sets that are disjoint, cover the data and keep groups together.

    Each sample (or, with `groups`, each group) goes to a split by a hash
    of its key (or group) and `salt`, compared with the cumulative
    `fractions`: the assignment depends on nothing else, so it is the same
    on every machine, and adding samples later never moves an existing one
    to another split. Proportions are those of the fractions on average.

    With `stratify`, each class is split in the stated proportions exactly
    (rounded): the class's samples (or groups) are ranked by their hash and
    cut at the fractions. That exactness costs the stability above: adding
    samples to a class can move a few of its samples (at most as many as
    were added) across a boundary.

    Args:
        keys: One key per sample (a relative path, an id): the same sample
            must keep the same key.
        fractions: `{split name: fraction}`, adding up to 1. Defaults to
            `{"train": 0.8, "validation": 0.1, "test": 0.1}`.
        groups: One group id per sample (a patient id): every sample of a
            group lands in the same split. Defaults to `None`.
        stratify: One class per sample (with `groups`, the class of a group
            is that of its first sample). Defaults to `None`.
        salt: Changes the assignment as a whole. Defaults to
            `"keras_sepseq"`.

    Returns:
        `{split name: sorted int64 array of sample indices}`.

    Raises:
        ValueError: If `fractions` do not add up to 1, lengths differ, or
            keys repeat.

    Example:

    >>> parts = split_by_key([f"img_{i}.png" for i in range(100)], fractions={"train": 0.8, "test": 0.2})
    >>> sorted(parts), sum(len(p) for p in parts.values())
    (['test', 'train'], 100)
    """
    shares = _check_fractions(DEFAULT_FRACTIONS if fractions is None else fractions)
    keys = list(keys)
    n = len(keys)
    if len(set(keys)) != n:
        seen: set = set()
        repeated = next(k for k in keys if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"`keys` must be unique, one per sample. Received the key {repeated!r} more than once.")
    for name, values in (("groups", groups), ("stratify", stratify)):
        if values is not None and len(values) != n:
            raise ValueError(f"`{name}` must hold one value per sample: {len(values)} for {n} keys.")
    if groups is None:
        unit_ids: list[Any] = keys
        unit_of = np.arange(n)
    else:  # a group is known by its text, on every machine
        unique, unit_of = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
        unit_ids = unique.tolist()
    hashes = np.array([_unit_hash(u, salt) for u in unit_ids])
    names = list(shares)
    bounds = np.cumsum([shares[k] for k in names])
    if stratify is None:
        choice = np.minimum(np.searchsorted(bounds, hashes, side="right"), len(names) - 1)
    else:
        labels = np.asarray([str(v) for v in stratify])
        first = np.zeros(len(unit_ids), dtype=np.int64)
        first[unit_of[::-1]] = np.arange(n)[::-1]  # each unit's first sample
        unit_class = labels[first]
        choice = np.zeros(len(unit_ids), dtype=np.int64)
        for cls in np.unique(unit_class):
            members = np.flatnonzero(unit_class == cls)
            ranked = members[np.argsort(hashes[members], kind="stable")]
            cuts = np.rint(bounds * len(ranked)).astype(np.int64)
            choice[ranked] = np.searchsorted(cuts, np.arange(len(ranked)), side="right").clip(max=len(names) - 1)
    sample_choice = choice[unit_of]
    return {name: np.flatnonzero(sample_choice == k).astype(np.int64) for k, name in enumerate(names)}


def from_directory(
    root: str | os.PathLike,
    *,
    batch_size: int = 32,
    class_names: Sequence[str] | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    split: str | None = None,
    fractions: Mapping[str, float] | None = None,
    salt: str = "keras_sepseq",
    **options: Any,
) -> Any:
    """A `SeparatedSequence` over `root/<class name>/<image>`: one subfolder per class, as Keras lays it out.

    Class ids follow the sorted subfolder names (or `class_names`), as
    `keras.utils.image_dataset_from_directory` numbers them; labels are
    held in memory. With `split`, only that split's samples are served,
    assigned by `split_by_key` on each file's path relative to `root`, so
    the splits are disjoint and adding images later never moves one.

    Args:
        root: The folder of class subfolders.
        batch_size: Samples per batch. Defaults to 32.
        class_names: The subfolders to use, in class-id order; defaults to
            all of them, sorted.
        extensions: The file extensions that are images. Defaults to the
            common image extensions.
        split: A split name of `fractions` to serve, or `None` (the
            default) for every sample.
        fractions: As for `split_by_key`. Defaults to 80/10/10 train,
            validation, test.
        salt: As for `split_by_key`.
        **options: Anything `SeparatedSequence` takes (`image_size`,
            `workers`, `cache`, ...).

    Returns:
        A `SeparatedSequence` with `class_names` and `file_paths`
        attributes.

    Raises:
        ValueError: If `root` is not a folder, a class folder is missing, a
            split name is unknown, or no image is found.

    Example:

    >>> train = from_directory("flowers", image_size=(128, 128), split="train", workers=2)  # doctest: +SKIP
    >>> val = from_directory("flowers", image_size=(128, 128), split="validation", shuffle=False)  # doctest: +SKIP
    """
    from keras_sepseq.separated import SeparatedSequence

    root = os.fspath(root)
    by_class = _class_folders(root, options.get("storage_options"))
    found = sorted(by_class)
    names = list(class_names) if class_names is not None else found
    missing = [c for c in names if c not in found]
    if missing:
        raise ValueError(f"`class_names` lists folders that are not in {root!r}: {missing}. Found: {found}")
    wanted = tuple(e.lower() for e in extensions)
    paths, labels, relative = [], [], []
    for class_id, name in enumerate(names):
        for rel, path in by_class[name]:
            if path.lower().endswith(wanted):
                paths.append(path)
                relative.append(rel)
                labels.append(class_id)
    if not paths:
        raise ValueError(f"no image files ({', '.join(wanted)}) in the class folders of {root!r}: {names}")
    chosen = np.arange(len(paths))
    if split is not None:
        parts = split_by_key(relative, fractions=fractions, salt=salt)
        if split not in parts:
            raise ValueError(f"`split` must be one of {sorted(parts)}. Received: split={split!r}")
        chosen = parts[split]
        if not len(chosen):
            raise ValueError(f"the split {split!r} holds no sample of the {len(paths)} found; adjust `fractions`.")
    seq = SeparatedSequence(
        [paths[i] for i in chosen], np.asarray(labels, dtype=np.int64)[chosen], batch_size, **options
    )
    seq.class_names = names
    seq.file_paths = [paths[i] for i in chosen]
    return seq


def _class_folders(root: str, storage_options: Any) -> dict[str, list[tuple[str, str]]]:
    """`{class folder: [(path relative to root, path), ...]}` of every file below root's subfolders, sorted.

    A URL root (`s3://bucket/flowers`) is listed once, recursively, in pages.
    """
    classes: dict[str, list[tuple[str, str]]] = {}
    if is_url(root):
        top = root.rstrip("/") + "/"
        for path in glob_files(top + "**", storage_options):
            rel = path[len(top) :] if path.startswith(top) else path.rsplit("/", 1)[-1]
            if "/" in rel:
                classes.setdefault(rel.split("/", 1)[0], []).append((rel, path))
        if not classes:
            raise ValueError(f"`root` must be a folder of class subfolders. Received: root={display_url(root)!r}")
        return classes
    if not os.path.isdir(root):
        raise ValueError(f"`root` must be a folder of class subfolders. Received: root={root!r}")
    for name in sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))):
        found = classes.setdefault(name, [])
        for folder, _, files in sorted(os.walk(os.path.join(root, name))):
            for file in sorted(files):
                path = os.path.join(folder, file)
                found.append((os.path.relpath(path, root), path))
    return classes


def _read_table(table: Any, storage_options: Any = None) -> tuple[dict[str, list], str | None]:
    """Columns of a CSV file (a path or URL) or of a DataFrame-like object, and the folder relative paths start from."""
    if isinstance(table, (str, os.PathLike)):
        path = os.fspath(table)
        try:
            if is_url(path):
                text, folder = read_url(path, storage_options).decode("utf-8-sig"), path.rsplit("/", 1)[0]
            else:
                with open(path, newline="", encoding="utf-8-sig") as f:
                    text, folder = f.read(), os.path.dirname(os.path.abspath(path))
        except OSError as e:
            raise ValueError(f"`table` cannot be read: {e}") from e
        rows = list(csv.DictReader(io.StringIO(text)))
        if not rows:
            raise ValueError(f"`table` {display_url(path)!r} holds no rows.")
        return {name: [row[name] for row in rows] for name in rows[0]}, folder
    columns = getattr(table, "columns", None)
    if columns is None:
        raise TypeError(f"`table` must be a CSV path or a DataFrame. Received: {type(table).__name__}")
    return {str(name): list(table[name]) for name in columns}, None


def _column_field(name: str, values: list, root: str | None, as_target: bool, settings: dict[str, Any]) -> Field:
    sample = str(values[0]) if values else ""
    ext = os.path.splitext(sample)[1].lower()
    if ext in IMAGE_EXTENSIONS or ext == ".npy":
        paths = [str(v) if root is None else join_path(root, str(v)) for v in values]
        if ext == ".npy":
            return ArrayField(paths, kind=name)
        if as_target:
            return MaskField(paths, **{k: v for k, v in settings.items() if k in MASK_DEFAULTS})
        return ImageField(paths, **{k: v for k, v in settings.items() if k in IMAGE_DEFAULTS})
    try:
        numbers = np.asarray([float(v) for v in values])
    except (TypeError, ValueError):
        raise ValueError(
            f"column {name!r} holds neither paths (image or .npy files) nor numbers (first value: {values[0]!r})"
        ) from None
    if np.all(numbers == np.round(numbers)):
        return ArrayField(numbers.astype(np.int64), kind=name)
    return ArrayField(numbers.astype(np.float32), kind=name)


def from_table(
    table: Any,
    inputs: str | Sequence[str],
    targets: str | Sequence[str] | None = None,
    *,
    batch_size: int = 32,
    root: str | os.PathLike | None = None,
    **options: Any,
) -> Any:
    """A `FieldSequence` over a table: a CSV file or a DataFrame with a path column per field and label columns.

    Each named column becomes a field of that name: image paths an
    `ImageField` (a `MaskField` among the targets), `.npy` paths an
    `ArrayField` of the files, numbers an `ArrayField` in memory (int64 for
    whole numbers, else float32). Relative paths are resolved against
    `root`, by default the CSV file's folder. One column gives a plain
    array in the batch, a list of columns a dict by column name.

    Args:
        table: A CSV path, or a `pandas.DataFrame` (anything with
            `columns` and column access).
        inputs: The input column, or a list of them.
        targets: The target column(s), or `None`.
        batch_size: Samples per batch. Defaults to 32.
        root: The folder relative paths start from. Defaults to the CSV
            file's folder (the current folder for a DataFrame).
        **options: Image options for image columns (`image_size`,
            `color_mode`, ...), mask options for mask columns
            (`num_classes`, `ignore_index`, `palette`), and anything
            `FieldSequence` takes (`workers`, `cache`, `class_weight`...).

    Returns:
        A `FieldSequence`.

    Raises:
        ValueError: If a column is missing, or holds neither paths nor
            numbers.

    Example:

    >>> seq = from_table("patients.csv", ["t1", "t2"], "mask", image_size=(128, 128), num_classes=4)  # doctest: +SKIP
    """
    from keras_sepseq.field_sequence import FieldSequence

    columns, folder = _read_table(table, options.get("storage_options"))
    base = os.fspath(root) if root is not None else folder
    settings = {k: options.pop(k) for k in list(options) if k in IMAGE_DEFAULTS or k in MASK_DEFAULTS}

    def fields(argument: str, names: str | Sequence[str] | None, as_target: bool) -> Any:
        if names is None:
            return None
        listed = [names] if isinstance(names, str) else list(names)
        for name in listed:
            if name not in columns:
                raise ValueError(
                    f"`{argument}` names a column that is not in the table: {name!r}. Columns: {list(columns)}"
                )
        made = {name: _column_field(name, columns[name], base, as_target, settings) for name in listed}
        return made[listed[0]] if isinstance(names, str) else made

    return FieldSequence(fields("inputs", inputs, False), fields("targets", targets, True), batch_size, **options)
