"""Volume fields: 3-D scans and their label volumes as fields of a sample, on one voxel grid.

`VolumeField` reads a scan (see `keras_sepseq.volumes` for the formats),
orients it to `(D, H, W)` in RAS, optionally resamples it to a voxel
spacing or a shape (trilinear) and scales its intensities; batches are
`(B, D, H, W, C)` floats, ready for `keras.layers.Conv3D`.
`LabelVolumeField` does the same geometry by nearest neighbour and
follows the mask rules (`num_classes`, `ignore_index`, bad values named by
file); batches are `(B, D, H, W)` integers. Give both the same geometry
keywords and the scan and its labels stay aligned voxel for voxel.
`PatchSequence` cuts patches out of them.

Example:

>>> scan = VolumeField(ct_paths, spacing=(2.0, 2.0, 2.0), window=(-1000, 1000))  # doctest: +SKIP
>>> labels = LabelVolumeField(label_paths, spacing=(2.0, 2.0, 2.0), num_classes=3)  # doctest: +SKIP
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from keras_sepseq.checks import check_choice, check_int, check_paths
from keras_sepseq.fields import Field
from keras_sepseq.masks import check_class_options, check_classes
from keras_sepseq.options import VOLUME_DEFAULTS, resolve_options
from keras_sepseq.paths import PathArray
from keras_sepseq.stacking import stack_arrays
from keras_sepseq.volumes import STORED_AFFINE, apply_intensity, read_volume, resample, to_canonical

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from keras_sepseq.options import VolumeOptions

__all__ = ["LabelVolumeField", "VolumeField"]

VOLUME_REVISION = 2
"""Part of a directory cache's fingerprint: raised whenever the same file and settings give other voxels."""

Loader = Callable[[str], Any]


def _triple(name: str, value: Any, kind: type) -> tuple | None:
    if value is None:
        return None
    message = f"`{name}` must be None or three numbers (d, h, w), each > 0. Received: {name}={value!r}"
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        raise ValueError(message)
    if kind is int:
        try:
            return tuple(check_int(name, v, minimum=1) for v in value)
        except ValueError:
            raise ValueError(message) from None
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and float(v) > 0 for v in value):
        raise ValueError(message)
    return tuple(float(v) for v in value)


