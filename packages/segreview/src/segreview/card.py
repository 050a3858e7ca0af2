"""The card of a reviewed dataset: where it came from and which samples were rejected."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["review_card"]


def review_card(source: str, total: int, rejected: Sequence[Mapping[str, Any]]) -> str:
    """Markdown naming the source, the counts and every rejected sample (row, ``image_id``, ``file_name``)."""
    lines = [
        "# Reviewed dataset",
        "",
        f"Kept {total - len(rejected)} of the {total} samples of `{source}` after review by eye in segreview; "
        f"{len(rejected)} rejected. The original dataset is unchanged.",
        "",
        "## Rejected samples",
        "",
    ]
    if not rejected:
        lines.append("None.")
    else:
        lines += ["| row | image_id | file_name |", "|---|---|---|"]
        lines += [f"| {r['row']} | {r['image_id']} | {r['file_name']} |" for r in rejected]
    return "\n".join(lines) + "\n"
