import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_sepseq import PaddedSequence, SampleError, ShapeMismatchError


def write_sequences(folder, lengths, features=(3,), *, tags=False):
    """Writes sequence i as a (T_i, *features) array filled with i (+ step/1000); tag files hold i per step."""
    folder.mkdir(parents=True, exist_ok=True)
    seqs, labels, tag_paths = [], [], []
    for i, length in enumerate(lengths):
        array = np.full((length,) + features, i, dtype=np.float32) + (np.arange(length) / 1000).reshape(
            (-1,) + (1,) * len(features)
        )
        seqs.append(str(folder / f"seq_{i:04d}.npy"))
        np.save(seqs[-1], array)
        labels.append(str(folder / f"label_{i:04d}.npy"))
        np.save(labels[-1], np.int64(i))
        if tags:
            tag_paths.append(str(folder / f"tags_{i:04d}.npy"))
            np.save(tag_paths[-1], np.full(length, i % 7, dtype=np.int32))
    return seqs, (tag_paths if tags else labels)


def in_memory(lengths, features=(2,)):
    return [np.full((t,) + features, i, dtype=np.float32) for i, t in enumerate(lengths)]


def test_each_batch_is_padded_to_its_longest(tmp_path):
    seqs, labels = write_sequences(tmp_path, [2, 7, 3, 4, 1, 2], features=(3,))
    seq = PaddedSequence(seqs, labels, batch_size=3, shuffle=False, value=-1.0)
    x, y = seq[0]
    assert x.shape == (3, 7, 3) and x.dtype == np.float32
    assert y.tolist() == [0, 1, 2] and y.dtype == np.int64
    np.testing.assert_array_equal(x[0, 2:], -1.0)  # post padding
    np.testing.assert_allclose(x[0, :2, 0], [0.0, 0.001])
    assert seq[1][0].shape == (3, 4, 3)


def test_batch_one_never_shares_batch_zeros_length(tmp_path):
    """Keras freezes dims equal in batches 0 and 1; batch 1 gets one more step of padding instead."""
    seqs, labels = write_sequences(tmp_path, [5] * 8 + [9] * 4)
    seq = PaddedSequence(seqs, labels, batch_size=4, shuffle=False)
    assert [seq[i][0].shape[1] for i in range(3)] == [5, 6, 9]
    assert [seq[i][0].shape[1] for i in range(3)] == [5, 6, 9]  # stable across calls


def test_maxlen_fixes_every_length_and_truncates(tmp_path):
    seqs, labels = write_sequences(tmp_path, [2, 9, 5, 5])
    for truncating, first_kept in [("post", 0.0), ("pre", 0.004)]:
        seq = PaddedSequence(seqs, labels, batch_size=2, shuffle=False, maxlen=5, truncating=truncating)
        x0, x1 = seq[0][0], seq[1][0]
        assert x0.shape == x1.shape == (2, 5, 3)
        np.testing.assert_allclose(x0[1, 0, 0], 1 + first_kept, rtol=1e-6)


def test_pre_padding_puts_real_steps_last():
    seq = PaddedSequence(in_memory([1, 3]), [0, 1], batch_size=2, shuffle=False, padding="pre", value=-5)
    x, _ = seq[0]
    np.testing.assert_array_equal(x[0, :, 0], [-5, -5, 0])


def test_per_timestep_labels_are_padded_with_label_value_and_weighted(tmp_path):
    seqs, tags = write_sequences(tmp_path, [3, 1, 4, 2], tags=True)
    seq = PaddedSequence(seqs, tags, batch_size=4, shuffle=False, label_value=-1)
    x, y, weights = seq[0]
    assert x.shape == (4, 4, 3) and y.shape == (4, 4) and weights.shape == (4, 4)
    assert y.dtype == np.int32 and weights.dtype == np.float32
    np.testing.assert_array_equal(y[1], [1, -1, -1, -1])
    np.testing.assert_array_equal(weights.sum(axis=1), [3, 1, 4, 2])
    np.testing.assert_array_equal(weights, (y != -1).astype(np.float32))


