"""`SeparatedSequence`: batches of images and labels stored one file per sample."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_sepseq import images
from keras_sepseq.cache import DEFAULT_BUDGET
from keras_sepseq.fields import check_image_size
from keras_sepseq.images import COLOR_MODES, DTYPES, INTERPOLATIONS, decode_image, write_pixels
from keras_sepseq.npy import load_npy
from keras_sepseq.paths import PathArray, PathLike
from keras_sepseq.sequence import BaseSequence, check_choice, check_int, check_paths, check_targets, stack_arrays

Labels = Sequence[PathLike] | PathArray | np.ndarray | Sequence[Any] | None


class SeparatedSequence(BaseSequence):
    """Batches of images and labels, each sample in its own files, loaded on demand.

    `seq[i]` returns `(x, y)`: `x` of shape `(B, H, W, C)`, `y` the labels
    stacked with their own dtype and shape (scalar labels give `(B,)`).
    Only one batch is in memory at a time, whatever the dataset size; the
    paths themselves are held in a compact `PathArray`, so the object
    pickles cheaply to process workers. Construction touches no file.

    To read other formats, subclass and override `load_input(path)` and/or
    `load_target(path)`; workers call them too. `load_input` results in
    `uint8`/`uint16` are treated as pixels and scaled for a float `dtype`;
    other dtypes are cast as they are.

    Args:
        image_paths: One path per sample (`str` or `os.PathLike`).
        label_paths: One `.npy` path per sample; or an in-memory array (or
            list) holding one label per image; or `None` for inputs only
            (`seq[i]` is then `(x,)`, e.g. for `predict`).
        batch_size: Samples per batch. Defaults to 32.
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
        shuffle: Reshuffle at every epoch end. Defaults to `True`.
        seed: Non-negative integer; the same seed gives the same sequence of
            epoch orders. `None` (the default) draws one, kept in `seq.seed`
            (0 in a sharded job: see `BaseSequence`).
        drop_remainder: Leave out the last, smaller batch. Defaults to
            `False`.
        workers: Worker count, as for `keras.utils.PyDataset`. Defaults to 1.
        use_multiprocessing: Use processes instead of threads. Defaults to
            `False`.
        max_queue_size: Batches prefetched by workers. Defaults to 10.
        cache: `None` (the default); `"memory"` to keep each decoded,
            resized image (in its source precision, e.g. uint8) and its
            label in RAM after the first epoch; or a directory, to keep
            them in memory-mapped files that survive restarts (needs
            `image_size`). A sample is decoded again when its image file's
            size or modification time changes; changing any decode setting
            selects another cache.
        cache_budget: The most bytes `cache="memory"` may hold, as an int or
            a string such as `"4GB"`; a dataset that would not fit is
            refused with a message giving both sizes. Defaults to 2 GiB.
        on_error: `"raise"` (the default) or `"skip"`: see docs/bad-data.md
            and `BaseSequence`. With `"skip"`, bad samples are
            left out and listed in `seq.errors`, and batches gain a
            `sample_weight`.
        max_errors: With `"skip"`, stop once more samples failed than this
            count (or fraction, a float below 1). Defaults to `None`.
        retries: Read again after an `OSError`, this many times, with a
            short backoff. Defaults to 0.
        num_shards: Split each epoch across this many hosts, see
            `BaseSequence.shard_members`. Defaults to 1.
        shard_index: This host's shard. Defaults to 0.
        shard: `"auto"` reads `num_shards` and `shard_index` from the active
            `keras.distribution`, JAX or `TF_CONFIG` (see `detect_shard`).
            Defaults to `None`.
        max_image_pixels: Refuse images whose header claims more pixels
            (a decompression-bomb guard). `None` (the default) uses Pillow's
            `PIL.Image.MAX_IMAGE_PIXELS` (about 89 million).

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

    def __init__(
        self,
        image_paths: Sequence[PathLike] | PathArray,
        label_paths: Labels,
        batch_size: int = 32,
        *,
        image_size: tuple[int, int] | None = None,
        color_mode: str = "rgb",
        interpolation: str = "bilinear",
        antialias: bool = False,
        dtype: str = "float32",
        shuffle: bool = True,
        seed: int | None = None,
        drop_remainder: bool = False,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
        cache: str | os.PathLike | None = None,
        cache_budget: int | str = DEFAULT_BUDGET,
        on_error: str = "raise",
        max_errors: int | float | None = None,
        retries: int = 0,
        num_shards: int = 1,
        shard_index: int = 0,
        shard: str | None = None,
        max_image_pixels: int | None = None,
    ) -> None:
        self.image_paths = check_paths("image_paths", image_paths)
        n = len(self.image_paths)
        self.label_paths, self.labels = check_targets(
            label_paths, name="label_paths", inputs_name="image_paths", num_samples=n
        )
        self.image_size = check_image_size(image_size)
        self.color_mode = check_choice("color_mode", color_mode, tuple(COLOR_MODES))
        self.interpolation = check_choice("interpolation", interpolation, tuple(INTERPOLATIONS))
        if not isinstance(antialias, (bool, np.bool_)):
            raise TypeError(f"`antialias` must be True or False. Received: antialias={antialias!r}")
        self.antialias = bool(antialias)
        self.dtype = check_choice("dtype", dtype, DTYPES)
        self.max_image_pixels = (
            None if max_image_pixels is None else check_int("max_image_pixels", max_image_pixels, minimum=1)
        )
        if (
            cache not in (None, "memory")
            and image_size is None
            and type(self).load_input is SeparatedSequence.load_input
        ):
            raise ValueError(
                "cache=<directory> needs `image_size`, so that every cached image has one shape. "
                f"Received: cache={cache!r}, image_size=None"
            )
        super().__init__(
            n,
            batch_size,
            shuffle=shuffle,
            seed=seed,
            drop_remainder=drop_remainder,
            workers=workers,
            use_multiprocessing=use_multiprocessing,
            max_queue_size=max_queue_size,
            cache=cache,
            cache_budget=cache_budget,
            on_error=on_error,
            max_errors=max_errors,
            retries=retries,
            num_shards=num_shards,
            shard_index=shard_index,
            shard=shard,
        )

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
        return decode_image(
            path,
            color_mode=self.color_mode,
            image_size=self.image_size,
            interpolation=self.interpolation,
            antialias=self.antialias,
            max_pixels=self.max_image_pixels,
        )

    def load_target(self, path: str) -> np.ndarray:
        """Loads one sample's label. Override for other formats.

        The default reads a `.npy` file with `allow_pickle=False`.

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
        return load_npy(path)

    def sample_path(self, index: int) -> str:
        """The image file of sample `index`."""
        return self.image_paths[index]

    def fixed_sample_shape(self) -> bool:
        """Whether every sample has one shape: true with `image_size` set."""
        return self.image_size is not None

    def cache_key(self) -> tuple:
        """Settings and paths that decide what a directory cache holds."""
        labels = (
            self.label_paths if self.label_paths is not None else ("in memory" if self.labels is not None else None,)
        )
        return super().cache_key() + (
            self.color_mode,
            self.image_size,
            self.interpolation,
            self.antialias,
            self.image_paths,
            labels,
            ("decoder revision", images.DECODER_REVISION),
        )

    def cache_sources(self) -> PathArray:
        """Each sample's image file: its size and mtime invalidate the cached copy."""
        return self.image_paths

    def load_item(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Loads sample `index`'s image and, from a file, its label. Runs in workers too.

        Args:
            index: The sample index.

        Returns:
            `(pixels, label)`; `label` is `None` when labels are in memory
            or absent.

        Raises:
            SampleError: If a file cannot be loaded; names the file.

        Example:

        >>> pixels, label = seq.load_item(0)  # doctest: +SKIP
        """
        x = self.load_sample(self.load_input, self.image_paths[index], index, "image")
        if self.label_paths is None:
            return x, None
        return x, self.load_sample(self.load_target, self.label_paths[index], index, "label")

    def collate(self, indices: np.ndarray, items: list, position: int | None = None) -> tuple:
        """Stacks loaded samples into `(x, y)`, converting pixels to `dtype`.

        Args:
            indices: Sample indices, in batch order.
            items: `load_item(i)` for each of `indices`.
            position: Unused; the batch's position in the epoch.

        Returns:
            `(x, y)`, or `(x,)` when the dataset has no labels.

        Raises:
            ShapeMismatchError: If samples of the batch differ in shape;
                names two files.

        Example:

        >>> x, y = seq.collate(indices, [seq.load_item(i) for i in indices])  # doctest: +SKIP
        """
        hint = (
            ""
            if self.image_size is not None
            else "Pass `image_size=(height, width)` to resize every image to one size."
        )
        pixels = [item[0] for item in items]
        x = stack_arrays(
            pixels, lambda k: repr(self.image_paths[indices[k]]),
            what="image", dtype=self._pixel_dtype(pixels), write=write_pixels, hint=hint, empty=self.buffers.empty,
        )  # fmt: skip
        if self.labels is not None:
            return x, self.labels[indices]
        if self.label_paths is None:
            return (x,)
        label_paths = self.label_paths
        return x, stack_arrays([item[1] for item in items], lambda k: repr(label_paths[indices[k]]), what="label")

    def collate_cached(self, indices: np.ndarray, slabs: tuple, position: int | None = None) -> tuple:
        """Assembles a batch from the cache's arrays, converting each row straight into the batch.

        Reading each cached row into its slot of the (recycled) batch array,
        rather than gathering the rows first and converting the gathered
        copy, saves a copy per batch, which on two cores that also train
        shows: about 35% more images/s on cached epochs through
        `model.fit` (`keras-sepseq bench --only cache`).

        Args:
            indices: Sample indices, in batch order.
            slabs: `(pixels, labels or None)`, the cache's arrays by sample.
            position: Unused.

        Returns:
            `(x, y)` or `(x,)`.
        """
        pixels, labels = slabs
        x = self.buffers.empty((len(indices),) + pixels.shape[1:], self._pixel_dtype([pixels]))
        for k, index in enumerate(indices):
            write_pixels(x[k], pixels[index])
        if self.labels is not None:
            return x, self.labels[indices]
        return (x,) if labels is None else (x, labels[indices])

    def deferred_scaling(self) -> dict[int, float]:
        """With a float `dtype`, 8-bit images may reach a TensorFlow graph as `uint8`, scaled by 1/255 there.

        See `BaseSequence.deferred_scaling`. Batches from `seq[i]` are not
        affected; a batch holding a 16-bit image, or a float one from a
        custom `load_input`, crosses in `dtype` as usual.

        Returns:
            `{0: 1 / 255}` for `float32` and `float16`, else `{}`.

        Example:

        >>> SeparatedSequence(["a.png"], [0], dtype="uint8").deferred_scaling()
        {}
        """
        return {0: images.PIXEL_SCALE[np.dtype(np.uint8)]} if self.dtype in ("float32", "float16") else {}

    def _pixel_dtype(self, pixels: list[np.ndarray]) -> str:
        """`uint8` when the batch goes to a graph that scales it and every image is 8-bit, else `dtype`."""
        if self.scaling_deferred and all(p.dtype == np.uint8 for p in pixels):
            return "uint8"
        return self.dtype

    def output_signature(self) -> tuple:
        """The `tf.TensorSpec`s of a batch: `x`, then `y` (if any), then `sample_weight` with `on_error="skip"`.

        Image height and width are `None` without `image_size`; the shapes
        of a custom `load_input` and of label files are those of the first
        sample that loads.

        Returns:
            A tuple of `tf.TensorSpec`.

        Example:

        >>> seq.output_signature()  # doctest: +SKIP
        (TensorSpec(shape=(None, 128, 128, 3), dtype=tf.float32, name=None), ...)
        """
        import tensorflow as tf

        channels = {"grayscale": 1, "rgb": 3, "rgba": 4}[self.color_mode]
        if type(self).load_input is not SeparatedSequence.load_input:
            x_shape = self.reference_item()[1][0].shape
        elif self.image_size is not None:
            x_shape = tuple(self.image_size) + (channels,)
        else:
            x_shape = (None, None, channels)
        specs = [tf.TensorSpec((None,) + tuple(x_shape), self.dtype)]
        if self.labels is not None:
            specs.append(tf.TensorSpec((None,) + self.labels.shape[1:], self.labels.dtype))
        elif self.label_paths is not None:
            label = np.asarray(self.reference_item()[1][1])
            specs.append(tf.TensorSpec((None,) + label.shape, label.dtype))
        if self.on_error == "skip" and len(specs) == 2:
            specs.append(tf.TensorSpec((None,), tf.float32))
        return tuple(specs)

    def __repr__(self) -> str:
        labels = "None" if self.labels is None and self.label_paths is None else f"{self.num_samples} labels"
        return (
            f"{type(self).__name__}({self.num_samples} images, {labels}, batch_size={self.batch_size}, "
            f"image_size={self.image_size}, color_mode={self.color_mode!r}, dtype={self.dtype!r}, "
            f"shuffle={self.shuffle}, seed={self.seed})"
        )
