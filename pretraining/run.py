"""``pretrain(cfg)``: the function behind ``vlm pretrain`` (tests and notebooks call it too).

It builds the run from a typed :class:`PretrainConfig` — texts joined to a feature store, the pretraining model from a
preset, the objectives — and hands them to the engine's :class:`~vlm.engine.trainer.Trainer`. Presets live in
``configs/pretrain/*.yaml``; dotted overrides (``train.lr=5e-5``, ``objectives.qa=0``) win.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

import vlm
from vlm.config import ConfigError, ModelConfig, TrainConfig, apply_dict, load_yaml, model_config, override_dict
from vlm.engine import distributed as D
from vlm.engine.loader import eval_batches
from vlm.engine.trainer import Trainer
from vlm.errors import DataError
from vlm.io import write_text
from pretraining.data import PretrainData, answer_table, is_builtin, read_texts
from pretraining.masking import MaskingConfig
from pretraining.objectives import build_objectives
from pretraining.task import PretrainTask

logger = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Where the texts and their region features come from."""

    # easy-vqa | easy-vqa-captions | FILE.jsonl | COCO captions .json | QUESTIONS.json,ANNOTATIONS.json (VQA v2);
    # several joined by "+"
    texts: str = "easy-vqa+easy-vqa-captions"
    eval_texts: str = ""  # held-out texts in the same formats ("" with built-in texts: their test split; else no eval)
    features: str = ""  # feature store of the training images ("" with easy-vqa: built-in, extracted on first use)
    eval_features: str = ""  # feature store of the held-out images ("": same as features, or built-in)
    cache_dir: str = ""  # where built-in features are extracted ("": ~/.cache/vlm, set by the CLI)
    backend: str = "auto"  # extraction backend of built-in features ("auto": features.builtin_extraction())
    max_text_len: int = 40  # tokens per text, [CLS]/[SEP] included
    answer_min_count: int = 1  # answers seen fewer times in training are left out of the QA table
    train_limit: int = 0  # use only the first N training texts (0: all)
    eval_limit: int = 0  # evaluate on the first N held-out texts (0: all)


@dataclass
class ObjectiveWeights:
    """Weight of each pretraining objective (0 switches it off)."""

    mlm: float = 1.0  # masked language modelling
    region_feat: float = 1.0  # masked region feature regression
    region_obj: float = 1.0  # masked region object labels (only when the store has detector labels)
    region_attr: float = 1.0  # masked region attribute labels (only when the store has them)
    matching: float = 1.0  # cross-modality matching
    qa: float = 1.0  # image question answering (only for texts with answers)


@dataclass
class PretrainConfig:
    """A pretraining run: model preset and overrides, optimisation, objectives, masking, data."""

    preset: str = "lxmert-mini"  # model preset (configs/model) or a model YAML file
    model: dict = field(default_factory=dict)  # model config overrides on top of the preset (e.g. x_layers: 3)
    train: TrainConfig = field(default_factory=TrainConfig)
    objectives: ObjectiveWeights = field(default_factory=ObjectiveWeights)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def model_config(self) -> ModelConfig:
        return model_config(self.preset, self.model)

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(self))), sort_keys=False)


def pretrain_presets_dir() -> Path:
    return vlm.config.presets_dir() / "pretrain"


def load_pretrain_config(config: str | None = None, arch: str | None = None,
                         overrides: list[str] | None = None) -> PretrainConfig:
    """Preset (``configs/pretrain/<name>.yaml``, a YAML file, or ``<arch>`` by default) + dotted overrides."""
    name = config or (arch or "lxmert")
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = pretrain_presets_dir() / f"{name}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in pretrain_presets_dir().glob("*.yaml"))
            raise ConfigError(f"unknown pretraining config {name!r}: not a YAML file and not a preset "
                              f"({', '.join(known)})")
    cfg = PretrainConfig()
    data = load_yaml(path)
    try:
        _apply(cfg, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    for o in overrides or []:
        _apply(cfg, override_dict(o))
    mc = cfg.model_config()  # validates the model section
    if arch and mc.arch != arch:
        raise ConfigError(f"--arch {arch}: the config {path} builds a {mc.arch!r} model (preset {cfg.preset!r})")
    cfg.train.validate()
    return cfg


def _apply(cfg: PretrainConfig, values: dict[str, Any]) -> None:
    values = dict(values)
    if "model" in values:  # free-form here, checked against ModelConfig by model_config()
        m = values.pop("model")
        if not isinstance(m, dict):
            raise ConfigError(f"model: expected a mapping of model config fields, got {m!r}")
        probe = ModelConfig()
        apply_dict(probe, m, prefix="model.")
        cfg.model.update(m)
    apply_dict(cfg, values)


# ---------------------------------------------------------------------------------------------------------------------


def _device(name: str, dist: D.DistInfo) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{dist.local_rank}" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"train.device={name}: no such CUDA device on this machine "
                          f"({torch.cuda.device_count()} visible)")
    return dev


