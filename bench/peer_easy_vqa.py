"""vlm's default LXMERT VQA fine-tuning against transformers' ``LxmertForQuestionAnswering``, in one run.

Both sides start from the model ``vlm finetune --task vqa --arch lxmert [--init ...]`` builds (preset
``configs/finetune/lxmert-vqa.yaml``: its answer table, init and model overrides), exported by ``vlm.to_transformers``
before any training; on one batch (fp32, eval mode) the peer's ``question_answering_score`` must equal vlm's logits:
the largest difference is printed.

* vlm: the real engine (``vlm.engine.Trainer``, as ``downstream.finetune.FinetuneRun`` builds it).
* peer: a plain PyTorch loop over the same batches in the same order (vlm's ``EpochPlan``/``StepBatches``, same
  seed) with the engine's optimisation written out: AdamW (fused where torch has it; same lr, betas, eps; weight decay
  on >= 2-d weights only), linear warm-up then linear decay, clipping to ``train.max_grad_norm``, vlm's loss
  (soft-score BCE x number of answers) on the peer's logits, the same autocast dtype (``auto``: bf16 on CPUs with
  native bf16).

Both are evaluated every ``--eval-every`` steps by the same function (``downstream.evaluate.evaluate``: argmax answer,
exact match against easy-VQA's answer) on the first ``--eval-size`` test questions. The sides run one after the other;
the clock (``time.perf_counter``) counts training only. Printed (and written to ``--out`` as JSON): accuracy against
training minutes, vlm's accuracy at each peer evaluation's wall clock (its latest evaluation at or before it), minutes
to 95% per side and the ratio peer/vlm, seconds per step, the CPU and the autocast dtype.

One training difference remains by design: transformers' ``LxmertEmbeddings`` gives the position and token-type
embeddings ``padding_idx=0``, so the peer as shipped never updates their row 0 (the ``[CLS]`` position, and the only
token type used); vlm trains them. ``--peer-train-row0`` lifts that; then, in fp32, both sides' losses agree to about
1e-4 at every step (``tests/test_peer_bench.py``), which checks that the rest of the set-up is the same.

Usage (trailing ``KEY=VALUE`` are fine-tuning config overrides, e.g. ``model.x_layers=3``)::

    python bench/peer_easy_vqa.py --out runs/peer-easy-vqa.json
    python bench/peer_easy_vqa.py --init runs/pretrain-lxmert/model --steps 900 --eval-every 100

Timings depend on the machine and its load: compare runs on a quiet machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import vlm
from downstream.evaluate import evaluate
from downstream.finetune import FinetuneRun, load_finetune_config, prepare_finetuning
from features.builtin import default_cache_dir
from vlm.config import TrainConfig
from vlm.engine.loader import EpochPlan, StepBatches
from vlm.precision import autocast_dtype, cpu_has_native_bf16

TARGET = 95.0  # accuracy (percent) whose time to reach is reported


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """vlm's VQA loss: BCE with logits on the soft scores, mean over all entries, times the number of answers."""
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype)) * logits.shape[1]


class PeerVQA(nn.Module):
    """``LxmertForQuestionAnswering`` behind vlm's batch interface (``.logits``, and ``.loss`` with targets), so that
    the same evaluation function serves both sides."""

    def __init__(self, hf: nn.Module, train_row0: bool = False) -> None:
        super().__init__()
        self.hf = hf
        if train_row0:  # transformers' LXMERT has padding_idx=0 here, which keeps row 0 out of training; vlm trains it
            emb = hf.lxmert.embeddings
            emb.position_embeddings.padding_idx = emb.token_type_embeddings.padding_idx = None

    def forward(self, batch: vlm.Batch) -> SimpleNamespace:
        b = batch  # in transformers' argument names
        logits = self.hf(input_ids=b.input_ids, attention_mask=b.attention_mask, token_type_ids=b.token_type_ids,
                         visual_feats=b.region_feats, visual_pos=b.region_boxes,
                         visual_attention_mask=b.region_mask).question_answering_score
        loss = vqa_loss(logits, batch.answer_targets) if batch.answer_targets is not None else None
        return SimpleNamespace(logits=logits, loss=loss)


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups as vlm's engine makes them: decay on >= 2-d weights, none on biases and norms."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