def test_per_timestep_labels_in_memory_with_pre_padding():
    sequences = in_memory([2, 3])
    tags = [np.array([1, 2]), np.array([3, 4, 5])]
    x, y, w = PaddedSequence(sequences, tags, batch_size=2, shuffle=False, label_value=0, padding="pre")[0]
    np.testing.assert_array_equal(y[0], [0, 1, 2])
    np.testing.assert_array_equal(w[0], [0, 1, 1])


def test_zero_length_sequences_are_fully_masked():
    sequences = [np.zeros((0, 2)), np.ones((2, 2)), np.zeros((0, 2))]
    tags = [np.zeros(0), np.ones(2), np.zeros(0)]
    x, y, w = PaddedSequence(sequences, tags, batch_size=3, shuffle=False, label_value=-1, value=-9)[0]
    np.testing.assert_array_equal(x[0], -9)
    np.testing.assert_array_equal(w[0], 0)
    empty = PaddedSequence([np.zeros((0, 2))] * 2, [0, 1], batch_size=2)[0][0]
    assert empty.shape == (2, 1, 2)  # an all-empty batch still has one (padding) step


def test_in_memory_fixed_labels_and_no_labels():
    seq = PaddedSequence(in_memory([1, 2, 3]), np.eye(3), batch_size=3, shuffle=False)
    x, y = seq[0]
    np.testing.assert_array_equal(y, np.eye(3))
    assert PaddedSequence(in_memory([1, 2]), None, batch_size=2)[0][0].shape == (2, 2, 2)


def test_one_regular_array_is_read_as_samples():
    seq = PaddedSequence(np.zeros((4, 6, 2)), [0, 1, 2, 3], batch_size=2)
    assert seq[0][0].shape == (2, 6, 2)


def test_lengths_come_from_headers_not_from_loading(tmp_path):
    seqs, labels = write_sequences(tmp_path, [4, 1, 8])

    class NoLoad(PaddedSequence):
        def load_input(self, path):
            raise AssertionError("lengths() must not load arrays")

    np.testing.assert_array_equal(NoLoad(seqs, labels).lengths(), [4, 1, 8])


def test_custom_format_lengths_fall_back_to_loading(tmp_path):
    paths = []
    for i, t in enumerate([3, 5]):
        paths.append(str(tmp_path / f"s{i}.csv"))
        np.savetxt(paths[-1], np.full((t, 2), i), delimiter=",")

    class Csv(PaddedSequence):
        def load_input(self, path):
            return np.loadtxt(path, delimiter=",", ndmin=2)

    seq = Csv(paths, [0, 1], batch_size=2, shuffle=False)
    np.testing.assert_array_equal(seq.lengths(), [3, 5])
    assert seq[0][0].shape == (2, 5, 2)


def test_bucketing_raises_padding_efficiency_on_skewed_lengths():
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.pareto(1.5, size=2000) * 10 + 1, 400).astype(int)
    plain = PaddedSequence(in_memory(lengths, (1,)), np.zeros(2000), batch_size=32, seed=3)
    bucketed = PaddedSequence(in_memory(lengths, (1,)), np.zeros(2000), batch_size=32, seed=3, bucket_by_length=True)
    # Heavy-tailed lengths (median 5, up to 400): random batches are mostly padding.
    assert plain.padding_efficiency() < 0.2
    assert bucketed.padding_efficiency() > 0.7
    assert bucketed.padding_efficiency() > 5 * plain.padding_efficiency()


