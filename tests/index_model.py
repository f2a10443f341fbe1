"""Keras pieces for tests that count samples inside training: a layer that reads back an image's index, a metric."""

import keras
from keras import ops


class DecodeIndex(keras.layers.Layer):
    """Outputs each image's index (red + 256 * green), plus a zero-weighted trainable term so `fit` has weights."""

    def build(self, input_shape):
        self.dense = keras.layers.Dense(1)
        self.dense.build((None, 3))

    def call(self, x):
        pixels = ops.round(x[:, 0, 0, :] * 255.0)
        index = pixels[:, 0] + 256.0 * pixels[:, 1]
        return index[:, None] + 0.0 * self.dense(x[:, 0, 0, :])


class Seen(keras.metrics.Metric):
    """Counts, inside the train step, how often each sample index (the target) was trained on, and how many
    predictions missed their target (misaligned inputs and targets)."""

    def __init__(self, num_samples: int, **kwargs):
        super().__init__(name="seen", **kwargs)
        self.num_samples = num_samples
        self.counts = self.add_variable(shape=(num_samples,), initializer="zeros", name="counts")
        self.wrong = self.add_variable(shape=(), initializer="zeros", name="wrong")

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        # `.value`: jax no longer turns a variable into an array implicitly while tracing shapes.
        self.counts.assign(self.counts.value + ops.sum(ops.one_hot(labels, self.num_samples), axis=0))
        mismatch = ops.abs(ops.reshape(y_pred, (-1,)) - ops.cast(ops.reshape(y_true, (-1,)), "float32")) > 0.5
        self.wrong.assign(self.wrong.value + ops.sum(ops.cast(mismatch, "float32")))

    def result(self):
        return self.wrong.value
