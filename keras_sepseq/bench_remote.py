"""`keras-sepseq bench --remote`: the bench's photos in object storage, against the same files on local disk.

Everything runs in one process and one run, so the ratios compare:

1. The photos are uploaded to a bucket of an S3 server on 127.0.0.1
   (`keras_sepseq.s3_server`: moto behind a proxy that adds `latency`
   seconds to every request, 50 ms by default, as a distant region does).
2. `model.fit` with the bench's tiny model: the first epoch reading the
   bucket with 2 workers, against the first epoch reading local disk (and
   once with `workers=1`, the default, against local disk so); then
   with a directory cache, the later epochs of each (the remote run's must
   make no request at all).
3. Listing: a prefix of `list_keys` keys (100,000 by default) is globbed,
   and the requests it took are counted (pages of 1,000 keys).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

BUCKET = "bench"


def run_remote(
    paths: list[str],
    labels: np.ndarray,
    *,
    image_size: tuple[int, int] = (128, 128),
    batch_size: int = 32,
    epochs: int = 3,
    workers: int = 2,
    latency: float = 0.05,
    list_keys: int = 100_000,
    rounds: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measures the photos read from a loopback S3 server against local disk, through `model.fit`.

    Args:
        paths: Local image files (uploaded to the bucket under their names).
        labels: One integer class per image.
        image_size: `(height, width)` to resize to. Defaults to `(128, 128)`.
        batch_size: Defaults to 32.
        epochs: Epochs of the cached runs (the first fills the cache; at
            least 2). Defaults to 3.
        workers: Thread workers of every run. Defaults to 2.
        latency: Seconds the proxy adds to every request. Defaults to 0.05.
        list_keys: Keys under the prefix whose listing is counted (0 to
            skip). Defaults to 100,000.
        rounds: Times the first epoch from local disk and from S3 is
            measured, alternating; the ratio is the median of the rounds'.
            Defaults to 1.
        log: Where progress lines go. Defaults to `print`.

    Returns:
        `{"settings", "runs", "listing", "ratios"}`.

    Raises:
        ValueError: If `epochs < 2`.

    Example:

    >>> report = run_remote(paths, labels, latency=0.05)  # doctest: +SKIP
    """
    from keras_sepseq.bench import epoch_timer, tiny_model
    from keras_sepseq.fetching import Fetcher, wait_all
    from keras_sepseq.listing import glob_files
    from keras_sepseq.s3_server import LoopbackS3
    from keras_sepseq.separated import SeparatedSequence

    if epochs < 2:
        raise ValueError(f"`epochs` must be >= 2 (one to fill the cache). Received: epochs={epochs}")
    labels = np.asarray(labels, dtype=np.int64)
    size = (int(image_size[0]), int(image_size[1]))
    names = [f"{k:06d}_{os.path.basename(p)}" for k, p in enumerate(paths)]
    for path in paths:  # local runs then read from the page cache, as a warm disk would serve them
        with open(path, "rb") as f:
            f.read()
    model = tiny_model(size, batch_size)
    runs: dict[str, dict[str, Any]] = {}
    with LoopbackS3(latency=latency) as server:
        start = time.perf_counter()
        objects = {}
        for name, path in zip(names, paths):
            with open(path, "rb") as f:
                objects[f"photos/{name}"] = f.read()
        server.upload(BUCKET, objects)
        log(f"uploaded {len(paths)} photos to s3://{BUCKET}/photos/ in {time.perf_counter() - start:.1f} s; "
            f"{latency * 1000:.0f} ms added per request")  # fmt: skip
        urls = [f"s3://{BUCKET}/photos/{name}" for name in names]
        options = server.storage_options
        # Every object read once, as the local files were: the proxy then answers from memory, as the page
        # cache does for local disk, instead of moto spending milliseconds of these cores on every request.
        primer = Fetcher(64, options)
        wait_all(primer.fetch(urls))
        primer.close()
        # The round trip the runs below must hide, with many reads in flight: `latency` plus a few milliseconds
        # of this machine's work; more means the loopback machinery waits on its own (Nagle's algorithm in the
        # proxy once added 40 ms to every read under load).
        in_flight = min(64, len(urls))
        reader = Fetcher(in_flight, options)
        start = time.perf_counter()
        wait_all(reader.fetch(urls))
        round_trip = (time.perf_counter() - start) / len(urls) * in_flight
        reader.close()
        log(f"{len(urls):,} reads, {in_flight} in flight: {round_trip * 1000:.1f} ms per read "
            f"({latency * 1000:.0f} ms added per request)")  # fmt: skip

        def fit(
            name: str, sources: list[str], n_epochs: int, delay: float = latency, n_workers: int = workers, **extra: Any
        ) -> None:
            seq = SeparatedSequence(sources, labels, batch_size, image_size=size, seed=0, workers=n_workers,
                                    storage_options=options, **extra)  # fmt: skip
            timer = epoch_timer(len(sources))
            server.configure(latency=delay)
            server.reset()
            cpu, server_cpu = time.process_time(), server.cpu_seconds()
            try:
                model.fit(seq, epochs=n_epochs, verbose=0, callbacks=[timer])
            finally:
                seq.close()
            stats = server.stats()
            runs[name] = {
                "rates": timer.rates,
                "requests": stats["requests"],
                "cpu_ms_per_sample": (time.process_time() - cpu) / (n_epochs * len(sources)) * 1000,
                "server_cpu_ms_per_request": (server.cpu_seconds() - server_cpu) / max(1, stats["requests"]) * 1000,
                "retries": seq.remote_stats["retries"],
            }
            rates = "  ".join(f"epoch {k + 1} {r:7,.0f}/s" for k, r in enumerate(timer.rates))
            log(f"{name:<34} {rates}  {runs[name]['requests']:6,} requests, "
                f"{runs[name]['cpu_ms_per_sample']:.2f} ms CPU/sample here"
                + (f", server {runs[name]['server_cpu_ms_per_request']:.2f} ms CPU/request" if stats["requests"] else ""))  # fmt: skip

        # The first fit traces the model's training step, a cost of neither source: paid here, before any round,
        # it made the first round's local run ~10% slower and its ratio ~0.1 higher than the other rounds'.
        warm_up = SeparatedSequence(paths[: 4 * batch_size], labels[: 4 * batch_size], batch_size, image_size=size,
                                    seed=0, workers=workers)  # fmt: skip
        try:
            model.fit(warm_up, epochs=1, verbose=0)
        finally:
            warm_up.close()
        folder = tempfile.mkdtemp(prefix="keras_sepseq_bench_remote_")
        try:
            first_epochs = []
            for k in range(max(1, rounds)):
                suffix = f" (round {k + 1})" if k else ""
                fit("local disk" + suffix, paths, 1)
                fit(f"s3, {workers} workers" + suffix, urls, 1)
                first_epochs.append(
                    runs[f"s3, {workers} workers{suffix}"]["rates"][0] / runs["local disk" + suffix]["rates"][0]
                )
            fit(f"s3, {workers} workers, no latency", urls, 1, delay=0.0)
            # The default, workers=1: no pool; the calling thread decodes while the next batches' objects are read.
            fit("local disk, workers=1", paths, 1, n_workers=1)
            fit("s3, workers=1", urls, 1, n_workers=1)
            fit("local disk, cache=<dir>", paths, epochs, cache=os.path.join(folder, "local"))
            fit("s3, cache=<dir>", urls, epochs, cache=os.path.join(folder, "s3"))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        cached = runs["s3, cache=<dir>"]
        listing: dict[str, Any] = {}
        if list_keys:
            start = time.perf_counter()
            server.fill(BUCKET, "many/", list_keys)
            server.reset()
            listed = time.perf_counter()
            found = glob_files(f"s3://{BUCKET}/many/*.bin", options)
            listing = {
                "keys": list_keys,
                "found": len(found),
                "requests": server.stats()["list"],
                "pages": math.ceil(list_keys / 1000),
                "seconds": time.perf_counter() - listed,
            }
            log(f"listing {list_keys:,} keys: {listing['requests']} requests for {listing['pages']} pages of 1,000 "
                f"({time.perf_counter() - start:.1f} s with filling the bucket)")  # fmt: skip
    # Medians over the rounds (the training step is traced before the first; the reader's connections are open).
    suffixes = [""] + [f" (round {k + 1})" for k in range(1, max(1, rounds))]
    remote = {key: float(np.median([runs[f"s3, {workers} workers{s}"][key] for s in suffixes]))
              for key in ("cpu_ms_per_sample", "server_cpu_ms_per_request", "requests")}  # fmt: skip
    local = {"cpu_ms_per_sample": float(np.median([runs[f"local disk{s}"]["cpu_ms_per_sample"] for s in suffixes]))}
    remote_rate = float(np.median([runs[f"s3, {workers} workers{s}"]["rates"][0] for s in suffixes]))
    instant = runs[f"s3, {workers} workers, no latency"]
    ratios = {
        "first_epoch_s3_vs_local": float(np.median(first_epochs)),
        "first_epoch_with_latency_vs_without": remote_rate / instant["rates"][0],
        "first_epoch_s3_vs_local_workers_1": runs["s3, workers=1"]["rates"][0]
        / runs["local disk, workers=1"]["rates"][0],
        "cached_later_epochs_s3_vs_local": float(
            np.median(cached["rates"][1:]) / np.median(runs["local disk, cache=<dir>"]["rates"][1:])
        ),
    }
    # Where the first epoch's time goes: this machine's cores serve the requests too (a real store would not).
    per_sample_server = remote["server_cpu_ms_per_request"] * remote["requests"] / len(paths)
    cpu = {
        "local_ms_per_sample": local["cpu_ms_per_sample"],
        "s3_client_ms_per_sample": remote["cpu_ms_per_sample"],
        "server_ms_per_sample": per_sample_server,
        "client_bound_ratio": local["cpu_ms_per_sample"] / remote["cpu_ms_per_sample"],
    }
    for key, value in ratios.items():
        log(f"{key.replace('_', ' ')}: {value:.2f}x")
        if key == "first_epoch_s3_vs_local" and len(first_epochs) > 1:
            log(f"  (median of {len(first_epochs)} rounds: {', '.join(f'{r:.2f}x' for r in first_epochs)})")
    log(f"CPU per sample (medians of the rounds): local {cpu['local_ms_per_sample']:.2f} ms; "
        f"s3 {cpu['s3_client_ms_per_sample']:.2f} ms here + {per_sample_server:.2f} ms in the loopback server; with the server elsewhere, the first epoch could "
        f"reach {cpu['client_bound_ratio']:.2f}x of local disk (CPU-bound, latency hidden)")  # fmt: skip
    log(f"requests in the cached s3 run: {cached['requests']:,} over {epochs} epochs "
        f"({cached['requests'] - len(paths):,} after the first, which read each of the {len(paths):,} objects once)")  # fmt: skip
    return {
        "settings": {"samples": len(paths), "image_size": list(size), "batch_size": batch_size, "epochs": epochs,
                     "workers": workers, "latency": latency, "cores": os.cpu_count()},
        "runs": runs,
        "listing": listing,
        "ratios": ratios,
        "first_epoch_rounds": first_epochs,
        "round_trip_seconds": round_trip,
        "cpu": cpu,
    }  # fmt: skip
