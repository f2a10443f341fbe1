"""`keras-sepseq bench --remote` on a few photos: what it counts, and that the round trip it hides is the one set."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("moto")
pytest.importorskip("obstore")

from keras_sepseq.bench import make_bench_dataset  # noqa: E402
from keras_sepseq.bench_remote import run_remote  # noqa: E402


def test_the_remote_bench_counts_requests_pages_and_round_trips(tmp_path):
    paths, _ = make_bench_dataset(str(tmp_path / "photos"), samples=48)
    labels = np.arange(len(paths)) % 3
    lines: list[str] = []
    report = run_remote(
        paths, labels, image_size=(32, 32), batch_size=16, epochs=2, latency=0.02, list_keys=2500, log=lines.append
    )

    runs = report["runs"]
    assert set(runs) == {
        "local disk",
        "s3, 2 workers",
        "s3, 2 workers, no latency",
        "local disk, workers=1",
        "s3, workers=1",
        "local disk, cache=<dir>",
        "s3, cache=<dir>",
    }
    assert runs["local disk"]["requests"] == 0 and runs["local disk, workers=1"]["requests"] == 0
    assert runs["s3, workers=1"]["requests"] == len(paths)  # the structure read's objects are not read twice
    assert "first_epoch_s3_vs_local_workers_1" in report["ratios"]
    # The cached run reads every object once, in its first epoch, and nothing after.
    assert runs["s3, cache=<dir>"]["requests"] == len(paths)
    assert all(len(run["rates"]) == (2 if "cache" in name else 1) for name, run in runs.items())
    assert report["listing"] == {**report["listing"], "keys": 2500, "found": 2500, "requests": 3, "pages": 3}
    assert len(report["first_epoch_rounds"]) == 1
    assert report["ratios"]["first_epoch_s3_vs_local"] == report["first_epoch_rounds"][0]
    # Every read waits for the added latency; the bench prints the round trip it measured with reads in flight.
    assert report["round_trip_seconds"] >= 0.02
    assert any(line.startswith("48 reads, 48 in flight: ") and "(20 ms added per request)" in line for line in lines)
    assert any(line.startswith("listing 2,500 keys: 3 requests for 3 pages of 1,000") for line in lines)
