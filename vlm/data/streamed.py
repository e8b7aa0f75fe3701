"""Training examples over a streamed feature store: :class:`StreamedExamples`, the engine's streamed batch source.

For stores that can only be read front to back (``pipe:`` commands streaming an S3 or GCS bucket; see
``features.store.streamed``). The examples — questions, captions, statements — are in memory as always; the features
arrive shard by shard. The data plan (``vlm.engine.loader.StreamPlan``):

1. each epoch permutes the store's shards (seeded by ``(seed, epoch)``) and deals them to the *slots*, the
   ``ranks × loader workers`` readers: slot ``s`` of ``S`` takes shards ``s, s + S, …`` of the permutation;
2. a slot reads its shards front to back; each image read puts its examples into a shuffle buffer of
   ``buffer_size`` examples, which gives out a random one (seeded by ``(seed, epoch, slot)``) for each one put in
   once it is full, and the rest in random order at the end;
3. the examples given out make batches of ``batch_size``; every slot stops after as many batches as the slot with the
   fewest examples can fill, so that every rank takes the same number of steps (the rest of the epoch is unused, and
   the run's log says how many examples that is).

So shuffling is local: an example meets only the examples of the images read near it, and the examples of one image
enter the buffer together — a buffer of at least a few thousand examples keeps a batch from holding several questions
about one image. Memory per slot: the buffer's images' features (at most ``buffer_size`` images, e.g. 2,000 x 36 x
2,048 float16 = 295 MB at most).

Resume is exact, at a price: a batch is a function of ``(seed, epoch, position, rank, ranks, workers, buffer)``, so a
resumed run reads its slot's shards again from the epoch's start, building no batch until the saved position. A run
resumed with another number of ranks, workers or another buffer size continues with a different data order (it is
warned).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from vlm.batch import Batch
from vlm.errors import DataError


class _Store(Protocol):
    """What the plan reads of a streamed store (``features.store.streamed.StreamedStore``)."""

    num_shards: int
    location: str

    def shard_ids(self, shard: int) -> list[str]: ...

    def read_shard(self, shard: int) -> Iterator[dict[str, Any]]: ...


class StreamedExamples:
    """A batch source (``data``) whose features are read from a streamed ``store`` in shard order.

    Args:
        data: The examples joined to ``store``: a source with ``example_images()`` (the image id of each example) and
            ``batch(indices, epoch, store=mapping)`` that reads features only from the mapping it is given
            (``downstream.data.VQAData`` / ``ClassifyData``, ``pretraining.data.PretrainData``).
        store: The streamed store.
        buffer_size: Examples held by each slot's shuffle buffer (1: no shuffling beyond the shard order).
        seed: Seed of the shard order and the buffers (the run's ``train.seed``).
        shuffle: Permute the shards each epoch (``False``: the manifest's order, every epoch).

    Raises:
        DataError: ``buffer_size`` is below 1.
    """

    streamed = True

    def __init__(self, data: Any, store: _Store, *, buffer_size: int = 2000, seed: int = 0,
                 shuffle: bool = True) -> None:
        if buffer_size < 1:
            raise DataError(f"data.stream_buffer={buffer_size}: the shuffle buffer holds at least 1 example")
        self.data, self.store, self.buffer_size, self.seed, self.shuffle = data, store, buffer_size, seed, shuffle
        by_image: dict[str, list[int]] = {}
        for i, image in enumerate(data.example_images()):
            by_image.setdefault(image, []).append(i)
        self.by_image = {k: np.asarray(v, dtype=np.int64) for k, v in by_image.items()}
        self.shard_examples = np.array([sum(len(self.by_image.get(i, ())) for i in store.shard_ids(s))
                                        for s in range(store.num_shards)], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.data)

    def record(self) -> dict[str, Any]:
        return {"buffer": self.buffer_size, "shards": int(self.store.num_shards), "shuffle": self.shuffle}

    def slot_capacity(self, slots: int) -> int:
        """Examples every slot gets in any epoch: the fewest that ``shards // slots`` shards can hold.

        Raises:
            DataError: Fewer shards than slots (a rank or loader worker would read nothing).
        """
        shards = len(self.shard_examples)
        if shards < slots:
            raise DataError(f"the streamed store {self.store.location} has {shards} shard(s); streaming deals whole "
                            f"shards to {slots} readers (ranks x loader workers), so it needs at least one each: use "
                            "fewer train.num_workers or ranks, or write the store in more shards")
        return int(np.sort(self.shard_examples)[:shards // slots].sum())

    def slot_shards(self, epoch: int, slot: int, slots: int) -> list[int]:
        """The shards slot ``slot`` reads in ``epoch``, in order."""
        order = np.arange(len(self.shard_examples))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        return [int(s) for s in order[slot::slots]]

    def slot_order(self, epoch: int, slot: int, slots: int) -> Iterator[tuple[int, Any]]:
        """``(example index, sample)`` in the order slot ``slot`` gives them out in ``epoch``."""
        rng = np.random.default_rng([self.seed, epoch, slot, 1])
        size = self.buffer_size
        buffer: list[tuple[int, Any]] = []
        for shard in self.slot_shards(epoch, slot, slots):
            for sample in self.store.read_shard(shard):
                for i in self.by_image.get(sample["image_id"], ()):
                    if len(buffer) < size:
                        buffer.append((int(i), sample))
                        continue
                    k = int(rng.integers(size))
                    yield buffer[k]
                    buffer[k] = (int(i), sample)
        for k in rng.permutation(len(buffer)):
            yield buffer[int(k)]

    def slot_batches(self, epoch: int, slot: int, slots: int, batch_size: int, skip: int = 0) -> Iterator[Batch]:
        """Slot ``slot``'s full batches of ``epoch``; the first ``skip`` are read but not built (a resume)."""
        indices: list[int] = []
        samples: dict[str, Any] = {}
        for i, sample in self.slot_order(epoch, slot, slots):
            indices.append(i)
            samples[sample["image_id"]] = sample
            if len(indices) < batch_size:
                continue
            if skip:
                skip -= 1
            else:
                yield self.data.batch(np.asarray(indices, dtype=np.int64), epoch, store=samples)
            indices, samples = [], {}

    def batch(self, indices: Sequence[int], epoch: int) -> Batch:
        raise DataError(f"the streamed store {self.store.location} is read in shard order, not by index: the "
                        "engine's StreamPlan reads it (Trainer does this by itself)")


def streamed_source(data: Any, store: Any, *, buffer_size: int = 2000, seed: int = 0) -> Any:
    """``data`` as the engine's batch source: wrapped in :class:`StreamedExamples` when ``store`` is streamed."""
    if not getattr(store, "streamed", False):
        return data
    return StreamedExamples(data, store, buffer_size=buffer_size, seed=seed)
