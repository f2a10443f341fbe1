"""Segmentation masks: read as stored, resized by nearest neighbour only, aligned with their images, checked."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from keras_sepseq import ArrayField, FieldSequence, ImageField, PaddedField, SampleError, SeparatedSequence
from keras_sepseq.masks import MaskField, check_classes, map_palette, read_mask, resize_nearest

MODES = [
    pytest.param(dict(workers=1), id="inline"),
    pytest.param(dict(workers=2), id="threads"),
    pytest.param(dict(workers=2, use_multiprocessing=True), id="processes"),
]


def mask_class(rows, cols, index):
    return (rows // 4 + cols // 4 + index) % 3


def write_coordinate_pairs(folder, n, size=(24, 24)):
    """Images whose red and green hold each pixel's row and column and blue the sample index; masks whose class
    is a function of the same three numbers, so a batch shows whether every mask pixel sits on its image pixel."""
    os.makedirs(folder, exist_ok=True)
    rows, cols = np.mgrid[: size[0], : size[1]]
    images, masks = [], []
    for i in range(n):
        image = np.stack([rows, cols, np.full(size, i)], axis=-1).astype(np.uint8)
        images.append(os.path.join(folder, f"image_{i:03d}.png"))
        masks.append(os.path.join(folder, f"mask_{i:03d}.png"))
        Image.fromarray(image).save(images[-1])
        Image.fromarray(mask_class(rows, cols, i).astype(np.uint8)).save(masks[-1])
    return images, masks


def assert_aligned(x, y):
    x = x.astype(np.int64)
    np.testing.assert_array_equal(y, mask_class(x[..., 0], x[..., 1], x[..., 2]))


@pytest.mark.parametrize("options", MODES)
@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(dict(), id="no cache"),
        pytest.param(dict(cache="memory"), id="memory cache"),
        pytest.param(dict(cache="DIR"), id="directory cache"),
        pytest.param(dict(num_shards=2, shard_index=1), id="shard 2 of 2"),
    ],
)
def test_masks_stay_on_their_images_pixel_for_pixel(tmp_path, options, extra):
    images, masks = write_coordinate_pairs(tmp_path / "data", 12)
    if extra.get("cache") == "DIR":
        extra = {**extra, "cache": str(tmp_path / "cache")}
    # 24 -> 16 px: bilinear sample centres fall at .25 and .75 of a pixel, so rounding is never a tie.
    seq = SeparatedSequence(images, masks, batch_size=5, image_size=(16, 16), dtype="uint8", seed=4, **options, **extra)
    for _ in range(2):
        seen = []
        for i in range(len(seq)):
            x, y = seq[i]
            assert y.shape == x.shape[:3] and y.dtype == np.int32
            assert_aligned(x, y)
            seen += x[:, 0, 0, 2].tolist()
        assert len(seen) == len(set(seen))
        seq.on_epoch_end()
    seq.close()


def write_mask(path, values, mode=None):
    image = Image.fromarray(values) if mode is None else Image.fromarray(values, mode)
    image.save(path)
    return str(path)


def test_palette_pngs_give_their_indices_not_their_colours(tmp_path):
    values = np.array([[0, 1], [2, 1]], np.uint8)
    image = Image.fromarray(values, "P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    image.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(str(tmp_path / "m.png")), values)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(np.array([[0, 7], [300, 2]], np.uint16), id="16-bit"),
        pytest.param(np.array([[0, 7], [200, 2]], np.uint8), id="8-bit"),
    ],
)
def test_gray_masks_keep_their_values(tmp_path, values):
    np.testing.assert_array_equal(read_mask(write_mask(tmp_path / "m.png", values)), values)


def test_colour_masks_map_through_a_palette_and_unknown_colours_are_named(tmp_path):
    colours = np.array([[[0, 0, 0], [255, 0, 0]], [[0, 255, 0], [255, 0, 0]]], np.uint8)
    path = write_mask(tmp_path / "c.png", colours)
    field = MaskField([path], palette={(0, 0, 0): 0, (255, 0, 0): 1, (0, 255, 0): 2})
    np.testing.assert_array_equal(field.read(path), [[0, 1], [2, 1]])
    with pytest.raises(ValueError, match=r"colours that are not in `palette`: \(0, 255, 0\)"):
        map_palette(colours, [(0, 0, 0), (255, 0, 0)])
    with pytest.raises(ValueError, match=r"3 colour channels; pass `palette`"):
        MaskField([path]).read(path)


@settings(max_examples=50, deadline=None)
@given(
    height=st.integers(1, 40), width=st.integers(1, 40), out_h=st.integers(1, 50), out_w=st.integers(1, 50),
    seed=st.integers(0, 1000),
)  # fmt: skip
def test_nearest_resizing_never_creates_a_value(height, width, out_h, out_w, seed):
    mask = np.random.default_rng(seed).choice(np.array([0, 3, 9, 255], np.uint8), size=(height, width))
    resized = resize_nearest(mask, (out_h, out_w))
    assert resized.shape == (out_h, out_w) and resized.dtype == mask.dtype
    assert set(np.unique(resized)) <= set(np.unique(mask))


@pytest.mark.parametrize("image_size", [None, (6, 6), (64, 64)], ids=["as-stored", "down-4x", "up"])
def test_a_stray_value_is_refused_whatever_the_output_size(tmp_path, image_size):
    images, masks = write_coordinate_pairs(tmp_path / "data", 2)
    bad = np.zeros((24, 24), np.uint8)
    bad[1, 1] = 7  # nearest-neighbour sampling down to 6x6 reads pixels (2, 2), (6, 6)...: never this one
    write_mask(masks[1], bad)
    seq = SeparatedSequence(images, masks, batch_size=2, num_classes=3, shuffle=False, image_size=image_size)
    with pytest.raises(SampleError, match=r"mask_001.png'.*class values outside 0\.\.2: 7 \(1 pixel\)$"):
        seq[0]


def test_validate_reports_a_stray_value_with_the_same_message(tmp_path):
    images, masks = write_coordinate_pairs(tmp_path / "data", 3)
    bad = np.zeros((24, 24), np.uint8)
    bad[1, 1] = 7
    write_mask(masks[2], bad)
    report = SeparatedSequence(images, masks, batch_size=3, num_classes=3, image_size=(6, 6)).validate()
    assert [(e.index, e.reason) for e in report.bad] == [
        (2, "cannot load mask: ValueError: the mask holds class values outside 0..2: 7 (1 pixel)")
    ]


def test_the_bad_values_are_counted_by_pixel():
    mask = np.zeros((10, 10), np.uint16)
    mask[0, :4], mask[1, 0] = 300, 9
    with pytest.raises(
        ValueError, match=r"^the mask holds class values outside 0\.\.2: 9 \(1 pixel\), 300 \(4 pixels\)$"
    ):
        check_classes(mask, 3, None)
    with pytest.raises(ValueError, match=r"outside 0\.\.2 or ignore_index=255: -1 \(2 pixels\)$"):
        check_classes(np.array([[0, -1], [-1, 255]], np.int32), 3, 255)


def test_values_outside_the_classes_make_the_sample_bad_naming_file_and_values(tmp_path):
    images, masks = write_coordinate_pairs(tmp_path / "data", 4)
    bad = np.zeros((24, 24), np.uint8)
    bad[0, :3] = [5, 9, 255]
    write_mask(masks[2], bad)
    with pytest.raises(
        SampleError,
        match=r"mask_002.png'.*class values outside 0\.\.2 or ignore_index=255: 5 \(1 pixel\), 9 \(1 pixel\)$",
    ):
        SeparatedSequence(images, masks, batch_size=4, num_classes=3, ignore_index=255, shuffle=False)[0]
    skipping = SeparatedSequence(
        images, masks, batch_size=4, num_classes=3, ignore_index=255, shuffle=False, on_error="skip"
    )
    with pytest.warns(UserWarning, match="skipped 1 bad sample"):
        x, y, w = skipping[0]
        skipping.on_epoch_end()
    assert len(y) == 3 and [e.index for e in skipping.errors] == [2]
    check_classes(np.array([0, 2, 255]), 3, 255)  # allowed


def test_class_weight_gives_per_pixel_weights_combined_with_skipping(tmp_path):
    images, masks = write_coordinate_pairs(tmp_path / "data", 4)
    mask = mask_class(*np.mgrid[:24, :24], 1).astype(np.uint8)
    mask[0, 0] = 255
    write_mask(masks[1], mask)
    with open(images[3], "wb") as f:
        f.write(b"broken")
    seq = SeparatedSequence(
        images, masks, batch_size=4, shuffle=False, num_classes=3, ignore_index=255,
        class_weight={0: 1.0, 1: 2.0, 2: 0.5}, on_error="skip",
    )  # fmt: skip
    with pytest.warns(UserWarning, match="skipped 1 bad sample"):
        x, y, w = seq[0]
        seq.on_epoch_end()
    assert w.shape == y.shape == (3, 24, 24) and w.dtype == np.float32
    expected = np.choose(np.clip(y, 0, 2), [1.0, 2.0, 0.5]).astype(np.float32)
    expected[y == 255] = 0.0
    np.testing.assert_array_equal(w, expected)
    signature = seq.output_signature()
    assert signature[2].shape.as_list() == [None, None, None]


def test_class_weight_and_mask_options_need_mask_labels():
    with pytest.raises(ValueError, match=r"`num_classes`, `class_weight` apply to masks.*Received label_paths"):
        SeparatedSequence(["a.png"], ["a.npy"], num_classes=3, class_weight={0: 1.0})
    with pytest.raises(ValueError, match=r"`class_weight` weighs the pixels of one mask target; this sequence has 0"):
        FieldSequence(ArrayField(np.arange(3)), ArrayField(np.arange(3)), class_weight={0: 1.0})


def test_a_mask_takes_the_size_of_its_image_field(tmp_path):
    images, masks = write_coordinate_pairs(tmp_path / "data", 3)
    seq = FieldSequence(
        {"image": ImageField(images, image_size=(8, 12), dtype="uint8")}, {"mask": MaskField(masks)}, batch_size=3
    )
    x, y = seq[0]
    assert y["mask"].shape == (3, 8, 12) and seq.targets["mask"].image_size == (8, 12)
    with pytest.raises(
        ValueError, match=r"the mask field 'mask' has no `image_size`, and the image fields have several"
    ):
        FieldSequence(
            {"a": ImageField(images, image_size=(8, 8)), "b": ImageField(images, image_size=(4, 4))},
            {"mask": MaskField(masks)},
        )


def test_mixed_fields_skip_a_sample_whose_any_file_is_bad_naming_it(tmp_path):
    images, masks = write_coordinate_pairs(tmp_path / "data", 6)
    sequences = [np.full((1 + i % 3, 2), i, np.float32) for i in range(6)]
    with open(masks[4], "wb") as f:
        f.write(b"")
    seq = FieldSequence(
        {"image": ImageField(images, image_size=(16, 16), dtype="uint8"), "track": PaddedField(sequences)},
        {"mask": MaskField(masks), "index": ArrayField(np.arange(6))},
        batch_size=6, shuffle=False, on_error="skip", cache="memory",
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"skipped 1 bad sample.*mask_004.png|skipped 1 bad sample"):
        x, y, w = seq[0]
        seq.on_epoch_end()
    assert y["index"].tolist() == [0, 1, 2, 3, 5]
    assert_aligned(x["image"], y["mask"])
    assert x["track"][:, 0, 0].tolist() == [0, 1, 2, 3, 5]
    assert seq.errors[0].path == masks[4] and "cannot load mask ('mask')" in seq.errors[0].reason


def test_validate_counts_pixels_per_class(tmp_path):
    images, masks = write_coordinate_pairs(tmp_path / "data", 3)
    report = SeparatedSequence(images, masks, num_classes=3).validate(progress=False)
    assert report.ok and sum(report.class_pixels.values()) == 3 * 24 * 24
    assert set(report.class_pixels) == {0, 1, 2}
    assert "class pixels: 0:" in str(report)
