"""A COCO-panoptic folder (ours from :func:`diffsynth.export.export_coco`, or the official COCO layout) into the
contract Dataset.

The semantic map is always derived from the panoptic PNG (void -> 255), and segments come in the JSON's order;
rows are generated lazily into an Arrow cache keyed by the files' contents (JSON) and listings (size, mtime).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset
from datasets.exceptions import DatasetGenerationError
from PIL import Image as PILImage

from diffsynth.annotate import IGNORE_INDEX
from diffsynth.categories import Category, resolve_categories
from diffsynth.dataset import ContractError
from diffsynth.schema import METADATA_KEY, encode_png, features
from segcontract import rgb2id

__all__ = ["load_coco"]

logger = logging.getLogger(__name__)


def _first(paths: list[Path], what: str, arg: str) -> Path:
    for path in paths:
        if path.exists():
            return path
    raise FileNotFoundError(
        f"load_coco: no {what} found; looked for {[str(p) for p in paths]}. Pass `{arg}=` explicitly."
    )


def _bbox(mask: np.ndarray) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def _sentences(grounding_json: str | None) -> dict[tuple[int, int], list[str]]:
    """``(image_id, segment_id) -> sentences`` of a RefCOCO-style grounding JSON (empty without one)."""
    sentences: dict[tuple[int, int], list[str]] = {}
    if not grounding_json:
        return sentences
    with open(grounding_json, encoding="utf-8") as f:
        grounding = json.load(f)
    for ann in grounding.get("annotations", []):
        key = (int(ann["image_id"]), int(ann.get("segment_id", ann.get("id"))))
        for sent in ann.get("sentences", []):
            text = sent if isinstance(sent, str) else sent.get("raw") or sent.get("sent", "")
            if text:
                sentences.setdefault(key, []).append(text)
    return sentences


def _read_panoptic(pan_path: str) -> tuple[bytes, np.ndarray]:
    """The panoptic PNG's bytes (re-encoded unless already an RGB PNG) and its segment-id map."""
    with open(pan_path, "rb") as f:
        pan_bytes = f.read()
    pan_image = PILImage.open(io.BytesIO(pan_bytes))
    ids = rgb2id(np.asarray(pan_image.convert("RGB")))
    if pan_image.format != "PNG" or pan_image.mode != "RGB":
        pan_bytes = encode_png(np.asarray(pan_image.convert("RGB")))["bytes"]
    return pan_bytes, ids


def _segments(
    ids: np.ndarray, ann: Mapping[str, Any], categories: list[dict[str, Any]], pan_path: str
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The contract ``segments_info`` of one COCO annotation (JSON order) and the semantic map (void -> 255)."""
    image_id = int(ann["image_id"])
    index = {c["id"]: i for i, c in enumerate(categories)}
    listed = {int(s["id"]): s for s in ann["segments_info"]}
    present, inverse = np.unique(ids, return_inverse=True)
    unknown = [int(v) for v in present if v != 0 and int(v) not in listed]
    if unknown:
        raise ContractError(
            f"load_coco: {pan_path} holds segment ids {unknown[:5]} that its JSON annotation does not list."
        )
    lut = np.full(len(present), IGNORE_INDEX, dtype=np.uint8)
    slot = {int(v): k for k, v in enumerate(present)}
    inverse = inverse.reshape(ids.shape)
    segments = []
    for sid, seg in listed.items():  # JSON order
        if sid not in slot or sid == 0:
            continue
        if seg["category_id"] not in index:
            raise ContractError(
                f"load_coco: segment {sid} of image {image_id} has category_id {seg['category_id']}, "
                "which is not in `categories`."
            )
        cat = index[seg["category_id"]]
        lut[slot[sid]] = cat
        mask = inverse == slot[sid]
        segments.append(
            {
                "id": sid,
                "category_id": cat,
                "iscrowd": int(seg.get("iscrowd", 0)),
                "bbox": _bbox(mask),
                "area": int(np.count_nonzero(mask)),
                "isthing": bool(categories[cat].get("isthing", 1)),
            }
        )
    dropped = set(listed) - {s["id"] for s in segments}
    if dropped:
        logger.warning(
            "load_coco: image %s lists segments %s absent from its PNG; dropped.", image_id, dropped
        )
    return segments, lut[inverse]


def _rows(
    panoptic_json: str,
    panoptic_dir: str,
    image_dir: str,
    grounding_json: str | None,
    source: str,
) -> Iterator[dict[str, Any]]:
    with open(panoptic_json, encoding="utf-8") as f:
        data = json.load(f)
    images = {im["id"]: im for im in data["images"]}
    sentences = _sentences(grounding_json)
    for ann in data["annotations"]:
        image_id = int(ann["image_id"])
        meta = images.get(image_id)
        if meta is None:
            raise ContractError(f"load_coco: annotation for image_id {image_id} has no entry in `images`.")
        pan_path = os.path.join(panoptic_dir, ann["file_name"])
        pan_bytes, ids = _read_panoptic(pan_path)
        segments, semantic = _segments(ids, ann, data["categories"], pan_path)
        with open(os.path.join(image_dir, meta["file_name"]), "rb") as f:
            image_bytes = f.read()
        width, height = PILImage.open(io.BytesIO(image_bytes)).size
        yield {
            "image": {"bytes": image_bytes, "path": None},
            "image_id": image_id,
            "file_name": os.path.basename(meta["file_name"]),
            "width": width,
            "height": height,
            "panoptic": {"bytes": pan_bytes, "path": None},
            "segments_info": segments,
            "semantic": encode_png(semantic),
            "grounding": [
                {"segment_id": s["id"], "sentences": sentences[(image_id, s["id"])]}
                for s in segments
                if (image_id, s["id"]) in sentences
            ],
            "prompt": meta.get("prompt", ""),
            "seed": int(meta.get("seed", -1)),
            "source": meta.get("source", source),
        }


def _fingerprint(paths: list[str | None], extra: str) -> str:
    """Content fingerprint of the JSON files and the folders' listings (size, mtime), for the Arrow cache."""
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(str(path).encode())
        if path is None:
            continue
        if os.path.isdir(path):
            for entry in sorted(os.scandir(path), key=lambda e: e.name):
                st = entry.stat()
                digest.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        else:
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:32]


