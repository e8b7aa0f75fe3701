"""The text reports the ``vlm`` command prints: pretraining and fine-tuning summaries, metrics, the preset table,
and what a model folder holds."""

from __future__ import annotations

from vlm.models.folder import ANSWERING_TASKS, FolderInfo, command_task
from vlm.models.tasks import architecture


def format_pretrain_summary(summary: dict) -> str:
    """The short report printed after ``vlm pretrain`` (and by ``make demo``)."""
    first, last = summary.get("first") or {}, summary.get("last") or {}
    lines = [f"pretrained {summary['preset']} ({summary['arch']}) for {summary['steps']} steps "
             f"({summary['epochs']:.2f} epochs, {summary['world_size']} process(es))",
             f"  data: {summary['train']['kept']} training texts over {summary['train']['images']} images"
             + (f"; {summary['train']['missing_image']} skipped (image not in the store)"
                if summary['train']['missing_image'] else "")]
    lines.append("  objective        loss at start   loss at end")
    for name in summary["objectives"]:
        if name in first:
            lines.append(f"  {name:<16}{first[name]:>13.4f}{last.get(name, float('nan')):>14.4f}")
    if summary.get("eval"):
        ev = summary["eval"][-1]
        accs = ", ".join(f"{k[5:-4]} {100 * v:.2f}%" if v == v else f"{k[5:-4]} (no scored pairs in the held-out texts)"
                         for k, v in ev.items() if k.endswith("_acc"))
        lines.append(f"  held-out accuracy at step {ev['step']}: {accs}")
    lines.append(f"  checkpoint: {summary.get('model') or summary.get('checkpoint')}  (vlm.from_pretrained loads it)")
    lines.append(f"  run folder: {summary['run_dir']} (config.yaml, metrics.jsonl, checkpoints/)")
    return "\n".join(lines)


def format_metrics(metrics: dict | None, title: str) -> str:
    lines = [title]
    if not metrics:
        return lines[0]
    main_key = "overall" if "overall" in metrics else "accuracy"
    lines.append(f"  {metrics.get('metric', '')}: {main_key} {metrics[main_key]:.2f}% over {metrics.get('n')} examples")
    for group in ("per_answer_type", "per_question_type", "per_group"):
        if metrics.get(group) and not (group == "per_question_type" and metrics.get("per_answer_type") ==
                                       metrics.get(group)):
            lines.append(f"  {group.replace('_', ' ')}: " + ", ".join(f"{k} {v:.2f}%" for k, v in
                                                                    metrics[group].items()))
    for k in ("macro_f1", "roc_auc"):
        if metrics.get(k) is not None:
            lines.append(f"  {k}: {metrics[k]:.2f}")
    return "\n".join(lines)


def format_finetune_summary(summary: dict) -> str:
    """The report printed after ``vlm finetune``: steps, which weights the model holds (the stopping rule's best, when
    there is one), then the metrics: validation and test when the run validated on held-out training images."""
    title = (f"fine-tuned {summary['arch']} ({summary['task']}) for {summary['steps']} steps; "
             f"model: {summary.get('model')}")
    best = summary.get("best")
    if best and best.get("step") is not None:
        where = "validation" if summary.get("validation") is not None else "held-out"
        title += (f"\n  kept: the weights of step {best['step']}, the best {where} {best['metric']} "
                  f"({best['value']:.4f})")
        if best.get("stopped_early_at") is not None:
            title += f"; stopped early at step {best['stopped_early_at']} (no improvement since)"
    if summary.get("validation") is not None:
        return "\n".join([title, format_metrics(summary["validation"], "validation (held-out training images):"),
                          format_metrics(summary.get("metrics"), "test:")])
    return format_metrics(summary.get("metrics"), title)


def models_table(rows: list[tuple[str, ...]]) -> str:
    """``vlm models``: one line per preset, columns aligned."""
    head = ("preset", "arch", "hidden", "layers", "region dim", "encoder params", "pretraining params")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + rows)


def format_folder(info: FolderInfo, num_parameters: int | None = None) -> str:
    """``vlm describe``: what a model folder holds, read without its weights."""
    cfg = info.config
    source = {"recorded": "recorded at training", "default": "not recorded: data.max_text_len's default"}.get(
        info.text_len_source, f"not recorded: from {info.text_len_source}")
    lines = [f"{info.path}",
             f"  task: {info.task} (vlm {command_task(info.task)})" if info.task in ANSWERING_TASKS
             else f"  task: {info.task}",
             f"  arch: {cfg.arch}, hidden {cfg.hidden_size}, layers {architecture(cfg.arch).depth(cfg)}, "
             f"region features {cfg.visual_feat_dim}-d"
             + (f", {num_parameters / 1e6:.1f}M parameters" if num_parameters is not None else ""),
             f"  text length: {info.max_text_len} tokens ({source})",
             f"  folder format: {info.format}"]
    if info.labels is not None:
        shown = ", ".join(info.labels[:8]) + (", ..." if len(info.labels) > 8 else "")
        lines.append(f"  labels: {len(info.labels)} ({shown})")
    if info.features:
        settings = info.features.get("settings") or {}
        lines.append(f"  features: {info.features.get('backend')} "
                     + " ".join(f"{k}={v}" for k, v in sorted(settings.items())))
    else:
        lines.append("  features: no record (features.json)")
    lines.append(f"  files: {', '.join(info.files)}")
    return "\n".join(lines)
