"""vlm: vision-and-language transformers — region features, LXMERT and single-stream encoders, pretraining, VQA.

Public API::

    import vlm
    vlm.list_models()                                   # preset names
    model = vlm.create_model("lxmert-mini", task="vqa", num_answers=13, text_init="all-minilm-l6-v2")
    model.save_pretrained("ckpt/"); model = vlm.from_pretrained("ckpt/")
    model = vlm.create_model("runs/pretrain-lxmert/model", task="vqa", labels=answers)  # a folder, re-headed
    vlm.describe("runs/finetune-lxmert-vqa/model")      # task, arch, text length, labels, features: no weights
    model = vlm.from_transformers(hf_lxmert_for_pretraining)
    hf = vlm.to_transformers(model)                    # LxmertModel / ...ForPreTraining / ...ForQuestionAnswering
    tok = vlm.load_tokenizer()
"""

from __future__ import annotations

from vlm.batch import Batch, EncoderOutput
from vlm.config import ConfigError, DataConfig, ModelConfig, TrainConfig, list_presets, model_config
from vlm.convert import from_transformers, to_transformers
from vlm.models.folder import create_model, describe, from_pretrained, load_model_folder
from vlm.models.tasks import TASKS, VLMModel, model_class
from vlm.models.text_init import load_text_weights
from vlm.tokenizer import load_tokenizer

__version__ = "0.1.0"


def list_models() -> list[str]:
    """Names of the model presets in ``configs/model``."""
    return list_presets("model")


__all__ = [
    "TASKS",
    "Batch",
    "ConfigError",
    "DataConfig",
    "EncoderOutput",
    "ModelConfig",
    "TrainConfig",
    "VLMModel",
    "create_model",
    "describe",
    "from_pretrained",
    "from_transformers",
    "list_models",
    "load_model_folder",
    "load_text_weights",
    "load_tokenizer",
    "model_class",
    "model_config",
    "to_transformers",
]
