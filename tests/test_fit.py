"""End-to-end `model.fit` through Keras with each worker mode.

The model decodes the index that each image encodes in its pixels; a metric
counts, per sample, how often training saw it and whether the label that
came with it matched. That checks exactly-once and alignment where it
matters: in what `train_step` receives.
"""

import keras
import numpy as np
import pytest
from conftest import write_indexed_dataset
from index_model import DecodeIndex
from keras import ops

from keras_sepseq import SeparatedSequence

N = 45
BATCH = 8
MODES = [
    pytest.param(dict(workers=1, use_multiprocessing=False), id="main thread"),
    pytest.param(dict(workers=2, use_multiprocessing=False), id="2 threads"),
    pytest.param(dict(workers=2, use_multiprocessing=True), id="2 processes"),
]


class SeenCounts(keras.metrics.Metric):
    """Per-sample count of appearances, the batch number of each, and misalignments."""

    def __init__(self, n, **kwargs):
        super().__init__(name="seen", **kwargs)
        self.n = n
        self.counts = self.add_variable(shape=(n,), initializer="zeros", name="counts")
        self.step_of = self.add_variable(shape=(n,), initializer="zeros", name="step_of")
        self.mismatches = self.add_variable(shape=(), initializer="zeros", name="mismatches")
        self.step = self.add_variable(shape=(), initializer="zeros", name="step")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        hits = ops.sum(ops.one_hot(labels, self.n), axis=0)
        self.counts.assign(self.counts + hits)
        self.step_of.assign(self.step_of + hits * self.step)
        self.step.assign(self.step + 1.0)
        wrong = ops.abs(ops.reshape(y_pred, (-1,)) - ops.cast(ops.reshape(y_true, (-1,)), "float32")) > 0.5
        self.mismatches.assign(self.mismatches + ops.sum(ops.cast(wrong, "float32")))

    def result(self):
        return self.mismatches


class Record(keras.callbacks.Callback):
    def __init__(self, metric):
        super().__init__()
        self.metric = metric
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(
            (
                ops.convert_to_numpy(self.metric.counts).astype(int),
                ops.convert_to_numpy(self.metric.step_of).astype(int),
                int(ops.convert_to_numpy(self.metric.mismatches)),
            )
        )


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_indexed_dataset(tmp_path_factory.mktemp("fit"), N)


def train(files, mode, *, epochs=3, fit_shuffle=True, seed=5, drop_remainder=False):
    keras.utils.set_random_seed(0)
    metric = SeenCounts(N)
    model = keras.Sequential([keras.Input((6, 5, 3)), DecodeIndex()])
    model.compile(optimizer="sgd", loss="mse", metrics=[metric])
    record = Record(metric)
    seq = SeparatedSequence(*files, BATCH, seed=seed, drop_remainder=drop_remainder, **mode)
    model.fit(seq, epochs=epochs, shuffle=fit_shuffle, verbose=0, callbacks=[record])
    return record.epochs


@pytest.mark.parametrize("mode", MODES)
def test_fit_sees_every_sample_once_per_epoch_and_aligned(files, mode):
    epochs = train(files, mode)
    assert len(epochs) == 3
    orders = []
    for counts, step_of, mismatches in epochs:
        np.testing.assert_array_equal(counts, np.ones(N, dtype=int))
        assert mismatches == 0
        orders.append(tuple(step_of))
    assert len(set(orders)) == 3  # each epoch its own order


@pytest.mark.parametrize("mode", MODES[1:])
def test_workers_give_the_same_batches_as_the_main_thread(files, mode):
    reference = train(files, MODES[0].values[0], fit_shuffle=False, epochs=2)
    other = train(files, mode, fit_shuffle=False, epochs=2)
    for (_, ref_steps, _), (_, steps, _) in zip(reference, other):
        np.testing.assert_array_equal(steps, ref_steps)


def test_drop_remainder_through_fit(files):
    epochs = train(files, MODES[0].values[0], drop_remainder=True, epochs=2)
    for counts, _, mismatches in epochs:
        assert counts.sum() == (N // BATCH) * BATCH and counts.max() == 1 and mismatches == 0


def test_predict_keeps_input_order(files):
    model = keras.Sequential([keras.Input((6, 5, 3)), DecodeIndex()])
    seq = SeparatedSequence(files[0], None, BATCH, shuffle=False, workers=2)
    predicted = model.predict(seq, verbose=0)[:, 0]
    np.testing.assert_array_equal(np.rint(predicted), np.arange(N))
