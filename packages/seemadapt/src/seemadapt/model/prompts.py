"""Visual prompts (points, boxes, scribbles, masks) as the boolean prompt masks SEEM's decoder takes.

SEEM turns every visual prompt into a mask on the network's input canvas and samples the prompt's points from it:
the decoder reads coordinates normalised by the canvas size, so a prompt mask must be drawn on the
**padded input** (``[Hp, Wp]``), with the image resized exactly as :meth:`SEEM.preprocess` resized it and the padding
on the right and bottom left empty. :class:`PromptGeometry` holds that mapping; the ``encode_*`` functions draw
prompts given in the caller's image coordinates onto the canvas.

Conventions (caller's image, before any resize):

* a point ``(x, y)`` is the pixel in column ``x``, row ``y`` (floats allowed); ``(x, y, label)`` with ``label`` 1
  (positive, the default) or 0 (negative). It lands on the canvas pixel that contains its centre and is drawn as a
  ``point_size`` x ``point_size`` square (3, as SEEM's simulated clicks, which are one pixel dilated 3x3).
* a box ``[x0, y0, x1, y1]`` uses pixel-edge coordinates (detectron2's ``XYXY_ABS``: ``x1 = last column + 1``); the
  prompt is the filled box: every canvas pixel whose centre lies inside it (at least the pixel at its centre).
* a scribble is a polyline ``[(x, y), ...]`` (points as above) drawn ``scribble_width`` canvas pixels wide, or a
  boolean mask ``[H, W]`` (``[n, H, W]`` for ``n`` scribbles) resized so that thin strokes survive downscaling.
* a mask is a boolean ``[H, W]`` (or ``[n, H, W]``) resized by majority (bilinear, antialiased, >= 0.5), falling
  back to the thin-stroke rule when that would empty it.

Every prompt is one prompt object (one output mask), in the order points, boxes, scribbles, masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from seemadapt.model.images import ImageBatch

Size = tuple[int, int]
PromptKind = str  # "point", "box", "scribble", "mask" (or "click" for simulated clicks)

#: Logit written into the padding when a caller-size mask goes back onto the canvas (surely "off").
PAD_LOGIT = -1e4

__all__ = [
    "PAD_LOGIT",
    "PromptGeometry",
    "VisualPrompts",
    "encode_boxes",
    "encode_masks",
    "encode_points",
    "encode_prompts",
    "encode_scribbles",
    "group_points",
    "logits_to_canvas",
    "resize_to_canvas",
]


@dataclass(frozen=True)
class PromptGeometry:
    """Where the caller's image sits in the network input.

    Attributes:
        original_size: ``(H, W)`` of the image as the caller gave it (prompt coordinates refer to it).
        image_size: ``(h, w)`` of the image inside the padded input (after the optional resize).
        padded_size: ``(Hp, Wp)`` of the padded input (the prompt canvas).
    """

    original_size: Size
    image_size: Size
    padded_size: Size

    def __post_init__(self) -> None:
        for name in ("original_size", "image_size", "padded_size"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 2 or min(value) < 1:
                raise ValueError(f"PromptGeometry.{name} must be (height, width) >= 1, got {value}.")
            object.__setattr__(self, name, value)
        if self.image_size[0] > self.padded_size[0] or self.image_size[1] > self.padded_size[1]:
            raise ValueError(
                f"PromptGeometry: image_size {self.image_size} must fit in padded_size {self.padded_size}."
            )

    @classmethod
    def from_batch(cls, batch: ImageBatch, index: int = 0) -> PromptGeometry:
        """The geometry of image ``index`` of a :class:`~seemadapt.model.images.ImageBatch`."""
        return cls(batch.original_sizes[index], batch.image_sizes[index], batch.padded_size)

    @property
    def scale(self) -> tuple[float, float]:
        """``(sy, sx)``: canvas pixels per caller pixel."""
        return (
            self.image_size[0] / self.original_size[0],
            self.image_size[1] / self.original_size[1],
        )

    def to_canvas(self, x: float, y: float) -> tuple[int, int]:
        """Canvas ``(row, col)`` of the caller's pixel ``(x, y)``: the canvas pixel containing its centre,
        clamped to the image area."""
        sy, sx = self.scale
        row = min(max(math.floor((float(y) + 0.5) * sy), 0), self.image_size[0] - 1)
        col = min(max(math.floor((float(x) + 0.5) * sx), 0), self.image_size[1] - 1)
        return row, col

    def valid_area(self, device: torch.device | str | None = None) -> Tensor:
        """``[Hp, Wp]`` bool: True on the image, False on the padding."""
        valid = torch.zeros(self.padded_size, dtype=torch.bool, device=device)
        valid[: self.image_size[0], : self.image_size[1]] = True
        return valid


@dataclass
class VisualPrompts:
    """Prompt masks on the canvas, one row per prompt object.

    Attributes:
        positive: ``[n, Hp, Wp]`` bool, what the prompt marks as the object.
        negative: ``[n, Hp, Wp]`` bool, what it marks as not the object (negative points / clicks).
        kinds: the kind of each prompt (``"point"``, ``"box"``, ``"scribble"``, ``"mask"``, ``"click"``).
        geometry: the canvas the masks are drawn on.
    """

    positive: Tensor
    negative: Tensor
    kinds: list[PromptKind] = field(default_factory=list)
    geometry: PromptGeometry | None = None

    def __post_init__(self) -> None:
        if self.positive.dim() != 3 or self.positive.shape != self.negative.shape:
            raise ValueError(
                "VisualPrompts: positive and negative must be bool [n, Hp, Wp] of the same shape, got "
                f"{tuple(self.positive.shape)} and {tuple(self.negative.shape)}."
            )
        self.positive = self.positive.bool()
        self.negative = self.negative.bool()
        if not self.kinds:
            self.kinds = ["mask"] * len(self.positive)
        if len(self.kinds) != len(self.positive):
            raise ValueError(f"VisualPrompts: {len(self.kinds)} kinds for {len(self.positive)} prompts.")
        if self.geometry is not None and tuple(self.positive.shape[-2:]) != self.geometry.padded_size:
            raise ValueError(
                f"VisualPrompts: masks are {tuple(self.positive.shape[-2:])} but the canvas (padded input) is "
                f"{self.geometry.padded_size}."
            )

    def __len__(self) -> int:
        return self.positive.shape[0]

    @property
    def device(self) -> torch.device:
        return self.positive.device

    def to(self, device: torch.device | str) -> VisualPrompts:
        return VisualPrompts(
            self.positive.to(device), self.negative.to(device), list(self.kinds), self.geometry
        )

    def merged(self, clicks: VisualPrompts) -> VisualPrompts:
        """These prompts with ``clicks`` added prompt by prompt (``clicks[i]`` refines prompt ``i``): the
        corrective-click update of SEEM's interactive loop. ``clicks`` must have the same length and canvas."""
        if len(clicks) != len(self) or clicks.positive.shape != self.positive.shape:
            raise ValueError(
                f"VisualPrompts.merged: {len(clicks)} click groups on {tuple(clicks.positive.shape[-2:])} for "
                f"{len(self)} prompts on {tuple(self.positive.shape[-2:])}; pass one group per prompt "
                "(an empty list for a prompt without new clicks)."
            )
        device = self.device
        return VisualPrompts(
            self.positive | clicks.positive.to(device),
            self.negative | clicks.negative.to(device),
            list(self.kinds),
            self.geometry,
        )

    def decoder_inputs(self) -> dict[str, Any]:
        """The ``spatial`` entries of :class:`~seemadapt.model.decoder.SEEMDecoder` for a batch of this one image."""
        return {"pos_masks": [self.positive], "neg_masks": [self.negative]}


