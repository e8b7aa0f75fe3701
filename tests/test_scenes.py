"""The generated worlds (sort-of-clevr, scenes): pinned pixels, the paper's rules, balance, bad settings, the CLEVR
layout reader, the built-in names and presets, and the features record of a generated world."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm.data.builtin import builtin_world, is_builtin
from vlm.data.readers import read_classification, read_texts, read_vqa
from vlm.data.scenes import clevr, world_folder
from vlm.data.scenes.generate import generate, scene_and_image
from vlm.data.scenes.render import render
from vlm.data.scenes.worlds import WORLDS, check_config, folder_name
from vlm.errors import DataError

# sha256 of the pixels (not of the PNG bytes, which depend on zlib's version) of a few built-in images
PINNED = {
    ("sort-of-clevr", "train", 0): "2729fd3c544a8f9e",
    ("sort-of-clevr", "train", 1): "467f52c6b897f110",
    ("sort-of-clevr", "test", 0): "b30f3fe996c647a4",
    ("scenes", "train", 0): "c3e8e0cd06a5901a",
    ("scenes", "train", 1): "d61d89086ed7eab7",
    ("scenes", "test", 0): "45f9d4e54318b4ac",
}


@pytest.mark.parametrize("key", sorted(PINNED))
def test_built_in_images_are_pinned(key):
    world, split, index = key
    _, pixels, _ = scene_and_image(WORLDS[world], split, index)
    assert hashlib.sha256(pixels.tobytes()).hexdigest()[:16] == PINNED[key]


def test_shapes_are_analytic_masks():
    img = render(40, (255, 255, 255), [("square", 10, 10, 5, (255, 0, 0)), ("circle", 28, 28, 5, (0, 0, 255))])
    red = np.all(img == (255, 0, 0), axis=-1)
    assert red.sum() == 100 and red[5:15, 5:15].all()  # a square of half-extent 5 covers exactly 10x10 pixels
    coverage = (255 - img[..., 0].astype(float)) / 255  # the disc lowers red by its coverage of each pixel
    assert abs(coverage.sum() - math.pi * 25) < 0.5  # its area, edges anti-aliased
    assert np.array_equal(img, render(40, (255, 255, 255), [("square", 10, 10, 5, (255, 0, 0)),
                                                              ("circle", 28, 28, 5, (0, 0, 255))]))


@pytest.fixture(scope="module")
def small_worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("worlds")
    soc = dataclasses.replace(WORLDS["sort-of-clevr"], train_images=300, test_images=60)
    scenes = dataclasses.replace(WORLDS["scenes"], train_images=1500, test_images=1000)
    return generate(soc, root / "soc"), generate(scenes, root / "scenes")


def _scene_objects(root: Path, split: str) -> dict[str, list[dict]]:
    return clevr.read_scenes(root, split)


def test_sort_of_clevr_follows_the_papers_rules(small_worlds):
    root = small_worlds[0]
    scenes = _scene_objects(root, "train")
    questions = read_vqa(str(root), "train")
    per_image = Counter(q.image_id for q in questions)
    assert set(per_image.values()) == {20}
    groups = Counter((q.image_id, q.question_type) for q in questions)
    assert set(groups.values()) == {10}  # ten non-relational and ten relational questions per image
    for q in questions:
        objs = scenes[q.image_id]
        assert len(objs) == 6 and len({o["color"] for o in objs}) == 6
        colour = next(c for c in ("red", "green", "blue", "orange", "gray", "yellow") if f" {c} object" in q.question)
        me = next(o for o in objs if o["color"] == colour)
        x, y = me["pixel_coords"][:2]
        dist = {o["color"]: (o["pixel_coords"][0] - x) ** 2 + (o["pixel_coords"][1] - y) ** 2 for o in objs}
        others = [o for o in objs if o is not me]
        expected = {
            "shape": me["shape"],
            "left": "yes" if x < 37.5 else "no",
            "top": "yes" if y < 37.5 else "no",
            "closest": min(others, key=lambda o: dist[o["color"]])["shape"],
            "furthest": max(others, key=lambda o: dist[o["color"]])["shape"],
            "count": str(sum(o["shape"] == me["shape"] for o in others)),  # the X object itself is not counted
        }[q.answer_type]
        assert q.answers == [expected], q
    for objs in scenes.values():  # squares of side 10 and circles of radius 5, never overlapping
        boxes = [o["bbox"] for o in objs]
        assert all(b[2] - b[0] == 10 and 0 <= b[0] and b[2] <= 75 for b in boxes)
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_scenes_objects_relations_and_uniqueness(small_worlds):
    root = small_worlds[1]
    scenes = _scene_objects(root, "test")
    margin = WORLDS["scenes"].margin
    for objs in scenes.values():
        assert 2 <= len(objs) <= 7
        for i, a in enumerate(objs):
            for b in objs[i + 1:]:
                gap = max(b["bbox"][0] - a["bbox"][2], a["bbox"][0] - b["bbox"][2], b["bbox"][1] - a["bbox"][3],
                          a["bbox"][1] - b["bbox"][3])
                assert gap >= 3
    checked = 0
    for q in read_vqa(str(root), "test"):
        if q.answer_type != "relate":
            continue
        objs = scenes[q.image_id]
        words = q.question.rstrip("?").split()  # is the C1 object REL the C2 object
        a = [o for o in objs if o["color"] == words[2]]
        b = [o for o in objs if o["color"] == words[-2]]
        assert len(a) == len(b) == 1  # references name exactly one object
        rel = " ".join(words[4:-3])
        axis, sign = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}[rel]
        delta = (b[0]["pixel_coords"][axis] - a[0]["pixel_coords"][axis]) * -sign
        assert abs(delta) >= margin and q.answers == ["yes" if delta > 0 else "no"]
        checked += 1
    assert checked > 500


def test_each_scenes_family_is_balanced_within_five_points(small_worlds):
    """Per family, the text-only ceiling (the majority answer of each question string, on the test split itself) is
    within 5 points of the family's majority-answer share."""
    questions = read_vqa(str(small_worlds[1]), "test")
    families = defaultdict(list)
    for q in questions:
        families[q.answer_type].append(q)
    assert set(families) == {"query_colour", "query_shape", "query_size", "exist", "count", "compare_count", "relate",
                             "closest", "furthest", "same_attribute"}
    for family, rows in families.items():
        by_text = defaultdict(Counter)
        for q in rows:
            by_text[q.question][q.answers[0]] += 1
        ceiling = 100 * sum(max(c.values()) for c in by_text.values()) / len(rows)
        majority = 100 * max(Counter(q.answers[0] for q in rows).values()) / len(rows)
        assert ceiling - majority <= 5, (family, ceiling, majority)


