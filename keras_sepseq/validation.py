"""`validate()`: load every sample once and report what was found, without raising for bad data."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from keras_sepseq.error_policy import BadSample
from keras_sepseq.errors import SampleError

__all__ = ["Validating", "ValidationReport"]


@dataclass
class ValidationReport:
    """What `validate()` found.

    Attributes:
        num_samples: How many samples were checked.
        bad: The bad samples, `(index, path, reason)`, by index.
        input_shapes: How many samples had each input shape.
        input_dtypes: ... each input dtype.
        label_shapes: ... each label shape.
        label_dtypes: ... each label dtype.
        label_values: For integer scalar labels, how many samples had each
            value (class counts).
        class_pixels: For masks, how many pixels of each class value over
            the dataset (`ignore_index` included).
    """

    num_samples: int
    bad: list[BadSample] = field(default_factory=list)
    input_shapes: Counter = field(default_factory=Counter)
    input_dtypes: Counter = field(default_factory=Counter)
    label_shapes: Counter = field(default_factory=Counter)
    label_dtypes: Counter = field(default_factory=Counter)
    label_values: Counter = field(default_factory=Counter)
    class_pixels: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        """Whether no sample was bad."""
        return not self.bad

    def count(self, input_shape, input_dtype, label_shape, label_dtype, label_value) -> None:
        """Adds one good sample's description to the counts."""
        self.input_shapes[input_shape] += 1
        self.input_dtypes[input_dtype] += 1
        if label_shape is not None:
            self.label_shapes[label_shape] += 1
            self.label_dtypes[label_dtype] += 1
        if label_value is not None:
            self.label_values[label_value] += 1

    def to_dict(self) -> dict:
        """The report as plain JSON-friendly data."""
        keyed = lambda c: {str(k): v for k, v in sorted(c.items(), key=lambda kv: -kv[1])}  # noqa: E731
        return {
            "num_samples": self.num_samples,
            "ok": self.ok,
            "bad": [b._asdict() for b in self.bad],
            "input_shapes": keyed(self.input_shapes),
            "input_dtypes": keyed(self.input_dtypes),
            "label_shapes": keyed(self.label_shapes),
            "label_dtypes": keyed(self.label_dtypes),
            "label_values": {str(k): v for k, v in sorted(self.label_values.items())},
            "class_pixels": {str(k): v for k, v in sorted(self.class_pixels.items())},
        }

    def __str__(self) -> str:
        lines = [
            f"{self.num_samples:,} samples checked: {self.num_samples - len(self.bad):,} good, {len(self.bad):,} bad"
        ]
        for title, counter in [("input shapes", self.input_shapes), ("input dtypes", self.input_dtypes),
                               ("label shapes", self.label_shapes), ("label dtypes", self.label_dtypes)]:  # fmt: skip
            if counter:
                shown = ", ".join(f"{k}: {v:,}" for k, v in counter.most_common(5))
                more = f", ... {len(counter) - 5} more" if len(counter) > 5 else ""
                lines.append(f"  {title}: {shown}{more}")
        if self.label_values:
            lines.append("  classes: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(self.label_values.items())[:20]))
        if self.class_pixels:
            total = sum(self.class_pixels.values())
            shown = ", ".join(f"{k}: {v:,} ({v / total:.1%})" for k, v in sorted(self.class_pixels.items())[:20])
            lines.append("  class pixels: " + shown)
        for bad in self.bad[:20]:
            lines.append(f"  bad sample {bad.index} {bad.path!r}: {bad.reason}")
        if len(self.bad) > 20:
            lines.append(f"  ... {len(self.bad) - 20} more bad samples")
        return "\n".join(lines)


class Validating:
    """The validation part of a sequence (a mixin of `BaseSequence`: use that)."""

    if TYPE_CHECKING:  # provided by BaseSequence and its other parts
        num_workers: int

        @property
        def num_samples(self) -> int: ...
        def try_load_items(self, indices: list[int]) -> list[Any]: ...
        def item_signature(self, item: Any) -> Any: ...
        def sample_path(self, index: int) -> str | None: ...

    def validate(self, progress: bool = True, *, workers: int | None = None) -> ValidationReport:
        """Loads every sample once, in parallel, and reports what it found; never raises for bad data.

        Each sample is loaded with `load_item` (so custom hooks are checked
        too) and judged as `on_error="skip"` would judge it: a sample that
        fails, or whose shapes differ from the first loadable sample's, is
        bad. Nothing is cached and `seq.errors` is not changed.

        Args:
            progress: Show a `keras.utils.Progbar`. Defaults to `True`.
            workers: Threads to load with; defaults to the larger of
                `workers` and the number of cores.

        Returns:
            A `ValidationReport`: bad samples with reasons, shape, dtype and
            label counts. `print(report)` gives a summary.

        Example:

        >>> report = seq.validate()  # doctest: +SKIP
        >>> report.ok, len(report.bad)  # doctest: +SKIP
        (False, 3)
        """
        from concurrent.futures import ThreadPoolExecutor

        threads = workers or max(self.num_workers, os.cpu_count() or 1)
        bar = keras.utils.Progbar(self.num_samples, unit_name="sample") if progress else None
        report = ValidationReport(self.num_samples)
        reference = None
        chunk = 256
        with ThreadPoolExecutor(threads) as pool:
            starts = range(0, self.num_samples, chunk)
            for start, items in zip(
                starts,
                # a chunk at a time: objects in storage are then read `reads_in_flight` at once
                pool.map(lambda a: self.try_load_items(list(range(a, min(a + chunk, self.num_samples)))), starts),
            ):
                for index, item in enumerate(items, start):
                    if isinstance(item, SampleError):
                        report.bad.append(BadSample(index, item.path, item.reason))
                        continue
                    signature = self.item_signature(item)
                    if reference is None:
                        reference = (index, signature)
                    elif signature != reference[1]:
                        report.bad.append(BadSample(
                            index, self.sample_path(index),
                            f"its shapes {signature} differ from {reference[1]}, those of sample {reference[0]} "
                            f"({self.sample_path(reference[0])!r}), the first that loads",
                        ))  # fmt: skip
                    report.count(*self.describe_item(index, item))
                    report.class_pixels.update(self.class_pixels(index, item))
                if bar is not None:
                    bar.update(min(start + chunk, self.num_samples))
        return report

    def class_pixels(self, index: int, item: Any) -> dict[int, int]:
        """How many pixels of each class value a loaded sample's mask holds; `{}` for samples without masks.

        Args:
            index: The sample index.
            item: Its loaded item.

        Returns:
            `{class_value: pixel_count}`.
        """
        return {}

    def describe_item(self, index: int, item: Any) -> tuple:
        """`(input_shape, input_dtype, label_shape, label_dtype, label_value)` of a loaded sample, for reports.

        Any entry may be `None`; `label_value` is set for integer scalar labels.
        By default an item is `(input, label)` or an input alone; sequences
        whose items look otherwise (or hold labels elsewhere) override it.
        """
        x, y = item[:2] if isinstance(item, tuple) and len(item) >= 2 else (item, None)
        y = None if y is None else np.asarray(y)
        value = int(y) if y is not None and y.ndim == 0 and y.dtype.kind in "iub" else None
        return (
            np.shape(x), str(np.asarray(x).dtype),
            None if y is None else y.shape, None if y is None else str(y.dtype), value,
        )  # fmt: skip
