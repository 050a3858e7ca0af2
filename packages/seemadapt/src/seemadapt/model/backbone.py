"""FocalNet backbone of SEEM v1 (``backbone.*``), in the two block variants the official checkpoints use.

* ``variant="focal"`` (Focal-L, official ``focal.py``): res-post-norm blocks,
  ``x = x + DropPath(gamma * norm(branch(x)))``; stem conv padding 2.
* ``variant="focal_dw"`` (Focal-T, official ``focal_dw.py``): a depthwise 3x3 positional conv before each branch and
  true post-norm, ``x = norm(x + DropPath(gamma * branch(x)))``; stem conv padding 3.

Parameter names match the official checkpoints exactly (``backbone.layers.{s}.blocks.{b}.*``,
``backbone.patch_embed.*``, ...), so a state dict loads with every key used. Activations are kept channels-last (``[B, H, W, C]``) inside the stages because every
LayerNorm and Linear acts on C; the returned features are NCHW.

Adapters plug into every block through the ``adapter`` attribute; see :meth:`FocalNet.blocks`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from seemadapt.model.config import BackboneConfig
from seemadapt.model.layers import DropPath, pad_to_multiple

LAYER_NORM_EPS = 1e-5


class PatchEmbed(nn.Module):
    """Pad right/bottom to a multiple of the stride, strided conv, channel LayerNorm. NCHW in, NHWC out.

    The stem is the 7x7/s4 conv (padding 2 or 3 by variant); each downsample is a 3x3/s2/p1 conv.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int
    ) -> None:
        super().__init__()
        self.stride = stride
        self.proj = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(out_channels, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(pad_to_multiple(x, self.stride))
        return self.norm(x.permute(0, 2, 3, 1))


class FocalModulation(nn.Module):
    """Focal modulation: ``proj(q * h(sum_l gate_l * ctx_l + gate_L * global) / (L + 1))``.

    ``ctx_l`` are hierarchical depthwise-conv contexts (kernel ``2l + focal_window``, GELU after each), ``global`` is the
    GELU of the spatial mean of the last level; the gates are per-pixel scalars predicted by ``f`` with q and ctx.
    """

    def __init__(
        self, dim: int, focal_level: int, focal_window: int, normalize_modulator: bool = True
    ) -> None:
        super().__init__()
        self.dim = dim
        self.focal_level = focal_level
        self.normalize_modulator = normalize_modulator
        self.f = nn.Linear(dim, 2 * dim + focal_level + 1)
        self.h = nn.Conv2d(dim, dim, kernel_size=1)
        self.proj = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.focal_layers = nn.ModuleList()
        for level in range(focal_level):
            kernel = 2 * level + focal_window
            conv = nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=dim, bias=False)
            self.focal_layers.append(nn.Sequential(conv, nn.GELU()))  # ".0" in the key names is the conv

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, H, W, C]`` -> ``[B, H, W, C]``."""
        q, ctx, gates = self.f(x).permute(0, 3, 1, 2).split((self.dim, self.dim, self.focal_level + 1), dim=1)
        ctx_all = torch.zeros_like(ctx)
        for level, layer in enumerate(self.focal_layers):
            ctx = layer(ctx)
            ctx_all = ctx_all + ctx * gates[:, level : level + 1]
        ctx_global = self.act(ctx.mean(dim=(2, 3), keepdim=True))
        ctx_all = ctx_all + ctx_global * gates[:, self.focal_level :]
        if self.normalize_modulator:
            ctx_all = ctx_all / (self.focal_level + 1)
        out = q * self.h(ctx_all)
        return self.proj(out.permute(0, 2, 3, 1))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (the official dropout rates are 0, so no dropout modules)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class FocalBlock(nn.Module):
    """Focal-L block (res-post-norm). Subclasses change only the residual wiring.

    ``adapter`` (default ``None``, no state-dict keys) is an optional module applied to the modulation output
    (``[B, H, W, C]`` -> same shape) before the norm / layerscale / residual; the adapter code sets it.
    """

    adapter: nn.Module | None

    def __init__(
        self,
        dim: int,
        focal_level: int,
        focal_window: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        layerscale_init: float = 1e-4,
        normalize_modulator: bool = True,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.modulation = FocalModulation(dim, focal_level, focal_window, normalize_modulator)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma_1 = nn.Parameter(torch.full((dim,), float(layerscale_init)))
        self.gamma_2 = nn.Parameter(torch.full((dim,), float(layerscale_init)))
        self.drop_path = DropPath(drop_path)
        self.adapter = None

    def _modulate(self, x: Tensor) -> Tensor:
        out = self.modulation(x)
        return out if self.adapter is None else self.adapter(out)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, H, W, C]`` -> ``[B, H, W, C]``."""
        x = x + self.drop_path(self.gamma_1 * self.norm1(self._modulate(x)))
        return x + self.drop_path(self.gamma_2 * self.norm2(self.mlp(x)))


