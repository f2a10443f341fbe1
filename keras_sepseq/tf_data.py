"""tf.data export: `to_tf_dataset`, and images crossing into TensorFlow as uint8, scaled in the graph."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from keras_sepseq.keras_integration import adapter_batches, adapter_signature, wrap_get_tf_dataset

__all__ = ["DeferredPixels", "TfDataExport", "batches_dataset"]


class DeferredPixels(NamedTuple):
    """An image batch on its way into a graph: `uint8` pixels and the brightness offsets still to add there.

    What `collate` returns, while `scaling_deferred`, for an element in
    `deferred_offsets()`: the graph computes
    `clip(float32(pixels) * scale + offsets[:, j], low_j, high_j)` for each
    step `j` in turn, in float32, the operations (and so the bits) NumPy
    would have carried out.

    Example:

    >>> DeferredPixels(np.zeros((2, 4, 4, 3), np.uint8), np.array([[0.1], [-0.05]], np.float32)).offsets.shape
    (2, 1)
    """

    pixels: np.ndarray
    offsets: np.ndarray


class TfDataExport:
    """The tf.data part of a sequence (a mixin of `BaseSequence`: use that)."""

    if TYPE_CHECKING:  # provided by BaseSequence and its other parts

        def __len__(self) -> int: ...
        def __getitem__(self, index: int) -> Any: ...
        def on_epoch_end(self) -> None: ...

    def deferred_scaling(self) -> dict[int, float]:
        """The batch elements that may reach a TensorFlow graph as `uint8`, to be scaled there. Subclasses say.

        When Keras trains on the TensorFlow backend, or through
        `to_tf_dataset()`, a batch goes from Python into a tf.data graph.
        An image batch crosses as `uint8` in a quarter of the bytes of
        `float32`, and the graph then computes `float32(pixels) * scale`
        (cast to the element's dtype) in C++, outside the Python lock: the
        same numbers `collate` would have produced, at lower cost to the
        Python threads that also decode. While such a batch is assembled,
        `scaling_deferred` is `True` and `collate` may return these
        elements as unscaled `uint8`; whatever it returns in another dtype
        is passed through unchanged.

        Returns:
            `{element index: scale}`; `{}` (the default) defers nothing.

        Example:

        >>> seq.deferred_scaling()  # doctest: +SKIP
        {0: 0.00392156862745098}
        """
        return {}

    def deferred_offsets(self) -> dict[int, tuple[tuple[float, float], ...]]:
        """Elements of `deferred_scaling()` whose brightness offsets are also added in the graph. Subclasses say.

        For such an element, `collate` may return `DeferredPixels` while
        `scaling_deferred`: the `uint8` batch and one float32 offset per
        sample and step; the graph adds each step's offsets after scaling
        and clips to its `(low, high)`. Only for `float32` elements.

        Returns:
            `{element index: ((low, high), ...)}`, one pair per step; `{}`
            (the default) adds nothing.

        Example:

        >>> seq.deferred_offsets()  # doctest: +SKIP
        {0: ((0.0, 1.0),)}
        """
        return {}

    @property
    def scaling_deferred(self) -> bool:
        """Whether the batch being assembled in this thread goes to a graph that applies `deferred_scaling()`."""
        return getattr(_DEFERRING, "dataset", None) is self

    def output_signature(self) -> tuple:
        """The `tf.TensorSpec`s of a batch, `None` where sizes vary. Subclasses say.

        Raises:
            NotImplementedError: In `BaseSequence` itself.
        """
        raise NotImplementedError("subclasses of BaseSequence describe their batches in output_signature()")

    def to_tf_dataset(self, prefetch: int = 2) -> Any:
        """This dataset as a `tf.data.Dataset` with an exact `output_signature`.

        Each pass over the dataset is one epoch: batches in order (each
        epoch's samples shuffled as usual), then `on_epoch_end`. Loading
        still runs on keras_sepseq's workers; tf.data autotuning is turned
        off on the generator, which avoids the epoch-start stall of Keras's
        own generator-backed path. Use it to compose with tf.data,
        `tf.distribute` or the tf.data service.

        Args:
            prefetch: Batches tf.data keeps ready ahead of the consumer.
                Defaults to 2.

        Returns:
            A `tf.data.Dataset` of `(x, y)`, `(x, y, sample_weight)` or `(x,)`.

        Example:

        >>> ds = seq.to_tf_dataset()  # doctest: +SKIP
        >>> model.fit(ds, epochs=10, shuffle=False)  # the dataset orders itself  # doctest: +SKIP
        """
        import tensorflow as tf

        signature = self.output_signature()

        def one_epoch():
            for position in range(len(self)):
                yield self[position]
            self.on_epoch_end()

        options = tf.data.Options()
        options.autotune.enabled = False
        dataset = batches_dataset(self, one_epoch, signature).with_options(options)
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(self)))
        return dataset.prefetch(prefetch) if prefetch else dataset


_DEFERRING = threading.local()  # .dataset: the sequence whose batch this thread assembles for batches_dataset


def _deferrable(dataset: Any, signature: Any) -> dict[int, float]:
    """The part of `dataset.deferred_scaling()` that applies to a flat tuple `signature` of floating tensors."""
    import tensorflow as tf

    if not isinstance(signature, tuple) or not all(isinstance(s, tf.TensorSpec) for s in signature):
        return {}
    plan = dataset.deferred_scaling()
    return {k: float(v) for k, v in plan.items() if 0 <= k < len(signature) and signature[k].dtype.is_floating}


def batches_dataset(dataset: Any, batches: Callable[[], Iterator], signature: tuple):
    """A `tf.data.Dataset` of the batches `batches()` yields, the elements of `deferred_scaling()` scaled in the graph.

    While `batches()` assembles a batch (in TensorFlow's generator thread),
    `dataset.scaling_deferred` is `True`; each deferred element then crosses
    as the `uint8` array `collate` returned, or, if `collate` returned
    another dtype, as that array in a second, otherwise empty slot. The
    graph multiplies the `uint8` one by the scale in float32 and casts it
    to the signature's dtype, which gives the bits `write_pixels` gives.

    Args:
        dataset: The sequence the batches come from.
        batches: Returns a fresh iterator of batches (tuples) per pass.
        signature: The `tf.TensorSpec` of each batch element, as delivered.

    Returns:
        A `tf.data.Dataset` whose `element_spec` matches `signature`.

    Example:

    >>> ds = batches_dataset(seq, lambda: (seq[i] for i in range(len(seq))), seq.output_signature())  # doctest: +SKIP
    """
    import tensorflow as tf

    plan = _deferrable(dataset, signature)
    if not plan:
        return tf.data.Dataset.from_generator(batches, output_signature=signature)
    steps = {k: v for k, v in dataset.deferred_offsets().items() if k in plan and signature[k].dtype == tf.float32}
    crossing = tuple(
        (tf.TensorSpec(spec.shape, tf.uint8), spec) + ((tf.TensorSpec((None, len(steps[k])), tf.float32),) if k in steps else ())
        if k in plan else spec
        for k, spec in enumerate(signature)
    )  # fmt: skip

    def split(value: Any, spec: Any, k: int) -> tuple[np.ndarray, ...]:
        offsets = np.empty((0, len(steps[k])), np.float32) if k in steps else None
        if isinstance(value, DeferredPixels):
            if offsets is None:
                raise TypeError(f"collate returned DeferredPixels for batch element {k}, not in deferred_offsets()")
            value, offsets = np.asarray(value.pixels), np.asarray(value.offsets, np.float32)
        value = np.asarray(value)
        if value.dtype == np.uint8:
            parts = value, np.empty((0,) + value.shape[1:], spec.dtype.as_numpy_dtype)
        else:
            parts = np.empty((0,) + value.shape[1:], np.uint8), value
        return parts if offsets is None else parts + (offsets,)

    def generate():
        iterator = iter(batches())
        while True:
            _DEFERRING.dataset = dataset
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                _DEFERRING.dataset = None
            yield tuple(split(value, signature[k], k) if k in plan else value for k, value in enumerate(batch))

    def pixels(element: tuple, k: int) -> Any:
        """The float batch from a deferred element `(raw, ready[, offsets])`: `ready` if it came ready, else scaled."""
        raw, ready, dtype = element[0], element[1], signature[k].dtype

        def scaled():
            values = tf.cast(tf.cast(raw, tf.float32) * np.float32(plan[k]), dtype)
            if k not in steps:
                return values
            offsets = element[2]

            def brightened():  # as Augmentation.photometric: add each step's offsets, then clip, in float32
                out = values
                for j, (low, high) in enumerate(steps[k]):
                    out = tf.clip_by_value(out + offsets[:, j, tf.newaxis, tf.newaxis, tf.newaxis], low, high)
                return out

            return tf.cond(tf.shape(offsets)[0] > 0, brightened, lambda: values)

        return tf.cond(tf.shape(ready)[0] > 0, lambda: ready, scaled)

    @tf.autograph.experimental.do_not_convert  # plain graph code: nothing for AutoGraph to rewrite
    def scale(*elements):
        return tuple(pixels(element, k) if k in plan else element for k, element in enumerate(elements))

    return tf.data.Dataset.from_generator(generate, output_signature=crossing).map(scale)


def _ours_in_keras_tf_dataset(adapter: Any, dataset: Any) -> Any:
    """What Keras's `PyDatasetAdapter.get_tf_dataset` returns, for keras_sepseq datasets: tf.data autotuning off and
    images crossing into the graph as `uint8` (see `BaseSequence.deferred_scaling`). Other datasets are left alone.

    Keras wraps a PyDataset that runs no workers of its own (ours tell it
    `workers=1`) in `from_generator(...).prefetch(AUTOTUNE)` with autotuning
    on, which waits before asking for the first batch of one epoch in two
    (figures in docs/benchmarks.md); with autotuning off, as Keras itself
    sets it when its own workers run, every epoch starts at once. Our
    worker pool prefetches already, so the autotuner has nothing to tune.
    """
    sequence = getattr(adapter, "py_dataset", None)
    if isinstance(sequence, TfDataExport) and getattr(adapter, "enqueuer", None) is None:
        import tensorflow as tf

        signature = adapter_signature(adapter)
        batches = adapter_batches(adapter)
        if batches is not None and _deferrable(sequence, signature):
            # The same generator Keras built (its batch order, its epochs), with images crossing as uint8.
            dataset = batches_dataset(sequence, batches, signature).prefetch(tf.data.AUTOTUNE)
        options = tf.data.Options()
        options.autotune.enabled = False
        dataset = dataset.with_options(options)
    return dataset


wrap_get_tf_dataset(_ours_in_keras_tf_dataset)
