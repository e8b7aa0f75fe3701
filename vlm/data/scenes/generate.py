"""Write a generated world to disk in the CLEVR v1.0 layout, so that one reader serves it and the real CLEVR.

``<root>/`` holds::

    images/<split>/<name>_<split>_000000.png       the images (ids: the file stems)
    scenes/<name>_<split>_scenes.json              {"info", "scenes": [{image_index, image_filename, split,
                                                    objects: [{color, shape, size, pixel_coords, bbox}]}]}
    questions/<name>_<split>_questions.json        {"info", "questions": [{image_index, image_filename, split,
                                                    question, answer, question_index, question_family_index,
                                                    family, group, template}]}
    captions/<name>_<split>_captions.json          {"info", "captions": [{image_index, image_filename, caption, kind}]}
    statements/<name>_<split>_statements.json      {"info", "statements": [{image_index, image_filename, statement,
                                                    label, family, group, template}]}
    generator.json                                 the world's settings, generator version and hash, counts,
                                                   families; written last ("complete": true)

Everything is drawn from ``seed``: each image from its own generator (``[seed, split, index]``), the balanced
questions and statements from one generator per split. The folder is written beside its final place and renamed into
it when whole, so a killed generation leaves nothing half-written and concurrent processes (ranks of one job) agree.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vlm.data.scenes import language as L
from vlm.data.scenes.render import render
from vlm.data.scenes.worlds import (
    GENERATOR_VERSION,
    SceneObject,
    WorldConfig,
    check_config,
    config_hash,
    sample_scene,
)
from vlm.errors import DataError
from vlm.io import remove_dir

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
GENERATOR_FILE = "generator.json"


def question_families(cfg: WorldConfig) -> list[L.Family]:
    """The families a world's questions are reported by (in their ``question_family_index`` order)."""
    if cfg.name == "sort-of-clevr":
        return L.soc_families(cfg)
    return [f for f, _ in L.scenes_question_families(cfg)]


def _dump(path: Path, key: str, rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"info": info, key: rows}, separators=(",", ":")))


def scene_and_image(cfg: WorldConfig, split: str, index: int) -> tuple[list[SceneObject], np.ndarray,
                                                                       np.random.Generator]:
    """Image ``index`` of ``split``: its scene, its pixels (``uint8 [S, S, 3]``) and its generator, which then draws
    the image's own questions and captions. Each image depends on ``(seed, split, index)`` alone."""
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split), index])
    scene = sample_scene(cfg, rng)
    palette = cfg.palette()
    pixels = render(cfg.image_size, cfg.background, [(o.shape, o.cx, o.cy, o.h, palette[o.colour]) for o in scene])
    return scene, pixels, rng


def _split(cfg: WorldConfig, split: str, root: Path) -> dict[str, int]:
    s = SPLITS.index(split)
    rng = np.random.default_rng([cfg.seed, s, 1 << 20])  # the balanced draws of the split
    q_sampler, s_sampler = L.BalancedSampler(), L.BalancedSampler()
    families = question_families(cfg)
    family_index = {f.name: k for k, f in enumerate(families)}
    group = {f.name: f.group for f in families}
    q_families = L.scenes_question_families(cfg) if cfg.name == "scenes" else []
    st_families = (L.scenes_statement_families(cfg) if cfg.name == "scenes" else L.soc_statement_families(cfg))
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True)
    scenes, questions, captions, statements = [], [], [], []
    for i in range(cfg.splits()[split]):
        scene, pixels, scene_rng = scene_and_image(cfg, split, i)
        name = f"{cfg.name}_{split}_{i:06d}.png"
        Image.fromarray(pixels).save(image_dir / name, format="PNG")
        head = {"image_index": i, "image_filename": name, "split": split}
        scenes.append({**head, "objects": [o.as_json() for o in scene]})
        if cfg.name == "sort-of-clevr":
            drawn = L.soc_questions(scene, cfg, scene_rng)
        else:
            drawn = [(f.name, c) for f, k in q_families for c in q_sampler.draw(f, f.candidates(scene, cfg), k, rng)]
        for fam, (template, text, answer) in drawn:
            questions.append({**head, "question": text, "answer": answer, "question_index": len(questions),
                              "question_family_index": family_index[fam], "family": fam, "group": group[fam],
                              "template": template})
        for f, k in st_families:
            for template, text, label in s_sampler.draw(f, f.candidates(scene, cfg), k, rng):
                statements.append({**head, "statement": text, "label": label == "true", "family": f.name,
                                   "group": f.group, "template": template})
        made = (L.soc_captions(scene, cfg, scene_rng) if cfg.name == "sort-of-clevr"
                else L.scenes_captions(scene, cfg, scene_rng))
        captions.extend({**head, "caption": text, "kind": kind} for kind, text in made)
    info = {"name": cfg.name, "split": split, "generator_version": GENERATOR_VERSION, "config_hash": config_hash(cfg)}
    _dump(root / "scenes" / f"{cfg.name}_{split}_scenes.json", "scenes", scenes, info)
    _dump(root / "questions" / f"{cfg.name}_{split}_questions.json", "questions", questions, info)
    _dump(root / "captions" / f"{cfg.name}_{split}_captions.json", "captions", captions, info)
    _dump(root / "statements" / f"{cfg.name}_{split}_statements.json", "statements", statements, info)
    return {"images": len(scenes), "questions": len(questions), "captions": len(captions),
            "statements": len(statements)}


def is_complete(root: Path) -> bool:
    try:
        return bool(json.loads((root / GENERATOR_FILE).read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def generate(cfg: WorldConfig, root: str | os.PathLike[str]) -> Path:
    """Generate the world ``cfg`` into ``root`` (which must not hold a complete data set already; a complete one
    written meanwhile by another process is kept and this one's work dropped).

    Raises:
        DataError: settings out of range (one line, before any work).
    """
    check_config(cfg)
    final = Path(root)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    remove_dir(tmp)
    tmp.mkdir()
    start = time.perf_counter()
    try:
        counts = {split: _split(cfg, split, tmp) for split in SPLITS}
        families = {f.name: {"group": f.group, "answers": list(f.answers)} for f in question_families(cfg)}
        record = {"name": cfg.name, "generator_version": GENERATOR_VERSION, "config_hash": config_hash(cfg),
                  "config": cfg.as_dict(), "counts": counts, "families": families,
                  "seconds": round(time.perf_counter() - start, 1), "complete": True}
        (tmp / GENERATOR_FILE).write_text(json.dumps(record, indent=1))
        if is_complete(final):
            remove_dir(tmp)
            return final
        remove_dir(final)  # an incomplete folder (older layout, a copy cut short)
        os.replace(tmp, final)
    except BaseException:
        remove_dir(tmp)
        raise
    return final


def read_generator(root: Path) -> dict[str, Any]:
    """The ``generator.json`` of a generated folder.

    Raises:
        DataError: the folder is not a complete generated data set.
    """
    if not is_complete(root):
        raise DataError(f"{root}: not a complete generated data set (no {GENERATOR_FILE} saying complete)")
    return json.loads((root / GENERATOR_FILE).read_text())
