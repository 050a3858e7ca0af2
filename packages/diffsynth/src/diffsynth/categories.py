"""Target categories: names, thing/stuff, colours, and the explicit background class.

A category's *index* in the resolved list is its identity everywhere in diffsynth: the value in the label map and in
the semantic PNG, the ``ClassLabel`` index of ``segments_info.category_id``, and ``index + 1`` as the COCO category id
on export. Colours matter beyond previews: panoptic segment ids are derived from them (COCO's ``IdGenerator``
convention), so they must be distinct and never black, which is the void id 0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segcontract import check_color

__all__ = ["COLOR_SEED", "Category", "resolve_categories"]

#: Seed of the colour RNG: the i-th category without a colour always gets the same colour.
COLOR_SEED = 20240601
# Automatic colours keep away from black (void) so that jittered instance colours never reach id 0,
# and keep this far apart (sum of channel differences) from every colour already in use, while possible.
_MIN_BRIGHTNESS = 48
_MIN_DISTANCE = 150


def _words(value: Any, field_name: str, category: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        words = tuple(value)
    except TypeError:
        raise TypeError(
            f"Category {category!r}: `{field_name}` must be a list of strings, got {type(value).__name__}."
        ) from None
    for word in words:
        if not isinstance(word, str) or not word.strip():
            raise ValueError(f"Category {category!r}: `{field_name}` holds {word!r}; use non-empty strings.")
    return tuple(w.strip() for w in words)


@dataclass(frozen=True)
class Category:
    """One target class.

    Args:
        name: the class name as it appears in prompts, cards and grounding sentences.
        isthing: countable objects (split into instances by connected components) vs. amorphous stuff
            (one segment per image).
        color: ``(r, g, b)`` in 0..255, not ``(0, 0, 0)``; ``None`` picks a deterministic colour in
            :func:`resolve_categories`.
        synonyms: other names for the class, used in grounding sentences and to find the class in a prompt.
        prompt_words: words whose attention stands for the class when it differs from ``name``
            (e.g. ``("pipe",)`` for ``"broken pipe"``).
    """

    name: str
    isthing: bool = True
    color: tuple[int, int, int] | None = None
    synonyms: tuple[str, ...] = field(default=())
    prompt_words: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Category `name` must be a non-empty string, got {self.name!r}.")
        object.__setattr__(self, "name", self.name.strip())
        if not isinstance(self.isthing, bool | np.bool_):
            raise TypeError(f"Category {self.name!r}: `isthing` must be a bool, got {self.isthing!r}.")
        object.__setattr__(self, "isthing", bool(self.isthing))
        if self.color is not None:
            color = check_color(self.color, f"Category {self.name!r}", allow_black=False)
            object.__setattr__(self, "color", color)
        object.__setattr__(self, "synonyms", _words(self.synonyms, "synonyms", self.name))
        object.__setattr__(self, "prompt_words", _words(self.prompt_words, "prompt_words", self.name))

    @property
    def aliases(self) -> tuple[str, ...]:
        """The name, then synonyms and prompt words: every string that refers to this class in text."""
        seen: dict[str, None] = {}
        for word in (self.name, *self.synonyms, *self.prompt_words):
            seen.setdefault(word, None)
        return tuple(seen)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "isthing": self.isthing,
            "color": list(self.color) if self.color is not None else None,
            "synonyms": list(self.synonyms),
            "prompt_words": list(self.prompt_words),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Category:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(
                f"Category dict has unknown keys {sorted(unknown)}; allowed: name, isthing, color, "
                "synonyms, prompt_words."
            )
        kwargs = dict(data)
        if "isthing" in kwargs:
            kwargs["isthing"] = bool(kwargs["isthing"])
        if kwargs.get("color") is not None:
            kwargs["color"] = tuple(kwargs["color"])
        return cls(**kwargs)


def _as_category(item: str | Category | Mapping[str, Any], position: int) -> Category:
    if isinstance(item, Category):
        return item
    if isinstance(item, str):
        if not item.strip():
            raise ValueError(f"`classes[{position}]` is an empty string; give every class a name.")
        return Category(item)
    if isinstance(item, Mapping):
        return Category.from_dict(item)
    raise TypeError(f"`classes[{position}]` must be a str, a Category or a dict, got {type(item).__name__}.")


def _auto_colors(count: int, taken: Iterable[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """``count`` distinct, non-dark colours, far from ``taken`` where possible; the same every call."""
    rng = np.random.default_rng(COLOR_SEED)
    used = {tuple(c) for c in taken}
    out: list[tuple[int, int, int]] = []
    while len(out) < count:
        chosen = None
        for attempt in range(1000):
            candidate = tuple(int(v) for v in rng.integers(0, 256, size=3))
            if max(candidate) < _MIN_BRIGHTNESS or candidate in used:
                continue
            if attempt < 200 and any(
                sum(abs(a - b) for a, b in zip(candidate, u)) < _MIN_DISTANCE for u in used
            ):
                continue  # too close to a colour in use; relax after enough tries (many classes)
            chosen = candidate
            break
        if chosen is None:  # pragma: no cover - needs thousands of classes
            raise RuntimeError("Could not find a free colour; give the categories explicit colours.")
        used.add(chosen)
        out.append(chosen)
    return out


def _background(background: str | Category | None) -> Category | None:
    """The background argument as a stuff :class:`Category` (or None)."""
    if background is None:
        return None
    if isinstance(background, str):
        if not background.strip():
            raise ValueError("`background` is an empty string; pass a name, or None to opt out.")
        return Category(background, isthing=False)
    if not isinstance(background, Category):
        raise TypeError(f"`background` must be a str, a Category or None, got {type(background).__name__}.")
    return dataclasses.replace(background, isthing=False) if background.isthing else background


def _check_names(categories: Sequence[Category], background: Category | None) -> None:
    seen: dict[str, int] = {}
    for i, category in enumerate(categories):
        key = category.name.lower()
        if key in seen:
            raise ValueError(
                f"`classes` names {category.name!r} twice (positions {seen[key]} and {i}); class names must be unique."
            )
        seen[key] = i
    if background is not None and background.name.lower() in seen:
        raise ValueError(
            f"`background` name {background.name!r} is also a target class (position "
            f"{seen[background.name.lower()]}); rename it, or pass background=None if it is meant as a class."
        )


def resolve_categories(
    classes: Sequence[str | Category | Mapping[str, Any]],
    background: str | Category | None = "background",
) -> list[Category]:
    """The final category list: the user's classes in their order, then the background stuff class (index K).

    ``background=None`` opts out of an explicit background: pixels of no target class then stay void/ignored.
    Missing colours are filled deterministically (same classes -> same colours), distinct from the given ones.
    """
    if isinstance(classes, str | Category):
        raise TypeError(
            "`classes` must be a list of class names or Categories, not a single one; wrap it in []."
        )
    categories = [_as_category(item, i) for i, item in enumerate(classes)]
    if not categories:
        raise ValueError("`classes` is empty; give at least one target class name.")
    resolved_background = _background(background)
    _check_names(categories, resolved_background)
    if resolved_background is not None:
        categories.append(resolved_background)
    colors = [c.color for c in categories if c.color is not None]
    if len(set(colors)) != len(colors):
        dup = next(c for c in colors if colors.count(c) > 1)
        raise ValueError(f"`color` {dup} is given to two categories; colours must be distinct.")
    missing = [i for i, c in enumerate(categories) if c.color is None]
    for i, color in zip(missing, _auto_colors(len(missing), colors)):
        categories[i] = dataclasses.replace(categories[i], color=color)
    if len(categories) > 255:
        raise ValueError(f"{len(categories)} categories: at most 255 fit a uint8 label map (255 = ignore).")
    return categories
