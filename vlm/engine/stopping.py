"""Best-checkpoint selection and early stopping: the stopping rule of every run that evaluates.

With ``train.best_metric`` set (an evaluation metric, e.g. ``overall`` for VQA, ``accuracy`` for classification,
``matching/accuracy`` for pretraining), each evaluation is compared with the best so far:

* an improvement (``> best + min_delta`` with ``best_mode: max``, ``< best - min_delta`` with ``min``) makes that
  step the best: the trainer writes a checkpoint there, which pruning (``train.keep_last``) never removes while it is
  the best;
* ``train.patience`` evaluations in a row without one end training early (0: never), but not before
  ``train.min_steps``;
* when training ends — early or at ``max_steps`` — the best checkpoint's weights are loaded back, so the run's
  ``model/`` and its final metrics are the best evaluation's.

The learning-rate schedule still runs to ``max_steps``: stopping early does not change any step before it, so a run
that stops at step S is, step for step, the same run as one with a larger patience. The rule's state (best value and
step, evaluations without improvement, whether it stopped) is part of the trainer state, so a resumed run stops where
the uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from vlm.config import TrainConfig
from vlm.errors import VLMError

#: The prefix under which the trainer records evaluation metrics (``eval/overall``).
EVAL_PREFIX = "eval/"


def metric_key(name: str) -> str:
    """``overall`` or ``eval/overall`` → ``eval/overall``."""
    return name if name.startswith(EVAL_PREFIX) else EVAL_PREFIX + name


@dataclass
class StoppingRule:
    """Tracks the best evaluation and decides when to stop (see the module docstring)."""

    metric: str
    mode: str = "max"
    patience: int = 0
    min_delta: float = 0.0
    min_steps: int = 0
    best_value: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations in a row without an improvement
    stopped_at: int | None = None  # the step training stopped early at

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> StoppingRule | None:
        if not cfg.best_metric:
            return None
        return cls(metric=metric_key(cfg.best_metric), mode=cfg.best_mode, patience=cfg.patience,
                   min_delta=cfg.min_delta, min_steps=cfg.min_steps)

    def value_of(self, record: dict[str, Any]) -> float:
        """The rule's metric in an evaluation record.

        Raises:
            VLMError: the evaluation has no such metric (naming the ones it has), or the value is not a finite number.
        """
        if self.metric not in record:
            have = sorted(k[len(EVAL_PREFIX):] for k in record if k.startswith(EVAL_PREFIX))
            raise VLMError(f"train.best_metric={self.metric[len(EVAL_PREFIX):]!r}: the evaluation at step "
                           f"{record.get('step')} has no such metric; it reports: {', '.join(have) or 'nothing'}")
        value = record[self.metric]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise VLMError(f"train.best_metric={self.metric[len(EVAL_PREFIX):]!r}: the evaluation at step "
                           f"{record.get('step')} gave {value!r}, not a finite number")
        return float(value)

    def improves(self, value: float) -> bool:
        if self.best_value is None:
            return True
        if self.mode == "max":
            return value > self.best_value + self.min_delta
        return value < self.best_value - self.min_delta

    def update(self, record: dict[str, Any]) -> bool:
        """Take one evaluation record (``{"step": .., "eval/..": ..}``); returns whether it is the new best."""
        value, step = self.value_of(record), int(record["step"])
        if self.improves(value):
            self.best_value, self.best_step, self.bad_evals = value, step, 0
            return True
        self.bad_evals += 1
        return False

    def should_stop(self, step: int) -> bool:
        """Whether training stops after this step's evaluation (and records that it did)."""
        if self.stopped_at is not None:
            return True
        if self.patience and self.bad_evals >= self.patience and step >= self.min_steps:
            self.stopped_at = step
            return True
        return False

    def describe(self) -> str:
        name = self.metric[len(EVAL_PREFIX):]
        if self.best_step is None:
            return f"no {name} yet"
        text = f"best {name} {self.best_value:.4f} at step {self.best_step}"
        if self.patience:
            text += f", {self.bad_evals}/{self.patience} evaluations without improvement"
        return text

    # ------------------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore the progress of a saved rule (its best, count and stop); the settings stay this run's. A run saved
        with another metric or direction starts the comparison afresh (and says so in the log)."""
        if not state or state.get("metric") != self.metric or state.get("mode") != self.mode:
            return
        self.best_value, self.best_step = state.get("best_value"), state.get("best_step")
        self.bad_evals, self.stopped_at = int(state.get("bad_evals", 0)), state.get("stopped_at")

    def summary(self) -> dict[str, Any]:
        """What the run reports: the metric, the best value and its step, and where it stopped early (or None)."""
        return {"metric": self.metric[len(EVAL_PREFIX):], "mode": self.mode, "value": self.best_value,
                "step": self.best_step, "stopped_early_at": self.stopped_at}
