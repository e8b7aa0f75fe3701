"""torchrun with 2 processes (gloo): identical parameters on both ranks, only rank 0 writes, and 2 ranks x b reach
the weights of 1 rank x 2b on the same data."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file

from vlm_testing import write_pretrain_config

WORKER = textwrap.dedent("""
    import os, sys
    from safetensors.torch import save_file
    from pretraining.run import PretrainRun, load_pretrain_config
    from vlm.engine.distributed import DistInfo

    dist = DistInfo.from_env(os.environ)  # as the CLI does
    cfg = load_pretrain_config(sys.argv[1], overrides=sys.argv[4:])
    run = PretrainRun(cfg, out_dir=sys.argv[2], dist=dist, show_progress=False)
    run.run()
    # each rank reports its own parameters, outside the run folder, so that the test can compare ranks
    os.makedirs(sys.argv[3], exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in run.model.state_dict().items()
               if not k.startswith("mlm.decoder")}, os.path.join(sys.argv[3], f"rank{dist.rank}.safetensors"))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_match_one_rank_with_double_batch(tmp_path, easy_vqa_stores):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    cfg = write_pretrain_config(tmp_path / "cfg.yaml", easy_vqa_stores, train_limit=96,
                                train={"max_steps": 4, "save_every": 2, "lr": 1e-3})
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(_free_port()), str(worker), cfg, str(tmp_path / "ddp"),
                          str(tmp_path / "ranks"), "train.batch_size=4"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stdout + two.stderr
    one = subprocess.run([sys.executable, "-m", "vlm.cli", "pretrain", "--config", cfg, "--out",
                          str(tmp_path / "single"), "--no-progress", "train.batch_size=8"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stdout + one.stderr

    # both ranks ended with identical parameters
    r0, r1 = (load_file(str(tmp_path / "ranks" / f"rank{r}.safetensors")) for r in (0, 1))
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    # only rank 0 wrote: one summary, one set of checkpoints, metrics logged once per step
    lines = (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()
    train_steps = [l for l in lines if '"train/loss"' in l]
    assert len(train_steps) == 4
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["checkpoints", "config.yaml", "metrics.jsonl",
                                                                    "model", "summary.json"]
    # 2 ranks x 4 == 1 rank x 8 on the same samples (dropout off, fp32)
    a = load_file(str(tmp_path / "ddp" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "single" / "model" / "model.safetensors"))
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, f"largest parameter difference {worst}"
    assert all(torch.equal(a[k], r0[k]) for k in r0)  # rank 0's parameters are what was saved
