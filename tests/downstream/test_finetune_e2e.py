"""Fine-tuning end to end on fixtures in the published layouts: finetune -> evaluate -> results files (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import vlm
from vlm.cli import main
from vlm.data.vqa import AnswerVocab

from vlm_testing import TINY_MODEL

FIX = Path(__file__).parent / "fixtures"
TINY = [f"model.{k}={'null' if v is None else v}" for k, v in TINY_MODEL.items()]
FAST = ["--max-steps", "3", "--no-progress", "train.batch_size=2", "train.lr=1e-3", "train.precision=fp32",
        "data.holdout_images=0",  # fixtures of a few images: --eval-data is the held-out data
        "train.log_every=1", "train.save_every=0", *TINY]


def _ids() -> list[str]:
    ids = set()
    q = json.loads((FIX / "vqa_v2_questions.json").read_text())["questions"]
    ids |= {str(x["image_id"]) for x in q}
    ids |= {x["img_id"] for x in json.loads((FIX / "lxmert_vqa.json").read_text())}
    for name in ("hateful_memes.jsonl", "hateful_memes_test.jsonl"):
        for line in (FIX / name).read_text().splitlines():
            if line.strip():
                ids.add(Path(json.loads(line)["img"]).stem)
    for line in (FIX / "captions.jsonl").read_text().splitlines():
        if line.strip():
            ids.add(str(json.loads(line)["image_id"]))
    return sorted(ids)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """A `patches` store whose image ids are the fixtures' ids (real easy-VQA pictures stand in for the images)."""
    import easy_vqa

    from features.extract import extract

    root = tmp_path_factory.mktemp("fixture-store")
    pictures = [p for _, p in sorted(easy_vqa.get_test_image_paths().items())]
    listing = root / "images.txt"
    listing.write_text("".join(f"{i}\t{pictures[n]}\n" for n, i in enumerate(_ids())))
    extract(str(listing), root / "store", "patches", part=(0, 1), device="cpu", progress=False, num_workers=0)
    return str(root / "store")


@pytest.mark.parametrize("layout", ["vqa-v2", "lxmert"])
def test_vqa_layouts_finetune_evaluate_results(tmp_path, store, layout, capsys):
    spec = (f"{FIX / 'vqa_v2_questions.json'},{FIX / 'vqa_v2_annotations.json'}" if layout == "vqa-v2"
            else str(FIX / "lxmert_vqa.json"))
    out = tmp_path / "run"
    assert main(["finetune", "--task", "vqa", "--arch", "lxmert", "--data", spec, "--eval-data", spec,
                 "--features", store, "--out", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metric"] == ("vqa_accuracy" if layout == "vqa-v2" else "soft_accuracy")
    results = json.loads((out / "predictions.json").read_text())
    answers = AnswerVocab.load(out / "model" / "answers.json").answers
    assert all(set(r) == {"question_id", "answer"} and r["answer"] in answers for r in results)
    assert 0.0 <= metrics["overall"] <= 100.0 and metrics["per_answer_type"]
    # `vlm evaluate` on the saved model reproduces the run's own numbers
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "model"), "--data", spec, "--features", store]) == 0
    again = json.loads((out / "model" / "eval-test.json").read_text())["metrics"]
    assert again["overall"] == pytest.approx(metrics["overall"])
    assert "evaluated" in capsys.readouterr().out


@pytest.mark.parametrize("fixture", ["captions.jsonl", "hateful_memes.jsonl"])
def test_classification_end_to_end_metrics_match_predictions(tmp_path, store, fixture):
    from downstream.classification import accuracy, macro_f1
    from vlm.data.readers import read_classification

    spec = str(FIX / fixture)
    out = tmp_path / "run"
    assert main(["finetune", "--task", "classify", "--arch", "vilbert", "--data", spec, "--eval-data", spec,
                 "--features", store, "--out", str(out), *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    preds = {str(r["id"]): r["label"] for r in json.loads((out / "predictions.json").read_text())}
    examples, _ = read_classification(spec, "test")
    labels = np.array([e.label for e in examples])
    pred = np.array([preds[e.example_id] for e in examples])
    assert metrics["accuracy"] == pytest.approx(accuracy(labels, pred))
    assert metrics["macro_f1"] == pytest.approx(macro_f1(labels, pred))
    assert metrics["n"] == len(examples)
    model = vlm.from_pretrained(out / "model")
    assert model.task == "classification" and model.config.arch == "vilbert"


def test_question_without_features_is_counted_and_reported(tmp_path, store, caplog):
    from downstream.data import VQAData
    from features.store import FeatureStore
    from vlm.data.vqa import AnswerVocab
    from vlm.data.vqa_formats import read_vqa_v2

    ex = read_vqa_v2(FIX / "vqa_v2_questions.json", FIX / "vqa_v2_annotations.json")
    ex[0].image_id = "no-such-image"
    data = VQAData(ex, FeatureStore(store), vlm.load_tokenizer(), AnswerVocab.build(["net", "yes"]))
    assert data.report.missing_image == 1 and len(data) == len(ex) - 1
    assert "no-such-image" in caplog.text and "not in the feature store" in caplog.text


def test_bad_init_is_a_clear_error(tmp_path, store, capsys):
    assert main(["finetune", "--task", "vqa", "--init", str(tmp_path / "nothing"), "--data", "easy-vqa",
                 "--features", store, "--out", str(tmp_path / "r"), *FAST]) == 2
    assert "not a model folder (no config.json) and not a model preset" in capsys.readouterr().err


@pytest.mark.parametrize("arch", ["lxmert", "vilbert"])
def test_predict_on_easy_vqa_image_and_a_real_photo_writes_attention_png(tmp_path, easy_vqa_stores, arch, capsys):
    import easy_vqa
    import matplotlib
    from PIL import Image

    out = tmp_path / "run"
    assert main(["finetune", "--task", "vqa", "--arch", arch, "--data", "easy-vqa", "--eval-data", "easy-vqa",
                 "--features", easy_vqa_stores[0], "--eval-features", easy_vqa_stores[1], "--out", str(out),
                 *FAST, "data.train_limit=64", "data.eval_limit=16"]) == 0
    answers = AnswerVocab.load(out / "model" / "answers.json").answers
    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    for image in (easy_vqa.get_test_image_paths()[0], photo):
        png = tmp_path / f"att-{Path(image).stem}.png"
        capsys.readouterr()
        assert main(["predict", "--checkpoint", str(out / "model"), "--image", str(image), "--question",
                     "what color is the shape?", "--top-k", "3", "--attention", str(png)]) == 0
        printed = capsys.readouterr().out.splitlines()
        top = [line.split()[0] for line in printed[1:4]]
        assert len(top) == 3 and all(a in answers for a in top)
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[0] >= 300 and im.size[1] >= 300


def test_predict_rejects_missing_image_and_empty_question(tmp_path, capsys):
    assert main(["predict", "--checkpoint", str(tmp_path), "--image", "x.png", "--question", "q"]) == 2
    assert "not a vlm checkpoint" in capsys.readouterr().err
