"""How much does each modality contribute? ``vlm ablate``: a fused model evaluated fused / text-only / image-only
(test-time removal, as volta's cross-modal ablations), optional unimodal baselines trained with the modality absent
from the start (as MMF's image-only and text-only baselines), reference rows from the training data alone, and the
ceilings computed from the test data itself. Writes ``results.json``, ``results.csv``, ``results.md`` and
``ablation.png`` into the run folder.

Rows (all in percent, overall and per question/answer type or statement type):

* ``fused``, ``text-only (test-time)``, ``image-only (test-time)``: the fused model with a modality removed by
  :mod:`downstream.modality`;
* ``text-only (trained)``, ``image-only (trained)``: the same architecture trained and evaluated without the modality
  (same config and budget as the fused model);
* ``majority answer (train)``: the most frequent training answer/label, predicted for everything;
* ``text lookup (train)``: the majority training answer of each normalised text (unseen texts: the majority answer);
* ceilings, computed from the test split itself: ``best text-only (ceiling)`` — the majority answer of each normalised
  test text; ``best image-only (ceiling)`` — the majority answer of each test image. No model that sees one modality
  can beat its ceiling; a number above it means information leaks.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from downstream.classification import classification_metrics
from downstream.data import ClassifyData, VQAData
from downstream.evaluate import evaluate, vqa_metrics
from downstream.evaluate_model import load_eval_data
from downstream.finetune import FinetuneConfig, finetune, load_finetune_config
from downstream.modality import image_only, text_only
from features.builtin import default_cache_dir
from pretraining.run import PretrainConfig, load_pretrain_config, pretrain
from vlm.data.builtin import is_builtin
from vlm.data.readers import read_classification, read_vqa
from vlm.data.vqa import normalize_answer
from vlm.engine import distributed as D
from vlm.errors import DataError
from vlm.io import atomic_write, write_text
from vlm.models.folder import arch_of, describe, is_model_folder, model_task

logger = logging.getLogger(__name__)

REFERENCE_ROWS = ("majority answer (train)", "text lookup (train)")


def _norm_text(text: str) -> str:
    return " ".join(text.lower().replace("?", " ").replace(".", " ").split())


def _gold(example: Any) -> Any:
    """The single best answer of a VQA example (or the label of a classification example)."""
    if hasattr(example, "question"):
        if example.multiple_choice_answer:
            return normalize_answer(example.multiple_choice_answer)
        if example.answers:
            return Counter(normalize_answer(a) for a in example.answers).most_common(1)[0][0]
        return max(example.label.items(), key=lambda kv: kv[1])[0] if example.label else None
    return example.label


def _text(example: Any) -> str:
    return _norm_text(example.question if hasattr(example, "question") else example.text)


def _majority(values: list[Any]) -> Any:
    counts = Counter(values)
    return min(counts, key=lambda v: (-counts[v], str(v)))  # ties: the smallest, so results are deterministic


def _ids(example: Any) -> Any:
    return example.question_id if hasattr(example, "question") else example.example_id


def reference_predictions(train: list[Any], test: list[Any]) -> dict[str, dict[Any, Any]]:
    """Predictions (id → answer or class) of the reference rows and ceilings, from the training/test data alone."""
    train_gold = [(_text(e), _gold(e)) for e in train if _gold(e) is not None]
    majority = _majority([g for _, g in train_gold])
    by_text: dict[str, list[Any]] = defaultdict(list)
    for t, g in train_gold:
        by_text[t].append(g)
    lookup = {t: _majority(gs) for t, gs in by_text.items()}
    test_text: dict[str, list[Any]] = defaultdict(list)
    test_image: dict[str, list[Any]] = defaultdict(list)
    for e in test:
        g = _gold(e)
        if g is not None:
            test_text[_text(e)].append(g)
            test_image[e.image_id].append(g)
    best_text = {t: _majority(gs) for t, gs in test_text.items()}
    best_image = {i: _majority(gs) for i, gs in test_image.items()}
    return {
        "majority answer (train)": {_ids(e): majority for e in test},
        "text lookup (train)": {_ids(e): lookup.get(_text(e), majority) for e in test},
        "best text-only (ceiling)": {_ids(e): best_text.get(_text(e), majority) for e in test},
        "best image-only (ceiling)": {_ids(e): best_image.get(e.image_id, majority) for e in test},
    }


def score(predictions: dict[Any, Any], data: VQAData | ClassifyData) -> dict[str, Any]:
    """The data's own metric for a prediction table (answers for VQA, class ids for classification)."""
    if isinstance(data, VQAData):
        return vqa_metrics({k: str(v) for k, v in predictions.items()}, data)
    classes = data.labels.max() + 1 if len(data.labels) else 2
    probs = np.zeros((len(data.examples), max(2, int(classes))))
    for r, e in enumerate(data.examples):
        probs[r, int(predictions[e.example_id])] = 1.0
    return classification_metrics(data.labels, probs, [e.group for e in data.examples]
                                  if any(e.group for e in data.examples) else None)


