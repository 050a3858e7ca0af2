"""diffsynth's own exception types: each message names the argument or path, the value and the fix.

They subclass the built-in types the same failures raised before (``ValueError``, ``TypeError``, ``OSError``), so
existing ``except`` clauses keep catching them.
"""

from __future__ import annotations

# One type each for both SDKs: the Hub and output-folder checks live in segcontract.
from segcontract.errors import HubAccessError, OutputPathError

__all__ = ["ArgumentError", "HubAccessError", "ModelNotFoundError", "OutputPathError"]


class ArgumentError(ValueError, TypeError):
    """An argument of the wrong type or value, caught before any work starts."""


class ModelNotFoundError(OSError):
    """A model id that is neither a local folder nor reachable on the Hub (offline, typo, private)."""
