"""The ``proposals`` backend: segmentation proposals on flat-colour scenes and photos, bad input, bad options, and the
boxes that ``vlm predict`` draws for a model trained on them."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from features.backends import create_extractor
from features.decode import load_image
from features.errors import FeaturesError
from features.extract import extract
from features.store import FeatureStore, load_manifest

GRACE = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
WHITE = (255, 255, 255)
COLOURS = [(220, 30, 30), (30, 160, 40), (40, 60, 220), (240, 200, 20), (150, 40, 170), (20, 180, 190)]
# (shape, x, y, side) of six objects per scene side: squares and discs, 4+ pixels apart, off the border
LAYOUTS = {
    75: [("square", 4, 5, 16), ("disc", 28, 4, 18), ("square", 54, 6, 15), ("disc", 6, 38, 17),
         ("square", 31, 36, 14), ("disc", 52, 40, 18)],
    128: [("square", 8, 10, 28), ("disc", 48, 8, 30), ("square", 94, 12, 24), ("disc", 10, 62, 32),
          ("square", 56, 70, 22), ("disc", 90, 60, 30)],
}


def draw_scene(size: int, layout: list[tuple[str, int, int, int]], background=WHITE) -> tuple[np.ndarray, np.ndarray]:
    """A flat-colour scene: ``(uint8 [size, size, 3], boxes [N, 4])``, each box the extent of an object's pixels."""
    image = np.empty((size, size, 3), np.uint8)
    image[:] = background
    ys, xs = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    boxes = []
    for (shape, x, y, side), colour in zip(layout, COLOURS):
        if shape == "square":
            mask = (xs >= x) & (xs < x + side) & (ys >= y) & (ys < y + side)
        else:
            mask = (xs - x - side / 2) ** 2 + (ys - y - side / 2) ** 2 <= (side / 2) ** 2
        image[mask] = colour
        rows, cols = np.nonzero(mask)
        boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
    return image, np.array(boxes, np.float32)


@pytest.fixture(scope="module")
def extractor():
    """The backend with its defaults (built-in EfficientNet-Lite0)."""
    return create_extractor("proposals")


@pytest.mark.parametrize("size", [75, 128])
def test_each_object_of_a_flat_colour_scene_is_one_top_box(tmp_path, extractor, size):
    image, truth = draw_scene(size, LAYOUTS[size])
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    pixels, _, _ = load_image(str(path), extractor.image_size)  # decoded and stretched as extraction does
    out = extractor.extract(torch.stack([pixels, pixels]))
    np.testing.assert_array_equal(out.boxes[0], out.boxes[1])  # deterministic
    meta = out.meta[0]
    found = meta["num_proposals"]
    assert meta["num_valid"] == found + 1 and found >= len(truth)
    np.testing.assert_array_equal(out.boxes[0, 0], [0, 0, 1, 1])  # region 0: the whole image
    proposals = torch.from_numpy(out.boxes[0, 1:1 + found] * size)
    iou = box_iou(torch.from_numpy(truth), proposals)  # (objects, proposals), best proposal first
    top = iou[:, :len(truth)]
    assert (top.max(dim=1).values >= 0.9).all(), top.max(dim=1).values  # every object among the top boxes...
    assert sorted(top.argmax(dim=1).tolist()) == list(range(len(truth)))  # ...each top box a different object
    assert ((iou >= 0.5).sum(dim=1) == 1).all()  # and no other proposal doubles an object
    assert meta["proposal_scores"] == sorted(meta["proposal_scores"], reverse=True)
    assert np.isfinite(out.feats.astype(np.float32)).all() and out.feats.shape == (2, 37, 118)


