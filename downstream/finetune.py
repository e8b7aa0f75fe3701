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

import vlm
from features.builtin import resolve_stores
from features.store import FeatureStore, extraction_record, record_differences
from vlm.config import (ConfigError, DataConfig, TrainConfig, apply_dict, choice, load_run_config, model_config,
                        run_config_yaml)
from vlm.data.classification import ClassList, check_training_labels
from vlm.data.easy_vqa import is_builtin
from vlm.data.readers import BUILTIN_TASK_DATA, read_classification, read_vqa
from vlm.data.split import split_holdout
from vlm.data.vqa import AnswerVocab, example_answers
from vlm.engine import distributed as D
from vlm.engine.trainer import Trainer
from vlm.errors import DataError
from vlm.engine.checkpoint import prepare_run_dir
from vlm.io import published_dir, read_json, write_text
from vlm.models.tasks import model_class
from downstream.data import ClassifyData, VQAData
from downstream.evaluate import evaluate
from downstream.modality import MODALITIES, TransformedSource, transform_for
from downstream.vqa import write_results

logger = logging.getLogger(__name__)

#: Fine-tuning task name → model task.
TASKS = {"vqa": "vqa", "classify": "classification"}


@dataclass
class FinetuneDataConfig(DataConfig):
    """Where the examples come from, on top of the shared data fields (stores, text length, answer rule, limits)."""

    train: str = ""  # "" → the task's built-in data (vqa: easy-vqa, classify: easy-vqa-statements); or files
    eval: str = ""  # held-out examples ("" with built-in data: its test split; else no evaluation)


@dataclass
class FinetuneConfig:
    """A fine-tuning run."""

    task: str = choice("vqa", TASKS)  # "vqa" (answer head, soft-score BCE) or "classify" ([CLS] classifier, CE)
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
                         overrides: list[str] | None = None) -> FinetuneConfig:
    """Preset ``configs/finetune/<name>.yaml`` (default ``<arch>-<task>``) or a YAML file, then dotted overrides."""
    name = config or f"{arch or 'lxmert'}-{task or 'vqa'}"
    cfg = load_run_config(FinetuneConfig, "finetune", name, overrides or [])
    cfg.init = resolve_init(cfg.init)
    if task and cfg.task != task:
        raise ConfigError(f"--task {task}: the config {name} is for task {cfg.task!r}")
    if arch:
        found = init_arch(cfg.init)
        if found != arch:
            raise ConfigError(f"--arch {arch}: the model to fine-tune ({cfg.init}) is {found!r}")
    return cfg


def resolve_init(init: str) -> str:
    """A model to start from: a preset name or a model folder as given; a run folder (``config.yaml`` and ``model/``
    but no ``config.json``) is taken as its ``model/`` folder, with a note."""
    path = Path(init)
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        logger.warning("--init %s is a run folder: starting from its model, %s", init, path / "model")
        return str(path / "model")
    return init


def init_arch(init: str) -> str:
    """The architecture of a model preset or checkpoint folder."""
    path = Path(init)
    if (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text())["model"]["arch"]
    return model_config(init).arch


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
    if task == "vqa" and getattr(src, "answer", None) is not None and (path / "answers.json").is_file() \
            and answers is not None:
        carried = src.resize_answer_head(answers.answers, AnswerVocab.load(path / "answers.json").answers)
        model.answer.load_state_dict(src.answer.state_dict())
        logger.warning("answer head: %d of %d answers carried over from the QA head of %s", carried, len(answers),
                       path)
    return model


def features_info(store: Any) -> dict[str, Any]:
    """How a store's features were made (backend, settings, width, regions, weights): ``features.json`` of a model."""
    return extraction_record(getattr(store, "manifest", {}) or {})


def check_features(folder: str | Path, store: Any, *, allow: bool = False, flag: str = "--allow-feature-mismatch"
                   ) -> None:
    """Refuse features made another way than the model in ``folder`` was trained on (one line naming the differing
    settings); ``allow`` turns the refusal into a warning. A folder without a record (older checkpoints) is warned
    about, not refused.

    Raises:
        DataError: the store's extraction differs from the model folder's ``features.json``.
    """
    path = Path(folder) / "features.json"
    where = getattr(store, "directory", store)
    if not path.is_file():
        logger.warning("%s has no features.json (an older checkpoint): cannot check that the features in %s are "
                       "made the way it was trained on", folder, where)
        return
    diffs = record_differences(read_json(path), features_info(store))
    if not diffs:
        return
    message = (f"the features in {where} are made another way than {folder} was trained on: {'; '.join(diffs)} "
               f"(model vs store)")
    if not allow:
        raise DataError(f"{message}; extract them with the model's settings ({path}) or pass {flag}")
    logger.warning("%s (%s given)", message, flag)


