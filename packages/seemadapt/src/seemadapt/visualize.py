"""Draw SEEM predictions over their image: semantic maps, panoptic segments and grounded sentences.

Pure PIL + numpy (no pyplot state, works headless). Each function returns a new RGB ``PIL.Image``: the image with
coloured, outlined regions on the left and a legend panel on the right (colour swatch + class or sentence). Inputs
are the outputs of :meth:`seemadapt.model.SEEM.predict` / :meth:`~seemadapt.model.SEEM.ground`, as tensors or arrays.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segcontract import blend_regions

__all__ = ["draw_grounding", "draw_panoptic", "draw_semantic", "palette"]

Color = tuple[int, int, int]
MAX_LEGEND_ROWS = 24


def palette(count: int, seed: int = 0) -> list[Color]:
    """``count`` well separated, deterministic colours (golden-ratio hue steps, alternating brightness)."""
    colors = []
    for index in range(count):
        hue = (seed * 0.137 + index * 0.618033988749895) % 1.0
        value = 0.95 if index % 2 == 0 else 0.75
        r, g, b = colorsys.hsv_to_rgb(hue, 0.75, value)
        colors.append((int(r * 255), int(g * 255), int(b * 255)))
    return colors


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().to("cpu").numpy()
    return np.asarray(value)


def _image_array(image: Any) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB from a PIL image, a numpy ``[H, W, 3]`` array or a torch ``[3, H, W]`` tensor."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):
        array = _to_numpy(image)
        if array.ndim != 3 or array.shape[0] != 3:
            raise ValueError(f"Image tensors must be [3, H, W], got shape {array.shape}.")
        array = array.transpose(1, 2, 0)
    else:
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"Images must be RGB [H, W, 3] arrays, PIL images or [3, H, W] tensors, got {array.shape}."
        )
    return np.clip(array, 0, 255).astype(np.uint8)


def _check_size(name: str, array: np.ndarray, image: np.ndarray) -> None:
    if array.shape[-2:] != image.shape[:2]:
        raise ValueError(
            f"{name} is {array.shape[-2]}x{array.shape[-1]} but the image is {image.shape[0]}x{image.shape[1]}; "
            "pass the image the prediction was made for (predictions come back at the input size)."
        )


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _wrap(text: str, font: Any, width: float) -> list[str]:
    """Greedy word wrap to ``width`` pixels as measured with ``font``; over-long words are cut into pieces."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= width or not current:
            current = candidate
        else:
            lines.append(current)
            current = word
        while font.getlength(current) > width and len(current) > 1:
            cut = max(1, int(len(current) * width / font.getlength(current)))
            lines.append(current[:cut])
            current = current[cut:]
    return [*lines, current] if current else lines or [""]


