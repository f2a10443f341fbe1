"""Fields: the named parts of a sample (an image, an array, a padded sequence), each with its own rules.

A field owns everything about one part of a sample: where its values come
from (one path per sample, or values in memory), how one item loads, how a
list of items becomes a batch (stacked, or padded), its part of the output
signature, what a directory cache must know about it, and whether it is
spatial (so that transforms know which fields move together).
`FieldSequence` composes fields into batches; the fields hold no state
that changes while batches are made, so they pickle to process workers
as they are.

Example:

>>> from keras_sepseq.fields import ArrayField, ImageField
>>> fields = {"photo": ImageField(["a.png", "b.png"], image_size=(64, 64)), "label": ArrayField([0, 1])}
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from keras_sepseq import images
from keras_sepseq.checks import check_choice, check_int, check_labels, check_paths
from keras_sepseq.images import COLOR_MODES, DTYPES, INTERPOLATIONS, decode_image, write_pixels
from keras_sepseq.npy import load_npy, npy_shape
from keras_sepseq.options import IMAGE_DEFAULTS, resolve_options
from keras_sepseq.padding import pad_batch
from keras_sepseq.paths import PathArray, is_path_sequence
from keras_sepseq.stacking import stack_arrays

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from keras_sepseq.options import ImageOptions

__all__ = ["ArrayField", "Field", "ImageField", "PaddedField"]

Empty = Callable[[tuple, Any], np.ndarray]


class Field:
    """One named part of every sample. Subclass it for a new kind of data.

    A field is backed either by one path per sample (`paths`; `read(path)`
    loads one) or by values held in memory (`values`, indexed by sample).
    Subclasses set `kind` (used in messages) and implement `read` and
    `batch`; the rest has defaults.

    Args:
        paths: One path per sample, or `None` with `values`.
        values: Values in memory, indexed by sample, or `None` with
            `paths`.

    Raises:
        ValueError: If neither or both of `paths` and `values` are given.

    Example:

    >>> class TextField(Field):
    ...     kind = "text"
    ...     def read(self, path):
    ...         return np.frombuffer(open(path, "rb").read(), np.uint8)
    ...     def batch(self, indices, items, *, position=None, empty=np.empty):
    ...         return pad_batch(items, dtype="uint8")
    """

    kind = "value"
    spatial = False

    def __init__(self, *, paths: PathArray | None = None, values: Any = None) -> None:
        if (paths is None) == (values is None):
            raise ValueError(f"a {type(self).__name__} needs either paths or values, not both or neither.")
        self.paths = paths
        self.values = values

    def __len__(self) -> int:
        return len(self.paths) if self.paths is not None else len(self.values)

    @property
    def in_memory(self) -> bool:
        """Whether values are held in memory (nothing to load per sample)."""
        return self.paths is None

    def path(self, index: int) -> str | None:
        """The file of sample `index`, or `None` for values in memory."""
        return None if self.paths is None else self.paths[index]

    def read(self, path: str) -> np.ndarray:
        """Loads one item from its file. Runs in workers.

        Args:
            path: The sample's file.

        Returns:
            An array.

        Raises:
            NotImplementedError: In `Field` itself.
        """
        raise NotImplementedError(f"{type(self).__name__} implements read(path)")

    def item_from_memory(self, index: int) -> Any:
        """What a sample's item is for values in memory: `None` by default (`batch` reads `values`).

        Args:
            index: The sample index.

        Returns:
            `None`, or an item as `read` would return it.
        """
        return None

    def batch(self, indices: np.ndarray, items: list[Any], *, position: int | None = None, empty: Empty = np.empty):
        """Turns the items of one batch into one array.

        Args:
            indices: Sample indices, in batch order.
            items: What `read` (or `item_from_memory`) gave for each.
            position: The batch's position in the epoch, or `None`.
            empty: Allocates the batch array (a recycled buffer).

        Returns:
            The batch array.

        Raises:
            NotImplementedError: In `Field` itself.
        """
        raise NotImplementedError(f"{type(self).__name__} implements batch(indices, items)")

    def batch_cached(self, indices: np.ndarray, slab: np.ndarray | None, *, empty: Empty = np.empty) -> np.ndarray:
        """A batch from a cache's array of items by sample (`None` for values in memory).

        Args:
            indices: Sample indices, in batch order.
            slab: The cache's array; row `i` holds sample `i`'s item.
            empty: Allocates the batch array.

        Returns:
            The batch array.
        """
        if slab is None:
            return self.batch(indices, [None] * len(indices), empty=empty)
        return self.batch(indices, [slab[i] for i in indices], empty=empty)

    def item_signature(self, item: Any) -> Any:
        """What must match between the items of two samples for them to share a batch: the item's shape.

        Args:
            item: A loaded item, or `None`.

        Returns:
            A comparable value.
        """
        return None if item is None else np.shape(item)

    def fixed_shape(self) -> bool:
        """Whether every item a cache keeps has one shape known before loading (so caches can preallocate).

        Values in memory that `item_from_memory` does not copy into items
        (it returns `None`) count as fixed: the cache keeps nothing of them.
        """
        return self.in_memory and self.item_from_memory(0) is None

    def cache_key(self) -> tuple:
        """The settings that decide what a cached item holds (paths are added by the sequence).

        Returns:
            A tuple of strings and numbers.
        """
        return (type(self).__name__,)

    def spec_shape(self, reference: Any) -> tuple:
        """The shape of one item in the output signature, `None` where it varies.

        Args:
            reference: The item of the first sample that loads (`None` for
                values in memory).

        Returns:
            A shape tuple.
        """
        if self.in_memory:
            return tuple(np.asarray(self.values).shape[1:])
        return tuple(np.shape(reference))

    def spec_dtype(self, reference: Any) -> Any:
        """The dtype of the batch in the output signature.

        Args:
            reference: As for `spec_shape`.

        Returns:
            A numpy dtype.
        """
        return (np.asarray(self.values) if self.in_memory else np.asarray(reference)).dtype

    def deferred_scale(self) -> float | None:
        """The factor a TensorFlow graph may apply to a `uint8` batch of this field instead of Python.

        Returns:
            `None`: batches cross as they are.
        """
        return None

    def describe(self, reference: Any) -> str:
        """One line for `repr`: kind, count and source."""
        return f"{self.kind} ({len(self)} {'in memory' if self.in_memory else 'files'})"


def _source(name: str, source: Any) -> tuple[PathArray | None, Any]:
    if is_path_sequence(source):
        return check_paths(name, source), None
    return None, source


class ImageField(Field):
    """Image files, decoded, colour-converted and optionally resized; batched as `(B, H, W, C)`.

    Args:
        paths: One image file per sample.
        loader: Reads one file instead of `decode_image` (returns pixels
            in `uint8`/`uint16`, scaled for a float `dtype`, or any other
            array, cast as it is). Defaults to `None`.
        **options: How images are decoded, below (declared once, in
            `keras_sepseq.options.ImageOptions`).

    Keyword Args:
        image_size: `(height, width)` to resize every image to, or `None`
            (the default) to keep file sizes, which must then agree within a
            batch.
        color_mode: `"rgb"` (3 channels, the default), `"rgba"` (4) or
            `"grayscale"` (1).
        interpolation: Resize filter: `"bilinear"` (the default),
            `"nearest"`, `"bicubic"`, `"area"`, `"box"`, `"hamming"` or
            `"lanczos"`.
        antialias: `False` (the default) samples the image at each output
            pixel, like `tf.image.resize` and
            `keras.utils.image_dataset_from_directory` (fast, in OpenCV);
            `True` widens the filter when shrinking, so that every source
            pixel counts (Pillow's filters: smoother for large reductions,
            slower). `"area"` always averages; `"box"`, `"hamming"` and
            `"lanczos"` are always antialiased. See `resize_image`.
        dtype: `"float32"` (the default) or `"float16"` scale pixels to
            [0, 1] like `tf.image.convert_image_dtype` (8-bit by 255, 16-bit
            by 65535); `"uint8"` keeps raw 8-bit pixels (16-bit ones are
            shifted right by 8); `"uint16"` keeps 16-bit pixels.
        max_image_pixels: Refuse images whose header claims more pixels
            (a decompression-bomb guard). `None` (the default) uses Pillow's
            `PIL.Image.MAX_IMAGE_PIXELS` (about 89 million).

    Raises:
        ValueError: If an argument is out of range; the message names it.
        TypeError: For a keyword that is not an image option.

    Example:

    >>> field = ImageField(["a.png", "b.png"], image_size=(64, 64), color_mode="grayscale")
    >>> field.spec_shape(None)
    (64, 64, 1)
    """

    kind = "image"
    spatial = True

    def __init__(
        self,
        paths: Sequence[Any] | PathArray,
        *,
        loader: Callable[[str], np.ndarray] | None = None,
        **options: Unpack[ImageOptions],
    ) -> None:
        super().__init__(paths=check_paths("paths", paths))
        o = resolve_options(dict(options), owner=type(self).__name__, defaults=IMAGE_DEFAULTS)
        self.image_size = check_image_size(o["image_size"])
        self.color_mode = check_choice("color_mode", o["color_mode"], tuple(COLOR_MODES))
        self.interpolation = check_choice("interpolation", o["interpolation"], tuple(INTERPOLATIONS))
        antialias = o["antialias"]
        if not isinstance(antialias, (bool, np.bool_)):
            raise TypeError(f"`antialias` must be True or False. Received: antialias={antialias!r}")
        self.antialias = bool(antialias)
        self.dtype = check_choice("dtype", o["dtype"], DTYPES)
        limit = o["max_image_pixels"]
        self.max_image_pixels = None if limit is None else check_int("max_image_pixels", limit, minimum=1)
        self.loader: Callable[[str], np.ndarray] | None = loader

    def read(self, path: str) -> np.ndarray:
        """Reads one image: the field's `loader`, or `decode`."""
        return self.loader(path) if self.loader is not None else self.decode(path)

    def decode(self, path: str) -> np.ndarray:
        """Decodes one image with `decode_image` and the field's settings.

        Args:
            path: The image file.

        Returns:
            The pixels, `(H, W, C)`, `uint8` or `uint16`.
        """
        return decode_image(
            path,
            color_mode=self.color_mode,
            image_size=self.image_size,
            interpolation=self.interpolation,
            antialias=self.antialias,
            max_pixels=self.max_image_pixels,
        )

    def batch(self, indices, items, *, position=None, empty=np.empty, dtype: str | None = None):
        """Stacks decoded images into `(B, H, W, C)` in `dtype` (or `dtype` given here); names two files on a mismatch."""
        hint = (
            ""
            if self.image_size is not None
            else "Pass `image_size=(height, width)` to resize every image to one size."
        )
        paths = cast(PathArray, self.paths)
        return stack_arrays(
            items, lambda k: repr(paths[indices[k]]),
            what="image", dtype=dtype or self.dtype, write=write_pixels, hint=hint, empty=empty,
        )  # fmt: skip

    def fixed_shape(self) -> bool:
        """True with `image_size` set and the built-in decoder."""
        return self.image_size is not None and self.loader is None

    def cache_key(self) -> tuple:
        """Decode settings and the decoder revision."""
        return (
            "image",
            self.color_mode,
            self.image_size,
            self.interpolation,
            self.antialias,
            ("decoder revision", images.DECODER_REVISION),
        )

    def spec_shape(self, reference: Any) -> tuple:
        """`(H, W, C)`, with `None` for sizes that vary (no `image_size`)."""
        if self.loader is not None:
            return tuple(np.shape(reference))
        channels = COLOR_MODES[self.color_mode]
        if self.image_size is not None:
            return tuple(self.image_size) + (channels,)
        return (None, None, channels)

    def spec_dtype(self, reference: Any) -> Any:
        """The field's `dtype`."""
        return np.dtype(self.dtype)

    def deferred_scale(self) -> float | None:
        """1/255 for float dtypes: 8-bit batches may cross into a graph as `uint8` and be scaled there."""
        return images.PIXEL_SCALE[np.dtype(np.uint8)] if self.dtype in ("float32", "float16") else None