class FinetuneRun:
    """A fine-tuning run assembled from its config (``finetune()`` starts the run, then ``FinetuneRun(...).run()``).

    The device comes resolved and the process group and seed are set up by the caller (:func:`finetune`), once.
    """

    def __init__(self, cfg: FinetuneConfig, *, device: torch.device, out_dir: str | Path | None = None,
                 dist: D.DistInfo = D.DistInfo(), show_progress: bool = True) -> None:
        self.cfg, self.dist, self.device = cfg, dist, device
        self.run_dir = Path(out_dir or cfg.train.out_dir)
        cfg.train.out_dir = str(self.run_dir)
        d = cfg.data
        spec, eval_spec = cfg.train_spec(), cfg.eval_spec()
        if d.holdout_images:  # validation: training images held out replace the held-out data
            eval_spec = ""
        tok = vlm.load_tokenizer()
        train_dir, eval_dir = resolve_stores(
            train_builtin=is_builtin(spec), eval_builtin=is_builtin(eval_spec), features=d.features,
            eval_features=d.eval_features, cache_dir=d.cache_dir, backend=d.backend, need_eval=bool(eval_spec),
            what=spec, is_main=dist.is_main, barrier=D.barrier)
        self.train_store = FeatureStore(train_dir)
        eval_store = None
        if eval_dir is not None:
            eval_store = self.train_store if eval_dir == train_dir else FeatureStore(eval_dir)
        overrides = dict(cfg.model, visual_feat_dim=self.train_store.feature_dim)
        self.vocab: AnswerVocab | None = None
        self.classes: ClassList | None = None
        self.eval_data: VQAData | ClassifyData | None = None
        if cfg.task == "vqa":
            train_ex, ev = self._split(read_vqa(spec, "train"), spec)
            self.vocab = AnswerVocab.from_questions((example_answers(e) for e in train_ex), d.answer_min_count)
            self.train_data: VQAData | ClassifyData = VQAData(train_ex, self.train_store, tok, self.vocab,
                                                              d.max_text_len, d.soft_score_rule, name="train")
            if eval_spec:
                ev = read_vqa(eval_spec, "test")
            if ev:
                self.eval_data = VQAData(ev[:d.eval_limit or None], eval_store or self.train_store, tok, self.vocab,
                                         d.max_text_len, d.soft_score_rule, name="eval", with_targets=False)
            overrides["num_answers"] = len(self.vocab)
        else:
            all_train, self.classes = read_classification(spec, "train")
            train_ex, ev = self._split(all_train, spec)
            check_training_labels(train_ex, self.classes, spec)
            num_labels = max(2, len(self.classes))
            self.train_data = ClassifyData(train_ex, self.train_store, tok, num_labels, d.max_text_len, name="train")
            if eval_spec:
                ev, _ = read_classification(eval_spec, "test", self.classes)  # the training file's class ids
            if ev:
                self.eval_data = ClassifyData(ev[:d.eval_limit or None], eval_store or self.train_store, tok,
                                              num_labels, d.max_text_len, name="eval")
            overrides["num_labels"] = num_labels
        if (Path(cfg.init) / "config.json").is_file():  # a checkpoint: its features must be made the same way
            check_features(cfg.init, self.train_store, allow=d.allow_feature_mismatch,
                           flag="--allow-feature-mismatch (data.allow_feature_mismatch=true)")
        self.model = build_model(cfg.init, TASKS[cfg.task], overrides, self.vocab)  # from the run's seed
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

    def _split(self, examples: list, spec: str) -> tuple[list, list]:
        """``(training examples, validation examples)``: ``data.holdout_images`` images out of the training data
        (none without it), then ``data.train_limit``."""
        d = self.cfg.data
        held: list = []
        if d.holdout_images:
            examples, held = split_holdout(examples, d.holdout_images, spec)
        return examples[:d.train_limit or None], held

    def run(self, resume: str | bool | None = None) -> dict[str, Any]:
        result = self.trainer.train(resume=resume)
        summary: dict[str, Any] = {"task": self.cfg.task, "modality": self.cfg.modality,
                                   "arch": self.model.config.arch, "init": self.cfg.init,
                                   "run_dir": str(self.run_dir), "train": dataclasses.asdict(self.train_data.report),
                                   "eval_data": dataclasses.asdict(self.eval_data.report) if self.eval_data else None,
                                   **result}
        if self.dist.is_main:
            final = self.run_dir / "model"
            save_model_folder(self.model, final, self.vocab, self.classes, features_info(self.train_store))
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


def save_model_folder(model: vlm.VLMModel, folder: Path, vocab: AnswerVocab | None, classes: ClassList | None,
                      features: dict[str, Any]) -> None:
    """A fine-tuned model folder, published whole (written aside, then renamed into place): weights and config, the
    answer table (``answers.json``) or class list (``classes.json``), and how its features were made
    (``features.json``)."""
    with published_dir(folder) as tmp:
        model.save_pretrained(tmp)
        if vocab is not None:
            vocab.save(tmp / "answers.json")
        if classes is not None:
            classes.save(tmp / "classes.json")
        write_text(tmp / "features.json", json.dumps(features, indent=2, default=str) + "\n")


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
             overwrite: bool = False, dist: D.DistInfo = D.DistInfo(), show_progress: bool = True) -> dict[str, Any]:
    """Fine-tune and return the summary (also ``<out>/summary.json``, ``metrics.json``, ``predictions.json``).

    A run already in ``out_dir`` is refused unless ``resume`` (continue it) or ``overwrite`` (replace it).
    """
    device = D.start(dist, cfg.train.device, cfg.train.seed)  # device, process group and the seed: once, here
    prepare_run_dir(out_dir or cfg.train.out_dir, resume=resume, overwrite=overwrite, is_main=dist.is_main)
    D.barrier()
    return FinetuneRun(cfg, device=device, out_dir=out_dir, dist=dist, show_progress=show_progress).run(resume)


