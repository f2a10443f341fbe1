"""keras_sepseq.dicom: a series is placed by each slice's own position; geometry that is not one even grid is refused.

Series are written with pydicom in `tmp_path` (tests/volume_data.py) and checked by voxel positions, not only
shapes: the affine applied to a voxel index must give the position of the slice it came from.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from volume_data import write_dicom_series, write_enhanced_dicom

from keras_sepseq.errors import SampleError
from keras_sepseq.field_sequence import FieldSequence
from keras_sepseq.volume_fields import LabelVolumeField, VolumeField
from keras_sepseq.volumes import read_volume

pytest.importorskip("pydicom")


def z_of_slices(affine: np.ndarray, count: int) -> list[float]:
    """The RAS z of the first voxel of each slice (axial series: z is Superior, unchanged from LPS)."""
    return [float((affine @ np.array([k, 0, 0, 1.0]))[2]) for k in range(count)]


def slices_by_value(offsets) -> np.ndarray:
    """Slice k holds 10 * its offset in mm everywhere (so interpolated slices tell where they are)."""
    return np.stack([np.full((3, 4), int(round(10 * z)), np.uint16) for z in offsets])


@pytest.mark.parametrize(
    "offsets, gap, median",
    [
        ([0.0, 202.5, 203.8, 205.0], "202.50", "1.30"),  # the CT series of the issue, from z = -99.5
        ([0.0, 2.5, 5.0, 10.0, 12.5], "5.00", "2.50"),  # slice 4 of 6 missing
        ([0.0, 2.5, 5.1, 7.5], "2.60", "2.50"),  # 4% off
    ],
    ids=["uneven-ct", "missing-slice", "four-percent"],
)
def test_uneven_slices_are_refused_naming_folder_positions_and_gap(tmp_path, offsets, gap, median):
    folder = write_dicom_series(tmp_path / "series", slices_by_value(offsets), offsets=offsets, origin=(0, 0, -99.5))
    with pytest.raises(ValueError) as caught:
        read_volume(folder)
    message = str(caught.value)
    assert message.startswith(f"the DICOM series {folder!r} is not evenly spaced: slices at -99.50, ")
    assert f"the largest gap is {gap} mm between" in message and f"the median step {median} mm" in message
    assert message.endswith("Pass uneven_slices='resample' to interpolate onto an even grid.")


def test_spacing_within_the_tolerance_is_one_grid(tmp_path):
    offsets = [0.0, 2.5, 5.01, 7.5, 10.0]  # 0.4% off: scanners round positions
    folder = write_dicom_series(tmp_path / "series", slices_by_value(offsets), offsets=offsets, origin=(0, 0, 0))
    voxels, affine = read_volume(folder)
    assert voxels.shape == (5, 3, 4)
    np.testing.assert_allclose(z_of_slices(affine, 5), [0, 2.5, 5.0, 7.5, 10.0])


def test_resampling_places_every_slice_at_its_true_position(tmp_path):
    offsets = [0.0, 2.5, 5.0, 10.0, 12.5]  # one slice missing at 7.5
    folder = write_dicom_series(tmp_path / "series", slices_by_value(offsets), offsets=offsets, origin=(0, 0, 0))
    voxels, affine = read_volume(folder, uneven_slices="resample")
    assert voxels.shape == (6, 3, 4) and voxels.dtype == np.float32
    np.testing.assert_allclose(z_of_slices(affine, 6), [0, 2.5, 5.0, 7.5, 10.0, 12.5])
    # Each slice holds 10 x its z: the one made at 7.5 mm is interpolated between 5.0 and 10.0.
    np.testing.assert_allclose(voxels[:, 0, 0], [0, 25, 50, 75, 100, 125])
    labels, label_affine = read_volume(folder, uneven_slices="resample", nearest=True)
    np.testing.assert_array_equal(label_affine, affine)  # a label volume lands on the scan's grid
    assert labels[:, 0, 0].tolist() == [0, 25, 50, 100, 100, 125]  # 7.5 mm is as near 10.0 as 5.0: the later


def test_fields_take_the_option_and_share_one_grid(tmp_path):
    offsets = [0.0, 2.5, 5.0, 10.0]
    scans = write_dicom_series(tmp_path / "scan", slices_by_value(offsets), offsets=offsets, origin=(0, 0, 0))
    labels = write_dicom_series(tmp_path / "labels", np.ones((4, 3, 4), np.uint16), offsets=offsets, origin=(0, 0, 0))
    with pytest.raises(SampleError, match=r"sample 0, file '.*scan': cannot load volume .*is not evenly spaced"):
        FieldSequence(VolumeField([scans]), batch_size=1)[0]
    seq = FieldSequence(
        VolumeField([scans], uneven_slices="resample"),
        LabelVolumeField([labels], uneven_slices="resample", num_classes=2),
        batch_size=1,
    )
    x, y = seq[0]
    assert x.shape[1:4] == y.shape[1:4] == (5, 3, 4)  # 5 even slices, on one grid
    with pytest.raises(
        ValueError, match=r"`uneven_slices` must be one of \[.error., .resample.\]. Received: uneven_slices='maybe'"
    ):
        VolumeField([scans], uneven_slices="maybe")


def test_mixed_orientations_are_refused_naming_both_files(tmp_path):
    orientations = [(1, 0, 0, 0, 1, 0)] * 2 + [(1, 0, 0, 0, 0.9, 0.43589)]
    folder = write_dicom_series(
        tmp_path / "series", np.zeros((3, 3, 4), np.uint16), orientations=orientations, shuffle_files=False
    )
    with pytest.raises(
        ValueError,
        match=r"mixes slice orientations: '.*IM0000\.dcm' has \[1\.0, 0\.0, 0\.0, 0\.0, 1\.0, 0\.0\], '.*IM0002\.dcm' has",
    ):
        read_volume(folder)


def test_monochrome1_is_inverted_within_its_bits(tmp_path):
    stored = np.array([[[0, 100], [4000, 4095]]] * 2, np.uint16)
    folder = write_dicom_series(tmp_path / "m1", stored, photometric="MONOCHROME1", bits_stored=12)
    voxels, _ = read_volume(folder)
    np.testing.assert_array_equal(voxels, 4095 - stored)  # minimum shown white: high values are bright now
    scaled = write_dicom_series(
        tmp_path / "m1s", stored, photometric="MONOCHROME1", bits_stored=12, slope=2.0, intercept=-10.0
    )
    np.testing.assert_allclose(read_volume(scaled)[0], (4095 - stored) * 2.0 - 10.0)  # inverted, then rescaled


def test_enhanced_multiframe_files_use_each_frame_position(tmp_path):
    offsets = [5.0, 0.0, 2.5, 7.5]  # stored out of order
    frames = slices_by_value(offsets)
    folder = write_enhanced_dicom(tmp_path / "enhanced" / "ct.dcm", frames, offsets)
    voxels, affine = read_volume(folder)
    assert voxels[:, 0, 0].tolist() == [0, 25, 50, 75]  # sorted by position
    np.testing.assert_allclose(z_of_slices(affine, 4), [5.0, 7.5, 10.0, 12.5])  # origin z = 5.0
    uneven = write_enhanced_dicom(tmp_path / "uneven" / "ct.dcm", slices_by_value([0, 1, 4]), [0.0, 1.0, 4.0])
    with pytest.raises(ValueError, match=re.escape("ct.dcm (frame 2)") + r".* and .*" + re.escape("ct.dcm (frame 3)")):
        read_volume(uneven)


def test_validate_reports_an_uneven_series_by_name(tmp_path):
    offsets = [0.0, 2.5, 5.0, 10.0]
    bad = write_dicom_series(tmp_path / "bad", slices_by_value(offsets), offsets=offsets, origin=(0, 0, 0))
    good = write_dicom_series(tmp_path / "good", slices_by_value([0, 2.5, 5, 7.5]), offsets=[0, 2.5, 5, 7.5])
    report = FieldSequence(VolumeField([good, bad]), batch_size=1).validate()
    assert [e.index for e in report.bad] == [1]
    assert "is not evenly spaced" in report.bad[0].reason and "largest gap is 5.00 mm" in report.bad[0].reason
