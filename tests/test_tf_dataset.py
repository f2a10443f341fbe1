"""seq.to_tf_dataset(): exact signatures, one epoch per pass, training through it."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import decode_index
from PIL import Image

from keras_sepseq import PaddedSequence, SeparatedSequence


def spec(shape, dtype):
    return tf.TensorSpec(shape, dtype)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        pytest.param(
            dict(image_size=(4, 3)), (spec((None, 4, 3, 3), tf.float32), spec((None,), tf.int64)), id="resized rgb"
        ),
        pytest.param(
            dict(color_mode="grayscale", dtype="uint8"),
            (spec((None, None, None, 1), tf.uint8), spec((None,), tf.int64)),
            id="native size grayscale",
        ),
        pytest.param(
            dict(image_size=(4, 3), on_error="skip"),
            (spec((None, 4, 3, 3), tf.float32), spec((None,), tf.int64), spec((None,), tf.float32)),
            id="skip adds weights",
        ),
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
    assert seq.output_signature() == (
        spec((None, None, 3), tf.float32),
        spec((None, None), tf.int32),
        spec((None, None), tf.float32),
    )
    fixed = PaddedSequence(sequences, np.zeros(12), batch_size=4, maxlen=7)
    assert fixed.output_signature() == (spec((None, 7, 3), tf.float32), spec((None,), tf.float64))
    model = keras.Sequential(
        [keras.Input((None, 3)), keras.layers.Masking(0.0), keras.layers.Dense(2, activation="softmax")]
    )
    model.compile("sgd", "sparse_categorical_crossentropy")
    history = model.fit(seq.to_tf_dataset(), epochs=2, verbose=0, shuffle=False)
    assert len(history.history["loss"]) == 2


def test_fit_through_the_tf_dataset(indexed_dataset):
    seq = SeparatedSequence(*indexed_dataset(20), batch_size=4, image_size=(6, 5), workers=2, use_multiprocessing=True)
    model = keras.Sequential([keras.Input((6, 5, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    assert len(model.fit(seq.to_tf_dataset(), epochs=3, verbose=0, shuffle=False).history["loss"]) == 3
    seq.close()


def test_the_tf_dataset_keras_builds_from_ours_has_autotuning_off(indexed_dataset):
    import keras
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    from keras_sepseq import keras_integration, tf_data

    class Plain(keras.utils.PyDataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return np.zeros((2, 3), np.float32), np.zeros(2, np.float32)

    images, labels = indexed_dataset(8)
    ours = PyDatasetAdapter(SeparatedSequence(images, labels, batch_size=4), shuffle=True).get_tf_dataset()
    theirs = PyDatasetAdapter(Plain(), shuffle=True).get_tf_dataset()
    assert ours.options().autotune.enabled is False  # no epoch-start stall (see _ours_in_keras_tf_dataset)
    assert theirs.options().autotune.enabled is not False  # other datasets left alone
    wrapped = PyDatasetAdapter.get_tf_dataset
    assert keras_integration.wrap_get_tf_dataset(tf_data._ours_in_keras_tf_dataset)  # installing twice wraps once
    assert PyDatasetAdapter.get_tf_dataset is wrapped and wrapped.keras_sepseq_wrapped


def keras_batches(seq, shuffle=False):
    """The batches Keras's TensorFlow path delivers for `seq` in one epoch, as numpy."""
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    dataset = PyDatasetAdapter(seq, shuffle=shuffle).get_tf_dataset()
    return dataset.element_spec, [tuple(t.numpy() for t in batch) for batch in dataset]