def _row(condition: str, kind: str, metrics: dict[str, Any]) -> dict[str, Any]:
    overall = metrics.get("overall", metrics.get("accuracy"))
    types = metrics.get("per_answer_type") or metrics.get("per_group") or {}
    return {"condition": condition, "kind": kind, "overall": overall, "per_type": dict(types), "n": metrics.get("n")}


def check_checkpoint(checkpoint: str | Path, arch: str | None, task: str) -> None:
    """The model to ablate must be what the command says: ``--arch`` (when given) and a fine-tuned model of the task
    (``--task classify`` needs a classifier; ``vlm finetune --task classify --init`` makes one from a VQA model).

    Raises:
        DataError: one line naming the checkpoint, what it is and what the command asked for.
    """
    if not is_model_folder(checkpoint):
        raise DataError(f"--checkpoint {checkpoint}: not a model folder (no config.json)")
    info = describe(checkpoint)
    if arch and info.arch != arch:
        raise DataError(f"--arch {arch}: the checkpoint {checkpoint} is a {info.arch} model")
    wanted = model_task(task)
    if info.task != wanted:
        raise DataError(f"--task {task}: the checkpoint {checkpoint} is a {info.task} model; the model to ablate must "
                        f"already be a {wanted} model (vlm finetune --task {task} --init {checkpoint} makes one)")


def ablation_configs(*, arch: str | None = None, task: str | None = None, config: str | None = None,
                     checkpoint: str | None = None, init: str | None = None, no_pretrain: bool = False,
                     pretrain_config: str | None = None, data: str | None = None, eval_data: str | None = None,
                     features: str | None = None, eval_features: str | None = None, cache_dir: str = "",
                     overrides: Sequence[str] = ()) -> tuple[FinetuneConfig, PretrainConfig | None]:
    """The ablation's fine-tuning config and the pretraining config of its default pipeline (None: no pretraining).

    Without ``checkpoint``, the fused model is fine-tuned from ``cfg.init``. When that is only a model preset (not a
    checkpoint folder) and ``init`` was not given, the default pipeline pretrains first (``pretrain_config``, default
    the architecture's preset; ``pretrain.KEY=VALUE`` overrides it; ``model.*`` overrides apply to both runs).
    Pretraining reads the built-in easy-VQA texts, so it runs only for built-in data; other data fine-tune from the
    preset, with a warning.

    Args:
        overrides: ``KEY=VALUE`` for the fine-tuning config, ``pretrain.KEY=VALUE`` for the pretraining config.
        cache_dir: the built-in features' cache folder, unless a config sets one.
        Other arguments: the ``vlm ablate`` flags of the same names.
    """
    pre_overrides = [o[len("pretrain."):] for o in overrides if o.startswith("pretrain.")]
    ft_overrides = [o for o in overrides if not o.startswith("pretrain.")]
    for flag, key in ((data, "data.train"), (eval_data, "data.eval"), (features, "data.features"),
                      (eval_features, "data.eval_features"), (init, "init")):
        if flag is not None:
            ft_overrides.append(f"{key}={flag}")
    cfg = load_finetune_config(config, task, arch if checkpoint is None else None, ft_overrides, data=data)
    cfg.data.cache_dir = cfg.data.cache_dir or cache_dir
    if checkpoint is not None:
        check_checkpoint(checkpoint, arch, cfg.task)
    if checkpoint is not None or init is not None or no_pretrain or is_model_folder(cfg.init):
        return cfg, None
    if not is_builtin(cfg.train_spec()):
        logger.warning("no pretraining: the default pipeline pretrains on the built-in worlds' captions only; "
                       "fine-tuning %s from the preset %s (pretrain with `vlm pretrain` and pass --init to start "
                       "from it)", cfg.data.train, cfg.init)
        return cfg, None
    pre = [o for o in ft_overrides if o.startswith(("model.", "data.features=", "data.eval_features="))]
    # the built-in world's own pretraining preset (``<arch>-<world>``: its captions) when it has one
    pcfg = load_pretrain_config(pretrain_config, arch_of(cfg.init), pre + pre_overrides, data=cfg.train_spec())
    pcfg.data.cache_dir = pcfg.data.cache_dir or cfg.data.cache_dir
    return cfg, pcfg


