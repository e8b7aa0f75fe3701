"""Streaming a store front to back (``pipe:`` commands, folders, URLs) and training from it with the streamed data
plan: the same samples as random access, checked, retried, errors naming the shard; slots of equal length; exact
resume; the same weights from every source."""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from features.errors import ShardError, StoreError
from features.store import FeatureStore, StreamedStore, open_store, random_access

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_remote_store import IDS, Served, _same, _write_store  # noqa: E402


def _pipe(directory: Path) -> str:
    return f"pipe:cat {shlex.quote(str(directory))}/{{file}}"


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    return _write_store(tmp_path / "store")


def test_every_source_streams_what_random_access_reads(store):
    served = Served(store)
    try:
        reference = FeatureStore(store)
        for location in (str(store), served.url, _pipe(store)):
            s = StreamedStore(location)
            assert len(s) == len(IDS) and s.num_shards == 3 and all(i in s for i in IDS)
            assert [s.shard_ids(n) for n in range(3)] == [IDS[:4], IDS[4:6], IDS[6:]]
            got = [x for n in range(3) for x in s.read_shard(n)]
            assert [x["image_id"] for x in got] == IDS
            assert all(_same(x, reference[x["image_id"]]) for x in got), location
            assert _same(s[IDS[5]], reference[IDS[5]])
    finally:
        served.close()


def test_a_pipe_store_needs_the_file_placeholder_and_names_a_failing_command(store, tmp_path):
    with pytest.raises(StoreError, match=r"\{file\}"):
        StreamedStore(f"pipe:cat {store}/manifest.json")
    with pytest.raises(StoreError, match=r"exit status .*No such file"):
        StreamedStore(_pipe(tmp_path / "nowhere"))


def test_a_broken_stream_is_read_again_and_a_shard_cut_short_for_good_is_an_error(store, tmp_path):
    flag = tmp_path / "failed-once"
    # the first read of shard 0 breaks halfway with a failure status; the second works
    once = (f"pipe:f={shlex.quote(str(store))}/{{file}}; case {{file}} in *000000.tar) "
            f"if [ ! -e {flag} ]; then touch {flag}; head -c 3000 \"$f\"; exit 3; fi;; esac; cat \"$f\"")
    s = StreamedStore(once)
    assert [x["image_id"] for x in s.read_shard(0)] == IDS[:4] and flag.exists()
    cut = f"pipe:f={shlex.quote(str(store))}/{{file}}; case {{file}} in *.tar) head -c 3000 \"$f\";; *) cat \"$f\";; esac"
    s = StreamedStore(cut, retries=1)
    with pytest.raises(ShardError, match=r"shard-000000\.tar.*cut short.*after 2 tries.*of 4 samples read"):
        list(s.read_shard(0))
    failing = f"pipe:f={shlex.quote(str(store))}/{{file}}; case {{file}} in *.tar) echo no access >&2; exit 1;; " \
              "*) cat \"$f\";; esac"
    with pytest.raises(ShardError, match=r"exit status 1: no access"):
        list(StreamedStore(failing, retries=0).read_shard(1))


def test_a_damaged_or_longer_shard_is_an_error_naming_it(store, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(store, damaged)
    shard = damaged / "shard-000001.tar"
    data = bytearray(shard.read_bytes())
    data[1500] ^= 0xFF  # inside the first sample's feats member
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"shard shard-000001\.tar \(from `cat .*`\) is damaged: sample 'img/4\.jpg'"):
        list(StreamedStore(_pipe(damaged)).read_shard(1))
    longer = f"pipe:f={shlex.quote(str(store))}/{{file}}; cat \"$f\"; case {{file}} in *.tar) printf x;; esac"
    with pytest.raises(ShardError, match=r"longer than recorded"):
        list(StreamedStore(longer, retries=0).read_shard(2))


def test_held_out_data_are_read_by_random_access_and_a_pipe_store_is_refused_for_them(store):
    streamed = open_store(store, stream=True)
    assert isinstance(streamed, StreamedStore) and isinstance(random_access(streamed), FeatureStore)
    assert isinstance(open_store(_pipe(store)), StreamedStore)
    with pytest.raises(StoreError, match=r"random access.*can only be streamed.*--eval-features"):
        random_access(open_store(_pipe(store)))


# --------------------------------------------------------------------------------------------------- the data plan


class _Rows:
    """A batch source of one example per (image, copy): batches hold the example indices and a feature checksum."""

    def __init__(self, images: list[str], copies: int) -> None:
        self.images = [img for img in images for _ in range(copies)]

    def __len__(self) -> int:
        return len(self.images)

    def example_images(self) -> list[str]:
        return self.images

    def batch(self, indices, epoch, store=None):
        for i in indices:  # every example's features come with its batch
            assert store[self.images[i]]["image_id"] == self.images[i]
        return torch.as_tensor(np.asarray(indices))


