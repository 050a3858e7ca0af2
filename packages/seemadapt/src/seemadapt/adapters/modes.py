"""Frozen parts and autograd: no graph and no training-mode noise where nothing trains.

* A frozen parameter never gets a gradient: autograd skips the weight-gradient of every op whose weight has
  ``requires_grad=False`` and records nothing at all for ops none of whose inputs require grad. So a frozen backbone
  fed with images builds no graph even without ``torch.no_grad()``, and with trainable backbone adapters gradients
  flow *through* the frozen blocks to the adapters without computing gradients of the frozen weights.
  :func:`frozen_forward_context` makes the first case explicit (``torch.no_grad()`` when a module and everything
  upstream of it is frozen).
* :func:`set_train_mode` replaces ``model.train(mode)`` in a training loop: it also puts every sub-module whose
  parameters are all frozen into eval mode (no dropout or stochastic depth in frozen parts).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["frozen_forward_context", "set_train_mode"]


def frozen_forward_context(*modules: nn.Module) -> contextlib.AbstractContextManager:
    """``torch.no_grad()`` if none of ``modules`` has a trainable parameter, else a do-nothing context.

    Pass a module together with everything upstream of it, e.g. ``frozen_forward_context(model.backbone)`` around
    the backbone (its input is the image) or ``frozen_forward_context(backbone, pixel_decoder)`` around the pixel
    decoder: when backbone adapters train, gradients must flow through the frozen pixel decoder, and the context
    then does nothing.
    """
    if any(p.requires_grad for module in modules for p in module.parameters()):
        return contextlib.nullcontext()
    return torch.no_grad()


def set_train_mode(model: nn.Module, mode: bool = True) -> nn.Module:
    """``model.train(mode)``, then (in training) eval mode for every sub-module whose parameters are all frozen.

    Modules that manage their own mode when frozen (an attribute ``frozen`` that is True, like FocalNet after
    ``freeze()``) are left to do so.
    """
    model.train(mode)
    if mode:
        _eval_frozen_children(model)
    return model


def _iter_frozen_candidates(module: nn.Module) -> Iterator[nn.Module]:
    for child in module.children():
        if getattr(child, "frozen", False) is True:
            continue
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            yield child
        else:
            yield from _iter_frozen_candidates(child)


def _eval_frozen_children(model: nn.Module) -> None:
    for module in list(_iter_frozen_candidates(model)):
        module.eval()
