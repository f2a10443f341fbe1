"""Run under one Keras backend (KERAS_BACKEND set by the caller): fit, evaluate and predict see every sample once.

Prints one line per check and exits non-zero on the first failure. Used by
test_backends.py, which runs it in a fresh process per backend.
"""

import os
import sys
import tempfile

import keras
import numpy as np
from keras import ops

sys.path.insert(0, os.path.dirname(__file__))
from conftest import write_indexed_dataset  # noqa: E402
from index_model import DecodeIndex, Seen  # noqa: E402

from keras_sepseq import PaddedSequence, SeparatedSequence  # noqa: E402
from keras_sepseq.field_sequence import FieldSequence  # noqa: E402
from keras_sepseq.fields import ArrayField, ImageField  # noqa: E402

N, BATCH = 250, 10


class LastValue(keras.layers.Layer):
    """Reads the sample index from the first step of a padded sequence (every step holds it)."""

    def build(self, input_shape):
        self.dense = keras.layers.Dense(1)
        self.dense.build((None, 1))

    def call(self, x):
        return x[:, 0, :] + 0.0 * self.dense(x[:, 0, :])


class Check(keras.callbacks.Callback):
    def __init__(self, metric, name):
        super().__init__()
        self.metric, self.name = metric, name

    def on_epoch_end(self, epoch, logs=None):
        counts = ops.convert_to_numpy(self.metric.counts)
        wrong = float(ops.convert_to_numpy(self.metric.wrong))
        if not (counts == 1).all() or wrong:
            print(
                f"FAIL {self.name} epoch {epoch}: {int((counts == 0).sum())} never, {int((counts > 1).sum())} twice or more, {wrong:.0f} misaligned"
            )
            sys.exit(1)


def two_input_model():
    """Named inputs "left" and "right" (the same index image each), output "index": their mean decoded index.

    Misaligned fields give a mean that is no sample's index, which `Seen` counts as wrong.
    """
    left, right = keras.Input((6, 5, 3), name="left"), keras.Input((6, 5, 3), name="right")
    mean = keras.layers.Average(name="index")([DecodeIndex()(left), DecodeIndex()(right)])
    return keras.Model({"left": left, "right": right}, {"index": mean})


def run(name, seq, layer, input_shape):
    metric = Seen(N)
    if layer is None:
        model = two_input_model()
    else:
        model = keras.Sequential([keras.Input(input_shape), layer])  # built by fit: Keras pulls a batch first
    model.compile(optimizer="sgd", loss="mse", metrics=[metric])
    model.fit(seq, epochs=3, verbose=0, callbacks=[Check(metric, name)])
    metric.reset_state()
    model.evaluate(seq, verbose=0)
    counts = ops.convert_to_numpy(metric.counts)
    if not (counts == 1).all():
        print(f"FAIL {name} evaluate: counts {np.bincount(counts.astype(int))}")
        sys.exit(1)
    ordered_args = {**seq._keras_sepseq_args, "shuffle": False}
    ordered_args.pop("bucket_by_length", None)  # bucketing without shuffle sorts by length
    ordered = type(seq)(**ordered_args)
    predicted = model.predict(ordered, verbose=0)
    predicted = np.rint((predicted["index"] if isinstance(predicted, dict) else predicted)[:, 0])
    if not np.array_equal(predicted, np.arange(N)):
        print(f"FAIL {name} predict: outputs do not line up with the inputs")
        sys.exit(1)
    seq.close()
    ordered.close()
    print(f"ok {name}")


def main():
    folder = tempfile.mkdtemp()
    images, labels = write_indexed_dataset(folder, N)
    sequences = [np.full((1 + i % 7, 1), i, np.float32) for i in range(N)]
    copies, _ = write_indexed_dataset(os.path.join(folder, "copies"), N)  # "right" reads other files than "left"
    for mode, options in [("threads", dict(workers=2)), ("processes", dict(workers=2, use_multiprocessing=True))]:
        args = dict(image_paths=images, label_paths=labels, batch_size=BATCH, seed=1, **options)
        seq = SeparatedSequence(**args)
        seq._keras_sepseq_args = args
        run(f"SeparatedSequence {mode}", seq, DecodeIndex(), (6, 5, 3))
        args = dict(
            sequences=sequences, labels=np.arange(N), batch_size=BATCH, seed=1, bucket_by_length=True, **options
        )
        seq = PaddedSequence(**args)
        seq._keras_sepseq_args = args
        run(f"PaddedSequence {mode}", seq, LastValue(), (None, 1))
        left, right = ImageField(images), ImageField(copies)
        args = dict(
            inputs={"left": left, "right": right},
            targets={"index": ArrayField(labels)},
            batch_size=BATCH,
            seed=1,
            **options,
        )
        seq = FieldSequence(**args)
        seq._keras_sepseq_args = args
        run(f"FieldSequence {mode}", seq, None, None)
    print("backend", keras.backend.backend(), "all ok")


if __name__ == "__main__":
    main()