def ablate(cfg: FinetuneConfig, *, out_dir: str | Path, checkpoint: str | Path | None = None,
           train_baselines: bool = False, dist: D.DistInfo = D.DistInfo(), show_progress: bool = True,
           batch_size: int = 128, pretrain_cfg: PretrainConfig | None = None, overwrite: bool = False
           ) -> dict[str, Any]:
    """Run the modality ablation and write its four files into ``out_dir``; returns the results dict.

    Args:
        cfg: the fine-tuning config of the fused model (and of the trained baselines: same config and budget).
        checkpoint: a fine-tuned model folder; without it the fused model is trained first with ``cfg``.
        train_baselines: also train and evaluate the text-only and image-only models.
        overwrite: replace runs already in ``out_dir`` (its ``pretrain``, ``fused``, ``text-only``, ``image-only``
            folders); without it such a folder is refused before any work.
        pretrain_cfg: a :class:`pretraining.run.PretrainConfig` (see :func:`ablation_configs`); only used without
            ``checkpoint``: the default
            pipeline, pretraining into ``<out>/pretrain`` first and fine-tuning the fused model (and the baselines)
            from its checkpoint.
    """
    out = Path(out_dir)
    cache = cfg.data.cache_dir
    fused_cfg = dataclasses.replace(cfg, modality="fused")
    if checkpoint is None and pretrain_cfg is not None:
        logger.warning("no --checkpoint: pretraining first (%s, %d steps) into %s", pretrain_cfg.preset,
                       pretrain_cfg.train.max_steps, out / "pretrain")
        if not pretrain_cfg.data.cache_dir:
            pretrain_cfg = dataclasses.replace(pretrain_cfg, data=dataclasses.replace(pretrain_cfg.data,
                                                                                    cache_dir=cache))
        summary = pretrain(pretrain_cfg, out_dir=out / "pretrain", overwrite=overwrite, dist=dist,
                           show_progress=show_progress)
        fused_cfg.init = str(summary.get("model") or out / "pretrain" / "model")
    if checkpoint is None:
        logger.warning("no --checkpoint: training the fused model first (%s, %s)", cfg.task, cfg.init)
        finetune(fused_cfg, out_dir=out / "fused", overwrite=overwrite, dist=dist, show_progress=show_progress)
        checkpoint = out / "fused" / "model"
    D.barrier()
    loaded, data, spec, run_cfg = load_eval_data(checkpoint, data=cfg.data.eval or None,
                                                 features=cfg.data.eval_features or None, cache_dir=cache,
                                                 limit=cfg.data.eval_limit or None,
                                                 allow_feature_mismatch=cfg.data.allow_feature_mismatch,
                                                 show_progress=show_progress and dist.is_main)
    device = D.resolve_device(cfg.train.device, dist)
    model = loaded.model.to(device)
    rows = []
    for name, transform in (("fused", None), ("text-only (test-time)", text_only),
                            ("image-only (test-time)", image_only)):
        metrics, _ = evaluate(model, data, batch_size, device, cfg.train.precision, dist, transform)
        rows.append(_row(name, "test-time" if transform else "model", metrics))
    if train_baselines:
        for modality, name in (("text", "text-only (trained)"), ("image", "image-only (trained)")):
            base_cfg = dataclasses.replace(run_cfg or fused_cfg, modality=modality)
            base_cfg.train = dataclasses.replace(base_cfg.train)
            base_cfg.data = dataclasses.replace(base_cfg.data, cache_dir=cache)
            summary = finetune(base_cfg, out_dir=out / f"{modality}-only", overwrite=overwrite, dist=dist,
                               show_progress=show_progress)
            rows.append(_row(name, "trained", summary["metrics"]))
    train_spec = (run_cfg or cfg).train_spec()
    cache_dir = cache or str(default_cache_dir())
    train = (read_vqa(train_spec, "train", cache_dir) if cfg.task == "vqa"
             else read_classification(train_spec, "train", cache_dir=cache_dir)[0])
    refs = reference_predictions(train, data.examples)
    for name, preds in refs.items():
        rows.append(_row(name, "reference" if name in REFERENCE_ROWS else "ceiling", score(preds, data)))
    result = {"task": cfg.task, "arch": model.config.arch, "checkpoint": str(checkpoint), "data": spec,
              "rows": rows}
    if dist.is_main:
        write_outputs(result, out)
    return result


