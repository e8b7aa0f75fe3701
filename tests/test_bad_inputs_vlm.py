"""Bad input on the vlm side (batches, checkpoints, weight import, configs, data files, the CLI): each case is a clear
error naming the field/file/row and what was expected, or a counted skip. Table-driven; the features side has its own
corpus under tests/features."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import vlm
from vlm.cli import main
from vlm.errors import CheckpointError, DataError, VLMError

from vlm_testing import TINY, make_batch


def _model(arch: str = "lxmert", task: str = "vqa"):
    return vlm.create_model(f"{arch}-mini", task=task, **{**TINY, "num_answers": 5})


# --------------------------------------------------------------------------------------------------------- batches

def _numpy_feats(b):
    return dataclasses.replace(b, region_feats=b.region_feats.numpy())


def _float_ids(b):
    return dataclasses.replace(b, input_ids=b.input_ids.float())


def _zero_len(b):
    z = b.input_ids[:, :0]
    return dataclasses.replace(b, input_ids=z, attention_mask=z, token_type_ids=z)


def _id_too_big(b):
    ids = b.input_ids.clone()
    ids[0, 1] = 10_000
    return dataclasses.replace(b, input_ids=ids)


def _negative_id(b):
    ids = b.input_ids.clone()
    ids[1, 2] = -1
    return dataclasses.replace(b, input_ids=ids)


def _type_too_big(b):
    return dataclasses.replace(b, token_type_ids=torch.full_like(b.token_type_ids, 5))


def _nan_real_region(b):
    f = b.region_feats.clone()
    f[0, 0, 0] = float("nan")
    return dataclasses.replace(b, region_feats=f)


def _inf_real_region(b):
    f = b.region_feats.clone()
    f[1, 3, 2] = float("inf")
    return dataclasses.replace(b, region_feats=f)


def _pixel_boxes(b):
    return dataclasses.replace(b, region_boxes=b.region_boxes * 640)


def _inf_box(b):
    bx = b.region_boxes.clone()
    bx[0, 0, 2] = float("inf")
    return dataclasses.replace(b, region_boxes=bx)


def _class_index_targets(b):
    return dataclasses.replace(b, answer_targets=torch.tensor([1, 0, 3]))


def _wrong_width_targets(b):
    return dataclasses.replace(b, answer_targets=torch.zeros(3, 7))


def _wrong_feature_dim(b):
    return dataclasses.replace(b, region_feats=torch.zeros(3, 10, 11))


def _mask_shape(b):
    return dataclasses.replace(b, attention_mask=b.attention_mask[:, :-1])


def _box_shape(b):
    return dataclasses.replace(b, region_boxes=b.region_boxes[..., :3])


def _int_feats(b):
    return dataclasses.replace(b, region_feats=b.region_feats.long())


BATCH_CASES = [
    (_numpy_feats, "Batch.region_feats: expected a torch.Tensor, got ndarray (wrap it with torch.from_numpy)"),
    (_float_ids, "Batch.input_ids: expected integer ids"),
    (_zero_len, "zero-length texts"),
    (_id_too_big, "Batch.input_ids: ids must be in [0, 99)"),
    (_negative_id, "Batch.input_ids: ids must be in [0, 99)"),
    (_type_too_big, "Batch.token_type_ids: must be in [0, 2)"),
    (_nan_real_region, "Batch.region_feats: NaN or Inf in real (unmasked) regions of samples [0]"),
    (_inf_real_region, "of samples [1]"),
    (_pixel_boxes, "(pixels?)"),
    (_inf_box, "Batch.region_boxes: boxes must be"),
    (_class_index_targets, "for class indices use one_hot"),
    (_wrong_width_targets, "but the model has 5 answers"),
    (_wrong_feature_dim, "feature size 11 but the model expects visual_feat_dim=12"),
    (_mask_shape, "Batch.attention_mask: expected shape (3, 9)"),
    (_box_shape, "Batch.region_boxes: expected shape"),
    (_int_feats, "Batch.region_feats: expected a float tensor"),
]


@pytest.mark.parametrize("arch", ["lxmert", "vilbert"])
@pytest.mark.parametrize("bad, message", BATCH_CASES, ids=[c[0].__name__ for c in BATCH_CASES])
def test_bad_batch_is_a_named_error(arch, bad, message):
    model = _model(arch)
    batch = dataclasses.replace(make_batch(), answer_targets=torch.zeros(3, 5))
    with pytest.raises(DataError) as e:
        model(bad(batch))
    assert message in str(e.value)


@pytest.mark.parametrize("arch", ["lxmert", "vilbert"])
def test_nan_in_masked_padding_regions_has_no_effect(arch):
    model = _model(arch).eval()
    batch = make_batch()  # sample 2 has its last 5 regions masked
    poisoned = batch.region_feats.clone()
    poisoned[2, 5:] = float("nan")
    boxes = batch.region_boxes.clone()
    boxes[2, 5:] = float("inf")
    with torch.no_grad():
        clean = model(batch).logits
        dirty = model(dataclasses.replace(batch, region_feats=poisoned, region_boxes=boxes)).logits
    assert torch.isfinite(dirty).all()
    assert torch.allclose(clean, dirty, atol=1e-6)


# ----------------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture
def saved(tmp_path):
    m = _model()
    m.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_truncated_safetensors_names_the_file(saved):
    w = saved / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot load the weights"):
        vlm.from_pretrained(saved)


def test_corrupt_config_names_the_file(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(VLMError, match=r"config\.json: not a vlm config"):
        vlm.from_pretrained(saved)
    (saved / "config.json").write_text("[1, 2]")
    with pytest.raises(VLMError, match=r"config\.json: not a vlm config"):
        vlm.from_pretrained(saved)


def test_missing_weights_file(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="not a vlm checkpoint"):
        vlm.from_pretrained(saved)


def test_unknown_config_key_in_checkpoint(saved):
    meta = json.loads((saved / "config.json").read_text())
    meta["model"]["hiden_size"] = 3
    (saved / "config.json").write_text(json.dumps(meta))
    with pytest.raises(VLMError, match="unknown config key 'model.hiden_size'"):
        vlm.from_pretrained(saved)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_runs_no_code_and_names_the_file(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    with open(path, "wb") as f:
        pickle.dump({"bert.embeddings.word_embeddings.weight": _Evil(str(marker))}, f)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: not a loadable torch weights file .*no code ran"):
        vlm.from_transformers(str(path))
    assert not marker.exists()


def test_torch_zip_with_evil_object_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    torch.save({"x": _Evil(str(marker))}, path)
    with pytest.raises(CheckpointError, match=r"model\.pth"):
        vlm.from_transformers(str(path))
    assert not marker.exists()


def test_text_file_as_weights(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match=r"weights\.safetensors: not a readable safetensors file"):
        vlm.from_transformers(str(path))


def test_resume_from_a_folder_that_is_not_a_checkpoint(tmp_path):
    from vlm.engine.checkpoint import resolve_resume

    (tmp_path / "x").mkdir()
    with pytest.raises(CheckpointError, match="missing: config.json, model.safetensors, trainer_state.pt"):
        resolve_resume(tmp_path, str(tmp_path / "x"))


# ------------------------------------------------------------------------------------------------------ data files


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


DATA_CASES = [
    ("pretrain.jsonl", '{"image_id": 1, "text": "ok"}\n{"image_id": 2}\n', "pretraining", "line 2: field 'text'"),
    ("pretrain.jsonl", '{"image_id": 1, "text": "ok"}\nnot json\n', "pretraining", "line 2: not valid JSON"),
    ("pretrain.jsonl", '{"image_id": 1, "text": "   "}\n', "pretraining", "line 1: field 'text' must be a non-empty"),
    ("pretrain.jsonl", '{"image_id": 1, "text": "a", "answers": "yes"}\n', "pretraining",
     "'answers' must be a list of strings"),
    ("captions.json", '{"annotations": [{"image_id": 1, "caption": "a"}, {"caption": "b"}]}', "pretraining",
     "annotations[1]: expected {'image_id', 'caption'}"),
    ("captions.json", '[1, 2]', "pretraining", "expected COCO captions json"),
    ("binary.jsonl", "\x00\x81\xfe binary", "pretraining", "not UTF-8 text"),
]


@pytest.mark.parametrize("name, text, kind, message", DATA_CASES)
def test_bad_text_files_name_file_and_row(tmp_path, name, text, kind, message):
    from vlm.data.readers import read_texts

    path = tmp_path / name
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError) as e:
        read_texts(str(path))
    assert message in str(e.value) and str(path) in str(e.value)


# --------------------------------------------------------------------------------------------------------- the CLI


CLI_CASES = [
    (["pretrain", "--arch", "lxmert", "train.lr=abc"], "train.lr: expected float"),
    (["pretrain", "--arch", "lxmert", "nonsense"], "expected KEY=VALUE"),
    (["pretrain", "--arch", "lxmert", "--config", "/no/such.yaml"], "unknown pretraining config"),
    (["pretrain", "--arch", "lxmert", "train.device=cuda:7"], "train.device=cuda:7: no such CUDA device"),
    (["finetune", "--task", "vqa", "--arch", "lxmert", "train.precision=fp8"], "train.precision: expected one of"),
    (["finetune", "--task", "vqa", "--arch", "vilbert", "--config", "lxmert-vqa"], "is 'lxmert'"),
    (["evaluate", "--checkpoint", "/no/such/dir"], "not a vlm checkpoint"),
    (["pretrain", "--arch", "lxmert", "--resume", "/no/such/dir", "--data", "x.jsonl"], "x.jsonl: file not found"),
]


@pytest.mark.parametrize("argv, message", CLI_CASES, ids=[" ".join(a[:3]) for a, _ in CLI_CASES])
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_corpus_size():
    n = (len(BATCH_CASES) * 2 + 2 + 4 + 3 + 1 + len(DATA_CASES) + len(CLI_CASES))
    assert n >= 50
