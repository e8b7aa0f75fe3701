"""The feature store: writer, random access, streaming, splitting, corruption detection."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from features.errors import ShardError, StoreError
from features.store import FORMAT_VERSION, FeatureStore, ShardWriter, finalize_store, stream

IDS = ["0", "17", "COCO_val2014_000000000042", "img.v2", "dir/sub file", "100%", "ünï"]


def _plan(num_shards: int) -> dict:
    return {"format": "vlm-features", "version": FORMAT_VERSION, "backend": "test", "settings": {}, "weights": {},
            "random_weights": False, "feature_dim": 6, "num_regions": 3, "shard_size": 3, "num_shards": num_shards}


def _arrays(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    return rng.standard_normal((3, 6)).astype(np.float16), rng.random((3, 4)).astype(np.float32)


def _make_store(directory: Path, ids: list[str] = IDS, shard_size: int = 3) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    chunks = [ids[i:i + shard_size] for i in range(0, len(ids), shard_size)]
    for number, chunk in enumerate(chunks):
        writer = ShardWriter(directory, number)
        for image_id in chunk:
            feats, boxes = _arrays(ids.index(image_id))
            writer.write(image_id, feats, boxes, {"width": 10, "height": 20, "objects_id": [1, 2, 3]})
        writer.commit()
    return finalize_store(directory, _plan(len(chunks)))


def test_random_access_round_trips_any_id(tmp_path: Path) -> None:
    manifest = _make_store(tmp_path / "s")
    assert manifest["complete"] and manifest["num_samples"] == len(IDS)
    store = FeatureStore(tmp_path / "s")
    assert len(store) == len(IDS) and store.feature_dim == 6 and store.num_regions == 3
    assert list(store.ids()) == IDS and list(store) == IDS
    for i, image_id in enumerate(IDS):
        assert image_id in store
        sample = store[image_id]
        feats, boxes = _arrays(i)
        assert sample["image_id"] == image_id and sample["meta"]["objects_id"] == [1, 2, 3]
        np.testing.assert_array_equal(sample["feats"], feats)
        np.testing.assert_array_equal(sample["boxes"], boxes)
        assert sample["feats"].dtype == np.float16 and sample["boxes"].dtype == np.float32
    assert "1" not in store and "img" not in store
    with pytest.raises(KeyError):
        store["missing"]


def test_stream_yields_the_same_samples_and_shuffles_per_epoch(tmp_path: Path) -> None:
    _make_store(tmp_path / "s")
    store = FeatureStore(tmp_path / "s")
    ordered = [s["image_id"] for s in stream(tmp_path / "s", shuffle=False)]
    assert ordered == IDS
    pipeline = stream(tmp_path / "s", shuffle=True, buffer_size=4, seed=3)
    pipeline.set_epoch(0)
    epoch0 = list(pipeline)
    pipeline.set_epoch(0)
    assert [s["image_id"] for s in pipeline] == [s["image_id"] for s in epoch0]  # reproducible
    orders = set()
    for epoch in range(1, 6):
        pipeline.set_epoch(epoch)
        orders.add(tuple(s["image_id"] for s in pipeline))
    assert len(orders) > 1 and all(sorted(o) == sorted(IDS) for o in orders)
    for sample in epoch0:
        reference = store[sample["image_id"]]
        np.testing.assert_array_equal(sample["feats"], reference["feats"])
        np.testing.assert_array_equal(sample["boxes"], reference["boxes"])
        assert sample["meta"] == reference["meta"]


def test_stream_splits_by_worker_and_node_and_resamples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [str(i) for i in range(24)]
    _make_store(tmp_path / "s", ids, shard_size=3)  # 8 shards
    loader = torch.utils.data.DataLoader(stream(tmp_path / "s", shuffle=True, buffer_size=5), batch_size=None,
                                         num_workers=2)
    seen = [s["image_id"] for s in loader]
    assert sorted(seen) == sorted(ids)  # every image exactly once across both workers
    parts = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        parts.append({s["image_id"] for s in stream(tmp_path / "s", shuffle=True, seed=1)})
    assert parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == set(ids)
    assert len(parts[0]) == 12
    resampled = stream(tmp_path / "s", resampled=True, shuffle=False)
    drawn = [s["image_id"] for _, s in zip(range(60), resampled)]
    assert len(drawn) == 60 and set(drawn) <= set(ids)


def test_truncated_shard_is_named_by_readers_and_inspect(tmp_path: Path, cli) -> None:
    _make_store(tmp_path / "s")
    shard = tmp_path / "s" / "shard-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[:2000])
    with pytest.raises(ShardError, match=r"shard .*shard-000001\.tar is truncated: 2000 bytes"):
        FeatureStore(tmp_path / "s")
    with pytest.raises(ShardError, match=r"shard-000001\.tar is truncated"):
        list(stream(tmp_path / "s", shuffle=False))
    # streaming the bare shard list (no manifest to compare with) checks it against its sidecar
    with pytest.raises(ShardError, match=r"shard .*shard-000001\.tar is truncated: 2000 bytes, its sidecar records"):
        list(stream([str(shard)], shuffle=False))
    # a shard without a sidecar (not written by vlm) is refused, or read by webdataset with verify=False
    foreign = tmp_path / "foreign.tar"
    foreign.write_bytes(shard.read_bytes())
    with pytest.raises(ShardError, match=r"foreign\.tar: no sidecar foreign\.json beside it.*verify=False"):
        list(stream([str(foreign)], shuffle=False))
    with pytest.raises(ShardError, match=r"shard .*foreign\.tar is truncated or corrupt after \d+ samples"):
        list(stream([str(foreign)], shuffle=False, verify=False))
    result = cli("features", "inspect", str(tmp_path / "s"))
    assert result.returncode == 1
    assert "TRUNCATED" in result.stdout and "shard-000001.tar: 2000 bytes" in result.stdout
    assert "2 ok, 1 bad" in result.stdout


def test_inspect_detects_a_changed_byte_and_reports_a_good_store(tmp_path: Path, cli) -> None:
    manifest = _make_store(tmp_path / "s")
    result = cli("features", "inspect", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    assert "images       7 in 3 of 3 shards (complete)" in result.stdout and "3 ok, 0 bad" in result.stdout
    shard = tmp_path / "s" / "shard-000002.tar"
    assert hashlib.sha256(shard.read_bytes()).hexdigest() == manifest["shards"][2]["sha256"]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = cli("features", "inspect", str(tmp_path / "s"))
    assert result.returncode == 1 and "CHECKSUM" in result.stdout and "shard-000002.tar" in result.stdout


def test_incomplete_or_missing_store_is_a_clear_error(tmp_path: Path, cli) -> None:
    with pytest.raises(StoreError, match="not a feature store"):
        FeatureStore(tmp_path)
    (tmp_path / "s").mkdir()
    writer = ShardWriter(tmp_path / "s", 0)
    writer.write("a", *_arrays(0), {})
    writer.commit()
    finalize_store(tmp_path / "s", _plan(2))  # shard 1 never written
    with pytest.raises(StoreError, match=r"incomplete \(1 of 2 shards finished\)"):
        FeatureStore(tmp_path / "s")
    result = cli("features", "inspect", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "not a feature store" in result.stderr and "Traceback" not in result.stderr


def test_unfinished_shard_is_invisible(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    writer = ShardWriter(tmp_path / "s", 0)
    writer.write("a", *_arrays(0), {})
    assert not (tmp_path / "s" / "shard-000000.tar").exists()  # only the .tmp exists until commit
    manifest = finalize_store(tmp_path / "s", _plan(1))
    assert manifest["shards"] == [] and not manifest["complete"]
    writer.abort()
    assert list((tmp_path / "s").glob("shard-*")) == []


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_feature_store_serves_dataloader_workers(tmp_path: Path, context: str) -> None:
    _make_store(tmp_path / "s")
    store = FeatureStore(tmp_path / "s")
    store["0"]  # open a descriptor in the parent; workers must not share it
    loader = torch.utils.data.DataLoader(store, sampler=list(reversed(IDS)), batch_size=None, num_workers=2,
                                         multiprocessing_context=context)
    samples = list(loader)
    assert [s["image_id"] for s in samples] == list(reversed(IDS))
    for sample in samples:
        np.testing.assert_array_equal(np.asarray(sample["feats"]), store[sample["image_id"]]["feats"])
