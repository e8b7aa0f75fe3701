"""Starting a run: the one function that resolves the device, joins the process group, applies the run-folder rule
(new, resume or overwrite) and seeds — for pretraining, fine-tuning and anything else that trains.

Seeding happens here and nowhere else in the library: :func:`start_run` seeds torch with ``train.seed`` for the
model's initialisation (the same weights on every rank), and :meth:`RunContext.seed_training` seeds the training RNG
(dropout; batches draw from ``(seed, epoch, index)``) with ``seed + rank`` when the loop starts. Constructors of the
runs and the trainer only wire: they create no file and seed nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from vlm.config import TrainConfig
from vlm.engine import distributed as D
from vlm.engine.checkpoint import prepare_run_dir

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """A started run: where it writes, where it runs, and how it resumes.

    Attributes:
        run_dir: The run folder (written by the main rank only).
        device: Where this process runs.
        dist: This process's place in the job.
        seed: ``train.seed``.
        resume: ``True``/``"latest"`` (newest checkpoint of ``run_dir``), a checkpoint or run folder, or None.
    """

    run_dir: Path
    device: torch.device
    dist: D.DistInfo = D.DistInfo()
    seed: int = 0
    resume: str | bool | None = None

    def seed_training(self) -> None:
        """Seed the training RNG (dropout) with ``seed + rank``; called by the trainer as its loop starts."""
        torch.manual_seed(self.seed + self.dist.rank)


def start_run(train: TrainConfig, *, out_dir: str | Path | None = None, resume: str | bool | None = None,
              overwrite: bool = False, dist: D.DistInfo = D.DistInfo()) -> RunContext:
    """Start a run, before any of its parts is built.

    Resolves ``train.device``, joins the process group when ``dist.world_size > 1``, applies the run-folder rule
    (a folder that holds a run is refused unless ``resume`` or ``overwrite``; see
    :func:`vlm.engine.checkpoint.prepare_run_dir`), then seeds torch with ``train.seed`` so the model built next is
    initialised the same on every rank.

    Args:
        train: the run's training settings (device, seed, ``out_dir``).
        out_dir: the run folder (default ``train.out_dir``).
        resume: continue the run in ``out_dir`` (``True``/``"latest"``) or from a checkpoint/run folder.
        overwrite: replace the run already in ``out_dir``.
        dist: this process's place in the job (the CLI reads it from torchrun's environment). When torchrun has
            restarted the workers (``dist.restart_count > 0`` on any rank) the run continues from its newest
            checkpoint: ``resume`` is implied and ``overwrite`` is not applied again.

    Raises:
        ConfigError: a device this machine does not have.
        CheckpointError: a refused run folder.
    """
    device = D.resolve_device(train.device, dist)
    D.setup(dist, device, train.dist_timeout)
    run_dir = Path(out_dir or train.out_dir)
    # torchrun restarted the workers after a failure: continue, never start over. Each node's agent counts only its
    # own failures (a node restarted because another failed still says 0), so the ranks take the largest count.
    restarts = D.max_across_ranks(dist.restart_count)
    if restarts:
        if dist.is_main:
            logger.warning("torchrun restart %d: continuing the run in %s from its newest checkpoint%s",
                           restarts, run_dir, " (--overwrite applies to the first try only)" if overwrite else "")
        overwrite, resume = False, resume or True
    prepare_run_dir(run_dir, resume=resume, overwrite=overwrite, is_main=dist.is_main)
    D.barrier()
    torch.manual_seed(train.seed)  # the model's initialisation: the same weights on every rank
    return RunContext(run_dir=run_dir, device=device, dist=dist, seed=train.seed, resume=resume)
