import numpy as np
import pytest
from PIL import Image

from keras_sepseq.images import (
    INTERPOLATIONS,
    convert_color,
    decode_image,
    read_image,
    resize_image,
    standardize_pixels,
    write_pixels,
)

RGB = np.array([[[10, 200, 30], [255, 0, 128]]], dtype=np.uint8)  # 1 x 2 pixels


def save(path, array, mode=None):
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path)
    return str(path)


@pytest.mark.parametrize(
    "pil_mode, color_mode, channels",
    [
        (pil_mode, color_mode, channels)
        for pil_mode in ["L", "LA", "RGB", "RGBA", "P", "1"]
        for color_mode, channels in [("grayscale", 1), ("rgb", 3), ("rgba", 4)]
    ],
    ids=lambda v: str(v),
)
def test_every_png_mode_converts_to_every_color_mode(tmp_path, pil_mode, color_mode, channels):
    path = save(tmp_path / "img.png", np.tile(RGB, (3, 2, 1)), pil_mode)
    pixels = decode_image(path, color_mode=color_mode)
    assert pixels.shape == (3, 4, channels)
    assert pixels.dtype == np.uint8


def test_grayscale_uses_pillow_luma():
    every = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    for pixels in (RGB, every):
        expected = np.asarray(Image.fromarray(pixels).convert("L"))[..., None]
        np.testing.assert_array_equal(convert_color(pixels, "grayscale"), expected)


def test_rgba_gets_an_opaque_alpha_and_rgb_drops_it():
    rgba = convert_color(RGB, "rgba")
    np.testing.assert_array_equal(rgba[..., 3], 255)
    np.testing.assert_array_equal(convert_color(rgba, "rgb"), RGB)


def test_gray_becomes_three_equal_channels():
    gray = np.array([[[5], [250]]], dtype=np.uint16)
    rgb = convert_color(gray, "rgb")
    assert rgb.dtype == np.uint16
    np.testing.assert_array_equal(rgb, [[[5, 5, 5], [250, 250, 250]]])
    np.testing.assert_array_equal(convert_color(gray, "rgba")[..., 3], 65535)


def test_16_bit_png_keeps_its_precision(tmp_path):
    values = np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000
    path = save(tmp_path / "deep.png", values)
    pixels = decode_image(path, color_mode="grayscale")
    assert pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels[..., 0], values)


def test_animated_gif_gives_its_first_frame(tmp_path):
    first = np.tile(RGB, (4, 2, 1))
    Image.fromarray(first).save(tmp_path / "anim.gif", save_all=True, append_images=[Image.fromarray(255 - first)])
    pixels = decode_image(str(tmp_path / "anim.gif"))
    assert pixels.shape == (4, 4, 3)
    assert abs(int(pixels[0, 0, 1]) - 200) < 30  # GIF palettes quantize a little


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "area", "box", "hamming", "lanczos"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_resize_keeps_dtype_and_reaches_the_size(interpolation, dtype):
    pixels = (np.random.default_rng(0).random((10, 14, 3)) * 200).astype(dtype)
    out = resize_image(pixels, (5, 7), interpolation=interpolation)
    assert out.shape == (5, 7, 3)
    assert out.dtype == np.dtype(dtype)


def test_resize_of_a_flat_image_keeps_its_value():
    flat = np.full((8, 8, 1), 40000, dtype=np.uint16)
    np.testing.assert_array_equal(resize_image(flat, (3, 5)), 40000)


def test_resize_is_a_no_op_at_the_target_size():
    pixels = np.zeros((4, 4, 3), np.uint8)
    assert resize_image(pixels, (4, 4)) is pixels


@pytest.mark.parametrize(
    "src, dst, expected",
    [
        pytest.param(np.array([0, 255], np.uint8), "float32", [0.0, 1.0], id="uint8 to float32"),
        pytest.param(np.array([0, 65535], np.uint16), "float32", [0.0, 1.0], id="uint16 to float32 by 65535"),
        pytest.param(np.array([0, 255], np.uint8), "float16", [0.0, 1.0], id="uint8 to float16"),
        pytest.param(np.array([0x1234, 0xFFFF], np.uint16), "uint8", [0x12, 0xFF], id="uint16 to uint8 by shift"),
        pytest.param(np.array([1, 255], np.uint8), "uint16", [257, 65535], id="uint8 to uint16 by 257"),
        pytest.param(np.array([-0.5, 0.5, 2.0], np.float32), "uint8", [0, 128, 255], id="float to uint8 clipped"),
        pytest.param(np.array([-1000, 3000], np.int16), "float32", [-1000.0, 3000.0], id="int16 cast unchanged"),
    ],
)
def test_write_pixels_converts_like_convert_image_dtype(src, dst, expected):
    out = np.empty(src.shape, dtype=dst)
    write_pixels(out, src)
    np.testing.assert_allclose(out, expected, rtol=1e-3)


