"""Per-row checks: annotation fields, then (deep) the decoded image, panoptic and semantic PNGs.

Every error names the row (index, ``image_id``, ``file_name``), the column or field, and the fix.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

from segcontract.category import Category
from segcontract.columns import IGNORE_LABEL, MAX_SEGMENT_ID, SOURCES, VOID
from segcontract.errors import ContractError
from segcontract.panoptic import rgb2id

__all__ = ["DecodedRow", "check_fields", "decode_image", "decode_row", "row_label"]

_EXIF_ORIENTATION = 0x0112


def row_label(name: str, index: int, row: Mapping[str, Any]) -> str:
    """``"<name> row <index> (image_id=..., file_name=...)"``: how errors name a row."""
    extra = []
    if "image_id" in row:
        extra.append(f"image_id={row['image_id']}")
    if row.get("file_name"):
        extra.append(f"file_name={row['file_name']!r}")
    return f"{name} row {index}" + (f" ({', '.join(extra)})" if extra else "")


@dataclass
class DecodedRow:
    """A row with its images decoded and checked (what registration writes out)."""

    index: int
    row: dict[str, Any]
    image: PILImage.Image
    image_bytes: bytes
    image_format: str | None
    image_reencode: bool
    panoptic_ids: np.ndarray
    semantic: np.ndarray


def _bytes_of(value: Any) -> bytes | None:
    if isinstance(value, Mapping):
        data = value.get("bytes")
        if data:
            return bytes(data)
        path = value.get("path")
        if path and Path(path).is_file():
            return Path(path).read_bytes()
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return None


def decode_image(value: Any, col: str, where: str) -> tuple[PILImage.Image, bytes]:
    """Decode an encoded image cell (``{"bytes", "path"}`` or bytes) fully, so corrupt bytes fail here."""
    data = _bytes_of(value)
    if not data:
        raise ContractError(
            f"{where}: column {col!r} is empty (no bytes and no readable path). Fix: drop the row "
            "(ds.filter) or re-attach the file."
        )
    try:
        img = PILImage.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ContractError(
            f"{where}: column {col!r} holds corrupt or truncated image bytes ({type(err).__name__}: {err}). "
            "Fix: re-encode the file or drop the row before training."
        ) from None
    if img.width == 0 or img.height == 0:
        raise ContractError(
            f"{where}: column {col!r} is an empty {img.width}x{img.height} image; drop the row."
        )
    return img, data


# ------------------------------------------------------------------------------------------------ fields


def _check_scalars(where: str, row: Mapping[str, Any]) -> None:
    for col in ("width", "height"):
        v = row.get(col)
        if not isinstance(v, int) or v <= 0:
            raise ContractError(
                f"{where}: column {col!r} is {v!r}; it must be the positive image size in pixels."
            )
    if not isinstance(row.get("file_name"), str) or not row["file_name"].strip():
        raise ContractError(
            f"{where}: column 'file_name' is empty; give every row a stable name like '000123.jpg'."
        )
    if row.get("source") not in SOURCES:
        raise ContractError(
            f"{where}: column 'source' is {row.get('source')!r}; it must be one of {SOURCES}."
        )


def _check_bbox(where: str, j: int, bbox: Any, size: tuple[int, int]) -> None:
    if bbox is None or len(bbox) != 4 or not all(b is not None and math.isfinite(b) for b in bbox):
        raise ContractError(
            f"{where}: segments_info[{j}].bbox = {bbox!r}; it must be 4 finite numbers [x, y, w, h]."
        )
    x, y, w, h = bbox
    if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > size[0] or y + h > size[1]:
        raise ContractError(
            f"{where}: segments_info[{j}].bbox = {list(bbox)} is not an [x, y, w, h] box inside the "
            f"{size[0]}x{size[1]} image. Fix: recompute it from the panoptic PNG (segcontract.make_row does)."
        )


def _check_segment(
    where: str, j: int, s: Mapping[str, Any], num_classes: int, categories: Sequence[Category] | None
) -> None:
    cat = s.get("category_id")
    if not isinstance(cat, int) or not 0 <= cat < num_classes:
        raise ContractError(
            f"{where}: segments_info[{j}].category_id = {cat!r} is out of range 0..{num_classes - 1} (the "
            "ClassLabel names). Fix: add the class to the ClassLabel names or remap the id."
        )
    if s.get("iscrowd") not in (0, 1):
        raise ContractError(f"{where}: segments_info[{j}].iscrowd = {s.get('iscrowd')!r}; it must be 0 or 1.")
    if (
        categories is not None
        and s.get("isthing") is not None
        and bool(s["isthing"]) != categories[cat].isthing
    ):
        raise ContractError(
            f"{where}: segments_info[{j}].isthing = {s['isthing']} but category {categories[cat].name!r} is "
            f"{'a thing' if categories[cat].isthing else 'stuff'}. Fix: make the flags agree with the categories."
        )


def _check_segments(
    where: str, row: Mapping[str, Any], num_classes: int, categories: Sequence[Category] | None
) -> set[int]:
    seen: set[int] = set()
    for j, s in enumerate(row.get("segments_info") or []):
        sid = s.get("id")
        if not isinstance(sid, int) or not 0 < sid <= MAX_SEGMENT_ID:
            raise ContractError(
                f"{where}: segments_info[{j}].id = {sid!r}; segment ids must be in 1..{MAX_SEGMENT_ID} (0 is void)."
            )
        if sid in seen:
            raise ContractError(
                f"{where}: segments_info[{j}].id = {sid} is repeated; segment ids must be unique per image."
            )
        seen.add(sid)
        _check_segment(where, j, s, num_classes, categories)
        _check_bbox(where, j, s.get("bbox"), (row["width"], row["height"]))
    return seen


def _check_grounding(where: str, row: Mapping[str, Any], seen: set[int]) -> None:
    for j, g in enumerate(row.get("grounding") or []):
        if g.get("segment_id") not in seen:
            raise ContractError(
                f"{where}: grounding[{j}].segment_id = {g.get('segment_id')!r} names no segment of segments_info. "
                "Fix: point it at a segment id of this image or drop the record."
            )
        sentences = g.get("sentences") or []
        if not all(isinstance(t, str) for t in sentences):
            raise ContractError(
                f"{where}: grounding[{j}].sentences must be a list of strings, got {sentences!r}."
            )


def check_fields(
    where: str, row: Mapping[str, Any], num_classes: int, categories: Sequence[Category] | None = None
) -> None:
    """The checks that need no image decoding: sizes, names, source, segment records, grounding references."""
    _check_scalars(where, row)
    _check_grounding(where, row, _check_segments(where, row, num_classes, categories))


# ------------------------------------------------------------------------------------------------ images


def _decode_rgb(where: str, row: Mapping[str, Any]) -> tuple[PILImage.Image, bytes, str | None, bool]:
    """The image, its bytes and format, and whether registration must re-encode it (EXIF rotation, odd mode or
    format)."""
    image, image_bytes = decode_image(row["image"], "image", where)
    fmt = image.format
    reencode = image.mode not in ("RGB", "L") or fmt not in ("JPEG", "PNG")
    if image.getexif().get(_EXIF_ORIENTATION, 1) not in (None, 1):  # store what datasets decodes
        image = ImageOps.exif_transpose(image)
        reencode = True
    if (image.width, image.height) != (row["width"], row["height"]):
        raise ContractError(
            f"{where}: the image is {image.width}x{image.height} but width/height say {row['width']}x{row['height']}. "
            "Fix: set width/height to the decoded image size."
        )
    return image, image_bytes, fmt, reencode


def _decode_panoptic(where: str, row: Mapping[str, Any], size: tuple[int, int]) -> np.ndarray:
    pan, _ = decode_image(row["panoptic"], "panoptic", where)
    if pan.mode not in ("RGB", "RGBA"):
        raise ContractError(
            f"{where}: column 'panoptic' is a mode {pan.mode!r} image; it must be an RGB PNG with id = R + 256 G + "
            "256^2 B. Fix: encode the id map with segcontract.id2rgb."
        )
    if pan.size != size:
        raise ContractError(f"{where}: column 'panoptic' is {pan.size} but the image is {size} (w, h).")
    return rgb2id(np.asarray(pan))


def _decode_semantic(
    where: str, row: Mapping[str, Any], size: tuple[int, int], num_classes: int
) -> np.ndarray:
    sem_img, _ = decode_image(row["semantic"], "semantic", where)
    if sem_img.mode not in ("L", "P"):
        raise ContractError(
            f"{where}: column 'semantic' is a mode {sem_img.mode!r} image; it must be a single-channel (mode L) PNG of "
            "class indices with 255 = ignore. Fix: Image.fromarray(label_map.astype(np.uint8), mode='L')."
        )
    if sem_img.size != size:
        raise ContractError(f"{where}: column 'semantic' is {sem_img.size} but the image is {size} (w, h).")
    semantic = np.asarray(sem_img, dtype=np.uint8)
    bad = np.unique(semantic[(semantic >= num_classes) & (semantic != IGNORE_LABEL)])
    if bad.size:
        raise ContractError(
            f"{where}: column 'semantic' holds value(s) {bad.tolist()[:8]} outside 0..{num_classes - 1} (and 255 = "
            "ignore). Fix: map them to a class index or to 255."
        )
    return semantic


def _check_segments_in_png(where: str, row: Mapping[str, Any], ids: np.ndarray) -> None:
    """segments_info and the panoptic PNG describe the same segments, with the same areas."""
    present, counts = np.unique(ids, return_counts=True)
    areas = {int(k): int(v) for k, v in zip(present, counts) if k != VOID}
    described = {int(s["id"]): s for s in row["segments_info"]}
    absent = sorted(set(described) - set(areas))
    if absent:
        raise ContractError(
            f"{where}: segment id {absent[0]} is not in the panoptic PNG; segments_info id(s) {absent[:8]} do not "
            "occur in the panoptic PNG. Fix: drop those records or repaint the PNG (id = R + 256 G + 256^2 B)."
        )
    undescribed = sorted(set(areas) - set(described))
    if undescribed:
        raise ContractError(
            f"{where}: the panoptic PNG holds segment id(s) {undescribed[:8]} with no segments_info record. Fix: "
            "add a record per segment, or paint those pixels 0 (void)."
        )
    for sid, s in described.items():
        if s.get("area") is not None and int(s["area"]) != areas[sid]:
            raise ContractError(
                f"{where}: segment {sid} has area {s['area']} but covers {areas[sid]} pixels in the panoptic PNG. "
                "Fix: recompute area from the PNG (segcontract.make_row does)."
            )


def decode_row(
    index: int,
    row: Mapping[str, Any],
    num_classes: int,
    *,
    name: str = "dataset",
    categories: Sequence[Category] | None = None,
) -> DecodedRow:
    """Decode and check one raw row (from :func:`segcontract.iter_raw_rows`); raises :class:`ContractError`."""
    where = row_label(name, index, row)
    _check_scalars(where, row)
    seen = _check_segments(where, row, num_classes, categories)
    image, image_bytes, fmt, reencode = _decode_rgb(where, row)
    ids = _decode_panoptic(where, row, image.size)
    semantic = _decode_semantic(where, row, image.size, num_classes)
    _check_segments_in_png(where, row, ids)
    _check_grounding(where, row, seen)
    return DecodedRow(index, dict(row), image, image_bytes, fmt, reencode, ids, semantic)
