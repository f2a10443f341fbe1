"""Argument checks shared by every sequence and field, in the Keras voice: name the argument, say what came in."""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from keras_sepseq.paths import PathArray, is_path_sequence


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """Returns `value` as an `int`, or raises if it is not one `>= minimum`.

    Args:
        name: The argument name for the message.
        value: The value received.
        minimum: The smallest allowed value.

    Returns:
        `int(value)`.

    Raises:
        ValueError: If `value` is not an integer (bools are refused) or is
            below `minimum`.

    Example:

    >>> check_int("batch_size", 32, minimum=1)
    32
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Returns `value` if it is one of `choices`, else raises naming the argument.

    Args:
        name: The argument name for the message.
        value: The value received.
        choices: The allowed values.

    Returns:
        `value`.

    Raises:
        ValueError: If `value` is not in `choices`.

    Example:

    >>> check_choice("dtype", "uint8", ("float32", "uint8"))
    'uint8'
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"`{name}` must be one of {sorted(choices)}. Received: {name}={value!r}")
    return value


def check_paths(name: str, paths: Any) -> PathArray:
    """Returns `paths` as a non-empty `PathArray`, or raises naming the argument.

    Args:
        name: The argument name for messages.
        paths: A sequence of `str` or `os.PathLike`, or a `PathArray`.

    Returns:
        A `PathArray`.

    Raises:
        TypeError: If `paths` is a single path or pattern, or holds a
            non-path.
        ValueError: If `paths` is empty or not one-dimensional.

    Example:

    >>> len(check_paths("image_paths", ["a.png"]))
    1
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError(
            f"`{name}` must be a sequence of paths, not a single path or pattern; "
            f"use `pair_files()` to expand a glob pattern. Received: {name}={paths!r}"
        )
    if isinstance(paths, np.ndarray) and paths.ndim != 1:
        raise ValueError(f"`{name}` must be one-dimensional. Received an array of shape {paths.shape}.")
    result = PathArray.coerce(paths, name=name)
    if len(result) == 0:
        raise ValueError(f"`{name}` must not be empty. Received: {name} with 0 paths")
    return result


def check_labels(name: str, labels: Any) -> np.ndarray:
    """Returns in-memory labels as a numeric numpy array, or raises naming the argument.

    Args:
        name: The argument name for messages.
        labels: An array-like with one label per sample.

    Returns:
        A numpy array.

    Raises:
        ValueError: If `labels` is a scalar, ragged, or holds objects.

    Example:

    >>> check_labels("label_paths", [0, 1]).shape
    (2,)
    """
    try:
        array = np.asarray(labels)
    except ValueError as e:
        raise ValueError(
            f"`{name}` as in-memory labels must form a numeric array, one label per sample "
            f"with the same shape each ({e})."
        ) from None
    if array.ndim == 0:
        raise ValueError(f"`{name}` must hold one label (or one path) per sample. Received a scalar: {labels!r}")
    if array.dtype == object:
        raise ValueError(
            f"`{name}` as in-memory labels must form a numeric array, one label per sample; "
            f"received values that numpy could only store as objects (first: {array.flat[0]!r})."
        )
    return array


def check_targets(
    targets: Any,
    *,
    name: str,
    inputs_name: str,
    num_samples: int,
    to_arrays: Callable[[Any], Any] | None = None,
) -> tuple[PathArray | None, Any]:
    """Splits a labels argument into label files or in-memory labels, checking its length.

    Args:
        targets: `None`, one path per sample, or in-memory labels.
        name: The labels argument's name, for messages.
        inputs_name: The inputs argument's name, for messages.
        num_samples: How many inputs there are.
        to_arrays: Validates in-memory labels; defaults to `check_labels`.

    Returns:
        `(paths, in_memory)`: at most one is not `None`.

    Raises:
        ValueError: If the lengths differ or the labels are malformed.

    Example:

    >>> check_targets([0, 1], name="labels", inputs_name="sequences", num_samples=2)[1]
    array([0, 1])
    """
    if targets is None:
        return None, None
    if is_path_sequence(targets):
        paths, in_memory = check_paths(name, targets), None
    else:
        paths, in_memory = None, (to_arrays or (lambda t: check_labels(name, t)))(targets)
    given: Any = paths if paths is not None else in_memory
    if len(given) != num_samples:
        raise ValueError(
            f"`{inputs_name}` and `{name}` must have the same length. "
            f"Received: len({inputs_name})={num_samples}, len({name})={len(given)}"
        )
    return paths, in_memory
