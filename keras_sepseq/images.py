"""Pure functions that decode, convert and resize images.

They work on their own, without a dataset object; `SeparatedSequence`
composes them. Pixels stay in their source precision (`uint8` or
`uint16`) until `write_pixels` converts them once, into the batch array.

Which library does what (see docs/dependencies.md for the
measurements): OpenCV decodes PNG (its image data inflated by ISA-L
first, `keras_sepseq.png`) and does the sampled resizes,
simplejpeg decodes JPEG, Pillow decodes everything else and does the
antialiased resizes, and imageio reads what Pillow cannot.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Sequence
from typing import cast

import cv2
import imageio.v3 as iio
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from keras_sepseq.png import stored_png
from keras_sepseq.storage import is_url, open_file

DECODER_REVISION = 3
"""Raised whenever `decode_image` gives other pixels for the same file and settings.

It is part of a directory cache's fingerprint, so that samples cached by an
earlier revision are decoded again rather than reused. 2: JPEGs shrunk at
power-of-two reductions only (`_jpeg_reduction`). 3: 16-bit color TIFFs (and
PNGs Pillow opens) keep 16 bits.
"""

COLOR_MODES: dict[str, int] = {"grayscale": 1, "rgb": 3, "rgba": 4}
"""Allowed `color_mode` values and the number of channels each gives."""

INTERPOLATIONS: dict[str, int] = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
"""Allowed `interpolation` values and the Pillow filter each uses with `antialias=True`."""

# With antialias=False these filters run in OpenCV, sampling like tf.image.resize(antialias=False);
# "area" averages whatever the flag says. The others always use Pillow's antialiased filters.
_OPENCV_FILTERS = {
    "nearest": "INTER_NEAREST_EXACT",
    "bilinear": "INTER_LINEAR",
    "bicubic": "INTER_CUBIC",
    "area": "INTER_AREA",
}
_OPENCV_DTYPES = frozenset({np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32)})
_PNG_END = b"IEND\xaeB`\x82"  # the last 8 bytes of a complete PNG

DTYPES: tuple[str, ...] = ("float32", "float16", "uint8", "uint16")
"""Allowed batch `dtype` values."""

# Pillow modes whose arrays need no conversion: bool, 8-bit, int32, float32.
_PIL_AS_IS = frozenset({"1", "L", "LA", "RGB", "RGBA", "I", "F"})
# 8-bit Pillow modes that Pillow itself converts to L, RGB or RGBA.
_PIL_8BIT = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "La", "CMYK", "YCbCr", "LAB", "HSV"})
_PIL_TARGET = {"grayscale": "L", "rgb": "RGB", "rgba": "RGBA"}
_MAX: dict[np.dtype, int] = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
PIXEL_SCALE: dict[np.dtype, float] = {dtype: 1.0 / top for dtype, top in _MAX.items()}
"""What `write_pixels` multiplies 8- and 16-bit pixels by (in float32) to bring them to [0, 1].

