"""RoI pooling against a direct crop-and-average reference."""

from __future__ import annotations

import pytest
import torch

from features.pooling import grid_boxes, roi_mean_pool


@pytest.mark.parametrize("output_size", [1, 2])
def test_roi_align_mean_equals_crop_average_for_boxes_on_the_feature_grid(output_size: int) -> None:
    torch.manual_seed(0)
    stride = 16
    fmap = torch.randn(2, 8, 12, 10)  # (B, C, h, w) for a 192x160 input
    # boxes in feature cells (x0, y0, x1, y1), sizes multiples of output_size
    cells = [[(0, 0, 2, 2), (2, 4, 6, 8), (4, 2, 10, 12)], [(8, 10, 10, 12), (0, 0, 10, 12), (6, 0, 8, 4)]]
    boxes = torch.tensor(cells, dtype=torch.float32) * stride  # input pixels
    pooled = roi_mean_pool(fmap, boxes, spatial_scale=1 / stride, output_size=output_size)
    assert pooled.shape == (2, 3, 8)
    for b in range(2):
        for k, (x0, y0, x1, y1) in enumerate(cells[b]):
            reference = fmap[b, :, y0:y1, x0:x1].mean(dim=(1, 2))
            torch.testing.assert_close(pooled[b, k], reference, atol=1e-5, rtol=1e-5)


def test_list_of_boxes_with_different_counts() -> None:
    fmap = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    boxes = [torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([[0.0, 0.0, 2.0, 2.0], [2.0, 2.0, 4.0, 4.0]])]
    pooled = roi_mean_pool(fmap, boxes, spatial_scale=1.0, output_size=2)
    assert pooled.shape == (3, 1)
    torch.testing.assert_close(pooled[:, 0], torch.stack([fmap[0, 0].mean(), fmap[1, 0, :2, :2].mean(),
                                                           fmap[1, 0, 2:, 2:].mean()]))


def test_grid_boxes_cover_the_image_in_raster_order() -> None:
    boxes = grid_boxes(2, 3, whole_image=True)
    assert boxes.shape == (7, 4)
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    torch.testing.assert_close(boxes[1], torch.tensor([0.0, 0.0, 1 / 3, 0.5]))
    torch.testing.assert_close(boxes[3], torch.tensor([2 / 3, 0.0, 1.0, 0.5]))
    torch.testing.assert_close(boxes[6], torch.tensor([2 / 3, 0.5, 1.0, 1.0]))
    areas = (boxes[1:, 2] - boxes[1:, 0]) * (boxes[1:, 3] - boxes[1:, 1])
    torch.testing.assert_close(areas.sum(), torch.tensor(1.0))
