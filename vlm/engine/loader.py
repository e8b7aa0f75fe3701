"""The engine's data plan: which examples make each batch, on each rank, in each epoch, from any position.

A *batch source* is any object with ``__len__`` (number of examples) and ``batch(indices, epoch) -> Batch``; it
must draw its randomness (masking, negatives) from ``(seed, epoch, example index)`` only. The plan then fixes
everything else: epoch ``e`` visits a permutation of the examples seeded by ``(seed, e)``, cut into global batches of
``batch_size × world_size``; rank ``r`` takes slice ``r`` of each. So a batch is a pure function of
``(seed, epoch, position, rank)``: resuming at a saved position replays exactly what an uninterrupted run would have
seen, with or without DataLoader workers, and 2 ranks × b sees the same samples as 1 rank × 2b.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import numpy as np
import torch

from vlm.batch import Batch


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


def epoch_loader(source: BatchSource, plan: EpochPlan, epoch: int, start: int = 0,
                 num_workers: int = 0) -> torch.utils.data.DataLoader:
    """Batches ``start, start+1, …`` of ``epoch`` (workers prefetch whole batches, in order)."""
    ds = _PlannedBatches(source, plan, epoch)
    return torch.utils.data.DataLoader(ds, batch_size=None, sampler=range(start, len(ds)), num_workers=num_workers,
                                       collate_fn=_identity, persistent_workers=False, generator=_own_generator(),
                                       prefetch_factor=2 if num_workers else None)


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
