"""Exceptions raised while loading samples."""

from __future__ import annotations


class SampleError(Exception):
    """A sample's file could not be loaded or does not fit its batch.

    The message names the file, the sample index and the reason; the
    original exception is chained as `__cause__`. The error pickles with its
    attributes, so it survives the trip back from a process worker.

    Args:
        message: The reason, in words (the path and index are added).
        path: The file that failed, or `None` for in-memory data.
        index: The sample's position in the dataset, or `None`.

    Attributes:
        path: The file that failed.
        index: The sample index.
        reason: The message without the path and index.

    Example:

    >>> err = SampleError("cannot decode image", path="a.png", index=3)
    >>> str(err)
    "sample 3, file 'a.png': cannot decode image"
    """

    def __init__(self, message: str, *, path: str | None = None, index: int | None = None):
        self.reason = message
        self.path = path
        self.index = index
        parts = []
        if index is not None:
            parts.append(f"sample {index}")
        if path is not None:
            parts.append(f"file {path!r}")
        prefix = ", ".join(parts)
        super().__init__(f"{prefix}: {message}" if prefix else message)

    def __reduce__(self):
        return (_rebuild_sample_error, (type(self), self.reason, self.path, self.index))


def _rebuild_sample_error(cls, reason, path, index):
    return cls(reason, path=path, index=index)


class ShapeMismatchError(SampleError, ValueError):
    """Samples of one batch cannot be stacked: their shapes or dtypes differ.

    The message names two of the files and what each holds.

    Example:

    >>> raise ShapeMismatchError("images in one batch have different shapes: ...")  # doctest: +SKIP
    """


class TooManyErrorsError(RuntimeError):
    """More samples failed than `max_errors` allows, with `on_error="skip"`.

    Example:

    >>> raise TooManyErrorsError("12 of 100 samples failed, over max_errors=10")  # doctest: +SKIP
    """


class CacheBudgetError(MemoryError, ValueError):
    """`cache="memory"` would hold more than `cache_budget`: the run stops (it is not a bad sample).

    A `MemoryError`, so that the error policy never records it as a sample's failure, and a `ValueError`,
    as it was before it had a class of its own.

    Example:

    >>> raise CacheBudgetError("cache='memory' reached 2.1 GB ..., over cache_budget=2.0 GB")  # doctest: +SKIP
    """
