"""Mask overlays and a preview grid with a legend (for the dataset card and quick looks).

A panoptic PNG is already a colour image (segment ids are category colours, jittered per instance), so its overlay
is the PNG itself blended in (:func:`segcontract.blend_regions`), with segment outlines so touching instances stay
apart. A semantic map is
coloured with the category colours. Void / ignore pixels are left untinted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from datasets import Dataset
from PIL import Image, ImageDraw, ImageFont

from diffsynth.annotate import IGNORE_INDEX
from diffsynth.categories import Category
from diffsynth.dataset import categories_of
from segcontract import VOID, blend_regions, id2rgb, rgb2id

__all__ = ["overlay", "preview_grid"]


def _as_mask(value: Image.Image | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The mask as an array at the image ``size`` (nearest resampling keeps ids and labels intact)."""
    if isinstance(value, Image.Image):
        value = value.convert("RGB") if value.mode not in ("L", "P", "I") else value
    mask = np.asarray(value)
    if mask.shape[:2] != (size[1], size[0]):
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    return mask


def _regions(mask: np.ndarray, categories: Sequence[Category]) -> list[tuple[np.ndarray, tuple[int, ...]]]:
    """(pixels, colour) per category of a label map, or per segment of a panoptic PNG (its colour is its id)."""
    if mask.ndim == 2:
        return [
            (mask == i, tuple(c.color or (255, 255, 255)))
            for i, c in enumerate(categories)
            if i != IGNORE_INDEX and (mask == i).any()
        ]
    if mask.ndim == 3 and mask.shape[2] >= 3:
        ids = rgb2id(mask)
        return [(ids == sid, tuple(int(v) for v in id2rgb(sid))) for sid in np.unique(ids) if sid != VOID]
    raise ValueError(f"`label_map_or_panoptic` must be [H, W] or [H, W, 3], got shape {mask.shape}.")


def overlay(
    image: Image.Image | np.ndarray,
    label_map_or_panoptic: Image.Image | np.ndarray,
    categories: Sequence[Category],
    alpha: float = 0.5,
) -> Image.Image:
    """``image`` with the mask blended on top, each region outlined so touching instances stay apart.

    ``label_map_or_panoptic``: a 2-D label/semantic map (category index, 255 ignore) or an RGB panoptic PNG.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
    base = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    base = np.asarray(base.convert("RGB"))
    mask = _as_mask(label_map_or_panoptic, (base.shape[1], base.shape[0]))
    return Image.fromarray(blend_regions(base, _regions(mask, categories), alpha))


def _legend(categories: Sequence[Category], width: int) -> Image.Image:
    font = ImageFont.load_default()
    swatch, pad = 14, 8
    entries = []
    for c in categories:
        text_width = int(font.getlength(c.name)) if hasattr(font, "getlength") else 6 * len(c.name)
        entries.append((c, swatch + 4 + text_width + 2 * pad))
    rows, x = 1, 0
    for _, w in entries:
        if x + w > width and x > 0:
            rows, x = rows + 1, 0
        x += w
    legend = Image.new("RGB", (width, rows * (swatch + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    x, y = pad, pad
    for c, w in entries:
        if x + w > width and x > pad:
            x, y = pad, y + swatch + pad
        draw.rectangle(
            [x, y, x + swatch, y + swatch], fill=tuple(c.color or (255, 255, 255)), outline=(0, 0, 0)
        )
        draw.text((x + swatch + 4, y + 1), c.name, fill=(0, 0, 0), font=font)
        x += w
    return legend


def preview_grid(
    ds: Dataset,
    n: int = 8,
    *,
    columns: int = 4,
    tile: int = 256,
    alpha: float = 0.5,
    mask: str = "panoptic",
) -> Image.Image:
    """Up to ``n`` rows (evenly spaced) with mask overlays, in a grid, with a category legend below."""
    if n < 1 or columns < 1 or tile < 8:
        raise ValueError("`n` and `columns` must be >= 1 and `tile` >= 8.")
    if mask not in ("panoptic", "semantic"):
        raise ValueError(f"`mask` must be 'panoptic' or 'semantic', got {mask!r}.")
    if len(ds) == 0:
        raise ValueError("The dataset is empty; nothing to preview.")
    categories = categories_of(ds)
    count = min(n, len(ds))
    indices = sorted({round(float(i)) for i in np.linspace(0, len(ds) - 1, count)})
    tiles = []
    for row in ds.select(indices).select_columns(["image", mask]):
        shown = overlay(row["image"], row[mask], categories, alpha=alpha)
        scale = tile / max(shown.size)
        tiles.append(shown.resize((max(1, round(shown.width * scale)), max(1, round(shown.height * scale)))))
    columns = min(columns, len(tiles))
    grid_rows = -(-len(tiles) // columns)
    grid = Image.new("RGB", (columns * tile, grid_rows * tile), (255, 255, 255))
    for k, t in enumerate(tiles):
        r, c = divmod(k, columns)
        grid.paste(t, (c * tile + (tile - t.width) // 2, r * tile + (tile - t.height) // 2))
    legend = _legend(categories, grid.width)
    out = Image.new("RGB", (grid.width, grid.height + legend.height), (255, 255, 255))
    out.paste(grid, (0, 0))
    out.paste(legend, (0, grid.height))
    return out
