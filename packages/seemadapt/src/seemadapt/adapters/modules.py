"""Adapter modules for SEEM: a channel+spatial adapter for FocalNet blocks, VL-adapters for the decoder and an
AdaptFormer branch for the mask head.

Every module starts as an exact no-op by default, so injecting it leaves the pretrained model's outputs bit-for-bit
unchanged and fine-tuning starts from the pretrained solution:

* :class:`ChannelSpatialAdapter` and :class:`VLAdapter` (with ``residual=True``) return exactly their input at init;
* :class:`VLAdapter` (with ``residual=False``) and :class:`AdaptFormer` return exactly zero at init (they are branches
  whose output the host adds to its own tensor).

The trick is the same everywhere: the *last* layer of the branch is zero-initialised and nothing non-linear follows
it (a ReLU after a zero layer would have zero gradient and stay dead), so the branch output is 0 but its last layer
still receives gradients at the first step, and the earlier layers from the second step on.

``fork_faithful=True`` rebuilds the modules of the thesis fork of SEEM instead: its
kaiming initialisation and its math (trailing ReLU and LayerNorm on the backbone adapter, ReLU + dropout 0.1 in the
VL-adapter, LayerNorms and a learnable scale of 1 around the head adapter). They are **not** identities at init; use
them only to reproduce the thesis numbers. Their parameter names equal the fork's below the adapter attribute
(``channel.0.weight``, ``spatial.2.weight``, ``down_proj.weight``, ...), so fork weights load after renaming the
attribute prefix.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seemadapt.adapters.hooks import AdapterModule

Activation = Literal["gelu", "relu"]

FORK_DROPOUT = 0.1


def _kaiming_fan_out(module: nn.Module) -> None:
    """The fork's init: kaiming-normal (fan_out, ReLU gain) on every Linear/Conv weight; biases keep their default."""
    for sub in module.modules():
        if isinstance(sub, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")


def _activation(name: Activation) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"activation must be 'gelu' or 'relu', got {name!r}.")


def _check_dims(owner: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}.")