def make_adamw(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    groups = decay_groups(model, cfg.weight_decay)
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=True)
    except (RuntimeError, ValueError):  # no fused kernel for this device
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def warmup_linear(total: int, warmup: int) -> Callable[[int], float]:
    """LR multiplier of scheduler step ``s``: (s+1)/warmup during warm-up, then linear to 0 at ``total``."""
    return lambda s: (s + 1) / warmup if warmup and s < warmup else max(0.0, (total - s) / max(1, total - warmup))


class Clock:
    """Training seconds: wall time since it was made minus the time spent inside ``paused()`` (evaluation)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.t0, self.excluded = device, time.perf_counter(), 0.0

    def seconds(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # queued kernels belong to the training time
        return time.perf_counter() - self.t0 - self.excluded

    def paused(self, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        try:
            return fn()
        finally:
            self.excluded += time.perf_counter() - t


def train_vlm(run: FinetuneRun, cfg: Any, device: torch.device, curve: list[dict]) -> dict[str, Any]:
    """vlm's engine as ``vlm finetune`` runs it; each evaluation appends ``{step, minutes, accuracy}`` to ``curve``."""
    trainer, clock = run.trainer, Clock(device)

    def eval_fn(model: nn.Module) -> dict[str, float]:
        minutes = clock.seconds() / 60
        acc = clock.paused(lambda: accuracy(model, run.eval_data, cfg, device))
        curve.append({"step": trainer.step, "minutes": minutes, "accuracy": acc})
        return {"overall": acc}

    trainer.evaluate_fn = eval_fn
    result = trainer.train()
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}  # mean over each evaluation window
    for point in curve:
        point["loss"] = losses.get(point["step"])
    return {"seconds": curve[-1]["minutes"] * 60, "steps": trainer.step, "first_loss": result["first"]["loss"],
            "last_loss": result["last"]["loss"]}


