"""Extraction backends: images in, ``(features [K, D], boxes [K, 4], metadata)`` out, one batch at a time.

=============  ===================================================================  ==========================
backend        regions and features                                                 weights
=============  ===================================================================  ==========================
``patches``    raw pixel patches on a fixed grid plus one whole-image region        none
               (ViLT-style, Kim et al. 2021)
``grid``       a fixed grid of boxes over a CNN feature map, RoI-aligned and        backbone (timm/torchvision;
               mean-pooled (grid features, Jiang et al. 2020)                       EfficientNet-Lite0 built in)
``detector``   top-K boxes of a torchvision Faster R-CNN (labels and scores kept),  detector + backbone
               pooled from the chosen backbone
``detectron2`` the same through a detectron2 predictor (only if installed)          detectron2 checkpoint +
                                                                                    backbone
``proposals``  class-agnostic object boxes from multi-scale graph-based             backbone (EfficientNet-Lite0
               segmentation ranked by colour contrast (:mod:`features.segment`),    built in)
               pooled from the backbone, plus each box's colour statistics
=============  ===================================================================  ==========================

Images reach a backend already decoded and resized to ``image_size x image_size`` (a plain stretch, so normalised
boxes are the same for the original and the resized image) as a uint8 batch ``[B, 3, S, S]``. Every backend is an
:class:`~features.backend_base.Extractor` (the interface, in :mod:`features.backend_base`; ``Extractor`` and
``ExtractedBatch`` are importable from here too). The registry (:data:`BACKENDS`, :func:`create_extractor`) is here.

The ``patches`` defaults fit easy-VQA's 64x64 images: a 4x4 grid of 16x16-pixel patches plus the whole image
downsampled to 16x16 by area averaging, so K = 17 and D = 3 * 16 * 16 = 768. Region 0 is the whole image (box
``(0, 0, 1, 1)``), regions 1..16 the patches in raster order. Each vector is the patch's pixels in channel-major order
``(c, y, x)``, scaled to [0, 1] and normalised with the ImageNet mean ``(0.485, 0.456, 0.406)`` and std
``(0.229, 0.224, 0.225)`` per RGB channel.
"""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from features.backbones import IMAGENET_MEAN, IMAGENET_STD, create_backbone
from features.backend_base import ExtractedBatch, Extractor
from features.defaults import GRID_DEFAULTS
from features.errors import FeaturesError
from features.pooling import COLOUR_STATS_DIM, box_colour_hist, box_colour_stats, grid_boxes, roi_mean_pool
from features.proposers import Detectron2Detector, TorchvisionDetector
from features.segment import SEGMENT_DEFAULTS, SegmentProposer

__all__ = ["BACKENDS", "DetectorExtractor", "Detectron2Extractor", "ExtractedBatch", "Extractor", "GridExtractor",
           "PROPOSALS_DEFAULTS", "PatchesExtractor", "ProposalsExtractor", "create_extractor", "list_backends"]

logger = logging.getLogger(__name__)


