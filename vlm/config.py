"""Typed configuration: the model, training and data dataclasses, and the one run-config loader.

The dataclasses are the source of truth. YAML presets in ``configs/model/*.yaml`` fill a :class:`ModelConfig`; a run
config (pretraining's ``PretrainConfig``, fine-tuning's ``FinetuneConfig``: each task package's own dataclass, built
from the shared :class:`TrainConfig` and :class:`DataConfig` and its own sections) is filled by
:func:`load_run_config` from a preset in ``configs/<kind>/`` or a YAML file, then command-line style overrides such
as ``model.x_layers=3`` or ``train.lr=5e-5``. Every field is checked when the config is loaded: an unknown key, a
value of the wrong type, a number outside the range its field declares (:func:`ranged`) or a name outside its registry
(:func:`choice`) raises :class:`ConfigError` naming the file or override, the key and what is allowed.

The field machinery (:func:`ranged`, :func:`choice`, :func:`check_fields`, :func:`apply_dict`, :func:`parse_override`,
:func:`override_dict`, :class:`ConfigError`) lives in :mod:`vlm.fields` and is re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vlm.data.vqa import SOFT_SCORE_RULES
from vlm.fields import ConfigError, Range, apply_dict, check_fields, choice, override_dict, parse_override, ranged

__all__ = ["ARCHS", "COMMAND_TASKS", "PRECISIONS", "ConfigError", "DataConfig", "ModelConfig", "Range", "TrainConfig",
           "apply_dict", "check_fields", "choice", "find_run_config", "list_presets", "load_run_config", "load_yaml",
           "model_config", "override_dict", "parse_override", "presets_dir", "ranged", "run_config_yaml"]

ARCHS = ("lxmert", "vilbert")
#: The task vocabulary: command-line task name → the model task a model folder stores (other names are the same).
COMMAND_TASKS = {"vqa": "vqa", "classify": "classification"}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # see vlm.precision


@dataclass
class ModelConfig:
    """Shape and options of an encoder and its heads (LXMERT dual stream or the single-stream "vilbert")."""

    # "lxmert" (dual stream) or "vilbert" (one BERT over [CLS] [IMG] v.. [SEP] w.. [SEP])
    arch: str = choice("lxmert", ARCHS)
    vocab_size: int = ranged(30522, ge=1)  # WordPiece vocabulary (bert-base-uncased)
    hidden_size: int = ranged(768, ge=1)  # width of every stream
    num_attention_heads: int = ranged(12, ge=1)  # heads per attention layer; hidden_size must divide by it
    intermediate_size: int = ranged(3072, ge=1)  # FFN inner width
    hidden_act: str = choice("gelu", ("gelu", "gelu_tanh", "relu"))  # FFN activation: "gelu" (erf), "gelu_tanh", "relu"
    hidden_dropout_prob: float = ranged(0.1, ge=0, lt=1)  # dropout after embeddings, attention output and FFN output
    attention_probs_dropout_prob: float = ranged(0.1, ge=0, lt=1)  # dropout on attention weights
    max_position_embeddings: int = ranged(512, ge=1)  # text positions
    type_vocab_size: int = ranged(2, ge=1)  # token type ids (segment A/B)
    layer_norm_eps: float = ranged(1e-12, gt=0)  # LayerNorm epsilon (BERT's value)
    initializer_range: float = ranged(0.02, ge=0)  # std of the normal init of linear and embedding weights
    pad_token_id: int = ranged(0, ge=0)  # id of [PAD]
    sep_token_id: int = ranged(102, ge=0)  # id of [SEP] (vilbert: also embeds the [SEP] closing the region side)
    l_layers: int = ranged(9, ge=0)  # LXMERT: language self-attention layers
    r_layers: int = ranged(5, ge=0)  # LXMERT: object-relationship (region) self-attention layers
    x_layers: int = ranged(5, ge=0)  # LXMERT: cross-modality layers
    num_layers: int = ranged(12, ge=0)  # vilbert: depth of the single BERT stack
    region_token_type: int = ranged(1, ge=0)  # vilbert: token type id given to [IMG], regions and the region [SEP]
    visual_feat_dim: int = ranged(2048, ge=1)  # size of one region feature vector (set by the feature extractor)
    visual_pos_dim: int = ranged(4, ge=1)  # box encoding: normalised x1, y1, x2, y2
    num_object_labels: int = ranged(1600, ge=1)  # masked-region object label classes (Visual Genome detector)
    num_attr_labels: int = ranged(400, ge=1)  # masked-region attribute classes
    visual_obj_loss: bool = True  # pretraining model has an object-label head
    visual_attr_loss: bool = True  # pretraining model has an attribute-label head
    visual_feat_loss: bool = True  # pretraining model has a feature-regression head
    num_answers: int = ranged(0, ge=0)  # answer table size of the QA head (0: no QA head in the pretraining model)
    num_labels: int = ranged(2, ge=1)  # classes of the [CLS] classifier
    text_init: str | None = None  # initialise the text side from a BERT: "all-minilm-l6-v2" or a local HF folder
    # LXMERT with text_init: "random", or "text" (region and cross layers copy BERT layers)
    cross_init: str = choice("random", ("random", "text"))
    # [CLS] classifier: "mlp" (LXMERT's NLVR2 head) or "linear" (BERT's)
    classifier_head: str = choice("mlp", ("mlp", "linear"))

    def validate(self) -> None:
        """Check every field's range or registry, then the constraints across fields.

        Raises:
            ConfigError: naming the offending field.
        """
        check_fields(self, prefix="model.")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be a multiple of model.num_attention_heads "
                f"({self.num_attention_heads})"
            )
        for name in ("pad_token_id", "sep_token_id") if self.arch == "vilbert" else ("pad_token_id",):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(f"model.{name} ({getattr(self, name)}) must be in [0, vocab_size={self.vocab_size})")
        if self.region_token_type >= self.type_vocab_size:
            raise ConfigError(
                f"model.region_token_type ({self.region_token_type}) must be < model.type_vocab_size "
                f"({self.type_vocab_size})"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig:
    """Optimisation and run settings shared by pretraining and fine-tuning."""

    lr: float = ranged(1e-4, gt=0)  # peak learning rate of AdamW
    weight_decay: float = ranged(0.01, ge=0)  # AdamW decoupled weight decay (not applied to biases and norms)
    betas: tuple[float, float] = ranged((0.9, 0.999), ge=0, lt=1)  # AdamW betas
    warmup_ratio: float = ranged(0.05, ge=0, lt=1)  # fraction of steps with linear warm-up
    # after the warm-up: "linear" decay to 0 at the last step, "cosine" (half a cosine to 0), "constant"
    lr_schedule: str = choice("linear", ("linear", "cosine", "constant"))
    epochs: float = ranged(1.0, gt=0)  # passes over the training data
    max_steps: int = ranged(0, ge=0)  # stop after this many optimiser steps (0: use epochs)
    batch_size: int = ranged(64, ge=1)  # samples per optimiser step on one process (before accumulation)
    grad_accum: int = ranged(1, ge=1)  # micro-batches accumulated per optimiser step
    max_grad_norm: float = ranged(1.0, ge=0)  # gradient clipping (0: off)
    # "auto" (bf16 on CUDA and on CPUs with native bf16, else fp32), "fp32", "bf16", "fp16"
    precision: str = choice("auto", PRECISIONS)
    seed: int = ranged(0, ge=0)  # seed of every RNG
    num_workers: int = ranged(0, ge=0)  # data-loader workers per process
    log_every: int = ranged(20, ge=1)  # steps between metric lines
    eval_every: int = ranged(0, ge=0)  # steps between evaluations (0: at the end of each epoch)
    save_every: int = ranged(0, ge=0)  # steps between checkpoints (0: at the end only)
    out_dir: str = "runs/default"  # run folder: config, metrics.jsonl, checkpoints
    keep_last: int = ranged(2, ge=0)  # checkpoints kept in the run folder (0: all); the best one is kept besides
    # the stopping rule (vlm.engine.stopping): the evaluation metric that picks the best checkpoint, whose weights
    # become the run's model ("overall", "accuracy", "matching/accuracy", ...; "": the last weights)
    best_metric: str = ""
    best_mode: str = choice("max", ("max", "min"))  # "max": higher is better (accuracies); "min": lower (losses)
    patience: int = ranged(0, ge=0)  # stop after this many evaluations in a row without improvement (0: never early)
    min_delta: float = ranged(0.0, ge=0)  # an improvement must exceed the best by more than this
    min_steps: int = ranged(0, ge=0)  # never stop early before this step
    device: str = "auto"  # "auto" (this rank's GPU when there is one, else cpu), "cpu", "cuda", "cuda:1"
    # torchrun: seconds any collective may wait (barriers too: ranks waiting for a first-use feature extraction)
    dist_timeout: float = ranged(1800.0, gt=0)

    def validate(self) -> None:
        """Check every field's range or registry.

        Raises:
            ConfigError: naming the key.
        """
        check_fields(self, prefix="train.")
        if self.patience and not self.best_metric:
            raise ConfigError(f"train.patience={self.patience} needs train.best_metric (the evaluation metric it "
                              "watches, e.g. overall or accuracy)")


@dataclass
class DataConfig:
    """Data fields shared by pretraining and fine-tuning: feature stores, text length, the answer rule, limits.

    Each task's data section extends it with where its examples come from (pretraining: ``texts`` / ``eval_texts``;
    fine-tuning: ``train`` / ``eval``).
    """

    features: str = ""  # feature store of the training images ("" with built-in data: extracted on first use)
    eval_features: str = ""  # feature store of the held-out images ("": same as features, or built-in)
    cache_dir: str = ""  # where built-in features are extracted ("": the default cache folder, features.builtin)
    backend: str = "auto"  # extraction backend of built-in features ("auto": features.builtin_extraction())
    # torchrun on several nodes: true when cache_dir is one folder every node sees (built-in features extracted once,
    # by global rank 0); false: each node extracts into its own cache (by its local rank 0)
    shared_cache: bool = False
    # read the training features front to back, shard by shard, through a shuffle buffer (a `pipe:` store always is);
    # held-out data are still read by random access
    stream: bool = False
    stream_buffer: int = ranged(2000, ge=1)  # streaming: examples in each reader's shuffle buffer
    max_text_len: int = ranged(40, ge=3)  # tokens per text, [CLS]/[SEP] included
    answer_min_count: int = ranged(1, ge=1)  # QA: answers given for fewer training questions are left out
    soft_score_rule: str = choice("lxmert", SOFT_SCORE_RULES)  # several human answers: "lxmert" or "official"
    train_limit: int = ranged(0, ge=0)  # use only the first N training examples (0: all)
    eval_limit: int = ranged(0, ge=0)  # evaluate on the first N held-out examples (0: all)
    holdout_images: int = ranged(0, ge=0)  # validate on N training images held out by id (vlm.data.split); 0: off
    allow_feature_mismatch: bool = False  # use a checkpoint with features made another way (warned, not refused)


# ---------------------------------------------------------------------------------------------------------------------
# Presets


def presets_dir() -> Path:
    """Folder holding the YAML presets: the repository's ``configs/`` or the copy installed as ``vlm._presets``."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "configs", here / "_presets"):  # source checkout, then installed wheel
        if (candidate / "model").is_dir():
            return candidate
    raise ConfigError(f"preset folder not found: looked for {here.parent / 'configs'} and {here / '_presets'}")


