"""Volumes: 3-D scans read from NIfTI, DICOM series, multi-page TIFF and `.npy`/`.npz`, oriented and resampled.

Pure functions, like `keras_sepseq.images`; `VolumeField` and
`LabelVolumeField` compose them. Every reader gives the voxels as stored
and a 4x4 affine from voxel indices to RAS+ millimetres (NIfTI's world
convention: +x Right, +y Anterior, +z Superior); `to_canonical` then
flips and transposes the voxels so that the array is laid out `(D, H, W)`
with index `d` moving Superior, `h` Anterior and `w` Right (the axes of
nibabel's `as_closest_canonical`, reversed so that `volume[d]` is an axial
slice). `resample` brings a volume to a voxel spacing or a shape by the
same coordinate map for every field, trilinear for images and nearest for
label volumes, so scan and labels stay aligned voxel for voxel.

Readers that need a package name the extra that installs it: NIfTI needs
nibabel (`keras-sepseq[nifti]`), DICOM needs pydicom (`keras-sepseq[dicom]`);
multi-page TIFF, `.npy` and `.npz` need nothing beyond the core
dependencies.

Example:

>>> voxels, affine = read_volume("scans/0001.nii.gz")  # doctest: +SKIP
>>> volume, spacing = to_canonical(voxels, affine)  # doctest: +SKIP
>>> resample(volume, spacing, spacing=(1.0, 1.0, 1.0)).shape  # doctest: +SKIP
(182, 218, 182)
"""

from __future__ import annotations

import gzip
import io
import os
import warnings
import zipfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from keras_sepseq.storage import is_url, open_file

__all__ = [
    "STORED_AFFINE",
    "VOLUME_FORMATS",
    "apply_intensity",
    "read_volume",
    "resample",
    "to_canonical",
    "volume_format",
]

VOLUME_FORMATS: dict[str, str] = {
    ".nii": "nifti",
    ".nii.gz": "nifti",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".npy": "npy",
    ".npz": "npz",
    ".dcm": "dicom",
}
"""File endings and the reader each goes to; a local folder is a DICOM series."""

_EXTRAS = {"nibabel": "nifti", "pydicom": "dicom"}


def _need(module: str) -> Any:
    try:
        return __import__(module)
    except ImportError as e:
        raise ImportError(f"reading this volume needs {module}: pip install 'keras-sepseq[{_EXTRAS[module]}]'") from e


def volume_format(path: str) -> str:
    """Which reader a volume path goes to: `"nifti"`, `"dicom"`, `"tiff"`, `"npy"` or `"npz"`.

    Args:
        path: A file, a URL, or a local folder (a DICOM series).

    Returns:
        The format's name.

    Raises:
        ValueError: For any other ending; names the path and the endings known.

    Example:

    >>> volume_format("scans/ct.nii.gz")
    'nifti'
    """
    lower = str(path).lower()
    for ending in sorted(VOLUME_FORMATS, key=len, reverse=True):
        if lower.endswith(ending):
            return VOLUME_FORMATS[ending]
    if not is_url(path) and os.path.isdir(path):
        return "dicom"
    raise ValueError(
        f"{path!r} is not a volume this reader knows: expected a file ending in "
        f"{', '.join(VOLUME_FORMATS)} or a folder holding a DICOM series"
    )


