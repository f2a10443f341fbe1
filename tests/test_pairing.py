import os

import numpy as np
import pytest

from keras_sepseq.pairing import default_key, pair_files


def touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    "path, key",
    [
        pytest.param("data/image_001.png", 1, id="zero-padded digits"),
        pytest.param("scan_17.png", 17, id="digits after a word"),
        pytest.param("17.npy", 17, id="digits only"),
        pytest.param("v2/img_v2_0042.tif", 42, id="last run of digits wins"),
        pytest.param("cat.png", "cat", id="no digits: whole stem"),
        pytest.param("scan_3.nii.gz", 3, id="double extension"),
    ],
)
def test_default_key(path, key):
    assert default_key(path) == key


def test_pairs_by_number_across_different_prefixes(tmp_path):
    touch(tmp_path / "img", "scan_17.png", "scan_2.png", "scan_10.png")
    touch(tmp_path / "lab", "17.npy", "2.npy", "10.npy")
    images, labels = pair_files(str(tmp_path / "img" / "*.png"), tmp_path / "lab" / "*.npy")
    assert [p.rsplit("/", 1)[1] for p in images] == ["scan_2.png", "scan_10.png", "scan_17.png"]
    assert [p.rsplit("/", 1)[1] for p in labels] == ["2.npy", "10.npy", "17.npy"]


def test_zero_padded_names_pair(tmp_path):
    touch(tmp_path, "image_001.png", "image_002.png", "label_001.npy", "label_002.npy")
    images, labels = pair_files(str(tmp_path / "image_*.png"), str(tmp_path / "label_*.npy"))
    assert [default_key(p) for p in images] == [default_key(p) for p in labels] == [1, 2]


def test_stems_without_digits_pair_by_name(tmp_path):
    touch(tmp_path / "x", "cat.png", "dog.png")
    touch(tmp_path / "y", "dog.npy", "cat.npy")
    images, labels = pair_files(str(tmp_path / "x" / "*"), str(tmp_path / "y" / "*"))
    assert [p[-7:] for p in images] == ["cat.png", "dog.png"]
    assert [p[-7:] for p in labels] == ["cat.npy", "dog.npy"]


def test_recursive_patterns_and_folders_skipped(tmp_path):
    touch(tmp_path / "a" / "b", "image_1.png")
    touch(tmp_path / "a", "image_2.png")
    touch(tmp_path, "label_1.npy", "label_2.npy")
    (tmp_path / "a" / "image_3.png.d").mkdir()
    images, labels = pair_files(str(tmp_path / "a" / "**" / "image_*"), str(tmp_path / "label_*.npy"))
    assert len(images) == len(labels) == 2


def test_orphans_on_both_sides_are_counted_and_named(tmp_path):
    touch(tmp_path, "image_1.png", "image_2.png", "image_3.png", "label_1.npy", "label_9.npy")
    with pytest.raises(ValueError) as info:
        pair_files(str(tmp_path / "image_*.png"), str(tmp_path / "label_*.npy"))
    message = str(info.value)
    assert "2 of 3 image files have no label file" in message
    assert "image_2.png" in message and "image_3.png" in message
    assert "1 of 2 label files have no image file" in message and "label_9.npy" in message


def test_only_the_first_few_orphans_are_listed(tmp_path):
    touch(tmp_path, "label_0.npy", *[f"image_{i}.png" for i in range(20)])
    with pytest.raises(ValueError, match=r"19 of 20 image files .*\.\.\. 14 more"):
        pair_files(str(tmp_path / "image_*.png"), str(tmp_path / "label_*.npy"))


def test_duplicate_keys_name_the_clashing_files(tmp_path):
    touch(tmp_path, "image_1.png", "image_01.png", "label_1.npy")
    with pytest.raises(
        ValueError,
        match=r"`image_pattern` matched several files with the same key \(1 duplicate keys, first: key 1: .*image_01.png.*image_1.png",
    ):
        pair_files(str(tmp_path / "image_*.png"), str(tmp_path / "label_*.npy"))


@pytest.mark.parametrize("side", ["image_pattern", "label_pattern"])
def test_no_match_names_the_pattern(tmp_path, side):
    touch(tmp_path, "image_1.png", "label_1.npy")
    patterns = {"image_pattern": str(tmp_path / "image_*.png"), "label_pattern": str(tmp_path / "label_*.npy")}
    patterns[side] = str(tmp_path / "nothing_*.xyz")
    with pytest.raises(ValueError, match=rf"`{side}` matched no files. Received: {side}='.*nothing_\*.xyz'"):
        pair_files(**patterns)


