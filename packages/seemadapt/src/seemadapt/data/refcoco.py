"""RefCOCO-style grounding JSON beside a COCO-panoptic folder: finding it, reading it, linking it to segments."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["find_grounding", "link_grounding", "load_grounding"]


def find_grounding(folder: Path, split: str) -> Path | None:
    """``grounding_<split>.json`` / ``refcoco_<split>.json`` / ... in ``folder`` or its ``annotations/``."""
    names = [f"grounding_{split}.json", f"refcoco_{split}.json", f"refs_{split}.json", "grounding.json"]
    for base in (folder, folder / "annotations"):
        for n in names:
            if (base / n).is_file():
                return base / n
        for p in sorted(base.glob(f"*ground*{split}*.json")) if base.is_dir() else []:
            return p
    return None


def _sentences(items: Any) -> list[str]:
    out = []
    for s in items or []:
        if isinstance(s, str):
            text = s
        elif isinstance(s, Mapping):
            text = s.get("raw") or s.get("sent") or " ".join(s.get("tokens", []))
        else:
            continue
        if text and text.strip():
            out.append(text.strip())
    return out


def _decode_segmentation(seg: Any, h: int, w: int) -> np.ndarray | None:
    if not seg:
        return None
    if isinstance(seg, list):  # polygons
        rles = mask_utils.frPyObjects(seg, h, w)
        rle = mask_utils.merge(rles) if isinstance(rles, list) else rles
    elif isinstance(seg, Mapping) and isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = dict(seg)
        if isinstance(rle.get("counts"), str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def load_grounding(path: Path) -> tuple[dict[Any, list[dict]], dict[str, Any]]:
    """Grounding records grouped by image_id, and grounding image file_name -> image_id."""
    data = json.loads(path.read_text())
    if isinstance(data, Mapping):
        anns = data.get("annotations") or data.get("refs") or []
        name_to_id = {
            Path(im["file_name"]).stem: im["id"] for im in data.get("images", []) if "file_name" in im
        }
    else:  # a plain list of refs
        anns, name_to_id = data, {}
    by_image: dict[Any, list[dict]] = defaultdict(list)
    for a in anns:
        by_image[a.get("image_id")].append(a)
    return by_image, name_to_id


def _best_overlap(mask: np.ndarray | None, ids: np.ndarray, seg_ids: set[int], min_iou: float) -> int | None:
    best, best_iou = None, 0.0
    if mask is not None and mask.any():
        for sid in seg_ids:
            seg = ids == sid
            inter = np.logical_and(seg, mask).sum()
            if inter:
                iou = inter / np.logical_or(seg, mask).sum()
                if iou > best_iou:
                    best, best_iou = sid, iou
    return best if best_iou >= min_iou else None


def _target(a: Mapping, ids: np.ndarray, seg_ids: set[int], min_iou: float) -> int | None:
    """The segment an annotation refers to: by ``segment_id``, else by mask IoU, else by ``id``/``ann_id``."""
    if a.get("segment_id") is not None and int(a["segment_id"]) in seg_ids:
        return int(a["segment_id"])
    if a.get("segmentation"):
        return _best_overlap(_decode_segmentation(a["segmentation"], *ids.shape), ids, seg_ids, min_iou)
    for key in ("id", "ann_id"):
        if a.get(key) is not None and int(a[key]) in seg_ids:
            return int(a[key])
    return None


def link_grounding(
    anns: Sequence[Mapping], ids: np.ndarray, segments: Sequence[Mapping], min_iou: float
) -> tuple[list[dict], int]:
    """Attach each grounding annotation to a panoptic segment; returns the records and how many were dropped."""
    seg_ids = {int(s["id"]) for s in segments}
    sentences: dict[int, list[str]] = defaultdict(list)
    dropped = 0
    for a in anns:
        texts = _sentences(a.get("sentences"))
        if not texts:
            continue
        target = _target(a, ids, seg_ids, min_iou)
        if target is None:
            dropped += 1
            continue
        for t in texts:
            if t not in sentences[target]:
                sentences[target].append(t)
    return [{"segment_id": sid, "sentences": s} for sid, s in sorted(sentences.items())], dropped