def _locate(
    folder: Path,
    split: str,
    panoptic_json: str | os.PathLike | None,
    panoptic_dir: str | os.PathLike | None,
    image_dir: str | os.PathLike | None,
) -> tuple[Path, Path, Path]:
    """The panoptic JSON, panoptic PNG folder and image folder: as given, else the first that exists of ours and
    the official COCO layout."""
    pan_json = (
        Path(panoptic_json)
        if panoptic_json
        else _first(
            [folder / f"panoptic_{split}.json", folder / "annotations" / f"panoptic_{split}.json"],
            "panoptic JSON",
            "panoptic_json",
        )
    )
    pan_dir = (
        Path(panoptic_dir)
        if panoptic_dir
        else _first(
            [folder / "panoptic", folder / f"panoptic_{split}", folder / "annotations" / f"panoptic_{split}"],
            "panoptic PNG folder",
            "panoptic_dir",
        )
    )
    img_dir = (
        Path(image_dir)
        if image_dir
        else _first(
            [folder / "images", folder / split, folder / "images" / split], "image folder", "image_dir"
        )
    )
    return pan_json, pan_dir, img_dir


def _categories_and_settings(
    data: Mapping[str, Any], split: str, background: str | None, pan_json: Path
) -> tuple[list[Category], dict[str, Any]]:
    """Our own categories and settings when the JSON carries them (a diffsynth export), else both built from the
    COCO ``categories`` (colours kept when usable: set, not black, unique)."""
    ours = (data.get("info") or {}).get(METADATA_KEY) if isinstance(data.get("info"), dict) else None
    names = [c["name"] for c in data["categories"]]
    if ours and [c["name"] for c in ours["categories"]] == names:
        return [Category.from_dict(c) for c in ours["categories"]], dict(ours.get("settings", {}))
    colors = [tuple(c["color"]) if c.get("color") else None for c in data["categories"]]
    usable = [c if c and c != (0, 0, 0) and colors.count(c) == 1 else None for c in colors]
    categories = resolve_categories(
        [
            Category(c["name"], isthing=bool(c.get("isthing", 1)), color=color)
            for c, color in zip(data["categories"], usable)
        ],
        background=None,
    )
    settings = {"source_format": "coco-panoptic", "split": split}
    if background is not None:
        if background not in names:
            raise ValueError(f"`background` {background!r} is not a category of {pan_json}: {names}.")
        settings["background"] = background
    return categories, settings


def load_coco(
    folder: str | os.PathLike,
    split: str = "train",
    *,
    panoptic_json: str | os.PathLike | None = None,
    panoptic_dir: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    grounding_json: str | os.PathLike | None = None,
    source: str = "real",
    background: str | None = None,
    cache_dir: str | None = None,
) -> Dataset:
    """Read a COCO-panoptic folder (ours, or the official COCO layout) into the contract Dataset.

    Looks for ``panoptic_<split>.json`` in ``folder`` or ``folder/annotations``, PNGs in ``panoptic/``,
    ``panoptic_<split>/`` or ``annotations/panoptic_<split>/``, images in ``images/`` or ``<split>/``, and the
    optional ``grounding_<split>.json``. The semantic map is always derived from the panoptic PNG (void -> 255), so
    folders without ``semantic/`` work and foreign semantic id conventions never leak in. Category order is the
    JSON's ``categories`` order. ``background``: name of a category to treat as the explicit background (it must be
    a stuff category already present); only recorded in the settings.
    """
    folder = Path(folder)
    pan_json, pan_dir, img_dir = _locate(folder, split, panoptic_json, panoptic_dir, image_dir)
    if grounding_json is None and (folder / f"grounding_{split}.json").exists():
        grounding_json = folder / f"grounding_{split}.json"
    with open(pan_json, encoding="utf-8") as f:
        data = json.load(f)
    categories, settings = _categories_and_settings(data, split, background, pan_json)
    feats = features(categories, settings=settings)
    gen_kwargs = {
        "panoptic_json": str(pan_json),
        "panoptic_dir": str(pan_dir),
        "image_dir": str(img_dir),
        "grounding_json": str(grounding_json) if grounding_json else None,
        "source": source,
    }
    fingerprint = _fingerprint(
        [str(pan_json), str(pan_dir), str(img_dir), gen_kwargs["grounding_json"]],
        json.dumps([source, feats.to_dict()], sort_keys=True, default=str),
    )
    if not data["annotations"]:
        raise ContractError(f"load_coco: {pan_json} has no annotations.")
    try:
        return Dataset.from_generator(
            _rows, features=feats, gen_kwargs=gen_kwargs, fingerprint=fingerprint, cache_dir=cache_dir
        )
    except DatasetGenerationError as err:  # surface our own precise error, not the builder's wrapper
        if isinstance(err.__cause__, ContractError | OSError | ValueError):
            raise err.__cause__ from None
        raise
