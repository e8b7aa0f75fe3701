"""Backends: the patches layout, grid features, weights handling, detectors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from features.backbones import create_backbone
from features.backends import create_extractor
from features.decode import load_image
from features.errors import BackendUnavailableError, FeaturesError, WeightsError
from features.proposers import pad_proposals

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32).reshape(3, 1, 1)


def test_patches_defaults_and_layout_on_a_real_image(easy_train_paths: dict[int, str]) -> None:
    extractor = create_extractor("patches")
    assert (extractor.num_regions, extractor.feature_dim, extractor.image_size) == (17, 768, 64)
    image, width, height = load_image(easy_train_paths[3], 64)
    assert (width, height) == (64, 64)
    out = extractor.extract(image[None])
    assert out.feats.shape == (1, 17, 768) and out.feats.dtype == np.float16
    pixels = (image.numpy().astype(np.float32) / 255 - MEAN) / STD  # (3, 64, 64)
    # region 1 + 4*r + c is patch (row r, column c) in channel-major (c, y, x) order
    r, c = 2, 1
    patch = pixels[:, 16 * r:16 * r + 16, 16 * c:16 * c + 16].reshape(-1)
    np.testing.assert_allclose(out.feats[0, 1 + 4 * r + c].astype(np.float32), patch, atol=2e-3, rtol=1e-3)
    whole = pixels.reshape(3, 16, 4, 16, 4).mean(axis=(2, 4)).reshape(-1)  # 4x4 area average
    np.testing.assert_allclose(out.feats[0, 0].astype(np.float32), whole, atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(out.boxes[0, 0], [0, 0, 1, 1])
    np.testing.assert_allclose(out.boxes[0, 1 + 4 * r + c], [0.25, 0.5, 0.5, 0.75])


def test_patches_size_is_settable_and_validated() -> None:
    extractor = create_extractor("patches", image_size=32, patch_size=8, whole_image=False)
    assert (extractor.num_regions, extractor.feature_dim) == (16, 192)
    with pytest.raises(FeaturesError, match="multiple of the patch size 7"):
        create_extractor("patches", image_size=64, patch_size=7)
    with pytest.raises(FeaturesError, match="does not take option"):
        create_extractor("patches", backbone="resnet18")
    with pytest.raises(FeaturesError, match="unknown backend 'vit'"):
        create_extractor("vit")


def test_grid_features_equal_pooled_backbone_map_and_are_seeded() -> None:
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    a = create_extractor("grid", backbone="timm:resnet10t", random_weights=True, image_size=64, grid=2, pool_size=1)
    b = create_extractor("grid", backbone="timm:resnet10t", random_weights=True, image_size=64, grid=2, pool_size=1)
    assert a.random_weights and a.weights_info["backbone"]["source"] == "random"
    out_a, out_b = a.extract(images), b.extract(images)
    assert out_a.feats.shape == (3, 4, 512)
    np.testing.assert_array_equal(out_a.feats, out_b.feats)  # same seed, same weights
    # with a 2x2 feature map and a 2x2 grid, box (r, c) is exactly cell (r, c) of the map
    x = (images.float() / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    with torch.inference_mode():
        fmap = a.backbone(x)
    expected = fmap.flatten(2).transpose(1, 2).to(torch.float16).numpy()
    np.testing.assert_allclose(out_a.feats.astype(np.float32), expected.astype(np.float32), atol=2e-3, rtol=2e-3)


def test_weights_file_is_loaded(tmp_path: Path) -> None:
    torch.manual_seed(123)
    reference = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    backbone = create_backbone("torchvision:resnet18", weights=path)
    assert backbone.weights_info["source"] == "file" and len(backbone.weights_info["sha256"]) == 64
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        stem = torch.nn.Sequential(*list(reference.children())[:-2])
        torch.testing.assert_close(backbone(x), stem(x), atol=1e-4, rtol=1e-4)


def test_weights_errors_name_the_file(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match=r"r18\.pth does not fit backbone torchvision:resnet50"):
        create_backbone("torchvision:resnet50", weights=tmp_path / "r18.pth")
    with pytest.raises(WeightsError, match=r"missing\.pth.*not found"):
        create_backbone("timm:resnet18", weights=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"junk\.pth is not a state dict of tensors .*: it starts with"):
        create_backbone("torchvision:resnet18", weights=tmp_path / "junk.pth")
    with pytest.raises(WeightsError, match="timm has no model"):
        create_backbone("timm:no_such_net", random_weights=True)


def test_pad_proposals_keeps_top_k_and_pads_with_whole_image() -> None:
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2]])
    out = pad_proposals(boxes, torch.tensor([3, 7, 9]), torch.tensor([0.2, 0.9, 0.5]), 5, (40, 30))
    assert out.num_valid == 3
    assert out.labels.tolist() == [7, 9, 3, -1, -1]
    torch.testing.assert_close(out.scores, torch.tensor([0.9, 0.5, 0.2, 0.0, 0.0]))
    torch.testing.assert_close(out.boxes[3], torch.tensor([0.0, 0.0, 30.0, 40.0]))
    top = pad_proposals(boxes, torch.tensor([3, 7, 9]), torch.tensor([0.2, 0.9, 0.5]), 2, (40, 30))
    assert top.labels.tolist() == [7, 9] and top.num_valid == 2


def test_detector_backend_gives_k_boxes_with_labels_and_scores() -> None:
    extractor = create_extractor("detector", backbone="timm:resnet10t",
                                 detector="fasterrcnn_mobilenet_v3_large_320_fpn",
                                 random_weights=True, num_boxes=8, image_size=64, detector_min_size=64)
    assert extractor.random_weights and extractor.label_names[1] == "person"
    out = extractor.extract(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert out.feats.shape == (2, 8, 512) and out.boxes.shape == (2, 8, 4)
    assert (out.boxes >= 0).all() and (out.boxes <= 1).all()
    assert (out.boxes[..., 2] >= out.boxes[..., 0]).all() and (out.boxes[..., 3] >= out.boxes[..., 1]).all()
    for meta in out.meta:
        assert len(meta["objects_id"]) == len(meta["objects_conf"]) == 8
        assert meta["objects_conf"] == sorted(meta["objects_conf"], reverse=True)
        assert 0 <= meta["num_valid"] <= 8


@pytest.mark.skipif(importlib.util.find_spec("detectron2") is not None, reason="detectron2 is installed")
def test_detectron2_absent_gives_install_message() -> None:
    with pytest.raises(BackendUnavailableError, match=r"pip install 'git\+https://github.com/facebookresearch/"):
        create_extractor("detectron2", d2_config="COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml", d2_weights="x.pkl")


@pytest.mark.skipif(importlib.util.find_spec("detectron2") is None, reason="detectron2 is not installed")
def test_detectron2_needs_a_local_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="--d2-weights"):
        create_extractor("detectron2", d2_config="COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml",
                         d2_weights=str(tmp_path / "missing.pkl"), random_weights=True)


def test_patches_cpu_and_accelerator_paths_agree() -> None:
    images = torch.randint(0, 256, (5, 3, 48, 48), dtype=torch.uint8)
    extractor = create_extractor("patches", image_size=48, patch_size=12)
    fast, reference = extractor._extract_numpy(images), extractor._extract_torch(images)
    assert fast.feats.shape == reference.feats.shape == (5, 17, 432)
    np.testing.assert_allclose(fast.feats.astype(np.float32), reference.feats.astype(np.float32), atol=2e-3, rtol=2e-3)
    np.testing.assert_array_equal(fast.boxes, reference.boxes)
