"""The error policy: a sample that cannot be loaded is raised, or skipped and recorded, and always named.

`ErrorPolicy` is the part of every sequence that loads samples safely
(`try_load_item` returns a `SampleError` instead of raising, so one bad
file never takes its neighbours down in a worker), judges loaded samples
against a reference (`item_problem`), and, with `on_error="skip"`, leaves
bad samples out of their batch and records them. `BaseSequence` composes it.
"""

from __future__ import annotations

import contextlib
import numbers
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np

from keras_sepseq.checks import check_choice, check_int
from keras_sepseq.errors import SampleError, TooManyErrorsError
from keras_sepseq.storage import display_url

__all__ = ["ON_ERROR", "BadSample", "ErrorPolicy"]


ON_ERROR = ("raise", "skip")


RETRY_DELAY = 0.05  # seconds before the first retry; doubles after each


class BadSample(NamedTuple):
    """A sample that failed: its index, its file and the reason, in words."""

    index: int  # type: ignore[assignment]  # the field shadows tuple.index, as in any NamedTuple with that name
    path: str | None
    reason: str


def _check_max_errors(value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= 0:
        return int(value)
    if isinstance(value, float) and 0.0 < value < 1.0:
        return value
    raise ValueError(
        f"`max_errors` must be None, a count >= 0, or a fraction between 0 and 1. Received: max_errors={value!r}"
    )


class ErrorPolicy:
    """The error part of a sequence: raise or skip, retries, `max_errors`, reference shapes, `seq.errors`.

    A mixin of `BaseSequence` (use that). Subclasses say which file names a
    sample (`sample_path`) and what must match between samples
    (`item_signature`).
    """

    if TYPE_CHECKING:  # provided by BaseSequence and its other parts

        @property
        def num_samples(self) -> int: ...
        def load_item(self, index: int) -> Any: ...
        def collate(self, indices: np.ndarray, items: list[Any], position: int | None = None) -> tuple: ...
        def collate_placeholder(self, indices: np.ndarray, items: list[Any], position: int | None = None) -> tuple: ...
        def remote_supply(self, indices: list[int]) -> contextlib.AbstractContextManager[None]: ...

    def init_error_policy(self, *, on_error: str, max_errors: int | float | None, retries: int) -> None:
        """Checks and stores the error settings (called by `BaseSequence.__init__`).

        Args:
            on_error: `"raise"` or `"skip"`.
            max_errors: `None`, a count, or a fraction below 1.
            retries: Reads to retry after an `OSError`.

        Raises:
            ValueError: If an argument is out of range; the message names it.
        """
        self.on_error = check_choice("on_error", on_error, ON_ERROR)
        self.max_errors = _check_max_errors(max_errors)
        self.retries = check_int("retries", retries, minimum=0)
        self._errors: dict[int, BadSample] = {}
        self._skipped_this_epoch: list[int] = []
        self._reference: tuple | None = None

    def _collate_skipping(self, indices: np.ndarray, items: list[Any], position: int) -> tuple:
        keep = []
        for k, (index, item) in enumerate(zip(indices, items)):
            index = int(index)
            if not isinstance(item, SampleError):
                problem = self.item_problem(index, item)
                if problem is None:
                    keep.append(k)
                    continue
                item = SampleError(problem, path=self.sample_path(index), index=index)
            self._record_error(item)
        if keep:
            batch = self.collate(indices[keep], [items[k] for k in keep], position)
            weights = np.ones(len(keep), np.float32)
        else:  # every sample failed: one placeholder that counts for nothing
            first, item = self.reference_item()
            batch = self.collate_placeholder(np.array([first]), [item], position)
            weights = np.zeros(1, np.float32)
        if len(batch) == 3:
            return batch[0], batch[1], batch[2] * weights.reshape((-1,) + (1,) * (batch[2].ndim - 1))
        # Without labels (predict), there is no loss to weight: inputs only. Outputs then skip the bad samples.
        return batch + (weights,) if len(batch) == 2 else batch

    def _record_error(self, error: SampleError) -> None:
        index = cast(int, error.index)  # errors from loading always carry their sample index
        if index not in self._errors:
            self._errors[index] = BadSample(index, error.path, error.reason)
        self._skipped_this_epoch.append(index)
        if self.max_errors is not None:
            limit = self.max_errors if isinstance(self.max_errors, int) else self.max_errors * self.num_samples
            if len(self._errors) > limit:
                shown = "; ".join(f"sample {b.index} {b.path!r}: {b.reason}" for b in self.errors[:3])
                raise TooManyErrorsError(
                    f"{len(self._errors)} of {self.num_samples} samples failed, over max_errors={self.max_errors} "
                    f"(first: {shown}). Run seq.validate() for the full list."
                )

    @property
    def errors(self) -> list[BadSample]:
        """The samples that failed so far with `on_error="skip"`: `(index, path, reason)`, by index.

        Example:

        >>> seq.errors  # doctest: +SKIP
        [BadSample(index=17, path='data/img_17.png', reason='cannot load image: ...')]
        """
        return [self._errors[k] for k in sorted(self._errors)]

    def try_load_items(self, indices: list[int]) -> list[Any]:
        """`try_load_item` for several samples: one worker chunk. Override to load a chunk at once.

        Args:
            indices: Sample indices.

        Returns:
            One item or `SampleError` per index, in order.
        """
        with self.remote_supply(indices):  # objects in storage: all of the chunk's read at once, first
            return [self._try_load(i) for i in indices]

    def try_load_item(self, index: int) -> Any:
        """`load_item(index)`, or the `SampleError` it raised (returned, not raised).

        Workers call this, so that one bad sample does not take its
        neighbours down, and the calling process decides what to do.

        Args:
            index: The sample index.

        Returns:
            The item, or a `SampleError` naming the file and reason.

        Example:

        >>> seq.try_load_item(3)  # doctest: +SKIP
        """
        with self.remote_supply([index]):
            return self._try_load(index)

    def _try_load(self, index: int) -> Any:
        """`try_load_item` inside a chunk, whose objects in storage were read already (no per-sample set-up)."""
        try:
            return self.load_item(index)
        except SampleError as e:
            return e
        except MemoryError:
            raise
        except Exception as e:
            error = SampleError(
                f"cannot load sample: {type(e).__name__}: {e}", path=self.sample_path(index), index=index
            )
            error.__cause__ = e
            return error

    def sample_path(self, index: int) -> str | None:
        """The file that names sample `index` in messages (its input file). Subclasses say.

        Returns:
            A path, or `None` in `BaseSequence`.
        """
        return None

    def item_signature(self, item: Any) -> Any:
        """What must be equal between samples for them to share a batch: by default, the arrays' shapes.

        Args:
            item: A loaded item.

        Returns:
            A comparable value.
        """
        return tuple(None if a is None else np.shape(a) for a in (item if isinstance(item, tuple) else (item,)))

    def reference_item(self) -> tuple[int, Any]:
        """The first sample, in file order, that loads: `(index, item)`. Computed once.

        With `on_error="skip"`, samples whose `item_signature` differs from
        this one's are bad, so the same file is judged the same way in every
        batch and worker.

        Returns:
            `(index, item)`.

        Raises:
            TooManyErrorsError: If no sample loads at all.
        """
        if self._reference is None:  # unless set_reference() chose one
            for index in range(self.num_samples):
                item = self.try_load_item(index)
                if not isinstance(item, SampleError):
                    self._reference = (index, item, self.item_signature(item))
                    break
                self._record_error(item)
            else:
                raise TooManyErrorsError(
                    f"none of the {self.num_samples} samples could be loaded: {self.errors[0].reason}"
                )
        return self._reference[0], self._reference[1]

    def set_reference(self, index: int) -> None:
        """Makes sample `index` the one whose shapes every other sample must have (with `on_error="skip"`).

        By default the reference is the first sample, in file order, that
        loads; set it explicitly when that one is the odd one out.

        Args:
            index: A sample that loads.

        Raises:
            ValueError: If `index` is out of range.
            SampleError: If that sample cannot be loaded.

        Example:

        >>> seq.set_reference(12)  # doctest: +SKIP
        """
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < self.num_samples:
            raise ValueError(f"`index` must be a sample index in 0..{self.num_samples - 1}. Received: index={index!r}")
        item = self.try_load_item(int(index))
        if isinstance(item, SampleError):
            raise item
        self._reference = (int(index), item, self.item_signature(item))

    def item_problem(self, index: int, item: Any) -> str | None:
        """Why a loaded sample cannot join a batch, or `None`. Used with `on_error="skip"`.

        Args:
            index: The sample index.
            item: Its loaded item.

        Returns:
            A reason in words, or `None`.
        """
        first, _ = self.reference_item()
        expected = cast(tuple, self._reference)[2]
        got = self.item_signature(item)
        if got != expected:
            return (
                f"its shapes {got} differ from {expected}, those of sample {first} "
                f"({self.sample_path(first)!r}), the first that loads"
            )
        return None

    def load_sample(self, loader: Callable[[str], Any], path: str, index: int, what: str) -> np.ndarray:
        """Calls `loader(path)`, turning any failure into a `SampleError`; retries `OSError`s.

        Args:
            loader: A hook such as `load_input` or `load_target`.
            path: The file to load.
            index: The sample index, for the message.
            what: `"image"`, `"label"` or similar, for the message.

        Returns:
            The loaded value as a numpy array.

        Raises:
            SampleError: Naming `path`, `index` and the original error,
                chained from it.

        Example:

        >>> seq.load_sample(np.load, "y_0.npy", 0, "label")  # doctest: +SKIP
        """
        value: Any = None
        for attempt in range(self.retries + 1):
            try:
                value = loader(path)
                break
            except (SampleError, MemoryError):
                raise
            except OSError as e:
                if attempt < self.retries:
                    time.sleep(RETRY_DELAY * 2**attempt)
                    continue
                tried = f" (tried {attempt + 1} times)" if attempt else ""
                raise SampleError(
                    f"cannot load {what}{tried}: {type(e).__name__}: {e}", path=display_url(path), index=index
                ) from e
            except Exception as e:
                raise SampleError(
                    f"cannot load {what}: {type(e).__name__}: {e}", path=display_url(path), index=index
                ) from e
        if not isinstance(value, np.ndarray):
            try:
                value = np.asarray(value)
            except Exception as e:
                raise SampleError(
                    f"the {what} loader returned {type(value).__name__}, not an array",
                    path=display_url(path),
                    index=index,
                ) from e
        return value