def test_uint8_scaling_matches_tensorflow():
    tf = pytest.importorskip("tensorflow")
    pixels = np.arange(256, dtype=np.uint8)
    out = np.empty(256, np.float32)
    write_pixels(out, pixels)
    np.testing.assert_allclose(out, tf.image.convert_image_dtype(pixels, tf.float32).numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "pixels, message",
    [
        pytest.param(np.zeros((2, 2, 5), np.uint8), r"1 to 4 channels, got shape \(2, 2, 5\)", id="five channels"),
        pytest.param(np.zeros((2, 2, 2, 3), np.uint8), r"got shape \(2, 2, 2, 3\)", id="a volume"),
        pytest.param(np.zeros((0, 2, 3), np.uint8), r"got shape \(0, 2, 3\)", id="empty"),
        pytest.param(
            np.array([[-1, 7]], np.int32), r"must lie in 0..65535, got values from -1 to 7", id="negative ints"
        ),
    ],
)
def test_standardize_rejects_non_images(pixels, message):
    with pytest.raises(ValueError, match=message):
        standardize_pixels(pixels)


def test_standardize_bool_and_wide_ints():
    assert standardize_pixels(np.array([[True, False]]))[..., 0].tolist() == [[255, 0]]
    assert standardize_pixels(np.array([[3, 70]], np.int32)).dtype == np.uint16


@pytest.mark.parametrize(
    "call, message",
    [
        pytest.param(
            lambda: convert_color(RGB, "cmyk"),
            r"`color_mode` must be one of \['grayscale', 'rgb', 'rgba'\]. Received: color_mode='cmyk'",
            id="color_mode",
        ),
        pytest.param(
            lambda: resize_image(RGB, (2, 2), interpolation="cubic"),
            r"`interpolation` must be one of .*Received: interpolation='cubic'",
            id="interpolation",
        ),
    ],
)
def test_bad_options_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def generic_decode(path, color_mode, image_size):
    pixels = convert_color(standardize_pixels(read_image(path)), color_mode)
    return pixels if image_size is None else resize_image(pixels, image_size)


@pytest.mark.parametrize("pil_mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"])
@pytest.mark.parametrize("color_mode", ["grayscale", "rgb", "rgba"])
@pytest.mark.parametrize("image_size", [None, (5, 9)], ids=["native size", "resized"])
def test_fast_path_equals_the_generic_path(tmp_path, pil_mode, color_mode, image_size):
    rgb = np.random.default_rng(1).integers(0, 256, size=(12, 17, 3), dtype=np.uint8)
    if pil_mode == "I;16":
        path = save(tmp_path / "img.png", rgb[..., 0].astype(np.uint16) * 257)
    else:
        path = save(tmp_path / "img.png", rgb, pil_mode)
    np.testing.assert_array_equal(
        decode_image(path, color_mode=color_mode, image_size=image_size), generic_decode(path, color_mode, image_size)
    )


