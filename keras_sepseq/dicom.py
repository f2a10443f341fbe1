"""DICOM series read as volumes: slices placed by their own positions, the geometry checked, never assumed.

A series (a folder of single-frame files, or one enhanced multi-frame file)
is assembled from each slice's `ImagePositionPatient` and
`ImageOrientationPatient`, not from file order or `SliceThickness`:

- slices are sorted along the normal of their orientation;
- **uneven spacing** (a step more than `TOLERANCE` of the median step away
  from it), a **missing slice** (a gap), **mixed orientations** or **mixed
  shapes** are refused with a `ValueError` naming the series folder, the
  slice positions and the largest gap, unless `uneven="resample"`: then
  the slices are interpolated onto an even grid from the first position
  to the last at the median step (linearly, or by nearest neighbour for
  label volumes), so a label volume read with the same option lands on
  the same grid;
- `MONOCHROME1` slices (minimum shown white) are inverted to read as
  `MONOCHROME2`, before `RescaleSlope` and `RescaleIntercept` apply.

How this compares with other readers is in docs/volumes.md. Needs pydicom
(`pip install "keras-sepseq[dicom]"`).

Example:

>>> voxels, affine = read_dicom_series("scans/patient_01")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["TOLERANCE", "UNEVEN", "read_dicom_series"]

TOLERANCE = 0.01
"""How far a step between neighbouring slices may stray from the median step, as a share of it."""

UNEVEN = ("error", "resample")
"""What to do with a series whose slices are not evenly spaced."""

_ORIENTATION_TOLERANCE = 1e-4


def read_dicom_series(folder: str, *, uneven: str = "error", nearest: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The voxels `(slice, row, column)` and RAS affine of the DICOM series in `folder`.

    Args:
        folder: A local folder of DICOM files (one series).
        uneven: `"error"` (the default) refuses slices that are not evenly
            spaced; `"resample"` interpolates them onto an even grid.
        nearest: With `uneven="resample"`, take the nearest slice instead
            of interpolating (label volumes).

    Returns:
        `(voxels, affine)`: float32 when rescaled or resampled, else the
        stored integer type; the affine maps voxel indices to RAS+ mm.

    Raises:
        ValueError: If the folder holds no image or another series, a file
            is not DICOM or lacks its position, or the geometry is not one
            even grid (see the module docstring); the message names the
            folder or file.
    """
    import pydicom

    if uneven not in UNEVEN:
        raise ValueError(f"`uneven` must be one of {UNEVEN}. Received: uneven={uneven!r}")
    slices = _slices(folder, pydicom)
    orientations = np.array([s[2] for s in slices])
    far = np.abs(orientations - orientations[0]).max(axis=1) > _ORIENTATION_TOLERANCE
    if far.any():
        other = slices[int(np.argmax(far))]
        raise ValueError(
            f"the DICOM series {folder!r} mixes slice orientations: {slices[0][0]!r} has {orientations[0].round(4).tolist()}, "
            f"{other[0]!r} has {other[2].round(4).tolist()}"
        )
    row, col = orientations[0][:3], orientations[0][3:]  # directions of increasing column and row index
    normal = np.cross(row, col)
    positions = np.array([s[1] for s in slices])
    order = np.argsort(positions @ normal, kind="stable")
    slices = [slices[i] for i in order]
    positions = positions[order]
    where = positions @ normal
    steps = np.diff(where)
    if len(steps) and np.any(steps < 1e-6):
        k = int(np.argmin(steps))
        raise ValueError(f"{slices[k][0]!r} and {slices[k + 1][0]!r} lie at the same slice position")
    shape = slices[0][3].shape
    for name, _, _, pixels, *_ in slices:
        if pixels.shape != shape:
            raise ValueError(f"{name!r} has {pixels.shape} pixels, the series' first slice {shape}")
    planes = [s[3] for s in slices]
    voxels = np.stack(planes)
    if voxels.dtype == np.float64:
        voxels = voxels.astype(np.float32)
    step_mm = float(np.median(steps)) if len(steps) else float(slices[0][4] or 1.0)
    if len(steps) and np.abs(steps - step_mm).max() > TOLERANCE * step_mm:
        if uneven == "error":
            k = int(np.argmax(steps))
            shown = ", ".join(f"{z:.2f}" for z in where[:12]) + (", ..." if len(where) > 12 else "")
            raise ValueError(
                f"the DICOM series {folder!r} is not evenly spaced: slices at {shown} mm along the normal; the "
                f"largest gap is {steps[k]:.2f} mm between {slices[k][0]!r} and {slices[k + 1][0]!r}, the median "
                f"step {step_mm:.2f} mm (more than {TOLERANCE:.0%} apart: a missing slice, or a series of uneven "
                "spacing). Pass uneven_slices='resample' to interpolate onto an even grid."
            )
        voxels = _resample_slices(voxels, where, step_mm, nearest)
    row_spacing, col_spacing = slices[0][5]
    affine = np.eye(4)
    affine[:3, 0] = normal * step_mm
    affine[:3, 1], affine[:3, 2] = col * row_spacing, row * col_spacing
    affine[:3, 3] = positions[0]
    affine[:2] *= -1  # LPS (DICOM) to RAS (NIfTI)
    return voxels, affine


