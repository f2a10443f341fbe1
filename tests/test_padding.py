import itertools

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_sepseq import bucketed_order, npy, npy_shape, pad_batch, padding_weights
from keras_sepseq.npy import load_npy

SIDES = ["pre", "post"]


@pytest.mark.parametrize(
    "padding, truncating, maxlen",
    [(p, t, m) for p, t, m in itertools.product(SIDES, SIDES, [None, 1, 3, 6])],
    ids=lambda v: str(v),
)
def test_matches_keras_pad_sequences_on_1d_data(padding, truncating, maxlen):
    rng = np.random.default_rng(0)
    data = [rng.integers(1, 100, size=k).tolist() for k in [4, 0, 1, 6, 2]]
    ours = pad_batch(data, maxlen=maxlen, padding=padding, truncating=truncating, value=-7, dtype="int32")
    theirs = keras.utils.pad_sequences(data, maxlen=maxlen, padding=padding, truncating=truncating, value=-7)
    np.testing.assert_array_equal(ours, theirs)
    assert ours.dtype == theirs.dtype


@settings(max_examples=100, deadline=None)
@given(
    data=st.lists(st.lists(st.floats(-5, 5, width=32), max_size=8), min_size=1, max_size=6),
    maxlen=st.one_of(st.none(), st.integers(1, 10)),
    padding=st.sampled_from(SIDES),
    truncating=st.sampled_from(SIDES),
)
def test_matches_keras_pad_sequences_on_random_data(data, maxlen, padding, truncating):
    if maxlen is None and not any(data):
        return  # keras cannot take the max of no lengths
    ours = pad_batch(data, maxlen=maxlen, padding=padding, truncating=truncating, value=0.5)
    theirs = keras.utils.pad_sequences(
        data, maxlen=maxlen, padding=padding, truncating=truncating, value=0.5, dtype="float32"
    )
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("padding", SIDES)
def test_feature_dimensions_are_carried_along(padding):
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    b = np.full((1, 2), 9.0)
    out = pad_batch([a, b, np.zeros((0, 2))], padding=padding, value=-1)
    assert out.shape == (3, 3, 2)
    if padding == "post":
        np.testing.assert_array_equal(out[1], [[9, 9], [-1, -1], [-1, -1]])
    else:
        np.testing.assert_array_equal(out[1], [[-1, -1], [-1, -1], [9, 9]])
    np.testing.assert_array_equal(out[2], -1)


def test_truncating_pre_keeps_the_end():
    out = pad_batch([np.arange(5)[:, None]], maxlen=2, truncating="pre", dtype="int64")
    np.testing.assert_array_equal(out[0, :, 0], [3, 4])


def test_an_empty_sequence_written_as_a_flat_list_is_accepted():
    out = pad_batch([np.ones((2, 3)), []])
    assert out.shape == (2, 2, 3) and not out[1].any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param(
            dict(arrays=[np.ones((2, 3)), np.ones((2, 4))]),
            r"arrays\[0\] has shape \(2, 3\) but arrays\[1\] has shape \(2, 4\)",
            id="trailing shapes differ",
        ),
        pytest.param(dict(arrays=[np.ones(2), np.float32(3)]), r"arrays\[1\] is 0-d", id="a scalar"),
        pytest.param(dict(arrays=[]), r"at least one array", id="nothing"),
        pytest.param(
            dict(arrays=[[1]], maxlen=0), r"`maxlen` must be None or an integer >= 1. Received: maxlen=0", id="maxlen 0"
        ),
        pytest.param(
            dict(arrays=[[1]], padding="both"),
            r"`padding` must be one of \['pre', 'post'\]. Received: padding='both'",
            id="padding",
        ),
        pytest.param(
            dict(arrays=[[1]], truncating="middle"),
            r"`truncating` must be one of \['pre', 'post'\]. Received: truncating='middle'",
            id="truncating",
        ),
    ],
)
def test_bad_input_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        pad_batch(**kwargs)


