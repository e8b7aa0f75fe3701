"""Cost of Batch.check on the hot path: lxmert-mini forward (bf16 autocast where the CPU has native bf16, else fp32;
``vlm.precision.autocast``) (batch 64, T 12, K 16) with the check vs with it switched off, interleaved, median of 5
rounds of 20; plus the check alone.

    python bench/batch_check_cost.py
"""

from __future__ import annotations

import statistics
import time

import torch

import vlm
from vlm.batch import Batch
from vlm.precision import autocast, autocast_dtype


def main() -> None:
    torch.manual_seed(0)
    m = vlm.create_model("lxmert-mini", task="vqa", num_answers=13, visual_feat_dim=320).eval()
    b, t, k = 64, 12, 16
    ids = torch.randint(1000, 30000, (b, t))
    ids[:, 0] = 101
    batch = vlm.Batch(input_ids=ids, attention_mask=torch.ones(b, t, dtype=torch.long),
                      token_type_ids=torch.zeros(b, t, dtype=torch.long), region_feats=torch.randn(b, k, 320),
                      region_boxes=torch.rand(b, k, 4), region_mask=torch.ones(b, k, dtype=torch.long))
    real = Batch.check

    def run(check_on: bool, n: int = 20) -> float:
        Batch.check = real if check_on else (lambda self, *a, **kw: None)
        with torch.inference_mode(), autocast("cpu"):
            t0 = time.perf_counter()
            for _ in range(n):
                m(batch)
        return (time.perf_counter() - t0) / n

    try:
        run(True, 5)
        on, off = [], []
        for _ in range(5):
            on.append(run(True))
            off.append(run(False))
    finally:
        Batch.check = real
    print(f"precision {autocast_dtype('cpu') or 'fp32'}: forward ms with check {1000 * statistics.median(on):.2f}, "
          f"without {1000 * statistics.median(off):.2f}, cost {statistics.median(on) / statistics.median(off) - 1:+.2%}")
    t0 = time.perf_counter()
    for _ in range(200):
        batch.check(320, 4, 30522, 2)
    print(f"check alone: {1000 * (time.perf_counter() - t0) / 200:.3f} ms")


if __name__ == "__main__":
    main()
