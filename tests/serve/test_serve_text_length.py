"""`vlm predict`, `vlm serve` and `vlm evaluate` truncate a question to the text length the model was trained with
(its folder records it) and agree on the answer, all three at the same (default) precision."""

from __future__ import annotations

import json

import easy_vqa
import httpx

import vlm
from vlm.cli import main

from serve_testing import running_server

#: 30 tokens with [CLS] and [SEP]; the first 11 (then [SEP]) are what a model trained on 12 tokens sees.
LONG_QUESTION = "what color is the shape in the middle of this image that has a shape which is drawn in one " \
                "colour only and no shape near it ?"


def test_predict_serve_and_evaluate_truncate_as_training_did(short_text_model, easy_vqa_stores, tmp_path, capsys):
    tok = vlm.load_tokenizer()
    assert len(tok(LONG_QUESTION)["input_ids"]) == 30
    image_id, image = "0", easy_vqa.get_test_image_paths()[0]
    # vlm evaluate on that one question (its store holds the same features an in-memory extraction gives)
    data = tmp_path / "one.json"
    data.write_text(json.dumps([{"question_id": 7, "img_id": image_id, "sent": LONG_QUESTION,
                                 "label": {"red": 1.0}}]))
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(short_text_model), "--data", str(data), "--features",
                 easy_vqa_stores[1], "--out", str(tmp_path / "eval.json"), "--no-progress"]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())["data_report"]
    assert (report["truncated"], report["max_text_len"]) == (1, 12)
    evaluated = json.loads((tmp_path / "eval-predictions.json").read_text())[0]["answer"]
    capsys.readouterr()
    # vlm predict
    assert main(["predict", "--checkpoint", str(short_text_model), "--image", image, "--question", LONG_QUESTION,
                 "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    assert "truncated to the 12 tokens the model was trained with" in out
    predicted = out.splitlines()[2].split()[0]  # Q: ..., (truncated ...), then "  answer  score"
    # vlm serve (a real server process)
    with running_server(short_text_model, tmp_path / "serve.log") as (base, _, _):
        with open(image, "rb") as f:
            r = httpx.post(f"{base}/v1/predict", files={"image": ("x.png", f.read(), "image/png")},
                           data={"question": LONG_QUESTION, "top_k": "1"}, timeout=60)
    body = r.json()
    assert r.status_code == 200 and body["truncated"] and body["question_tokens"] == 12
    assert body["max_question_tokens"] == 12
    served = body["answers"][0]["answer"]
    assert evaluated == predicted == served
