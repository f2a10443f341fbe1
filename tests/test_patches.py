"""PatchSequence: every (volume, slot) once per epoch, aligned, spread over batches, reproducible, bounded."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import warnings

import numpy as np
import pytest
from volume_data import decode_labels, write_blob_pairs, write_coordinate_pairs, write_nifti

from keras_sepseq.fields import ArrayField
from keras_sepseq.patches import PatchSequence
from keras_sepseq.volume_fields import LabelVolumeField, VolumeField

pytest.importorskip("nibabel")

MODES = {
    "workers=1": dict(workers=1),
    "2 threads": dict(workers=2),
    "2 processes": dict(workers=2, use_multiprocessing=True),
}
K = 4  # patches per volume


def coordinate_sequence(folder, n=7, **options):
    """Coordinate volumes in `folder` (written once), `K` patches each, batches of 3."""
    scans = sorted(str(p) for p in __import__("pathlib").Path(folder).glob("scan_*.nii.gz"))
    labels = [p.replace("scan_", "label_") for p in scans]
    if len(scans) != n:
        scans, labels = write_coordinate_pairs(folder, n)
    geometry = dict(spacing=(1.3, 1.1, 0.7))
    options = {"batch_size": 3, "patch_size": (6, 9, 5), "samples_per_file": K, "seed": 5, **options}
    return PatchSequence(VolumeField(scans, **geometry), LabelVolumeField(labels, **geometry), **options)


def epoch_bytes(seq, epoch):
    seq.set_epoch(epoch)
    digest = hashlib.sha256()
    for b in range(len(seq)):
        for array in seq[b]:
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_every_volume_slot_once_per_epoch_aligned_and_spread(tmp_path, mode):
    seq = coordinate_sequence(tmp_path, **MODES[mode])
    try:
        for epoch in range(2):
            seq.set_epoch(epoch)
            seen, batches_of = [], {}
            for b in range(len(seq)):
                x, y = seq[b]
                indices = seq.batch_indices(b)
                assert x.shape == (len(indices), 6, 9, 5, 3) and x.dtype == np.float32
                assert y.shape == (len(indices), 6, 9, 5) and y.dtype == np.int32
                assert np.abs(x - decode_labels(y)).max() <= 0.5 + 1e-4  # scan and labels on one grid
                volumes = indices // K
                assert len(set(volumes.tolist())) == len(volumes)  # never two patches of one volume in a batch
                for v in volumes.tolist():
                    batches_of.setdefault(v, []).append(b)
                seen += indices.tolist()
            assert sorted(seen) == list(range(7 * K))
            for batches in batches_of.values():
                assert len(batches) == K and max(batches) - min(batches) < 2 * K  # neighbouring batches only
    finally:
        seq.close()


def test_same_bytes_in_every_mode_and_epochs_differ(tmp_path):
    hashes = {}
    for mode, options in MODES.items():
        seq = coordinate_sequence(tmp_path, **options)
        hashes[mode] = (epoch_bytes(seq, 0), epoch_bytes(seq, 1))
        seq.close()
    assert len(set(hashes.values())) == 1, hashes
    first, second = hashes["workers=1"]
    assert first != second


def test_resume_in_a_fresh_process_gives_the_same_epoch(tmp_path):
    seq = coordinate_sequence(tmp_path, seed=9)
    seq.set_epoch(2)
    state, expected = seq.get_state(), epoch_bytes(seq, 2)
    script = f"""
import sys, json
sys.path.insert(0, {os.path.dirname(__file__)!r})
from test_patches import coordinate_sequence, epoch_bytes
seq = coordinate_sequence({str(tmp_path)!r}, seed=0)
seq.set_state(json.loads({json.dumps(json.dumps(state))}))
print(epoch_bytes(seq, seq.epoch))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == expected


def test_state_from_other_patch_settings_is_refused(tmp_path):
    state = coordinate_sequence(tmp_path, samples_per_file=2).get_state()
    with pytest.raises(ValueError, match="samples_per_file: saved 2, here 4"):
        coordinate_sequence(tmp_path).set_state(state)


def test_foreground_share_and_fallback_reported_once(tmp_path):
    scans, labels = write_blob_pairs(tmp_path, 6, empty=(4,))
    seq = PatchSequence(
        VolumeField(scans), LabelVolumeField(labels), batch_size=3, patch_size=(6, 6, 6), samples_per_file=4,
        foreground_share=0.5, seed=1,
    )  # fmt: skip
    assert seq.positive_slots == 2
    with pytest.warns(UserWarning, match=r"'.*label_004\.nii\.gz' has no foreground voxel") as caught:
        for epoch in range(2):
            seq.set_epoch(epoch)
            for b in range(len(seq)):
                _, y = seq[b]
                for index, patch in zip(seq.batch_indices(b).tolist(), y):
                    volume, slot = divmod(index, 4)
                    if slot < 2 and volume != 4:
                        assert patch[3, 3, 3] == 1 or patch.sum() > 0  # centred on the cube (clamped at borders)
    assert sum("no foreground" in str(w.message) for w in caught) == 1


