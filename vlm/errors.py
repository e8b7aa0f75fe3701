"""The one error base class of vlm: the CLI turns a :class:`VLMError` into one clear line and exit code 2.

Programming errors (``TypeError``, ``AttributeError``, ...) are not ``VLMError`` and keep their traceback.
"""

from __future__ import annotations


class VLMError(Exception):
    """A problem with the user's input (config, data file, checkpoint, run folder); the message names it."""


class DataError(VLMError, ValueError):
    """A data file, row or field is malformed or missing; the message names the file and row."""


class CheckpointError(VLMError):
    """A checkpoint or run folder cannot be read or resumed; the message names the path."""


class WeightImportError(CheckpointError, KeyError):
    """Weights to import lack a key or have keys vlm cannot place; the message names them. A ``KeyError`` too, for
    callers that catch the lookup failure."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