# ---------------------------------------------------------------------------------------------------- masks


def resize_to_canvas(masks: Tensor | np.ndarray, geometry: PromptGeometry, thin: bool = False) -> Tensor:
    """Caller-size bool masks ``[n, H, W]`` -> canvas masks ``[n, Hp, Wp]`` (resized to the image, zero-padded).

    ``thin=True`` keeps every marked pixel (max-pooling when shrinking, nearest when growing): right for strokes.
    Otherwise a canvas pixel is on when at least half of it is covered (bilinear with antialiasing): right for
    regions; a mask that this would empty falls back to the thin rule.
    """
    masks = torch.as_tensor(np.asarray(masks) if isinstance(masks, np.ndarray) else masks)
    if masks.dim() != 3 or tuple(masks.shape[-2:]) != geometry.original_size:
        raise ValueError(
            f"Prompt masks must be [n, H, W] at the image size {geometry.original_size}, got "
            f"{tuple(masks.shape)}."
        )
    x = masks.bool().float()[None]
    size = geometry.image_size
    if size == geometry.original_size:
        resized = x[0] > 0.5
    else:
        thin_resized = _resize_thin(x, size)
        if thin:
            resized = thin_resized
        else:
            resized = (
                F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0] >= 0.5
            )
            lost = ~resized.flatten(1).any(1) & x[0].flatten(1).any(1)
            resized[lost] = thin_resized[lost]
    canvas = torch.zeros(len(masks), *geometry.padded_size, dtype=torch.bool, device=masks.device)
    canvas[:, : size[0], : size[1]] = resized
    return canvas


