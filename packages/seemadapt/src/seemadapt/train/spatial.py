"""SEEM's spatial (visual prompt) training inputs: random shapes inside instances, then simulated click rounds.

Per batch: a random Point/Polygon/Scribble/Circle inside each of up to ``max_candidate`` instances
(:mod:`seemadapt.data.visual_prompts`), then ``0..max_iter`` decoder rounds without gradients that each add one
corrective click per prompt (:func:`~seemadapt.model.interactive.add_corrective_clicks`), so the trained forward sees
clicks and memories as at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from seemadapt.data.visual_prompts import VisualPromptSampler, VisualSamplerConfig, as_numpy_rng
from seemadapt.model.images import ImageBatch, ImageInput
from seemadapt.model.interactive import IOU_THRESHOLD, add_corrective_clicks, unwrap_model

__all__ = ["prepare_spatial_training"]


def _instance_masks(instances: Any) -> Tensor:
    """``[N, H, W]`` bool masks from detectron2 ``Instances`` (``gt_masks``), a dict with ``gt_masks``, ``BitMasks``
    or a tensor."""
    masks = instances
    if isinstance(masks, dict):
        masks = masks["gt_masks"]
    elif hasattr(masks, "has") and masks.has("gt_masks"):
        masks = masks.gt_masks
    masks = getattr(masks, "tensor", masks)
    masks = torch.as_tensor(masks)
    if masks.dim() != 3:
        raise ValueError(f"instance masks must be [N, H, W], got shape {tuple(masks.shape)}.")
    return masks.bool()


def _pad_to(masks: Tensor, size: tuple[int, int]) -> Tensor:
    height, width = masks.shape[-2:]
    if height > size[0] or width > size[1]:
        raise ValueError(f"masks of {height}x{width} do not fit the padded input {size[0]}x{size[1]}.")
    return F.pad(masks, (0, size[1] - width, 0, size[0] - height))


def prepare_spatial_training(
    model: Any,
    batch_images: ImageInput | Sequence[ImageInput] | ImageBatch,
    instances: Sequence[Any],
    *,
    max_candidate: int = 10,
    max_iter: int = 1,
    generator: torch.Generator,
    min_iter: int = 0,
    sampler: VisualPromptSampler | None = None,
    iou_threshold: float = IOU_THRESHOLD,
) -> tuple[dict[str, Any], list[Tensor]]:
    """SEEM's spatial training inputs for one batch.

    1. Per image, draw a random Point/Polygon/Scribble/Circle inside each of up to ``max_candidate`` instances
       (:class:`~seemadapt.data.visual_prompts.VisualPromptSampler`, seeded from ``generator``).
    2. Draw ``r`` uniformly in ``min_iter..max_iter`` (once per batch; SEEM: ``0..max_iter``) and, without gradients, run ``r`` decoder rounds
       (``task="spatial"``), each adding one corrective click per prompt (:func:`add_corrective_clicks`); from the
       second round on the previous round's masks feed the memories.

    Args:
        model: the :class:`SEEM` being trained (DDP/accelerate wrappers are unwrapped; runs in its current mode).
        batch_images: the images exactly as they are passed to ``forward_train``.
        instances: per image detectron2 ``Instances`` with ``gt_masks`` (or ``[N, H, W]`` masks) at the image size.
        generator: the only source of randomness (sampler seed, number of rounds, decoder sampling).
        sampler: the shape sampler (default: SEEM's, with ``max_candidate``).

    Returns ``(spatial, gt_spatial_masks)``: ``spatial`` for ``forward_train(..., spatial=spatial)`` (``pos_masks``,
    ``neg_masks``, ``generator`` and, after at least one round, ``prev_mask``), and per image the targets
    ``[c, Hp, Wp]`` (bool, padded like the images) to put into each criterion target as ``gt_spatial_masks``.
    """
    if not 0 <= min_iter <= max_iter:
        raise ValueError(f"need 0 <= min_iter <= max_iter, got min_iter={min_iter}, max_iter={max_iter}.")
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            "prepare_spatial_training: generator must be a torch.Generator (seeded by the caller)."
        )
    seem = unwrap_model(model)
    batch = seem.preprocess(batch_images)
    if len(instances) != len(batch):
        raise ValueError(f"prepare_spatial_training: {len(instances)} instances for {len(batch)} images.")
    sampler = sampler if sampler is not None else VisualPromptSampler(VisualSamplerConfig(max_candidate))
    gt_masks, positive = _sample_shapes(seem, batch, instances, sampler, as_numpy_rng(generator))
    negative = [torch.zeros_like(p) for p in positive]
    rounds = int(
        torch.randint(min_iter, max_iter + 1, (1,), generator=generator, device=generator.device).item()
    )
    prev_mask = None
    if rounds:
        positive, negative, prev_mask = _click_rounds(
            seem, batch, gt_masks, positive, negative, rounds, generator, iou_threshold
        )
    spatial = {"pos_masks": positive, "neg_masks": negative, "generator": generator}
    if prev_mask is not None:
        spatial["prev_mask"] = prev_mask.detach()
    return spatial, gt_masks


def _sample_shapes(
    seem: Any, batch: ImageBatch, instances: Sequence[Any], sampler: VisualPromptSampler, rng: Any
) -> tuple[list[Tensor], list[Tensor]]:
    """Per image the sampled instances' masks and the random shapes inside them, padded like the images."""
    device, size = seem.device, batch.padded_size
    gt_masks, positive = [], []
    for b, record in enumerate(instances):
        masks = _instance_masks(record)
        height, width = batch.image_sizes[b]
        if tuple(masks.shape[-2:]) != (height, width):
            raise ValueError(
                f"prepare_spatial_training: image {b} is {height}x{width} but its masks are "
                f"{tuple(masks.shape[-2:])}."
            )
        sample = sampler(masks, rng)
        gt_masks.append(_pad_to(sample.gt_masks, size).to(device))
        positive.append(_pad_to(sample.rand_shape, size).to(device))
    return gt_masks, positive


def _click_rounds(
    seem: Any,
    batch: ImageBatch,
    gt_masks: list[Tensor],
    positive: list[Tensor],
    negative: list[Tensor],
    rounds: int,
    generator: torch.Generator,
    iou_threshold: float,
) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """``rounds`` decoder rounds without gradients, each adding one corrective click per prompt; returns the new
    positive and negative prompts and the last round's masks (the memories of the trained forward)."""
    device = seem.device
    prev_mask = None
    with torch.no_grad():
        mask_features, multi_scale, _ = seem.encode_image(batch)
        for _ in range(rounds):
            spatial = {"pos_masks": positive, "neg_masks": negative, "generator": generator}
            if prev_mask is not None:
                spatial["prev_mask"] = prev_mask
            prev_mask = seem.decoder(multi_scale, mask_features, None, spatial=spatial, task="spatial")[
                "prev_mask"
            ]
            positive, negative, _ = add_corrective_clicks(
                prev_mask,
                gt_masks,
                positive,
                negative,
                image_sizes=batch.image_sizes,
                iou_threshold=iou_threshold,
            )
            positive = [p.to(device) for p in positive]
            negative = [n.to(device) for n in negative]
    return positive, negative, prev_mask