def test_statements_and_captions(small_worlds):
    for root in small_worlds:
        statements = clevr.read_statements(root, "test")
        assert statements and {s.label for s in statements} == {0, 1}
        by_text = defaultdict(Counter)
        for s in statements:
            by_text[s.text][s.label] += 1
        ceiling = sum(max(c.values()) for c in by_text.values()) / len(statements)
        assert ceiling < 0.6  # no statement string decides its label
        assert clevr.read_captions(root, "train")


def test_scenes_captions_are_true_and_argument_swaps_are_false(small_worlds):
    from pretraining.negatives import argument_swaps

    root = small_worlds[1]
    scenes = _scene_objects(root, "train")
    for t in clevr.read_captions(root, "train")[:400]:
        if " is " not in t.text:
            continue
        swapped = argument_swaps(t.text, ["left of", "right of", "above", "below"])
        if not swapped:
            continue
        objs = scenes[t.image_id]

        def find(phrase):
            size, colour, shape = phrase.split()[1:4]
            return [o for o in objs if (o["size"], o["color"], o["shape"]) == (size, colour, shape)]

        head, tail = t.text.split(" is ", 1)
        rel = next(r for r in ("left of", "right of", "above", "below") if tail.startswith(r))
        (a,), (b,) = find(head), find(tail[len(rel) + 1:])
        axis, sign = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}[rel]
        assert (b["pixel_coords"][axis] - a["pixel_coords"][axis]) * -sign >= WORLDS["scenes"].margin
        assert swapped[0] == f"{tail[len(rel) + 1:]} is {rel} {head}"


