"""Resuming a preempted run: keep the dataset's state with Keras's own backups."""

from __future__ import annotations

import json
import os
from typing import Any

import keras


class SequenceCheckpoint(keras.callbacks.Callback):
    """Saves `sequence.get_state()` at each epoch start and restores it when `fit` starts again.

    Use it next to `keras.callbacks.BackupAndRestore`, which restores the
    model, the optimizer and the epoch: this callback restores the epoch
    order of the dataset, so the resumed epoch serves the same samples in
    the same order as the interrupted one. Put the file next to the backup
    folder, and delete both to start from scratch.

    Args:
        sequence: A `SeparatedSequence`, `PaddedSequence` or other
            `BaseSequence`.
        path: The JSON file to keep the state in.

    Example:

    >>> model.fit(seq, epochs=50, callbacks=[
    ...     keras.callbacks.BackupAndRestore("backup"),
    ...     SequenceCheckpoint(seq, "backup/sequence.json"),
    ... ])  # doctest: +SKIP
    """

    def __init__(self, sequence: Any, path: str | os.PathLike) -> None:
        super().__init__()
        self.sequence = sequence
        self.path = os.fspath(path)

    def on_train_begin(self, logs=None) -> None:
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.sequence.set_state(json.load(f))

    def on_epoch_begin(self, epoch, logs=None) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(folder, exist_ok=True)
        partial = self.path + ".partial"
        with open(partial, "w") as f:
            json.dump(self.sequence.get_state(), f)
        os.replace(partial, self.path)  # never a half-written state
