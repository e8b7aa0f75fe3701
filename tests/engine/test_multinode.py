"""Several nodes with torchrun, simulated on this machine: two torchrun processes on loopback stand for two nodes
(gloo, one rank each, the same thread counts). Both launch styles (c10d rendezvous and static), built-in features
made once per node, stores that differ refused, and a worker killed at a seeded step that torchrun restarts."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlm_testing import write_pretrain_config

pytestmark = pytest.mark.slow

# TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, as docs/distributed.md says for elastic restarts: otherwise the workers
# of every rendezvous round use the c10d agent's one store, where the addresses of the workers of the round before
# are still found, and a restarted process group can wait on a dead peer (a race in torch, seen here)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
       "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "PYTHONPATH": os.pathsep.join(sys.path)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(launch: list[str], args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    handle = open(log, "w")  # noqa: SIM115 - closed by the OS when the process ends; read by the test
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launch, "-m", "vlm.cli", *args],
                            env={**ENV, **(env or {})}, stdout=handle, stderr=subprocess.STDOUT, text=True)


def _c10d(node: int, port: int, *extra: str) -> list[str]:
    return ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
            f"127.0.0.1:{port}", "--rdzv-id", "vlm-test", "--rdzv-conf", f"is_host={'true' if node == 0 else 'false'}",
            "--local-addr", "127.0.0.1", *extra]


def _static(node: int, port: int) -> list[str]:
    return ["--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node), "--master-addr", "127.0.0.1",
            "--master-port", str(port), "--local-addr", "127.0.0.1"]


def _two_nodes(launch, args: list[str] | tuple[list[str], list[str]], logs: Path, envs=(None, None),
               timeout: float = 600) -> list[str]:
    """Start two "nodes" and wait for both; returns their outputs (asserting nothing)."""
    logs.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    per_node = args if isinstance(args, tuple) else (args, args)
    procs = [_torchrun(launch(n, port), per_node[n], logs / f"node{n}.log", envs[n]) for n in (0, 1)]
    for p in procs:
        p.wait(timeout=timeout)
    return [(logs / f"node{n}.log").read_text() for n in (0, 1)] + [p.returncode for p in procs]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.fixture(scope="module")
def config(tmp_path_factory, easy_vqa_stores) -> str:
    root = tmp_path_factory.mktemp("multinode")
    return write_pretrain_config(root / "cfg.yaml", easy_vqa_stores, train_limit=96,
                                 train={"max_steps": 8, "save_every": 2, "keep_last": 0, "lr": 1e-3,
                                        "batch_size": 4})


@pytest.fixture(scope="module")
def one_node(config, tmp_path_factory) -> Path:
    """The reference: one node with two ranks."""
    out = tmp_path_factory.mktemp("one-node") / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           str(_free_port()), "-m", "vlm.cli", "pretrain", "--config", config, "--out", str(out),
                           "--no-progress"], env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.mark.parametrize("launch", [_c10d, _static], ids=["c10d", "static"])
def test_two_nodes_give_the_weights_of_one_node_with_two_ranks(tmp_path, config, one_node, launch):
    out = tmp_path / "run"
    *logs, rc0, rc1 = _two_nodes(launch, ["pretrain", "--config", config, "--out", str(out), "--no-progress"],
                                 tmp_path / "logs")
    assert rc0 == rc1 == 0, "\n".join(logs)
    assert not _same(_weights(one_node), _weights(out))
    # global rank 0 alone wrote the run folder: one metrics line per step
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"train/loss"' in line]
    assert steps == list(range(1, 9))


def test_builtin_features_are_made_once_per_node_and_every_rank_passes_the_same_barriers(tmp_path):
    """Node 0's cache is empty (its local rank 0 extracts), node 1's already holds the store (it skips extraction
    but still enters the barrier: before, it skipped it and the job hung)."""
    caches = [tmp_path / "cache0", tmp_path / "cache1"]
    args = ["pretrain", "--arch", "lxmert", "--no-progress", "--max-steps", "2", "train.batch_size=4",
            "train.precision=fp32", "data.backend=patches", "data.holdout_images=8", "data.train_limit=64",
            "data.eval_limit=16", "model.hidden_size=32", "model.num_attention_heads=4", "model.intermediate_size=64",
            "model.l_layers=1", "model.r_layers=1", "model.x_layers=1", "model.text_init=null"]
    # node 1's cache is filled first, by a single-process run
    single = subprocess.run([sys.executable, "-m", "vlm.cli", *args, "--out", str(tmp_path / "fill"),
                             f"data.cache_dir={caches[1]}"], env=ENV, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stdout + single.stderr
    stores = list((caches[1] / "features").iterdir())
    assert len(stores) == 1  # the training split only (validation is held out of it)
    before = stores[0].joinpath("manifest.json").stat().st_mtime_ns

    out = tmp_path / "run"
    node_args = tuple([*args, "--out", str(out), f"data.cache_dir={c}"] for c in caches)
    *logs, rc0, rc1 = _two_nodes(_c10d, node_args, tmp_path / "logs", timeout=900)
    assert rc0 == rc1 == 0, "\n".join(logs)
    assert "extracting built-in features" in logs[0] and "extracting built-in features" not in logs[1]
    assert stores[0].joinpath("manifest.json").stat().st_mtime_ns == before  # node 1 did not extract again
    made = caches[0] / "features" / stores[0].name
    assert json.loads((made / "manifest.json").read_text())["shards"] == \
        json.loads((stores[0] / "manifest.json").read_text())["shards"]

    # a node whose store holds other bytes (here: a recorded shard checksum changed) is refused on every rank
    manifest = json.loads((made / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = "0" * 64
    (made / "manifest.json").write_text(json.dumps(manifest))
    *logs, rc0, rc1 = _two_nodes(_c10d, tuple([*a[:-2], str(tmp_path / "refused"), a[-1]] for a in node_args),
                                 tmp_path / "logs-refused")
    assert rc0 != 0 and rc1 != 0
    for log in logs:
        assert "the ranks do not agree on the feature stores" in log, log[-3000:]
    assert not (tmp_path / "refused" / "checkpoints").exists()


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_worker_killed_at_a_seeded_step_is_restarted_and_the_run_equals_an_uninterrupted_one(tmp_path, config,
                                                                                             one_node):
    kill_at = random.Random(27).randint(3, 6)  # seeded: the step after which node 1's worker is killed
    out = tmp_path / "run"
    port = _free_port()
    args = ["pretrain", "--config", config, "--out", str(out), "--no-progress", "--resume"]
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [_torchrun(_c10d(n, port, "--max-restarts", "1"), args, logs / f"node{n}.log") for n in (0, 1)]
    metrics = out / "metrics.jsonl"
    killed = None
    deadline = time.time() + 600
    while killed is None and time.time() < deadline and all(p.poll() is None for p in procs):
        steps = [json.loads(line).get("step", 0) for line in metrics.read_text().splitlines()] \
            if metrics.is_file() else []
        if steps and max(steps) >= kill_at:
            workers = _children(procs[1].pid)
            if workers:
                os.kill(workers[0], signal.SIGKILL)
                killed = max(steps)
        time.sleep(0.02)
    for p in procs:
        try:
            p.wait(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
    text = [(logs / f"node{n}.log").read_text() for n in (0, 1)]
    assert killed is not None, "the run ended before the kill:\n" + "\n".join(text)
    assert [p.returncode for p in procs] == [0, 0], "\n".join(text)
    assert "torchrun restart 1: continuing the run" in "".join(text)
    assert not _same(_weights(one_node), _weights(out)), f"killed at step {killed}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["steps"] == 8


def test_overwrite_is_never_applied_on_a_restart(tmp_path, config):
    """A restarted worker (TORCHELASTIC_RESTART_COUNT > 0) with --overwrite on its command line continues the run
    from its newest checkpoint instead of deleting it, and ends where the uninterrupted run ends."""
    def pretrain(out: Path, *extra: str, env: dict[str, str] | None = None) -> str:
        proc = subprocess.run([sys.executable, "-m", "vlm.cli", "pretrain", "--config", config, "--out", str(out),
                               "--no-progress", *extra], env={**ENV, **(env or {})}, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    pretrain(tmp_path / "whole")
    out = tmp_path / "run"
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "step-00000004", out / "checkpoints" / "step-00000004")
    (out / "metrics.jsonl").write_text("")
    said = pretrain(out, "--overwrite", env={"TORCHELASTIC_RESTART_COUNT": "1"})
    assert "torchrun restart 1: continuing the run" in said and "--overwrite applies to the first try only" in said
    assert json.loads((out / "summary.json").read_text())["resumed_from"].endswith("step-00000004")
    assert not _same(_weights(tmp_path / "whole"), _weights(out))