def train_peer(peer: PeerVQA, run: FinetuneRun, cfg: Any, device: torch.device, curve: list[dict]) -> dict[str, Any]:
    """A plain PyTorch loop with the engine's optimisation, over the batches vlm's engine draws, in its order."""
    tc: TrainConfig = cfg.train
    total, warmup = tc.max_steps, int(tc.warmup_ratio * tc.max_steps)
    opt = make_adamw(peer, tc)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_linear(total, warmup))
    dtype = autocast_dtype(device, tc.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    params = [p for g in opt.param_groups for p in g["params"]]
    plan = EpochPlan(len(run.train_data), tc.batch_size, seed=tc.seed)
    batches = StepBatches(run.train_data, plan, tc.grad_accum, tc.num_workers)
    torch.manual_seed(tc.seed)
    losses: list[float] = []
    window: list[float] = []  # step losses since the last evaluation
    clock = Clock(device)
    for step in range(1, total + 1):
        peer.train()
        micro = next(batches)
        step_loss = 0.0
        for batch in micro:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = peer(batch.to(device, non_blocking=True)).loss
            scaler.scale(loss / len(micro)).backward()
            step_loss += float(loss.detach()) / len(micro)
        scaler.unscale_(opt)
        if tc.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(params, tc.max_grad_norm)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(step_loss)
        window.append(step_loss)
        if step % tc.eval_every == 0 or step == total:
            minutes = clock.seconds() / 60
            acc = clock.paused(lambda: accuracy(peer, run.eval_data, cfg, device))
            curve.append({"step": step, "minutes": minutes, "accuracy": acc, "loss": sum(window) / len(window)})
            window = []
    return {"seconds": curve[-1]["minutes"] * 60, "steps": total, "first_loss": losses[0], "last_loss": losses[-1]}


@torch.no_grad()
def accuracy(model: nn.Module, data: Any, cfg: Any, device: torch.device) -> float:
    """Exact-match accuracy (percent) of the argmax answer, vlm's evaluation, on the fixed held-out subset."""
    metrics, _ = evaluate(model, data, cfg.train.batch_size * 2, device, cfg.train.precision)
    return float(metrics["overall"])


@torch.no_grad()
def initial_parity(model: nn.Module, peer: PeerVQA, run: FinetuneRun, cfg: Any, device: torch.device
                   ) -> dict[str, float]:
    """Max |vlm logits - peer logits| and both losses on the first training batch, fp32, eval mode."""
    plan = EpochPlan(len(run.train_data), cfg.train.batch_size, seed=cfg.train.seed)
    batch = run.train_data.batch(plan.indices(0, 0), 0).to(device)
    model.eval()
    peer.eval()
    ours, theirs = model(batch), peer(batch)
    return {"max_abs_logit_diff": float((ours.logits - theirs.logits).abs().max()),
            "vlm_loss": float(ours.loss), "peer_loss": float(theirs.loss)}


def machine(device: torch.device, precision: str) -> dict[str, Any]:
    info = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in (info.read_text().splitlines() if info.is_file() else [])
             if ln.startswith("model name")]
    cpu = names[0] if names else platform.processor() or platform.machine()
    dtype = autocast_dtype(device, precision)
    return {"device": str(device), "cpu": cpu, "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "cpu_native_bf16": cpu_has_native_bf16(), "autocast": str(dtype).replace("torch.", "") if dtype else "fp32"}


def compare(vlm_curve: list[dict], peer_curve: list[dict], steps: int) -> dict[str, Any]:
    """Accuracy at equal wall clock, minutes to the target for each side, and their ratio."""
    rows = []
    for p in peer_curve:  # vlm's latest evaluation at or before each of the peer's
        v = ([q for q in vlm_curve if q["minutes"] <= p["minutes"]] or [{}])[-1]
        rows.append({"minutes": p["minutes"], "peer_step": p["step"], "peer_accuracy": p["accuracy"],
                     "vlm_step": v.get("step"), "vlm_accuracy": v.get("accuracy")})
    reach = {side: next((p["minutes"] for p in c if p["accuracy"] >= TARGET), None)
             for side, c in (("vlm", vlm_curve), ("peer", peer_curve))}
    ratio = reach["peer"] / reach["vlm"] if reach["vlm"] and reach["peer"] is not None else None
    return {"equal_wall_clock": rows, "vlm_at_least_peer_everywhere": all(
        r["vlm_accuracy"] is not None and r["vlm_accuracy"] >= r["peer_accuracy"] for r in rows),
        f"minutes_to_{TARGET:g}": reach, "ratio_peer_over_vlm": ratio, "steps": steps}


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


COLUMNS = (("minutes", ".2f", "min"), ("accuracy", ".2f", "acc"), ("loss", ".4f", "loss"))


def report(result: dict[str, Any]) -> str:
    m, par, cmp_ = result["machine"], result["parity"], result.get("comparison")
    gpu = f" ({m['gpu']})" if m["gpu"] else ""
    lines = [f"machine: {m['cpu']} ({m['threads']} threads), device {m['device']}{gpu}, autocast {m['autocast']} "
             + f"(native bf16 on this CPU: {m['cpu_native_bf16']})"]
    lines.append(f"initial parity (fp32, one batch): max |vlm - peer| logits {par['max_abs_logit_diff']:.2e}; "
                 f"loss vlm {par['vlm_loss']:.6f}, peer {par['peer_loss']:.6f}")
    lines.append(f"{'step':>6}" + "".join(f" {side + ' ' + c[2]:>10}" for side in ("vlm", "peer") for c in COLUMNS))
    at = {side: {p["step"]: p for p in result["curves"].get(side, [])} for side in ("vlm", "peer")}
    for step in sorted({s for c in at.values() for s in c}):
        lines.append(f"{step:>6}" + "".join(f" {fmt(at[side].get(step, {}).get(key), spec):>10}"
                                            for side in ("vlm", "peer") for key, spec, _ in COLUMNS))
    for side, s in result["sides"].items():
        lines.append(f"{side}: {s['seconds'] / max(1, s['steps']):.3f} s/step over {s['steps']} steps; loss "
                     f"{s['first_loss']:.4f} (step 1) -> {s['last_loss']:.4f}")
    if cmp_:
        lines.append("accuracy at equal wall clock (vlm's latest evaluation at or before each peer evaluation):")
        lines += [f"  {r['minutes']:7.2f} min: peer {r['peer_accuracy']:6.2f} (step {r['peer_step']}), vlm "
                  f"{fmt(r['vlm_accuracy'], '6.2f')} (step {fmt(r['vlm_step'], 'd')})"
                  for r in cmp_["equal_wall_clock"]]
        lines.append(f"vlm >= peer at every point: {cmp_['vlm_at_least_peer_everywhere']}")
        lines += [f"{side}: {TARGET:g}% " + (f"after {mins:.2f} min" if mins is not None else
                                             f"never reached within {cmp_['steps']} steps")
                  for side, mins in cmp_[f"minutes_to_{TARGET:g}"].items()]
        lines.append(f"ratio peer/vlm (minutes to {TARGET:g}%): {fmt(cmp_['ratio_peer_over_vlm'], '.2f')}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default=None, help="model preset or pretraining checkpoint folder (default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the preset's train.max_steps)")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-size", type=int, default=2000, help="evaluate on the first N easy-VQA test questions")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--precision", default=None, help="auto, fp32, bf16 or fp16 (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default="", help="built-in features' cache (default: $VLM_CACHE or ~/.cache/vlm)")
    p.add_argument("--out", default="", help="write the curves and the comparison to this JSON file")
    p.add_argument("--only", choices=["vlm", "peer"], default=None, help="train one side only")
    p.add_argument("--train-limit", type=int, default=0, help="the first N training questions only (smoke tests)")
    p.add_argument("--peer-train-row0", action="store_true",
                   help="peer: train row 0 of the position and token-type embeddings, as vlm does (transformers' "
                        "LXMERT gives them padding_idx=0: the [CLS] position and token type 0 stay fixed)")
    p.add_argument("overrides", nargs="*", help="fine-tuning config overrides KEY=VALUE (model.x_layers=3)")
    args = p.parse_args(argv)
    if args.eval_every < 1 or args.eval_size < 1 or (args.steps is not None and args.steps < 1):
        p.error("--steps, --eval-every and --eval-size must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    overrides = [f"train.seed={args.seed}", f"data.eval_limit={args.eval_size}",
                 f"data.train_limit={args.train_limit}", f"train.eval_every={args.eval_every}",
                 f"train.log_every={args.eval_every}"]  # one train/loss line per evaluation window
    for value, key in ((args.init, "init"), (args.steps, "train.max_steps"), (args.batch_size, "train.batch_size"),
                       (args.lr, "train.lr"), (args.precision, "train.precision")):
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_finetune_config(None, "vqa", "lxmert", overrides + list(args.overrides))
    cfg.data.cache_dir = args.cache_dir or cfg.data.cache_dir or str(default_cache_dir(os.environ))
    if not cfg.train.max_steps:
        raise SystemExit("set --steps (the config has no train.max_steps)")
    with tempfile.TemporaryDirectory(prefix="peer-easy-vqa-") as tmp:
        run = prepare_finetuning(cfg, out_dir=tmp, show_progress=False)  # as `vlm finetune`: device, then the seed
        device = run.device
        model = run.model.to(device)
        if run.eval_data is None:
            raise SystemExit("no held-out data: give data.eval (the built-in data's test split is the default)")
        peer = PeerVQA(vlm.to_transformers(model), args.peer_train_row0).to(device)  # before training: same weights
        parity = initial_parity(model, peer, run, cfg, device)
        print(f"initial parity: max |vlm - peer| logits {parity['max_abs_logit_diff']:.2e}", flush=True)
        curves: dict[str, list[dict]] = {}
        sides: dict[str, dict] = {}
        for side in ("vlm", "peer"):
            if args.only not in (None, side):
                continue
            net = model if side == "vlm" else peer
            curves[side] = [{"step": 0, "minutes": 0.0, "accuracy": accuracy(net, run.eval_data, cfg, device),
                             "loss": None}]
            print(f"{side}: training {cfg.train.max_steps} steps (accuracy at step 0: "
                  f"{curves[side][0]['accuracy']:.2f})", flush=True)
            sides[side] = (train_vlm(run, cfg, device, curves[side]) if side == "vlm" else
                           train_peer(peer, run, cfg, device, curves[side]))
    result: dict[str, Any] = {
        "command": "python bench/peer_easy_vqa.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "init": cfg.init, "steps": cfg.train.max_steps, "batch_size": cfg.train.batch_size, "lr": cfg.train.lr,
        "precision": cfg.train.precision, "eval_size": len(run.eval_data), "train_examples": len(run.train_data),
        "peer_train_row0": args.peer_train_row0, "machine": machine(device, cfg.train.precision), "parity": parity,
        "curves": curves, "sides": sides}
    if len(curves) == 2:
        result["comparison"] = compare(curves["vlm"], curves["peer"], cfg.train.max_steps)
    print(report(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
