"""The settings of ``vlm serve``: limits, cache, micro-batching and the device, one typed dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from vlm.config import PRECISIONS, check_fields, choice, ranged


@dataclass
class ServeSettings:
    """What the service allows and how it batches. Every field has a ``vlm serve`` flag of the same name.

    The defaults suit a laptop CPU and a model of the mini presets; raise ``max_batch`` on a GPU.
    """

    device: str = "auto"  # "auto" (the GPU when there is one, else the CPU), "cpu", "cuda", "cuda:1"
    precision: str = choice("auto", PRECISIONS)  # autocast of the forward: auto | fp32 | bf16 | fp16 (vlm.precision)
    cache_size: int = ranged(256, ge=0)  # images whose region features are kept (LRU by content hash); 0: no cache
    max_batch: int = ranged(16, gt=0)  # requests answered by one forward pass at most
    batch_wait_ms: float = ranged(5.0, ge=0)  # how long the worker waits for more requests once it has one
    queue_size: int = ranged(64, gt=0)  # requests waiting for the worker at most; one more is answered 503
    max_body_bytes: int = ranged(16 * 1024 * 1024, gt=0)  # request body (the whole multipart form) at most; larger: 413
    # image width x height at most, judged from its header before decoding; larger: 413
    max_pixels: int = ranged(40_000_000, gt=0)
    # a longer question is cut to this before tokenising (and says truncated)
    max_question_chars: int = ranged(20_000, gt=0)
    max_top_k: int = ranged(100, gt=0)  # top_k at most
    # a request not answered by then gets 503 (the worker is stuck or overloaded)
    request_timeout_s: float = ranged(60.0, gt=0)
    shutdown_timeout_s: float = ranged(30.0, gt=0)  # on SIGTERM/SIGINT, how long requests in flight may still take

    def check(self) -> ServeSettings:
        """Refuse values outside their declared range or registry, naming the setting.

        Raises:
            ConfigError: naming the setting (``serve setting max_batch: expected a number in (0, inf), got 0``).
        """
        check_fields(self, prefix="serve setting ")
        return self
