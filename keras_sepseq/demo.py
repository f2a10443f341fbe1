"""A learnable synthetic dataset of separate PNG + `.npy` files, and a training run on it.

Each image shows one of four shapes (horizontal bar, vertical bar, filled
square, hollow square) at a random place, size and color on a noisy
background; its label file holds the shape's class. A model can only beat
chance (25%) if every image reaches it with its own label, so the demo's
accuracy is a check that pairing survives shuffling and workers.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from keras_sepseq.checks import check_int

CLASS_NAMES = ("horizontal bar", "vertical bar", "filled square", "hollow square")
_FORMAT_VERSION = 1


def default_demo_dir() -> str:
    """The demo dataset's default folder: `$XDG_CACHE_HOME/keras_sepseq/demo` (or `~/.cache/...`).

    Returns:
        An absolute path.

    Example:

    >>> default_demo_dir().endswith(os.path.join("keras_sepseq", "demo"))
    True
    """
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.abspath(os.path.join(cache, "keras_sepseq", "demo"))


def draw_shape(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Draws one RGB `uint8` image of class `label`.

    Args:
        label: 0 horizontal bar, 1 vertical bar, 2 filled square, 3 hollow
            square.
        rng: The random generator (position, extent, colors, noise).
        size: Image height and width. Defaults to 32.

    Returns:
        An array of shape `(size, size, 3)`.

    Raises:
        ValueError: If `label` is not 0 to 3.

    Example:

    >>> draw_shape(2, np.random.default_rng(0)).shape
    (32, 32, 3)
    """
    if label not in range(len(CLASS_NAMES)):
        raise ValueError(f"`label` must be 0 to {len(CLASS_NAMES) - 1}. Received: label={label!r}")
    background = rng.integers(0, 100, size=3)
    image = np.clip(background + rng.normal(0, 20, size=(size, size, 3)), 0, 255)
    color = rng.integers(150, 256, size=3)
    mask = np.zeros((size, size), dtype=bool)
    long = int(rng.integers(size // 2, size - 4))
    thick = int(rng.integers(3, max(4, size // 6)))
    if label in (0, 1):
        top = int(rng.integers(0, size - thick))
        left = int(rng.integers(0, size - long))
        mask[top : top + thick, left : left + long] = True
        if label == 1:
            mask = mask.T
    else:
        side = int(rng.integers(size // 3, size - 4))
        top, left = (int(v) for v in rng.integers(0, size - side, size=2))
        mask[top : top + side, left : left + side] = True
        if label == 3:
            inner = max(2, side // 4)
            mask[top + inner : top + side - inner, left + inner : left + side - inner] = False
    image[mask] = color
    return image.astype(np.uint8)


def make_demo_dataset(
    directory: str, *, samples: int = 2000, size: int = 32, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Writes the demo dataset as `image_NNNNN.png` and `label_NNNNN.npy` files.

    The files are written once: a `dataset.json` written last records the
    settings, and a later call with the same settings reuses the files.

    Args:
        directory: The folder (created if missing).
        samples: How many image/label pairs. Defaults to 2000.
        size: Image height and width. Defaults to 32.
        seed: Random seed of the data. Defaults to 0.

    Returns:
        `(image_paths, label_paths)`, paired by position.

    Raises:
        ValueError: If `samples < 8` or `size < 16`.
        OSError: If the folder cannot be written.

    Example:

    >>> images, labels = make_demo_dataset("/tmp/demo", samples=100)  # doctest: +SKIP
    """
    samples, size = check_int("samples", samples, minimum=8), check_int("size", size, minimum=16)
    width = max(5, len(str(samples - 1)))
    images = [os.path.join(directory, f"image_{i:0{width}d}.png") for i in range(samples)]
    labels = [os.path.join(directory, f"label_{i:0{width}d}.npy") for i in range(samples)]
    manifest_path = os.path.join(directory, "dataset.json")
    settings = {"format": _FORMAT_VERSION, "samples": samples, "size": size, "seed": seed}
    try:
        with open(manifest_path) as f:
            if json.load(f) == settings and all(map(os.path.exists, (images[-1], labels[-1]))):
                return images, labels
    except (OSError, ValueError):
        pass
    os.makedirs(directory, exist_ok=True)
    if os.path.exists(manifest_path):
        os.remove(manifest_path)
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.arange(samples) % len(CLASS_NAMES))
    for image_path, label_path, label in zip(images, labels, classes):
        Image.fromarray(draw_shape(int(label), rng, size)).save(image_path)
        np.save(label_path, np.int64(label))
    with open(manifest_path, "w") as f:
        json.dump(settings, f)
    return images, labels


SEGMENTATION_CLASSES = ("background", "square", "bar", "ring")
"""The class ids of `draw_segmentation`'s masks, by position."""

IGNORE_INDEX = 255
"""The mask value of the one-pixel outline of every shape, which no class claims."""


def draw_segmentation(rng: np.random.Generator, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Draws one image of 1 to 3 shapes on a textured background, and its mask of class ids.

    Each shape is a filled square (class 1), a bar (2) or a ring (3), in a
    colour of its class with noise; the mask holds the class of every
    pixel, 0 for background, and `IGNORE_INDEX` on each shape's one-pixel
    outline, where the class is ambiguous. Later shapes cover earlier ones.

    Args:
        rng: The random generator.
        size: Height and width. Defaults to 32.

    Returns:
        `(image, mask)`: `(size, size, 3)` and `(size, size)`, both `uint8`.

    Example:

    >>> image, mask = draw_segmentation(np.random.default_rng(0))
    >>> image.shape, mask.shape, set(np.unique(mask)) <= {0, 1, 2, 3, 255}
    ((32, 32, 3), (32, 32), True)
    """
    base = rng.integers(40, 120, size=3)
    image = np.clip(base + rng.normal(0, 25, size=(size, size, 3)), 0, 255)
    mask = np.zeros((size, size), np.uint8)
    hues = {1: (220, 60, 60), 2: (60, 200, 60), 3: (70, 90, 230)}
    for _ in range(int(rng.integers(1, 4))):
        label = int(rng.integers(1, 4))
        shape = np.zeros((size, size), bool)
        side = int(rng.integers(size // 4, size // 2))
        top, left = (int(v) for v in rng.integers(1, size - side - 1, size=2))
        if label == 2:
            thick = max(2, side // 4)
            shape[top : top + thick, left : left + side] = True
            if rng.random() < 0.5:
                shape = shape.T
        else:
            shape[top : top + side, left : left + side] = True
            if label == 3:
                inner = max(2, side // 4)
                shape[top + inner : top + side - inner, left + inner : left + side - inner] = False
        colour = np.clip(np.array(hues[label]) + rng.normal(0, 20, size=3), 0, 255)
        image[shape] = colour + rng.normal(0, 10, size=(int(shape.sum()), 3))
        grown = shape.copy()
        grown[1:] |= shape[:-1]
        grown[:-1] |= shape[1:]
        grown[:, 1:] |= shape[:, :-1]
        grown[:, :-1] |= shape[:, 1:]
        mask[grown & ~shape] = IGNORE_INDEX
        mask[shape] = label
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_segmentation_dataset(
    directory: str, *, samples: int = 200, size: int = 32, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Writes `image_NNNNN.png` and `mask_NNNNN.png` files drawn by `draw_segmentation`.

    Args:
        directory: The folder (created if missing).
        samples: How many image/mask pairs. Defaults to 200.
        size: Height and width. Defaults to 32.
        seed: Random seed of the data. Defaults to 0.

    Returns:
        `(image_paths, mask_paths)`, paired by position.

    Raises:
        ValueError: If `samples < 1` or `size < 16`.

    Example:

    >>> images, masks = make_segmentation_dataset("/tmp/shapes", samples=50)  # doctest: +SKIP
    """
    samples, size = check_int("samples", samples, minimum=1), check_int("size", size, minimum=16)
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for i in range(samples):
        image, mask = draw_segmentation(rng, size)
        images.append(os.path.join(directory, f"image_{i:05d}.png"))
        masks.append(os.path.join(directory, f"mask_{i:05d}.png"))
        Image.fromarray(image).save(images[-1])
        Image.fromarray(mask).save(masks[-1])
    return images, masks


@dataclass(frozen=True)
class DemoResult:
    """What `run_demo` measured.

    Attributes:
        directory: Where the dataset lies.
        images_per_second: Training throughput of each epoch.
        accuracy: Accuracy on the held-out fifth of the files.
        chance: The accuracy of guessing (0.25).
    """

    directory: str
    images_per_second: tuple[float, ...]
    accuracy: float
    chance: float = 1 / len(CLASS_NAMES)


def build_demo_model(size: int = 32):
    """The small CNN the demo trains.

    Args:
        size: Image height and width. Defaults to 32.

    Returns:
        A compiled `keras.Model` taking `(size, size, 3)` float images and
        predicting one of four classes.

    Example:

    >>> build_demo_model().output_shape  # doctest: +SKIP
    (None, 4)
    """
    import keras

    model = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
            keras.layers.Flatten(),
            keras.layers.Dense(len(CLASS_NAMES), activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def run_demo(
    directory: str | None = None,
    *,
    samples: int = 2000,
    epochs: int = 5,
    batch_size: int = 32,
    workers: int = 2,
    use_multiprocessing: bool = False,
    seed: int = 0,
    log=print,
) -> DemoResult:
    """Writes (or reuses) the demo dataset and trains the demo model through `SeparatedSequence`.

    Args:
        directory: Dataset folder; `None` (the default) uses
            `default_demo_dir()`.
        samples: Image/label pairs; a fifth are held out. Defaults to 2000.
        epochs: Training epochs. Defaults to 5.
        batch_size: Defaults to 32.
        workers: `SeparatedSequence` workers. Defaults to 2.
        use_multiprocessing: Process workers instead of threads. Defaults
            to `False`.
        seed: Seeds the data, the shuffling and Keras. Defaults to 0.
        log: Where progress lines go. Defaults to `print`.

    Returns:
        A `DemoResult`.

    Raises:
        ValueError: If an argument is out of range.

    Example:

    >>> run_demo("/tmp/demo", samples=400, epochs=2).accuracy > 0.5  # doctest: +SKIP
    True
    """
    import keras

    from keras_sepseq.separated import SeparatedSequence

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"`epochs` must be an integer >= 1. Received: epochs={epochs!r}")
    directory = os.path.abspath(directory or default_demo_dir())
    start = time.perf_counter()
    images, labels = make_demo_dataset(directory, samples=samples, seed=seed)
    log(f"dataset: {samples} PNG + .npy pairs in {directory} (ready in {time.perf_counter() - start:.1f} s)")
    split = samples * 4 // 5
    options: dict[str, Any] = dict(workers=workers, use_multiprocessing=use_multiprocessing)
    train = SeparatedSequence(images[:split], labels[:split], batch_size, seed=seed, **options)
    val = SeparatedSequence(images[split:], labels[split:], batch_size, shuffle=False, **options)
    keras.utils.set_random_seed(seed)
    model = build_demo_model()
    mode = "processes" if use_multiprocessing else "threads" if workers > 1 else "main thread"
    log(f"training a small CNN on {split} images for {epochs} epochs ({workers} workers, {mode})")
    rates: list[float] = []

    class EpochLog(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.end = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            rate = split / (self.end - self.start)
            rates.append(rate)
            logs = logs or {}
            log(
                f"epoch {epoch + 1}/{epochs}: {rate:,.0f} images/s, loss {logs.get('loss', float('nan')):.3f}, "
                f"accuracy {logs.get('accuracy', float('nan')):.3f}"
            )

    model.fit(train, epochs=epochs, verbose=0, callbacks=[EpochLog()])
    _, accuracy = model.evaluate(val, verbose=0)
    result = DemoResult(directory, tuple(rates), float(accuracy))
    log(f"held-out accuracy: {result.accuracy:.3f} (chance: {result.chance:.2f}) on {samples - split} images")
    return result
