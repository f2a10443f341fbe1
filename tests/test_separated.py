import os
import pickle

import imageio.v3 as iio
import numpy as np
import pytest
from conftest import decode_index, index_image
from PIL import Image

from keras_sepseq import SampleError, SeparatedSequence, ShapeMismatchError
from keras_sepseq.paths import PathArray


@pytest.mark.parametrize(
    "color_mode, channels", [("rgb", 3), ("rgba", 4), ("grayscale", 1)], ids=["rgb", "rgba", "grayscale"]
)
@pytest.mark.parametrize("dtype", ["float32", "float16", "uint8", "uint16"])
def test_batch_shape_and_dtype(indexed_dataset, color_mode, channels, dtype):
    images, labels = indexed_dataset(5)
    x, y = SeparatedSequence(images, labels, batch_size=4, color_mode=color_mode, dtype=dtype)[0]
    assert x.shape == (4, 6, 5, channels)
    assert x.dtype == np.dtype(dtype)
    assert y.shape == (4,) and y.dtype == np.int64


def test_float32_pixels_are_scaled_to_unit_range(indexed_dataset):
    images, labels = indexed_dataset(3)
    x, _ = SeparatedSequence(images, labels, batch_size=3, shuffle=False)[0]
    np.testing.assert_allclose(x[:, 0, 0, 2], 7 / 255, rtol=1e-6)
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_image_size_resizes_every_image(tmp_path):
    paths = []
    for i, size in enumerate([(10, 12), (31, 17), (8, 8)]):
        paths.append(str(tmp_path / f"img_{i}.png"))
        Image.fromarray(index_image(i, size)).save(paths[-1])
    x, y = SeparatedSequence(paths, [0, 1, 2], batch_size=3, image_size=(16, 20), shuffle=False)[0]
    assert x.shape == (3, 16, 20, 3)
    np.testing.assert_array_equal(y, [0, 1, 2])


def test_mixed_sizes_without_image_size_name_two_files_and_suggest_image_size(tmp_path):
    a, b = str(tmp_path / "a_0.png"), str(tmp_path / "b_1.png")
    Image.fromarray(index_image(0, (6, 5))).save(a)
    Image.fromarray(index_image(1, (7, 5))).save(b)
    seq = SeparatedSequence([a, b], [0, 1], batch_size=2, shuffle=False)
    with pytest.raises(
        ValueError,
        match=r"images in one batch have different shapes: '.*a_0.png' has shape \(6, 5, 3\) but '.*b_1.png' has shape \(7, 5, 3\). Pass `image_size=\(height, width\)`",
    ):
        seq[0]


def test_mixed_16_and_8_bit_images_scale_each_by_its_own_depth(tmp_path):
    eight, sixteen = str(tmp_path / "e_0.png"), str(tmp_path / "s_1.png")
    Image.fromarray(np.full((4, 4), 255, np.uint8)).save(eight)
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(sixteen)
    x, _ = SeparatedSequence([eight, sixteen], [0, 1], batch_size=2, shuffle=False, color_mode="grayscale")[0]
    np.testing.assert_allclose(x, 1.0)


@pytest.mark.parametrize(
    "label_shape, label_dtype",
    [((), np.int64), ((10,), np.float32), ((2, 3), np.uint8)],
    ids=["scalar int64", "vector float32", "matrix uint8"],
)
def test_labels_keep_their_dtype_and_shape(tmp_path, indexed_dataset, label_shape, label_dtype):
    images, _ = indexed_dataset(4)
    labels = []
    for i in range(4):
        labels.append(str(tmp_path / f"y_{i}.npy"))
        np.save(labels[-1], np.full(label_shape, i, dtype=label_dtype))
    _, y = SeparatedSequence(images, labels, batch_size=3, shuffle=False)[0]
    assert y.shape == (3,) + label_shape
    assert y.dtype == label_dtype
    np.testing.assert_array_equal(y.reshape(3, -1)[:, 0], [0, 1, 2])


def test_npy_labels_are_not_read_with_their_header(tmp_path, indexed_dataset):
    """The tf.io.decode_raw recipe returns 42 int32 values for a 10-value label; we return 10."""
    images, _ = indexed_dataset(1)
    label = str(tmp_path / "ten.npy")
    np.save(label, np.arange(10, dtype=np.int32))
    assert os.path.getsize(label) == 128 + 40
    _, y = SeparatedSequence(images, [label], batch_size=1)[0]
    np.testing.assert_array_equal(y[0], np.arange(10))


