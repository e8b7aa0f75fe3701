"""Each objective alone drives its loss down when overfitting one tiny real batch, for both architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vlm
from pretraining.data import PretrainData, answer_vocab
from pretraining.objectives import OBJECTIVES, build_objectives
from pretraining.task import PretrainTask
from vlm.data.readers import read_texts

from vlm_testing import TINY_MODEL


@pytest.fixture(scope="module")
def batch_and_answers(easy_vqa_stores):
    from features.store import FeatureStore

    texts = read_texts("easy-vqa", "train")[:160]
    answers = answer_vocab(texts)
    data = PretrainData(texts, FeatureStore(easy_vqa_stores[0]), vlm.load_tokenizer(), answers, seed=0)
    batch = data.batch(np.arange(0, 160, 10), 0)  # 16 real pairs
    # The patches store has no detector labels: give the label objectives targets of the same shape as a detector's.
    g = torch.Generator().manual_seed(0)
    k = batch.region_mask.shape[1]
    batch.region_labels.update(obj=torch.randint(0, 11, (16, k), generator=g), obj_conf=torch.rand(16, k, generator=g),
                               attr=torch.randint(0, 5, (16, k), generator=g), attr_conf=torch.rand(16, k, generator=g))
    return batch, answers, data.store.feature_dim


@pytest.mark.parametrize("arch", ["lxmert", "vilbert"])
@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_alone_overfits_a_real_batch(batch_and_answers, arch, name):
    batch, answers, dim = batch_and_answers
    torch.manual_seed(0)
    model = vlm.create_model(f"{arch}-mini", task="pretraining", **{**TINY_MODEL, "visual_feat_dim": dim,
                             "num_answers": len(answers), "num_object_labels": 11, "num_attr_labels": 5,
                             "visual_obj_loss": True, "visual_attr_loss": True})
    task = PretrainTask(model, build_objectives({name: 1.0}))
    opt = torch.optim.AdamW(task.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        out = task(batch)
        assert set(out.losses) == {name}
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], f"{name} ({arch}): {losses[0]:.4f} -> {losses[-1]:.4f}"


def test_weights_scale_the_total_and_zero_switches_off(batch_and_answers):
    batch, answers, dim = batch_and_answers
    model = vlm.create_model("lxmert-mini", task="pretraining", **{**TINY_MODEL, "visual_feat_dim": dim,
                             "num_answers": len(answers)})
    task = PretrainTask(model, build_objectives({"mlm": 2.0, "matching": 0.5, "qa": 0.0})).eval()
    with torch.no_grad():
        out = task(batch)
    assert set(out.losses) == {"mlm", "matching"}
    assert torch.allclose(out.loss, 2.0 * out.losses["mlm"] + 0.5 * out.losses["matching"])
    with pytest.raises(ValueError, match="unknown pretraining objective 'itm'"):
        build_objectives({"itm": 1.0})