def test_regex_key_uses_its_group(tmp_path):
    touch(tmp_path, "patient-a7_scan.png", "patient-b2_scan.png", "a7-mask.npy", "b2-mask.npy")
    images, labels = pair_files(str(tmp_path / "*.png"), str(tmp_path / "*.npy"), key=r"^(?:patient-)?([a-z]\d)")
    assert [p[-18:] for p in images] == ["patient-a7_scan.png"[-18:], "patient-b2_scan.png"[-18:]]
    assert [p[-11:] for p in labels] == ["a7-mask.npy", "b2-mask.npy"]


def test_regex_key_that_misses_a_file_names_it(tmp_path):
    touch(tmp_path, "x_1.png", "oops.png", "x_1.npy")
    with pytest.raises(ValueError, match=r"does not match the file name of '.*oops.png'"):
        pair_files(str(tmp_path / "*.png"), str(tmp_path / "*.npy"), key=r"x_(\d+)")


def test_callable_key(tmp_path):
    touch(tmp_path / "p1", "scan.png")
    touch(tmp_path / "p2", "scan.png")
    touch(tmp_path / "p1", "mask.npy")
    touch(tmp_path / "p2", "mask.npy")
    images, labels = pair_files(
        str(tmp_path / "*" / "scan.png"), str(tmp_path / "*" / "mask.npy"), key=lambda p: p.split("/")[-2]
    )
    assert [p.split("/")[-2] for p in images] == [p.split("/")[-2] for p in labels] == ["p1", "p2"]


@pytest.mark.parametrize(
    "key, message",
    [
        pytest.param(3, r"`key` must be None, a callable or a regular expression string. Received: key=3", id="an int"),
        pytest.param("(", r"`key` is not a valid regular expression", id="a broken regex"),
    ],
)
def test_bad_key_argument(tmp_path, key, message):
    touch(tmp_path, "a_1.png", "a_1.npy")
    with pytest.raises(ValueError, match=message):
        pair_files(str(tmp_path / "*.png"), str(tmp_path / "*.npy"), key=key)


def test_result_feeds_separated_sequence(tmp_path, indexed_dataset):
    from keras_sepseq import SeparatedSequence

    indexed_dataset(12)
    images, labels = pair_files(str(tmp_path / "data" / "image_*.png"), str(tmp_path / "data" / "label_*.npy"))
    x, y = SeparatedSequence(images, labels, batch_size=12, shuffle=False, dtype="uint8")[0]
    from conftest import decode_index

    np.testing.assert_array_equal(decode_index(x), np.arange(12))
    np.testing.assert_array_equal(y, np.arange(12))


def touch_all(folder, names):
    os.makedirs(folder, exist_ok=True)
    for name in names:
        open(os.path.join(folder, name), "wb").close()


def test_named_patterns_pair_any_number_of_files_per_sample(tmp_path):
    touch_all(tmp_path / "scans", [f"p{i}_t1.png" for i in range(4)] + [f"p{i}_t2.png" for i in range(4)])
    touch_all(tmp_path / "masks", [f"p{i}.png" for i in range(4)])
    files = pair_files(
        t1=str(tmp_path / "scans/*_t1.png"), t2=str(tmp_path / "scans/*_t2.png"), mask=str(tmp_path / "masks/*.png"),
        key=r"p(\d+)",
    )  # fmt: skip
    assert list(files) == ["t1", "t2", "mask"]
    assert [os.path.basename(p) for p in files["t2"]] == [f"p{i}_t2.png" for i in range(4)]
    assert [os.path.basename(p) for p in files["mask"]] == [f"p{i}.png" for i in range(4)]


def test_named_patterns_name_the_pattern_of_each_orphan(tmp_path):
    touch_all(tmp_path, ["a_1.png", "a_2.png", "a_3.png", "b_1.png", "b_2.png", "c_1.npy", "c_2.npy", "c_9.npy"])
    with pytest.raises(ValueError, match=r"1 of 3 `a` files lack a partner.*a_3.png.*1 of 3 `c` files.*c_9.npy") as e:
        pair_files(a=str(tmp_path / "a_*"), b=str(tmp_path / "b_*"), c=str(tmp_path / "c_*"))
    assert "`b`" not in str(e.value)


@pytest.mark.parametrize(
    "args, kwargs, message",
    [
        pytest.param(("x*",), {"y": "y*"}, r"either two patterns .* or named patterns, not both", id="both forms"),
        pytest.param((), {"only": "x*"}, r"at least two named patterns", id="one named pattern"),
        pytest.param(("x*",), {}, r"needs `image_pattern` and `label_pattern`", id="one positional pattern"),
    ],
)
def test_named_pattern_misuse_is_explained(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        pair_files(*args, **kwargs)
