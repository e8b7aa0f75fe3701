"""One answer rule for pretraining and fine-tuning: the same normalisation, answer table and soft scores, so every
pretraining QA row carries over to a fine-tuning table built from the same answers (VQA v2-shaped data where raw
answers differ only in writing: "Two"/"2", "a dog"/"dog", "Yes."/"yes")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vlm
from pretraining.data import PretrainData, answer_vocab
from vlm.data.readers import read_texts
from vlm.data.vqa import AnswerVocab, answer_targets, example_answers
from vlm.data.vqa_formats import read_vqa_v2

from vlm_testing import TINY_MODEL, OneRegionStore

# Ten human answers per question, written as VQA v2 annotators write them.
HUMANS = {
    1: ["Two", "2", "two", "2", "3", "Two.", "2", "two", "2", "2"],
    2: ["a dog", "dog", "Dog", "the dog", "dog", "a dog", "dog", "cat", "dog", "dog"],
    3: ["Yes.", "yes", "yes", "Yes", "no", "yes", "yes", "yes", "yes", "yes"],
    4: ["red", "Red", "red", "red.", "dark red", "red", "red", "red", "red", "red"],
}




@pytest.fixture()
def vqa_v2(tmp_path):
    questions = {"questions": [{"image_id": 100 + q, "question": f"question {q}?", "question_id": q} for q in HUMANS]}
    annotations = {"annotations": [
        {"question_id": q, "image_id": 100 + q, "answer_type": "other", "question_type": "what",
         "multiple_choice_answer": a[0], "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": i + 1}
                                                     for i, x in enumerate(a)]} for q, a in HUMANS.items()]}
    (tmp_path / "q.json").write_text(json.dumps(questions))
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    return f"{tmp_path / 'q.json'},{tmp_path / 'a.json'}"


@pytest.mark.parametrize("rule", ["lxmert", "official"])
def test_pretraining_and_finetuning_share_the_table_and_the_scores(vqa_v2, rule):
    texts = read_texts(vqa_v2)
    pre_vocab = answer_vocab(texts)
    ft_vocab = AnswerVocab.from_questions(example_answers(e) for e in read_vqa_v2(*vqa_v2.split(",")))
    assert pre_vocab.answers == ft_vocab.answers
    # normalised: "Two"/"two"/"Two." are "2"; "a dog"/"the dog"/"Dog" are "dog"; "Yes."/"Yes" are "yes"
    assert set(pre_vocab.answers) == {"2", "3", "dog", "cat", "yes", "no", "red", "dark red"}
    data = PretrainData(texts, OneRegionStore(), vlm.load_tokenizer(), pre_vocab, soft_score_rule=rule)
    for n, example in enumerate(read_vqa_v2(*vqa_v2.split(","))):
        target, unknown = answer_targets(example, ft_vocab, rule)
        row = np.zeros(len(pre_vocab), np.float32)
        row[list(data.answer_rows[n])] = list(data.answer_rows[n].values())
        assert unknown == 0
        np.testing.assert_array_equal(row, target)
    two = data.answer_rows[0][pre_vocab.encode("2")]
    assert two == pytest.approx(1.0)  # 9 of 10 humans after normalisation: min(1, ...) = 1 under both rules
    three = data.answer_rows[0][pre_vocab.encode("3")]
    assert three == pytest.approx(0.3 if rule == "lxmert" else 1 / 3)


def test_one_given_answer_scores_one_in_both_phases(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"image_id": "1", "text": "how many?", "answers": ["Two"]}\n')
    texts = read_texts(str(tmp_path / "t.jsonl"))
    vocab = answer_vocab(texts)
    assert vocab.answers == ["2"]
    data = PretrainData(texts, OneRegionStore(), vlm.load_tokenizer(), vocab)
    assert data.answer_rows[0] == {0: 1.0}


def test_every_pretraining_row_carries_over_to_finetuning(tmp_path, vqa_v2):
    texts = read_texts(vqa_v2)
    vocab = answer_vocab(texts)
    torch.manual_seed(0)
    pre = vlm.create_model("lxmert-mini", task="pretraining", num_answers=len(vocab), visual_feat_dim=4, **TINY_MODEL)
    pre.save_pretrained(tmp_path / "pre")
    vocab.save(tmp_path / "pre" / "answers.json")
    # the fine-tuning table from the same answers, in another order (a new answer first, one answer missing)
    ft_vocab = AnswerVocab(["maybe"] + [a for a in reversed(vocab.answers) if a != "cat"])
    model = vlm.create_model(tmp_path / "pre", task="vqa", labels=ft_vocab.answers)
    for i, answer in enumerate(ft_vocab.answers):
        j = vocab.encode(answer)
        if j is None:
            continue
        torch.testing.assert_close(model.answer.fc2.weight[i], pre.answer.fc2.weight[j], rtol=0, atol=0)
        torch.testing.assert_close(model.answer.fc2.bias[i], pre.answer.fc2.bias[j], rtol=0, atol=0)
    torch.testing.assert_close(model.answer.fc1.weight, pre.answer.fc1.weight, rtol=0, atol=0)


def test_resize_answer_head_names_a_table_that_does_not_fit():
    model = vlm.create_model("lxmert-mini", task="vqa", num_answers=3, **TINY_MODEL)
    with pytest.raises(vlm.errors.DataError, match="2 answers but the answer head has 3 outputs"):
        model.resize_answer_head(["a", "b"], ["a", "b"])
    assert model.resize_answer_head(["z", "b", "c", "q"], ["a", "b", "c"]) == 2
    assert model.answer.fc2.out_features == 4 and model.config.num_answers == 4
