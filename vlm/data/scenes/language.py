"""What the generated worlds say about a scene: question families, statements and captions, and the balancing that
keeps any one modality from deciding them.

Every family is a function of a scene that lists *candidates* — ``(template id, text, answer)`` for everything it
could ask about the image. Which candidates become the data set is decided by a :class:`BalancedSampler`:

* ``sort-of-clevr`` questions follow the paper's recipe instead (ten non-relational and ten relational questions per
  image, each with a uniformly drawn colour and subtype), so its answer shares are the reimplementation's;
* ``scenes`` questions and both worlds' statements are drawn per image and family, each time taking the candidate
  whose answer is the most under-represented *for its own text* so far (ties broken at random). The answers of every
  question string stay close to uniform over the family's answers, so the text-only ceiling (the majority answer of
  each string) stays close to the family's majority-answer share, which ``tests/data/test_scenes.py`` checks.

Definitions (``scenes``; pixel distances between object centres, ``margin`` from the world's settings):

* a reference ("the large circle", "the red object") names exactly one object of the scene, or is not used;
* ``A left of B``: B's centre is at least ``margin`` pixels right of A's (``right of``, ``above``, ``below``
  alike; ``above`` means a smaller y); asked only when one of the two opposite relations holds;
* ``closest to`` / ``furthest from``: by centre distance, asked only when the runner-up is at least ``margin / 2``
  pixels further (closer);
* counts are asked up to three; ``are there more X than Y`` only when the counts differ.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vlm.data.scenes.worlds import SceneObject, WorldConfig

Candidate = tuple[str, str, str]  # (template id, text, answer)

NUMBER_WORDS = ("no", "one", "two", "three")
COUNT_ANSWERS = ("0", "1", "2", "3")
RELATIONS = {"left of": (0, -1), "right of": (0, 1), "above": (1, -1), "below": (1, 1)}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith(("s", "x", "ch", "sh")) else "s")


@dataclass(frozen=True)
class Family:
    """A question (or statement) family: its name, the group it is reported under, its closed answer set and the
    function listing its candidates for a scene."""

    name: str
    group: str
    answers: tuple[str, ...]
    candidates: Callable[[list[SceneObject], WorldConfig], list[Candidate]]


# ---------------------------------------------------------------------------------------------------------- helpers


def _matches(o: SceneObject, size: str | None, colour: str | None, shape: str | None) -> bool:
    return (size is None or o.size == size) and (colour is None or o.colour == colour) and (
        shape is None or o.shape == shape)


def _phrase(size: str | None, colour: str | None, shape: str | None) -> str:
    words = [w for w in (size, colour) if w] + [shape or "object"]
    return "the " + " ".join(words)


def unique_refs(scene: list[SceneObject], forms: Sequence[tuple[str, ...]]) -> list[tuple[int, str, str]]:
    """``(object index, form id, phrase)`` for every form (a tuple of ``size``/``colour``/``shape``) that names exactly
    one object of the scene."""
    out = []
    for k, form in enumerate(forms):
        for i, o in enumerate(scene):
            key = {a: getattr(o, a) for a in form}
            if sum(_matches(p, key.get("size"), key.get("colour"), key.get("shape")) for p in scene) == 1:
                out.append((i, str(k), _phrase(key.get("size"), key.get("colour"), key.get("shape"))))
    return out


def _distance(a: SceneObject, b: SceneObject) -> float:
    return math.hypot(a.cx - b.cx, a.cy - b.cy)


def _relation(a: SceneObject, b: SceneObject, rel: str, margin: int) -> bool:
    axis, sign = RELATIONS[rel]
    delta = (b.cx - a.cx, b.cy - a.cy)[axis] * -sign  # > 0 when a is rel of b
    return delta >= max(margin, 1)


def _extreme(scene: list[SceneObject], i: int, closest: bool, margin: float) -> int | None:
    """The object closest to (furthest from) object ``i``, when it is so by ``margin`` pixels over the runner-up."""
    others = sorted((j for j in range(len(scene)) if j != i), key=lambda j: _distance(scene[i], scene[j]),
                    reverse=not closest)
    if not others:
        return None
    if len(others) > 1 and abs(_distance(scene[i], scene[others[0]]) - _distance(scene[i], scene[others[1]])) < margin:
        return None
    return others[0]


# ----------------------------------------------------------------------------------------------- scenes: questions


def _query(attribute: str, forms: Sequence[tuple[str, ...]], template: str):
    def make(scene: list[SceneObject], cfg: WorldConfig) -> list[Candidate]:
        return [(f"query_{attribute}-{k}", template.format(ref=phrase), getattr(scene[i], attribute))
                for i, k, phrase in unique_refs(scene, forms)]
    return make


def _exist(scene: list[SceneObject], cfg: WorldConfig) -> list[Candidate]:
    out = []
    for colour in cfg.colours:
        for shape in cfg.shapes:
            there = any(_matches(o, None, colour, shape) for o in scene)
            out.append(("exist-0", f"is there a {colour} {shape}?", "yes" if there else "no"))
    for size in cfg.sizes:
        for shape in cfg.shapes:
            there = any(_matches(o, size, None, shape) for o in scene)
            out.append(("exist-1", f"is there a {size} {shape}?", "yes" if there else "no"))
    return out


def _count_classes(cfg: WorldConfig) -> list[tuple[str, str, dict[str, str]]]:
    """``(template id, plural noun phrase, filter)`` of what can be counted."""
    return ([("0", f"{c} objects", {"colour": c}) for c in cfg.colours]
            + [("1", plural(s), {"shape": s}) for s in cfg.shapes]
            + [("2", f"{z} objects", {"size": z}) for z in cfg.sizes])


def _how_many(scene: list[SceneObject], what: dict[str, str]) -> int:
    return sum(_matches(o, what.get("size"), what.get("colour"), what.get("shape")) for o in scene)


def _count(scene: list[SceneObject], cfg: WorldConfig) -> list[Candidate]:
    out = []
    for k, noun, what in _count_classes(cfg):
        n = _how_many(scene, what)
        if n < len(COUNT_ANSWERS):
            out.append((f"count-{k}", f"how many {noun} are there?", str(n)))
    return out


def _compare_count(scene: list[SceneObject], cfg: WorldConfig) -> list[Candidate]:
    groups = ([(plural(s), {"shape": s}) for s in cfg.shapes]
              + [(f"{z} objects", {"size": z}) for z in cfg.sizes])
    out = []
    for a, fa in groups:
        for b, fb in groups:
            if a == b or (("objects" in a) != ("objects" in b)):
                continue
            na, nb = _how_many(scene, fa), _how_many(scene, fb)
            if na != nb:
                out.append(("compare_count-0", f"are there more {a} than {b}?", "yes" if na > nb else "no"))
    return out


def _colour_refs(scene: list[SceneObject]) -> list[tuple[int, str]]:
    return [(i, p) for i, _, p in unique_refs(scene, [("colour",)])]


def _colour_pairs(scene: list[SceneObject], cfg: WorldConfig) -> list[tuple[int, str, int, str]]:
    """Pairs of objects named by their colours alone, in the palette's order (one string per unordered pair: fewer
    strings, each seen more often, keep the per-string balance tight)."""
    refs = sorted(_colour_refs(scene), key=lambda r: cfg.colours.index(scene[r[0]].colour))
    return [(i, pa, j, pb) for a, (i, pa) in enumerate(refs) for (j, pb) in refs[a + 1:]]


def _relate(scene: list[SceneObject], cfg: WorldConfig) -> list[Candidate]:
    out = []
    for i, pa, j, pb in _colour_pairs(scene, cfg):
        for rel in RELATIONS:
            if _relation(scene[i], scene[j], rel, cfg.margin):
                out.append(("relate-0", f"is {pa} {rel} {pb}?", "yes"))
            elif _relation(scene[i], scene[j], OPPOSITE[rel], cfg.margin):
                out.append(("relate-0", f"is {pa} {rel} {pb}?", "no"))
    return out



_SHAPE_REFS = (("shape",), ("size", "shape"))


def _closest_furthest(closest: bool):
    word = "closest to" if closest else "furthest from"
    name = "closest" if closest else "furthest"

    def make(scene: list[SceneObject], cfg: WorldConfig) -> list[Candidate]:
        out = []
        for i, k, phrase in unique_refs(scene, _SHAPE_REFS):
            j = _extreme(scene, i, closest, cfg.margin / 2)
            if j is not None:
                out.append((f"{name}-{k}", f"what colour is the object {word} {phrase}?", scene[j].colour))
        return out
    return make


def _same(scene: list[SceneObject], cfg: WorldConfig) -> list[Candidate]:
    out = []
    for i, pa, j, pb in _colour_pairs(scene, cfg):
        for k, attr in enumerate(("shape", "size")):
            same = getattr(scene[i], attr) == getattr(scene[j], attr)
            out.append((f"same_attribute-{k}", f"is {pa} the same {attr} as {pb}?", "yes" if same else "no"))
    return out


def scenes_question_families(cfg: WorldConfig) -> list[tuple[Family, int]]:
    """``scenes``' question families, each with how many questions an image gets from it."""
    colours, shapes, sizes = tuple(cfg.colours), tuple(cfg.shapes), tuple(cfg.sizes)
    yn = ("yes", "no")
    return [
        (Family("query_colour", "attribute", colours,
                _query("colour", _SHAPE_REFS, "what colour is {ref}?")), 1),
        (Family("query_shape", "attribute", shapes,
                _query("shape", (("colour",), ("size", "colour")), "what shape is {ref}?")), 1),
        (Family("query_size", "attribute", sizes,
                _query("size", (("colour",), ("shape",)), "what size is {ref}?")), 1),
        (Family("exist", "exist", yn, _exist), 1),
        (Family("count", "count", COUNT_ANSWERS, _count), 1),
        (Family("compare_count", "count", yn, _compare_count), 1),
        (Family("relate", "relation", yn, _relate), 3),
        (Family("closest", "relation", colours, _closest_furthest(True)), 1),
        (Family("furthest", "relation", colours, _closest_furthest(False)), 1),
        (Family("same_attribute", "compare", yn, _same), 2),
    ]