@pytest.mark.parametrize("change, message", [
    (dict(min_objects=0), "min_objects"),
    (dict(max_objects=60), "do not fit"),
    (dict(colours=("red", "mauve")), "unknown colour(s) 'mauve'"),
    (dict(shapes=("square", "hexagon")), "shapes must be"),
    (dict(train_images=0), "train_images"),
])
def test_bad_generator_settings_are_one_line_before_any_work(tmp_path, change, message):
    cfg = dataclasses.replace(WORLDS["scenes"], **change)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        generate(cfg, tmp_path / "w")
    assert "\n" not in str(e.value)
    assert not any(tmp_path.iterdir())


def test_folder_name_carries_version_hash_and_seed():
    a = WORLDS["scenes"]
    assert folder_name(a).startswith("scenes-g1-") and folder_name(a).endswith("-s0")
    assert folder_name(dataclasses.replace(a, margin=7)) != folder_name(a)
    assert folder_name(dataclasses.replace(a, seed=3)).endswith("-s3")
    check_config(a)
    check_config(WORLDS["sort-of-clevr"])


def test_generation_is_deterministic_and_published_whole(tmp_path):
    cfg = dataclasses.replace(WORLDS["scenes"], train_images=20, test_images=5)
    a, b = generate(cfg, tmp_path / "a"), generate(cfg, tmp_path / "b")
    for rel in ("questions/scenes_train_questions.json", "statements/scenes_test_statements.json",
                "captions/scenes_train_captions.json", "scenes/scenes_test_scenes.json"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    pa = np.asarray(Image.open(a / "images/train/scenes_train_000003.png"))
    pb = np.asarray(Image.open(b / "images/train/scenes_train_000003.png"))
    assert np.array_equal(pa, pb)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    record = json.loads((a / "generator.json").read_text())
    assert record["complete"] and record["counts"]["train"]["images"] == 20


# ------------------------------------------------------------------------------------------- the real CLEVR layout


def _write_clevr(root: Path) -> None:
    """A tiny folder in the real CLEVR v1.0 layout (questions with programs, scenes, a test split without answers)."""
    for split in ("train", "val", "test"):
        (root / "images" / split).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (48, 32), (i * 100, 50, 50)).save(root / "images" / split / f"CLEVR_{split}_{i:06d}.png")
    (root / "questions").mkdir()
    (root / "scenes").mkdir()

    def q(split, i, text, answer, fn):
        row = {"image_index": i, "image_filename": f"CLEVR_{split}_{i:06d}.png", "split": split, "question": text,
               "question_family_index": 3, "question_index": i,
               "program": [{"function": "scene", "inputs": [], "value_inputs": []},
                           {"function": fn, "inputs": [0], "value_inputs": []}]}
        if answer is not None:
            row["answer"] = answer
        return row

    for split in ("train", "val", "test"):
        answer = (lambda a: None) if split == "test" else (lambda a: a)
        rows = [q(split, 0, "Are there any cubes?", answer("yes"), "exist"),
                q(split, 1, "How many spheres are there?", answer("2"), "count"),
                q(split, 1, "What color is the cube?", answer("red"), "query_color")]
        (root / "questions" / f"CLEVR_{split}_questions.json").write_text(json.dumps({"info": {}, "questions": rows}))
        scenes = [{"image_index": i, "image_filename": f"CLEVR_{split}_{i:06d}.png", "objects": [
            {"color": "red", "shape": "cube", "size": "large", "material": "rubber", "pixel_coords": [10, 10, 5]}]}
            for i in range(2)]
        (root / "scenes" / f"CLEVR_{split}_scenes.json").write_text(json.dumps({"info": {}, "scenes": scenes}))