@pytest.mark.parametrize(
    "padding, expected",
    [("post", [[1, 1, 0], [0, 0, 0], [1, 1, 1]]), ("pre", [[0, 1, 1], [0, 0, 0], [1, 1, 1]])],
    ids=SIDES,
)
def test_padding_weights_mark_real_steps(padding, expected):
    np.testing.assert_array_equal(padding_weights([2, 0, 5], 3, padding=padding), expected)


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 50), min_size=1, max_size=300),
    batch_size=st.integers(1, 20),
    seed=st.integers(0, 1000),
    epoch=st.integers(0, 5),
    shuffle=st.booleans(),
)
def test_bucketed_order_is_a_permutation_with_a_partial_batch_last(lengths, batch_size, seed, epoch, shuffle):
    lengths = np.array(lengths)
    order = bucketed_order(lengths, batch_size=batch_size, seed=seed, epoch=epoch, shuffle=shuffle)
    np.testing.assert_array_equal(np.sort(order), np.arange(len(lengths)))
    np.testing.assert_array_equal(
        order, bucketed_order(lengths, batch_size=batch_size, seed=seed, epoch=epoch, shuffle=shuffle)
    )


def test_bucketed_batches_hold_similar_lengths_and_epochs_differ():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 200, size=2000)
    orders = [bucketed_order(lengths, batch_size=16, seed=1, epoch=e, window_batches=32) for e in range(2)]
    spread = np.ptp(lengths[orders[0][: 125 * 16]].reshape(125, 16), axis=1)
    assert spread.mean() < 15  # against about 180 for random batches
    assert not np.array_equal(orders[0], orders[1])


def test_bucketed_order_without_shuffle_sorts_by_length():
    order = bucketed_order(np.array([5, 1, 3, 1]), batch_size=2, seed=0, epoch=0, shuffle=False)
    np.testing.assert_array_equal(order, [1, 3, 2, 0])


@pytest.mark.parametrize("shape", [(5, 3), (0, 7), (4,), ()], ids=str)
def test_npy_shape_reads_the_header(tmp_path, shape):
    path = str(tmp_path / "a.npy")
    np.save(path, np.zeros(shape, np.float32))
    assert npy_shape(path) == shape


def test_npy_shape_of_a_version_3_header(tmp_path):
    path = str(tmp_path / "v3.npy")
    with open(path, "wb") as f:
        np.lib.format.write_array(f, np.zeros((3, 2)), version=(3, 0))
    assert npy_shape(path) == (3, 2)


@pytest.mark.parametrize(
    "content, message",
    [
        pytest.param(
            lambda p: open(p, "w").write("1,2,3,4,5,6,7,8,9\n"),
            "not a .npy file: it starts with b.1,2,3,",
            id="a text file",
        ),
        pytest.param(lambda p: np.save(p, np.array([{"x": 1}], dtype=object)), "holds Python objects", id="objects"),
        pytest.param(
            lambda p: (np.save(p, np.zeros((5, 3))), open(p, "r+b").truncate(140)),
            "truncated: its header promises 120 bytes of data for shape \\(5, 3\\), but only 12 follow",
            id="truncated",
        ),
    ],
)
def test_npy_shape_refuses_bad_files(tmp_path, content, message):
    path = str(tmp_path / "bad.npy")
    content(path)
    with pytest.raises(ValueError, match=message):
        npy_shape(path)


def test_load_npy_refuses_npz(tmp_path):
    path = str(tmp_path / "a.npz")
    np.savez(path, a=np.zeros(2))
    with pytest.raises(ValueError, match="got an .npz archive"):
        load_npy(path)


