"""Augmentation: random every epoch, the same for every field of a sample, reproducible from `(seed, epoch, index)`.

`augment=` on a sequence takes either

- Keras's own augmentation layers (one layer, a list, or a
  `keras.Sequential` of `keras.layers.RandomFlip`, `RandomRotation`,
  `RandomZoom`, `RandomCrop`, `RandomTranslation`, `RandomBrightness`,
  `RandomContrast`, ...), applied to each batch: every image field of the
  batch gets the same transformation, and every mask field the geometric
  part of it with nearest-neighbour sampling; or
- any callable `augment(sample, rng)` taking one sample as a dict of
  arrays keyed by field name and a `numpy.random.Generator`, and returning
  the dict (for albumentations, custom code, or anything else).

Augmentation runs after the cache, in the process that assembles batches:
decoding and resizing happen once, and each epoch draws new transforms.

Randomness (exactly what each draw depends on):

- a callable gets `numpy.random.default_rng([seed, epoch, index, 1])` for
  the sample at `index`, so its draws depend on the sequence's `seed`, the
  epoch and the sample only;
- Keras layers get, per batch, the integer seed
  `SeedSequence([seed, epoch, position, 2]).generate_state(1)[0] + k` for
  the `k`-th layer, where `position` is the batch's position in the epoch;
  the layers draw per-sample transforms from it, statelessly.

Nothing reads or changes global random state (`random`, `np.random`,
Keras's global seed generator), and workers, which only load, share none.

Example:

>>> seq = SeparatedSequence(images, masks, augment=[keras.layers.RandomFlip("horizontal")])  # doctest: +SKIP
>>> def jitter(sample, rng):  # doctest: +SKIP
...     sample["image"] = np.clip(sample["image"] * rng.uniform(0.8, 1.2), 0, 1)
...     return sample
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import cv2
import numpy as np

__all__ = ["Augmentation", "batch_seed", "sample_rng"]

SampleAugment = Callable[[dict[str, Any], np.random.Generator], Mapping[str, Any]]

_SAMPLE_STREAM = 1
_BATCH_STREAM = 2


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The random generator of sample `index` in `epoch`: `default_rng([seed, epoch, index, 1])`.

    Args:
        seed: The sequence's seed.
        epoch: The epoch.
        index: The sample index.

    Returns:
        A fresh `numpy.random.Generator`.

    Example:

    >>> sample_rng(0, 1, 2).integers(100) == sample_rng(0, 1, 2).integers(100)
    True
    """
    return np.random.default_rng([seed, epoch, index, _SAMPLE_STREAM])


def batch_seed(seed: int, epoch: int, position: int) -> int:
    """The integer seed Keras layers get for batch `position` of `epoch`.

    Args:
        seed: The sequence's seed.
        epoch: The epoch.
        position: The batch's position in the epoch.

    Returns:
        An integer below 2**31.

    Example:

    >>> batch_seed(0, 1, 2) == batch_seed(0, 1, 2) != batch_seed(0, 2, 2)
    True
    """
    state = np.random.SeedSequence([seed, epoch, position, _BATCH_STREAM]).generate_state(1, dtype=np.uint32)
    return int(state[0] >> 1)


def _keras_layers(augment: Any) -> list | None:
    """The Keras augmentation layers in `augment` (a layer, a list, a `Sequential`), or `None` for a callable."""
    import keras

    if isinstance(augment, keras.Sequential):
        return list(augment.layers)
    if isinstance(augment, keras.layers.Layer):
        return [augment]
    if isinstance(augment, (list, tuple)) and augment and all(isinstance(a, keras.layers.Layer) for a in augment):
        layers: list = []
        for a in augment:
            layers += _keras_layers(a) or []
        return layers
    return None


_FAST_LAYERS = ("RandomFlip", "RandomCrop", "RandomBrightness", "RandomContrast")