# ------------------------------------------------------------------------------------------------------- outputs


def _types(rows: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        for t in r["per_type"]:
            if t not in seen:
                seen.append(t)
    return seen


def results_table(result: dict[str, Any]) -> str:
    """The Markdown table of ``results.md``."""
    rows = result["rows"]
    types = _types(rows)
    head = ["condition", "kind", "overall"] + types + ["n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["condition"], r["kind"], f"{r['overall']:.2f}"]
        cells += [f"{r['per_type'][t]:.2f}" if t in r["per_type"] else "" for t in types]
        cells.append(str(r["n"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(result: dict[str, Any], out: Path) -> None:
    """The result set: ``results.csv``, ``results.md``, ``ablation.png`` and, last, ``results.json``; each file is
    written aside and renamed into place, and ``results.json`` (written last) marks a complete set."""
    out.mkdir(parents=True, exist_ok=True)
    types = _types(result["rows"])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["condition", "kind", "overall", *types, "n"])
    for r in result["rows"]:
        w.writerow([r["condition"], r["kind"], f"{r['overall']:.4f}",
                    *[f"{r['per_type'][t]:.4f}" if t in r["per_type"] else "" for t in types], r["n"]])
    write_text(out / "results.csv", buf.getvalue())
    title = (f"Modality ablation: {result['arch']} on {result['data']} ({result['task']}), accuracy in %\n\n")
    write_text(out / "results.md", title + results_table(result) + "\n")
    plot(result, out / "ablation.png")
    write_text(out / "results.json", json.dumps(result, indent=2) + "\n")


def plot(result: dict[str, Any], path: Path) -> None:
    """Grouped bars (model conditions) per type, with reference rows and ceilings as dashed/dotted lines."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    rows = result["rows"]
    groups = ["overall"] + _types(rows)
    bars = [r for r in rows if r["kind"] in ("model", "test-time", "trained")]
    lines = [r for r in rows if r["kind"] in ("reference", "ceiling")]

    def value(r: dict[str, Any], g: str) -> float:
        return r["overall"] if g == "overall" else r["per_type"].get(g, np.nan)

    fig = Figure(figsize=(max(8, 1.9 * len(groups) + 3), 5.2))  # no pyplot: the caller's backend is left alone
    ax = fig.subplots()
    width = 0.8 / max(1, len(bars))
    colours = colormaps["tab10"].colors
    for i, r in enumerate(bars):
        xs = np.arange(len(groups)) - 0.4 + width * (i + 0.5)
        vals = [value(r, g) for g in groups]
        b = ax.bar(xs, vals, width, label=r["condition"], color=colours[i % 10])
        ax.bar_label(b, labels=[f"{v:.0f}" for v in vals], fontsize=7, padding=1)
    styles = {"majority answer (train)": ("grey", "--"), "text lookup (train)": ("black", "--"),
              "best text-only (ceiling)": ("tab:purple", ":"), "best image-only (ceiling)": ("tab:brown", ":")}
    for r in lines:
        colour, style = styles.get(r["condition"], ("black", "-."))
        for gi, g in enumerate(groups):
            ax.hlines(value(r, g), gi - 0.45, gi + 0.45, colors=colour, linestyles=style, linewidth=1.6,
                      label=r["condition"] if gi == 0 else None)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylim(0, 105)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"Modality ablation — {result['arch']} on {result['data']} ({result['task']})")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
