"""Exact resume: a run SIGKILLed at a random moment and resumed ends bit-identical to an uninterrupted one; a kill
during a checkpoint write leaves the previous checkpoint loadable."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vlm
from vlm.engine.checkpoint import CheckpointManager, load_trainer_state, resolve_resume
from vlm.errors import CheckpointError

from vlm_testing import write_pretrain_config

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def _pretrain(cfg: str, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vlm.cli", "pretrain", "--config", cfg, "--out", str(out),
                             "--no-progress", *extra], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(tmp_path, easy_vqa_stores):
    # 6 batches per epoch, 10 steps: the run crosses an epoch boundary; dropout on, so RNG state matters.
    cfg = write_pretrain_config(tmp_path / "cfg.yaml", easy_vqa_stores, train_limit=48,
                                train={"max_steps": 10, "save_every": 2, "keep_last": 0},
                                model={"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1})
    ref = _pretrain(cfg, tmp_path / "ref")
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out

    run = tmp_path / "killed"
    proc = _pretrain(cfg, run)
    deadline = time.time() + 300
    while not CheckpointManager(run).list() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(random.Random(os.getpid()).uniform(0.0, 1.5))  # a random moment after the first checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = [p.name for p in CheckpointManager(run).list()]
    assert killed_at, "the run was killed before its first checkpoint"
    resumed = _pretrain(cfg, run, "--resume")
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert "resumed from" in out

    a, b = load_file(str(tmp_path / "ref" / "model" / "model.safetensors")), load_file(str(run / "model" /
                                                                                          "model.safetensors"))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"killed after {killed_at}: tensors differ: {different[:5]}"
    vlm.from_pretrained(run / "model")  # the final checkpoint loads

    # and deterministically from the checkpoint at the epoch boundary (step 6 = 6 batches: saved before the
    # end-of-epoch evaluation, which the resumed run does not repeat)
    import shutil

    again = tmp_path / "from-6"
    shutil.copytree(tmp_path / "ref" / "checkpoints" / "step-00000006", again / "checkpoints" / "step-00000006")
    proc = _pretrain(cfg, again, "--resume")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    c = load_file(str(again / "model" / "model.safetensors"))
    assert not [k for k in a if not torch.equal(a[k], c[k])]


WRITER = textwrap.dedent("""
    import sys, torch, vlm
    from vlm.engine.checkpoint import CheckpointManager
    model = vlm.create_model("vilbert-mini", task="pretraining", num_layers=2, text_init=None)
    manager = CheckpointManager(sys.argv[1], keep_last=2)
    step = 0
    while True:
        step += 1
        state = {"step": step, "optimizer": {"m": torch.randn(2_000_000)}}
        manager.save(step, model, state, "preset: vilbert-mini\\n")
        print(step, flush=True)
""")


@pytest.mark.slow
def test_kill_during_checkpoint_writes_leaves_a_loadable_checkpoint(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random(0)
    seen = 0
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")], env=ENV,
                                stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # one checkpoint is complete
        time.sleep(rng.uniform(0.0, 0.8))  # mostly lands inside a later save (each takes ~0.1-0.5 s)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        latest = resolve_resume(tmp_path / "run", "latest")
        assert latest is not None
        state = load_trainer_state(latest)
        assert state["step"] >= seen and state["optimizer"]["m"].shape == (2_000_000,)
        seen = state["step"]
        vlm.from_pretrained(latest)  # weights and config complete
    leftovers = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]
    # a kill can leave a hidden temporary folder; it is never taken for a checkpoint and the next save removes it
    assert all(p.startswith((".step-", ".trash-")) for p in leftovers)


def test_resume_names_what_is_missing(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="missing: model.safetensors, trainer_state.pt"):
        resolve_resume(tmp_path, str(tmp_path / "half"))
    assert resolve_resume(tmp_path, "latest") is None  # nothing yet: start from scratch
