"""SEEM's pixel decoder: an FPN whose coarsest level goes through a transformer encoder first.

Module and parameter names follow the official checkpoint below ``sem_seg_head.pixel_decoder.`` exactly
(``adapter_1..3``, ``layer_1..4``, ``input_proj``, ``transformer.encoder.layers.{i}.*``, ``mask_features``), so an
official state dict loads with ``strict=True``. Data flow (top-down)::

    res5 -> input_proj -> transformer encoder (+ sine PE) -> layer_4 ----------------> stride 32 ┐
    res4 -> adapter_3 + upsample(previous) -> layer_3 ------------------------------> stride 16 ├ multi-scale
    res3 -> adapter_2 + upsample(previous) -> layer_2 ------------------------------> stride 8  ┘
    res2 -> adapter_1 + upsample(previous) -> layer_1 -> mask_features ------------> stride 4 (mask features)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seemadapt.model.config import PixelDecoderConfig
from seemadapt.model.position_encoding import PositionEmbeddingSine

IN_FEATURES = ("res2", "res3", "res4", "res5")


class Conv2d(nn.Conv2d):
    """``conv -> norm -> activation`` with the norm as a child module named ``norm`` (detectron2's key layout)."""

    def __init__(
        self,
        *args,
        norm: nn.Module | None = None,
        activation: Callable[[Tensor], Tensor] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def c2_xavier_fill(module: nn.Conv2d) -> None:
    """Caffe2's "XavierFill": kaiming-uniform with ``a=1`` and a zero bias (used only when training from scratch)."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class _AddUpsampled2x(torch.autograd.Function):
    """``x + nearest_upsample_2x(y)`` as a broadcast add over ``[B, C, h, 2, w, 2]`` views of ``x``.

    Torch's CPU nearest kernel copies a many-channel map to channels-last and back (one full-size copy per FPN
    level); repeating each pixel is a broadcast. The backward sums each 2x2 block of the gradient in the order of
    ``upsample_nearest2d_backward`` (row by row), so ``y``'s gradient is bit-identical too (a ``sum`` reduction is not).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, y: Tensor) -> Tensor:
        batch, channels, height, width = y.shape
        blocks = x.view(batch, channels, height, 2, width, 2)
        return (blocks + y[:, :, :, None, :, None]).view(x.shape)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        batch, channels, height, width = grad.shape
        blocks = grad.reshape(batch, channels, height // 2, 2, width // 2, 2)
        grad_y = blocks[:, :, :, 0, :, 0] + blocks[:, :, :, 0, :, 1]
        grad_y = (grad_y + blocks[:, :, :, 1, :, 0]) + blocks[:, :, :, 1, :, 1]
        return grad, grad_y


def add_upsampled(x: Tensor, y: Tensor) -> Tensor:
    """``x + F.interpolate(y, size=x.shape[-2:], mode="nearest")``, same values and gradients, without the upsampled
    map when ``x`` is contiguous and exactly twice ``y``'s size (the FPN's case)."""
    height, width = y.shape[-2:]
    if x.shape[-2:] == (2 * height, 2 * width) and x.shape[:2] == y.shape[:2] and x.is_contiguous():
        return _AddUpsampled2x.apply(x, y)
    return x + F.interpolate(y, size=x.shape[-2:], mode="nearest")


class TransformerEncoderLayer(nn.Module):
    """DETR post-norm encoder layer: ``norm1(x + SA(x+pos, x+pos, x))`` then ``norm2(x + FFN(x))`` (dropout 0)."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, dropout=0.0)
        self.linear1 = nn.Linear(dim, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        """``src`` and ``pos`` are seq-first ``[HW, B, C]``."""
        query = src + pos
        src = self.norm1(src + self.self_attn(query, query, value=src, need_weights=False)[0])
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class TransformerEncoder(nn.Module):
    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(dim, num_heads, dim_feedforward) for _ in range(num_layers)
        )

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos)
        return src


class TransformerEncoderOnly(nn.Module):
    """Wrapper that exists for the key prefix ``transformer.encoder.``; maps ``[B,C,H,W]`` to ``[B,C,H,W]``."""

    def __init__(self, dim: int, num_heads: int, dim_feedforward: int, num_layers: int) -> None:
        super().__init__()
        self.encoder = TransformerEncoder(dim, num_heads, dim_feedforward, num_layers)
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        batch, channels, height, width = src.shape
        memory = self.encoder(src.flatten(2).permute(2, 0, 1), pos.flatten(2).permute(2, 0, 1))
        return memory.permute(1, 2, 0).reshape(batch, channels, height, width)


class TransformerEncoderPixelDecoder(nn.Module):
    """FPN over ``res2..res5`` with a transformer encoder on ``res5`` (``transformer_encoder_fpn``).

    Args:
        config: widths and depth of the decoder.
        in_channels: channels of ``res2, res3, res4, res5`` (``BackboneConfig.channels``).
    """

    def __init__(self, config: PixelDecoderConfig, in_channels: tuple[int, int, int, int]) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(
                f"TransformerEncoderPixelDecoder.in_channels needs 4 entries (res2..res5), got {in_channels}."
            )
        self.config = config
        dim = config.conv_dim

        def group_norm() -> nn.GroupNorm:
            return nn.GroupNorm(config.norm_groups, dim)

        for index, channels in enumerate(in_channels[:3], start=1):
            lateral = Conv2d(channels, dim, kernel_size=1, bias=False, norm=group_norm())
            c2_xavier_fill(lateral)
            self.add_module(f"adapter_{index}", lateral)
        for index in range(1, 5):
            output = Conv2d(
                dim, dim, kernel_size=3, padding=1, bias=False, norm=group_norm(), activation=F.relu
            )
            c2_xavier_fill(output)
            self.add_module(f"layer_{index}", output)
        self.input_proj = Conv2d(in_channels[3], dim, kernel_size=1)
        c2_xavier_fill(self.input_proj)
        self.transformer = TransformerEncoderOnly(
            dim, config.num_heads, config.dim_feedforward, config.num_encoder_layers
        )
        self.pe_layer = PositionEmbeddingSine(dim // 2, normalize=True)
        self.mask_features = Conv2d(dim, config.mask_dim, kernel_size=3, padding=1)
        c2_xavier_fill(self.mask_features)

    def forward(self, features: dict[str, Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Returns ``(mask_features [B, mask_dim, H/4, W/4], [stride 32, stride 16, stride 8] maps [B, conv_dim, h, w])``."""
        missing = [name for name in IN_FEATURES if name not in features]
        if missing:
            raise KeyError(
                f"TransformerEncoderPixelDecoder.forward: features lack {missing}; expected {IN_FEATURES}."
            )
        res5 = features["res5"]
        encoded = self.transformer(self.input_proj(res5), self.pe_layer(res5))
        y = self.layer_4(encoded)
        multi_scale = [y]
        for name, lateral, output in (
            ("res4", self.adapter_3, self.layer_3),
            ("res3", self.adapter_2, self.layer_2),
            ("res2", self.adapter_1, self.layer_1),
        ):
            x = lateral(features[name])
            y = output(add_upsampled(x, y))
            multi_scale.append(y)
        return self.mask_features(y), multi_scale[:3]
