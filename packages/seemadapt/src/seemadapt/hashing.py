"""A stable text hash: Python's ``hash`` is salted per process, these values are the same everywhere.

It marks identical grounding texts (the data mapper's targets, the model's grounding prompts), so that a loss never
treats two copies of one sentence as different classes.
"""

from __future__ import annotations

import hashlib

__all__ = ["stable_hash"]


def stable_hash(text: str, num_bytes: int = 8) -> int:
    """A signed ``8 * num_bytes``-bit hash of ``text`` (BLAKE2b): equal texts, equal values, in every process."""
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8"), digest_size=num_bytes).digest(), "little", signed=True
    )
