"""Dataset health: per-class pixels and instances, ignored pixels, and prompts whose class got no mask.

Everything is read from ``segments_info``, ``width``/``height`` and ``prompt``: no image is decoded, so the report is
cheap on any size. Unlabelled pixels (uncertain, dropped specks) are exactly the pixels no segment covers.

A class counts as *prompted* in a sample when one of its aliases (name, synonyms, prompt words) appears in the prompt
as a whole word, plural ``s``/``es`` allowed. A prompted class with no segment is the usual sign of a failed
attention map (or a class SD does not draw), and is listed per image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from datasets import Dataset

from diffsynth.categories import Category
from diffsynth.dataset import categories_of

__all__ = ["format_health", "health_report", "prompted_classes"]


def _pattern(category: Category) -> re.Pattern[str]:
    words = sorted(category.aliases, key=len, reverse=True)
    alternatives = "|".join(r"\s+".join(re.escape(p) for p in w.lower().split()) for w in words)
    return re.compile(rf"(?<![\w-])(?:{alternatives})(?:e?s)?(?![\w-])", re.IGNORECASE)


def prompted_classes(prompt: str, categories: Sequence[Category]) -> list[int]:
    """Indices of the categories named in ``prompt`` (whole words, case-insensitive, plural allowed)."""
    if not prompt:
        return []
    return [i for i, c in enumerate(categories) if _pattern(c).search(prompt)]


def health_report(ds: Dataset) -> dict[str, Any]:
    """Per-class statistics and warnings for ``ds`` (a contract Dataset)."""
    categories = categories_of(ds)
    patterns = [_pattern(c) for c in categories]
    k = len(categories)
    pixels = [0] * k
    instances = [0] * k
    images_with = [0] * k
    prompted = [0] * k
    missing = [0] * k
    total_pixels = labelled = 0
    empty_images: list[int] = []
    missing_by_image: list[dict[str, Any]] = []
    view = ds.select_columns(["image_id", "width", "height", "segments_info", "prompt"])
    for row in view:
        total_pixels += row["width"] * row["height"]
        present: set[int] = set()
        for seg in row["segments_info"]:
            cat = seg["category_id"]
            pixels[cat] += seg["area"]
            instances[cat] += 1
            labelled += seg["area"]
            present.add(cat)
        for cat in present:
            images_with[cat] += 1
        if not row["segments_info"]:
            empty_images.append(row["image_id"])
        prompt = row["prompt"] or ""
        absent = []
        for cat, pattern in enumerate(patterns):
            if prompt and pattern.search(prompt):
                prompted[cat] += 1
                if cat not in present:
                    missing[cat] += 1
                    absent.append(categories[cat].name)
        if absent:
            missing_by_image.append({"image_id": row["image_id"], "prompt": prompt, "missing": absent})
    classes = []
    for i, c in enumerate(categories):
        classes.append(
            {
                "index": i,
                "name": c.name,
                "isthing": c.isthing,
                "pixels": pixels[i],
                "pixel_fraction": pixels[i] / total_pixels if total_pixels else 0.0,
                "instances": instances[i],
                "images": images_with[i],
                "prompted_images": prompted[i],
                "missing_when_prompted": missing[i],
            }
        )
    return {
        "num_images": len(view),
        "total_pixels": total_pixels,
        "ignore_fraction": 1.0 - labelled / total_pixels if total_pixels else 0.0,
        "classes": classes,
        "images_without_segments": empty_images,
        "prompted_but_missing": missing_by_image,
    }


def format_health(report: dict[str, Any]) -> str:
    """A Markdown table of :func:`health_report` (used in the dataset card and for printing)."""
    lines = [
        "| # | class | type | pixels | pixel % | instances | images | prompted | missing when prompted |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["classes"]:
        lines.append(
            f"| {c['index']} | {c['name']} | {'thing' if c['isthing'] else 'stuff'} | {c['pixels']} | "
            f"{100 * c['pixel_fraction']:.2f} | {c['instances']} | {c['images']} | {c['prompted_images']} | "
            f"{c['missing_when_prompted']} |"
        )
    lines.append("")
    lines.append(
        f"{report['num_images']} images; ignored (void) pixels: {100 * report['ignore_fraction']:.2f} %; "
        f"images without any segment: {len(report['images_without_segments'])}; "
        f"images where a prompted class got no pixels: {len(report['prompted_but_missing'])}."
    )
    return "\n".join(lines)