# ---------------------------------------------------------------------------------------------- scenes: statements


def _exist_statement(scene: list[SceneObject], cfg: WorldConfig) -> list[Candidate]:
    return [(t, q.replace("is there a", "there is a").rstrip("?"), "true" if a == "yes" else "false")
            for t, q, a in _exist(scene, cfg)]


def _count_statement(scene: list[SceneObject], cfg: WorldConfig) -> list[Candidate]:
    out = []
    for k, noun, what in _count_classes(cfg):
        n = _how_many(scene, what)
        for m, word in enumerate(NUMBER_WORDS):
            if m == 1:
                text = f"there is one {noun_singular(noun)}"
            else:
                text = f"there are {word} {noun}"
            out.append((f"count-{k}", text, "true" if n == m else "false"))
    return out


def noun_singular(noun: str) -> str:
    """``red objects`` → ``red object``, ``crosses`` → ``cross``, ``squares`` → ``square``."""
    return noun[:-2] if noun.endswith("es") and noun[:-2].endswith(("s", "x", "ch", "sh")) else noun[:-1]


def _relate_statement(scene: list[SceneObject], cfg: WorldConfig) -> list[Candidate]:
    return [(t, _as_statement(q), "true" if a == "yes" else "false") for t, q, a in _relate(scene, cfg)]


