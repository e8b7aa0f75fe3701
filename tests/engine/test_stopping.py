"""The stopping rule (vlm.engine.stopping): the best evaluation is kept and becomes the model, patience ends training
early, and a run resumed from any of its checkpoints stops where the uninterrupted run stopped, bit-identical."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlm.config import ConfigError, TrainConfig
from vlm.engine.checkpoint import CheckpointManager, load_trainer_state
from vlm.engine.run import RunContext
from vlm.engine.stopping import StoppingRule
from vlm.engine.trainer import Trainer
from vlm.errors import VLMError

from engine_toys import RecordingSource, ToyTask

# The metric the scripted evaluation reports after step s (evaluated every step): best at step 3, then three
# evaluations without an improvement of more than 0.05 (3.02 is not one), so patience 3 stops the run at step 6.
SCRIPT = {1: 1.0, 2: 2.0, 3: 3.0, 4: 2.5, 5: 3.02, 6: 2.0, 7: 4.0, 8: 5.0, 9: 6.0, 10: 7.0}


def _trainer(run_dir: Path, *, resume: bool = False, patience: int = 3, keep_last: int = 0, min_steps: int = 0,
             max_steps: int = 10, metric: str = "acc", mode: str = "max", values: dict[int, float] = SCRIPT,
             eval_every: int = 1) -> Trainer:
    source, task = RecordingSource(40), ToyTask()
    cfg = TrainConfig(batch_size=2, max_steps=max_steps, eval_every=eval_every, save_every=1, log_every=1, lr=1e-2,
                      warmup_ratio=0.0, precision="fp32", seed=1, best_metric=metric, best_mode=mode,
                      patience=patience, min_delta=0.05, min_steps=min_steps, keep_last=keep_last)
    run = RunContext(run_dir=Path(run_dir), device=torch.device("cpu"), seed=1, resume=resume)
    holder: dict[str, Trainer] = {}

    def evaluate(_task) -> dict[str, float]:
        return {"acc": values[holder["t"].step], "loss": 10.0 - values[holder["t"].step]}

    holder["t"] = Trainer(task, source, cfg, save_model=task, run=run, evaluate=evaluate, keep_last=keep_last,
                          show_progress=False)
    return holder["t"]


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _checkpoint_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_patience_stops_and_the_best_checkpoint_becomes_the_model(tmp_path):
    trainer = _trainer(tmp_path, keep_last=1)
    summary = trainer.train()
    assert summary["steps"] == 6  # steps 4, 5, 6 did not improve on step 3 by more than min_delta
    assert [r["step"] for r in trainer.history] == [1, 2, 3, 4, 5, 6]
    assert summary["best"]["step"] == 3 and summary["best"]["value"] == 3.0
    assert summary["best"]["stopped_early_at"] == 6 and summary["weights_step"] == 3
    # keep_last=1 keeps the last step's checkpoint (for a resume) and, besides it, the best one
    assert [p.name for p in CheckpointManager(tmp_path).list()] == ["step-00000003", "step-00000006"]
    assert _same(_state(trainer.save_model), _checkpoint_weights(tmp_path, 3))
    assert not _same(_checkpoint_weights(tmp_path, 3), _checkpoint_weights(tmp_path, 6))
    assert load_trainer_state(tmp_path / "checkpoints" / "step-00000006")["stopping"]["stopped_at"] == 6


def test_without_patience_the_run_goes_to_max_steps_and_keeps_the_best(tmp_path):
    trainer = _trainer(tmp_path, patience=0, values={s: 5.0 - abs(s - 4) for s in range(1, 11)})
    summary = trainer.train()
    assert summary["steps"] == 10 and summary["best"]["stopped_early_at"] is None
    assert summary["best"]["step"] == 4 and summary["weights_step"] == 4
    assert _same(_state(trainer.save_model), _checkpoint_weights(tmp_path, 4))


def test_min_steps_and_min_mode(tmp_path):
    # a loss: lower is better; the same script read as 10 - acc, so the best is again step 3; no stop before step 8
    trainer = _trainer(tmp_path, metric="eval/loss", mode="min", min_steps=8)
    summary = trainer.train()
    assert summary["steps"] == 10  # steps 7-10 improve, so patience never runs out after step 8
    assert summary["best"]["step"] == 10 and summary["best"]["metric"] == "loss"


def test_the_last_evaluation_is_the_best_when_it_improves(tmp_path):
    trainer = _trainer(tmp_path, patience=5, max_steps=9)
    summary = trainer.train()
    assert summary["steps"] == 9 and summary["best"]["step"] == 9 and summary["weights_step"] == 9


@pytest.mark.parametrize("keep_last", [0, 2])
def test_resume_from_any_checkpoint_stops_where_the_run_stopped(tmp_path, keep_last):
    ref = _trainer(tmp_path / "ref", keep_last=0)
    ref_summary = ref.train()
    ref_final = _state(ref.save_model)
    ckpts = CheckpointManager(tmp_path / "ref").list()
    for ckpt in ckpts:
        step = load_trainer_state(ckpt)["step"]
        run = tmp_path / f"from-{step}"
        for other in ckpts:  # what the run folder held when it was killed right after this checkpoint
            if load_trainer_state(other)["step"] <= step:
                shutil.copytree(other, run / "checkpoints" / other.name)
        resumed = _trainer(run, resume=True, keep_last=keep_last)
        summary = resumed.train()
        assert summary["resumed_from"] == str(run / "checkpoints" / ckpt.name)
        assert summary["steps"] == ref_summary["steps"] and summary["best"] == {
            **ref_summary["best"], "checkpoint": str(run / "checkpoints" / "step-00000003")}, f"from step {step}"
        assert resumed.history == ref.history, f"from step {step}"
        assert _same(_state(resumed.save_model), ref_final), f"from step {step}"
        assert _same(_checkpoint_weights(run, 6), _checkpoint_weights(tmp_path / "ref", 6)), f"from step {step}"


def test_a_resumed_run_that_had_stopped_does_not_train_on(tmp_path):
    _trainer(tmp_path).train()
    again = _trainer(tmp_path, resume=True)
    summary = again.train()
    assert summary["steps"] == 6 and summary["weights_step"] == 3 and len(again.history) == 6


def test_a_missing_metric_names_what_the_evaluation_reports(tmp_path):
    trainer = _trainer(tmp_path, metric="overall")
    with pytest.raises(VLMError, match=r"train.best_metric='overall'.*reports: acc, loss"):
        trainer.train()


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="train.patience=3 needs train.best_metric"):
        TrainConfig(patience=3).validate()
    with pytest.raises(ConfigError, match="best_mode"):
        TrainConfig(best_metric="acc", best_mode="up").validate()



def test_a_rule_without_evaluation_keeps_the_last_weights_and_says_so(tmp_path, caplog):
    task = ToyTask()
    run = RunContext(run_dir=tmp_path, device=torch.device("cpu"))
    cfg = TrainConfig(batch_size=2, max_steps=3, best_metric="acc", patience=1, precision="fp32")
    trainer = Trainer(task, RecordingSource(8), cfg, save_model=task, run=run, show_progress=False)
    assert "nothing to evaluate" in caplog.text and trainer.stopping is None
    summary = trainer.train()
    assert summary["steps"] == 3 and summary["best"] is None and summary["weights_step"] == 3


def test_rule_counts_and_restores_its_state():
    rule = StoppingRule("eval/acc", patience=2, min_delta=0.5)
    assert [rule.update({"step": s, "eval/acc": v}) for s, v in [(1, 1.0), (2, 1.4), (3, 1.6), (4, 1.0)]] == [
        True, False, True, False]
    assert (rule.best_step, rule.bad_evals, rule.should_stop(4)) == (3, 1, False)
    rule.update({"step": 5, "eval/acc": 2.0})
    assert rule.should_stop(5) and rule.stopped_at == 5
    again = StoppingRule("eval/acc", patience=2, min_delta=0.5)
    again.load_state_dict(rule.state_dict())
    assert again.state_dict() == rule.state_dict()
    other = StoppingRule("eval/loss", mode="min")
    other.load_state_dict(rule.state_dict())  # another metric: the comparison starts afresh
    assert other.best_step is None
    with pytest.raises(VLMError, match="not a finite number"):
        StoppingRule("eval/acc").update({"step": 1, "eval/acc": float("nan")})


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_lr_schedules_warm_up_then_follow_their_shape(kind):
    from vlm.engine.trainer import lr_schedule

    f = lr_schedule(kind, 110, 10)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    middle, end = f(60), f(110)
    expected = {"linear": (0.5, 0.0), "cosine": (0.5, 0.0), "constant": (1.0, 1.0)}[kind]
    assert (middle, end) == pytest.approx(expected)
    if kind == "cosine":  # above the line in the first half, below it in the second
        assert f(35) > lr_schedule("linear", 110, 10)(35) and f(85) < lr_schedule("linear", 110, 10)(85)