def test_the_real_clevr_layout_reads_with_families_from_programs(tmp_path):
    root = tmp_path / "CLEVR_v1.0"
    _write_clevr(root)
    train = read_vqa(str(root), "train")
    assert [(q.image_id, q.answers, q.answer_type) for q in train] == [
        ("CLEVR_train_000000", ["yes"], "exist"), ("CLEVR_train_000001", ["2"], "count"),
        ("CLEVR_train_000001", ["red"], "query_attribute")]
    held = read_vqa(str(root), "test")  # the test split has no answers: val is read instead
    assert held[0].image_id == "CLEVR_val_000000" and held[0].answers == ["yes"]
    assert read_texts(str(root), "train")[0].text == "Are there any cubes?"
    assert clevr.read_scenes(root, "train")["CLEVR_train_000000"][0]["shape"] == "cube"
    broken = tmp_path / "broken"
    (broken / "questions").mkdir(parents=True)
    (broken / "questions" / "X_train_questions.json").write_text(json.dumps({"questions": [{"question": "q?"}]}))
    with pytest.raises(DataError, match=r"X_train_questions.json: questions\[0\]: missing field 'image_filename'"):
        read_vqa(str(broken), "train")


def test_the_clevr_images_extract_with_their_stems_as_ids(tmp_path):
    from features.extract import extract
    from features.store import open_store

    root = tmp_path / "CLEVR_v1.0"
    _write_clevr(root)
    extract(str(root / "images" / "train"), tmp_path / "feats", "patches", part=(0, 1), device="cpu", progress=False,
            num_workers=0)
    store = open_store(tmp_path / "feats")
    assert {q.image_id for q in read_vqa(str(root), "train")} <= set(store.ids())


# ----------------------------------------------------------------------------------------- names and the registry


def test_built_in_names_worlds_and_presets(tmp_path):
    from vlm.config import world_preset

    assert is_builtin("scenes+scenes-captions") and builtin_world("sort-of-clevr-statements") == "sort-of-clevr"
    assert builtin_world("easy-vqa+easy-vqa-captions") == "easy-vqa" and not is_builtin("scenes+my.jsonl")
    with pytest.raises(DataError, match="different worlds"):
        builtin_world("easy-vqa+scenes-captions")
    assert world_preset("finetune", "lxmert-vqa", "scenes") == "lxmert-vqa-scenes"
    assert world_preset("pretrain", "vilbert", "sort-of-clevr-captions") == "vilbert-sort-of-clevr"
    assert world_preset("finetune", "lxmert-classify", "scenes-statements") == "lxmert-classify"
    assert world_preset("finetune", "lxmert-vqa", "easy-vqa") == "lxmert-vqa"


def test_readers_generate_a_world_on_first_use_and_refuse_the_wrong_kind(tmp_path, monkeypatch):
    import vlm.data.scenes as scenes_pkg

    small = dataclasses.replace(WORLDS["sort-of-clevr"], train_images=12, test_images=4)
    monkeypatch.setitem(scenes_pkg.WORLDS, "sort-of-clevr", small)
    qs = read_vqa("sort-of-clevr", "test", tmp_path)
    assert len(qs) == 80 and (world_folder("sort-of-clevr", tmp_path) / "generator.json").is_file()
    with pytest.raises(DataError, match="cache folder"):
        read_vqa("sort-of-clevr", "test")
    assert read_texts("sort-of-clevr+sort-of-clevr-captions", "train", tmp_path)
    examples, classes = read_classification("sort-of-clevr-statements", "train", cache_dir=tmp_path)
    assert classes.names == ["false", "true"] and examples
    with pytest.raises(DataError, match="these are captions, not questions"):
        read_vqa("sort-of-clevr-captions", "train", tmp_path)
    with pytest.raises(DataError, match="these are questions, not statements"):
        read_classification("sort-of-clevr", "train", cache_dir=tmp_path)


def test_a_changed_generator_is_a_features_record_difference():
    from features.store.manifest import extraction_record, record_differences

    base = {"backend": "grid", "settings": {"grid": 4}, "feature_dim": 8,
            "source": {"dataset": {"name": "scenes", "generator_version": 1, "config_hash": "abc", "seed": 0}}}
    other = json.loads(json.dumps(base))
    other["source"]["dataset"]["config_hash"] = "def"
    assert extraction_record(base)["dataset"]["config_hash"] == "abc"
    assert record_differences(extraction_record(base), extraction_record(other))[0].startswith("dataset:")
    plain = {k: v for k, v in base.items() if k != "source"}
    assert not record_differences(extraction_record(base), extraction_record(plain))
