import os
import pickle

import numpy as np
import pytest
from conftest import decode_index, index_image
from PIL import Image

from keras_sepseq import PaddedSequence, SeparatedSequence
from keras_sepseq.cache import parse_bytes

MODES = [
    pytest.param(dict(workers=1), id="main thread"),
    pytest.param(dict(workers=2), id="threads"),
    pytest.param(dict(workers=2, use_multiprocessing=True), id="processes"),
]


class Counting(SeparatedSequence):
    """Counts decodes (in this process: use with workers=1 or threads)."""

    decodes = 0

    def load_input(self, path):
        type(self).decodes += 1
        return super().load_input(path)


def epoch(seq):
    batches = [seq[i] for i in range(len(seq))]
    seq.on_epoch_end()
    return batches


@pytest.mark.parametrize("mode", MODES)
def test_memory_cache_serves_later_epochs_without_the_files(indexed_dataset, mode):
    images, labels = indexed_dataset(20)
    seq = SeparatedSequence(
        images, labels, batch_size=6, image_size=(6, 5), cache="memory", seed=2, dtype="uint8", **mode
    )
    reference = SeparatedSequence(images, labels, batch_size=6, image_size=(6, 5), seed=2, dtype="uint8")
    first, expected_first = epoch(seq), epoch(reference)
    expected_second = epoch(reference)
    for path in images + labels:
        os.remove(path)  # from now on only the cache can answer
    second = epoch(seq)
    for got, expected in zip(first + second, expected_first + expected_second):
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_array_equal(decode_index(got[0]), got[1])
    assert seq.sample_cache().nbytes == 20 * (6 * 5 * 3 + 8)
    seq.close()


def test_memory_cache_refuses_a_dataset_over_its_budget(indexed_dataset):
    images, labels = indexed_dataset(10)
    seq = SeparatedSequence(images, labels, batch_size=4, image_size=(100, 100), cache="memory", cache_budget="200KB")
    with pytest.raises(
        ValueError,
        match=r"cache='memory' needs about 300 KB for 10 samples of \(100, 100, 3\) uint8, \(\) int64, over cache_budget=200 KB. Raise `cache_budget`",
    ):
        seq[0]


def test_memory_cache_of_images_of_several_sizes_counts_as_it_goes(tmp_path):
    paths = []
    for i, size in enumerate([(4, 4), (8, 8), (30, 30)]):
        paths.append(str(tmp_path / f"i{i}.png"))
        Image.fromarray(index_image(i, size)).save(paths[-1])
    seq = SeparatedSequence(paths, [0, 1, 2], batch_size=1, shuffle=False, cache="memory", cache_budget=300)
    seq[0], seq[1]
    assert seq.sample_cache().nbytes == 4 * 4 * 3 + 8 * 8 * 3
    with pytest.raises(
        ValueError,
        match=r"cache='memory' reached 2.94 KB after samples of \(30, 30, 3\) uint8, over cache_budget=300 B",
    ):
        seq[2]


def test_directory_cache_survives_a_restart(indexed_dataset, tmp_path):
    images, labels = indexed_dataset(12)
    options = dict(batch_size=5, image_size=(6, 5), cache=str(tmp_path / "cache"), seed=1, dtype="uint8")
    Counting.decodes = 0
    first = Counting(images, labels, **options)
    expected = epoch(first)
    first.close()
    assert Counting.decodes == 12
    again = Counting(images, labels, **options)  # a new process would see the same files
    got = epoch(again)
    assert Counting.decodes == 12  # nothing decoded again
    for (gx, gy), (ex, ey) in zip(got, expected):
        np.testing.assert_array_equal(gx, ex)
        np.testing.assert_array_equal(gy, ey)


def test_directory_cache_reloads_a_changed_file(indexed_dataset, tmp_path):
    images, labels = indexed_dataset(4)
    options = dict(batch_size=4, image_size=(6, 5), cache=str(tmp_path / "cache"), shuffle=False, dtype="uint8")
    seq = SeparatedSequence(images, labels, **options)
    assert decode_index(seq[0][0]).tolist() == [0, 1, 2, 3]
    seq.close()
    Image.fromarray(index_image(99, (6, 5))).save(images[2])
    os.utime(images[2], ns=(1, 1))  # a different mtime even on coarse clocks
    assert decode_index(SeparatedSequence(images, labels, **options)[0][0]).tolist() == [0, 1, 99, 3]


