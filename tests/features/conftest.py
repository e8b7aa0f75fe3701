"""Shared fixtures of the ``features`` tests: small real easy-VQA image sets, bad images, and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import easy_vqa
import pytest

REPO = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``python -m features.cli ARGS`` in a real subprocess and capture its output."""
    return subprocess.run([sys.executable, "-m", "features.cli", *args], capture_output=True, text=True,
                          env=_env(**(env or {})), timeout=timeout, cwd=REPO)


def popen_cli(*args: str) -> subprocess.Popen[str]:
    """Start ``python -m features.cli ARGS`` without waiting."""
    return subprocess.Popen([sys.executable, "-m", "features.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)


def write_list(path: Path, items: list[tuple[str, str]]) -> Path:
    """Write an ``image_id<TAB>path`` list file."""
    path.write_text("".join(f"{image_id}\t{image_path}\n" for image_id, image_path in items), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def easy_train_paths() -> dict[int, str]:
    """easy-VQA train images by integer id."""
    return easy_vqa.get_train_image_paths()


@pytest.fixture(scope="session")
def easy_list_64(tmp_path_factory: pytest.TempPathFactory, easy_train_paths: dict[int, str]) -> Path:
    """A list file of the first 64 easy-VQA train images (ids as easy-VQA writes them)."""
    directory = tmp_path_factory.mktemp("easy64")
    return write_list(directory / "images.tsv", [(str(i), easy_train_paths[i]) for i in sorted(easy_train_paths)[:64]])


@pytest.fixture()
def bad_image_dir(tmp_path: Path, easy_train_paths: dict[int, str]) -> Path:
    """A folder with 6 good easy-VQA PNGs, one truncated (corrupt) PNG and one zero-byte PNG."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        shutil.copy(easy_train_paths[i], folder / f"good{i}.png")
    data = Path(easy_train_paths[10]).read_bytes()
    (folder / "corrupt.png").write_bytes(data[: len(data) // 2])
    (folder / "empty.png").write_bytes(b"")
    return folder


@pytest.fixture()
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_cli``: run ``python -m features.cli ARGS`` in a real subprocess."""
    return run_cli


@pytest.fixture()
def cli_popen() -> Callable[..., subprocess.Popen[str]]:
    """``popen_cli``: start ``python -m features.cli ARGS`` in a real subprocess without waiting."""
    return popen_cli
