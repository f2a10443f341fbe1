"""keras_sepseq: feed Keras models from datasets stored as one file per sample.

`SeparatedSequence` batches images and labels kept in separate files as a
`keras.utils.PyDataset`: shuffled per epoch, loaded on demand by thread or
process workers, with every sample exactly once per epoch and images never
misaligned with their labels. `PaddedSequence` does the same for
variable-length arrays, padding each batch.

Example:

>>> from keras_sepseq import SeparatedSequence, pair_files  # doctest: +SKIP
>>> images, labels = pair_files("data/image_*.png", "data/label_*.npy")  # doctest: +SKIP
>>> model.fit(SeparatedSequence(images, labels, batch_size=32, workers=2), epochs=5)  # doctest: +SKIP
"""

import importlib
from typing import TYPE_CHECKING

# Public names and the modules that define them. They are imported on first
# use, so that `keras-sepseq --help` and the CLI's logging set-up run before
# TensorFlow is loaded.
_EXPORTS = {
    "SampleError": "errors",
    "ShapeMismatchError": "errors",
    "convert_color": "images",
    "decode_image": "images",
    "read_image": "images",
    "resize_image": "images",
    "write_pixels": "images",
    "default_key": "pairing",
    "pair_files": "pairing",
    "match_files": "pairing",
    "Matching": "pairing",
    "PathArray": "paths",
    "SeparatedSequence": "separated",
    "FieldSequence": "field_sequence",
    "Field": "fields",
    "ImageField": "fields",
    "ArrayField": "fields",
    "PaddedField": "fields",
    "MaskField": "masks",
    "VolumeField": "volume_fields",
    "LabelVolumeField": "volume_fields",
    "PatchSequence": "patches",
    "read_volume": "volumes",
    "from_directory": "datasets",
    "from_table": "datasets",
    "split_by_key": "datasets",
    "PaddedSequence": "padded",
    "bucketed_order": "padding",
    "pad_batch": "padding",
    "padding_weights": "padding",
    "load_npy": "npy",
    "npy_shape": "npy",
    "BaseSequence": "sequence",
    "collates_anywhere": "sequence",
    "epoch_order": "sequence",
    "SequenceCheckpoint": "resume",
}

if TYPE_CHECKING:
    from keras_sepseq.datasets import from_directory, from_table, split_by_key
    from keras_sepseq.errors import SampleError, ShapeMismatchError
    from keras_sepseq.field_sequence import FieldSequence
    from keras_sepseq.fields import ArrayField, Field, ImageField, PaddedField
    from keras_sepseq.images import convert_color, decode_image, read_image, resize_image, write_pixels
    from keras_sepseq.masks import MaskField
    from keras_sepseq.npy import load_npy, npy_shape
    from keras_sepseq.padded import PaddedSequence
    from keras_sepseq.padding import bucketed_order, pad_batch, padding_weights
    from keras_sepseq.pairing import Matching, default_key, match_files, pair_files
    from keras_sepseq.patches import PatchSequence
    from keras_sepseq.paths import PathArray
    from keras_sepseq.resume import SequenceCheckpoint
    from keras_sepseq.separated import SeparatedSequence
    from keras_sepseq.sequence import BaseSequence, collates_anywhere, epoch_order
    from keras_sepseq.volume_fields import LabelVolumeField, VolumeField
    from keras_sepseq.volumes import read_volume


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_sepseq' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"keras_sepseq.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__version__ = "0.1.0"

__all__ = [
    "ArrayField",
    "BaseSequence",
    "Field",
    "FieldSequence",
    "ImageField",
    "LabelVolumeField",
    "MaskField",
    "PaddedField",
    "PaddedSequence",
    "PatchSequence",
    "PathArray",
    "SampleError",
    "SeparatedSequence",
    "SequenceCheckpoint",
    "ShapeMismatchError",
    "VolumeField",
    "bucketed_order",
    "collates_anywhere",
    "convert_color",
    "decode_image",
    "default_key",
    "epoch_order",
    "from_directory",
    "from_table",
    "match_files",
    "Matching",
    "load_npy",
    "npy_shape",
    "pad_batch",
    "pair_files",
    "padding_weights",
    "read_image",
    "read_volume",
    "resize_image",
    "split_by_key",
    "write_pixels",
]
