"""End-to-end extraction on real easy-VQA images: CLI, readers, bad images, resume after SIGKILL, parts."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from features.backends import create_extractor
from features.decode import load_image
from features.errors import StoreError
from features.extract import extract
from features.sources import resolve_source
from features.store import FeatureStore, stream

Cli = Callable[..., subprocess.CompletedProcess[str]]
Popen = Callable[..., subprocess.Popen[str]]
GRID = {"backbone": "timm:resnet10t", "random_weights": True, "image_size": 64, "grid": 2}


def _shard_digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.glob("shard-*.tar"))}


def _assert_readers_agree(directory: Path) -> dict[str, dict]:
    store = FeatureStore(directory)
    streamed = {s["image_id"]: s for s in stream(directory, shuffle=True, buffer_size=16)}
    assert sorted(streamed) == sorted(store.ids())
    for image_id, sample in streamed.items():
        by_id = store[image_id]
        np.testing.assert_array_equal(sample["feats"], by_id["feats"])
        np.testing.assert_array_equal(sample["boxes"], by_id["boxes"])
        assert sample["meta"] == by_id["meta"]
    return streamed


def test_patches_extraction_of_easy_vqa_through_the_cli(tmp_path: Path, easy_list_64: Path, cli: Cli) -> None:
    out = tmp_path / "store"
    result = cli("extract", "--source", str(easy_list_64), "--backend", "patches", "--out", str(out),
                 "--shard-size", "20", "--batch-size", "16", "--num-workers", "2", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "64 images in 4 shards, K=17 D=768, backend patches; 0 failed; complete" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["num_samples"] for s in manifest["shards"]] == [20, 20, 20, 4]
    assert not manifest["random_weights"] and manifest["settings"]["patch_size"] == 16
    streamed = _assert_readers_agree(out)
    assert sorted(streamed, key=int) == [str(i) for i in range(64)]
    image, _, _ = load_image(resolve_source(str(easy_list_64))[5].path, 64)
    direct = create_extractor("patches").extract(image[None])
    np.testing.assert_array_equal(streamed["5"]["feats"], direct.feats[0])
    assert streamed["5"]["meta"] == {"image_id": "5", "width": 64, "height": 64}


def test_grid_extraction_is_flagged_random_and_matches_the_backend(tmp_path: Path, easy_list_64: Path) -> None:
    manifest = extract(str(easy_list_64), tmp_path / "g", "grid", GRID, batch_size=8, shard_size=16, num_workers=0,
                       progress=False, limit=24)
    assert manifest["complete"] and manifest["random_weights"]
    assert manifest["weights"]["backbone"]["source"] == "random"
    assert (manifest["num_regions"], manifest["feature_dim"], manifest["num_samples"]) == (4, 512, 24)
    streamed = _assert_readers_agree(tmp_path / "g")
    records = resolve_source(str(easy_list_64))[16:24]  # the second shard's batch
    images = torch.stack([load_image(r.path, 64)[0] for r in records])
    direct = create_extractor("grid", **GRID).extract(images)
    for row, record in enumerate(records):
        np.testing.assert_array_equal(streamed[record.image_id]["feats"], direct.feats[row])
        np.testing.assert_allclose(streamed[record.image_id]["boxes"], direct.boxes[row])


def test_missing_weights_is_a_clear_cli_error(tmp_path: Path, easy_list_64: Path, cli: Cli) -> None:
    empty_caches = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf"),
                    "TORCH_HOME": str(tmp_path / "torch"), "HF_HUB_OFFLINE": "1"}
    result = cli("extract", "--source", str(easy_list_64), "--backend", "grid", "--backbone", "torchvision:resnet18",
                 "--out", str(tmp_path / "o"), env=empty_caches)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "backbone torchvision:resnet18 needs pretrained weights" in result.stderr
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in result.stderr
    assert "--random-weights" in result.stderr and "Backends that need no weights: patches" in result.stderr
    result = cli("extract", "--source", str(easy_list_64), "--backend", "grid", "--patch-size", "8",
                 "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "--patch-size does not apply to backend 'grid'" in result.stderr


def test_corrupt_and_empty_images_are_skipped_and_listed(tmp_path: Path, bad_image_dir: Path, cli: Cli) -> None:
    manifest = extract(str(bad_image_dir), tmp_path / "s", "patches", shard_size=3, batch_size=2, num_workers=2,
                       progress=False)
    assert manifest["complete"] and manifest["num_samples"] == 6 and manifest["num_failed"] == 2
    failed = {f["image_id"]: f for f in manifest["failed"]}
    assert set(failed) == {"corrupt", "empty"}
    assert failed["corrupt"]["path"] == str(bad_image_dir / "corrupt.png")
    assert "truncated" in failed["corrupt"]["reason"] and "UnidentifiedImageError" in failed["empty"]["reason"]
    store = FeatureStore(tmp_path / "s")
    assert "corrupt" not in store and "empty" not in store and sorted(store) == [f"good{i}" for i in range(6)]
    inspect = cli("features", "inspect", str(tmp_path / "s"))
    assert inspect.returncode == 0 and "failed       2" in inspect.stdout and "corrupt.png" in inspect.stdout
    result = cli("extract", "--source", str(bad_image_dir), "--out", str(tmp_path / "f"), "--on-error", "fail",
                 "--shard-size", "3", "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot read image {bad_image_dir / 'corrupt.png'} (id 'corrupt')" in result.stderr
    assert not list((tmp_path / "f").glob("*.tmp"))  # the unfinished shard was removed


def test_sigkill_mid_run_then_rerun_equals_an_uninterrupted_run(tmp_path: Path, easy_train_paths: dict[int, str],
                                                                 cli: Cli, cli_popen: Popen) -> None:
    listing = tmp_path / "list.tsv"
    listing.write_text("".join(f"{i}\t{easy_train_paths[i]}\n" for i in range(128)), encoding="utf-8")
    args = ["extract", "--source", str(listing), "--backend", "grid", "--backbone", "timm:resnet10t",
            "--random-weights", "--image-size", "64", "--grid", "3", "--shard-size", "16", "--batch-size", "8",
            "--num-workers", "1", "--no-progress"]
    reference = cli(*args, "--out", str(tmp_path / "ref"))
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed"
    process = cli_popen(*args, "--out", str(out))
    deadline = time.monotonic() + 120
    while len(list(out.glob("shard-*.json"))) < 2 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    finished = sorted(out.glob("shard-*.json"))
    assert 2 <= len(finished) < 8
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["complete"]
    with pytest.raises(StoreError, match="incomplete"):
        FeatureStore(out)
    kept = {}
    for sidecar in finished:  # every visible shard is whole and matches its recorded checksum
        record = json.loads(sidecar.read_text())
        tar = out / record["name"]
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == record["sha256"]
        kept[tar.name] = tar.stat().st_mtime_ns
    for tar in out.glob("shard-*.tar"):  # a tar without sidecar can only be a leftover of the kill, never counted
        assert tar.with_suffix(".json").exists()
    rerun = cli(*args, "--out", str(out))
    assert rerun.returncode == 0, rerun.stderr
    assert f"{8 - len(finished)} of 8 shards to do ({len(finished)} already finished)" in rerun.stderr
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # finished shards were not redone
    assert _shard_digests(out) == _shard_digests(tmp_path / "ref") and len(_shard_digests(out)) == 8
    assert not list(out.glob("*.tmp"))
    ref_manifest = json.loads((tmp_path / "ref" / "manifest.json").read_text())
    final = json.loads((out / "manifest.json").read_text())
    assert final["complete"] and final["shards"] == ref_manifest["shards"]
    assert sorted(FeatureStore(out)) == sorted(str(i) for i in range(128))


def test_parts_write_disjoint_shards_that_equal_a_single_run(tmp_path: Path, easy_list_64: Path) -> None:
    single = extract(str(easy_list_64), tmp_path / "one", shard_size=10, num_workers=0, progress=False)
    first = extract(str(easy_list_64), tmp_path / "two", shard_size=10, num_workers=0, progress=False, part=(0, 2))
    assert not first["complete"] and [s["name"] for s in first["shards"]] == [
        "shard-000000.tar", "shard-000002.tar", "shard-000004.tar", "shard-000006.tar"]
    second = extract(str(easy_list_64), tmp_path / "two", shard_size=10, num_workers=0, progress=False, part=(1, 2))
    assert second["complete"] and second["shards"] == single["shards"]
    assert _shard_digests(tmp_path / "two") == _shard_digests(tmp_path / "one")
    _assert_readers_agree(tmp_path / "two")
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "two").glob("shard-*")}
    again = extract(str(easy_list_64), tmp_path / "two", shard_size=10, num_workers=0, progress=False)
    assert again["complete"]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "two").glob("shard-*")} == before


def test_rerun_with_other_settings_is_refused_unless_overwrite(tmp_path: Path, easy_list_64: Path) -> None:
    extract(str(easy_list_64), tmp_path / "s", shard_size=32, num_workers=0, progress=False, limit=8)
    with pytest.raises(StoreError, match="holds an extraction with different feature_dim, num_regions, settings"):
        extract(str(easy_list_64), tmp_path / "s", "patches", {"patch_size": 8}, shard_size=32, num_workers=0,
                progress=False, limit=8)
    manifest = extract(str(easy_list_64), tmp_path / "s", "patches", {"patch_size": 8}, shard_size=32,
                       num_workers=0, progress=False, limit=8, overwrite=True)
    assert manifest["complete"] and manifest["num_regions"] == 65 and FeatureStore(tmp_path / "s").feature_dim == 192
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        extract(str(easy_list_64), tmp_path / "other", num_workers=0, progress=False, limit=2)
