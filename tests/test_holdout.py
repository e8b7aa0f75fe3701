"""The validation split held out from the training data by image (``data.holdout_images``)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import pytest

from vlm.data.split import holdout_ids, split_holdout
from vlm.errors import DataError


@dataclass
class Ex:
    image_id: str
    text: str


def _examples(n_images: int = 50, per_image: int = 3) -> list[Ex]:
    return [Ex(str(i), f"text {k} of {i}") for i in range(n_images) for k in range(per_image)]


def test_holdout_takes_every_text_of_the_chosen_images_and_keeps_order():
    ex = _examples()
    train, held = split_holdout(ex, 5, "fixture")
    ids = {e.image_id for e in held}
    assert len(ids) == 5 and len(held) == 15 and len(train) == 135
    assert not ids & {e.image_id for e in train}  # no image on both sides
    assert held == [e for e in ex if e.image_id in ids] and train == [e for e in ex if e.image_id not in ids]


def test_holdout_does_not_depend_on_order_or_on_other_sources():
    ex = _examples()
    shuffled = ex[:]
    random.Random(0).shuffle(shuffled)
    a = {e.image_id for e in split_holdout(ex, 7, "x")[1]}
    b = {e.image_id for e in split_holdout(shuffled, 7, "x")[1]}
    assert a == b
    # a second text source about the same images (captions beside questions) holds out the same images
    captions = [Ex(str(i), f"caption of {i}") for i in range(50)]
    assert {e.image_id for e in split_holdout(captions, 7, "x")[1]} == a
    # more held out contains the fewer (a fixed ranking of ids)
    assert a < holdout_ids((e.image_id for e in ex), 10)


def test_holdout_must_leave_training_images():
    with pytest.raises(DataError, match=r"holdout_images=50: fixture has 50 images"):
        split_holdout(_examples(), 50, "fixture")


def test_finetune_and_pretrain_validate_on_held_out_training_images(tmp_path, easy_vqa_stores, caplog):
    """Both phases train without the held-out images' texts and evaluate on exactly those texts."""
    import yaml

    from downstream.finetune import finetune, load_finetune_config
    from features.store import FeatureStore
    from pretraining.run import load_pretrain_config, pretrain
    from vlm.data.easy_vqa import read_easy_vqa

    from vlm_testing import TINY_MODEL

    train_store = easy_vqa_stores[0]
    in_store = set(FeatureStore(train_store).ids())
    questions = [e for e in read_easy_vqa("train") if e.image_id in in_store]
    data = tmp_path / "questions.json"  # LXMERT's layout, the questions of the store's images
    data.write_text(json.dumps([{"question_id": e.question_id, "img_id": e.image_id, "sent": e.question,
                                 "label": {a: 1.0 for a in e.answers}} for e in questions]))
    train, held = split_holdout(questions, 4, str(data))
    tiny = [f"model.{k}={'null' if v is None else v}" for k, v in TINY_MODEL.items()]
    common = ["train.max_steps=2", "train.batch_size=8", "train.precision=fp32", "train.save_every=0",
              "data.holdout_images=4", f"data.features={train_store}", *tiny]

    cfg = load_finetune_config(task="vqa", arch="lxmert", overrides=[*common, f"data.train={data}"])
    summary = finetune(cfg, out_dir=tmp_path / "ft", show_progress=False)
    preds = json.loads((tmp_path / "ft" / "predictions.json").read_text())
    assert sorted(str(p["question_id"]) for p in preds) == sorted(str(e.question_id) for e in held)
    assert summary["train"]["kept"] == len(train) and summary["eval_data"]["kept"] == len(held)

    texts = tmp_path / "questions.jsonl"  # the same questions in pretraining's JSONL layout
    texts.write_text("".join(json.dumps({"image_id": e.image_id, "text": e.question, "answers": list(e.answers)})
                             + "\n" for e in questions))
    cfg = load_pretrain_config(arch="lxmert", overrides=[*common, f"data.texts={texts}", "data.eval_limit=0"])
    summary = pretrain(cfg, out_dir=tmp_path / "pre", show_progress=False)
    assert summary["train"]["kept"] == len(train) and summary["eval_data"]["kept"] == len(held)
    written = yaml.safe_load((tmp_path / "pre" / "config.yaml").read_text())
    assert written["data"]["holdout_images"] == 4  # the run folder says how it was validated


def test_finetune_selects_on_validation_and_scores_the_test_data_once(tmp_path, easy_vqa_stores):
    """With data.holdout_images and a stopping rule: the rule sees validation only, the kept model is the best
    validation checkpoint, and the test data is scored once, at the end, with that model."""
    import torch
    from safetensors.torch import load_file

    from downstream.finetune import finetune, load_finetune_config
    from features.store import FeatureStore
    from vlm.data.easy_vqa import read_easy_vqa

    from vlm_testing import TINY_MODEL

    train_store, test_store = easy_vqa_stores
    def lxmert_json(split: str, store: str, path) -> list:
        ids = set(FeatureStore(store).ids())
        rows = [e for e in read_easy_vqa(split) if e.image_id in ids]
        path.write_text(json.dumps([{"question_id": e.question_id, "img_id": e.image_id, "sent": e.question,
                                     "label": {a: 1.0 for a in e.answers}} for e in rows]))
        return rows

    questions = lxmert_json("train", train_store, tmp_path / "train.json")
    tests = lxmert_json("test", test_store, tmp_path / "test.json")
    _, held = split_holdout(questions, 4, str(tmp_path / "train.json"))
    tiny = [f"model.{k}={'null' if v is None else v}" for k, v in TINY_MODEL.items()]
    cfg = load_finetune_config(task="vqa", arch="lxmert", overrides=[
        "train.max_steps=6", "train.batch_size=8", "train.precision=fp32", "train.lr=3e-3", "train.eval_every=1",
        "train.keep_last=1", "train.best_metric=overall", "train.patience=2", "data.holdout_images=4",
        f"data.train={tmp_path / 'train.json'}", f"data.features={train_store}",
        f"data.eval={tmp_path / 'test.json'}", f"data.eval_features={test_store}", *tiny])
    out = tmp_path / "ft"
    summary = finetune(cfg, out_dir=out, show_progress=False)

    history = summary["eval"]
    assert all(r["eval/n"] == len(held) for r in history)  # every evaluation during training: validation
    best = max(history, key=lambda r: r["eval/overall"])  # the first of equal values is the best
    assert summary["best"]["step"] == best["step"] == summary["weights_step"]
    validation = json.loads((out / "validation.json").read_text())
    assert validation["overall"] == best["eval/overall"] and validation["n"] == len(held)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == len(tests) and summary["metrics"] == metrics  # the test data, scored once
    preds = json.loads((out / "predictions.json").read_text())
    assert sorted(p["question_id"] for p in preds) == sorted(e.question_id for e in tests)
    kept = load_file(str(out / "model" / "model.safetensors"))
    ckpt = load_file(str(out / "checkpoints" / f"step-{best['step']:08d}" / "model.safetensors"))
    assert kept.keys() == ckpt.keys() and all(torch.equal(kept[k], ckpt[k]) for k in kept)
