"""FieldSequence: samples of named fields, batched as dicts keyed by name, every field of a sample aligned."""

import os

import numpy as np
import pytest
from conftest import decode_index, write_indexed_dataset

from keras_sepseq import ArrayField, FieldSequence, ImageField, PaddedField, SampleError, ShapeMismatchError

MODES = [
    pytest.param(dict(workers=1), id="inline"),
    pytest.param(dict(workers=2), id="threads"),
    pytest.param(dict(workers=2, use_multiprocessing=True), id="processes"),
]


@pytest.fixture
def two_views(tmp_path):
    """Two image folders and label files where sample i's images and label all encode i."""
    left, labels = write_indexed_dataset(tmp_path / "left", 30)
    right, _ = write_indexed_dataset(tmp_path / "right", 30, size=(4, 4))
    return left, right, labels


def named(left, right, labels, **options):
    return FieldSequence(
        {"left": ImageField(left), "right": ImageField(right, dtype="uint8")},
        {"index": ArrayField(labels)},
        batch_size=8,
        seed=3,
        **options,
    )


@pytest.mark.parametrize("options", MODES)
def test_every_field_of_a_sample_is_aligned_and_every_sample_comes_once(two_views, options):
    seq = named(*two_views, **options)
    for _ in range(2):
        seen = []
        for i in range(len(seq)):
            x, y = seq[i]
            assert set(x) == {"left", "right"} and set(y) == {"index"}
            assert x["left"].shape[1:] == (6, 5, 3) and x["left"].dtype == np.float32
            assert x["right"].shape[1:] == (4, 4, 3) and x["right"].dtype == np.uint8
            assert y["index"].dtype == np.int64
            np.testing.assert_array_equal(decode_index(x["left"]), y["index"])
            np.testing.assert_array_equal(decode_index(x["right"]), y["index"])
            seen += y["index"].tolist()
        assert sorted(seen) == list(range(30))
        seq.on_epoch_end()
    seq.close()


def test_the_same_seed_gives_the_same_bytes_in_every_mode(two_views):
    def batches(**options):
        seq = named(*two_views, **options)
        out = [(x["left"].tobytes(), x["right"].tobytes(), y["index"].tobytes()) for x, y in (seq[i] for i in range(4))]
        seq.close()
        return out

    reference = batches()
    assert batches(workers=2) == reference
    assert batches(workers=2, use_multiprocessing=True) == reference
    assert batches(cache="memory") == reference


def test_single_fields_give_plain_arrays_and_weights_follow_their_samples(two_views):
    left, _, labels = two_views
    seq = FieldSequence(
        ImageField(left), ArrayField(labels), batch_size=5, shuffle=False, sample_weights=np.arange(30) / 10
    )
    x, y, w = seq[1]
    assert x.shape == (5, 6, 5, 3) and y.tolist() == [5, 6, 7, 8, 9]
    np.testing.assert_allclose(w, np.arange(5, 10) / 10)
    assert w.dtype == np.float32
    inputs_only = FieldSequence({"left": ImageField(left)}, batch_size=5, shuffle=False)
    (x,) = inputs_only[0]
    assert list(x) == ["left"]


def test_output_signature_is_a_dict_where_a_dict_was_given(two_views):
    import tensorflow as tf

    seq = named(*two_views, on_error="skip")
    x, y, w = seq.output_signature()
    assert x["left"] == tf.TensorSpec((None, None, None, 3), tf.float32)
    assert x["right"] == tf.TensorSpec((None, None, None, 3), tf.uint8)
    assert y["index"] == tf.TensorSpec((None,), tf.int64)
    assert w == tf.TensorSpec((None,), tf.float32)
    batches = list(seq.to_tf_dataset().take(2))
    assert batches[0][0]["left"].shape == (8, 6, 5, 3)


def test_padded_fields_pad_per_batch_and_keep_the_time_dimension_open():
    sequences = [np.full((1 + i % 4, 2), i, np.float32) for i in range(12)]
    seq = FieldSequence(
        {"frames": PaddedField(sequences, value=-1)}, ArrayField(np.arange(12)), batch_size=4, shuffle=False
    )
    (x0, y0), (x1, y1) = seq[0], seq[1]
    assert y0.tolist() == [0, 1, 2, 3] and y1.tolist() == [4, 5, 6, 7]
    assert x0["frames"].shape == (4, 4, 2)
    assert x1["frames"].shape == (4, 5, 2)  # one step longer than batch 0: Keras's signature probe leaves T open
    assert x0["frames"][0, 1:].tolist() == [[-1, -1]] * 3 and x0["frames"][0, 0].tolist() == [0, 0]
    fixed = FieldSequence(PaddedField(sequences, maxlen=3), ArrayField(np.arange(12)), batch_size=4, shuffle=False)
    assert fixed[0][0].shape == fixed[1][0].shape == (4, 3, 2)


