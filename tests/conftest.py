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
