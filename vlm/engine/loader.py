"""The engine's data plan: which examples make each batch, on each rank, in each epoch, from any position.

A *batch source* is any object with ``__len__`` (number of examples) and ``batch(indices, epoch) -> Batch``; it
must draw its randomness (masking, negatives) from ``(seed, epoch, example index)`` only. The plan then fixes
everything else: epoch ``e`` visits a permutation of the examples seeded by ``(seed, e)``, cut into global batches of
``batch_size × world_size``; rank ``r`` takes slice ``r`` of each. So a batch is a pure function of
``(seed, epoch, position, rank)``: resuming at a saved position replays exactly what an uninterrupted run would have
seen, with or without DataLoader workers, and 2 ranks × b sees the same samples as 1 rank × 2b.

:class:`StepBatches` walks the plan for the trainer: the ``grad_accum`` micro-batches of each optimiser step, epoch
after epoch, from a saved ``(epoch, position)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any, Protocol

import numpy as np
import torch

from vlm.batch import Batch
from vlm.config import ConfigError


class BatchSource(Protocol):
    def __len__(self) -> int: ...

    def batch(self, indices: np.ndarray, epoch: int) -> Batch: ...


class EpochPlan:
    """Shuffled, rank-sharded batches of example indices (the last incomplete global batch is dropped)."""

    def __init__(self, num_examples: int, batch_size: int, *, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True) -> None:
        self.n, self.batch_size, self.world_size, self.rank = num_examples, batch_size, world_size, rank
        self.seed, self.shuffle = seed, shuffle
        self.batches_per_epoch = num_examples // (batch_size * world_size)

    @lru_cache(maxsize=2)  # noqa: B019 - one plan per run, two epochs cached at most
    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng([self.seed, epoch]).permutation(self.n)

    def indices(self, epoch: int, position: int) -> np.ndarray:
        g = self.batch_size * self.world_size
        start = position * g + self.rank * self.batch_size
        return self._order(epoch)[start:start + self.batch_size]

    def loader(self, source: BatchSource, epoch: int, start: int = 0, stop: int | None = None,
               num_workers: int = 0) -> torch.utils.data.DataLoader:
        """Batches ``start .. stop`` of ``epoch`` (:func:`epoch_loader`)."""
        return epoch_loader(source, self, epoch, start=start, stop=stop, num_workers=num_workers)

    def first_batch(self, source: BatchSource) -> Batch:
        """This rank's first batch of epoch 0."""
        return source.batch(self.indices(0, 0), 0)

    def record(self) -> dict[str, Any]:
        """What a checkpoint records of the plan beside world size, batch size, grad_accum and seed."""
        return {}


class StreamedSource(Protocol):
    """A batch source whose features arrive shard by shard (``vlm.data.streamed.StreamedExamples``).

    The examples are split into *slots* — ``world_size × max(1, num_workers)`` readers, each reading its own shards of
    the epoch's shard order through its own shuffle buffer — and every slot yields the same number of batches.
    """

    streamed: bool

    def __len__(self) -> int: ...

    def slot_capacity(self, slots: int) -> int:
        """Examples that every one of ``slots`` slots receives in any epoch (at least)."""

    def slot_batches(self, epoch: int, slot: int, slots: int, batch_size: int, skip: int) -> Iterator[Batch]:
        """Slot ``slot``'s batches of ``epoch``, the first ``skip`` read but not built."""

    def record(self) -> dict[str, Any]:
        """The settings of the data plan a resume must share (shuffle buffer, shards)."""


def is_streamed(source: object) -> bool:
    return bool(getattr(source, "streamed", False))