def test_a_bad_file_in_any_field_names_the_file_and_the_field(two_views):
    left, right, labels = two_views
    with open(right[4], "wb") as f:
        f.write(b"not an image")
    seq = FieldSequence(
        {"left": ImageField(left), "right": ImageField(right)}, ArrayField(labels), batch_size=30, shuffle=False
    )
    with pytest.raises(
        SampleError, match=r"sample 4, file '.*right.image_0004.png': cannot load image \('right'\)"
    ) as raised:
        seq[0]
    assert raised.value.path == right[4] and raised.value.index == 4
    skipping = FieldSequence(
        {"left": ImageField(left), "right": ImageField(right)},
        ArrayField(labels),
        batch_size=30,
        shuffle=False,
        on_error="skip",
    )
    with pytest.warns(UserWarning, match="skipped 1 bad sample"):
        x, y, w = skipping[0]
        skipping.on_epoch_end()
    assert 4 not in y.tolist() and len(y) == 29
    assert [e.index for e in skipping.errors] == [4]


def test_images_of_different_sizes_in_one_field_name_two_files(tmp_path):
    small, labels = write_indexed_dataset(tmp_path / "a", 2, size=(4, 4))
    large, _ = write_indexed_dataset(tmp_path / "b", 2, size=(5, 5))
    seq = FieldSequence(ImageField([small[0], large[1]]), ArrayField(labels), batch_size=2, shuffle=False)
    with pytest.raises(ShapeMismatchError, match=r"image_0000.png.*image_0001.png.*image_size"):
        seq[0]


@pytest.mark.parametrize(
    "inputs, targets, kwargs, error, message",
    [
        pytest.param(
            {"a": ArrayField(np.arange(3))}, ArrayField(np.arange(4)), {}, ValueError,
            r"different counts: a: 3, target: 4", id="fields of different lengths",
        ),
        pytest.param([1, 2], None, {}, TypeError, r"`inputs` must be a field .* Received: \[1, 2\]", id="not a field"),
        pytest.param(
            {"a": np.arange(3)}, None, {}, TypeError, r"`inputs\['a'\]` must be a keras_sepseq field.*ndarray",
            id="an array in the dict",
        ),
        pytest.param(
            ArrayField(np.arange(3)), None, {"sample_weights": [1, 1, 1]}, ValueError,
            r"`sample_weights` needs `targets`", id="weights without targets",
        ),
        pytest.param(
            ArrayField(np.arange(3)), ArrayField(np.arange(3)), {"sample_weights": [1, 1]}, ValueError,
            r"one number per sample, shape \(3,\). Received shape \(2,\)", id="weights of the wrong length",
        ),
        pytest.param(ArrayField(np.arange(3)), None, {"batch_size": 0}, ValueError, r"`batch_size`", id="batch size 0"),
    ],
)  # fmt: skip
def test_bad_arguments_are_named(inputs, targets, kwargs, error, message):
    with pytest.raises(error, match=message):
        FieldSequence(inputs, targets, **kwargs)


def test_a_directory_cache_serves_the_same_batches(two_views, tmp_path):
    left, right, labels = two_views
    make = lambda **o: FieldSequence(  # noqa: E731
        {"left": ImageField(left, image_size=(6, 5)), "right": ImageField(right, image_size=(4, 4))},
        ArrayField(labels), batch_size=8, seed=1, **o,
    )  # fmt: skip
    plain = make()
    expected = [
        (x["left"].tobytes(), x["right"].tobytes(), y.tobytes()) for x, y in (plain[i] for i in range(len(plain)))
    ]
    for _ in range(2):  # the first pass fills the cache, the second reads it
        cached = make(cache=str(tmp_path / "cache"))
        got = [
            (x["left"].tobytes(), x["right"].tobytes(), y.tobytes()) for x, y in (cached[i] for i in range(len(cached)))
        ]
        cached.close()
        assert got == expected
    assert os.listdir(tmp_path / "cache")


def test_padded_fields_of_varying_length_are_served_from_the_memory_cache():
    sequences = [np.full((1 + i % 5, 3), i, np.float32) for i in range(12)]
    seq = FieldSequence(PaddedField(sequences), ArrayField(np.arange(12)), batch_size=4, seed=2, cache="memory")
    assert not seq.fixed_sample_shape()  # lengths vary: the cache must not preallocate one shape
    first = [tuple(a.tobytes() for a in seq[i]) for i in range(len(seq))]
    cache = seq.sample_cache()
    assert cache.filled_mask(np.arange(12)).all()
    seq.set_epoch(0)
    assert [tuple(a.tobytes() for a in seq[i]) for i in range(len(seq))] == first