def test_random_patches_cover_the_volume_and_foreground_patches_centre(tmp_path):
    scans, labels = write_blob_pairs(tmp_path, 1, shape=(20, 20, 20))
    seq = PatchSequence(
        VolumeField(scans), LabelVolumeField(labels), batch_size=1, patch_size=(4, 4, 4), samples_per_file=2,
        foreground_share=0.5, seed=3,
    )  # fmt: skip
    hits = {0: 0, 1: 0}
    for epoch in range(40):
        seq.set_epoch(epoch)
        for b in range(len(seq)):
            slot = int(seq.batch_indices(b)[0]) % 2
            hits[slot] += int(seq[b][1].any())
    assert hits[0] == 40  # every foreground patch holds foreground
    assert hits[1] < 20  # random ones rarely do (the cube is 4^3 of 20^3)


def test_volume_decoded_once_per_epoch_with_threads_and_not_again_with_a_cache(tmp_path):
    seq = coordinate_sequence(tmp_path, workers=2)
    try:
        decodes = []
        for epoch in range(3):
            before = seq.volume_stats["decodes"]
            seq.volume_store()._entries.clear()  # as if every volume had left memory between epochs
            epoch_bytes(seq, epoch)
            decodes.append(seq.volume_stats["decodes"] - before)
        assert decodes == [7, 7, 7]  # each volume once per epoch, for all its patches, however many threads ask
    finally:
        seq.close()
    bounded = coordinate_sequence(tmp_path, workers=2, volumes_in_memory=2)
    for epoch in range(2):
        epoch_bytes(bounded, epoch)
        assert bounded.volume_stats["in_memory"] <= 2  # fewer than the batches in flight need: decoded again, bounded
    bounded.close()
    cached = coordinate_sequence(tmp_path, workers=2, cache="memory")
    for epoch in range(2):
        epoch_bytes(cached, epoch)
    assert cached.volume_stats["decodes"] == 7
    cached.close()


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_memory_cache_of_volumes_keeps_to_its_budget(tmp_path, on_error):
    from keras_sepseq.errors import CacheBudgetError

    whole = coordinate_sequence(tmp_path, cache="memory")
    epoch_bytes(whole, 0)
    total = whole.volume_stats["bytes_in_memory"]
    whole.close()
    fits = coordinate_sequence(tmp_path, cache="memory", cache_budget=total)
    epoch_bytes(fits, 0)
    assert fits.volume_stats["in_memory"] == 7 and fits.volume_stats["bytes_in_memory"] == total  # all kept
    fits.close()
    short = coordinate_sequence(tmp_path, cache="memory", cache_budget=total // 2, on_error=on_error)
    with pytest.raises(
        CacheBudgetError, match=r"cache='memory' would hold .* with volume \d \(\d volumes\), over cache_budget="
    ):
        epoch_bytes(short, 0)  # a budget is not a bad sample: never skipped, whatever on_error says
    assert short.volume_stats["bytes_in_memory"] <= total // 2 and short.errors == []
    short.close()


def test_directory_cache_is_read_memory_mapped_by_every_process(tmp_path):
    first = coordinate_sequence(tmp_path / "data", cache=str(tmp_path / "cache"))
    expected = epoch_bytes(first, 1)
    assert first.volume_stats["decodes"] == 7
    for mode, options in MODES.items():
        again = coordinate_sequence(tmp_path / "data", cache=str(tmp_path / "cache"), **options)
        assert epoch_bytes(again, 1) == expected, mode
        assert again.volume_stats["decodes"] == 0, mode
        again.close()
    items, _ = again.volume_store().get(0, lambda: pytest.fail("decoded again"))
    assert isinstance(items[0], np.memmap)
    os.utime(first.fields[0][1].paths[0], ns=(1, 1))  # a changed scan is decoded again
    os.utime(first.fields[1][1].paths[3], ns=(1, 1))  # and so is a volume whose label file changed
    stale = coordinate_sequence(tmp_path / "data", cache=str(tmp_path / "cache"))
    epoch_bytes(stale, 1)
    assert stale.volume_stats["decodes"] == 2


def test_volumes_smaller_than_the_patch_are_padded(tmp_path):
    scan = write_nifti(tmp_path / "small.nii.gz", np.ones((2, 3, 4), np.float32))
    label = write_nifti(tmp_path / "small_seg.nii.gz", np.ones((2, 3, 4), np.uint8))
    seq = PatchSequence(
        VolumeField([scan]), LabelVolumeField([label], ignore_index=255), batch_size=1, patch_size=(4, 5, 6),
        foreground=None,
    )  # fmt: skip
    x, y = seq[0]
    assert x.shape == (1, 4, 5, 6, 1) and x.sum() == 24  # the volume, centred, with 0 around
    assert (y == 1).sum() == 24 and (y == 255).sum() == 4 * 5 * 6 - 24


def test_shards_split_volumes(tmp_path):
    shards = [coordinate_sequence(tmp_path, num_shards=2, shard_index=i) for i in range(2)]
    assert len(shards[0]) == len(shards[1])
    members = [set((s.order // K).tolist()) for s in shards]
    assert members[0] | members[1] == set(range(7))
    assert len(members[0] & members[1]) <= 1  # the wrap-around fills the last round with one volume


def test_bad_volume_skips_its_patches_and_is_named(tmp_path):
    scans, labels = write_coordinate_pairs(tmp_path, 4)
    with open(scans[2], "wb") as f:
        f.write(b"\x1f\x8bnot a volume")
    seq = PatchSequence(
        VolumeField(scans), LabelVolumeField(labels), batch_size=2, patch_size=(4, 4, 4), samples_per_file=2,
        on_error="skip", seed=0,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b in range(len(seq)):
            seq[b]
    assert sorted(e.index for e in seq.errors) == [4, 5]
    assert {os.path.basename(e.path) for e in seq.errors} == {"scan_002.nii.gz"}
    assert "volume 2" in str(seq.errors[0])


def test_output_signature_has_the_patch_size(tmp_path):
    seq = coordinate_sequence(tmp_path)
    x, y = seq.output_signature()
    assert tuple(x.shape) == (None, 6, 9, 5, 3) and tuple(y.shape) == (None, 6, 9, 5)
    assert x.dtype.name == "float32" and y.dtype.name == "int32"
    scans, labels = seq.fields[0][1].paths, seq.fields[1][1].paths
    named = PatchSequence(
        {"ct": VolumeField(scans)}, {"organs": LabelVolumeField(labels), "grade": ArrayField(np.arange(7))},
        patch_size=(4, 5, 6),
    )  # fmt: skip
    x, y = named.output_signature()
    assert tuple(x["ct"].shape) == (None, 4, 5, 6, 3) and tuple(y["organs"].shape) == (None, 4, 5, 6)
    assert tuple(y["grade"].shape) == (None,)


def test_values_per_volume_repeat_for_each_patch(tmp_path):
    scans, _ = write_coordinate_pairs(tmp_path, 3)
    seq = PatchSequence(
        VolumeField(scans), ArrayField(np.array([10, 11, 12])), batch_size=3, patch_size=(2, 2, 2),
        samples_per_file=2, sample_weights=[1.0, 2.0, 3.0], shuffle=False,
    )  # fmt: skip
    x, y, w = seq[0]
    assert y.tolist() == [10 + i // 2 for i in seq.batch_indices(0).tolist()]
    assert w.tolist() == [1.0 + i // 2 for i in seq.batch_indices(0).tolist()]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(patch_size=(4, 4)), r"`patch_size` must be three integers"),
        (dict(samples_per_file=0), "samples_per_file"),
        (dict(foreground="scan"), r"`foreground` must name a LabelVolumeField of this sequence \(target\)"),
        (dict(foreground_share=1.5), r"`foreground_share` must be a number in \[0, 1\]"),
    ],
    ids=["patch pair", "no slots", "foreground not labels", "share over 1"],
)
def test_patch_arguments_are_checked(tmp_path, kwargs, message):
    options = {"patch_size": (4, 4, 4), **kwargs}
    with pytest.raises(ValueError, match=message):
        PatchSequence(VolumeField(["a.nii"]), LabelVolumeField(["a.nii"]), **options)


def test_only_volume_fields_are_taken():
    from keras_sepseq.fields import ImageField

    with pytest.raises(ValueError, match="the field 'input' is a ImageField"):
        PatchSequence(ImageField(["a.png"]), patch_size=(1, 1, 1))


def test_no_global_random_state_is_touched(tmp_path):
    seq = coordinate_sequence(tmp_path)
    np.random.seed(1)
    random.seed(1)
    before = (np.random.get_state()[1].copy(), random.getstate())
    epoch_bytes(seq, 0)
    assert (np.random.get_state()[1] == before[0]).all() and random.getstate() == before[1]


@pytest.mark.slow
@pytest.mark.parametrize("cache", [None, "memory"], ids=["store", "memory-cache"])
def test_soak_200_volumes_memory_stays_flat(tmp_path, cache):
    import resource

    scans, labels = write_coordinate_pairs(tmp_path, 200, shape=(24, 24, 24))
    seq = PatchSequence(
        VolumeField(scans), LabelVolumeField(labels), batch_size=4, patch_size=(8, 8, 8), samples_per_file=4,
        workers=2, cache=cache, cache_budget="512MB",
    )  # fmt: skip
    peaks = []
    for epoch in range(3):
        epoch_bytes(seq, epoch)
        peaks.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        if cache is None:
            assert seq.volume_stats["in_memory"] <= seq.volume_store().capacity
        else:  # every volume kept, within the budget, from the first epoch on
            assert seq.volume_stats["in_memory"] == 200 and seq.volume_stats["bytes_in_memory"] <= 512 * 10**6
    seq.close()
    assert peaks[2] - peaks[0] < 50 * 1024  # KiB: no growth after the first epoch
