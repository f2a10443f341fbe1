"""Stacking loaded items into one batch array, converting each once and naming the files that do not fit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from keras_sepseq.errors import ShapeMismatchError


def copy_same_kind(out: np.ndarray, value: np.ndarray) -> None:
    """Copies `value` into `out`, refusing casts across kinds (float into int, say)."""
    np.copyto(out, value, casting="same_kind")


def stack_arrays(
    values: list[np.ndarray],
    name_of: Callable[[int], str],
    *,
    what: str,
    dtype: Any = None,
    write: Callable[[np.ndarray, np.ndarray], None] = copy_same_kind,
    hint: str = "",
    empty: Callable[[tuple, Any], np.ndarray] = np.empty,
) -> np.ndarray:
    """Stacks per-sample arrays into one preallocated batch, converting each once.

    Args:
        values: One array per sample, in batch order.
        name_of: Names sample `k` of the batch in messages (e.g. its path).
        what: `"image"`, `"label"`..., for messages.
        dtype: The batch dtype; `None` (the default) keeps the first
            sample's.
        write: `write(out, value)` copies one sample into its slot. Defaults
            to a copy that refuses casts across kinds (float into int, say).
        hint: A sentence appended to a shape-mismatch message.
        empty: Allocates the batch, `np.empty` by default (a
            `BatchBuffers.empty` recycles them).

    Returns:
        An array of shape `(len(values),) + sample_shape`.

    Raises:
        ShapeMismatchError: If a sample's shape (or dtype) does not fit the
            first one's; the message names both samples.

    Example:

    >>> stack_arrays([np.zeros(2), np.ones(2)], str, what="label").shape
    (2, 2)
    """
    first = values[0]
    batch = empty((len(values),) + first.shape, first.dtype if dtype is None else dtype)
    for k, value in enumerate(values):
        if value.shape != first.shape:
            message = (
                f"{what}s in one batch have different shapes: {name_of(0)} has shape {first.shape} "
                f"but {name_of(k)} has shape {value.shape}."
            )
            raise ShapeMismatchError(f"{message} {hint}".rstrip())
        try:
            write(batch[k, ...], value)
        except TypeError as e:
            raise ShapeMismatchError(
                f"{what}s in one batch have dtypes that do not mix: {name_of(0)} is {batch.dtype} "
                f"and {name_of(k)} is {value.dtype} ({e})."
            ) from e
    return batch
