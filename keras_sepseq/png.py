"""PNG files with their image data inflated by ISA-L, for OpenCV to decode at copying speed.

A PNG's pixels are rows of filtered bytes, deflate-compressed across its
IDAT chunks. Inflating them is most of what decoding a photo costs: on
the bench's photos, 1.16 of OpenCV's 1.3-1.45 ms, in the zlib 1.2.11 that
opencv-python's wheels link. ISA-L (Intel's Intelligent Storage
Acceleration Library, through `isal`) inflates the same streams in 0.45-0.50
ms, outside the GIL. `stored_png` does that, and wraps the same filtered
rows in a new PNG as a "stored" (uncompressed) deflate stream, which
OpenCV reads at copying speed while it unfilters, expands palettes and
converts colors as it always does: the pixels are the same bytes by
construction, and every other chunk is passed on unchanged.

What a corrupt file would have made libpng refuse is refused here too:
each IDAT chunk's CRC is checked (libpng checks the others it reads), ISA-L
checks the zlib stream's Adler-32, and a stream that is truncated, or
inflates to more or fewer bytes than the header's size calls for, gets
`None`, so that the caller decodes the original file exactly as before.

Example:

>>> import cv2, numpy as np
>>> ok, encoded = cv2.imencode(".png", np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
>>> data = stored_png(encoded.tobytes())
>>> data is None or cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape == (4, 4, 3)
True
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = ["raw_size", "stored_png"]

MIN_RAW_BYTES = 16 << 10
"""Images whose filtered rows take fewer bytes (16 KiB: 64x64 RGB pixels and smaller) are left to OpenCV's inflate.

Below about 10 KiB, parsing the chunks in Python costs more than the faster inflate saves (measured: an
8x8 RGB PNG 4.7 us through OpenCV, 13.4 us through `stored_png`; 64x64, 84 against 57 us).
"""

MAX_RAW_BYTES = 1 << 28
"""Images whose filtered rows take more bytes than this (256 MiB) are left to OpenCV's own inflate."""

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_ZLIB_STORED = b"\x78\x01"  # deflate, 32 KiB window, no preset dictionary; (0x78 * 256 + 0x01) % 31 == 0
_BLOCK = 65535  # the most a stored deflate block holds

try:
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - isal is a dependency; OpenCV then inflates, as before
    _isal: Any = None  # type: ignore[no-redef]


def raw_size(width: int, height: int, bit_depth: int, color_type: int, interlaced: bool) -> int | None:
    """Bytes of filtered rows (one filter byte per row) an image of this header inflates to; `None` if invalid.

    Args:
        width: From the IHDR chunk.
        height: From the IHDR chunk.
        bit_depth: Bits per channel (1, 2, 4, 8 or 16).
        color_type: 0 gray, 2 RGB, 3 palette, 4 gray + alpha, 6 RGBA.
        interlaced: Adam7 interlacing (the rows of its seven passes).

    Returns:
        The size, or `None` for a header PNG does not allow.

    Example:

    >>> raw_size(4, 2, 8, 2, False)  # 2 rows of 1 + 4 * 3 bytes
    26
    """
    channels = _CHANNELS.get(color_type)
    if channels is None or bit_depth not in (1, 2, 4, 8, 16) or width <= 0 or height <= 0:
        return None
    bits = channels * bit_depth
    if not interlaced:
        return height * (1 + (width * bits + 7) // 8)
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        columns, rows = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
        if columns > 0 and rows > 0:
            total += rows * (1 + (columns * bits + 7) // 8)
    return total


def stored_png(data: bytes) -> bytes | None:
    """The PNG `data` with its image data inflated by ISA-L and stored uncompressed; `None` to decode `data` as is.

    Args:
        data: A complete PNG file.

    Returns:
        A PNG that decodes to the same pixels, or `None` where ISA-L is
        missing, the file is not a PNG this handles (see the module
        docstring), or its image data is damaged.

    Example:

    >>> stored_png(b"not a png") is None
    True
    """
    if _isal is None or not data.startswith(_SIGNATURE) or data[8:16] != b"\x00\x00\x00\x0dIHDR" or len(data) < 45:
        return None
    width, height, bit_depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    expected = raw_size(width, height, bit_depth, color_type, interlace == 1)
    if expected is None or not MIN_RAW_BYTES <= expected <= MAX_RAW_BYTES:
        return None
    view = memoryview(data)
    chunks = _chunks(view)
    idats = [k for k, chunk in enumerate(chunks or []) if chunk[0] == b"IDAT"]
    if chunks is None or not idats or idats[-1] - idats[0] != len(idats) - 1:
        return None  # no image data, or IDAT chunks not consecutive: libpng decides what that means
    inflater = _isal.decompressobj()
    pieces = []
    for k in idats:
        _, start, end = chunks[k]
        if _isal.crc32(view[start:end], _isal.crc32(b"IDAT")) != struct.unpack(">I", view[end : end + 4])[0]:
            return None
        pieces.append(view[start:end])
    try:
        raw = inflater.decompress(b"".join(pieces), expected + 1)
    except Exception:  # noqa: BLE001 (isal.IsalError and friends: damaged data, which the original path reports)
        return None
    if len(raw) != expected or not inflater.eof:
        return None
    stream: list[bytes | memoryview] = [_ZLIB_STORED]
    rows = memoryview(raw)  # sliced without copying; the one copy is the final join
    for offset in range(0, expected, _BLOCK):
        block = rows[offset : offset + _BLOCK]
        stream.append(struct.pack("<BHH", offset + _BLOCK >= expected, len(block), len(block) ^ 0xFFFF))
        stream.append(block)
    stream.append(struct.pack(">I", _isal.adler32(raw)))
    crc = _isal.crc32(b"IDAT")
    for piece in stream:  # the new IDAT chunk's CRC, piece by piece: the stream is joined once, into the file
        crc = _isal.crc32(piece, crc)
    first, last = chunks[idats[0]][1] - 8, chunks[idats[-1]][2] + 4  # the IDAT run, length field to CRC
    length = struct.pack(">I", sum(len(piece) for piece in stream))
    return b"".join((view[:first], length, b"IDAT", *stream, struct.pack(">I", crc), view[last:]))


def _chunks(view: memoryview) -> list[tuple[bytes, int, int]] | None:
    """`(type, data start, data end)` of every chunk up to IEND; `None` if one runs past the end of the file."""
    chunks = []
    position, size = len(_SIGNATURE), len(view)
    while position + 12 <= size:
        length = struct.unpack(">I", view[position : position + 4])[0]
        kind = bytes(view[position + 4 : position + 8])
        start = position + 8
        end = start + length
        if end + 4 > size:
            return None
        chunks.append((kind, start, end))
        if kind == b"IEND":
            return chunks
        position = end + 4
    return None