@pytest.mark.parametrize(
    "changed",
    [dict(image_size=(4, 4)), dict(color_mode="grayscale"), dict(interpolation="area"), dict(antialias=True)],
    ids=["image_size", "color_mode", "interpolation", "antialias"],
)
def test_directory_cache_is_specific_to_the_decode_settings(indexed_dataset, tmp_path, changed):
    images, labels = indexed_dataset(3)
    cache = str(tmp_path / "cache")
    first = SeparatedSequence(images, labels, batch_size=3, image_size=(6, 5), cache=cache)
    first[0]
    first.close()
    seq = SeparatedSequence(images, labels, batch_size=3, cache=cache, **{"image_size": (6, 5), **changed})
    seq[0]
    seq.close()
    assert len(os.listdir(cache)) == 2


def test_directory_cache_of_an_earlier_decoder_revision_is_not_reused(indexed_dataset, tmp_path, monkeypatch):
    from keras_sepseq import images as images_module

    images, labels = indexed_dataset(3)
    cache = str(tmp_path / "cache")
    for revision in (images_module.DECODER_REVISION, images_module.DECODER_REVISION + 1):
        monkeypatch.setattr(images_module, "DECODER_REVISION", revision)
        seq = SeparatedSequence(images, labels, batch_size=3, image_size=(6, 5), cache=cache)
        seq[0]
        seq.close()
        assert seq.cache_key()[-1] == ("decoder revision", revision)
    assert len(os.listdir(cache)) == 2


def test_directory_cache_needs_image_size(indexed_dataset, tmp_path):
    images, labels = indexed_dataset(2)
    with pytest.raises(
        ValueError, match=r"cache=<directory> needs `image_size`.*Received: cache='.*', image_size=None"
    ):
        SeparatedSequence(images, labels, cache=str(tmp_path))


@pytest.mark.parametrize("cache", [3, b"dir"], ids=["an int", "bytes"])
def test_bad_cache_argument(indexed_dataset, cache):
    images, labels = indexed_dataset(2)
    with pytest.raises(ValueError, match=r"`cache` must be None, 'memory' or a directory path"):
        SeparatedSequence(images, labels, image_size=(6, 5), cache=cache)


def test_the_cache_stays_behind_when_pickled(indexed_dataset):
    images, labels = indexed_dataset(8)
    seq = SeparatedSequence(images, labels, batch_size=8, image_size=(6, 5), cache="memory")
    seq[0]
    assert seq.sample_cache().filled.all()
    assert pickle.loads(pickle.dumps(seq))._cache is None


def test_padded_sequence_memory_cache(tmp_path):
    paths = []
    for i, t in enumerate([3, 1, 4]):
        paths.append(str(tmp_path / f"s{i}.npy"))
        np.save(paths[-1], np.full((t, 2), i, np.float32))
    seq = PaddedSequence(paths, [0, 1, 2], batch_size=3, shuffle=False, cache="memory")
    x1 = seq[0][0]
    for path in paths:
        os.remove(path)
    np.testing.assert_array_equal(seq[0][0], x1)
    with pytest.raises(ValueError, match="PaddedSequence supports cache=None or 'memory'"):
        PaddedSequence(paths, [0, 1, 2], cache=str(tmp_path))


@pytest.mark.parametrize(
    "value, expected",
    [(1000, 1000), ("512MB", 512 * 10**6), ("4 GiB", 4 * 2**30), ("1.5gb", 1_500_000_000), ("100", 100)],
)
def test_parse_bytes(value, expected):
    assert parse_bytes(value) == expected


@pytest.mark.parametrize("value", [0, -5, "lots", "3 parsecs", True, "0GB"])
def test_parse_bytes_refuses_nonsense(value):
    with pytest.raises(ValueError, match=r"`cache_budget` must be a number of bytes or a size such as '4GB'"):
        parse_bytes(value)


_FILLER = """
import sys, time
import numpy as np
from keras_sepseq.cache import DirectoryCache

root, start, worker = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
pause = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0  # between samples: room for a kill to land mid-fill
sources = [f"s3://bucket/sample_{i:03d}.png" for i in range(64)]  # URLs: filled once, never stat-ed
while time.time() < start:  # every process opens the empty cache at the same moment
    pass
cache = DirectoryCache(root, fingerprint="same", sources=sources)
for i in np.random.default_rng(worker).permutation(64):
    cache.put(int(i), (np.full((16, 16), i, np.int32), np.array(i, np.int64)))
    time.sleep(pause)
cache.flush()
"""