@pytest.mark.parametrize("bucket", [False, True], ids=["plain", "bucketed"])
@pytest.mark.parametrize("maxlen", [None, 6], ids=["dynamic", "maxlen 6"])
def test_padding_efficiency_counts_what_batches_hold(bucket, maxlen):
    lengths = [1, 9, 3, 3, 7, 2, 8, 5, 4, 0, 6]
    seq = PaddedSequence(
        in_memory(lengths, (1,)), np.zeros(11), batch_size=3, seed=1, bucket_by_length=bucket, maxlen=maxlen
    )
    clipped = np.minimum(lengths, maxlen or 99)
    real = padded = 0
    for i in range(len(seq)):
        x, _ = seq[i]
        real += clipped[seq.batch_indices(i)].sum()
        padded += x.shape[0] * x.shape[1]
    assert seq.padding_efficiency() == pytest.approx(real / padded)


def test_pickles_and_serves_the_same_batches(tmp_path):
    seqs, labels = write_sequences(tmp_path, [3, 4, 5, 6, 7])
    seq = PaddedSequence(seqs, labels, batch_size=2, seed=8, bucket_by_length=True)
    again = pickle.loads(pickle.dumps(seq))
    for i in range(len(seq)):
        np.testing.assert_array_equal(seq[i][0], again[i][0])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=40),
    batch_size=st.integers(1, 9),
    bucket=st.booleans(),
    shuffle=st.booleans(),
    drop_remainder=st.booleans(),
    maxlen=st.one_of(st.none(), st.integers(1, 8)),
    seed=st.integers(0, 2**32 - 1),
)
def test_every_epoch_serves_each_sequence_once_aligned(
    lengths, batch_size, bucket, shuffle, drop_remainder, maxlen, seed
):
    n = len(lengths)
    batch_size = min(batch_size, n) if drop_remainder else batch_size
    sequences = [np.full((t, 2), i + 1, dtype=np.float32) for i, t in enumerate(lengths)]
    tags = [np.full(t, i + 1) for i, t in enumerate(lengths)]
    seq = PaddedSequence(
        sequences, tags, batch_size, label_value=0, value=0.0, bucket_by_length=bucket, shuffle=shuffle,
        drop_remainder=drop_remainder, maxlen=maxlen, seed=seed,
    )  # fmt: skip
    expected = (n // batch_size) * batch_size if drop_remainder else n
    for _ in range(3):
        seen = []
        for i in range(len(seq)):
            x, y, w = seq[i]
            indices = seq.batch_indices(i)
            for row, index in enumerate(indices):
                real = int(w[row].sum())
                assert real == min(lengths[index], maxlen or 99)
                np.testing.assert_array_equal(x[row][w[row] > 0], index + 1)  # the real steps are this sample's
                np.testing.assert_array_equal(y[row][w[row] > 0], index + 1)
                np.testing.assert_array_equal(x[row][w[row] == 0], 0.0)
            seen.extend(indices.tolist())
        assert len(seen) == len(set(seen)) == expected
        seq.on_epoch_end()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param(
            dict(labels=[0, 1]), r"same length. Received: len\(sequences\)=3, len\(labels\)=2", id="lengths differ"
        ),
        pytest.param(dict(sequences=[]), r"`sequences` must not be empty", id="no sequences"),
        pytest.param(
            dict(sequences=[np.ones((2, 2)), np.ones((3, 3)), np.ones((1, 2))]),
            r"sequences\[0\] has shape \(2, 2\) but sequences\[1\] has shape \(3, 3\); only the first \(time\) dimension may vary",
            id="trailing shapes differ",
        ),
        pytest.param(
            dict(sequences=[np.ones(2), np.float32(1), np.ones(2)]), r"`sequences\[1\]` is 0-d", id="a scalar sequence"
        ),
        pytest.param(dict(maxlen=0), r"`maxlen` must be an integer >= 1. Received: maxlen=0", id="maxlen 0"),
        pytest.param(
            dict(padding="both"), r"`padding` must be one of \['post', 'pre'\]. Received: padding='both'", id="padding"
        ),
        pytest.param(
            dict(truncating="mid"),
            r"`truncating` must be one of \['post', 'pre'\]. Received: truncating='mid'",
            id="truncating",
        ),
        pytest.param(dict(value="zero"), r"`value` must be a number. Received: value='zero'", id="value"),
        pytest.param(dict(dtype="str"), r"`dtype` must be a numeric numpy dtype. Received: dtype='str'", id="dtype"),
        pytest.param(dict(labels=[[1, 2], [3], [4]]), r"pass `label_value=`", id="ragged labels without label_value"),
        pytest.param(
            dict(labels=[[1, 2], [3], [4]], label_value=-1),
            r"sequences\[1\] has 1 steps but labels\[1\] has 1|sequences\[0\] has 2 steps but labels\[0\] has 2|per-timestep labels must be as long",
            id="tag lengths differ",
        ),
        pytest.param(
            dict(batch_size=0), r"`batch_size` must be an integer >= 1. Received: batch_size=0", id="batch_size"
        ),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, message):
    args = dict(sequences=[np.ones((2, 2)), np.ones((3, 2)), np.ones((1, 2))], labels=[0, 1, 2])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        PaddedSequence(**args)


