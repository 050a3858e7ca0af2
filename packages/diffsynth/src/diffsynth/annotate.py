"""From a label map to COCO-panoptic, semantic and grounding annotations (pure numpy + scipy).

The label map holds the category index per pixel (0..K-1 target classes, K the explicit background when enabled) and
255 for uncertain pixels. Conventions:

* Thing classes are split into instances by **8-connected** components (diagonal neighbours join: thin, slanted
  objects such as pipes or cracks stay whole); components smaller than ``min_area`` become void.
* A stuff class is one segment per image; it is dropped to void only if its whole area is below ``min_area``.
* Void is id 0 in the panoptic PNG and 255 in the semantic map; uncertain pixels are void.
* Segment ids follow COCO's ``IdGenerator`` convention (panopticapi.utils): stuff segments take their category's colour,
  a thing's first instance its category colour, further instances that colour jittered by up to +-30 per channel, so
  the panoptic PNG is itself a readable colour image. The jitter is seeded: same inputs and seed, same ids.
* Grounding sentences are built from templates with position and size words read from the final mask, and an ordinal
  relation ("the leftmost mold") when a class has several instances. Horizontal flips invalidate left/right words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from panopticapi.utils import IdGenerator

from diffsynth.categories import Category
from segcontract import CONNECTIVITY, IGNORE_LABEL, Region, id2rgb, label_map_regions, rgb2id

__all__ = [
    "CONNECTIVITY",
    "DEFAULT_MIN_AREA",
    "IGNORE_INDEX",
    "Annotation",
    "annotate",
    "min_area_pixels",
    "tokenize",
]

IGNORE_INDEX = IGNORE_LABEL
DEFAULT_MIN_AREA = 0.001


@dataclass
class Annotation:
    """Everything the dataset row needs besides the image.

    ``panoptic``: uint8 [H, W, 3], id = R + 256 G + 256^2 B, 0 = void. ``segments_info``: COCO records with the
    *contiguous* category index. ``semantic``: uint8 [H, W], category index or 255. ``grounding``:
    ``[{"segment_id", "sentences"}]``.
    """

    image_id: int
    panoptic: np.ndarray
    segments_info: list[dict]
    semantic: np.ndarray
    grounding: list[dict]

    @property
    def id_map(self) -> np.ndarray:
        """int64 [H, W] segment ids decoded from the panoptic PNG."""
        return rgb2id(self.panoptic).astype(np.int64)

    def segment_mask(self, segment_id: int) -> np.ndarray:
        return self.id_map == segment_id


class _SeededIdGenerator(IdGenerator):
    """panopticapi's IdGenerator with a private seeded RNG instead of the global ``np.random``.

    Also marks black as taken: the upstream initialiser puts the integers 0 (not the colour (0, 0, 0)) in its set,
    so a jittered dark colour could otherwise become the void id.
    """

    _MAX_JITTER = 30

    def __init__(self, categories: dict, seed: int) -> None:
        super().__init__(categories)
        self.taken_colors.add((0, 0, 0))
        self._rng = np.random.default_rng(seed)

    def get_color(self, cat_id):
        category = self.categories[cat_id]
        base = tuple(int(c) for c in category["color"])
        if category["isthing"] == 0:
            return base
        if base not in self.taken_colors:
            self.taken_colors.add(base)
            return base
        while True:
            jitter = self._rng.integers(-self._MAX_JITTER, self._MAX_JITTER + 1, size=3)
            color = tuple(int(v) for v in np.clip(np.asarray(base) + jitter, 0, 255))
            if color not in self.taken_colors:
                self.taken_colors.add(color)
                return color


def min_area_pixels(min_area: int | float, num_pixels: int) -> int:
    """``min_area`` as a pixel count: an int is pixels, a float in [0, 1) a fraction of the image."""
    if isinstance(min_area, bool) or not isinstance(min_area, int | float | np.integer | np.floating):
        raise TypeError(
            f"`min_area` must be an int (pixels) or a float fraction in [0, 1), got {min_area!r}."
        )
    if isinstance(min_area, int | np.integer):
        if min_area < 0:
            raise ValueError(f"`min_area` must be >= 0 pixels, got {min_area}.")
        return int(min_area)
    if not 0.0 <= min_area < 1.0:
        raise ValueError(
            f"`min_area` as a float is a fraction of the image and must be in [0, 1), got {min_area}; "
            "pass an int for a pixel count."
        )
    return int(np.ceil(min_area * num_pixels))


def _check_label_map(label_map: np.ndarray) -> np.ndarray:
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"`label_map` must be 2-D [H, W], got shape {label_map.shape}.")
    if not np.issubdtype(label_map.dtype, np.integer):
        raise TypeError(
            f"`label_map` must hold integers (category index or 255), got dtype {label_map.dtype}."
        )
    if label_map.dtype != np.uint8:
        if label_map.size and (label_map.min() < 0 or label_map.max() > 255):
            raise ValueError("`label_map` values must be in 0..255 (category index or 255 = ignore).")
        label_map = label_map.astype(np.uint8)
    return label_map


# ----------------------------------------------------------------------------------------------- grounding words
_H_WORD = ("left", "center", "right")
_V_WORD = ("top", "middle", "bottom")
_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")
_LARGE_FRACTION = 0.2
_SMALL_FRACTION = 0.02
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(sentence: str) -> list[str]:
    """RefCOCO-style tokens: lowercase words, punctuation dropped."""
    return _TOKEN.findall(sentence.lower())


def _third(value: float) -> int:
    return 0 if value < 1 / 3 else (2 if value > 2 / 3 else 1)


def _where(cx: float, cy: float, width: int, height: int) -> str:
    h, v = _third(cx / width), _third(cy / height)
    if (h, v) == (1, 1):
        return "in the center"
    if v == 1:
        return f"on the {_H_WORD[h]}"
    if h == 1:
        return f"at the {_V_WORD[v]}"
    return f"in the {_V_WORD[v]} {_H_WORD[h]}"


def _size_word(fraction: float) -> str:
    if fraction >= _LARGE_FRACTION:
        return "large"
    if fraction <= _SMALL_FRACTION:
        return "small"
    return ""


def _ordinal_phrase(rank: int, count: int, name: str) -> str:
    """'the leftmost mold', 'the second mold from the left', 'the rightmost mold' (rank by centroid x)."""
    if rank == 0:
        return f"the leftmost {name}"
    if rank == count - 1:
        return f"the rightmost {name}"
    from_left = rank < count / 2
    k = rank if from_left else count - 1 - rank
    word = _ORDINALS[k] if k < len(_ORDINALS) else f"{k + 1}th"
    return f"the {word} {name} from the {'left' if from_left else 'right'}"


def _extreme(i: int, siblings: list[int], segments: list[dict], key: str, words: tuple[str, str], name: str):
    """'the largest mold' / 'the smallest mold' when segment i is the unique max / min of ``key`` among siblings."""
    values = [segments[j][key] for j in siblings]
    value = segments[i][key]
    if values.count(value) > 1:
        return None
    if value == max(values):
        return f"{words[0]} {name}"
    if value == min(values):
        return f"{words[1]} {name}"
    return None


def _sentences(segments: list[dict], categories: Sequence[Category], width: int, height: int, limit: int):
    """2-3 distinct referring sentences per segment (Dale-Reiter-style: add attributes until unambiguous)."""
    by_class: dict[int, list[int]] = {}
    for i, seg in enumerate(segments):
        by_class.setdefault(seg["cat"], []).append(i)
    total = float(width * height)
    out: list[list[str]] = []
    for i, seg in enumerate(segments):
        category = categories[seg["cat"]]
        name = category.name
        alt = category.synonyms[0] if category.synonyms else name
        where = _where(seg["cx"], seg["cy"], width, height)
        size = _size_word(seg["area"] / total)
        siblings = by_class[seg["cat"]]
        candidates: list[str | None]
        if not category.isthing:
            _, _, w, h = seg["bbox"]
            everywhere = w >= 0.9 * width and h >= 0.9 * height
            candidates = [
                f"the {name}",
                f"the {name} region" if everywhere else f"the {name} {where}",
                f"the {alt}" if alt != name else (None if everywhere else f"{name} {where}"),
            ]
        elif len(siblings) == 1:
            candidates = [
                f"the {name} {where}",
                f"the {size} {name}" if size else f"the {name}",
                f"the {alt} {where}" if alt != name else (f"the {name}" if size else f"{name} {where}"),
            ]
        else:
            order = sorted(siblings, key=lambda j: (segments[j]["cx"], segments[j]["cy"], j))
            rank = order.index(i)
            ordinal = _ordinal_phrase(rank, len(siblings), name)
            where_unique = all(
                _where(segments[j]["cx"], segments[j]["cy"], width, height) != where
                for j in siblings
                if j != i
            )
            extreme = _extreme(i, siblings, segments, "area", ("the largest", "the smallest"), name)
            vertical = _extreme(i, siblings, segments, "cy", ("the lowest", "the topmost"), name)
            candidates = [
                ordinal,
                f"the {name} {where}" if where_unique else f"{ordinal} {where}",
                extreme,
                vertical,
                _ordinal_phrase(rank, len(siblings), alt) if alt != name else None,
                f"the {size} {name} {where}" if size and where_unique else None,
            ]
        sentences: list[str] = []
        for sentence in candidates:
            if sentence and sentence not in sentences:
                sentences.append(sentence)
        out.append(sentences[:limit])
    return out


def _check_arguments(categories: Sequence[Category], connectivity: int, max_sentences: int) -> None:
    if connectivity not in (4, 8):
        raise ValueError(f"`connectivity` must be 4 or 8, got {connectivity}.")
    if max_sentences < 1:
        raise ValueError(f"`max_sentences` must be >= 1, got {max_sentences}.")
    if not categories:
        raise ValueError("`categories` is empty; resolve them with diffsynth.categories.resolve_categories.")
    colors = [c.color for c in categories]
    if any(c is None for c in colors) or len(set(colors)) != len(colors):
        raise ValueError(
            "`categories` need distinct colours (panoptic ids derive from them); build the list with "
            "diffsynth.categories.resolve_categories."
        )


def _check_label_values(label_map: np.ndarray, num: int) -> None:
    if num < IGNORE_INDEX and np.any((label_map >= num) & (label_map != IGNORE_INDEX)):
        bad = int(label_map[(label_map >= num) & (label_map != IGNORE_INDEX)][0])
        raise ValueError(
            f"`label_map` holds value {bad} but there are only {num} categories (valid: 0..{num - 1} and "
            f"{IGNORE_INDEX} = ignore); resolve the background category or map unknown pixels to {IGNORE_INDEX}."
        )


def _geometry(region: Region) -> dict:
    """Category, area, bbox ``[x, y, w, h]`` and centroid of a region (pixel centres at +0.5)."""
    comp, top, left = region.mask, region.top, region.left
    area = region.area
    r = np.flatnonzero(comp.any(axis=1))
    c = np.flatnonzero(comp.any(axis=0))
    cy = top + float(comp.sum(axis=1) @ np.arange(comp.shape[0])) / area + 0.5
    cx = left + float(comp.sum(axis=0) @ np.arange(comp.shape[1])) / area + 0.5
    bbox = [float(left + c[0]), float(top + r[0]), float(c[-1] - c[0] + 1), float(r[-1] - r[0] + 1)]
    return {"cat": region.category, "area": area, "bbox": bbox, "cx": cx, "cy": cy}


# ------------------------------------------------------------------------------------------------------- annotate
def annotate(
    label_map: np.ndarray,
    categories: Sequence[Category],
    *,
    image_id: int,
    min_area: int | float = DEFAULT_MIN_AREA,
    rng_seed: int | None = None,
    connectivity: int = CONNECTIVITY,
    max_sentences: int = 3,
) -> Annotation:
    """Annotate one label map.

    Args:
        label_map: uint8 [H, W]; category index per pixel, 255 = uncertain/ignore.
        categories: the resolved category list (:func:`diffsynth.categories.resolve_categories`).
        image_id: the row's image id (also the default id seed).
        min_area: smallest kept segment: an int in pixels or a float fraction of the image (default 0.1 %).
        rng_seed: seed of the instance-colour jitter; ``None`` uses ``image_id``.
        connectivity: 8 (default) or 4 for splitting thing masks.
        max_sentences: most grounding sentences per segment; the templates give 2-3 distinct ones.
    """
    _check_arguments(categories, connectivity, max_sentences)
    label_map = _check_label_map(label_map)
    height, width = label_map.shape
    _check_label_values(label_map, len(categories))
    id_gen = _SeededIdGenerator(
        {i: {"isthing": int(c.isthing), "color": list(c.color)} for i, c in enumerate(categories)},
        seed=int(image_id if rng_seed is None else rng_seed),
    )
    id_map = np.zeros((height, width), dtype=np.int32)  # segment id per pixel, 0 = void
    min_px = max(1, min_area_pixels(min_area, height * width))
    segments: list[dict] = []  # geometry for the grounding sentences
    segments_info: list[dict] = []
    for region in label_map_regions(label_map, [c.isthing for c in categories], connectivity=connectivity):
        if region.area < min_px:
            continue
        seg_id, _ = id_gen.get_id_and_color(region.category)
        id_map[region.window][region.mask] = seg_id
        segment = _geometry(region)
        segments.append(segment)
        segments_info.append(
            {
                "id": int(seg_id),
                "category_id": region.category,
                "iscrowd": 0,
                "bbox": segment["bbox"],
                "area": segment["area"],
                "isthing": bool(categories[region.category].isthing),
            }
        )

    panoptic = id2rgb(id_map)
    semantic = label_map.copy()
    semantic[id_map == 0] = IGNORE_INDEX

    texts = _sentences(segments, categories, width, height, max_sentences)
    grounding = [{"segment_id": info["id"], "sentences": s} for info, s in zip(segments_info, texts)]
    return Annotation(
        image_id=int(image_id),
        panoptic=panoptic,
        segments_info=segments_info,
        semantic=semantic,
        grounding=grounding,
    )
