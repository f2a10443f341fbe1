"""`ProcessWorkers`: worker processes fed through their own pipes, with no thread in the calling process.

`concurrent.futures.ProcessPoolExecutor` runs two threads in the process
that submits: one moves work to a queue and wakes a second, which pickles
it into a shared pipe; the first also reads every result and completes its
future. For batches of cheap samples those threads cost the calling
process as much as everything else it does for a batch, and they take the
GIL from the thread that assembles batches at every hand-over: 2.2-2.3 us
of CPU per sample in the executor's threads against 3.0-3.3 us in the
calling thread, for 8x8 PNGs and short `.npy` sequences in whole batches
(docs/benchmarks.md).

Here each worker has a pipe for tasks and one for results. A task is sent
from the thread that submits it, at most `DEPTH` per worker at a time (the
rest wait in this process, where `Future.cancel()` still takes them back);
results are read by whichever thread waits for one (`wait_for`, or a
future's `result()`), which also sends the next tasks. Nothing runs in the
calling process between those calls: while the caller is busy elsewhere,
each worker still has up to `DEPTH` tasks to work through. A worker
receives its tasks on a thread of its own, so that sending never waits for
the worker to finish the task it is on. A worker that dies is seen at once
(its sentinel is among the descriptors waited on) and fails every task in
flight with `BrokenProcessPool`; a worker whose pool's process is gone
finds its pipe closed and exits.

Example:

>>> workers = ProcessWorkers(2, pow)  # doctest: +SKIP
>>> workers.submit(2, 10).result()  # doctest: +SKIP
1024
>>> workers.shutdown()  # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import queue
import select
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_connections
from typing import Any, cast

__all__ = ["DEPTH", "ProcessWorkers"]

DEPTH = 2
"""Tasks sent to a worker and not yet answered, at most: one it works on, one it starts next without waiting for
this process to read the first's result (a round trip of ~0.1 ms, as long as a batch of 8x8 PNGs takes)."""

POLL_SECONDS = 0.1
"""The longest a waiting thread sleeps in one wait for results (it wakes as soon as one arrives)."""

SHUTDOWN_SECONDS = 30.0
"""How long `shutdown` waits for a worker to finish the tasks it was sent before terminating it."""

_LIVE: weakref.WeakSet[ProcessWorkers] = weakref.WeakSet()  # pools whose pipes a new worker must not inherit

_exiting = False  # set once the interpreter exits: no worker starts and no task is taken after that


def _interpreter_exits() -> None:
    global _exiting
    _exiting = True


# As `concurrent.futures` does: before threads are joined at exit, so that a thread that still loads batches
# (a tf.data thread running a generator, say) gets an error instead of starting a new pool while the
# interpreter tears down, where it could wait on the GIL held by a destructor that waits on it.
getattr(threading, "_register_atexit", atexit.register)(_interpreter_exits)


def _serve(
    function: Callable[..., Any],
    initializer: Callable[..., None] | None,
    initargs: tuple,
    tasks: Connection,
    results: Connection,
    inherited: list[int],
) -> None:
    """A worker process: runs `function(*args)` for every `(task id, args)` received, answers `(id, ok, value)`.

    `inherited` are descriptors a forked worker got from the pool's process
    and must not keep: the other workers' task pipes (a worker sees that the
    pool's process is gone when its task pipe closes, which it does only
    once no process holds the writing end) and its own pipes' other ends.
    """
    for descriptor in inherited:
        try:
            os.close(descriptor)
        except OSError:
            pass
    parent = os.getppid()
    if initializer is not None:
        initializer(*initargs)
    inbox: queue.SimpleQueue = queue.SimpleQueue()

    def receive() -> None:  # on a thread, so that the pool's process never waits to hand over a task
        try:
            while True:
                message = tasks.recv()
                inbox.put(message)
                if message is None:
                    return
        except (EOFError, OSError):  # the pool's process closed the pipe or exited
            inbox.put(None)

    threading.Thread(target=receive, name="keras_sepseq_tasks", daemon=True).start()
    while True:
        try:
            message = inbox.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the pool's process is gone (and something else holds the pipe)
                return
            continue
        if message is None:
            return
        task, args = message
        try:
            reply = (task, True, function(*args))
        except BaseException as e:  # noqa: BLE001 (every failure goes back to the task's future)
            note = getattr(e, "add_note", None)  # Python >= 3.11: the worker's traceback travels with it
            if note is not None:
                note(f"raised in worker process {os.getpid()}:\n{''.join(traceback.format_tb(e.__traceback__))}")
            reply = (task, False, e)
        try:
            try:
                results.send(reply)
            except Exception as e:  # the value or the exception does not pickle: say so, in its place
                results.send((task, False, RuntimeError(f"a worker's result could not be sent back: {e!r}")))
        except (EOFError, OSError):  # the pool's process is gone
            return


def _pool_ends() -> list[Connection]:
    """This process's ends of every live pool's pipes (a forked worker closes its copies)."""
    return [c for pool in list(_LIVE) for c in (*pool._tasks, *pool._results) if not c.closed]