def _scene_variants(folder: Path) -> None:
    """The same grey scene as 8-bit RGB, 8-bit greyscale, 16-bit greyscale and RGBA files."""
    rgb, _ = draw_scene(75, LAYOUTS[75])
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(folder / "scene-rgb.png")
    Image.fromarray(grey, "L").save(folder / "scene-grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(folder / "scene-16bit.png")  # 16-bit PNG, 257 * v
    alpha = np.full(grey.shape, 90, np.uint8)
    Image.fromarray(np.stack([grey, grey, grey, alpha], axis=-1), "RGBA").save(folder / "scene-rgba.png")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A ``proposals`` store of two photos, a flat-colour image and one scene in four pixel formats."""
    from skimage import data

    folder = tmp_path_factory.mktemp("proposal-images")
    shutil.copy(GRACE, folder / "grace.jpg")
    Image.fromarray(data.astronaut()).save(folder / "astronaut.png")  # bundled in scikit-image's wheel
    Image.new("RGB", (90, 60), (70, 130, 180)).save(folder / "flat.png")
    _scene_variants(folder)
    assert Image.open(folder / "scene-16bit.png").mode.startswith("I")
    out = folder.parent / "store"
    extract(str(folder), out, "proposals", batch_size=4, num_workers=0, progress=False, device="cpu")
    return out


def _overlaps(sample: dict, region: list[float], width: int, height: int) -> float:
    """Best IoU of a pixel region with the sample's real regions."""
    boxes = torch.from_numpy(sample["boxes"][:sample["meta"]["num_valid"]] * [width, height, width, height])
    return float(box_iou(torch.tensor([region]), boxes.float()).max())


def test_photos_get_k_boxes_inside_the_image_and_objects_among_them(store):
    features = FeatureStore(store)
    assert features.num_regions == 37 and features.feature_dim == 118
    for image_id in features.ids():
        sample = features[image_id]
        feats, boxes, k = sample["feats"], sample["boxes"], sample["meta"]["num_valid"]
        assert feats.shape == (37, 118) and boxes.shape == (37, 4) and np.isfinite(feats.astype(np.float32)).all()
        assert (boxes >= 0).all() and (boxes <= 1).all()
        assert (boxes[:k, 2] > boxes[:k, 0]).all() and (boxes[:k, 3] > boxes[:k, 1]).all()
        np.testing.assert_array_equal(boxes[k:], np.tile([0, 0, 1, 1], (37 - k, 1)))  # padding: the whole image
    grace, astronaut = features["grace"], features["astronaut"]
    assert grace["meta"]["num_proposals"] > 10 and astronaut["meta"]["num_proposals"] > 10
    assert _overlaps(grace, [175, 125, 355, 385], 512, 600) >= 0.5  # Grace Hopper's face
    assert _overlaps(astronaut, [150, 20, 300, 150], 512, 512) >= 0.5  # the astronaut's head


def test_flat_image_keeps_the_whole_image_only_and_is_counted_in_the_report(store, extractor):
    sample = FeatureStore(store)["flat"]
    assert sample["meta"]["num_valid"] == 1 and sample["meta"]["num_proposals"] == 0
    assert sample["meta"]["proposal_scores"] == []
    np.testing.assert_array_equal(sample["boxes"], np.tile([0, 0, 1, 1], (37, 1)))
    manifest = load_manifest(store)
    samples = [FeatureStore(store)[i] for i in FeatureStore(store).ids()]
    assert manifest["regions"] == {"num_no_regions": 1,
                                   "num_padded": sum(s["meta"]["num_valid"] < 37 for s in samples)}
    assert manifest["num_failed"] == 0 and manifest["backend"] == "proposals"
    assert manifest["settings"] == {k: v for k, v in extractor.settings().items()}
    # without the whole-image region first, the flat image still has one region: the whole image
    lone = create_extractor("proposals", whole_image=False, num_boxes=4)
    out = lone.extract(torch.full((1, 3, 320, 320), 77, dtype=torch.uint8))
    assert out.meta[0]["num_valid"] == 1 and out.meta[0]["num_proposals"] == 0 and out.boxes.shape == (1, 4, 4)


def test_flat_images_are_reported_by_the_run(tmp_path, caplog):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(folder / "red.png")
    with caplog.at_level(logging.WARNING, logger="features.extract"):
        manifest = extract(str(folder), tmp_path / "store", "proposals", {"image_size": 64, "num_boxes": 2},
                           num_workers=0, progress=False, device="cpu")
    assert manifest["regions"] == {"num_padded": 1, "num_no_regions": 1}
    assert "found no region" in caplog.text


def test_greyscale_16_bit_and_rgba_images_give_the_features_of_their_rgb_pixels(store):
    features = FeatureStore(store)
    reference = features["scene-rgb"]
    assert reference["meta"]["num_proposals"] >= 6
    for image_id in ("scene-grey", "scene-16bit", "scene-rgba"):
        sample = features[image_id]
        np.testing.assert_array_equal(sample["boxes"], reference["boxes"], err_msg=image_id)
        np.testing.assert_array_equal(sample["feats"], reference["feats"], err_msg=image_id)


@pytest.mark.parametrize("options, named", [
    ({"num_boxes": 0}, "num_boxes"),
    ({"num_boxes": -3}, "num_boxes"),
    ({"score": "objectness"}, "score 'objectness' is unknown; expected one of contrast, area"),
    ({"scales": []}, "scales"),
    ({"scales": [100, 0]}, "scales"),
    ({"min_area": 0.5, "max_area": 0.2}, "min_area"),
    ({"nms_thresh": 0.0}, "nms_thresh"),
    ({"segment_size": 8}, "segment_size"),
    ({"image_size": 0}, "image_size"),
    ({"colour_scale": float("nan")}, "colour_scale"),
])
def test_bad_options_are_one_clear_error(options, named):
    with pytest.raises(FeaturesError) as error:
        create_extractor("proposals", **options)
    message = str(error.value)
    assert named in message and message.startswith("backend 'proposals': ") and "\n" not in message


def test_predict_draws_the_boxes_of_the_proposals_backend(tmp_path, monkeypatch, capsys):
    import downstream.predict as predict_module
    from downstream.predict import build_extractor, image_regions
    from vlm.cli import main
    from vlm.data.collate import regions_of

    from vlm_testing import TINY_MODEL

    options = {"image_size": 160, "num_boxes": 8}  # small and fast; recorded in the model folder and rebuilt
    stores = []
    for split, count in (("train", 24), ("test", 8)):
        stores.append(str(tmp_path / split))
        extract(f"easy-vqa:{split}", stores[-1], "proposals", options, limit=count, num_workers=0, progress=False,
                device="cpu")
    tiny = [f"model.{k}={'null' if v is None else v}" for k, v in TINY_MODEL.items()]
    out = tmp_path / "run"
    assert main(["finetune", "--task", "vqa", "--arch", "lxmert", "--features", stores[0], "--eval-features",
                 stores[1], "--out", str(out), "--max-steps", "2", "--no-progress", "train.batch_size=4",
                 "train.precision=fp32", "train.log_every=1", "data.train_limit=16", "data.eval_limit=8", *tiny]) == 0
    drawn = {}
    draw = predict_module.draw_attention

    def spy(image, boxes, weights, png, title):
        drawn["boxes"], drawn["weights"] = boxes, weights
        draw(image, boxes, weights, png, title)

    monkeypatch.setattr(predict_module, "draw_attention", spy)
    png = tmp_path / "attention.png"
    assert main(["predict", "--checkpoint", str(out / "model"), "--image", str(GRACE), "--question",
                 "what color is the shape?", "--attention", str(png)]) == 0
    reference = create_extractor("proposals", **options)
    _, boxes = regions_of(image_regions(reference, GRACE))
    assert 2 < len(boxes) <= 9 and not (boxes == [0, 0, 1, 1]).all(axis=1)[1:].any()  # proposals, not a grid
    np.testing.assert_array_equal(drawn["boxes"], boxes)
    assert len(drawn["weights"]) == len(boxes) and png.stat().st_size > 0
    rebuilt = build_extractor(json.loads((out / "model" / "features.json").read_text()))
    assert rebuilt.settings() == reference.settings()