class ArrayField(Field):
    """Fixed-shape arrays per sample: `.npy` files (read without pickle) or values in memory.

    Args:
        source: One `.npy` path per sample, or an array (or list) holding
            one value per sample.
        loader: Reads one file instead of `load_npy`. Defaults to `None`.
        kind: What messages call a value, e.g. `"label"`. Defaults to
            `"array"`.

    Raises:
        ValueError: If in-memory values are ragged, scalar or objects.

    Example:

    >>> ArrayField([3, 1, 4]).batch(np.array([2, 0]), [None, None]).tolist()
    [4, 3]
    """

    kind = "array"

    def __init__(self, source: Any, *, loader: Callable[[str], np.ndarray] | None = None, kind: str = "array") -> None:
        paths, values = _source("source", source)
        super().__init__(paths=paths, values=None if values is None else check_labels("source", values))
        self.loader: Callable[[str], np.ndarray] | None = loader
        self.kind = kind

    def read(self, path: str) -> np.ndarray:
        """Reads one `.npy` file (or calls the field's `loader`)."""
        return (self.loader or load_npy)(path)

    def batch(self, indices, items, *, position=None, empty=np.empty):
        """Stacks the items with their own dtype, or takes the rows of the in-memory values."""
        if self.values is not None:
            if all(item is None for item in items):
                return self.values[indices]
            items = [self.values[i] if item is None else item for i, item in zip(indices, items)]  # augmented
            return np.stack([np.asarray(item, dtype=self.values.dtype) for item in items])
        paths = cast(PathArray, self.paths)
        return stack_arrays(items, lambda k: repr(paths[indices[k]]), what=self.kind)

    def cache_key(self) -> tuple:
        """Paths or "in memory" (values in memory are not cached)."""
        return ("array", "in memory" if self.in_memory else "files")


