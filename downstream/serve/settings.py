"""The settings of ``vlm serve``: limits, cache, micro-batching and the device, one typed dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from vlm.config import PRECISIONS
from vlm.errors import DataError


@dataclass
class ServeSettings:
    """What the service allows and how it batches. Every field has a ``vlm serve`` flag of the same name.

    The defaults suit a laptop CPU and a model of the mini presets; raise ``max_batch`` on a GPU.
    """

    device: str = "auto"  # "auto" (the GPU when there is one, else the CPU), "cpu", "cuda", "cuda:1"
    precision: str = "auto"  # autocast of the forward: auto | fp32 | bf16 | fp16 (vlm.precision)
    cache_size: int = 256  # images whose region features are kept (LRU by content hash); 0: no cache
    max_batch: int = 16  # requests answered by one forward pass at most
    batch_wait_ms: float = 5.0  # how long the worker waits for more requests once it has one
    queue_size: int = 64  # requests waiting for the worker at most; one more is answered 503
    max_body_bytes: int = 16 * 1024 * 1024  # request body (the whole multipart form) at most; larger: 413
    max_pixels: int = 40_000_000  # image width x height at most, judged from its header before decoding; larger: 413
    max_question_chars: int = 20_000  # a longer question is cut to this before tokenising (and says truncated)
    max_top_k: int = 100  # top_k at most
    request_timeout_s: float = 60.0  # a request not answered by then gets 503 (the worker is stuck or overloaded)
    shutdown_timeout_s: float = 30.0  # on SIGTERM/SIGINT, how long requests in flight may still take

    def check(self) -> ServeSettings:
        """Refuse values outside their range, naming the setting.

        Raises:
            DataError: A value out of range.
        """
        positive = ("max_batch", "queue_size", "max_body_bytes", "max_pixels", "max_question_chars", "max_top_k",
                    "request_timeout_s", "shutdown_timeout_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise DataError(f"serve setting {name}={getattr(self, name)}: must be positive")
        for name in ("cache_size", "batch_wait_ms"):
            if getattr(self, name) < 0:
                raise DataError(f"serve setting {name}={getattr(self, name)}: must be 0 or more")
        if self.precision not in PRECISIONS:
            raise DataError(f"serve setting precision={self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        return self
