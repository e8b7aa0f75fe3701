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
from vlm.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["WORLDS", "WorldConfig", "dataset_root", "world_folder"]


def _cache(cache_dir: str | os.PathLike[str] | None) -> Path:
    if not cache_dir:
        raise DataError("the generated worlds live in the cache folder: give its path (data.cache_dir; the command "
                        "line passes features.builtin.default_cache_dir)")
    return Path(cache_dir)


def world_folder(name: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    """Where the built-in world ``name`` lives: ``<cache>/data/<name>-g<version>-<hash>-s<seed>``."""
    return _cache(cache_dir) / "data" / folder_name(WORLDS[name])


def dataset_root(name: str, cache_dir: str | os.PathLike[str] | None, cfg: WorldConfig | None = None) -> Path:
    """The folder of the built-in world ``name`` in the cache folder ``cache_dir``, generated on first use (every
    process may call it: generation is deterministic and published by one rename, so concurrent first uses agree).

    Raises:
        DataError: no cache folder given.
    """
    cfg = cfg or WORLDS[name]
    root = _cache(cache_dir) / "data" / folder_name(cfg)
    if not is_complete(root):
        logger.warning("generating the built-in data %s into %s (first use only)", name, root)
        generate(cfg, root)
    return root
