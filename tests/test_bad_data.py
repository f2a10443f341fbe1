"""Bad files, the error policy (raise or skip), retries and validate()."""

import os
import shutil
import struct
import warnings
import zlib

import numpy as np
import pytest
from conftest import decode_index, index_image, write_indexed_dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from keras_sepseq import SampleError, SeparatedSequence, ShapeMismatchError
from keras_sepseq.errors import TooManyErrorsError

N = 8
BAD = 3


class Payload:
    """Unpickling this would create a file: proof that labels are never unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def png_claiming(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    )


def truncate(path, keep):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


def break_png_truncated(images, labels, tmp):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(images[BAD])
    truncate(images[BAD], 0.5)


def break_jpeg_truncated(images, labels, tmp):
    images[BAD] = images[BAD][:-4] + ".jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8)).save(images[BAD], quality=95)
    truncate(images[BAD], 0.5)


def break_pickled_label(images, labels, tmp):
    np.save(labels[BAD], np.array([Payload(str(tmp / "PWNED"))], dtype=object), allow_pickle=True)


def replace_with_folder(path):
    os.remove(path)
    os.mkdir(path)


BREAKAGES = [
    pytest.param(lambda i, lb, t: open(i[BAD], "wb").close(), "image", "the file is empty", id="zero-byte image"),
    pytest.param(
        lambda i, lb, t: open(i[BAD], "wb").write(os.urandom(300)),
        "image",
        "not an image that Pillow or imageio can decode",
        id="random bytes named .png",
    ),
    pytest.param(break_png_truncated, "image", "(?i)truncated", id="truncated PNG"),
    pytest.param(break_jpeg_truncated, "image", "(?i)truncated", id="truncated JPEG"),
    pytest.param(
        lambda i, lb, t: open(lb[BAD], "w").write("label: 3\n" * 20),
        "label",
        r"not a .npy file: it starts with b'label:'",
        id="text file named .npy",
    ),
    pytest.param(lambda i, lb, t: truncate(lb[BAD], 0.9), "label", "cannot load label", id="truncated .npy"),
    pytest.param(
        break_pickled_label,
        "label",
        r"holds Python objects \(pickled data\), which are never unpickled",
        id="pickled object array",
    ),
    pytest.param(lambda i, lb, t: os.remove(lb[BAD]), "label", "FileNotFoundError", id="missing label file"),
    pytest.param(
        lambda i, lb, t: os.remove(i[BAD]), "image", "FileNotFoundError", id="image deleted after construction"
    ),
    pytest.param(lambda i, lb, t: replace_with_folder(i[BAD]), "image", "IsADirectoryError", id="image unreadable"),
    pytest.param(
        lambda i, lb, t: open(i[BAD], "wb").write(png_claiming(100_000, 100_000)),
        "image",
        r"claims 100000x100000 = 10,000,000,000 pixels, over the limit of 89,478,485 \(max_image_pixels",
        id="decompression bomb header",
    ),
]


@pytest.fixture
def files(tmp_path):
    return write_indexed_dataset(tmp_path / "dir with space" / "ünïcødé", N)


def broken(files, tmp_path, breakage):
    images, labels = list(files[0]), list(files[1])
    breakage(images, labels, tmp_path)
    return images, labels


@pytest.mark.parametrize("breakage, side, reason", BREAKAGES)
@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_raise_names_file_index_and_reason(files, tmp_path, breakage, side, reason, processes):
    images, labels = broken(files, tmp_path, breakage)
    seq = SeparatedSequence(images, labels, batch_size=N, shuffle=False, workers=2, use_multiprocessing=processes)
    with pytest.raises(SampleError) as info:
        seq[0]
    bad = images[BAD] if side == "image" else labels[BAD]
    assert info.value.index == BAD and info.value.path == bad
    assert f"sample {BAD}, file {bad!r}: cannot load {side}" in str(info.value)
    assert __import__("re").search(reason, str(info.value))
    assert not (tmp_path / "PWNED").exists()
    seq.close()


@pytest.mark.parametrize("breakage, side, reason", BREAKAGES)
def test_skip_leaves_the_bad_sample_out_and_records_it(files, tmp_path, breakage, side, reason):
    images, labels = broken(files, tmp_path, breakage)
    seq = SeparatedSequence(images, labels, batch_size=3, seed=1, on_error="skip", dtype="uint8", workers=2)
    for _ in range(2):
        served = []
        for i in range(len(seq)):
            x, y, w = seq[i]
            np.testing.assert_array_equal(decode_index(x), y)
            served.extend(y[w > 0].tolist())
        assert sorted(served) == [i for i in range(N) if i != BAD]
        with pytest.warns(UserWarning, match=r"keras_sepseq skipped 1 bad sample\(s\) this epoch \(first: 3 "):
            seq.on_epoch_end()
    [record] = seq.errors
    assert record.index == BAD and record.path == (images[BAD] if side == "image" else labels[BAD])
    assert __import__("re").search(reason, record.reason)
    assert not (tmp_path / "PWNED").exists()
    seq.close()


def test_a_label_of_another_shape_among_scalars(files):
    images, labels = files
    np.save(labels[BAD], np.zeros(3, np.int64))
    with pytest.raises(ShapeMismatchError, match=r"labels in one batch have different shapes"):
        SeparatedSequence(images, labels, batch_size=N, shuffle=False)[0]
    seq = SeparatedSequence(images, labels, batch_size=N, shuffle=False, on_error="skip")
    x, y, w = seq[0]
    assert y.shape == (N - 1,)
    [record] = seq.errors
    assert record.index == BAD
    assert "differ from" in record.reason and "those of sample 0" in record.reason


def test_the_reference_sample_can_be_given_explicitly(files):
    images, labels = files
    np.save(labels[0], np.zeros(3, np.int64))  # the first file is the odd one
    seq = SeparatedSequence(images, labels, batch_size=N, shuffle=False, on_error="skip")
    seq.set_reference(1)
    x, y, w = seq[0]
    assert [e.index for e in seq.errors] == [0] and y.shape == (N - 1,)
    with pytest.raises(ValueError, match=r"`index` must be a sample index in 0..7. Received: index=8"):
        seq.set_reference(8)


@pytest.mark.parametrize("batch_size", [1, 2, 3, N])
def test_the_same_file_is_judged_bad_in_every_batch_composition(files, batch_size):
    images, labels = files
    os.remove(images[0])  # the reference is the first sample that loads: sample 1
    np.save(labels[5], np.zeros(3, np.int64))
    seq = SeparatedSequence(images, labels, batch_size=batch_size, on_error="skip", seed=5)
    for _ in range(3):
        for i in range(len(seq)):
            seq[i]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seq.on_epoch_end()
    assert [e.index for e in seq.errors] == [0, 5]
    assert "those of sample 1" in seq.errors[1].reason


@pytest.mark.parametrize(
    "mode",
    [dict(workers=1), dict(workers=2), dict(workers=2, use_multiprocessing=True)],
    ids=["main thread", "threads", "processes"],
)
def test_a_batch_of_only_bad_samples_is_a_weightless_placeholder(files, mode):
    images, labels = files
    for k in (3, 4, 5):
        os.remove(images[k])
    seq = SeparatedSequence(images, labels, batch_size=3, shuffle=False, on_error="skip", **mode)
    x, y, w = seq[1]
    assert x.shape[0] == y.shape[0] == w.shape[0] == 1 and w.tolist() == [0.0]
    assert [e.index for e in seq.errors] == [3, 4, 5]
    seq.close()


@pytest.mark.parametrize("max_errors, bad, raises", [(2, 2, False), (2, 3, True), (0.25, 2, False), (0.25, 3, True)])
def test_max_errors_stops_with_a_clear_error(files, max_errors, bad, raises):
    images, labels = files
    for k in range(bad):
        os.remove(images[k])
    seq = SeparatedSequence(images, labels, batch_size=N, shuffle=False, on_error="skip", max_errors=max_errors)
    if raises:
        with pytest.raises(TooManyErrorsError, match=rf"{bad} of {N} samples failed, over max_errors={max_errors}"):
            seq[0]
    else:
        assert seq[0][0].shape[0] == N - bad


@pytest.mark.parametrize("value", [-1, 1.5, "3", True])
def test_bad_error_arguments(files, value):
    with pytest.raises(ValueError, match="`max_errors` must be None, a count >= 0, or a fraction"):
        SeparatedSequence(*files, on_error="skip", max_errors=value)
    with pytest.raises(ValueError, match=r"`on_error` must be one of \['raise', 'skip'\]. Received: on_error='ignore'"):
        SeparatedSequence(*files, on_error="ignore")


class Flaky(SeparatedSequence):
    """Each image fails its first read (a marker file remembers, across processes)."""

    def load_input(self, path):
        marker = path + ".tried"
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise OSError(5, "Input/output error (transient)")
        return super().load_input(path)


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_retries_get_past_a_transient_read_error(files, processes):
    seq = Flaky(*files, batch_size=N, shuffle=False, retries=1, workers=2, use_multiprocessing=processes, dtype="uint8")
    x, y = seq[0]
    np.testing.assert_array_equal(decode_index(x), np.arange(N))
    seq.close()


def test_without_retries_a_transient_error_is_raised(files):
    with pytest.raises(SampleError, match=r"cannot load image: OSError: \[Errno 5\] Input/output error"):
        Flaky(*files, batch_size=N, shuffle=False)[0]


def test_retries_give_up_and_say_so(files):
    images, labels = files
    os.remove(images[0])
    with pytest.raises(SampleError, match=r"cannot load image \(tried 3 times\): FileNotFoundError"):
        SeparatedSequence(images, labels, batch_size=N, shuffle=False, retries=2)[0]


def test_mixed_color_modes_and_an_animated_gif_are_converted_not_errors(files, tmp_path):
    images, labels = list(files[0]), files[1]
    rgb = index_image(1)
    Image.fromarray(rgb).convert("L").save(images[1])
    Image.fromarray(index_image(2)).convert("RGBA").save(images[2])
    Image.fromarray(index_image(3)).convert("P", palette=Image.Palette.ADAPTIVE).save(images[3])
    Image.fromarray(np.full((6, 5), 4000, np.uint16)).save(images[4])
    images[5] = str(tmp_path / "anim.gif")
    Image.fromarray(index_image(5)).save(images[5], save_all=True, append_images=[Image.fromarray(index_image(99))])
    x, y = SeparatedSequence(images, labels, batch_size=N, shuffle=False, dtype="uint8")[0]
    assert x.shape == (N, 6, 5, 3)
    assert decode_index(x)[[0, 2, 3, 5, 6]].tolist() == [0, 2, 3, 5, 6]  # RGBA, palette, GIF frame 0 keep the pixels
    np.testing.assert_array_equal(x[4], 4000 >> 8)  # 16-bit gray, shifted to 8 bits for dtype=uint8


def test_validate_reports_without_raising(files, tmp_path):
    images, labels = files
    os.remove(images[1])
    np.save(labels[2], np.zeros(3, np.int64))
    open(images[6], "wb").close()
    report = SeparatedSequence(images, labels).validate(progress=False)
    assert not report.ok
    assert [(b.index, os.path.basename(b.path)) for b in report.bad] == [
        (1, "image_0001.png"),
        (2, "image_0002.png"),
        (6, "image_0006.png"),
    ]
    assert "FileNotFoundError" in report.bad[0].reason and "differ from" in report.bad[1].reason
    assert report.input_shapes == {(6, 5, 3): N - 2}
    assert report.label_shapes == {(): N - 3, (3,): 1}
    assert report.label_values == {i: 1 for i in (0, 3, 4, 5, 7)}
    text = str(report)
    assert text.startswith(f"{N} samples checked: {N - 3} good, 3 bad")
    assert "bad sample 1 " in text
    assert report.to_dict()["bad"][0]["index"] == 1


def test_validate_shows_progress(files, capsys):
    SeparatedSequence(*files).validate(progress=True)
    assert f"{N}/{N}" in capsys.readouterr().out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(2, 24),
    batch_size=st.integers(1, 7),
    drop_remainder=st.booleans(),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    bad_fraction=st.floats(0, 1),
    mode=st.sampled_from(["main thread", "threads", "processes"]),
)
def test_skip_serves_every_good_sample_once_and_reports_every_bad_one(
    tmp_path_factory, n, batch_size, drop_remainder, shuffle, seed, bad_fraction, mode
):
    folder = tmp_path_factory.mktemp("prop")
    images, labels = write_indexed_dataset(folder, n)
    bad = set(np.random.default_rng(seed).choice(n, size=int(bad_fraction * n), replace=False).tolist())
    for k in bad:
        os.remove(images[k])
    batch_size = min(batch_size, n) if drop_remainder else batch_size
    if len(bad) == n:
        with pytest.raises(TooManyErrorsError, match=f"none of the {n} samples could be loaded"):
            SeparatedSequence(images, labels, batch_size, on_error="skip")[0]
        shutil.rmtree(folder, ignore_errors=True)
        return
    seq = SeparatedSequence(
        images, labels, batch_size, shuffle=shuffle, seed=seed, drop_remainder=drop_remainder, on_error="skip",
        dtype="uint8", workers=1 if mode == "main thread" else 2, use_multiprocessing=mode == "processes",
    )  # fmt: skip
    try:
        reached = set()
        for _ in range(2):
            served, expected = [], set()
            for i in range(len(seq)):
                x, y, w = seq[i]
                np.testing.assert_array_equal(decode_index(x), y)
                served.extend(y[w > 0].tolist())
                expected.update(int(k) for k in seq.batch_indices(i) if int(k) not in bad)
                reached.update(int(k) for k in seq.batch_indices(i))
            assert sorted(served) == sorted(expected)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                seq.on_epoch_end()
        assert {e.index for e in seq.errors} <= bad
        assert bad & reached <= {e.index for e in seq.errors}  # every bad sample served so far is reported
    finally:
        seq.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_the_pixel_limit_is_configurable(files):
    images, labels = files
    with pytest.raises(SampleError, match=r"the image claims 5x6 = 30 pixels, over the limit of 29 \(max_image_pixels"):
        SeparatedSequence(images, labels, batch_size=2, max_image_pixels=29)[0]
    assert SeparatedSequence(images, labels, batch_size=2, max_image_pixels=30)[0][0].shape == (2, 6, 5, 3)
