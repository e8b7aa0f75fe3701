"""The ``vlm`` command: one entry point, one subcommand per job, each a thin layer over a Python function.

``main(argv)`` takes the argument list so tests and notebooks call it in-process. Packages other than ``vlm`` are
imported lazily inside the subcommand that needs them (DESIGN §1).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Callable

from features.errors import FeaturesError, one_line
from vlm.errors import VLMError

logger = logging.getLogger(__name__)

EPILOG = """\
examples:
  vlm models                                   list model presets with parameter counts
  vlm extract --source easy-vqa:train --backend patches --out feats/train
  vlm features inspect feats/train             summary + checksum of every shard
  vlm pretrain --arch lxmert                   pretrain LXMERT-mini on easy-VQA (built-in features, offline)
  torchrun --nproc_per_node 2 -m vlm.cli pretrain --arch vilbert train.batch_size=32
  vlm pretrain --arch lxmert --resume          continue the run in --out from its newest checkpoint
  vlm demo                                     pretrain quickly, then summarise (make demo)

Model options are dotted overrides (model.x_layers=3); an unknown key is an error naming the allowed ones.
"""


def _cmd_models(args: argparse.Namespace) -> int:
    import vlm

    rows = []
    overrides = _strip(args.overrides)
    for name in vlm.list_models():
        with _meta_device():
            enc = vlm.create_model(name, task="encoder", **overrides)
            pre = vlm.create_model(name, task="pretraining", **overrides)
        cfg = enc.config
        layers = (f"{cfg.l_layers}L/{cfg.r_layers}R/{cfg.x_layers}X" if cfg.arch == "lxmert"
                  else f"{cfg.num_layers}")
        rows.append((name, cfg.arch, str(cfg.hidden_size), layers, str(cfg.visual_feat_dim),
                     f"{enc.num_parameters() / 1e6:.1f}M", f"{pre.num_parameters() / 1e6:.1f}M"))
    head = ("preset", "arch", "hidden", "layers", "region dim", "encoder params", "pretraining params")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _strip(overrides: list[str]) -> dict:
    from vlm.config import parse_override

    out = {}
    for o in overrides:
        k, v = parse_override(o)
        out[k.removeprefix("model.")] = v
    return out


class _meta_device:
    """Build models on the meta device (no memory, no init) just to count parameters."""

    def __enter__(self):
        import torch

        self._ctx = torch.device("meta")
        self._ctx.__enter__()

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def _run_extract(argv: list[str]) -> int:
    from features.cli import extract_main

    return extract_main(argv)


def _run_features(argv: list[str]) -> int:
    from features.cli import features_main

    return features_main(argv)


# Subcommands whose whole argument list belongs to another package's parser (argparse.REMAINDER cannot pass
# leading options through a subparser, so these are dispatched before parsing).
PASSTHROUGH = {"extract": _run_extract, "features": _run_features}


def _cmd_demo(args: argparse.Namespace) -> int:
    """Real easy-VQA images → `patches` shards → every preset as a VQA model over the 13 answers (forward only)."""
    from pathlib import Path

    import easy_vqa
    import numpy as np
    import torch

    import vlm
    from features.cli import extract_main
    from features.store import FeatureStore

    store_dir = Path(args.out) / "feats-test"
    print(f"1/3 extracting patches features for {args.num_images} easy-VQA test images into {store_dir}")
    code = extract_main(["--source", "easy-vqa:test", "--backend", "patches", "--out", str(store_dir),
                         "--limit", str(args.num_images), "--no-progress", "--overwrite"])
    if code:
        return code
    store = FeatureStore(store_dir)
    texts, answers, image_ids = easy_vqa.get_test_questions()
    table = easy_vqa.get_answers()
    pick = {}
    for q, a, i in zip(texts, answers, image_ids):  # first question of each extracted image
        if str(i) in store and str(i) not in pick:
            pick[str(i)] = (q, a)
    ids = sorted(pick, key=int)
    samples = [store[i] for i in ids]
    tok = vlm.load_tokenizer()
    enc = tok([pick[i][0] for i in ids], padding=True, return_tensors="pt")
    batch = vlm.Batch(
        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"],
        region_feats=torch.from_numpy(np.stack([s["feats"] for s in samples])).float(),
        region_boxes=torch.from_numpy(np.stack([s["boxes"] for s in samples])),
        region_mask=torch.ones(len(ids), store.num_regions or samples[0]["feats"].shape[0], dtype=torch.long),
    )
    print(f"2/3 batch: {len(ids)} questions, {batch.input_ids.shape[1]} tokens, "
          f"{batch.region_feats.shape[1]} regions x {batch.region_feats.shape[2]}-d features")
    print(f"    e.g. image {ids[0]}: {pick[ids[0]][0]!r} (answer: {pick[ids[0]][1]})")
    print("3/3 forward pass of every preset as a VQA model over the 13 easy-VQA answers (untrained heads)")
    print(f"{'preset':<14}{'params':>9}{'text init':>18}{'forward ms':>12}  pooled     top answer of sample 0")
    torch.manual_seed(0)
    for name in vlm.list_models():
        init = "all-minilm-l6-v2" if name.endswith("-mini") else None
        model = vlm.create_model(name, task="vqa", num_answers=len(table), visual_feat_dim=store.feature_dim,
                                 text_init=init).eval()
        with torch.inference_mode():
            model(batch)  # warm-up
            start = time.perf_counter()
            out = model(batch)
            ms = (time.perf_counter() - start) * 1000
        if not torch.isfinite(out.logits).all():
            print(f"{name}: non-finite logits", file=sys.stderr)
            return 1
        top = table[int(out.logits[0].argmax())]
        print(f"{name:<14}{model.num_parameters() / 1e6:>8.1f}M{init or 'random':>18}{ms:>12.1f}  "
              f"{tuple(out.pooled.shape)!s:<10} {top}")
    print("The answer heads are untrained, so the answers above are arbitrary: `vlm finetune` trains them.")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    import os

    from pretraining.run import load_pretrain_config, pretrain
    from vlm.engine.distributed import DistInfo

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.texts={args.data}")
    if args.features:
        overrides.append(f"data.features={args.features}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    cfg = load_pretrain_config(args.config, args.arch, overrides)
    cfg.data.cache_dir = cfg.data.cache_dir or _cache_dir()
    dist = DistInfo.from_env(os.environ)
    summary = pretrain(cfg, out_dir=args.out, resume=args.resume, overwrite=args.overwrite, dist=dist,
                       show_progress=not args.no_progress)
    if dist.is_main:
        print(format_pretrain_summary(summary))
    return 0


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


def _cmd_finetune(args: argparse.Namespace) -> int:
    import os

    from downstream.finetune import finetune, load_finetune_config
    from vlm.engine.distributed import DistInfo

    overrides = list(args.overrides)
    for flag, key in ((args.init, "init"), (args.data, "data.train"), (args.eval_data, "data.eval"),
                      (args.features, "data.features"), (args.eval_features, "data.eval_features"),
                      (args.max_steps, "train.max_steps")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    if args.allow_feature_mismatch:
        overrides.append("data.allow_feature_mismatch=true")
    cfg = load_finetune_config(args.config, args.task, args.arch, overrides)
    cfg.data.cache_dir = cfg.data.cache_dir or _cache_dir()
    dist = DistInfo.from_env(os.environ)
    summary = finetune(cfg, out_dir=args.out, resume=args.resume, overwrite=args.overwrite, dist=dist,
                       show_progress=not args.no_progress)
    if dist.is_main:
        print(format_metrics(summary.get("metrics"), f"fine-tuned {summary['arch']} ({summary['task']}) for "
                             f"{summary['steps']} steps; model: {summary.get('model')}"))
    return 0


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


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from downstream.finetune import evaluate_checkpoint

    out = evaluate_checkpoint(args.checkpoint, split=args.split, data=args.data, features=args.features,
                              cache_dir=_cache_dir(), batch_size=args.batch_size, out=args.out,
                              allow_feature_mismatch=args.allow_feature_mismatch)
    print(format_metrics(out["metrics"], f"evaluated {args.checkpoint} on {out['data']} ({out['split']}); "
                         f"metrics: {out['path']}"))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from downstream.predict import predict

    out = predict(args.checkpoint, args.image, args.question, top_k=args.top_k, attention_png=args.attention)
    print(f"Q: {args.question}")
    if out.get("truncated_to"):
        print(f"  (the question was truncated to the model's {out['truncated_to']} text positions)")
    for answer, score in out["answers"]:
        print(f"  {answer:<20} {score:.4f}")
    if args.attention:
        print(f"attention picture: {out['attention']}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
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


def _cmd_ablate(args: argparse.Namespace) -> int:
    import os

    from downstream.ablation import ablate, ablation_configs, results_table
    from downstream.finetune import init_arch
    from vlm.engine.distributed import DistInfo

    cfg, pretrain_cfg = ablation_configs(
        arch=args.arch, task=args.task, config=args.config, checkpoint=args.checkpoint, init=args.init,
        no_pretrain=args.no_pretrain, pretrain_config=args.pretrain_config, data=args.data, eval_data=args.eval_data,
        features=args.features, eval_features=args.eval_features, cache_dir=str(_cache_dir()),
        overrides=args.overrides + (["data.allow_feature_mismatch=true"] if args.allow_feature_mismatch else []))
    dist = DistInfo.from_env(os.environ)
    arch = args.arch or (init_arch(args.checkpoint) if args.checkpoint else init_arch(cfg.init))
    out = args.out or f"runs/ablate-{arch}-{cfg.task}"
    result = ablate(cfg, out_dir=out, checkpoint=args.checkpoint, train_baselines=args.train_baselines, dist=dist,
                    show_progress=not args.no_progress, pretrain_cfg=pretrain_cfg, overwrite=args.overwrite)
    if dist.is_main:
        print(results_table(result))
        print(f"plot: {os.path.join(out, 'ablation.png')}  (results.json, results.csv, results.md beside it)")
    return 0


def _cache_dir() -> str:
    """The built-in features' cache folder: the command line is the one place that reads ``VLM_CACHE``."""
    import os

    from features.builtin import default_cache_dir

    return str(default_cache_dir(os.environ))


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the flag in its one-line error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlm",
        description="Vision-and-language transformers: region features, LXMERT and single-stream encoders.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list model presets with parameter counts")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every preset, e.g. model.x_layers=3")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("extract", help="extract region features into webdataset shards (see vlm extract --help)",
                       add_help=False)

    p = sub.add_parser("features", help="inspect a feature store or import a BUTD TSV (see vlm features --help)",
                       add_help=False)

    p = sub.add_parser("pretrain", help="pretrain LXMERT or the single stream (default: easy-VQA, built in)",
                       description="Pretrain with masked LM, masked region modelling, matching and image QA. Works "
                                   "under torchrun (DDP) unchanged.")
    p.add_argument("--arch", choices=["lxmert", "vilbert"], default=None,
                   help="architecture; picks configs/pretrain/<arch>.yaml unless --config is given")
    p.add_argument("--config", default=None, help="pretraining preset name (configs/pretrain) or YAML file")
    p.add_argument("--data", default=None, help="texts: easy-vqa, easy-vqa-captions, FILE.jsonl, captions.json or "
                   "Q.json,A.json; join several with +")
    p.add_argument("--features", default=None, help="feature store folder of the training images")
    p.add_argument("--out", default=None, help="run folder (default: train.out_dir of the config)")
    p.add_argument("--max-steps", type=_positive_int, default=None, help="stop after N optimiser steps")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="DIR",
                   help="resume from the newest checkpoint of the run folder, or from DIR")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (never any other folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="dotted overrides: train.lr=5e-5 model.x_layers=3 objectives.qa=0")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune for VQA or [CLS] classification (default: built-in easy-VQA data)",
                       description="Data formats: VQA — easy-vqa, QUESTIONS.json,ANNOTATIONS.json (official VQA v2), "
                                   "an LXMERT .json list; classify — easy-vqa-statements, a JSONL of {image_id, "
                                   "text, label}, or the Hateful Memes JSONL layout.")
    p.add_argument("--task", choices=["vqa", "classify"], default=None)
    p.add_argument("--arch", choices=["lxmert", "vilbert"], default=None)
    p.add_argument("--config", default=None, help="fine-tuning preset (configs/finetune) or YAML file; "
                   "default <arch>-<task>")
    p.add_argument("--init", default=None, help="model preset or checkpoint folder (e.g. a pretraining run's model/)")
    p.add_argument("--data", default=None, help="training examples (see the formats above)")
    p.add_argument("--eval-data", default=None, help="held-out examples")
    p.add_argument("--features", default=None, help="feature store of the training images")
    p.add_argument("--eval-features", default=None, help="feature store of the held-out images")
    p.add_argument("--out", default=None, help="run folder")
    p.add_argument("--max-steps", type=_positive_int, default=None)
    p.add_argument("--allow-feature-mismatch", action="store_true",
                   help="use a checkpoint whose features were made another way (a warning instead of a refusal)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="DIR")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (never any other folder)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="dotted overrides: train.lr=5e-5 train.epochs=3 model.x_layers=3")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("evaluate", help="metrics of a fine-tuned checkpoint (overall and per type)")
    p.add_argument("--checkpoint", required=True, help="a fine-tuned model folder (e.g. runs/finetune-.../model)")
    p.add_argument("--split", default="test", help="split of the built-in data (default test)")
    p.add_argument("--data", default=None, help="examples to evaluate on (default: the run's held-out data)")
    p.add_argument("--features", default=None, help="feature store of their images")
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--out", default=None, help="metrics file (default: <checkpoint>/eval-<split>.json)")
    p.add_argument("--allow-feature-mismatch", action="store_true",
                   help="evaluate features made another way than the checkpoint's (a warning instead of a refusal)")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="answer a question about any image with a fine-tuned VQA model")
    p.add_argument("--checkpoint", required=True, help="a fine-tuned VQA model folder")
    p.add_argument("--image", required=True, help="an image file (any photo)")
    p.add_argument("--question", required=True)
    p.add_argument("--top-k", type=_positive_int, default=5)
    p.add_argument("--attention", default=None, metavar="OUT.png",
                   help="write the image with its boxes shaded by the [CLS] attention of the last layer")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("serve", help="serve a fine-tuned model over HTTP, with a web page (FastAPI + uvicorn)",
                       description="POST /v1/predict (multipart: image, question, top_k), GET /v1/model, /healthz, "
                                   "/readyz, the page at / and the API docs at /docs. Binds 127.0.0.1 by default: "
                                   "the service has no authentication.")
    p.add_argument("--checkpoint", required=True, help="a fine-tuned VQA or classification model folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    # the limits' defaults live in one place, downstream.serve.ServeSettings: a flag not given keeps its default
    p.add_argument("--device", default=None, help="auto (the GPU when there is one; default), cpu, cuda, cuda:N")
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast of the forward pass (auto: bf16 where the device runs it natively; default)")
    p.add_argument("--cache-size", type=int, default=None, help="images whose features are cached (LRU; 0: none)")
    p.add_argument("--max-batch", type=_positive_int, default=None, help="requests per forward pass at most")
    p.add_argument("--batch-wait-ms", type=float, default=None,
                   help="how long the worker waits for more requests before a forward pass")
    p.add_argument("--queue-size", type=_positive_int, default=None,
                   help="requests waiting at most; one more gets 503")
    p.add_argument("--max-body-mb", type=float, default=None, help="largest request body in MiB")
    p.add_argument("--max-pixels", type=_positive_int, default=None,
                   help="largest image in pixels, refused from its header before decoding")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("ablate", help="modality ablation: fused vs text-only vs image-only, with references")
    p.add_argument("--arch", choices=["lxmert", "vilbert"], default=None)
    p.add_argument("--task", choices=["vqa", "classify"], default=None)
    p.add_argument("--checkpoint", default=None, help="a fine-tuned model folder (default: train one first)")
    p.add_argument("--train-baselines", action="store_true",
                   help="also train text-only and image-only models with the same config and budget")
    p.add_argument("--config", default=None, help="fine-tuning preset or YAML (default <arch>-<task>)")
    p.add_argument("--init", default=None,
                   help="model preset or pretraining checkpoint to fine-tune from (given: no pretraining step)")
    p.add_argument("--pretrain-config", default=None,
                   help="without --checkpoint/--init: the pretraining preset or YAML run first (default <arch>)")
    p.add_argument("--no-pretrain", action="store_true",
                   help="without --checkpoint: fine-tune the fused model from the preset, no pretraining step")
    p.add_argument("--data", default=None)
    p.add_argument("--eval-data", default=None)
    p.add_argument("--features", default=None)
    p.add_argument("--eval-features", default=None)
    p.add_argument("--out", default=None, help="run folder (default runs/ablate-<arch>-<task>)")
    p.add_argument("--overwrite", action="store_true", help="replace the runs already in --out")
    p.add_argument("--allow-feature-mismatch", action="store_true",
                   help="use a checkpoint whose features were made another way (a warning instead of a refusal)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*",
                   help="dotted overrides of the fine-tuning config; pretrain.KEY=VALUE for the pretraining run")
    p.set_defaults(func=_cmd_ablate)

    p = sub.add_parser("demo", help="forward every preset on real easy-VQA questions and images (CPU, ~1 min)")
    p.add_argument("--num-images", type=_positive_int, default=8, help="easy-VQA test images to use (default 8)")
    p.add_argument("--out", default="runs/demo", help="folder for the demo's feature shards (default runs/demo)")
    p.set_defaults(func=_cmd_demo)
    return parser


#: A dotted ``KEY=VALUE`` override: an identifier path, then ``=``.
OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")


def split_overrides(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """``(argv without overrides, overrides)``: every ``KEY=VALUE`` after the subcommand that is not the value of an
    option taking one, wherever it stands. So an optional-value flag (``--resume [DIR]``) never swallows an override,
    and overrides may come before, between or after the options."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    i = next((n for n, tok in enumerate(argv) if not tok.startswith("-")), len(argv))
    if sub is None or i == len(argv) or argv[i] not in sub.choices:
        return argv, []
    takes_value = {opt for action in sub.choices[argv[i]]._actions if action.nargs is None and action.option_strings
                   for opt in action.option_strings}
    rest, overrides, skip = argv[:i + 1], [], False
    for tok in argv[i + 1:]:
        if skip:
            rest.append(tok)
            skip = False
        elif tok in takes_value:
            rest.append(tok)
            skip = True
        elif OVERRIDE.match(tok):
            overrides.append(tok)
        else:
            rest.append(tok)
    return rest, overrides


def main(argv: list[str] | None = None) -> int:
    """Run the ``vlm`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASSTHROUGH:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return PASSTHROUGH[argv[0]](argv[1:])
    parser = build_parser()
    argv, overrides = split_overrides(parser, argv)
    args = parser.parse_args(argv)
    if hasattr(args, "overrides"):
        args.overrides = overrides + list(args.overrides)
    elif overrides:
        parser.error(f"vlm {args.command} takes no KEY=VALUE overrides, got {overrides[0]!r}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    start = time.perf_counter()
    try:
        code = func(args)
    except (VLMError, FeaturesError, FileNotFoundError, ValueError) as e:
        print(f"vlm {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    logger.info("vlm %s finished in %.1fs", args.command, time.perf_counter() - start)
    return code


if __name__ == "__main__":
    sys.exit(main())
