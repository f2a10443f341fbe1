"""PNGs inflated by ISA-L and handed to OpenCV stored: the same pixels as OpenCV alone, and damage still refused."""

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from keras_sepseq import images, png
from keras_sepseq.images import decode_image

RNG = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def every_size_inflated_by_isal(monkeypatch):
    """The small images below would be left to OpenCV's inflate (`png.MIN_RAW_BYTES`): here they are not."""
    monkeypatch.setattr(png, "MIN_RAW_BYTES", 0)


def pil_png(array, mode=None, **save):
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    out = io.BytesIO()
    image.save(out, "PNG", **save)
    return out.getvalue()


def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def handmade_png(pixels, *, interlaced=False, idat_pieces=1, after_idat=b""):
    """An 8-bit RGB PNG written here: Adam7 passes when `interlaced`, the stream split over `idat_pieces` chunks."""
    height, width, _ = pixels.shape
    if interlaced:
        passes = [pixels[y0::dy, x0::dx] for x0, y0, dx, dy in png._ADAM7]
        rows = b"".join(b"\x00" + row.tobytes() for p in passes if p.shape[0] and p.shape[1] for row in p)
    else:
        rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    stream = zlib.compress(rows, 6)
    step = -(-len(stream) // idat_pieces)
    idats = b"".join(chunk(b"IDAT", stream[k : k + step]) for k in range(0, len(stream), step))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, int(interlaced))
    return png._SIGNATURE + chunk(b"IHDR", header) + idats + after_idat + chunk(b"IEND", b"")


def same_pixels(data, flags):
    stored = png.stored_png(data)
    assert stored is not None
    assert len(stored) > len(data) // 2
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    got = cv2.imdecode(np.frombuffer(stored, np.uint8), flags)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


