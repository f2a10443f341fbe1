"""The public surface: every name the first release exported still imports, and `__all__` is what exists."""

import importlib

import pytest

import keras_sepseq

FIRST_RELEASE = [
    "BaseSequence", "PaddedSequence", "PathArray", "SampleError", "SeparatedSequence", "SequenceCheckpoint",
    "ShapeMismatchError", "bucketed_order", "convert_color", "decode_image", "default_key", "epoch_order",
    "match_files", "Matching", "load_npy", "npy_shape", "pad_batch", "pair_files", "padding_weights", "read_image",
    "resize_image", "write_pixels",
]  # fmt: skip


@pytest.mark.parametrize("name", FIRST_RELEASE)
def test_names_of_the_first_release_still_import(name):
    assert name in keras_sepseq.__all__
    assert getattr(keras_sepseq, name) is not None


@pytest.mark.parametrize("name", keras_sepseq.__all__)
def test_every_exported_name_has_a_docstring_with_an_example(name):
    value = getattr(keras_sepseq, name)
    doc = value.__doc__ or ""
    assert doc.strip(), f"{name} has no docstring"
    assert "Example" in doc or ">>>" in doc, f"{name}'s docstring shows no example"


@pytest.mark.parametrize("module", ["sequence", "separated", "padded", "field_sequence", "fields", "order"])
def test_modules_name_their_public_names(module):
    loaded = importlib.import_module(f"keras_sepseq.{module}")
    for name in getattr(loaded, "__all__", []):
        assert hasattr(loaded, name), f"keras_sepseq.{module}.__all__ lists {name!r}, which it does not define"
