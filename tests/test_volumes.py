"""Volumes: readers (NIfTI, DICOM, TIFF, npy, npz), orientation, resampling, intensity, volume fields."""

from __future__ import annotations

import builtins
import os

import numpy as np
import pytest
from PIL import Image
from volume_data import (
    TILTED,
    coordinate_volumes,
    decode_labels,
    write_coordinate_pairs,
    write_dicom_series,
    write_nifti,
)

from keras_sepseq.field_sequence import FieldSequence
from keras_sepseq.volume_fields import LabelVolumeField, VolumeField
from keras_sepseq.volumes import apply_intensity, read_volume, resample, to_canonical, volume_format

nibabel = pytest.importorskip("nibabel")


def nibabel_canonical(path):
    """nibabel's own reorientation, in our (D, H, W) = reversed (x, y, z) layout: the reference."""
    image = nibabel.as_closest_canonical(nibabel.load(path))
    data = np.asarray(image.dataobj)
    return np.transpose(data, (2, 1, 0) + tuple(range(3, data.ndim))), nibabel.affines.voxel_sizes(image.affine)[::-1]


@pytest.mark.parametrize(
    "affine",
    [
        pytest.param(TILTED, id="permuted and flipped"),
        pytest.param(np.diag([1.0, 1.0, 1.0, 1.0]), id="already RAS"),
        pytest.param(np.array([[0, 0, -3.0, 0], [0.2, -1.0, 0, 0], [2.0, 0.1, 0, 0], [0, 0, 0, 1]]), id="oblique"),
    ],
)
def test_orientation_matches_nibabel_as_closest_canonical(tmp_path, affine):
    voxels = np.random.default_rng(0).integers(0, 1000, (5, 6, 7)).astype(np.int16)
    path = write_nifti(tmp_path / "scan.nii.gz", voxels, affine)
    volume, spacing = to_canonical(*read_volume(path))
    expected, sizes = nibabel_canonical(path)
    assert volume.shape == expected.shape and volume.dtype == np.int16
    np.testing.assert_array_equal(volume, expected)
    np.testing.assert_allclose(spacing, sizes)


def test_nifti_scaling_vector_voxels_and_nifti_from_bytes(tmp_path):
    voxels = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    image = nibabel.Nifti1Image(voxels, np.eye(4))
    image.header.set_slope_inter(2.0, -10.0)
    nibabel.save(image, tmp_path / "scaled.nii")
    data, affine = read_volume(str(tmp_path / "scaled.nii"))
    np.testing.assert_allclose(data, voxels * 2.0 - 10.0)
    vector = np.zeros((2, 3, 4, 1, 2), np.float32)
    vector[..., 0, 1] = 5
    nibabel.save(nibabel.Nifti1Image(vector, np.eye(4)), tmp_path / "vector.nii.gz")
    data, _ = read_volume(str(tmp_path / "vector.nii.gz"))
    assert data.shape == (2, 3, 4, 2) and data[..., 1].min() == 5


def test_dicom_series_is_sorted_by_position_rescaled_and_oriented(tmp_path):
    pytest.importorskip("pydicom")
    s, r, c = np.meshgrid(np.arange(4), np.arange(5), np.arange(6), indexing="ij")
    stored = (s * 100 + r * 10 + c).astype(np.uint16)  # (slice, row, column)
    folder = write_dicom_series(tmp_path / "series", stored, slope=2.0, intercept=-1024.0)
    voxels, affine = read_volume(folder)
    np.testing.assert_array_equal(voxels, stored * 2.0 - 1024.0)  # files were shuffled: sorted back by position
    volume, spacing = to_canonical(voxels, affine)
    # Axial LPS: columns run to the patient's Left, rows to Posterior, slices Superior; RAS flips the first two.
    np.testing.assert_array_equal(volume, (stored * 2.0 - 1024.0)[:, ::-1, ::-1])
    np.testing.assert_allclose(spacing, (2.5, 0.8, 0.6))
    np.testing.assert_allclose(affine[:3, 3], [-10.0, 20.0, 5.0])  # the first slice's corner, in RAS


def test_sagittal_dicom_series_turns_to_ras(tmp_path):
    """Rows run Inferior, columns Posterior, slices Right: (D, H, W) = (S, A, R) flips rows and columns, moves slices last."""
    pytest.importorskip("pydicom")
    s, r, c = np.meshgrid(np.arange(3), np.arange(4), np.arange(5), indexing="ij")
    stored = (s * 100 + r * 10 + c).astype(np.uint16)
    folder = write_dicom_series(tmp_path / "sagittal", stored, orientation=(0, 1, 0, 0, 0, -1), spacing=(0.5, 0.7))
    volume, spacing = to_canonical(*read_volume(folder))
    assert volume.shape == (4, 5, 3)
    expected = np.transpose(stored, (1, 2, 0))[
        ::-1, ::-1, :
    ]  # d <- rows (reversed), h <- columns (reversed), w <- slices
    np.testing.assert_array_equal(volume, expected)
    np.testing.assert_allclose(spacing, (0.5, 0.7, 2.5))


