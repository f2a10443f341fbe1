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


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_exactly_once_under_every_backend(backend):
    if importlib.util.find_spec(BACKENDS[backend]) is None:
        if os.environ.get("KERAS_SEPSEQ_REQUIRE_BACKENDS") == "1":
            pytest.fail(f"the {backend} backend is not installed, and KERAS_SEPSEQ_REQUIRE_BACKENDS=1")
        pytest.skip(f"{backend} is not installed (pip install {BACKENDS[backend]})")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    script = os.path.join(os.path.dirname(__file__), "backend_check.py")
    done = subprocess.run(
        [sys.executable, script],
        env=env,
        capture_output=True,
        text=True,
        timeout=int(os.environ.get("KERAS_SEPSEQ_BACKEND_TIMEOUT", "600")),
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"backend {backend} all ok" in done.stdout
    assert done.stdout.count("ok ") == 10  # 3 sequence classes x threads and processes, 4 segmentation runs
