"""``categories.json`` and ``id2label.json``: the category files written beside the data in every folder."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, Protocol

from segcontract.columns import IGNORE_LABEL, VOID

__all__ = ["category_files", "write_category_files"]


class _Named(Protocol):
    name: str

    def to_dict(self) -> dict[str, Any]: ...


def category_files(categories: Sequence[_Named]) -> dict[str, Any]:
    """The contents of ``categories.json`` and ``id2label.json`` (transformers' convention) for ``categories``."""
    return {
        "categories.json": {
            "ignore_index": IGNORE_LABEL,
            "void_segment_id": VOID,
            "coco_category_id": "index + 1",
            "categories": [{"id": i, "coco_id": i + 1, **c.to_dict()} for i, c in enumerate(categories)],
        },
        "id2label.json": {str(i): c.name for i, c in enumerate(categories)},
    }


def write_category_files(categories: Sequence[_Named], folder: str | os.PathLike) -> None:
    """Write ``categories.json`` and ``id2label.json`` into ``folder``."""
    for name, content in category_files(categories).items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2)
            f.write("\n")
