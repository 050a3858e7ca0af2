"""From averaged attention to soft class maps and a label map (Dataset Diffusion's refinement).

``A* = (A_S)^tau . A_C``: the averaged self-attention ``A_S`` is row-stochastic, so multiplying by it
``tau`` times is a ``tau``-step random walk that spreads each class's cross-attention over the regions
that attend to each other. Then per-class min-max normalisation, bicubic upsampling to the image and two
thresholds: a confident class, an uncertain band (ignored by losses), or background. Labels are taken
from the upsampled maps as they are (Dataset Diffusion's argmax); only the stored maps are clamped to
[0, 1], since bicubic overshoots and a clamp would tie two classes that both overshoot past 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def refine(self_attn: torch.Tensor, cross_attn: torch.Tensor, tau: int = 4) -> torch.Tensor:
    """``(A_S)^tau . A_C`` for ``self_attn`` ``[N, N]`` / ``[B, N, N]`` and ``cross_attn`` ``[N, K]`` / ``[B, N, K]``.

    Computed as ``tau`` products with the thin ``[N, K]`` matrix (``tau N^2 K`` flops) unless squaring
    the ``N x N`` matrix is cheaper (only when K is large compared with N), so ``A_S^tau`` is never formed
    needlessly. Works in fp32 (or the inputs' wider float type). Returns ``[..., N, K]``.
    """
    if not isinstance(tau, int) or isinstance(tau, bool) or tau < 0:
        raise ValueError(f"refine: tau must be an integer >= 0, got {tau!r}.")
    if self_attn.ndim not in (2, 3) or self_attn.shape[-1] != self_attn.shape[-2]:
        raise ValueError(f"refine: self_attn must be [N, N] or [B, N, N], got {tuple(self_attn.shape)}.")
    if cross_attn.ndim != self_attn.ndim or cross_attn.shape[-2] != self_attn.shape[-1]:
        raise ValueError(
            f"refine: cross_attn must be [..., N, K] matching self_attn {tuple(self_attn.shape)}, "
            f"got {tuple(cross_attn.shape)}."
        )
    dtype = torch.promote_types(torch.promote_types(self_attn.dtype, cross_attn.dtype), torch.float32)
    a_s, a_c = self_attn.to(dtype), cross_attn.to(dtype)
    n, k = a_s.shape[-1], a_c.shape[-1]
    squarings = max(tau.bit_length() - 1, 0)
    multiplies = max(tau.bit_count() - 1, 0)
    if tau * k > (squarings + multiplies) * n + k:
        return torch.linalg.matrix_power(a_s, tau) @ a_c
    out = a_c
    for _ in range(tau):
        out = a_s @ out
    return out


def normalize(maps: torch.Tensor, dims: Sequence[int] = (-2, -1), eps: float = 1e-5) -> torch.Tensor:
    """Per-class min-max normalisation to [0, 1] over ``dims`` (default: the spatial axes of ``[..., K, H, W]``).

    A map whose spread is below ``eps`` times its largest magnitude has no spatial signal - only float
    rounding, which min-max would blow up into a random full-range map - and becomes all zeros.
    """
    dims = tuple(dims)
    low = maps.amin(dim=dims, keepdim=True)
    span = maps.amax(dim=dims, keepdim=True) - low
    scale = maps.abs().amax(dim=dims, keepdim=True)
    signal = span > eps * scale
    return torch.where(
        signal, (maps - low) / torch.where(signal, span, torch.ones_like(span)), torch.zeros_like(maps)
    )


def upsample(maps: torch.Tensor, size: tuple[int, int], *, clamp: bool = True) -> torch.Tensor:
    """Bicubic resize of ``[K, h, w]`` or ``[B, K, h, w]`` maps to ``size = (H, W)``; ``clamp`` cuts bicubic's
    overshoot back to [0, 1] (Dataset Diffusion never clamps, so intermediate resizes pass ``clamp=False``)."""
    if maps.ndim not in (3, 4):
        raise ValueError(f"upsample: maps must be [K, h, w] or [B, K, h, w], got {tuple(maps.shape)}.")
    batched = maps if maps.ndim == 4 else maps[None]
    out = F.interpolate(batched.float(), size=tuple(size), mode="bicubic", align_corners=False)
    if clamp:
        out = out.clamp_(0.0, 1.0)
    return out if maps.ndim == 4 else out[0]


def class_columns(cross_attn: torch.Tensor, positions: Sequence[Sequence[int]]) -> torch.Tensor:
    """Per-class maps from token columns: ``[..., N, S]`` -> ``[..., N, K]``, averaging each class's
    positions (multi-token names, repeated words)."""
    cols = []
    for index, pos in enumerate(positions):
        if len(pos) == 0:
            raise ValueError(f"class_columns: class {index} has no token positions.")
        cols.append(cross_attn[..., list(pos)].mean(dim=-1))
    return torch.stack(cols, dim=-1)


def to_grid(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``[..., N, K]`` -> ``[..., K, h, w]`` with ``N = h * w`` (row-major, as the UNet flattens)."""
    h, w = grid
    if maps.shape[-2] != h * w:
        raise ValueError(f"to_grid: {maps.shape[-2]} positions do not fill a {h}x{w} grid.")
    return maps.transpose(-1, -2).reshape(*maps.shape[:-2], maps.shape[-1], h, w)


def check_thresholds(threshold: float, uncertainty_threshold: float) -> None:
    if not 0.0 <= uncertainty_threshold <= threshold <= 1.0:
        raise ValueError(
            f"thresholds must satisfy 0 <= uncertainty_threshold <= threshold <= 1, got "
            f"uncertainty_threshold={uncertainty_threshold} and threshold={threshold}; the uncertain band is "
            "[uncertainty_threshold, threshold)."
        )


def label(
    soft_maps: torch.Tensor | np.ndarray,
    threshold: float = 0.6,
    uncertainty_threshold: float = 0.5,
    ignore_index: int = 255,
    background_index: int | None = None,
) -> np.ndarray:
    """``[K, H, W]`` soft maps -> ``uint8 [H, W]`` labels.

    The argmax class where its score is ``>= threshold``; ``ignore_index`` where the best score lies in
    ``[uncertainty_threshold, threshold)``; ``background_index`` (default ``K``) below that.
    """
    check_thresholds(threshold, uncertainty_threshold)
    maps = torch.as_tensor(np.asarray(soft_maps) if not torch.is_tensor(soft_maps) else soft_maps)
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise ValueError(f"label: soft_maps must be [K, H, W] with K >= 1, got {tuple(maps.shape)}.")
    k = maps.shape[0]
    background = k if background_index is None else int(background_index)
    for name, value in (("ignore_index", ignore_index), ("background_index", background)):
        if not 0 <= value <= 255:
            raise ValueError(f"label: {name}={value} does not fit uint8 (0..255).")
    if k > 255 or (ignore_index < k):
        raise ValueError(f"label: {k} classes collide with ignore_index={ignore_index}; use fewer classes.")
    if background < k:
        raise ValueError(f"label: background_index={background} collides with class indices 0..{k - 1}.")
    score, index = maps.float().max(dim=0)
    out = torch.full(score.shape, background, dtype=torch.uint8)
    out[score >= uncertainty_threshold] = ignore_index
    confident = score >= threshold
    out[confident] = index[confident].to(torch.uint8)
    return out.numpy()


def soft_maps_from_attention(
    self_attn: torch.Tensor,
    cross_attn: torch.Tensor,
    grid: tuple[int, int],
    size: tuple[int, int],
    tau: int = 4,
    *,
    clamp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: ``A_S [N, N]`` and class maps ``A_C [N, K]`` on the same ``grid`` -> (refined, cross) soft
    maps ``[K, H, W]`` at image ``size``, each normalised per class before upsampling. ``clamp=False`` keeps
    the refined maps' bicubic overshoot, which labelling needs (the raw cross maps, for display, are clamped)."""
    refined = normalize(to_grid(refine(self_attn, cross_attn, tau), grid))
    cross = normalize(to_grid(cross_attn.float(), grid))
    return upsample(refined, size, clamp=clamp), upsample(cross, size)
