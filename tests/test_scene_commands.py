"""The generated worlds by name in every command: pretrain → finetune → evaluate → ablate, and classify, on a small
copy of ``scenes`` (generated and extracted into a temporary cache on first use)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from vlm.cli import main

from vlm_testing import TINY_MODEL

pytestmark = pytest.mark.slow

TINY = [f"model.{k}={'null' if v is None else v}" for k, v in TINY_MODEL.items()]
FAST = ["train.batch_size=8", "train.precision=fp32", "data.backend=patches", "data.holdout_images=4",
        "--no-progress"]


@pytest.fixture
def small_scenes(monkeypatch, tmp_path):
    import vlm.data.scenes.worlds as worlds

    monkeypatch.setitem(worlds.WORLDS, "scenes", dataclasses.replace(worlds.WORLDS["scenes"], train_images=40,
                                                                      test_images=12))
    monkeypatch.setenv("VLM_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_scenes_by_name_in_every_command(small_scenes, capsys):
    tmp = small_scenes
    assert main(["pretrain", "--arch", "lxmert", "--data", "scenes+scenes-captions", "--out", str(tmp / "pre"),
                 "train.max_steps=2", "train.eval_every=2", *FAST, *TINY]) == 0
    pre_cfg = yaml.safe_load((tmp / "pre" / "config.yaml").read_text())
    assert pre_cfg["matching"]["relations"] == ["left of", "right of", "above", "below"]  # the scenes preset
    generated = list((tmp / "cache" / "data").iterdir())
    assert [p.name.split("-g")[0] for p in generated] == ["scenes"]
    stores = sorted(p.name for p in (tmp / "cache" / "features").iterdir())
    assert stores and all(s.startswith(generated[0].name) for s in stores)
    manifest = json.loads((tmp / "cache" / "features" / stores[0] / "manifest.json").read_text())
    assert manifest["source"]["dataset"]["name"] == "scenes"

    assert main(["finetune", "--task", "vqa", "--arch", "lxmert", "--data", "scenes", "--init",
                 str(tmp / "pre" / "model"), "--out", str(tmp / "ft"), "train.max_steps=2", "train.eval_every=2",
                 *FAST]) == 0
    ft_cfg = yaml.safe_load((tmp / "ft" / "config.yaml").read_text())
    assert ft_cfg["data"]["train"] == "scenes" and ft_cfg["train"]["patience"] == 4
    features = json.loads((tmp / "ft" / "model" / "features.json").read_text())
    assert features["dataset"]["name"] == "scenes"

    from downstream.serve.service import find_examples

    examples = find_examples(tmp / "ft" / "model", "vqa")  # the served page's examples: the world's test images
    assert examples and all(e.image.name.startswith("scenes_test_") and e.question.endswith("?") for e in examples)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp / "ft" / "model"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for family in ("query_colour", "relate", "closest", "same_attribute"):
        assert family in printed  # accuracy per question family
    assert main(["ablate", "--checkpoint", str(tmp / "ft" / "model"), "--out", str(tmp / "ablate"),
                 "--no-progress"]) == 0
    rows = json.loads((tmp / "ablate" / "results.json").read_text())["rows"]
    assert "count" in rows[0]["per_type"] and rows[-1]["condition"] == "best image-only (ceiling)"

    assert main(["finetune", "--task", "classify", "--arch", "lxmert", "--data", "scenes-statements", "--out",
                 str(tmp / "cls"), "train.max_steps=2", "train.eval_every=2", *FAST, *TINY]) == 0
    summary = json.loads((tmp / "cls" / "summary.json").read_text())
    assert {"exist", "relate"} <= set(summary["metrics"].get("per_group", {}))
