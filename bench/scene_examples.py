"""Draw a few generated images of each built-in world with some of their questions: docs/img/scene-examples.png.

    python bench/scene_examples.py [--out docs/img/scene-examples.png]

Images and questions are the built-in worlds' own (test split, images 0-3), read from the generated folder
(generated on first use into $VLM_CACHE/data).
"""

from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path

from PIL import Image

from features.builtin import default_cache_dir
from vlm.data.scenes import dataset_root
from vlm.data.scenes.clevr import images_dir, read_questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/img/scene-examples.png")
    parser.add_argument("--per-world", type=int, default=4)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = ("sort-of-clevr", "scenes")
    fig, axes = plt.subplots(len(worlds), args.per_world, figsize=(3.2 * args.per_world, 4.6 * len(worlds)))
    for row, world in enumerate(worlds):
        root = dataset_root(world, default_cache_dir(os.environ))
        questions = read_questions(root, "test")
        for col in range(args.per_world):
            stem = f"{world}_test_{col:06d}"
            ax = axes[row][col]
            ax.imshow(Image.open(images_dir(root, "test") / f"{stem}.png"), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            mine = [q for q in questions if q.image_id == stem]
            picked = [mine[k] for k in (0, 3, 10, 14) if k < len(mine)][:4]
            text = "\n".join(textwrap.fill(f"{q.question} {q.answers[0]} ({q.answer_type})", 36) for q in picked)
            ax.set_title(world if col == 0 else "", loc="left", fontsize=10, fontweight="bold")
            ax.set_xlabel(text, fontsize=7, loc="left")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
