"""``finetune(cfg)`` (``vlm finetune``): VQA and ``[CLS]`` classification on the engine.

The model starts from a preset (text side from all-MiniLM-L6-v2 for the minis) or a model folder (a pretraining
run's ``model/``): the folder owner (:mod:`vlm.models.folder`) copies the encoder and, for VQA, carries over the rows
of the folder's QA head whose answers are in the new answer table. The fine-tuned model folder holds the weights and
config with the text length it was trained with, the answer table or class list, and the features record, so that
``vlm predict``, ``serve`` and ``evaluate`` extract and truncate as training did.
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
from downstream.data import ClassifyData, VQAData
from downstream.evaluate import evaluate
from downstream.modality import MODALITIES, TransformedSource, transform_for
from downstream.stores import check_features, features_info, run_stores
from downstream.vqa import write_results
from features.builtin import default_cache_dir
from features.store import FeatureStore, random_access
from vlm.config import (
    COMMAND_TASKS,
    ConfigError,
    DataConfig,
    TrainConfig,
    choice,
    load_run_config,
    run_config_yaml,
    world_preset,
)
from vlm.data.builtin import is_builtin
from vlm.data.classification import ClassList, check_training_labels
from vlm.data.readers import BUILTIN_TASK_DATA, read_classification, read_vqa
from vlm.data.split import split_holdout
from vlm.data.streamed import streamed_source
from vlm.data.vqa import AnswerVocab, example_answers
from vlm.engine import distributed as D
from vlm.engine.run import RunContext, start_run
from vlm.engine.trainer import Trainer
from vlm.io import write_text
from vlm.models.folder import arch_of, is_model_folder, resolve_folder, save_model_folder

logger = logging.getLogger(__name__)


@dataclass
class FinetuneDataConfig(DataConfig):
    """Where the examples come from, on top of the shared data fields (stores, text length, answer rule, limits)."""

    train: str = ""  # "" → the task's built-in data (vqa: easy-vqa, classify: easy-vqa-statements); or files
    eval: str = ""  # held-out examples ("" with built-in data: its test split; else no evaluation)


@dataclass
class FinetuneConfig:
    """A fine-tuning run."""

    task: str = choice("vqa", COMMAND_TASKS)  # "vqa" (answer head, soft-score BCE) or "classify" ([CLS] classifier)
    modality: str = choice("fused", MODALITIES)  # "fused"; "text" or "image" trains a unimodal baseline
    init: str = "lxmert-mini"  # a model preset, or a checkpoint folder (e.g. runs/pretrain-lxmert/model)
    model: dict = field(default_factory=dict)  # model config overrides (e.g. hidden_dropout_prob: 0.1)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)

    def train_spec(self) -> str:
        """The training data spec (the task's built-in data when ``data.train`` is empty)."""
        return self.data.train or BUILTIN_TASK_DATA[self.task]

    def eval_spec(self) -> str:
        """The held-out data spec: ``data.eval``; else the built-in data's test split; else none (``""``)."""
        train = self.train_spec()
        return self.data.eval or (train if is_builtin(train) else "")

    def to_yaml(self) -> str:
        return run_config_yaml(self)


def load_finetune_config(config: str | None = None, task: str | None = None, arch: str | None = None,
                         overrides: list[str] | None = None, data: str | None = None) -> FinetuneConfig:
    """Preset ``configs/finetune/<name>.yaml`` or a YAML file, then dotted overrides. The default preset is
    ``<arch>-<task>``, or ``<arch>-<task>-<world>`` when ``data`` is a generated world's built-in data and that
    preset exists (``vlm finetune --task vqa --data scenes``)."""
    name = config or world_preset("finetune", f"{arch or 'lxmert'}-{task or 'vqa'}", data)
    cfg = load_run_config(FinetuneConfig, "finetune", name, overrides or [])
    cfg.init = resolve_folder(cfg.init)
    if task and cfg.task != task:
        raise ConfigError(f"--task {task}: the config {name} is for task {cfg.task!r}")
    if arch:
        found = arch_of(cfg.init)
        if found != arch:
            raise ConfigError(f"--arch {arch}: the model to fine-tune ({cfg.init}) is {found!r}")
    return cfg


def finetune(cfg: FinetuneConfig, *, out_dir: str | Path | None = None, resume: str | bool | None = None,
             overwrite: bool = False, dist: D.DistInfo = D.DistInfo(), show_progress: bool = True) -> dict[str, Any]:
    """Fine-tune and return the summary (also ``<out>/summary.json``, ``metrics.json``, ``predictions.json``, and
    ``validation.json`` when ``data.holdout_images`` validates).

    A run already in ``out_dir`` is refused unless ``resume`` (continue it) or ``overwrite`` (replace it).
    """
    return prepare_finetuning(cfg, out_dir=out_dir, resume=resume, overwrite=overwrite, dist=dist,
                              show_progress=show_progress).run()


def prepare_finetuning(cfg: FinetuneConfig, *, out_dir: str | Path | None = None, resume: str | bool | None = None,
                       overwrite: bool = False, dist: D.DistInfo = D.DistInfo(), show_progress: bool = True
                       ) -> FinetuneRun:
    """Everything :func:`finetune` does before training: start the run (:func:`vlm.engine.run.start_run`), resolve
    the feature stores (built-in ones extracted on first use), build the run."""
    run = start_run(cfg.train, out_dir=out_dir, resume=resume, overwrite=overwrite, dist=dist)
    d = cfg.data
    train_store, eval_store = run_stores(cfg.train_spec(), cfg.eval_spec(), features=d.features,
                                         eval_features=d.eval_features, cache_dir=d.cache_dir, backend=d.backend,
                                         dist=dist, show_progress=show_progress, shared_cache=d.shared_cache,
                                         stream=d.stream)
    return FinetuneRun(cfg, run=run, train_store=train_store, eval_store=eval_store, show_progress=show_progress)


class FinetuneRun:
    """A fine-tuning run assembled from its config, its started run and its stores (:func:`finetune` makes all three
    first). The constructor only wires (it creates no file); :meth:`run` trains and writes.

    The data it evaluates: without ``data.holdout_images``, the held-out data (``data.eval`` or the built-in test
    split) during training and at the end. With it, the held-out training images are the *validation* data, which
    the periodic evaluations and the stopping rule (``train.best_metric``) see; the test data, when there is some, is
    scored once, at the end, with the weights the run keeps.
    """

    def __init__(self, cfg: FinetuneConfig, *, run: RunContext, train_store: FeatureStore,
                 eval_store: FeatureStore | None = None, show_progress: bool = True) -> None:
        self.cfg, self.dist, self.device, self.run_dir = cfg, run.dist, run.device, run.run_dir
        self.train_store = train_store
        d = cfg.data
        spec = cfg.train_spec()
        test_spec = cfg.eval_spec()
        cache = d.cache_dir or str(default_cache_dir())  # where a generated world lives
        tok = vlm.load_tokenizer()
        test_store = eval_store or train_store
        # validation images are training images, read by random access (a streamed folder or URL is opened again)
        val_store = random_access(train_store, "validation data (data.holdout_images)") if d.holdout_images else \
            train_store
        overrides = dict(cfg.model, visual_feat_dim=train_store.feature_dim)
        self.vocab: AnswerVocab | None = None
        self.classes: ClassList | None = None
        self.eval_data: VQAData | ClassifyData | None = None  # what training evaluates (validation or test)
        self.test_data: VQAData | ClassifyData | None = None  # with validation: the test data, scored at the end
        if cfg.task == "vqa":
            train_ex, val = self._split(read_vqa(spec, "train", cache), spec)
            self.vocab = AnswerVocab.from_questions((example_answers(e) for e in train_ex), d.answer_min_count)
            self.train_data: VQAData | ClassifyData = VQAData(train_ex, train_store, tok, self.vocab,
                                                              d.max_text_len, d.soft_score_rule, name="train")

            def vqa_data(examples: list, store: FeatureStore, name: str) -> VQAData:
                return VQAData(examples[:d.eval_limit or None], store, tok, self.vocab, d.max_text_len,
                               d.soft_score_rule, name=name, with_targets=False)

            if val:
                self.eval_data = vqa_data(val, val_store, "validation")
            if test_spec:
                self.test_data = vqa_data(read_vqa(test_spec, "test", cache), test_store, "test")
            labels = self.vocab.answers
        else:
            all_train, self.classes = read_classification(spec, "train", cache_dir=cache)
            train_ex, val = self._split(all_train, spec)
            check_training_labels(train_ex, self.classes, spec)
            num_labels = max(2, len(self.classes))
            self.train_data = ClassifyData(train_ex, train_store, tok, num_labels, d.max_text_len, name="train")

            def classify_data(examples: list, store: FeatureStore, name: str) -> ClassifyData:
                return ClassifyData(examples[:d.eval_limit or None], store, tok, num_labels, d.max_text_len,
                                    name=name)

            if val:
                self.eval_data = classify_data(val, val_store, "validation")
            if test_spec:  # the training file's class ids
                self.test_data = classify_data(read_classification(test_spec, "test", self.classes, cache)[0], test_store,
                                               "test")
            labels, overrides["num_labels"] = self.classes.names, num_labels
        if self.eval_data is None:  # no validation: training evaluates the test data itself
            self.eval_data, self.test_data = self.test_data, None
        if is_model_folder(cfg.init):  # a model folder: its features must be made the same way
            check_features(cfg.init, train_store, allow=d.allow_feature_mismatch,
                           flag="--allow-feature-mismatch (data.allow_feature_mismatch=true)")
        self.model = vlm.create_model(cfg.init, task=cfg.task, labels=labels, **overrides)  # run's seed
        self.transform = transform_for(cfg.modality)
        source = self.train_data if self.transform is None else TransformedSource(self.train_data, self.transform)
        source = streamed_source(source, train_store, buffer_size=d.stream_buffer, seed=cfg.train.seed)

        self._last_eval: tuple[int, dict, dict] | None = None  # (step, metrics, predictions) of the latest eval

        def evaluate_fn(model: torch.nn.Module) -> dict[str, float]:
            metrics, preds = self._evaluate(self.eval_data, model)
            self._last_eval = (self.trainer.step, metrics, preds)
            return _flat(metrics)

        self.trainer = Trainer(self.model, source, cfg.train, save_model=self.model, run=run,
                               evaluate=evaluate_fn if self.eval_data is not None else None,
                               run_config_yaml=cfg.to_yaml(), keep_last=cfg.train.keep_last,
                               show_progress=show_progress, max_text_len=d.max_text_len)

    def _split(self, examples: list, spec: str) -> tuple[list, list]:
        """``(training examples, validation examples)``: ``data.holdout_images`` images out of the training data
        (none without it), then ``data.train_limit``."""
        d = self.cfg.data
        held: list = []
        if d.holdout_images:
            examples, held = split_holdout(examples, d.holdout_images, spec)
        return examples[:d.train_limit or None], held

    def _evaluate(self, data: VQAData | ClassifyData, model: torch.nn.Module | None = None) -> tuple[dict, dict]:
        return evaluate(self.model if model is None else model, data, self.cfg.train.batch_size * 2, self.device,
                        self.cfg.train.precision, self.dist, self.transform)

    def run(self) -> dict[str, Any]:
        result = self.trainer.train()  # the model now holds the weights the run keeps (the best, with a rule)
        summary: dict[str, Any] = {"task": self.cfg.task, "modality": self.cfg.modality,
                                   "arch": self.model.config.arch, "init": self.cfg.init,
                                   "run_dir": str(self.run_dir), "train": dataclasses.asdict(self.train_data.report),
                                   "eval_data": dataclasses.asdict(self.eval_data.report) if self.eval_data else None,
                                   "test_data": dataclasses.asdict(self.test_data.report) if self.test_data else None,
                                   **result}
        if self.dist.is_main:
            final = save_model_folder(self.run_dir / "model", self.model, max_text_len=self.cfg.data.max_text_len,
                                      answers=self.vocab, classes=self.classes,
                                      features=features_info(self.train_store))
            summary["model"] = str(final)
        if self.eval_data is not None:
            if self._last_eval is not None and self._last_eval[0] == self.trainer.weights_step:
                _, metrics, preds = self._last_eval  # the trainer evaluated the kept weights last
            else:
                metrics, preds = self._evaluate(self.eval_data)
            if self.test_data is not None:  # the eval data was the validation split: score the test data once
                summary["validation"] = metrics
                if self.dist.is_main:
                    write_text(self.run_dir / "validation.json", json.dumps(metrics, indent=2) + "\n")
                metrics, preds = self._evaluate(self.test_data)
            summary["metrics"] = metrics
            if self.dist.is_main:
                write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
                write_predictions(preds, self.run_dir / "predictions.json", self.cfg.task)
        if self.dist.is_main:
            write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
        return summary


def write_predictions(preds: dict, path: Path, task: str) -> None:
    """VQA: the official results format ``[{"question_id", "answer"}]``; classification: ``[{"id", "label"}]``."""
    if task == "vqa":
        write_results(preds, path)
    else:
        write_text(path, json.dumps([{"id": k, "label": v} for k, v in preds.items()]) + "\n")


def _flat(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, dict):
            out.update({f"{k}/{kk}": float(vv) for kk, vv in v.items() if isinstance(vv, (int, float))})
    return out