def test_label_shapes_that_differ_name_two_files(tmp_path, indexed_dataset):
    images, _ = indexed_dataset(2)
    a, b = str(tmp_path / "la.npy"), str(tmp_path / "lb.npy")
    np.save(a, np.int64(1))
    np.save(b, np.zeros(3))
    with pytest.raises(
        ShapeMismatchError,
        match=r"labels in one batch have different shapes: '.*la.npy' has shape \(\) but '.*lb.npy' has shape \(3,\)",
    ):
        SeparatedSequence(images, [a, b], batch_size=2, shuffle=False)[0]


@pytest.mark.parametrize(
    "labels",
    [
        pytest.param(list(range(7)), id="list of ints"),
        pytest.param(np.arange(7) * 1.5, id="float array"),
        pytest.param(np.eye(7, dtype=np.float32), id="one-hot matrix"),
    ],
)
def test_in_memory_labels_follow_the_shuffle(indexed_dataset, labels):
    images, _ = indexed_dataset(7)
    expected = np.asarray(labels)
    seq = SeparatedSequence(images, labels, batch_size=3, seed=4, dtype="uint8")
    for i in range(len(seq)):
        x, y = seq[i]
        np.testing.assert_array_equal(y, expected[decode_index(x)])


def test_no_labels_gives_inputs_only(indexed_dataset):
    images, _ = indexed_dataset(3)
    batch = SeparatedSequence(images, None, batch_size=2, shuffle=False)[1]
    assert isinstance(batch, tuple) and len(batch) == 1 and batch[0].shape == (1, 6, 5, 3)


@pytest.mark.parametrize(
    "n, batch_size, drop_remainder, expected_len, last_size",
    [(10, 3, False, 4, 1), (10, 3, True, 3, 3), (9, 3, False, 3, 3), (9, 3, True, 3, 3), (2, 5, False, 1, 2)],
    ids=["ceil", "floor", "exact", "exact dropped", "one short batch"],
)
def test_length_and_last_batch(indexed_dataset, n, batch_size, drop_remainder, expected_len, last_size):
    images, labels = indexed_dataset(n)
    seq = SeparatedSequence(images, labels, batch_size, drop_remainder=drop_remainder)
    assert len(seq) == expected_len
    assert seq[-1][0].shape[0] == last_size
    with pytest.raises(
        IndexError, match=f"batch index {expected_len} is out of range for a dataset of {expected_len} batches"
    ):
        seq[expected_len]


def test_iterating_yields_each_batch_once(indexed_dataset):
    images, labels = indexed_dataset(7)
    served = np.concatenate([y for _, y in SeparatedSequence(images, labels, batch_size=3, seed=1)])
    assert sorted(served.tolist()) == list(range(7))


def test_shuffle_false_keeps_the_given_order_every_epoch(indexed_dataset):
    images, labels = indexed_dataset(6)
    seq = SeparatedSequence(images[::-1], labels[::-1], batch_size=4, shuffle=False)
    for _ in range(2):
        np.testing.assert_array_equal(np.concatenate([seq[0][1], seq[1][1]]), np.arange(6)[::-1])
        seq.on_epoch_end()


def test_epoch_end_reshuffles_and_the_seed_repeats_the_orders(indexed_dataset):
    images, labels = indexed_dataset(20)

    def orders(seed):
        seq = SeparatedSequence(images, labels, batch_size=20, seed=seed)
        result = []
        for _ in range(3):
            result.append(seq[0][1].tolist())
            seq.on_epoch_end()
        return result

    first = orders(11)
    assert first == orders(11)
    assert first[0] != first[1] != first[2]
    assert all(sorted(order) == list(range(20)) for order in first)
    assert first != orders(12)


