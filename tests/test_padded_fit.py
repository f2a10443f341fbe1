"""`model.fit` through `PaddedSequence`: the TensorFlow signature trap and a masked RNN."""

import math

import keras
import numpy as np
import pytest

from keras_sepseq import PaddedSequence

MODES = [
    pytest.param(dict(workers=1), id="main thread"),
    pytest.param(dict(workers=2), id="2 threads"),
    pytest.param(dict(workers=2, use_multiprocessing=True), id="2 processes"),
]


def pooled_model(features=3):
    model = keras.Sequential(
        [
            keras.Input((None, features)),
            keras.layers.Masking(0.0),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer="sgd", loss="mse")
    return model


def trap_data():
    """Batches of 4 padded to lengths 5, 5, 9: Keras would freeze the time dimension at 5."""
    lengths = [5] * 8 + [9] * 4
    return [np.ones((t, 3), np.float32) for t in lengths], np.zeros(len(lengths), np.float32)


class NaivePadded(keras.utils.PyDataset):
    """The obvious per-batch padding, for contrast."""

    def __init__(self, sequences, labels, batch_size):
        super().__init__()
        self.sequences, self.labels, self.batch_size = sequences, labels, batch_size

    def __len__(self):
        return math.ceil(len(self.sequences) / self.batch_size)

    def __getitem__(self, i):
        part = slice(i * self.batch_size, (i + 1) * self.batch_size)
        return keras.utils.pad_sequences(self.sequences[part], padding="post", dtype="float32"), self.labels[part]


def test_the_trap_is_real_for_naive_per_batch_padding():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the signature trap is specific to the TensorFlow backend")
    sequences, labels = trap_data()
    try:
        pooled_model().fit(NaivePadded(sequences, labels, 4), epochs=1, verbose=0, shuffle=False)
    except Exception as e:  # tf.errors.InvalidArgumentError, raised from the generator
        assert "(None, 5, 3)" in str(e) or "expected" in str(e)
    else:
        pytest.skip("this Keras no longer freezes dimensions seen equal in batches 0 and 1")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fit_shuffle", [False, True], ids=["in order", "fit shuffles batches"])
def test_fit_survives_equal_first_batch_lengths(mode, fit_shuffle):
    sequences, labels = trap_data()
    seq = PaddedSequence(sequences, labels, batch_size=4, shuffle=False, **mode)
    history = pooled_model().fit(seq, epochs=2, verbose=0, shuffle=fit_shuffle)
    assert len(history.history["loss"]) == 2
    assert pooled_model().evaluate(seq, verbose=0) >= 0


def end_dependent_task(n, seed):
    """Label 1 when the first feature of the last real step is positive; features are +-1, never 0."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 25, size=n)
    sequences = [rng.choice([-1.0, 1.0], size=(t, 2)).astype(np.float32) for t in lengths]
    labels = np.array([float(s[-1, 0] > 0) for s in sequences], dtype=np.float32)
    return sequences, labels


@pytest.mark.parametrize("bucket", [False, True], ids=["plain", "bucketed"])
def test_masked_rnn_learns_where_each_sequence_ends(bucket):
    keras.utils.set_random_seed(1)
    train_x, train_y = end_dependent_task(1200, seed=0)
    test_x, test_y = end_dependent_task(300, seed=1)
    model = keras.Sequential(
        [
            keras.Input((None, 2)),
            keras.layers.Masking(mask_value=0.0),
            keras.layers.GRU(8),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="binary_crossentropy", metrics=["accuracy"])
    train = PaddedSequence(train_x, train_y, batch_size=32, seed=0, bucket_by_length=bucket, workers=2)
    model.fit(train, epochs=6, verbose=0)
    _, accuracy = model.evaluate(PaddedSequence(test_x, test_y, batch_size=64, shuffle=False), verbose=0)
    # Post padding puts zeros after the last real step; misaligned labels or cut steps would leave ~0.5.
    assert accuracy > 0.95


class MaskedSteps(keras.layers.Layer):
    """Counts the steps that the Masking layer left unmasked in each sample."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, x, mask=None):
        return keras.ops.sum(keras.ops.cast(mask, "float32"), axis=1, keepdims=True)

    def compute_mask(self, x, mask=None):
        return None


@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("maxlen", [None, 7], ids=["dynamic", "maxlen 7"])
def test_keras_masks_cover_exactly_the_real_steps(padding, maxlen):
    sequences, _ = end_dependent_task(100, seed=3)
    seq = PaddedSequence(sequences, None, batch_size=16, shuffle=False, padding=padding, maxlen=maxlen, workers=2)
    model = keras.Sequential([keras.Input((None, 2)), keras.layers.Masking(0.0), MaskedSteps()])
    counted = model.predict(seq, verbose=0)[:, 0]
    np.testing.assert_array_equal(counted, np.minimum([len(s) for s in sequences], maxlen or 99))


def test_per_timestep_labels_and_weights_train_a_tagger():
    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(0)
    sequences, tags = [], []
    for t in rng.integers(1, 15, size=400):
        values = rng.choice([-1.0, 1.0], size=(t, 1)).astype(np.float32)
        sequences.append(values)
        tags.append((values[:, 0] > 0).astype(np.int32))  # tag each step by its sign
    # Sparse crossentropy checks every label, padding too, before weighting: pad with a valid class.
    seq = PaddedSequence(sequences, tags, batch_size=32, label_value=0, seed=0)
    x, y, weights = seq[0]
    assert weights.shape == y.shape == x.shape[:2]
    model = keras.Sequential(
        [
            keras.Input((None, 1)),
            keras.layers.Masking(0.0),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy", weighted_metrics=["accuracy"]
    )
    history = model.fit(seq, epochs=4, verbose=0)
    assert history.history["accuracy"][-1] > 0.95
