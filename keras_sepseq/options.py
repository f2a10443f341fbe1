"""The keyword options every keras_sepseq sequence shares, declared once.

Every sequence class takes these as flat keywords (`workers=2`,
`cache="memory"`, ...) through `**options: Unpack[SequenceOptions]`, which
type checkers and IDEs read as keywords; `DEFAULTS` gives each its default,
and `resolve_options` fills them in and names any keyword that is not one
of them. What each option does is documented once, on `BaseSequence`.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, TypedDict

from keras_sepseq.cache import DEFAULT_BUDGET

__all__ = [
    "DEFAULTS",
    "IMAGE_DEFAULTS",
    "MASK_DEFAULTS",
    "VOLUME_DEFAULTS",
    "ImageOptions",
    "MaskOptions",
    "SequenceOptions",
    "VolumeOptions",
    "resolve_options",
]


class SequenceOptions(TypedDict, total=False):
    """The options every sequence takes; see `BaseSequence` for what each does and `DEFAULTS` for defaults."""

    shuffle: bool
    seed: int | None
    drop_remainder: bool
    workers: int
    use_multiprocessing: bool
    max_queue_size: int
    cache: str | os.PathLike | None
    cache_budget: int | str
    on_error: str
    max_errors: int | float | None
    retries: int
    num_shards: int
    shard_index: int
    shard: str | None
    augment: Any
    storage_options: dict[str, Any] | None
    reads_in_flight: int


DEFAULTS: dict[str, Any] = {
    "shuffle": True,
    "seed": None,
    "drop_remainder": False,
    "workers": 1,
    "use_multiprocessing": False,
    "max_queue_size": 10,
    "cache": None,
    "cache_budget": DEFAULT_BUDGET,
    "on_error": "raise",
    "max_errors": None,
    "retries": 0,
    "num_shards": 1,
    "shard_index": 0,
    "shard": None,
    "augment": None,
    "storage_options": None,
    "reads_in_flight": 128,
}
"""The default of each of `SequenceOptions`."""


class ImageOptions(TypedDict, total=False):
    """How images are decoded and batched: the keywords of `ImageField` and `SeparatedSequence`.

    See `ImageField` for what each does and `IMAGE_DEFAULTS` for defaults.
    """

    image_size: tuple[int, int] | None
    color_mode: str
    interpolation: str
    antialias: bool
    dtype: str
    max_image_pixels: int | None


IMAGE_DEFAULTS: dict[str, Any] = {
    "image_size": None,
    "color_mode": "rgb",
    "interpolation": "bilinear",
    "antialias": False,
    "dtype": "float32",
    "max_image_pixels": None,
}
"""The default of each of `ImageOptions`."""


class MaskOptions(TypedDict, total=False):
    """How mask values are checked and mapped: the keywords of `MaskField` and of `SeparatedSequence` with masks.

    See `keras_sepseq.masks.MaskField` for what each does.
    """

    num_classes: int | None
    ignore_index: int | None
    palette: Any


MASK_DEFAULTS: dict[str, Any] = {"num_classes": None, "ignore_index": None, "palette": None}
"""The default of each of `MaskOptions`."""


class VolumeOptions(TypedDict, total=False):
    """Where the voxels of a volume go: the geometry keywords shared by `VolumeField` and `LabelVolumeField`.

    A scan and its label volume given the same values come out on the same
    voxel grid. See `keras_sepseq.volume_fields.VolumeField`.
    """

    orient: bool
    spacing: tuple[float, float, float] | None
    shape: tuple[int, int, int] | None
    npz_key: str | None
    uneven_slices: str


VOLUME_DEFAULTS: dict[str, Any] = {
    "orient": True, "spacing": None, "shape": None, "npz_key": None, "uneven_slices": "error",
}  # fmt: skip
"""The default of each of `VolumeOptions`."""


def resolve_options(
    options: dict[str, Any], *, owner: str = "BaseSequence", defaults: dict[str, Any] = DEFAULTS
) -> dict[str, Any]:
    """`options` with every default filled in; refuses keywords that are not options.

    Args:
        options: The keywords received.
        owner: The class name, for the message.
        defaults: The options allowed, with their defaults. Defaults to
            `DEFAULTS`, the options every sequence shares.

    Returns:
        A dict with one entry per option.

    Raises:
        TypeError: Naming each unknown keyword, with the closest option.

    Example:

    >>> resolve_options({"workers": 2})["workers"], resolve_options({})["shuffle"]
    (2, True)
    """
    unknown = [name for name in options if name not in defaults]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(defaults), n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(f"{owner}() got unexpected keyword argument(s): {', '.join(hints)}.")
    return {**defaults, **options}
