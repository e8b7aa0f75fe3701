"""A bounded, thread-safe LRU of region features by image content hash: a second question about an image skips
decoding and extraction."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class FeatureCache:
    """Least-recently-used map ``image key → region sample`` holding at most ``capacity`` images.

    The request handlers read it and the inference worker fills it, from different threads, so every operation takes
    one lock. A sample is never changed after it is stored, so a reader may keep using one that is evicted later.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict[str, Any] | None:
        """The sample of ``key`` (now the most recently used), or None."""
        with self._lock:
            sample = self._items.get(key)
            if sample is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return sample

    def put(self, key: str, sample: dict[str, Any]) -> None:
        """Store ``sample`` under ``key``, evicting the least recently used images beyond the capacity."""
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[key] = sample
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"size": len(self._items), "capacity": self.capacity, "hits": self.hits, "misses": self.misses}
