"""Errors raised by actextract.

Every class inherits :class:`ActextractError` and, where one fits, the builtin a caller would
catch anyway (``except KeyError`` still catches an unknown layer). Messages say what is wrong,
with the value, and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "ActextractError",
    "BadSampleError",
    "CaptureError",
    "CheckpointError",
    "GraphvizError",
    "LayerNotFoundError",
    "ModelSpecError",
    "NonFiniteError",
    "OptionError",
    "OutputExistsError",
    "RankError",
    "RebuildError",
    "SourceError",
    "StoreError",
    "UntrustedCheckpointError",
    "option",
]


def option(keyword: str, flag: str | None = None) -> str:
    """How a message names a run option, for callers of the CLI and of Python alike: the
    keyword, then the flag (by default ``--`` and the keyword, ``_`` as ``-``).
    ``option("batch_size")`` → ``"batch_size (--batch-size)"``."""
    return f"{keyword} ({flag or '--' + keyword.replace('_', '-')})"


class ActextractError(Exception):
    """Base class: a problem with the user's input or environment, reported without traceback."""


class OptionError(ActextractError, ValueError):
    """A run option that does not parse or does not fit: device, precision, batch size,
    reduction, ..."""


class SourceError(ActextractError, ValueError):
    """A dataset spec that cannot be resolved: unknown kind, missing root, empty folder."""


class BadSampleError(ActextractError, RuntimeError):
    """One sample of the dataset could not be loaded or transformed."""


class ModelSpecError(ActextractError, ValueError):
    """A model spec that names no known model."""


class CheckpointError(ActextractError, ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint only the full unpickler reads (a whole pickled module, other pickled
    objects), without trust given: unpickling it would run code from the file."""


class LayerNotFoundError(ActextractError, KeyError):
    """A layer name or glob that matches nothing in the model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CaptureError(ActextractError, RuntimeError):
    """A layer that exists but cannot be captured (untraceable model, non-tensor output, ...)."""


class NonFiniteError(ActextractError, ArithmeticError):
    """An activation holds NaN or Inf and the run was asked to stop on it
    (``on_nonfinite="error"``)."""


class StoreError(ActextractError, ValueError):
    """A store that is missing, malformed, or from an incompatible format version."""


class OutputExistsError(StoreError, FileExistsError):
    """The output path exists and neither ``overwrite`` nor ``resume`` was asked for."""


class RebuildError(ActextractError):
    """The store's inputs or model cannot be rebuilt; the message says why."""


class GraphvizError(ActextractError, RuntimeError):
    """Graphviz's ``dot`` program is missing or failed; the message says how to get it."""


class RankError(ActextractError, RuntimeError):
    """Another rank (rank 0, preparing the store) failed; its message is repeated here."""