class _Task(Future):
    """A task's future: waiting on it reads the workers' results (nothing else in this process does)."""

    def __init__(self, workers: ProcessWorkers) -> None:
        super().__init__()
        self._workers = workers

    def result(self, timeout: float | None = None) -> Any:
        self._workers.wait_for(self, timeout)
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._workers.wait_for(self, timeout)
        return super().exception(0)


class ProcessWorkers:
    """A pool of worker processes that run one function, without threads in the calling process.

    Args:
        workers: Number of processes.
        function: What each task runs, `function(*args)`; picklable (a
            module-level function).
        initializer: Called once in each worker with `initargs`.
        initargs: Arguments of `initializer` (copied into each worker once).
        context: A `multiprocessing` context. Defaults to the default one.

    Raises:
        ValueError: If `workers` is less than 1.

    Example:

    >>> workers = ProcessWorkers(2, divmod)  # doctest: +SKIP
    >>> [f.result() for f in [workers.submit(7, 2), workers.submit(9, 4)]]  # doctest: +SKIP
    [(3, 1), (2, 1)]
    >>> workers.shutdown()  # doctest: +SKIP
    """

    def __init__(
        self,
        workers: int,
        function: Callable[..., Any],
        *,
        initializer: Callable[..., None] | None = None,
        initargs: tuple = (),
        context: Any = None,
    ) -> None:
        if int(workers) < 1:
            raise ValueError(f"`workers` must be at least 1. Received: workers={workers!r}")
        self.workers = int(workers)
        self._function, self._initializer, self._initargs = function, initializer, initargs
        self._context = context or multiprocessing.get_context()
        self._lock = threading.RLock()  # the queue, the tasks in flight, the task pipes
        self._reading = threading.RLock()  # held by the one thread that reads results (a callback may wait too)
        self._queue: deque[tuple[int, _Task, tuple]] = deque()
        self._sent = threading.Event()  # set when a task is sent: a thread waiting with nothing in flight wakes
        self._in_flight: dict[int, tuple[_Task, int]] = {}  # task id: (future, worker)
        self._outstanding = [0] * self.workers
        self._next_task = 0
        self._processes: dict[int, Any] = {}  # pid: Process, as ProcessPoolExecutor names it
        self._workers: list[Any] = []
        self._tasks: list[Connection] = []
        self._results: list[Connection] = []
        self._poller: Any = None
        self._watched: dict[int, tuple[str, int]] = {}  # descriptor: ("result" or "sentinel", worker)
        self._broken: str | None = None
        self._shut = False  # no new task is taken
        self._closed = False  # the pipes are closed

    def start(self) -> None:
        """Starts the worker processes now (the first `submit` does otherwise). Safe to call twice.

        Raises:
            RuntimeError: If the pool was shut down.
        """
        with self._lock:
            if self._shut:
                raise RuntimeError("the worker pool was closed")
            if self._workers:
                return
            if _exiting:
                raise RuntimeError("cannot start worker processes while the interpreter exits")
            forks = self._context.get_start_method() == "fork"
            for _ in range(self.workers):
                task_reader, task_writer = self._context.Pipe(duplex=False)
                result_reader, result_writer = self._context.Pipe(duplex=False)
                ends = (task_writer, result_reader, *self._tasks, *self._results, *_pool_ends())
                theirs = sorted({c.fileno() for c in ends})
                process = self._context.Process(
                    target=_serve,
                    args=(
                        self._function, self._initializer, self._initargs, task_reader, result_writer,
                        theirs if forks else [],
                    ),
                    name="keras_sepseq_worker",
                )  # fmt: skip
                process.start()
                task_reader.close()
                result_writer.close()
                self._workers.append(process)
                self._processes[cast(int, process.pid)] = process
                self._tasks.append(task_writer)
                self._results.append(result_reader)
            _LIVE.add(self)
            if hasattr(select, "poll"):
                self._poller = select.poll()
                for k, (results, process) in enumerate(zip(self._results, self._workers)):
                    for kind, descriptor in (("result", results.fileno()), ("sentinel", process.sentinel)):
                        self._poller.register(descriptor, select.POLLIN | select.POLLHUP | select.POLLERR)
                        self._watched[descriptor] = (kind, k)

    def submit(self, *args: Any) -> Future:
        """Queues `function(*args)`; returns its future (whose `cancel()` works until a worker is sent it).

        Args:
            *args: The task's arguments (pickled to the worker).

        Returns:
            A `concurrent.futures.Future`.

        Raises:
            RuntimeError: If the pool was shut down.
            BrokenProcessPool: If a worker died.
        """
        self.start()
        future = _Task(self)
        with self._lock:
            if self._shut or _exiting:
                raise RuntimeError("the worker pool was closed" if self._shut else "the interpreter exits")
            if self._broken:
                raise BrokenProcessPool(self._broken)
            self._queue.append((self._next_task, future, args))
            self._next_task += 1
            self._dispatch()
        return future

    def wait_for(self, future: Future, timeout: float | None = None) -> None:
        """Reads the workers' results until `future` is done (any future completed by one of this pool's).

        Args:
            future: The future to wait for.
            timeout: Seconds at most; `None`: as long as it takes.

        Raises:
            concurrent.futures.TimeoutError: If `future` is not done in time.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not future.done():
            left = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
            if left <= 0:
                raise FutureTimeout()
            if not self._reading.acquire(timeout=left):
                continue  # another thread reads results (ours among them)
            try:
                if not future.done():
                    self._read_results(left)
            finally:
                self._reading.release()

    def _read_results(self, timeout: float) -> None:
        """Waits up to `timeout` for results, completes their futures, and sends the next tasks."""
        with self._lock:
            idle = not self._in_flight or self._closed or self._broken is not None
            if idle:
                self._sent.clear()
        if idle:  # a future of another kind is waited for (its task not submitted yet), or the pool is done
            self._sent.wait(min(timeout, 0.01))  # woken as soon as a task is sent (by an I/O thread, say)
            return
        if self._poller is not None:
            ready = [self._watched[d] for d, _ in self._poller.poll(timeout * 1000)]
        else:  # no poll() (Windows): multiprocessing's own wait
            watched: dict[Any, tuple[str, int]] = {c: ("result", k) for k, c in enumerate(self._results)}
            watched.update({p.sentinel: ("sentinel", k) for k, p in enumerate(self._workers)})
            ready = [watched[o] for o in wait_connections(list(watched), timeout)]
        answers: list[tuple[_Task, bool, Any]] = []
        died = False
        with self._lock:
            for kind, k in ready:
                results = self._results[k]
                try:
                    while results.poll():
                        task, ok, value = results.recv()
                        future, _ = self._in_flight.pop(task)
                        self._outstanding[k] -= 1
                        answers.append((future, ok, value))
                except (EOFError, OSError):
                    died = True
                died = died or kind == "sentinel"
                if kind == "sentinel" and self._shut and self._poller is not None:  # a worker that was told to stop
                    self._poller.unregister(self._workers[k].sentinel)
            if died and not self._shut:
                answers.extend(self._break())
            else:
                self._dispatch()
        for future, ok, value in answers:  # outside the lock: callbacks may submit
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _dispatch(self) -> None:
        """Sends queued tasks to the workers with the fewest unanswered, up to `DEPTH` each (under the lock)."""
        while self._queue and not self._broken:
            k = min(range(self.workers), key=self._outstanding.__getitem__)
            if self._outstanding[k] >= DEPTH:
                return
            task, future, args = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited here
            self._in_flight[task] = (future, k)
            self._outstanding[k] += 1
            self._sent.set()
            try:
                self._tasks[k].send((task, args))
            except (OSError, EOFError):  # the worker is gone: its sentinel says so at the next wait
                return
            except Exception as e:  # the arguments do not pickle
                del self._in_flight[task]
                self._outstanding[k] -= 1
                future.set_exception(e)

    def _break(self) -> list[tuple[_Task, bool, Any]]:
        """Marks the pool broken (a worker died); returns a `BrokenProcessPool` answer for every task left."""
        deadline = time.monotonic() + 1.0
        while not (codes := sorted(p.exitcode for p in self._workers if p.exitcode is not None)):
            if time.monotonic() > deadline:  # its pipe closed before it could be waited for
                break
            time.sleep(0.005)
        self._broken = f"a worker process ended unexpectedly (exit codes {codes}); the pool can no longer be used"
        left = [future for future, _ in self._in_flight.values()]
        left += [future for _, future, _ in self._queue if future.set_running_or_notify_cancel()]
        self._in_flight.clear()
        self._queue.clear()
        return [(future, False, BrokenProcessPool(self._broken)) for future in left]

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = True) -> None:
        """Cancels queued tasks, tells the workers to stop after the tasks they were sent, and waits for them.

        A worker still busy after `SHUTDOWN_SECONDS` is terminated. Safe to
        call twice.

        Args:
            wait: Wait for the workers to exit. Defaults to True.
            cancel_futures: Accepted for `ProcessPoolExecutor`'s signature;
                queued tasks are always cancelled.
        """
        with self._lock:
            if self._shut:
                return
            self._shut = True
            queued, self._queue = list(self._queue), deque()
            for _, future, _ in queued:
                future.cancel()
            for tasks in self._tasks:
                try:
                    tasks.send(None)
                except (OSError, EOFError):
                    pass
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        while wait and time.monotonic() < deadline:  # what the workers were sent completes, as with an executor
            with self._lock:
                if not self._in_flight or self._broken:
                    break
            with self._reading:
                self._read_results(max(0.001, min(POLL_SECONDS, deadline - time.monotonic())))
        for process in self._workers if wait else []:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                process.terminate()
                process.join(5)
        with self._reading, self._lock:
            self._closed = True
            left, self._in_flight = list(self._in_flight.values()), {}
            for connection in (*self._tasks, *self._results):  # a worker blocked sending a result gets EPIPE
                connection.close()
        for future, _ in left:
            if not future.done():
                future.set_exception(RuntimeError("the worker pool was closed"))

    def __repr__(self) -> str:
        state = "broken" if self._broken else "shut down" if self._shut else f"{len(self._in_flight)} in flight"
        return f"ProcessWorkers({self.workers} workers, {state}, pid {os.getpid()})"