class ChannelSpatialAdapter(AdapterModule):
    """SAM-Med2D-style adapter for a FocalNet block, on channels-last features ``[B, H, W, C]``.

    ``y = x + spatial(gate(x) * x)`` where ``gate`` is squeeze-and-excitation channel attention
    (spatial mean -> Linear C->C/r -> ReLU -> Linear C/r->C -> Sigmoid, no biases) and ``spatial`` is a stride-2 3x3
    conv -> ReLU -> 4x4 stride-2 transposed conv back to C channels (no biases).

    Identity at init: the transposed conv is zero-initialised, so ``spatial(.) == 0`` and ``y == x`` exactly; nothing
    follows it, so its weight gets a gradient at the first step (the fork's trailing ReLU is dropped for that reason).

    Any size works, odd ones included: the transposed conv returns ``2 * ceil(H / 2)`` rows, which is cropped to
    ``H`` (the fork added tensors of different sizes and crashed on odd feature maps).

    Args:
        channels: C of the block.
        reduction: channel-attention bottleneck ``C // reduction`` (4 in the thesis).
        spatial_reduction: hidden channels of the spatial branch are ``C // spatial_reduction``. The thesis used 1,
            which costs about ``25.5 * C^2`` parameters per block (400M for Focal-L); 4 or 8 is much lighter.
        fork_faithful: rebuild the fork's module: kaiming init, a ReLU after the transposed conv and a LayerNorm on
            the output (``norm``). Not an identity.
    """

    def __init__(
        self, channels: int, reduction: int = 4, spatial_reduction: int = 1, fork_faithful: bool = False
    ) -> None:
        super().__init__()
        _check_dims(
            "ChannelSpatialAdapter",
            channels=channels,
            reduction=reduction,
            spatial_reduction=spatial_reduction,
        )
        hidden = max(1, channels // reduction)
        spatial_hidden = max(1, channels // spatial_reduction)
        self.channels = channels
        self.fork_faithful = fork_faithful
        self.channel = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(channels, spatial_hidden, 3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.ConvTranspose2d(spatial_hidden, channels, 4, stride=2, padding=1, bias=False),
        )
        _kaiming_fan_out(self)
        if fork_faithful:
            self.spatial.append(nn.ReLU())
            self.norm: nn.LayerNorm | None = nn.LayerNorm(channels)
        else:
            nn.init.zeros_(self.spatial[2].weight)
            self.norm = None
        # The convs read channels-last views of [B, H, W, C]; with NCHW weights torch would copy each weight to
        # channels-last in forward and backward and copy its gradient back (about 10% of a Focal-T training step).
        self.spatial.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``[B, H, W, C]`` -> ``[B, H, W, C]``."""
        if x.ndim != 4 or x.shape[-1] != self.channels:
            raise ValueError(
                f"ChannelSpatialAdapter expects channels-last [B, H, W, {self.channels}], got {tuple(x.shape)}."
            )
        height, width = x.shape[1:3]
        gate = self.channel(x.mean(dim=(1, 2)))  # [B, C]
        gated = (x * gate[:, None, None, :]).permute(0, 3, 1, 2)
        spatial = self.spatial(gated)[:, :, :height, :width]
        y = x + spatial.permute(0, 2, 3, 1)
        return y if self.norm is None else self.norm(y)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, fork_faithful={self.fork_faithful}"


class VLAdapter(AdapterModule):
    """Bottleneck adapter ``down -> activation -> dropout -> up`` on the last dimension (seq-first or batch-first).

    With ``residual=True`` it returns ``x + branch(x)``; with ``residual=False`` only ``branch(x)``, for hosts that
    add the residual themselves (SEEM's decoder hooks do: ``x = x + adapter(x)``). ``up_proj`` (weight and bias) is
    zero-initialised, so the branch is exactly 0 at init.

    Args:
        dim: feature width (the decoder's hidden_dim).
        bottleneck: hidden width, default ``dim // 2`` (the fork's).
        residual: add the input back (see above).
        activation: ``"gelu"`` (default) or ``"relu"`` (the fork's).
        dropout: dropout inside the branch.
        fork_faithful: the fork's module: ReLU, dropout 0.1, kaiming (fan_out) weights, default biases. Not zero.
    """

    def __init__(
        self,
        dim: int,
        bottleneck: int | None = None,
        residual: bool = True,
        activation: Activation = "gelu",
        dropout: float = 0.0,
        fork_faithful: bool = False,
    ) -> None:
        super().__init__()
        bottleneck = dim // 2 if bottleneck is None else bottleneck
        _check_dims("VLAdapter", dim=dim, bottleneck=bottleneck)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"VLAdapter: dropout must be in [0, 1), got {dropout}.")
        if fork_faithful:
            activation, dropout = "relu", FORK_DROPOUT
        self.dim = dim
        self.residual = residual
        self.down_proj = nn.Linear(dim, bottleneck)
        self.act = _activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.up_proj = nn.Linear(bottleneck, dim)
        if fork_faithful:
            _kaiming_fan_out(self)
        else:  # down_proj keeps PyTorch's default init
            nn.init.zeros_(self.up_proj.weight)
            nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        branch = self.up_proj(self.dropout(self.act(self.down_proj(x))))
        return x + branch if self.residual else branch

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class AdaptFormer(AdapterModule):
    """AdaptFormer parallel branch ``scale * up(dropout(relu(down(x))))``; returns the branch only.

    Used on SEEM's mask head, where the decoder adds it to ``mask_embed(d)``. ``up_proj`` is zero-initialised, so the
    branch is exactly 0 at init (a learnable scale therefore starts at ``scale``, not at 0: two zero factors would
    never receive a gradient).

    Args:
        dim: input width (the decoder's hidden_dim).
        bottleneck: hidden width, default ``dim // 2``.
        out_dim: output width (the decoder's mask_dim), default ``dim``.
        scale: the branch multiplier (AdaptFormer's ``s``, 0.1).
        learnable_scale: make the scale a parameter ``scale`` of shape ``[1]`` initialised to ``scale``.
        dropout: dropout inside the branch.
        fork_faithful: the fork's head adapter ``LN_out(s * up(dropout(relu(down(LN_in(x))))))`` with a learnable
            ``s`` = 1, dropout 0.1 and kaiming weights (overrides ``scale``, ``learnable_scale``, ``dropout``). Its
            output is unit-RMS, not zero.
    """

    def __init__(
        self,
        dim: int,
        bottleneck: int | None = None,
        out_dim: int | None = None,
        scale: float = 0.1,
        learnable_scale: bool = False,
        dropout: float = 0.0,
        fork_faithful: bool = False,
    ) -> None:
        super().__init__()
        bottleneck = dim // 2 if bottleneck is None else bottleneck
        out_dim = dim if out_dim is None else out_dim
        _check_dims("AdaptFormer", dim=dim, bottleneck=bottleneck, out_dim=out_dim)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"AdaptFormer: dropout must be in [0, 1), got {dropout}.")
        if not math.isfinite(float(scale)) or scale == 0:
            raise ValueError(f"AdaptFormer: scale must be finite and non-zero, got {scale}.")
        if fork_faithful:
            scale, learnable_scale, dropout = 1.0, True, FORK_DROPOUT
        self.fork_faithful = fork_faithful
        self.layer_norm_input = nn.LayerNorm(dim) if fork_faithful else None
        self.down_proj = nn.Linear(dim, bottleneck)
        self.dropout = nn.Dropout(dropout)
        self.up_proj = nn.Linear(bottleneck, out_dim)
        self.layer_norm_output = nn.LayerNorm(out_dim) if fork_faithful else None
        if learnable_scale:
            self.scale: nn.Parameter | float = nn.Parameter(torch.full((1,), float(scale)))
        else:
            self.scale = float(scale)
        if fork_faithful:
            _kaiming_fan_out(self)
        else:  # down_proj keeps PyTorch's default init
            nn.init.zeros_(self.up_proj.weight)
            nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.layer_norm_input is not None:
            x = self.layer_norm_input(x)
        branch = self.up_proj(self.dropout(F.relu(self.down_proj(x)))) * self.scale
        if self.layer_norm_output is not None:
            branch = self.layer_norm_output(branch)
        return branch

    def extra_repr(self) -> str:
        if isinstance(self.scale, nn.Parameter):
            return f"learnable_scale=True, fork_faithful={self.fork_faithful}"
        return f"scale={self.scale:g}, fork_faithful={self.fork_faithful}"
