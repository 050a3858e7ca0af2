"""Criterion targets from the data mapper's outputs, padded like the model's input."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["build_targets", "pad_masks"]


def pad_masks(masks: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero-pad ``[N, h, w]`` masks bottom/right to ``size`` (as the images are padded)."""
    height, width = masks.shape[-2:]
    if (height, width) == tuple(size):
        return masks
    if height > size[0] or width > size[1]:
        raise ValueError(f"masks of {height}x{width} do not fit the padded input {size[0]}x{size[1]}.")
    return F.pad(masks, (0, size[1] - width, 0, size[0] - height))


def build_targets(
    batch: Sequence[dict[str, Any]],
    outputs: dict[str, Any],
    device: torch.device,
    grounding: bool = True,
) -> list[dict[str, Any]]:
    """:class:`~seemadapt.train.matcher.SEEMTarget` dicts from :class:`~seemadapt.data.SEEMTrainMapper` outputs.

    Masks are zero-padded to ``outputs["padded_size"]`` and float32: the matcher and the criterion point-sample them
    at every prediction layer, and converting once here spares a copy at each of those reads. Grounding targets take
    the EOT embeddings the model computed for the texts (``outputs["grounding_class_embs"]``) and the mapper's hashes
    (identical targets share one: same sentence, or same class in class mode). An image whose grounding has no mask (the mapper's
    ``["none"]``) has ``grounding_masks=None`` and is left out of the grounding losses.
    """
    size = tuple(outputs["padded_size"])
    targets = []
    for b, record in enumerate(batch):
        instances = record["instances"]
        masks = instances.gt_masks
        masks = getattr(masks, "tensor", masks)
        target: dict[str, Any] = {
            "labels": instances.gt_classes.to(device=device, dtype=torch.long),
            "masks": pad_masks(masks.to(device=device, dtype=torch.float32), size),
        }
        if grounding:
            target.update(_grounding_target(record, outputs["grounding_class_embs"][b], b, size, device))
        targets.append(target)
    return targets


def _grounding_target(
    record: dict[str, Any], embs: Tensor | None, index: int, size: tuple[int, int], device: torch.device
) -> dict[str, Any]:
    g = record["groundings"]
    g_masks = g["masks"]
    has = g_masks is not None and len(g_masks) > 0
    padded = pad_masks(g_masks.to(device=device, dtype=torch.float32), size) if has else None
    if has and (embs is None or len(embs) != len(g_masks)):
        raise ValueError(
            f"image {record.get('file_name', index)}: {len(g_masks)} grounding masks but "
            f"{0 if embs is None else len(embs)} grounding texts were encoded."
        )
    return {
        "grounding_masks": padded,
        "grounding_class_embs": embs,
        "grounding_hash": torch.as_tensor(g["hash"], dtype=torch.long),
        "grounding_mode": g["mode"],
    }