class FocalDWBlock(FocalBlock):
    """Focal-T block: depthwise positional convs ``dw1``/``dw2`` (with bias) and LayerNorm after each residual sum."""

    def __init__(self, dim: int, focal_level: int, focal_window: int, **kwargs: float | bool) -> None:
        super().__init__(dim, focal_level, focal_window, **kwargs)  # type: ignore[arg-type]
        self.dw1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.dw2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    @staticmethod
    def _depthwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
        return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self._depthwise(self.dw1, x)
        x = self.norm1(x + self.drop_path(self.gamma_1 * self._modulate(x)))
        x = x + self._depthwise(self.dw2, x)
        return self.norm2(x + self.drop_path(self.gamma_2 * self.mlp(x)))


class FocalStage(nn.Module):
    """``blocks`` at one width, then (except the last stage) ``downsample`` to twice the width at half the size."""

    def __init__(self, blocks: list[FocalBlock], downsample: PatchEmbed | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample


class FocalNet(nn.Module):
    """SEEM v1's FocalNet: image ``[B, 3, H, W]`` -> ``{"res2": ..., "res5": ...}`` (NCHW, strides 4, 8, 16, 32).

    Any H, W work: each strided conv first pads right/bottom, so ``res{i}`` is ``ceil(H / stride)`` high.

    Freezing: :meth:`freeze` turns off gradients for the backbone's own parameters and, by default, pins the backbone to
    eval mode (no stochastic depth) whatever ``train()`` is later called with; adapters set on blocks keep following
    ``train()`` and keep their ``requires_grad``. The official fine-tuning instead left stochastic depth on in its frozen
    backbone; ``freeze(eval_mode=False)`` reproduces that.
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        if config.patch_size != 4:
            raise ValueError(
                f"BackboneConfig.patch_size must be 4 (the official 7x7/s4 stem), got {config.patch_size}."
            )
        self.config = config
        self.out_features = ("res2", "res3", "res4", "res5")
        self.out_channels = dict(zip(self.out_features, config.channels))
        self.out_strides = {name: 4 * 2**i for i, name in enumerate(self.out_features)}
        self.size_divisibility = 32
        self.frozen = False
        self._frozen_eval = True
        self._requested_training = True

        channels = config.channels
        self.patch_embed = PatchEmbed(3, channels[0], 7, stride=4, padding=config.stem_padding)
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths), device="cpu").tolist()
        block_cls = FocalDWBlock if config.variant == "focal_dw" else FocalBlock
        self.layers = nn.ModuleList()
        for stage, depth in enumerate(config.depths):
            dim = channels[stage]
            start = sum(config.depths[:stage])
            blocks = [
                block_cls(
                    dim,
                    config.focal_levels[stage],
                    config.focal_windows[stage],
                    mlp_ratio=config.mlp_ratio,
                    drop_path=rates[start + index],
                    layerscale_init=config.layerscale_init,
                    normalize_modulator=config.normalize_modulator,
                )
                for index in range(depth)
            ]
            downsample = PatchEmbed(dim, 2 * dim, 3, stride=2, padding=1) if stage < 3 else None
            self.layers.append(FocalStage(blocks, downsample))
        for stage, dim in enumerate(channels):
            self.add_module(f"norm{stage}", nn.LayerNorm(dim, eps=LAYER_NORM_EPS))
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"FocalNet expects a [B, 3, H, W] image tensor, got shape {tuple(x.shape)}.")
        x = self.patch_embed(x)
        features: dict[str, Tensor] = {}
        for stage, layer in enumerate(self.layers):
            for block in layer.blocks:
                x = block(x)
            norm = getattr(self, f"norm{stage}")
            features[self.out_features[stage]] = norm(x).permute(0, 3, 1, 2).contiguous()
            if layer.downsample is not None:
                x = layer.downsample(x.permute(0, 3, 1, 2))
        return features

    def blocks(self) -> Iterator[tuple[str, FocalBlock, int]]:
        """Every block as ``(qualified name, block, channels)``, e.g. ``("layers.2.blocks.5", block, 384)``."""
        for stage, layer in enumerate(self.layers):
            for index, block in enumerate(layer.blocks):
                yield f"layers.{stage}.blocks.{index}", block, block.dim

    def _own_parameters(self) -> Iterator[nn.Parameter]:
        adapter_ids = {
            id(p)
            for _, block, _ in self.blocks()
            if block.adapter is not None
            for p in block.adapter.parameters()
        }
        return (p for p in self.parameters() if id(p) not in adapter_ids)

    def freeze(self, eval_mode: bool = True) -> FocalNet:
        """Stop gradients for the backbone weights (not adapters); with ``eval_mode`` also disable stochastic depth."""
        for param in self._own_parameters():
            param.requires_grad_(False)
        self.frozen = True
        self._frozen_eval = eval_mode
        return self.train(self._requested_training)

    def unfreeze(self) -> FocalNet:
        """Undo :meth:`freeze`: gradients back on and ``train()`` obeyed again (restoring the last requested mode)."""
        for param in self._own_parameters():
            param.requires_grad_(True)
        self.frozen = False
        return self.train(self._requested_training)

    def train(self, mode: bool = True) -> FocalNet:
        self._requested_training = mode
        if not (self.frozen and self._frozen_eval):
            return super().train(mode)
        super().train(False)
        for _, block, _ in self.blocks():
            if block.adapter is not None:
                block.adapter.train(mode)
        return self


def _init_weights(module: nn.Module) -> None:
    """Official FocalNet init: truncated normal (std 0.02) Linear weights, zero biases; LayerNorm (1, 0)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