def read_volume(
    path: str, *, npz_key: str | None = None, uneven_slices: str = "error", nearest: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Reads a volume's voxels as stored and its affine (voxel indices to RAS+ mm).

    NIfTI voxels are scaled by the header's slope and intercept (nibabel's
    `dataobj`); a DICOM series is assembled from each slice's position and
    orientation and its geometry checked (`keras_sepseq.dicom`: uneven
    spacing, gaps, mixed orientations or shapes are refused), scaled by
    `RescaleSlope`/`RescaleIntercept`, its affine built from
    `ImagePositionPatient`, `ImageOrientationPatient` and `PixelSpacing`
    (DICOM's LPS turned to RAS). Files without a header
    (TIFF, `.npy`, `.npz`) are taken as already laid out `(D, H, W[, C])`
    in canonical orientation with 1 mm voxels.

    Args:
        path: A `.nii`, `.nii.gz`, `.tif`/`.tiff` (every page), `.npy` or
            `.npz` file (local or a URL), or a local folder of DICOM files.
        npz_key: The array of an `.npz` archive to read; `None` (the
            default) takes its only array.
        uneven_slices: For a DICOM series whose slices are not evenly
            spaced: `"error"` (the default) or `"resample"` (interpolated
            onto an even grid at the median step).
        nearest: Resample uneven slices by nearest neighbour (labels).

    Returns:
        `(voxels, affine)`: voxels `(I, J, K)` or `(I, J, K, C)`, an
        affine `(4, 4)` float64.

    Raises:
        ValueError: If the file is not a 3-D volume, or a DICOM series is
            inconsistent; the message says what was found.
        ImportError: If the reader's package is missing; names the extra.
        OSError: If the file cannot be read.

    Example:

    >>> voxels, affine = read_volume("scans/0001.nii.gz")  # doctest: +SKIP
    """
    fmt = volume_format(path)
    if fmt == "dicom":
        _need("pydicom")
        from keras_sepseq.dicom import read_dicom_series

        return read_dicom_series(path, uneven=uneven_slices, nearest=nearest)
    with open_file(path) as f:
        data = f.read()
    if not data:
        raise ValueError("the file is empty (0 bytes)")
    if fmt == "nifti":
        voxels, affine = _read_nifti(data)
    elif fmt == "tiff":
        voxels, affine = _read_tiff(data), STORED_AFFINE
    elif fmt == "npy":
        voxels, affine = np.load(io.BytesIO(data), allow_pickle=False), STORED_AFFINE
    else:
        voxels, affine = _read_npz(data, npz_key), STORED_AFFINE
    if voxels.ndim not in (3, 4):
        raise ValueError(f"expected a 3-D volume (D, H, W) or (D, H, W, C); the file holds shape {voxels.shape}")
    return voxels, affine


STORED_AFFINE = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
"""The affine of arrays without a header: stored `(D, H, W)`, `d` Superior, `h` Anterior, `w` Right, 1 mm apart."""


def _read_nifti(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    nibabel = _need("nibabel")
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    try:
        image = nibabel.Nifti1Image.from_bytes(data)
    except Exception:
        try:
            image = nibabel.Nifti2Image.from_bytes(data)
        except Exception as e:
            raise ValueError(f"not a NIfTI-1 or NIfTI-2 file ({e})") from None
    voxels = np.asanyarray(image.dataobj)
    if voxels.ndim == 5 and voxels.shape[3] == 1:  # NIfTI stores vector voxels as (I, J, K, 1, C)
        voxels = voxels[:, :, :, 0, :]
    return np.asarray(voxels), np.asarray(image.affine, dtype=np.float64)


def _read_tiff(data: bytes) -> np.ndarray:
    """Every page of a TIFF, stacked: OpenCV (libtiff) keeps 16-bit and float pages; imageio reads the rest."""
    import cv2

    ok, pages = cv2.imdecodemulti(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if ok and pages:
        pages = [p[:, :, ::-1] if p.ndim == 3 and p.shape[2] == 3 else p for p in pages]  # BGR to RGB
        if len({(p.shape, p.dtype) for p in pages}) == 1:
            return np.stack(pages)
    import imageio.v3 as iio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # imageio's vendored tifffile
        try:
            return np.asarray(iio.imread(data, index=None, extension=".tif"))
        except Exception as e:
            raise ValueError(f"not a TIFF stack that OpenCV or imageio can read ({e})") from None


def _read_npz(data: bytes, key: str | None) -> np.ndarray:
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"not an .npz archive ({e})") from None
    with archive:
        names = list(archive.files)
        if key is None:
            if len(names) != 1:
                raise ValueError(f"the archive holds {len(names)} arrays {names}: pass `npz_key` to choose one")
            key = names[0]
        if key not in names:
            raise ValueError(f"the archive has no array {key!r} (npz_key); it holds {names}")
        return archive[key]


def to_canonical(voxels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Flips and transposes voxels to `(D, H, W[, C])` with `d` Superior, `h` Anterior, `w` Right.

    Each voxel axis goes to the world axis it is closest to (the largest
    direction cosine first, as nibabel's `io_orientation`), so oblique
    scans are turned to the nearest canonical layout without resampling.

    Args:
        voxels: `(I, J, K)` or `(I, J, K, C)`.
        affine: `(4, 4)`, voxel indices to RAS+ millimetres.

    Returns:
        `(volume, spacing)`: the volume (a view where possible) and the
        voxel spacing in mm along `(D, H, W)`.

    Raises:
        ValueError: If the affine is singular.

    Example:

    >>> flipped = np.diag([-2.0, 1.0, 3.0, 1.0])  # i moves Left
    >>> volume, spacing = to_canonical(np.arange(8).reshape(2, 2, 2), flipped)
    >>> spacing
    (3.0, 1.0, 2.0)
    """
    axes = np.asarray(affine, dtype=np.float64)[:3, :3]
    spacing = np.sqrt((axes**2).sum(axis=0))
    if np.any(spacing == 0) or not np.all(np.isfinite(axes)):
        raise ValueError(f"the volume's affine is singular or not finite: {np.round(axes, 4).tolist()}")
    cosines = np.abs(axes / spacing)
    world_of = [-1, -1, -1]  # voxel axis -> world axis
    for _ in range(3):
        world, voxel = (int(v) for v in np.unravel_index(int(np.argmax(cosines)), cosines.shape))
        world_of[voxel] = world
        cosines[world, :] = -1
        cosines[:, voxel] = -1
    volume = voxels
    for axis in range(3):
        if axes[world_of[axis], axis] < 0:
            volume = np.flip(volume, axis=axis)
    voxel_of = [world_of.index(w) for w in (2, 1, 0)]  # D <- Superior (z), H <- Anterior (y), W <- Right (x)
    volume = np.transpose(volume, voxel_of + list(range(3, volume.ndim)))
    return volume, (float(spacing[voxel_of[0]]), float(spacing[voxel_of[1]]), float(spacing[voxel_of[2]]))


def _source_coordinates(size: int, out: int, step: float | None) -> np.ndarray:
    """Where each output index samples the input along one axis: origin kept (`step`), or centres aligned."""
    index = np.arange(out, dtype=np.float64)
    coords = index * step if step is not None else (index + 0.5) * (size / out) - 0.5
    return np.clip(coords, 0, size - 1)


def resample(
    volume: np.ndarray,
    spacing: Sequence[float],
    *,
    to_spacing: Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    nearest: bool = False,
) -> np.ndarray:
    """Resamples a canonical volume to a voxel spacing or to a shape; trilinear, or nearest for labels.

    With `to_spacing`, the first voxel's centre stays where it is and
    voxels follow `to_spacing` apart, as many as fit inside the volume
    (the way MONAI's `Spacing` and SimpleITK resample). With `shape`, the
    volume's extent is kept and voxel centres line up like a
    half-pixel-centre image resize. Trilinear interpolation is done one
    axis at a time (exactly trilinear); nearest picks the closest source
    voxel, so a label volume only ever holds values it had. The two use
    the same coordinates, so a scan and its labels resampled alike stay
    aligned.

    Args:
        volume: `(D, H, W)` or `(D, H, W, C)`.
        spacing: Its voxel spacing `(d, h, w)` in mm.
        to_spacing: The spacing to resample to, or `None`.
        shape: The `(D, H, W)` to resample to, or `None`.
        nearest: Nearest-neighbour instead of trilinear. Defaults to `False`.

    Returns:
        The resampled volume: float32 for trilinear (float64 input stays
        float64), the input's dtype for nearest.

    Raises:
        ValueError: If both or neither of `to_spacing` and `shape` are given.

    Example:

    >>> resample(np.zeros((4, 4, 4)), (1, 1, 1), shape=(2, 8, 8)).shape
    (2, 8, 8)
    """
    if (to_spacing is None) == (shape is None):
        raise ValueError("resample needs either `to_spacing` or `shape`")
    out = volume
    for axis in range(3):
        size = volume.shape[axis]
        if to_spacing is not None:
            step = float(to_spacing[axis]) / float(spacing[axis])
            count = int(np.floor((size - 1) / step + 1e-9)) + 1
        else:
            step, count = None, int(shape[axis])  # type: ignore[index]
            if count == size:
                continue
        if step == 1.0 and count == size:
            continue
        coords = _source_coordinates(size, count, step)
        if nearest:
            out = np.take(out, np.floor(coords + 0.5).astype(np.int64), axis=axis)
            continue
        low = np.floor(coords).astype(np.int64)
        high = np.minimum(low + 1, size - 1)
        weight = (coords - low).astype(np.float32 if out.dtype != np.float64 else np.float64)
        view = [1] * out.ndim
        view[axis] = count
        weight = weight.reshape(view)
        source = out if out.dtype in (np.float32, np.float64) else out.astype(np.float32)
        lower = np.take(source, low, axis=axis)
        out = lower + (np.take(source, high, axis=axis) - lower) * weight
    return out


def apply_intensity(volume: np.ndarray, *, window: Sequence[float] | None, normalize: str | None) -> np.ndarray:
    """Scales a scan's intensities: a window clipped and scaled to [0, 1], and/or per-volume normalisation.

    Args:
        volume: The voxels (float).
        window: `(low, high)`: values are clipped to it and mapped to
            [0, 1] (a CT window such as `(-1000, 1000)` Hounsfield units),
            or `None`.
        normalize: `"zscore"` (zero mean, unit standard deviation over the
            volume; a constant volume becomes 0), `"minmax"` (to [0, 1]),
            or `None`.

    Returns:
        The scaled volume, float32 (float64 stays float64).

    Example:

    >>> apply_intensity(np.array([-2000.0, 0.0, 500.0]), window=(-1000, 1000), normalize=None).tolist()
    [0.0, 0.5, 0.75]
    """
    out = volume if volume.dtype in (np.float32, np.float64) else volume.astype(np.float32)
    if window is not None:
        low, high = float(window[0]), float(window[1])
        out = (np.clip(out, low, high) - low) / (high - low)
    if normalize == "zscore":
        std = float(out.std())
        out = (out - out.mean()) / (std if std > 0 else 1.0)
    elif normalize == "minmax":
        low, high = float(out.min()), float(out.max())
        out = (out - low) / (high - low if high > low else 1.0)
    return out.astype(np.float32 if volume.dtype != np.float64 else np.float64, copy=False)
