"""`keras-sepseq bench --volumes`: loading whole scans and cutting patches, with each worker setting.

Synthetic CT-like scans (int16 NIfTI, gzipped, stored in a tilted
orientation so that reorientation does work) and their label volumes are
written to a temporary folder; then, in one run so the ratios compare:

1. whole volumes through `FieldSequence` (read, orient to RAS, resample to
   1.5 mm, window): volumes/s and voxels/s, with `workers=1`, 2 threads and
   2 processes;
2. patches through `PatchSequence` (`samples_per_file` per volume, half of
   them on foreground): patches/s with each worker setting, against cutting
   every patch from a freshly decoded volume (what a dataset of patches
   without a volume store does), and later epochs with a directory cache
   (memory-mapped volumes, nothing decoded).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

TILTED = np.array([[-1.0, 0, 0, 90], [0, 0, -1.2, 100], [0, 1.1, 0, -60], [0, 0, 0, 1]])


def write_scans(folder: str, count: int, shape: tuple[int, int, int], seed: int = 0) -> tuple[list[str], list[str]]:
    """`count` CT-like int16 scans and uint8 label volumes (a sphere of class 1) as `.nii.gz` in `folder`."""
    import nibabel

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    scans, labels = [], []
    for v in range(count):
        centre = rng.uniform(0.3, 0.7, 3) * np.array(shape)
        sphere = (np.linalg.norm(grid - centre, axis=-1) < min(shape) / 6).astype(np.uint8)
        scan = (rng.normal(-200, 120, shape) + sphere * 400.0).astype(np.int16)
        scans.append(os.path.join(folder, f"scan_{v:03d}.nii.gz"))
        labels.append(os.path.join(folder, f"label_{v:03d}.nii.gz"))
        nibabel.save(nibabel.Nifti1Image(scan, TILTED), scans[-1])
        nibabel.save(nibabel.Nifti1Image(sphere, TILTED), labels[-1])
    return scans, labels


def _rate(seq: Any, epochs: int, per_batch: Callable[[tuple], int]) -> list[float]:
    rates = []
    for epoch in range(epochs):
        seq.set_epoch(epoch)
        start, items = time.perf_counter(), 0
        for b in range(len(seq)):
            items += per_batch(seq[b])
        rates.append(items / (time.perf_counter() - start))
    return rates


def run_volumes(
    *,
    count: int = 24,
    shape: tuple[int, int, int] = (96, 112, 80),
    patch_size: tuple[int, int, int] = (48, 48, 48),
    samples_per_file: int = 4,
    batch_size: int = 4,
    epochs: int = 3,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measures volume loading and patching; see the module.

    Args:
        count: Scans to write. Defaults to 24.
        shape: Their stored shape. Defaults to `(96, 112, 80)`.
        patch_size: Defaults to `(48, 48, 48)`.
        samples_per_file: Patches per volume per epoch. Defaults to 4.
        batch_size: Defaults to 4.
        epochs: Epochs per patch run (the first decodes). Defaults to 3.
        log: Where progress lines go. Defaults to `print`.

    Returns:
        `{"settings", "volumes", "patches", "ratios"}`.

    Example:

    >>> report = run_volumes(count=8)  # doctest: +SKIP
    """
    from keras_sepseq.field_sequence import FieldSequence
    from keras_sepseq.patches import PatchSequence
    from keras_sepseq.volume_fields import LabelVolumeField, VolumeField

    modes: dict[str, dict[str, Any]] = {"workers=1": dict(workers=1), "2 threads": dict(workers=2),
             "2 processes": dict(workers=2, use_multiprocessing=True)}  # fmt: skip
    geometry: dict[str, Any] = dict(spacing=(1.5, 1.5, 1.5))
    folder = tempfile.mkdtemp(prefix="keras_sepseq_bench_volumes_")
    volumes: dict[str, Any] = {}
    patches: dict[str, Any] = {}
    try:
        start = time.perf_counter()
        scans, labels = write_scans(folder, count, shape)
        log(f"wrote {count} scans of {shape} int16 (.nii.gz, tilted) and label volumes in "
            f"{time.perf_counter() - start:.1f} s")  # fmt: skip

        def fields() -> tuple[VolumeField, LabelVolumeField]:
            return VolumeField(scans, window=(-1000, 1000), **geometry), LabelVolumeField(labels, **geometry)

        voxels = int(np.prod(fields()[0].read(scans[0]).shape[:3]))
        for name, options in modes.items():
            seq = FieldSequence(*fields(), batch_size=1, seed=0, **options)
            rates = _rate(seq, 2, lambda batch: len(batch[0]))
            seq.close()
            volumes[name] = {"volumes_per_s": rates[-1], "voxels_per_s": rates[-1] * voxels}
            log(f"whole volumes, {name:<12} {rates[-1]:7.1f} volumes/s  {rates[-1] * voxels / 1e6:7.1f} M voxels/s")

        def patch_run(name: str, epochs_here: int, **options: Any) -> list[float]:
            seq = PatchSequence(
                *fields(), batch_size=batch_size, patch_size=patch_size, samples_per_file=samples_per_file,
                seed=0, **options,
            )  # fmt: skip
            rates = _rate(seq, epochs_here, lambda batch: len(batch[0]))
            stats = seq.volume_stats
            seq.close()
            patches[name] = {"rates": rates, "decodes_in_this_process": stats["decodes"]}
            shown = "  ".join(f"epoch {k + 1} {r:7.1f}/s" for k, r in enumerate(rates))
            log(f"patches, {name:<34} {shown}")
            return rates

        for name, options in modes.items():
            patch_run(name, epochs, **options)
        patch_run("decoded for every patch", 1, volumes_in_memory=1, workers=1)
        cache = os.path.join(folder, "cache")
        patch_run("2 processes, cache=<dir>", epochs, cache=cache, **modes["2 processes"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    best = max(modes, key=lambda m: patches[m]["rates"][-1])
    ratios = {
        "patches_decode_once_vs_every_patch": patches["workers=1"]["rates"][0]
        / patches["decoded for every patch"]["rates"][0],
        "patches_2_threads_vs_workers_1": patches["2 threads"]["rates"][-1] / patches["workers=1"]["rates"][-1],
        "patches_2_processes_vs_workers_1": patches["2 processes"]["rates"][-1] / patches["workers=1"]["rates"][-1],
        "patches_cached_later_vs_first_epoch": float(
            np.median(patches["2 processes, cache=<dir>"]["rates"][1:])
            / patches["2 processes, cache=<dir>"]["rates"][0]
        ),
        "volumes_2_threads_vs_workers_1": volumes["2 threads"]["volumes_per_s"] / volumes["workers=1"]["volumes_per_s"],
        "volumes_2_processes_vs_workers_1": volumes["2 processes"]["volumes_per_s"]
        / volumes["workers=1"]["volumes_per_s"],
    }
    for key, value in ratios.items():
        log(f"{key.replace('_', ' ')}: {value:.2f}x")
    log(f"fastest patch setting without a cache: {best}")
    return {
        "settings": {"volumes": count, "shape": list(shape), "patch_size": list(patch_size),
                     "samples_per_file": samples_per_file, "batch_size": batch_size, "epochs": epochs,
                     "spacing": list(geometry["spacing"]), "cores": os.cpu_count()},
        "volumes": volumes,
        "patches": patches,
        "ratios": ratios,
    }  # fmt: skip
