"""The shared helpers of ``features.io``, the store's public names after the split, and extract's explicit parts."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
import torchvision

import features
import features.store
from features.errors import FeaturesError, ImageReadError, StoreError, WeightsError
from features.extract import extract
from features.io import atomic_write_json, prepare_output_dir
from features.store.format import is_store_file
from features.weights import load_verified


def test_store_public_names_survive_the_split() -> None:
    assert features.FeatureStore is features.store.FeatureStore and features.stream is features.store.stream
    for name in features.store.__all__:
        assert getattr(features.store, name) is not None, name


def test_atomic_write_json_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "m.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2}, compact=True)
    assert target.read_text() == '{"a":2}' and [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_prepare_output_dir_never_deletes_foreign_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_output_dir(out, overwrite=False, owned=is_store_file)  # created
    (out / "shard-000000.tar").write_bytes(b"x")
    (out / "manifest.json").write_text("{}")
    with pytest.raises(StoreError, match=r"not empty \(found manifest\.json, shard-000000\.tar\).*--overwrite"):
        prepare_output_dir(out, overwrite=False, owned=is_store_file)
    prepare_output_dir(out, overwrite=True, owned=is_store_file)
    assert list(out.iterdir()) == []
    (out / "shard-000001.tar").write_bytes(b"x")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match=r"found notes\.txt.*not part of a feature store"):
        prepare_output_dir(out, overwrite=True, owned=is_store_file)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "shard-000001.tar"]


def test_load_verified_names_the_key_that_does_not_fit(tmp_path: Path) -> None:
    net = torchvision.models.resnet18()
    state = net.state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    with pytest.raises(WeightsError, match=r"w\.pth does not fit resnet18: key 'layer2\.0\.conv1\.weight' has shape "
                                           r"\(128, 64, 1, 1\), the network expects \(128, 64, 3, 3\)"):
        load_verified(net, state, what="resnet18", file=tmp_path / "w.pth")
    del state["fc.bias"]
    with pytest.raises(WeightsError, match=r"missing 1 key\(s\) such as 'fc\.bias'"):
        load_verified(net, state, what="resnet18", file=tmp_path / "w.pth")


def test_extract_takes_rank_and_world_size_as_arguments(tmp_path: Path, easy_list_64: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")  # the library ignores torchrun's variables; only the CLI reads them
    monkeypatch.setenv("WORLD_SIZE", "4")
    manifest = extract(str(easy_list_64), tmp_path / "s", shard_size=8, num_workers=0, progress=False, limit=32,
                       rank=1, world_size=2)
    assert [s["name"] for s in manifest["shards"]] == ["shard-000001.tar", "shard-000003.tar"]
    whole = extract(str(easy_list_64), tmp_path / "w", shard_size=8, num_workers=0, progress=False, limit=16)
    assert whole["complete"] and len(whole["shards"]) == 2
    with pytest.raises(FeaturesError, match="not both"):
        extract(str(easy_list_64), tmp_path / "x", part=(0, 2), rank=0, progress=False, limit=4)
    with pytest.raises(FeaturesError, match="expected 0 <= rank < world_size"):
        extract(str(easy_list_64), tmp_path / "y", rank=2, world_size=2, progress=False, limit=4)


def test_a_failing_image_stops_the_in_process_read_ahead(tmp_path: Path, bad_image_dir: Path) -> None:
    with pytest.raises(ImageReadError, match=r"corrupt\.png"):
        extract(str(bad_image_dir), tmp_path / "s", "patches", shard_size=2, batch_size=1, num_workers=0,
                on_error="fail", progress=False)
    assert not [t for t in threading.enumerate() if t.name == "extract-read-ahead"]
    assert not list((tmp_path / "s").glob("*.tmp"))
