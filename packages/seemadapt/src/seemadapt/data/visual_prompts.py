"""Random visual prompts drawn inside instance masks, for SEEM's interactive (spatial) training.

SEEM trains its visual-prompt branch on prompts it simulates from the ground-truth instances: up to
``max_candidate`` instances are picked at random and each gets one shape drawn inside it, chosen with equal
probability among

* ``point``: 1..20 random pixels of the mask;
* ``polygon``: a smooth closed curve through 1..9 random pixels of the mask (the outline only, as SEEM draws it);
* ``scribble``: 1..5 thin free-form brush strokes (3..10 or 2..5 pixels wide) starting in the mask;
* ``circle``: 1..5 thick "object-like" strokes (10..50 pixels wide) starting in the mask.

Strokes follow the free-form mask algorithm of Yu et al. (gated convolution inpainting) that SEEM uses: a head moves
with a randomly accelerating speed and heading, leaving a polyline of vertices drawn with a round brush; then the
whole stroke drifts and half its vertices jitter once. Every shape is clipped to its instance mask. A mask with fewer
than ``min_area`` pixels, or whose shape ends up empty, gets an empty prompt and an empty target (type ``"none"``),
which the spatial losses skip; an image without instances gets one such empty candidate.

Differences from the official sampler, on purpose: the polygon outline is clipped to the mask too (officially only
to the box, so part of a "positive" outline could lie on the background); every random draw comes from one
``numpy.random.Generator`` (no global ``random``/``numpy``/``torch`` state), so a seed fixes the output. Pixel sizes
(speeds, brush widths) are the official ones, tuned for SEEM's 1024-pixel training crops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CIRCLE_PRESETS",
    "SCRIBBLE_PRESETS",
    "SHAPES",
    "SpatialSample",
    "StrokePreset",
    "VisualPromptSampler",
    "VisualSamplerConfig",
    "as_numpy_rng",
    "draw_circle",
    "draw_point",
    "draw_polygon",
    "draw_scribble",
    "draw_strokes",
    "smooth_closed_curve",
]

SHAPES = ("point", "polygon", "scribble", "circle")


@dataclass(frozen=True)
class StrokePreset:
    """Free-form stroke parameters (pixels, radians).

    Attributes:
        vertices: ``[low, high)`` number of steps of the head.
        max_head_speed: the head's speed is clipped to ``[0, max_head_speed]``.
        head_acceleration: per step, speed and heading change by ``U(-a, a)`` each.
        brush_width: ``[low, high)`` brush width.
        move_ratio: share of vertices jittered when the stroke moves.
        max_point_move: jitter range ``[-m, m)`` per coordinate.
        max_init_speed: the whole stroke drifts by ``|N(0, max_init_speed / 2)|`` in a random direction.
    """

    vertices: tuple[int, int]
    max_head_speed: float
    head_acceleration: tuple[float, float]
    brush_width: tuple[int, int]
    move_ratio: float
    max_point_move: int
    max_init_speed: float


#: Thin scribbles (SEEM's ``rand_curve`` / ``rand_curve_small``).
SCRIBBLE_PRESETS: dict[str, StrokePreset] = {
    "rand_curve": StrokePreset((10, 30), 20, (15, 0.5), (3, 10), 0.5, 3, 6),
    "rand_curve_small": StrokePreset((6, 22), 12, (8, 0.5), (2, 5), 0.5, 1, 3),
}
#: Thick blobs (SEEM's ``object_like`` / ``object_like_middle`` / ``object_like_small``).
CIRCLE_PRESETS: dict[str, StrokePreset] = {
    "object_like": StrokePreset((5, 30), 15, (10, 1.5), (20, 50), 0.5, 10, 10),
    "object_like_middle": StrokePreset((5, 15), 8, (4, 1.5), (20, 50), 0.5, 5, 10),
    "object_like_small": StrokePreset((5, 20), 7, (3.5, 1.5), (10, 30), 0.5, 5, 4),
}


@dataclass
class VisualSamplerConfig:
    """Settings of :class:`VisualPromptSampler` (defaults: SEEM's ``STROKE_SAMPLER`` config).

    Attributes:
        max_candidate: instances prompted per image (at most).
        shape_probs: probability of each shape in :data:`SHAPES` (normalised; 0 disables a shape).
        min_area: masks with fewer pixels get no prompt.
        max_points: most pixels of a ``point`` prompt.
        max_polygon_vertices: most vertices of a ``polygon``.
        max_strokes: most strokes of a ``scribble`` / ``circle``.
        scribble_presets / circle_presets: stroke presets, each drawn with equal probability.
    """

    max_candidate: int = 10
    shape_probs: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SHAPES, 0.25))
    min_area: int = 10
    max_points: int = 20
    max_polygon_vertices: int = 9
    max_strokes: int = 5
    scribble_presets: tuple[StrokePreset, ...] = tuple(SCRIBBLE_PRESETS.values())
    circle_presets: tuple[StrokePreset, ...] = tuple(CIRCLE_PRESETS.values())

    def __post_init__(self) -> None:
        if self.max_candidate < 1:
            raise ValueError(f"VisualSamplerConfig.max_candidate must be >= 1, got {self.max_candidate}.")
        unknown = set(self.shape_probs) - set(SHAPES)
        if unknown:
            raise ValueError(
                f"VisualSamplerConfig.shape_probs: unknown shapes {sorted(unknown)}; use {SHAPES}."
            )
        if any(p < 0 for p in self.shape_probs.values()) or sum(self.shape_probs.values()) <= 0:
            raise ValueError("VisualSamplerConfig.shape_probs must be >= 0 with a positive sum.")
        for name in ("min_area", "max_points", "max_polygon_vertices", "max_strokes"):
            if getattr(self, name) < 1:
                raise ValueError(f"VisualSamplerConfig.{name} must be >= 1, got {getattr(self, name)}.")
        if not self.scribble_presets or not self.circle_presets:
            raise ValueError(
                "VisualSamplerConfig: scribble_presets and circle_presets need at least one preset."
            )


@dataclass
class SpatialSample:
    """Prompts of one image (SEEM's ``spatial_query``).

    Attributes:
        gt_masks: ``[c, H, W]`` bool target of each prompt (all False for a ``"none"`` prompt).
        rand_shape: ``[c, H, W]`` bool the drawn prompt, inside its target.
        types: the shape of each prompt, or ``"none"``.
        indices: the instance each prompt was drawn from (-1 for the empty candidate of an empty image).
    """

    gt_masks: Tensor
    rand_shape: Tensor
    types: list[str]
    indices: list[int]

    def __len__(self) -> int:
        return len(self.types)


def as_numpy_rng(rng: np.random.Generator | torch.Generator | int | None) -> np.random.Generator:
    """A ``numpy.random.Generator`` from a seed, a numpy generator (returned as is) or a ``torch.Generator`` (one
    draw from it seeds the numpy generator, so a seeded torch generator gives a reproducible stream)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=rng, device=rng.device).item())
        return np.random.default_rng(seed)
    if rng is None:
        raise ValueError(
            "A seed or generator is required: the visual prompt sampler never uses global random state."
        )
    return np.random.default_rng(int(rng))


