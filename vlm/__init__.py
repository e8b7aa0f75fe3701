"""vlm: vision-and-language transformers — region features, LXMERT and single-stream encoders, pretraining, VQA.

Public API::

    import vlm
    vlm.list_models()                                   # preset names
    model = vlm.create_model("lxmert-mini", task="vqa", num_answers=13, text_init="all-minilm-l6-v2")
    model.save_pretrained("ckpt/"); model = vlm.from_pretrained("ckpt/")
    model = vlm.from_transformers(hf_lxmert_for_pretraining)
    hf = vlm.to_transformers(model)                    # LxmertModel / ...ForPreTraining / ...ForQuestionAnswering
    tok = vlm.load_tokenizer()
"""

from __future__ import annotations

from typing import Any

from vlm.batch import Batch, EncoderOutput
from vlm.config import ConfigError, DataConfig, ModelConfig, TrainConfig, list_presets, model_config
from vlm.convert import from_transformers, load_text_weights, to_transformers
from vlm.models.tasks import TASKS, VLMModel, from_pretrained, model_class
from vlm.tokenizer import load_tokenizer

__version__ = "0.1.0"


def list_models() -> list[str]:
    """Names of the model presets in ``configs/model``."""
    return list_presets("model")


def create_model(name: str, task: str = "encoder", **overrides: Any) -> VLMModel:
    """Build a model from a preset name (or a YAML file) with config overrides.

    Args:
        name: preset name from :func:`list_models` or a path to a model YAML.
        task: ``encoder``, ``pretraining``, ``vqa`` or ``classification``.
        **overrides: model config fields, e.g. ``x_layers=3``, ``num_answers=13``, ``visual_feat_dim=768``,
            ``text_init="all-minilm-l6-v2"`` (load that BERT's weights into the text side).
    """
    cfg = model_config(name, overrides)
    model = model_class(task)(cfg)
    if cfg.text_init:
        load_text_weights(model, cfg.text_init)
    return model


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
    "from_pretrained",
    "from_transformers",
    "list_models",
    "load_text_weights",
    "load_tokenizer",
    "model_config",
    "to_transformers",
]
