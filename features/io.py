"""File helpers of the ``features`` package, each implemented once.

* :func:`atomic_write_bytes` / :func:`atomic_write_json` — write to a temporary file, ``fsync``, rename over the
  target, ``fsync`` the folder: a reader sees the old file or the new one, never a mix, even after a crash;
* :func:`fsync_dir` — make renames inside a folder durable;
* :func:`file_sha256` — the hex sha256 of a file (weights and shards are recorded with it);
* :func:`load_state_dict_file` — a state dict from ``.safetensors`` or a torch pickle (``weights_only=True``);
* :func:`make_dir` — create a folder, or refuse (naming it) a path that is a file or cannot be created;
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
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from features.errors import StoreError, WeightsError

__all__ = ["atomic_write_bytes", "atomic_write_json", "file_sha256", "fsync_dir", "hf_hub_cache_file",
           "load_state_dict_file", "make_dir", "prepare_output_dir", "torch_hub_cache_file"]

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

    Torch pickles are read with ``weights_only=True``: a file cannot run code (one that tries is refused).

    Raises:
        WeightsError: If the file is missing or is not a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found" + (" (it is a folder)" if path.is_dir() else ""))
    expected = "a state dict of tensors saved by torch.save (.pth/.pt/.bin) or safetensors (.safetensors)"
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise WeightsError(f"weights file {path} cannot be read: {exc.strerror or exc}") from None
    if not head:
        raise WeightsError(f"weights file {path} is empty; expected {expected}")
    if path.suffix != ".safetensors" and not head.startswith((b"PK\x03\x04", b"\x80")):
        raise WeightsError(f"weights file {path} is not {expected}: it starts with {head!r}, not a zip archive or a "
                           "pickle (a text file? for safetensors, name it .safetensors)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with warnings.catch_warnings(record=True) as caught:  # torch warns about pickle protocols before failing
                warnings.simplefilter("always")
                state = torch.load(path, map_location="cpu", weights_only=True)
            for warning in caught:  # the load worked: pass its warnings on
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    except pickle.UnpicklingError as exc:  # weights_only refuses objects other than tensors and containers
        noise = ("Weights only load failed", "Please file an issue", "Check the documentation")
        lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.strip().startswith(noise)]
        reason = lines[0][:160] if lines else "not a plain state dict"
        raise WeightsError(f"weights file {path} holds Python objects other than tensors and was refused "
                           f"(weights_only loading, no code ran): {reason}") from None
    except Exception as exc:  # any decoding failure is the file's fault, not ours
        detail = " ".join(str(exc).split()).split(". ", 1)[0][:200] or "no detail"  # the first sentence
        raise WeightsError(f"weights file {path} is not {expected} or is damaged ({type(exc).__name__}: {detail})"
                           ) from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def make_dir(directory: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Create ``directory`` (and its parents) if needed and return it.

    Raises:
        StoreError: If the path is an existing file, or the folder cannot be created (a parent is a file, no
            permission).
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"{what} {directory} is an existing file, not a folder; choose a new or empty folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{what} {directory} cannot be created: {exc.strerror or exc}") from None
    return directory


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
    directory = make_dir(directory)
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
