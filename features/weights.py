"""Putting weights into a network: verified loading, seeded random initialisation, provenance records.

* :func:`load_verified` loads a state dict only when its keys and shapes are exactly the network's; a difference
  raises :class:`~features.errors.WeightsError` naming the file and the first keys that differ.
* :func:`init_random` fills every parameter and buffer from a local :class:`torch.Generator`, so random weights are a
  function of the seed alone and building a network never draws from (or reseeds) the caller's global RNG;
  :func:`isolated_rng` wraps a library constructor whose own initialisation draws from the global RNG.
* :func:`weights_record` is the manifest's record of where weights came from.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from features.errors import WeightsError
from features.io import file_sha256

__all__ = ["NO_WEIGHT_BACKENDS", "init_random", "isolated_rng", "load_verified", "missing_weights_message",
           "weights_record"]

#: Backends that work without any weights file (named in every missing-weights message).
NO_WEIGHT_BACKENDS = ("patches",)

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def missing_weights_message(what: str, looked_for: str) -> str:
    """The error text for a network with no weights file, no built-in weights and no cache entry."""
    return (
        f"{what} needs pretrained weights and none were found (looked for {looked_for}). Pass --weights PATH "
        f"(a local state dict), place the file in the local cache, or use --random-weights for tests and timing only. "
        f"Backends that need no weights: {', '.join(NO_WEIGHT_BACKENDS)}."
    )


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Run a block (a library constructor that initialises from the global CPU RNG) without changing that RNG."""
    with torch.random.fork_rng(devices=[]):
        yield


def load_verified(module: nn.Module, state: Mapping[str, torch.Tensor], *, what: str,
                  file: str | os.PathLike[str]) -> None:
    """Load ``state`` into ``module`` after checking that keys and shapes match exactly.

    Args:
        module: The network.
        state: The state dict (already in the network's key layout).
        what: The network, for messages (``"backbone timm:resnet50"``).
        file: Where ``state`` came from, for messages.

    Raises:
        WeightsError: Naming the file, the missing/unexpected keys or the first shape mismatch.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) such as {', '.join(repr(k) for k in missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) such as {', '.join(repr(k) for k in unexpected[:3])}")
        raise WeightsError(f"weights file {file} does not fit {what}: {'; '.join(parts)}")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise WeightsError(f"weights file {file} does not fit {what}: key {key!r} has shape "
                               f"{tuple(state[key].shape)}, the network expects {tuple(tensor.shape)}")
    module.load_state_dict(dict(state), strict=True)


@torch.no_grad()
def init_random(module: nn.Module, seed: int) -> None:
    """Initialise every parameter and buffer of ``module`` from a local generator seeded with ``seed``.

    Convolutions: He-normal (fan-out, as torchvision and timm initialise CNNs); linear layers: normal(0, 0.01);
    biases: zero; normalisation layers: weight one, bias zero, running statistics reset; any other parameter:
    normal(0, 0.02); other floating buffers keep their constructor values (constants). The caller's global RNG is
    neither read nor changed.
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    done: set[int] = set()
    for sub in module.modules():
        weight, bias = getattr(sub, "weight", None), getattr(sub, "bias", None)
        if isinstance(sub, nn.modules.conv._ConvNd):
            fan_out = sub.out_channels * math.prod(sub.kernel_size) // sub.groups
            _fill_normal(sub.weight, math.sqrt(2.0 / fan_out), generator)
        elif isinstance(sub, nn.Linear):
            _fill_normal(sub.weight, 0.01, generator)
        elif isinstance(sub, _NORMS) or type(sub).__name__ == "FrozenBatchNorm2d":
            for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
                tensor = getattr(sub, name, None)
                if isinstance(tensor, torch.Tensor):
                    tensor.fill_(value)
                    done.add(id(tensor))
            if hasattr(sub, "num_batches_tracked") and isinstance(sub.num_batches_tracked, torch.Tensor):
                sub.num_batches_tracked.zero_()
            continue
        else:
            continue
        done.add(id(weight))
        if isinstance(bias, torch.Tensor):
            bias.zero_()
            done.add(id(bias))
    for parameter in module.parameters():
        if id(parameter) not in done:
            _fill_normal(parameter, 0.02, generator)


def _fill_normal(tensor: torch.Tensor, std: float, generator: torch.Generator) -> None:
    """Fill ``tensor`` in place with normal(0, std) drawn on the CPU from ``generator``."""
    tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * std)


def weights_record(source: str, file: str | os.PathLike[str] | None = None, *, seed: int | None = None,
                   **extra: Any) -> dict[str, Any]:
    """Where a network's weights came from, for the manifest.

    Args:
        source: ``"file"`` (given by the user), ``"builtin"`` (an installed package), ``"cache"`` (a local hub cache)
            or ``"random"``.
        file: The weights file (its path and sha256 are recorded).
        seed: The seed of random weights.
        **extra: More fields (the package, the key layout, the normalisation...).
    """
    record: dict[str, Any] = {"source": source}
    if file is not None:
        record.update(path=str(Path(file)), sha256=file_sha256(file))
    if seed is not None:
        record["seed"] = seed
    record.update(extra)
    return record
