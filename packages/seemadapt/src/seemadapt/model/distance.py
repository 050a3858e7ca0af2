"""Distance transforms for SEEM's simulated clicks: the convolutional approximation SEEM trained with, and the exact one.

SEEM v1 places a corrective click at the maximum of a distance transform of the error region. Its training code uses
the cascaded-convolution approximation of Pham et al. (2021, "DT layer"), as implemented by ``kornia.contrib``; that
approximation is not the Euclidean distance (it over-weights diagonals, and its offsets grow by ``kernel_size / 2``
per step), so its maximum can sit elsewhere than the exact one's. :func:`conv_distance_transform` computes it from its
definition (no kornia dependency); :func:`deepest_point` picks the deepest pixel with either transform.

Definition (for a binary image whose nonzero pixels are the "outside"): a 3x3 kernel ``K = exp(-|offset| / h)``;
``n = ceil(max(H, W) / (k // 2))`` steps; at step ``i`` the replicate-padded correlation ``c = B * K`` of the current
outside set ``B`` gives ``d = -h log c`` (``+inf`` -> 0); pixels with ``d > 0`` are the new front: they get
``(i * k) // 2 + d`` and join ``B``. The loop stops early once no pixel joins.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt
from torch import Tensor

DistanceMethod = Literal["approximate", "exact"]

__all__ = ["DistanceMethod", "conv_distance_transform", "deepest_point"]


def _soft_min_kernel(kernel_size: int, h: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``exp(-r / h)`` with ``r`` the Euclidean offset from the centre, ``[1, 1, k, k]``."""
    offsets = torch.arange(kernel_size, dtype=dtype, device=device) - kernel_size // 2
    rows, cols = torch.meshgrid(offsets, offsets, indexing="ij")
    return torch.exp(torch.hypot(cols, rows) / -h)[None, None]


def conv_distance_transform(image: Tensor, kernel_size: int = 3, h: float = 0.35) -> Tensor:
    """Approximate distance of every pixel to the nearest nonzero pixel of ``image`` ``[B, C, H, W]`` (float).

    Nonzero pixels get 0. Deterministic (plain convolutions, no atomics); ``h`` sets how hard the soft minimum is.
    """
    if image.dim() != 4:
        raise ValueError(f"conv_distance_transform: image must be [B, C, H, W], got {tuple(image.shape)}.")
    if kernel_size % 2 == 0 or kernel_size < 3:
        raise ValueError(f"conv_distance_transform: kernel_size must be odd and >= 3, got {kernel_size}.")
    batch, channels, height, width = image.shape
    half = kernel_size // 2
    kernel = _soft_min_kernel(kernel_size, h, image.dtype, image.device)
    boundary = image.reshape(batch * channels, 1, height, width).clone()
    out = torch.zeros_like(boundary)
    for step in range(math.ceil(max(height, width) / half)):
        padded = F.pad(boundary, (half, half, half, half), mode="replicate")
        distance = torch.nan_to_num(-h * torch.log(F.conv2d(padded, kernel)), posinf=0.0)
        front = distance > 0
        if not bool(front.any()):
            break
        out = out + torch.where(front, (step * kernel_size) // 2 + distance, torch.zeros_like(distance))
        boundary = torch.where(front, torch.ones_like(boundary), boundary)
    return out.reshape(batch, channels, height, width)


def deepest_point(region: Any, method: DistanceMethod = "exact") -> tuple[int, int] | None:
    """``(row, col)`` of the pixel of ``region`` (bool ``[H, W]``) farthest from its outside, the image border
    counting as outside; first in raster order on ties; ``None`` for an empty region.

    ``method="exact"``: Euclidean distance transform. ``method="approximate"``: :func:`conv_distance_transform`
    (float32), the transform SEEM's training code clicks with. Both run on the region's bounding box plus a one-pixel
    outside margin, which gives the same values as the whole image: the nearest outside pixel is never beyond the
    margin, and the convolutional front only ever sees its 3x3 neighbours, all outside beyond the margin.
    """
    region = np.asarray(region.cpu() if isinstance(region, Tensor) else region, dtype=bool)
    if region.ndim != 2:
        raise ValueError(f"deepest_point: region must be [H, W], got shape {region.shape}.")
    rows, cols = np.nonzero(region)
    if len(rows) == 0:
        return None
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    crop = np.pad(region[r0:r1, c0:c1], 1)
    if method == "exact":
        distance = distance_transform_edt(crop)[1:-1, 1:-1]
        index = int(np.argmax(distance))
    elif method == "approximate":
        outside = torch.from_numpy(~crop).float()[None, None]
        distance = conv_distance_transform(outside)[0, 0, 1:-1, 1:-1]
        index = int(torch.argmax(distance.reshape(-1)))
    else:
        raise ValueError(f"deepest_point: method must be 'exact' or 'approximate', got {method!r}.")
    row, col = np.unravel_index(index, (r1 - r0, c1 - c0))
    return int(row + r0), int(col + c0)
