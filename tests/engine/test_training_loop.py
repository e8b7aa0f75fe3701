"""The training loop on a toy task: which examples each step trains on, when it evaluates, what a checkpoint records,
and that resuming from any checkpoint replays the rest of an uninterrupted run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from vlm.config import TrainConfig
from vlm.engine.checkpoint import CheckpointManager, load_trainer_state
from vlm.engine.loader import EpochPlan, StepBatches
from vlm.engine.run import RunContext
from vlm.engine.trainer import Trainer

from engine_toys import RecordingSource, ToyTask, weights

BATCH, ACCUM, SEED = 2, 2, 3


def _run(run_dir, examples: int, max_steps: int, resume: bool = False) -> tuple[Trainer, RecordingSource, dict]:
    source, task = RecordingSource(examples), ToyTask()
    cfg = TrainConfig(batch_size=BATCH, grad_accum=ACCUM, max_steps=max_steps, eval_every=0, save_every=1,
                      log_every=1, lr=1e-2, warmup_ratio=0.0, precision="fp32", seed=SEED)
    run = RunContext(run_dir=Path(run_dir), device=torch.device("cpu"), seed=SEED, resume=resume)
    trainer = Trainer(task, source, cfg, save_model=task, run=run, evaluate=lambda t: {"x": 0.0}, keep_last=0,
                      show_progress=False)
    return trainer, source, trainer.train()


def _expected_steps(examples: int, max_steps: int) -> list[list[tuple[int, list[int]]]]:
    """Each step's micro-batches as ``(epoch, indices)``, straight from the plan: full groups of ``ACCUM`` in order,
    an epoch's leftover batches skipped."""
    plan = EpochPlan(examples, BATCH, seed=SEED)
    steps, epoch = [], 0
    while len(steps) < max_steps:
        for p in range(0, plan.batches_per_epoch - ACCUM + 1, ACCUM):
            steps.append([(epoch, plan.indices(epoch, q).tolist()) for q in range(p, p + ACCUM)])
        epoch += 1
    return steps[:max_steps]


def _grouped(requests: list[tuple[int, list[int]]]) -> list[list[tuple[int, list[int]]]]:
    return [requests[i:i + ACCUM] for i in range(0, len(requests), ACCUM)]


@pytest.mark.parametrize(("max_steps", "evals", "epochs"), [
    (5, [2, 4, 5], 2.4),  # ends inside epoch 2: one evaluation per finished epoch, then the final one
    (4, [2, 4], 1.8),  # ends with epoch 1's last step: that epoch's evaluation is the final one, held once
])
def test_steps_see_the_plan_and_evaluate_at_each_epoch_end(tmp_path, max_steps, evals, epochs):
    # 10 examples / batch 2 = 5 batches per epoch: 2 steps of 2, the 5th batch is skipped and never loaded
    trainer, source, summary = _run(tmp_path, 10, max_steps)
    assert _grouped(source.requests) == _expected_steps(10, max_steps)
    assert [r["step"] for r in trainer.history] == evals
    assert summary["steps"] == max_steps and summary["epochs"] == pytest.approx(epochs)
    saved = [load_trainer_state(c) for c in CheckpointManager(tmp_path).list()]
    assert [(s["step"], s["epoch"], s["position"]) for s in saved] == [(1, 0, 2), (2, 0, 4), (3, 1, 2), (4, 1, 4),
                                                                      (5, 2, 2)][:max_steps]


@pytest.mark.parametrize("examples", [10, 8])  # 8: an epoch's last step ends at position == batches_per_epoch
def test_resume_from_any_checkpoint_replays_the_rest_of_the_run(tmp_path, examples):
    ref, ref_source, _ = _run(tmp_path / "ref", examples, 5)
    for ckpt in CheckpointManager(tmp_path / "ref").list()[:-1]:
        step = load_trainer_state(ckpt)["step"]
        run = tmp_path / f"from-{step}"
        shutil.copytree(ckpt, run / "checkpoints" / ckpt.name)
        resumed, source, summary = _run(run, examples, 5, resume=True)
        assert summary["resumed_from"] == str(run / "checkpoints" / ckpt.name)
        assert source.requests == ref_source.requests[step * ACCUM:], f"from step {step}"
        a, b = weights(tmp_path / "ref"), weights(run)
        assert all(torch.equal(a[k], b[k]) for k in a), f"from step {step}"
        if examples == 10:  # saved before the epoch-end evaluation, which the resumed run then holds
            assert [r["step"] for r in resumed.history] == [r["step"] for r in ref.history]


def test_step_batches_start_anywhere_and_skip_what_cannot_fill_a_step():
    plan = EpochPlan(10, BATCH, seed=SEED)  # 5 batches per epoch

    def walk(epoch: int, position: int, steps: int) -> tuple[list, list]:
        source = RecordingSource(10)
        batches = StepBatches(source, plan, ACCUM, epoch=epoch, position=position)
        ends = []
        for _ in range(steps):
            next(batches)
            ends.append((batches.epoch, batches.position, batches.epoch_finished))
        return _grouped(source.requests), ends

    steps, ends = walk(0, 0, 4)
    assert steps == _expected_steps(10, 4)
    assert ends == [(0, 2, False), (0, 4, True), (1, 2, False), (1, 4, True)]
    assert walk(0, 2, 3)[0] == steps[1:]  # mid-epoch
    assert walk(0, 5, 2)[0] == steps[2:]  # past the epoch's end: the next epoch
    assert StepBatches(RecordingSource(10), plan, ACCUM, epoch=0, position=4).epoch_finished  # among the skipped
    assert walk(0, 4, 2)[0] == steps[2:]
    with pytest.raises(ValueError, match="grad_accum=6"):
        StepBatches(RecordingSource(10), plan, 6)


def test_step_batches_are_the_same_with_workers():
    plan = EpochPlan(10, BATCH, seed=SEED)

    def ids(workers: int) -> list[list[int]]:
        batches = StepBatches(RecordingSource(10), plan, ACCUM, num_workers=workers)
        out = [[b.input_ids[:, 0].tolist() for b in next(batches)] for _ in range(5)]
        batches.close()
        return out

    assert ids(1) == ids(0)
