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
from vlm import commands
from vlm.config import ARCHS, COMMAND_TASKS, PRECISIONS
from vlm.errors import VLMError

#: ``--task`` of finetune and ablate (command-line names; folders store ``classification`` for ``classify``).
TASK_CHOICES = tuple(COMMAND_TASKS)

logger = logging.getLogger(__name__)

EPILOG = """\
examples:
  vlm models                                   list model presets with parameter counts
  vlm extract --source easy-vqa:train --backend patches --out feats/train
  vlm features inspect feats/train             summary + checksum of every shard
  vlm describe runs/finetune-lxmert-vqa/model  task, arch, text length, labels and features of a model folder
  vlm pretrain --arch lxmert                   pretrain LXMERT-mini on easy-VQA (built-in features, offline)
  torchrun --nproc_per_node 2 -m vlm.cli pretrain --arch vilbert train.batch_size=32
  vlm pretrain --arch lxmert --resume          continue the run in --out from its newest checkpoint
  vlm demo                                     pretrain quickly, then summarise (make demo)

Model options are dotted overrides (model.x_layers=3); an unknown key is an error naming the allowed ones.
"""


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the flag in its one-line error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser that records which of its options take exactly one value (:func:`split_overrides`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.value_options: set[str] = set()

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.option_strings and action.nargs is None:
            self.value_options.update(action.option_strings)
        return action


class VLMParser(argparse.ArgumentParser):
    """The ``vlm`` parser; ``commands`` maps each subcommand to its :class:`CommandParser`."""

    commands: dict[str, CommandParser]


def build_parser() -> VLMParser:
    parser = VLMParser(
        prog="vlm",
        description="Vision-and-language transformers: region features, LXMERT and single-stream encoders.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    parser.commands = sub.choices  # name → parser, filled by add_parser below

    p = sub.add_parser("models", help="list model presets with parameter counts")
    p.add_argument("overrides", nargs="*", help="dotted overrides applied to every preset, e.g. model.x_layers=3")
    p.set_defaults(func=commands.cmd_models)

    p = sub.add_parser("extract", help="extract region features into webdataset shards (see vlm extract --help)",
                       add_help=False)

    p = sub.add_parser("features", help="inspect, import (BUTD TSV), stage or serve a feature store (see vlm features --help)",
                       add_help=False)

    p = sub.add_parser("pretrain", help="pretrain LXMERT or the single stream (default: easy-VQA, built in)",
                       description="Pretrain with masked LM, masked region modelling, matching and image QA. Works "
                                   "under torchrun (DDP) unchanged.")
    p.add_argument("--arch", choices=ARCHS, default=None,
                   help="architecture; picks configs/pretrain/<arch>.yaml unless --config is given")
    p.add_argument("--config", default=None, help="pretraining preset name (configs/pretrain) or YAML file")
    p.add_argument("--data", default=None, help="texts: easy-vqa, easy-vqa-captions, FILE.jsonl, captions.json or "
                   "Q.json,A.json; join several with +")
    p.add_argument("--features", default=None, help="feature store of the training images (folder, http(s) URL, "
                   "or a 'pipe:CMD {file}' command: streamed)")
    p.add_argument("--out", default=None, help="run folder (default: train.out_dir of the config)")
    p.add_argument("--max-steps", type=_positive_int, default=None, help="stop after N optimiser steps")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="DIR",
                   help="resume from the newest checkpoint of the run folder, or from DIR")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (never any other folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="dotted overrides: train.lr=5e-5 model.x_layers=3 objectives.qa=0")
    p.set_defaults(func=commands.cmd_pretrain)

    p = sub.add_parser("finetune", help="fine-tune for VQA or [CLS] classification (default: built-in easy-VQA data)",
                       description="Data formats: VQA — easy-vqa, QUESTIONS.json,ANNOTATIONS.json (official VQA v2), "
                                   "an LXMERT .json list; classify — easy-vqa-statements, a JSONL of {image_id, "
                                   "text, label}, or the Hateful Memes JSONL layout.")
    p.add_argument("--task", choices=TASK_CHOICES, default=None)
    p.add_argument("--arch", choices=ARCHS, default=None)
    p.add_argument("--config", default=None, help="fine-tuning preset (configs/finetune) or YAML file; "
                   "default <arch>-<task>")
    p.add_argument("--init", default=None, help="model preset or checkpoint folder (e.g. a pretraining run's model/)")
    p.add_argument("--data", default=None, help="training examples (see the formats above)")
    p.add_argument("--eval-data", default=None, help="held-out examples")
    p.add_argument("--features", default=None, help="feature store of the training images (folder, http(s) URL, "
                   "or a 'pipe:CMD {file}' command: streamed)")
    p.add_argument("--eval-features", default=None, help="feature store of the held-out images (folder or URL)")
    p.add_argument("--out", default=None, help="run folder")
    p.add_argument("--max-steps", type=_positive_int, default=None)
    p.add_argument("--allow-feature-mismatch", action="store_true",
                   help="use a checkpoint whose features were made another way (a warning instead of a refusal)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="DIR")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out (never any other folder)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="dotted overrides: train.lr=5e-5 train.epochs=3 model.x_layers=3")
    p.set_defaults(func=commands.cmd_finetune)

    p = sub.add_parser("describe", help="what a model folder holds: task, arch, text length, labels, features")
    p.add_argument("folder", help="a model folder (e.g. runs/finetune-lxmert-vqa/model or a checkpoints/step-N)")
    p.set_defaults(func=commands.cmd_describe)

    p = sub.add_parser("evaluate", help="metrics of a fine-tuned checkpoint (overall and per type)")
    p.add_argument("--checkpoint", required=True, help="a fine-tuned model folder (e.g. runs/finetune-.../model)")
    p.add_argument("--split", default="test", help="split of the built-in data (default test)")
    p.add_argument("--data", default=None, help="examples to evaluate on (default: the run's held-out data)")
    p.add_argument("--features", default=None, help="feature store of their images")
    p.add_argument("--batch-size", type=_positive_int, default=128)
    p.add_argument("--out", default=None, help="metrics file (default: <checkpoint>/eval-<split>.json)")
    p.add_argument("--allow-feature-mismatch", action="store_true",
                   help="evaluate features made another way than the checkpoint's (a warning instead of a refusal)")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast of the forward passes (auto: bf16 where the device runs it natively; default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (a first-use extraction included)")
    p.set_defaults(func=commands.cmd_evaluate)

    p = sub.add_parser("predict", help="answer a question about any image with a fine-tuned VQA model")
    p.add_argument("--checkpoint", required=True, help="a fine-tuned VQA model folder")
    p.add_argument("--image", required=True, help="an image file (any photo)")
    p.add_argument("--question", required=True)
    p.add_argument("--top-k", type=_positive_int, default=5)
    p.add_argument("--attention", default=None, metavar="OUT.png",
                   help="write the image with its boxes shaded by the [CLS] attention of the last layer")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="autocast of the forward pass (auto: bf16 where the device runs it natively; default)")
    p.set_defaults(func=commands.cmd_predict)

    p = sub.add_parser("serve", help="serve a fine-tuned model over HTTP, with a web page (FastAPI + uvicorn)",
                       description="POST /v1/predict (multipart: image, question, top_k), GET /v1/model, /healthz, "
                                   "/readyz, the page at / and the API docs at /docs. Binds 127.0.0.1 by default: "
                                   "the service has no authentication.")
    p.add_argument("--checkpoint", required=True, help="a fine-tuned VQA or classification model folder")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    # the limits' defaults live in one place, downstream.serve.ServeSettings: a flag not given keeps its default
    p.add_argument("--device", default=None, help="auto (the GPU when there is one; default), cpu, cuda, cuda:N")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
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
    p.set_defaults(func=commands.cmd_serve)

    p = sub.add_parser("ablate", help="modality ablation: fused vs text-only vs image-only, with references")
    p.add_argument("--arch", choices=ARCHS, default=None)
    p.add_argument("--task", choices=TASK_CHOICES, default=None)
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
    p.set_defaults(func=commands.cmd_ablate)

    p = sub.add_parser("demo", help="forward every preset on real easy-VQA questions and images (CPU, ~1 min)")
    p.add_argument("--num-images", type=_positive_int, default=8, help="easy-VQA test images to use (default 8)")
    p.add_argument("--out", default="runs/demo", help="folder for the demo's feature shards (default runs/demo)")
    p.set_defaults(func=commands.cmd_demo)
    return parser


#: A dotted ``KEY=VALUE`` override: an identifier path, then ``=``.
OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")


def split_overrides(parser: VLMParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """``(argv without overrides, overrides)``: every ``KEY=VALUE`` after the subcommand that is not the value of an
    option taking one, wherever it stands. So an optional-value flag (``--resume [DIR]``) never swallows an override,
    and overrides may come before, between or after the options."""
    i = next((n for n, tok in enumerate(argv) if not tok.startswith("-")), len(argv))
    if i == len(argv) or argv[i] not in parser.commands:
        return argv, []
    takes_value = parser.commands[argv[i]].value_options
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
    if argv and argv[0] in commands.PASSTHROUGH:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        return commands.PASSTHROUGH[argv[0]](argv[1:])
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
    code = 1  # an unexpected exception keeps its traceback
    try:
        code = func(args)
    except (VLMError, FeaturesError) as e:  # user errors; anything else keeps its traceback
        print(f"vlm {args.command}: error: {one_line(e)}", file=sys.stderr)
        code = 2
        return code
    finally:
        if "torch.distributed" in sys.modules:  # a command under torchrun joined a process group: leave it
            from vlm.engine.distributed import shutdown
            shutdown(clean=code == 0)
    logger.info("vlm %s finished in %.1fs", args.command, time.perf_counter() - start)
    return code


if __name__ == "__main__":
    sys.exit(main())
