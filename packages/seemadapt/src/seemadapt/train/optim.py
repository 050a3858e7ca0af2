"""Optimizer parameter groups and the learning-rate schedule.

Only parameters with ``requires_grad`` at optimizer creation are optimised, so build the optimizer **after**
:func:`seemadapt.adapters.apply_adapters` (the fork built it before un-freezing its backbone adapters, which is why
they never trained). Weight decay is 0 for normalisation layers, embeddings, biases and every other parameter with
fewer than two dimensions (scales, positional tables are embeddings); the fork tested "bias" on the module name and
so decayed biases, which this does not reproduce.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from seemadapt.adapters import adapter_report
from seemadapt.adapters.strategies import default_lr
from seemadapt.train.adamw import ChannelsLastAdamW
from seemadapt.train.config import TrainConfig

__all__ = [
    "LRSchedule",
    "build_optimizer",
    "build_scheduler",
    "match_state_layout",
    "no_decay_names",
    "param_groups",
]

_NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
)


def _is_norm(module: nn.Module) -> bool:
    # Also catches custom norms such as the text encoder's LayerNormFP32 or a FocalNet LayerNorm2d.
    return isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters that get no weight decay: norms, embeddings, biases and other < 2-d parameters."""
    names: set[str] = set()
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        exempt = _is_norm(module) or isinstance(module, nn.Embedding)
        for param_name, param in module.named_parameters(recurse=False):
            if exempt or param.ndim < 2 or param_name.endswith("bias"):
                names.add(prefix + param_name)
    return names


def param_groups(
    model: nn.Module,
    config: TrainConfig,
    group_of: Mapping[str, str] | None = None,
) -> list[dict]:
    """AdamW parameter groups over the trainable parameters of ``model``.

    One group per (adapter-report group, decay or not) so that each can carry its own learning rate
    (``config.lr * config.lr_multipliers.get(group, 1.0)``; ``lr=None``: the placement's
    :func:`~seemadapt.adapters.strategies.default_lr`). ``group_of`` maps parameter names to report groups
    (:attr:`seemadapt.adapters.AdapterReport.group_of`); without it every parameter is in group ``"all"``.
    Each group has a ``"name"`` (``"<group>/decay"`` or ``"<group>/no_decay"``) for logging.
    """
    exempt = no_decay_names(model)
    buckets: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = group_of.get(name, "other") if group_of is not None else "all"
        decay = name not in exempt and config.weight_decay > 0
        buckets.setdefault((group, decay), []).append(param)
    if not buckets:
        raise ValueError(
            "No trainable parameters: apply an adapter placement (seemadapt.adapters.apply_adapters) before "
            "building the optimizer."
        )
    lr = config.lr if config.lr is not None else default_lr(adapter_report(model).placement)
    groups = []
    for (group, decay), params in buckets.items():
        factor = config.lr_multipliers.get(group, 1.0)
        groups.append(
            {
                "params": params,
                "name": f"{group}/{'decay' if decay else 'no_decay'}",
                "lr": lr * factor,
                "weight_decay": config.weight_decay if decay else 0.0,
            }
        )
    return groups


def build_optimizer(
    model: nn.Module,
    config: TrainConfig,
    group_of: Mapping[str, str] | None = None,
    fused: bool | None = None,
) -> ChannelsLastAdamW:
    """AdamW over :func:`param_groups` (:class:`~seemadapt.train.adamw.ChannelsLastAdamW`: torch's, stepping the
    backbone adapters' channels-last conv weights without copying their gradients).

    ``fused=None`` uses the fused kernel whenever every trainable parameter is a floating-point CPU or CUDA
    tensor: one pass over all parameters instead of a Python loop over them (on CPU about 3x faster for SEEM's
    40M-parameter head, a tenth of a second per step), same update.
    """
    groups = param_groups(model, config, group_of)
    if fused is None:
        fused = all(
            p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"]
        )
    return ChannelsLastAdamW(groups, lr=groups[0]["lr"], betas=config.betas, eps=config.eps, fused=fused)


def match_state_layout(optimizer: torch.optim.Optimizer) -> int:
    """Give every per-parameter state tensor (``exp_avg`` ...) its parameter's strides; returns how many changed.

    The fused AdamW kernel walks parameter, gradient and state as flat memory, so a state saved with another layout
    (a checkpoint written before the backbone adapters' conv weights became channels-last) would be updated
    element-for-wrong-element without an error. Call it after loading an optimizer state.
    """
    changed = 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
                    changed += 1
    return changed


class LRSchedule:
    """The learning-rate factor at optimizer step ``step`` (0-based): linear warm-up, then the schedule.

    A plain picklable object (not a lambda), so ``LambdaLR.state_dict`` keeps it and resumed runs recompute the
    same factors from the restored step.
    """

    def __init__(self, config: TrainConfig, total_steps: int) -> None:
        if total_steps < 1:
            raise ValueError(f"LRSchedule: total_steps must be >= 1, got {total_steps}.")
        self.kind = config.schedule
        self.total_steps = int(total_steps)
        self.warmup_steps = int(config.warmup_steps)
        self.warmup_factor = float(config.warmup_factor)
        self.milestones = [round(m * total_steps) for m in config.milestones]
        self.gamma = float(config.gamma)

    def __call__(self, step: int) -> float:
        factor = 1.0
        if self.kind == "cosine":
            progress = min(step / self.total_steps, 1.0)
            factor = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif self.kind == "multistep":
            factor = self.gamma ** sum(step >= m for m in self.milestones)
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            factor *= self.warmup_factor * (1.0 - alpha) + alpha
        return factor


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> LambdaLR:
    """``LambdaLR`` with :class:`LRSchedule`; step it once per optimizer step."""
    return LambdaLR(optimizer, LRSchedule(config, total_steps))