class StreamPlan:
    """The data plan of a streamed source: batch ``p`` of a rank's epoch comes from its slot ``p % W`` (``W``
    loader workers, or 1), as that slot's batch ``p // W``; each slot reads its shards of the epoch's shard order front
    to back through a shuffle buffer. Every rank gets ``batches_per_epoch`` batches; the examples a slot has beyond its
    share of ``batch_size`` batches that every slot can fill are not used that epoch (:attr:`unused`).

    A batch is a pure function of ``(seed, epoch, position, rank, world size, workers, buffer size)``, so resuming at
    a saved position replays exactly what an uninterrupted run would have seen — by reading the slot's shards again
    from the epoch's start and building only the batches after the position. Unlike :class:`EpochPlan`, the number of
    loader workers is part of the plan (it sets the slots), and 2 ranks × b do not see the same batches as 1 rank × 2b.
    """

    def __init__(self, source: StreamedSource, batch_size: int, *, world_size: int = 1, rank: int = 0,
                 num_workers: int = 0) -> None:
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.workers = max(1, num_workers)
        self.num_workers = num_workers
        self.slots = world_size * self.workers
        capacity = source.slot_capacity(self.slots)
        self.per_slot = capacity // batch_size
        self.batches_per_epoch = self.per_slot * self.workers
        self.unused = len(source) - self.per_slot * batch_size * self.slots
        self._record = {"workers": self.workers, **source.record()}

    def loader(self, source: StreamedSource, epoch: int, start: int = 0, stop: int | None = None,
               num_workers: int = 0) -> torch.utils.data.DataLoader:
        if num_workers != self.num_workers:
            raise ConfigError(f"a streamed plan made for {self.num_workers} loader workers cannot be read with "
                              f"{num_workers}")
        stop = self.batches_per_epoch if stop is None else stop
        return _batch_loader(_StreamedBatches(source, self, epoch, start, stop), num_workers)

    def first_batch(self, source: StreamedSource) -> Batch:
        return next(iter(source.slot_batches(0, self.rank * self.workers, self.slots, self.batch_size, 0)))

    def record(self) -> dict[str, Any]:
        return {"streamed": self._record}


class _StreamedBatches(torch.utils.data.IterableDataset):
    """Batches ``start .. stop`` of a rank's streamed epoch; loader worker ``w`` reads slot ``(w + start) % W``, so
    that the loader's round robin over its workers returns them in order."""

    def __init__(self, source: StreamedSource, plan: StreamPlan, epoch: int, start: int, stop: int) -> None:
        super().__init__()
        self.source, self.plan, self.epoch, self.start, self.stop = source, plan, epoch, start, stop

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        w = self.plan.workers
        slot = ((info.id if info is not None else 0) + self.start) % w
        positions = range(self.start + (slot - self.start) % w, self.stop, w)
        if not positions:
            return
        batches = self.source.slot_batches(self.epoch, self.plan.rank * w + slot, self.plan.slots,
                                           self.plan.batch_size, positions[0] // w)
        made = 0
        for _, batch in zip(positions, batches):
            made += 1
            yield batch
        if made < len(positions):  # slot_capacity promised more: a bug, never a shorter epoch
            raise RuntimeError(f"streamed slot {self.plan.rank * w + slot} ended after {made} of {len(positions)} "
                               "batches")


class _PlannedBatches(torch.utils.data.Dataset):
    def __init__(self, source: BatchSource, plan: EpochPlan, epoch: int) -> None:
        self.source, self.plan, self.epoch = source, plan, epoch

    def __len__(self) -> int:
        return self.plan.batches_per_epoch

    def __getitem__(self, position: int) -> Batch:
        return self.source.batch(self.plan.indices(self.epoch, position), self.epoch)


def _identity(x):
    return x


def _own_generator() -> torch.Generator:
    """Each DataLoader iterator draws a base seed from its generator; with none it draws from the global RNG, which
    would make the global RNG (dropout) depend on how many loaders a run created, and break exact resume."""
    return torch.Generator().manual_seed(0)


def epoch_loader(source: BatchSource, plan: EpochPlan, epoch: int, start: int = 0, num_workers: int = 0,
                 stop: int | None = None) -> torch.utils.data.DataLoader:
    """Batches ``start, start+1, …`` of ``epoch``, up to ``stop`` (default: the epoch's end) excluded; workers
    prefetch whole batches, in order."""
    ds = _PlannedBatches(source, plan, epoch)
    return _batch_loader(ds, num_workers, sampler=range(start, len(ds) if stop is None else stop))


def _batch_loader(ds: torch.utils.data.Dataset, num_workers: int, **kwargs: Any) -> torch.utils.data.DataLoader:
    """A loader of whole batches, in order, drawing no global RNG; workers prefetch two batches each."""
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=num_workers, collate_fn=_identity,
                                       persistent_workers=False, generator=_own_generator(),
                                       prefetch_factor=2 if num_workers else None, **kwargs)


