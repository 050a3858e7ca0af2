"""Tiny, fully valid contract datasets drawn from simple shapes: for tests, examples and smoke runs.

No model and no download: rectangles and ellipses on a stuff background, with panoptic, semantic and grounding
annotations that follow the contract exactly, so every reader of the contract can be tested offline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import datasets
import numpy as np
from scipy import ndimage

from segcontract.category import Category
from segcontract.features import contract_features
from segcontract.rows import make_row

__all__ = ["make_contract_dataset"]


def _shape_mask(kind: str, h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.zeros((h, w), dtype=bool)
    if kind == "rectangle":
        mask[y0:y1, x0:x1] = True
        return mask
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy = (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2
    rx, ry = max((x1 - x0) / 2, 1), max((y1 - y0) / 2, 1)
    return ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0


def _where_words(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    horizontal = "left" if xs.mean() < w / 2 else "right"
    vertical = "top" if ys.mean() < h / 2 else "bottom"
    return f"{vertical} {horizontal}"


def _check_arguments(num_images: int, size: tuple[int, int], names: list[str], stuff: Sequence[str]) -> None:
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    if int(size[0]) < 8 or int(size[1]) < 8:
        raise ValueError(f"size must be at least (8, 8) pixels, got {size}.")
    unknown = [s for s in stuff if s not in names]
    if unknown:
        raise ValueError(f"stuff names {unknown} are not in classes {names}.")
    if all(n in stuff for n in names):
        raise ValueError("classes must contain at least one thing (a class not listed in `stuff`).")


def _stuff_segments(ids: np.ndarray, stuffs: Sequence[Category]) -> list[dict]:
    """The first stuff class fills the image, a second one the top quarter."""
    segments: list[dict] = []
    for k, stuff in enumerate(stuffs[:2]):
        if k == 0:
            ids[:] = len(segments) + 1
        else:
            ids[: max(ids.shape[0] // 4, 1)] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "category_id": stuff.id, "isthing": False})
    return segments


def _draw_things(
    rng: np.random.Generator,
    ids: np.ndarray,
    segments: list[dict],
    things: Sequence[Category],
    max_shapes: int,
    void_border: bool,
) -> None:
    """Paint 1..max_shapes shapes into ``ids`` (later ones occlude), with an optional void ring around each."""
    height, width = ids.shape
    kinds = {c.id: ("rectangle" if k % 2 == 0 else "ellipse") for k, c in enumerate(things)}
    border = np.zeros((height, width), dtype=bool)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        cat = things[int(rng.integers(len(things)))]
        bw = int(rng.integers(max(width // 5, 3), max(width // 2, 4) + 1))
        bh = int(rng.integers(max(height // 5, 3), max(height // 2, 4) + 1))
        x0 = int(rng.integers(0, width - bw + 1))
        y0 = int(rng.integers(0, height - bh + 1))
        mask = _shape_mask(kinds[cat.id], height, width, (x0, y0, x0 + bw, y0 + bh))
        next_id = len(segments) + 1
        ids[mask] = next_id
        border[mask] = False
        if void_border:
            border |= mask & ~ndimage.binary_erosion(mask)
        segments.append({"id": next_id, "category_id": cat.id, "isthing": True})
    ids[border] = 0
    for s in segments:  # slivers left by occlusion become void: real annotations rarely keep 1-pixel segments
        if s["isthing"] and (ids == s["id"]).sum() < 4:
            ids[ids == s["id"]] = 0


def _picture(
    rng: np.random.Generator, ids: np.ndarray, segments: list[dict], categories: list[Category]
) -> np.ndarray:
    image = np.empty((*ids.shape, 3), dtype=np.float32)
    image[:] = 40.0
    for s in segments:
        image[ids == s["id"]] = categories[s["category_id"]].color
    image += rng.normal(0.0, 8.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _sentences(ids: np.ndarray, segments: list[dict], names: list[str]) -> list[dict]:
    ground = []
    for s in segments:
        if s["isthing"]:
            name = names[s["category_id"]]
            ground.append(
                {
                    "segment_id": s["id"],
                    "sentences": [f"the {name}", f"the {name} at the {_where_words(ids == s['id'])}"],
                }
            )
    return ground


def make_contract_dataset(
    num_images: int = 4,
    size: tuple[int, int] = (64, 64),
    classes: Sequence[str] = ("square", "disc", "background"),
    seed: int = 0,
    *,
    stuff: Sequence[str] = ("background",),
    grounding: bool = True,
    void_border: bool = True,
    max_shapes: int = 3,
    source: str = "synthetic",
    image_id_start: int = 0,
) -> datasets.Dataset:
    """A contract ``Dataset`` of ``num_images`` images of ``size = (width, height)`` pixels.

    Every class not in ``stuff`` is a thing drawn as 1..``max_shapes`` shapes per image (rectangles for even class
    indices, ellipses for odd ones, later shapes occluding earlier ones). The first stuff class fills the image
    behind the shapes; a second stuff class, if any, fills the top quarter. With ``void_border`` a one-pixel ring
    around each shape is void (panoptic 0, semantic 255), like the uncertain pixels of synthetic data. With
    ``grounding`` each thing gets two sentences (``"the square"``, ``"the square at the top left"``).
    Same arguments, same bytes.
    """
    names = [str(c) for c in classes]
    _check_arguments(num_images, size, names, stuff)
    width, height = int(size[0]), int(size[1])
    categories = [Category(i, n, n not in stuff) for i, n in enumerate(names)]
    things = [c for c in categories if c.isthing]
    rows = []
    for i in range(num_images):
        rng = np.random.default_rng([seed, i])
        ids = np.zeros((height, width), dtype=np.int32)
        segments = _stuff_segments(ids, [c for c in categories if not c.isthing])
        _draw_things(rng, ids, segments, things, max_shapes, void_border)
        present = set(np.unique(ids).tolist())
        segments = [s for s in segments if s["id"] in present]
        image = _picture(rng, ids, segments, categories)
        shown = sorted({names[s["category_id"]] for s in segments if s["isthing"]})
        rows.append(
            make_row(
                image=image,
                panoptic_ids=ids,
                segments=segments,
                image_id=image_id_start + i,
                file_name=f"{image_id_start + i:06d}.png",
                grounding=_sentences(ids, segments, names) if grounding else [],
                prompt="a photo of " + " and ".join(shown),
                seed=int(seed * 100_003 + i),
                source=source,
            )
        )
    features = contract_features(names)
    info = datasets.DatasetInfo(
        description=json.dumps({"categories": [c.to_dict() for c in categories]}), features=features
    )
    return datasets.Dataset.from_list(rows, features=features, info=info)
