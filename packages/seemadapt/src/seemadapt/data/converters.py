"""Real data into the contract: image + mask folders (``from_masks``) and COCO-panoptic folders (``from_coco_panoptic``).

Both return an in-memory ``datasets.Dataset`` that passes :func:`seemadapt.data.validate`, with the categories
(thing/stuff, colours) attached to ``info.description``. Original image bytes are kept as they are (no re-encoding of
JPEGs); annotations are rebuilt from the masks, so ``bbox``/``area``/``semantic`` always agree with the pixels.
"""

from __future__ import annotations

import io
import json
import warnings
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
from PIL import Image as PILImage
from scipy import ndimage

from seemadapt.data.contract import (
    IGNORE_LABEL,
    Category,
    ContractError,
    attach_categories,
    contract_features,
    make_row,
    rgb2id,
)

__all__ = ["from_coco_panoptic", "from_masks"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Thing masks are split into instances with 8-connectivity (diagonal neighbours join), as diffsynth does.
_EIGHT = ndimage.generate_binary_structure(2, 2)


def _build(rows: list[dict], categories: list[Category]) -> datasets.Dataset:
    features = contract_features([c.name for c in categories])
    ds = datasets.Dataset.from_list(rows, features=features, info=datasets.DatasetInfo(features=features))
    return attach_categories(ds, categories)


def _image_payload(path: Path) -> tuple[bytes, tuple[int, int]]:
    """Original bytes and (w, h). Files with an EXIF rotation are re-encoded unrotated, matching their masks."""
    data = path.read_bytes()
    try:
        with PILImage.open(io.BytesIO(data)) as img:
            img.load()
            size = img.size
            if img.getexif().get(0x0112, 1) not in (None, 1) or img.format not in ("JPEG", "PNG"):
                buf = io.BytesIO()
                img.convert("RGB").save(buf, format="PNG")
                data = buf.getvalue()
    except (OSError, SyntaxError, ValueError) as err:
        raise ContractError(
            f"{path}: corrupt or unreadable image ({err}). Fix: re-encode or remove the file."
        ) from None
    return data, size


def _files(folder: Path, what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {str(folder)!r} is not a directory.")
    return {
        p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    }


def _things(things: bool | Collection[str], names: Sequence[str]) -> set[str]:
    if isinstance(things, bool):
        return set(names) if things else set()
    things = {str(t) for t in things}
    unknown = sorted(things - set(names))
    if unknown:
        raise ValueError(f"`things` names {unknown} that are not in classes {list(names)}.")
    return things


def from_masks(
    images_dir: str | Path,
    masks_dir: str | Path,
    classes: str | Sequence[str] | Mapping[int, str],
    *,
    mode: Literal["binary", "values"] = "binary",
    background: str | None = "background",
    threshold: int | None = None,
    things: bool | Collection[str] = True,
    instances: Literal["components", "semantic"] = "components",
    mask_suffix: str = "",
    min_area: int = 1,
    source: str = "real",
) -> datasets.Dataset:
    """Image + semantic-mask folders (the usual medical layout, e.g. Kvasir-SEG ``images/*.jpg`` + ``masks/*.jpg``).

    Masks pair with images by file stem (``masks/<stem><mask_suffix>.*``).

    Args:
        classes: ``mode="binary"``: the one foreground class name. ``mode="values"``: a list of names, where mask
            value ``v`` is ``classes[v - 1]`` when ``background`` is set (value 0 = background) and ``classes[v]``
            when it is None; or an explicit ``{value: name}`` mapping.
        mode: ``"binary"``: a pixel is the class where ``mask > threshold``, else background. ``"values"``: mask
            values are class values; ``255`` is ignore (void).
        background: the explicit stuff category for the zero value (known non-target pixels, supervised and
            scored); ``None`` makes those pixels void instead.
        threshold: binary cut. ``None`` = 127 (robust to JPEG-compressed 0/255 masks, as in Kvasir-SEG), or 0
            for masks whose maximum is 1 (0/1 PNGs).
        things: which classes are things (split into instances); True = all, False = none, or a set of names.
        instances: ``"components"`` splits each thing into 8-connected components; ``"semantic"`` keeps one
            segment per class.
        min_area: thing components smaller than this many pixels become void (JPEG speckles).
    """
    images = _files(Path(images_dir), "images_dir")
    masks = _files(Path(masks_dir), "masks_dir")
    if not images:
        raise FileNotFoundError(
            f"images_dir {str(images_dir)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})."
        )
    if mode == "binary":
        if isinstance(classes, str):
            classes = [classes]
        if isinstance(classes, Mapping) or len(classes) != 1:
            raise ValueError(
                f"mode='binary' needs exactly one class name, got {classes!r}; use mode='values'."
            )
        value_to_name = {1: str(classes[0])}
    elif mode == "values":
        if isinstance(classes, str):
            raise ValueError(
                "mode='values' needs a list of class names or a {value: name} mapping, not a str."
            )
        if isinstance(classes, Mapping):
            value_to_name = {int(k): str(v) for k, v in classes.items()}
        else:
            offset = 1 if background is not None else 0
            value_to_name = {i + offset: str(n) for i, n in enumerate(classes)}
        if background is not None and 0 in value_to_name:
            raise ValueError(f"mask value 0 is the background {background!r}; start class values at 1.")
        if IGNORE_LABEL in value_to_name:
            raise ValueError("mask value 255 is reserved for ignore; give the class another value.")
    else:
        raise ValueError(f"mode must be 'binary' or 'values', got {mode!r}.")
    names = list(value_to_name.values())
    if background is not None:
        if background in names:
            raise ValueError(f"background {background!r} is also a class name; rename one of them.")
        names.append(background)
    thing_names = _things(things, names[: len(value_to_name)])
    categories = [Category(i, n, n in thing_names) for i, n in enumerate(names)]
    lut = np.full(256, -1, dtype=np.int64)  # mask value -> category index, -1 = void
    if mode == "values":
        for i, value in enumerate(value_to_name):
            lut[value] = i
        if background is not None:
            lut[0] = len(names) - 1
    rows = []
    missing = []
    for image_id, (stem, image_path) in enumerate(images.items()):
        mask_path = masks.get(stem + mask_suffix)
        if mask_path is None:
            missing.append(image_path.name)
            continue
        data, (w, h) = _image_payload(image_path)
        try:
            with PILImage.open(mask_path) as m:
                mask = np.asarray(m.convert("L"))
        except (OSError, SyntaxError, ValueError) as err:
            raise ContractError(f"{mask_path}: corrupt or unreadable mask ({err}).") from None
        if mask.shape != (h, w):
            raise ContractError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image {image_path.name} is {w}x{h}."
            )
        if mode == "binary":
            cut = threshold if threshold is not None else (0 if mask.max() <= 1 else 127)
            labels = np.where(mask > cut, 0, len(names) - 1 if background is not None else -1)
        else:
            labels = lut[mask]
            unknown = np.unique(mask[(labels < 0) & (mask != IGNORE_LABEL)])
            if background is None:
                unknown = unknown[unknown != 0] if 0 not in value_to_name else unknown
            if unknown.size:
                raise ContractError(
                    f"{mask_path}: mask value(s) {unknown.tolist()[:8]} map to no class ({value_to_name}). Fix: "
                    "pass classes as a {value: name} mapping covering them, or paint them 255 (ignore)."
                )
        ids = np.zeros((h, w), dtype=np.int32)
        segments = []
        for cat in categories:
            region = labels == cat.id
            if not region.any():
                continue
            if cat.isthing and instances == "components":
                comp, n = ndimage.label(region, structure=_EIGHT)
                for k in range(1, n + 1):
                    part = comp == k
                    if part.sum() < min_area:
                        continue
                    segments.append({"id": len(segments) + 1, "category_id": cat.id, "isthing": True})
                    ids[part] = len(segments)
            else:
                segments.append({"id": len(segments) + 1, "category_id": cat.id, "isthing": cat.isthing})
                ids[region] = len(segments)
        rows.append(
            make_row(
                image=data,
                panoptic_ids=ids,
                segments=segments,
                image_id=image_id,
                file_name=image_path.name,
                source=source,
            )
        )
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) have no mask in {str(masks_dir)!r} (e.g. {missing[:3]}); masks pair by stem"
            f"{f' + suffix {mask_suffix!r}' if mask_suffix else ''}. Fix: add the masks or remove the images."
        )
    extra = sorted(set(masks) - {s + mask_suffix for s in images})
    if extra:
        warnings.warn(f"{len(extra)} mask(s) without an image were skipped (e.g. {extra[:3]}).", stacklevel=2)
    return _build(rows, categories)


