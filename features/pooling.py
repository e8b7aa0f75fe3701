"""RoI pooling: one vector per box, from a backbone feature map or from the box's pixels.

Each box is pooled with :func:`torchvision.ops.roi_align` (He et al. 2017, "Mask R-CNN") to a small ``S x S`` grid of
bilinearly sampled points and the grid is mean-pooled, giving the box's ``C``-dim vector. With ``aligned=True`` a box
that covers whole cells of the feature map, with a size that is a multiple of ``S`` cells, gives exactly the mean of
those cells (tested against a crop-and-average reference).

The same pooling over pixels gives the colour descriptors the ``grid`` backend can append to each box:
:func:`box_colour_stats` (per-channel mean and standard deviation) and :func:`box_colour_hist` (joint RGB histogram).
"""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

__all__ = ["COLOUR_STATS_DIM", "box_colour_hist", "box_colour_stats", "grid_boxes", "roi_mean_pool"]


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


#: Values :func:`box_colour_stats` adds per box: mean and standard deviation of each of the 3 channels.
COLOUR_STATS_DIM = 6


def box_colour_stats(images: torch.Tensor, boxes: torch.Tensor, samples: int = 8) -> torch.Tensor:
    """Mean and standard deviation of each channel of ``images`` inside each box.

    Both moments are RoI-aligned averages of the pixels and of their squares (``samples x samples`` bins per box,
    each the mean of an adaptive number of bilinear samples): exact for boxes on the pixel grid whose sides are
    multiples of ``samples`` pixels (the built-in 128 px 4x4 grid: 32-pixel boxes), smooth otherwise.

    Args:
        images: ``[B, 3, H, W]`` (normalised) pixels.
        boxes: ``[B, K, 4]`` boxes in pixels ``(x1, y1, x2, y2)``.
        samples: Side of the RoI-align grid per box.

    Returns:
        ``[B, K, 6]``: the three means, then the three standard deviations.
    """
    moments = roi_mean_pool(torch.cat([images, images * images], dim=1), boxes, spatial_scale=1.0,
                            output_size=samples)
    mean, mean_sq = moments[..., :3], moments[..., 3:]
    return torch.cat([mean, (mean_sq - mean * mean).clamp_min(0.0).sqrt()], dim=-1)


def box_colour_hist(images: torch.Tensor, boxes: torch.Tensor, bins: int, samples: int = 8,
                    chunk: int = 8) -> torch.Tensor:
    """Joint RGB histogram of each box: the share of its pixels in each of ``bins**3`` colour cells.

    Each pixel's cell (``r * bins**2 + g * bins + b`` with each 8-bit channel cut into ``bins`` equal ranges) is
    one-hot encoded and RoI-averaged like :func:`box_colour_stats` (exact for pixel-aligned boxes whose sides are
    multiples of ``samples``); the values of a box sum to 1.

    Args:
        images: uint8 ``[B, 3, H, W]``.
        boxes: ``[B, K, 4]`` boxes in pixels ``(x1, y1, x2, y2)``.
        bins: Bins per channel.
        samples: Side of the RoI-align grid per box.
        chunk: Images one-hot encoded at a time (``bins**3`` float planes each).

    Returns:
        ``[B, K, bins**3]``.
    """
    cells = (images.long() * bins) // 256  # (B, 3, H, W) in [0, bins)
    code = cells[:, 0] * bins * bins + cells[:, 1] * bins + cells[:, 2]  # (B, H, W)
    out = []
    for lo in range(0, images.shape[0], chunk):
        onehot = torch.nn.functional.one_hot(code[lo:lo + chunk], bins ** 3).permute(0, 3, 1, 2).float()
        out.append(roi_mean_pool(onehot, boxes[lo:lo + chunk], spatial_scale=1.0, output_size=samples))
    return torch.cat(out)
