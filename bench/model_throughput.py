"""vlm vs transformers LxmertModel at the lxmert-base shape: throughput, fraction of the matmul rate, peak memory.

Same weights (the transformers model imported with ``vlm.from_transformers``) and the same inputs (batch 32, 20 tokens,
36 regions of 2048-d). Inference forward and a training step (forward + backward) are timed with the two frameworks
interleaved, median of ``--runs`` after warm-up. A large fp32 matmul timed in the same run gives the machine's rate;
FLOPs come from ``torch.utils.flop_counter`` on the transformers model. Peak memory of a training step with AdamW is
measured in a fresh subprocess per framework (max RSS on CPU, max allocated on CUDA).

    python bench/model_throughput.py                 # CPU fp32
    python bench/model_throughput.py --device cuda   # GPU: vlm bf16 autocast + SDPA vs transformers fp32 eager
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LxmertConfig, LxmertModel

import vlm


def make_models(device: str, seed: int = 0):
    torch.manual_seed(seed)
    hf = LxmertModel(LxmertConfig()).to(device)  # l/r/x = 9/5/5, hidden 768, 2048-d features
    ours = vlm.from_transformers(hf).to(device)
    return hf, ours


def make_inputs(device: str, b: int = 32, t: int = 20, k: int = 36, d: int = 2048) -> vlm.Batch:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 30000, (b, t), generator=g)
    ids[:, 0] = 101
    am = torch.ones(b, t, dtype=torch.long)
    xy = torch.rand(b, k, 2, generator=g) * 0.5
    batch = vlm.Batch(input_ids=ids, attention_mask=am, token_type_ids=torch.zeros_like(ids),
                      region_feats=torch.randn(b, k, d, generator=g), region_boxes=torch.cat([xy, xy + 0.4], -1),
                      region_mask=torch.ones(b, k, dtype=torch.long))
    return batch.to(device)


def hf_call(hf, b: vlm.Batch):
    o = hf(input_ids=b.input_ids, attention_mask=b.attention_mask, token_type_ids=b.token_type_ids,
           visual_feats=b.region_feats, visual_pos=b.region_boxes, visual_attention_mask=b.region_mask)
    return o.language_output, o.vision_output, o.pooled_output


def vlm_call(m, b: vlm.Batch):
    o = m(b)
    return o.text_states, o.region_states, o.pooled


def loss_of(outs) -> torch.Tensor:
    t, r, p = outs
    return t.float().square().mean() + r.float().square().mean() + p.float().square().mean()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def matmul_rate(device: str, n: int = 4096, reps: int = 5) -> float:
    """GFLOP/s of an n×n fp32 matmul (median of reps)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    times = [timed(lambda: a @ b, device) for _ in range(reps)]
    return 2 * n**3 / statistics.median(times) / 1e9


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def memory_child(which: str, device: str, steps: int) -> None:
    """Run AdamW training steps for one framework and print its peak memory (bytes) as JSON."""
    hf, ours = make_models(device)
    model, call = (hf, hf_call) if which == "transformers" else (ours, vlm_call)
    del hf, ours
    model.train()
    b = make_inputs(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (device == "cuda" and which == "vlm") else nullcontext()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        with amp:
            loss = loss_of(call(model, b))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_bytes": peak}))


def measure_memory(which: str, device: str, steps: int = 3) -> float:
    res = subprocess.run([sys.executable, __file__, "--memory-child", which, "--device", device,
                          "--steps", str(steps)], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"] / 2**30


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile the vlm model")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument("--memory-child", choices=["vlm", "transformers"], help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.device, args.steps)
        return

    dev = args.device
    hf, ours = make_models(dev)
    batch = make_inputs(dev)
    n = batch.batch_size
    run_ours = torch.compile(ours) if args.compile else ours
    # GPU: vlm runs bf16 autocast with SDPA kernels, transformers runs its fp32 eager path.
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if dev == "cuda" else nullcontext

    def fwd_hf():
        with torch.inference_mode():
            hf_call(hf, batch)

    def fwd_ours():
        with torch.inference_mode(), amp():
            vlm_call(run_ours, batch)

    def train_hf():
        loss_of(hf_call(hf, batch)).backward()

    def train_ours():
        with amp():
            loss = loss_of(vlm_call(run_ours, batch))
        loss.backward()

    with torch.no_grad():  # same weights, same numbers
        hf.eval(), ours.eval()
        a, b_ = hf_call(hf, batch), vlm_call(ours, batch)
        max_diff = max((x - y).abs().max().item() for x, y in zip(a, b_))

    fwd_flops = count_flops(lambda: hf_call(hf, batch))
    train_flops = count_flops(lambda: loss_of(hf_call(hf, batch)).backward())
    hf.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {k: [] for k in ("fwd_hf", "fwd_vlm", "train_hf", "train_vlm")}
    rates = []
    for phase, fns, mode in (("fwd", (fwd_hf, fwd_ours), "eval"), ("train", (train_hf, train_ours), "train")):
        hf.train(mode == "train"), ours.train(mode == "train")
        for _ in range(args.warmup):
            for fn in fns:
                fn()
        for _ in range(args.runs):
            times[f"{phase}_hf"].append(timed(fns[0], dev))
            times[f"{phase}_vlm"].append(timed(fns[1], dev))
            hf.zero_grad(set_to_none=True), ours.zero_grad(set_to_none=True)
        rates.append(matmul_rate(dev))
    rate = statistics.median(rates)
    med = {k: statistics.median(v) for k, v in times.items()}

    dname = torch.cuda.get_device_name() if dev == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# lxmert-base shape (9L/5R/5X, hidden 768), batch {n}, 20 tokens, 36 regions x 2048; {dname}")
    print(f"# torch {torch.__version__}; median of {args.runs} runs after {args.warmup} warm-up; "
          f"vlm {'bf16 autocast' if dev == 'cuda' else 'fp32'}{' + torch.compile' if args.compile else ''}, "
          f"transformers fp32 eager; max |diff| of outputs (eval, fp32) = {max_diff:.2e}")
    print(f"# fp32 matmul 4096^3 rate: {rate:.1f} GFLOP/s; FLOPs/step: forward {fwd_flops / 1e9:.1f} G, "
          f"train {train_flops / 1e9:.1f} G")
    print(f"{'measure':<22}{'transformers':>14}{'vlm':>12}{'vlm/transformers':>18}")
    for phase, flops in (("fwd", fwd_flops), ("train", train_flops)):
        label = "forward" if phase == "fwd" else "train step"
        s_hf, s_vlm = n / med[f"{phase}_hf"], n / med[f"{phase}_vlm"]
        print(f"{label + ' samples/s':<22}{s_hf:>14.2f}{s_vlm:>12.2f}{s_vlm / s_hf:>18.3f}")
        f_hf, f_vlm = flops / med[f"{phase}_hf"] / 1e9, flops / med[f"{phase}_vlm"] / 1e9
        print(f"{label + ' GFLOP/s':<22}{f_hf:>14.1f}{f_vlm:>12.1f}")
        print(f"{label + ' / matmul rate':<22}{f_hf / rate:>14.3f}{f_vlm / rate:>12.3f}")
    if not args.no_memory:
        m_hf, m_vlm = measure_memory("transformers", dev), measure_memory("vlm", dev)
        kind = "max allocated" if dev == "cuda" else "max RSS"
        print(f"{'AdamW step peak GiB':<22}{m_hf:>14.2f}{m_vlm:>12.2f}{m_vlm / m_hf:>18.3f}   ({kind})")


if __name__ == "__main__":
    main()
