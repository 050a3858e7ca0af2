"""Turn the arrays users hand to the metrics (torch tensors, numpy arrays, PIL images) into integer arrays.

Data on the CPU is counted with numpy (its ``bincount`` and reductions are several times faster than
torch's on CPU tensors); tensors on an accelerator stay there and are counted with torch, so evaluation on
a GPU never copies full-resolution maps to the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

Labels = np.ndarray | torch.Tensor


def _refuse_non_integer(kind: str, name: str) -> None:
    raise TypeError(
        f"{name} must hold integer labels, got dtype {kind}; take the argmax over classes "
        "(logits.argmax(0)) or threshold the mask (mask > 0.5) first."
    )


def as_labels(value: Any, name: str) -> Labels:
    """An integer label map without copying where possible: a numpy array for CPU data, a tensor for
    accelerator tensors. The integer dtype is kept (bool becomes uint8); floating maps are refused."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.is_floating_point() or tensor.is_complex():
            _refuse_non_integer(str(tensor.dtype), name)
        if tensor.dtype == torch.bool:
            tensor = tensor.to(torch.uint8)
        if tensor.device.type != "cpu":
            return tensor
        try:
            return tensor.numpy()
        except TypeError:  # an integer dtype numpy lacks
            return tensor.long().numpy()
    array = np.asarray(value)
    if array.dtype == bool:
        return array.view(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        _refuse_non_integer(str(array.dtype), name)
    return array


def same_place(pred: Labels, gt: Labels) -> tuple[Labels, Labels]:
    """Both as numpy arrays, or both as tensors on the accelerator one of them is on."""
    if isinstance(pred, torch.Tensor):
        return pred, torch.as_tensor(gt).to(pred.device)
    if isinstance(gt, torch.Tensor):
        return torch.as_tensor(pred).to(gt.device), gt
    return pred, gt


def as_label_array(value: Any, name: str) -> np.ndarray:
    """An integer label map as an int64 numpy array on the CPU."""
    labels = as_labels(value, name)
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    return labels.astype(np.int64, copy=False)