def read_run_config(folder: Path) -> FinetuneConfig | None:
    """The fine-tuning config of the run a model folder belongs to (``<folder>/../config.yaml``), or None when there
    is none or it does not load (then a warning says why)."""
    path = folder.parent / "config.yaml"
    if not path.is_file():
        return None
    try:
        return load_run_config(FinetuneConfig, "finetune", str(path))
    except ConfigError as e:
        logger.warning("%s: not used (%s)", path, e)
        return None


def load_eval_data(checkpoint: str | Path, *, split: str = "test", data: str | None = None,
                   features: str | None = None, cache_dir: str = "", limit: int | None = None,
                   allow_feature_mismatch: bool = False) -> tuple[vlm.VLMModel, Any, str, FinetuneConfig | None]:
    """A fine-tuned model folder and the examples to evaluate it on: ``(model, dataset, data spec, run config)``.

    Without ``data`` it uses the held-out data of the run the folder belongs to (``../config.yaml``), or the built-in
    data of its task. The answer table and the class list come from the model folder, never from the data; features
    made another way than the model's (``features.json``) are refused unless ``allow_feature_mismatch``.
    """
    folder = Path(checkpoint)
    model = vlm.from_pretrained(folder)
    if model.task not in ("vqa", "classification"):
        raise DataError(f"{folder}: a {model.task!r} checkpoint; a fine-tuned vqa or classification model folder "
                        "is needed")
    task = "vqa" if model.task == "vqa" else "classify"
    run_cfg = read_run_config(folder)
    spec = data or (run_cfg and (run_cfg.data.eval or run_cfg.train_spec())) or BUILTIN_TASK_DATA[task]
    given = features or (run_cfg and not data and (run_cfg.data.eval_features or run_cfg.data.features)) or ""
    _, store_dir = resolve_stores(train_builtin=False, eval_builtin=is_builtin(spec), eval_features=given,
                                  cache_dir=cache_dir, backend=run_cfg.data.backend if run_cfg else "auto",
                                  eval_split=split, need_train=False, what=spec)
    store = FeatureStore(store_dir)
    check_features(folder, store, allow=allow_feature_mismatch)
    tok = vlm.load_tokenizer()
    max_len = run_cfg.data.max_text_len if run_cfg else 40
    if limit is None and run_cfg and not data:  # the run's own held-out set
        limit = run_cfg.data.eval_limit or None
    if task == "vqa":
        vocab = AnswerVocab.load(folder / "answers.json")
        dataset: Any = VQAData(read_vqa(spec, split)[:limit], store, tok, vocab, max_len, name=str(spec),
                               with_targets=False)
    else:
        classes = ClassList.load(folder / "classes.json") if (folder / "classes.json").is_file() else None
        examples, _ = read_classification(spec, split, classes)
        dataset = ClassifyData(examples[:limit], store, tok, model.config.num_labels, max_len, name=str(spec))
    return model, dataset, spec, run_cfg


def evaluate_checkpoint(checkpoint: str | Path, *, split: str = "test", data: str | None = None,
                        features: str | None = None, cache_dir: str = "", batch_size: int = 128,
                        out: str | Path | None = None, device: str = "auto",
                        allow_feature_mismatch: bool = False) -> dict[str, Any]:
    """Evaluate a fine-tuned model folder (``vlm evaluate``); returns ``{"metrics", "path", "data", "split"}`` and
    writes the metrics (``<checkpoint>/eval-<split>.json`` by default) and the predictions beside them."""
    folder = Path(checkpoint)
    model, dataset, spec, run_cfg = load_eval_data(folder, split=split, data=data, features=features,
                                                   cache_dir=cache_dir, allow_feature_mismatch=allow_feature_mismatch)
    transform = transform_for(run_cfg.modality if run_cfg else "fused")
    dev = D.resolve_device(device, D.DistInfo())
    model.to(dev)
    metrics, preds = evaluate(model, dataset, batch_size, dev, transform=transform)
    path = Path(out) if out else folder / f"eval-{split}.json"
    report = dataclasses.asdict(dataset.report)  # counted skips and truncations of the evaluated texts
    write_text(path, json.dumps({"data": spec, "split": split, "metrics": metrics, "data_report": report},
                                indent=2) + "\n")
    write_predictions(preds, path.with_name(path.stem + "-predictions.json"), "vqa" if model.task == "vqa"
                      else "classify")
    return {"metrics": metrics, "path": str(path), "data": spec, "split": split, "data_report": report}
