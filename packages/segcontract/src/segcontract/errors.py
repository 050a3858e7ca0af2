"""The error types shared by the SDKs: the contract's, and the Hub push check's."""

from __future__ import annotations

__all__ = ["ContractError", "HubAccessError"]


class ContractError(ValueError):
    """A dataset breaks the contract; the message names the row, the column and the fix."""


class HubAccessError(OSError, ValueError):
    """The Hub cannot take a push as asked: offline, no token, a rejected token, a bad repo id or no write access.

    An ``OSError`` (the Hub is an outside resource) and a ``ValueError`` (most causes are an argument), so handlers
    of either keep catching it."""
