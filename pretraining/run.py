"""``pretrain(cfg)``: the function behind ``vlm pretrain`` (tests and notebooks call it too).

It builds the run from a typed :class:`PretrainConfig` — texts joined to a feature store, the pretraining model from a
preset, the objectives — and hands them to the engine's :class:`~vlm.engine.trainer.Trainer`. Presets live in
``configs/pretrain/*.yaml``; dotted overrides (``train.lr=5e-5``, ``objectives.qa=0``) win.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import vlm
from features.builtin import agree_on_stores, default_cache_dir, resolve_stores
from features.store import FeatureStore, extraction_record, open_store, random_access
from pretraining.data import PretrainData, answer_vocab
from pretraining.masking import MaskingConfig
from pretraining.negatives import MatchingConfig
from pretraining.objectives import build_objectives
from pretraining.task import PretrainTask
from vlm.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    load_run_config,
    model_config,
    ranged,
    run_config_yaml,
    world_preset,
)
from vlm.data.builtin import builtin_images, is_builtin
from vlm.data.readers import read_texts
from vlm.data.split import split_holdout
from vlm.data.streamed import streamed_source
from vlm.engine import distributed as D
from vlm.engine.loader import eval_batches
from vlm.engine.run import RunContext, start_run
from vlm.engine.trainer import Trainer
from vlm.io import write_text
from vlm.models.folder import save_model_folder

logger = logging.getLogger(__name__)


@dataclass
class PretrainDataConfig(DataConfig):
    """Where the texts come from, on top of the shared data fields (stores, text length, answer rule, limits)."""

    # easy-vqa | easy-vqa-captions | FILE.jsonl | COCO captions .json | QUESTIONS.json,ANNOTATIONS.json (VQA v2);
    # several joined by "+"
    texts: str = "easy-vqa+easy-vqa-captions"
    eval_texts: str = ""  # held-out texts in the same formats ("" with built-in texts: their test split; else no eval)


@dataclass
class ObjectiveWeights:
    """Weight of each pretraining objective (0 switches it off); the field names are the objective registry's names
    (:data:`pretraining.objectives.OBJECTIVES`), so an unknown objective is an unknown key when the config loads."""

    mlm: float = ranged(1.0, ge=0)  # masked language modelling
    region_feat: float = ranged(1.0, ge=0)  # masked region feature regression
    region_obj: float = ranged(1.0, ge=0)  # masked region object labels (only when the store has detector labels)
    region_attr: float = ranged(1.0, ge=0)  # masked region attribute labels (only when the store has them)
    matching: float = ranged(1.0, ge=0)  # cross-modality matching
    qa: float = ranged(1.0, ge=0)  # image question answering (only for texts with answers)


@dataclass
class PretrainConfig:
    """A pretraining run: model preset and overrides, optimisation, objectives, masking, data."""

    preset: str = "lxmert-mini"  # model preset (configs/model) or a model YAML file
    model: dict = field(default_factory=dict)  # model config overrides on top of the preset (e.g. x_layers: 3)
    train: TrainConfig = field(default_factory=TrainConfig)
    objectives: ObjectiveWeights = field(default_factory=ObjectiveWeights)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)

    def model_config(self) -> ModelConfig:
        return model_config(self.preset, self.model)

    def check(self) -> None:
        """Checks across fields, run by the loader: the model preset and its overrides build a valid model, the
        masking shares add up, the matching negatives name known kinds."""
        self.model_config()
        self.masking.check()
        self.matching.check()

    def to_yaml(self) -> str:
        return run_config_yaml(self)


def load_pretrain_config(config: str | None = None, arch: str | None = None,
                         overrides: list[str] | None = None, data: str | None = None) -> PretrainConfig:
    """Preset (``configs/pretrain/<name>.yaml``, a YAML file, or by default ``<arch>`` — ``<arch>-<world>`` when
    ``data`` is a generated world's built-in data and that preset exists) + dotted overrides."""
    cfg = load_run_config(PretrainConfig, "pretrain", config or world_preset("pretrain", arch or "lxmert", data),
                          overrides or [])
    mc = cfg.model_config()
    if arch and mc.arch != arch:
        raise ConfigError(f"--arch {arch}: the config {config or arch} builds a {mc.arch!r} model "
                          f"(preset {cfg.preset!r})")
    return cfg


# ---------------------------------------------------------------------------------------------------------------------


def pretrain(cfg: PretrainConfig, *, out_dir: str | Path | None = None, resume: str | bool | None = None,
             overwrite: bool = False, dist: D.DistInfo = D.DistInfo(), show_progress: bool = True) -> dict[str, Any]:
    """Pretrain and return the summary (also written to ``<out>/summary.json``).

    Args:
        cfg: the run config.
        out_dir: run folder (default ``cfg.train.out_dir``).
        resume: ``True``/``"latest"`` for the newest checkpoint of the run folder, or a checkpoint/run folder.
        overwrite: replace the run already in ``out_dir`` (without it, or ``resume``, such a folder is refused).
        dist: rank and world size (the CLI reads them from torchrun's environment).
    """
    return prepare_pretraining(cfg, out_dir=out_dir, resume=resume, overwrite=overwrite, dist=dist,
                               show_progress=show_progress).run()


def prepare_pretraining(cfg: PretrainConfig, *, out_dir: str | Path | None = None, resume: str | bool | None = None,
                        overwrite: bool = False, dist: D.DistInfo = D.DistInfo(), show_progress: bool = True
                        ) -> PretrainRun:
    """Everything :func:`pretrain` does before training: start the run (:func:`vlm.engine.run.start_run`), read the
    texts, resolve the feature stores (built-in ones extracted on first use), build the run."""
    run = start_run(cfg.train, out_dir=out_dir, resume=resume, overwrite=overwrite, dist=dist)
    texts = PretrainTexts.read(cfg.data)
    train_store, eval_store = texts.stores(cfg.data, dist, show_progress)
    return PretrainRun(cfg, run=run, texts=texts, train_store=train_store, eval_store=eval_store,
                       show_progress=show_progress)


@dataclass
class PretrainTexts:
    """The texts of a pretraining run: training texts, held-out texts and the spec they come from."""

    train: list
    eval: list
    eval_spec: str  # "" when the held-out texts are training images held out (data.holdout_images) or none

    @classmethod
    def read(cls, d: PretrainDataConfig) -> PretrainTexts:
        """``data.texts`` (split by ``data.holdout_images`` when set) and the held-out texts, then the limits."""
        cache = d.cache_dir or str(default_cache_dir())
        train = read_texts(d.texts, "train", cache)
        if d.holdout_images:  # validation: images held out of the training texts replace the held-out data
            train, held = split_holdout(train, d.holdout_images, d.texts)
            eval_spec = ""
        else:
            eval_spec = d.eval_texts or (d.texts if is_builtin(d.texts) else "")
            held = read_texts(eval_spec, "test", cache) if eval_spec else []
        return cls(train=train[:d.train_limit or None], eval=held[:d.eval_limit or None], eval_spec=eval_spec)

    def stores(self, d: PretrainDataConfig, dist: D.DistInfo, show_progress: bool = True
               ) -> tuple[FeatureStore, FeatureStore | None]:
        """The feature stores of the training and held-out texts (built-in ones extracted on first use)."""
        train_dir, eval_dir = resolve_stores(
            train_builtin=is_builtin(d.texts), eval_builtin=is_builtin(self.eval_spec), features=d.features,
            eval_features=d.eval_features, cache_dir=d.cache_dir, backend=d.backend, need_eval=bool(self.eval),
            what=d.texts, is_main=dist.is_main if d.shared_cache else dist.is_local_main, barrier=D.barrier,
            progress=show_progress and (dist.is_main if d.shared_cache else dist.is_local_main),
            images=builtin_images(d.texts if is_builtin(d.texts) else self.eval_spec,
                                  d.cache_dir or default_cache_dir()))
        train_store = open_store(train_dir, stream=d.stream)
        held = None
        if self.eval:  # read by random access (a streamed folder or URL is opened again; a pipe: store is refused)
            held = random_access(train_store if d.holdout_images or eval_dir == train_dir else eval_dir)
        agree_on_stores(train_store, held, agree=D.agree)
        return train_store, held


class PretrainRun:
    """A pretraining run assembled from its config and its started run: data, model, objectives and the engine's
    trainer. The constructor only wires (it creates no file); :meth:`run` trains and writes.

    ``pretrain()`` starts the run, reads the texts, resolves the stores, then ``PretrainRun(...).run()``; the parts
    stay reachable (``.model``, ``.trainer``, ``.train_data``) for notebooks and tests.
    """

    def __init__(self, cfg: PretrainConfig, *, run: RunContext, texts: PretrainTexts, train_store: FeatureStore,
                 eval_store: FeatureStore | None = None, show_progress: bool = True) -> None:
        self.cfg, self.dist, self.run_dir = cfg, run.dist, run.run_dir
        tokenizer = vlm.load_tokenizer()
        d = cfg.data
        answers = answer_vocab(texts.train, d.answer_min_count) if cfg.objectives.qa > 0 else None
        train_data = PretrainData(texts.train, train_store, tokenizer, answers, cfg.masking, d.max_text_len,
                                  cfg.train.seed, name="train", soft_score_rule=d.soft_score_rule,
                                  matching=cfg.matching)
        eval_data = eval_clean = None
        if texts.eval and eval_store is not None:
            eval_data = PretrainData(texts.eval, eval_store, tokenizer, answers, cfg.masking,
                                     d.max_text_len, cfg.train.seed + 1, name="eval",
                                     soft_score_rule=d.soft_score_rule, matching=cfg.matching)
            eval_clean = eval_data.unmasked()

        # Model: preset + overrides, sized to the store and the answer table; heads follow the objectives.
        weights = dataclasses.asdict(cfg.objectives)
        labels = train_data.label_info()
        off = [f"region_{k}" for k in ("obj", "attr") if weights[f"region_{k}"] > 0 and k not in labels]
        if off:
            logger.warning("objective(s) %s off: the feature store %s has no detector labels", ", ".join(off),
                           train_store.directory)
            weights.update({name: 0.0 for name in off})
        model_overrides = dict(cfg.model)
        model_overrides.update(visual_feat_dim=train_store.feature_dim, num_answers=len(answers or ()),
                               visual_obj_loss=weights["region_obj"] > 0, visual_attr_loss=weights["region_attr"] > 0,
                               visual_feat_loss=weights["region_feat"] > 0)
        if "obj" in labels:
            model_overrides["num_object_labels"] = labels["obj"]
        if "attr" in labels:
            model_overrides["num_attr_labels"] = labels["attr"]
        model = vlm.create_model(cfg.preset, task="pretraining", **model_overrides)  # from the run's seed
        objectives = build_objectives(weights)
        reducer = D.mean_across_ranks if run.dist.enabled else None
        task = PretrainTask(model, objectives, count_reducer=reducer, match_kinds=cfg.matching.kinds())

        def evaluate(t: PretrainTask) -> dict[str, float]:
            return evaluate_pretraining(t, eval_data, cfg.train.batch_size, run.dist, run.device, clean=eval_clean)

        source = streamed_source(train_data, train_store, buffer_size=d.stream_buffer, seed=cfg.train.seed)
        self.trainer = Trainer(task, source, cfg.train, save_model=model, run=run,
                               evaluate=evaluate if eval_data is not None else None, run_config_yaml=cfg.to_yaml(),
                               keep_last=cfg.train.keep_last, show_progress=show_progress,
                               max_text_len=d.max_text_len)
        self.model, self.train_data, self.eval_data, self.answers = model, train_data, eval_data, answers
        self.objectives = objectives

    def run(self) -> dict[str, Any]:
        cfg, dist, run_dir = self.cfg, self.dist, self.run_dir
        result = self.trainer.train()
        mc = self.model.config
        summary = {"arch": mc.arch, "preset": cfg.preset, "run_dir": str(run_dir),
                   "objectives": sorted(self.objectives),
                   "train": dataclasses.asdict(self.train_data.report),
                   "eval_data": dataclasses.asdict(self.eval_data.report) if self.eval_data else None,
                   "answers": self.answers.answers if self.answers else [], "world_size": dist.world_size, **result}
        if dist.is_main:
            final = save_model_folder(run_dir / "model", self.model, max_text_len=cfg.data.max_text_len,
                                      answers=self.answers,
                                      features=extraction_record(self.train_data.store.manifest or {}))
            summary["model"] = str(final)
            write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
        return summary


#: Objectives whose held-out figures come from whole (unmasked) pairs when evaluate_pretraining gets ``clean`` data.
WHOLE_TEXT_OBJECTIVES = ("matching", "qa")


@torch.no_grad()
def evaluate_pretraining(task: PretrainTask, data: PretrainData, batch_size: int, dist: D.DistInfo,
                         device: torch.device, clean: PretrainData | None = None) -> dict[str, float]:
    """Held-out losses and accuracies of every objective (masking and negatives fixed by the seed).

    With ``clean`` (``data.unmasked()``: the same pairs, nothing masked), matching and QA are scored on it — whole
    texts, as a model is used — and the masked objectives on ``data``."""
    sums: dict[str, torch.Tensor] = {}

    def add(key: str, value: torch.Tensor) -> None:
        sums[key] = sums.get(key, torch.zeros(2, dtype=torch.float64)) + value

    passes = [(data, None)] if clean is None else [(data, False), (clean, True)]
    for source, whole in passes:  # whole: None scores everything, True/False only whole-text/masked objectives
        for batch in eval_batches(source, batch_size, world_size=dist.world_size, rank=dist.rank):
            batch = batch.to(device)
            out = task(batch)
            for name, obj in task.objectives.items():
                if whole is None or (name in WHOLE_TEXT_OBJECTIVES) == whole:
                    c = obj.count(batch).double().cpu()
                    add(f"{name}_loss", torch.stack([out.losses[name].detach().double().cpu() * c, c]))
            for name, acc in out.accuracy.items():
                if whole is None or (name.split("/")[0] in WHOLE_TEXT_OBJECTIVES) == whole:
                    add(f"{name}_acc", acc.cpu())
    keys = sorted(sums)
    if not keys:
        return {}
    total = D.all_reduce_sum(torch.stack([sums[k] for k in keys]))
    # a pair kind that never occurred (e.g. a word group with share 0) is left out rather than reported as NaN
    return {k: float(v[0] / v[1]) if v[1] > 0 else float("nan") for k, v in zip(keys, total)
            if v[1] > 0 or not k.startswith("matching/")}
