"""Typed configuration: model and training dataclasses, YAML presets and dotted overrides.

The dataclasses are the source of truth. YAML presets in ``configs/model/*.yaml`` fill a :class:`ModelConfig`;
command-line style overrides such as ``model.x_layers=3`` or ``train.lr=5e-5`` win over the preset. An unknown key or a
value of the wrong type raises :class:`ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlm.errors import VLMError

ARCHS = ("lxmert", "vilbert")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # see vlm.precision


class ConfigError(VLMError, ValueError):
    """A configuration key, value or preset is invalid; the message names it."""


@dataclass
class ModelConfig:
    """Shape and options of an encoder and its heads (LXMERT dual stream or the single-stream "vilbert")."""

    arch: str = "lxmert"  # "lxmert" (dual stream) or "vilbert" (one BERT over [CLS] [IMG] v.. [SEP] w.. [SEP])
    vocab_size: int = 30522  # WordPiece vocabulary (bert-base-uncased)
    hidden_size: int = 768  # width of every stream
    num_attention_heads: int = 12  # heads per attention layer; hidden_size must divide by it
    intermediate_size: int = 3072  # FFN inner width
    hidden_act: str = "gelu"  # FFN activation: "gelu" (erf), "gelu_tanh" or "relu"
    hidden_dropout_prob: float = 0.1  # dropout after embeddings, attention output and FFN output
    attention_probs_dropout_prob: float = 0.1  # dropout on attention weights
    max_position_embeddings: int = 512  # text positions
    type_vocab_size: int = 2  # token type ids (segment A/B)
    layer_norm_eps: float = 1e-12  # LayerNorm epsilon (BERT's value)
    initializer_range: float = 0.02  # std of the normal init of linear and embedding weights
    pad_token_id: int = 0  # id of [PAD]
    sep_token_id: int = 102  # id of [SEP] (vilbert: also embeds the [SEP] closing the region side)
    l_layers: int = 9  # LXMERT: language self-attention layers
    r_layers: int = 5  # LXMERT: object-relationship (region) self-attention layers
    x_layers: int = 5  # LXMERT: cross-modality layers
    num_layers: int = 12  # vilbert: depth of the single BERT stack
    region_token_type: int = 1  # vilbert: token type id given to [IMG], regions and the region [SEP]
    visual_feat_dim: int = 2048  # size of one region feature vector (set by the feature extractor)
    visual_pos_dim: int = 4  # box encoding: normalised x1, y1, x2, y2
    num_object_labels: int = 1600  # masked-region object label classes (Visual Genome detector)
    num_attr_labels: int = 400  # masked-region attribute classes
    visual_obj_loss: bool = True  # pretraining model has an object-label head
    visual_attr_loss: bool = True  # pretraining model has an attribute-label head
    visual_feat_loss: bool = True  # pretraining model has a feature-regression head
    num_answers: int = 0  # answer table size of the QA head (0: no QA head in the pretraining model)
    num_labels: int = 2  # classes of the [CLS] classifier
    text_init: str | None = None  # initialise the text side from a BERT: "all-minilm-l6-v2" or a local HF folder
    cross_init: str = "random"  # LXMERT with text_init: "random", or "text" (region and cross layers copy BERT layers)
    classifier_head: str = "mlp"  # [CLS] classifier: "mlp" (LXMERT's NLVR2 head) or "linear" (BERT's)

    def validate(self) -> None:
        """Check cross-field constraints.

        Raises:
            ConfigError: naming the offending field.
        """
        if self.arch not in ARCHS:
            raise ConfigError(f"model.arch: expected one of {list(ARCHS)}, got {self.arch!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"model.hidden_size ({self.hidden_size}) must be a multiple of model.num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.hidden_act not in ("gelu", "gelu_tanh", "relu"):
            raise ConfigError(f"model.hidden_act: expected 'gelu', 'gelu_tanh' or 'relu', got {self.hidden_act!r}")
        for name in ("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size", "visual_feat_dim",
                     "visual_pos_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model.{name} must be positive, got {getattr(self, name)}")
        for name in ("l_layers", "r_layers", "x_layers", "num_layers", "num_answers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"model.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("pad_token_id", "sep_token_id") if self.arch == "vilbert" else ("pad_token_id",):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(f"model.{name} ({getattr(self, name)}) must be in [0, vocab_size={self.vocab_size})")
        if self.cross_init not in ("random", "text"):
            raise ConfigError(f"model.cross_init: expected 'random' or 'text', got {self.cross_init!r}")
        if self.classifier_head not in ("mlp", "linear"):
            raise ConfigError(f"model.classifier_head: expected 'mlp' or 'linear', got {self.classifier_head!r}")
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

    lr: float = 1e-4  # peak learning rate of AdamW
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not applied to biases and norms)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    warmup_ratio: float = 0.05  # fraction of steps with linear warm-up
    epochs: float = 1.0  # passes over the training data
    max_steps: int = 0  # stop after this many optimiser steps (0: use epochs)
    batch_size: int = 64  # samples per optimiser step on one process (before accumulation)
    grad_accum: int = 1  # micro-batches accumulated per optimiser step
    max_grad_norm: float = 1.0  # gradient clipping (0: off)
    precision: str = "auto"  # "auto" (bf16 on CUDA and on CPUs with native bf16, else fp32), "fp32", "bf16", "fp16"
    seed: int = 0  # seed of every RNG
    num_workers: int = 0  # data-loader workers per process
    log_every: int = 20  # steps between metric lines
    eval_every: int = 0  # steps between evaluations (0: at the end of each epoch)
    save_every: int = 0  # steps between checkpoints (0: at the end only)
    out_dir: str = "runs/default"  # run folder: config, metrics.jsonl, checkpoints
    keep_last: int = 2  # checkpoints kept in the run folder (0: all)
    device: str = "auto"  # "auto" (this rank's GPU when there is one, else cpu), "cpu", "cuda", "cuda:1"

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision: expected one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if self.batch_size <= 0 or self.grad_accum <= 0:
            raise ConfigError("train.batch_size and train.grad_accum must be positive")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class RunConfig:
    """Everything a run needs: ``model`` and ``train`` sections, addressable as ``model.x`` / ``train.y``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------------------
