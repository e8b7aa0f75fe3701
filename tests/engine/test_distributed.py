"""Starting a run: the device that train.device names, and the seed."""

from __future__ import annotations

import pytest
import torch

from vlm.config import ConfigError, TrainConfig
from vlm.engine.distributed import DistInfo, resolve_device
from vlm.engine.run import start_run


def test_auto_is_this_ranks_gpu_or_the_cpu():
    expected = "cuda:1" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", DistInfo(rank=1, world_size=2, local_rank=1)) == torch.device(expected)
    assert resolve_device("cpu", DistInfo()) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a cuda:7")
def test_a_missing_cuda_device_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"train\.device=cuda:7: no such CUDA device on this machine \(\d+ visible\)"):
        resolve_device("cuda:7", DistInfo())


def test_start_run_resolves_the_device_and_seeds_torch_without_a_process_group(tmp_path):
    run = start_run(TrainConfig(device="cpu", seed=5), out_dir=tmp_path / "run")
    drawn = torch.rand(3)
    torch.manual_seed(5)
    assert run.device == torch.device("cpu") and torch.equal(drawn, torch.rand(3))
    assert not torch.distributed.is_initialized()
    run.seed_training()  # the training RNG: seed + rank
    drawn = torch.rand(3)
    torch.manual_seed(5 + 0)
    assert torch.equal(drawn, torch.rand(3))
