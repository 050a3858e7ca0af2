"""Contract rows: building one from arrays, and reading rows with their images still encoded."""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import datasets
import numpy as np
from PIL import Image as PILImage

from segcontract.columns import IGNORE_LABEL
from segcontract.panoptic import id2rgb, segment_geometry

__all__ = ["iter_raw_rows", "make_row", "png_bytes"]


def png_bytes(array_or_image: np.ndarray | PILImage.Image, mode: str | None = None) -> bytes:
    """PNG bytes of an array (``mode`` forces the PIL mode, e.g. ``"L"``) or a PIL image."""
    img = array_or_image
    if isinstance(img, np.ndarray):
        img = PILImage.fromarray(img, mode=mode) if mode else PILImage.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _image_value(image: PILImage.Image | np.ndarray | bytes) -> tuple[dict[str, Any], tuple[int, int]]:
    """The ``{"bytes", "path"}`` cell of ``image`` and its size ``(w, h)``; encoded bytes are kept as they are."""
    if isinstance(image, bytes):
        with PILImage.open(io.BytesIO(image)) as probe:
            return {"bytes": image, "path": None}, probe.size
    pil = PILImage.fromarray(np.asarray(image)) if isinstance(image, np.ndarray) else image
    return {"bytes": png_bytes(pil), "path": None}, pil.size


def _segment_records(ids: np.ndarray, segments: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    geometry = segment_geometry(ids, [int(s["id"]) for s in segments])
    records = []
    for s in segments:
        bbox, area = geometry[int(s["id"])]
        if area == 0:
            raise ValueError(f"segment id {s['id']} does not occur in panoptic_ids; drop it from segments.")
        records.append(
            {
                "id": int(s["id"]),
                "category_id": int(s["category_id"]),
                "iscrowd": int(s.get("iscrowd", 0)),
                "bbox": bbox,
                "area": area,
                "isthing": bool(s["isthing"]),
            }
        )
    return records


def make_row(
    *,
    image: PILImage.Image | np.ndarray | bytes,
    panoptic_ids: np.ndarray,
    segments: Sequence[Mapping[str, Any]],
    image_id: int,
    file_name: str,
    grounding: Sequence[Mapping[str, Any]] = (),
    semantic: np.ndarray | None = None,
    prompt: str = "",
    seed: int = -1,
    source: str = "real",
) -> dict[str, Any]:
    """One contract row from arrays; ``bbox``/``area`` come from the id map, the semantic map too if not given.

    Args:
        image: a PIL image, an ``[H, W, 3]`` uint8 array (stored as PNG), or already-encoded bytes (kept as-is,
            e.g. the original JPEG of a real dataset).
        panoptic_ids: int ``[H, W]`` segment ids, 0 = void.
        segments: ``{id, category_id, isthing, iscrowd=0}`` per segment; every id must occur in ``panoptic_ids``.
        grounding: ``{segment_id, sentences}`` records.
        semantic: uint8 ``[H, W]`` class index / 255; by default painted from the segments (void -> 255).
    """
    ids = np.asarray(panoptic_ids)
    if ids.ndim != 2:
        raise ValueError(f"panoptic_ids must be [H, W], got shape {ids.shape}")
    image_value, size = _image_value(image)
    if size != (ids.shape[1], ids.shape[0]):
        raise ValueError(f"image size {size} (w, h) != panoptic_ids shape {ids.shape[::-1]} (w, h)")
    records = _segment_records(ids, segments)
    if semantic is None:
        semantic = np.full(ids.shape, IGNORE_LABEL, dtype=np.uint8)
        for s in records:
            semantic[ids == s["id"]] = s["category_id"]
    return {
        "image": image_value,
        "image_id": int(image_id),
        "file_name": str(file_name),
        "width": int(size[0]),
        "height": int(size[1]),
        "panoptic": {"bytes": png_bytes(id2rgb(ids)), "path": None},
        "segments_info": records,
        "semantic": {"bytes": png_bytes(np.asarray(semantic, dtype=np.uint8), mode="L"), "path": None},
        "grounding": [
            {"segment_id": int(g["segment_id"]), "sentences": [str(t) for t in g.get("sentences", [])]}
            for g in grounding
        ],
        "prompt": str(prompt),
        "seed": int(seed),
        "source": str(source),
    }


def iter_raw_rows(
    dataset: datasets.Dataset, columns: Sequence[str] | None = None, batch_size: int = 32
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, row)`` with images left encoded (``{"bytes", "path"}``) and ClassLabels as ints."""
    ds = dataset.select_columns(list(columns)) if columns is not None else dataset
    ds = ds.with_format("arrow")
    for start in range(0, len(ds), batch_size):
        for offset, row in enumerate(ds[start : start + batch_size].to_pylist()):
            yield start + offset, row
