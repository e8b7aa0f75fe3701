"""Mixed precision: which autocast dtype a device supports, and the context that applies it."""

from __future__ import annotations

import contextlib

import torch

from vlm.config import PRECISIONS, ConfigError


def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 matmuls natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: str | torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or None for plain fp32.

    ``auto`` picks bf16 on CUDA devices that support it (else fp16) and on CPUs with native bf16 arithmetic; fp32
    elsewhere. An explicit ``bf16``/``fp16`` is honoured as asked.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind = torch.device(device).type
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if kind == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if kind == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def autocast(device: str | torch.device, precision: str = "auto") -> contextlib.AbstractContextManager:
    """``torch.autocast`` for the chosen dtype, or a no-op context for fp32."""
    dtype = autocast_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
