"""A toy batch source and task for driving the Trainer directly (imported by the engine tests and their torchrun
workers; not a test module)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_model
from torch import nn

import vlm


class RecordingSource:
    """``n`` examples; example ``i`` has the feature ``i`` and its index as its only token. Records every request."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.requests: list[tuple[int, list[int]]] = []  # (epoch, indices) per batch asked for

    def __len__(self) -> int:
        return self.n

    def batch(self, indices: np.ndarray, epoch: int) -> vlm.Batch:
        self.requests.append((epoch, [int(i) for i in indices]))
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        b = len(idx)
        feats = idx.float().view(b, 1, 1).expand(b, 1, 4) / self.n
        return vlm.Batch(input_ids=idx.view(b, 1), attention_mask=torch.ones(b, 1, dtype=torch.long),
                         token_type_ids=torch.zeros(b, 1, dtype=torch.long), region_feats=feats.contiguous(),
                         region_boxes=torch.zeros(b, 1, 4), region_mask=torch.ones(b, 1, dtype=torch.long))


@dataclass
class ToyOutput:
    """A dataclass, like the real tasks' outputs: DDP's search for unused parameters starts from the tensors it finds
    in a forward's output, and it finds none in e.g. a SimpleNamespace."""

    loss: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


class ToyTask(nn.Module):
    """A linear regression on the region features; with ``spare=True`` it also holds a layer that no loss uses."""

    def __init__(self, spare: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.used = nn.Linear(4, 1)
        self.spare = nn.Linear(4, 1) if spare else None

    def forward(self, batch: vlm.Batch) -> ToyOutput:
        x = batch.region_feats.mean(1)
        loss = (self.used(x).squeeze(-1) - x[:, 0]).square().mean()
        return ToyOutput(loss=loss, losses={"mse": loss})

    def save_pretrained(self, directory: str | Path) -> None:
        (Path(directory) / "config.json").write_text(json.dumps({"spare": self.spare is not None}))
        save_model(self, str(Path(directory) / "model.safetensors"))


def weights(run_dir: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a run's newest checkpoint."""
    latest = sorted((Path(run_dir) / "checkpoints").glob("step-*"))[-1]
    return load_file(str(latest / "model.safetensors"))
