"""Masks drawn over their image: one blending routine for dataset previews, attention figures and predictions."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["blend_regions", "outline"]

Color = tuple[int, int, int]


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def blend_regions(
    image: np.ndarray,
    regions: Sequence[tuple[np.ndarray, Sequence[float]]],
    alpha: float = 0.5,
    *,
    outlined: bool = True,
) -> np.ndarray:
    """``image`` (uint8 ``[H, W, 3]``) with each boolean mask tinted by its colour (0..255), as uint8.

    ``alpha`` is the colour's weight; pixels outside every mask keep the image. With ``outlined``, each region's
    edge is drawn in a darker shade of its colour, so that touching regions stay apart.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
    out = np.asarray(image).astype(np.float32)
    for mask, color in regions:
        if mask.any():
            out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color, dtype=np.float32)
    if outlined:
        for mask, color in regions:
            out[outline(mask)] = 0.5 * np.asarray(color, dtype=np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)