def test_processes_filling_one_empty_cache_at_once_leave_it_whole(tmp_path):
    import subprocess
    import sys
    import time

    from keras_sepseq.cache import DirectoryCache

    sources = [f"s3://bucket/sample_{i:03d}.png" for i in range(64)]
    for round_ in range(6):
        root = tmp_path / f"round{round_}"
        start = time.time() + 1.5
        fillers = [subprocess.Popen([sys.executable, "-c", _FILLER, str(root), str(start), str(w)]) for w in range(4)]
        assert [p.wait(timeout=120) for p in fillers] == [0, 0, 0, 0]
        cache = DirectoryCache(str(root), fingerprint="same", sources=sources)
        assert cache.filled_mask(np.arange(64)).all(), f"round {round_}: samples lost"
        for i in range(64):
            image, label = cache.get(i)
            assert image.shape == (16, 16) and (image == i).all() and int(label) == i
        assert sorted(p.name for p in (root / "same").iterdir()) == [
            "layout.json",
            "slot0.npy",
            "slot1.npy",
            "state.npy",
        ]


def test_a_cache_folder_reached_through_a_symlink_is_refused(indexed_dataset, tmp_path):
    images, labels = indexed_dataset(4)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ValueError, match=rf"the cache folder {tmp_path}/link is a symbolic link"):
        SeparatedSequence(images, labels, batch_size=2, image_size=(6, 5), cache=str(tmp_path / "link"))[0]


def test_a_cache_folder_of_another_user_is_refused(indexed_dataset, tmp_path):
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("giving a folder to another user needs root")
    images, labels = indexed_dataset(4)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chown(shared, 4321, 4321)  # as if another user had made it first, in a shared /tmp
    with pytest.raises(
        PermissionError, match=rf"the cache folder {shared} belongs to user id 4321, not to this user \(0\)"
    ):
        SeparatedSequence(images, labels, batch_size=2, image_size=(6, 5), cache=str(shared))[0]


def test_a_cache_file_that_is_a_symlink_is_refused(indexed_dataset, tmp_path):
    images, labels = indexed_dataset(4)
    seq = SeparatedSequence(images, labels, batch_size=2, image_size=(6, 5), cache=str(tmp_path / "c"))
    seq[0]
    seq.close()
    (folder,) = (tmp_path / "c").iterdir()
    victim = tmp_path / "victim.npy"
    (folder / "slot0.npy").rename(victim)
    (folder / "slot0.npy").symlink_to(victim)  # another user's file, say: never written through
    with pytest.raises(ValueError, match=r"slot0\.npy is a symbolic link: keras_sepseq writes no file through one"):
        SeparatedSequence(images, labels, batch_size=2, image_size=(6, 5), cache=str(tmp_path / "c"))[0]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB file system (tmpfs) mounted for the test, or a skip where mounting is not allowed."""
    import subprocess

    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_is_an_error_naming_the_cache_and_leaves_no_half_made_file(indexed_dataset, small_disk):
    images, labels = indexed_dataset(64)
    seq = SeparatedSequence(images, labels, batch_size=8, image_size=(96, 96), cache=str(small_disk / "c"))
    with pytest.raises(OSError, match=r"the cache folder .*/small/c/\w+ has no room for [\d.]+ \wB more"):
        seq[0]  # 64 x 96 x 96 x 3 bytes do not fit in 1 MB: refused when the slot file is made, not by a SIGBUS
    (folder,) = (small_disk / "c").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["state.npy"]  # no slot file or layout published
    seq.close()


def test_a_writer_killed_at_random_moments_never_leaves_a_sample_read_as_valid_but_wrong(tmp_path):
    import random
    import signal
    import subprocess
    import sys
    import time

    from keras_sepseq.cache import DirectoryCache

    sources = [f"s3://bucket/sample_{i:03d}.png" for i in range(64)]
    root = tmp_path / "killed"
    draw = random.Random(7)  # the test's own generator
    for round_ in range(10):
        filler = subprocess.Popen([sys.executable, "-c", _FILLER, str(root), "0", str(round_), "0.004"])
        time.sleep(draw.uniform(0.2, 0.7))  # somewhere in start-up, file creation or the 0.26 s of filling
        filler.send_signal(signal.SIGKILL)
        filler.wait(timeout=30)
        if not (root / "same" / "state.npy").exists():
            continue  # killed before the cache existed
        cache = DirectoryCache(str(root), fingerprint="same", sources=sources)
        for i in np.flatnonzero(cache.filled_mask(np.arange(64))):
            image, label = cache.get(int(i))
            assert (image == i).all() and int(label) == i, f"round {round_}: sample {i} marked filled but wrong"
    finisher = subprocess.run([sys.executable, "-c", _FILLER, str(root), "0", "99"], timeout=120)
    assert finisher.returncode == 0  # a cache that writers died in is still one a new writer completes
    cache = DirectoryCache(str(root), fingerprint="same", sources=sources)
    assert cache.filled_mask(np.arange(64)).all()
    assert all((cache.get(i)[0] == i).all() for i in range(64))
