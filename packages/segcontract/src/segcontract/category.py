"""One class of a contract dataset, as a reader of the dataset sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segcontract.colors import check_color, default_color

__all__ = ["Category"]


@dataclass(frozen=True)
class Category:
    """One class of a contract dataset.

    Args:
        id: the contiguous index, i.e. the ``ClassLabel`` index, the semantic PNG value and the
            ``segments_info.category_id``.
        name: the class name (also the text a grounding model is trained on).
        isthing: countable object (instances) vs. amorphous stuff (one segment per image).
        color: ``(r, g, b)`` for visualisation; ``None`` picks :func:`segcontract.default_color`.
    """

    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int] | None = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, int | np.integer) or self.id < 0:
            raise ValueError(
                f"Category `id` must be an integer >= 0 (the ClassLabel index), got {self.id!r}."
            )
        object.__setattr__(self, "id", int(self.id))
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Category {self.id}: `name` must be a non-empty string, got {self.name!r}.")
        if not isinstance(self.isthing, bool | np.bool_ | int) or self.isthing not in (0, 1):
            raise ValueError(f"Category {self.name!r}: `isthing` must be a bool, got {self.isthing!r}.")
        object.__setattr__(self, "isthing", bool(self.isthing))
        color = default_color(self.id) if self.color is None else self.color
        object.__setattr__(self, "color", check_color(color, f"Category {self.name!r}"))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "isthing": self.isthing, "color": list(self.color)}
