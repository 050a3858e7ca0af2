"""COCO-panoptic folders into the contract (``from_coco_panoptic``), with optional RefCOCO-style grounding."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
from PIL import Image as PILImage

from seemadapt.data.convert import build_dataset, image_payload
from seemadapt.data.refcoco import find_grounding, link_grounding, load_grounding
from segcontract import Category, ContractError, make_row, rgb2id

__all__ = ["from_coco_panoptic"]


def _first(candidates: Sequence[Path], what: str, hint: str) -> Path:
    for c in candidates:
        if c.exists():
            return c
    raise FileNotFoundError(f"no {what} found; looked for {[str(c) for c in candidates]}. {hint}")


def _find_json(folder: Path, split: str) -> Path:
    direct = [folder / f"panoptic_{split}.json", folder / "annotations" / f"panoptic_{split}.json"]
    globbed = sorted(folder.glob(f"panoptic_{split}*.json")) + sorted(
        folder.glob(f"annotations/panoptic_{split}*.json")
    )
    return _first([*direct, *globbed], f"panoptic JSON for split {split!r}", "Pass panoptic_json=...")


@dataclass
class _Layout:
    """Where a COCO-panoptic split lives, and its parsed JSON."""

    json_path: Path
    meta: dict[str, Any]
    panoptic_dir: Path
    images_dir: Path

    @classmethod
    def find(
        cls,
        folder: Path,
        split: str,
        panoptic_json: str | Path | None,
        panoptic_dir: str | Path | None,
        images_dir: str | Path | None,
    ) -> _Layout:
        json_path = Path(panoptic_json) if panoptic_json is not None else _find_json(folder, split)
        meta = json.loads(Path(json_path).read_text())
        for key in ("images", "annotations", "categories"):
            if key not in meta:
                raise ContractError(
                    f"{json_path}: the panoptic JSON has no {key!r} list; is it a COCO panoptic file?"
                )
        pan_candidates = [
            folder / "panoptic",
            folder / f"panoptic_{split}",
            json_path.with_suffix(""),
            folder / json_path.stem,
        ]
        img_candidates = [
            folder / "images" / split,
            folder / "images",
            folder / split,
            folder / f"{split}2017",
        ]
        return cls(
            json_path,
            meta,
            Path(panoptic_dir)
            if panoptic_dir is not None
            else _first(pan_candidates, "panoptic PNG folder", "Pass panoptic_dir=..."),
            Path(images_dir)
            if images_dir is not None
            else _first(img_candidates, "images folder", "Pass images_dir=..."),
        )


def _read_ids(png_path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with PILImage.open(png_path) as p:
            ids = rgb2id(np.asarray(p.convert("RGB")))
    except (OSError, SyntaxError, ValueError) as err:
        raise ContractError(f"{png_path}: corrupt or unreadable panoptic PNG ({err}).") from None
    w, h = size
    if ids.shape != (h, w):
        raise ContractError(f"{png_path}: {ids.shape[1]}x{ids.shape[0]} but the image is {w}x{h}.")
    return ids


class _Converter:
    """One COCO annotation (one image) -> one contract row."""

    def __init__(
        self, layout: _Layout, grounding: tuple[dict, dict], min_iou: float, source: str | None
    ) -> None:
        self.layout, self.min_iou, self.source = layout, min_iou, source
        cats_json = sorted(layout.meta["categories"], key=lambda c: c["id"])
        self.to_contiguous = {c["id"]: i for i, c in enumerate(cats_json)}
        self.categories = [
            Category(
                i, str(c["name"]), bool(c.get("isthing", 0)), tuple(c["color"]) if c.get("color") else None
            )
            for i, c in enumerate(cats_json)
        ]
        self.images = {im["id"]: im for im in layout.meta["images"]}
        self.by_image, self.name_to_gid = grounding
        self.dropped = 0

    def _files(self, ann: Mapping[str, Any]) -> tuple[dict, Path, Path]:
        image_id = ann["image_id"]
        info = self.images.get(image_id)
        if info is None:
            raise ContractError(
                f"{self.layout.json_path}: annotation for image_id {image_id} has no entry in 'images'."
            )
        image_path = self.layout.images_dir / info["file_name"]
        if not image_path.is_file():
            raise FileNotFoundError(
                f"image {str(image_path)!r} (image_id {image_id}) is missing; pass images_dir=..."
            )
        png_name = ann.get("file_name", Path(info["file_name"]).with_suffix(".png").name)
        png_path = self.layout.panoptic_dir / png_name
        if not png_path.is_file():
            raise FileNotFoundError(f"panoptic PNG {str(png_path)!r} (image_id {image_id}) is missing.")
        return info, image_path, png_path

    def _segments(self, ann: Mapping[str, Any], present: set[int]) -> list[dict]:
        segments = []
        for s in ann["segments_info"]:
            if s["category_id"] not in self.to_contiguous:
                raise ContractError(
                    f"{self.layout.json_path}: image_id {ann['image_id']} segment {s['id']} has category_id "
                    f"{s['category_id']} that is not in 'categories'."
                )
            if s["id"] not in present:
                continue
            cat = self.categories[self.to_contiguous[s["category_id"]]]
            segments.append(
                {"id": s["id"], "category_id": cat.id, "isthing": cat.isthing, "iscrowd": s.get("iscrowd", 0)}
            )
        return segments

    def row(self, ann: Mapping[str, Any]) -> dict[str, Any]:
        info, image_path, png_path = self._files(ann)
        data, size = image_payload(image_path)
        ids = _read_ids(png_path, size)
        present = set(np.unique(ids).tolist())
        segments = self._segments(ann, present)
        undescribed = present - {s["id"] for s in segments} - {0}
        if undescribed:
            ids = np.where(np.isin(ids, list(undescribed)), 0, ids)  # unlabelled ids -> void
        gkey = self.name_to_gid.get(Path(info["file_name"]).stem, ann["image_id"])
        grounding, lost = link_grounding(self.by_image.get(gkey, []), ids, segments, self.min_iou)
        self.dropped += lost
        return make_row(
            image=data,
            panoptic_ids=ids,
            segments=segments,
            image_id=ann["image_id"],
            file_name=info["file_name"],
            grounding=grounding,
            prompt=str(info.get("prompt") or ""),
            seed=int(info.get("seed", -1)),
            source=self.source or info.get("source") or "real",
        )


def from_coco_panoptic(
    folder: str | Path,
    split: str = "train",
    *,
    panoptic_json: str | Path | None = None,
    panoptic_dir: str | Path | None = None,
    images_dir: str | Path | None = None,
    grounding_json: str | Path | Literal[False] | None = None,
    min_iou: float = 0.5,
    source: str | None = None,
) -> datasets.Dataset:
    """A COCO-panoptic folder: ``images/``, ``panoptic/`` PNGs, ``panoptic_<split>.json``, optional grounding JSON.

    Also finds the original COCO names (``annotations/panoptic_train2017.json``, ``panoptic_train2017/``,
    ``train2017/``). Categories are the JSON's, sorted by id: their position is the contiguous id. The semantic
    map is painted from the panoptic PNG (void -> 255), so it never disagrees with it; panoptic segment ids are kept.

    The grounding JSON is RefCOCO-style (``images``, ``annotations`` with ``segmentation`` and
    ``sentences: [{raw, sent, tokens, sent_id}]``), found as ``grounding_<split>.json`` / ``refcoco_<split>.json``
    unless given (``False`` skips it). ``prompt``/``seed``/``source`` are read from the JSON's ``images`` entries when
    they carry them (diffsynth's export does), else ``""``/``-1``/``source`` (default ``"real"``). Each annotation is
    attached to a panoptic segment by its ``segment_id`` if it has one, else by mask IoU >= ``min_iou``, else by its
    ``id``/``ann_id``; unmatched ones are dropped with a warning.
    """
    folder = Path(folder)
    layout = _Layout.find(folder, split, panoptic_json, panoptic_dir, images_dir)
    if grounding_json is None:
        grounding_path = find_grounding(folder, split)
    else:
        grounding_path = Path(grounding_json) if grounding_json is not False else None
    converter = _Converter(
        layout, load_grounding(grounding_path) if grounding_path else ({}, {}), min_iou, source
    )
    rows = [converter.row(ann) for ann in sorted(layout.meta["annotations"], key=lambda a: a["image_id"])]
    if not rows:
        raise ContractError(f"{layout.json_path}: no annotations; the split {split!r} is empty.")
    if converter.dropped:
        warnings.warn(
            f"{converter.dropped} grounding annotation(s) matched no panoptic segment (IoU < {min_iou}) and were "
            "dropped.",
            stacklevel=2,
        )
    return build_dataset(rows, converter.categories)
