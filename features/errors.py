"""Exceptions raised by the ``features`` package.

Every error a user can cause (a bad path, a missing weights file, a malformed TSV row, a truncated shard) derives from
:class:`FeaturesError`. Its message is complete on its own — it names the file, row or field and what was expected —
so the command line prints ``str(error)`` and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import re

__all__ = [
    "BackendUnavailableError",
    "FeaturesError",
    "ImageReadError",
    "ImageTooLargeError",
    "ShardError",
    "SourceError",
    "StoreError",
    "TSVFormatError",
    "WeightsError",
    "one_line",
]


class FeaturesError(Exception):
    """Base class of all user-facing errors of the ``features`` package."""


class SourceError(FeaturesError):
    """An image source (folder, list file, built-in dataset name) is missing or malformed."""


class ImageReadError(FeaturesError):
    """An image could not be opened or decoded (raised only with ``on_error="fail"``)."""


class ImageTooLargeError(ImageReadError):
    """An image has more pixels than the caller allows (refused from its header, before the pixels are decoded)."""


class WeightsError(FeaturesError):
    """Weights for a backend are missing, unreadable or do not fit the model."""


class BackendUnavailableError(FeaturesError):
    """A backend needs an optional package that is not installed (e.g. detectron2)."""


class StoreError(FeaturesError):
    """A feature store directory is missing, incomplete or inconsistent with the requested run."""


class ShardError(StoreError):
    """A shard file is missing, truncated or does not match its checksum."""


class TSVFormatError(FeaturesError):
    """A row of a bottom-up-attention TSV file is malformed."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` as one line.

    PyTorch re-raises an exception from a DataLoader worker process with the worker's whole traceback inside the
    message ("Caught DataError in DataLoader worker process 0. Original Traceback ..."); its last line holds the
    original ``module.Class: message``, which is what the user needs.
    """
    text = str(error)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1].strip()
    head, sep, message = last.partition(": ")
    if sep and head.replace(".", "").replace("_", "").isalnum():
        last = message
    worker = re.search(r"DataLoader worker process (\d+)", text)
    return f"{last} (in DataLoader worker {worker.group(1)})" if worker else last
