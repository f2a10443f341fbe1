"""Faults: a worker killed mid-epoch, Ctrl-C mid-epoch, descriptors after close. Nothing hangs."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from multiprocessing import resource_tracker

import pytest
from conftest import process_alive as alive
from conftest import write_indexed_dataset

from keras_sepseq import SeparatedSequence

SCRIPT_HEAD = textwrap.dedent(
    """
    import faulthandler, os, signal, sys, time
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # finish() asks for the stacks of a hung run
    sys.path.insert(0, {tests!r})
    import keras, numpy as np
    from conftest import write_indexed_dataset
    from keras_sepseq import SeparatedSequence

    class Slow(SeparatedSequence):
        def load_input(self, path):
            time.sleep(0.05)
            return super().load_input(path)

    images, labels = write_indexed_dataset({folder!r}, 64)
    seq = Slow(images, labels, batch_size=4, workers=2, use_multiprocessing=True)
    model = keras.Sequential([keras.Input((6, 5, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    """
)


def run_script(body, folder, **kwargs):
    code = SCRIPT_HEAD.format(tests=os.path.dirname(__file__), folder=str(folder)) + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def finish(process, timeout):
    """`process.communicate(timeout)`; a run still going by then fails the test with every thread's stack."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)
        time.sleep(2)
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"the run hung for {timeout} s; its threads:\n{err[-8000:]}\nstdout:\n{out}")


@pytest.mark.skipif(not os.path.exists("/proc"), reason="uses /proc (Linux)")
def test_a_worker_killed_mid_epoch_fails_fit_within_seconds(tmp_path):
    body = """
    class Killer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                os.kill(next(iter(seq._pool._executor._processes)), 9)
    start = time.monotonic()
    try:
        model.fit(seq, epochs=3, verbose=0, callbacks=[Killer()])
    except Exception as e:  # on the TensorFlow backend, a tf.errors.UnknownError carrying our message
        print("RAISED", type(e).__name__, round(time.monotonic() - start, 1), str(e).replace("\\n", " "), flush=True)
    # TensorFlow itself can hang at interpreter exit after any error raised from a PyDataset
    # (a plain keras.utils.PyDataset too, about one run in three): leave without finalizers.
    os._exit(0)
    """
    process = run_script(body, tmp_path / "data")
    out, err = finish(process, 120)
    assert out.startswith("RAISED"), out + err
    assert "WorkerDiedError: a keras_sepseq worker process died unexpectedly" in out
    assert float(out.split()[2]) < 30  # seconds from the start of fit, kill included


@pytest.mark.skipif(not os.path.exists("/proc"), reason="uses /proc (Linux)")
def test_ctrl_c_mid_epoch_leaves_no_worker_behind(tmp_path):
    body = """
    class Report(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                print("WORKERS", *seq._pool._executor._processes, flush=True)
    try:
        model.fit(seq, epochs=50, verbose=0, callbacks=[Report()])
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        sys.exit(130)
    """
    process = run_script(body, tmp_path / "data")
    line = process.stdout.readline()
    assert line.startswith("WORKERS"), line + process.stderr.read()
    workers = [int(p) for p in line.split()[1:]]
    assert workers and all(alive(p) for p in workers)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    out, err = finish(process, 60)
    assert process.returncode == 130, out + err
    assert "INTERRUPTED" in out
    deadline = time.monotonic() + 10
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in workers), "worker processes outlived the interrupted run"


@pytest.mark.skipif(not os.path.exists("/proc/self/fd"), reason="uses /proc (Linux)")
@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_close_gives_back_every_descriptor(tmp_path, processes):
    images, labels = write_indexed_dataset(tmp_path, 16)
    # Process pools start multiprocessing's resource tracker, once per interpreter, and keep its
    # pipe open for the next pool (it unlinks shared memory a dead worker left); start it first so
    # that this test does not depend on whether an earlier test already did.
    resource_tracker.ensure_running()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        seq = SeparatedSequence(images, labels, batch_size=4, workers=2, use_multiprocessing=processes)
        for i in range(len(seq)):
            seq[i]
        seq.close()
    assert len(os.listdir("/proc/self/fd")) <= before


def test_process_workers_decode_after_the_parent_started_opencvs_thread_pool(tmp_path):
    # OpenCV's thread pool does not survive fork(); workers must not use the one they inherit.
    body = """
    import cv2
    cv2.resize(np.zeros((3000, 3000, 3), np.uint8), (1000, 1000))  # big enough to start the pool
    big = Slow(images, labels, batch_size=8, workers=2, use_multiprocessing=True, image_size=(300, 200), shuffle=False)
    for epoch in range(2):
        big.on_epoch_begin()
        shapes = [big[i][0].shape for i in range(len(big))]
        big.on_epoch_end()
    print("DONE", len(shapes), shapes[0], cv2.getNumThreads() > 0, flush=True)
    big.close()
    """
    process = run_script(body, tmp_path / "data")
    out, err = finish(process, 120)
    assert out.split() == ["DONE", "8", "(8,", "300,", "200,", "3)", "True"], out + err
