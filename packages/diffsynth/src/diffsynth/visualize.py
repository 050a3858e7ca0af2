"""One figure per generated image: the image, each class's cross-attention and refined map, and the mask.

Meant for eyeballing a run (are the maps on the objects? are the thresholds sensible?), not for papers:
row 1 holds the image and the raw cross-attention heat maps, row 2 the mask overlay and the refined maps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

# A bare Figure renders with Agg and leaves pyplot's global backend and figure list alone.
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from segcontract import blend_regions


def _colours(count: int) -> np.ndarray:
    cmap = matplotlib.colormaps["tab20" if count > 10 else "tab10"]
    return np.array([cmap(i % cmap.N)[:3] for i in range(count)], dtype=np.float32)


def mask_overlay(
    image: np.ndarray, label_map: np.ndarray, class_ids: list[int], alpha: float = 0.5
) -> np.ndarray:
    """The image with class pixels tinted by class colour; float RGB in [0, 1]."""
    colours = _colours(len(class_ids)) * 255.0
    regions = [(label_map == value, colours[k]) for k, value in enumerate(class_ids)]
    return blend_regions(image, regions, alpha, outlined=False).astype(np.float32) / 255.0


def attention_figure(
    result: Any, path: str | Path, *, ignore_index: int | None = None, dpi: int = 100
) -> Path:
    """Save a PNG of ``result`` (a :class:`diffsynth.masker.MaskResult`) to ``path`` and return the path.

    Needs the soft maps (``MaskerConfig(keep_soft_maps=True)``, the default).
    """
    if result.soft_maps is None or result.cross_maps is None:
        raise ValueError(
            "attention_figure needs soft and cross maps; run with MaskerConfig(keep_soft_maps=True)."
        )
    classes = list(result.classes)
    ignore = result.ignore_index if ignore_index is None else ignore_index
    image = np.asarray(result.image.convert("RGB"))
    columns = len(classes) + 1
    fig = Figure(figsize=(2.6 * columns, 5.6))
    axes = fig.subplots(2, columns, squeeze=False)
    axes[0, 0].imshow(image)
    axes[0, 0].set_title(f"seed {result.seed}", fontsize=9)
    overlay = mask_overlay(image, result.label_map, result.class_ids)
    overlay[result.label_map == ignore] *= 0.35
    axes[1, 0].imshow(overlay)
    axes[1, 0].set_title("mask (dark: uncertain)", fontsize=9)
    colours = _colours(len(classes))
    handles = [Patch(color=colours[k], label=name) for k, name in enumerate(classes)]
    axes[1, 0].legend(handles=handles, loc="lower left", fontsize=7, framealpha=0.7)
    for k, name in enumerate(classes):
        for row, maps, title in ((0, result.cross_maps, "cross"), (1, result.soft_maps, "refined")):
            ax = axes[row, k + 1]
            ax.imshow(image)
            ax.imshow(maps[k], cmap="jet", alpha=0.55, vmin=0.0, vmax=1.0)
            ax.set_title(f"{name}: {title}", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(result.prompt, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    return path
