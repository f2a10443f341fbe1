"""Long runs keep memory and file descriptors flat (issue: workers persist, nothing leaks).

CI runs a short version; `pytest -m slow` runs 200 epochs.
"""

import os

import keras
import numpy as np
import pytest

from keras_sepseq import SeparatedSequence
from keras_sepseq.bench import process_tree_rss


def open_fds():
    return len(os.listdir(f"/proc/{os.getpid()}/fd"))


def soak(files, epochs, processes):
    seq = SeparatedSequence(*files, batch_size=8, image_size=(6, 5), workers=2, use_multiprocessing=processes, seed=0)
    model = keras.Sequential([keras.Input((6, 5, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    samples = []

    class Sample(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            samples.append((process_tree_rss(), open_fds()))

    model.fit(seq, epochs=epochs, verbose=0, callbacks=[Sample()])
    seq.close()
    return samples


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
@pytest.mark.parametrize(
    "epochs", [pytest.param(25, id="25 epochs"), pytest.param(200, id="200 epochs", marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("processes", [True, False], ids=["processes", "threads"])
def test_memory_and_descriptors_stay_flat(indexed_dataset, epochs, processes):
    files = indexed_dataset(64)
    samples = soak(files, epochs, processes)
    warm_rss, warm_fds = samples[4]  # after the pool started and everything was touched once
    last_rss, last_fds = samples[-1]
    assert last_fds <= warm_fds
    assert last_rss <= warm_rss * 1.05, f"RSS grew from {warm_rss / 2**20:.0f} MB to {last_rss / 2**20:.0f} MB"
    assert np.std([rss for rss, _ in samples[4:]]) / warm_rss < 0.05
