"""Augmentation: after the cache, the same transform for every field of a sample, reproducible, never global."""

import hashlib
import json
import os
import random
import subprocess
import sys

import keras
import numpy as np
import pytest
from test_masks import mask_class, write_coordinate_pairs

from keras_sepseq import ArrayField, FieldSequence, ImageField, PaddedSequence, SeparatedSequence
from keras_sepseq.augment import batch_seed, sample_rng
from keras_sepseq.masks import MaskField

MODES = [
    pytest.param(dict(workers=1), id="inline"),
    pytest.param(dict(workers=2), id="threads"),
    pytest.param(dict(workers=2, use_multiprocessing=True), id="processes"),
]


def geometric_layers():
    return [keras.layers.RandomFlip("horizontal_and_vertical"), keras.layers.RandomCrop(16, 16)]


def digest(seq, epochs=2):
    h = hashlib.sha256()
    for _ in range(epochs):
        for i in range(len(seq)):
            for a in seq[i]:
                h.update(np.ascontiguousarray(a).tobytes())
        seq.on_epoch_end()
    return h.hexdigest()


def segmentation(folder, **options):
    images, masks = write_coordinate_pairs(folder, 12)
    options = {"augment": geometric_layers(), "dtype": "uint8", "num_classes": 3, "seed": 7, **options}
    return SeparatedSequence(images, masks, batch_size=5, **options)


@pytest.mark.parametrize("options", MODES)
@pytest.mark.parametrize("cache", [None, "memory"], ids=["no cache", "memory cache"])
def test_flips_and_crops_keep_every_mask_pixel_on_its_image_pixel(tmp_path, options, cache):
    seq = segmentation(tmp_path / "data", cache=cache, **options)
    for _ in range(2):
        for i in range(len(seq)):
            x, y = seq[i]
            assert x.shape[1:] == (16, 16, 3) and y.shape[1:] == (16, 16) and y.dtype == np.int32  # not float32
            xi = x.astype(np.int64)
            np.testing.assert_array_equal(y, mask_class(xi[..., 0], xi[..., 1], xi[..., 2]))
        seq.on_epoch_end()
    seq.close()


def test_rotations_move_masks_with_images_and_fill_outside_pixels_with_ignore_index(tmp_path):
    images, masks = write_coordinate_pairs(tmp_path / "data", 8)
    # Nearest-neighbour images too, so the coordinates an image pixel holds are exactly those its mask pixel
    # was sampled from (with bilinear images they agree only away from class edges).
    rotate = keras.layers.RandomRotation(0.25, fill_mode="constant", interpolation="nearest")
    seq = SeparatedSequence(
        images, masks, batch_size=8, dtype="uint8", num_classes=3, ignore_index=255, augment=rotate, seed=3
    )
    x, y = seq[0]
    assert set(np.unique(y)) <= {0, 1, 2, 255} and (y == 255).any()  # corners came from outside: ignored
    valid = y != 255
    xi = x.astype(np.int64)
    np.testing.assert_array_equal(mask_class(xi[..., 0], xi[..., 1], xi[..., 2])[valid], y[valid])
    assert (x[~valid] == 0).all()  # where the mask is ignored, the image was filled from outside too


@pytest.mark.parametrize("name", ["threads", "processes", "memory cache", "directory cache"])
def test_the_same_seed_gives_the_same_bytes_in_every_mode_and_epochs_differ(tmp_path, name):
    reference = digest(segmentation(tmp_path / "a"))
    options = {
        "threads": dict(workers=2),
        "processes": dict(workers=2, use_multiprocessing=True),
        "memory cache": dict(cache="memory"),
        "directory cache": dict(cache=str(tmp_path / "cache"), image_size=(24, 24)),
    }[name]
    assert digest(segmentation(tmp_path / "b", **options)) == reference
    one, two = segmentation(tmp_path / "c"), segmentation(tmp_path / "d")
    two.set_epoch(1)
    assert one[0][0].tobytes() != two[0][0].tobytes()  # another epoch, other transforms


