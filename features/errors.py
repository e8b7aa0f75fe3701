"""Exceptions raised by the ``features`` package.

Every error a user can cause (a bad path, a missing weights file, a malformed TSV row, a truncated shard) derives from
:class:`FeaturesError`. Its message is complete on its own — it names the file, row or field and what was expected —
so the command line prints ``str(error)`` and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "FeaturesError",
    "ImageReadError",
    "ShardError",
    "SourceError",
    "StoreError",
    "TSVFormatError",
    "WeightsError",
]


class FeaturesError(Exception):
    """Base class of all user-facing errors of the ``features`` package."""


class SourceError(FeaturesError):
    """An image source (folder, list file, built-in dataset name) is missing or malformed."""


class ImageReadError(FeaturesError):
    """An image could not be opened or decoded (raised only with ``on_error="fail"``)."""


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
