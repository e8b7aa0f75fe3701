"""torch.distributed for the engine: device resolution and the process group from explicit arguments, rank helpers,
collectives.

Only the CLI reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (set by ``torchrun``) and passes them here as a
:class:`DistInfo`; nothing in the engine looks at the environment. One process per device, DDP with ``gloo`` on CPU
and ``nccl`` on CUDA. A run is started by :func:`vlm.engine.run.start_run`, which calls these.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from vlm.config import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "DistInfo":
        """Read torchrun's variables from ``env`` (the CLI passes ``os.environ``)."""
        return cls(rank=int(env.get("RANK", 0)), world_size=int(env.get("WORLD_SIZE", 1)),
                   local_rank=int(env.get("LOCAL_RANK", 0)))


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """The device that ``train.device`` names for this process.

    Args:
        name: ``"auto"`` (this rank's GPU, ``cuda:<local_rank>``, when CUDA is available, else the CPU) or a torch
            device name (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        info: this process's place in the job.

    Raises:
        ConfigError: for a CUDA device this machine does not have.
    """
    if name == "auto":
        return torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"train.device={name}: no such CUDA device on this machine "
                          f"({torch.cuda.device_count()} visible)")
    return device


def setup(info: DistInfo, device: torch.device, timeout_s: float = 600.0) -> None:
    """Join the process group (``env://`` rendezvous from torchrun) when ``info.world_size > 1``."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    logger.info("joined process group: rank %d of %d (%s)", info.rank, info.world_size, backend)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. the checkpoint every rank resumes from)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a new tensor; ``t`` itself is left alone)."""
    if not active():
        return t.clone()
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def mean_across_ranks(t: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(t) / (dist.get_world_size() if active() else 1)
