"""Segmentation masks: label images of class ids, read as they are stored, resized by nearest neighbour only.

A mask pixel holds a class id, so nothing here ever interpolates, scales or
converts a value: palette PNGs give their palette indices (the class ids
of datasets such as Pascal VOC), 8- and 16-bit grayscale files their
values, and colour-coded masks (an RGB colour per class) are mapped
through a palette the user gives. `MaskField` is the field that batches
them as `(B, H, W)` integers.

Example:

>>> mask = read_mask("masks/0001.png")  # doctest: +SKIP
>>> resize_nearest(mask, (128, 128)).dtype == mask.dtype  # doctest: +SKIP
True
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from PIL import Image, UnidentifiedImageError

from keras_sepseq.checks import check_int, check_paths
from keras_sepseq.fields import Field, check_image_size
from keras_sepseq.images import read_image
from keras_sepseq.options import MASK_DEFAULTS, resolve_options
from keras_sepseq.paths import PathArray
from keras_sepseq.stacking import stack_arrays
from keras_sepseq.storage import open_file

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from keras_sepseq.options import MaskOptions

__all__ = ["MaskField", "check_class_options", "check_classes", "map_palette", "read_mask", "resize_nearest"]

Palette = Mapping[tuple[int, ...], int] | Sequence[Sequence[int]]

_INDEXED_MODES = ("P", "L", "I;16", "I;16B", "I;16L", "I", "1")


def read_mask(path: str) -> np.ndarray:
    """Reads a label image's values as stored: palette indices, gray levels, or colours.

    Palette images give their indices (not the palette's colours), 8- and
    16-bit grayscale their values, `1`-bit images 0 and 1, and colour
    images their `(H, W, 3)` or `(H, W, 4)` colours (map those with
    `map_palette`). Nothing is scaled or interpolated.

    Args:
        path: The mask file (PNG, TIFF, BMP, GIF, or anything imageio reads).

    Returns:
        `(H, W)` integers, or `(H, W, C)` colours.

    Raises:
        OSError: If the file is missing or unreadable.
        ValueError: If it is not an image.

    Example:

    >>> read_mask("masks/0001.png").shape  # doctest: +SKIP
    (512, 512)
    """
    with open_file(path) as f:  # a local file, or a URL's bytes
        data = f.read()
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return read_image(path, data)  # imageio's other plugins, with read_image's messages
    with image:
        if image.mode in _INDEXED_MODES:
            values = np.asarray(image)
            if image.mode == "1":
                return values.astype(np.uint8)
            if image.mode.startswith("I;16"):
                return values.astype(np.uint16)
            return values
        if image.mode in ("PA", "LA"):  # indices or gray levels with transparency: the values, not the alpha
            return np.asarray(image.getchannel(0))
        return np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))


def map_palette(colours: np.ndarray, palette: Palette) -> np.ndarray:
    """Maps a colour-coded mask `(H, W, 3 or 4)` to class ids through `palette`.

    Args:
        colours: The mask's colours; an alpha channel is ignored.
        palette: `{(r, g, b): class_id}`, or a list of `(r, g, b)` colours
            where the position is the class id.

    Returns:
        `(H, W)` class ids, `int32`.

    Raises:
        ValueError: Naming the colours that are not in `palette`.

    Example:

    >>> colours = np.array([[[0, 0, 0], [255, 0, 0]]], np.uint8)
    >>> map_palette(colours, [(0, 0, 0), (255, 0, 0)]).tolist()
    [[0, 1]]
    """
    if colours.ndim != 3 or colours.shape[2] < 3:
        raise ValueError(
            f"a palette maps colour masks of shape (H, W, 3 or 4); this mask has shape {colours.shape}. "
            "Leave `palette` unset for masks that hold class ids."
        )
    table = _palette_table(palette)
    rgb = colours[..., :3].astype(np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    keys = np.fromiter(table, dtype=np.int64, count=len(table))
    ids = np.fromiter(table.values(), dtype=np.int32, count=len(table))
    order = np.argsort(keys)
    keys, ids = keys[order], ids[order]
    where = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
    known = keys[where] == codes
    if not known.all():
        unknown = np.unique(codes[~known])[:5]
        shown = ", ".join(str(((c >> 16) & 255, (c >> 8) & 255, c & 255)) for c in unknown.tolist())
        raise ValueError(f"the mask holds colours that are not in `palette`: {shown}")
    return ids[where]


def _palette_table(palette: Any) -> dict[int, int]:
    items: Any = palette.items() if isinstance(palette, Mapping) else enumerate(palette)
    table: dict[int, int] = {}
    for a, b in items:
        colour, class_id = (a, b) if isinstance(palette, Mapping) else (b, a)  # type: Any, Any
        r, g, bl = (int(v) for v in tuple(colour)[:3])
        table[(r << 16) | (g << 8) | bl] = int(class_id)
    return table


def resize_nearest(mask: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Resizes a mask by nearest neighbour, sampling at pixel centres: every output value is one of the input's.

    Pixel centres line up with those of a bilinear image resize (half-pixel
    centres, as `tf.image.resize` and OpenCV use), so a mask stays on its
    image.

    Args:
        mask: `(H, W)` or `(H, W, C)`, any dtype.
        size: `(height, width)`.

    Returns:
        The resized mask, same dtype.

    Example:

    >>> resize_nearest(np.array([[1, 2], [3, 4]]), (4, 4)).tolist()[0]
    [1, 1, 2, 2]
    """
    height, width = int(size[0]), int(size[1])
    if mask.shape[:2] == (height, width):
        return mask
    rows = np.minimum(((np.arange(height) + 0.5) * mask.shape[0] / height).astype(np.int64), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * mask.shape[1] / width).astype(np.int64), mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


def check_class_options(num_classes: Any, ignore_index: Any) -> tuple[int | None, int | None]:
    """Checks the `num_classes` and `ignore_index` arguments of a mask or label-volume field.

    Args:
        num_classes: `None` or an integer >= 1.
        ignore_index: `None` or an integer.

    Returns:
        `(num_classes, ignore_index)`.

    Raises:
        ValueError: Naming the argument and the value received.

    Example:

    >>> check_class_options(3, 255)
    (3, 255)
    """
    classes = None if num_classes is None else check_int("num_classes", num_classes, minimum=1)
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise ValueError(f"`ignore_index` must be None or an integer. Received: ignore_index={ignore_index!r}")
    return classes, ignore_index


def check_classes(
    mask: np.ndarray, num_classes: int | None, ignore_index: int | None, *, what: str = "mask", unit: str = "pixel"
) -> None:
    """Refuses class ids outside `[0, num_classes)` that are not `ignore_index`, naming them and their pixels.

    Masks are checked as decoded, before any resize: whether a file is
    valid never depends on the output size (nearest-neighbour sampling
    could skip a stray pixel). One pass in C: a histogram for 8- and 16-bit
    masks, a sort otherwise.

    Args:
        mask: Class ids.
        num_classes: The number of classes, or `None` to check nothing.
        ignore_index: A value allowed besides the classes (unlabelled or
            border pixels), or `None`.
        what: What the message calls the array (`"label volume"`...).
        unit: What it calls one element (`"voxel"`...).

    Raises:
        ValueError: Listing the values found outside the range and how
            many pixels (or voxels) hold each.

    Example:

    >>> check_classes(np.array([0, 1, 255]), 2, 255)
    >>> check_classes(np.array([0, 7, 7, 9], np.uint8), 3, None)
    Traceback (most recent call last):
    ...
    ValueError: the mask holds class values outside 0..2: 7 (2 pixels), 9 (1 pixel)
    """
    if num_classes is None:
        return
    flat = np.asarray(mask).ravel()
    if flat.dtype.kind == "u" and flat.dtype.itemsize <= 2 or flat.dtype.kind == "b":
        counts = np.bincount(flat.view(np.uint8) if flat.dtype.kind == "b" else flat)
        values = np.flatnonzero(counts)
        counts = counts[values]
    else:
        values, counts = np.unique(flat, return_counts=True)
    wrong = ((values < 0) | (values >= num_classes)) & (values != (-1 if ignore_index is None else ignore_index))
    if wrong.any():
        bad, many = values[wrong], counts[wrong]
        shown = ", ".join(
            f"{v} ({n} {unit}{'s' if n != 1 else ''})" for v, n in zip(bad[:8].tolist(), many[:8].tolist())
        )
        shown += ", ..." if len(bad) > 8 else ""
        allowed = f"0..{num_classes - 1}" + (f" or ignore_index={ignore_index}" if ignore_index is not None else "")
        raise ValueError(f"the {what} holds class values outside {allowed}: {shown}")


class MaskField(Field):
    """Segmentation masks: label images of class ids, batched as `(B, H, W)` integers.

    Read with `read_mask` (palette indices, gray levels; colours through
    `palette`), resized with `resize_nearest` only (never a value that was
    not in the file), never scaled or converted to float. A single channel
    is squeezed. In a `FieldSequence`, a mask without `image_size` takes
    the size of the image field it is batched with.

    Args:
        paths: One mask file per sample.
        image_size: `(height, width)` to resize to; `None` (the default)
            follows the image field of the sequence, or keeps file sizes.
        dtype: The batch dtype, an integer type. Defaults to `"int32"`.
        loader: Reads one file instead of `read_mask` (its result is then
            mapped, resized and checked). Defaults to `None`.
        **options: How values are checked and mapped, below (declared
            once, in `keras_sepseq.options.MaskOptions`).

    Keyword Args:
        num_classes: The number of classes; a value outside
            `[0, num_classes)` that is not `ignore_index` makes the sample
            bad, naming the file and the values. `None` (the default)
            checks nothing.
        ignore_index: A value allowed besides the classes (unlabelled or
            border pixels); its pixels get weight 0 with `class_weight`.
            Defaults to `None`.
        palette: For colour-coded masks: `{(r, g, b): class_id}` or a list
            of colours whose position is the class id. Defaults to `None`.

    Raises:
        ValueError: If an argument is out of range; the message names it.

    Example:

    >>> field = MaskField(["m0.png", "m1.png"], image_size=(64, 64), num_classes=3, ignore_index=255)
    >>> field.spec_shape(None)
    (64, 64)
    """

    kind = "mask"
    spatial = True

    def __init__(
        self,
        paths: Sequence[Any] | PathArray,
        *,
        image_size: tuple[int, int] | None = None,
        dtype: str = "int32",
        loader: Any = None,
        **options: Unpack[MaskOptions],
    ) -> None:
        super().__init__(paths=check_paths("paths", paths))
        o = resolve_options(dict(options), owner=type(self).__name__, defaults=MASK_DEFAULTS)
        num_classes, ignore_index, palette = o["num_classes"], o["ignore_index"], o["palette"]
        self.image_size = check_image_size(image_size)
        self.num_classes, self.ignore_index = check_class_options(num_classes, ignore_index)
        if palette is not None:
            try:
                _palette_table(palette)
            except (TypeError, ValueError) as e:
                raise ValueError(
                    "`palette` must map (r, g, b) colours to class ids, or list colours by class id. "
                    f"Received: palette={palette!r} ({e})"
                ) from None
        self.palette = palette
        self.dtype = np.dtype(dtype)
        if self.dtype.kind not in "iu":
            raise ValueError(f"`dtype` of a mask must be an integer type. Received: dtype={dtype!r}")
        self.loader = loader

    def read(self, path: str) -> np.ndarray:
        """Reads, maps, checks and resizes one mask; `(H, W)` class ids."""
        mask = np.asarray(self.loader(path) if self.loader is not None else read_mask(path))
        if self.palette is not None:
            mask = map_palette(mask, self.palette)
        elif mask.ndim == 3:
            if mask.shape[2] == 1 or (mask[..., 1:3] == mask[..., :1]).all():
                mask = mask[..., 0]  # one channel, or a gray mask stored as RGB
            else:
                raise ValueError(
                    f"the mask has {mask.shape[2]} colour channels; pass `palette` to map colours to class ids"
                )
        if mask.dtype.kind == "b":
            mask = mask.astype(np.uint8)
        check_classes(mask, self.num_classes, self.ignore_index)  # as stored: validity never depends on the size
        if self.image_size is not None:
            mask = resize_nearest(mask, self.image_size)
        return mask

    def with_size(self, image_size: tuple[int, int] | None) -> MaskField:
        """A copy of this field that resizes to `image_size` (how a sequence gives a mask its image's size).

        Args:
            image_size: `(height, width)`, or `None`.

        Returns:
            A new `MaskField`.
        """
        field = cast(MaskField, object.__new__(MaskField))
        field.__dict__.update(self.__dict__)
        field.image_size = check_image_size(image_size)
        return field

    def batch(self, indices, items, *, position=None, empty=np.empty):
        """Stacks the masks into `(B, H, W)` in `dtype`; names two files whose sizes differ."""
        paths = cast(PathArray, self.paths)
        hint = "" if self.image_size is not None else "Set `image_size` on the mask or its image field."
        return stack_arrays(
            items, lambda k: repr(paths[indices[k]]), what="mask", dtype=self.dtype, hint=hint, empty=empty
        )

    def fixed_shape(self) -> bool:
        """True with `image_size` set."""
        return self.image_size is not None

    def cache_key(self) -> tuple:
        """The size, classes, palette and dtype."""
        palette = None if self.palette is None else tuple(sorted(_palette_table(self.palette).items()))
        return ("mask", self.image_size, self.num_classes, self.ignore_index, palette, self.dtype.str)

    def spec_shape(self, reference: Any) -> tuple:
        """`(H, W)`, `None` where sizes vary."""
        return tuple(self.image_size) if self.image_size is not None else (None, None)

    def spec_dtype(self, reference: Any) -> Any:
        """The field's `dtype`."""
        return self.dtype

    def pixel_weights(self, masks: np.ndarray, class_weight: Mapping[int, float]) -> np.ndarray:
        """Per-pixel weights `(B, H, W)` from `class_weight`: unlisted classes weigh 1 (as in Keras), `ignore_index` 0.

        Args:
            masks: A batch of class ids.
            class_weight: `{class_id: weight}`.

        Returns:
            `float32` weights, the shape of `masks`.
        """
        top = max([*class_weight, int(masks.max(initial=0)), 0]) + 1
        table = np.ones(top, np.float32)
        for class_id, weight in class_weight.items():
            table[class_id] = weight
        weights = table[np.clip(masks, 0, top - 1)]
        if self.ignore_index is not None:
            weights[masks == self.ignore_index] = 0.0
        return weights


def looks_like_images(paths: Sequence[Any]) -> bool:
    """Whether label files are images (by extension), so that `SeparatedSequence` reads them as masks.

    Args:
        paths: Label paths.

    Returns:
        `True` when the first path ends in an image extension.
    """
    if not len(paths):
        return False
    return os.path.splitext(str(paths[0]))[1].lower() in IMAGE_EXTENSIONS


IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".jpg", ".jpeg")