def same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param(dict(), id="threads"),
        pytest.param(dict(use_multiprocessing=True), id="processes"),
        pytest.param(dict(cache="memory"), id="memory cache"),
        pytest.param(dict(on_error="skip"), id="skip mode"),
    ],
)
def test_images_cross_into_the_graph_as_uint8_and_arrive_as_collate_makes_them(tmp_path, dtype, kwargs):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(10):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(paths[-1])
    seq = SeparatedSequence(paths, np.arange(10), batch_size=4, shuffle=False, dtype=dtype, workers=2, **kwargs)
    assert seq.deferred_scaling() == {0: 1 / 255}
    for _ in range(2):  # the second pass reads the memory cache
        spec, batches = keras_batches(seq)
        assert spec[0] == tf.TensorSpec((None, 9, 7, 3), dtype)
        assert len(batches) == 3
        for position, batch in enumerate(batches):
            expected = seq[position]
            assert expected[0].dtype == dtype  # outside the graph, batches are scaled as always
            assert len(batch) == len(expected)
            for got, want in zip(batch, expected):
                same_bits(got, want)
    via_tf_dataset = [batch[0] for batch in seq.to_tf_dataset().as_numpy_iterator()]
    seq.set_epoch(0)
    same_bits(np.concatenate(via_tf_dataset), np.concatenate([seq[p][0] for p in range(3)]))
    seq.close()


def test_flipped_and_cropped_images_still_cross_as_uint8(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(10):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(paths[-1])
    flips_and_crops = [keras.layers.RandomFlip("horizontal"), keras.layers.RandomCrop(8, 6)]
    seq = SeparatedSequence(
        paths, np.arange(10), batch_size=4, shuffle=False, workers=2, seed=3, augment=flips_and_crops
    )
    assert seq.deferred_scaling() == {0: 1 / 255}  # pixels only move: they can cross as uint8
    spec, batches = keras_batches(seq)
    assert spec[0] == tf.TensorSpec((None, 8, 6, 3), tf.float32)
    for position, batch in enumerate(batches):
        same_bits(batch[0], seq[position][0])
    seq.close()
    brighter = flips_and_crops + [keras.layers.RandomBrightness(0.1, value_range=(0, 1))]
    brightened = SeparatedSequence(paths, np.arange(10), augment=brighter)
    assert brightened.deferred_scaling() == {0: 1 / 255}  # the offsets cross too (see the next test)
    assert brightened.deferred_offsets() == {0: ((0.0, 1.0),)} and seq.deferred_offsets() == {}


@pytest.mark.parametrize(
    "layers, kwargs",
    [
        pytest.param(["brightness"], dict(), id="brightness-threads"),
        pytest.param(["flip", "crop", "brightness"], dict(), id="flip-crop-brightness"),
        pytest.param(["brightness", "flip", "brightness"], dict(cache="memory"), id="two-brightness-memory-cache"),
        pytest.param(["crop", "brightness"], dict(use_multiprocessing=True), id="processes"),
        pytest.param(["flip", "brightness"], dict(on_error="skip"), id="skip-mode-with-a-bad-file"),
    ],
)
def test_brightened_images_cross_as_uint8_with_their_offsets_and_arrive_with_the_same_bits(
    tmp_path, monkeypatch, layers, kwargs
):
    from keras_sepseq.augment import Augmentation

    rng = np.random.default_rng(2)
    paths = []
    for i in range(10):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)).save(paths[-1])  # 0 and 255: clipping
    if "on_error" in kwargs:
        (tmp_path / "5.png").write_bytes(b"not a png")
    make = {
        "brightness": lambda: keras.layers.RandomBrightness(0.2, value_range=(0, 1)),
        "flip": lambda: keras.layers.RandomFlip("horizontal"),
        "crop": lambda: keras.layers.RandomCrop(8, 6),
    }
    augment = [make[name]() for name in layers]
    seq = SeparatedSequence(
        paths, np.arange(10), batch_size=4, shuffle=False, workers=2, seed=5, augment=augment, **kwargs
    )
    assert seq.deferred_scaling() == {0: 1 / 255}
    assert seq.deferred_offsets() == {0: ((0.0, 1.0),) * layers.count("brightness")}
    photometric = Augmentation.photometric
    calls = []
    monkeypatch.setattr(Augmentation, "photometric", lambda *a: calls.append(1) or photometric(*a))
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    dataset = PyDatasetAdapter(seq, shuffle=False).get_tf_dataset()  # Keras reads two batches for their signature
    calls.clear()
    spec, batches = dataset.element_spec, [tuple(t.numpy() for t in batch) for batch in dataset]
    assert calls == []  # brightness was added in the graph, not here
    assert spec[0] == tf.TensorSpec((None, 8, 6, 3) if "crop" in layers else (None, 9, 7, 3), tf.float32)
    for position, batch in enumerate(batches):
        expected = seq[position]
        assert len(batch) == len(expected)
        for got, want in zip(batch, expected):
            same_bits(got, want)
    assert calls  # seq[i] outside the graph brightens in NumPy
    x = np.concatenate([batch[0] for batch in batches])
    assert x.min() == 0.0 and x.max() == 1.0 and len(np.unique(x)) > 256  # clipped, and offsets added
    seq.close()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(dict(dtype="float16"), id="float16-images"),
        pytest.param(dict(augment=[keras.layers.RandomContrast(0.2, value_range=(0, 1))]), id="contrast"),
        pytest.param(
            dict(augment=[keras.layers.RandomBrightness(0.2, value_range=(0, 1)), keras.layers.RandomRotation(0.1)]),
            id="rotation-by-keras",
        ),
    ],
)
def test_brightness_stays_in_python_where_the_graph_would_not_give_the_same_bits(tmp_path, options):
    paths = [str(tmp_path / f"{i}.png") for i in range(4)]
    for path in paths:
        Image.fromarray(np.full((5, 5, 3), 200, np.uint8)).save(path)
    options = {"augment": [keras.layers.RandomBrightness(0.2, value_range=(0, 1))], **options}
    seq = SeparatedSequence(paths, np.arange(4), batch_size=2, shuffle=False, seed=1, **options)
    assert seq.deferred_offsets() == {} and seq.deferred_scaling() == {}
    _, batches = keras_batches(seq)
    for position, batch in enumerate(batches):
        same_bits(batch[0], seq[position][0])


