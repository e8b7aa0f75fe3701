"""File helpers of the ``features`` package, each implemented once.

* :func:`atomic_write_bytes` / :func:`atomic_write_json` — write to a temporary file, ``fsync``, rename over the
  target, ``fsync`` the folder: a reader sees the old file or the new one, never a mix, even after a crash;
* :func:`fsync_dir` — make renames inside a folder durable;
* :func:`file_sha256` — the hex sha256 of a file (weights and shards are recorded with it);
* :func:`load_state_dict_file` — a state dict from ``.safetensors`` or a torch pickle (``weights_only=True``);
* :func:`prepare_output_dir` — make a folder ready to receive a new store without deleting anything that is not ours;
* :func:`torch_hub_cache_file` / :func:`hf_hub_cache_file` — where the local weights caches keep a file (never a
  download).

Every failure a user can cause raises a :class:`~features.errors.FeaturesError` subclass naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from features.errors import StoreError, WeightsError

__all__ = ["atomic_write_bytes", "atomic_write_json", "file_sha256", "fsync_dir", "hf_hub_cache_file",
           "load_state_dict_file", "prepare_output_dir", "torch_hub_cache_file"]

#: Files a folder may hold without counting as content (the lock file of a store).
_IGNORED = (".lock",)


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """``fsync`` a folder so that renames inside it survive a crash (a no-op where the OS does not allow it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    The bytes go to ``<name>.<pid>.tmp`` beside the target (one temporary per process, so concurrent writers never
    share one), are flushed and fsynced, renamed over the target, and the folder is fsynced.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, compact: bool = False) -> None:
    """:func:`atomic_write_bytes` of ``obj`` as UTF-8 JSON (indented, or ``compact`` without spaces)."""
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=1) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a torch pickle, unwrapping ``state_dict``/``model`` and ``module.``.

    Torch pickles are read with ``weights_only=True``: a file cannot run code.

    Raises:
        WeightsError: If the file is missing or is not a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding failure is the file's fault, not ours
        raise WeightsError(f"weights file {path} could not be read as a state dict: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def prepare_output_dir(directory: str | os.PathLike[str], *, overwrite: bool, owned: Callable[[str], bool],
                       what: str = "feature store") -> None:
    """Make ``directory`` ready for a new ``what``: create it, or empty it of our own files with ``overwrite``.

    A folder holding anything (besides a lock file) is refused unless ``overwrite`` is set; even then, files that
    ``owned`` does not claim are never deleted and are an error, so a mistyped ``--out`` cannot wipe a user's folder.

    Args:
        directory: The output folder.
        overwrite: Delete the files ``owned`` claims instead of refusing.
        owned: Whether a file name belongs to a ``what`` (``manifest.json``, ``shard-*``...).
        what: Name of the thing written, for messages.

    Raises:
        StoreError: If the folder is not empty and may not (or cannot safely) be emptied.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = sorted(p.name for p in directory.iterdir() if p.name not in _IGNORED)
    if not entries:
        return
    foreign = [name for name in entries if not owned(name)]
    if not overwrite or foreign:
        shown = ", ".join((foreign or entries)[:5])
        advice = ("it holds files that are not part of a " + what) if foreign else "pass --overwrite to replace it"
        raise StoreError(f"output folder {directory} is not empty (found {shown}); choose a new or empty folder "
                         f"({advice})")
    for name in entries:
        (directory / name).unlink()
    fsync_dir(directory)


def torch_hub_cache_file(url: str) -> Path:
    """Where ``torch.hub`` keeps the file of ``url`` (``$TORCH_HOME/hub/checkpoints/NAME``); it may not exist."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def hf_hub_cache_file(repo_id: str, filenames: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
                      ) -> str | None:
    """The first of ``filenames`` of ``repo_id`` present in the local Hugging Face hub cache, or ``None``."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with timm
        return None
    for filename in filenames:
        found = try_to_load_from_cache(repo_id=repo_id, filename=filename)
        if isinstance(found, str):
            return found
    return None
