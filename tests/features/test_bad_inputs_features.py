"""Bad input on the features side (image sources and decoding, the folder walk, TSV import, the store, weights, the
``vlm extract`` / ``vlm features`` command lines): each case is exit code 2 with one line naming the file/row/field and
what was expected, a counted skip listed in the manifest, or (decoding) the picture a photo viewer shows.
Table-driven; the vlm side has its own corpus in tests/test_bad_inputs_vlm.py. See docs/bad_input.md."""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from features.decode import decode_image
from features.errors import ShardError, StoreError, one_line
from features.store import FeatureStore, ShardWriter, finalize_store, stream
from features.store.format import FORMAT_VERSION, INDEX_DTYPE_V1, INDEX_ENTRIES, MANIFEST
from vlm.cli import main as vlm_main

K, D = 4, 8
IDS = ["a", "b", "c", "d", "e"]


# ------------------------------------------------------------------------------------------------------ helpers


def _png(path: Path, color: tuple[int, int, int] = (200, 30, 60), size: tuple[int, int] = (24, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _images(tmp: Path, n: int = 2) -> Path:
    for i in range(n):
        _png(tmp / "imgs" / f"im{i}.png", (40 * i, 100, 200))
    return tmp / "imgs"


def _list(tmp: Path, lines: list[str], name: str = "list.txt") -> Path:
    path = tmp / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    return errors[0]


class _Evil:
    """A pickle that would create ``marker`` if it were ever unpickled with code execution allowed."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------------- vlm extract: one clear line

EXTRACT = ["extract", "--backend", "patches", "--num-workers", "0", "--no-progress", "-q"]
GRID18 = ["extract", "--backend", "grid", "--backbone", "timm:resnet18", "--num-workers", "0", "--no-progress", "-q"]


def _binary_source(t: Path) -> list[str]:
    (t / "photo.dat").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xd0\xff" * 40)
    return EXTRACT + ["--source", str(t / "photo.dat"), "--out", str(t / "out")]


def _nul_source(t: Path) -> list[str]:
    (t / "list.txt").write_bytes(b"a\tim0.png\nb\x00\tim1.png\n")
    return EXTRACT + ["--source", str(t / "list.txt"), "--out", str(t / "out")]


def _no_tab_source(t: Path) -> list[str]:
    return EXTRACT + ["--source", str(_list(t, ["a\tx.png", "b x.png"])), "--out", str(t / "out")]


def _dup_id_source(t: Path) -> list[str]:
    return EXTRACT + ["--source", str(_list(t, ["a\tx.png", "a\ty.png"])), "--out", str(t / "out")]


def _missing_source(t: Path) -> list[str]:
    return EXTRACT + ["--source", str(t / "nowhere"), "--out", str(t / "out")]


def _single_image_source(t: Path) -> list[str]:
    return EXTRACT + ["--source", str(_png(t / "one.png")), "--out", str(t / "out")]


def _empty_folder_source(t: Path) -> list[str]:
    (t / "empty").mkdir()
    (t / "empty" / "notes.txt").write_text("no images here")
    return EXTRACT + ["--source", str(t / "empty"), "--out", str(t / "out")]


def _out_is_a_file(t: Path) -> list[str]:
    (t / "out").write_text("I am a file")
    return EXTRACT + ["--source", str(_images(t)), "--out", str(t / "out")]


def _out_under_a_file(t: Path) -> list[str]:
    (t / "afile").write_text("I am a file")
    return EXTRACT + ["--source", str(_images(t)), "--out", str(t / "afile" / "out")]


def _out_holds_foreign_files(t: Path) -> list[str]:
    (t / "out").mkdir()
    (t / "out" / "thesis.pdf").write_text("precious")
    return EXTRACT + ["--source", str(_images(t)), "--out", str(t / "out"), "--overwrite"]


def _missing_gpu(t: Path) -> list[str]:
    return EXTRACT + ["--source", str(_images(t)), "--out", str(t / "out"), "--device", "cuda:7"]


def _bad_device_name(t: Path) -> list[str]:
    return EXTRACT + ["--source", str(_images(t)), "--out", str(t / "out"), "--device", "gpu0"]


def _bad_part(t: Path) -> list[str]:
    return EXTRACT + ["--source", str(_images(t)), "--out", str(t / "out"), "--part", "3/2"]


def _zero_batch(t: Path) -> list[str]:
    return EXTRACT + ["--source", str(_images(t)), "--out", str(t / "out"), "--batch-size", "0"]


def _negative_workers(t: Path) -> list[str]:
    return EXTRACT[:3] + ["--num-workers", "-1", "--no-progress", "--source", str(_images(t)), "--out",
                          str(t / "out")]


def _flag_of_another_backend(t: Path) -> list[str]:
    return EXTRACT + ["--source", str(_images(t)), "--out", str(t / "out"), "--grid", "3"]


def _zero_image_size(t: Path) -> list[str]:  # 0 used to count as "not given" and fell back to the default
    return EXTRACT + ["--source", str(_images(t)), "--out", str(t / "out"), "--image-size", "0"]


def _zero_grid(t: Path) -> list[str]:
    return GRID18[:5] + ["--random-weights", "--grid", "0", "--num-workers", "0", "--no-progress", "--source",
                         str(_images(t)), "--out", str(t / "out")]


def _zero_colour_scale(t: Path) -> list[str]:
    return GRID18[:5] + ["--random-weights", "--colour-stats", "--colour-scale", "0", "--num-workers", "0",
                         "--no-progress", "--source", str(_images(t)), "--out", str(t / "out")]


def _colour_flag_of_patches(t: Path) -> list[str]:
    return EXTRACT + ["--source", str(_images(t)), "--out", str(t / "out"), "--colour-scale", "20"]


def _zero_boxes(t: Path) -> list[str]:
    return ["extract", "--backend", "detector", "--random-weights", "--num-boxes", "0", "--num-workers", "0",
            "--source", str(_images(t)), "--out", str(t / "out")]


def _nan_score_threshold(t: Path) -> list[str]:
    return ["extract", "--backend", "detector", "--random-weights", "--score-thresh", "nan", "--num-workers", "0",
            "--source", str(_images(t)), "--out", str(t / "out")]


def _fail_on_corrupt_image(t: Path) -> list[str]:
    folder = _images(t)
    (folder / "broken.png").write_bytes((folder / "im0.png").read_bytes()[:40])
    return EXTRACT + ["--source", str(folder), "--out", str(t / "out"), "--on-error", "fail"]


def _every_image_unreadable(t: Path) -> list[str]:
    (t / "imgs").mkdir()
    (t / "imgs" / "x.png").write_text("not a png")
    (t / "imgs" / "y.jpg").write_bytes(b"")
    return EXTRACT + ["--source", str(t / "imgs"), "--out", str(t / "out")]


def _weights(t: Path, name: str, data: bytes | None = None, obj: object = None, save: bool = False) -> list[str]:
    path = t / name
    if save:
        torch.save(obj, path)
    elif obj is not None:
        with open(path, "wb") as handle:
            pickle.dump(obj, handle)
    elif data is not None:
        path.write_bytes(data)
    else:
        path.mkdir()
    return GRID18 + ["--source", str(_images(t)), "--out", str(t / "out"), "--weights", str(path)]


def _text_weights(t: Path) -> list[str]:
    return _weights(t, "resnet18.pth", b"these are not weights\n")


def _empty_weights(t: Path) -> list[str]:
    return _weights(t, "resnet18.pth", b"")


def _truncated_weights(t: Path) -> list[str]:
    torch.save({"w": torch.zeros(64)}, t / "full.pth")
    return _weights(t, "resnet18.pth", (t / "full.pth").read_bytes()[:300])


def _text_safetensors(t: Path) -> list[str]:
    return _weights(t, "resnet18.safetensors", b"hello, not safetensors")


def _folder_as_weights(t: Path) -> list[str]:
    return _weights(t, "resnet18.pth")


def _weights_of_another_net(t: Path) -> list[str]:
    return _weights(t, "resnet18.pth", obj={"decoder.weight": torch.zeros(3, 3)}, save=True)


def _malicious_pickle(t: Path) -> list[str]:
    return _weights(t, "resnet18.pth", obj={"conv1.weight": _Evil(str(t / "pwned"))})


def _malicious_torch_zip(t: Path) -> list[str]:
    return _weights(t, "resnet18.pth", obj={"conv1.weight": _Evil(str(t / "pwned"))}, save=True)


def _malicious_pickle_as_bin(t: Path) -> list[str]:
    return _weights(t, "pytorch_model.bin", obj=[_Evil(str(t / "pwned"))])


EXTRACT_CASES: list[tuple[Callable[[Path], list[str]], list[str]]] = [
    (_binary_source, ["photo.dat, line 1: not UTF-8 text", "expected a list file of 'image_id<TAB>path' lines"]),
    (_nul_source, ["list.txt, line 2: holds a NUL byte", "expected a list file"]),
    (_no_tab_source, ["list.txt, line 2: expected 'image_id<TAB>path'", "got 'b x.png'"]),
    (_dup_id_source, ["list.txt, line 2: image id 'a' already used on line 1"]),
    (_missing_source, ["nowhere' not found: expected easy-vqa:train, easy-vqa:test, an existing folder"]),
    (_single_image_source, ["one.png is a single image; pass its folder or a list file"]),
    (_empty_folder_source, ["empty contains no images (looked recursively for"]),
    (_out_is_a_file, ["output folder", "out is an existing file, not a folder"]),
    (_out_under_a_file, ["out cannot be created"]),
    (_out_holds_foreign_files, ["out is not empty (found thesis.pdf)", "not part of a feature store"]),
    (_missing_gpu, ["device 'cuda:7': no such CUDA device on this machine"]),
    (_bad_device_name, ["device 'gpu0' is not a device name; expected cpu, cuda, cuda:N or mps"]),
    (_bad_part, ["--part '3/2': expected i/n with 0 <= i < n"]),
    (_zero_batch, ["batch_size must be at least 1, got 0"]),
    (_negative_workers, ["num_workers must be 0 (decode in this process) or more, got -1"]),
    (_flag_of_another_backend, ["--grid does not apply to backend 'patches'"]),
    (_zero_image_size, ["backend 'patches': image size 0 must be a positive multiple of the patch size 16"]),
    (_zero_grid, ["backend 'grid': grid (0), image size (224) and pool size (1) must be positive"]),
    (_zero_colour_scale, ["backend 'grid': colour_scale (0.0) must be a positive finite number"]),
    (_colour_flag_of_patches, ["--colour-scale does not apply to backend 'patches'"]),
    (_zero_boxes, ["--num-boxes 0: expected at least 1 box per image"]),
    (_nan_score_threshold, ["--score-thresh nan: expected a detection score in [0, 1]"]),
    (_fail_on_corrupt_image, ["cannot read image", "broken.png (id 'broken')", "use --on-error skip"]),
    (_every_image_unreadable, ["none of the 2 images could be read", "nothing was stored in"]),
    (_text_weights, ["weights file", "resnet18.pth is not a state dict of tensors", "a text file?"]),
    (_empty_weights, ["resnet18.pth is empty; expected a state dict of tensors"]),
    (_truncated_weights, ["resnet18.pth is not a state dict", "or is damaged (RuntimeError: PytorchStreamReader "
                                                              "failed reading zip archive"]),
    (_text_safetensors, ["resnet18.safetensors is not a state dict", "or is damaged"]),
    (_folder_as_weights, ["resnet18.pth for backbone timm:resnet18 not found (it is a folder"]),
    (_weights_of_another_net, ["resnet18.pth does not fit backbone", "unexpected key(s) such as 'decoder.weight'"]),
    (_malicious_pickle, ["resnet18.pth holds Python objects other than tensors", "no code ran"]),
    (_malicious_torch_zip, ["resnet18.pth holds Python objects other than tensors", "posix.system"]),
    (_malicious_pickle_as_bin, ["pytorch_model.bin holds Python objects other than tensors", "no code ran"]),
]


@pytest.mark.parametrize("build, fragments", EXTRACT_CASES, ids=[c[0].__name__.strip("_") for c in EXTRACT_CASES])
def test_vlm_extract_bad_input_is_one_line_and_exit_2(build, fragments, tmp_path, capsys):
    argv = build(tmp_path)
    assert vlm_main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith("vlm extract: error: ")
    for fragment in fragments:
        assert fragment in line, line
    assert not (tmp_path / "pwned").exists()  # no pickle ran code
    out = tmp_path / "out"
    if out.is_dir() and build is not _fail_on_corrupt_image:  # nothing half-made is left: no manifest, no shards
        # (--on-error fail stops a resumable run: its plan stays, and the rerun with the image fixed resumes)
        assert not [p.name for p in out.iterdir() if p.name.startswith(("manifest", "shard-", "index-"))]


def test_a_false_flag_is_applied_not_ignored(tmp_path, capsys):
    argv = EXTRACT + ["--source", str(_images(tmp_path)), "--out", str(tmp_path / "out"), "--no-whole-image"]
    assert vlm_main(argv) == 0
    assert FeatureStore(tmp_path / "out").num_regions == 16  # 4x4 patches, no whole-image region (17 with it)


def test_garbage_rank_variables_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    assert vlm_main(EXTRACT + ["--source", str(_images(tmp_path)), "--out", str(tmp_path / "out")]) == 2
    assert "RANK / WORLD_SIZE / LOCAL_RANK must be integers" in _error_line(capsys)


def test_binary_source_in_a_real_process_has_no_traceback(tmp_path, cli):
    argv = _binary_source(tmp_path)
    result = cli(*argv)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "line 1: not UTF-8 text" in result.stderr


# --------------------------------------------------------------------------------- vlm extract: counted skips


def test_unreadable_images_are_counted_skips_listed_with_path_and_reason(tmp_path, capsys):
    folder = _images(tmp_path, 2)
    (folder / "text.png").write_text("not a png")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "cut.png").write_bytes((folder / "im0.png").read_bytes()[:60])
    listing = _list(tmp_path, [f"{p.stem}\t{p}" for p in sorted(folder.iterdir())] + ["gone\tnowhere/gone.png"])
    assert vlm_main(EXTRACT + ["--source", str(listing), "--out", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    failed = {f["image_id"]: f["reason"] for f in manifest["failed"]}
    assert manifest["num_samples"] == 2 and manifest["num_failed"] == 4 == len(failed)
    assert failed["gone"] == "file not found"
    assert "cannot identify image file" in failed["text"] and "cannot identify image file" in failed["empty"]
    assert failed["cut"]  # a truncated PNG: PIL's own reason, kept
    assert sorted(FeatureStore(tmp_path / "out")) == ["im0", "im1"]


def test_symlink_loop_is_walked_once_and_reported(tmp_path, capsys, caplog):
    root = tmp_path / "photos"
    _png(root / "top.png")
    _png(root / "sub" / "inner.png")
    (root / "sub" / "loop").symlink_to("..")  # photos/sub/loop -> photos
    (root / "again").symlink_to("sub")  # the same real folder under a second name
    with caplog.at_level(logging.WARNING):
        assert vlm_main(EXTRACT + ["--source", str(root), "--out", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert sorted(FeatureStore(tmp_path / "out")) == ["sub/inner", "top"]  # each real file once, by its real path
    skipped = {s["path"]: s["reason"] for s in manifest["source"]["skipped"]}
    assert set(skipped) == {"again", "sub/loop"}
    assert "symlink loop" in skipped["sub/loop"] and "same folder as 'sub'" in skipped["again"]
    assert "2 folder(s) not entered" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- image decoding


def test_16_bit_greyscale_is_scaled_not_clipped_to_white(tmp_path):
    ramp = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)  # 0..65472
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    rgb, width, height = decode_image(str(tmp_path / "g16.png"), 32)
    expected = np.rint(ramp / 257.0)
    np.testing.assert_array_equal(rgb[..., 0], expected)
    assert (rgb[..., 0] == rgb[..., 2]).all() and (width, height) == (32, 32)
    assert rgb.mean() < 200  # convert("RGB") alone gives almost all 255


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied_and_sizes_are_upright(tmp_path, suffix):
    stored = Image.new("RGB", (40, 20), (255, 0, 0))  # stored sideways: 40 wide, 20 tall, left quarter blue
    stored.paste((0, 0, 255), (0, 0, 10, 20))
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / f"side{suffix}", exif=exif)
    rgb, width, height = decode_image(str(tmp_path / f"side{suffix}"), 40)
    assert (width, height) == (20, 40)  # as displayed
    assert rgb[0, 20, 2] > 200 and rgb[0, 20, 0] < 60  # the blue band is on top once upright
    assert rgb[39, 20, 0] > 200 and rgb[39, 20, 2] < 60


def test_extracted_store_records_the_upright_size(tmp_path):
    stored = Image.new("RGB", (30, 10), (9, 9, 9))
    exif = stored.getexif()
    exif[0x0112] = 8
    stored.save(_images(tmp_path, 1) / "side.jpg", exif=exif)
    assert vlm_main(EXTRACT + ["--source", str(tmp_path / "imgs"), "--out", str(tmp_path / "out")]) == 0
    meta = FeatureStore(tmp_path / "out")["side"]["meta"]
    assert (meta["width"], meta["height"]) == (10, 30)


# ------------------------------------------------------------------------------------------------ TSV import


def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()


def _item(i: int) -> dict:
    rng = np.random.default_rng(i)
    boxes = np.array([[10, 20, 110, 220], [0, 0, 400, 300], [50, 60, 70, 80], [300, 200, 420, 310]], np.float32)
    return {"img_id": f"img{i}", "img_h": 300, "img_w": 400,
            "objects_id": rng.integers(0, 1600, K).astype(np.int64), "objects_conf": rng.random(K).astype(np.float32),
            "attrs_id": rng.integers(0, 400, K).astype(np.int64), "attrs_conf": rng.random(K).astype(np.float32),
            "boxes": boxes, "features": rng.random((K, D)).astype(np.float32)}


def _line(item: dict) -> list[str]:
    return [item["img_id"], str(item["img_h"]), str(item["img_w"]), _b64(item["objects_id"]),
            _b64(item["objects_conf"]), _b64(item["attrs_id"]), _b64(item["attrs_conf"]), str(K),
            _b64(item["boxes"]), _b64(item["features"])]


def _with(**changes) -> tuple[str, Callable[[dict], None]]:
    """A change to the arrays of row 2 before encoding: ``name=(index, value)``."""
    def change(item: dict) -> None:
        for key, (index, value) in changes.items():
            item[key] = item[key].copy()
            item[key][index] = value
    return "item", change


def _raw(field: int, value: str) -> tuple[str, Callable[[list[str]], None]]:
    """A change to the text fields of row 2."""
    def change(fields: list[str]) -> None:
        fields[field] = value
    return "fields", change


def _drop(field: int) -> tuple[str, Callable[[list[str]], None]]:
    def change(fields: list[str]) -> None:
        del fields[field]
    return "fields", change


# (name, change to the item's arrays or to its fields, what the row-2 reason must say)
ROW_CASES: list[tuple[str, tuple[str, Callable], str]] = [
    ("nan_feature", _with(features=((3, 5), np.nan)), "field 'features': box 3 holds NaN; expected finite"),
    ("inf_feature", _with(features=((0, 0), np.inf)), "field 'features': box 0 holds Inf"),
    ("float16_overflow", _with(features=((2, 1), 1e6)), "field 'features': value 1e+06 in box 2 is beyond the "
                                                        "float16 range ±65504"),
    ("plus_inf_box", _with(boxes=((1, 2), np.inf)), "field 'boxes': box 1 holds Inf; expected finite"),
    ("minus_inf_box", _with(boxes=((0, 0), -np.inf)), "field 'boxes': box 0 holds Inf"),
    ("nan_box", _with(boxes=((2, 3), np.nan)), "field 'boxes': box 2 holds NaN"),
    ("inverted_box", _with(boxes=((2, 0), 90.0)), "field 'boxes': box 2 (x1, y1, x2, y2) = (90, 60, 70, 80) is "
                                                  "inverted; expected x1 <= x2 and y1 <= y2"),
    ("box_outside", _with(boxes=((1,), np.array([500, 10, 600, 20], np.float32))),
     "box 1 (x1, y1, x2, y2) = (500, 10, 600, 20) lies entirely outside the 400x300 image"),
    ("box_above", _with(boxes=((3,), np.array([10, -50, 20, -5], np.float32))), "lies entirely outside"),
    ("nan_confidence", _with(objects_conf=((1,), np.nan)), "field 'objects_conf': box 1 holds NaN"),
    ("inf_attr_confidence", _with(attrs_conf=((0,), np.inf)), "field 'attrs_conf': box 0 holds Inf"),
    ("negative_height", _raw(1, "-300"), "fields 'img_h'/'img_w' must be positive, got -300/400"),
    ("height_not_integer", _raw(1, "3.5e2"), "field 'img_h': expected an integer, got '3.5e2'"),
    ("bad_base64", _raw(8, "@@not base64@@"), "field 'boxes': invalid base64"),
    ("num_boxes_too_big", _raw(7, str(K + 1)), "field 'num_boxes' is 5 but field 'boxes' decodes to 64 bytes"),
    ("features_cut", _raw(9, _b64(np.zeros((K, D - 1), np.float32))), "field 'features' decodes to 112 bytes; "
                                                                      "expected 128"),
    ("field_missing", _drop(5), "expected 10 tab-separated fields"),
    ("empty_id", _raw(0, ""), "field 'img_id' is empty; expected the image id"),
    ("duplicate_id", _raw(0, "img0"), "image id 'img0' already used on row 1"),
]


def _tsv(tmp: Path, case: tuple | None, rows: int = 3, name: str = "feats.tsv") -> Path:
    """A 10-field LXMERT TSV of ``rows`` good rows, row 2 changed by ``case``."""
    lines = []
    for i in range(rows):
        item = _item(i)
        kind, change = case[1] if case is not None and i == 1 else (None, None)
        if kind == "item":
            change(item)
        fields = _line(item)
        if kind == "fields":
            change(fields)
        lines.append("\t".join(fields))
    path = tmp / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("case", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_bad_tsv_row_is_one_line_naming_row_and_field(case, tmp_path, capsys):
    tsv = _tsv(tmp_path, case)
    assert vlm_main(["features", "import-tsv", str(tsv), str(tmp_path / "out"), "--no-progress", "-q"]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"vlm features: error: {tsv}, row 2") and case[2] in line, line
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != ".lock"]  # nothing left to block a rerun


@pytest.mark.parametrize("case", ROW_CASES, ids=[c[0] for c in ROW_CASES])
def test_bad_tsv_row_is_a_counted_skip_listed_in_the_manifest(case, tmp_path, capsys):
    tsv = _tsv(tmp_path, case)
    argv = ["features", "import-tsv", str(tsv), str(tmp_path / "out"), "--on-error", "skip", "--no-progress", "-q"]
    assert vlm_main(argv) == 0
    assert "2 images in 1 shards" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / MANIFEST).read_text())
    assert manifest["num_samples"] == 2 and manifest["num_failed"] == 1
    [failed] = manifest["failed"]
    assert failed["row"] == 2 and case[2] in failed["reason"]
    store = FeatureStore(tmp_path / "out")
    assert sorted(store) == ["img0", "img2"]
    for image_id in store:
        sample = store[image_id]
        assert np.isfinite(sample["feats"]).all() and ((sample["boxes"] >= 0) & (sample["boxes"] <= 1)).all()


def test_binary_tsv_is_one_line_naming_the_row(tmp_path, capsys):
    good = _tsv(tmp_path, None, rows=1).read_bytes()
    (tmp_path / "feats.tsv").write_bytes(good + bytes(range(128, 256)) * 8)  # a good row, then binary data
    assert vlm_main(["features", "import-tsv", str(tmp_path / "feats.tsv"), str(tmp_path / "out")]) == 2
    assert "feats.tsv, row 2: not UTF-8 text (byte 0x80 at column 1)" in _error_line(capsys)


@pytest.mark.parametrize("what, fragments", [
    ("missing", ["nothing.tsv not found"]),
    ("folder", ["is a folder; expected a .tsv file"]),
    ("out_file", ["is an existing file, not a folder"]),
    ("empty", ["no valid rows: the file holds no rows"]),
])
def test_tsv_paths_are_one_line(what, fragments, tmp_path, capsys):
    tsv, out = tmp_path / "nothing.tsv", tmp_path / "out"
    if what == "folder":
        tsv.mkdir()
    elif what == "out_file":
        tsv = _tsv(tmp_path, None)
        out.write_text("a file")
    elif what == "empty":
        tsv.write_text("\n\n")
    assert vlm_main(["features", "import-tsv", str(tsv), str(out), "--no-progress"]) == 2
    line = _error_line(capsys)
    assert all(f in line for f in fragments), line


def test_all_rows_bad_leaves_nothing_and_the_fixed_rerun_works(tmp_path, capsys):
    bad = [c for c in ROW_CASES if c[0] in ("nan_feature", "plus_inf_box")]
    lines = [_tsv(tmp_path, c, rows=2, name=f"{c[0]}.tsv").read_text().splitlines()[1] for c in bad]
    (tmp_path / "feats.tsv").write_text("\n".join(lines) + "\n")
    argv = ["features", "import-tsv", str(tmp_path / "feats.tsv"), str(tmp_path / "out"), "--on-error", "skip",
            "--no-progress", "-q"]
    assert vlm_main(argv) == 2
    assert "no valid rows: all 2 rows are malformed (first: " in _error_line(capsys)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != ".lock"]
    _tsv(tmp_path, None)  # the fixed file
    assert vlm_main(argv) == 0  # not refused for a non-empty folder
    assert len(FeatureStore(tmp_path / "out")) == 3


# ---------------------------------------------------------------------------------------------- the store


def _arrays(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    boxes = np.sort(rng.random((K, 4)).astype(np.float32).reshape(K, 2, 2), axis=1).reshape(K, 4)
    return rng.standard_normal((K, D)).astype(np.float16), boxes


def _store(directory: Path) -> Path:
    """Two shards (a, b, c | d, e) written by the real writer."""
    directory.mkdir(parents=True)
    for number, chunk in enumerate((IDS[:3], IDS[3:])):
        writer = ShardWriter(directory, number)
        for image_id in chunk:
            writer.write(image_id, *_arrays(IDS.index(image_id)), {"width": 10, "height": 20})
        writer.commit()
    finalize_store(directory, {"format": "vlm-features", "version": FORMAT_VERSION, "backend": "test",
                               "settings": {}, "weights": {}, "random_weights": False, "feature_dim": D,
                               "num_regions": K, "shard_size": 3, "num_shards": 2})
    return directory


def _flip(shard: Path, position: int) -> None:
    data = bytearray(shard.read_bytes())
    data[position] ^= 0x01
    shard.write_bytes(bytes(data))


def _feats_byte(s: Path) -> tuple[str, str]:
    shard = s / "shard-000000.tar"
    _flip(shard, shard.read_bytes().index(_arrays(1)[0].tobytes()) + 7)  # one byte of b's feats.npy payload
    return "b", "shard-000000.tar is damaged: sample 'b'"


def _boxes_byte(s: Path) -> tuple[str, str]:
    shard = s / "shard-000001.tar"
    _flip(shard, shard.read_bytes().index(_arrays(4)[1].tobytes()) + 2)
    return "e", "shard-000001.tar is damaged: sample 'e'"


def _json_byte(s: Path) -> tuple[str, str]:
    shard = s / "shard-000000.tar"
    _flip(shard, shard.read_bytes().index(b'{"image_id":"c"') + 3)
    return "c", "shard-000000.tar is damaged: sample 'c'"


def _header_byte(s: Path) -> tuple[str, str]:
    shard = s / "shard-000001.tar"
    _flip(shard, shard.read_bytes().index(b"d.boxes.npy") + 2)  # the member's name in its tar header
    return "d", "shard-000001.tar is damaged: sample 'd'"


STORE_CASES = [_feats_byte, _boxes_byte, _json_byte, _header_byte]


@pytest.mark.parametrize("damage", STORE_CASES, ids=[c.__name__.strip("_") for c in STORE_CASES])
def test_one_flipped_byte_is_caught_by_both_readers_and_inspect(damage, tmp_path, capsys):
    s = _store(tmp_path / "s")
    image_id, message = damage(s)
    store = FeatureStore(s)
    with pytest.raises(ShardError, match="fails its checksum") as e:
        store[image_id]
    assert message in str(e.value)
    others = [i for i in IDS if i != image_id]
    for other in others:  # the rest of the store still reads
        np.testing.assert_array_equal(store[other]["feats"], _arrays(IDS.index(other))[0])
    with pytest.raises(ShardError, match="fails its checksum") as e:
        list(stream(s, shuffle=False))
    assert message in str(e.value)
    assert vlm_main(["features", "inspect", str(s)]) == 1
    out = capsys.readouterr().out
    assert "CHECKSUM" in out and f"damaged samples: {image_id!r} (1 of" in out


class _StoreReads(torch.utils.data.Dataset):
    def __init__(self, directory: Path) -> None:
        self.directory, self.store = directory, None

    def __len__(self) -> int:
        return len(IDS)

    def __getitem__(self, i: int):
        self.store = self.store or FeatureStore(self.directory)
        return self.store[IDS[i]]["feats"]


def test_damage_found_inside_a_dataloader_worker_is_one_line(tmp_path):
    s = _store(tmp_path / "s")
    image_id, message = _feats_byte(s)
    loader = torch.utils.data.DataLoader(_StoreReads(s), batch_size=None, num_workers=1)
    with pytest.raises(ShardError) as e:  # PyTorch re-raises the worker's error class, traceback in the message
        list(loader)
    assert "Original Traceback" in str(e.value) and len(str(e.value).splitlines()) > 3
    line = one_line(e.value)
    assert "\n" not in line and message in line and line.endswith("(in DataLoader worker 0)")
    assert not line.startswith("features.errors")
    assert one_line(ShardError("plain message")) == "plain message"


def test_corrupt_json_member_unverified_is_still_a_named_error(tmp_path):
    s = _store(tmp_path / "s")
    shard = s / "shard-000000.tar"
    data = shard.read_bytes()
    at = data.index(b'{"image_id":"a"')
    shard.write_bytes(data[:at] + b"\xff" + data[at + 1:])
    with pytest.raises(ShardError, match=r"shard-000000\.tar, sample 'a': member json is not valid JSON"):
        FeatureStore(s, verify=False)["a"]
    with pytest.raises(ShardError, match=r"shard-000000\.tar, key 'a': member json is not valid JSON"):
        list(stream(s, shuffle=False, verify=False))


def _no_sidecar(s: Path) -> None:
    (s / "shard-000001.json").unlink()


def _sidecar_not_json(s: Path) -> None:
    (s / "shard-000001.json").write_text('{"ids": [')


def _sidecar_short(s: Path) -> None:
    record = json.loads((s / "shard-000001.json").read_text())
    record["offsets"] = record["offsets"][:1]
    (s / "shard-000001.json").write_text(json.dumps(record))


@pytest.mark.parametrize("damage, fragment", [
    (_no_sidecar, "its sidecar shard-000001.json (ids and byte offsets) is missing; redo the shard"),
    (_sidecar_not_json, "its sidecar shard-000001.json is unreadable"),
    (_sidecar_short, "does not hold equally long lists ids, offsets, sizes, xxh3_64"),
], ids=["deleted", "not_json", "short_lists"])
def test_damaged_sidecar_is_an_error_naming_the_shard_not_a_pass(damage, fragment, tmp_path, capsys):
    s = _store(tmp_path / "s")
    damage(s)
    assert vlm_main(["features", "inspect", str(s)]) == 1  # inspect no longer passes it
    assert "SIDECAR" in capsys.readouterr().out
    with pytest.raises(ShardError) as e:
        list(FeatureStore(s).ids()) if damage is not _no_sidecar else FeatureStore(s)
    assert "shard-000001.tar" in str(e.value) and fragment in str(e.value)
    with pytest.raises(ShardError, match="shard-000001"):
        list(stream(s, shuffle=False))


def _manifest(s: Path, **changes) -> None:
    manifest = json.loads((s / MANIFEST).read_text())
    manifest.update(changes)
    (s / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, fragment", [
    (lambda s: (s / MANIFEST).write_text("{not json"), "manifest.json is not valid JSON"),
    (lambda s: (s / MANIFEST).write_bytes(b"\xff\xfe"), "manifest.json is not valid JSON"),
    (lambda s: _manifest(s, version=FORMAT_VERSION + 1), "written by a newer vlm; this one reads versions 1..2"),
    (lambda s: _manifest(s, shards={"a": 1}), "field 'shards' is {'a': 1}; expected list"),
    (lambda s: _manifest(s, feature_dim="8"), "field 'feature_dim' is '8'; expected int"),
    (lambda s: _manifest(s, shards=[{"name": "../../etc/passwd", "num_samples": 1, "bytes": 1, "sha256": ""}]),
     "shards[0] is"),
    (lambda s: (s / INDEX_ENTRIES).unlink(), "index files unreadable"),
    (lambda s: (s / "shard-000000.tar").write_bytes(b"x" * 100), "shard-000000.tar is truncated: 100 bytes"),
], ids=["not_json", "not_utf8", "newer_version", "shards_not_list", "dim_not_int", "shard_name", "index_deleted",
        "truncated"])
def test_damaged_store_files_are_one_line_naming_the_file(damage, fragment, tmp_path, capsys):
    s = _store(tmp_path / "s")
    damage(s)
    with pytest.raises(StoreError) as e:
        FeatureStore(s)
    assert fragment in str(e.value)
    code = vlm_main(["features", "inspect", str(s)])
    if code == 2:
        assert fragment in _error_line(capsys)
    else:  # inspect reads what it can and reports the damage
        assert code == 1


@pytest.mark.parametrize("bad, fragment", [
    (lambda f, b: (np.where(np.arange(f.size).reshape(f.shape) == 5, np.nan, f), b), "features hold NaN or Inf"),
    (lambda f, b: (f.astype(np.float32) * 1e5, b), "is beyond the float16 range ±65504"),
    (lambda f, b: (f, np.full_like(b, np.inf)), "box 0 holds NaN or Inf"),
], ids=["nan_features", "float16_overflow", "inf_boxes"])
def test_the_writer_refuses_what_it_cannot_store(bad, fragment, tmp_path, recwarn):
    writer = ShardWriter(tmp_path, 0)
    feats, boxes = bad(*_arrays(0))
    with pytest.raises(StoreError, match=f"image 'x': .*{fragment}"):
        writer.write("x", feats, boxes, {})
    writer.abort()
    assert not [w for w in recwarn if "overflow" in str(w.message)]  # no bare numpy warning instead


def _as_format_1(s: Path) -> None:
    """Make ``s`` look like a store written before per-sample checksums."""
    for sidecar in s.glob("shard-*.json"):
        record = json.loads(sidecar.read_text())
        del record["xxh3_64"]
        sidecar.write_text(json.dumps(record))
    entries = np.load(s / INDEX_ENTRIES)
    old = np.empty(len(entries), INDEX_DTYPE_V1)
    for name in INDEX_DTYPE_V1.names:
        old[name] = entries[name]
    np.save(s / INDEX_ENTRIES, old)
    _manifest(s, version=1)


def test_format_1_store_reads_with_a_warning_and_reindex_adds_checksums(tmp_path, caplog, capsys):
    s = _store(tmp_path / "s")
    _as_format_1(s)
    with caplog.at_level(logging.WARNING):
        assert FeatureStore(s)["a"]["image_id"] == "a"  # backward compatible
    assert "format version 1, without per-sample checksums" in caplog.text and "--reindex" in caplog.text
    assert vlm_main(["features", "inspect", str(s), "--reindex"]) == 0
    assert "added per-sample checksums to 2 shards" in capsys.readouterr().out
    assert json.loads((s / MANIFEST).read_text())["version"] == FORMAT_VERSION
    _feats_byte(s)
    with pytest.raises(ShardError, match="fails its checksum"):
        FeatureStore(s)["b"]


def test_reindex_refuses_to_bless_a_damaged_format_1_shard(tmp_path, capsys):
    s = _store(tmp_path / "s")
    _as_format_1(s)
    _feats_byte(s)
    assert vlm_main(["features", "inspect", str(s), "--reindex"]) == 2
    assert "shard-000000.tar does not match the sha256 its manifest records" in _error_line(capsys)
    assert vlm_main(["features", "inspect", str(s)]) == 1  # the store stays format 1; inspect names the shard
    out = capsys.readouterr().out
    assert "CHECKSUM" in out and "shard-000000.tar" in out and "format       version 1 (no per-sample" in out


def test_corpus_size():
    cases = (len(EXTRACT_CASES) + 1 + 1 + 1 + 4 + 2 + 4 + 2 * len(ROW_CASES) + 1 + 4 + 1 + len(STORE_CASES) + 1 + 3 + 8
             + 3 + 2)
    assert cases >= 40  # with the vlm side's corpus (tests/test_bad_inputs_vlm.py), well over 50
