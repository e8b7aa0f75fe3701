"""The ``vlm`` subcommands: each parses nothing itself and calls one Python function (that tests and notebooks call
too), then prints its report. :mod:`vlm.cli` builds the parser and dispatches here. Packages other than ``vlm`` are
imported lazily inside the command that needs them (DESIGN §1).
"""

from __future__ import annotations

import argparse
import logging


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    import vlm
    from vlm.models.tasks import architecture
    from vlm.reports import models_table

    rows = []
    overrides = strip(args.overrides)
    for name in vlm.list_models():
        with torch.device("meta"):  # no memory, no init: only the parameter counts
            enc = vlm.create_model(name, task="encoder", **overrides)
            pre = vlm.create_model(name, task="pretraining", **overrides)
        cfg = enc.config
        rows.append((name, cfg.arch, str(cfg.hidden_size), architecture(cfg.arch).depth(cfg), str(cfg.visual_feat_dim),
                     f"{enc.num_parameters() / 1e6:.1f}M", f"{pre.num_parameters() / 1e6:.1f}M"))
    print(models_table(rows))
    return 0


def cmd_describe(args: argparse.Namespace) -> int:
    from vlm.models.folder import count_parameters, describe
    from vlm.reports import format_folder

    info = describe(args.folder)
    print(format_folder(info, count_parameters(info)))
    return 0


def strip(overrides: list[str]) -> dict:
    from vlm.config import parse_override

    out = {}
    for o in overrides:
        k, v = parse_override(o)
        out[k.removeprefix("model.")] = v
    return out


def run_extract(argv: list[str]) -> int:
    from features.cli import extract_main

    return extract_main(argv)


def run_features(argv: list[str]) -> int:
    from features.cli import features_main

    return features_main(argv)


# Subcommands whose whole argument list belongs to another package's parser (argparse.REMAINDER cannot pass
# leading options through a subparser, so these are dispatched before parsing).
PASSTHROUGH = {"extract": run_extract, "features": run_features}


def cmd_demo(args: argparse.Namespace) -> int:
    from downstream.demo import run_demo

    return run_demo(args.num_images, args.out)


def cmd_pretrain(args: argparse.Namespace) -> int:
    import os

    from pretraining.run import load_pretrain_config, pretrain
    from vlm.engine.distributed import DistInfo
    from vlm.reports import format_pretrain_summary

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.texts={args.data}")
    if args.features:
        overrides.append(f"data.features={args.features}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    cfg = load_pretrain_config(args.config, args.arch, overrides, data=args.data)
    cfg.data.cache_dir = cfg.data.cache_dir or cache_dir()
    dist = DistInfo.from_env(os.environ)
    summary = pretrain(cfg, out_dir=args.out, resume=args.resume, overwrite=args.overwrite, dist=dist,
                       show_progress=not args.no_progress)
    if dist.is_main:
        print(format_pretrain_summary(summary))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    import os

    from downstream.finetune import finetune, load_finetune_config
    from vlm.engine.distributed import DistInfo
    from vlm.reports import format_finetune_summary

    overrides = list(args.overrides)
    for flag, key in ((args.init, "init"), (args.data, "data.train"), (args.eval_data, "data.eval"),
                      (args.features, "data.features"), (args.eval_features, "data.eval_features"),
                      (args.max_steps, "train.max_steps")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    if args.allow_feature_mismatch:
        overrides.append("data.allow_feature_mismatch=true")
    cfg = load_finetune_config(args.config, args.task, args.arch, overrides, data=args.data)
    cfg.data.cache_dir = cfg.data.cache_dir or cache_dir()
    dist = DistInfo.from_env(os.environ)
    summary = finetune(cfg, out_dir=args.out, resume=args.resume, overwrite=args.overwrite, dist=dist,
                       show_progress=not args.no_progress)
    if dist.is_main:
        print(format_finetune_summary(summary))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from downstream.evaluate_model import evaluate_checkpoint
    from vlm.reports import format_metrics

    out = evaluate_checkpoint(args.checkpoint, split=args.split, data=args.data, features=args.features,
                              cache_dir=cache_dir(), batch_size=args.batch_size, out=args.out,
                              allow_feature_mismatch=args.allow_feature_mismatch, precision=args.precision,
                              show_progress=not args.no_progress)
    print(format_metrics(out["metrics"], f"evaluated {args.checkpoint} on {out['data']} ({out['split']}); "
                         f"metrics: {out['path']}"))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from downstream.predict import predict

    out = predict(args.checkpoint, args.image, args.question, top_k=args.top_k, attention_png=args.attention,
                  precision=args.precision)
    print(f"Q: {args.question}")
    if out.get("truncated_to"):
        print(f"  (the question was truncated to the {out['truncated_to']} tokens the model was trained with)")
    for answer, score in out["answers"]:
        print(f"  {answer:<20} {score:.4f}")
    if args.attention:
        print(f"attention picture: {out['attention']}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from downstream.serve import ServeSettings, serve

    given = {"device": args.device, "precision": args.precision, "cache_size": args.cache_size,
             "max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms, "queue_size": args.queue_size,
             "max_pixels": args.max_pixels,
             "max_body_bytes": None if args.max_body_mb is None else int(args.max_body_mb * 1024 * 1024)}
    settings = ServeSettings(**{k: v for k, v in given.items() if v is not None})
    logging.getLogger("downstream.serve").setLevel(logging.INFO)  # the load and its time are worth a line
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"vlm serve: {args.checkpoint} at http://{host}:{args.port}/ (page), /docs (API), /v1/predict; "
          "Ctrl-C stops", flush=True)
    return serve(args.checkpoint, host=args.host, port=args.port, settings=settings,
                 log_level="info" if args.verbose else "warning")


def cmd_ablate(args: argparse.Namespace) -> int:
    import os

    from downstream.ablation import ablate, ablation_configs, results_table
    from vlm.engine.distributed import DistInfo
    from vlm.models.folder import arch_of

    cfg, pretrain_cfg = ablation_configs(
        arch=args.arch, task=args.task, config=args.config, checkpoint=args.checkpoint, init=args.init,
        no_pretrain=args.no_pretrain, pretrain_config=args.pretrain_config, data=args.data, eval_data=args.eval_data,
        features=args.features, eval_features=args.eval_features, cache_dir=str(cache_dir()),
        overrides=args.overrides + (["data.allow_feature_mismatch=true"] if args.allow_feature_mismatch else []))
    dist = DistInfo.from_env(os.environ)
    arch = args.arch or arch_of(args.checkpoint or cfg.init)
    out = args.out or f"runs/ablate-{arch}-{cfg.task}"
    result = ablate(cfg, out_dir=out, checkpoint=args.checkpoint, train_baselines=args.train_baselines, dist=dist,
                    show_progress=not args.no_progress, pretrain_cfg=pretrain_cfg, overwrite=args.overwrite)
    if dist.is_main:
        print(results_table(result))
        print(f"plot: {os.path.join(out, 'ablation.png')}  (results.json, results.csv, results.md beside it)")
    return 0


def cache_dir() -> str:
    """The built-in features' cache folder: the command line is the one place that reads ``VLM_CACHE``."""
    import os

    from features.builtin import default_cache_dir

    return str(default_cache_dir(os.environ))
