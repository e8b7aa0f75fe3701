"""Shared fixtures for the vlm tests; helpers live in vlm_testing.py."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import vlm  # noqa: E402

from vlm_testing import make_batch  # noqa: E402


@pytest.fixture
def tiny_batch() -> vlm.Batch:
    return make_batch()


@pytest.fixture(scope="session")
def easy_vqa_stores(tmp_path_factory) -> tuple[str, str]:
    """(train, test) `patches` feature stores of a few real easy-VQA images."""
    from vlm_testing import make_stores

    return make_stores(tmp_path_factory.mktemp("stores"))


@pytest.fixture(scope="session")
def short_text_model(easy_vqa_stores, tmp_path_factory):
    """A tiny LXMERT VQA model folder fine-tuned on texts truncated to 12 tokens (``data.max_text_len=12``)."""
    from vlm.cli import main

    from vlm_testing import TINY_MODEL

    tiny = [f"model.{k}={'null' if v is None else v}" for k, v in TINY_MODEL.items()]
    out = tmp_path_factory.mktemp("short") / "run"
    assert main(["finetune", "--task", "vqa", "--arch", "lxmert", "--features", easy_vqa_stores[0],
                 "--eval-features", easy_vqa_stores[1], "--out", str(out), "data.max_text_len=12", "--max-steps", "2",
                 "--no-progress", "train.batch_size=4", "train.precision=fp32", "train.log_every=1",
                 "data.train_limit=16", "data.eval_limit=8", *tiny]) == 0
    return out / "model"
