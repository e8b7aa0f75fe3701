"""The micro-batcher on its own: its constructor only wires (no thread until :meth:`MicroBatcher.start`), and once
started it answers what was queued."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import pytest

from downstream.serve.batching import Closed, MicroBatcher

NAME = "test-micro-batcher"


@dataclass
class _Job:
    value: int
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


def _double(jobs: list[_Job]) -> None:
    for job in jobs:
        job.future.set_result((job.value * 2, len(jobs)))


def _batcher() -> MicroBatcher[_Job]:
    return MicroBatcher(_double, max_batch=8, wait_s=0.01, queue_size=16, name=NAME)


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == NAME]


def test_constructing_starts_no_thread_and_start_serves_what_was_queued():
    before = threading.active_count()
    batcher = _batcher()
    assert threading.active_count() == before and not _workers() and not batcher.started
    futures = [batcher.submit(_Job(i)) for i in range(3)]  # queued: nobody answers them yet
    time.sleep(0.1)
    assert not any(f.done() for f in futures)
    batcher.start()
    assert batcher.started and len(_workers()) == 1
    assert [f.result(10)[0] for f in futures] == [0, 2, 4]
    assert batcher.submit(_Job(5)).result(10)[0] == 10
    with pytest.raises(RuntimeError, match="already started"):
        batcher.start()
    assert batcher.close(10) and not _workers()


def test_closing_a_batcher_never_started_fails_its_queued_jobs():
    batcher = _batcher()
    future = batcher.submit(_Job(1))
    assert batcher.close(1) and not _workers()
    with pytest.raises(Closed):
        future.result(1)
    with pytest.raises(Closed):
        batcher.submit(_Job(2))