class StepBatches:
    """The micro-batches of each optimiser step, epoch after epoch, from any saved position (never exhausted).

    Each epoch's batches are taken ``grad_accum`` at a time; the last ``batches_per_epoch % grad_accum`` cannot fill a
    step and are skipped without being loaded. Every epoch gets its own :func:`epoch_loader`, which draws no global
    RNG. A new epoch starts only when the next step is asked for, so right after an epoch's last step ``epoch`` and
    ``position`` still describe that epoch: what a checkpoint saved at that step records, as it always has.

    Args:
        source: the training examples.
        plan: which examples make each batch.
        grad_accum: micro-batches per step (at most ``plan.batches_per_epoch``).
        num_workers: DataLoader workers.
        epoch: epoch to start in.
        position: micro-batches of ``epoch`` already consumed. A position at or past the epoch's end (checkpoints
            written after an epoch's last batch) starts the next epoch.

    Attributes:
        epoch: epoch of the step last returned (or of the starting point).
        position: micro-batches of ``epoch`` consumed, skipped ones excluded.
    """

    def __init__(self, source: BatchSource, plan: EpochPlan | StreamPlan, grad_accum: int, num_workers: int = 0,
                 epoch: int = 0,
                 position: int = 0) -> None:
        if not 1 <= grad_accum <= plan.batches_per_epoch:
            raise ConfigError(f"grad_accum={grad_accum} needs 1 to {plan.batches_per_epoch} batches per epoch")
        if position >= plan.batches_per_epoch:
            epoch, position = epoch + 1, 0
        self.source, self.plan, self.grad_accum, self.num_workers = source, plan, grad_accum, num_workers
        self.epoch, self.position = epoch, position
        self._batches: Iterator[Batch] | None = None

    @property
    def epoch_finished(self) -> bool:
        """No full step is left in ``epoch``: the step just returned was its last. Also true before the first step
        when the starting position lies among an epoch's skipped batches."""
        return self.position + self.grad_accum > self.plan.batches_per_epoch

    def __iter__(self) -> StepBatches:
        return self

    def __next__(self) -> list[Batch]:
        """The ``grad_accum`` micro-batches of the next step."""
        if self.epoch_finished:
            self.close()
            self.epoch, self.position = self.epoch + 1, 0
        if self._batches is None:
            full_steps = (self.plan.batches_per_epoch - self.position) // self.grad_accum
            self._batches = iter(self.plan.loader(self.source, self.epoch, start=self.position,
                                                  stop=self.position + full_steps * self.grad_accum,
                                                  num_workers=self.num_workers))
        step = [next(self._batches) for _ in range(self.grad_accum)]
        self.position += self.grad_accum
        return step

    def close(self) -> None:
        """Drop the current epoch's loader, which stops its workers (the next step starts a new one)."""
        self._batches = None


class _EvalBatches(torch.utils.data.Dataset):
    def __init__(self, source: BatchSource, batch_size: int, world_size: int, rank: int) -> None:
        self.source, self.batch_size = source, batch_size
        self.starts = np.arange(0, len(source), batch_size)[rank::world_size]

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> Batch:
        s = int(self.starts[i])
        return self.source.batch(np.arange(s, min(s + self.batch_size, len(self.source))), 0)


def eval_batches(source: BatchSource, batch_size: int, *, world_size: int = 1, rank: int = 0,
                 num_workers: int = 0) -> torch.utils.data.DataLoader:
    """Every example once, in order; rank ``r`` takes batches ``r, r + W, …`` (epoch 0's fixed randomness)."""
    return torch.utils.data.DataLoader(_EvalBatches(source, batch_size, world_size, rank), batch_size=None,
                                       num_workers=num_workers, collate_fn=_identity, generator=_own_generator())