A graph that scales deferred `uint8` batches (`deferred_scaling`) uses the
same factor, so that its results equal `write_pixels`' bit for bit.
"""
# ITU-R 601-2 luma in Pillow's fixed point: (R*19595 + G*38470 + B*7471 + 2**15) >> 16.
_LUMA = np.array([19595, 38470, 7471], dtype=np.uint64)


def read_image(path: str, data: bytes | None = None) -> np.ndarray:
    """Reads an image file's pixels as they are stored.

    Formats Pillow knows (PNG, JPEG, BMP, GIF, TIFF, WebP and more) are
    decoded by Pillow directly, which costs less per call than going through
    imageio; any other file is handed to imageio, which tries its other
    plugins. Palette images come back as RGB or RGBA, CMYK and YCbCr as RGB;
    multi-frame files (animated GIF, multi-page TIFF) give their first frame.
    Pillow's decompression-bomb guard (`PIL.Image.MAX_IMAGE_PIXELS`) stays
    on. 16-bit PNG and TIFF keep their 16 bits, gray or color (Pillow
    reads 16-bit color at 8 bits, so those go to OpenCV instead).

    Args:
        path: The image file, a local path or a URL.
        data: The file's bytes, when they were read already; `path` then
            only names it.

    Returns:
        An array of shape `(H, W)` or `(H, W, C)` in the file's own dtype
        (`bool` for 1-bit images).

    Raises:
        OSError: If the file is missing, unreadable or truncated.
        ValueError: If neither Pillow nor imageio can decode it.
        PIL.Image.DecompressionBombError: If the image claims more than
            twice `PIL.Image.MAX_IMAGE_PIXELS` pixels.

    Example:

    >>> pixels = read_image("cat.png")  # doctest: +SKIP
    """
    if data is None and is_url(path):
        with open_file(path) as f:
            data = f.read()
    try:
        image = Image.open(path if data is None else io.BytesIO(data))
    except UnidentifiedImageError:
        if (os.path.getsize(path) if data is None else len(data)) == 0:
            raise ValueError("the file is empty (0 bytes)") from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # imageio's legacy plugins
                if data is None:
                    return np.asarray(iio.imread(path, index=0))
                extension = os.path.splitext(path)[1]
                if extension:
                    return np.asarray(iio.imread(data, index=0, extension=extension))
                return np.asarray(iio.imread(data, index=0))
        except FileNotFoundError:
            raise
        except Exception as e:
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"not an image that Pillow or imageio can decode ({detail})") from e
    with image:
        if _deep_color(image, data, path):
            deep = _decode_deep(path if data is None else data)
            if deep is not None:
                return deep
        if image.mode in _PIL_AS_IS:
            return np.asarray(image)
        if image.mode in ("P", "PA"):
            has_alpha = (
                image.mode == "PA" or "transparency" in image.info or getattr(image.palette, "mode", None) == "RGBA"
            )
            return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
        if image.mode.startswith("I;16"):
            return np.asarray(image).astype(np.uint16)
        return np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))


def standardize_pixels(pixels: np.ndarray) -> np.ndarray:
    """Brings decoded pixels to `(H, W, C)` in `uint8`, `uint16` or `float32`.

    `bool` (1-bit) images become `uint8` 0/255; other integer types whose
    values fit in 0..65535 become `uint16`; floating-point pixels become
    `float32`, assumed to lie in [0, 1].

    Args:
        pixels: An array of shape `(H, W)` or `(H, W, C)` with 1 to 4
            channels.

    Returns:
        The standardized array (the input itself when nothing changes).

    Raises:
        ValueError: If the shape is not that of an image, or integer values
            fall outside 0..65535.

    Example:

    >>> standardize_pixels(np.zeros((2, 3), dtype=bool)).shape
    (2, 3, 1)
    """
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or not 1 <= pixels.shape[2] <= 4 or 0 in pixels.shape:
        raise ValueError(
            "expected an image of shape (height, width) or (height, width, channels) "
            f"with 1 to 4 channels, got shape {pixels.shape}"
        )
    kind = pixels.dtype.kind
    if pixels.dtype in (np.uint8, np.uint16):
        return pixels
    if kind == "b":
        return pixels.astype(np.uint8) * np.uint8(255)
    if kind in "iu":
        low, high = int(pixels.min()), int(pixels.max())
        if low < 0 or high > 65535:
            raise ValueError(
                f"integer pixels of dtype {pixels.dtype} must lie in 0..65535, got values from {low} to {high}"
            )
        return pixels.astype(np.uint16)
    if kind == "f":
        return pixels.astype(np.float32, copy=False)
    raise ValueError(f"unsupported pixel dtype {pixels.dtype}")


def convert_color(pixels: np.ndarray, color_mode: str) -> np.ndarray:
    """Converts `(H, W, C)` pixels to the channels of `color_mode`.

    Grayscale uses the ITU-R 601-2 luma weights in Pillow's fixed-point form,
    so it equals Pillow's `convert("L")`; alpha is dropped for `rgb` and `grayscale` and added as fully
    opaque for `rgba`. Gray+alpha (2-channel) input is understood.

    Args:
        pixels: Standardized pixels (see `standardize_pixels`).
        color_mode: One of `"grayscale"`, `"rgb"`, `"rgba"`.

    Returns:
        An array of shape `(H, W, 1 | 3 | 4)` in the input's dtype: the
        input itself when it already has the channels of `color_mode`.

    Raises:
        ValueError: If `color_mode` is unknown.

    Example:

    >>> convert_color(np.zeros((2, 2, 1), np.uint8), "rgba").shape
    (2, 2, 4)
    """
    if color_mode not in COLOR_MODES:
        raise ValueError(f"`color_mode` must be one of {sorted(COLOR_MODES)}. Received: color_mode={color_mode!r}")
    channels = pixels.shape[2]
    if channels == COLOR_MODES[color_mode]:  # gray to grayscale, RGB to rgb, RGBA to rgba: nothing to do
        return pixels
    gray: np.ndarray | None
    if channels == 2:
        gray, alpha = pixels[:, :, :1], pixels[:, :, 1:]
    elif channels in (1, 3):
        gray, alpha = (pixels if channels == 1 else None), None
    else:
        gray, alpha = None, pixels[:, :, 3:]
    color = pixels[:, :, :3] if channels >= 3 else None

    if color_mode == "grayscale":
        return gray if gray is not None else _luma(cast(np.ndarray, color))
    rgb = color if color is not None else np.repeat(cast(np.ndarray, gray), 3, axis=2)
    if color_mode == "rgb":
        return rgb
    if alpha is None:
        opaque = _MAX.get(pixels.dtype, 1.0)
        alpha = np.full(pixels.shape[:2] + (1,), opaque, dtype=pixels.dtype)
    return np.concatenate([rgb, alpha], axis=2)


def _luma(rgb: np.ndarray) -> np.ndarray:
    if rgb.dtype.kind == "f":
        return (rgb @ (_LUMA.astype(np.float32) / 65536))[:, :, None]
    weighted = rgb.astype(np.uint64) @ _LUMA
    return ((weighted + 2**15) >> 16).astype(rgb.dtype)[:, :, None]


def resize_image(
    pixels: np.ndarray, size: Sequence[int], *, interpolation: str = "bilinear", antialias: bool = False
) -> np.ndarray:
    """Resizes `(H, W, C)` pixels to `size`, keeping the dtype.

    With `antialias=False` (the default), `"nearest"`, `"bilinear"` and
    `"bicubic"` sample the source at each output pixel's center, like
    `tf.image.resize(..., antialias=False)` and
    `keras.utils.image_dataset_from_directory`, and `"area"` averages the
    source pixels each output pixel covers (OpenCV's `INTER_AREA`, which
    is bilinear when enlarging); all four run in OpenCV, several times
    faster than Pillow's filters. With `antialias=True`, and always for
    `"box"`, `"hamming"` and `"lanczos"`, Pillow's filters widen with the
    scale factor when shrinking, so that every source pixel counts (better
    for large reductions, slower): `uint8` images with 1, 3 or 4 channels in
    one Pillow call (RGBA with premultiplied alpha), other dtypes channel by
    channel in float32, rounded back.

    Args:
        pixels: Standardized pixels (see `standardize_pixels`).
        size: The target `(height, width)`.
        interpolation: A key of `INTERPOLATIONS`. Defaults to `"bilinear"`.
        antialias: Widen the filter when shrinking (Pillow). Defaults to
            `False`.

    Returns:
        An array of shape `(height, width, C)` in the input's dtype; the
        input itself when it already has that size.

    Raises:
        ValueError: If `interpolation` is unknown.

    Example:

    >>> resize_image(np.zeros((4, 6, 3), np.uint8), (2, 3)).shape
    (2, 3, 3)
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"`interpolation` must be one of {sorted(INTERPOLATIONS)}. Received: interpolation={interpolation!r}"
        )
    height, width = size
    if pixels.shape[:2] == (height, width):
        return pixels
    if not antialias and interpolation in _OPENCV_FILTERS and pixels.dtype in _OPENCV_DTYPES:
        flag = getattr(cv2, _OPENCV_FILTERS[interpolation])
        out = cv2.resize(np.ascontiguousarray(pixels), (width, height), interpolation=flag)
        return out.reshape(height, width, pixels.shape[2])
    resample = INTERPOLATIONS[interpolation]
    channels = pixels.shape[2]
    if pixels.dtype == np.uint8 and channels in (1, 3, 4):
        image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)
        out = np.asarray(image.resize((width, height), resample))
        return out[:, :, None] if channels == 1 else out
    planes = []
    for c in range(channels):
        plane = Image.fromarray(np.ascontiguousarray(pixels[:, :, c], dtype=np.float32), mode="F")
        planes.append(np.asarray(plane.resize((width, height), resample)))
    out = np.stack(planes, axis=2)
    if pixels.dtype in _MAX:
        out = np.clip(np.rint(out), 0, _MAX[pixels.dtype]).astype(pixels.dtype)
    return out


