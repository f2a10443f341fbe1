"""Synthetic volumes written in a test's folder: NIfTI with non-trivial orientation, DICOM series, TIFF stacks.

Coordinate volumes encode their own voxels: a 3-channel scan holds each stored
voxel's `(i, j, k)` as floats (trilinear resampling of it gives exactly the
source coordinate sampled) and its label volume `i * 10000 + j * 100 + k`
(nearest resampling gives the nearest source voxel's), so a scan and labels
that stay aligned agree within half a voxel on every axis, wherever they end up.
"""

from __future__ import annotations

import os

import numpy as np

# A scan stored with i moving Left 2 mm, j Superior 1.5 mm, k Posterior 1 mm (nothing like RAS).
TILTED = np.array([[-2.0, 0, 0, 10], [0, 0, -1.0, -5], [0, 1.5, 0, 3], [0, 0, 0, 1]])


def coordinate_volumes(shape):
    """`(scan, labels)`: the scan `(I, J, K, 3)` float32 holds `(i, j, k)`; labels encode it as one int32."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return np.stack([i, j, k], -1).astype(np.float32), (i * 10000 + j * 100 + k).astype(np.int32)


def decode_labels(labels):
    """The `(i, j, k)` a coordinate label volume holds, on a last axis."""
    labels = np.asarray(labels)
    return np.stack([labels // 10000, (labels // 100) % 100, labels % 100], -1)


def write_nifti(path, voxels, affine=TILTED):
    import nibabel

    nibabel.save(nibabel.Nifti1Image(voxels, affine), str(path))
    return str(path)


def write_coordinate_pairs(folder, n, shape=(12, 14, 10), affine=TILTED):
    """`n` coordinate scans and label volumes as `.nii.gz`; volume v is `v` voxels longer on its first axis."""
    os.makedirs(folder, exist_ok=True)
    scans, labels = [], []
    for v in range(n):
        scan, label = coordinate_volumes((shape[0] + v,) + tuple(shape[1:]))
        scans.append(write_nifti(os.path.join(folder, f"scan_{v:03d}.nii.gz"), scan, affine))
        labels.append(write_nifti(os.path.join(folder, f"label_{v:03d}.nii.gz"), label, affine))
    return scans, labels


def write_blob_pairs(folder, n, shape=(16, 16, 16), empty=()):
    """Scans with a bright cube and label volumes marking it 1 (volumes in `empty` have none); RAS affine."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(7)
    scans, labels = [], []
    for v in range(n):
        label = np.zeros(shape, np.uint8)
        if v not in empty:
            corner = rng.integers(0, np.array(shape) - 4)
            label[tuple(slice(c, c + 4) for c in corner)] = 1
        scan = (label * 100 + rng.normal(0, 5, shape)).astype(np.float32)
        scans.append(write_nifti(os.path.join(folder, f"scan_{v:03d}.nii.gz"), scan, np.eye(4)))
        labels.append(write_nifti(os.path.join(folder, f"label_{v:03d}.nii.gz"), label, np.eye(4)))
    return scans, labels


def write_dicom_series(folder, pixels, *, spacing=(0.8, 0.6), thickness=2.5, origin=(10.0, -20.0, 5.0), slope=1.0,
                       intercept=0.0, orientation=(1, 0, 0, 0, 1, 0), shuffle_files=True, offsets=None,
                       orientations=None, photometric="MONOCHROME2", bits_stored=16):  # fmt: skip
    """One DICOM file per slice of `pixels` `(S, rows, cols)` uint16, in shuffled file order; positions along z.

    `offsets`: each slice's distance from `origin` along the normal, in mm (default: `thickness` apart);
    `orientations`: each slice's own `ImageOrientationPatient` (default: `orientation` for all)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder, exist_ok=True)
    series = generate_uid()
    row, col = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row, col)
    order = np.random.default_rng(3).permutation(len(pixels)) if shuffle_files else np.arange(len(pixels))
    for name, s in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.Modality = "CT"
        ds.Rows, ds.Columns = pixels.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
        ds.PixelSpacing = list(spacing)
        ds.SliceThickness = thickness
        ds.ImageOrientationPatient = list(orientation if orientations is None else orientations[s])
        offset = thickness * s if offsets is None else offsets[s]
        ds.ImagePositionPatient = [float(v) for v in np.array(origin) + normal * offset]
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = np.ascontiguousarray(pixels[s], dtype="<u2").tobytes()
        ds.save_as(os.path.join(folder, f"IM{name:04d}.dcm"), enforce_file_format=True)
    return str(folder)


def write_enhanced_dicom(path, pixels, offsets, *, spacing=(0.8, 0.6), origin=(10.0, -20.0, 5.0)):
    """One enhanced multi-frame DICOM file: frame k of `pixels` `(F, rows, cols)` uint16 at `offsets[k]` mm
    along z from `origin`, its position in its own per-frame functional group; spacing and orientation shared."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.NumberOfFrames = len(pixels)
    ds.Rows, ds.Columns = pixels.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0

    def item(**tags):
        entry = Dataset()
        for name, value in tags.items():
            setattr(entry, name, value)
        return entry

    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([item(PixelSpacing=list(spacing), SliceThickness=1.0)])
    shared.PlaneOrientationSequence = Sequence([item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for offset in offsets:
        group = Dataset()
        position = [float(origin[0]), float(origin[1]), float(origin[2] + offset)]
        group.PlanePositionSequence = Sequence([item(ImagePositionPatient=position)])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return os.path.dirname(str(path))