@pytest.mark.parametrize("color_mode, channels", [("grayscale", 1), ("rgb", 3), ("rgba", 4)])
def test_jpeg_shrunk_in_draft_mode_stays_close_to_a_full_decode(tmp_path, color_mode, channels):
    yy, xx = np.mgrid[:300, :280]
    smooth = np.stack([yy * 255 // 300, xx * 255 // 280, (yy + xx) * 255 // 580], axis=2).astype(np.uint8)
    path = str(tmp_path / "photo.jpg")
    Image.fromarray(smooth).save(path, quality=95)
    fast = decode_image(path, color_mode=color_mode, image_size=(64, 64))
    assert fast.shape == (64, 64, channels) and fast.dtype == np.uint8
    full = generic_decode(path, color_mode, (64, 64))
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 2.0


def photo(height=90, width=70, seed=0):
    rng = np.random.default_rng(seed)
    smooth = np.add.outer(np.arange(height), np.arange(width))[..., None] + rng.integers(0, 9, (height, width, 3))
    return np.clip(smooth, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "suffix, decoder",
    [(".png", "opencv"), (".jpg", "simplejpeg"), (".bmp", None), (".tif", None), (".webp", None)],
    ids=["PNG", "JPEG", "BMP", "TIFF", "WebP"],
)
def test_png_and_jpeg_take_the_fast_decoders_and_others_pillow(tmp_path, monkeypatch, suffix, decoder):
    import cv2
    import simplejpeg

    calls = []
    real_imdecode, real_jpeg = cv2.imdecode, simplejpeg.decode_jpeg
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: calls.append("opencv") or real_imdecode(*a, **k))
    monkeypatch.setattr(simplejpeg, "decode_jpeg", lambda *a, **k: calls.append("simplejpeg") or real_jpeg(*a, **k))
    path = str(tmp_path / f"img{suffix}")
    Image.fromarray(photo()).save(path)
    pixels = decode_image(path, image_size=(30, 20))
    assert pixels.shape == (30, 20, 3) and pixels.dtype == np.uint8
    assert calls == ([decoder] if decoder else [])


@pytest.mark.parametrize("suffix", [".png", ".jpg"], ids=["PNG", "JPEG"])
def test_corruption_inside_a_complete_file_is_refused(tmp_path, suffix):
    path = str(tmp_path / f"img{suffix}")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle : middle + 40] = b"\xff" * 40  # end markers intact: only the decoder can tell
    open(path, "wb").write(bytes(data))
    with pytest.raises(
        OSError, match="data stream"
    ):  # Pillow's verdict: OpenCV or libjpeg-turbo alone would decode garbage
        decode_image(path, image_size=(30, 20))


def test_16_bit_color_png_keeps_its_precision(tmp_path):
    import cv2

    rgb = (np.arange(4 * 5 * 3, dtype=np.uint16).reshape(4, 5, 3) * 1000 + 7).astype(np.uint16)
    path = str(tmp_path / "deep.png")
    cv2.imwrite(path, rgb[:, :, ::-1])  # OpenCV writes BGR
    pixels = decode_image(path)
    assert pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels, rgb)
    np.testing.assert_array_equal(decode_image(path, color_mode="rgba")[..., 3], 65535)


DEEP_RGB = (np.arange(4 * 5 * 3, dtype=np.uint16).reshape(4, 5, 3) * 1000 + 7).astype(np.uint16)


def _write_deep(path, layout):
    import cv2

    if layout == "png, trailing bytes":  # not a complete PNG to the fast path: Pillow opens it, then OpenCV reads it
        cv2.imwrite(path, DEEP_RGB[:, :, ::-1])
        with open(path, "ab") as f:
            f.write(b"\0" * 16)
    else:
        cv2.imwrite(path, DEEP_RGB[:, :, ::-1])
    return path


@pytest.mark.parametrize(
    "name, layout",
    [("deep.tif", "tiff"), ("deep.png", "png, trailing bytes")],
    ids=["16-bit color tiff", "16-bit color png through pillow"],
)
def test_16_bit_color_keeps_its_precision_where_pillow_reads_8_bits(tmp_path, name, layout):
    path = _write_deep(str(tmp_path / name), layout)
    assert Image.open(path).mode == "RGB"  # what Pillow alone would give: 8 bits per channel
    np.testing.assert_array_equal(read_image(path), DEEP_RGB)
    pixels = decode_image(path)
    assert pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels, DEEP_RGB)
    gray = decode_image(path, color_mode="grayscale")
    assert gray.dtype == np.uint16 and gray.shape == (4, 5, 1)


@pytest.mark.parametrize("dtype", ["uint16", "float32", "float16"])
def test_16_bit_color_tiff_in_an_image_field_batch(tmp_path, dtype):
    from keras_sepseq.fields import ImageField

    paths = [_write_deep(str(tmp_path / f"{i}.tif"), "tiff") for i in range(2)]
    field = ImageField(paths, dtype=dtype)
    batch = field.batch(np.arange(2), [field.read(p) for p in paths])
    assert batch.shape == (2, 4, 5, 3) and batch.dtype == np.dtype(dtype)
    expected = DEEP_RGB if dtype == "uint16" else (DEEP_RGB.astype(np.float32) / 65535).astype(dtype)
    np.testing.assert_array_equal(batch[1], expected)