def _as_statement(question: str) -> str:
    """``is the red object left of the blue object?`` → ``the red object is left of the blue object``."""
    body = question[len("is "):-1]
    for rel in RELATIONS:
        marker = f" {rel} "
        if marker in body:
            a, b = body.split(marker, 1)
            return f"{a} is {rel} {b}"
    raise AssertionError(question)


def _same_statement(scene: list[SceneObject], cfg: WorldConfig) -> list[Candidate]:
    out = []
    for t, q, a in _same(scene, cfg):
        body = q[len("is "):-1]  # "the red object the same shape as the blue object"
        head, tail = body.split(" the same ", 1)
        attr, other = tail.split(" as ", 1)
        out.append((t, f"{head} and {other} have the same {attr}", "true" if a == "yes" else "false"))
    return out


def scenes_statement_families(cfg: WorldConfig) -> list[tuple[Family, int]]:
    tf = ("true", "false")
    return [(Family("exist", "exist", tf, _exist_statement), 2),
            (Family("count", "count", tf, _count_statement), 2),
            (Family("relate", "relation", tf, _relate_statement), 3),
            (Family("same_attribute", "compare", tf, _same_statement), 2)]


# ------------------------------------------------------------------------------------------------- scenes: captions


def _full_refs(scene: list[SceneObject]) -> dict[int, str]:
    forms = (("size", "colour", "shape"),)
    return {i: p for i, _, p in unique_refs(scene, forms)}


