"""`SeparatedSequence`: batches of images and labels stored one file per sample, a preset of `FieldSequence`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from keras_sepseq import images
from keras_sepseq.checks import check_paths, check_targets
from keras_sepseq.field_sequence import FieldSequence
from keras_sepseq.fields import ArrayField, Field, ImageField
from keras_sepseq.masks import MaskField, looks_like_images, read_mask
from keras_sepseq.npy import load_npy
from keras_sepseq.options import DEFAULTS, IMAGE_DEFAULTS, MASK_DEFAULTS, resolve_options
from keras_sepseq.paths import PathArray, PathLike
from keras_sepseq.sequence import BaseSequence

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from keras_sepseq.options import ImageOptions, MaskOptions, SequenceOptions

    class SeparatedOptions(ImageOptions, MaskOptions, SequenceOptions, total=False):
        """`SeparatedSequence`'s keywords: how images are decoded, and the options every sequence shares."""


__all__ = ["SeparatedSequence"]

Labels = Sequence[PathLike] | PathArray | np.ndarray | Sequence[Any] | None


def _first(values: Any) -> Any:
    try:
        return values[0]
    except (TypeError, IndexError, KeyError):
        return values


def _image_setting(name: str, doc: str) -> Any:
    """A read-only attribute of `SeparatedSequence` that reads setting `name` of its image field."""
    return property(lambda self: getattr(self.image_field, name), doc=doc)


