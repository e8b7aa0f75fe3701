"""Bottom-up-attention TSV import: exact encoding round trip and named errors."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from features.errors import TSVFormatError
from features.store import FeatureStore
from features.tsv import read_tsv, write_tsv
from features.tsv_import import import_tsv

Cli = Callable[..., subprocess.CompletedProcess[str]]
K, D = 36, 64


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(array.tobytes()).decode()


def _image(i: int) -> dict:
    rng = np.random.default_rng(i)
    h, w = 300 + i, 400 + 2 * i
    x1, y1 = rng.uniform(0, w / 2, K), rng.uniform(0, h / 2, K)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, w / 2, K), y1 + rng.uniform(1, h / 2, K)], 1).astype(np.float32)
    return {"img_id": f"COCO_val2014_{i:012d}", "img_h": h, "img_w": w,
            "objects_id": rng.integers(0, 1600, K).astype(np.int64), "objects_conf": rng.random(K).astype(np.float32),
            "attrs_id": rng.integers(0, 400, K).astype(np.int64), "attrs_conf": rng.random(K).astype(np.float32),
            "boxes": boxes, "features": (rng.random((K, D)) * 8).astype(np.float32)}


def _lxmert_line(item: dict) -> list[str]:
    # field order and encoding of LXMERT's published files (airsplay/lxmert, src/utils.py FIELDNAMES)
    return [item["img_id"], str(item["img_h"]), str(item["img_w"]), _b64(item["objects_id"]),
            _b64(item["objects_conf"]), _b64(item["attrs_id"]), _b64(item["attrs_conf"]), str(K), _b64(item["boxes"]),
            _b64(item["features"])]


def _write(path: Path, lines: list[list[str]]) -> Path:
    path.write_text("".join("\t".join(fields) + "\n" for fields in lines), encoding="utf-8")
    return path


@pytest.fixture()
def items() -> list[dict]:
    return [_image(i) for i in range(5)]


def test_lxmert_tsv_round_trips_through_shards(tmp_path: Path, items: list[dict]) -> None:
    tsv = _write(tmp_path / "in.tsv", [_lxmert_line(it) for it in items])
    manifest = import_tsv(tsv, tmp_path / "out", shard_size=2, progress=False)
    assert manifest["complete"] and manifest["num_samples"] == 5 and len(manifest["shards"]) == 3
    assert (manifest["feature_dim"], manifest["num_regions"], manifest["backend"]) == (D, K, "butd-tsv")
    store = FeatureStore(tmp_path / "out")
    for item in items:
        sample = store[item["img_id"]]
        np.testing.assert_array_equal(sample["feats"], item["features"].astype(np.float16))
        scale = np.array([item["img_w"], item["img_h"]] * 2, dtype=np.float32)
        np.testing.assert_allclose(sample["boxes"], np.clip(item["boxes"] / scale, 0, 1), rtol=1e-6)
        meta = sample["meta"]
        assert (meta["width"], meta["height"]) == (item["img_w"], item["img_h"])
        assert meta["objects_id"] == item["objects_id"].tolist() and meta["attrs_id"] == item["attrs_id"].tolist()
        np.testing.assert_array_equal(np.array(meta["objects_conf"], dtype=np.float32), item["objects_conf"])
        np.testing.assert_array_equal(np.array(meta["attrs_conf"], dtype=np.float32), item["attrs_conf"])
    # our writer produces byte-identical text to the hand-encoded fixture
    write_tsv(tmp_path / "again.tsv", list(read_tsv(tsv)))
    assert (tmp_path / "again.tsv").read_text() == tsv.read_text()


def test_six_field_butd_layout_with_width_first(tmp_path: Path, items: list[dict]) -> None:
    lines = [[it["img_id"], str(it["img_w"]), str(it["img_h"]), str(K), _b64(it["boxes"]), _b64(it["features"])]
             for it in items[:2]]
    import_tsv(_write(tmp_path / "in.tsv", lines), tmp_path / "out", progress=False)
    sample = FeatureStore(tmp_path / "out")[items[1]["img_id"]]
    assert (sample["meta"]["width"], sample["meta"]["height"]) == (items[1]["img_w"], items[1]["img_h"])
    assert "objects_id" not in sample["meta"]
    np.testing.assert_allclose(sample["boxes"][:, 2], np.clip(items[1]["boxes"][:, 2] / items[1]["img_w"], 0, 1))


def _broken(items: list[dict], kind: str) -> list[list[str]]:
    lines = [_lxmert_line(it) for it in items]
    if kind == "truncated":
        lines[2][9] = lines[2][9][:-7]  # cut the base64 of 'features' mid-quantum
    elif kind == "truncated-aligned":
        lines[2][9] = lines[2][9][:400]  # valid base64, too few bytes
    elif kind == "num_boxes":
        lines[2][7] = str(K + 1)
    elif kind == "missing":
        del lines[2][5]  # drop attrs_id
    elif kind == "missing-num_boxes":
        del lines[2][7]
    return lines


@pytest.mark.parametrize(("kind", "message"), [
    ("truncated", r"row 3 \(img_id 'COCO_val2014_000000000002'\): field 'features': invalid base64"),
    ("truncated-aligned", r"row 3 \(img_id 'COCO_val2014_000000000002'\): field 'features' decodes to 300 bytes; "
                          r"expected 9216 = float32 \[num_boxes=36, D=64\]"),
    ("num_boxes", r"row 3 \(img_id 'COCO_val2014_000000000002'\): field 'num_boxes' is 37 but field 'boxes' "
                  r"decodes to 576 bytes \(36 boxes\)"),
    ("missing", r"row 3: expected 10 tab-separated fields \(img_id, img_h, .*\) like row 1, got 9: "
                r"field 'attrs_id' is missing"),
    ("missing-num_boxes", r"row 3: .* got 9: field 'num_boxes' is missing"),
])
def test_malformed_rows_are_named(tmp_path: Path, items: list[dict], kind: str, message: str) -> None:
    tsv = _write(tmp_path / "in.tsv", _broken(items, kind))
    with pytest.raises(TSVFormatError, match=message):
        import_tsv(tsv, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_skip_counts_and_lists_bad_rows(tmp_path: Path, items: list[dict], cli: Cli) -> None:
    lines = _broken(items, "num_boxes")
    lines[4][0] = lines[0][0]  # duplicate id on row 5
    tsv = _write(tmp_path / "in.tsv", lines)
    result = cli("features", "import-tsv", str(tsv), str(tmp_path / "out"), "--on-error", "skip", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "3 images in 1 shards" in result.stdout and "2 malformed rows skipped" in result.stdout
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert [(f["row"], f["image_id"]) for f in manifest["failed"]] == [(3, items[2]["img_id"]), (5, items[0]["img_id"])]
    assert "field 'num_boxes'" in manifest["failed"][0]["reason"]
    assert "already used on row 1" in manifest["failed"][1]["reason"]
    assert sorted(FeatureStore(tmp_path / "out")) == sorted(it["img_id"] for it in (items[0], items[1], items[3]))


def test_cli_reports_a_malformed_row_without_traceback(tmp_path: Path, items: list[dict], cli: Cli) -> None:
    tsv = _write(tmp_path / "in.tsv", _broken(items, "missing"))
    result = cli("features", "import-tsv", str(tsv), str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("vlm features: error:") and "row 3" in result.stderr
    result = cli("features", "import-tsv", str(tmp_path / "none.tsv"), str(tmp_path / "o2"))
    assert result.returncode == 2 and "none.tsv not found" in result.stderr