def list_presets(kind: str = "model") -> list[str]:
    return sorted(p.stem for p in (presets_dir() / kind).glob("*.yaml"))


def world_preset(kind: str, name: str, data: str | None) -> str:
    """``<name>-<world>`` when ``data`` is a generated world's built-in data (``vlm.data.builtin``) and the presets of
    ``kind`` have one by that name (``lxmert-vqa-scenes``), else ``name``."""
    from vlm.data.builtin import GENERATED_WORLDS, builtin_world
    from vlm.errors import DataError

    try:
        world = builtin_world(data or "")
    except DataError:
        return name  # mixed worlds: refused when the data is read
    if world not in GENERATED_WORLDS:
        return name
    return f"{name}-{world}" if f"{name}-{world}" in list_presets(kind) else name


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def model_config(name_or_path: str, overrides: list[str] | dict[str, Any] | None = None) -> ModelConfig:
    """Build a :class:`ModelConfig` from a preset name (``lxmert-base``) or a YAML/JSON file, then overrides.

    Overrides may be given with or without the ``model.`` prefix.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") and path.exists():
        data = json.loads(path.read_text()) if path.suffix == ".json" else load_yaml(path)
        source = str(path)
    else:
        preset = presets_dir() / "model" / f"{name_or_path}.yaml"
        if not preset.exists():
            raise ConfigError(f"unknown model {name_or_path!r}; available presets: {', '.join(list_presets())}")
        data = load_yaml(preset)
        source = str(preset)
    cfg = ModelConfig()
    try:
        apply_dict(cfg, data, prefix="model.")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    if overrides:
        items = overrides.items() if isinstance(overrides, dict) else [parse_override(o) for o in overrides]
        for key, value in items:
            apply_dict(cfg, {key.removeprefix("model."): value}, prefix="model.")
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------------------------------------
# The one run-config loader

T = typing.TypeVar("T")


def _apply_run_values(cfg: Any, values: dict[str, Any]) -> None:
    """Set a run config's fields from a (nested) mapping; its ``model`` mapping is checked against
    :class:`ModelConfig` field by field (the merged model is built, and checked again, from the preset later)."""
    values = dict(values)
    if "model" in values and isinstance(getattr(cfg, "model", None), dict):
        m = values.pop("model")
        if not isinstance(m, dict):
            raise ConfigError(f"model: expected a mapping of model config fields, got {m!r}")
        check_fields(apply_dict(ModelConfig(), m, prefix="model."), prefix="model.")
        cfg.model.update(m)
    apply_dict(cfg, values)


def find_run_config(kind: str, name: str) -> Path:
    """A run-config file: ``name`` itself when it is a ``.yaml``/``.yml`` file, else the preset
    ``configs/<kind>/<name>.yaml``.

    Raises:
        ConfigError: neither exists; the message lists the presets of ``kind``.
    """
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    preset = presets_dir() / kind / f"{name}.yaml"
    if not preset.is_file():
        what = {"pretrain": "pretraining", "finetune": "fine-tuning"}.get(kind, kind)
        raise ConfigError(f"unknown {what} config {name!r}: not a YAML file and not a preset "
                          f"({', '.join(list_presets(kind))})")
    return preset


def load_run_config(cls: type[T], kind: str, name: str, overrides: typing.Sequence[str] = ()) -> T:
    """The run config of type ``cls`` from a preset or YAML file, then dotted overrides, every field checked.

    Args:
        cls: the task's run-config dataclass (e.g. ``PretrainConfig``); a ``model: dict`` field holds model config
            overrides, checked against :class:`ModelConfig`; a ``check()`` method, when it has one, runs last for
            checks across fields.
        kind: preset folder under ``configs/`` (``pretrain``, ``finetune``).
        name: preset name or YAML file path.
        overrides: ``KEY=VALUE`` strings, keys dotted (``train.lr=5e-5``, ``model.x_layers=3``).

    Raises:
        ConfigError: naming the file or the override, the key and what it allows (unknown key, wrong type, a
            number outside its range, a name outside its registry).
    """
    path = find_run_config(kind, name)
    cfg = cls()
    try:
        _apply_run_values(cfg, load_yaml(path))
        check_fields(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    for o in overrides:
        try:
            _apply_run_values(cfg, override_dict(o))
            check_fields(cfg)
        except ConfigError as e:
            raise ConfigError(f"override {o!r}: {e}") from None
    if hasattr(cfg, "check"):
        cfg.check()
    return cfg


def run_config_yaml(cfg: Any) -> str:
    """A run config as the YAML written into every run folder and checkpoint (``config.yaml``)."""
    return yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(cfg))), sort_keys=False)