def builtin_store(split: str, cache_dir: str, backend: str, dist: D.DistInfo) -> Path:
    """The easy-VQA feature store of ``split``, extracted on first use (main rank) and reused afterwards."""
    name, options = _builtin_settings(backend)
    tag = "-".join([name] + [f"{k}{v}" for k, v in sorted(options.items()) if k != "weights"])
    out = Path(cache_dir) / "features" / f"easy-vqa-{split}-{tag}"
    if not _complete(out):
        if dist.is_main:
            from features.extract import extract

            logger.warning("extracting built-in features: easy-vqa:%s with %s %s into %s (first use only)",
                           split, name, options, out)
            extract(f"easy-vqa:{split}", out, name, options, part=(0, 1), device="cpu", progress=True)
        D.barrier()
    return out


def _builtin_settings(backend: str) -> tuple[str, dict[str, Any]]:
    """Backend and options of the built-in easy-VQA features (``auto``: the measured default of ``features``)."""
    import features

    if backend == "auto":
        return features.builtin_extraction()
    return backend, {}  # that backend with its own defaults


def _complete(store: Path) -> bool:
    try:
        return bool(json.loads((store / "manifest.json").read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def _open_store(path: str | Path):
    from features.store import FeatureStore

    return FeatureStore(path)


def pretrain(cfg: PretrainConfig, *, out_dir: str | Path | None = None, resume: str | bool | None = None,
             dist: D.DistInfo = D.DistInfo(), show_progress: bool = True) -> dict[str, Any]:
    """Pretrain and return the summary (also written to ``<out>/summary.json``).

    Args:
        cfg: the run config.
        out_dir: run folder (default ``cfg.train.out_dir``).
        resume: ``True``/``"latest"`` for the newest checkpoint of the run folder, or a checkpoint/run folder.
        dist: rank and world size (the CLI reads them from torchrun's environment).
    """
    return PretrainRun(cfg, out_dir=out_dir, dist=dist, show_progress=show_progress).run(resume)


class PretrainRun:
    """A pretraining run assembled from its config: data, model, objectives and the engine's trainer.

    ``pretrain()`` is ``PretrainRun(cfg).run()``; the parts stay reachable (``.model``, ``.trainer``, ``.train_data``)
    for notebooks and tests.
    """

    def __init__(self, cfg: PretrainConfig, *, out_dir: str | Path | None = None, dist: D.DistInfo = D.DistInfo(),
                 show_progress: bool = True) -> None:
        self.cfg, self.dist = cfg, dist
        run_dir = self.run_dir = Path(out_dir or cfg.train.out_dir)
        cfg.train.out_dir = str(run_dir)
        device = _device(cfg.train.device, dist)
        D.setup(dist, device)
        tokenizer = vlm.load_tokenizer()
        d = cfg.data
        cache = d.cache_dir or str(Path.home() / ".cache" / "vlm")
        builtin = is_builtin(d.texts)
        train_texts = read_texts(d.texts, "train")
        if d.train_limit:
            train_texts = train_texts[:d.train_limit]
        eval_spec = d.eval_texts or (d.texts if builtin else "")
        eval_texts = read_texts(eval_spec, "test") if eval_spec else []
        if d.eval_limit:
            eval_texts = eval_texts[:d.eval_limit]
        if d.features:
            train_store_dir = Path(d.features)
        elif builtin:
            train_store_dir = builtin_store("train", cache, d.backend, dist)
        else:
            raise DataError(f"data.features: a feature store folder is needed for {d.texts} (vlm extract makes one)")
        if d.eval_features:
            eval_store_dir = Path(d.eval_features)
        elif is_builtin(eval_spec) and not d.features:
            eval_store_dir = builtin_store("test", cache, d.backend, dist)
        else:
            eval_store_dir = train_store_dir
        train_store = _open_store(train_store_dir)
        answers = answer_table(train_texts, d.answer_min_count) if cfg.objectives.qa > 0 else []
        train_data = PretrainData(train_texts, train_store, tokenizer, answers, cfg.masking, d.max_text_len,
                                  cfg.train.seed, name="train")
        eval_data = None
        if eval_texts:
            eval_data = PretrainData(eval_texts, _open_store(eval_store_dir), tokenizer, answers, cfg.masking,
                                     d.max_text_len, cfg.train.seed + 1, name="eval")

        # Model: preset + overrides, sized to the store and the answer table; heads follow the objectives.
        weights = dataclasses.asdict(cfg.objectives)
        labels = train_data.label_info()
        off = [f"region_{k}" for k in ("obj", "attr") if weights[f"region_{k}"] > 0 and k not in labels]
        if off:
            logger.warning("objective(s) %s off: the feature store %s has no detector labels", ", ".join(off),
                           train_store_dir)
            weights.update({name: 0.0 for name in off})
        model_overrides = dict(cfg.model)
        model_overrides.update(visual_feat_dim=train_store.feature_dim, num_answers=len(answers),
                               visual_obj_loss=weights["region_obj"] > 0, visual_attr_loss=weights["region_attr"] > 0,
                               visual_feat_loss=weights["region_feat"] > 0)
        if "obj" in labels:
            model_overrides["num_object_labels"] = labels["obj"]
        if "attr" in labels:
            model_overrides["num_attr_labels"] = labels["attr"]
        mc = model_config(cfg.preset, model_overrides)
        torch.manual_seed(cfg.train.seed)  # model init: the same weights on every rank (DDP also broadcasts rank 0's)
        model = vlm.models.tasks.VLMForPreTraining(mc)
        if mc.text_init:
            vlm.load_text_weights(model, mc.text_init)
        objectives = build_objectives(weights)
        reducer = D.mean_across_ranks if dist.enabled else None
        task = PretrainTask(model, objectives, count_reducer=reducer)

        def evaluate(t: PretrainTask) -> dict[str, float]:
            return evaluate_pretraining(t, eval_data, cfg.train.batch_size, dist, device)

        trainer = Trainer(task, train_data, cfg.train, save_model=model, run_dir=run_dir, dist=dist, device=device,
                          evaluate=evaluate if eval_data is not None else None, run_config_yaml=cfg.to_yaml(),
                          keep_last=cfg.train.keep_last, show_progress=show_progress)
        self.model, self.train_data, self.eval_data, self.answers = model, train_data, eval_data, answers
        self.objectives, self.trainer = objectives, trainer

    def run(self, resume: str | bool | None = None) -> dict[str, Any]:
        cfg, dist, run_dir = self.cfg, self.dist, self.run_dir
        result = self.trainer.train(resume=resume)
        mc = self.model.config
        summary = {"arch": mc.arch, "preset": cfg.preset, "run_dir": str(run_dir), "objectives": sorted(self.objectives),
                   "train": dataclasses.asdict(self.train_data.report),
                   "eval_data": dataclasses.asdict(self.eval_data.report) if self.eval_data else None,
                   "answers": self.answers, "world_size": dist.world_size, **result}
        if dist.is_main:
            final = run_dir / "model"
            self.model.save_pretrained(final)
            write_text(final / "answers.json", json.dumps(self.answers) + "\n")
            summary["model"] = str(final)
            write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
        return summary


@torch.no_grad()
def evaluate_pretraining(task: PretrainTask, data: PretrainData, batch_size: int, dist: D.DistInfo,
                         device: torch.device) -> dict[str, float]:
    """Held-out losses and accuracies of every objective (masking and negatives fixed by the seed)."""
    sums: dict[str, torch.Tensor] = {}
    for batch in eval_batches(data, batch_size, world_size=dist.world_size, rank=dist.rank):
        batch = batch.to(device)
        out = task(batch)
        for name, obj in task.objectives.items():
            c = obj.count(batch).double().cpu()
            sums[f"{name}_loss"] = sums.get(f"{name}_loss", torch.zeros(2, dtype=torch.float64)) + torch.stack(
                [out.losses[name].detach().double().cpu() * c, c])
        for name, acc in out.accuracy.items():
            sums[f"{name}_acc"] = sums.get(f"{name}_acc", torch.zeros(2, dtype=torch.float64)) + acc.cpu()
    keys = sorted(sums)
    if not keys:
        return {}
    total = D.all_reduce_sum(torch.stack([sums[k] for k in keys]))
    return {k: float(v[0] / v[1]) if v[1] > 0 else float("nan") for k, v in zip(keys, total)}