class VisualPromptSampler:
    """Draw one random visual prompt inside each of up to ``max_candidate`` instance masks.

    >>> sampler = VisualPromptSampler(VisualSamplerConfig(max_candidate=4))
    >>> sample = sampler(instance_masks, rng=0)           # doctest: +SKIP
    >>> sample.rand_shape.shape, sample.types              # doctest: +SKIP
    """

    def __init__(self, config: VisualSamplerConfig | None = None) -> None:
        self.config = config if config is not None else VisualSamplerConfig()
        names = [name for name in SHAPES if self.config.shape_probs.get(name, 0.0) > 0]
        probs = np.array([self.config.shape_probs[name] for name in names], dtype=np.float64)
        self._shapes = names
        self._probs = probs / probs.sum()

    def __call__(self, masks: Any, rng: np.random.Generator | torch.Generator | int | None) -> SpatialSample:
        """``masks``: bool ``[N, H, W]`` (tensor, array or detectron2 ``BitMasks``). Returns a :class:`SpatialSample`
        on the CPU."""
        masks = getattr(masks, "tensor", masks)
        array = np.asarray(masks.detach().cpu() if isinstance(masks, Tensor) else masks).astype(bool)
        if array.ndim != 3:
            raise ValueError(f"VisualPromptSampler: masks must be [N, H, W], got shape {array.shape}.")
        generator = as_numpy_rng(rng)
        height, width = array.shape[-2:]
        if len(array) == 0:
            empty = torch.zeros(1, height, width, dtype=torch.bool)
            return SpatialSample(empty, empty.clone(), ["none"], [-1])
        order = generator.permutation(len(array))[: self.config.max_candidate]
        choices = generator.choice(len(self._shapes), size=len(order), p=self._probs)
        gts, shapes, types = [], [], []
        for index, choice in zip(order.tolist(), choices.tolist()):
            name = self._shapes[choice]
            mask = array[index]
            shape = self.draw(name, mask, generator)
            if not shape.any():
                gts.append(np.zeros_like(mask))
                types.append("none")
            else:
                gts.append(mask)
                types.append(name)
            shapes.append(shape)
        return SpatialSample(
            torch.from_numpy(np.stack(gts)),
            torch.from_numpy(np.stack(shapes)),
            types,
            order.tolist(),
        )

    def draw(self, shape: str, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One ``shape`` inside ``mask [H, W]`` (all False when the mask has fewer than ``min_area`` pixels)."""
        c = self.config
        if int(mask.sum()) < c.min_area:
            return np.zeros_like(mask, dtype=bool)
        if shape == "point":
            return draw_point(mask, rng, c.max_points)
        if shape == "polygon":
            return draw_polygon(mask, rng, c.max_polygon_vertices)
        if shape == "scribble":
            return draw_scribble(mask, rng, c.max_strokes, c.scribble_presets)
        if shape == "circle":
            return draw_circle(mask, rng, c.max_strokes, c.circle_presets)
        raise ValueError(f"Unknown shape {shape!r}; use one of {SHAPES}.")


# ---------------------------------------------------------------------------------------------------- shapes


def _random_pixels(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct pixels of ``mask`` as ``[count, 2]`` (row, col)."""
    pixels = np.argwhere(mask)
    chosen = rng.choice(len(pixels), size=min(count, len(pixels)), replace=False)
    return pixels[np.sort(chosen)]


def draw_point(mask: np.ndarray, rng: np.random.Generator, max_points: int = 20) -> np.ndarray:
    """1..``max_points`` random pixels of ``mask``."""
    area = int(mask.sum())
    count = int(rng.integers(1, min(max_points, area) + 1))
    out = np.zeros(mask.shape, dtype=bool)
    rows, cols = _random_pixels(mask, count, rng).T
    out[rows, cols] = True
    return out


def smooth_closed_curve(
    vertices: np.ndarray, handle: float = 0.2, samples_per_pixel: float = 2.0
) -> np.ndarray:
    """Dense points ``[m, 2]`` on a smooth closed curve through ``vertices [k, 2]`` (any 2-D coordinates).

    The vertices are ordered by angle around their centroid; consecutive vertices are joined by cubic Bézier
    segments whose handles follow the vertex tangents (the mean direction of the adjacent edges) with a length of
    ``handle`` times the chord, so the curve passes through every vertex without corners.
    """
    points = np.asarray(vertices, dtype=np.float64)
    if len(points) == 1:
        return points.copy()
    centred = points - points.mean(axis=0)
    points = points[np.argsort(np.arctan2(centred[:, 0], centred[:, 1]), kind="stable")]
    following = np.roll(points, -1, axis=0)
    edges = following - points
    lengths = np.linalg.norm(edges, axis=1)
    units = edges / np.maximum(lengths, 1e-9)[:, None]
    tangents = units + np.roll(units, 1, axis=0)  # outgoing + incoming edge direction
    norms = np.linalg.norm(tangents, axis=1)
    tangents = np.where(norms[:, None] > 1e-6, tangents / np.maximum(norms, 1e-9)[:, None], units)
    curves = []
    for i in range(len(points)):
        p0, p3 = points[i], following[i]
        j = (i + 1) % len(points)
        p1 = p0 + handle * lengths[i] * tangents[i]
        p2 = p3 - handle * lengths[i] * tangents[j]
        count = max(2, int(np.ceil(samples_per_pixel * (lengths[i] * (1 + 2 * handle) + 1))))
        t = np.linspace(0.0, 1.0, count)[:, None]
        curves.append((1 - t) ** 3 * p0 + 3 * (1 - t) ** 2 * t * p1 + 3 * (1 - t) * t**2 * p2 + t**3 * p3)
    return np.concatenate(curves)


def draw_polygon(mask: np.ndarray, rng: np.random.Generator, max_vertices: int = 9) -> np.ndarray:
    """The outline of a smooth closed curve through 1..``max_vertices`` random pixels of ``mask``, inside its box
    and clipped to the mask (its vertices always are)."""
    area = int(mask.sum())
    count = int(rng.integers(1, min(max_vertices, area) + 1))
    vertices = _random_pixels(mask, count, rng).astype(np.float64)
    rows, cols = np.nonzero(mask)
    curve = np.rint(smooth_closed_curve(vertices)).astype(np.int64)
    curve[:, 0] = np.clip(curve[:, 0], rows.min(), rows.max())
    curve[:, 1] = np.clip(curve[:, 1], cols.min(), cols.max())
    out = np.zeros(mask.shape, dtype=bool)
    out[curve[:, 0], curve[:, 1]] = True
    out[vertices[:, 0].astype(np.int64), vertices[:, 1].astype(np.int64)] = True
    return out & mask


def _stroke_vertices(start: np.ndarray, preset: StrokePreset, rng: np.random.Generator) -> np.ndarray:
    """Vertices ``[k, 2]`` (x, y) of one stroke: a head moving with random acceleration from ``start``."""
    steps = int(rng.integers(preset.vertices[0], preset.vertices[1]))
    angle = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(0, preset.max_head_speed)
    vertices = [start.astype(np.float64)]
    for _ in range(steps):
        speed = float(
            np.clip(speed + rng.uniform(-1, 1) * preset.head_acceleration[0], 0, preset.max_head_speed)
        )
        angle = angle + rng.uniform(-1, 1) * preset.head_acceleration[1]
        vertices.append(vertices[-1] + speed * np.array([np.sin(angle), np.cos(angle)]))
    return np.stack(vertices)


def _move_stroke(vertices: np.ndarray, preset: StrokePreset, rng: np.random.Generator) -> np.ndarray:
    """Drift the whole stroke once and jitter ``move_ratio`` of its vertices."""
    speed = abs(rng.normal(0, preset.max_init_speed / 2))
    angle = rng.uniform(0, 2 * np.pi)
    moved = vertices + np.trunc(speed * np.array([np.cos(angle), np.sin(angle)]))
    chosen = rng.permutation(len(moved))[: int(len(moved) * preset.move_ratio)]
    if preset.max_point_move > 0 and len(chosen):
        moved[chosen] += rng.integers(-preset.max_point_move, preset.max_point_move, size=(len(chosen), 2))
    return moved


def draw_strokes(
    mask: np.ndarray,
    rng: np.random.Generator,
    max_strokes: int,
    presets: tuple[StrokePreset, ...],
) -> np.ndarray:
    """1..``max_strokes`` free-form brush strokes starting at random pixels of ``mask``, clipped to it. One preset
    (drawn uniformly) serves all strokes of the call."""
    preset = presets[int(rng.integers(len(presets)))]
    area = int(mask.sum())
    count = int(rng.integers(1, min(max_strokes, area) + 1))
    starts = _random_pixels(mask, count, rng)[:, ::-1]  # (x, y)
    canvas = np.zeros(mask.shape, dtype=np.uint8)
    for start in starts:
        width = int(rng.integers(preset.brush_width[0], preset.brush_width[1]))
        vertices = _move_stroke(_stroke_vertices(start, preset, rng), preset, rng)
        pts = np.rint(vertices).astype(np.int32)
        cv2.polylines(canvas, [pts[:, None, :]], isClosed=False, color=1, thickness=max(width, 1))
        radius = width // 2 - 1
        if radius > 0:
            for x, y in pts:
                cv2.circle(canvas, (int(x), int(y)), radius, 1, thickness=-1)
    return canvas.astype(bool) & mask


def draw_scribble(
    mask: np.ndarray,
    rng: np.random.Generator,
    max_strokes: int = 5,
    presets: tuple[StrokePreset, ...] = tuple(SCRIBBLE_PRESETS.values()),
) -> np.ndarray:
    """Thin free-form strokes inside ``mask``."""
    return draw_strokes(mask, rng, max_strokes, presets)


def draw_circle(
    mask: np.ndarray,
    rng: np.random.Generator,
    max_strokes: int = 5,
    presets: tuple[StrokePreset, ...] = tuple(CIRCLE_PRESETS.values()),
) -> np.ndarray:
    """Thick, blob-like strokes inside ``mask``."""
    return draw_strokes(mask, rng, max_strokes, presets)
