"""A validation split held out from the training data, by image.

Defaults are chosen on data the model did not train on and that is not the test split the results are reported on:
``data.holdout_images=N`` (pretraining and fine-tuning) takes ``N`` training images out of training, with every text
about them, and evaluates on those texts instead of the test split. The images are picked by a fixed hash of their
id, not by position, so the same ids are held out whatever order a file lists them in, however the data is limited
(``data.train_limit`` applies to what remains), and in both phases: a pretraining run and a fine-tuning run with the
same ``N`` hold out the same images, so the fine-tuning's validation images were not seen in pretraining either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import TypeVar

from vlm.errors import DataError

T = TypeVar("T")


def _rank(image_id: str) -> bytes:
    return hashlib.sha1(f"vlm-holdout:{image_id}".encode()).digest()


def holdout_ids(image_ids: Iterable[str], n: int) -> set[str]:
    """The ``n`` ids of ``image_ids`` with the smallest hash: the held-out images (a fixed choice per id)."""
    unique = sorted(set(image_ids), key=_rank)
    return set(unique[:n])


def split_holdout(examples: Sequence[T], n: int, what: str) -> tuple[list[T], list[T]]:
    """``(train, held_out)``: the examples of ``n`` images chosen by :func:`holdout_ids` and the rest, each in the
    original order. Every example has an ``image_id``. ``n`` must leave at least one training image."""
    ids = [str(e.image_id) for e in examples]  # type: ignore[attr-defined]
    distinct = len(set(ids))
    if n >= distinct:
        raise DataError(f"data.holdout_images={n}: {what} has {distinct} images; hold out fewer than that so that "
                        "some remain for training")
    held = holdout_ids(ids, n)
    train = [e for e, i in zip(examples, ids) if i not in held]
    out = [e for e, i in zip(examples, ids) if i in held]
    return train, out
