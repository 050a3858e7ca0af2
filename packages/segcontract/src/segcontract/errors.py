"""The error types shared by the SDKs: the contract's, and the Hub push check's."""

from __future__ import annotations

__all__ = ["ContractError", "HubAccessError", "OutputPathError"]


class ContractError(ValueError):
    """A dataset breaks the contract; the message names the row, the column and the fix."""


class HubAccessError(OSError, ValueError):
    """The Hub cannot take a push as asked: offline, no token, a rejected token, a bad repo id or no write access.

    An ``OSError`` (the Hub is an outside resource) and a ``ValueError`` (most causes are an argument), so handlers
    of either keep catching it."""


class OutputPathError(OSError):
    """An output path that cannot be written: a file where a folder is needed, read-only, or the disk is full."""