def _fast_layers(layers: list) -> bool:
    """Whether every layer is one whose transform NumPy applies as views or one vector operation per batch.

    Flips and crops become slices of each sample (no copy before the batch is assembled), brightness and
    contrast one operation on the batch; read from each layer's public config. A contrast before a crop is
    left to Keras (its per-image mean depends on the crop).
    """
    import keras

    names = []
    for layer in layers:
        kind = type(layer).__name__
        if kind not in _FAST_LAYERS or type(layer) is not getattr(keras.layers, kind):
            return False
        if layer.get_config().get("data_format", "channels_last") != "channels_last":
            return False
        names.append(kind)
    return not any(n == "RandomCrop" and "RandomContrast" in names[:k] for k, n in enumerate(names))


def _brightness_ranges(layers: list, configs: list[dict]) -> tuple[tuple[float, float], ...] | None:
    """Each `RandomBrightness`'s `value_range`, in order, for fast layers among which none other changes values.

    Such batches may cross into a TensorFlow graph as `uint8` with one offset per sample and layer, added there
    (`tf_data.DeferredPixels`); `None` with a `RandomContrast` (its mean would be summed in another order there,
    so its bits could differ).
    """
    kinds = [type(layer).__name__ for layer in layers]
    if "RandomContrast" in kinds:
        return None
    return tuple(
        (float(config["value_range"][0]), float(config["value_range"][1]))
        for kind, config in zip(kinds, configs)
        if kind == "RandomBrightness"
    )


