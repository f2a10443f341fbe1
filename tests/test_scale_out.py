"""Sharding across hosts, resumable state, tf.distribute and the tf.data service."""

import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keras_sepseq import PaddedSequence, SeparatedSequence
from keras_sepseq.sequence import detect_shard


def sequences(n, **kwargs):
    return PaddedSequence([np.full((1 + i % 5, 1), i, np.float32) for i in range(n)], np.arange(n), **kwargs)


def epoch_samples(seq):
    return [int(i) for p in range(len(seq)) for i in seq.batch_indices(p)]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 60), shards=st.integers(1, 5), batch_size=st.integers(1, 8), seed=st.integers(0, 10**6),
    drop=st.booleans(), shuffle=st.booleans(), bucket=st.booleans(),
)  # fmt: skip
def test_shards_are_disjoint_cover_the_data_and_have_equal_lengths(n, shards, batch_size, seed, drop, shuffle, bucket):
    if shards > n or (drop and batch_size > n // shards):
        return
    hosts = [sequences(n, batch_size=batch_size, num_shards=shards, shard_index=k, seed=seed, drop_remainder=drop,
                       shuffle=shuffle, bucket_by_length=bucket) for k in range(shards)]  # fmt: skip
    assert len({len(h) for h in hosts}) == 1  # the same number of batches everywhere
    for _ in range(2):
        served = [epoch_samples(h) for h in hosts]
        everything = [i for s in served for i in s]
        for s in served:
            assert len(s) == len(set(s))  # no repeat within a shard
        if drop:
            assert len(everything) == len(set(everything))  # disjoint
            assert n - len(set(everything)) <= shards * batch_size + shards  # at most the remainders left out
        else:
            assert set(everything) == set(range(n))  # together they cover the dataset
            assert len(everything) - n < shards  # wrapping repeats fewer than num_shards samples
        for h in hosts:
            h.on_epoch_end()


def test_shards_reshuffle_in_step():
    a = SeparatedSequence(
        [f"x{i}.png" for i in range(40)], np.arange(40), batch_size=4, num_shards=2, shard_index=0, seed=9
    )
    b = SeparatedSequence(
        [f"x{i}.png" for i in range(40)], np.arange(40), batch_size=4, num_shards=2, shard_index=1, seed=9
    )
    first = set(epoch_samples(a)) | set(epoch_samples(b))
    a.on_epoch_end(), b.on_epoch_end()
    assert first == set(range(40)) == set(epoch_samples(a)) | set(epoch_samples(b))


@pytest.mark.parametrize(
    "tf_config, expected",
    [
        (None, (1, 0)),
        ({"cluster": {"worker": ["a:1", "b:1", "c:1"]}, "task": {"type": "worker", "index": 2}}, (3, 2)),
        ({"cluster": {"chief": ["c:1"], "worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}, (3, 1)),
        ({"cluster": {"chief": ["c:1"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, (2, 0)),
    ],
    ids=["alone", "third worker", "worker after a chief", "the chief"],
)
def test_shard_auto_reads_tf_config(monkeypatch, tf_config, expected):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    assert detect_shard() == expected
    seq = SeparatedSequence([f"x{i}.png" for i in range(10)], np.arange(10), batch_size=2, shard="auto")
    assert (seq.num_shards, seq.shard_index) == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(num_shards=2, shard_index=2),
            r"`shard_index` must be below `num_shards`. Received: shard_index=2, num_shards=2",
        ),
        (dict(num_shards=0), r"`num_shards` must be an integer >= 1. Received: num_shards=0"),
        (dict(shard="manual"), r"`shard` must be None or 'auto'. Received: shard='manual'"),
        (dict(num_shards=11), r"`num_shards`=11 is more than the 10 samples"),
    ],
)
def test_bad_shard_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SeparatedSequence([f"x{i}.png" for i in range(10)], np.arange(10), **kwargs)


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("kind", ["separated", "padded bucketed"])
def test_resume_mid_epoch_in_a_new_object_serves_the_rest(shards, kind):
    def make():
        if kind == "separated":
            return SeparatedSequence(
                [f"x{i}.png" for i in range(50)],
                np.arange(50),
                batch_size=4,
                seed=5,
                num_shards=shards,
                shard_index=shards - 1,
            )
        return sequences(50, batch_size=4, seed=5, bucket_by_length=True, num_shards=shards, shard_index=shards - 1)

    seq = make()
    for _ in range(3):  # a few epochs, and Keras's extra epoch-end calls
        seq.on_epoch_end()
    k = 3
    served = {int(i) for p in range(k) for i in seq.batch_indices(p)}
    state = seq.get_state()
    assert len(pickle.dumps(state)) < 400 and json.loads(json.dumps(state)) == state
    resumed = make()  # a new process would build the same object
    resumed.set_state(state)
    rest = [int(i) for p in range(k, len(resumed)) for i in resumed.batch_indices(p)]
    assert sorted(served | set(rest)) == sorted(set(epoch_samples(seq)))
    assert not served & set(rest)


def test_set_state_refuses_other_settings():
    seq = SeparatedSequence([f"x{i}.png" for i in range(20)], np.arange(20), batch_size=4)
    other = SeparatedSequence([f"x{i}.png" for i in range(20)], np.arange(20), batch_size=5)
    with pytest.raises(
        ValueError, match=r"saved with other settings that decide the order: batch_size: saved 4, here 5"
    ):
        other.set_state(seq.get_state())
    with pytest.raises(ValueError, match=r"`state` must be a dict returned by get_state\(\)"):
        seq.set_state({"epoch": 3})


SUBPROCESS_HEAD = """
import os, sys, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path.insert(0, {tests!r})
import numpy as np, tensorflow as tf
from conftest import write_indexed_dataset
"""


def run_python(body, tmp_path, timeout=300):
    code = SUBPROCESS_HEAD.format(tests=os.path.dirname(__file__)) + textwrap.dedent(body).replace(
        "FOLDER", repr(str(tmp_path))
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return done.stdout


def test_trains_under_mirrored_strategy_on_two_logical_cpus(tmp_path):
    out = run_python(
        """
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras
        from keras_sepseq import SeparatedSequence
        images, labels = write_indexed_dataset(FOLDER, 64)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            model = keras.Sequential([keras.Input((6, 5, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
            model.compile("sgd", "mse")
        seq = SeparatedSequence(images, np.arange(64, dtype="float32") / 64, batch_size=8, image_size=(6, 5), workers=2)
        history = model.fit(seq, epochs=2, verbose=0)
        print("replicas", strategy.num_replicas_in_sync, "losses", len(history.history["loss"]))
        """,
        tmp_path,
    )
    assert "replicas 2 losses 2" in out


def test_trains_through_the_tf_data_service(tmp_path):
    out = run_python(
        """
        import keras
        from keras_sepseq import SeparatedSequence
        images, labels = write_indexed_dataset(FOLDER, 48)
        dispatcher = tf.data.experimental.service.DispatchServer()
        address = dispatcher.target.split("://")[1]
        workers = [tf.data.experimental.service.WorkerServer(
            tf.data.experimental.service.WorkerConfig(dispatcher_address=address)) for _ in range(2)]
        seq = SeparatedSequence(images, labels, batch_size=8, image_size=(6, 5), seed=0)
        ds = seq.to_tf_dataset().apply(tf.data.experimental.service.distribute(
            processing_mode="parallel_epochs", service=dispatcher.target, job_name="keras_sepseq"))
        seen = sorted(int(v) for x, y in ds for v in y.numpy())
        print("served", len(seen), "distinct", len(set(seen)), flush=True)
        model = keras.Sequential([keras.Input((6, 5, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        model.fit(ds.map(lambda x, y: (x, tf.cast(y, tf.float32))), epochs=1, verbose=0)
        print("trained", flush=True)
        os._exit(0)  # skips TensorFlow's slow teardown of the service threads; print above flushed first
        """,
        tmp_path,
    )
    assert "trained" in out
    served, distinct = int(out.split()[1]), int(out.split()[3])
    assert distinct == 48 and served == 48 * 2  # parallel_epochs: each of the two workers runs a whole epoch


def test_backup_and_restore_resumes_the_interrupted_epoch_order(tmp_path):
    import keras

    from keras_sepseq import SequenceCheckpoint

    backup = str(tmp_path / "backup")
    served = {}

    class Interrupt(Exception):
        pass

    class Record(keras.callbacks.Callback):
        def __init__(self, seq, stop_at=None):
            super().__init__()
            self.seq, self.stop_at = seq, stop_at

        def on_epoch_begin(self, epoch, logs=None):
            served.setdefault(epoch, []).append(epoch_samples(self.seq))

        def on_train_batch_end(self, batch, logs=None):
            if self.stop_at == (len(served) - 1, batch):
                raise Interrupt()

    def run(stop_at=None):
        keras.utils.set_random_seed(0)
        seq = SeparatedSequence([f"x{i}.png" for i in range(40)], np.arange(40), batch_size=8, seed=3)
        seq.load_item = lambda i: (np.full((2, 2, 3), i % 256, np.uint8), None)  # no files needed
        seq.collate = lambda indices, items, position=None: (
            np.stack([x for x, _ in items]).astype("float32"),
            np.asarray(indices, "float32"),
        )
        model = keras.Sequential([keras.Input((2, 2, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
        model.compile("sgd", "mse")
        callbacks = [
            keras.callbacks.BackupAndRestore(backup),
            SequenceCheckpoint(seq, os.path.join(backup, "sequence.json")),
            Record(seq, stop_at),
        ]
        model.fit(seq, epochs=4, verbose=0, callbacks=callbacks)

    with pytest.raises(Interrupt):
        run(stop_at=(2, 2))  # dies in the third epoch
    run()  # a new process: new model, new dataset object
    assert served[2][0] == served[2][1]  # the resumed epoch has the interrupted epoch's order
    assert served[3][0] != served[2][0]