# --------------------------------------------------------------------------------------------- COCO panoptic


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


def _find_grounding(folder: Path, split: str) -> Path | None:
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
    from pycocotools import mask as mask_utils

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


def _load_grounding(path: Path) -> tuple[dict[Any, list[dict]], dict[str, Any]]:
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


def _link_grounding(
    anns: Sequence[Mapping], ids: np.ndarray, segments: Sequence[Mapping], min_iou: float
) -> tuple[list[dict], int]:
    """Attach each grounding annotation to a panoptic segment: by ``segment_id``, else by mask IoU, else by id."""
    seg_ids = {int(s["id"]) for s in segments}
    sentences: dict[int, list[str]] = defaultdict(list)
    dropped = 0
    h, w = ids.shape
    for a in anns:
        texts = _sentences(a.get("sentences"))
        if not texts:
            continue
        target = None
        if a.get("segment_id") is not None and int(a["segment_id"]) in seg_ids:
            target = int(a["segment_id"])
        elif a.get("segmentation"):
            mask = _decode_segmentation(a["segmentation"], h, w)
            best, best_iou = None, 0.0
            if mask is not None and mask.any():
                for sid in seg_ids:
                    seg = ids == sid
                    inter = np.logical_and(seg, mask).sum()
                    if inter:
                        iou = inter / np.logical_or(seg, mask).sum()
                        if iou > best_iou:
                            best, best_iou = sid, iou
            target = best if best_iou >= min_iou else None
        else:
            for key in ("id", "ann_id"):
                if a.get(key) is not None and int(a[key]) in seg_ids:
                    target = int(a[key])
                    break
        if target is None:
            dropped += 1
            continue
        for t in texts:
            if t not in sentences[target]:
                sentences[target].append(t)
    return [{"segment_id": sid, "sentences": s} for sid, s in sorted(sentences.items())], dropped


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
    they carry them (diffsynth's export does), else ``""``/``-1``/``source`` (default ``"real"``). Each annotation is attached to a panoptic segment by its ``segment_id`` if it
    has one, else by mask IoU >= ``min_iou``, else by its ``id``/``ann_id``; unmatched ones are dropped with a warning.
    """
    folder = Path(folder)
    json_path = Path(panoptic_json) if panoptic_json is not None else _find_json(folder, split)
    meta = json.loads(Path(json_path).read_text())
    for key in ("images", "annotations", "categories"):
        if key not in meta:
            raise ContractError(
                f"{json_path}: the panoptic JSON has no {key!r} list; is it a COCO panoptic file?"
            )
    pan_dir = (
        Path(panoptic_dir)
        if panoptic_dir is not None
        else _first(
            [
                folder / "panoptic",
                folder / f"panoptic_{split}",
                json_path.with_suffix(""),
                folder / json_path.stem,
            ],
            "panoptic PNG folder",
            "Pass panoptic_dir=...",
        )
    )
    img_dir = (
        Path(images_dir)
        if images_dir is not None
        else _first(
            [folder / "images" / split, folder / "images", folder / split, folder / f"{split}2017"],
            "images folder",
            "Pass images_dir=...",
        )
    )
    cats_json = sorted(meta["categories"], key=lambda c: c["id"])
    to_contiguous = {c["id"]: i for i, c in enumerate(cats_json)}
    categories = [
        Category(i, str(c["name"]), bool(c.get("isthing", 0)), tuple(c["color"]) if c.get("color") else None)
        for i, c in enumerate(cats_json)
    ]
    images = {im["id"]: im for im in meta["images"]}
    if grounding_json is None:
        grounding_path = _find_grounding(folder, split)
    elif grounding_json is False:
        grounding_path = None
    else:
        grounding_path = Path(grounding_json)
    by_image, name_to_gid = _load_grounding(grounding_path) if grounding_path else ({}, {})
    rows = []
    dropped = 0
    for ann in sorted(meta["annotations"], key=lambda a: a["image_id"]):
        image_id = ann["image_id"]
        info = images.get(image_id)
        if info is None:
            raise ContractError(f"{json_path}: annotation for image_id {image_id} has no entry in 'images'.")
        image_path = img_dir / info["file_name"]
        if not image_path.is_file():
            raise FileNotFoundError(
                f"image {str(image_path)!r} (image_id {image_id}) is missing; pass images_dir=..."
            )
        png_path = pan_dir / ann.get("file_name", Path(info["file_name"]).with_suffix(".png").name)
        if not png_path.is_file():
            raise FileNotFoundError(f"panoptic PNG {str(png_path)!r} (image_id {image_id}) is missing.")
        data, (w, h) = _image_payload(image_path)
        try:
            with PILImage.open(png_path) as p:
                ids = rgb2id(np.asarray(p.convert("RGB")))
        except (OSError, SyntaxError, ValueError) as err:
            raise ContractError(f"{png_path}: corrupt or unreadable panoptic PNG ({err}).") from None
        if ids.shape != (h, w):
            raise ContractError(f"{png_path}: {ids.shape[1]}x{ids.shape[0]} but the image is {w}x{h}.")
        present = set(np.unique(ids).tolist())
        segments = []
        for s in ann["segments_info"]:
            if s["category_id"] not in to_contiguous:
                raise ContractError(
                    f"{json_path}: image_id {image_id} segment {s['id']} has category_id {s['category_id']} that is "
                    "not in 'categories'."
                )
            if s["id"] not in present:
                continue
            cat = categories[to_contiguous[s["category_id"]]]
            segments.append(
                {"id": s["id"], "category_id": cat.id, "isthing": cat.isthing, "iscrowd": s.get("iscrowd", 0)}
            )
        described = {s["id"] for s in segments}
        undescribed = present - described - {0}
        if undescribed:
            ids = np.where(np.isin(ids, list(undescribed)), 0, ids)  # unlabelled ids -> void
        gkey = name_to_gid.get(Path(info["file_name"]).stem, image_id)
        grounding, lost = _link_grounding(by_image.get(gkey, []), ids, segments, min_iou)
        dropped += lost
        rows.append(
            make_row(
                image=data,
                panoptic_ids=ids,
                segments=segments,
                image_id=image_id,
                file_name=info["file_name"],
                grounding=grounding,
                prompt=str(info.get("prompt") or ""),
                seed=int(info.get("seed", -1)),
                source=source or info.get("source") or "real",
            )
        )
    if not rows:
        raise ContractError(f"{json_path}: no annotations; the split {split!r} is empty.")
    if dropped:
        warnings.warn(
            f"{dropped} grounding annotation(s) matched no panoptic segment (IoU < {min_iou}) and were dropped.",
            stacklevel=2,
        )
    return _build(rows, categories)
