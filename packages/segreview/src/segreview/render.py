"""One sample drawn for review: the image, its panoptic and semantic overlays with a legend, attention heat maps
and the text fields (prompt, seed, quality, grounding)."""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
from matplotlib import colormaps
from PIL import Image

from segcontract import IGNORE_LABEL, Category, blend_regions, rgb2id

__all__ = ["IGNORE_COLOR", "SampleView", "decode_cell", "legend_html", "raw_row", "render_sample"]

#: How ignored (uncertain) semantic pixels are drawn.
IGNORE_COLOR = (0, 0, 0)
_HEAT = colormaps["inferno"]


@dataclass(frozen=True)
class SampleView:
    """Everything the review tab shows for one row."""

    image: np.ndarray
    panoptic: np.ndarray
    semantic: np.ndarray
    attention: list[tuple[np.ndarray, str]]
    legend: str
    details: str


def raw_row(dataset: datasets.Dataset, index: int) -> dict[str, Any]:
    """Row ``index`` with its images still encoded (``{"bytes", "path"}``): decoding is ours, and lenient."""
    return dataset.with_format("arrow")[index : index + 1].to_pylist()[0]


def decode_cell(cell: Any) -> Image.Image:
    """An encoded image cell (``{"bytes", "path"}``) as a PIL image."""
    if isinstance(cell, Image.Image):
        return cell
    data = cell.get("bytes") if isinstance(cell, Mapping) else cell
    if data:
        return Image.open(io.BytesIO(data))
    return Image.open(cell["path"])


def _instance_shade(color: Sequence[int], k: int) -> tuple[int, int, int]:
    """Instance ``k`` of a class: its colour, lighter or darker in turn, so touching instances stay apart."""
    factor = (1.0, 0.7, 1.3, 0.5, 1.5)[k % 5]
    return tuple(int(min(255, c * factor)) for c in color)


def _panoptic_overlay(
    image: np.ndarray, row: Mapping[str, Any], categories: Sequence[Category]
) -> np.ndarray:
    ids = rgb2id(np.asarray(decode_cell(row["panoptic"]).convert("RGB")))
    seen: dict[int, int] = {}
    regions = []
    for segment in row["segments_info"]:
        cat = int(segment["category_id"])
        color = categories[cat].color if cat < len(categories) else (255, 0, 255)
        regions.append((ids == int(segment["id"]), _instance_shade(color, seen.get(cat, 0))))
        seen[cat] = seen.get(cat, 0) + 1
    return blend_regions(image, regions)


def _semantic_overlay(image: np.ndarray, semantic: np.ndarray, categories: Sequence[Category]) -> np.ndarray:
    regions = [(semantic == c.id, c.color) for c in categories if c.id != IGNORE_LABEL]
    regions.append((semantic == IGNORE_LABEL, IGNORE_COLOR))
    return blend_regions(image, regions)


def legend_html(categories: Sequence[Category], present: set[int] | None = None, ignore: bool = True) -> str:
    """Coloured swatches with class names (only ``present`` ones when given), and the ignore colour."""
    items = [
        (c.color, f"{c.name} ({'thing' if c.isthing else 'stuff'})")
        for c in categories
        if present is None or c.id in present
    ]
    if ignore:
        items.append((IGNORE_COLOR, "ignore / void"))
    spans = [
        f'<span class="segreview-swatch" style="display:inline-block;margin-right:12px">'
        f'<span style="display:inline-block;width:14px;height:14px;vertical-align:middle;'
        f'background:rgb{tuple(color)};border:1px solid #888"></span> {html.escape(name)}</span>'
        for color, name in items
    ]
    return '<div class="segreview-legend">' + "".join(spans) + "</div>"


def attention_maps(
    image: np.ndarray, cells: Sequence[Any] | None, names: Sequence[str]
) -> list[tuple[np.ndarray, str]]:
    """Each stored soft map (greyscale PNG, 255 = 1) as a heat map over the image, captioned by its class."""
    height, width = image.shape[:2]
    maps = []
    for k, cell in enumerate(cells or []):
        grey = decode_cell(cell).convert("L").resize((width, height), Image.Resampling.BILINEAR)
        heat = (_HEAT(np.asarray(grey, dtype=np.float32) / 255.0)[..., :3] * 255).astype(np.float32)
        blended = (0.45 * image.astype(np.float32) + 0.55 * heat).astype(np.uint8)
        maps.append((blended, names[k] if k < len(names) else f"map {k}"))
    return maps


def _details(
    row: Mapping[str, Any], categories: Sequence[Category], quality: Mapping[str, Any] | None
) -> str:
    names = {c.id: c.name for c in categories}
    by_segment = {int(s["id"]): names.get(int(s["category_id"]), "?") for s in row["segments_info"]}
    lines = [
        f"**{html.escape(str(row.get('file_name', '')))}** · image_id {row.get('image_id')} · "
        f"seed {row.get('seed')} · {row.get('source', '')}",
        "",
        f"**Prompt:** {html.escape(str(row.get('prompt') or '(none)'))}",
    ]
    if quality:
        scores = ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
            for k, v in quality.items()
            if v is not None
        )
        lines += ["", f"**Quality:** {scores or '(not scored)'}"]
    grounding = row.get("grounding") or []
    if grounding:
        lines += ["", "**Grounding:**"]
        for g in grounding:
            sentences = "; ".join(html.escape(s) for s in g.get("sentences") or [])
            lines.append(
                f"- segment {g['segment_id']} ({by_segment.get(int(g['segment_id']), '?')}): {sentences}"
            )
    return "\n".join(lines)


def render_sample(
    row: Mapping[str, Any],
    categories: Sequence[Category],
    quality: Mapping[str, Any] | None = None,
    attention_names: Sequence[str] = (),
) -> SampleView:
    """The views of one raw row (from :func:`raw_row`)."""
    image = np.asarray(decode_cell(row["image"]).convert("RGB"))
    semantic = np.asarray(decode_cell(row["semantic"]).convert("L"))
    present = {int(s["category_id"]) for s in row["segments_info"]}
    return SampleView(
        image=image,
        panoptic=_panoptic_overlay(image, row, categories),
        semantic=_semantic_overlay(image, semantic, categories),
        attention=attention_maps(image, row.get("attention"), attention_names),
        legend=legend_html(categories, present),
        details=_details(row, categories, quality),
    )
