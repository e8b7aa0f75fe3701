"""Generated scene worlds (``sort-of-clevr``, ``scenes``) and the CLEVR v1.0 layout they are written in.

* :mod:`~vlm.data.scenes.render`: shapes as analytic masks;
* :mod:`~vlm.data.scenes.worlds`: the worlds' settings, their checks, scene sampling;
* :mod:`~vlm.data.scenes.language`: question families, statements, captions and their balancing;
* :mod:`~vlm.data.scenes.generate`: writing a world to disk (CLEVR layout plus captions and statements);
* :mod:`~vlm.data.scenes.clevr`: reading a CLEVR-layout folder (generated, or the real CLEVR v1.0).

:func:`dataset_root` is the one place a built-in world's folder is found (and generated on first use).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from vlm.data.scenes.generate import generate, is_complete
from vlm.data.scenes.worlds import WORLDS, WorldConfig, folder_name

logger = logging.getLogger(__name__)

__all__ = ["WORLDS", "WorldConfig", "dataset_root", "default_cache_dir", "world_folder"]


def default_cache_dir() -> Path:
    """``$VLM_CACHE`` or ``~/.cache/vlm`` — the same rule as :func:`features.builtin.default_cache_dir` applies on the
    command line (a test keeps the two in step)."""
    return Path(os.environ["VLM_CACHE"]) if os.environ.get("VLM_CACHE") else Path.home() / ".cache" / "vlm"


def world_folder(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the built-in world ``name`` lives: ``<cache>/data/<name>-g<version>-<hash>-s<seed>``."""
    cfg = WORLDS[name]
    return Path(cache_dir or default_cache_dir()) / "data" / folder_name(cfg)


def dataset_root(name: str, cache_dir: str | os.PathLike[str] | None = None, cfg: WorldConfig | None = None) -> Path:
    """The folder of the built-in world ``name``, generated on first use (every process may call it: generation is
    deterministic and published by one rename, so concurrent first uses agree)."""
    cfg = cfg or WORLDS[name]
    root = Path(cache_dir or default_cache_dir()) / "data" / folder_name(cfg)
    if not is_complete(root):
        logger.warning("generating the built-in data %s into %s (first use only)", name, root)
        generate(cfg, root)
    return root
