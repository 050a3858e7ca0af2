"""Mask overlays and a preview grid with a legend (for the dataset card and quick looks).

A panoptic PNG is already a colour image (segment ids are category colours, jittered per instance), so its overlay
is the PNG itself blended in, with segment borders drawn so touching instances stay apart. A semantic map is
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

__all__ = ["overlay", "preview_grid"]


def _borders(ids: np.ndarray) -> np.ndarray:
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    return edge


def overlay(
    image: Image.Image | np.ndarray,
    label_map_or_panoptic: Image.Image | np.ndarray,
    categories: Sequence[Category],
    alpha: float = 0.5,
) -> Image.Image:
    """``image`` with the mask blended on top.

    ``label_map_or_panoptic``: a 2-D label/semantic map (category index, 255 ignore) or an RGB panoptic PNG.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`alpha` must be in [0, 1], got {alpha}.")
    base = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    base = base.convert("RGB")
    mask = label_map_or_panoptic
    if isinstance(mask, Image.Image):
        mask = mask.convert("RGB") if mask.mode not in ("L", "P", "I") else mask
    mask = np.asarray(mask)
    if mask.shape[:2] != (base.height, base.width):
        resample = Image.NEAREST
        mask = np.asarray(Image.fromarray(mask).resize(base.size, resample))
    if mask.ndim == 2:
        lut = np.zeros((256, 3), dtype=np.uint8)
        for i, c in enumerate(categories):
            lut[i] = c.color or (255, 255, 255)
        colors = lut[mask.astype(np.uint8)]
        ids = mask.astype(np.int32)
        painted = (mask != IGNORE_INDEX) & (mask < len(categories))
    elif mask.ndim == 3 and mask.shape[2] >= 3:
        colors = mask[..., :3].astype(np.uint8)
        ids = colors.astype(np.int32) @ np.array([1, 256, 65536], dtype=np.int32)
        painted = ids != 0
    else:
        raise ValueError(f"`label_map_or_panoptic` must be [H, W] or [H, W, 3], got shape {mask.shape}.")
    pixels = np.asarray(base, dtype=np.float32)
    blend = pixels * (1 - alpha) + colors.astype(np.float32) * alpha
    out = np.where(painted[..., None], blend, pixels)
    out[_borders(ids) & painted] = 255.0
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


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
