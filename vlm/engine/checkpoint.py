"""Checkpoints of a run: weights (safetensors) + trainer state, published atomically, the last N kept.

Layout inside a run folder::

    checkpoints/step-00000100/   config.json + model.safetensors  (what ``vlm.from_pretrained`` loads)
                                 trainer_state.pt                  (optimizer, scheduler, step, data position, RNGs)
                                 run_config.yaml                   (the merged run config)

A checkpoint is written into ``checkpoints/.step-XXXXXXXX.tmp-<pid>/``, every file fsynced, then the folder is renamed
into place: the rename is the commit, so a kill at any moment leaves either no new checkpoint or a complete one, and the
previous checkpoint is untouched. Old checkpoints are renamed to a hidden trash name before deletion, so a kill during
clean-up never leaves a half-deleted folder that looks like a checkpoint. ``trainer_state.pt`` holds only tensors,
numbers, strings, lists and dicts and is loaded with ``weights_only=True`` (no code runs).
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlm.config import ModelConfig
from vlm.errors import CheckpointError
from vlm.io import publish_dir, remove_dir, write_text
from vlm.models.folder import CONFIG_NAME, WEIGHTS_NAME, describe
from vlm.models.folder import load_weights as load_model_weights

logger = logging.getLogger(__name__)

STATE_NAME = "trainer_state.pt"
RUN_CONFIG_NAME = "run_config.yaml"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
_REQUIRED = (CONFIG_NAME, WEIGHTS_NAME, STATE_NAME)


# ------------------------------------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """Every global RNG a training step touches: Python, NumPy, torch CPU and each CUDA device."""
    np_state = np.random.get_state()
    state = {
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------------------- manager


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and all((path / f).is_file() for f in _REQUIRED)


class CheckpointManager:
    """Save, list, prune and find the checkpoints of one run folder."""

    def __init__(self, run_dir: str | Path, keep_last: int = 2) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    def list(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.dir.is_dir():
            return []
        found = [p for p in self.dir.iterdir() if _STEP_DIR.match(p.name) and is_checkpoint(p)]
        return sorted(found, key=lambda p: p.name)

    def latest(self) -> Path | None:
        ckpts = self.list()
        return ckpts[-1] if ckpts else None

    def save(self, step: int, model: Any, trainer_state: dict[str, Any], run_config_yaml: str,
             max_text_len: int | None = None, keep: Iterable[int] = ()) -> Path:
        """Write checkpoint ``step`` atomically and prune to the last ``keep_last``, besides the steps in ``keep``
        (the stopping rule's best); returns its folder. The model's files record ``max_text_len`` (the run's text
        length) when given."""
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / step_dir_name(step)
        if final.exists():
            return final  # the same step again (e.g. the end of training right after a periodic save)
        self._clean_leftovers()
        tmp = self.dir / f".{final.name}.tmp-{os.getpid()}"
        remove_dir(tmp)
        tmp.mkdir()
        if max_text_len is None:
            model.save_pretrained(tmp)
        else:
            model.save_pretrained(tmp, max_text_len=max_text_len)
        torch.save(trainer_state, tmp / STATE_NAME)
        (tmp / RUN_CONFIG_NAME).write_text(run_config_yaml, encoding="utf-8")
        publish_dir(tmp, final)
        write_text(self.dir / "latest.txt", final.name + "\n")  # informational; list() is the source of truth
        self._prune(keep)
        return final

    def _prune(self, keep: Iterable[int] = ()) -> None:
        if self.keep_last <= 0:
            return
        kept = {step_dir_name(s) for s in keep}
        for old in [p for p in self.list()[:-self.keep_last] if p.name not in kept]:
            trash = self.dir / f".trash-{old.name}-{os.getpid()}"
            os.replace(old, trash)
            remove_dir(trash)

    def _clean_leftovers(self) -> None:
        """Remove what a kill during a save or a prune left (never a complete checkpoint)."""
        for p in self.dir.iterdir():
            if p.name.startswith((".step-", ".trash-")):
                remove_dir(p)
            elif p.name.startswith(".latest.txt.tmp-"):  # atomic_write's temporary of latest.txt
                p.unlink(missing_ok=True)


#: The file that makes a folder a run folder: the merged run config, written when training starts.
RUN_MARK = "config.yaml"


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a run (its ``config.yaml``); an empty or unrelated folder does not."""
    return (Path(path) / RUN_MARK).is_file()


def prepare_run_dir(run_dir: str | Path, *, resume: str | bool | None, overwrite: bool, is_main: bool = True) -> None:
    """The run-folder rule, applied before any work so that a refused command changes nothing:

    * ``--out`` may be a new folder, an empty one, or a folder that is not a run;
    * a folder that holds a run (``config.yaml``) is refused unless ``resume`` (continue it) or ``overwrite``
      (delete it first: only a folder recognised as a run is ever deleted);
    * ``--out`` naming a file is refused.

    Raises:
        CheckpointError: one line naming the folder and the flags that would proceed.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"--out {run_dir}: is a file, not a run folder")
    if resume not in (None, False, "") and overwrite:
        raise CheckpointError(f"--resume and --overwrite contradict each other ({run_dir})")
    if not is_run_dir(run_dir) or resume not in (None, False, ""):
        return
    if not overwrite:
        raise CheckpointError(f"--out {run_dir} holds a run already ({RUN_MARK}, metrics.jsonl, checkpoints/): pass "
                              "--resume to continue it or --overwrite to replace it")
    if is_main:
        trash = run_dir.parent / f".{run_dir.name}.trash-{os.getpid()}"
        os.replace(run_dir, trash)
        remove_dir(trash)
        logger.warning("--overwrite: removed the run in %s", run_dir)


def resolve_resume(run_dir: str | Path, resume: str | bool | None) -> Path | None:
    """The checkpoint folder that ``--resume`` names: ``True``/``"latest"`` → newest in the run, or a path.

    Raises:
        CheckpointError: when a named folder is not a complete checkpoint.
    """
    if resume in (None, False, ""):
        return None
    if resume is True or resume == "latest":
        latest = CheckpointManager(run_dir).latest()
        if latest is None:
            logger.warning("--resume: no checkpoint in %s yet; starting from scratch", Path(run_dir) / "checkpoints")
        return latest
    path = Path(resume)
    if is_checkpoint(path):
        return path
    if path.is_dir() and (path / "checkpoints").is_dir():  # a run folder: its newest checkpoint
        latest = CheckpointManager(path).latest()
        if latest is not None:
            return latest
    missing = [f for f in _REQUIRED if not (path / f).is_file()]
    raise CheckpointError(f"--resume {path}: not a complete checkpoint folder (missing: {', '.join(missing)}) "
                          "and not a run folder with checkpoints")


def load_trainer_state(ckpt: Path) -> dict[str, Any]:
    path = ckpt / STATE_NAME
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: unreadable trainer state ({str(e).splitlines()[0]})") from None


def load_weights(model: torch.nn.Module, ckpt: Path) -> None:
    """Load a checkpoint's weights into the run's own ``model`` (strict), through the model-folder owner.

    Raises:
        CheckpointError: one line when the checkpoint holds another architecture or task than ``model``, or weights
            that do not fit it.
    """
    mine = getattr(model, "config", None)
    if isinstance(mine, ModelConfig):  # a vlm model (the engine also checkpoints any module with save_pretrained)
        info = describe(ckpt)
        if info.arch != mine.arch:
            raise CheckpointError(f"{ckpt}: this run is {info.arch} ({info.task}); the command builds a {mine.arch} "
                                  "model: resume with the run's own --arch/--config")
        if info.task != getattr(model, "task", info.task):
            raise CheckpointError(f"{ckpt}: this run trains a {info.task} model; the command builds a "
                                  f"{model.task} model: resume with the run's own --task/--config")
    try:
        load_model_weights(model, ckpt)
    except CheckpointError as e:
        raise CheckpointError(f"{e}: resume with the run's own config") from None