def scenes_captions(scene: list[SceneObject], cfg: WorldConfig, rng: np.random.Generator) -> list[tuple[str, str]]:
    """``(kind, caption)``: one listing of the objects left to right, up to four spatial relations between objects
    named in full, and one count."""
    ordered = sorted(scene, key=lambda o: (o.cx, o.cy))
    items = [f"a {o.size} {o.colour} {o.shape}" for o in ordered]
    listing = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    out = [("objects", listing)]
    refs = _full_refs(scene)
    pairs = [(i, j, rel) for i in refs for j in refs if i != j for rel in RELATIONS
             if _relation(scene[i], scene[j], rel, cfg.margin)]
    for k in rng.permutation(len(pairs))[:4]:
        i, j, rel = pairs[int(k)]
        out.append(("relation", f"{refs[i]} is {rel} {refs[j]}"))
    classes = _count_classes(cfg)
    _, noun, what = classes[int(rng.integers(len(classes)))]
    n = _how_many(scene, what)
    if n == 1:
        out.append(("count", f"there is one {noun_singular(noun)}"))
    else:
        out.append(("count", f"there are {NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else n} {noun}"))
    return out


# ------------------------------------------------------------------------------------------------- sort-of-clevr


SOC_NON_RELATIONAL = ("shape", "left", "top")
SOC_RELATIONAL = ("closest", "furthest", "count")


def _soc_closest(scene: list[SceneObject], i: int, closest: bool) -> int | None:
    """Closest (furthest) object to object ``i`` by squared centre distance, None on a tie between two objects of
    different shapes (the reimplementation takes the first in colour order; a tie leaves the answer undefined)."""
    d = [(a.cx - scene[i].cx) ** 2 + (a.cy - scene[i].cy) ** 2 for a in scene]
    others = [j for j in range(len(scene)) if j != i]
    best = (min if closest else max)(d[j] for j in others)
    tied = {scene[j].shape for j in others if d[j] == best}
    if len(tied) > 1:
        return None
    return next(j for j in others if d[j] == best)


def soc_question(scene: list[SceneObject], cfg: WorldConfig, i: int, subtype: str) -> Candidate | None:
    """One Sort-of-CLEVR question about object ``i`` (the object of colour ``cfg.colours[i]``)."""
    o, colour, half = scene[i], scene[i].colour, cfg.image_size / 2
    if subtype == "shape":
        return "shape-0", f"what is the shape of the {colour} object?", o.shape
    if subtype == "left":
        return "left-0", f"is the {colour} object on the left?", "yes" if o.cx < half else "no"
    if subtype == "top":
        return "top-0", f"is the {colour} object on the top?", "yes" if o.cy < half else "no"
    if subtype in ("closest", "furthest"):
        j = _soc_closest(scene, i, subtype == "closest")
        if j is None:
            return None
        word = "closest to" if subtype == "closest" else "furthest from"
        return f"{subtype}-0", f"what is the shape of the object {word} the {colour} object?", scene[j].shape
    if subtype == "count":
        n = sum(p.shape == o.shape for k, p in enumerate(scene) if k != i)
        return "count-0", f"how many other objects have the same shape as the {colour} object?", str(n)
    raise ValueError(subtype)


def soc_families(cfg: WorldConfig) -> list[Family]:
    shapes = tuple(cfg.shapes)
    yn = ("yes", "no")
    counts = tuple(str(n) for n in range(cfg.max_objects))
    answers = {"shape": shapes, "left": yn, "top": yn, "closest": shapes, "furthest": shapes, "count": counts}
    return [Family(s, "non-relational" if s in SOC_NON_RELATIONAL else "relational", answers[s], lambda *_: [])
            for s in SOC_NON_RELATIONAL + SOC_RELATIONAL]