class PatchesExtractor(Extractor):
    """Raw pixel patches on a fixed grid plus one whole-image region; needs no weights.

    Args:
        image_size: Images are resized to ``image_size x image_size``.
        patch_size: Patch side p; the grid is ``image_size / p`` patches per side and D = 3 p^2.
        whole_image: Add region 0, the whole image area-downsampled to ``p x p``.
        mean: RGB mean for normalisation (ImageNet's by default).
        std: RGB std for normalisation (ImageNet's by default).
        device: Where to compute.
    """

    name = "patches"

    def __init__(self, image_size: int = 64, patch_size: int = 16, whole_image: bool = True,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        if patch_size <= 0 or image_size <= 0 or image_size % patch_size:
            raise FeaturesError(f"backend 'patches': image size {image_size} must be a positive multiple of the patch "
                                f"size {patch_size}")
        self.image_size, self.patch_size, self.whole_image = image_size, patch_size, whole_image
        self.mean, self.std = tuple(mean), tuple(std)
        self.grid = image_size // patch_size
        self.num_regions = self.grid * self.grid + int(whole_image)
        self.feature_dim = 3 * patch_size * patch_size
        self._boxes = grid_boxes(self.grid, self.grid, whole_image=whole_image).numpy()
        # uint8 value -> normalised value, per channel (float64 maths, rounded once to float16)
        levels = np.arange(256, dtype=np.float64) / 255.0
        self._lut = np.stack([(levels - m) / s for m, s in zip(self.mean, self.std)]).astype(np.float16)  # (3, 256)

    def settings(self) -> dict[str, Any]:
        return {"image_size": self.image_size, "patch_size": self.patch_size, "grid": self.grid,
                "whole_image": self.whole_image, "mean": list(self.mean), "std": list(self.std),
                "feature_layout": "(c, y, x) pixels of each patch; region 0 = whole image" if self.whole_image
                else "(c, y, x) pixels of each patch"}

    def extract(self, images: torch.Tensor) -> ExtractedBatch:
        if self.device.type == "cpu":
            return self._extract_numpy(images)
        return self._extract_torch(images)

    def _extract_numpy(self, images: torch.Tensor) -> ExtractedBatch:
        """CPU path: pure data movement plus a lookup table (several times faster than small torch ops)."""
        x = images.permute(0, 2, 3, 1).numpy()  # (B, S, S, 3) uint8; a view when images are channels-last
        b, p, g = x.shape[0], self.patch_size, self.grid
        # (B, gy, py, gx, px, C) -> (B, gy, gx, C, py, px): one row per patch in (c, y, x) order
        patches = np.ascontiguousarray(x.reshape(b, g, p, g, p, 3).transpose(0, 1, 3, 5, 2, 4))
        patches = patches.reshape(b, g * g, 3, p * p)
        start = int(self.whole_image)
        feats = np.empty((b, self.num_regions, 3, p * p), dtype=np.float16)
        for c in range(3):
            np.take(self._lut[c], patches[:, :, c], out=feats[:, start:, c])
        if self.whole_image:
            f = self.image_size // p  # area average of f x f pixel blocks, then normalised
            blocks = x.reshape(b, p, f, p, f, 3)
            total = np.zeros((b, p, p, 3), dtype=np.uint32)
            for i in range(f):  # f*f strided adds beat numpy's multi-axis mean by ~6x here
                for j in range(f):
                    total += blocks[:, :, i, :, j]
            mean = np.asarray(self.mean, dtype=np.float32)
            std = np.asarray(self.std, dtype=np.float32)
            whole = (total.astype(np.float32) / (255.0 * f * f) - mean) / std  # (B, p, p, 3)
            feats[:, 0] = whole.transpose(0, 3, 1, 2).reshape(b, 3, p * p)
        feats = feats.reshape(b, self.num_regions, self.feature_dim)
        return ExtractedBatch(feats=feats, boxes=np.broadcast_to(self._boxes, (b, *self._boxes.shape)))

    @torch.inference_mode()
    def _extract_torch(self, images: torch.Tensor) -> ExtractedBatch:
        """Accelerator path: the same computation with torch ops on the device."""
        x = self._normalise(images, self.mean, self.std)  # (B, 3, S, S)
        b, p, g = x.shape[0], self.patch_size, self.grid
        patches = x.reshape(b, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, 3 * p * p)
        if self.whole_image:
            whole = F.adaptive_avg_pool2d(x, (p, p)).reshape(b, 1, 3 * p * p)
            patches = torch.cat([whole, patches], dim=1)  # (B, K, D)
        feats = patches.to(torch.float16).cpu().numpy()
        return ExtractedBatch(feats=feats, boxes=np.broadcast_to(self._boxes, (b, *self._boxes.shape)))


class GridExtractor(Extractor):
    """Grid features: a fixed ``grid x grid`` set of boxes RoI-aligned from a CNN feature map.

    The defaults (:data:`features.defaults.GRID_DEFAULTS`) are the built-in ImageNet-pretrained EfficientNet-Lite0,
    its last stage at 224 px (a 7x7x320 map) and one box per cell: K=49, D=320, no weights flag needed.

    Args:
        backbone: timm or torchvision backbone name (``"efficientnet_lite0"``, ``"timm:resnet18"``,
            ``"torchvision:resnet50"``).
        weights: Local backbone weights file.
        random_weights: Use random backbone weights (tests, timing, a floor to compare with).
        image_size: Input side S. With 224 and a stride-32 stage the map is 7x7; with 384 it is 12x12 and each of 6x6
            boxes covers exactly 2x2 cells.
        grid: Boxes per side (K = grid^2, plus one with ``whole_image``).
        whole_image: Add the whole-image box first.
        pool_size: RoI-align output side before mean pooling (cells per box side gives the exact mean of the cells).
        layer: Backbone stage whose map is pooled (-1: the last).
        colour_stats: Append each box's pixel colour statistics to its vector: the mean and the standard deviation
            of each channel of the normalised input inside the box (6 values). ImageNet features are built to be
            partly colour-invariant (brown and red, black and grey sit close in them); these numbers keep what the
            network discards, at no measurable cost.
        colour_hist: Append each box's joint RGB histogram with this many bins per channel (``n**3`` values, the
            share of the box's pixels in each bin; 0: none), the classic colour descriptor of region-based retrieval:
            unlike the mean it separates a small patch of one colour from a large patch of a paler one.
        colour_scale: Factor applied to the colour statistics and histogram. A model's region encoder starts with a
            random projection of the whole vector, where 6 colour values of spread ~0.3 next to 320 backbone channels
            of spread ~1.7 carry about 0.05% of the variance; scaling them up makes colour as visible as the rest
            from the first step (easy-VQA, lxmert-mini, 200 steps: colour questions 97.1% with 20 against 80.8%
            with 1). Recorded in the settings when not 1.
        seed: Seed of random weights.
        device: Where to compute.
    """

    name = "grid"

    def __init__(self, backbone: str = GRID_DEFAULTS["backbone"], weights: str | None = None,
                 random_weights: bool = False, image_size: int = GRID_DEFAULTS["image_size"],
                 grid: int = GRID_DEFAULTS["grid"], whole_image: bool = False,
                 pool_size: int = GRID_DEFAULTS["pool_size"], layer: int = GRID_DEFAULTS["layer"],
                 colour_stats: bool = False, colour_hist: int = 0, colour_scale: float = 1.0, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        if not (math.isfinite(float(colour_scale)) and float(colour_scale) > 0):
            raise FeaturesError(f"backend 'grid': colour_scale ({colour_scale}) must be a positive finite number")
        if not 0 <= int(colour_hist) <= 8:
            raise FeaturesError(f"backend 'grid': colour_hist ({colour_hist}) must be 0 (off) to 8 bins per channel")
        if grid <= 0 or image_size <= 0 or pool_size <= 0:
            raise FeaturesError(f"backend 'grid': grid ({grid}), image size ({image_size}) and pool size ({pool_size}) "
                                "must be positive")
        self.backbone = create_backbone(backbone, weights=weights, random_weights=random_weights, layer=layer,
                                        seed=seed).to(self.device)
        self.image_size, self.grid, self.whole_image, self.pool_size, self.layer = (image_size, grid, whole_image,
                                                                                     pool_size, layer)
        self.num_regions = grid * grid + int(whole_image)
        self.colour_stats, self.colour_hist = bool(colour_stats), int(colour_hist)
        self.colour_scale = float(colour_scale)
        self.feature_dim = (self.backbone.out_channels + (COLOUR_STATS_DIM if self.colour_stats else 0)
                            + self.colour_hist ** 3)
        self.weights_info = {"backbone": self.backbone.weights_info}
        self.random_weights = self.backbone.weights_info["source"] == "random"
        self._boxes = grid_boxes(grid, grid, whole_image=whole_image)
        self._pixel_boxes = (self._boxes * image_size).to(self.device)

    def settings(self) -> dict[str, Any]:
        return {"backbone": self.backbone.name, "layer": self.layer, "image_size": self.image_size, "grid": self.grid,
                "whole_image": self.whole_image, "pool_size": self.pool_size, "mean": list(self.backbone.mean),
                "std": list(self.backbone.std), **({"colour_stats": True} if self.colour_stats else {}),
                **({"colour_hist": self.colour_hist} if self.colour_hist else {}),
                **({"colour_scale": self.colour_scale} if self.colour_scale != 1.0 else {})}

    @torch.inference_mode()
    def extract(self, images: torch.Tensor) -> ExtractedBatch:
        x = self._normalise(images, self.backbone.mean, self.backbone.std)
        fmap = self.backbone(x)  # (B, C, h, w)
        b = x.shape[0]
        boxes = self._pixel_boxes.unsqueeze(0).expand(b, -1, -1)
        pooled = roi_mean_pool(fmap, boxes, spatial_scale=fmap.shape[-1] / x.shape[-1], output_size=self.pool_size)
        if self.colour_stats:
            pooled = torch.cat([pooled, self.colour_scale * box_colour_stats(x, boxes)], dim=-1)
        if self.colour_hist:
            hist = box_colour_hist(images.to(self.device), boxes, self.colour_hist)
            pooled = torch.cat([pooled, self.colour_scale * hist], dim=-1)
        boxes_np = self._boxes.numpy()
        return ExtractedBatch(feats=pooled.to(torch.float16).cpu().numpy(),
                              boxes=np.broadcast_to(boxes_np, (b, *boxes_np.shape)))


class DetectorExtractor(Extractor):
    """Detected regions: a torchvision Faster R-CNN proposes K boxes, features are pooled from the backbone.

    Args:
        backbone: Backbone whose feature map is pooled (see :class:`GridExtractor`).
        weights: Local backbone weights file.
        random_weights: Allow random weights for backbone and detector (tests, timing).
        detector: torchvision detector name.
        detector_weights: Local detector weights file (COCO Faster R-CNN state dict).
        num_boxes: K (36 as LXMERT).
        score_thresh: Minimum detection score.
        nms_thresh: IoU threshold of the per-class NMS.
        detector_min_size: Shorter side the detector resizes to (``None``: its default).
        image_size: Side S the images are resized to (for both detector and backbone).
        pool_size: RoI-align output side before mean pooling.
        layer: Backbone stage whose map is pooled.
        seed: Seed of random weights.
        device: Where to compute.
    """

    name = "detector"

    def __init__(self, backbone: str = "resnet50", weights: str | None = None, random_weights: bool = False,
                 detector: str = "fasterrcnn_resnet50_fpn", detector_weights: str | None = None, num_boxes: int = 36,
                 score_thresh: float = 0.0, nms_thresh: float = 0.5, detector_min_size: int | None = None,
                 image_size: int = 448, pool_size: int = 4, layer: int = -1, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        proposer = TorchvisionDetector(detector, weights=detector_weights, random_weights=random_weights,
                                       num_boxes=num_boxes, score_thresh=score_thresh, nms_thresh=nms_thresh,
                                       min_size=detector_min_size, seed=seed, device=self.device)
        self._setup(proposer, backbone, weights, random_weights, image_size, pool_size, layer, seed)

    def _setup(self, proposer: TorchvisionDetector | Detectron2Detector, backbone: str, weights: str | None,
               random_weights: bool, image_size: int, pool_size: int, layer: int, seed: int) -> None:
        self.proposer = proposer
        self.backbone = create_backbone(backbone, weights=weights, random_weights=random_weights, layer=layer,
                                        seed=seed).to(self.device)
        self.image_size, self.pool_size, self.layer = image_size, pool_size, layer
        self.num_regions = proposer.num_boxes
        self.feature_dim = self.backbone.out_channels
        self.label_names = proposer.categories
        self.weights_info = {"backbone": self.backbone.weights_info, "detector": proposer.weights_info}
        self.random_weights = any(w.get("source") == "random" for w in self.weights_info.values())

    def settings(self) -> dict[str, Any]:
        return {**self.proposer.settings, "backbone": self.backbone.name, "layer": self.layer,
                "image_size": self.image_size, "pool_size": self.pool_size, "mean": list(self.backbone.mean),
                "std": list(self.backbone.std)}

    @torch.inference_mode()
    def extract(self, images: torch.Tensor) -> ExtractedBatch:
        unit = images.to(self.device).float().div_(255.0)  # (B, 3, S, S) in [0, 1]
        proposals = self.proposer(unit)
        mean = torch.tensor(self.backbone.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.backbone.std, device=self.device).view(1, 3, 1, 1)
        fmap = self.backbone((unit - mean) / std)
        boxes = torch.stack([p.boxes.to(self.device) for p in proposals])  # (B, K, 4) pixels
        pooled = roi_mean_pool(fmap, boxes, spatial_scale=fmap.shape[-1] / unit.shape[-1],
                               output_size=self.pool_size)
        size = float(unit.shape[-1])
        norm_boxes = (boxes / size).clamp_(0.0, 1.0).float().cpu().numpy()
        meta = [{"objects_id": p.labels.cpu().tolist(), "objects_conf": [round(float(s), 6) for s in p.scores.cpu()],
                 "num_valid": p.num_valid} for p in proposals]
        return ExtractedBatch(feats=pooled.to(torch.float16).cpu().numpy(), boxes=norm_boxes, meta=meta)


class Detectron2Extractor(DetectorExtractor):
    """Detected regions from a detectron2 predictor (e.g. a bottom-up-attention Visual Genome model).

    Args:
        d2_config: detectron2 config file or model-zoo name.
        d2_weights: Local detectron2 checkpoint.
        backbone: Backbone whose feature map is pooled.
        weights: Local backbone weights file.
        random_weights: Allow random backbone weights.
        num_boxes: K.
        score_thresh: Minimum detection score.
        nms_thresh: IoU threshold of the NMS.
        image_size: Side S the images are resized to.
        pool_size: RoI-align output side before mean pooling.
        layer: Backbone stage whose map is pooled.
        seed: Seed of random weights.
        device: Where to compute.
    """

    name = "detectron2"

    def __init__(self, d2_config: str | None = None, d2_weights: str | None = None, backbone: str = "resnet50",
                 weights: str | None = None, random_weights: bool = False, num_boxes: int = 36,
                 score_thresh: float = 0.2, nms_thresh: float = 0.5, image_size: int = 448, pool_size: int = 4,
                 layer: int = -1, seed: int = 0, device: str | torch.device = "cpu") -> None:
        Extractor.__init__(self, device)
        proposer = Detectron2Detector(d2_config or "", d2_weights, num_boxes=num_boxes, score_thresh=score_thresh,
                                      nms_thresh=nms_thresh, device=self.device)
        self._setup(proposer, backbone, weights, random_weights, image_size, pool_size, layer, seed)


#: Options of the ``proposals`` backend's network and features by default (its box options: SEGMENT_DEFAULTS).
PROPOSALS_DEFAULTS: dict[str, Any] = {"backbone": "efficientnet_lite0", "layer": 3, "image_size": 320,
                                      "pool_size": 2, "whole_image": True, "colour_stats": True, "colour_scale": 20.0}


class ProposalsExtractor(Extractor):
    """Object proposals without detector weights: segmentation boxes (:mod:`features.segment`) pooled from a CNN map.

    Each image (the ``image_size`` network input) is segmented on the CPU by :class:`~features.segment.SegmentProposer`
    (multi-scale Felzenszwalb segments and their selective-search grouping, ranked by their colour contrast with the
    ring around their box, NMS, the best ``num_boxes``); each box is RoI-aligned and mean-pooled from the backbone's map
    (as the ``grid`` backend pools its cells) and, with ``colour_stats``, gets its pixels' channel means and standard
    deviations appended. With ``whole_image`` region 0 is the whole image, then the proposals best first; the rest up
    to K is padding with the whole-image box. Each sample's JSON keeps ``num_valid`` (the real regions: the whole
    image and the proposals; what the data loaders keep), ``num_proposals`` (the boxes found; 0 for a flat image)
    and ``proposal_scores``. ``num_valid`` is never 0: without ``whole_image`` an image in which nothing is found keeps
    the whole-image box as its one region (a model needs one region per image at least).

    Segmentation runs on the network input, not on the original image, because ``vlm predict`` and ``vlm serve`` hand
    a backend only that image: the same picture gives the same boxes at extraction and at inference.

    Args:
        backbone: Backbone whose feature map is pooled (see :class:`GridExtractor`).
        weights: Local backbone weights file.
        random_weights: Use random backbone weights (tests, timing).
        image_size: Input side S. Larger than ``grid``'s 224 so that a small object has map cells of its own: at 320
            px the default stage 3 (stride 16) is a 20x20 map of 16-px cells.
        layer: Backbone stage whose map is pooled (-1: the last). The default, 3 (stride 16, 112 channels), told the
            shape of small objects best in a linear probe (docs/features.md, "proposals").
        pool_size: RoI-align output side before mean pooling.
        num_boxes: Proposals per image (K = ``num_boxes`` + 1 with ``whole_image``).
        whole_image: Put the whole-image box first, as a context region.
        scales: Felzenszwalb scales (:class:`~features.segment.SegmentProposer`).
        sigma: Gaussian smoothing before segmenting, in working-image pixels.
        segment_size: Longest side of the image the segmentation works on (the input is area-resized to it).
        min_area: Smallest proposal, as a share of the image.
        max_area: Largest proposal, as a share of the image.
        nms_thresh: IoU above which the lower-scored of two proposals is dropped.
        score: Ranking of the proposals, ``"contrast"`` or ``"area"`` (:data:`features.segment.SCORES`).
        border_penalty: Weight of the image-border factor of the score.
        grouping: Also propose the union of each pair of adjacent segments.
        colour_stats: Append each box's colour statistics (see :class:`GridExtractor`).
        colour_scale: Factor on the colour statistics (see :class:`GridExtractor`).
        seed: Seed of random weights.
        device: Where to run the backbone (segmentation runs on the CPU).
    """

    name = "proposals"

    def __init__(self, backbone: str = PROPOSALS_DEFAULTS["backbone"], weights: str | None = None,
                 random_weights: bool = False, image_size: int = PROPOSALS_DEFAULTS["image_size"],
                 layer: int = PROPOSALS_DEFAULTS["layer"], pool_size: int = PROPOSALS_DEFAULTS["pool_size"],
                 num_boxes: int = SEGMENT_DEFAULTS["num_boxes"], whole_image: bool = PROPOSALS_DEFAULTS["whole_image"],
                 scales: list[float] | tuple[float, ...] = SEGMENT_DEFAULTS["scales"],
                 sigma: float = SEGMENT_DEFAULTS["sigma"], segment_size: int = SEGMENT_DEFAULTS["segment_size"],
                 min_area: float = SEGMENT_DEFAULTS["min_area"], max_area: float = SEGMENT_DEFAULTS["max_area"],
                 nms_thresh: float = SEGMENT_DEFAULTS["nms_thresh"], score: str = SEGMENT_DEFAULTS["score"],
                 border_penalty: float = SEGMENT_DEFAULTS["border_penalty"],
                 grouping: bool = SEGMENT_DEFAULTS["grouping"],
                 colour_stats: bool = PROPOSALS_DEFAULTS["colour_stats"],
                 colour_scale: float = PROPOSALS_DEFAULTS["colour_scale"], seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        super().__init__(device)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
            raise FeaturesError(f"backend 'proposals': image_size ({image_size!r}) must be an integer of at least 32")
        if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
            raise FeaturesError(f"backend 'proposals': pool_size ({pool_size!r}) must be a positive integer")
        if not (isinstance(colour_scale, (int, float)) and math.isfinite(float(colour_scale))
                and float(colour_scale) > 0):
            raise FeaturesError(f"backend 'proposals': colour_scale ({colour_scale!r}) must be a positive finite "
                                "number")
        self.proposer = SegmentProposer(num_boxes=num_boxes, scales=scales, sigma=sigma, segment_size=segment_size,
                                        min_area=min_area, max_area=max_area, nms_thresh=nms_thresh, score=score,
                                        border_penalty=border_penalty, grouping=grouping)
        self.backbone = create_backbone(backbone, weights=weights, random_weights=random_weights, layer=layer,
                                        seed=seed).to(self.device)
        self.image_size, self.layer, self.pool_size = image_size, layer, pool_size
        self.whole_image, self.colour_stats, self.colour_scale = bool(whole_image), bool(colour_stats), \
            float(colour_scale)
        self.num_regions = num_boxes + int(self.whole_image)
        self.feature_dim = self.backbone.out_channels + (COLOUR_STATS_DIM if self.colour_stats else 0)
        self.weights_info = {"backbone": self.backbone.weights_info}
        self.random_weights = self.backbone.weights_info["source"] == "random"

    def settings(self) -> dict[str, Any]:
        return {"backbone": self.backbone.name, "layer": self.layer, "image_size": self.image_size,
                "pool_size": self.pool_size, "whole_image": self.whole_image, **self.proposer.settings,
                "colour_stats": self.colour_stats, "colour_scale": self.colour_scale,
                "mean": list(self.backbone.mean), "std": list(self.backbone.std)}

    def propose(self, images: torch.Tensor) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        """Boxes ``[B, K, 4]`` in pixels of the ``S x S`` input, and each image's metadata, for a uint8 batch."""
        size = images.shape[-1]
        whole = torch.tensor([[0.0, 0.0, float(size), float(size)]])
        boxes, meta = [], []
        for image in images.permute(0, 2, 3, 1).cpu().numpy():  # (S, S, 3) uint8 each
            found = self.proposer(image)
            rows = torch.cat([whole, found.boxes]) if self.whole_image else found.boxes
            boxes.append(rows)
            meta.append({"num_valid": max(1, found.num_valid + int(self.whole_image)),
                         "num_proposals": found.num_valid,
                         "proposal_scores": [round(float(s), 6) for s in found.scores[:found.num_valid]]})
        return torch.stack(boxes), meta

    @torch.inference_mode()
    def extract(self, images: torch.Tensor) -> ExtractedBatch:
        boxes, meta = self.propose(images)
        x = self._normalise(images, self.backbone.mean, self.backbone.std)
        fmap = self.backbone(x)  # (B, C, h, w)
        boxes = boxes.to(self.device)
        pooled = roi_mean_pool(fmap, boxes, spatial_scale=fmap.shape[-1] / x.shape[-1], output_size=self.pool_size)
        if self.colour_stats:
            pooled = torch.cat([pooled, self.colour_scale * box_colour_stats(x, boxes)], dim=-1)
        norm_boxes = (boxes / float(x.shape[-1])).clamp_(0.0, 1.0).float().cpu().numpy()
        return ExtractedBatch(feats=pooled.to(torch.float16).cpu().numpy(), boxes=norm_boxes, meta=meta)


#: Backends by name.
BACKENDS: dict[str, type[Extractor]] = {
    "patches": PatchesExtractor,
    "grid": GridExtractor,
    "detector": DetectorExtractor,
    "detectron2": Detectron2Extractor,
    "proposals": ProposalsExtractor,
}


def list_backends() -> list[str]:
    """Names of the registered backends."""
    return list(BACKENDS)


def backend_options(backend: str) -> list[str]:
    """The keyword options a backend accepts."""
    return [p for p in inspect.signature(BACKENDS[backend].__init__).parameters if p != "self"]


def create_extractor(backend: str, **options: Any) -> Extractor:
    """Build a backend by name.

    Args:
        backend: One of :func:`list_backends`.
        **options: The backend's keyword options (see each class).

    Raises:
        FeaturesError: On an unknown backend or an option the backend does not take.
        WeightsError: If the backend needs weights that are not available.
    """
    if backend not in BACKENDS:
        raise FeaturesError(f"unknown backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    accepted = backend_options(backend)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise FeaturesError(f"backend {backend!r} does not take option(s) {', '.join(unknown)}; it takes "
                            f"{', '.join(accepted)}")
    return BACKENDS[backend](**options)
