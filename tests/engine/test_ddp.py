"""torchrun with 2 processes (gloo): identical parameters on both ranks, only rank 0 writes, 2 ranks x b reach the
weights of 1 rank x 2b on the same data, and DDP looks for unused parameters only when some are unused."""

from __future__ import annotations

import json
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
    from pretraining.run import load_pretrain_config, prepare_pretraining
    from vlm.engine.distributed import DistInfo

    dist = DistInfo.from_env(os.environ)  # as the CLI does
    cfg = load_pretrain_config(sys.argv[1], overrides=sys.argv[4:])
    run = prepare_pretraining(cfg, out_dir=sys.argv[2], dist=dist, show_progress=False)  # as pretrain() does
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


TOY_WORKER = textwrap.dedent("""
    import json, logging, os, sys
    from engine_toys import RecordingSource, ToyTask
    from vlm.config import TrainConfig
    from vlm.engine.distributed import DistInfo
    from vlm.engine.run import start_run
    from vlm.engine.trainer import Trainer

    logging.basicConfig(level=logging.INFO)
    dist = DistInfo.from_env(os.environ)
    cfg = TrainConfig(batch_size=2, grad_accum=2, max_steps=3, log_every=1, lr=1e-2, warmup_ratio=0.0,
                      precision="fp32", device="cpu")
    run = start_run(cfg, out_dir=sys.argv[1], dist=dist)
    task = ToyTask(spare=sys.argv[2] == "spare")
    trainer = Trainer(task, RecordingSource(32), cfg, save_model=task, run=run, show_progress=False)
    trainer.train()
    report = os.path.join(sys.argv[3], f"rank{dist.rank}.json")
    with open(report, "w") as f:
        json.dump({"find_unused": trainer.model.find_unused_parameters}, f)
""")


@pytest.mark.slow
@pytest.mark.parametrize("spare", [False, True])
def test_ddp_looks_for_unused_parameters_only_when_some_are_unused(tmp_path, spare):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    worker = tmp_path / "worker.py"
    worker.write_text(TOY_WORKER)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), str(worker), str(tmp_path / "run"),
                           "spare" if spare else "all-used", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["find_unused"] is spare for r in reports)
    assert "Expected to have finished reduction" not in out  # DDP's error when an unused parameter is not expected
    assert "find_unused_parameters=True was specified" not in out  # its warning when the search finds nothing
    assert ("2 parameter(s) get no gradient in a training step" in out and "spare.weight, spare.bias" in out) is spare