@pytest.mark.parametrize(
    "array",
    [
        pytest.param(np.arange(12, dtype=">i4").reshape(3, 4), id="big-endian ints"),
        pytest.param(np.asfortranarray(np.arange(6.0).reshape(2, 3)), id="fortran order"),
        pytest.param(np.zeros((0, 5), np.float16), id="empty"),
        pytest.param(np.array(7, np.uint8), id="scalar"),
        pytest.param(np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]), id="structured"),
    ],
)
def test_load_npy_round_trips(tmp_path, array):
    path = str(tmp_path / "a.npy")
    np.save(path, array)
    loaded = load_npy(path)
    np.testing.assert_array_equal(loaded, array)
    assert loaded.dtype == array.dtype and loaded.shape == array.shape
    loaded[...] = loaded  # writable


def test_load_npy_from_many_threads_at_once(tmp_path):
    """CPython < 3.11.8 can fail concurrent ast parses of .npy headers; load_npy parses them under a lock."""
    from concurrent.futures import ThreadPoolExecutor

    paths = []
    for i in range(64):
        paths.append(str(tmp_path / f"{i}.npy"))
        np.save(paths[-1], np.full((3,), i))
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            assert [int(a[0]) for a in pool.map(load_npy, paths)] == list(range(64))


@pytest.fixture
def fresh_header_cache(monkeypatch):
    monkeypatch.setattr(npy, "_PARSED", {})
    return npy


def _count_parses(monkeypatch):
    calls = []
    for name in ("read_array_header_1_0", "read_array_header_2_0"):
        real = getattr(np.lib.format, name)
        monkeypatch.setattr(np.lib.format, name, lambda f, *a, _real=real, **k: calls.append(1) or _real(f, *a, **k))
    return calls


@pytest.mark.parametrize("version", [(1, 0), (2, 0)], ids=["version 1", "version 2"])
def test_load_npy_parses_a_header_once_per_distinct_header(tmp_path, monkeypatch, fresh_header_cache, version):
    calls = _count_parses(monkeypatch)
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"{i}.npy"))
        with open(paths[-1], "wb") as f:
            np.lib.format.write_array(f, np.full((2, 3), i, np.int64), version=version)
    other = str(tmp_path / "other.npy")
    np.save(other, np.arange(4, dtype=np.float32))
    loaded = [load_npy(p) for p in paths] + [load_npy(other), load_npy(paths[0])]
    for i in range(5):
        np.testing.assert_array_equal(loaded[i], np.full((2, 3), i))
        assert loaded[i].dtype == np.int64
    np.testing.assert_array_equal(loaded[5], np.arange(4, dtype=np.float32))
    assert loaded[5].dtype == np.float32 and loaded[6].shape == (2, 3)
    assert len(calls) == 2  # one per distinct header: the five same-shape files share one parse
    assert npy_shape(paths[3]) == (2, 3) and len(calls) == 2


def test_load_npy_header_cache_is_bounded(tmp_path, monkeypatch, fresh_header_cache):
    monkeypatch.setattr(npy, "_MAX_PARSED", 3)
    for n in range(1, 8):
        path = str(tmp_path / f"{n}.npy")
        np.save(path, np.arange(n))
        for _ in range(2):  # the second read of each comes from the cache or, past the bound, a fresh parse
            np.testing.assert_array_equal(load_npy(path), np.arange(n))
    assert len(npy._PARSED) == 3


def test_load_npy_still_refuses_a_bad_header_after_a_good_one(tmp_path, fresh_header_cache):
    good, bad = str(tmp_path / "good.npy"), str(tmp_path / "bad.npy")
    np.save(good, np.zeros(3))
    load_npy(good)
    data = bytearray(open(good, "rb").read())
    header_end = data.index(b"}") + 1
    data[10:header_end] = data[10:header_end].replace(b"'shape': (3,)", b"'shape': (x,)")
    open(bad, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="the .npy header cannot be read: malformed node"):
        load_npy(bad)
    with pytest.raises(ValueError, match="the .npy header cannot be read"):
        load_npy(bad)  # refused again: a header that failed to parse is never kept