def _resize_thin(x: Tensor, size: Size) -> Tensor:
    """``x [1, n, H, W]`` float -> ``[n, h, w]`` bool keeping every marked pixel."""
    height, width = x.shape[-2:]
    if size[0] <= height and size[1] <= width:
        return F.adaptive_max_pool2d(x, size)[0] > 0
    grown = F.interpolate(x, size=(max(size[0], height), max(size[1], width)), mode="nearest")
    return F.adaptive_max_pool2d(grown, size)[0] > 0


def logits_to_canvas(logits: Tensor, geometry: PromptGeometry, size: Size | None = None) -> Tensor:
    """Caller-size mask logits ``[n, H, W]`` (e.g. ``segment(...)["logits"]``) -> ``[n, *size]`` logits on the
    canvas (``size`` defaults to the padded size; the decoder's memories take the stride-4 size). The inverse of
    :func:`~seemadapt.model.postprocess.resize_mask_logits` up to resampling: bilinear to the image size, padding
    filled with :data:`PAD_LOGIT`, bilinear to ``size``."""
    if logits.dim() != 3 or tuple(logits.shape[-2:]) != geometry.original_size:
        raise ValueError(
            f"prev_mask must be [n, H, W] logits at the image size {geometry.original_size} (a previous result's "
            f"'logits'), got {tuple(logits.shape)}."
        )
    x = logits.float()[None]
    if geometry.image_size != geometry.original_size:
        x = F.interpolate(x, size=geometry.image_size, mode="bilinear", align_corners=False)
    pad_h = geometry.padded_size[0] - geometry.image_size[0]
    pad_w = geometry.padded_size[1] - geometry.image_size[1]
    x = F.pad(x, (0, pad_w, 0, pad_h), value=PAD_LOGIT)
    if size is not None and tuple(size) != geometry.padded_size:
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x[0]


# ---------------------------------------------------------------------------------------------------- points


def group_points(points: Any) -> list[list[tuple[float, float, int]]]:
    """Normalise ``points`` into prompt groups of ``(x, y, label)``.

    A flat list of points (``[(x, y), (x, y, 0), ...]``, or an ``[k, 2|3]`` array) is **one** prompt; a list of
    such lists is one prompt per inner list. A point without a label is positive.
    """
    if isinstance(points, (Tensor, np.ndarray)):
        array = np.asarray(points.cpu() if isinstance(points, Tensor) else points, dtype=np.float64)
        if array.ndim == 2:
            return [_parse_group(array.tolist())]
        if array.ndim == 3:
            return [_parse_group(group.tolist()) for group in array]
        raise ValueError(f"points array must be [k, 2|3] or [groups, k, 2|3], got shape {array.shape}.")
    points = list(points)
    if not points:
        return []
    if all(_is_point(p) for p in points):
        return [_parse_group(points)]
    if all(isinstance(g, (list, tuple, np.ndarray, Tensor)) and not _is_point(g) for g in points):
        return [_parse_group(list(g)) for g in points]
    raise ValueError(
        "points must be a list of (x, y[, label]) tuples (one prompt) or a list of such lists (one prompt each)."
    )


def _is_point(value: Any) -> bool:
    if isinstance(value, (Tensor, np.ndarray)):
        value = np.asarray(value.cpu() if isinstance(value, Tensor) else value).tolist()
    return (
        isinstance(value, (list, tuple))
        and len(value) in (2, 3)
        and all(isinstance(v, (int, float, np.integer, np.floating)) for v in value)
    )


def _parse_group(group: Sequence[Any]) -> list[tuple[float, float, int]]:
    parsed = []
    for point in group:
        if not _is_point(point):
            raise ValueError(f"A point must be (x, y) or (x, y, label), got {point!r}.")
        values = list(np.asarray(point, dtype=np.float64).tolist())
        label = int(values[2]) if len(values) == 3 else 1
        if label not in (0, 1):
            raise ValueError(f"Point labels must be 1 (positive) or 0 (negative), got {values[2]!r}.")
        parsed.append((values[0], values[1], label))
    return parsed