class VolumeField(Field):
    """3-D scans, one file (or DICOM folder) per sample; batched as `(B, D, H, W, C)` floats.

    Each volume is read by `keras_sepseq.volumes.read_volume` (NIfTI,
    DICOM series, multi-page TIFF, `.npy`, `.npz`), oriented to `(D, H, W)`
    with `d` Superior, `h` Anterior and `w` Right (`orient=True`),
    resampled to `spacing` or `shape` if asked (trilinear), scaled by
    `window` and/or `normalize`, and given a channel axis if it has none.

    Args:
        paths: One volume file, or DICOM folder, per sample.
        window: `(low, high)`: clip to it and scale to [0, 1], e.g.
            `(-1000, 1000)` Hounsfield units for CT. Defaults to `None`.
        normalize: `"zscore"` (per volume: mean 0, standard deviation 1),
            `"minmax"` (per volume: [0, 1]) or `None` (the default). After
            `window` when both are given.
        dtype: `"float32"` (the default) or `"float16"`.
        loader: Reads one path instead of `read_volume`: returns an array
            laid out `(D, H, W[, C])` as stored arrays are, or a
            `(voxels, affine)` pair. Defaults to `None`.
        **options: Where the voxels go, below (declared once, in
            `keras_sepseq.options.VolumeOptions`).

    Keyword Args:
        orient: Turn every volume to the canonical RAS layout from its
            header (without resampling). Defaults to `True`; `False` keeps
            the stored voxel order.
        spacing: Resample to this voxel spacing `(d, h, w)` in mm; the
            number of voxels follows the volume's extent. Defaults to
            `None`.
        shape: Resample to this `(D, H, W)`. Defaults to `None`. At most
            one of `spacing` and `shape`.
        npz_key: The array of `.npz` files to read. Defaults to `None` (the
            archive's only array).
        uneven_slices: A DICOM series whose slices are not evenly spaced
            (a missing slice, uneven steps): `"error"` (the default) makes
            the sample bad, naming the folder, positions and largest gap;
            `"resample"` interpolates onto an even grid at the median step
            (nearest neighbour for label volumes, so a scan and its labels
            given the same option share one grid).

    Raises:
        ValueError: If an argument is out of range; the message names it.

    Example:

    >>> field = VolumeField(["a.nii.gz", "b.nii.gz"], shape=(64, 96, 96), normalize="zscore")
    >>> field.spec_shape(None)
    (64, 96, 96, None)
    """

    kind = "volume"
    spatial = True
    nearest = False

    def __init__(
        self,
        paths: Sequence[Any] | PathArray,
        *,
        window: tuple[float, float] | None = None,
        normalize: str | None = None,
        dtype: str = "float32",
        loader: Loader | None = None,
        **options: Unpack[VolumeOptions],
    ) -> None:
        super().__init__(paths=check_paths("paths", paths))
        self._geometry(dict(options))
        if window is not None:
            if (
                not isinstance(window, (tuple, list))
                or len(window) != 2
                or not all(isinstance(v, numbers.Real) for v in window)
                or not float(window[0]) < float(window[1])
            ):
                raise ValueError(f"`window` must be None or (low, high) with low < high. Received: window={window!r}")
            window = (float(window[0]), float(window[1]))
        self.window: tuple[float, float] | None = window
        if normalize not in (None, "zscore", "minmax"):
            raise ValueError(f"`normalize` must be None, 'zscore' or 'minmax'. Received: normalize={normalize!r}")
        self.normalize: str | None = normalize
        self.dtype = np.dtype(check_choice("dtype", dtype, ("float32", "float16")))
        self.loader = loader

    def _geometry(self, options: dict) -> None:
        o = resolve_options(dict(options), owner=type(self).__name__, defaults=VOLUME_DEFAULTS)
        self.orient = bool(o["orient"])
        self.spacing = _triple("spacing", o["spacing"], float)
        self.shape = _triple("shape", o["shape"], int)
        if self.spacing is not None and self.shape is not None:
            raise ValueError(
                f"give `spacing` or `shape`, not both. Received: spacing={o['spacing']!r}, shape={o['shape']!r}"
            )
        if o["npz_key"] is not None and not isinstance(o["npz_key"], str):
            raise ValueError(f"`npz_key` must be None or a string. Received: npz_key={o['npz_key']!r}")
        self.npz_key = o["npz_key"]
        self.uneven_slices = check_choice("uneven_slices", o["uneven_slices"], ("error", "resample"))

    def voxels(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """The stored voxels and affine of one path (the `loader`, or `read_volume`).

        Args:
            path: The volume's file or folder.

        Returns:
            `(voxels, affine)`.
        """
        if self.loader is None:
            return read_volume(path, npz_key=self.npz_key, uneven_slices=self.uneven_slices, nearest=self.nearest)
        loaded = self.loader(path)
        if isinstance(loaded, tuple) and len(loaded) == 2:
            return np.asarray(loaded[0]), np.asarray(loaded[1], dtype=np.float64)
        return np.asarray(loaded), STORED_AFFINE

    def place(self, voxels: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Orients and resamples stored voxels as the field's geometry says (nearest for labels).

        Args:
            voxels: `(I, J, K[, C])`.
            affine: Voxel indices to RAS+ mm.

        Returns:
            `(D, H, W[, C])`, contiguous.
        """
        if self.orient:
            volume, spacing = to_canonical(voxels, affine)
        else:
            sizes = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
            volume, spacing = voxels, (float(sizes[0]), float(sizes[1]), float(sizes[2]))
        if self.spacing is not None or self.shape is not None:
            volume = resample(volume, spacing, to_spacing=self.spacing, shape=self.shape, nearest=self.nearest)
        return np.ascontiguousarray(volume)

    def read(self, path: str) -> np.ndarray:
        """Reads, orients, resamples and scales one volume; `(D, H, W, C)` in `dtype`."""
        volume = self.place(*self.voxels(path))
        if volume.dtype.kind not in "uifb":
            raise ValueError(f"the volume holds {volume.dtype} values, not numbers")
        volume = apply_intensity(volume, window=self.window, normalize=self.normalize)
        if volume.ndim == 3:
            volume = volume[..., None]
        return volume.astype(self.dtype, copy=False)

    def batch(self, indices, items, *, position=None, empty=np.empty):
        """Stacks the volumes; names two files whose shapes differ."""
        paths = cast(PathArray, self.paths)
        hint = "" if self.shape is not None else "Pass `shape=(d, h, w)`, or cut patches with PatchSequence."
        return stack_arrays(
            items, lambda k: repr(paths[indices[k]]), what=self.kind, dtype=self.dtype, hint=hint, empty=empty
        )

    def fixed_shape(self) -> bool:
        """False: the channel count is known only once a volume is read."""
        return False

    def cache_key(self) -> tuple:
        """The geometry, intensity settings, dtype and the reader's revision."""
        return (
            self.kind, self.orient, self.spacing, self.shape, self.npz_key, self.uneven_slices, self.window, self.normalize,
            self.dtype.str, ("volume revision", VOLUME_REVISION),
        )  # fmt: skip

    def spec_shape(self, reference: Any) -> tuple:
        """`(D, H, W, C)`: the reference volume's, with `None` for sizes that vary (no `shape`)."""
        if reference is not None:
            ref = tuple(np.shape(reference))
            return (self.shape or (None, None, None)) + ref[3:]
        return (self.shape or (None, None, None)) + (None,)

    def spec_dtype(self, reference: Any) -> Any:
        """The field's `dtype`."""
        return self.dtype


class LabelVolumeField(VolumeField):
    """Label volumes of class ids, on the grid of their scan; batched as `(B, D, H, W)` integers.

    The same reading, orientation and resampling as `VolumeField`, by
    nearest neighbour only (a voxel only ever holds a class it had), no
    intensity scaling, and the mask rules: values must be whole numbers,
    and with `num_classes` every value outside `[0, num_classes)` that is
    not `ignore_index` makes the sample bad, naming the file and the
    values.

    Args:
        paths: One label volume per sample.
        num_classes: The number of classes, or `None` (the default) to
            check nothing.
        ignore_index: A value allowed besides the classes (unlabelled
            voxels); patches reaching outside a volume are filled with it.
            Defaults to `None`.
        dtype: The batch dtype, an integer type. Defaults to `"int32"`.
        loader: As for `VolumeField`.
        **options: The geometry keywords of `VolumeField` (`orient`,
            `spacing`, `shape`, `npz_key`): give the scan's.

    Raises:
        ValueError: If an argument is out of range; the message names it.

    Example:

    >>> field = LabelVolumeField(["a_seg.nii.gz"], shape=(64, 96, 96), num_classes=4)
    >>> field.spec_shape(None)
    (64, 96, 96)
    """

    kind = "label volume"
    nearest = True

    def __init__(
        self,
        paths: Sequence[Any] | PathArray,
        *,
        num_classes: int | None = None,
        ignore_index: int | None = None,
        dtype: str = "int32",
        loader: Loader | None = None,
        **options: Unpack[VolumeOptions],
    ) -> None:
        Field.__init__(self, paths=check_paths("paths", paths))
        self._geometry(dict(options))
        self.window, self.normalize = None, None
        self.num_classes, self.ignore_index = check_class_options(num_classes, ignore_index)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind not in "iu":
            raise ValueError(f"`dtype` of a label volume must be an integer type. Received: dtype={dtype!r}")
        self.loader = loader

    def read(self, path: str) -> np.ndarray:
        """Reads, orients and resamples one label volume by nearest neighbour; `(D, H, W)` in `dtype`, checked."""
        stored, affine = self.voxels(path)
        stored = np.asarray(stored)
        if stored.ndim == 4 and stored.shape[3] == 1:
            stored = stored[..., 0]
        if stored.ndim != 3:
            raise ValueError(f"a label volume must have one channel; this one has shape {stored.shape}")
        # Checked as stored, before resampling: whether a file is valid never depends on the output grid.
        if stored.dtype.kind == "f":
            if not np.all(np.isfinite(stored)) or np.any(stored != np.round(stored)):
                bad = stored[~np.isfinite(stored) | (stored != np.round(stored))][:4]
                raise ValueError(f"the label volume holds values that are not class ids: {bad.tolist()}")
        elif stored.dtype.kind not in "iub":
            raise ValueError(f"the label volume holds {stored.dtype} values, not class ids")
        check_classes(stored, self.num_classes, self.ignore_index, what="label volume", unit="voxel")
        labels = self.place(stored, affine)
        info = np.iinfo(self.dtype)
        if labels.size and (labels.min() < info.min or labels.max() > info.max):
            raise ValueError(f"the label volume holds values outside {self.dtype} ({labels.min()}..{labels.max()})")
        return labels.astype(self.dtype, copy=False)

    def cache_key(self) -> tuple:
        """The geometry, classes and dtype."""
        return super().cache_key() + (self.num_classes, self.ignore_index)

    def spec_shape(self, reference: Any) -> tuple:
        """`(D, H, W)`, `None` for sizes that vary."""
        return self.shape or (None, None, None)

    def foreground(self, labels: np.ndarray) -> np.ndarray:
        """The flat indices of foreground voxels: class ids above 0 that are not `ignore_index`.

        Args:
            labels: A label volume `(D, H, W)`.

        Returns:
            int64 flat indices.
        """
        mask = labels > 0
        if self.ignore_index is not None:
            mask &= labels != self.ignore_index
        return np.flatnonzero(mask)
