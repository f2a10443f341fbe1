"""The shared options: declared once, the same flat keywords on every sequence, unknown ones named."""

import numpy as np
import pytest

from keras_sepseq import ArrayField, FieldSequence, PaddedSequence, SeparatedSequence
from keras_sepseq.options import DEFAULTS, SequenceOptions

MAKERS = {
    "SeparatedSequence": lambda **o: SeparatedSequence([f"x{i}.png" for i in range(6)], np.arange(6), 2, **o),
    "PaddedSequence": lambda **o: PaddedSequence([np.zeros((2, 1))] * 6, np.arange(6), 2, **o),
    "FieldSequence": lambda **o: FieldSequence(ArrayField(np.arange(6)), ArrayField(np.arange(6)), 2, **o),
}


def test_every_option_has_one_default():
    assert set(DEFAULTS) == set(SequenceOptions.__annotations__)


@pytest.mark.parametrize("name", list(MAKERS))
def test_every_class_takes_the_same_flat_keywords_with_the_same_defaults(name):
    seq = MAKERS[name](workers=2, seed=5, shuffle=False, num_shards=2, shard_index=1, on_error="skip", retries=1)
    assert (seq.num_workers, seq.seed, seq.shuffle, seq.num_shards, seq.shard_index) == (2, 5, False, 2, 1)
    assert (seq.on_error, seq.retries) == ("skip", 1)
    default = MAKERS[name]()
    assert (default.shuffle, default.drop_remainder, default.num_workers, default.max_queue_size) == (
        True,
        False,
        1,
        10,
    )
    assert (default.cache, default.on_error, default.max_errors, default.retries) == (None, "raise", None, 0)


@pytest.mark.parametrize("name", list(MAKERS))
def test_an_unknown_keyword_is_named_with_the_closest_option(name):
    with pytest.raises(
        TypeError, match=rf"{name}\(\) got unexpected keyword argument\(s\): 'worker' \(did you mean 'workers'\?\)"
    ):
        MAKERS[name](worker=2)


def test_image_options_are_declared_once_and_named_when_misspelt():
    from keras_sepseq import ImageField
    from keras_sepseq.options import IMAGE_DEFAULTS, ImageOptions

    assert set(IMAGE_DEFAULTS) == set(ImageOptions.__annotations__)
    with pytest.raises(TypeError, match=r"SeparatedSequence\(\) .*'image_sise' \(did you mean 'image_size'\?\)"):
        MAKERS["SeparatedSequence"](image_sise=(4, 4))
    with pytest.raises(TypeError, match=r"ImageField\(\) .*'colour_mode' \(did you mean 'color_mode'\?\)"):
        ImageField(["a.png"], colour_mode="rgb")
    seq = MAKERS["SeparatedSequence"](image_size=(4, 3), color_mode="grayscale", dtype="uint8", workers=2)
    assert (seq.image_size, seq.color_mode, seq.dtype, seq.num_workers) == ((4, 3), "grayscale", "uint8", 2)