# Typed assignment


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to the annotated type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool (true/false), got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "5e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected str, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {_type_name(tp)}")


def _field_types(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def apply_dict(obj: Any, values: dict[str, Any], prefix: str = "") -> Any:
    """Set fields of dataclass ``obj`` from a (nested) dict, type-checked; returns ``obj``.

    Raises:
        ConfigError: for an unknown key (listing the allowed ones) or a value of the wrong type.
    """
    types_ = _field_types(obj)
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in types_:
            raise ConfigError(f"unknown config key {full!r}; allowed keys: {', '.join(sorted(types_))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping of {type(current).__name__} fields, got {value!r}")
            apply_dict(current, value, prefix=f"{full}.")
        else:
            setattr(obj, key, _coerce(value, types_[key], full))
    return obj


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"a.b=value"`` into the dotted key and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, for example model.x_layers=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({e})") from None
    return key, value


def override_dict(text: str) -> dict[str, Any]:
    """``"a.b=3"`` as the nested mapping ``{"a": {"b": 3}}`` (the value parsed as YAML)."""
    key, value = parse_override(text)
    nested: Any = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested


def apply_overrides(obj: Any, overrides: list[str] | dict[str, Any]) -> Any:
    """Apply dotted overrides (``["model.x_layers=3"]`` or ``{"model.x_layers": 3}``) to dataclass ``obj``."""
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    for key, value in items:
        nested: Any = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        apply_dict(obj, nested)
    return obj


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
        norm = {k if k.startswith("model.") else f"model.{k}": v for k, v in items}
        run = RunConfig(model=cfg)
        apply_overrides(run, norm)
    cfg.validate()
    return cfg
