"""The worker pool that loads samples for a dataset: persistent, parallel within a batch, prefetching.

Keras's own `PyDataset` workers start a new pool every epoch, pickle every
batch back through a pipe, serve batches strictly one after another, and on
the jax and torch backends can serve a prefetched batch in the wrong epoch.
keras_sepseq datasets therefore tell Keras to use no workers and run their
own pool:

- the pool is created on first use and kept across epochs (processes are
  started once, not once per epoch);
- each batch of costly samples is split into one chunk per worker, so a
  batch loads in parallel whatever order Keras asks for batches in (`fit`
  shuffles the batch order by default); cheap samples go to a worker in
  whole batches, and a thread pool whose threads only slow each other
  down lets the calling thread load (`keras_sepseq.tuning` measures and
  decides);
- the batches likely to be asked for next (the following ones, or those
  Keras's generator will ask for) are prefetched, `max_queue_size` at most;
- workers load samples (`load_item`) and the main process assembles
  batches (`collate`), so a batch always holds what the main process says;
  process workers that get whole batches of cheap samples also assemble
  them, when the dataset allows it (`assembles_in_workers`), so that the
  main process copies one batch instead of unpickling every sample;
- process workers leave the arrays they loaded in shared memory
  (`SharedSlots`) rather than pickling them through the pool's pipe, and
  are fed through pipes of their own (`ProcessWorkers`), with no thread in
  this process between the caller and the workers;
- a batch asked for that was not prefetched goes ahead of queued
  prefetches.

A worker process that dies, or an error in a worker, is raised in the
caller at once; nothing waits forever.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import resource_tracker
from typing import Any, NamedTuple, cast

import numpy as np

from keras_sepseq.fetching import Pending, when_all
from keras_sepseq.in_worker import Assembled, init_process_worker, load_chunk_in_process
from keras_sepseq.process_workers import ProcessWorkers
from keras_sepseq.shared_slots import (
    SHARED_MEMORY_LIMIT,
    InSlot,
    SharedSlots,
    aligned,
    item_bytes,
)
from keras_sepseq.storage import supplied
from keras_sepseq.tuning import LoadTuner

_LIVE_POOLS: weakref.WeakSet[WorkerPool] = weakref.WeakSet()


class WorkerDiedError(RuntimeError):
    """A worker process ended unexpectedly (killed, out of memory, crashed in native code).

    Example:

    >>> raise WorkerDiedError("a worker process died")  # doctest: +SKIP
    """


def _epoch_of(key: Any) -> int | None:
    """The epoch of a batch key `(epoch, position)`; `None` for other keys."""
    return key[0] if isinstance(key, tuple) and key and isinstance(key[0], int) else None


class _Job(NamedTuple):
    chunk: list[int]
    future: Future
    slot: int | None  # the SharedSlots slot the worker writes into, if any
    level: int  # the tuner's limit when it was submitted
    fetched: dict[str, Pending] | None = None  # reads of the chunk's objects in storage, in flight or done
    epoch: int | None = None  # the epoch of the chunk's batch
    position: int | None = None  # the batch's position, when a process worker assembles the whole batch


class WorkerPool:
    """Loads the samples of batches with a persistent pool of threads or processes.

    Args:
        dataset: An object with `try_load_item(index)` (which returns a
            failure rather than raising it, so that one bad sample does not
            take its chunk down); it is copied into each process worker
            once, when the pool starts.
        workers: Number of threads or processes (at least 1).
        use_processes: Processes instead of threads.
        max_queue_size: How many batches to prefetch when batches are
            asked for in order.
        fetch: For data in object storage, starts reading the objects of
            a chunk of sample indices and returns `{url: Future}` (see
            `keras_sepseq.fetching`): a chunk goes to a worker once its
            bytes are in, so workers decode and never wait on the network.
        assemble: Process workers that load a whole batch also collate
            it (see `BaseSequence.assembles_in_workers`); `load` then
            returns an `Assembled` batch instead of items.
        lend: Results in process workers' shared memory (items, or an
            `Assembled` batch) reach the caller as views of it, reused once
            they are gone, not copies: for a caller that keeps no item past
            collating its batch (no cache).

    Example:

    >>> pool = WorkerPool(seq, workers=2, use_processes=False, max_queue_size=4)  # doctest: +SKIP
    >>> items = pool.load((0, 3), seq.batch_indices(3), upcoming=[])  # doctest: +SKIP
    """

    def __init__(
        self,
        dataset: Any,
        *,
        workers: int,
        use_processes: bool,
        max_queue_size: int,
        fetch: Callable[[list[int]], dict[str, Pending]] | None = None,
        assemble: bool = False,
        lend: bool = False,
    ) -> None:
        self.workers = max(1, int(workers))
        self.use_processes = bool(use_processes)
        self.max_queue_size = max(0, int(max_queue_size))
        self._lock = threading.Lock()
        self._pending: OrderedDict[Any, list[_Job]] = OrderedDict()
        self._slots: SharedSlots | None = None
        self._slots_tried = not self.use_processes  # shared memory is made once, sized by the first chunk
        self.hits = 0  # batches that were prefetched by the time they were asked for
        self.misses = 0
        self.inline = 0  # batches the calling thread loaded itself, as the tuner decided
        self.through_shared_memory = 0  # chunks whose arrays came back in shared memory
        self.assemble = bool(assemble) and self.use_processes
        self.lend = bool(lend)
        self.assembled = 0  # batches a process worker collated
        self._owner_pid = os.getpid()
        self._fetch = fetch
        # Remote data: the rate depends on reads in flight, and the caller must never load (it would wait on them).
        self.tuner = LoadTuner(
            self.workers, threads=not self.use_processes, queue=self.max_queue_size, compare=fetch is None
        )
        self._largest_batch = 1
        self._last_delivered: float | None = None
        self._epoch: Any = None
        self._executor: ProcessWorkers | ThreadPoolExecutor | None
        if self.use_processes:
            # Workers share the resource tracker running now: shared memory they open is then the same entry
            # as the one this process unlinks, not one their own tracker would unlink (and warn about) at exit.
            resource_tracker.ensure_running()
            self._executor = ProcessWorkers(
                self.workers,
                load_chunk_in_process,
                initializer=init_process_worker,
                initargs=(dataset,),
                context=multiprocessing.get_context(),
            )
        else:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="keras_sepseq")
        ref, tuner = weakref.ref(dataset), self.tuner

        def load_items(chunk: list[int], contents: dict[str, Any] | None = None, epoch: int | None = None) -> list[Any]:
            owner = ref()  # in the calling thread or a thread worker
            if owner is None:
                raise RuntimeError("the dataset was garbage-collected while loading")
            with owner.loading_epoch(epoch):
                if contents is None:  # local files
                    return owner.try_load_items(chunk)
                with supplied(contents):
                    return owner.try_load_items(chunk)

        self._load_items = load_items
        self._load_chunk = lambda chunk, contents=None, epoch=None: tuner.run(
            lambda c: load_items(c, contents, epoch), chunk
        )
        _LIVE_POOLS.add(self)

    def _start(
        self,
        chunk: list[int],
        epoch: int | None,
        slot: int | None = None,
        fetched: dict[str, Pending] | None = None,
        position: int | None = None,
    ) -> _Job:
        if fetched is None and self._fetch is not None:
            fetched = self._fetch(chunk)
        if self.use_processes and slot is None and self._slots is not None:
            slot = self._slots.take()
        limit = self.tuner.limit
        if fetched:
            future = self._after_fetch(chunk, slot, fetched, epoch, position)
            return _Job(chunk, future, slot, limit, fetched, epoch, position)
        return _Job(chunk, self._submit_chunk(chunk, slot, None, epoch, position), slot, limit, None, epoch, position)

    def _submit_chunk(
        self,
        chunk: list[int],
        slot: int | None,
        contents: dict[str, Any] | None,
        epoch: int | None,
        position: int | None = None,
    ) -> Future:
        if not self.use_processes:
            return self._running().submit(self._load_chunk, chunk, contents, epoch)
        where = None if slot is None or self._slots is None else self._slots.where(slot)
        return cast(ProcessWorkers, self._running()).submit(chunk, where, contents, epoch, position)

    def _after_fetch(
        self, chunk: list[int], slot: int | None, fetched: dict[str, Pending], epoch: int | None, position: int | None
    ) -> Future:
        """A future of the chunk's items, loaded by a worker once every read in `fetched` is done.

        Until then the future is pending (`cancel()` works, and nothing is
        submitted); once submitted it runs, and completes with the worker's
        result, so a slot is never given back while a worker may write it.
        """
        outer: Future = Future()

        def submit(contents: dict[str, Any]) -> None:  # on the I/O thread that finished the last read
            if not outer.set_running_or_notify_cancel():
                return  # cancelled while reading: dropped, or taken back to be queued again
            try:
                inner = self._submit_chunk(chunk, slot, contents, epoch, position)
            except BaseException as e:  # the pool was closed meanwhile
                outer.set_exception(e)
                return
            inner.add_done_callback(lambda done: _copy_result(done, outer))

        when_all(fetched, submit)
        return outer

    def _running(self) -> ProcessWorkers | ThreadPoolExecutor:
        if self._executor is None:
            raise RuntimeError("the worker pool was closed")
        return self._executor

    def _submit(self, key: Any, indices: np.ndarray) -> list[_Job]:
        """Starts loading the batch `key` (`(epoch, position)`): its samples `indices`, in chunks."""
        self._largest_batch = max(self._largest_batch, len(indices))
        epoch, count = _epoch_of(key), self.tuner.chunks(len(indices))
        if count == 1 and self.assemble and epoch is not None:  # a whole batch to one worker: it collates too
            return [self._start(np.asarray(indices, dtype=np.int64).tolist(), epoch, position=int(key[1]))]
        chunks = np.array_split(np.asarray(indices, dtype=np.int64), count)
        return [self._start(chunk, epoch) for chunk in (c.tolist() for c in chunks) if chunk]

    def _drop(self, job: _Job) -> None:
        """Cancels `job` if it has not started; its slot comes back once no worker can write to it."""
        job.future.cancel()
        for read in (job.fetched or {}).values():
            read.cancel()  # not started yet: no request made for a batch that is no longer wanted
        slots, slot = self._slots, job.slot
        if slot is not None and slots is not None:
            job.future.add_done_callback(lambda _: slots.give(slot))

    def _collect(self, job: _Job) -> Any:
        """Waits for `job` and returns its items (or `Assembled` batch), out of its slot if the worker used one."""
        lent = False
        try:
            result = self._result(job.future)
            if self.use_processes:
                seconds, cpu, result = result
                self.tuner.record(len(job.chunk), seconds, cpu_seconds=cpu)
            if isinstance(result, InSlot):
                self.through_shared_memory += 1
                slots = cast(SharedSlots, self._slots)  # a result in a slot implies the slots exist
                # The worker's arrays go to the caller as views of the slot, which is reused once they are gone;
                # while the caller holds on to batches enough to leave few slots free, they are copied out.
                if self.lend and job.slot is not None and slots.spare() > self.workers:
                    lent = True
                    return slots.read(result, lend=functools.partial(slots.give, job.slot))
                return slots.read(result)
        finally:
            if job.slot is not None and self._slots is not None and not lent:
                self._slots.give(job.slot)
        if not self._slots_tried:
            self._make_slots(item_bytes(result) * self._largest_batch // max(1, len(job.chunk)))
        return result

    def _make_slots(self, batch_bytes: int) -> None:
        """Creates the shared memory for process results, slots twice the size of a batch like the first.

        A slot holds a whole batch, since the tuner sends cheap samples to
        workers in whole batches.
        """
        self._slots_tried = True
        if batch_bytes == 0:
            return
        slot_bytes = max(1 << 16, aligned(2 * batch_bytes))
        try:
            stats = os.statvfs("/dev/shm")
            budget = min(SHARED_MEMORY_LIMIT, stats.f_bavail * stats.f_frsize // 4)
        except OSError:
            budget = SHARED_MEMORY_LIMIT
        count = min((self.max_queue_size + 2) * self.workers, budget // slot_bytes)
        if count < self.workers:
            return  # too little room: results keep going through the pipe
        try:
            self._slots = SharedSlots(count, slot_bytes)
        except OSError:
            self._slots = None
            return
        with self._lock:  # chunks queued before the slots existed and not started yet: into slots too
            for batch, j, job in self._take_back(lambda job: job.slot is None):
                batch[j] = self._start(job.chunk, job.epoch, None, job.fetched, job.position)

    def _take_back(self, which: Callable[[_Job], bool] = lambda job: True) -> list[tuple[list[_Job], int, _Job]]:
        """Cancels the queued jobs (those `which` accepts) no worker has started; returns `(batch, place, job)` of each.

        The caller resubmits them, which puts them at the back of the queue.
        """
        return [
            (batch, j, job)
            for batch in self._pending.values()
            for j, job in enumerate(batch)
            if which(job) and job.future.cancel()
        ]

    def _check_usable(self) -> None:
        if self._executor is None:
            raise RuntimeError("this WorkerPool was closed")
        if os.getpid() != self._owner_pid:
            raise RuntimeError("a WorkerPool cannot be used from a forked child process")

    def _drop_other_epochs(self, epoch: Any) -> None:
        if epoch != self._epoch:
            self._epoch, self._last_delivered = epoch, None  # the time between epochs is not loading
            self.tuner.new_epoch()
        for stale in [k for k in self._pending if k[0] != epoch]:
            for job in self._pending.pop(stale):
                self._drop(job)

    def _enqueue(self, upcoming: list[tuple[tuple, np.ndarray]]) -> None:
        """Submits `upcoming` batches not yet in flight, up to `max_queue_size` in flight."""
        for next_key, next_indices in upcoming:
            if len(self._pending) >= self.max_queue_size:
                break
            if next_key not in self._pending:
                self._pending[next_key] = self._submit(next_key, next_indices)

    def prefetch(self, upcoming: list[tuple[tuple, np.ndarray]]) -> None:
        """Starts loading batches expected soon, without waiting for them.

        Args:
            upcoming: `(key, indices)` of the batches, most likely first;
                keys are `(epoch, position)` as for `load`.

        Example:

        >>> pool.prefetch([((1, 4), seq.batch_indices(4))])  # doctest: +SKIP
        """
        if not upcoming:
            return
        with self._lock:
            self._check_usable()
            self._drop_other_epochs(upcoming[0][0][0])
            if not self.tuner.inline:
                self._enqueue(upcoming)

    def loads_here(self, epoch: Any) -> bool:
        """Whether the caller should load its next batch of `epoch` itself, as with no workers at all.

        True once the tuner has settled, for this epoch, on the calling
        thread loading (and measured it again: `LoadTuner.watching`) and
        nothing is in flight: the batch then skips the
        pool's bookkeeping (locks, timings, the epoch's context), which cost
        small samples 1-2% against `workers=1` (docs/benchmarks.md). The
        batch is counted in `inline`. False at the first batch of an epoch,
        which goes through `load` so that the tuner starts the epoch.

        Args:
            epoch: The epoch of the batch.

        Returns:
            Whether to call `try_load_items` directly.

        Example:

        >>> pool.loads_here(seq.epoch)  # doctest: +SKIP
        False
        """
        tuner = self.tuner
        if not tuner.inline or tuner.tuning or tuner.watching or epoch != self._epoch or self._pending:
            return False
        self.inline += 1
        return True

    def load(self, key: tuple, indices: np.ndarray, upcoming: list[tuple[tuple, np.ndarray]]) -> list[Any] | Assembled:
        """Returns the items of one batch, loading them or collecting what was prefetched.

        A batch that was not prefetched goes ahead of prefetched work that
        no worker has started yet, so a wrong guess costs no waiting.

        Args:
            key: `(epoch, position)` of the batch; prefetched batches of
                another epoch are dropped.
            indices: The batch's sample indices.
            upcoming: `(key, indices)` of the batches likely to be asked for
                next; up to `max_queue_size` batches are kept in flight.

        Returns:
            `[try_load_item(i) for i in indices]`: items, or `SampleError`s
            for samples that failed; or, from a pool made with `assemble`
            whose worker loaded the whole batch without a failure, the
            batch it collated (`Assembled`).

        Raises:
            WorkerDiedError: If a worker process died.
            Exception: Whatever `load_item` raised, e.g. a `SampleError`.

        Example:

        >>> pool.load((0, 0), np.array([3, 1]), [])  # doctest: +SKIP
        """
        with self._lock:
            self._check_usable()
            jobs = self._pending.pop(key, None)
            self._drop_other_epochs(key[0])
            if jobs is None and self.tuner.inline:
                self.inline += 1
            elif jobs is None:
                self.misses += 1
                waiting = self._take_back()
                jobs = self._submit(key, indices)
                for batch, j, job in waiting:  # back in the queue, behind this batch, in the same slot
                    batch[j] = self._start(job.chunk, job.epoch, job.slot, job.fetched, job.position)
            else:
                self.hits += 1
            if not self.tuner.inline:
                self._enqueue(upcoming)
        if jobs is None:
            loaded = self._load_inline(indices, _epoch_of(key))
            self._delivered(len(loaded), 0)
            return loaded
        items: list[Any] = []
        try:
            for k, job in enumerate(jobs):  # noqa: B007 (k: where a failure stopped, below)
                result = self._collect(job)
                if isinstance(result, Assembled):  # the only job of its batch
                    self.assembled += 1
                    self._delivered(len(job.chunk), job.level)
                    return result
                items.extend(result)
            self._delivered(len(items), jobs[0].level)
            return items
        except BrokenProcessPool as e:
            raise self._died() from e
        except BaseException:
            for job in jobs[k + 1 :]:
                self._drop(job)
            raise

    def _delivered(self, samples: int, level: int) -> None:
        """Tells the tuner how long the caller waited since the batch before (of `samples` samples)."""
        now, last = time.perf_counter(), self._last_delivered
        self._last_delivered = now
        if last is not None:
            self.tuner.delivered(samples, now - last, level)

    def _load_inline(self, indices: np.ndarray, epoch: int | None) -> list[Any]:
        """Loads a batch in the calling thread (the tuner found that faster than thread workers), timed."""
        chunk = np.asarray(indices, dtype=np.int64).tolist()
        start, cpu = time.perf_counter(), time.thread_time()
        items = self._load_items(chunk, None, epoch)
        self.tuner.record(len(chunk), time.perf_counter() - start, cpu_seconds=time.thread_time() - cpu)
        return items

    def _result(self, future: Future) -> list[Any]:
        """Waits for `future`, checking every second that no worker process died meanwhile.

        Process workers' results are read by the thread that waits for them
        (`ProcessWorkers.wait_for`), which sees a dead worker at once and
        fails every task in flight; the check makes sure a wait cannot
        outlive its workers even if that notice is lost.
        """
        while True:
            try:
                executor = self._executor
                if isinstance(executor, ProcessWorkers):
                    executor.wait_for(future, 1.0)
                return future.result(timeout=1.0)
            except FutureTimeout:
                if self.use_processes and (self._exit_codes() or getattr(self._executor, "_broken", False)):
                    raise self._died() from None

    def _died(self) -> WorkerDiedError:
        codes = self._exit_codes()
        self.close()
        return WorkerDiedError(
            "a keras_sepseq worker process died unexpectedly (killed, out of memory, or crashed in "
            f"native code; exit codes {codes}); the pool was shut down. Run with "
            "use_multiprocessing=False or fewer workers to find the cause."
        )

    def start(self) -> None:
        """Starts the workers now (process pools start them on first use otherwise).

        Starting process workers from the main thread, before training
        threads are busy, is safer than forking from a generator thread in
        the middle of an epoch.
        """
        executor = self._executor
        if isinstance(executor, ProcessWorkers):
            executor.start()
            self._processes = list(executor._processes.values())

    def _exit_codes(self) -> list:
        """Exit codes of the worker processes that ended (negative: killed by that signal)."""
        processes = list((getattr(getattr(self, "_executor", None), "_processes", None) or {}).values())
        processes += [p for p in getattr(self, "_processes", []) if p not in processes]
        return sorted(p.exitcode for p in processes if p.exitcode is not None)

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._executor is None

    def close(self) -> None:
        """Cancels prefetched work and stops the workers. Safe to call twice.

        Example:

        >>> pool.close()  # doctest: +SKIP
        """
        with self._lock:
            executor, self._executor = getattr(self, "_executor", None), None
            pending, self._pending = getattr(self, "_pending", {}), OrderedDict()
        for jobs in pending.values():
            for job in jobs:
                job.future.cancel()
        if executor is not None and os.getpid() == self._owner_pid:
            executor.shutdown(wait=True, cancel_futures=True)
            slots, self._slots = self._slots, None
            if slots is not None:
                slots.close()
            for process in getattr(self, "_processes", []):
                try:
                    process.close()  # releases its sentinel descriptor now, not at garbage collection
                except ValueError:  # still running: shutdown gave up on it
                    pass


def _copy_result(source: Future, target: Future) -> None:
    """Completes `target` as `source` completed."""
    error = source.exception() if not source.cancelled() else CancelledError()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


@atexit.register
def _close_all_pools() -> None:
    for pool in list(_LIVE_POOLS):
        pool.close()
