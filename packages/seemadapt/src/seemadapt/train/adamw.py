"""AdamW whose fused kernel steps channels-last weights without copying their gradients.

torch's fused AdamW kernel walks each parameter, its gradient and its state as flat memory, but first calls
``grad.contiguous()`` on every gradient, whose result it does not use. For a channels-last weight (the backbone
adapters' convs, :class:`~seemadapt.adapters.modules.ChannelSpatialAdapter`) that is a full copy of the gradient
every step: on a Focal-T training step on the CPU, about 66 ms for their 54 M parameters (the fused step 177 ms,
110 ms with the same parameters contiguous; torch 2.14).

:class:`ChannelsLastAdamW` hands the kernel each such weight, gradient and state as its permutation to
``[O, kH, kW, I]``: the same memory in the same order, contiguous in torch's sense, so nothing is copied and every
element gets the same update. Between steps the parameters and the state keep their shapes and strides, so models,
``state_dict`` and checkpoints are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

__all__ = ["ChannelsLastAdamW"]

_TO_FLAT = (0, 2, 3, 1)  # [O, I, kH, kW] channels-last -> [O, kH, kW, I] contiguous
_FROM_FLAT = (0, 3, 1, 2)


class ChannelsLastAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW``; a fused step sees channels-last 4-D parameters through their contiguous permutation
    (see the module docstring). Same arguments, same updates, same ``state_dict``."""

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        # torch wraps this method in its step hooks (they see the parameters as they are between steps); the step
        # inside is AdamW's own, without a second round of hooks.
        if closure is not None:  # the closure runs the model, which needs its parameters' own shapes
            return _adamw_step()(self, closure)
        with _flat_channels_last(self):
            return _adamw_step()(self)


def _adamw_step() -> Callable[..., float | None]:
    """``torch.optim.AdamW.step`` without the hook wrapper(s) torch adds to an optimizer class's ``step`` on first
    use (``Optimizer.profile_hook_step``: marked ``hooked``, the original kept as ``__wrapped__``)."""
    step = torch.optim.AdamW.step
    while getattr(step, "hooked", False) and hasattr(step, "__wrapped__"):
        step = step.__wrapped__
    return step


def _flat_candidate(param: Tensor, state: dict[str, Any]) -> bool:
    """A channels-last 4-D parameter whose gradient and state share its strides (so a permutation fits all)."""
    if param.dim() != 4 or param.grad is None or param.is_contiguous():
        return False
    if not param.is_contiguous(memory_format=torch.channels_last) or param.grad.stride() != param.stride():
        return False
    return all(
        value.stride() == param.stride()
        for value in state.values()
        if isinstance(value, Tensor) and value.dim() == 4
    )


@contextmanager
def _flat_channels_last(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """For the block, give the fused groups' channels-last parameters, gradients and 4-D state tensors their
    ``[O, kH, kW, I]`` permutation (views: the kernel's in-place updates land in the originals); restores them,
    and gives state the step created the parameter's layout, also when the step raises."""
    swapped: list[tuple[Tensor, Tensor, Tensor]] = []
    try:
        for group in optimizer.param_groups:
            if not group.get("fused"):
                continue
            for param in group["params"]:
                state = optimizer.state.get(param, {})
                if not _flat_candidate(param, state):
                    continue
                original, grad = param.data, param.grad
                param.data = original.permute(_TO_FLAT)
                param.grad = grad.permute(_TO_FLAT)
                _permute_state(state, _TO_FLAT)
                swapped.append((param, original, grad))
        yield
    finally:
        for param, original, grad in reversed(swapped):
            param.data = original
            param.grad = grad
            _permute_state(optimizer.state.get(param, {}), _FROM_FLAT)


def _permute_state(state: dict[str, Any], order: tuple[int, ...]) -> None:
    for key, value in state.items():
        if isinstance(value, Tensor) and value.dim() == 4:
            state[key] = value.permute(order)
