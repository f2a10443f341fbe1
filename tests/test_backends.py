"""Every Keras backend: fit, evaluate and predict see each sample exactly once, starting from an unbuilt model.

Keras 3.15 alone fails this on jax and torch with workers (a batch prefetched
to build the model is served in the next epoch); keras_sepseq runs its own
workers. Each backend runs in a fresh process (KERAS_BACKEND is read at
import). A backend whose package is missing is skipped, unless
KERAS_SEPSEQ_REQUIRE_BACKENDS=1 (set by CI) makes that a failure.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

BACKENDS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def run_under(backend: str, script: str) -> str:
    """Runs `script` (next to this file) under `backend` in a fresh process; its output, or a skip or failure."""
    if importlib.util.find_spec(BACKENDS[backend]) is None:
        if os.environ.get("KERAS_SEPSEQ_REQUIRE_BACKENDS") == "1":
            pytest.fail(f"the {backend} backend is not installed, and KERAS_SEPSEQ_REQUIRE_BACKENDS=1")
        pytest.skip(f"{backend} is not installed (pip install {BACKENDS[backend]})")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__), script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=int(os.environ.get("KERAS_SEPSEQ_BACKEND_TIMEOUT", "600")),
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_exactly_once_under_every_backend(backend):
    out = run_under(backend, "backend_check.py")
    assert f"backend {backend} all ok" in out
    assert out.count("ok ") == 10  # 3 sequence classes x threads and processes, 4 segmentation runs


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_a_3d_model_learns_from_patches_under_every_backend(backend):
    pytest.importorskip("nibabel")
    out = run_under(backend, "patch_training_check.py")
    assert f"patches {backend} ok" in out
