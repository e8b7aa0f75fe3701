"""``finetune(cfg)`` (``vlm finetune``) and ``evaluate_checkpoint`` (``vlm evaluate``): VQA and ``[CLS]``
classification on the engine.

The model starts from a preset (text side from all-MiniLM-L6-v2 for the minis) or a pretrained checkpoint folder; from
a pretraining checkpoint, the encoder is copied and, for VQA, the rows of the pretraining QA head whose answers are in
the new answer table are carried over. The fine-tuned model folder holds ``config.json`` + ``model.safetensors``, the
answer table (``answers.json``) or class list (``classes.json``), and ``features.json`` (the feature extractor's
settings, so ``vlm predict`` can extract a new image the same way).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

import vlm
from vlm.config import ConfigError, ModelConfig, TrainConfig, apply_dict, load_yaml, model_config, override_dict
from vlm.engine import distributed as D
from vlm.engine.trainer import Trainer
from vlm.errors import DataError
from vlm.io import write_text
from vlm.models.tasks import model_class
from downstream.data import BUILTIN, ClassifyData, VQAData, read_classification, read_vqa
from downstream.evaluate import evaluate
from downstream.modality import TransformedSource, transform_for
from downstream.vqa import AnswerVocab, write_results

logger = logging.getLogger(__name__)

TASKS = {"vqa": "vqa", "classify": "classification"}


@dataclass
class FinetuneData:
    """Where the examples and their region features come from."""

    train: str = ""  # "" → built-in (vqa: easy-vqa, classify: easy-vqa-statements); or files (see vlm finetune -h)
    eval: str = ""  # held-out examples ("" with built-in data: its test split; else no evaluation)
    features: str = ""  # feature store of the training images ("" with built-in data: extracted on first use)
    eval_features: str = ""  # feature store of the held-out images ("": same as features, or built-in)
    cache_dir: str = ""  # where built-in features are extracted ("": ~/.cache/vlm, set by the CLI)
    backend: str = "auto"  # extraction backend of built-in features
    max_text_len: int = 40  # tokens per text, [CLS]/[SEP] included
    answer_min_count: int = 1  # VQA: answers seen fewer times in training are left out of the table
    soft_score_rule: str = "lxmert"  # VQA v2 targets: "lxmert" min(1, 0.3 × count) or "official" min(1, count / 3)
    train_limit: int = 0  # use only the first N training examples (0: all)
    eval_limit: int = 0  # evaluate on the first N held-out examples (0: all)


@dataclass
class FinetuneConfig:
    """A fine-tuning run."""

    task: str = "vqa"  # "vqa" (answer head, soft-score BCE) or "classify" ([CLS] classifier, cross-entropy)
    modality: str = "fused"  # "fused"; "text" or "image" trains and evaluates a unimodal baseline (downstream.modality)
    init: str = "lxmert-mini"  # a model preset, or a checkpoint folder (e.g. runs/pretrain-lxmert/model)
    model: dict = field(default_factory=dict)  # model config overrides (e.g. hidden_dropout_prob: 0.1)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: FinetuneData = field(default_factory=FinetuneData)

    def to_yaml(self) -> str:
        return yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(self))), sort_keys=False)


def load_finetune_config(config: str | None = None, task: str | None = None, arch: str | None = None,
                         overrides: list[str] | None = None) -> FinetuneConfig:
    """Preset ``configs/finetune/<name>.yaml`` (default ``<arch>-<task>``) or a YAML file, then dotted overrides."""
    name = config or f"{arch or 'lxmert'}-{task or 'vqa'}"
    path = Path(name)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = vlm.config.presets_dir() / "finetune" / f"{name}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in (vlm.config.presets_dir() / "finetune").glob("*.yaml"))
            raise ConfigError(f"unknown fine-tuning config {name!r}: not a YAML file and not a preset "
                              f"({', '.join(known)})")
    cfg = FinetuneConfig()
    try:
        _apply(cfg, load_yaml(path))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    for o in overrides or []:
        _apply(cfg, override_dict(o))
    if task and cfg.task != task:
        raise ConfigError(f"--task {task}: the config {path} is for task {cfg.task!r}")
    if cfg.task not in TASKS:
        raise ConfigError(f"task: expected 'vqa' or 'classify', got {cfg.task!r}")
    if arch:
        init_arch = _init_arch(cfg.init)
        if init_arch != arch:
            raise ConfigError(f"--arch {arch}: the model to fine-tune ({cfg.init}) is {init_arch!r}")
    cfg.train.validate()
    return cfg


def _init_arch(init: str) -> str:
    path = Path(init)
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text())["model"]["arch"]
    return model_config(init).arch


def _apply(cfg: FinetuneConfig, values: dict[str, Any]) -> None:
    values = dict(values)
    if "model" in values:
        m = values.pop("model")
        if not isinstance(m, dict):
            raise ConfigError(f"model: expected a mapping of model config fields, got {m!r}")
        apply_dict(ModelConfig(), m, prefix="model.")
        cfg.model.update(m)
    apply_dict(cfg, values)


# ---------------------------------------------------------------------------------------------------------------------


def build_model(init: str, task: str, overrides: dict[str, Any], answers: AnswerVocab | None = None) -> vlm.VLMModel:
    """A task model from a preset or a checkpoint folder (encoder copied; VQA answer rows carried over by answer)."""
    path = Path(init)
    if not (path / "config.json").is_file():
        if path.exists() or "/" in init:
            raise DataError(f"--init {init}: not a checkpoint folder (no config.json) and not a model preset")
        return vlm.create_model(init, task=task, **overrides)
    src = vlm.from_pretrained(path)
    cfg = dataclasses.replace(src.config)
    text_init = overrides.pop("text_init", None)  # the checkpoint already has its text side
    if text_init:
        logger.info("ignoring text_init=%s: the text side comes from %s", text_init, path)
    apply_dict(cfg, {**overrides, "text_init": None}, prefix="model.")
    model = model_class(task)(cfg)
    model.encoder.load_state_dict(src.encoder.state_dict())
    head = getattr(src, "answer", None)
    if task == "vqa" and head is not None and (path / "answers.json").is_file() and answers is not None:
        old = json.loads((path / "answers.json").read_text())
        model.answer.fc1.load_state_dict(head.fc1.state_dict())
        model.answer.norm.load_state_dict(head.norm.state_dict())
        carried = 0
        with torch.no_grad():
            for j, a in enumerate(old):
                i = answers.encode(a)
                if i is not None and j < head.fc2.out_features:
                    model.answer.fc2.weight[i] = head.fc2.weight[j]
                    model.answer.fc2.bias[i] = head.fc2.bias[j]
                    carried += 1
        logger.warning("answer head: %d of %d answers carried over from the pretraining QA head of %s", carried,
                       len(answers), path)
    return model


def _store_for(split: str, spec: str, folder: str, builtin: bool, d: FinetuneData, dist: D.DistInfo) -> Path:
    from pretraining.run import builtin_store

    if folder:
        return Path(folder)
    if builtin:
        return builtin_store(split, d.cache_dir or str(Path.home() / ".cache" / "vlm"), d.backend, dist)
    raise DataError(f"data.features: a feature store folder is needed for {spec} (vlm extract makes one)")


def _features_info(store: Any) -> dict[str, Any]:
    m = getattr(store, "manifest", {}) or {}
    return {k: m.get(k) for k in ("backend", "extractor", "settings", "feature_dim", "num_regions") if k in m}


class FinetuneRun:
    """A fine-tuning run assembled from its config (``finetune()`` is ``FinetuneRun(cfg).run()``)."""

    def __init__(self, cfg: FinetuneConfig, *, out_dir: str | Path | None = None, dist: D.DistInfo = D.DistInfo(),
                 show_progress: bool = True) -> None:
        from features.store import FeatureStore
        from pretraining.run import _device

        self.cfg, self.dist = cfg, dist
        self.run_dir = Path(out_dir or cfg.train.out_dir)
        cfg.train.out_dir = str(self.run_dir)
        self.device = _device(cfg.train.device, dist)
        D.setup(dist, self.device)
        d = cfg.data
        builtin = not d.train
        spec = d.train or BUILTIN[cfg.task]
        eval_spec = d.eval or (BUILTIN[cfg.task] if builtin else "")
        tok = vlm.load_tokenizer()
        self.train_store = FeatureStore(_store_for("train", spec, d.features, builtin, d, dist))
        eval_store = None
        if eval_spec and d.eval_features:
            eval_store = FeatureStore(d.eval_features)
        elif eval_spec and builtin and not d.features:  # built-in data: its test split's built-in features
            eval_store = FeatureStore(_store_for("test", eval_spec, "", True, d, dist))
        elif eval_spec:
            eval_store = self.train_store
        overrides = dict(cfg.model, visual_feat_dim=self.train_store.feature_dim)
        if cfg.task == "vqa":
            train_ex = read_vqa(spec, "train")
            if d.train_limit:
                train_ex = train_ex[:d.train_limit]
            answers = [a for e in train_ex for a in (e.answers or (list(e.label) if e.label else []))]
            self.vocab = AnswerVocab.build(answers, d.answer_min_count)
            self.train_data = VQAData(train_ex, self.train_store, tok, self.vocab, d.max_text_len,
                                      d.soft_score_rule, name="train")
            self.eval_data = None
            if eval_spec:
                ev = read_vqa(eval_spec, "test")[:d.eval_limit or None]
                self.eval_data = VQAData(ev, eval_store, tok, self.vocab, d.max_text_len, d.soft_score_rule,
                                         name="eval", with_targets=False)
            overrides["num_answers"] = len(self.vocab)
            self.classes = None
        else:
            train_ex = read_classification(spec, "train")
            if d.train_limit:
                train_ex = train_ex[:d.train_limit]
            n_labels = 1 + max(e.label for e in train_ex if e.label is not None)
            self.classes = n_labels
            self.train_data = ClassifyData(train_ex, self.train_store, tok, max(2, n_labels), d.max_text_len,
                                           name="train")
            self.eval_data = None
            if eval_spec:
                ev = read_classification(eval_spec, "test")[:d.eval_limit or None]
                self.eval_data = ClassifyData(ev, eval_store, tok, max(2, n_labels), d.max_text_len, name="eval")
            overrides["num_labels"] = max(2, n_labels)
            self.vocab = None
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.init, TASKS[cfg.task], overrides, self.vocab)
        self.transform = transform_for(cfg.modality)
        source = self.train_data if self.transform is None else TransformedSource(self.train_data, self.transform)

        self._last_eval: tuple[int, dict, dict] | None = None  # (step, metrics, predictions) of the latest eval

        def evaluate_fn(model: torch.nn.Module) -> dict[str, float]:
            metrics, preds = evaluate(model, self.eval_data, cfg.train.batch_size * 2, self.device,
                                      cfg.train.precision, dist, self.transform)
            self._last_eval = (self.trainer.step, metrics, preds)
            return _flat(metrics)

        self.trainer = Trainer(self.model, source, cfg.train, save_model=self.model, run_dir=self.run_dir,
                               dist=dist, device=self.device,
                               evaluate=evaluate_fn if self.eval_data is not None else None,
                               run_config_yaml=cfg.to_yaml(), keep_last=cfg.train.keep_last,
                               show_progress=show_progress)

    def run(self, resume: str | bool | None = None) -> dict[str, Any]:
        result = self.trainer.train(resume=resume)
        summary: dict[str, Any] = {"task": self.cfg.task, "modality": self.cfg.modality,
                                   "arch": self.model.config.arch, "init": self.cfg.init,
                                   "run_dir": str(self.run_dir), "train": dataclasses.asdict(self.train_data.report),
                                   **result}
        if self.dist.is_main:
            final = self.run_dir / "model"
            save_model_folder(self.model, final, self.vocab, self.classes, _features_info(self.train_store))
            summary["model"] = str(final)
        if self.eval_data is not None:
            if self._last_eval is not None and self._last_eval[0] == self.trainer.step:
                _, metrics, preds = self._last_eval  # the trainer evaluated the final weights already
            else:
                metrics, preds = evaluate(self.model, self.eval_data, self.cfg.train.batch_size * 2, self.device,
                                          self.cfg.train.precision, self.dist, self.transform)
            summary["metrics"] = metrics
            if self.dist.is_main:
                write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
                write_predictions(preds, self.run_dir / "predictions.json", self.cfg.task)
        if self.dist.is_main:
            write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
        return summary


def save_model_folder(model: vlm.VLMModel, folder: Path, vocab: AnswerVocab | None, classes: int | None,
                      features_info: dict[str, Any]) -> None:
    model.save_pretrained(folder)
    if vocab is not None:
        write_text(folder / "answers.json", json.dumps(vocab.answers) + "\n")
    if classes is not None:
        write_text(folder / "classes.json", json.dumps(list(range(max(2, classes)))) + "\n")
    write_text(folder / "features.json", json.dumps(features_info, indent=2, default=str) + "\n")


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


def finetune(cfg: FinetuneConfig, *, out_dir: str | Path | None = None, resume: str | bool | None = None,
             dist: D.DistInfo = D.DistInfo(), show_progress: bool = True) -> dict[str, Any]:
    """Fine-tune and return the summary (also ``<out>/summary.json``, ``metrics.json``, ``predictions.json``)."""
    return FinetuneRun(cfg, out_dir=out_dir, dist=dist, show_progress=show_progress).run(resume)


def load_eval_data(checkpoint: str | Path, *, split: str = "test", data: str | None = None,
                   features: str | None = None, cache_dir: str = "",
                   limit: int | None = None) -> tuple[vlm.VLMModel, Any, str, Any]:
    """A fine-tuned model folder and the examples to evaluate it on: ``(model, dataset, data spec, run config)``.

    Without ``data`` it uses the held-out data of the run the folder belongs to (``../config.yaml``), or the built-in
    data of its task.
    """
    from features.store import FeatureStore
    from pretraining.run import builtin_store

    folder = Path(checkpoint)
    model = vlm.from_pretrained(folder)
    if model.task not in ("vqa", "classification"):
        raise DataError(f"{folder}: a {model.task!r} checkpoint; a fine-tuned vqa or classification model folder "
                        "is needed")
    task = "vqa" if model.task == "vqa" else "classify"
    run_cfg = None
    if (folder.parent / "config.yaml").is_file():
        try:
            run_cfg = FinetuneConfig()
            _apply(run_cfg, load_yaml(folder.parent / "config.yaml"))
        except ConfigError:
            run_cfg = None
    spec = data or (run_cfg and (run_cfg.data.eval or run_cfg.data.train)) or BUILTIN[task]
    store_dir = features or (run_cfg and not data and (run_cfg.data.eval_features or run_cfg.data.features)) or ""
    if not store_dir:
        if spec != BUILTIN[task]:
            raise DataError(f"--features: a feature store folder is needed for {spec}")
        store_dir = builtin_store(split, cache_dir or str(Path.home() / ".cache" / "vlm"),
                                  run_cfg.data.backend if run_cfg else "auto", D.DistInfo())
    store = FeatureStore(store_dir)
    tok = vlm.load_tokenizer()
    max_len = run_cfg.data.max_text_len if run_cfg else 40
    if limit is None and run_cfg and not data:  # the run's own held-out set
        limit = run_cfg.data.eval_limit or None
    if task == "vqa":
        vocab = AnswerVocab(json.loads((folder / "answers.json").read_text()))
        dataset: Any = VQAData(read_vqa(spec, split)[:limit], store, tok, vocab, max_len, name=str(spec),
                               with_targets=False)
    else:
        dataset = ClassifyData(read_classification(spec, split)[:limit], store, tok, model.config.num_labels, max_len,
                               name=str(spec))
    return model, dataset, spec, run_cfg


def evaluate_checkpoint(checkpoint: str | Path, *, split: str = "test", data: str | None = None,
                        features: str | None = None, cache_dir: str = "", batch_size: int = 128,
                        out: str | Path | None = None, device: str = "auto") -> dict[str, Any]:
    """Evaluate a fine-tuned model folder (``vlm evaluate``); returns ``{"metrics", "path", "data", "split"}`` and
    writes the metrics (``<checkpoint>/eval-<split>.json`` by default) and the predictions beside them."""
    from pretraining.run import _device

    folder = Path(checkpoint)
    model, dataset, spec, run_cfg = load_eval_data(folder, split=split, data=data, features=features,
                                                   cache_dir=cache_dir)
    transform = transform_for(run_cfg.modality if run_cfg else "fused")
    dev = _device(device, D.DistInfo())
    model.to(dev)
    metrics, preds = evaluate(model, dataset, batch_size, dev, transform=transform)
    path = Path(out) if out else folder / f"eval-{split}.json"
    write_text(path, json.dumps({"data": spec, "split": split, "metrics": metrics}, indent=2) + "\n")
    write_predictions(preds, path.with_name(path.stem + "-predictions.json"), "vqa" if model.task == "vqa"
                      else "classify")
    return {"metrics": metrics, "path": str(path), "data": spec, "split": split}
