"""A Keras layer that reads back the index `conftest.index_image` wrote into an image (any backend)."""

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
