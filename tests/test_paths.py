import pickle
from pathlib import Path

import numpy as np
import pytest

from keras_sepseq.paths import PathArray, is_path_sequence


@pytest.mark.parametrize(
    "paths",
    [
        pytest.param(["data/a.png", "data/b.png"], id="shared folder"),
        pytest.param(["a.png", "sub/b.png", "/abs/c.png"], id="no shared folder"),
        pytest.param(["dir with space/ünïcödé 1.png", "dir with space/日本.png"], id="spaces and non-ascii"),
        pytest.param([Path("x/one.png"), Path("x/two.png")], id="pathlib paths"),
        pytest.param(np.array(["p/1.png", "p/22.png"]), id="numpy string array"),
        pytest.param(["same/prefix_1.png", "same/prefix_12.png"], id="prefix cut at the folder"),
    ],
)
def test_round_trips_every_path_in_order(paths):
    array = PathArray(paths)
    assert len(array) == len(paths)
    assert list(array) == [str(p) for p in paths]
    assert array[-1] == str(paths[-1])
    assert pickle.loads(pickle.dumps(array)) == array


def test_slicing_returns_lists():
    array = PathArray([f"d/{i}.png" for i in range(5)])
    assert array[1:4:2] == ["d/1.png", "d/3.png"]


def test_index_out_of_range_names_the_size():
    with pytest.raises(IndexError, match="index 3 is out of range for 3 paths"):
        PathArray(["a", "b", "c"])[3]


@pytest.mark.parametrize(
    "paths, error, message",
    [
        pytest.param(
            ["a.png", 3],
            TypeError,
            r"`image_paths` must hold str or os.PathLike paths. Received: image_paths\[1\]=3 of type int",
            id="an int",
        ),
        pytest.param(["a.png", b"b.png"], TypeError, r"image_paths\[1\]=b'b.png' of type bytes", id="bytes"),
        pytest.param(
            ["a.png", ""], ValueError, r"must not hold empty paths. Received: image_paths\[1\]=''", id="empty string"
        ),
    ],
)
def test_bad_elements_are_named(paths, error, message):
    with pytest.raises(error, match=message):
        PathArray(paths, name="image_paths")


def test_a_million_paths_pickle_compactly():
    paths = [f"/data/set/train/image_{i:07d}.png" for i in range(1_000_000)]
    array = PathArray(paths)
    blob = pickle.dumps(array, protocol=pickle.HIGHEST_PROTOCOL)
    # 17 bytes of name per path plus an 8-byte offset; the folder is stored once.
    assert len(blob) < 30 * len(paths)
    assert pickle.loads(blob)[999_999] == paths[999_999]


@pytest.mark.parametrize(
    "values, expected",
    [
        pytest.param(["a.npy"], True, id="list of str"),
        pytest.param((Path("a.npy"),), True, id="tuple of Path"),
        pytest.param(np.array(["a.npy"]), True, id="numpy str array"),
        pytest.param(np.array([Path("a.npy")], dtype=object), True, id="object array of Path"),
        pytest.param([0, 1], False, id="list of int"),
        pytest.param(np.zeros((3, 2)), False, id="float array"),
        pytest.param([], False, id="empty list"),
    ],
)
def test_is_path_sequence(values, expected):
    assert is_path_sequence(values) is expected
