"""Per-box colour statistics of the grid backend (``colour_stats``): exact moments on pixel-aligned boxes."""

from __future__ import annotations

import pytest
import torch

from features.backends import create_extractor
from features.errors import FeaturesError
from features.pooling import COLOUR_STATS_DIM, box_colour_stats


def test_moments_of_uniform_and_two_colour_boxes():
    img = torch.zeros(1, 3, 16, 16)
    img[:, 0, :, :8] = 1.0  # left half: channel 0 = 1; right half: 0
    img[:, 1] = 0.25
    boxes = torch.tensor([[[0.0, 0.0, 8.0, 16.0], [8.0, 0.0, 16.0, 16.0], [0.0, 0.0, 16.0, 16.0]]])
    stats = box_colour_stats(img, boxes)
    assert stats.shape == (1, 3, COLOUR_STATS_DIM)
    left, right, whole = stats[0]
    torch.testing.assert_close(left, torch.tensor([1.0, 0.25, 0.0, 0.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(right, torch.tensor([0.0, 0.25, 0.0, 0.0, 0.0, 0.0]), atol=1e-5, rtol=0)
    # Half ones, half zeros: mean 0.5, standard deviation 0.5.
    torch.testing.assert_close(whole, torch.tensor([0.5, 0.25, 0.0, 0.5, 0.0, 0.0]), atol=1e-5, rtol=0)


def test_grid_backend_appends_the_stats_of_its_own_boxes():
    plain = create_extractor("grid", backbone="efficientnet_lite0", random_weights=True, image_size=64, grid=2)
    coloured = create_extractor("grid", backbone="efficientnet_lite0", random_weights=True, image_size=64, grid=2,
                                colour_stats=True)
    assert coloured.feature_dim == plain.feature_dim + COLOUR_STATS_DIM
    assert coloured.settings()["colour_stats"] is True and "colour_stats" not in plain.settings()
    images = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    images[0, 0, :32, :32] = 255  # image 0: top-left cell pure red on black; image 1 all black
    a, b = plain.extract(images), coloured.extract(images)
    assert (b.feats[..., :plain.feature_dim] == a.feats).all()  # the CNN part is unchanged
    stats = torch.from_numpy(b.feats[..., plain.feature_dim:].astype("float32"))
    mean, std = coloured.backbone.mean, coloured.backbone.std
    red = [(1.0 - mean[0]) / std[0], -mean[1] / std[1], -mean[2] / std[2]]
    black = [-m / s for m, s in zip(mean, std)]
    torch.testing.assert_close(stats[0, 0, :3], torch.tensor(red), atol=2e-2, rtol=0)  # float16 storage
    torch.testing.assert_close(stats[1, 0, :3], torch.tensor(black), atol=2e-2, rtol=0)
    assert stats[..., 3:].abs().max() < 2e-2  # every cell is one colour


def test_colour_histogram_of_uniform_and_two_colour_boxes():
    from features.pooling import box_colour_hist

    img = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    img[:, 0, :, :8] = 255  # left half pure red, right half black
    img[:, 2, :, 8:] = 100  # right half: blue 100 (bin 1 of 4)
    boxes = torch.tensor([[[0.0, 0.0, 8.0, 16.0], [8.0, 0.0, 16.0, 16.0], [0.0, 0.0, 16.0, 16.0]]])
    hist = box_colour_hist(img, boxes, bins=4)
    assert hist.shape == (1, 3, 64)
    red, dark_blue = 3 * 16 + 0 * 4 + 0, 0 * 16 + 0 * 4 + 1  # cell r * bins**2 + g * bins + b
    left, right, whole = hist[0]
    expect = torch.zeros(3, 64)
    expect[0, red] = 1.0
    expect[1, dark_blue] = 1.0
    expect[2, red] = expect[2, dark_blue] = 0.5
    torch.testing.assert_close(hist[0], expect, atol=1e-5, rtol=0)
    torch.testing.assert_close(hist.sum(-1), torch.ones(1, 3), atol=1e-5, rtol=0)


def test_grid_backend_appends_the_histogram_and_refuses_too_many_bins():
    import pytest

    from features.errors import FeaturesError

    plain = create_extractor("grid", backbone="efficientnet_lite0", random_weights=True, image_size=64, grid=2)
    hist = create_extractor("grid", backbone="efficientnet_lite0", random_weights=True, image_size=64, grid=2,
                            colour_hist=2)
    assert hist.feature_dim == plain.feature_dim + 8 and hist.settings()["colour_hist"] == 2
    images = torch.zeros(1, 3, 64, 64, dtype=torch.uint8)
    images[0, 1, :32, :32] = 255  # top-left cell pure green on black
    feats = hist.extract(images).feats[0, :, plain.feature_dim:].astype("float32")
    assert feats[0, 2] == 1.0 and feats[1, 0] == 1.0  # green = cell 0*4 + 1*2 + 0; black = cell 0
    with pytest.raises(FeaturesError, match="colour_hist .9. must be 0 .off. to 8 bins per channel"):
        create_extractor("grid", backbone="efficientnet_lite0", random_weights=True, colour_hist=9)


def test_colour_scale_multiplies_only_the_colour_values_and_is_recorded():
    common = dict(backbone="efficientnet_lite0", random_weights=True, image_size=64, grid=2, colour_stats=True,
                  colour_hist=2)
    one = create_extractor("grid", **common)
    scaled = create_extractor("grid", **common, colour_scale=4.0)
    assert "colour_scale" not in one.settings() and scaled.settings()["colour_scale"] == 4.0
    images = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    images[0, 0, :40, :24] = 255  # a red patch straddling cells: non-zero means and standard deviations
    images[1, 2] = 128
    a, b = one.extract(images), scaled.extract(images)
    cnn = one.backbone.out_channels
    assert (a.feats[..., :cnn] == b.feats[..., :cnn]).all()  # the backbone channels are untouched
    colour_a = torch.from_numpy(a.feats[..., cnn:].astype("float32"))
    colour_b = torch.from_numpy(b.feats[..., cnn:].astype("float32"))
    assert colour_a.abs().max() > 0.1
    torch.testing.assert_close(colour_b, 4.0 * colour_a, atol=1e-2, rtol=1e-3)  # float16 storage


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_colour_scale_must_be_positive_and_finite(bad):
    with pytest.raises(FeaturesError, match="colour_scale .* must be a positive finite number"):
        create_extractor("grid", backbone="efficientnet_lite0", random_weights=True, colour_stats=True,
                         colour_scale=bad)