def soc_questions(scene: list[SceneObject], cfg: WorldConfig, rng: np.random.Generator, per_kind: int = 10
                  ) -> list[tuple[str, Candidate]]:
    """Ten non-relational and ten relational questions, each about a uniformly drawn colour with a uniformly drawn
    subtype, as the reimplementation draws them (a draw whose answer is undefined — a distance tie — is redrawn)."""
    out = []
    for subtypes in (SOC_NON_RELATIONAL, SOC_RELATIONAL):
        made = 0
        while made < per_kind:
            i = int(rng.integers(len(scene)))
            subtype = subtypes[int(rng.integers(len(subtypes)))]
            q = soc_question(scene, cfg, i, subtype)
            if q is not None:
                out.append((subtype, q))
                made += 1
    return out


def _soc_statements(scene: list[SceneObject], cfg: WorldConfig) -> dict[str, list[Candidate]]:
    """Every statement Sort-of-CLEVR's families can make about a scene, per family, true or false."""
    out: dict[str, list[Candidate]] = defaultdict(list)
    half = cfg.image_size / 2
    for i, o in enumerate(scene):
        c = o.colour
        for s in cfg.shapes:
            out["shape"].append(("shape-0", f"the {c} object is a {s}", str(o.shape == s).lower()))
        for side in ("left", "right"):
            out["left"].append(("left-0", f"the {c} object is on the {side}", str((o.cx < half) == (side == "left"))
                                .lower()))
        for side in ("top", "bottom"):
            out["top"].append(("top-0", f"the {c} object is at the {side}", str((o.cy < half) == (side == "top"))
                               .lower()))
        for sub, word in (("closest", "closest to"), ("furthest", "furthest from")):
            j = _soc_closest(scene, i, sub == "closest")
            if j is not None:
                for s in cfg.shapes:
                    out[sub].append((f"{sub}-0", f"the object {word} the {c} object is a {s}",
                                     str(scene[j].shape == s).lower()))
        n = sum(p.shape == o.shape for k, p in enumerate(scene) if k != i)
        for m in range(len(scene)):
            out["count"].append(("count-0", f"{m} other objects have the same shape as the {c} object",
                                 str(n == m).lower()))
    return out


def soc_statement_families(cfg: WorldConfig) -> list[tuple[Family, int]]:
    tf = ("true", "false")
    fams = []
    for name in SOC_NON_RELATIONAL + SOC_RELATIONAL:
        group = "non-relational" if name in SOC_NON_RELATIONAL else "relational"
        fams.append((Family(name, group, tf, lambda scene, cfg, _n=name: _soc_statements(scene, cfg)[_n]), 2))
    return fams


def soc_captions(scene: list[SceneObject], cfg: WorldConfig, rng: np.random.Generator) -> list[tuple[str, str]]:
    """Per object: its shape and where it is; the objects closest to and furthest from it (when unique)."""
    out = []
    half = cfg.image_size / 2
    for i, o in enumerate(scene):
        side = "left" if o.cx < half else "right"
        level = "top" if o.cy < half else "bottom"
        out.append(("object", f"the {o.colour} {o.shape} is on the {side} at the {level}"))
        for sub, word in (("closest", "closest to"), ("furthest", "furthest from")):
            j = _soc_closest(scene, i, sub == "closest")
            if j is not None:
                out.append((sub, f"the object {word} the {o.colour} {o.shape} is the {scene[j].colour} "
                                 f"{scene[j].shape}"))
    return out


# ------------------------------------------------------------------------------------------------------ balancing


class BalancedSampler:
    """Draws, per image and family, the candidates whose answer is the most under-represented for their own text.

    ``excess(text, answer) = count(text, answer) - min over the family's answers a' of count(text, a')``; each draw
    takes a candidate of the smallest excess (at random among equals), counts it, and drops the image's other
    candidates with the same text.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def draw(self, family: Family, candidates: list[Candidate], k: int, rng: np.random.Generator) -> list[Candidate]:
        chosen: list[Candidate] = []
        pool = list(candidates)
        while pool and len(chosen) < k:
            def excess(c: Candidate) -> int:
                counts = self.counts[(family.name, c[1])]
                return counts[c[2]] - min(counts[a] for a in family.answers)
            scores = np.array([excess(c) for c in pool])
            best = np.flatnonzero(scores == scores.min())
            pick = pool[int(best[int(rng.integers(len(best)))])]
            chosen.append(pick)
            self.counts[(family.name, pick[1])][pick[2]] += 1
            pool = [c for c in pool if c[1] != pick[1]]
        return chosen
