"""Matching negatives: which texts the matching objective sees, and hard negatives made by swapping one word.

A random negative (another image's text) differs from the image in whatever the texts happen to differ in, so a
model may learn matching from the easiest attribute. A hard negative keeps a true caption and changes exactly one
word for another of the same *word group* ("a red circle" → "a blue circle"): only the grounding of that word tells
it apart, as the hard negatives of ALBEF/BLIP's image-text matching do. The groups are configuration (lists of
interchangeable words: colours, shapes, COCO object nouns, ...), nothing here knows easy-VQA's templates.

:class:`MatchingConfig` is the ``matching:`` section of a pretraining config; :func:`swap_variants` makes the
variants of one text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vlm.config import ConfigError, choice
from vlm.data.easy_vqa import EASY_VQA_COLOURS, EASY_VQA_SHAPES

#: The built-in data's word groups (its captions name one colour and one shape).
EASY_VQA_WORD_GROUPS: dict[str, tuple[str, ...]] = {"colour": EASY_VQA_COLOURS, "shape": EASY_VQA_SHAPES}

#: Which texts the matching objective sees: every text, or only the texts that assert something about the image.
MATCHING_TEXTS = ("all", "assertions")

_WORD = re.compile(r"[A-Za-z]+(?:-[A-Za-z]+)*")
_PHRASE = re.compile(r"[a-z]+( [a-z]+)*")

#: The negative kind that swaps a relation's arguments.
ARGUMENTS = "arguments"


@dataclass
class MatchingConfig:
    """What the matching objective is trained and scored on (the share of mismatched pairs is
    ``masking.mismatch_prob``)."""

    # "all": every text, questions included (a question about another image is often still a sensible question about
    # this one); "assertions": captions and statements only, questions are never mismatched and not scored
    texts: str = choice("all", MATCHING_TEXTS)
    # relative share of each negative kind among mismatched pairs: "random" (another image's text of the same kind)
    # or a word group's name (one word of that group swapped); a text without a word of the drawn group gets a
    # random negative
    negatives: dict[str, float] = field(default_factory=lambda: {"random": 1.0})
    # groups of interchangeable words (lower case) for hard negatives
    word_groups: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(EASY_VQA_WORD_GROUPS))
    # relation phrases ("left of", "above") whose arguments a hard negative swaps: "A is left of B" -> "B is left of
    # A" (the negative kind "arguments"; only for relations that never hold both ways, as the scenes' do)
    relations: tuple[str, ...] = ()

    def check(self) -> None:
        """Negative kinds name ``random`` or a group, shares are non-negative and not all zero, a word is in at most
        one group and groups have two words or more.

        Raises:
            ConfigError: naming the key.
        """
        kinds = {"random", *self.groups()}
        for kind, share in self.negatives.items():
            if kind not in kinds:
                raise ConfigError(f"matching.negatives: {kind!r} is neither 'random' nor a word group "
                                  f"({', '.join(sorted(self.word_groups))})")
            if not share >= 0:
                raise ConfigError(f"matching.negatives.{kind}: expected a share >= 0, got {share!r}")
        if not sum(self.negatives.values()) > 0:
            raise ConfigError("matching.negatives: the shares add up to 0")
        if ARGUMENTS in self.word_groups:
            raise ConfigError(f"matching.word_groups: {ARGUMENTS!r} is the name of the argument-swap negatives")
        for rel in self.relations:
            if not isinstance(rel, str) or not _PHRASE.fullmatch(rel):
                raise ConfigError(f"matching.relations: {rel!r} is not a lower-case phrase of words")
        seen: dict[str, str] = {}
        for name, words in self.word_groups.items():
            if len(set(words)) < 2:
                raise ConfigError(f"matching.word_groups.{name}: a group needs two different words or more")
            for w in words:
                if not _WORD.fullmatch(w) or w != w.lower():
                    raise ConfigError(f"matching.word_groups.{name}: {w!r} is not one lower-case word")
                if w in seen and seen[w] != name:
                    raise ConfigError(f"matching.word_groups: {w!r} is in both {seen[w]!r} and {name!r}")
                seen[w] = name

    def groups(self) -> list[str]:
        """The hard-negative kinds: the word groups, then ``arguments`` when relations are given."""
        return [*self.word_groups, *([ARGUMENTS] if self.relations else [])]

    def kinds(self) -> list[str]:
        """Names of the pair kinds, indexed by ``Batch.match_kind``: ``positive``, ``random``, then the groups."""
        return ["positive", "random", *self.groups()]

    def shares(self) -> list[float]:
        """The probability of each negative kind (``random``, then the groups), normalised."""
        raw = [self.negatives.get("random", 0.0)] + [self.negatives.get(g, 0.0) for g in self.groups()]
        total = sum(raw)
        return [x / total for x in raw]

    def variants(self, text: str, kinds: Sequence[str]) -> dict[str, list[str]]:
        """The hard negatives of ``text`` of each of ``kinds`` (word groups and ``arguments``)."""
        out = swap_variants(text, {g: self.word_groups[g] for g in kinds if g != ARGUMENTS})
        if ARGUMENTS in kinds:
            swapped = argument_swaps(text, self.relations)
            if swapped:
                out[ARGUMENTS] = swapped
        return out


def swap_variants(text: str, groups: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Every text that differs from ``text`` in exactly one word swapped for another word of its group.

    Words are matched case-insensitively as whole words; each occurrence of a group word gives one variant per other
    word of the group (the replacement keeps a capitalised first letter).

    >>> swap_variants("A red circle", {"colour": ["red", "blue"], "shape": ["circle", "square"]})
    {'colour': ['A blue circle'], 'shape': ['A red square']}
    """
    group_of = {w: g for g, words in groups.items() for w in words}
    out: dict[str, list[str]] = {g: [] for g in groups}
    for m in _WORD.finditer(text):
        word = m.group(0)
        g = group_of.get(word.lower())
        if g is None:
            continue
        for other in groups[g]:
            if other == word.lower():
                continue
            new = other.capitalize() if word[0].isupper() else other
            out[g].append(text[:m.start()] + new + text[m.end():])
    return {g: v for g, v in out.items() if v}


def argument_swaps(text: str, relations: Sequence[str]) -> list[str]:
    """``text`` with the two arguments of a relation swapped, for each relation phrase it contains once:
    ``"the red circle is left of the blue square"`` → ``"the blue square is left of the red circle"`` (a verb
    ``is``/``are`` before the phrase stays in place).

    >>> argument_swaps("the red circle is left of the blue square", ["left of"])
    ['the blue square is left of the red circle']
    """
    out = []
    for rel in relations:
        marker = f" {rel} "
        if text.count(marker) != 1:
            continue
        head, tail = text.split(marker)
        verb = next((v for v in (" is", " are") if head.endswith(v)), "")
        subject = head[:len(head) - len(verb)]
        if subject and tail:
            out.append(f"{tail}{verb} {rel} {subject}")
    return out
