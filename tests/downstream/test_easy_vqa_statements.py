"""easy-vqa-statements on its real output: balance per statement and per image, ceilings, determinism, skips."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from vlm.data.easy_vqa import (
    EASY_VQA_COLOURS,
    EASY_VQA_SHAPES,
    STATEMENT_TYPES,
    build_statements,
    ceilings,
    read_easy_vqa,
    read_image_attributes,
)
from vlm.data.vqa import VQAExample
from vlm.errors import DataError


@pytest.fixture(scope="module")
def splits():
    return {split: build_statements(split, seed=0) for split in ("train", "test")}


def truth(text: str, colour: str, shape: str) -> int:
    """Decide a statement from the image's colour and shape alone (image + text decide every label)."""
    words = text.split()
    negated = "not" in words or "no" in words
    named_colours = [w for w in words if w in EASY_VQA_COLOURS]
    named_shapes = [w for w in words if w in EASY_VQA_SHAPES]
    holds = all(c == colour for c in named_colours) and all(s == shape for s in named_shapes)
    return int(holds != negated)


@pytest.mark.parametrize("split", ["train", "test"])
def test_statements_ceilings_are_at_most_52_percent(splits, split):
    examples, report = splits[split]
    c = ceilings(examples)
    assert c["text_only"] <= 52.0 and c["image_only"] <= 52.0 and c["majority"] <= 52.0, c
    assert report.statements == len(examples) == 10 * report.images_used
    assert report.true == len(examples) // 2


@pytest.mark.parametrize("split", ["train", "test"])
def test_statements_balanced_per_string_and_per_image(splits, split):
    examples, _ = splits[split]
    per_text: dict[str, Counter] = defaultdict(Counter)
    per_image: dict[str, Counter] = defaultdict(Counter)
    for ex in examples:
        per_text[ex.text][ex.label] += 1
        per_image[ex.image_id][ex.label] += 1
    assert all(c[0] == c[1] for c in per_text.values())
    assert all(c[0] == c[1] == 5 for c in per_image.values())
    assert {ex.group for ex in examples} == set(STATEMENT_TYPES)


@pytest.mark.parametrize("split", ["train", "test"])
def test_statement_labels_follow_from_image_and_text(splits, split):
    examples, _ = splits[split]
    attributes, _ = read_image_attributes(read_easy_vqa(split))
    assert all(ex.label == truth(ex.text, *attributes[ex.image_id]) for ex in examples)


def test_statements_report_counts_and_determinism(splits):
    examples, report = splits["test"]
    assert report.images == 1000 and report.questions == 9673
    assert report.images_used + report.no_colour + report.no_shape >= report.images - report.conflicting
    assert report.per_type == {t: 2 * report.images_used for t in STATEMENT_TYPES}
    again, _ = build_statements("test", seed=0)
    assert [(e.image_id, e.text, e.label) for e in again] == [(e.image_id, e.text, e.label) for e in examples]
    other, _ = build_statements("test", seed=1)
    assert [e.text for e in other] != [e.text for e in examples]
    assert ceilings(other)["text_only"] == 50.0


def test_images_without_colour_or_shape_are_counted_not_dropped_silently():
    def q(qid, image, text, answer):
        return VQAExample(qid, image, text, [answer])

    questions = [
        q(0, "0", "what color is the shape?", "red"), q(1, "0", "what shape is in the image?", "circle"),
        q(2, "1", "what is the blue shape?", "triangle"),                       # colour presupposed: blue
        q(3, "2", "is there a green shape?", "yes"), q(4, "2", "is there not a rectangle?", "no"),
        q(5, "3", "what color is the shape?", "gray"),                          # no shape: left out, counted
        q(6, "4", "does the image contain a circle?", "yes"),                   # no colour: left out, counted
        q(7, "5", "what color is the shape?", "teal"), q(8, "5", "is there a teal shape?", "no"),  # conflict
        q(9, "6", "what shape is present?", "circle"),
    ] + [q(10 + i, "6", f"is there a {c} shape?", "no") for i, c in enumerate(EASY_VQA_COLOURS) if c != "brown"]
    attributes, report = read_image_attributes(questions)
    assert attributes == {"0": ("red", "circle"), "1": ("blue", "triangle"), "2": ("green", "rectangle"),
                          "6": ("brown", "circle")}
    assert (report.no_shape, report.no_colour, report.conflicting, report.by_elimination) == (1, 1, 1, 1)
    examples, report = build_statements("test", questions=questions)
    assert report.images == 7 and report.images_used == 4 and len(examples) == 40
    assert ceilings(examples) == {"text_only": 50.0, "image_only": 50.0, "majority": 50.0}


def test_unbalanceable_split_is_an_error():
    questions = [VQAExample(i, str(i), "what color is the circle?", ["red"]) for i in range(3)]
    with pytest.raises(DataError, match="3 of 3 images have colour 'red'"):
        build_statements("train", questions=questions)