def test_files_with_other_trailing_shapes_are_named(tmp_path):
    a, b = str(tmp_path / "a.npy"), str(tmp_path / "b.npy")
    np.save(a, np.zeros((2, 3)))
    np.save(b, np.zeros((4, 5)))
    with pytest.raises(
        ShapeMismatchError,
        match=r"sequences in one batch have different trailing shapes: '.*a.npy' has shape \(2, 3\) but '.*b.npy' has shape \(4, 5\)",
    ):
        PaddedSequence([a, b], [0, 1], batch_size=2, shuffle=False)[0]


def test_a_scalar_file_is_named(tmp_path):
    a, b = str(tmp_path / "a.npy"), str(tmp_path / "b.npy")
    np.save(a, np.zeros((2, 3)))
    np.save(b, np.float32(1))
    with pytest.raises(SampleError, match=r"sample 1, file '.*b.npy': the sequence is 0-d"):
        PaddedSequence([a, b], [0, 1], batch_size=2, shuffle=False)[0]


def test_tag_file_of_the_wrong_length_is_named(tmp_path):
    seqs, tags = write_sequences(tmp_path, [3, 2], tags=True)
    np.save(tags[1], np.zeros(5, np.int32))
    with pytest.raises(ShapeMismatchError, match=r"'.*seq_0001.npy' has 2 steps but '.*tags_0001.npy' has 5"):
        PaddedSequence(seqs, tags, batch_size=2, shuffle=False, label_value=-1)[0]


def test_a_missing_file_is_named_when_reading_lengths(tmp_path):
    seqs, labels = write_sequences(tmp_path, [3, 2])
    (tmp_path / "seq_0001.npy").unlink()
    with pytest.raises(
        SampleError, match=r"sample 1, file '.*seq_0001.npy': cannot load sequence length: FileNotFoundError"
    ):
        PaddedSequence(seqs, labels, bucket_by_length=True)[0]


def test_skip_mode_leaves_out_bad_sequences_and_keeps_step_weights(tmp_path):
    import os
    import warnings

    seqs, tags = write_sequences(tmp_path, [3, 2, 4, 1, 5], tags=True)
    os.remove(seqs[2])
    np.save(tags[4], np.zeros(2, np.int32))  # 2 tags for 5 steps
    seq = PaddedSequence(seqs, tags, batch_size=5, shuffle=False, label_value=-1, on_error="skip")
    x, y, w = seq[0]
    assert x.shape[0] == 3 and w.shape == y.shape == (3, 3)
    np.testing.assert_array_equal(w.sum(axis=1), [3, 2, 1])
    assert [(e.index, "FileNotFoundError" in e.reason or "steps" in e.reason) for e in seq.errors] == [
        (2, True),
        (4, True),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seq.on_epoch_end()
    assert "skipped 2 bad sample(s)" in str(caught[0].message)
