"""Looking at a dataset before training: what `keras-sepseq inspect` and `preview` compute."""

from __future__ import annotations

import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from keras_sepseq.pairing import Key, Matching, match_files
from keras_sepseq.storage import open_file, supplied


def image_header(path: str) -> tuple[tuple[int, int] | None, str | None, str | None]:
    """Size, Pillow mode and format of an image file, read from its header only.

    Args:
        path: An image file.

    Returns:
        `((width, height), mode, format)`, or `(None, None, None)` if Pillow
        cannot read the header.

    Example:

    >>> image_header("cat.png")  # doctest: +SKIP
    ((320, 240), 'RGB', 'PNG')
    """
    try:
        with open_file(path) as f, Image.open(f) as image:
            return image.size, image.mode, image.format
    except Exception:
        return None, None, None


_PAD, _TEXT_HEIGHT = 6, 32  # contact sheets: pixels between cells, and under each for its text


def _header(path: str, storage_options: dict[str, Any] | None) -> tuple:
    with supplied(None, storage_options):  # a URL is read with these options
        return image_header(path)


def inspect_files(
    image_pattern: str,
    label_pattern: str,
    *,
    key: Key = None,
    progress: bool = True,
    workers: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Pairs the files and checks every pair: what `keras-sepseq inspect` reports.

    Args:
        image_pattern: A glob pattern for the input files.
        label_pattern: A glob pattern for the label files.
        key: As for `pair_files`.
        progress: Show a progress bar while loading every pair. Defaults
            to `True`.
        workers: Threads; defaults to the number of cores.
        storage_options: Storage options (fsspec-style or obstore keys) for URL patterns, as for
            `pair_files`.

    Returns:
        A JSON-friendly dict: `pairs`, `orphan_images`, `orphan_labels`,
        `duplicate_keys`, `bad` (files that fail to load, with reasons),
        `image_sizes`, `image_modes`, `image_formats`, `input_dtypes`,
        `label_shapes`, `label_dtypes`, `classes` and `ok`.

    Raises:
        ValueError: If a pattern matches no file, or `key` is malformed.

    Example:

    >>> report = inspect_files("data/image_*.png", "data/label_*.npy", progress=False)  # doctest: +SKIP
    >>> report["ok"], report["pairs"]  # doctest: +SKIP
    (True, 2000)
    """
    from keras_sepseq.separated import SeparatedSequence

    matching: Matching = match_files(image_pattern, label_pattern, key=key, storage_options=storage_options)
    result: dict[str, Any] = {
        "pairs": len(matching.image_paths),
        "orphan_images": matching.orphan_images,
        "orphan_labels": matching.orphan_labels,
        "duplicate_keys": {
            "images": {str(k): v for k, v in matching.duplicate_images.items()},
            "labels": {str(k): v for k, v in matching.duplicate_labels.items()},
        },
        "bad": [],
    }
    if matching.image_paths:
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            headers = list(pool.map(lambda p: _header(p, storage_options), matching.image_paths, chunksize=64))
        sizes = Counter(f"{s[0]}x{s[1]}" for s, _, _ in headers if s)
        result["image_sizes"] = dict(sizes.most_common())
        result["image_modes"] = dict(Counter(m for _, m, _ in headers if m).most_common())
        result["image_formats"] = dict(Counter(f for _, _, f in headers if f).most_common())
        seq = SeparatedSequence(
            matching.image_paths,
            matching.label_paths,
            batch_size=1,
            shuffle=False,
            workers=workers or 1,
            storage_options=storage_options,
        )
        report = seq.validate(progress=progress, workers=workers)
        summary = report.to_dict()
        result["bad"] = summary["bad"]
        result["input_dtypes"] = summary["input_dtypes"]
        result["label_shapes"] = summary["label_shapes"]
        result["label_dtypes"] = summary["label_dtypes"]
        result["classes"] = summary["label_values"]
        result["class_pixels"] = summary["class_pixels"]
    result["ok"] = matching.ok and not result["bad"]
    return result


def format_inspection(result: dict[str, Any], *, shown: int = 20) -> str:
    """The text `keras-sepseq inspect` prints for `inspect_files`'s result.

    Args:
        result: What `inspect_files` returned.
        shown: How many files to list per problem. Defaults to 20.

    Returns:
        Text.

    Example:

    >>> print(format_inspection(report))  # doctest: +SKIP
    """

    def listed(title: str, items: list[str]) -> list[str]:
        if not items:
            return []
        lines = [f"{title}: {len(items)}"]
        lines += [f"  {item}" for item in items[:shown]]
        if len(items) > shown:
            lines.append(f"  ... {len(items) - shown} more")
        return lines

    def histogram(title: str, counts: dict) -> list[str]:
        if not counts:
            return []
        items = list(counts.items())
        text = ", ".join(f"{k}: {v:,}" for k, v in items[:8]) + (
            f", ... {len(items) - 8} more" if len(items) > 8 else ""
        )
        return [f"{title}: {text}"]

    lines = [f"pairs: {result['pairs']:,}"]
    lines += listed("images without a label", result["orphan_images"])
    lines += listed("labels without an image", result["orphan_labels"])
    for side in ("images", "labels"):
        for key, files in list(result["duplicate_keys"][side].items())[:shown]:
            lines.append(f"{side} sharing key {key}: {', '.join(files)}")
    lines += listed("files that fail to load", [f"{b['path']}: {b['reason']}" for b in result["bad"]])
    lines += histogram("image sizes (width x height)", result.get("image_sizes", {}))
    lines += histogram("image modes", result.get("image_modes", {}))
    lines += histogram("image formats", result.get("image_formats", {}))
    lines += histogram("decoded dtypes", result.get("input_dtypes", {}))
    lines += histogram("label shapes", result.get("label_shapes", {}))
    lines += histogram("label dtypes", result.get("label_dtypes", {}))
    lines += histogram("classes", result.get("classes", {}))
    lines += histogram("mask pixels per class", result.get("class_pixels", {}))
    lines.append("ok: every file paired and loaded" if result["ok"] else "problems found")
    return "\n".join(lines)


def label_text(label: np.ndarray, width: int = 22) -> str:
    """A short text for a label under its image: the value, the class of a one-hot vector, or the array.

    Args:
        label: The label array.
        width: At most this many characters. Defaults to 22.

    Returns:
        Text.

    Example:

    >>> label_text(np.array(3)), label_text(np.array([0, 0, 1.0]))
    ('3', 'class 2')
    """
    label = np.asarray(label)
    if label.ndim == 0:
        text = f"{label.item():.4g}" if label.dtype.kind == "f" else str(label.item())
    elif label.ndim == 1 and label.size > 1 and set(np.unique(label).tolist()) <= {0, 1} and label.sum() == 1:
        text = f"class {int(np.argmax(label))}"
    else:
        text = np.array2string(label.ravel(), precision=2, separator=" ", threshold=6, max_line_width=10**6)
    return text if len(text) <= width else text[: width - 1] + "…"


def contact_sheet(
    image_paths: list[str],
    label_paths: list[str],
    *,
    n: int = 16,
    seed: int = 0,
    cell: int = 128,
    storage_options: dict[str, Any] | None = None,
) -> tuple[Image.Image, list[str]]:
    """A grid of `n` random samples, each with its label and file name written under it.

    Label files that are images are masks: each is drawn over its image in
    one colour per class value (`mask_colours`), and the values it holds
    are written under it.

    Args:
        image_paths: Paired input files.
        label_paths: Their `.npy` label files.
        n: How many samples (all of them if fewer). Defaults to 16.
        seed: Which samples: the same seed, the same sheet. Defaults to 0.
        cell: Each image is scaled to fit a `cell` x `cell` square, keeping
            its aspect ratio (small images grow with crisp pixels).
            Defaults to 128.
        storage_options: Storage options (fsspec-style or obstore keys) for URLs, as for `pair_files`.

    Returns:
        `(sheet, problems)`: an RGB `PIL.Image`, and one line per sample
        that could not be shown (its cell says "unreadable").

    Example:

    >>> sheet, problems = contact_sheet(images, labels, n=9)  # doctest: +SKIP
    >>> sheet.save("grid.png")  # doctest: +SKIP
    """
    count = min(n, len(image_paths))
    chosen = np.random.default_rng(seed).choice(len(image_paths), size=count, replace=False)
    columns = max(1, math.ceil(math.sqrt(count)))
    rows = math.ceil(count / columns)
    font = ImageFont.load_default(size=12)
    pad = _PAD
    sheet = Image.new("RGB", (columns * (cell + pad) + pad, rows * (cell + _TEXT_HEIGHT + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    problems: list[str] = []
    with supplied(None, storage_options):  # URLs read with these options
        for slot, index in enumerate(chosen):
            _draw_cell(sheet, draw, font, slot, image_paths[index], label_paths[index], columns, cell, problems)
    return sheet, problems


def _draw_cell(
    sheet: Image.Image,
    draw: Any,
    font: Any,
    slot: int,
    image_path: str,
    label_path: str,
    columns: int,
    cell: int,
    problems: list[str],
) -> None:
    """Draws one sample of a contact sheet in cell `slot`; a failure goes to `problems`."""
    from keras_sepseq.images import decode_image
    from keras_sepseq.masks import looks_like_images, read_mask, resize_nearest
    from keras_sepseq.npy import load_npy

    pad = _PAD
    left = pad + (slot % columns) * (cell + pad)
    top = pad + (slot // columns) * (cell + _TEXT_HEIGHT + pad)
    name = os.path.basename(image_path)
    try:
        pixels = decode_image(image_path, color_mode="rgb")
        thumb = Image.fromarray(pixels if pixels.dtype == np.uint8 else (pixels >> 8).astype(np.uint8))
        grow = thumb.width < cell and thumb.height < cell  # small images: crisp pixels, not blur
        thumb = ImageOps.contain(thumb, (cell, cell), Image.Resampling.NEAREST if grow else Image.Resampling.LANCZOS)
        sheet.paste(thumb, (left + (cell - thumb.width) // 2, top + (cell - thumb.height) // 2))
        if looks_like_images([label_path]):
            mask = read_mask(label_path)
            mask = mask if mask.ndim == 2 else mask[..., 0]
            small = resize_nearest(mask, (thumb.height, thumb.width))
            overlay = Image.fromarray(mask_colours(small))
            thumb = Image.blend(thumb.convert("RGB"), overlay, 0.45)
            sheet.paste(thumb, (left + (cell - thumb.width) // 2, top + (cell - thumb.height) // 2))
            text = " ".join(str(v) for v in np.unique(mask).tolist())
        else:
            text = label_text(load_npy(label_path))
    except Exception as e:
        draw.rectangle((left, top, left + cell - 1, top + cell - 1), fill="#dddddd")
        draw.text((left + 8, top + cell // 2 - 6), "unreadable", fill="#a00000", font=font)
        text = "?"
        problems.append(f"{image_path}: {type(e).__name__}: {e}")
    fits = max(6, cell // 7)  # characters of the 12 px font that fit under a cell
    draw.text((left, top + cell + 2), text if len(text) <= fits else text[: fits - 1] + "…", fill="black", font=font)
    draw.text((left, top + cell + 17), name if len(name) <= fits else name[: fits - 1] + "…", fill="#666666", font=font)


_CLASS_COLOURS = np.array(
    [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
     (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
     (170, 110, 40), (255, 250, 200), (128, 0, 0)],
    dtype=np.uint8,
)  # fmt: skip


def mask_colours(mask: np.ndarray) -> np.ndarray:
    """An RGB picture of a mask: class 0 black, then one distinct colour per class value (repeating after 16).

    Args:
        mask: `(H, W)` class values.

    Returns:
        `(H, W, 3)` `uint8`.

    Example:

    >>> mask_colours(np.array([[0, 1]])).tolist()
    [[[0, 0, 0], [230, 25, 75]]]
    """
    return _CLASS_COLOURS[np.asarray(mask).astype(np.int64) % len(_CLASS_COLOURS)]
