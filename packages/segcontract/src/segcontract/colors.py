"""Category colours: the default palette and the one check every colour goes through.

Colours matter beyond pictures: panoptic segment ids may be derived from them (COCO's ``IdGenerator`` convention),
where black is the void id 0.
"""

from __future__ import annotations

import colorsys
from typing import Any

__all__ = ["check_color", "default_color"]

Color = tuple[int, int, int]


def default_color(index: int) -> Color:
    """A deterministic, bright colour for category ``index`` (golden-ratio hues; never black)."""
    hue = (index * 0.618033988749895) % 1.0
    value = 0.95 if index % 2 == 0 else 0.75
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, value)
    return (round(r * 255), round(g * 255), round(b * 255))


def check_color(color: Any, owner: str, *, allow_black: bool = True) -> Color:
    """``color`` as an ``(r, g, b)`` tuple of ints in 0..255; ``ValueError`` naming ``owner`` otherwise.

    ``allow_black=False`` rejects ``(0, 0, 0)``, the void id when segment ids are made from colours.
    """
    try:
        rgb = tuple(int(c) for c in color)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: `color` must be three integers (r, g, b), got {color!r}.") from None
    if len(rgb) != 3 or any(c < 0 or c > 255 for c in rgb):
        raise ValueError(f"{owner}: `color` must be three integers in 0..255, got {color!r}.")
    if not allow_black and rgb == (0, 0, 0):
        raise ValueError(f"{owner}: `color` (0, 0, 0) is the void id in COCO panoptic PNGs; pick another.")
    return rgb  # type: ignore[return-value]
