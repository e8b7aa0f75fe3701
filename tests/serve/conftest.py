"""Fixtures of the ``vlm serve`` tests: tiny fine-tuned model folders (2 steps on real easy-VQA features) and a real
``vlm serve`` process on a free loopback port."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlm.cli import main

from serve_testing import FAST, SMALL_BODY_MB, running_server


def _finetune(stores: tuple[str, str], out: Path, task: str, arch: str) -> Path:
    assert main(["finetune", "--task", task, "--arch", arch, "--features", stores[0], "--eval-features", stores[1],
                 "--out", str(out), *FAST]) == 0
    return out / "model"


@pytest.fixture(scope="session")
def vqa_checkpoint(easy_vqa_stores, tmp_path_factory) -> Path:
    """A tiny LXMERT VQA model folder."""
    return _finetune(easy_vqa_stores, tmp_path_factory.mktemp("serve") / "lxmert-vqa", "vqa", "lxmert")


@pytest.fixture(scope="session")
def vilbert_checkpoint(easy_vqa_stores, tmp_path_factory) -> Path:
    """A tiny single-stream VQA model folder."""
    return _finetune(easy_vqa_stores, tmp_path_factory.mktemp("serve") / "vilbert-vqa", "vqa", "vilbert")


@pytest.fixture(scope="session")
def classify_checkpoint(easy_vqa_stores, tmp_path_factory) -> Path:
    """A tiny single-stream statement classifier (easy-vqa-statements)."""
    return _finetune(easy_vqa_stores, tmp_path_factory.mktemp("serve") / "vilbert-cls", "classify", "vilbert")


@pytest.fixture(scope="session")
def live_server(vqa_checkpoint, tmp_path_factory):
    """``vlm serve`` on a free loopback port: ``(base_url, process, log_path)``."""
    with running_server(vqa_checkpoint, tmp_path_factory.mktemp("live") / "serve.log") as server:
        yield server


@pytest.fixture(scope="session")
def small_body_server(vqa_checkpoint, tmp_path_factory):
    """``vlm serve --max-body-mb 0.5`` (524,288 bytes): ``(base_url, process, log_path)``."""
    with running_server(vqa_checkpoint, tmp_path_factory.mktemp("small-body") / "serve.log", "--max-body-mb",
                        SMALL_BODY_MB) as server:
        yield server
