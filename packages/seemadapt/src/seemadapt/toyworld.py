"""A procedural "real" domain: scenes of named, textured objects on a textured wall, as contract datasets.

:func:`seemadapt.testing.make_contract_dataset` draws flat colour patches - enough to run every path, too easy to
tell whether a model learns. A toy scene here gives each class a *look* (shape, colour, texture) that a model must
learn from pixels: some classes share a colour and differ only in texture or shape, the stuff background is
textured too, and objects vary in size, position, brightness and number. Same arguments, same bytes, no download.

It stands in for real photos in the quick-start and in the learning tests: fine-tune on one set, evaluate on a
held-out set drawn with another seed, and the scores mean something.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import datasets
import numpy as np
from scipy import ndimage

from segcontract import Category, contract_features, make_row

__all__ = ["LOOKS", "Look", "look_for", "make_toy_scenes"]

SHAPES = ("ellipse", "rectangle", "triangle", "bar", "blob")
TEXTURES = ("solid", "stripes", "checker", "dots", "mottled")
MID_GREY = 127.5  # the centre of ``contrast`` (-1: the colour negative)


@dataclass(frozen=True)
class Look:
    """How a class is drawn: ``shape`` (one of :data:`SHAPES`), an RGB ``color`` and a ``texture``."""

    shape: str
    color: tuple[int, int, int]
    texture: str

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"Look.shape must be one of {SHAPES}, got {self.shape!r}.")
        if self.texture not in TEXTURES:
            raise ValueError(f"Look.texture must be one of {TEXTURES}, got {self.texture!r}.")


#: Looks of the names the examples and tests use; any other name gets one from :func:`look_for`.
LOOKS: dict[str, Look] = {
    # the quick-start's wet-damage domain
    "mold": Look("blob", (52, 86, 48), "mottled"),
    "stain": Look("ellipse", (150, 110, 60), "solid"),
    "pipe": Look("bar", (150, 150, 160), "stripes"),
    "wall": Look("rectangle", (205, 195, 175), "mottled"),
    "background": Look("rectangle", (205, 195, 175), "mottled"),  # diffsynth's stuff class: the wall here
    # a generic shapes domain (what the pretrained tiny model first learns)
    "disc": Look("ellipse", (200, 60, 50), "solid"),
    "box": Look("rectangle", (50, 90, 200), "solid"),
    "triangle": Look("triangle", (230, 200, 40), "solid"),
    "ring": Look("ellipse", (50, 170, 80), "checker"),
    "plank": Look("bar", (140, 80, 40), "stripes"),
    "sponge": Look("blob", (230, 140, 40), "dots"),
    "floor": Look("rectangle", (90, 90, 100), "checker"),
    "sky": Look("rectangle", (150, 190, 230), "solid"),
}


def look_for(name: str) -> Look:
    """The look of a class: from :data:`LOOKS`, else drawn from a hash of the name (stable across runs)."""
    if name in LOOKS:
        return LOOKS[name]
    digest = hashlib.sha256(name.encode()).digest()
    color = (40 + digest[0] % 190, 40 + digest[1] % 190, 40 + digest[2] % 190)
    return Look(SHAPES[digest[3] % len(SHAPES)], color, TEXTURES[digest[4] % len(TEXTURES)])


def _shape_mask(shape: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of one object, 1/6 to 1/2 of the image across, anywhere in the image."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    bw = rng.uniform(w / 6, w / 2.2)
    bh = rng.uniform(h / 6, h / 2.2)
    if shape == "bar":  # long and thin, horizontal or vertical
        bw, bh = (w * rng.uniform(0.5, 0.9), h / rng.uniform(8, 12))
        if rng.random() < 0.5:
            bw, bh = bh * w / h, bw * h / w
    cx = rng.uniform(bw / 2, w - bw / 2)
    cy = rng.uniform(bh / 2, h - bh / 2)
    dx, dy = (xx - cx) / (bw / 2), (yy - cy) / (bh / 2)
    if shape == "ellipse":
        return dx**2 + dy**2 <= 1.0
    if shape == "triangle":  # apex up
        return (dy <= 1.0) & (np.abs(dx) <= (dy + 1.0) / 2.0)
    if shape == "blob":  # three overlapping discs
        mask = dx**2 + dy**2 <= 0.5
        for _ in range(2):
            ox, oy = rng.uniform(-0.5, 0.5, size=2)
            mask |= (dx - ox) ** 2 + (dy - oy) ** 2 <= rng.uniform(0.2, 0.45)
        return mask
    return (np.abs(dx) <= 1.0) & (np.abs(dy) <= 1.0)


def _texture(texture: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A ``[h, w]`` brightness factor around 1 with the texture's pattern (period 4..8 pixels)."""
    yy, xx = np.mgrid[0:h, 0:w]
    period = int(rng.integers(4, 9))
    phase = int(rng.integers(period))
    if texture == "stripes":
        return np.where(((yy + xx + phase) // (period // 2)) % 2 == 0, 1.25, 0.7)
    if texture == "checker":
        return np.where(((yy // period) + (xx // period)) % 2 == 0, 1.25, 0.7)
    if texture == "dots":
        near = ((yy + phase) % period < 2) & ((xx + phase) % period < 2)
        return np.where(near, 0.45, 1.1)
    if texture == "mottled":
        noise = ndimage.gaussian_filter(rng.normal(0.0, 1.0, size=(h, w)), sigma=2.0)
        return 1.0 + 0.2 * noise / max(float(noise.std()), 1e-6)
    return np.ones((h, w))


def _paint(image: np.ndarray, mask: np.ndarray, look: Look, rng: np.random.Generator) -> None:
    h, w = mask.shape
    brightness = rng.uniform(0.8, 1.2)
    pattern = _texture(look.texture, h, w, rng)[..., None] * brightness
    image[mask] = (np.asarray(look.color, dtype=np.float32) * pattern)[mask]


def _scene(
    rng: np.random.Generator,
    size: tuple[int, int],
    categories: Sequence[Category],
    looks: Mapping[str, Look],
    max_objects: int,
    contrast: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    width, height = size
    image = np.zeros((height, width, 3), dtype=np.float32)
    ids = np.zeros((height, width), dtype=np.int32)
    segments: list[dict] = []
    stuffs = [c for c in categories if not c.isthing]
    things = [c for c in categories if c.isthing]
    for k, cat in enumerate(stuffs[:2]):  # the first stuff fills the image, a second one the lower third
        region = np.ones((height, width), dtype=bool)
        if k:
            region[: height - height // 3] = False
        _paint(image, region, looks[cat.name], rng)
        ids[region] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "category_id": cat.id, "isthing": False})
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cat = things[int(rng.integers(len(things)))]
        mask = _shape_mask(looks[cat.name].shape, height, width, rng)
        if mask.sum() < 16:
            continue
        _paint(image, mask, looks[cat.name], rng)
        ids[mask] = len(segments) + 1
        segments.append({"id": len(segments) + 1, "category_id": cat.id, "isthing": True})
    present = set(np.unique(ids).tolist())
    segments = [s for s in segments if s["id"] in present and (ids == s["id"]).sum() >= 16]
    ids[~np.isin(ids, [s["id"] for s in segments])] = 0
    image += rng.normal(0.0, 6.0, size=image.shape)
    if contrast != 1.0:  # a camera-like domain shift of the whole picture (1: the pixels stay bit-identical)
        image = MID_GREY + (image - MID_GREY) * contrast
    return np.clip(image, 0, 255).astype(np.uint8), ids, segments


def make_toy_scenes(
    num_images: int = 16,
    classes: Sequence[str] = ("mold", "stain", "pipe", "wall"),
    stuff: Sequence[str] = ("wall",),
    size: tuple[int, int] = (96, 96),
    seed: int = 0,
    *,
    looks: Mapping[str, Look] | None = None,
    max_objects: int = 3,
    contrast: float = 1.0,
    source: str = "real",
    image_id_start: int = 0,
) -> datasets.Dataset:
    """A contract ``Dataset`` of ``num_images`` toy scenes of ``size = (width, height)`` pixels.

    Every class in ``stuff`` is background (the first fills the image, a second the lower third); every other
    class is a thing, drawn 1..``max_objects`` times per image with its :class:`Look` (``looks`` overrides
    :func:`look_for`), later objects occluding earlier ones. Each thing gets a grounding sentence
    (``"the <name>"``). ``contrast`` scales every pixel's distance from mid-grey (a domain shift: 0.25 is a dim,
    washed-out copy, -1 the colour negative). ``source`` tags the rows (``"real"``: the domain one fine-tunes for).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    if not math.isfinite(contrast):
        raise ValueError(f"contrast must be a finite number, got {contrast}.")
    names = [str(c) for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"classes must be distinct, got {names}.")
    unknown = [s for s in stuff if s not in names]
    if unknown:
        raise ValueError(f"stuff names {unknown} are not in classes {names}.")
    categories = [Category(i, n, n not in stuff) for i, n in enumerate(names)]
    if not any(c.isthing for c in categories):
        raise ValueError("classes must contain at least one thing (a class not listed in `stuff`).")
    width, height = int(size[0]), int(size[1])
    if width < 32 or height < 32:
        raise ValueError(f"size must be at least (32, 32) pixels, got {size}.")
    all_looks = {n: (looks or {}).get(n) or look_for(n) for n in names}
    rows = []
    for i in range(num_images):
        rng = np.random.default_rng([seed, i, 16])
        image, ids, segments = _scene(rng, (width, height), categories, all_looks, max_objects, contrast)
        grounding = [
            {"segment_id": s["id"], "sentences": [f"the {names[s['category_id']]}"]}
            for s in segments
            if s["isthing"]
        ]
        shown = sorted({names[s["category_id"]] for s in segments if s["isthing"]})
        rows.append(
            make_row(
                image=image,
                panoptic_ids=ids,
                segments=segments,
                image_id=image_id_start + i,
                file_name=f"toy_{image_id_start + i:06d}.png",
                grounding=grounding,
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
