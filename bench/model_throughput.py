"""vlm vs transformers LxmertModel at the lxmert-base shape: throughput, fraction of the matmul rate, peak memory.

Same weights (the transformers model imported with ``vlm.from_transformers``) and the same inputs (batch 32, 20 tokens,
36 regions of 2048-d). Inference forward and a training step (forward + backward) are timed with the two frameworks
interleaved, median of ``--runs`` after warm-up. A large fp32 matmul timed in the same run gives the machine's rate;
FLOPs come from ``torch.utils.flop_counter`` on the transformers model. Peak memory of a training step with AdamW is
measured in a fresh subprocess per framework (max RSS on CPU, max allocated on CUDA).

    python bench/model_throughput.py                 # CPU fp32
    python bench/model_throughput.py --device cuda   # GPU: vlm fp32 and bf16 autocast (SDPA) vs transformers fp32

Where the device has native bf16 (CUDA, or a CPU with AVX512-BF16/AMX) a "vlm bf16 autocast" row is added; the
fp32 rows are the like-for-like comparison.
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
from vlm.precision import autocast, autocast_dtype


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
    torch.manual_seed(0)
    if which == "transformers":  # build only the measured model: the other's weights would count in the peak
        model, call = LxmertModel(LxmertConfig()).to(device), hf_call
    else:
        model, call = vlm.create_model("lxmert-base", task="encoder").to(device), vlm_call  # vlm, vlm-fused
    model.train()
    b = make_inputs(device)
    # "vlm-fused": the same model with torch's fused AdamW (no foreach temporaries).
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=which == "vlm-fused" or None)
    amp = nullcontext()  # fp32 for both: the like-for-like comparison
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
        peak = peak_rss_bytes()
    print(json.dumps({"peak_bytes": peak}))


def peak_rss_bytes() -> int:
    """This process's peak resident set size. VmHWM belongs to the process's own address space; getrusage's
    ru_maxrss would not do here, since Linux carries it over from the (large) parent across fork + exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
    ap.add_argument("--memory-child", choices=["vlm", "vlm-fused", "transformers"], help=argparse.SUPPRESS)
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
    bf16 = autocast_dtype(dev, "auto") is torch.bfloat16  # CUDA with bf16, or a CPU with native bf16 (AVX512-BF16/AMX)

    # name -> (model, call, autocast context factory); transformers always runs its fp32 eager path.
    variants = {"transformers fp32": (hf, hf_call, nullcontext), "vlm fp32": (run_ours, vlm_call, nullcontext)}
    if bf16:
        variants["vlm bf16 autocast"] = (run_ours, vlm_call, lambda: autocast(dev, "bf16"))

    def forward(model, call, amp):
        with torch.inference_mode(), amp():
            call(model, batch)

    def train_step(model, call, amp):
        with amp():
            loss = loss_of(call(model, batch))
        loss.backward()

    with torch.no_grad():  # same weights, same numbers
        hf.eval(), ours.eval()
        a, b_ = hf_call(hf, batch), vlm_call(ours, batch)
        max_diff = max((x - y).abs().max().item() for x, y in zip(a, b_))

    fwd_flops = count_flops(lambda: hf_call(hf, batch))
    train_flops = count_flops(lambda: loss_of(hf_call(hf, batch)).backward())
    hf.zero_grad(set_to_none=True)

    times: dict[tuple[str, str], list[float]] = {}
    rates = []
    for phase, fn in (("fwd", forward), ("train", train_step)):
        hf.train(phase == "train"), ours.train(phase == "train")
        for _ in range(args.warmup):
            for v in variants.values():
                fn(*v)
        for _ in range(args.runs):  # interleaved: machine noise hits every variant alike
            for name, v in variants.items():
                times.setdefault((phase, name), []).append(timed(lambda: fn(*v), dev))
            hf.zero_grad(set_to_none=True), ours.zero_grad(set_to_none=True)
        rates.append(matmul_rate(dev))
    rate = statistics.median(rates)
    med = {k: statistics.median(v) for k, v in times.items()}

    dname = torch.cuda.get_device_name() if dev == "cuda" else f"CPU ({torch.backends.cpu.get_cpu_capability()}), " \
        f"{torch.get_num_threads()} threads"
    print(f"# lxmert-base shape (9L/5R/5X, hidden 768), batch {n}, 20 tokens, 36 regions x 2048; {dname}")
    print(f"# torch {torch.__version__}; median of {args.runs} interleaved runs after {args.warmup} warm-up"
          f"{'; vlm under torch.compile' if args.compile else ''}; max |diff| vlm vs transformers outputs "
          f"(eval, fp32) = {max_diff:.2e}")
    print(f"# fp32 matmul 4096^3 rate: {rate:.1f} GFLOP/s; FLOPs per batch: forward {fwd_flops / 1e9:.1f} G, "
          f"train step {train_flops / 1e9:.1f} G")
    print(f"{'variant':<20}{'phase':<12}{'samples/s':>11}{'vs transformers':>17}{'GFLOP/s':>10}{'/ fp32 matmul':>15}")
    for phase, flops in (("fwd", fwd_flops), ("train", train_flops)):
        base = med[(phase, "transformers fp32")]
        for name in variants:
            t = med[(phase, name)]
            print(f"{name:<20}{'forward' if phase == 'fwd' else 'train step':<12}{n / t:>11.2f}{base / t:>17.3f}"
                  f"{flops / t / 1e9:>10.1f}{flops / t / 1e9 / rate:>15.3f}")
    if not args.no_memory:
        mem = {w: measure_memory(w, dev, args.steps) for w in ("transformers", "vlm", "vlm-fused")}
        kind = "max allocated" if dev == "cuda" else "peak RSS (VmHWM) of a fresh process, torch libraries included"
        print(f"# peak memory of {args.steps} fp32 training steps with AdamW ({kind}):")
        for w, label in (("transformers", "transformers, AdamW"), ("vlm", "vlm, AdamW"),
                         ("vlm-fused", "vlm, AdamW(fused=True)")):
            print(f"{label:<26}{mem[w]:>8.2f} GiB{mem[w] / mem['transformers']:>8.3f}")


if __name__ == "__main__":
    main()