def _check_inside(geometry: PromptGeometry, x: float, y: float, what: str) -> None:
    height, width = geometry.original_size
    if not (-0.5 <= x < width - 0.5 and -0.5 <= y < height - 0.5):
        raise ValueError(
            f"{what} lies outside the {width}x{height} (width x height) image; points are (x, y)."
        )


def _stamp(canvas: np.ndarray, row: int, col: int, size: int, limit: Size) -> None:
    """Mark a ``size`` x ``size`` square centred on ``(row, col)``, clipped to the ``limit`` (image) area."""
    half = (size - 1) // 2
    r0, c0 = max(row - half, 0), max(col - half, 0)
    r1, c1 = min(row - half + size, limit[0]), min(col - half + size, limit[1])
    canvas[r0:r1, c0:c1] = True


def encode_points(
    points: Any,
    geometry: PromptGeometry,
    point_size: int = 3,
    require_positive: bool = True,
) -> VisualPrompts:
    """Point prompts (see :func:`group_points` for grouping) -> one prompt per group.

    Positive points go into ``positive``, negative ones into ``negative``. With ``require_positive`` every group
    needs a positive point (a prompt is the object it points at); corrective clicks may be negative only.
    """
    if point_size < 1:
        raise ValueError(f"point_size must be >= 1, got {point_size}.")
    groups = group_points(points)
    height, width = geometry.padded_size
    positive = np.zeros((len(groups), height, width), dtype=bool)
    negative = np.zeros_like(positive)
    for index, group in enumerate(groups):
        if require_positive and not any(label for _, _, label in group):
            raise ValueError(
                f"Point prompt {index} has no positive point; every prompt needs at least one (x, y, 1) point "
                "(negative-only groups are allowed only as corrective clicks, with prev_prompts)."
            )
        for x, y, label in group:
            _check_inside(geometry, x, y, f"Point {(x, y)} of prompt {index}")
            row, col = geometry.to_canvas(x, y)
            _stamp(positive[index] if label else negative[index], row, col, point_size, geometry.image_size)
    return VisualPrompts(
        torch.from_numpy(positive), torch.from_numpy(negative), ["point"] * len(groups), geometry
    )


# ---------------------------------------------------------------------------------------------------- boxes


def encode_boxes(boxes: Any, geometry: PromptGeometry) -> VisualPrompts:
    """Boxes ``[x0, y0, x1, y1]`` (pixel edges, ``[k, 4]``) -> one filled-box prompt each."""
    array = np.asarray(boxes.cpu() if isinstance(boxes, Tensor) else boxes, dtype=np.float64)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must be [x0, y0, x1, y1] or [k, 4], got shape {array.shape}.")
    sy, sx = geometry.scale
    height, width = geometry.image_size
    positive = torch.zeros(len(array), *geometry.padded_size, dtype=torch.bool)
    for index, (x0, y0, x1, y1) in enumerate(array.tolist()):
        if not (x1 > x0 and y1 > y0):
            raise ValueError(f"Box {index} {[x0, y0, x1, y1]} must have x1 > x0 and y1 > y0.")
        if x1 <= 0 or y1 <= 0 or x0 >= geometry.original_size[1] or y0 >= geometry.original_size[0]:
            raise ValueError(
                f"Box {index} {[x0, y0, x1, y1]} lies outside the {geometry.original_size[1]}x"
                f"{geometry.original_size[0]} (width x height) image."
            )
        # canvas pixel c is inside when its centre c + 0.5 is in [x0 * sx, x1 * sx]
        r0, r1 = max(math.ceil(y0 * sy - 0.5), 0), min(math.floor(y1 * sy - 0.5), height - 1)
        c0, c1 = max(math.ceil(x0 * sx - 0.5), 0), min(math.floor(x1 * sx - 0.5), width - 1)
        if r0 > r1 or c0 > c1:  # thinner than a canvas pixel (or outside): keep the pixel at its centre
            row, col = geometry.to_canvas((x0 + x1) / 2 - 0.5, (y0 + y1) / 2 - 0.5)
            r0 = r1 = row
            c0 = c1 = col
        positive[index, r0 : r1 + 1, c0 : c1 + 1] = True
    return VisualPrompts(positive, torch.zeros_like(positive), ["box"] * len(array), geometry)


# ---------------------------------------------------------------------------------------------------- scribbles