def test_the_streamed_plan_gives_every_slot_as_many_batches_and_replays_from_any_position(store):
    from vlm.data.streamed import StreamedExamples
    from vlm.engine.loader import StreamPlan

    source = StreamedExamples(_Rows(IDS, 3), StreamedStore(store), buffer_size=5, seed=1)
    assert source.shard_examples.tolist() == [12, 6, 3]
    for workers in (0, 2):
        plans = [StreamPlan(source, 2, world_size=1, rank=0, num_workers=workers)]
        seen = []
        for plan in plans:
            for epoch in (0, 1):
                full = [b.tolist() for b in plan.loader(source, epoch, num_workers=workers)]
                assert len(full) == plan.batches_per_epoch
                flat = [i for b in full for i in b]
                assert len(flat) == len(set(flat))  # each example at most once an epoch
                for start in (1, 3):
                    assert [b.tolist() for b in plan.loader(source, epoch, start=start, num_workers=workers)] == \
                        full[start:]
                seen.append(full)
        assert seen[0] != seen[1]  # another epoch, another order
    two = StreamPlan(source, 2, num_workers=2)  # 2 slots: the smaller shards bound them (3 examples: 1 batch each)
    assert two.batches_per_epoch == 2 and two.unused == 21 - 4
    with pytest.raises(Exception, match=r"3 shard\(s\).*at least one each"):
        StreamPlan(source, 2, world_size=2, num_workers=2)


# --------------------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def sharded_store(tmp_path_factory) -> str:
    """Real easy-VQA images in a `patches` store of four shards."""
    from features.extract import extract

    d = tmp_path_factory.mktemp("sharded") / "feats"
    extract("easy-vqa:train", d, "patches", limit=24, shard_size=6, part=(0, 1), device="cpu", progress=False,
            num_workers=0)
    return str(d)


def _finetune(store: str, out: Path, *extra: str) -> int:
    from vlm.cli import main

    from vlm_testing import TINY_MODEL

    tiny = [f"model.{k}={'null' if v is None else v}" for k, v in TINY_MODEL.items()]
    return main(["finetune", "--task", "vqa", "--arch", "lxmert", "--features", store, "--out", str(out),
                 "--no-progress", "train.batch_size=4", "train.precision=fp32", "train.max_steps=10",
                 "train.save_every=3", "train.keep_last=0", "train.eval_every=0", "train.num_workers=2",
                 "data.stream_buffer=16", "data.holdout_images=0", "train.best_metric=", "train.patience=0",
                 "data.eval_limit=8", *tiny, *extra])


def test_finetuning_from_a_pipe_equals_a_streamed_folder_and_resumes_exactly(tmp_path, sharded_store,
                                                                             easy_vqa_stores):
    eval_features = f"--eval-features={easy_vqa_stores[1]}"
    assert _finetune(_pipe(Path(sharded_store)), tmp_path / "pipe", eval_features) == 0
    assert _finetune(sharded_store, tmp_path / "folder", eval_features, "data.stream=true") == 0
    resumed = tmp_path / "resumed"  # from step 6: past an epoch's end (24 images x ~10 questions / 4 / 2 slots)
    shutil.copytree(tmp_path / "pipe" / "checkpoints" / "step-00000006", resumed / "checkpoints" / "step-00000006")
    assert _finetune(_pipe(Path(sharded_store)), resumed, eval_features, "--resume") == 0
    a = load_file(str(tmp_path / "pipe" / "model" / "model.safetensors"))
    for other in ("folder", "resumed"):
        b = load_file(str(tmp_path / other / "model" / "model.safetensors"))
        assert not [k for k in a if not torch.equal(a[k], b[k])], other
    random = tmp_path / "random"  # the random-access plan is another data order
    assert _finetune(sharded_store, random, eval_features) == 0
    b = load_file(str(random / "model" / "model.safetensors"))
    assert [k for k in a if not torch.equal(a[k], b[k])]


def test_a_pipe_store_lends_no_held_out_images(tmp_path, sharded_store, easy_vqa_stores, capsys):
    assert _finetune(_pipe(Path(sharded_store)), tmp_path / "run") != 0  # the test split falls back to --features
    err = capsys.readouterr().err
    assert "the held-out data are read by random access" in err and "can only be streamed" in err
    assert _finetune(_pipe(Path(sharded_store)), tmp_path / "run", f"--eval-features={easy_vqa_stores[1]}",
                     "data.holdout_images=4") != 0
    err = capsys.readouterr().err
    assert "validation data (data.holdout_images) are read by random access" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_pretraining_streams_with_regions_swapped_within_the_batch_and_resumes_exactly(tmp_path, sharded_store,
                                                                                       easy_vqa_stores):
    import yaml

    from vlm.cli import main

    from vlm_testing import write_pretrain_config

    cfg = Path(write_pretrain_config(tmp_path / "c.yaml", (_pipe(Path(sharded_store)), easy_vqa_stores[1]),
                                     train={"max_steps": 6, "save_every": 3, "keep_last": 0, "num_workers": 2},
                                     train_limit=0))
    data = yaml.safe_load(cfg.read_text())
    data["data"]["stream_buffer"] = 32
    data["masking"] = {"region_zero": 0.4, "region_swap": 0.5}  # many swapped regions: each one from another image of its batch
    cfg.write_text(yaml.safe_dump(data))
    assert main(["pretrain", "--config", str(cfg), "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    resumed = tmp_path / "b"
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-00000003", resumed / "checkpoints" / "step-00000003")
    assert main(["pretrain", "--config", str(cfg), "--out", str(resumed), "--resume", "--no-progress"]) == 0
    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(resumed / "model" / "model.safetensors"))
    assert not [k for k in a if not torch.equal(a[k], b[k])]
