"""seemadapt's own exception types: each message names the argument or path, the value and the fix.

They subclass the built-in types the same failures raised before (``ValueError``, ``TypeError``, ``OSError``), so
existing ``except`` clauses keep catching them.
"""

from __future__ import annotations

# One type each for both SDKs: the Hub and output-folder checks live in segcontract.
from segcontract.errors import HubAccessError, OutputPathError

__all__ = [
    "ArgumentError",
    "CheckpointError",
    "HubAccessError",
    "OutputPathError",
    "ResumeError",
    "UntrustedCheckpointError",
]


class ArgumentError(ValueError, TypeError):
    """An argument of the wrong type or value, caught before any work starts."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked (wrong shapes or keys in strict mode, unreadable file...)."""


class UntrustedCheckpointError(CheckpointError):
    """The file holds pickled Python objects beyond tensors; loading it would run arbitrary code."""


class ResumeError(CheckpointError):
    """A training checkpoint to resume from is incomplete, changed since it was written, or unsafe to load."""
