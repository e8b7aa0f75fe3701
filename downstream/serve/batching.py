"""Micro-batching: concurrent requests answered by one forward pass, on one thread that owns the model.

Request handlers :meth:`MicroBatcher.submit` a job and wait on its future. The worker thread takes the first job
waiting, then every job already queued and, while the batch is not full, the jobs that arrive within ``wait_s``; it
hands the batch to ``run_batch``, which sets each job's future. Under load the queue fills while a batch runs, so
batches grow by themselves; an idle service answers a lone request after at most ``wait_s`` of waiting.

The queue is bounded: a job that does not fit is refused at once (the caller answers 503) rather than waiting
behind an unbounded backlog. :meth:`MicroBatcher.start` starts the worker (the constructor starts no thread);
:meth:`MicroBatcher.close` refuses new jobs, finishes the ones queued, then stops.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds ``queue_size`` jobs already."""


class Closed(Exception):
    """The batcher is shutting down and takes no new jobs."""


class HasFuture:
    """What a job needs: the future its result goes to, and when it was queued."""

    future: Future
    enqueued: float


J = TypeVar("J", bound=HasFuture)


class MicroBatcher(Generic[J]):
    """One worker thread running ``run_batch`` over batches of at most ``max_batch`` queued jobs. The constructor
    only sets it up; :meth:`start` starts the thread.

    Args:
        run_batch: Answers a batch: sets the result (or exception) of each job's future. An exception it raises is
            set on every future it left unset, and the worker goes on with the next batch.
        max_batch: Jobs per batch at most.
        wait_s: Once a job is taken, how long to wait for more before running a batch that is not full.
        queue_size: Jobs waiting at most.
        name: The worker thread's name.
    """

    def __init__(self, run_batch: Callable[[list[J]], None], *, max_batch: int, wait_s: float, queue_size: int,
                 name: str = "vlm-serve-worker") -> None:
        self._run_batch = run_batch
        self.max_batch, self.wait_s = max_batch, wait_s
        self._queue: queue.Queue[J] = queue.Queue(maxsize=queue_size)
        self._closing = threading.Event()
        self._lock = threading.Lock()  # submit vs close: no job slips in after close has begun
        self.batches = 0
        self.jobs = 0
        self.name = name
        self._thread: threading.Thread | None = None  # made by start(): constructing starts nothing

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start the worker thread (jobs submitted before wait in the queue until then).

        Raises:
            RuntimeError: It was started before.
        """
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"{self.name} is already started")
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def submit(self, job: J) -> Future:
        """Queue ``job``; returns its future.

        Raises:
            QueueFull: ``queue_size`` jobs are waiting.
            Closed: :meth:`close` has been called.
        """
        with self._lock:
            if self._closing.is_set():
                raise Closed("the service is shutting down")
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise QueueFull(f"{self._queue.maxsize} requests are already waiting") from None
        return job.future

    def queued(self) -> int:
        return self._queue.qsize()

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new jobs, answer those queued, stop the worker; True when it stopped within ``timeout`` (a batcher
        never started has no worker: the jobs queued get :class:`Closed`)."""
        with self._lock:
            self._closing.set()
            thread = self._thread
        if thread is None:
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    return True
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(Closed("the service shut down before its worker started"))
        thread.join(timeout)
        return not thread.is_alive()

    def _take(self) -> list[J]:
        """The next batch (empty when closing and nothing is left)."""
        while True:
            try:
                first = self._queue.get(timeout=0.05)
                break
            except queue.Empty:
                if self._closing.is_set():
                    return []
        batch = [first]
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())  # what is already waiting costs no wait
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing.is_set():
                break
            try:
                batch.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                return
            # a job whose caller gave up (client gone, timeout) is dropped, not computed
            live = [job for job in batch if job.future.set_running_or_notify_cancel()]
            if not live:
                continue
            self.batches += 1
            self.jobs += len(live)
            try:
                self._run_batch(live)
            except Exception as exc:  # kept alive: one bad batch must not stop the service
                logger.exception("a batch of %d request(s) failed", len(live))
                for job in live:
                    if not job.future.done():
                        job.future.set_exception(exc)

    def stats(self) -> dict[str, Any]:
        return {"queued": self.queued(), "batches": self.batches, "requests": self.jobs,
                "mean_batch": round(self.jobs / self.batches, 2) if self.batches else 0.0}
