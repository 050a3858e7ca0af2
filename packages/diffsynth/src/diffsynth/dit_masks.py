"""From a :class:`~diffsynth.dit_attention.DiTStore` to soft class maps, and the DiT settings of ``MaskerConfig``.

The refinement is the UNet one, ``A* = (A_S)^tau . A_C``: ``A_C`` is the mean of a class's image->text columns
(CLIP and T5 positions for SD3, T5 for FLUX), ``A_S`` the image->image block at the same pooled grid, its rows
renormalised to sum to 1 unless ``dit_renormalize=False``. ``tau`` counts random-walk steps on that pooled grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from diffsynth.dit_attention import DiTStore
from diffsynth.masks import class_columns, soft_maps_from_attention
from diffsynth.prompts import TokenSpan


def _check_window(name: str, window: Any) -> tuple[float, float] | None:
    if window is None:
        return None
    start, end = window
    if not 0.0 <= start < end <= 1.0:
        raise ValueError(
            f"MaskerConfig.{name}={window} must be None or (start, end) with 0 <= start < end <= 1."
        )
    return float(start), float(end)


def check_dit_settings(config: Any) -> None:
    """Validate (and normalise) the ``dit_*`` and ``max_sequence_length`` fields of a ``MaskerConfig``."""
    config.dit_joint_blocks = _check_window("dit_joint_blocks", config.dit_joint_blocks)
    config.dit_single_blocks = _check_window("dit_single_blocks", config.dit_single_blocks)
    if config.dit_joint_blocks is None and config.dit_single_blocks is None:
        raise ValueError(
            "MaskerConfig: dit_joint_blocks and dit_single_blocks are both None; select some blocks."
        )
    if isinstance(config.dit_grid, bool) or not isinstance(config.dit_grid, int) or config.dit_grid < 1:
        raise ValueError(
            f"MaskerConfig.dit_grid must be an int >= 1 (pooled grid side), got {config.dit_grid!r}."
        )
    length = config.max_sequence_length
    if length is not None and (not isinstance(length, int) or not 1 <= length <= 512):
        raise ValueError(
            f"MaskerConfig.max_sequence_length must be None or an int in 1..512, got {length!r}."
        )


def dit_pool(grid: tuple[int, int], target: int) -> int:
    """Pooling factor bringing the token grid's short side down to ``target`` (1 when it is already smaller)."""
    pool = max(1, min(grid) // target)
    if grid[0] % pool or grid[1] % pool:
        raise ValueError(
            f"MaskerConfig.dit_grid={target}: the {grid[0]}x{grid[1]} token grid does not split into {pool}x{pool} "
            f"cells; choose an image size whose token grid (side / 16) is a multiple of {pool}, or another dit_grid."
        )
    return pool


def dit_soft_maps(
    store: DiTStore,
    spans: Sequence[Sequence[TokenSpan]],
    size: tuple[int, int],
    tau: int,
    renormalize: bool,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Refined (unclamped, for labelling) and raw class maps ``[K, H, W]`` (fp32 CPU) for every image of a store."""
    self_attn = store.self_mean(renormalize)
    cross_attn = store.cross_mean()
    refined_all, cross_all = [], []
    for i, image_spans in enumerate(spans):
        cross = class_columns(cross_attn[i], [s.positions for s in image_spans])  # [Np, K]
        refined, raw = soft_maps_from_attention(
            self_attn[i], cross, store.pooled_grid, size, tau, clamp=False
        )
        refined_all.append(refined.float().cpu())
        cross_all.append(raw.float().cpu())
    return refined_all, cross_all
