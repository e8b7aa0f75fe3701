"""The training loop shared by pretraining, fine-tuning and the ablation: read ``train_step`` and ``train`` top to
bottom.

``Trainer`` takes everything as arguments (no environment, no globals): a *task* module whose forward takes a
:class:`vlm.Batch` and returns an output with ``.loss`` (and optionally ``.losses``, a dict of per-objective losses), a
batch source (see :mod:`vlm.engine.loader`), a :class:`vlm.TrainConfig`, the model whose weights are checkpointed,
and the run folder. It does AdamW without decay on biases and norms, linear warm-up then linear decay, gradient
accumulation (DDP's ``no_sync`` on all but the last micro-batch), clipping, mixed precision (``vlm.precision``),
metrics to ``metrics.jsonl``, periodic evaluation, the stopping rule (best checkpoint, early stopping:
:mod:`vlm.engine.stopping`), atomic checkpoints and exact resume. Under DDP, a probe step before
wrapping finds the parameters that get no gradient, so that DDP searches for unused parameters only when there are
some. Constructing a ``Trainer`` creates no file and runs nothing: the probe, the wrap and every write happen in
:meth:`Trainer.train`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vlm.batch import Batch
from vlm.config import TrainConfig
from vlm.engine import distributed as D
from vlm.engine.checkpoint import (
    RUN_MARK,
    CheckpointManager,
    is_checkpoint,
    load_trainer_state,
    load_weights,
    resolve_resume,
    rng_state,
    set_rng_state,
    step_dir_name,
)
from vlm.engine.loader import BatchSource, EpochPlan, StepBatches, StreamPlan, is_streamed
from vlm.engine.metrics import MetricsLogger, RunningMean, progress
from vlm.engine.run import RunContext
from vlm.engine.stopping import StoppingRule
from vlm.errors import CheckpointError, VLMError
from vlm.io import write_text
from vlm.precision import autocast, autocast_dtype

logger = logging.getLogger(__name__)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices (linear and embedding weights), none on biases and norm weights (1-d)."""
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(groups: list[dict[str, Any]], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel where the parameters' device has one (CUDA; CPU since torch 2.4), else the
    default implementation. Measured on 2 CPU cores, lxmert-mini at batch 64: the fused step took 35 ms against
    ~235 ms for the default per-parameter loop, and it allocates no temporaries."""
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device or torch version
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def linear_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: 0 → 1 over ``warmup_steps``, then 1 → 0 at ``total_steps``."""
    return lr_schedule("linear", total_steps, warmup_steps)


def lr_schedule(kind: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier of ``train.lr_schedule``: 0 → 1 over ``warmup_steps``, then ``linear`` (1 → 0 at
    ``total_steps``), ``cosine`` (half a cosine from 1 to 0 at ``total_steps``) or ``constant`` (1)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            done = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


class Trainer:
    """One training run.

    Args:
        task: module mapping a ``Batch`` to an output with ``.loss`` (e.g. ``PretrainTask`` or a VQA model).
        source: training examples (see :class:`vlm.engine.loader.BatchSource`).
        cfg: optimisation and run settings.
        save_model: the model checkpointed with ``save_pretrained`` (the task's model); its weights are what resumes.
        run_dir: run folder (config, ``metrics.jsonl``, ``checkpoints/``); written by the main rank only.
        dist: rank and world size (from the CLI); the process group must be set up when ``world_size > 1``.
        device: where the model runs.
        evaluate: called as ``evaluate(task)`` on every rank at each evaluation; returns a dict of numbers logged with
            an ``eval/`` prefix (it must reduce across ranks itself).
        run_config_yaml: the merged run config, saved into every checkpoint.
        keep_last: checkpoints kept.
        show_progress: draw a progress bar (main rank).
    """

    def __init__(self, task: nn.Module, source: BatchSource, cfg: TrainConfig, *, save_model: nn.Module,
                 run: RunContext, evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                 run_config_yaml: str = "", keep_last: int = 2, show_progress: bool = True,
                 max_text_len: int | None = None) -> None:
        cfg.validate()
        self.cfg, self.run, self.dist, self.device = cfg, run, run.dist, torch.device(run.device)
        self.run_dir = Path(run.run_dir)
        self.task = task.to(self.device)
        self.save_model = save_model
        self.max_text_len = max_text_len
        self.source = source
        self.plan: EpochPlan | StreamPlan
        if is_streamed(source):
            self.plan = StreamPlan(source, cfg.batch_size, world_size=self.dist.world_size, rank=self.dist.rank,
                                   num_workers=cfg.num_workers)
            if self.dist.is_main:
                logger.warning("streamed training data: %d slot(s) (%d rank(s) x %d reader(s)), %d batches of %d per "
                               "rank and epoch; %d of %d examples are left out of each epoch so that every slot gives "
                               "as many batches", self.plan.slots, self.dist.world_size, self.plan.workers,
                               self.plan.batches_per_epoch, cfg.batch_size, self.plan.unused, len(source))
        else:
            self.plan = EpochPlan(len(source), cfg.batch_size, world_size=self.dist.world_size, rank=self.dist.rank,
                                  seed=cfg.seed)
        if self.plan.batches_per_epoch < cfg.grad_accum:
            raise VLMError(f"{len(source)} training examples make {self.plan.batches_per_epoch} batches of "
                           f"{cfg.batch_size} x {self.dist.world_size} rank(s); need at least train.grad_accum="
                           f"{cfg.grad_accum}: lower train.batch_size or add data")
        self.model: nn.Module = task  # DDP-wrapped by train() when the job has several processes
        steps_per_epoch = self.plan.batches_per_epoch // cfg.grad_accum
        self.total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))
        self.optimizer = adamw(param_groups(task, cfg.weight_decay), cfg)
        warmup = int(cfg.warmup_ratio * self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lr_schedule(cfg.lr_schedule, self.total_steps, warmup))
        self.amp_dtype = autocast_dtype(self.device, cfg.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.evaluate_fn = evaluate
        self.run_config_yaml = run_config_yaml
        self.checkpoints = CheckpointManager(self.run_dir, keep_last=keep_last)
        self.metrics = MetricsLogger(self.run_dir, enabled=self.dist.is_main)  # opens its file on the first record
        self.show_progress = show_progress and self.dist.is_main
        self.step = 0  # optimiser steps done
        self.epoch = 0
        self.position = 0  # micro-batches of `epoch` consumed
        self.history: list[dict[str, Any]] = []  # eval records of this process
        self.stopping = StoppingRule.from_config(cfg)
        if self.stopping is not None and evaluate is None:  # e.g. a preset's rule on data without a held-out part
            logger.warning("train.best_metric=%s: this run has nothing to evaluate (no held-out data), so it keeps "
                           "its last weights and runs to train.max_steps; give it validation data (data.holdout_images"
                           ", --eval-data) to use the stopping rule", cfg.best_metric)
            self.stopping = None
        self.weights_step: int | None = None  # the step whose weights the model holds after train()

    def _wrap_ddp(self) -> None:
        """Wrap the task in DDP (several processes): a probe step first finds whether some parameters get no
        gradient, so that DDP searches for unused parameters only when there are some."""
        if not self.dist.enabled or self.model is not self.task:
            return
        ids = [self.device.index] if self.device.type == "cuda" else None
        unused = self.has_unused_parameters()  # a collective: every rank takes part
        self.model = nn.parallel.DistributedDataParallel(self.task, device_ids=ids, find_unused_parameters=unused)

    def has_unused_parameters(self) -> bool:
        """Whether a parameter gets no gradient in a training step on some rank (a collective under DDP).

        One forward and backward of the first training micro-batch, on the unwrapped task, with the gradients returned
        rather than accumulated, the RNGs forked and the buffers restored, so that neither the weights' ``.grad``, the
        global RNG state (exact resume, seed determinism) nor e.g. running statistics change. A parameter can be
        unused legitimately, e.g. the region-side feed-forward of LXMERT's last cross-modality layer in a model that
        pools only the text ``[CLS]``.
        """
        named = [(n, p) for n, p in self.task.named_parameters() if p.requires_grad]
        buffers = [(b, b.detach().clone()) for b in self.task.buffers()]
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            batch = self.plan.first_batch(self.source).to(self.device)
            self.task.train()
            with autocast(self.device, self.cfg.precision):
                loss = self.task(batch).loss
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        names = [n for (n, _), g in zip(named, grads) if g is None]
        if names:
            logger.info("rank %d: %d parameter(s) get no gradient in a training step, so DDP looks for unused "
                        "parameters every step: %s", self.dist.rank, len(names), ", ".join(names))
        return bool(D.all_reduce_sum(torch.tensor([float(bool(names))], device=self.device)).item())

    # ---------------------------------------------------------------------------------------------------------- step

    def train_step(self, micro_batches: list[Batch]) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches; returns the step's mean losses, lr and grad norm."""
        self.model.train()
        n = len(micro_batches)
        sums: dict[str, float] = {}
        for i, batch in enumerate(micro_batches):
            batch = batch.to(self.device, non_blocking=True)
            last = i == n - 1
            sync = self.model.no_sync() if (self.dist.enabled and not last) else contextlib.nullcontext()
            with sync:
                with autocast(self.device, self.cfg.precision):
                    out = self.model(batch)
                self.scaler.scale(out.loss / n).backward()
            losses = getattr(out, "losses", None) or {}
            values = {"loss": out.loss.detach(), **{k: v.detach() for k, v in losses.items()}}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + float(v) / n
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.cfg.max_grad_norm > 0:
            grad_norm = float(nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm))
        else:
            grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        lr = self.scheduler.get_last_lr()[0]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if not math.isfinite(sums["loss"]):
            raise FloatingPointError(f"loss is {sums['loss']} at step {self.step + 1}; lower train.lr or check the "
                                     "inputs (vlm features inspect)")
        return {**sums, "lr": lr, "grad_norm": grad_norm}

    # ---------------------------------------------------------------------------------------------------------- loop

    def train(self) -> dict[str, Any]:
        """Run to ``total_steps`` (resuming first when the run was started with ``resume``); returns a summary with
        the eval history."""
        self.run.seed_training()  # dropout; batches draw from (seed, epoch, index)
        resumed_from = self._resume(self.run.resume)  # a refused resume leaves the run folder as it was
        self._wrap_ddp()
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.run_config_yaml:
                write_text(self.run_dir / RUN_MARK, self.run_config_yaml)
        batches = StepBatches(self.source, self.plan, self.cfg.grad_accum, self.cfg.num_workers, self.epoch,
                              self.position)
        self.epoch, self.position = batches.epoch, batches.position
        bar = progress(self.total_steps, self.step, self.show_progress, desc=f"train {self.run_dir.name}")
        running, window, window_start = RunningMean(), [], time.perf_counter()
        first: dict[str, float] | None = None
        last_record: dict[str, float] = {}
        if self._epoch_evaluation_due(batches):  # resumed between an epoch's last step and its evaluation
            self.run_evaluation()
        while self.step < self.total_steps and not self._stopped():
            record = self.train_step(next(batches))
            self.step += 1
            self.epoch, self.position = batches.epoch, batches.position
            first, last_record = first or record, record
            window.append(record)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in running.update(
                {k: v for k, v in record.items() if k not in ("lr", "grad_norm")}).items()}, refresh=False)
            if self.step % self.cfg.log_every == 0 or self.step == self.total_steps:
                self._log_window(window, time.perf_counter() - window_start)
                window, window_start = [], time.perf_counter()
            if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
                self.run_evaluation()
            if self.cfg.save_every and self.step % self.cfg.save_every == 0:
                self.save()
            if self._epoch_evaluation_due(batches):
                self.run_evaluation()
            if self._stopped():  # decided by this step's evaluation (and recorded in the checkpoints since)
                if self.dist.is_main:
                    logger.warning("early stop at step %d of %d: %s", self.step, self.total_steps,
                                   self.stopping.describe())
                break
        batches.close()
        bar.close()
        if window:
            self._log_window(window, time.perf_counter() - window_start)
        if not self.history or self.history[-1]["step"] != self.step:
            self.run_evaluation()
        ckpt = self.save()  # the last step's state: what a resume continues from (or finds stopped)
        self.metrics.close()
        self.weights_step = self.step
        best = None
        if self.stopping is not None:
            best = self.stopping.summary()
            best["checkpoint"] = str(self._restore_best())
        return {"steps": self.step, "epochs": self.epoch + self.position / max(1, self.plan.batches_per_epoch),
                "first": first, "last": last_record, "eval": self.history, "checkpoint": str(ckpt),
                "best": best, "weights_step": self.weights_step,
                "resumed_from": str(resumed_from) if resumed_from else None}

    def _stopped(self) -> bool:
        """A run resumed from the checkpoint its early stop wrote does not train on."""
        return self.stopping is not None and self.stopping.stopped_at is not None

    def _restore_best(self) -> Path:
        """Load the best evaluation's weights into the model (every rank; the checkpoint is on the shared run folder)
        and return its checkpoint; the last step's weights stay in the last checkpoint."""
        assert self.stopping is not None and self.stopping.best_step is not None
        best = self.checkpoints.dir / step_dir_name(self.stopping.best_step)
        if self.stopping.best_step != self.step:
            if not is_checkpoint(best):
                raise CheckpointError(f"{best}: the best evaluation's checkpoint ({self.stopping.describe()}) is "
                                      "missing or incomplete; the last step's weights are in the latest checkpoint")
            load_weights(self.save_model, best)
            self.weights_step = self.stopping.best_step
            if self.dist.is_main:
                logger.warning("the run's model is the best evaluation's: %s (%s)", best, self.stopping.describe())
        return best

    def _epoch_evaluation_due(self, batches: StepBatches) -> bool:
        """With ``eval_every == 0``, evaluate at each epoch's end; at the last step the final evaluation does.

        Checkpoints are saved before the epoch-end evaluation. A run resumed from one whose epoch still has batches that
        cannot fill a step holds that evaluation first; one saved at the epoch's very end (``position ==
        batches_per_epoch``) resumes in the next epoch without it, as the loop always did.
        """
        evaluated = bool(self.history) and self.history[-1]["step"] == self.step  # e.g. saved as a new best
        return (not self.cfg.eval_every and batches.epoch_finished and self.step < self.total_steps and not evaluated
                and not self._stopped())

    def _log_window(self, window: list[dict[str, float]], seconds: float) -> None:
        keys = window[0].keys()
        mean = {f"train/{k}": sum(r[k] for r in window) / len(window) for k in keys}
        samples = len(window) * self.cfg.batch_size * self.cfg.grad_accum * self.dist.world_size
        self.metrics.log(self.step, {**mean, "epoch": self.epoch, "samples_per_s": samples / max(seconds, 1e-9)})

    def run_evaluation(self) -> dict[str, float]:
        if self.evaluate_fn is None:
            return {}
        self.task.eval()
        with torch.no_grad(), autocast(self.device, self.cfg.precision):
            result = self.evaluate_fn(self.task)
        self.task.train()
        record = {"step": self.step, **{f"eval/{k}": v for k, v in result.items()}}
        self.history.append(record)
        self.metrics.log(self.step, {k: v for k, v in record.items() if k != "step"})
        improved = False
        if self.stopping is not None:
            improved = self.stopping.update(record)
            self.stopping.should_stop(self.step)  # decided here, so that every checkpoint from now on records it
        if self.dist.is_main:
            logger.info("eval at step %d: %s%s", self.step,
                        ", ".join(f"{k}={v:.4f}" for k, v in result.items() if isinstance(v, float)),
                        f" ({self.stopping.describe()})" if self.stopping is not None else "")
        if improved:
            self.save()  # the best checkpoint (a collective under DDP: every rank evaluates, so every rank is here)
        return result

    # ---------------------------------------------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the weights that an exact resume needs (plain types and tensors only)."""
        rngs = [rng_state()]
        if D.active():
            gathered: list[Any] = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, rngs[0])
            rngs = gathered
        return {"step": self.step, "epoch": self.epoch, "position": self.position,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rngs, "history": self.history,
                "stopping": self.stopping.state_dict() if self.stopping is not None else None,
                "plan": {"world_size": self.dist.world_size, "batch_size": self.cfg.batch_size,
                         "grad_accum": self.cfg.grad_accum, "seed": self.cfg.seed, "examples": len(self.source),
                         **self.plan.record()}}

    def save(self) -> Path | None:
        state = self.state_dict()  # a collective under DDP: every rank takes part
        path = None
        if self.dist.is_main:
            best = self.stopping.best_step if self.stopping is not None else None
            keep = [best] if best is not None else []
            path = self.checkpoints.save(self.step, self.save_model, state, self.run_config_yaml,
                                         max_text_len=self.max_text_len, keep=keep)
            logger.info("checkpoint %s", path)
        D.barrier()
        return path or self.checkpoints.dir / f"step-{self.step:08d}"

    def _resume(self, resume: str | bool | None) -> Path | None:
        choice = resolve_resume(self.run_dir, resume) if self.dist.is_main else None
        choice = D.broadcast_object(str(choice) if choice else None)  # every rank resumes from rank 0's choice
        if not choice:
            return None
        ckpt = Path(choice)
        state = load_trainer_state(ckpt)
        plan = state["plan"]
        if plan["examples"] != len(self.source):
            raise CheckpointError(f"{ckpt}: saved for {plan['examples']} training examples, this run has "
                                  f"{len(self.source)}; resume with the same data")
        now_plan = self.plan.record()
        if plan.get("streamed") != now_plan.get("streamed"):
            logger.warning("%s: saved with a %s data plan %s, resuming with %s %s: the data order will not replay "
                           "exactly", ckpt, "streamed" if plan.get("streamed") else "random-access",
                           plan.get("streamed") or "", "a streamed one" if now_plan.get("streamed") else "random access",
                           now_plan.get("streamed") or "")
        for key, now in (("world_size", self.dist.world_size), ("batch_size", self.cfg.batch_size),
                         ("grad_accum", self.cfg.grad_accum), ("seed", self.cfg.seed)):
            if plan[key] != now:
                logger.warning("%s: saved with %s=%s, resuming with %s: the data order will not replay exactly",
                               ckpt, key, plan[key], now)
        load_weights(self.save_model, ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        self.history = list(state.get("history", []))
        if self.stopping is not None:
            self.stopping.load_state_dict(state.get("stopping"))
        rngs = state["rng"]
        set_rng_state(rngs[self.dist.rank] if self.dist.rank < len(rngs) else rngs[0])
        if self.dist.is_main:
            logger.warning("resumed from %s at step %d (epoch %d, batch %d)", ckpt, self.step, self.epoch,
                           self.position)
        return ckpt
