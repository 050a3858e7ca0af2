"""Small layers shared by the SEEM model files.

Kept generic on purpose: nothing here knows about FocalNet or SEEM, and nothing here owns parameters or buffers, so
importing a layer never changes a checkpoint's key set.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def drop_path(x: Tensor, drop_prob: float = 0.0, training: bool = False) -> Tensor:
    """Stochastic depth: zero whole samples of a residual branch with probability ``drop_prob``.

    Kept samples are scaled by ``1 / (1 - drop_prob)`` so the expected value is unchanged and evaluation needs no
    rescaling. The mask is drawn per sample (dimension 0) and broadcast over every other dimension, whatever the layout.
    """
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(mask_shape).bernoulli_(keep_prob)
    return x * mask / keep_prob


class DropPath(nn.Module):
    """Module form of :func:`drop_path`; active only in training mode."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"DropPath.drop_prob must be in [0, 1), got {drop_prob}.")
        self.drop_prob = float(drop_prob)

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def layer_norm_nchw(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """Apply a channel ``nn.LayerNorm`` to an NCHW tensor (normalise over C at every pixel), returning NCHW.

    Lets checkpoint layouts that store plain ``LayerNorm(C)`` weights be used on feature maps without a
    separate ``LayerNorm2d`` class (which would be the same math under different key names).
    """
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad an NCHW tensor on the right and bottom so H and W are multiples of ``multiple``."""
    height, width = x.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h or pad_w:
        x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h))
    return x
