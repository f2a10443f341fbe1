"""`ProcessWorkers`: tasks, results, cancelling, failures, dead workers and shutdown, with real processes."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import CancelledError, Future
from concurrent.futures.process import BrokenProcessPool

import pytest
from conftest import process_alive as alive

from keras_sepseq.process_workers import DEPTH, ProcessWorkers


def _slow(seconds, value):
    time.sleep(seconds)
    return value


def _fail(message):
    raise ValueError(message)


def _unpicklable():
    return threading.Lock()


def _touch(path):
    with open(path, "w") as f:
        f.write("ran")
    return os.getpid()


@pytest.fixture(params=["poll", "connection-wait"])
def slow_workers(request, monkeypatch):
    if request.param == "connection-wait":  # as where select.poll is missing (Windows)
        monkeypatch.delattr("select.poll")
    workers = ProcessWorkers(2, _slow)
    yield workers
    workers.shutdown()


def test_every_result_comes_back_whatever_order_they_are_waited_for_in(slow_workers):
    futures = [slow_workers.submit(0.001 * (i % 3), i) for i in range(20)]
    assert [f.result(timeout=30) for f in reversed(futures)] == list(range(19, -1, -1))
    assert len(slow_workers._processes) == 2 and os.getpid() not in slow_workers._processes


def test_a_worker_is_sent_at_most_depth_tasks_and_the_rest_wait_here(slow_workers):
    futures = [slow_workers.submit(0.2, i) for i in range(10)]
    assert len(slow_workers._queue) == 10 - 2 * DEPTH
    assert slow_workers._outstanding == [DEPTH, DEPTH]
    assert [f.result(timeout=30) for f in futures] == list(range(10))
    assert slow_workers._outstanding == [0, 0] and not slow_workers._queue


def test_a_task_still_waiting_here_can_be_cancelled_and_never_runs(tmp_path):
    workers = ProcessWorkers(1, _touch)
    try:
        busy = [workers.submit(str(tmp_path / f"busy_{i}")) for i in range(DEPTH)]
        marker = tmp_path / "cancelled"
        cancelled = workers.submit(str(marker))
        assert cancelled.cancel()
        last = workers.submit(str(tmp_path / "last"))
        assert last.result(timeout=30) == busy[0].result(timeout=30)
        assert cancelled.cancelled() and not marker.exists() and (tmp_path / "last").exists()
        with pytest.raises(CancelledError):
            cancelled.result()
    finally:
        workers.shutdown()


def test_an_exception_in_a_worker_reaches_its_future_with_where_it_was_raised():
    workers = ProcessWorkers(2, _fail)
    try:
        error = workers.submit("bad sample 7").exception(timeout=30)
        assert type(error) is ValueError and str(error) == "bad sample 7"
        assert "raised in worker process" in error.__notes__[0] and "_fail" in error.__notes__[0]
    finally:
        workers.shutdown()


def test_a_result_that_does_not_pickle_is_an_error_that_says_so():
    workers = ProcessWorkers(1, _unpicklable)
    try:
        with pytest.raises(RuntimeError, match="a worker's result could not be sent back: TypeError"):
            workers.submit().result(timeout=30)
        assert workers.submit().exception(timeout=30) is not None  # the worker goes on
    finally:
        workers.shutdown()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_worker_fails_every_task_in_flight_within_seconds(slow_workers):
    futures = [slow_workers.submit(5.0, i) for i in range(6)]
    os.kill(next(iter(slow_workers._processes)), signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(BrokenProcessPool, match=r"ended unexpectedly \(exit codes \[-9\]\)"):
        futures[0].result(timeout=30)
    assert time.monotonic() - start < 3
    assert all(isinstance(f.exception(timeout=1), BrokenProcessPool) for f in futures)
    with pytest.raises(BrokenProcessPool):
        slow_workers.submit(0.0, 0)


def test_threads_waiting_at_once_each_get_their_result(slow_workers):
    futures = [slow_workers.submit(0.05, i) for i in range(8)]
    got = {}

    def wait(k):
        got[k] = futures[k].result(timeout=30)

    threads = [threading.Thread(target=wait, args=(k,)) for k in (7, 2, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert got == {7: 7, 2: 2, 5: 5}


def test_a_future_completed_by_a_task_another_thread_submits_later_is_waited_for(slow_workers):
    outer = Future()  # as the engine's future of a chunk whose objects are still being read

    def submit_later():
        time.sleep(0.2)
        inner = slow_workers.submit(0.0, "read, then decoded")
        inner.add_done_callback(lambda done: outer.set_result(done.result()))

    thread = threading.Thread(target=submit_later)
    thread.start()
    slow_workers.wait_for(outer, timeout=30)
    thread.join()
    assert outer.result() == "read, then decoded"


def test_sending_a_large_task_does_not_wait_for_the_busy_worker_to_finish():
    workers = ProcessWorkers(1, _slow)
    try:
        busy = workers.submit(2.0, "busy")
        time.sleep(0.2)  # the worker is in its task
        start = time.monotonic()
        large = workers.submit(0.0, b"x" * (8 << 20))  # far more than a pipe holds
        assert time.monotonic() - start < 1.0 and not busy.done()
        assert busy.result(timeout=30) == "busy" and len(large.result(timeout=30)) == 8 << 20
    finally:
        workers.shutdown()


def test_shutdown_cancels_what_waits_here_and_the_workers_exit(slow_workers):
    futures = [slow_workers.submit(0.1, i) for i in range(8)]
    processes = list(slow_workers._processes.values())
    slow_workers.shutdown()
    assert all(p.exitcode == 0 for p in processes)
    assert sum(f.cancelled() for f in futures) == 8 - 2 * DEPTH
    with pytest.raises(RuntimeError, match="the worker pool was closed"):
        slow_workers.submit(0.0, 0)
    slow_workers.shutdown()  # twice is fine


def test_workers_must_be_at_least_one():
    with pytest.raises(ValueError, match="`workers` must be at least 1. Received: workers=0"):
        ProcessWorkers(0, _slow)


@pytest.mark.skipif(not os.path.exists("/proc"), reason="uses /proc (Linux)")
def test_workers_exit_when_the_process_that_started_them_is_killed(tmp_path):
    script = textwrap.dedent(
        """
        import os, signal, time
        from keras_sepseq.process_workers import ProcessWorkers
        workers = ProcessWorkers(2, time.sleep)
        futures = [workers.submit(0.01) for _ in range(2)]
        [f.result(timeout=30) for f in futures]
        print(*workers._processes, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 2, done.stderr

    deadline = time.monotonic() + 10
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)
