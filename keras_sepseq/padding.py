"""Pure functions for variable-length data: padding, masks and length-bucketed orders.

They work without a dataset object; `PaddedSequence` composes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

PADDING_SIDES: tuple[str, ...] = ("pre", "post")
"""Allowed `padding` and `truncating` values."""

BUCKET_WINDOW_BATCHES = 32
"""`bucketed_order` sorts by length within shuffled windows of this many batches."""


def _check_side(name: str, value: Any) -> str:
    if value not in PADDING_SIDES:
        raise ValueError(f"`{name}` must be one of {list(PADDING_SIDES)}. Received: {name}={value!r}")
    return value


def pad_batch(
    arrays: Sequence[Any],
    *,
    maxlen: int | None = None,
    padding: str = "post",
    truncating: str = "post",
    value: float = 0.0,
    dtype: Any = "float32",
) -> np.ndarray:
    """Pads (or truncates) arrays of shape `(T_i, *features)` to one length and stacks them.

    For 1-D arrays this matches `keras.utils.pad_sequences`; arrays with
    trailing feature dimensions are padded along their first axis only. A
    zero-length array gives a row of padding.

    Args:
        arrays: Array-likes of shape `(T_i, *features)`, the same `features`
            for all.
        maxlen: The length to pad or truncate to; `None` (the default) pads
            to the longest array.
        padding: `"post"` (the default) pads at the end, `"pre"` in front.
        truncating: `"post"` (the default) cuts the end of longer arrays,
            `"pre"` their beginning.
        value: The padding value. Defaults to 0.0.
        dtype: The result's dtype. Defaults to `"float32"`.

    Returns:
        An array of shape `(len(arrays), length, *features)`.

    Raises:
        ValueError: If `arrays` is empty, an array is 0-d, trailing shapes
            differ (the message names both positions and shapes), `maxlen`
            is below 1, or `padding`/`truncating` is unknown.

    Example:

    >>> pad_batch([[1, 2, 3], [4]], dtype="int32")
    array([[1, 2, 3],
           [4, 0, 0]], dtype=int32)
    >>> pad_batch([np.ones((2, 2)), np.ones((1, 2))], padding="pre").shape
    (2, 2, 2)
    """
    _check_side("padding", padding)
    _check_side("truncating", truncating)
    if maxlen is not None and (isinstance(maxlen, bool) or not isinstance(maxlen, (int, np.integer)) or maxlen < 1):
        raise ValueError(f"`maxlen` must be None or an integer >= 1. Received: maxlen={maxlen!r}")
    arrays = [np.asarray(a) for a in arrays]
    if not arrays:
        raise ValueError("`arrays` must hold at least one array. Received an empty sequence.")
    features, first = None, 0
    for i, array in enumerate(arrays):
        if array.ndim == 0:
            raise ValueError(f"arrays[{i}] is 0-d (a scalar); each array needs a time axis first.")
        if features is None and len(array):
            features, first = array.shape[1:], i
    for i, array in enumerate(arrays):
        if features is not None and array.shape[1:] != features and array.shape != (0,):
            raise ValueError(
                f"arrays must share their trailing shape: arrays[{first}] has shape {arrays[first].shape} "
                f"but arrays[{i}] has shape {array.shape}."
            )
    if features is None:  # every array is empty
        features = arrays[0].shape[1:]
    length = max(len(a) for a in arrays) if maxlen is None else int(maxlen)
    out = np.full((len(arrays), length) + features, value, dtype=dtype)
    for i, array in enumerate(arrays):
        if not len(array):
            continue
        kept = array[-length:] if truncating == "pre" else array[:length]
        if padding == "post":
            out[i, : len(kept)] = kept
        else:
            out[i, length - len(kept) :] = kept
    return out


def padding_weights(lengths: Sequence[int] | np.ndarray, length: int, *, padding: str = "post") -> np.ndarray:
    """Per-timestep weights: 1.0 for real steps, 0.0 for padding.

    Args:
        lengths: The real length of each row (already truncated to
            `length`).
        length: The padded length.
        padding: `"post"` (the default) or `"pre"`, as given to `pad_batch`.

    Returns:
        A float32 array of shape `(len(lengths), length)`.

    Raises:
        ValueError: If `padding` is unknown.

    Example:

    >>> padding_weights([2, 0, 3], 3)
    array([[1., 1., 0.],
           [0., 0., 0.],
           [1., 1., 1.]], dtype=float32)
    """
    _check_side("padding", padding)
    real_lengths = np.minimum(np.asarray(lengths, dtype=np.int64), length)[:, None]
    steps = np.arange(length)[None, :]
    real = steps < real_lengths if padding == "post" else steps >= length - real_lengths
    return real.astype(np.float32)


def bucketed_order(
    lengths: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    window_batches: int = BUCKET_WINDOW_BATCHES,
) -> np.ndarray:
    """An epoch order whose batches hold samples of similar length.

    The samples are shuffled, cut into windows of `window_batches` batches,
    sorted by length within each window and cut into batches; the order of
    the full batches is then shuffled. A last, partial batch stays last, so
    batch `i` is always `order[i * batch_size:(i + 1) * batch_size]`.
    Every sample appears exactly once, and each epoch differs. With
    `shuffle=False`, samples are sorted by length (ties in the given order)
    and batches come shortest first.

    Args:
        lengths: The length of each sample.
        batch_size: Samples per batch.
        seed: A non-negative integer.
        epoch: The epoch number.
        shuffle: See above. Defaults to `True`.
        window_batches: Batches per sorting window. Defaults to
            `BUCKET_WINDOW_BATCHES`; larger windows pad less and mix less.

    Returns:
        An int64 array holding each of `0 .. len(lengths) - 1` once.

    Example:

    >>> order = bucketed_order(np.array([5, 1, 5, 1]), batch_size=2, seed=0, epoch=0)
    >>> sorted(order.tolist()), sorted(np.array([5, 1, 5, 1])[order[:2]].tolist()) in ([1, 1], [5, 5])
    ([0, 1, 2, 3], True)
    """
    lengths = np.asarray(lengths)
    n = len(lengths)
    if not shuffle:
        return np.argsort(lengths, kind="stable").astype(np.int64)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n)
    window = batch_size * window_batches
    for start in range(0, n, window):
        chunk = order[start : start + window]
        order[start : start + window] = chunk[np.argsort(lengths[chunk], kind="stable")]
    full = n // batch_size
    batches = order[: full * batch_size].reshape(full, batch_size)[rng.permutation(full)]
    return np.concatenate([batches.ravel(), order[full * batch_size :]]).astype(np.int64)
