"""The COCO panoptic id codec (``id = R + 256 G + 256^2 B``, 0 = void) and segment geometry.

The codec is panopticapi's ``rgb2id``/``id2rgb``; these wrappers only fix the input checks and dtypes so that every
caller gets int32 ids and uint8 colours.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from panopticapi.utils import id2rgb as _panopticapi_id2rgb
from panopticapi.utils import rgb2id as _panopticapi_rgb2id

__all__ = ["id2rgb", "rgb2id", "segment_geometry"]


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """int32 ``[H, W]`` segment ids from an ``[H, W, 3]`` (or RGBA) panoptic array."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an [H, W, 3] RGB array, got shape {rgb.shape}")
    return _panopticapi_rgb2id(rgb[..., :3].astype(np.int32))


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """uint8 ``[H, W, 3]`` panoptic colours from integer segment ids (0 = void)."""
    return _panopticapi_id2rgb(np.asarray(ids, dtype=np.int64))


def segment_geometry(ids: np.ndarray, segment_ids: Sequence[int]) -> dict[int, tuple[list[float], int]]:
    """bbox ``[x, y, w, h]`` (pixel extents, w = x1 - x0 + 1 as panopticapi) and area per segment id."""
    out: dict[int, tuple[list[float], int]] = {}
    for sid in segment_ids:
        mask = ids == sid
        area = int(mask.sum())
        if area == 0:
            out[sid] = ([0.0, 0.0, 0.0, 0.0], 0)
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
        out[sid] = ([float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)], area)
    return out
