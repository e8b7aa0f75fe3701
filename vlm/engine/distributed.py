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
    #: processes on this node (``LOCAL_WORLD_SIZE``)
    local_world_size: int = 1
    #: how many times torchrun's elastic agent has restarted the workers (``TORCHELASTIC_RESTART_COUNT``; 0: first try)
    restart_count: int = 0

    @property
    def is_main(self) -> bool:
        """Global rank 0: the one process that writes the run folder."""
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        """Local rank 0: the one process of its node (node-local work, e.g. a feature cache of its own)."""
        return self.local_rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "DistInfo":
        """Read torchrun's variables from ``env`` (the CLI passes ``os.environ``).

        Raises:
            ConfigError: a variable is not an integer.
        """
        values = {}
        for field, name, default in (("rank", "RANK", 0), ("world_size", "WORLD_SIZE", 1),
                                     ("local_rank", "LOCAL_RANK", 0), ("local_world_size", "LOCAL_WORLD_SIZE", None),
                                     ("restart_count", "TORCHELASTIC_RESTART_COUNT", 0)):
            raw = env.get(name)
            try:
                values[field] = int(raw) if raw not in (None, "") else default
            except ValueError:
                raise ConfigError(f"{name}={raw!r}: expected an integer (torchrun sets it)") from None
        if values["local_world_size"] is None:
            values["local_world_size"] = values["world_size"]
        return cls(**values)


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


def setup(info: DistInfo, device: torch.device, timeout_s: float = 1800.0) -> None:
    """Join the process group (``env://`` rendezvous from torchrun) when ``info.world_size > 1``.

    ``timeout_s`` (``train.dist_timeout``) bounds every collective, the barriers included: the ranks that wait while
    another extracts built-in features on first use wait at most that long.
    """
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    logger.info("joined process group: rank %d of %d (%s)", info.rank, info.world_size, backend)


def shutdown(clean: bool = True) -> None:
    """Leave the process group before the process exits (the CLI calls this after every command).

    A process that exits with its gloo group still alive tears the group's connection threads down during
    interpreter shutdown, while a peer may still be using them; seen here as a worker aborting at exit ("terminate
    called without an active exception") after a run that had finished, which torchrun reports as a failed node.
    With ``clean`` (the command succeeded on this rank, so on every rank) the ranks first meet at a barrier, so no
    rank leaves while another is still in a collective; after a failure the group is just destroyed.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if clean and dist.get_world_size() > 1:
            dist.barrier()
    finally:
        dist.destroy_process_group()


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


def max_across_ranks(value: int) -> int:
    """The largest of every rank's ``value`` (``value`` itself without a process group)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def agree(what: str, value: Any, advice: str = "") -> None:
    """Refuse to go on unless every rank holds the same ``value`` (e.g. the checksum of its feature store).

    Raises:
        DataError: on every rank, naming which ranks hold which value.
    """
    if not active():
        return
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if all(v == values[0] for v in values):
        return
    groups: dict[str, list[int]] = {}
    for rank, v in enumerate(values):
        groups.setdefault(str(v), []).append(rank)
    from vlm.errors import DataError

    listed = "; ".join(f"ranks {', '.join(map(str, ranks))}: {v}" for v, ranks in groups.items())
    raise DataError(f"the ranks do not agree on {what} ({listed}){'; ' + advice if advice else ''}")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a new tensor; ``t`` itself is left alone)."""
    if not active():
        return t.clone()
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def mean_across_ranks(t: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(t) / (dist.get_world_size() if active() else 1)
