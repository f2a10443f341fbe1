"""Exactly-once and alignment properties of the epoch order, checked with hypothesis.

Each image encodes its own index in its pixels and each label file holds the
same index, so a batch shows at once which samples it holds and whether
images and labels are still paired.
"""

import numpy as np
import pytest
from conftest import decode_index, write_indexed_dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_sepseq import SeparatedSequence, epoch_order

MAX_SAMPLES = 40


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_indexed_dataset(tmp_path_factory.mktemp("indexed"), MAX_SAMPLES)


def served_epochs(seq, epochs):
    """Plays `epochs` epochs the way Keras does (on_epoch_end between them)."""
    result = []
    for _ in range(epochs):
        images, labels = [], []
        for i in range(len(seq)):
            x, y = seq[i]
            assert x.shape[0] == y.shape[0] <= seq.batch_size
            images.append(decode_index(x))
            labels.append(y)
        result.append((np.concatenate(images), np.concatenate(labels)))
        seq.on_epoch_end()
    return result


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, MAX_SAMPLES),
    batch_size=st.integers(1, 16),
    drop_remainder=st.booleans(),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    extra_epoch_ends=st.integers(0, 3),
)
def test_every_epoch_serves_each_sample_once_and_aligned(
    files, n, batch_size, drop_remainder, shuffle, seed, extra_epoch_ends
):
    if drop_remainder and batch_size > n:
        batch_size = n
    images, labels = files
    seq = SeparatedSequence(
        images[:n], labels[:n], batch_size, shuffle=shuffle, seed=seed, drop_remainder=drop_remainder, dtype="uint8"
    )
    for _ in range(extra_epoch_ends):  # Keras calls on_epoch_end before the first epoch and after validations
        seq.on_epoch_end()
    epochs = served_epochs(seq, 3)
    expected_count = (n // batch_size) * batch_size if drop_remainder else n
    for served_images, served_labels in epochs:
        np.testing.assert_array_equal(served_images, served_labels)  # aligned
        assert len(served_images) == expected_count
        assert len(set(served_images.tolist())) == expected_count  # no repeats
        assert set(served_images.tolist()) <= set(range(n))
        if not shuffle:
            np.testing.assert_array_equal(served_images, np.arange(expected_count))
    if shuffle and n >= 8:
        assert not all(np.array_equal(epochs[0][0], e[0]) for e in epochs[1:])  # epochs differ

    replay = SeparatedSequence(
        images[:n], labels[:n], batch_size, shuffle=shuffle, seed=seed, drop_remainder=drop_remainder, dtype="uint8"
    )
    for _ in range(extra_epoch_ends):
        replay.on_epoch_end()
    for (a, _), (b, _) in zip(epochs, served_epochs(replay, 3)):
        np.testing.assert_array_equal(a, b)  # same seed, same orders


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 5000), seed=st.integers(0, 2**63), epoch=st.integers(0, 10**6))
def test_epoch_order_is_a_permutation(n, seed, epoch):
    order = epoch_order(n, seed=seed, epoch=epoch)
    assert order.dtype == np.int64
    np.testing.assert_array_equal(np.sort(order), np.arange(n))
    np.testing.assert_array_equal(order, epoch_order(n, seed=seed, epoch=epoch))


def test_epoch_orders_differ_between_epochs_and_seeds():
    orders = {tuple(epoch_order(50, seed=s, epoch=e)) for s in range(3) for e in range(5)}
    assert len(orders) == 15