def encode_scribbles(scribbles: Any, geometry: PromptGeometry, width: int = 3) -> VisualPrompts:
    """Scribbles -> one prompt each: a list of polylines (``[(x, y), ...]``, drawn ``width`` canvas pixels wide)
    or bool masks ``[H, W]`` / ``[n, H, W]`` at the image size (resized keeping thin strokes)."""
    if width < 1:
        raise ValueError(f"scribble width must be >= 1, got {width}.")
    if isinstance(scribbles, (Tensor, np.ndarray)):
        masks = torch.as_tensor(np.asarray(scribbles) if isinstance(scribbles, np.ndarray) else scribbles)
        if masks.dim() == 2:
            masks = masks[None]
        positive = resize_to_canvas(masks, geometry, thin=True).cpu()
        return VisualPrompts(positive, torch.zeros_like(positive), ["scribble"] * len(positive), geometry)
    lines = list(scribbles)
    sy, sx = geometry.scale
    height, width_img = geometry.image_size
    positive = np.zeros((len(lines), *geometry.padded_size), dtype=np.uint8)
    for index, line in enumerate(lines):
        points = np.asarray(line.cpu() if isinstance(line, Tensor) else line, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
            raise ValueError(
                f"Scribble {index} must be a polyline [(x, y), ...] with at least one point, got shape "
                f"{points.shape}; pass bool masks as one [n, H, W] tensor or array."
            )
        cols = np.clip(np.floor((points[:, 0] + 0.5) * sx), 0, width_img - 1).astype(np.int32)
        rows = np.clip(np.floor((points[:, 1] + 0.5) * sy), 0, height - 1).astype(np.int32)
        image = np.zeros((height, width_img), dtype=np.uint8)
        if len(points) == 1:
            _stamp(image.view(bool), int(rows[0]), int(cols[0]), width, (height, width_img))
        else:
            vertices = np.stack([cols, rows], axis=1)[:, None, :]
            cv2.polylines(image, [vertices], isClosed=False, color=1, thickness=width, lineType=cv2.LINE_8)
        positive[index, :height, :width_img] = image
    positive_t = torch.from_numpy(positive.astype(bool))
    return VisualPrompts(positive_t, torch.zeros_like(positive_t), ["scribble"] * len(lines), geometry)


def encode_masks(mask: Any, geometry: PromptGeometry) -> VisualPrompts:
    """Mask prompts ``[H, W]`` or ``[n, H, W]`` at the image size -> one prompt each (majority resize)."""
    masks = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask)
    if masks.dim() == 2:
        masks = masks[None]
    positive = resize_to_canvas(masks, geometry).cpu()
    return VisualPrompts(positive, torch.zeros_like(positive), ["mask"] * len(positive), geometry)


def encode_prompts(
    geometry: PromptGeometry,
    points: Any = None,
    boxes: Any = None,
    scribbles: Any = None,
    mask: Any = None,
    *,
    point_size: int = 3,
    scribble_width: int = 3,
    require_positive: bool = True,
    device: torch.device | str | None = None,
) -> VisualPrompts:
    """All visual prompts of one image on its canvas, in the order points, boxes, scribbles, masks.

    Every prompt must mark at least one pixel of the image (``require_positive``), so none is silently ignored.
    """
    parts: list[VisualPrompts] = []
    if points is not None:
        parts.append(encode_points(points, geometry, point_size, require_positive=require_positive))
    if boxes is not None:
        parts.append(encode_boxes(boxes, geometry))
    if scribbles is not None:
        parts.append(encode_scribbles(scribbles, geometry, scribble_width))
    if mask is not None:
        parts.append(encode_masks(mask, geometry))
    parts = [p for p in parts if len(p)]
    if not parts:
        empty = torch.zeros(0, *geometry.padded_size, dtype=torch.bool)
        prompts = VisualPrompts(empty, empty.clone(), [], geometry)
    else:
        prompts = VisualPrompts(
            torch.cat([p.positive for p in parts]),
            torch.cat([p.negative for p in parts]),
            [kind for p in parts for kind in p.kinds],
            geometry,
        )
    if require_positive:
        empty_prompts = [i for i in range(len(prompts)) if not bool(prompts.positive[i].any())]
        if empty_prompts:
            raise ValueError(
                f"Visual prompts {empty_prompts} ({[prompts.kinds[i] for i in empty_prompts]}) mark no pixel of "
                "the image; check their coordinates against the image size."
            )
    return prompts.to(device) if device is not None else prompts