def _with_legend(
    array: np.ndarray, entries: Sequence[tuple[str, Color]], title: str | None = None
) -> Image.Image:
    """The image with a legend panel on its right (rows beyond :data:`MAX_LEGEND_ROWS` are summarised)."""
    image = Image.fromarray(array)
    height = image.height
    font_size = int(np.clip(height / 22, 11, 22))
    font = _font(font_size)
    line = font_size + 6
    swatch = font_size
    panel_width = max(160, min(420, int(image.width * 0.9)))
    text_width = panel_width - swatch - 24
    shown = list(entries[:MAX_LEGEND_ROWS])
    rows: list[tuple[list[str], Color | None]] = [
        (_wrap(text, font, text_width), color) for text, color in shown
    ]
    if len(entries) > MAX_LEGEND_ROWS:
        rows.append(([f"... and {len(entries) - MAX_LEGEND_ROWS} more"], None))
    if title:
        rows.insert(0, ([title], None))
    needed = 8 + sum(len(lines) * line + 4 for lines, _ in rows)
    canvas = Image.new("RGB", (image.width + panel_width, max(height, needed)), (255, 255, 255))
    canvas.paste(image, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x, y = image.width + 8, 8
    for lines, color in rows:
        if color is not None:
            draw.rectangle([x, y + 2, x + swatch, y + 2 + swatch], fill=color, outline=(0, 0, 0))
        for k, text in enumerate(lines):
            draw.text(
                (x + (swatch + 8 if color is not None else 0), y + k * line), text, fill=(0, 0, 0), font=font
            )
        y += len(lines) * line + 4
    return canvas


def draw_semantic(
    image: Any,
    labels: Any,
    class_names: Sequence[str],
    alpha: float = 0.55,
    ignore_index: int = 255,
    colors: Sequence[Color] | None = None,
) -> Image.Image:
    """Colour every pixel by its class (``labels [H, W]``, e.g. ``predict(...)["labels"]``); the legend lists the
    classes present, largest first, with their share of the image."""
    base = _image_array(image)
    labels = _to_numpy(labels).astype(np.int64)
    _check_size("labels", labels, base)
    colors = list(colors) if colors is not None else palette(len(class_names))
    present, counts = np.unique(labels[labels != ignore_index], return_counts=True)
    order = np.argsort(-counts)
    regions, entries = [], []
    for index in order:
        label = int(present[index])
        if not 0 <= label < len(class_names):
            raise ValueError(
                f"labels contain class {label}, but only {len(class_names)} class names were given."
            )
        regions.append((labels == label, colors[label]))
        entries.append((f"{class_names[label]} ({100.0 * counts[index] / labels.size:.1f}%)", colors[label]))
    return _with_legend(blend_regions(base, regions, alpha), entries, title="semantic")


def draw_panoptic(
    image: Any,
    panoptic_seg: Any,
    segments_info: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    alpha: float = 0.55,
) -> Image.Image:
    """Colour every segment of ``panoptic_seg [H, W]`` (ids as in ``segments_info``; 0 = none): stuff in its class
    colour, each thing instance in a shade of its class colour; the legend lists segments with class and score."""
    base = _image_array(image)
    seg = _to_numpy(panoptic_seg).astype(np.int64)
    _check_size("panoptic_seg", seg, base)
    class_colors = palette(len(class_names))
    regions, entries = [], []
    instance_count: dict[int, int] = {}
    for info in segments_info:
        category = int(info["category_id"])
        if not 0 <= category < len(class_names):
            raise ValueError(
                f"segment {info.get('id')} has category {category}, outside the {len(class_names)} names."
            )
        color = class_colors[category]
        if info.get("isthing", True):
            k = instance_count.get(category, 0)
            instance_count[category] = k + 1
            shade = 1.0 - 0.18 * (k % 4)
            color = tuple(int(c * shade) for c in color)  # type: ignore[assignment]
        regions.append((seg == int(info["id"]), color))
        text = f"{info['id']}: {class_names[category]}"
        if "score" in info:
            text += f" {float(info['score']):.2f}"
        if not info.get("isthing", True):
            text += " (stuff)"
        entries.append((text, color))
    return _with_legend(blend_regions(base, regions, alpha), entries, title="panoptic")


def draw_grounding(
    image: Any,
    masks: Any,
    sentences: Sequence[str],
    scores: Any = None,
    alpha: float = 0.55,
) -> Image.Image:
    """One colour per referring sentence: ``masks [n, H, W]`` (bool, or mask logits where > 0 is inside, as
    ``ground(...)["masks"]`` / ``["mask_logits"]``), with the sentences and optional scores in the legend."""
    base = _image_array(image)
    masks = _to_numpy(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.dtype != np.bool_:
        masks = masks > 0
    if len(masks) != len(sentences):
        raise ValueError(f"Got {len(masks)} masks for {len(sentences)} sentences.")
    _check_size("masks", masks, base)
    colors = palette(len(sentences), seed=3)
    score_values = None if scores is None else _to_numpy(scores).reshape(-1)
    entries = []
    for index, sentence in enumerate(sentences):
        text = f'"{sentence}"'
        if score_values is not None:
            text += f" {float(score_values[index]):.2f}"
        entries.append((text, colors[index]))
    return _with_legend(blend_regions(base, list(zip(masks, colors)), alpha), entries, title="grounding")
