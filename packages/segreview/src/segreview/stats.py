"""Per-class statistics of a dataset from its ``segments_info`` alone (no image is decoded)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import datasets

from segcontract import Category

__all__ = ["ClassStats", "class_statistics", "row_classes", "void_fractions"]


@dataclass(frozen=True)
class ClassStats:
    """``pixels`` and ``instances`` (segments) of a class, the ``images`` showing it, and ``ignore_share``: the
    mean share of void/ignored pixels in those images (how unsure the masks around this class are)."""

    name: str
    pixels: int
    instances: int
    images: int
    ignore_share: float


def _columns(dataset: datasets.Dataset, indices: Sequence[int] | None) -> tuple[list, list, list]:
    view = dataset.select_columns(["segments_info", "width", "height"])
    if indices is not None:
        view = view.select(list(indices))
    table = view.with_format("arrow")[:]
    return (
        table.column("segments_info").to_pylist(),
        table.column("width").to_pylist(),
        table.column("height").to_pylist(),
    )


def void_fractions(dataset: datasets.Dataset) -> list[float]:
    """Per row, the share of pixels no segment covers (void in panoptic, ignore in semantic)."""
    segments, widths, heights = _columns(dataset, None)
    return [
        1.0 - sum(s["area"] for s in segs) / max(w * h, 1) for segs, w, h in zip(segments, widths, heights)
    ]


def row_classes(dataset: datasets.Dataset) -> list[set[int]]:
    """Per row, the class ids its segments show."""
    column = dataset.select_columns(["segments_info"]).with_format("arrow")[:].column("segments_info")
    return [{int(s["category_id"]) for s in segs} for segs in column.to_pylist()]


def class_statistics(
    dataset: datasets.Dataset, categories: Sequence[Category], indices: Sequence[int] | None = None
) -> list[ClassStats]:
    """One :class:`ClassStats` per category, over ``indices`` (all rows by default)."""
    pixels = [0] * len(categories)
    instances = [0] * len(categories)
    images = [0] * len(categories)
    ignore = [0.0] * len(categories)
    for segs, width, height in zip(*_columns(dataset, indices)):
        void = 1.0 - sum(s["area"] for s in segs) / max(width * height, 1)
        for cat in {int(s["category_id"]) for s in segs}:
            images[cat] += 1
            ignore[cat] += void
        for s in segs:
            pixels[int(s["category_id"])] += int(s["area"])
            instances[int(s["category_id"])] += 1
    return [
        ClassStats(
            c.name,
            pixels[c.id],
            instances[c.id],
            images[c.id],
            ignore[c.id] / images[c.id] if images[c.id] else 0.0,
        )
        for c in categories
    ]
