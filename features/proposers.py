"""Box proposers: where the regions of an image are.

* a fixed grid (:func:`features.pooling.grid_boxes`), used by the ``patches`` and ``grid`` backends;
* :class:`TorchvisionDetector` — a torchvision Faster R-CNN (Ren et al. 2015) keeping the top-K boxes after per-class
  NMS, with their COCO labels and scores (K=36 by default, as LXMERT's features);
* :class:`Detectron2Detector` — the same contract through a detectron2 ``DefaultPredictor``, e.g. a Visual Genome
  bottom-up-attention model (Anderson et al. 2018); only when ``detectron2`` is importable.

A detector that finds fewer than K boxes is padded to K with the whole-image box (label -1, score 0); the number of
real detections is kept as ``num_valid``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from features.errors import BackendUnavailableError, FeaturesError, WeightsError
from features.io import load_state_dict_file, torch_hub_cache_file
from features.weights import (
    NO_WEIGHT_BACKENDS,
    init_random,
    isolated_rng,
    load_verified,
    missing_weights_message,
    weights_record,
)

__all__ = ["Proposals", "TorchvisionDetector", "Detectron2Detector", "DETECTRON2_INSTALL", "check_detector_options",
           "pad_proposals"]

logger = logging.getLogger(__name__)

DETECTRON2_INSTALL = (
    "backend 'detectron2' needs the detectron2 package, which is not installed. Install it for your torch/CUDA "
    "version (see https://detectron2.readthedocs.io/en/latest/tutorials/install.html), e.g. "
    "pip install 'git+https://github.com/facebookresearch/detectron2.git' — or use backend 'detector' "
    "(torchvision Faster R-CNN), 'grid' or 'patches'."
)


@dataclass
class Proposals:
    """Boxes of one image.

    Attributes:
        boxes: ``[K, 4]`` float32, ``(x1, y1, x2, y2)`` in pixels of the image given to the proposer.
        labels: ``[K]`` int64 class ids (-1 for padding).
        scores: ``[K]`` float32 confidences (0 for padding).
        num_valid: Number of real detections (the rest is padding).
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    num_valid: int


def pad_proposals(boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, num_boxes: int,
                  image_size: tuple[int, int]) -> Proposals:
    """Keep the ``num_boxes`` highest-scoring boxes, padding with the whole image when there are fewer.

    Args:
        boxes: ``[N, 4]`` pixel boxes.
        labels: ``[N]`` class ids.
        scores: ``[N]`` confidences.
        num_boxes: K.
        image_size: ``(height, width)`` of the image the boxes refer to.
    """
    order = torch.argsort(scores, descending=True, stable=True)[:num_boxes]
    boxes, labels, scores = boxes[order].float(), labels[order].long(), scores[order].float()
    valid = int(boxes.shape[0])
    if valid < num_boxes:
        height, width = image_size
        missing = num_boxes - valid
        whole = torch.tensor([[0.0, 0.0, float(width), float(height)]], device=boxes.device).expand(missing, 4)
        boxes = torch.cat([boxes, whole])
        labels = torch.cat([labels, torch.full((missing,), -1, dtype=torch.long, device=labels.device)])
        scores = torch.cat([scores, torch.zeros(missing, device=scores.device)])
    return Proposals(boxes=boxes, labels=labels, scores=scores, num_valid=valid)


def check_detector_options(num_boxes: int, score_thresh: float, nms_thresh: float, min_size: int | None = None) -> None:
    """Refuse detector options that would silently give no boxes or garbage (``--num-boxes 0``, a NaN threshold).

    Raises:
        FeaturesError: Naming the flag and its allowed range.
    """
    if num_boxes < 1:
        raise FeaturesError(f"--num-boxes {num_boxes}: expected at least 1 box per image")
    if not 0.0 <= score_thresh <= 1.0:  # also refuses NaN
        raise FeaturesError(f"--score-thresh {score_thresh}: expected a detection score in [0, 1]")
    if not 0.0 < nms_thresh <= 1.0:
        raise FeaturesError(f"--nms-thresh {nms_thresh}: expected an IoU threshold in (0, 1]")
    if min_size is not None and min_size < 1:
        raise FeaturesError(f"--detector-min-size {min_size}: expected a positive number of pixels")