def decode_image(
    path: str,
    *,
    color_mode: str = "rgb",
    image_size: Sequence[int] | None = None,
    interpolation: str = "bilinear",
    antialias: bool = False,
    max_pixels: int | None = None,
) -> np.ndarray:
    """Reads, color-converts and optionally resizes one image file.

    Complete PNG files are decoded by OpenCV (libpng; 16-bit files keep
    their 16 bits) and gray or color JPEGs by simplejpeg (libjpeg-turbo in
    strict mode, EXIF orientation ignored as TensorFlow and Pillow do), both
    outside the GIL. A JPEG being shrunk is decoded at 1/2, 1/4 or 1/8 of its
    size when that still covers `image_size` (see `_jpeg_reduction`), which
    costs a fraction of a full decode and reads as well. Every other file, and any
    file these decoders refuse or that looks truncated, goes through Pillow
    (then imageio), which reads it or names what is wrong. Colors are
    converted as Pillow does (`convert_color`), whichever library decoded.

    Args:
        path: The image file.
        color_mode: `"grayscale"`, `"rgb"` or `"rgba"`. Defaults to `"rgb"`.
        image_size: `(height, width)` to resize to, or `None` (the default)
            to keep the file's size.
        interpolation: The resize filter, a key of `INTERPOLATIONS`.
            Defaults to `"bilinear"`.
        antialias: Widen the resize filter when shrinking (see
            `resize_image`). Defaults to `False`, like `tf.image.resize`.
        max_pixels: Refuse, before decoding, an image whose header claims
            more pixels than this (a decompression-bomb guard). `None` (the
            default) uses Pillow's `PIL.Image.MAX_IMAGE_PIXELS`; Pillow's own
            guard, which stops at twice that, stays on as well.

    Returns:
        Pixels of shape `(H, W, C)` in `uint8`, `uint16` (16-bit files) or
        `float32` (floating-point files).

    Raises:
        OSError: If the file is missing or cannot be decoded.
        ValueError: If the decoded array is not an image (see
            `standardize_pixels`), or claims more than `max_pixels`.

    Example:

    >>> decode_image("cat.png", color_mode="grayscale", image_size=(64, 64)).shape  # doctest: +SKIP
    (64, 64, 1)
    """
    if color_mode not in COLOR_MODES:  # checked before any file is opened
        convert_color(np.zeros((1, 1, 1), np.uint8), color_mode)
    if interpolation not in INTERPOLATIONS:
        resize_image(np.zeros((1, 1, 1), np.uint8), (1, 1), interpolation=interpolation)
    with open_file(path) as f:  # a local file, or a URL's bytes (fetched ahead by the worker pool)
        data = f.read()
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    header = _sniff(data)
    if header is not None:
        _check_pixels(header[1], header[2], limit)
    pixels = None if header is None else _decode_fast(data, header, color_mode, image_size)
    if pixels is None:
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            image = None
        except Image.DecompressionBombError as e:
            raise ValueError(f"the image is over the limit of Pillow's decompression-bomb guard: {e}") from e
        if image is not None:
            with image:
                _check_pixels(image.size[0], image.size[1], limit)
                if image.mode in _PIL_8BIT and not _deep_color(image, data):
                    return _decode_8bit(image, color_mode, image_size, interpolation, antialias)
        pixels = standardize_pixels(read_image(path, data))
    pixels = convert_color(pixels, color_mode)
    if image_size is not None:
        pixels = resize_image(pixels, image_size, interpolation=interpolation, antialias=antialias)
    return pixels


