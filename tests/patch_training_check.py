"""Run under one Keras backend (KERAS_BACKEND set by the caller): a small 3-D model learns to segment patches.

Volumes hold a bright cube on noise and label volumes mark it; a PatchSequence
cuts 12^3 patches, half of them centred on the cube, with thread workers. The
model must learn the voxel labels (accuracy on unseen volumes >= 0.97 and its
loss must fall). Prints `patches <backend> ok` and exits 0 on success.
"""

import os
import sys
import tempfile

import keras

sys.path.insert(0, os.path.dirname(__file__))
from volume_data import write_blob_pairs  # noqa: E402

from keras_sepseq import LabelVolumeField, PatchSequence, VolumeField  # noqa: E402


def patches(scans, labels, **options):
    return PatchSequence(
        VolumeField(scans, normalize="zscore"), LabelVolumeField(labels, num_classes=2),
        batch_size=4, patch_size=(12, 12, 12), samples_per_file=4, foreground_share=0.5, **options,
    )  # fmt: skip


def main() -> None:
    keras.utils.set_random_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        scans, labels = write_blob_pairs(folder, 14, shape=(20, 20, 20))
        train = patches(scans[:10], labels[:10], workers=2, seed=1)
        held_out = patches(scans[10:], labels[10:], shuffle=False, seed=2)
        inputs = keras.Input((12, 12, 12, 1))
        hidden = keras.layers.Conv3D(4, 3, padding="same", activation="relu")(inputs)
        outputs = keras.layers.Conv3D(2, 1, activation="softmax")(hidden)
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy", metrics=["accuracy"])
        history = model.fit(train, epochs=6, verbose=0)
        loss, accuracy = model.evaluate(held_out, verbose=0)
        train.close()
    losses = history.history["loss"]
    print(f"losses {[round(v, 4) for v in losses]} held-out accuracy {accuracy:.4f}")
    if not (losses[-1] < losses[0] and accuracy >= 0.97):
        print(f"FAIL patches {keras.backend.backend()}")
        sys.exit(1)
    print(f"patches {keras.backend.backend()} ok")


if __name__ == "__main__":
    main()