def test_exif_orientation_is_ignored_like_tensorflow_does(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees to display"
    path = str(tmp_path / "rotated.jpg")
    Image.fromarray(photo(40, 60)).save(path, exif=exif)
    assert decode_image(path).shape == (40, 60, 3)


def test_cmyk_jpeg_is_read_by_pillow_as_rgb(tmp_path):
    path = str(tmp_path / "print.jpg")
    Image.fromarray(photo()).convert("CMYK").save(path)
    pixels = decode_image(path, image_size=(30, 20))
    assert pixels.shape == (30, 20, 3)
    expected = np.asarray(Image.open(path).convert("RGB").resize((20, 30), Image.Resampling.BILINEAR))
    assert np.abs(pixels.astype(int) - expected.astype(int)).mean() < 3


@pytest.mark.parametrize(
    "method, size",
    [(m, (30, 20)) for m in ("nearest", "bilinear", "bicubic", "area")]
    + [(m, (200, 150)) for m in ("nearest", "bilinear", "bicubic")],
    ids=lambda v: v if isinstance(v, str) else ("shrink" if v[0] < 90 else "enlarge"),
)
def test_sampled_resize_matches_tensorflow(method, size):
    import tensorflow as tf

    pixels = np.random.default_rng(2).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    ours = resize_image(pixels, size, interpolation=method).astype(np.float32)
    theirs = tf.image.resize(pixels.astype(np.float32), size, method=method, antialias=False).numpy()
    if method == "nearest":
        np.testing.assert_array_equal(ours, theirs)
    elif method == "bicubic":  # OpenCV's cubic kernel (a = -0.75) is a little sharper than TensorFlow's (a = -0.5)
        assert np.abs(ours - np.clip(theirs, 0, 255)).mean() < 6
    else:
        assert np.abs(ours - theirs).max() <= 1.0  # uint8 rounding


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"])
def test_antialiased_resize_is_pillows_filter(interpolation):
    pixels = np.random.default_rng(3).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(pixels).resize((20, 30), INTERPOLATIONS[interpolation]))
    np.testing.assert_array_equal(resize_image(pixels, (30, 20), interpolation=interpolation, antialias=True), expected)


def test_antialiasing_keeps_a_fine_pattern_gray_and_sampling_does_not():
    stripes = np.zeros((96, 96, 1), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: shrunk 3x, the honest answer is uniform gray
    smooth = resize_image(stripes, (32, 32), antialias=True)
    sampled = resize_image(stripes, (32, 32), antialias=False)
    assert smooth.std() < 15 and abs(float(smooth.mean()) - 127.5) < 1
    assert set(np.unique(sampled)) == {0, 255}  # aliasing: every output pixel is one stripe or the other


@pytest.mark.parametrize(
    "file_size, image_size, decoded",
    [
        pytest.param((300, 280), (64, 64), (75, 70), id="300x280 to 64: a quarter"),
        pytest.param((300, 280), (150, 140), (150, 140), id="300x280 to 150x140: a half, exactly"),
        pytest.param((240, 320), (128, 128), (240, 320), id="240x320 to 128: full size, not 5/8"),
        pytest.param((1000, 900), (64, 64), (125, 113), id="1000x900 to 64: an eighth at most"),
        pytest.param((90, 70), (128, 128), (90, 70), id="enlarging: full size"),
    ],
)
def test_jpeg_being_shrunk_is_decoded_at_a_power_of_two_reduction(
    tmp_path, monkeypatch, file_size, image_size, decoded
):
    import simplejpeg

    shapes = []
    real = simplejpeg.decode_jpeg
    monkeypatch.setattr(
        simplejpeg, "decode_jpeg", lambda *a, **k: shapes.append(real(*a, **k).shape[:2]) or real(*a, **k)
    )
    path = str(tmp_path / "photo.jpg")
    Image.fromarray(photo(*file_size)).save(path)
    pixels = decode_image(path, image_size=image_size)
    assert pixels.shape == (*image_size, 3) and pixels.dtype == np.uint8
    assert shapes == [decoded]
