"""The backend interface: :class:`Extractor`, the base class of every extraction backend, and its output.

A backend (:mod:`features.backends`) takes a uint8 batch ``[B, 3, S, S]`` of decoded images and returns an
:class:`ExtractedBatch`: float16 features ``[B, K, D]``, normalised boxes ``[B, K, 4]`` and optional per-image metadata.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["ExtractedBatch", "Extractor"]


@dataclass
class ExtractedBatch:
    """Output of :meth:`Extractor.extract` for a batch of B images.

    Attributes:
        feats: float16 ``[B, K, D]``.
        boxes: float32 ``[B, K, 4]``, normalised ``(x1, y1, x2, y2)``.
        meta: Per-image extra metadata (labels, scores), or ``None``.
    """

    feats: np.ndarray
    boxes: np.ndarray
    meta: list[dict[str, Any]] | None = None


class Extractor(ABC):
    """Base class of the backends.

    Attributes:
        name: Backend name.
        image_size: Side length S the loader resizes images to.
        feature_dim: D.
        num_regions: K.
        random_weights: Whether any weights are random (recorded in the manifest).
        weights_info: Where each weight file came from.
        label_names: Class names of ``objects_id`` (detector backends), else ``None``.
    """

    name: str = ""
    image_size: int
    feature_dim: int
    num_regions: int
    random_weights: bool = False
    weights_info: dict[str, Any]
    label_names: list[str] | None = None

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.weights_info = {}

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """The settings that determine the features (JSON-serialisable; compared when a run resumes)."""

    @abstractmethod
    def extract(self, images: torch.Tensor) -> ExtractedBatch:
        """Extract a uint8 batch ``[B, 3, S, S]``."""

    def _normalise(self, images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        mean_t = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        std_t = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        return x.sub_(mean_t).div_(std_t)
