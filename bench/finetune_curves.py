"""Where easy-VQA fine-tuning spends its steps: every checkpoint of a run scored on the run's validation questions,
split by question kind and by whether the answer goes *against the question prior*.

The question prior of a question is the majority training answer of its template (the question with its colour and
shape words masked: "is there a C shape?", "is there not a C shape?"). A model that ignores the image answers every
question with its template's prior, so its accuracy on the questions whose answer is against the prior is 0%; a
model that reads the image answers them as well as the others. For each checkpoint this prints, on the validation
questions (``data.holdout_images`` of the run):

* overall, colour / shape questions, colour yes/no, shape yes/no accuracy;
* ``against prior``: accuracy on the colour (and shape) yes/no questions whose answer is not their template's prior;
* ``worst template``: the template with the lowest accuracy, and its accuracy.

Run it on a fine-tuning run saved with checkpoints along the way, e.g.::

    vlm finetune --task vqa --arch lxmert --init runs/pretrain-lxmert/model --out runs/diag-s5 train.seed=5 \\
        train.max_steps=600 train.eval_every=50 train.save_every=50 train.keep_last=0 train.best_metric= \\
        train.patience=0
    python bench/finetune_curves.py runs/diag-s5 [runs/diag-s0 ...] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import vlm  # noqa: E402
from downstream.data import VQAData  # noqa: E402
from downstream.evaluate import predict_logits  # noqa: E402
from downstream.evaluate_model import read_run_config  # noqa: E402
from downstream.stores import run_stores  # noqa: E402
from vlm.data.easy_vqa import EASY_VQA_COLOURS, EASY_VQA_SHAPES, read_easy_vqa  # noqa: E402
from vlm.data.split import split_holdout  # noqa: E402
from vlm.data.vqa import AnswerVocab  # noqa: E402
from vlm.engine.checkpoint import CheckpointManager, load_trainer_state  # noqa: E402

_COLOURS = re.compile(r"\b(" + "|".join(EASY_VQA_COLOURS) + r")\b")
_SHAPES = re.compile(r"\b(" + "|".join(EASY_VQA_SHAPES) + r")\b")


def template(question: str) -> str:
    """The question with its colour and shape words masked (``C`` / ``S``)."""
    return _SHAPES.sub("S", _COLOURS.sub("C", question.lower().rstrip("?").strip()))


def priors(train: list) -> dict[str, str]:
    """The majority training answer of each template."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for e in train:
        counts[template(e.question)][e.answers[0]] += 1
    return {t: c.most_common(1)[0][0] for t, c in counts.items()}


def score(examples: list, answers: list[str], prior: dict[str, str]) -> dict[str, float]:
    right = np.array([a == e.answers[0] for e, a in zip(examples, answers)])
    kinds = np.array([e.question_type for e in examples])
    templates = [template(e.question) for e in examples]
    against = np.array([prior.get(t) != e.answers[0] for t, e in zip(templates, examples)])
    out = {"overall": 100 * right.mean()}
    for kind in ("colour", "shape", "colour yes/no", "shape yes/no"):
        sel = kinds == kind
        out[kind] = 100 * right[sel].mean() if sel.any() else float("nan")
    for kind in ("colour yes/no", "shape yes/no"):
        sel = (kinds == kind) & against
        out[f"{kind} against prior"] = 100 * right[sel].mean() if sel.any() else float("nan")
    by_template: dict[str, list[bool]] = defaultdict(list)
    for t, r in zip(templates, right):
        by_template[t].append(bool(r))
    worst = min(by_template, key=lambda t: np.mean(by_template[t]))
    out["worst template"] = f"{100 * np.mean(by_template[worst]):.1f} ({worst}?)"
    return out


def run_curve(run: Path) -> list[tuple[int, dict]]:
    cfg = read_run_config(run / "model")
    if cfg is None or not cfg.data.holdout_images:
        raise SystemExit(f"{run}: needs a fine-tuning run with data.holdout_images (its validation questions)")
    train_store, _ = run_stores(cfg.train_spec(), "", features=cfg.data.features, eval_features="",
                                cache_dir=cfg.data.cache_dir, backend=cfg.data.backend, show_progress=False)
    train, held = split_holdout(read_easy_vqa("train"), cfg.data.holdout_images, "easy-vqa")
    prior = priors(train)
    vocab = AnswerVocab.load(run / "model" / "answers.json")
    data = VQAData(held, train_store, vlm.load_tokenizer(), vocab, cfg.data.max_text_len, with_targets=False)
    rows = []
    for ckpt in CheckpointManager(run).list():
        model = vlm.from_pretrained(ckpt).eval()
        logits = predict_logits(model, data, 256, "cpu", cfg.train.precision)
        answers = [vocab.decode(int(i)) for i in logits.argmax(1)]
        rows.append((int(load_trainer_state(ckpt)["step"]), score(data.examples, answers, prior)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="fine-tuning run folders saved with checkpoints")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables")
    args = ap.parse_args()
    cols = ["overall", "colour", "shape", "colour yes/no", "shape yes/no", "colour yes/no against prior",
            "shape yes/no against prior", "worst template"]
    for run in args.runs:
        rows = run_curve(run)
        print(f"\n{run} (validation questions; step: {', '.join(cols)})")
        if args.markdown:
            print("| step | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
        for step, r in rows:
            cells = [f"{r[c]:.2f}" if isinstance(r[c], float) else r[c] for c in cols]
            print(f"| {step} | " + " | ".join(cells) + " |" if args.markdown else f"{step:5d}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
