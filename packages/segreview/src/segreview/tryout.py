"""The model try-out: SEEM (a checkpoint or a preset such as ``tiny``) with optional adapters, run on one image
with classes (semantic, panoptic), a sentence (grounding) or clicked points and a box (visual prompts)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seemadapt import SEEM, load_model
from seemadapt.model.config import PRESETS
from segcontract import blend_regions, default_color
from segreview.paths import Roots

__all__ = ["CLICK_MODES", "TASKS", "Prediction", "TryOut", "mark_points", "parse_classes"]

#: What the try-out tab can ask the model.
TASKS = ("semantic", "panoptic", "grounding", "visual prompt")
#: What a click on the image adds: a point on the object, a point off it, or a corner of a box (two make one).
CLICK_MODES = ("point on the object", "point off the object", "box corner")
_PROMPT_COLORS = ((255, 64, 64), (64, 160, 255), (64, 220, 120), (255, 200, 40))


@dataclass(frozen=True)
class Prediction:
    """An overlay and ``(label, score, pixels)`` per predicted class, sentence or prompted object."""

    overlay: np.ndarray
    scores: list[tuple[str, float, int]]


def parse_classes(text: str) -> list[str]:
    """Class names typed as a comma- or line-separated list."""
    return [name.strip() for name in text.replace("\n", ",").split(",") if name.strip()]


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _local(name: str, roots: Roots | None) -> str:
    """A local path confined to ``roots``; names that are not local paths (presets, Hub ids) pass unchanged."""
    path = Path(name).expanduser()
    if roots is not None and (path.is_absolute() or path.exists() or name.startswith((".", "~"))):
        return str(roots.resolve(path))
    return name


def mark_points(
    image: np.ndarray,
    points: Sequence[tuple[int, int, int]],
    radius: int = 0,
    box: Sequence[int] | None = None,
) -> np.ndarray:
    """``image`` with each clicked point drawn as a dot (green on the object, red off it) and ``box`` outlined."""
    out = np.array(image, copy=True)
    if box is not None:
        x0, y0, x1, y1 = (int(v) for v in box)
        out[y0 : y1 + 1, [x0, min(x1, out.shape[1] - 1)]] = (255, 220, 0)
        out[[y0, min(y1, out.shape[0] - 1)], x0 : x1 + 1] = (255, 220, 0)
    height, width = out.shape[:2]
    radius = radius or max(2, min(height, width) // 60)
    yy, xx = np.mgrid[0:height, 0:width]
    for x, y, label in points:
        disc = (xx - x) ** 2 + (yy - y) ** 2 <= radius**2
        out[disc] = (40, 220, 60) if label else (230, 40, 40)
    return out


@dataclass
class TryOut:
    """The state behind the try-out tab: the loaded model and the points clicked on the current image."""

    model: SEEM | None = None
    description: str = ""
    points: list[tuple[int, int, int]] = field(default_factory=list)
    corners: list[tuple[int, int]] = field(default_factory=list)

    def load(self, name: str, adapters: str | None = None, roots: Roots | None = None) -> str:
        """Load ``name`` (a preset such as ``tiny``, a checkpoint file or Hub id) with optional ``adapters``."""
        name = (name or "").strip() or "tiny"
        adapters = (adapters or "").strip() or None
        model_name = name if name in PRESETS else _local(name, roots)
        self.model = load_model(model_name, adapters=_local(adapters, roots) if adapters else None)
        params = sum(p.numel() for p in self.model.parameters())
        self.description = (
            f"SEEM {name}" + (f" + adapters {adapters}" if adapters else "") + f" ({params:,} parameters)"
        )
        return self.description

    def _require_model(self) -> SEEM:
        if self.model is None:
            raise RuntimeError("Load a model first (tiny, a checkpoint, or adapters).")
        return self.model

    def click(self, x: int, y: int, mode: str = CLICK_MODES[0]) -> None:
        """Add a point on or off the object, or a box corner (a third corner starts a new box)."""
        if mode not in CLICK_MODES:
            raise ValueError(f"click mode must be one of {CLICK_MODES}, got {mode!r}.")
        if mode == "box corner":
            self.corners = [*self.corners, (int(x), int(y))] if len(self.corners) < 2 else [(int(x), int(y))]
        else:
            self.points.append((int(x), int(y), 1 if mode == CLICK_MODES[0] else 0))

    @property
    def box(self) -> list[int] | None:
        """The box the two clicked corners span (``x0, y0, x1, y1``), None until both are clicked."""
        if len(self.corners) != 2:
            return None
        (xa, ya), (xb, yb) = self.corners
        return [min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)]

    def clear(self) -> None:
        self.points.clear()
        self.corners.clear()

    def describe_prompts(self) -> str:
        box = f", box {tuple(self.box)}" if self.box else (", one box corner" if self.corners else "")
        return f"{len(self.points)} point(s){box}"

    def semantic(self, image: np.ndarray, classes: Sequence[str]) -> Prediction:
        result = self._require_model().predict(image, list(classes), task="semantic")
        probs, labels = _numpy(result["sem_seg"]), _numpy(result["labels"])
        regions, scores = [], []
        for k, name in enumerate(classes):
            mask = labels == k
            color = default_color(k)
            regions.append((mask, color))
            scores.append((name, float(probs[k][mask].mean()) if mask.any() else 0.0, int(mask.sum())))
        return Prediction(blend_regions(image, regions), scores)

    def panoptic(
        self, image: np.ndarray, classes: Sequence[str], things: Sequence[str] | None = None
    ) -> Prediction:
        result = self._require_model().predict(image, list(classes), task="panoptic", thing_classes=things)
        ids = _numpy(result["panoptic_seg"])
        regions, scores = [], []
        for segment in result["segments_info"]:
            mask = ids == int(segment["id"])
            cat = int(segment["category_id"])
            regions.append((mask, default_color(cat)))
            scores.append(
                (f"{classes[cat]} #{segment['id']}", float(segment.get("score", 0.0)), int(mask.sum()))
            )
        return Prediction(blend_regions(image, regions), scores)

    def ground(self, image: np.ndarray, sentence: str) -> Prediction:
        result = self._require_model().ground(image, sentence)
        return self._masks(image, [sentence], result["masks"], result["scores"])

    def visual(self, image: np.ndarray, box: Sequence[int] | None = None) -> Prediction:
        """Segment the object under the clicked points and/or inside ``box`` (default: the clicked box)."""
        box = box if box is not None else self.box
        if not self.points and box is None:
            raise ValueError("Click a point on the image (or give a box) first.")
        points = list(self.points) or None
        result = self._require_model().segment(image, points=points, boxes=list(box) if box else None)
        labels = (["clicked object"] if points else []) + (["box"] if box else [])
        shown = self._masks(image, labels, result["masks"], result["scores"])
        return Prediction(mark_points(shown.overlay, self.points, box=box), shown.scores)

    @staticmethod
    def _masks(image: np.ndarray, labels: Sequence[str], masks: Any, scores: Any) -> Prediction:
        masks, scores = _numpy(masks).astype(bool), _numpy(scores).reshape(-1)
        regions = [(m, _PROMPT_COLORS[k % len(_PROMPT_COLORS)]) for k, m in enumerate(masks)]
        rows = [
            (labels[k] if k < len(labels) else f"object {k}", float(scores[k]), int(m.sum()))
            for k, m in enumerate(masks)
        ]
        return Prediction(blend_regions(image, regions), rows)