def test_dicom_series_errors_name_the_file(tmp_path):
    pytest.importorskip("pydicom")
    folder = write_dicom_series(tmp_path / "series", np.zeros((3, 4, 4), np.uint16), shuffle_files=False)
    (tmp_path / "series" / "notes.txt").write_text("not dicom")
    with pytest.raises(ValueError, match=r"notes\.txt.* is not a DICOM file"):
        read_volume(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no DICOM image"):
        read_volume(str(empty))


@pytest.mark.parametrize("ending", [".tif", ".npy", ".npz"])
def test_arrays_without_a_header_are_taken_as_stored(tmp_path, ending):
    stack = (np.arange(3 * 4 * 5).reshape(3, 4, 5) * 1000).astype(np.uint16)  # 16-bit microscopy pages
    path = str(tmp_path / f"stack{ending}")
    if ending == ".tif":
        pages = [Image.fromarray(page) for page in stack]
        pages[0].save(path, save_all=True, append_images=pages[1:])
    elif ending == ".npy":
        np.save(path, stack)
    else:
        np.savez(path, stack=stack)
    voxels, affine = read_volume(path)
    volume, spacing = to_canonical(voxels, affine)
    assert volume.dtype == np.uint16 and spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(volume, stack)


def test_npz_with_several_arrays_needs_a_key(tmp_path):
    path = str(tmp_path / "two.npz")
    np.savez(path, image=np.zeros((2, 2, 2)), mask=np.ones((2, 2, 2)))
    with pytest.raises(ValueError, match=r"holds 2 arrays \['image', 'mask'\]: pass `npz_key`"):
        read_volume(path)
    assert read_volume(path, npz_key="mask")[0].sum() == 8
    with pytest.raises(ValueError, match="no array 'scan'"):
        read_volume(path, npz_key="scan")


@pytest.mark.parametrize(
    "name, message",
    [
        ("scan.png", r"'.*scan\.png' is not a volume this reader knows"),
        ("flat.npy", r"expected a 3-D volume .* shape \(4, 4\)"),
        ("empty.nii", r"empty \(0 bytes\)"),
        ("junk.nii.gz", "not a NIfTI"),
    ],
    ids=["unknown ending", "2-D array", "empty file", "not nifti"],
)
def test_bad_volumes_are_refused_with_a_reason(tmp_path, name, message):
    path = tmp_path / name
    if name == "flat.npy":
        np.save(path, np.zeros((4, 4)))
    elif name == "junk.nii.gz":
        import gzip

        path.write_bytes(gzip.compress(b"x" * 400))
    else:
        path.write_bytes(b"")
    with pytest.raises(ValueError, match=message):
        read_volume(str(path))


def test_missing_reader_names_the_extra(tmp_path, monkeypatch):
    path = write_nifti(tmp_path / "a.nii", np.zeros((2, 2, 2), np.float32), np.eye(4))
    real_import = builtins.__import__

    def no_nibabel(name, *args, **kwargs):
        if name == "nibabel":
            raise ImportError("No module named 'nibabel'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nibabel)
    with pytest.raises(ImportError, match=r"pip install 'keras-sepseq\[nifti\]'"):
        read_volume(path)


@pytest.mark.parametrize(
    "geometry",
    [dict(), dict(spacing=(1.3, 1.1, 0.7)), dict(spacing=(3.0, 2.0, 4.0)), dict(shape=(11, 13, 17))],
    ids=["native", "finer spacing", "coarser spacing", "fixed shape"],
)
def test_scan_and_label_volume_stay_aligned_voxel_for_voxel(tmp_path, geometry):
    scans, labels = write_coordinate_pairs(tmp_path, 1)
    scan = VolumeField(scans, **geometry).read(scans[0])
    label = LabelVolumeField(labels, **geometry).read(labels[0])
    assert scan.shape[:3] == label.shape and scan.shape[3] == 3
    assert label.dtype == np.int32 and scan.dtype == np.float32
    # Trilinear gives the exact source coordinate, nearest the closest source voxel: within half a voxel.
    assert np.abs(scan - decode_labels(label)).max() <= 0.5 + 1e-4
    stored = set(coordinate_volumes((12, 14, 10))[1].ravel().tolist())
    assert set(np.unique(label).tolist()) <= stored  # nearest never makes up a value


def test_spacing_gives_the_voxel_count_of_the_extent():
    volume = np.zeros((10, 20, 30), np.float32)
    assert resample(volume, (2.0, 1.0, 0.5), to_spacing=(1.0, 1.0, 1.0)).shape == (19, 20, 15)
    assert resample(volume, (1, 1, 1), shape=(5, 40, 30)).shape == (5, 40, 30)
    with pytest.raises(ValueError, match="either `to_spacing` or `shape`"):
        resample(volume, (1, 1, 1))


def test_intensity_window_and_normalisation():
    ct = np.array([-3000.0, -1000.0, 0.0, 1000.0, 3000.0], np.float32)
    np.testing.assert_allclose(apply_intensity(ct, window=(-1000, 1000), normalize=None), [0, 0, 0.5, 1, 1])
    z = apply_intensity(ct, window=None, normalize="zscore")
    assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-6 and z.dtype == np.float32
    assert apply_intensity(np.full(4, 7.0, np.float32), window=None, normalize="zscore").tolist() == [0.0] * 4
    np.testing.assert_allclose(apply_intensity(ct, window=None, normalize="minmax"), [0, 1 / 3, 0.5, 2 / 3, 1])


def test_volume_field_batches_for_conv3d(tmp_path):
    paths = [write_nifti(tmp_path / f"{i}.nii.gz", np.full((6, 7, 8), i * 500.0, np.float32)) for i in range(3)]
    labels = [write_nifti(tmp_path / f"{i}_seg.nii.gz", np.full((6, 7, 8), i, np.uint8)) for i in range(3)]
    geometry = dict(shape=(4, 4, 4))
    seq = FieldSequence(
        VolumeField(paths, window=(0, 1000), **geometry),
        LabelVolumeField(labels, num_classes=3, **geometry),
        batch_size=3,
        shuffle=False,
    )
    x, y = seq[0]
    assert x.shape == (3, 4, 4, 4, 1) and x.dtype == np.float32
    assert y.shape == (3, 4, 4, 4) and y.dtype == np.int32
    np.testing.assert_allclose(x[:, 0, 0, 0, 0], [0, 0.5, 1])
    assert y[:, 0, 0, 0].tolist() == [0, 1, 2]
    spec = seq.output_signature()
    assert tuple(spec[0].shape) == (None, 4, 4, 4, 1) and tuple(spec[1].shape) == (None, 4, 4, 4)


def test_a_stray_label_is_refused_before_resampling_could_skip_it(tmp_path):
    labels = np.zeros((8, 8, 8), np.uint8)
    labels[1, 1, 1] = 7  # a shape of (2, 2, 2) samples voxels (2, 2, 2)... by nearest neighbour: never this one
    path = write_nifti(tmp_path / "stray_seg.nii.gz", labels, np.eye(4))
    assert LabelVolumeField([path], num_classes=8, shape=(2, 2, 2)).read(path).shape == (2, 2, 2)
    with pytest.raises(ValueError, match=r"^the label volume holds class values outside 0\.\.2: 7 \(1 voxel\)$"):
        LabelVolumeField([path], num_classes=3, shape=(2, 2, 2)).read(path)


def test_label_volume_rules_name_the_file(tmp_path):
    def write(name, values, dtype):
        return write_nifti(tmp_path / name, np.array(values, dtype).reshape(1, 1, 3), np.eye(4))

    bad, half, fine = (
        write("bad_seg.nii.gz", [0, 1, 7], np.uint8),
        write("half_seg.nii.gz", [0, 0.5, 1], np.float32),
        write("fine_seg.nii.gz", [0, 255, 1], np.uint8),
    )
    field = LabelVolumeField([bad, half, fine], num_classes=3, ignore_index=255)
    with pytest.raises(ValueError, match=r"class values outside 0..2 or ignore_index=255: 7"):
        field.read(bad)
    with pytest.raises(ValueError, match=r"not class ids: \[0.5\]"):
        field.read(half)
    assert field.read(fine).ravel().tolist() == [0, 255, 1]
    seq = FieldSequence(VolumeField([bad, half, fine]), field, batch_size=1, shuffle=False, on_error="skip")
    for i in range(3):
        seq[i]
    assert sorted(os.path.basename(e.path) for e in seq.errors) == ["bad_seg.nii.gz", "half_seg.nii.gz"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(spacing=(1, 1)), r"`spacing` must be None or three numbers"),
        (dict(shape=(4, 0, 4)), r"`shape` must be None or three numbers"),
        (dict(spacing=(1, 1, 1), shape=(4, 4, 4)), "give `spacing` or `shape`, not both"),
        (dict(window=(5, 1)), r"`window` must be None or \(low, high\) with low < high"),
        (dict(normalize="z"), "`normalize` must be None, 'zscore' or 'minmax'"),
    ],
    ids=["spacing pair", "shape zero", "both", "window reversed", "unknown normalize"],
)
def test_volume_field_arguments_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VolumeField(["a.nii"], **kwargs)


def test_unknown_volume_keyword_names_the_closest():
    with pytest.raises(TypeError, match=r"'spacng' \(did you mean 'spacing'\?\)"):
        LabelVolumeField(["a.nii"], spacng=(1, 1, 1))


def test_volume_format_by_ending_and_folder(tmp_path):
    assert volume_format("s3://bucket/a.NII.GZ") == "nifti"
    assert volume_format(str(tmp_path)) == "dicom"