class TorchvisionDetector:
    """A torchvision Faster R-CNN proposing the top-K boxes per image.

    Args:
        name: A torchvision detection model (``fasterrcnn_resnet50_fpn``, ``fasterrcnn_resnet50_fpn_v2``,
            ``fasterrcnn_mobilenet_v3_large_fpn``, ``fasterrcnn_mobilenet_v3_large_320_fpn``).
        weights: Local state dict of the detector (COCO, 91 classes). Without it the torch hub cache is tried.
        random_weights: Allow random weights (tests, timing).
        num_boxes: K, boxes kept per image.
        score_thresh: Minimum score of a detection (before padding).
        nms_thresh: IoU threshold of the per-class NMS.
        min_size: Shorter side the detector resizes images to (``None``: the model's default).
        seed: Seed of the random initialisation.
        device: Where to run.
    """

    def __init__(self, name: str = "fasterrcnn_resnet50_fpn", *, weights: str | os.PathLike[str] | None = None,
                 random_weights: bool = False, num_boxes: int = 36, score_thresh: float = 0.0,
                 nms_thresh: float = 0.5, min_size: int | None = None, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        import torchvision
        from torchvision.models import detection

        check_detector_options(num_boxes, score_thresh, nms_thresh, min_size)
        known = [m for m in torchvision.models.list_models(module=detection) if m.startswith("fasterrcnn")]
        if name not in known:
            raise WeightsError(f"detector {name!r} unknown: expected one of {', '.join(known)}")
        default = torchvision.models.get_model_weights(name).DEFAULT
        cache_file = torch_hub_cache_file(default.url)
        file = weights if weights is not None else (cache_file if cache_file.is_file() else None)
        if file is None and not random_weights:
            raise WeightsError(missing_weights_message(f"detector {name}", str(cache_file)))
        kwargs: dict[str, Any] = {"box_detections_per_img": num_boxes, "box_score_thresh": score_thresh,
                                  "box_nms_thresh": nms_thresh}
        if min_size is not None:
            kwargs["min_size"] = min_size
        with isolated_rng():  # torchvision initialises from the global RNG; the weights below replace every value
            model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=91, **kwargs)
        if file is None:
            init_random(model, seed)
            self.weights_info = weights_record("random", seed=seed)
        else:
            load_verified(model, load_state_dict_file(file), what=f"detector {name}", file=file)
            self.weights_info = weights_record("file" if weights is not None else "cache", file)
        self.model = model.eval().to(device)
        self.name = name
        self.num_boxes = num_boxes
        self.categories: list[str] = list(default.meta["categories"])
        self.settings = {"detector": name, "num_boxes": num_boxes, "score_thresh": score_thresh,
                         "nms_thresh": nms_thresh, "min_size": min_size}

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> list[Proposals]:
        """Propose boxes for ``[B, 3, H, W]`` images with values in [0, 1]."""
        outputs = self.model(list(images))
        size = (int(images.shape[-2]), int(images.shape[-1]))
        return [pad_proposals(o["boxes"], o["labels"], o["scores"], self.num_boxes, size) for o in outputs]


class Detectron2Detector:
    """A detectron2 predictor proposing the top-K boxes per image (e.g. a bottom-up-attention VG model).

    Args:
        config_file: A detectron2 config file (local path, or a model-zoo name such as
            ``COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml``).
        weights: Local weights file of that model (required: detectron2 runs never use random weights).
        num_boxes: K, boxes kept per image.
        score_thresh: Minimum score of a detection.
        nms_thresh: IoU threshold of the NMS.
        device: Where to run.

    Raises:
        BackendUnavailableError: If detectron2 is not importable.
    """

    def __init__(self, config_file: str, weights: str | os.PathLike[str] | None, *, num_boxes: int = 36,
                 score_thresh: float = 0.2, nms_thresh: float = 0.5, device: str | torch.device = "cpu") -> None:
        check_detector_options(num_boxes, score_thresh, nms_thresh)
        try:
            from detectron2.config import get_cfg
            from detectron2.engine import DefaultPredictor
        except ImportError as exc:
            raise BackendUnavailableError(DETECTRON2_INSTALL) from exc
        if not config_file:
            raise WeightsError("backend 'detectron2' needs --d2-config (a detectron2 config file or model-zoo name)")
        if weights is None or not Path(weights).is_file():
            raise WeightsError(
                f"backend 'detectron2' needs --d2-weights PATH (a local detectron2 checkpoint); got {weights}. "
                f"Backends that need no weights: {', '.join(NO_WEIGHT_BACKENDS)}."
            )
        cfg = get_cfg()
        if not Path(config_file).is_file():
            from detectron2 import model_zoo

            config_file = model_zoo.get_config_file(config_file)
        cfg.merge_from_file(config_file)
        cfg.MODEL.WEIGHTS = str(weights)
        cfg.MODEL.DEVICE = str(device)
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
        cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = nms_thresh
        cfg.TEST.DETECTIONS_PER_IMAGE = num_boxes
        self.predictor = DefaultPredictor(cfg)
        self.input_format = cfg.INPUT.FORMAT
        self.num_boxes = num_boxes
        self.categories: list[str] | None = None
        self.weights_info = weights_record("file", weights)
        self.settings = {"d2_config": str(config_file), "num_boxes": num_boxes, "score_thresh": score_thresh,
                         "nms_thresh": nms_thresh}

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> list[Proposals]:
        """Propose boxes for ``[B, 3, H, W]`` images with values in [0, 1]."""
        results = []
        size = (int(images.shape[-2]), int(images.shape[-1]))
        for image in images:
            array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()  # HWC RGB
            if self.input_format == "BGR":
                array = array[:, :, ::-1]
            instances = self.predictor(array)["instances"].to("cpu")
            results.append(pad_proposals(instances.pred_boxes.tensor, instances.pred_classes, instances.scores,
                                         self.num_boxes, size))
        return results