def test_a_batch_with_a_16_bit_image_crosses_scaled_and_keeps_its_precision(tmp_path):
    import cv2

    deep = (np.arange(9 * 7 * 3, dtype=np.uint16).reshape(9, 7, 3) * 300 + 5).astype(np.uint16)
    paths = [str(tmp_path / f"{i}.png") for i in range(4)]
    for i, path in enumerate(paths):
        if i == 1:
            cv2.imwrite(path, deep)  # grey-free 16-bit colour; channel order does not matter here
        else:
            Image.fromarray(np.full((9, 7, 3), 10 * i, np.uint8)).save(path)
    seq = SeparatedSequence(paths, np.arange(4), batch_size=2, shuffle=False)
    _, batches = keras_batches(seq)
    for position, (x, _y) in enumerate(batches):
        same_bits(x, seq[position][0])
    levels = np.unique(np.rint(batches[0][0][1].astype(np.float64) * 65535))
    np.testing.assert_array_equal(levels, np.unique(deep))  # 16-bit steps survived: not squeezed into 256 levels


def test_nothing_is_deferred_for_integer_batches_or_padded_sequences(tmp_path):
    paths = [str(tmp_path / f"{i}.png") for i in range(2)]
    for path in paths:
        Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(path)
    assert SeparatedSequence(paths, [0, 1], dtype="uint8").deferred_scaling() == {}
    padded = PaddedSequence([np.ones((2, 1), np.float32)] * 2, np.zeros(2), batch_size=2)
    assert padded.deferred_scaling() == {}
    spec, batches = keras_batches(padded)
    assert spec[0].dtype == tf.float32 and batches[0][0].dtype == np.float32


def test_only_the_graph_path_sees_deferred_batches(tmp_path):
    paths = [str(tmp_path / f"{i}.png") for i in range(4)]
    for path in paths:
        Image.fromarray(np.full((3, 3, 3), 51, np.uint8)).save(path)
    seq = SeparatedSequence(paths, np.arange(4), batch_size=2, shuffle=False)
    keras_batches(seq)
    assert not seq.scaling_deferred
    x, _ = seq[0]
    assert x.dtype == np.float32 and np.allclose(x, 0.2)
    model = keras.Sequential([keras.Input((3, 3, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(seq, epochs=1, verbose=0)
    assert model.predict(seq, verbose=0).shape == (4, 1)
    assert seq[1][0].dtype == np.float32
