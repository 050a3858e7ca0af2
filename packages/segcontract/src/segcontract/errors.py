"""The one error type of the contract."""

from __future__ import annotations

__all__ = ["ContractError"]


class ContractError(ValueError):
    """A dataset breaks the contract; the message names the row, the column and the fix."""
