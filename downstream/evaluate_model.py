"""``vlm evaluate``: a fine-tuned model folder scored on its run's held-out data, or on data given, truncating texts
to the length the model was trained with (the folder records it)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from downstream.data import ClassifyData, VQAData
from downstream.evaluate import evaluate
from downstream.finetune import FinetuneConfig, write_predictions
from downstream.modality import transform_for
from downstream.stores import check_features, eval_store
from features.builtin import default_cache_dir
from vlm.config import ConfigError, load_run_config
from vlm.data.classification import ClassList
from vlm.data.readers import BUILTIN_TASK_DATA, read_classification, read_vqa
from vlm.data.vqa import AnswerVocab
from vlm.engine import distributed as D
from vlm.io import write_text
from vlm.models.folder import ANSWERING_TASKS, LoadedModel, command_task, load_model_folder
from vlm.tokenizer import load_tokenizer

logger = logging.getLogger(__name__)


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
                   allow_feature_mismatch: bool = False, show_progress: bool = True
                   ) -> tuple[LoadedModel, Any, str, FinetuneConfig | None]:
    """A fine-tuned model folder and the examples to evaluate it on: ``(loaded folder, dataset, data spec, run
    config)``.

    Without ``data`` it uses the held-out data of the run the folder belongs to (``../config.yaml``), or the built-in
    data of its task. The answer table, the class list and the text length come from the model folder, never from
    the data or the run config; features made another way than the model's are refused unless
    ``allow_feature_mismatch``.
    """
    loaded = load_model_folder(checkpoint, tasks=ANSWERING_TASKS)
    folder, task = loaded.folder, command_task(loaded.task)
    run_cfg = read_run_config(folder)
    spec = data or (run_cfg and (run_cfg.data.eval or run_cfg.train_spec())) or BUILTIN_TASK_DATA[task]
    given = features or (run_cfg and not data and (run_cfg.data.eval_features or run_cfg.data.features)) or ""
    store = eval_store(spec, split=split, features=given, cache_dir=cache_dir,
                       backend=run_cfg.data.backend if run_cfg else "auto", show_progress=show_progress)
    check_features(folder, store, allow=allow_feature_mismatch)
    tok = load_tokenizer()
    if limit is None and run_cfg and not data:  # the run's own held-out set
        limit = run_cfg.data.eval_limit or None
    if task == "vqa":
        vocab = AnswerVocab(loaded.labels)
        dataset: Any = VQAData(read_vqa(spec, split, cache_dir or str(default_cache_dir()))[:limit], store, tok, vocab, loaded.max_text_len, name=str(spec),
                               with_targets=False)
    else:
        classes = ClassList(loaded.labels) if loaded.info.labels is not None else None
        examples, _ = read_classification(spec, split, classes, cache_dir or str(default_cache_dir()))
        dataset = ClassifyData(examples[:limit], store, tok, loaded.model.config.num_labels, loaded.max_text_len,
                               name=str(spec))
    return loaded, dataset, spec, run_cfg


def evaluate_checkpoint(checkpoint: str | Path, *, split: str = "test", data: str | None = None,
                        features: str | None = None, cache_dir: str = "", batch_size: int = 128,
                        out: str | Path | None = None, device: str = "auto",
                        allow_feature_mismatch: bool = False, precision: str = "auto", show_progress: bool = True
                        ) -> dict[str, Any]:
    """Evaluate a fine-tuned model folder (``vlm evaluate``); returns ``{"metrics", "path", "data", "split"}`` and
    writes the metrics (``<checkpoint>/eval-<split>.json`` by default) and the predictions beside them. ``precision``
    is the autocast of the forward passes (``auto``: bf16 where the device runs it natively), as in ``vlm predict``
    and ``vlm serve``."""
    folder = Path(checkpoint)
    loaded, dataset, spec, run_cfg = load_eval_data(folder, split=split, data=data, features=features,
                                                    cache_dir=cache_dir, allow_feature_mismatch=allow_feature_mismatch,
                                                    show_progress=show_progress)
    transform = transform_for(run_cfg.modality if run_cfg else "fused")
    dev = D.resolve_device(device, D.DistInfo())
    model = loaded.model.to(dev)
    metrics, preds = evaluate(model, dataset, batch_size, dev, precision, transform=transform)
    path = Path(out) if out else folder / f"eval-{split}.json"
    report = dataclasses.asdict(dataset.report)  # counted skips and truncations of the evaluated texts
    write_text(path, json.dumps({"data": spec, "split": split, "metrics": metrics, "data_report": report},
                                indent=2) + "\n")
    write_predictions(preds, path.with_name(path.stem + "-predictions.json"), command_task(loaded.task))
    return {"metrics": metrics, "path": str(path), "data": spec, "split": split, "data_report": report}
