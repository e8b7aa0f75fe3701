"""Modality ablation: no information leaks through a removed modality (both architectures, real easy-VQA items),
reference rows on a hand-made dataset, and `vlm ablate` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import vlm
from downstream.ablation import reference_predictions
from downstream.data import VQAData
from downstream.modality import image_only, text_only
from vlm.cli import main
from vlm.data.classification import ClassificationExample
from vlm.data.easy_vqa import read_easy_vqa
from vlm.data.vqa import AnswerVocab, VQAExample

from vlm_testing import TINY_MODEL


@pytest.fixture(scope="module")
def easy_batch(easy_vqa_stores):
    from features.store import FeatureStore

    ex = read_easy_vqa("train")[:160]
    data = VQAData(ex, FeatureStore(easy_vqa_stores[0]), vlm.load_tokenizer(), AnswerVocab.build(
        [e.answers[0] for e in ex]))
    return data, data.batch(np.arange(len(data)), 0)


def _pick(data, same: str):
    """Two rows that share the text (same='text') or the image (same='image') but differ in the other."""
    for i, a in enumerate(data.examples):
        for j in range(i + 1, len(data.examples)):
            b = data.examples[j]
            if same == "text" and a.question == b.question and a.image_id != b.image_id:
                return i, j
            if same == "image" and a.image_id == b.image_id and a.question != b.question:
                return i, j
    raise AssertionError("no such pair")


@pytest.mark.parametrize("arch", ["lxmert", "vilbert"])
def test_text_only_predictions_ignore_the_image(easy_batch, arch):
    data, batch = easy_batch
    torch.manual_seed(0)
    model = vlm.create_model(f"{arch}-mini", task="vqa", **{**TINY_MODEL, "visual_feat_dim": 768,
                             "num_answers": len(data.vocab)}).eval()
    i, j = _pick(data, "text")
    sub = data.batch(np.array([i, j]), 0)
    with torch.no_grad():
        fused = model(sub).logits
        logits = model(text_only(sub)).logits
    assert (fused[0] - fused[1]).abs().max() > 1e-5  # the images do matter to the fused model
    # identical up to float summation order (rows of one batched GEMM may round differently in the last bit)
    assert torch.allclose(logits[0], logits[1], rtol=0, atol=1e-6) and torch.isfinite(logits).all()
    assert logits[0].argmax() == logits[1].argmax()


@pytest.mark.parametrize("arch", ["lxmert", "vilbert"])
def test_image_only_predictions_ignore_the_text(easy_batch, arch):
    data, batch = easy_batch
    torch.manual_seed(0)
    model = vlm.create_model(f"{arch}-mini", task="vqa", **{**TINY_MODEL, "visual_feat_dim": 768,
                             "num_answers": len(data.vocab)}).eval()
    i, j = _pick(data, "image")
    sub = data.batch(np.array([i, j]), 0)
    with torch.no_grad():
        fused = model(sub).logits
        logits = model(image_only(sub)).logits
    assert (fused[0] - fused[1]).abs().max() > 1e-5  # the texts do matter to the fused model
    assert torch.allclose(logits[0], logits[1], rtol=0, atol=1e-6) and torch.isfinite(logits).all()
    assert logits[0].argmax() == logits[1].argmax()


def test_transforms_keep_the_other_modality_intact(easy_batch):
    _, batch = easy_batch
    t = text_only(batch)
    assert torch.equal(t.input_ids, batch.input_ids) and t.region_mask.sum() == 0
    im = image_only(batch)
    assert torch.equal(im.region_feats, batch.region_feats)
    assert (im.input_ids[:, 0] == 101).all() and (im.input_ids[:, 1] == 102).all() and im.input_ids.shape[1] == 2


def test_reference_rows_on_a_hand_made_dataset():
    def q(i, text, img, ans):
        return VQAExample(question_id=i, image_id=img, question=text, answers=[ans])

    train = [q(0, "is it red?", "a", "yes"), q(1, "is it red?", "b", "yes"), q(2, "is it red?", "c", "no"),
             q(3, "what shape?", "a", "circle"), q(4, "what shape?", "b", "circle"), q(5, "what colour?", "c", "no"),
             q(6, "what colour?", "d", "no")]
    test = [q(10, "Is it red", "x", "no"), q(11, "what shape?", "x", "triangle"), q(12, "unseen?", "y", "yes"),
            q(13, "what shape?", "y", "triangle"), q(14, "what shape?", "z", "circle")]
    refs = reference_predictions(train, test)
    assert set(refs["majority answer (train)"].values()) == {"no"}  # 3 'no' vs 2 'yes' vs 2 'circle'
    assert refs["text lookup (train)"] == {10: "yes", 11: "circle", 12: "no", 13: "circle", 14: "circle"}
    assert refs["best text-only (ceiling)"][11] == "triangle"  # 2 of the 3 test 'what shape?' say triangle
    assert refs["best image-only (ceiling)"][10] in ("no", "triangle")  # image x: one of each
    assert refs["best image-only (ceiling)"][14] == "circle"

    cls = [ClassificationExample("1", "a", "there is a red circle", 1),
           ClassificationExample("2", "b", "there is a red circle", 0),
           ClassificationExample("3", "a", "the shape is blue", 0)]
    refs = reference_predictions(cls, cls)
    assert refs["majority answer (train)"]["1"] == 0
    assert refs["best image-only (ceiling)"] == {"1": 0, "2": 0, "3": 0}


@pytest.mark.slow
def test_vlm_ablate_end_to_end_writes_four_files(tmp_path, easy_vqa_stores, capsys):
    out = tmp_path / "ablate"
    tiny = [f"model.{k}={'null' if v is None else v}" for k, v in TINY_MODEL.items()]
    assert main(["ablate", "--arch", "vilbert", "--task", "vqa", "--train-baselines", "--data", "easy-vqa",
                 "--features", easy_vqa_stores[0], "--eval-data", "easy-vqa", "--eval-features", easy_vqa_stores[1],
                 "--out", str(out), "--no-progress", "train.max_steps=3", "train.batch_size=8",
                 "data.train_limit=96", "data.eval_limit=24", "train.precision=fp32", *tiny,
                 "pretrain.train.max_steps=2", "pretrain.train.batch_size=8", "pretrain.train.precision=fp32",
                 "pretrain.data.train_limit=64", "pretrain.data.eval_limit=16"]) == 0
    for name in ("results.json", "results.csv", "results.md", "ablation.png"):
        assert (out / name).is_file()
    # no --checkpoint, no --init: the default pipeline pretrains first, and the fused model and both baselines are
    # fine-tuned from that checkpoint (same init, same budget)
    pretrained = out / "pretrain" / "model"
    assert (pretrained / "config.json").is_file()
    for run in ("fused", "text-only", "image-only"):
        run_cfg = yaml.safe_load((out / run / "config.yaml").read_text())
        assert run_cfg["init"] == str(pretrained), run
        assert run_cfg["train"]["max_steps"] == 3
    result = json.loads((out / "results.json").read_text())
    conditions = [r["condition"] for r in result["rows"]]
    assert conditions == ["fused", "text-only (test-time)", "image-only (test-time)", "text-only (trained)",
                          "image-only (trained)", "majority answer (train)", "text lookup (train)",
                          "best text-only (ceiling)", "best image-only (ceiling)"]
    assert all(r["n"] == 24 for r in result["rows"])
    assert {"yes/no", "colour", "shape"} <= set(result["rows"][0]["per_type"])
    md = (out / "results.md").read_text()
    assert md.count("\n|") == 11  # header, rule, nine rows
    with Image.open(out / "ablation.png") as im:
        assert im.format == "PNG" and im.size[0] >= 800 and im.size[1] >= 400
    assert "plot:" in capsys.readouterr().out


def _ablate_args(*argv):
    from vlm.cli import build_parser

    return build_parser().parse_args(["ablate", *argv])


@pytest.mark.parametrize("argv, pretrains", [
    (["--arch", "lxmert"], True),  # the default pipeline: pretrain, then fine-tune from it
    (["--arch", "lxmert", "--task", "classify"], True),  # statements are easy-VQA images: same pretraining
    (["--arch", "lxmert", "--init", "lxmert-mini"], False),  # an explicit init: fine-tune from it
    (["--arch", "lxmert", "--no-pretrain"], False),
    (["--arch", "lxmert", "--checkpoint", "{model}"], False),  # a fine-tuned model folder (the checkpoint is checked)
    (["--arch", "vilbert", "--data", "my/vqa.json"], False),  # not built-in data: warned, no easy-VQA pretraining
])
def test_ablate_default_pipeline_decides_when_to_pretrain(argv, pretrains, caplog, tmp_path):
    from downstream.ablation import ablation_configs

    if "{model}" in argv:
        vlm.create_model("lxmert-mini", task="vqa", num_answers=3, **TINY_MODEL).save_pretrained(tmp_path / "model")
        argv = [str(tmp_path / "model") if a == "{model}" else a for a in argv]
    args = _ablate_args(*argv, "model.hidden_dropout_prob=0.1", "pretrain.train.max_steps=7")
    _, pcfg = ablation_configs(arch=args.arch, task=args.task, config=args.config, checkpoint=args.checkpoint,
                               init=args.init, no_pretrain=args.no_pretrain, pretrain_config=args.pretrain_config,
                               data=args.data, eval_data=args.eval_data, features=args.features,
                               eval_features=args.eval_features, overrides=args.overrides)
    assert (pcfg is not None) == pretrains
    if pcfg is not None:
        assert pcfg.model_config().arch == args.arch
        assert pcfg.train.max_steps == 7  # pretrain.* overrides reach the pretraining run
        assert pcfg.model["hidden_dropout_prob"] == 0.1  # model.* overrides apply to both runs
    if args.data:
        assert "no pretraining" in caplog.text and "my/vqa.json" in caplog.text
