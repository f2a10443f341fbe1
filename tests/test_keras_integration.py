"""The one module that reads Keras internals: its version gate, its opt-out, and what it reads."""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

from keras_sepseq import PaddedSequence, keras_integration
from keras_sepseq.sequence import detect_shard


@pytest.fixture
def unknown_keras(monkeypatch):
    monkeypatch.setattr(keras, "version", lambda: "3.99.0")
    monkeypatch.setattr(keras_integration, "_warned", False)


def test_the_installed_keras_is_one_the_module_was_tested_on():
    assert "{}.{}".format(*keras_integration.keras_version()) in keras_integration.TESTED_KERAS
    assert keras_integration.recognised()


def test_an_unknown_keras_gets_the_plain_path_and_one_warning(unknown_keras):
    with pytest.warns(UserWarning, match=r"tested with Keras 3.15 and 3.16; with Keras 3.99.0 it does not read"):
        assert not keras_integration.recognised()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once
        assert not keras_integration.recognised()
        assert keras_integration.keras_frame(object(), "on_epoch_begin") is None
        assert not keras_integration.wrap_get_tf_dataset(lambda adapter, dataset: dataset)


def test_an_unknown_keras_trains_correctly(unknown_keras):
    seq = PaddedSequence([np.full((2, 1), i, np.float32) for i in range(40)], np.arange(40), batch_size=8, workers=2)
    model = keras.Sequential([keras.Input((None, 1)), keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    with pytest.warns(UserWarning, match="does not read Keras's internals"):
        history = model.fit(seq, epochs=2, verbose=0)
    seq.close()
    assert len(history.history["loss"]) == 2


@pytest.mark.parametrize("value, wrapped", [("1", False), ("0", True)], ids=["opted out", "not opted out"])
def test_the_adapter_wrapper_can_be_switched_off(value, wrapped):
    code = (
        "import keras_sepseq.sequence\n"
        "from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter as A\n"
        "print(getattr(A.get_tf_dataset, 'keras_sepseq_wrapped', False), flush=True)\n"
    )
    env = {**os.environ, "KERAS_SEPSEQ_NO_KERAS_PATCH": value, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(wrapped)


def test_no_keras_internals_are_read_outside_the_integration_module():
    package = os.path.dirname(keras_integration.__file__)
    offenders = []
    for name in sorted(os.listdir(package)):
        if name.endswith(".py") and name != "keras_integration.py":
            with open(os.path.join(package, name)) as f:
                text = f.read()
            for needle in ("keras.src", "_getframe", "_output_signature", "_get_iterator", "random.getstate"):
                if needle in text:
                    offenders.append(f"{name}: {needle}")
    assert offenders == []


def test_one_process_without_a_distribution_is_one_shard(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert keras_integration.distribution_data_shards() is None
    assert keras_integration.keras_shards_py_datasets() is None
    assert detect_shard() == (1, 0)


def test_the_global_random_state_is_not_touched_by_a_prediction():
    import random

    before = random.getstate()
    assert keras_integration.keras_next_order(object()) is None
    assert random.getstate() == before
