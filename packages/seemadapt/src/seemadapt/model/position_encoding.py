"""Fixed 2-D sine positional encoding (DETR style), used by the pixel decoder and the SEEM decoder.

It has no parameters, so it never appears in a checkpoint; what matters for checkpoint parity is the exact layout:
``[B, 2 * num_pos_feats, H, W]`` with the ``y`` half first, then the ``x`` half; inside each half channel ``c`` holds
``sin`` (even ``c``) or ``cos`` (odd ``c``) of ``position / temperature ** (2 * (c // 2) / num_pos_feats)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine encoding of pixel row and column, optionally normalised to ``(0, scale]``.

    Positions count from 1 (a cumulative sum over valid pixels), so with ``normalize=True`` the last row and column
    map to ``scale`` whatever the feature size: the encoding is resolution independent, which is why the pretrained
    attention layers work at any input size.
    """

    def __init__(
        self,
        num_pos_feats: int = 64,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if num_pos_feats <= 0 or num_pos_feats % 2:
            raise ValueError(
                f"PositionEmbeddingSine.num_pos_feats must be a positive even number, got {num_pos_feats}."
            )
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: pass normalize=True when giving a scale.")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Encoding for a feature map ``x`` ``[B, C, H, W]``; ``mask`` ``[B, H, W]`` marks padded pixels (True)."""
        batch, _, height, width = x.shape
        if mask is None:
            valid = torch.ones(batch, height, width, device=x.device, dtype=x.dtype)
        else:
            valid = (~mask).to(x.dtype)
        y_pos = valid.cumsum(1)
        x_pos = valid.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y_pos = y_pos / (y_pos[:, -1:, :] + eps) * self.scale
            x_pos = x_pos / (x_pos[:, :, -1:] + eps) * self.scale
        index = torch.arange(self.num_pos_feats, device=x.device, dtype=x.dtype)
        period = self.temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / self.num_pos_feats)
        return torch.cat((self._encode(y_pos, period), self._encode(x_pos, period)), dim=-1).permute(
            0, 3, 1, 2
        )

    @staticmethod
    def _encode(position: Tensor, period: Tensor) -> Tensor:
        phase = position[..., None] / period  # [B, H, W, F]
        return torch.where(
            torch.arange(phase.shape[-1], device=phase.device) % 2 == 0, phase.sin(), phase.cos()
        )

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"normalize={self.normalize}, scale={self.scale:.4f}"
        )