class Augmentation:
    """What `augment=` became: per-sample callables or per-batch Keras layers, applied to fields by name.

    Args:
        augment: Keras augmentation layers (a layer, a list, a
            `keras.Sequential`), or a callable `augment(sample, rng)`.

    Raises:
        TypeError: If `augment` is neither, or a layer cannot take a seed
            per call (it has no `get_random_transformation`).

    Example:

    >>> Augmentation(lambda sample, rng: sample).per_sample
    True
    """

    def __init__(self, augment: Any) -> None:
        layers = _keras_layers(augment)
        if layers is not None:
            for layer in layers:
                if not callable(getattr(layer, "get_random_transformation", None)):
                    raise TypeError(
                        f"`augment` layers must be Keras image augmentation layers (RandomFlip, RandomCrop, ...); "
                        f"{type(layer).__name__} has no per-call random transformation."
                    )
            self.layers: list = layers
            self.function: SampleAugment | None = None
            self.fast = _fast_layers(layers)
            self.configs = [layer.get_config() for layer in layers] if self.fast else []
            self.brightness_ranges = _brightness_ranges(layers, self.configs) if self.fast else None
        elif callable(augment):
            self.layers, self.function, self.fast, self.configs = [], augment, False, []
            self.brightness_ranges = None
        else:
            raise TypeError(
                "`augment` must be Keras augmentation layers (a layer, a list, a keras.Sequential) or a callable "
                f"augment(sample, rng) -> sample. Received: {type(augment).__name__}"
            )

    @property
    def geometric_only(self) -> bool:
        """Whether NumPy applies every layer and none changes pixel values (flips and crops only)."""
        return self.fast and all(type(layer).__name__ in ("RandomFlip", "RandomCrop") for layer in self.layers)

    @staticmethod
    def offsets(plans: list[dict]) -> np.ndarray:
        """The brightness offsets of each sample's plan, `(samples, layers)` float32, as `photometric` adds them."""
        rows = [[amount for kind, amount, _ in plan["photometric"] if kind == "brightness"] for plan in plans]
        return np.array(rows, np.float32).reshape(len(plans), -1)

    @property
    def per_sample(self) -> bool:
        """Whether this is a callable applied to one sample at a time."""
        return self.function is not None

    def sample(self, sample: dict[str, Any], rng: np.random.Generator, index: int) -> dict[str, Any]:
        """Applies the callable to one sample (arrays copied, so a cache is never written through).

        Args:
            sample: The sample's items by field name.
            rng: Its generator (`sample_rng`).
            index: The sample index, for messages.

        Returns:
            The augmented items by field name.

        Raises:
            TypeError: If the callable does not return a dict with every
                field.
        """
        if self.function is None:
            raise TypeError("this augmentation is made of Keras layers, which apply to batches")
        result = self.function({k: None if v is None else np.array(v) for k, v in sample.items()}, rng)
        if not isinstance(result, Mapping) or set(result) != set(sample):
            got = sorted(result) if isinstance(result, Mapping) else type(result).__name__
            raise TypeError(
                f"`augment` must return the sample as a dict with the keys {sorted(sample)}; for sample {index} "
                f"it returned {got}."
            )
        return {k: None if v is None else np.asarray(v) for k, v in result.items()}

    def batch(
        self, images: dict[Any, np.ndarray], masks: dict[Any, np.ndarray], seed: int, ignore: dict[Any, int | None]
    ) -> tuple[dict[Any, np.ndarray], dict[Any, np.ndarray]]:
        """Applies the Keras layers to one batch: the same transformation to every image and mask field.

        Args:
            images: Image batches `(B, H, W, C)` by field name.
            masks: Mask batches `(B, H, W)` by field name.
            seed: The batch's seed (`batch_seed`).
            ignore: Each mask field's `ignore_index` (or `None`), given to
                pixels a `fill_mode="constant"` transform brings in from
                outside the image.

        Returns:
            `(images, masks)`, each mask in the dtype it came in.
        """
        from keras import ops

        images = {k: np.asarray(v) for k, v in images.items()}
        masks = {k: np.asarray(v) for k, v in masks.items()}
        reference = next(iter(images.values()))
        for k, layer in enumerate(self.layers):
            data = {"images": ops.convert_to_tensor(reference.astype(np.float32))}
            transformation = layer.get_random_transformation(data, training=True, seed=seed + k)
            for name, value in images.items():
                out = layer.transform_images(ops.convert_to_tensor(value.astype(np.float32)), transformation)
                images[name] = _as_dtype(ops.convert_to_numpy(out), value.dtype)
            for name, value in masks.items():
                moved = layer.transform_segmentation_masks(
                    ops.convert_to_tensor(value[..., None].astype(np.float32)), transformation
                )
                moved_mask = np.rint(ops.convert_to_numpy(moved)[..., 0])
                if getattr(layer, "fill_mode", None) == "constant" and ignore.get(name) is not None:
                    inside = layer.transform_segmentation_masks(
                        ops.convert_to_tensor(np.ones(value.shape + (1,), np.float32)), transformation
                    )
                    moved_mask[ops.convert_to_numpy(inside)[..., 0] < 0.5] = ignore[name]
                masks[name] = moved_mask.astype(value.dtype)
            reference = next(iter(images.values()))
        return images, masks

    def check_images(self, dtype: Any) -> None:
        """Refuses layers whose `value_range` does not fit images of `dtype` (float images are in [0, 1]).

        Args:
            dtype: The image field's batch dtype.

        Raises:
            ValueError: Naming the layer, its range and the fix.
        """
        for layer in self.layers:
            value_range = getattr(layer, "value_range", None)
            if value_range is not None and np.dtype(dtype).kind == "f" and float(value_range[1]) > 1.5:
                raise ValueError(
                    f"`augment` layer {type(layer).__name__} has value_range={tuple(value_range)}, but the images are "
                    f"{np.dtype(dtype).name} in [0, 1]: create it with value_range=(0, 1)."
                )

    def plan(self, rng: np.random.Generator, sizes: list[tuple[int, int]]) -> list[dict]:
        """One sample's draws per layer, for the fast layers: flips, crop offsets, brightness and contrast.

        Args:
            rng: The batch's generator.
            sizes: Each sample's `(H, W)` before the layers.

        Returns:
            Per sample, `{"flip": (vertical, horizontal), "crop": (top, left, h, w) or None, "photometric":
            [("brightness", delta, value_range) or ("contrast", factor, value_range), ...]}` in layer order.

        Raises:
            ValueError: If a crop is larger than a sample.
        """
        plans: list[dict] = [{"flip": (False, False), "crop": None, "photometric": []} for _ in sizes]
        for layer, config in zip(self.layers, self.configs):
            kind = type(layer).__name__
            for plan, size in zip(plans, sizes):
                height, width = plan["crop"][2:] if plan["crop"] else size
                if kind == "RandomFlip":
                    vertical, horizontal = plan["flip"]
                    if config["mode"] in ("horizontal", "horizontal_and_vertical"):
                        horizontal ^= bool(rng.random() < 0.5)
                    if config["mode"] in ("vertical", "horizontal_and_vertical"):
                        vertical ^= bool(rng.random() < 0.5)
                    plan["flip"] = (vertical, horizontal)
                elif kind == "RandomCrop":
                    h, w = int(config["height"]), int(config["width"])
                    if h > height or w > width:
                        raise ValueError(f"RandomCrop({h}, {w}) is larger than a sample of size {(height, width)}")
                    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
                    # The offsets are in the current (possibly flipped) view: map them to the unflipped window.
                    vertical, horizontal = plan["flip"]
                    top = height - top - h if vertical else top
                    left = width - left - w if horizontal else left
                    base = plan["crop"][:2] if plan["crop"] else (0, 0)
                    plan["crop"] = (base[0] + top, base[1] + left, h, w)
                elif kind == "RandomBrightness":
                    low, high = config["factor"]
                    value_range = config["value_range"]
                    delta = rng.uniform(low, high) * (value_range[1] - value_range[0])
                    plan["photometric"].append(("brightness", float(delta), tuple(value_range)))
                else:  # RandomContrast
                    low, high = config["factor"]
                    factor = float(rng.uniform(1.0 - low, 1.0 + high))
                    plan["photometric"].append(("contrast", factor, tuple(config["value_range"])))
        return plans

    @staticmethod
    def geometric(item: np.ndarray, plan: dict) -> np.ndarray:
        """One sample's item after its crop window and flips.

        A crop and a vertical flip are views (the batch assembly copies them
        once); a horizontal flip is a copy by OpenCV, because a view reversed
        along the width would make the batch assembly copy pixel by pixel.
        """
        if plan["crop"] is not None:
            top, left, h, w = plan["crop"]
            item = item[top : top + h, left : left + w]
        vertical, horizontal = plan["flip"]
        if vertical:
            item = item[::-1]
        if horizontal:
            if item.dtype in (np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64) and item.ndim in (2, 3):
                flipped = cv2.flip(np.ascontiguousarray(item), 1)
                item = flipped if flipped.shape == item.shape else flipped.reshape(item.shape)
            else:
                item = np.ascontiguousarray(item[:, ::-1])
        return item

    @staticmethod
    def photometric(batch: np.ndarray, plans: list[dict]) -> np.ndarray:
        """The image batch after each sample's brightness and contrast changes (one vector operation per layer)."""
        steps = len(plans[0]["photometric"]) if plans else 0
        if not steps:
            return batch
        values = batch if batch.dtype == np.float32 else batch.astype(np.float32)
        shape = (len(plans),) + (1,) * (batch.ndim - 1)
        for step in range(steps):
            kind, _, (low, high) = plans[0]["photometric"][step]
            amounts = np.array([p["photometric"][step][1] for p in plans], np.float32).reshape(shape)
            if kind == "brightness":
                values += amounts
            else:
                mean = values.mean(axis=(1, 2), keepdims=True)
                values -= mean
                values *= amounts
                values += mean
            np.clip(values, low, high, out=values)
        return _as_dtype(values, batch.dtype)

    def output_shape(self, shape: tuple) -> tuple:
        """The per-sample shape `(H, W, C)` an image batch has after the layers (crops change it)."""
        for layer in self.layers:
            compute = getattr(layer, "compute_output_shape", None)
            if compute is not None:
                shape = tuple(compute((None,) + tuple(shape)))[1:]
        return shape


def _as_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`values` in `dtype`: rounded and clipped for integer pixels, cast for floats."""
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)