def _check_pixels(width: int, height: int, limit: int | None) -> None:
    if limit is not None and width * height > limit:
        raise ValueError(
            f"the image claims {width}x{height} = {width * height:,} pixels, over the limit of "
            f"{limit:,} (max_image_pixels, a decompression-bomb guard)"
        )


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _sniff(data: bytes) -> tuple[str, int, int, bool] | None:
    """Reads `(format, width, height, gray)` from the header of a complete PNG or a gray/color JPEG.

    `None` for anything else: other formats, CMYK JPEGs, and PNGs whose
    last bytes are not the IEND chunk (truncated), which Pillow then reads
    or refuses by name.
    """
    if data.startswith(_PNG_SIGNATURE):
        if data[12:16] != b"IHDR" or not data.endswith(_PNG_END):
            return None
        width, height = struct.unpack(">II", data[16:24])
        return "PNG", width, height, data[25] in (0, 4)  # color types 0 and 4: gray, gray + alpha
    if data.startswith(b"\xff\xd8"):
        try:
            height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            return None
        if colorspace in ("Gray", "YCbCr", "RGB"):
            return "JPEG", width, height, colorspace == "Gray"
    return None


def _decode_fast(data: bytes, header: tuple, color_mode: str, image_size) -> np.ndarray | None:
    """Decodes a sniffed PNG (OpenCV) or JPEG (simplejpeg) into `(H, W, C)` pixels; `None` if the decoder refuses.

    `rgb` asks the decoder for RGB directly (alpha dropped, gray repeated,
    palettes expanded, as Pillow converts); `grayscale` of a gray file or of
    a JPEG (its luma plane, as Pillow's JPEG `draft("L")` gives) for gray;
    anything else comes back as stored, for `convert_color`. JPEGs are
    decoded at the largest power-of-two reduction that keeps them at least
    `image_size` (`_jpeg_reduction`), and in libjpeg-turbo's strict mode, so that a
    corrupt JPEG is left to Pillow to accept or refuse rather than decoded
    into garbage.
    """
    fmt, width, height, gray = header
    if fmt == "JPEG":
        want_gray = gray or color_mode == "grayscale"
        factor = 1 if image_size is None else _jpeg_reduction(height, width, image_size)
        minimum = {} if factor == 1 else {"min_height": -(-height // factor), "min_width": -(-width // factor)}
        try:
            pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY" if want_gray else "RGB", strict=True, **minimum)
        except ValueError:
            return None
        return pixels if pixels.size else None
    if color_mode == "rgb":
        flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_ANYDEPTH
    elif color_mode == "grayscale" and gray:
        flags = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_ANYDEPTH
    else:
        flags = cv2.IMREAD_UNCHANGED
    try:
        pixels = cv2.imdecode(np.frombuffer(stored_png(data) or data, np.uint8), flags)
    except cv2.error:
        return None
    if pixels is None or pixels.dtype not in (np.uint8, np.uint16) or pixels.size == 0:
        return None
    if pixels.ndim == 2:
        return pixels[:, :, None]
    return _bgr_to_rgb(pixels) if flags == cv2.IMREAD_UNCHANGED else pixels


def _deep_color(image: Image.Image, data: bytes | None, path: str = "") -> bool:
    """Whether an image Pillow opened as 8-bit RGB(A) holds 16 bits per channel (PNG or TIFF)."""
    if image.mode not in ("RGB", "RGBA"):
        return False
    if image.format == "TIFF":
        bits = cast(dict, getattr(image, "tag_v2", {})).get(258, (8,))
        return max(bits if isinstance(bits, tuple) else (bits,)) > 8
    if image.format == "PNG":
        if data is None:
            with open(path, "rb") as f:
                data = f.read(25)
        return data[24:25] == b"\x10"
    return False


def _decode_deep(source: str | bytes) -> np.ndarray | None:
    """A 16-bit color PNG or TIFF through OpenCV (libpng, libtiff), RGB(A) order; `None` if it refuses."""
    try:
        if isinstance(source, str):
            with open(source, "rb") as f:
                source = f.read()
        pixels = cv2.imdecode(np.frombuffer(source, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        return None
    if pixels is None or pixels.ndim != 3 or pixels.shape[2] not in (3, 4) or pixels.dtype != np.uint16:
        return None
    return _bgr_to_rgb(pixels)


def _jpeg_reduction(height: int, width: int, size: Sequence[int]) -> int:
    """The largest of 1, 2, 4 and 8 that divides a JPEG's size and keeps it at least `size`.

    libjpeg-turbo decodes at any scale of n/8, but only the power-of-two
    reductions run in its SIMD code, so other scales can cost more than a
    full decode (figures in docs/benchmarks.md). So a
    JPEG being shrunk is decoded at 1/2, 1/4 or 1/8 when that still covers
    `size`, else at full size (as Pillow's `draft` does).

    Args:
        height: The JPEG's height.
        width: The JPEG's width.
        size: The target `(height, width)`.

    Returns:
        The reduction factor: 1, 2, 4 or 8.

    Example:

    >>> _jpeg_reduction(300, 280, (64, 64))
    4
    >>> _jpeg_reduction(240, 320, (128, 128))
    1
    """
    factor = 1
    while factor < 8 and -(-height // (2 * factor)) >= size[0] and -(-width // (2 * factor)) >= size[1]:
        factor *= 2
    return factor


def _bgr_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """OpenCV's BGR and BGRA channel order to RGB and RGBA."""
    order = [2, 1, 0] if pixels.shape[2] == 3 else [2, 1, 0, 3]
    return np.ascontiguousarray(pixels[:, :, order])


def _decode_8bit(image: Image.Image, color_mode: str, image_size, interpolation: str, antialias: bool) -> np.ndarray:
    """Pillow's path for the 8-bit images OpenCV does not take: convert (and, antialiased, resize) inside Pillow.

    The results equal the generic path's (`convert_color` and `resize_image`
    use the same formulas and filters), except that JPEGs being shrunk to
    half their size or less are decoded at a reduced scale first (Pillow's
    `draft`, the DCT scaling of libjpeg), which is faster and reads as well.
    """
    target = _PIL_TARGET[color_mode]
    if image_size is not None and image.format == "JPEG":
        image.draft("L" if target == "L" else "RGB", (image_size[1], image_size[0]))
    if image.mode not in ("L", "LA", "RGB", "RGBA", "1"):
        has_alpha = image.mode in ("PA", "RGBa", "La") or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    if image.mode != target:
        image = image.convert(target)
    pil_resize = antialias or interpolation not in _OPENCV_FILTERS
    if pil_resize and image_size is not None and image.size != (image_size[1], image_size[0]):
        image = image.resize((image_size[1], image_size[0]), INTERPOLATIONS[interpolation])
    pixels = np.asarray(image)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    if image_size is not None and not pil_resize:
        pixels = resize_image(pixels, image_size, interpolation=interpolation, antialias=False)
    return pixels


def write_pixels(out: np.ndarray, pixels: np.ndarray) -> None:
    """Writes `pixels` into `out`, converting the range like `tf.image.convert_image_dtype`.

    `uint8` and `uint16` inputs are treated as encoded pixels: to a float
    `out` they are divided by 255 or 65535; between the two integer types
    they are shifted by 8 bits or multiplied by 257. Float inputs go to
    integer outputs as `round(clip(x, 0, 1) * max)`. Any other dtype
    (a custom `load_input` returning, say, int16 Hounsfield units) is cast
    unchanged.

    Args:
        out: The destination, e.g. one slot of a preallocated batch.
        pixels: An array broadcastable to `out`.

    Example:

    >>> out = np.empty((2,), np.float32); write_pixels(out, np.array([0, 255], np.uint8)); out
    array([0., 1.], dtype=float32)
    """
    src, dst = pixels.dtype, out.dtype
    if src == dst:
        out[...] = pixels
    elif src in _MAX and dst.kind == "f":
        np.multiply(pixels, np.float32(PIXEL_SCALE[src]), out=out, casting="unsafe")
    elif src == np.uint16 and dst == np.uint8:
        np.right_shift(pixels, 8, out=out, casting="unsafe")
    elif src == np.uint8 and dst == np.uint16:
        np.multiply(pixels, np.uint16(257), out=out, casting="unsafe")
    elif src.kind == "f" and dst in _MAX:
        np.copyto(out, np.rint(np.clip(pixels, 0.0, 1.0) * _MAX[dst]), casting="unsafe")
    else:
        np.copyto(out, pixels, casting="unsafe")
