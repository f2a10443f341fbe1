"""Several hosts for real: two JAX processes on 127.0.0.1 train with `keras.distribution.DataParallel`."""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import write_indexed_dataset

from keras_sepseq import PaddedSequence

pytest.importorskip("jax")

KERAS_SHARDS_ITSELF = tuple(int(v) for v in keras.version().split(".")[:2]) >= (3, 16)
SAMPLES = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(tmp_path, *, auto_shard: bool, shard: str = "auto", timeout: float = 240) -> list[dict]:
    """Runs the two processes of tests/jax_host.py and returns what each recorded."""
    folder = tmp_path / "data"
    write_indexed_dataset(folder, SAMPLES)
    port = free_port()
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    script = os.path.join(os.path.dirname(__file__), "jax_host.py")
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                script,
                str(port),
                str(i),
                str(folder),
                str(tmp_path / f"host{i}.json"),
                str(auto_shard),
                shard,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for p in processes:
            outputs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for p in processes:
            p.kill()
        pytest.fail(f"the two-process job did not finish in {timeout} s")
    for i, (p, out) in enumerate(zip(processes, outputs)):
        assert p.returncode == 0, f"host {i} exited {p.returncode}:\n{out[-4000:]}"
    return [json.loads((tmp_path / f"host{i}.json").read_text()) for i in range(2)]


def check_exactly_once(hosts: list[dict]) -> None:
    for epoch in ("0", "1"):
        for i, h in enumerate(hosts):
            counts = np.array(h["trained"][epoch]["counts"])
            assert (counts == 1).all(), (
                f"host {i}, epoch {epoch}: {int((counts == 0).sum())} samples never trained on, "
                f"{int((counts > 1).sum())} twice or more"
            )
            assert h["trained"][epoch]["wrong"] == 0  # images and labels stayed aligned
            assert h["trained"][epoch]["steps"] == SAMPLES // 2 // 8  # half the batches on each host


@pytest.mark.parametrize(
    "auto_shard",
    [
        pytest.param(False, id="sequence shards, auto_shard_dataset=False"),
        pytest.param(
            True,
            id="Keras shards, auto_shard_dataset=True",
            marks=pytest.mark.skipif(
                not KERAS_SHARDS_ITSELF, reason="Keras 3.15 refuses a PyDataset with auto-sharding"
            ),
        ),
    ],
)
def test_two_jax_processes_train_on_every_sample_exactly_once_per_epoch(tmp_path, auto_shard):
    hosts = run_job(tmp_path, auto_shard=auto_shard)
    check_exactly_once(hosts)
    assert hosts[0]["seed"] == hosts[1]["seed"] == 0  # no seed given: both hosts agree on 0
    expected = [[1, 0], [1, 0]] if auto_shard else [[2, 0], [2, 1]]
    assert [h["shards"] for h in hosts] == expected
    assert hosts[0]["keras"] == keras.version()


@pytest.mark.skipif(KERAS_SHARDS_ITSELF, reason="from Keras 3.16 the default arguments shard through Keras")
def test_keras_3_15_refuses_a_py_dataset_under_auto_sharding(tmp_path):
    with pytest.raises(AssertionError, match="auto_shard_dataset = False"):
        run_job(tmp_path, auto_shard=True)


@pytest.mark.parametrize(
    "kwargs, expected_seed",
    [
        pytest.param(dict(num_shards=2, shard_index=1), 0, id="sharded, no seed: 0"),
        pytest.param(dict(num_shards=2, shard_index=1, seed=7), 7, id="sharded, a seed: kept"),
    ],
)
def test_independently_built_shards_agree_without_a_seed(kwargs, expected_seed):
    make = lambda **kw: PaddedSequence([np.zeros((2, 1))] * 100, np.arange(100), batch_size=10, **kw)  # noqa: E731
    other = make(**{**kwargs, "shard_index": 0})
    seq = make(**kwargs)
    assert seq.seed == other.seed == expected_seed
    served = [int(i) for s in (seq, other) for p in range(len(s)) for i in s.batch_indices(p)]
    assert sorted(served) == list(range(100))  # disjoint and complete: 0 on both hosts, 0 on neither


def test_one_host_without_a_seed_still_draws_one():
    seeds = {PaddedSequence([np.zeros((2, 1))] * 10, np.arange(10)).seed for _ in range(5)}
    assert len(seeds) > 1


def test_the_check_catches_hosts_that_do_not_shard(tmp_path):
    hosts = run_job(tmp_path, auto_shard=False, shard="none")  # each host serves the whole dataset
    for h in hosts:
        assert h["shards"] == [1, 0]
        assert set(h["trained"]["0"]["counts"]) == {2}  # every sample trained on twice per epoch


@pytest.mark.skipif(not KERAS_SHARDS_ITSELF, reason="Keras 3.15 does not shard a PyDataset itself")
def test_explicit_shards_under_keras_auto_sharding_are_refused(tmp_path):
    with pytest.raises(
        AssertionError, match=r"Keras splits this dataset's batches across 2 processes itself .* num_shards=2"
    ):
        run_job(tmp_path, auto_shard=True, shard="explicit")