class PaddedField(Field):
    """Variable-length arrays `(T_i, *features)`, padded per batch to the longest (or `maxlen`).

    On the TensorFlow backend Keras reads batches 0 and 1 before training
    and freezes every dimension equal in both; so that the time dimension
    stays open, batch 1 is padded one step longer whenever its length would
    equal batch 0's (unless `maxlen` fixes every length). The extra step is
    padding like any other.

    Args:
        source: One `.npy` path per sample, or a list of arrays.
        maxlen: Pad or truncate every batch to this length; `None` (the
            default) pads to the batch's longest.
        padding: `"post"` (the default) or `"pre"`.
        truncating: `"post"` (the default) or `"pre"`, with `maxlen`.
        value: The padding value. Defaults to 0.
        dtype: The batch dtype, or `None` for the items' own. Defaults to
            `"float32"`.
        loader: Reads one file instead of `load_npy` (its result is taken
            as it is). Defaults to `None`.
        kind: What messages call a value. Defaults to `"sequence"`.

    Raises:
        ValueError: If an argument is out of range; the message names it.

    Example:

    >>> field = PaddedField([np.ones((2, 3)), np.ones((5, 3))])
    >>> field.batch(np.array([0, 1]), [field.item_from_memory(0), field.item_from_memory(1)]).shape
    (2, 5, 3)
    """

    kind = "sequence"

    def __init__(
        self,
        source: Any,
        *,
        maxlen: int | None = None,
        padding: str = "post",
        truncating: str = "post",
        value: float = 0.0,
        dtype: Any = "float32",
        loader: Callable[[str], np.ndarray] | None = None,
        kind: str = "sequence",
    ) -> None:
        paths, values = _source("source", source)
        if values is not None:
            values = [np.asarray(v) for v in values]
            for i, v in enumerate(values):
                if v.ndim == 0:
                    raise ValueError(f"`source` must hold arrays with a time axis first; item {i} is a scalar: {v!r}")
        super().__init__(paths=paths, values=values)
        self.maxlen = None if maxlen is None else check_int("maxlen", maxlen, minimum=1)
        self.padding = check_choice("padding", padding, ("post", "pre"))
        self.truncating = check_choice("truncating", truncating, ("post", "pre"))
        if not isinstance(value, numbers.Real):
            raise ValueError(f"`value` must be a number. Received: value={value!r}")
        self.value: float = float(value)
        self.dtype: np.dtype | None = None if dtype is None else np.dtype(dtype)
        self.loader: Callable[[str], np.ndarray] | None = loader
        self.kind = kind

    def read(self, path: str) -> np.ndarray:
        """Reads one sequence: the field's `loader`, or a `.npy` file, refused if 0-d (a sequence needs a time axis)."""
        if self.loader is not None:
            return self.loader(path)
        array = load_npy(path)
        if array.ndim == 0:
            raise ValueError(f"the {self.kind} is 0-d (a scalar); a sequence needs a time axis first")
        return array

    def item_from_memory(self, index: int) -> Any:
        """The in-memory array of sample `index` (padding needs every item)."""
        return self.values[index]

    def item_signature(self, item: Any) -> Any:
        """The trailing (feature) shape: lengths may differ."""
        return None if item is None else np.shape(item)[1:]

    def length(self, index: int) -> int:
        """The length of sample `index`, from memory or the `.npy` header (not the data)."""
        if self.values is not None:
            return len(self.values[index])
        return int(npy_shape(cast(PathArray, self.paths)[index])[0])

    def padded_length(self, lengths: Sequence[int], position: int | None, first: Callable[[], list[int]]) -> int:
        """The time length of a batch whose (truncated) item lengths are `lengths`.

        Args:
            lengths: The items' lengths, after `maxlen`.
            position: The batch's position in the epoch, or `None`.
            first: Gives the lengths of batch 0's items (read only for
                batch 1).

        Returns:
            The padded length.
        """
        if self.maxlen is not None:
            return self.maxlen
        length = max(1, max(lengths, default=0))
        if position == 1 and length == max(1, max(first(), default=0)):
            length += 1
        return length

    def batch(self, indices, items, *, position=None, empty=np.empty, first: Callable[[], list[int]] | None = None):
        """Pads the items to one length; names two files when their feature shapes differ."""
        if any(item is None for item in items):
            items = [self.item_from_memory(int(i)) for i in indices]
        trailing = {np.shape(item)[1:] for item in items}
        if len(trailing) > 1:
            from keras_sepseq.errors import ShapeMismatchError

            shapes = [np.shape(item)[1:] for item in items]
            k = next(k for k, s in enumerate(shapes) if s != shapes[0])
            raise ShapeMismatchError(
                f"{self.kind}s in one batch have different feature shapes: {self._name(indices[0])} has "
                f"{shapes[0]} but {self._name(indices[k])} has {shapes[k]}."
            )
        lengths = [len(item) if self.maxlen is None else min(len(item), self.maxlen) for item in items]
        length = self.padded_length(lengths, position, first or (lambda: []))
        dtype = self.dtype if self.dtype is not None else next((a.dtype for a in items if np.size(a)), items[0].dtype)
        return pad_batch(
            items, maxlen=length, padding=self.padding, truncating=self.truncating, value=self.value, dtype=dtype
        )

    def _name(self, index: Any) -> str:
        return repr(self.paths[int(index)]) if self.paths is not None else f"{self.kind} {int(index)}"

    def cache_key(self) -> tuple:
        """Items are cached unpadded: nothing but the kind decides them."""
        return ("padded", "in memory" if self.in_memory else "files")

    def spec_shape(self, reference: Any) -> tuple:
        """`(T, *features)`, `T` open unless `maxlen` is set."""
        return (self.maxlen,) + tuple(np.shape(reference)[1:])

    def spec_dtype(self, reference: Any) -> Any:
        """The field's `dtype` (or the reference item's, with `dtype=None`)."""
        return self.dtype if self.dtype is not None else np.asarray(reference).dtype


def check_image_size(image_size: Any) -> tuple[int, int] | None:
    """Checks an `image_size` argument: `None` or a `(height, width)` pair of integers >= 1.

    Args:
        image_size: The value received.

    Returns:
        A tuple, or `None`.

    Raises:
        ValueError: Naming `image_size` and the value received.

    Example:

    >>> check_image_size([64, 48])
    (64, 48)
    """
    if image_size is None:
        return None
    message = (
        f"`image_size` must be None or a (height, width) pair of integers >= 1. Received: image_size={image_size!r}"
    )
    if not isinstance(image_size, (tuple, list)) or len(image_size) != 2:
        raise ValueError(message)
    try:
        return (check_int("image_size", image_size[0], minimum=1), check_int("image_size", image_size[1], minimum=1))
    except ValueError:
        raise ValueError(message) from None
