"""Run metrics: one JSON line per record in ``metrics.jsonl``, TensorBoard when installed, a tqdm progress bar.

Only the main rank writes; other ranks get a logger whose methods do nothing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    """Append records to ``<run>/metrics.jsonl`` (flushed per line) and mirror scalars to TensorBoard if present."""

    def __init__(self, run_dir: str | Path | None, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled and run_dir is not None
        self.path = Path(run_dir) / "metrics.jsonl" if run_dir is not None else None
        self.tensorboard = tensorboard
        self._file = None
        self._tb = None

    def _open(self) -> None:
        """Open the file (and TensorBoard's writer) on the first record: constructing the logger creates nothing."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                logger.debug("tensorboard not installed: metrics go to metrics.jsonl only")
            else:
                self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))

    def log(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._file is None:
            self._open()
        row = {"step": step, "time": round(time.time(), 3), **{k: _plain(v) for k, v in record.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class RunningMean:
    """Exponential moving averages of the losses, for the progress bar."""

    def __init__(self, beta: float = 0.9) -> None:
        self.beta = beta
        self.values: dict[str, float] = {}

    def update(self, record: dict[str, float]) -> dict[str, float]:
        for k, v in record.items():
            old = self.values.get(k)
            self.values[k] = v if old is None else self.beta * old + (1 - self.beta) * v
        return self.values


def progress(total: int, initial: int, enabled: bool, desc: str) -> tqdm:
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, dynamic_ncols=True, leave=True)
