"""`FieldSequence`: batches of samples made of named fields, as `keras.utils.PyDataset`.

The general sample model: each sample is a set of named fields (images,
arrays, padded sequences; see `keras_sepseq.fields`), and a batch is
`(x, y)` or `(x, y, sample_weight)` with a dict wherever a dict of fields
was given, keyed by field name so that it matches the names of the model's
`keras.Input`s. Order, shards, workers, caches and the error policy are
`BaseSequence`'s, shared with every other sequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from keras_sepseq.augment import Augmentation, batch_seed, sample_rng
from keras_sepseq.fields import Field, ImageField, PaddedField
from keras_sepseq.masks import MaskField
from keras_sepseq.sequence import BaseSequence, collates_anywhere
from keras_sepseq.tf_data import DeferredPixels

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from keras_sepseq.options import SequenceOptions

__all__ = ["FieldSequence"]

Fields = Field | dict[str, Field]


def _named(argument: str, fields: Any) -> dict[str, Field] | None:
    """Checks a fields argument; returns a dict by name (`None` for a single field, `{}` for none)."""
    if fields is None:
        return {}
    if isinstance(fields, Field):
        return None
    if isinstance(fields, dict) and fields:
        for name, field in fields.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"`{argument}` keys must be non-empty strings (field names). Received: {name!r}")
            if not isinstance(field, Field):
                raise TypeError(
                    f"`{argument}[{name!r}]` must be a keras_sepseq field (ImageField, ArrayField, PaddedField, ...). "
                    f"Received: {type(field).__name__}"
                )
        return dict(fields)
    raise TypeError(
        f"`{argument}` must be a field (ImageField, ArrayField, PaddedField, ...) or a non-empty dict of fields "
        f"by name. Received: {fields!r}"
    )


def _masks_sized_like_images(fields: tuple[tuple[str, Field], ...]) -> tuple[tuple[str, Field], ...]:
    """Gives each mask field without `image_size` the size of the image fields (when they agree on one)."""
    sizes = {field.image_size for _, field in fields if isinstance(field, ImageField) and field.image_size is not None}
    out = []
    for name, field in fields:
        if isinstance(field, MaskField) and field.image_size is None and sizes:
            if len(sizes) > 1:
                raise ValueError(
                    f"the mask field {name!r} has no `image_size`, and the image fields have several "
                    f"({sorted(sizes)}): give the mask its own `image_size`."
                )
            field = field.with_size(next(iter(sizes)))
        out.append((name, field))
    return tuple(out)


def _check_class_weight(class_weight: Any, targets: tuple[tuple[str, Field], ...]) -> dict[int, float] | None:
    if class_weight is None:
        return None
    masks = [name for name, field in targets if isinstance(field, MaskField)]
    if len(masks) != 1:
        raise ValueError(
            "`class_weight` weighs the pixels of one mask target; this sequence has "
            f"{len(masks)} mask targets{': ' + ', '.join(masks) if masks else ''}. For class labels, pass "
            "class_weight to model.fit instead."
        )
    if not isinstance(class_weight, Mapping) or not class_weight:
        raise ValueError(f"`class_weight` must be a dict {{class_id: weight}}. Received: class_weight={class_weight!r}")
    table = {}
    for class_id, weight in class_weight.items():
        if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)) or class_id < 0:
            raise ValueError(f"`class_weight` keys must be class ids >= 0. Received: {class_id!r}")
        table[int(class_id)] = float(weight)
    return table


def _keep_mask_dtype(field: Field, value: Any, before: Any) -> Any:
    """A mask comes out of augmentation in the dtype it went in with (rounded), other fields as returned."""
    if isinstance(field, MaskField) and value is not None and np.asarray(value).dtype != np.asarray(before).dtype:
        return np.rint(np.asarray(value)).astype(np.asarray(before).dtype)
    return value


class FieldSequence(BaseSequence):
    """Batches of samples made of named fields: several images, masks, arrays or padded sequences per sample.

    `seq[i]` returns `(x,)`, `(x, y)` or `(x, y, sample_weight)`. `x` is an
    array when `inputs` is one field and a dict of arrays keyed by field
    name when `inputs` is a dict; `y` likewise for `targets`. Every field
    of a sample comes from the same sample index, in every worker mode, so
    fields never misalign. A sample with a field that fails to load is bad
    as a whole, and its message names the field's file.

    Args:
        inputs: A field, or a dict of fields by name (the names of the
            model's `keras.Input`s).
        targets: A field, a dict of fields by name (the model's output
            names), or `None` (the default) for inputs only.
        batch_size: Samples per batch. Defaults to 32.
        sample_weights: One weight per sample (an array-like), or `None`
            (the default). Needs `targets`.
        class_weight: `{class_id: weight}` for the one `MaskField` target:
            batches gain a `(B, H, W)` `sample_weight` where each pixel
            weighs its class's weight (unlisted classes 1, as in Keras;
            `ignore_index` pixels 0), times `sample_weights` and the weights
            `on_error="skip"` adds. Keras's own `class_weight` refuses
            targets of rank 3 or more. Defaults to `None`.
        **options: The options every sequence shares (`shuffle`, `seed`,
            `drop_remainder`, `workers`, `use_multiprocessing`,
            `max_queue_size`, `cache`, `cache_budget`, `on_error`,
            `max_errors`, `retries`, `num_shards`, `shard_index`, `shard`),
            as documented on `BaseSequence`.

    Raises:
        ValueError: If fields hold different numbers of samples, or an
            option is out of range; the message names them.
        TypeError: If `inputs` or `targets` is not a field or a dict of
            fields.

    Example:

    >>> from keras_sepseq.fields import ArrayField, ImageField  # doctest: +SKIP
    >>> seq = FieldSequence(  # doctest: +SKIP
    ...     {"t1": ImageField(t1_paths, image_size=(128, 128)), "t2": ImageField(t2_paths, image_size=(128, 128))},
    ...     {"grade": ArrayField(grade_paths)},
    ...     batch_size=16, workers=2,
    ... )
    >>> model.fit(seq, epochs=10)  # doctest: +SKIP
    """

    single_field_names: tuple[str, str] = ("input", "target")
    """The names a single input field and a single target field go by (in `augment` samples and messages)."""

    def __init__(
        self,
        inputs: Fields,
        targets: Fields | None = None,
        batch_size: int = 32,
        *,
        sample_weights: Any = None,
        class_weight: Mapping[int, float] | None = None,
        **options: Unpack[SequenceOptions],
    ) -> None:
        self._input_names = _named("inputs", inputs)
        self._target_names = _named("targets", targets)
        self.inputs = inputs
        self.targets = targets
        slots: list[tuple[str, Field]] = []
        single = self.single_field_names
        for names, given, default in ((self._input_names, inputs, single[0]), (self._target_names, targets, single[1])):
            if names is None:
                slots.append((default, given))  # type: ignore[arg-type]
            else:
                slots.extend(names.items())
        self.fields: tuple[tuple[str, Field], ...] = _masks_sized_like_images(tuple(slots))
        n = 1 if self._input_names is None else len(self._input_names)
        self.inputs = self.fields[0][1] if self._input_names is None else dict(self.fields[:n])  # masks sized
        if targets is not None:
            self.targets = self.fields[n][1] if self._target_names is None else dict(self.fields[n:])
        counts = {name: len(field) for name, field in self.fields}
        if len(set(counts.values())) > 1:
            listed = ", ".join(f"{name}: {count}" for name, count in counts.items())
            raise ValueError(f"every field must hold one value per sample; the fields hold different counts: {listed}.")
        num_samples = next(iter(counts.values()))
        if sample_weights is not None:
            if targets is None:
                raise ValueError("`sample_weights` needs `targets`: Keras weights the loss, which needs targets.")
            weights = np.asarray(sample_weights, dtype=np.float32)
            if weights.shape != (num_samples,):
                raise ValueError(
                    f"`sample_weights` must hold one number per sample, shape ({num_samples},). "
                    f"Received shape {weights.shape}."
                )
            sample_weights = weights
        self.sample_weights = sample_weights
        self.class_weight = _check_class_weight(class_weight, self.fields[self.input_count :])
        super().__init__(num_samples, batch_size, **options)
        if self.augmentation is not None and not self.augmentation.per_sample:
            images = [field for _, field in self.fields if isinstance(field, ImageField)]
            if not images:
                raise ValueError("`augment` Keras layers transform images: this sequence has no image field.")
            for field in images:
                self.augmentation.check_images(field.dtype)

    @property
    def input_count(self) -> int:
        """How many of `fields` are inputs (the rest are targets)."""
        return 1 if self._input_names is None else len(self._input_names)

    # Loading.

    def load_item(self, index: int) -> tuple:
        """Loads every field of sample `index`: one item per field, in `fields` order. Runs in workers too.

        Args:
            index: The sample index.

        Returns:
            A tuple with one item (or `None` for values in memory) per field.

        Raises:
            SampleError: If a field's file cannot be loaded; names the file
                and the field.

        Example:

        >>> items = seq.load_item(3)  # doctest: +SKIP
        """
        items = []
        for name, field in self.fields:
            if field.in_memory:
                items.append(field.item_from_memory(index))
            else:
                path = cast(str, field.path(index))  # a field not in memory has a path per sample
                items.append(self.load_sample(field.read, path, index, self.field_label(name, field)))
        return tuple(items)

    def field_label(self, name: str, field: Field) -> str:
        """What messages call a field's value: its kind and name, e.g. `image ('t1')`.

        Args:
            name: The field's name.
            field: The field.

        Returns:
            A short label.
        """
        return f"{field.kind} ({name!r})"

    def path_columns(self) -> list[Sequence[str]]:
        """The paths of every field backed by files (for `RemoteReading`: which of them are URLs)."""
        return [field.paths for _, field in self.fields if field.paths is not None]

    def sample_path(self, index: int) -> str | None:
        """The first file of sample `index` (its first field backed by files)."""
        for _, field in self.fields:
            if not field.in_memory:
                return field.path(index)
        return None

    def cache_sources(self):
        """The files whose size and mtime invalidate a sample's cache entry: those of the first file field."""
        for _, field in self.fields:
            if not field.in_memory:
                return field.paths
        raise ValueError("a directory cache needs at least one field backed by files; every field is in memory.")

    def cache_key(self) -> tuple:
        """The fields' names, kinds, settings and paths."""
        parts: list[Any] = []
        for name, field in self.fields:
            parts += [name, *field.cache_key()]
            if field.paths is not None:
                parts.append(field.paths)
        return super().cache_key() + tuple(parts)

    def fixed_sample_shape(self) -> bool:
        """True when every field knows the shape of its cached items before loading."""
        return all(field.fixed_shape() for _, field in self.fields)

    # Batches.

    @collates_anywhere
    def collate(self, indices: np.ndarray, items: list, position: int | None = None) -> tuple:
        """Turns loaded items into `(x,)`, `(x, y)` or `(x, y, sample_weight)`, field by field.

        Args:
            indices: Sample indices, in batch order.
            items: `load_item(i)` for each of `indices`.
            position: The batch's position in the epoch, or `None`.

        Returns:
            The batch.

        Raises:
            ShapeMismatchError: If a field's items differ in shape; names
                two files.
        """
        items = self.augmented_items(indices, items)
        columns = [[item[k] for item in items] for k in range(len(self.fields))]
        return self._structure(indices, self._arrays(indices, columns, position))

    def collate_placeholder(self, indices: np.ndarray, items: list, position: int | None = None) -> tuple:
        """`collate` without augmentation: the placeholder of a batch of bad samples is never augmented."""
        self._placeholder = True
        try:
            return self.collate(indices, items, position)
        finally:
            self._placeholder = False

    def collate_cached(self, indices: np.ndarray, slabs: tuple, position: int | None = None) -> Any:
        """A batch straight from the cache's arrays (one per field; `None` for values in memory)."""
        if any(isinstance(field, PaddedField) for _, field in self.fields):
            return NotImplemented  # padding needs the items' lengths: the general path handles it
        if self.augmentation is not None and self.augmentation.per_sample:
            return NotImplemented  # a callable takes one sample at a time: the general path handles it
        columns = [
            [None] * len(indices) if slab is None else [slab[i] for i in indices] for slab in slabs[: len(self.fields)]
        ]
        return self._structure(indices, self._arrays(indices, columns, position))

    def _arrays(self, indices: np.ndarray, columns: list[list], position: int | None) -> list:
        """Each field's batch from its items, augmented by `augment` layers when there are some."""
        plans = self._fast_plans(columns, position)
        arrays = []
        for k, (_, field) in enumerate(self.fields):
            items = columns[k]
            if plans is not None and isinstance(field, (ImageField, MaskField)):
                items = [Augmentation.geometric(np.asarray(item), plan) for item, plan in zip(items, plans)]
            arrays.append(self._batch_field(k, field, indices, items, position))
        if plans is None:
            return self._augmented_batch(arrays, position)
        for k, (_, field) in enumerate(self.fields):
            if k == 0 and arrays[k].dtype == np.uint8 and self.scaling_deferred and self.deferred_offsets():
                arrays[k] = DeferredPixels(arrays[k], Augmentation.offsets(plans))  # scaled and brightened in TF
            elif isinstance(field, ImageField):
                arrays[k] = Augmentation.photometric(arrays[k], plans)
        return arrays

    def _fast_plans(self, columns: list[list], position: int | None) -> list[dict] | None:
        """The per-sample draws of flips, crops, brightness and contrast, when NumPy applies every layer; else None.

        Drawn from `numpy.random.default_rng([seed, epoch, position, 2])`, sample by sample in batch order.
        """
        augmentation = self.augmentation
        if augmentation is None or not augmentation.fast or getattr(self, "_placeholder", False):
            return None
        spatial = [columns[k] for k, (_, field) in enumerate(self.fields) if isinstance(field, (ImageField, MaskField))]
        sizes = [tuple(np.shape(item)[:2]) for item in spatial[0]]
        if any(tuple(np.shape(item)[:2]) != size for items in spatial[1:] for item, size in zip(items, sizes)):
            return None  # fields of different sizes: Keras's layers scale the transform to each
        rng = np.random.default_rng([self.seed, self.epoch, 0 if position is None else position, 2])
        try:
            return augmentation.plan(rng, sizes)
        except ValueError:
            return None  # a crop larger than a sample: Keras's RandomCrop resizes first

    # Augmentation (see keras_sepseq.augment): after the cache, in the process that assembles batches.

    def augmented_items(self, indices: np.ndarray, items: list) -> list:
        """The items after a per-sample `augment` callable (unchanged without one, or for a placeholder).

        Each sample's fields go to the callable as a dict by field name
        (values in memory included), with `sample_rng(seed, epoch,
        index)`; masks come back in the dtype they went in with.

        Args:
            indices: Sample indices, in batch order.
            items: Their loaded items.

        Returns:
            The items to batch.
        """
        augmentation = self.augmentation
        if augmentation is None or not augmentation.per_sample or getattr(self, "_placeholder", False):
            return items
        out = []
        for index, item in zip(indices, items):
            index = int(index)
            sample = {
                name: item[k] if item[k] is not None else field.batch(np.array([index]), [None])[0]
                for k, (name, field) in enumerate(self.fields)
            }
            result = augmentation.sample(sample, sample_rng(self.seed, self.epoch, index), index)
            fields = tuple(
                _keep_mask_dtype(field, result[name], sample[name]) for name, field in self.fields
            )  # fmt: skip
            out.append(fields + tuple(item[len(self.fields) :]))
        return out

    def _augmented_batch(self, arrays: list, position: int | None) -> list:
        """The batch's arrays after `augment` Keras layers: one transformation for every image and mask field."""
        augmentation = self.augmentation
        if augmentation is None or augmentation.per_sample or getattr(self, "_placeholder", False):
            return arrays
        images = {k: arrays[k] for k, (_, field) in enumerate(self.fields) if isinstance(field, ImageField)}
        masks = {k: arrays[k] for k, (_, field) in enumerate(self.fields) if isinstance(field, MaskField)}
        ignore = {k: cast(MaskField, self.fields[k][1]).ignore_index for k in masks}
        seed = batch_seed(self.seed, self.epoch, 0 if position is None else position)
        new_images, new_masks = augmentation.batch(images, masks, seed, ignore)  # type: ignore[arg-type]
        out = list(arrays)
        for k, value in {**new_images, **new_masks}.items():
            out[cast(int, k)] = value
        return out

    def _batch_field(self, k: int, field: Field, indices: np.ndarray, items: list, position: int | None) -> Any:
        if isinstance(field, PaddedField):
            first = lambda: [  # noqa: E731
                min(field.length(int(i)), field.maxlen or np.iinfo(np.int64).max) for i in self.batch_indices(0)
            ]
            return field.batch(indices, items, position=position, empty=self.buffers.empty, first=first)
        if isinstance(field, ImageField):
            deferred = k == 0 and self.scaling_deferred and all(np.asarray(a).dtype == np.uint8 for a in items)
            return field.batch(indices, items, empty=self.buffers.empty, dtype="uint8" if deferred else None)
        return field.batch(indices, items, position=position, empty=self.buffers.empty)

    def _structure(self, indices: np.ndarray, arrays: list) -> tuple:
        n = self.input_count
        x = arrays[0] if self._input_names is None else dict(zip(self._input_names, arrays[:n]))
        if self._target_names == {}:
            return (x,)
        y = arrays[n] if self._target_names is None else dict(zip(self._target_names, arrays[n:]))
        weights = None if self.sample_weights is None else self.sample_weights[indices]
        if self.class_weight is not None:
            k = next(k for k, (_, field) in enumerate(self.fields) if k >= n and isinstance(field, MaskField))
            mask_field = cast(MaskField, self.fields[k][1])
            pixels = mask_field.pixel_weights(arrays[k], self.class_weight)
            weights = pixels if weights is None else pixels * weights.reshape((-1,) + (1,) * (pixels.ndim - 1))
        return (x, y) if weights is None else (x, y, weights)

    def deferred_scaling(self) -> dict[int, float]:
        """With one image input in a float dtype, 8-bit batches may cross into a graph as `uint8`.

        Returns:
            `{0: 1 / 255}` then, else `{}` (dict inputs cross as they are).
        """
        keeps_pixels = self.augmentation is None or self.augmentation.geometric_only  # flips and crops move pixels only
        if self._input_names is None and (keeps_pixels or self.deferred_offsets()):
            scale = self.fields[0][1].deferred_scale()
            if scale is not None:
                return {0: scale}
        return {}

    def deferred_offsets(self) -> dict[int, tuple[tuple[float, float], ...]]:
        """With `RandomBrightness` (and flips and crops) on one float32 image input, its offsets join the graph too.

        Returns:
            `{0: ((low, high), ...)}`, one pair per `RandomBrightness`,
            then; else `{}`.
        """
        augmentation = self.augmentation
        ranges = None if augmentation is None else augmentation.brightness_ranges
        field = self.fields[0][1]
        if ranges and self._input_names is None and isinstance(field, ImageField) and field.dtype == "float32":
            return {0: ranges}
        return {}

    def output_signature(self) -> tuple:
        """The `tf.TensorSpec`s of a batch, with dicts where dicts of fields were given.

        Returns:
            A tuple: `x`, then `y` and `sample_weight` when present.
        """
        import tensorflow as tf

        reference = None
        if any(not field.in_memory for _, field in self.fields):
            reference = self.reference_item()[1]
        layers = self.augmentation if self.augmentation is not None and not self.augmentation.per_sample else None
        specs = []
        for k, (_, field) in enumerate(self.fields):
            item = None if reference is None else reference[k]
            shape = tuple(field.spec_shape(item))
            if layers is not None and isinstance(field, ImageField):
                shape = layers.output_shape(shape)  # a crop changes the size
            elif layers is not None and isinstance(field, MaskField):
                shape = layers.output_shape(shape + (1,))[:-1]
            specs.append(tf.TensorSpec((None,) + shape, tf.as_dtype(field.spec_dtype(item))))
        n = self.input_count
        x = specs[0] if self._input_names is None else dict(zip(self._input_names, specs[:n]))
        if self._target_names == {}:
            return (x,)
        y = specs[n] if self._target_names is None else dict(zip(self._target_names, specs[n:]))
        signature = [x, y]
        if self.class_weight is not None:
            mask = next(field for _, field in self.fields[n:] if isinstance(field, MaskField))
            shape = tuple(mask.spec_shape(None))
            if layers is not None:
                shape = layers.output_shape(shape + (1,))[:-1]
            signature.append(tf.TensorSpec((None,) + shape, tf.float32))
        elif self.sample_weights is not None or self.on_error == "skip":
            signature.append(tf.TensorSpec((None,), tf.float32))
        return tuple(signature)

    def item_signature(self, item: Any) -> Any:
        """Each field's `item_signature`: shapes, trailing shapes for padded fields."""
        return tuple(field.item_signature(part) for (_, field), part in zip(self.fields, item))

    def class_pixels(self, index: int, item: Any) -> dict[int, int]:
        """Pixel counts per class value over the sample's mask targets (see `Validating.class_pixels`)."""
        counts: dict[int, int] = {}
        for k, (_, field) in enumerate(self.fields[self.input_count :], self.input_count):
            if isinstance(field, MaskField) and item[k] is not None:
                values, numbers = np.unique(np.asarray(item[k]), return_counts=True)
                for value, number in zip(values.tolist(), numbers.tolist()):
                    counts[int(value)] = counts.get(int(value), 0) + int(number)
        return counts

    def describe_item(self, index: int, item: Any) -> tuple:
        """`(input_shape, input_dtype, target_shape, target_dtype, target_value)` of the first input and target."""
        x = item[0] if item[0] is not None else self.fields[0][1].batch(np.array([index]), [None])[0]
        if self._target_names == {}:
            return np.shape(x), str(np.asarray(x).dtype), None, None, None
        n = self.input_count
        target = self.fields[n][1]
        y = item[n] if item[n] is not None else target.batch(np.array([index]), [None])[0]
        y = np.asarray(y)
        value = int(y) if y.ndim == 0 and y.dtype.kind in "iub" else None
        return np.shape(x), str(np.asarray(x).dtype), y.shape, str(y.dtype), value

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}: {field.describe(None)}" for name, field in self.fields)
        return (
            f"{type(self).__name__}({self.num_samples} samples, {{{fields}}}, batch_size={self.batch_size}, "
            f"shuffle={self.shuffle}, seed={self.seed})"
        )
