"""`PaddedSequence`: variable-length arrays, one per sample, padded per batch; a preset of `FieldSequence`."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from keras_sepseq.checks import check_choice, check_int, check_labels, check_paths, check_targets
from keras_sepseq.errors import SampleError, ShapeMismatchError
from keras_sepseq.field_sequence import FieldSequence
from keras_sepseq.fields import ArrayField, Field, PaddedField
from keras_sepseq.npy import load_npy, npy_shape
from keras_sepseq.padding import PADDING_SIDES, bucketed_order, pad_batch, padding_weights
from keras_sepseq.paths import PathArray, PathLike, is_path_sequence
from keras_sepseq.sequence import collates_anywhere
from keras_sepseq.stacking import stack_arrays

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from keras_sepseq.options import SequenceOptions

_LENGTH_THREADS = 16


class PaddedSequence(FieldSequence):
    """Batches of variable-length arrays, padded per batch, optionally bucketed by length.

    Each sample is an array of shape `(T_i, *features)` (a time series, the
    frames of an utterance, a token sequence), stored as a `.npy` file or
    held in memory. It is a preset of `FieldSequence`: one `PaddedField`
    input and an `ArrayField` target (a `PaddedField` for per-timestep
    labels), batched together so that per-timestep labels share their
    sequences' padded length. `seq[i]` pads the batch's arrays to one length, like
    `tf.data.Dataset.padded_batch`, and returns `(x, y)`, or
    `(x, y, sample_weight)` when the labels are per-timestep sequences too.

    Padding is designed for `keras.layers.Masking(mask_value=value)`: choose
    a `value` that never occurs in the data (a real step equal to it in
    every feature would be masked). With per-timestep labels, the
    `sample_weight` is 1 for real steps and 0 for padding, so padding never
    counts in the loss.

    A zero-length sequence is allowed: its row is all padding (fully
    masked; with per-timestep labels its weights are all 0).

    On the TensorFlow backend Keras reads batches 0 and 1 before training
    and freezes every dimension equal in both. So that the time dimension
    stays open, batch 1 is padded one step longer whenever its length would
    equal batch 0's (unless `maxlen` fixes every length anyway). The extra
    step is padding like any other.

    Args:
        sequences: One `.npy` path per sample, or in-memory arrays of shape
            `(T_i, *features)` with the same `features`.
        labels: One label per sample: an array (or list) of fixed-shape
            labels, or one `.npy` path per sample; with `label_value` set,
            per-timestep label sequences of shape `(T_i, ...)` (paths or
            arrays), padded like the inputs. `None` gives inputs only.
        batch_size: Samples per batch. Defaults to 32.
        maxlen: Pad or truncate every sequence to this length; `None` (the
            default) pads each batch to its longest sequence.
        padding: `"post"` (the default) pads at the end, `"pre"` in front.
        truncating: With `maxlen`, `"post"` (the default) cuts the end of
            longer sequences, `"pre"` their beginning.
        value: The input padding value. Defaults to 0.0.
        dtype: The inputs' dtype. Defaults to `"float32"`.
        label_value: `None` (the default) for fixed-shape labels; otherwise
            the labels are per-timestep sequences, padded with this value.
        bucket_by_length: Form batches of similar length (see
            `bucketed_order`): less padding, every sample still once per
            epoch, epochs still differ. Lengths are read from the `.npy`
            headers, once, on first use. Defaults to `False`.
        **options: The options every sequence shares (`shuffle`, `seed`,
            `drop_remainder`, `workers`, `use_multiprocessing`,
            `max_queue_size`, `cache`, `cache_budget`, `on_error`,
            `max_errors`, `retries`, `num_shards`, `shard_index`, `shard`),
            documented on `BaseSequence`. `cache` may be `None` or
            `"memory"` here: sequences vary in length, which a directory
            cache cannot store.

    Raises:
        ValueError: At construction, for empty input, lengths that differ,
            ragged labels without `label_value`, in-memory arrays that are
            0-d or differ in trailing shape, or an argument out of range;
            the message names the argument or sample.
        SampleError: From `seq[i]`, when a file cannot be loaded or a
            sample is 0-d; the message holds the path and sample index.
        ShapeMismatchError: From `seq[i]`, when trailing shapes differ, or
            a per-timestep label's length differs from its sequence's.

    Example:

    >>> seq = PaddedSequence(feature_paths, class_ids, batch_size=16, value=-1.0, bucket_by_length=True)  # doctest: +SKIP
    >>> model = keras.Sequential([keras.Input((None, 40)), keras.layers.Masking(-1.0), keras.layers.LSTM(64), keras.layers.Dense(10)])  # doctest: +SKIP
    >>> model.fit(seq, epochs=5)  # doctest: +SKIP
    """

    single_field_names = ("sequence", "label")

    def __init__(
        self,
        sequences: Sequence[PathLike] | PathArray | Sequence[Any],
        labels: Any,
        batch_size: int = 32,
        *,
        maxlen: int | None = None,
        padding: str = "post",
        truncating: str = "post",
        value: float = 0.0,
        dtype: Any = "float32",
        label_value: float | None = None,
        bucket_by_length: bool = False,
        **options: Unpack[SequenceOptions],
    ) -> None:
        self.sequence_paths: PathArray | None = None
        self.sequences: list[np.ndarray] | None = None
        if is_path_sequence(sequences):
            self.sequence_paths = check_paths("sequences", sequences)
            n = len(self.sequence_paths)
        else:
            self.sequences = _check_arrays("sequences", sequences)
            n = len(self.sequences)
        self.label_value = _check_number("label_value", label_value, allow_none=True)
        self.label_paths, self.labels = check_targets(
            labels,
            name="labels",
            inputs_name="sequences",
            num_samples=n,
            to_arrays=_check_fixed_labels if self.label_value is None else (lambda t: _check_arrays("labels", t)),
        )
        if self.sequences is not None and isinstance(self.labels, list):
            for i, (seq, lab) in enumerate(zip(self.sequences, self.labels)):
                if len(seq) != len(lab):
                    raise ValueError(
                        f"per-timestep labels must be as long as their sequence: sequences[{i}] has "
                        f"{len(seq)} steps but labels[{i}] has {len(lab)}."
                    )
        self.maxlen = None if maxlen is None else check_int("maxlen", maxlen, minimum=1)
        self.padding = check_choice("padding", padding, PADDING_SIDES)
        self.truncating = check_choice("truncating", truncating, PADDING_SIDES)
        self.value = _check_number("value", value)
        self.dtype = _check_dtype(dtype)
        self.bucket_by_length = bool(bucket_by_length)
        cache = options.get("cache")
        if cache not in (None, "memory"):
            raise ValueError(
                "PaddedSequence supports cache=None or 'memory' (sequences vary in length, which a "
                f"directory cache cannot store). Received: cache={cache!r}"
            )
        self._lengths: np.ndarray | None = None
        inputs = PaddedField(
            self.sequence_paths if self.sequence_paths is not None else self.sequences,
            maxlen=self.maxlen, padding=self.padding, truncating=self.truncating, value=cast(float, self.value), dtype=self.dtype,
            loader=self.load_input, kind="sequence",
        )  # fmt: skip
        labels = self.label_paths if self.label_paths is not None else self.labels
        targets: Field | None = None
        if labels is not None and self.label_value is not None:
            targets = PaddedField(labels, value=self.label_value, dtype=None, loader=self.load_target, kind="label")
        elif labels is not None:
            targets = ArrayField(labels, loader=self.load_target, kind="label")
        super().__init__(inputs, targets, batch_size, **options)

    # Hooks for custom formats.

    def load_input(self, path: str) -> np.ndarray:
        """Loads one sample's sequence, of shape `(T, *features)`. Override for other formats.

        Args:
            path: The sample's file; by default a `.npy` read with
                `allow_pickle=False`.

        Returns:
            An array with the time axis first.

        Raises:
            Exception: Anything; the caller wraps it in a `SampleError`
                naming the file.

        Example:

        >>> class Csv(PaddedSequence):
        ...     def load_input(self, path):
        ...         return np.loadtxt(path, delimiter=",", ndmin=2)
        """
        return load_npy(path)

    def load_target(self, path: str) -> np.ndarray:
        """Loads one sample's label (a per-timestep sequence with `label_value`). Override for other formats.

        Args:
            path: The label file; by default a `.npy` read with
                `allow_pickle=False`.

        Returns:
            An array.

        Raises:
            Exception: Anything; the caller wraps it in a `SampleError`.

        Example:

        >>> seq.load_target("tags_007.npy")  # doctest: +SKIP
        array([0, 0, 3, 3, 1])
        """
        return load_npy(path)

    def sequence_length(self, path: str) -> int:
        """Returns the length (first dimension) of the sequence stored at `path`, cheaply.

        The default reads the `.npy` header only; for any other file it
        falls back to `len(self.load_input(path))`. Override it together
        with `load_input` when a format can tell its length faster.

        Args:
            path: The sample's file.

        Returns:
            The number of time steps.

        Raises:
            Exception: Anything; the caller wraps it in a `SampleError`.

        Example:

        >>> seq.sequence_length("features_017.npy")  # doctest: +SKIP
        412
        """
        try:
            shape = npy_shape(path)
        except ValueError:
            if path.endswith(".npy"):
                raise
            return len(self.load_input(path))
        if not shape:
            raise ValueError("the array is 0-d (a scalar); a sequence needs a time axis first")
        return shape[0]

    # Lengths, ordering and padding statistics.

    def lengths(self) -> np.ndarray:
        """The length of every sequence, read once (in threads, from `.npy` headers) and cached.

        Returns:
            An int64 array of `num_samples` lengths, before truncation.

        Raises:
            SampleError: If a file's length cannot be read, naming it.

        Example:

        >>> seq.lengths()[:3]  # doctest: +SKIP
        array([412, 97, 230])
        """
        if self._lengths is None:
            if self.sequences is not None:
                lengths = [len(s) for s in self.sequences]
            else:
                with ThreadPoolExecutor(_LENGTH_THREADS) as pool:
                    lengths = list(pool.map(self._length_of, range(self.num_samples), chunksize=256))
            self._lengths = np.asarray(lengths, dtype=np.int64)
        return self._lengths

    def _length_of(self, index: int) -> int:
        if self._lengths is not None:
            return int(self._lengths[index])
        if self.sequences is not None:
            return len(self.sequences[index])
        path = cast(PathArray, self.sequence_paths)[index]
        return int(self.load_sample(self.sequence_length, path, index, "sequence length"))

    def order_for_epoch(self, epoch: int) -> np.ndarray:
        """The epoch's order: shuffled, or bucketed by length with `bucket_by_length=True`.

        Args:
            epoch: The epoch number.

        Returns:
            An int64 array of this shard's sample indices, each once.

        Example:

        >>> seq.order_for_epoch(0)  # doctest: +SKIP
        """
        members = self.shard_members(epoch)
        if not self.bucket_by_length:
            return members
        if not self.shuffle:
            members = np.sort(members)
        lengths = self.lengths()[members]
        if self.maxlen is not None:
            lengths = np.minimum(lengths, self.maxlen)
        return members[
            bucketed_order(lengths, batch_size=self.batch_size, seed=self.seed, epoch=epoch, shuffle=self.shuffle)
        ]

    def _order_settings(self) -> dict:
        return {**super()._order_settings(), "bucket_by_length": self.bucket_by_length, "maxlen": self.maxlen}

    def padding_efficiency(self) -> float:
        """Real time steps divided by padded time steps over the current epoch's batches.

        1.0 means no padding at all. Compare `bucket_by_length=False` and
        `True` to see what bucketing saves.

        Returns:
            A ratio in (0, 1].

        Raises:
            SampleError: If a sequence's length cannot be read.

        Example:

        >>> PaddedSequence(paths, labels, bucket_by_length=True, seed=0).padding_efficiency()  # doctest: +SKIP
        0.97
        """
        lengths = self.lengths()
        if self.maxlen is not None:
            lengths = np.minimum(lengths, self.maxlen)
        real = padded = 0
        first_length = None
        for position in range(len(self)):
            batch = lengths[self.batch_indices(position)]
            length = self._padded_length(batch, position, first_length)
            first_length = length if position == 0 else first_length
            real += int(batch.sum())
            padded += len(batch) * length
        return real / padded

    def _padded_length(self, lengths: np.ndarray, position: int, first_length: int | None) -> int:
        """The time length of a batch whose (truncated) sequence lengths are `lengths`."""
        if self.maxlen is not None:
            return self.maxlen
        length = max(1, int(np.max(lengths)))
        if position == 1:  # keep Keras's signature probe from freezing the time dimension
            if first_length is None:
                first = self.batch_indices(0)
                first_length = max(1, max(self._length_of(int(i)) for i in first))
            if length == first_length:
                length += 1
        return length

    # Batches.

    def load_item(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Loads sample `index`'s sequence and, from a file or per-timestep memory, its label.

        Runs in workers too.

        Args:
            index: The sample index.

        Returns:
            `(sequence, label)`; `label` is `None` for fixed in-memory labels
            or none at all.

        Raises:
            SampleError: If a file cannot be loaded or holds a 0-d array.

        Example:

        >>> sequence, label = seq.load_item(4)  # doctest: +SKIP
        """
        items = super().load_item(index)
        x, y = items[0], (items[1] if len(items) > 1 else None)
        checks: list[tuple[Any, PathArray | None, str]] = [(x, self.sequence_paths, "sequence")]
        if self.label_value is not None:  # per-timestep labels need a time axis too
            checks.append((y, self.label_paths, "label"))
        for value, paths, what in checks:
            if paths is not None and np.ndim(value) == 0:  # arrays in memory were checked at construction
                raise SampleError(
                    f"the {what} is 0-d (a scalar); a sequence needs a time axis first", path=paths[index], index=index
                )
        return x, y

    def field_label(self, name: str, field: Field) -> str:
        """`"sequence"` or `"label"`, as messages name them."""
        return field.kind

    @collates_anywhere
    def collate(self, indices: np.ndarray, items: list, position: int | None = None) -> tuple:
        """Pads loaded samples into `(x, y)` or `(x, y, sample_weight)`.

        Args:
            indices: Sample indices, in batch order.
            items: `load_item(i)` for each of `indices`.
            position: The batch's position in the epoch: batch 1 is padded
                one step longer when it would match batch 0 (see the class
                docstring); `None` for a batch outside the epoch order.

        Returns:
            `(x, y)`, `(x, y, sample_weight)` with per-timestep labels, or
            `(x,)` without labels.

        Raises:
            ShapeMismatchError: If trailing shapes differ, or a label's
                length differs from its sequence's.

        Example:

        >>> x, y = seq.collate(indices, [seq.load_item(i) for i in indices])  # doctest: +SKIP
        """
        items = self.augmented_items(indices, items)
        inputs = [item[0] for item in items]
        sequence_name = self._name(self.sequence_paths, "sequences")
        _check_trailing(inputs, indices, sequence_name, "sequence")
        lengths = np.array([len(a) for a in inputs], dtype=np.int64)
        if self.maxlen is not None:
            lengths = np.minimum(lengths, self.maxlen)
        length = self._padded_length(lengths, -1 if position is None else position, None)
        options: dict[str, Any] = dict(maxlen=length, padding=self.padding, truncating=self.truncating)
        x = pad_batch(inputs, value=cast(float, self.value), dtype=self.dtype, **options)
        if self.labels is None and self.label_paths is None:
            return (x,)
        if self.label_value is None:
            if self.labels is not None:
                return x, self.labels[indices]
            label_paths = cast(PathArray, self.label_paths)
            return x, stack_arrays([item[1] for item in items], lambda k: repr(label_paths[indices[k]]), what="label")
        targets = [item[1] for item in items]
        label_name = self._name(self.label_paths, "labels")
        _check_trailing(targets, indices, label_name, "label")
        for i, sequence, target in zip(indices, inputs, targets):
            if len(sequence) != len(target):
                raise ShapeMismatchError(
                    f"per-timestep labels must be as long as their sequence: {sequence_name(int(i))} has "
                    f"{len(sequence)} steps but {label_name(int(i))} has {len(target)}."
                )
        label_dtype = next((t.dtype for t in targets if t.size), targets[0].dtype)
        y = pad_batch(targets, value=self.label_value, dtype=label_dtype, **options)
        return x, y, padding_weights(lengths, length, padding=self.padding)

    def sample_path(self, index: int) -> str:
        """The sequence file of sample `index`, or `sequences[index]` for in-memory data."""
        return self.sequence_paths[index] if self.sequence_paths is not None else f"sequences[{index}]"

    def item_signature(self, item: Any) -> Any:
        """Trailing shapes: the time dimension may vary (and the labels' too, with `label_value`)."""
        x, y = item
        if y is None:
            return (x.shape[1:], None)
        return (x.shape[1:], y.shape[1:] if self.label_value is not None else y.shape)

    def item_problem(self, index: int, item: Any) -> str | None:
        """As in `BaseSequence`, plus: a per-timestep label must be as long as its sequence."""
        x, y = item
        if self.label_value is not None and len(x) != len(y):
            return f"its label has {len(y)} steps but its sequence has {len(x)}"
        return super().item_problem(index, item)

    @staticmethod
    def _name(paths: PathArray | None, argument: str):
        if paths is None:
            return lambda i: f"{argument}[{i}]"
        return lambda i: repr(paths[i])

    def output_signature(self) -> tuple:
        """The `tf.TensorSpec`s of a batch; the time dimension is `None` unless `maxlen` is set.

        Feature and label shapes are those of the first sample that loads.

        Returns:
            A tuple of `tf.TensorSpec`: `x`, then `y` (if any), then
            `sample_weight` (per-timestep with `label_value`; per-sample with
            `on_error="skip"`).

        Example:

        >>> seq.output_signature()  # doctest: +SKIP
        (TensorSpec(shape=(None, None, 40), dtype=tf.float32, name=None), ...)
        """
        import tensorflow as tf

        _, (x, y) = self.reference_item()
        time = self.maxlen
        specs = [tf.TensorSpec((None, time) + x.shape[1:], self.dtype)]
        if self.label_value is not None:
            specs.append(tf.TensorSpec((None, time) + y.shape[1:], y.dtype))
            specs.append(tf.TensorSpec((None, time), tf.float32))
            return tuple(specs)
        if self.labels is not None:
            specs.append(tf.TensorSpec((None,) + self.labels.shape[1:], self.labels.dtype))
        elif self.label_paths is not None:
            specs.append(tf.TensorSpec((None,) + y.shape, y.dtype))
        if self.on_error == "skip" and len(specs) == 2:
            specs.append(tf.TensorSpec((None,), tf.float32))
        return tuple(specs)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.num_samples} sequences, batch_size={self.batch_size}, maxlen={self.maxlen}, "
            f"padding={self.padding!r}, value={self.value}, bucket_by_length={self.bucket_by_length}, "
            f"shuffle={self.shuffle}, seed={self.seed})"
        )