photo = RNG.integers(0, 256, (37, 53, 3), dtype=np.uint8)
large = np.repeat(np.repeat(RNG.integers(0, 256, (60, 80, 3), dtype=np.uint8), 5, axis=0), 5, axis=1)  # > 65,535 B
CASES = {
    "gray": pil_png(photo, "L"),
    "gray_alpha": pil_png(photo, "LA"),
    "rgb": pil_png(photo),
    "rgba": pil_png(photo, "RGBA"),
    "palette": pil_png(photo, "P"),
    "palette_4bit": pil_png(photo[..., 0] // 16, "P", bits=4),
    "bilevel": pil_png(photo, "1"),
    "gray_16bit": cv2.imencode(".png", (photo[..., 0].astype(np.uint16) * 257))[1].tobytes(),
    "rgb_16bit": cv2.imencode(".png", photo.astype(np.uint16) * 257)[1].tobytes(),
    "rgb_large": pil_png(large),
    "interlaced": handmade_png(photo, interlaced=True),
    "interlaced_tiny": handmade_png(photo[:3, :2], interlaced=True),
    "many_idats": handmade_png(photo, idat_pieces=7),
    "text_after_idat": handmade_png(photo, after_idat=chunk(b"tEXt", b"Comment\x00after the pixels")),
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize(
    "flags", [cv2.IMREAD_UNCHANGED, cv2.IMREAD_COLOR_RGB, cv2.IMREAD_GRAYSCALE], ids=["unchanged", "rgb", "gray"]
)
def test_stored_png_decodes_to_the_same_bytes_as_the_original(name, flags):
    same_pixels(CASES[name], flags)


@pytest.mark.parametrize("name", ["rgb", "palette", "interlaced", "gray_16bit"])
@pytest.mark.parametrize("color_mode", ["rgb", "grayscale", "rgba"])
def test_decode_image_gives_the_same_pixels_with_and_without_isal(tmp_path, monkeypatch, name, color_mode):
    path = tmp_path / f"{name}.png"
    path.write_bytes(CASES[name])
    with_isal = decode_image(str(path), color_mode=color_mode, image_size=(20, 30))
    monkeypatch.setattr(images, "stored_png", lambda data: None)
    without = decode_image(str(path), color_mode=color_mode, image_size=(20, 30))
    assert with_isal.dtype == without.dtype and with_isal.shape == without.shape == (
        20,
        30,
        {"rgb": 3, "grayscale": 1, "rgba": 4}[color_mode],
    )
    assert with_isal.tobytes() == without.tobytes()


def damaged(kind):
    data = bytearray(CASES["many_idats"])
    first = data.index(b"IDAT")
    if kind == "idat_crc":
        data[first + 20] ^= 0xFF  # inside the first IDAT's data: its CRC no longer matches
    elif kind == "adler":
        idat_end = data.rindex(b"IEND") - 4 - 4  # the last IDAT's CRC
        # rewrite the last IDAT with a wrong Adler-32 (and a correct CRC), as a damaged encoder would
        length = struct.unpack(">I", data[data.rindex(b"IDAT") - 4 : data.rindex(b"IDAT")])[0]
        start = data.rindex(b"IDAT") + 4
        body = bytearray(data[start : start + length])
        body[-1] ^= 0xFF
        data[start : start + length] = body
        data[idat_end : idat_end + 4] = struct.pack(">I", zlib.crc32(b"IDAT" + bytes(body)))
    elif kind == "truncated":
        data = data[: first + 40]
    elif kind == "short_rows":  # a valid stream with a row missing
        rows = b"".join(b"\x00" + row.tobytes() for row in photo[:-1])
        header = struct.pack(">IIBBBBB", 53, 37, 8, 2, 0, 0, 0)
        data = bytearray(
            png._SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
        )
    elif kind == "split_idats":  # a text chunk between two IDATs
        data = bytearray(handmade_png(photo, idat_pieces=2))
        second = data.index(b"IDAT", data.index(b"IDAT") + 4) - 4
        data[second:second] = chunk(b"tEXt", b"a\x00b")
    return bytes(data)


@pytest.mark.parametrize("kind", ["idat_crc", "adler", "truncated", "short_rows", "split_idats"])
def test_damaged_image_data_is_left_to_the_original_decoder(kind):
    assert png.stored_png(damaged(kind)) is None


@pytest.mark.parametrize("kind", ["idat_crc", "adler", "truncated"])
def test_damaged_pngs_are_refused_as_without_isal(tmp_path, monkeypatch, kind):
    path = tmp_path / f"{kind}.png"
    path.write_bytes(damaged(kind))
    with pytest.raises(OSError, match="broken data stream|truncated") as with_isal:
        decode_image(str(path))
    monkeypatch.setattr(images, "stored_png", lambda data: None)
    with pytest.raises(OSError) as without:
        decode_image(str(path))
    assert str(with_isal.value) == str(without.value)


@pytest.mark.parametrize(
    "header, size",
    [((4, 2, 8, 2, False), 26), ((1, 1, 1, 0, False), 2), ((9, 3, 1, 0, False), 9), ((3, 3, 16, 6, False), 75),
     ((1, 1, 8, 2, True), 4), ((8, 8, 8, 0, True), 2 + 2 + 3 + 6 + 10 + 20 + 36), ((0, 5, 8, 2, False), None),
     ((5, 5, 3, 2, False), None), ((5, 5, 8, 5, False), None)],
    ids=["rgb", "one_bit", "bits_padded", "rgba16", "interlaced_one_pixel", "adam7_8x8", "no_width", "bad_depth", "bad_type"],
)  # fmt: skip
def test_raw_size_counts_filter_bytes_and_adam7_passes(header, size):
    assert png.raw_size(*header) == size


@pytest.mark.parametrize("side, inflated", [(8, False), (64, False), (80, True)], ids=["8px", "64px", "80px"])
def test_small_images_are_left_to_opencv(monkeypatch, side, inflated):
    monkeypatch.setattr(png, "MIN_RAW_BYTES", 16 << 10)
    data = pil_png(RNG.integers(0, 256, (side, side, 3), dtype=np.uint8))
    assert (png.stored_png(data) is not None) == inflated


def test_without_isal_opencv_inflates_as_before(tmp_path, monkeypatch):
    path = tmp_path / "rgb.png"
    path.write_bytes(CASES["rgb_large"])
    expected = decode_image(str(path))
    monkeypatch.setattr(png, "_isal", None)
    assert png.stored_png(CASES["rgb_large"]) is None
    assert decode_image(str(path)).tobytes() == expected.tobytes()