class SeparatedSequence(FieldSequence):
    """Batches of images and labels, each sample in its own files, loaded on demand.

    `seq[i]` returns `(x, y)`: `x` of shape `(B, H, W, C)`, `y` the labels
    stacked with their own dtype and shape (scalar labels give `(B,)`).
    Only one batch is in memory at a time, whatever the dataset size; the
    paths themselves are held in a compact `PathArray`, so the object
    pickles cheaply to process workers. Construction touches no file.

    It is a preset of `FieldSequence`: one `ImageField` input and one
    `ArrayField` target. To read other formats, subclass and override
    `load_input(path)` and/or `load_target(path)`; workers call them too. `load_input` results in
    `uint8`/`uint16` are treated as pixels and scaled for a float `dtype`;
    other dtypes are cast as they are.

    Args:
        image_paths: One path per sample (`str` or `os.PathLike`).
        label_paths: One `.npy` path per sample; or one label image per
            sample (`.png`, `.tif`, ...), read as a segmentation mask
            (`MaskField`: class ids, resized like the image by nearest
            neighbour only, batched as `(B, H, W)`); or an in-memory array
            (or list) holding one label per image; or `None` for inputs
            only (`seq[i]` is then `(x,)`, e.g. for `predict`).
        batch_size: Samples per batch. Defaults to 32.
        class_weight: With masks, `{class_id: weight}`: batches gain a
            `(B, H, W)` `sample_weight` (see `FieldSequence`). Defaults to
            `None`.
        **options: How images are decoded (`image_size`, `color_mode`,
            `interpolation`, `antialias`, `dtype`, `max_image_pixels`,
            documented on `ImageField`), and the options every sequence
            shares (`shuffle`, `seed`, `drop_remainder`, `workers`,
            `use_multiprocessing`, `max_queue_size`, `cache`,
            `cache_budget`, `on_error`, `max_errors`, `retries`,
            `num_shards`, `shard_index`, `shard`, documented on
            `BaseSequence`); with masks also `num_classes`,
            `ignore_index` and `palette` (documented on `MaskField`). Here `cache="memory"` keeps each
            decoded, resized image (in its source precision, e.g. uint8)
            and its label; a cache directory needs `image_size`. A sample
            is decoded again when its image file's size or modification
            time changes; changing any decode setting selects another
            cache.

    Raises:
        ValueError: At construction, for empty inputs, lengths that differ,
            or an argument out of range; the message names the argument and
            the value received.
        TypeError: If a path is neither `str` nor `os.PathLike`.
        SampleError: From `seq[i]`, when a file is missing or cannot be
            decoded; the message holds the path and the sample index.
        ShapeMismatchError: From `seq[i]`, when images (or labels) of one
            batch differ in shape; the message names two files.

    Example:

    >>> images, labels = pair_files("data/image_*.png", "data/label_*.npy")  # doctest: +SKIP
    >>> seq = SeparatedSequence(images, labels, batch_size=32, image_size=(128, 128), workers=2)  # doctest: +SKIP
    >>> model.fit(seq, epochs=10)  # doctest: +SKIP
    """

    single_field_names = ("image", "label")

    def __init__(
        self,
        image_paths: Sequence[PathLike] | PathArray,
        label_paths: Labels,
        batch_size: int = 32,
        *,
        class_weight: Mapping[int, float] | None = None,
        **options: Unpack[SeparatedOptions],
    ) -> None:
        paths = check_paths("image_paths", image_paths)
        label_files, in_memory = check_targets(
            label_paths, name="label_paths", inputs_name="image_paths", num_samples=len(paths)
        )
        custom_input = type(self).load_input is not SeparatedSequence.load_input
        custom_target = type(self).load_target is not SeparatedSequence.load_target
        allowed = {**IMAGE_DEFAULTS, **MASK_DEFAULTS, **DEFAULTS}
        resolve_options(dict(options), owner=type(self).__name__, defaults=allowed)
        rest: dict[str, Any] = dict(options)
        decoding = {name: rest.pop(name) for name in IMAGE_DEFAULTS if name in rest}
        masking = {name: rest.pop(name) for name in MASK_DEFAULTS if name in rest}
        image = ImageField(paths, loader=self.load_input if custom_input else None, **decoding)
        target: Field | None = None
        hook = self.load_target if custom_target else None
        if label_files is not None and looks_like_images(label_files):  # label images: segmentation masks
            target = MaskField(label_files, image_size=image.image_size, loader=hook, **masking)
        elif masking or class_weight is not None:
            raise ValueError(
                f"{', '.join(f'`{k}`' for k in [*masking, *(['class_weight'] if class_weight else [])])} "
                "apply to masks: label files that are images (.png, .tif, ...). "
                f"Received label_paths of another kind: {_first(label_paths)!r}"
            )
        elif label_files is not None:
            target = ArrayField(label_files, kind="label", loader=hook)
        elif in_memory is not None:
            target = ArrayField(in_memory, kind="label")
        cache = rest.get("cache")
        if cache not in (None, "memory") and image.image_size is None and not custom_input:
            raise ValueError(
                "cache=<directory> needs `image_size`, so that every cached image has one shape. "
                f"Received: cache={cache!r}, image_size=None"
            )
        super().__init__(image, target, batch_size, class_weight=class_weight, **rest)

    # The settings, as attributes (read from the fields).

    @property
    def image_field(self) -> ImageField:
        """The `ImageField` of the images."""
        return self.fields[0][1]  # type: ignore[return-value]

    @property
    def target_field(self) -> Field | None:
        """The labels' field: an `ArrayField`, a `MaskField` for label images, or `None`."""
        return self.fields[1][1] if len(self.fields) > 1 else None

    @property
    def image_paths(self) -> PathArray:
        """One image path per sample."""
        return self.image_field.paths  # type: ignore[return-value]

    @property
    def label_paths(self) -> PathArray | None:
        """One label file per sample, or `None` (labels in memory, or none)."""
        target = self.fields[1][1] if len(self.fields) > 1 else None
        return None if target is None else target.paths

    @property
    def labels(self) -> np.ndarray | None:
        """The labels in memory, or `None` (label files, or none)."""
        target = self.fields[1][1] if len(self.fields) > 1 else None
        return None if target is None else target.values

    # The image settings, read from the image field.
    image_size = _image_setting("image_size", "`(height, width)` images are resized to, or `None`.")
    color_mode = _image_setting("color_mode", '`"rgb"`, `"rgba"` or `"grayscale"`.')
    interpolation = _image_setting("interpolation", "The resize filter.")
    antialias = _image_setting("antialias", "Whether the resize filter widens when shrinking.")
    dtype = _image_setting("dtype", "The batch dtype of the images.")
    max_image_pixels = _image_setting("max_image_pixels", "The decompression-bomb limit, or `None` for Pillow's.")

    def field_label(self, name: str, field: Field) -> str:
        """`"image"` or `"label"`, as messages name them."""
        return field.kind

    def load_item(self, index: int) -> tuple:
        """`(pixels, label)`; `label` is `None` for labels in memory or none. Runs in workers too."""
        items = super().load_item(index)
        return items if len(items) == 2 else items + (None,)

    def load_input(self, path: str) -> np.ndarray:
        """Loads one sample's input. Override for other formats.

        The default decodes an image file with `decode_image` (OpenCV for
        PNG and JPEG, Pillow and imageio for the rest) and applies
        `color_mode`, `image_size`, `interpolation` and `antialias`.

        Args:
            path: The sample's input file.

        Returns:
            An array; every sample of a batch must have the same shape.

        Raises:
            Exception: Anything; the caller wraps it in a `SampleError`
                naming the file.

        Example:

        >>> class NpyVolumes(SeparatedSequence):
        ...     def load_input(self, path):
        ...         return np.load(path, allow_pickle=False)[..., None]
        """
        return self.image_field.decode(path)

    def load_target(self, path: str) -> np.ndarray:
        """Loads one sample's label. Override for other formats.

        The default reads a `.npy` file with `allow_pickle=False`, or, when
        the label files are images, the mask's values as stored
        (`read_mask`); the mask field then maps, resizes and checks what
        this returns.

        Args:
            path: The sample's label file.

        Returns:
            An array; every label of a batch must have the same shape.

        Raises:
            Exception: Anything; the caller wraps it in a `SampleError`
                naming the file.

        Example:

        >>> class TextLabels(SeparatedSequence):
        ...     def load_target(self, path):
        ...         return np.array(int(open(path).read()))
        """
        return read_mask(path) if isinstance(self.target_field, MaskField) else load_npy(path)

    def fixed_sample_shape(self) -> bool:
        """Whether every sample has one shape: true with `image_size` set."""
        return self.image_size is not None

    def cache_key(self) -> tuple:
        """Settings and paths that decide what a directory cache holds."""
        labels = (
            self.label_paths if self.label_paths is not None else ("in memory" if self.labels is not None else None,)
        )
        return (
            BaseSequence.cache_key(self)
            + (  # the key of the first release: caches written then stay found
                self.color_mode,
                self.image_size,
                self.interpolation,
                self.antialias,
                self.image_paths,
                labels,
                ("decoder revision", images.DECODER_REVISION),
            )
            + (self.target_field.cache_key() if isinstance(self.target_field, MaskField) else ())
        )

    def __repr__(self) -> str:
        labels = "None" if self.labels is None and self.label_paths is None else f"{self.num_samples} labels"
        return (
            f"{type(self).__name__}({self.num_samples} images, {labels}, batch_size={self.batch_size}, "
            f"image_size={self.image_size}, color_mode={self.color_mode!r}, dtype={self.dtype!r}, "
            f"shuffle={self.shuffle}, seed={self.seed})"
        )