def _resample_slices(voxels: np.ndarray, where: np.ndarray, step: float, nearest: bool) -> np.ndarray:
    """`voxels` on slices every `step` mm from `where[0]` to `where[-1]`, from the slices at `where`."""
    count = int(np.floor((where[-1] - where[0]) / step + 1e-6)) + 1
    targets = where[0] + step * np.arange(count)
    upper = np.clip(np.searchsorted(where, targets, side="right"), 1, len(where) - 1)
    lower = upper - 1
    weight = ((targets - where[lower]) / (where[upper] - where[lower]))[:, None, None]
    if nearest:
        return voxels[np.where(weight[:, 0, 0] < 0.5, lower, upper)]
    out = voxels[lower].astype(np.float32) * (1 - weight) + voxels[upper].astype(np.float32) * weight
    return out.astype(np.float32)


def _slices(folder: str, pydicom: Any) -> list[tuple]:
    """`(name, position, orientation, pixels, thickness, (row spacing, column spacing))` of every slice."""
    slices: list[tuple] = []
    series = None
    for name in sorted(os.listdir(folder)):
        file = os.path.join(folder, name)
        if not os.path.isfile(file) or name.startswith("."):
            continue
        try:
            ds = pydicom.dcmread(file)
        except Exception as e:
            raise ValueError(f"{file!r} in the DICOM series is not a DICOM file ({e})") from None
        if "PixelData" not in ds:
            continue  # DICOMDIR and other files without an image
        if series is None:
            series = ds.get("SeriesInstanceUID")
        elif ds.get("SeriesInstanceUID") != series:
            raise ValueError(f"the folder holds more than one series: {file!r} is from another")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            slices += _frames(file, ds)
        else:
            slices.append(_single(file, ds))
    if not slices:
        raise ValueError(f"the folder {folder!r} holds no DICOM image")
    return slices


def _single(file: str, ds: Any) -> tuple:
    for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if tag not in ds:
            raise ValueError(f"{file!r} has no {tag}: slices cannot be placed in space")
    pixels = _values(
        ds, np.asarray(ds.pixel_array), float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    )
    return (
        file,
        np.asarray(ds.ImagePositionPatient, dtype=np.float64),
        np.asarray(ds.ImageOrientationPatient, dtype=np.float64),
        pixels,
        float(ds.get("SliceThickness", 0) or 0),
        tuple(float(v) for v in ds.PixelSpacing),
    )


def _frames(file: str, ds: Any) -> list[tuple]:
    """The frames of an enhanced multi-frame file, each with its own position (per-frame functional groups)."""
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None:
        raise ValueError(f"{file!r} has several frames but no PerFrameFunctionalGroupsSequence: they cannot be placed")
    frames = np.asarray(ds.pixel_array)
    out = []
    for k, group in enumerate(per_frame):
        where = f"{file} (frame {k + 1})"
        try:
            slope = float(_find(where, (group, shared), "PixelValueTransformationSequence", "RescaleSlope"))
            intercept = float(_find(where, (group, shared), "PixelValueTransformationSequence", "RescaleIntercept"))
        except ValueError:
            slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        try:
            thickness = float(_find(where, (group, shared), "PixelMeasuresSequence", "SliceThickness"))
        except ValueError:
            thickness = 0.0
        out.append((
            where,
            np.asarray(_find(where, (group, shared), "PlanePositionSequence", "ImagePositionPatient"), np.float64),
            np.asarray(_find(where, (group, shared), "PlaneOrientationSequence", "ImageOrientationPatient"), np.float64),
            _values(ds, frames[k], slope, intercept),
            thickness,
            tuple(float(v) for v in _find(where, (group, shared), "PixelMeasuresSequence", "PixelSpacing")),
        ))  # fmt: skip
    return out


def _find(where: str, groups: tuple, sequence: str, tag: str) -> Any:
    """`tag` of the first item of `sequence` in the frame's own functional groups, else in the shared ones."""
    for source in groups:
        if source is not None and sequence in source and tag in source[sequence][0]:
            return source[sequence][0][tag].value
    raise ValueError(f"{where!r} has no {sequence} {tag}: it cannot be placed in space")


def _values(ds: Any, stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Stored pixel values as MONOCHROME2 (MONOCHROME1 inverted within its bits), rescaled if asked."""
    pixels = stored
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        bits = int(ds.get("BitsStored", pixels.dtype.itemsize * 8))
        if pixels.dtype.kind == "u":
            pixels = ((1 << bits) - 1 - pixels.astype(np.int64)).astype(pixels.dtype)
        else:
            pixels = (-1 - pixels.astype(np.int64)).astype(pixels.dtype)
    if slope != 1 or intercept != 0:
        return pixels.astype(np.float64) * slope + intercept
    return pixels
