"""RoI pooling: one feature vector per box from a backbone feature map.

Each box is pooled with :func:`torchvision.ops.roi_align` (He et al. 2017, "Mask R-CNN") to a small ``S x S`` grid of
bilinearly sampled points and the grid is mean-pooled, giving the box's ``C``-dim vector. With ``aligned=True`` a box
that covers whole cells of the feature map, with a size that is a multiple of ``S`` cells, gives exactly the mean of
those cells (tested against a crop-and-average reference).
"""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

__all__ = ["grid_boxes", "roi_mean_pool"]


def grid_boxes(rows: int, cols: int, *, whole_image: bool = False) -> torch.Tensor:
    """Return normalised ``(x1, y1, x2, y2)`` boxes of a ``rows x cols`` grid in raster order.

    Args:
        rows: Grid rows.
        cols: Grid columns.
        whole_image: Put the whole-image box ``(0, 0, 1, 1)`` first.

    Returns:
        ``[K, 4]`` float32 with ``K = rows * cols (+1)``.
    """
    ys = torch.linspace(0.0, 1.0, rows + 1)
    xs = torch.linspace(0.0, 1.0, cols + 1)
    y1, x1 = torch.meshgrid(ys[:-1], xs[:-1], indexing="ij")
    y2, x2 = torch.meshgrid(ys[1:], xs[1:], indexing="ij")
    boxes = torch.stack([x1, y1, x2, y2], dim=-1).reshape(-1, 4)
    if whole_image:
        boxes = torch.cat([torch.tensor([[0.0, 0.0, 1.0, 1.0]]), boxes])
    return boxes.float()


def roi_mean_pool(feature_map: torch.Tensor, boxes: torch.Tensor | list[torch.Tensor], *, spatial_scale: float,
                  output_size: int = 2, sampling_ratio: int = -1) -> torch.Tensor:
    """Pool one vector per box: RoI-align to ``output_size x output_size`` then average.

    Args:
        feature_map: ``[B, C, h, w]``.
        boxes: ``[B, K, 4]`` (same K per image) or a list of B ``[K_i, 4]`` tensors, in input-image pixels ``(x1, y1,
            x2, y2)``.
        spatial_scale: Feature-map cells per input pixel (``w / W``).
        output_size: Side of the sampling grid per box.
        sampling_ratio: Bilinear samples per grid cell side; -1 adapts to the box size (``ceil(box / output_size)``).

    Returns:
        ``[B, K, C]`` for a tensor of boxes, or ``[sum K_i, C]`` for a list.
    """
    if isinstance(boxes, torch.Tensor):
        batch, k = boxes.shape[:2]
        index = torch.arange(batch, device=boxes.device, dtype=boxes.dtype).repeat_interleave(k)[:, None]
        rois = torch.cat([index, boxes.reshape(-1, 4)], dim=1)  # (B*K, 5): batch index, x1, y1, x2, y2
    else:
        batch, k = None, None
        rois = [b.to(feature_map.dtype) for b in boxes]
    pooled = roi_align(feature_map, rois.to(feature_map.dtype) if isinstance(rois, torch.Tensor) else rois,
                       output_size=output_size, spatial_scale=spatial_scale, sampling_ratio=sampling_ratio,
                       aligned=True)  # (N, C, S, S)
    vectors = pooled.mean(dim=(2, 3))
    return vectors if batch is None else vectors.reshape(batch, k, -1)
