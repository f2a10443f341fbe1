"""seq.to_tf_dataset(): exact signatures, one epoch per pass, training through it."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import decode_index

from keras_sepseq import PaddedSequence, SeparatedSequence


def spec(shape, dtype):
    return tf.TensorSpec(shape, dtype)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        pytest.param(dict(image_size=(4, 3)), (spec((None, 4, 3, 3), tf.float32), spec((None,), tf.int64)), id="resized rgb"),
        pytest.param(dict(color_mode="grayscale", dtype="uint8"), (spec((None, None, None, 1), tf.uint8), spec((None,), tf.int64)), id="native size grayscale"),
        pytest.param(dict(image_size=(4, 3), on_error="skip"), (spec((None, 4, 3, 3), tf.float32), spec((None,), tf.int64), spec((None,), tf.float32)), id="skip adds weights"),
    ],
)
def test_separated_signature(indexed_dataset, kwargs, expected):
    seq = SeparatedSequence(*indexed_dataset(5), batch_size=2, **kwargs)
    assert seq.output_signature() == expected


def test_one_pass_is_one_epoch_and_epochs_reshuffle(indexed_dataset):
    seq = SeparatedSequence(*indexed_dataset(10), batch_size=4, seed=3, dtype="uint8", workers=2)
    ds = seq.to_tf_dataset()
    epochs = []
    for _ in range(3):
        xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
        x, y = np.concatenate(xs), np.concatenate(ys)
        np.testing.assert_array_equal(decode_index(x), y)
        assert sorted(y.tolist()) == list(range(10))
        epochs.append(y.tolist())
    assert epochs[0] != epochs[1] != epochs[2]
    seq.close()


def test_padded_signature_and_training_with_varying_lengths():
    sequences = [np.ones((t, 3), np.float32) for t in [5] * 8 + [9] * 4]
    tags = [np.ones(len(s), np.int32) for s in sequences]
    seq = PaddedSequence(sequences, tags, batch_size=4, shuffle=False, label_value=0)
    assert seq.output_signature() == (spec((None, None, 3), tf.float32), spec((None, None), tf.int32), spec((None, None), tf.float32))
    fixed = PaddedSequence(sequences, np.zeros(12), batch_size=4, maxlen=7)
    assert fixed.output_signature() == (spec((None, 7, 3), tf.float32), spec((None,), tf.float64))
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.Masking(0.0), keras.layers.Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    history = model.fit(seq.to_tf_dataset(), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2


def test_fit_through_the_tf_dataset(indexed_dataset):
    seq = SeparatedSequence(*indexed_dataset(20), batch_size=4, image_size=(6, 5), workers=2, use_multiprocessing=True)
    model = keras.Sequential([keras.Input((6, 5, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    assert len(model.fit(seq.to_tf_dataset(), epochs=3, verbose=0).history["loss"]) == 3
    seq.close()


def test_the_tf_dataset_keras_builds_from_ours_has_autotuning_off(indexed_dataset):
    import keras
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    from keras_sepseq import sequence

    class Plain(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return np.zeros((2, 3), np.float32), np.zeros(2, np.float32)

    images, labels = indexed_dataset(8)
    ours = PyDatasetAdapter(SeparatedSequence(images, labels, batch_size=4), shuffle=True).get_tf_dataset()
    theirs = PyDatasetAdapter(Plain(), shuffle=True).get_tf_dataset()
    assert ours.options().autotune.enabled is False  # no epoch-start stall (see _without_tf_data_autotune)
    assert theirs.options().autotune.enabled is not False  # other datasets left alone
    wrapped = PyDatasetAdapter.get_tf_dataset
    sequence._adjust_keras_adapter()  # installing twice wraps once
    assert PyDatasetAdapter.get_tf_dataset is wrapped and wrapped.keras_sepseq_wrapped
