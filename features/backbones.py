"""CNN backbones whose feature maps are pooled into region features.

A backbone is any timm model created with ``features_only=True`` or a torchvision ResNet/ResNeXt trunk, wrapped in
:class:`Backbone`: it takes a normalised batch ``[B, 3, H, W]`` and returns one feature map ``[B, C, h, w]`` (by default
the last stage, the ``res5``/``C5`` map of Jiang et al. 2020, "In Defense of Grid Features for VQA").

Weights are never downloaded. They come from, in this order:

1. ``weights=PATH`` — a local state dict (``.safetensors``, or a torch pickle ``.pth``/``.pt``/``.bin``, optionally
   nested under ``state_dict``/``model``) of the classification model;
2. the local cache — the Hugging Face hub cache for timm models (``~/.cache/huggingface/hub``), the torch hub cache
   for torchvision models (``$TORCH_HOME/hub/checkpoints``), filled e.g. by
   ``huggingface-cli download timm/resnet50.a1_in1k`` or by calling ``torchvision.models.resnet50(weights="DEFAULT")``
   once on a machine with network access;
3. ``random_weights=True`` — random initialisation from a fixed seed, for tests and timing only; the manifest records
   it.

Otherwise :class:`~features.errors.WeightsError` names the file that was looked for and the backends that need no
weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from features.errors import WeightsError

__all__ = ["Backbone", "create_backbone", "load_state_dict_file", "parse_backbone_name", "file_sha256",
           "NO_WEIGHT_BACKENDS", "IMAGENET_MEAN", "IMAGENET_STD"]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Backends that work without any weights file (named in every missing-weights message).
NO_WEIGHT_BACKENDS = ("patches",)

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


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a torch pickle, unwrapping ``state_dict``/``model`` and ``module.``.

    Raises:
        WeightsError: If the file is missing or is not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding failure is the file's fault, not ours
        raise WeightsError(f"weights file {path} could not be read as a state dict: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _timm_cached_file(model: str) -> str | None:
    """Return the weights file of a timm model in the Hugging Face hub cache, or ``None``."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub is a timm dependency
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id=hub_id, filename=filename)
        if isinstance(found, str):
            return found
    return None


def _timm_cache_hint(model: str) -> str:
    import timm

    cfg = timm.models.get_pretrained_cfg(model)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return f"the Hugging Face cache entry {hub_id}/model.safetensors" if hub_id else "no published timm weights"


def _torchvision_cache_file(model: str) -> Path:
    """Return where torchvision keeps the default weights of ``model`` in the torch hub cache."""
    import torchvision

    url = torchvision.models.get_model_weights(model).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _missing_weights_message(what: str, looked_for: str) -> str:
    return (
        f"{what} needs pretrained weights and none were found (looked for {looked_for}). Pass --weights PATH "
        f"(a local state dict), place the file in the local cache, or use --random-weights for tests and timing only. "
        f"Backends that need no weights: {', '.join(NO_WEIGHT_BACKENDS)}."
    )


class Backbone(nn.Module):
    """A CNN trunk returning one feature map.

    Attributes:
        name: The backbone name as given (``"timm:resnet50"``...).
        out_channels: Channels ``C`` of the returned map.
        mean: Per-channel RGB mean used to normalise inputs in [0, 1].
        std: Per-channel RGB std used to normalise inputs in [0, 1].
        weights_info: Where the weights came from (``{"source": "file"|"cache"|"random", ...}``).
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
        if isinstance(out, (list, tuple)):  # timm features_only returns a list of the selected stages
            out = out[-1]
        return out


def _torchvision_trunk(model: str, layer: int) -> tuple[nn.Module, nn.Sequential]:
    """Return the full torchvision model (to load weights into) and its trunk up to stage ``layer``."""
    import torchvision

    net = torchvision.models.get_model(model, weights=None)
    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    if not -4 <= layer <= 3:
        raise WeightsError(f"backbone torchvision:{model}: layer {layer} out of range (stages 0..3 or -1..-4)")
    keep = stages[: (layer % 4) + 1]
    return net, nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, *keep)


def create_backbone(name: str = "resnet50", *, weights: str | os.PathLike[str] | None = None,
                    random_weights: bool = False, layer: int = -1, seed: int = 0) -> Backbone:
    """Build a backbone with weights from a file, the local cache, or (explicitly) random.

    Args:
        name: ``"timm:NAME"``, ``"torchvision:NAME"`` or a bare name (timm first).
        weights: Local state dict of the classification model.
        random_weights: Allow random weights when no file is given (tests, timing); ignored when ``weights`` is set.
        layer: Which stage's feature map to return (timm ``out_indices`` / torchvision stage 0..3); -1 is the last.
        seed: Seed of the random initialisation, so random-weight runs are reproducible.

    Raises:
        WeightsError: If no weights are available and ``random_weights`` is false, or the file does not fit.
    """
    library, model = parse_backbone_name(name)
    torch.manual_seed(seed)
    if library == "timm":
        import timm

        cached = None if weights is not None or random_weights else _timm_cached_file(model)
        if weights is None and not random_weights and cached is None:
            raise WeightsError(_missing_weights_message(f"backbone timm:{model}", _timm_cache_hint(model)))
        file = str(weights) if weights is not None else cached
        if weights is not None and not Path(weights).is_file():
            raise WeightsError(f"weights file {weights} for backbone timm:{model} not found")
        try:
            kwargs: dict[str, Any] = {"features_only": True, "out_indices": (layer,)}
            if file is not None:
                kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": file})
            trunk = timm.create_model(model, **kwargs)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise WeightsError(f"weights file {file} does not fit backbone timm:{model}: {exc}") from exc
        cfg = trunk.pretrained_cfg or {}
        mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    else:
        cache_file = _torchvision_cache_file(model)
        file = weights if weights is not None else (cache_file if cache_file.is_file() else None)
        if file is None and not random_weights:
            raise WeightsError(_missing_weights_message(f"backbone torchvision:{model}", str(cache_file)))
        net, trunk = _torchvision_trunk(model, layer)
        if file is not None:
            state = load_state_dict_file(file)
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise WeightsError(f"weights file {file} does not fit backbone torchvision:{model}: {exc}") from exc
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    if file is not None:
        info = {"source": "file" if weights is not None else "cache", "path": str(file), "sha256": file_sha256(file)}
    else:
        info = {"source": "random", "seed": seed}
    logger.info("backbone %s:%s, weights: %s", library, model, info["source"])
    return Backbone(trunk, name=f"{library}:{model}", library=library, mean=mean, std=std, weights_info=info)
