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
from PIL import Image

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
    segmentation_checks(folder)
    print("backend", keras.backend.backend(), "all ok")


def mean_iou(logits, masks, num_classes, ignore=255):
    predicted = np.argmax(ops.convert_to_numpy(logits), axis=-1)
    valid = masks != ignore
    ious = []
    for c in range(num_classes):
        union = (((predicted == c) | (masks == c)) & valid).sum()
        if union:
            ious.append((((predicted == c) & (masks == c)) & valid).sum() / union)
    return float(np.mean(ious))


def expect(score, minimum, what):
    """Prints `ok` with the mean IoU, or `FAIL` and exits when it is below `minimum`."""
    if score < minimum:
        print(f"FAIL {what}: mean IoU {score:.2f}")
        sys.exit(1)
    print(f"ok {what}: mean IoU {score:.2f}")


def train_segmenter(train, val, inputs, num_classes, epochs):
    """A small fully convolutional model (logits out: softmax + sparse cross-entropy on 4-D outputs fails on torch
    in Keras 3.15, "grad_input must be contiguous"), trained on `train`, scored by mean IoU on `val`'s first batch."""
    keras.utils.set_random_seed(0)
    tensors = {name: keras.Input(shape, name=name) for name, shape in inputs.items()}
    h = keras.layers.Concatenate()(list(tensors.values())) if len(tensors) > 1 else next(iter(tensors.values()))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    out = keras.layers.Conv2D(num_classes, 1, name="mask")(h)
    model = keras.Model(tensors if len(tensors) > 1 else next(iter(tensors.values())), out)
    model.compile(
        keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    )
    model.fit(train, epochs=epochs, verbose=0)
    x, y = val[0]
    return mean_iou(model.predict(x, verbose=0), y["mask"] if isinstance(y, dict) else y, num_classes)


def segmentation_checks(folder):
    """Image + mask files learn a segmentation far above chance (mean IoU about 0.25), with threads and a memory
    cache, then processes and a directory cache; two scans per sample learn a task that needs both."""
    from keras_sepseq.demo import make_segmentation_dataset
    from keras_sepseq.masks import MaskField
    from keras_sepseq.pairing import pair_files

    images, masks = make_segmentation_dataset(os.path.join(folder, "shapes"), samples=240, size=32, seed=0)
    val = SeparatedSequence(images[200:], masks[200:], batch_size=40, num_classes=4, ignore_index=255, shuffle=False)
    for mode, options in [
        ("threads, memory cache", dict(workers=2, cache="memory")),
        ("processes, directory cache", dict(workers=2, use_multiprocessing=True, cache=os.path.join(folder, "cache"))),
    ]:
        train = SeparatedSequence(
            images[:200], masks[:200], batch_size=16, image_size=(32, 32), num_classes=4, ignore_index=255, seed=0,
            **options,
        )  # fmt: skip
        expect(train_segmenter(train, val, {"image": (32, 32, 3)}, 4, epochs=10), 0.6, f"segmentation {mode}")
        train.close()
    # Augmented on this backend: Keras's layers run in the backend's ops; flips and crops keep masks on images,
    # threads and processes give the same bytes, and it still learns.
    augment = [keras.layers.RandomFlip("horizontal"), keras.layers.RandomCrop(28, 28)]

    def augmented(**options):
        return SeparatedSequence(
            images[:200], masks[:200], batch_size=16, num_classes=4, ignore_index=255, seed=0, augment=augment,
            **options,
        )  # fmt: skip

    threads, processes = augmented(workers=2, cache="memory"), augmented(workers=2, use_multiprocessing=True)
    if threads[3][0].tobytes() != processes[3][0].tobytes():
        print("FAIL augmentation: threads and processes differ")
        sys.exit(1)
    processes.close()
    val_crop = SeparatedSequence(images[200:], masks[200:], batch_size=40, num_classes=4, ignore_index=255,
                                 shuffle=False, augment=keras.layers.CenterCrop(28, 28))  # fmt: skip
    expect(train_segmenter(threads, val_crop, {"image": (28, 28, 3)}, 4, epochs=10), 0.6, "augmented segmentation")
    threads.close()
    # Two scans per sample: class 1 where only t1 is bright, 2 where only t2 is, 3 where both are.
    rng = np.random.default_rng(1)
    scans = os.path.join(folder, "scans")
    os.makedirs(scans, exist_ok=True)
    for i in range(160):
        a, b = (rng.random((8, 8)) > 0.5 for _ in range(2))
        a, b = (np.kron(m, np.ones((4, 4), bool)) for m in (a, b))
        mask = (a & ~b) * 1 + (~a & b) * 2 + (a & b) * 3
        for name, scan in (("t1", a), ("t2", b)):
            noisy = np.clip(scan * 160 + 40 + rng.normal(0, 20, scan.shape), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(os.path.join(scans, f"p{i:03d}_{name}.png"))
        Image.fromarray(mask.astype(np.uint8)).save(os.path.join(scans, f"p{i:03d}_mask.png"))
    files = pair_files(
        t1=os.path.join(scans, "*_t1.png"), t2=os.path.join(scans, "*_t2.png"), mask=os.path.join(scans, "*_mask.png"),
        key=r"p(\d+)",
    )  # fmt: skip

    def two_scans(part, **options):
        return FieldSequence(
            {name: ImageField(files[name][part], color_mode="grayscale") for name in ("t1", "t2")},
            MaskField(files["mask"][part], num_classes=4),  # one target: batches are ({"t1", "t2"}, masks)
            **options,
        )

    train = two_scans(slice(0, 128), batch_size=16, seed=0, workers=2)
    score = train_segmenter(train, two_scans(slice(128, 160), batch_size=32, shuffle=False),
                            {"t1": (32, 32, 1), "t2": (32, 32, 1)}, 4, epochs=12)  # fmt: skip
    train.close()
    expect(score, 0.8, "two scans per sample")


if __name__ == "__main__":
    main()