def test_a_resumed_sequence_in_a_new_process_augments_identically(tmp_path):
    seq = segmentation(tmp_path / "data")
    seq.on_epoch_end()
    state = seq.get_state()
    here = hashlib.sha256(seq[1][0].tobytes()).hexdigest()
    code = f"""
import sys, json, hashlib
sys.path.insert(0, {os.path.dirname(__file__)!r})
import test_augment
seq = test_augment.segmentation({str(tmp_path / "data")!r})
seq.set_state(json.loads({json.dumps(json.dumps(state))}))
print(hashlib.sha256(seq[1][0].tobytes()).hexdigest(), flush=True)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == here


def test_a_callable_gets_one_sample_and_a_generator_from_seed_epoch_and_index(tmp_path):
    images, masks = write_coordinate_pairs(tmp_path / "data", 6)
    seen = []

    def shift(sample, rng):
        seen.append(sorted(sample))
        k = int(rng.integers(0, 4))
        sample["image"] = np.rot90(sample["image"], k)
        sample["mask"] = np.rot90(sample["mask"], k).astype(np.float64)  # comes back in the mask's dtype
        sample["index"] = sample["index"] + 100
        return sample

    def make(**options):
        return FieldSequence(
            {"image": ImageField(images, dtype="uint8")}, {"mask": MaskField(masks), "index": ArrayField(np.arange(6))},
            batch_size=3, seed=2, augment=shift, **options,
        )  # fmt: skip

    seq = make(cache="memory")
    x, y = seq[0]
    assert seen[0] == ["image", "index", "mask"]
    assert y["mask"].dtype == np.int32 and y["index"].tolist() == [100 + i for i in seq.batch_indices(0)]
    xi = x["image"].astype(np.int64)
    np.testing.assert_array_equal(y["mask"], mask_class(xi[..., 0], xi[..., 1], xi[..., 2]))
    again = seq[0]  # from the cache now: the cache kept the unaugmented sample, the same transform follows
    assert again[0]["image"].tobytes() == x["image"].tobytes()
    first = int(seq.batch_indices(0)[0])
    k = int(sample_rng(2, 0, first).integers(0, 4))
    raw = np.asarray(seq.sample_cache().get(first)[0])
    np.testing.assert_array_equal(x["image"][0], np.rot90(raw, k))
    assert make(workers=2, use_multiprocessing=True)[0][0]["image"].tobytes() == x["image"].tobytes()


def test_a_callable_that_drops_a_field_is_named():
    seq = FieldSequence(ArrayField(np.arange(4.0)), ArrayField(np.arange(4)), batch_size=2, augment=lambda s, rng: {})
    with pytest.raises(TypeError, match=r"must return the sample as a dict with the keys \['input', 'target'\]"):
        seq[0]


def test_padded_sequences_take_callables(tmp_path):
    sequences = [np.full((2 + i % 3, 2), float(i), np.float32) for i in range(6)]
    seq = PaddedSequence(
        sequences,
        np.arange(6),
        batch_size=3,
        shuffle=False,
        augment=lambda s, rng: {**s, "sequence": s["sequence"] * 2},
    )
    x, y = seq[0]
    assert x[:, 0, 0].tolist() == [0, 2, 4] and y.tolist() == [0, 1, 2]


def test_the_placeholder_of_a_batch_of_bad_samples_is_not_augmented(tmp_path):
    images, masks = write_coordinate_pairs(tmp_path / "data", 4)
    for path in images[:2]:
        open(path, "wb").close()
    calls = []

    def count(sample, rng):
        calls.append(1)
        return sample

    seq = SeparatedSequence(images, masks, batch_size=2, shuffle=False, on_error="skip", augment=count)
    with pytest.warns(UserWarning, match="skipped 2 bad sample"):
        x, y, w = seq[0]  # both bad: one placeholder of weight 0
        seq.on_epoch_end()
    assert w.tolist() == [0.0] and calls == []
    seq.set_epoch(0)
    seq[1]
    assert len(calls) == 2


def test_no_global_random_state_is_read_or_changed(tmp_path):
    seq = segmentation(tmp_path / "data")
    random.seed(5)
    np.random.seed(5)
    before = (random.getstate(), np.random.get_state()[1].tobytes())
    seq[0], seq[1]
    assert (random.getstate(), np.random.get_state()[1].tobytes()) == before
    assert batch_seed(7, 0, 0) == batch_seed(7, 0, 0) != batch_seed(7, 0, 1)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        pytest.param(
            dict(augment=[keras.layers.RandomBrightness(0.2)]), ValueError,
            r"RandomBrightness has value_range=\(0, 255\), but the images are float32 in \[0, 1\]: create it with value_range=\(0, 1\)",
            id="value range of float images",
        ),
        pytest.param(dict(augment="flip"), TypeError, r"`augment` must be Keras augmentation layers", id="a string"),
        pytest.param(
            dict(augment=[keras.layers.Dense(2)]), TypeError, r"Dense has no per-call random transformation", id="a Dense layer"
        ),
    ],
)  # fmt: skip
def test_bad_augment_arguments_are_named(tmp_path, kwargs, error, message):
    images, masks = write_coordinate_pairs(tmp_path / "data", 2)
    with pytest.raises(error, match=message):
        SeparatedSequence(images, masks, **kwargs)


def test_fast_flips_and_crops_cut_real_windows_of_the_flipped_image(tmp_path):
    seq = segmentation(tmp_path / "data", augment=[keras.layers.RandomFlip("horizontal_and_vertical"),
                                                    keras.layers.RandomCrop(10, 13)])  # fmt: skip
    assert seq.augmentation.fast
    x, _ = seq[0]
    rows, cols = x[..., 0].astype(int), x[..., 1].astype(int)
    for k in range(len(x)):
        assert set(np.unique(np.diff(rows[k], axis=0))) in ({1}, {-1})  # whole rows, in order or reversed
        assert set(np.unique(np.diff(cols[k], axis=1))) in ({1}, {-1})
    flips = {(rows[k, 1, 0] < rows[k, 0, 0], cols[k, 0, 1] < cols[k, 0, 0]) for k in range(len(x))}
    assert len(flips) > 1  # samples of a batch draw their own flips


def test_fast_brightness_shifts_each_sample_by_its_own_amount(tmp_path):
    from keras_sepseq.demo import make_segmentation_dataset

    images, masks = make_segmentation_dataset(str(tmp_path / "shapes"), samples=10, size=24)  # values across [0, 1]
    plain = SeparatedSequence(images, masks, batch_size=10, shuffle=False)
    bright = SeparatedSequence(images, masks, batch_size=10, shuffle=False,
                               augment=keras.layers.RandomBrightness(0.2, value_range=(0, 1)))  # fmt: skip
    (x, _), (y, _) = plain[0], bright[0]
    inside = (x > 0.25) & (x < 0.75)  # away from the clip at 0 and 1
    differences = [(y[k] - x[k])[inside[k]] for k in range(10)]
    assert all(np.ptp(d) < 1e-5 and abs(d.mean()) <= 0.2 for d in differences)  # one shift per sample
    assert len({round(float(d.mean()), 4) for d in differences}) > 5
    assert y.min() >= 0 and y.max() <= 1