def _check_trailing(arrays: list[np.ndarray], indices: np.ndarray, name, what: str) -> None:
    first = next((k for k, a in enumerate(arrays) if len(a)), None)
    if first is None:
        return
    features = arrays[first].shape[1:]
    for k, array in enumerate(arrays):
        if array.shape[1:] != features and array.shape != (0,):
            raise ShapeMismatchError(
                f"{what}s in one batch have different trailing shapes: {name(int(indices[first]))} has shape "
                f"{arrays[first].shape} but {name(int(indices[k]))} has shape {array.shape}; only the first "
                "(time) dimension may vary."
            )


def _check_arrays(name: str, values: Any) -> list[np.ndarray]:
    if isinstance(values, np.ndarray) and values.dtype != object:
        if values.ndim < 2:
            raise ValueError(
                f"`{name}` as one array must be at least 2-D (samples, time, ...). Received shape {values.shape}."
            )
        arrays = list(values)
    else:
        try:
            arrays = [np.asarray(v) for v in values]
        except TypeError:
            raise ValueError(
                f"`{name}` must be paths or a sequence of arrays. Received: {type(values).__name__}"
            ) from None
    if not arrays:
        raise ValueError(f"`{name}` must not be empty. Received: {name} with 0 samples")
    features, first = None, 0
    for i, array in enumerate(arrays):
        if array.ndim == 0:
            raise ValueError(f"`{name}[{i}]` is 0-d (a scalar); each sequence needs a time axis first.")
        if array.dtype == object:
            raise ValueError(f"`{name}[{i}]` holds Python objects; expected a numeric array.")
        if features is None and len(array):
            features, first = array.shape[1:], i
        elif len(array) and array.shape[1:] != features:
            raise ValueError(
                f"`{name}` must share their trailing shape: {name}[{first}] has shape {arrays[first].shape} "
                f"but {name}[{i}] has shape {array.shape}; only the first (time) dimension may vary."
            )
    return arrays


def _check_fixed_labels(labels: Any) -> np.ndarray:
    try:
        return check_labels("labels", labels)
    except ValueError as e:
        raise ValueError(
            f"{e} If the labels are per-timestep sequences of different lengths, pass `label_value=` "
            "(the value to pad them with)."
        ) from None


def _check_number(name: str, value: Any, *, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number. Received: {name}={value!r}")
    return cast(float, value)  # kept as given (an int stays an int)


def _check_dtype(dtype: Any) -> np.dtype:
    try:
        result = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"`dtype` must be a numeric numpy dtype. Received: dtype={dtype!r}") from None
    if result.kind not in "biuf":
        raise ValueError(f"`dtype` must be a numeric numpy dtype. Received: dtype={dtype!r}")
    return result