def test_seed_none_draws_a_seed_that_reproduces(indexed_dataset):
    images, labels = indexed_dataset(12)
    seq = SeparatedSequence(images, labels, batch_size=12)
    again = SeparatedSequence(images, labels, batch_size=12, seed=seq.seed)
    np.testing.assert_array_equal(seq[0][1], again[0][1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param(
            dict(label_paths=["y.npy"] * 2),
            r"same length. Received: len\(image_paths\)=3, len\(label_paths\)=2",
            id="lengths differ",
        ),
        pytest.param(
            dict(label_paths=np.zeros(4)), r"len\(image_paths\)=3, len\(label_paths\)=4", id="in-memory labels too many"
        ),
        pytest.param(dict(image_paths=[]), r"`image_paths` must not be empty", id="no images"),
        pytest.param(
            dict(batch_size=0), r"`batch_size` must be an integer >= 1. Received: batch_size=0", id="batch_size 0"
        ),
        pytest.param(dict(batch_size=2.5), r"Received: batch_size=2.5", id="batch_size float"),
        pytest.param(
            dict(color_mode="cmyk"),
            r"`color_mode` must be one of \['grayscale', 'rgb', 'rgba'\]. Received: color_mode='cmyk'",
            id="color_mode",
        ),
        pytest.param(
            dict(dtype="int8"),
            r"`dtype` must be one of \['float16', 'float32', 'uint16', 'uint8'\]. Received: dtype='int8'",
            id="dtype",
        ),
        pytest.param(
            dict(interpolation="cubic"),
            r"`interpolation` must be one of .* Received: interpolation='cubic'",
            id="interpolation",
        ),
        pytest.param(
            dict(image_size=(0, 4)),
            r"`image_size` must be None or a \(height, width\) pair of integers >= 1. Received: image_size=\(0, 4\)",
            id="image_size zero",
        ),
        pytest.param(dict(image_size=64), r"Received: image_size=64", id="image_size int"),
        pytest.param(dict(seed=-1), r"`seed` must be an integer >= 0. Received: seed=-1", id="negative seed"),
        pytest.param(
            dict(workers=-2), r"`workers` must be an integer >= 0. Received: workers=-2", id="negative workers"
        ),
        pytest.param(
            dict(batch_size=4, drop_remainder=True),
            r"`drop_remainder=True` with batch_size=4 and only 3 samples",
            id="nothing left",
        ),
        pytest.param(dict(label_paths=[[1, 2], [3]]), r"numeric array", id="ragged labels"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, message):
    args = dict(image_paths=["a.png", "b.png", "c.png"], label_paths=[0, 1, 2])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        SeparatedSequence(**args)


def test_a_glob_string_instead_of_a_list_points_to_pair_files():
    with pytest.raises(
        TypeError,
        match=r"`image_paths` must be a sequence of paths, not a single path or pattern; use `pair_files\(\)`",
    ):
        SeparatedSequence("data/*.png", [0])


def test_construction_touches_no_file():
    seq = SeparatedSequence(
        [f"/nonexistent/img_{i}.png" for i in range(100)], [f"/nonexistent/{i}.npy" for i in range(100)]
    )
    assert len(seq) == 4


@pytest.mark.parametrize(
    "break_it, what",
    [
        pytest.param(
            lambda images, labels: os.remove(images[1]), "cannot load image: FileNotFoundError", id="missing image"
        ),
        pytest.param(
            lambda images, labels: open(images[1], "wb").write(b"not a png at all"),
            "cannot load image: ValueError: not an image that Pillow or imageio can decode",
            id="undecodable image",
        ),
        pytest.param(
            lambda images, labels: open(images[1], "wb").close(),
            r"cannot load image: ValueError: the file is empty \(0 bytes\)",
            id="zero-byte image",
        ),
        pytest.param(
            lambda images, labels: os.remove(labels[1]), "cannot load label: FileNotFoundError", id="missing label"
        ),
        pytest.param(
            lambda images, labels: open(labels[1], "w").write("3\n"), "cannot load label", id="text file named .npy"
        ),
        pytest.param(
            lambda images, labels: np.save(labels[1], np.array([{"a": 1}], dtype=object)),
            r"cannot load label: ValueError: the .npy file holds Python objects \(pickled data\)",
            id="pickled objects refused",
        ),
    ],
)
def test_broken_files_are_named_with_their_sample_index(indexed_dataset, break_it, what):
    images, labels = indexed_dataset(3)
    break_it(images, labels)
    seq = SeparatedSequence(images, labels, batch_size=3, shuffle=False)
    bad = images[1] if "image" in what else labels[1]
    with pytest.raises(SampleError, match=f"sample 1, file '{bad}': {what}") as info:
        seq[0]
    assert info.value.path == bad and info.value.index == 1
    assert info.value.__cause__ is not None


def test_sample_errors_survive_pickling():
    error = SampleError("cannot load image: OSError: truncated", path="/d/a b.png", index=7)
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), str(again), again.path, again.index, again.reason) == (
        SampleError,
        str(error),
        "/d/a b.png",
        7,
        "cannot load image: OSError: truncated",
    )
    mismatch = pickle.loads(pickle.dumps(ShapeMismatchError("images differ")))
    assert isinstance(mismatch, ValueError) and str(mismatch) == "images differ"


