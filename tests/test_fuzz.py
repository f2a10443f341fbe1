"""Damaged files: truncated and bit-flipped PNG, JPEG, TIFF, .npy, NIfTI and DICOM, through the public sequences.

Every case must give either an array of the right shape or a `SampleError` naming the file: never another
exception, a crash or a hang (each case has a deadline). A bounded number of cases per format runs in CI;
`KERAS_SEPSEQ_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz.py` runs more.
"""

from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import pytest
from conftest import npy_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import keras_sepseq as ks
from keras_sepseq.errors import SampleError

EXAMPLES = int(os.environ.get("KERAS_SEPSEQ_FUZZ_EXAMPLES", "30"))
FUZZ = settings(max_examples=EXAMPLES, deadline=5000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def damage(draw, data: bytes) -> bytes:
    """`data` truncated somewhere, or with up to 8 bits flipped, or both."""
    out = bytearray(data)
    how = draw(st.sampled_from(["truncate", "flip", "both"]))
    if how in ("truncate", "both"):
        out = out[: draw(st.integers(0, len(out) - 1))]
    if how in ("flip", "both") and out:
        for _ in range(draw(st.integers(1, 8))):
            out[draw(st.integers(0, len(out) - 1))] ^= 1 << draw(st.integers(0, 7))
    return bytes(out)


def picture(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def outcome(load, path: str, check) -> None:
    """Runs `load()`; a `SampleError` must name `path`, anything else returned must pass `check`."""
    try:
        result = load()
    except SampleError as e:
        assert e.path is not None and os.path.basename(path) in str(e.path), e
        return
    check(result)


@pytest.mark.parametrize(
    "fmt, ending", [("PNG", ".png"), ("JPEG", ".jpg"), ("TIFF", ".tif")], ids=["png", "jpeg", "tiff"]
)
def test_damaged_images_give_pixels_of_the_right_shape_or_name_the_file(fmt, ending):
    original = picture(fmt)

    @FUZZ
    @given(data=damage(original))
    def case(data):
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, f"image{ending}")
            with open(path, "wb") as f:
                f.write(data)
            seq = ks.SeparatedSequence([path], [0], batch_size=1, image_size=(16, 16), shuffle=False)

            def check(batch):
                x, y = batch
                assert x.shape == (1, 16, 16, 3) and x.dtype == np.float32 and np.isfinite(x).all()

            outcome(lambda: seq[0], path, check)

    case()


def test_damaged_npy_labels_give_their_shape_or_name_the_file():
    original = npy_bytes(np.arange(10, dtype=np.int64))
    image = picture("PNG")

    @FUZZ
    @given(data=damage(original))
    def case(data):
        with tempfile.TemporaryDirectory() as folder:
            image_path, label_path = os.path.join(folder, "a.png"), os.path.join(folder, "a.npy")
            with open(image_path, "wb") as f:
                f.write(image)
            with open(label_path, "wb") as f:
                f.write(data)
            seq = ks.SeparatedSequence([image_path], [label_path], batch_size=1, image_size=(8, 8), shuffle=False)

            def check(batch):
                _, y = batch
                assert y.shape == (1, 10) and y.dtype.itemsize == 8  # what the file's header says, whole

            outcome(lambda: seq[0], label_path, check)

    case()


def test_damaged_nifti_volumes_give_a_volume_or_name_the_file():
    nibabel = pytest.importorskip("nibabel")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "scan.nii")
        voxels = np.random.default_rng(1).normal(size=(6, 5, 4)).astype(np.float32)
        nibabel.save(nibabel.Nifti1Image(voxels, np.eye(4)), path)
        with open(path, "rb") as f:
            original = f.read()

    @FUZZ
    @given(data=damage(original))
    def case(data):
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "scan.nii")
            with open(path, "wb") as f:
                f.write(data)
            seq = ks.FieldSequence(ks.VolumeField([path], shape=(4, 4, 4)), batch_size=1, shuffle=False)

            def check(batch):
                x = batch[0] if isinstance(batch, tuple) else batch
                assert x.shape[:4] == (1, 4, 4, 4) and x.dtype == np.float32

            outcome(lambda: seq[0], path, check)

    case()


def test_damaged_dicom_slices_give_a_volume_or_name_the_series():
    pytest.importorskip("pydicom")
    from volume_data import write_dicom_series

    with tempfile.TemporaryDirectory() as folder:
        series = write_dicom_series(
            os.path.join(folder, "s"), np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5), shuffle_files=False
        )
        originals = {name: open(os.path.join(series, name), "rb").read() for name in sorted(os.listdir(series))}
    victim = sorted(originals)[1]

    @FUZZ
    @given(data=damage(originals[victim]))
    def case(data):
        with tempfile.TemporaryDirectory() as folder:
            series = os.path.join(folder, "series")
            os.makedirs(series)
            for name, content in originals.items():
                with open(os.path.join(series, name), "wb") as f:
                    f.write(data if name == victim else content)
            seq = ks.FieldSequence(ks.VolumeField([series]), batch_size=1, shuffle=False)

            def check(batch):
                x = batch[0] if isinstance(batch, tuple) else batch
                assert x.shape[:4] in ((1, 3, 4, 5), (1, 2, 4, 5)) and x.dtype == np.float32

            outcome(lambda: seq[0], series, check)

    case()
