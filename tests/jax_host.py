"""One host of a two-process JAX job on 127.0.0.1: `keras.distribution.DataParallel`, a sharded sequence, `fit`.

Run by tests/test_multi_host.py as `python jax_host.py PORT PROCESS_ID FOLDER OUT AUTO_SHARD SHARD`.
Writes to OUT, as JSON, how often each sample was trained on in each epoch (counted by a metric inside the
train step, over the global batch), how many misaligned, and how many steps this process ran.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

port, process_id, folder, out, auto_shard, shard = sys.argv[1:7]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(
    coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id), initialization_timeout=60
)

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from index_model import DecodeIndex, Seen  # noqa: E402

from keras_sepseq import SeparatedSequence  # noqa: E402

keras.utils.set_random_seed(0)  # the same initial weights on both processes (JAX checks them)
distribution = keras.distribution.DataParallel(devices=jax.devices(), auto_shard_dataset=auto_shard == "True")
keras.distribution.set_distribution(distribution)

SAMPLES = 64
trained: dict[int, dict] = {}


class Record(keras.callbacks.Callback):
    """After each epoch, what the (global, replicated) metric counted, and the steps this process ran."""

    def on_epoch_begin(self, epoch, logs=None):
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    def on_epoch_end(self, epoch, logs=None):
        trained[epoch] = {
            "counts": [int(c) for c in ops.convert_to_numpy(metric.counts)],
            "wrong": float(ops.convert_to_numpy(metric.wrong)),
            "steps": self.steps,
        }


names = sorted(f for f in os.listdir(folder) if f.endswith(".png"))
images = [os.path.join(folder, f) for f in names]
labels = np.array([int(f.split("_")[1].split(".")[0]) for f in names], dtype="float32")
options = {
    "auto": {"shard": "auto"},
    "explicit": {"num_shards": 2, "shard_index": int(process_id)},
    "none": {},
}[shard]
seq = SeparatedSequence(images, labels, batch_size=8, image_size=(6, 5), workers=2, **options)
metric = Seen(SAMPLES)
model = keras.Sequential([keras.Input((6, 5, 3)), DecodeIndex()])  # outputs each image's index: checks alignment
model.compile("sgd", "mse", metrics=[metric])
model.fit(seq, epochs=2, verbose=0, callbacks=[Record()])
seq.close()
with open(out, "w") as f:
    json.dump(
        {
            "trained": trained,
            "shards": [seq.num_shards, seq.shard_index],
            "seed": seq.seed,
            "keras": keras.version(),
        },
        f,
    )
sys.stdout.flush()
jax.distributed.shutdown()