def test_pickles_cheaply_and_identically(indexed_dataset):
    n = 50_000
    seq = SeparatedSequence(
        [f"/data/train/image_{i:06d}.png" for i in range(n)],
        [f"/data/train/label_{i:06d}.npy" for i in range(n)],
        seed=3,
    )
    blob = pickle.dumps(seq)
    assert isinstance(seq.image_paths, PathArray)
    assert len(blob) < 60 * n  # two names of ~16 bytes, two offsets, one order entry per sample
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again.batch_indices(3), seq.batch_indices(3))
    assert again.image_paths[-1] == seq.image_paths[-1]


class NpyVolumes(SeparatedSequence):
    """The README's subclassing example: inputs are .npy volumes."""

    def load_input(self, path):
        return np.load(path, allow_pickle=False)[..., None]


def test_subclass_loads_npy_volumes(tmp_path):
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"vol_{i}.npy"))
        np.save(paths[-1], np.full((3, 4, 5), i, dtype=np.int16))
    x, y = NpyVolumes(paths, np.arange(5), batch_size=5, shuffle=False)[0]
    assert x.shape == (5, 3, 4, 5, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, 0, 0, 0, 0], np.arange(5))  # int16 is cast, not scaled
    np.testing.assert_array_equal(y, np.arange(5))


class Tiff16(SeparatedSequence):
    def load_input(self, path):
        return iio.imread(path)[..., None]

    def load_target(self, path):
        with open(path) as f:
            return np.int64(f.read())


def test_subclass_reads_16_bit_tiffs_and_text_labels(tmp_path):
    images, labels = [], []
    for i in range(4):
        images.append(str(tmp_path / f"s_{i}.tif"))
        labels.append(str(tmp_path / f"s_{i}.txt"))
        iio.imwrite(images[-1], np.full((4, 4), 65535 // (i + 1), np.uint16))
        with open(labels[-1], "w") as f:
            f.write(str(i))
    x, y = Tiff16(images, labels, batch_size=4, shuffle=False)[0]
    np.testing.assert_allclose(x[:, 0, 0, 0], [1 / (i + 1) for i in range(4)], rtol=1e-4)
    np.testing.assert_array_equal(y, [0, 1, 2, 3])


def test_hook_errors_are_wrapped_with_the_path(tmp_path, indexed_dataset):
    class Broken(SeparatedSequence):
        def load_target(self, path):
            raise KeyError("no such field")

    images, labels = indexed_dataset(2)
    with pytest.raises(
        SampleError, match=r"sample 0, file '.*label_0000.npy': cannot load label: KeyError: 'no such field'"
    ):
        Broken(images, labels, batch_size=2, shuffle=False)[0]


def test_repr_mentions_the_settings(indexed_dataset):
    images, labels = indexed_dataset(3)
    text = repr(SeparatedSequence(images, labels, batch_size=2, seed=5))
    assert (
        text
        == "SeparatedSequence(3 images, 3 labels, batch_size=2, image_size=None, color_mode='rgb', dtype='float32', shuffle=True, seed=5)"
    )


@pytest.mark.parametrize("antialias", [False, True], ids=["sampled", "antialiased"])
@pytest.mark.parametrize("workers", [1, 2], ids=["main thread", "threads"])
def test_resizing_matches_tensorflow_on_png_and_jpeg(tmp_path, antialias, workers):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"p{i}.{'png' if i % 2 else 'jpg'}"))
        smooth = np.clip(
            np.add.outer(np.arange(90), np.arange(70))[..., None] + rng.integers(0, 9, (90, 70, 3)), 0, 255
        )
        Image.fromarray(smooth.astype(np.uint8)).save(paths[-1], quality=95)
    seq = SeparatedSequence(
        paths, np.arange(6), batch_size=6, image_size=(30, 20), shuffle=False, workers=workers, antialias=antialias
    )
    x, y = seq[0]
    assert x.shape == (6, 30, 20, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(y, np.arange(6))
    for k, path in enumerate(paths):
        decoded = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        expected = tf.image.resize(tf.cast(decoded, tf.float32), (30, 20), antialias=antialias).numpy() / 255
        # PNG: same pixels, resize rounding only; JPEG: shrunk 2x in the DCT first, and decoders differ a little.
        assert np.abs(x[k] - expected).max() < (0.01 if path.endswith("png") else 0.1), path


def test_antialias_must_be_a_bool():
    with pytest.raises(TypeError, match=r"`antialias` must be True or False. Received: antialias='yes'"):
        SeparatedSequence(["a.png"], [0], antialias="yes")
