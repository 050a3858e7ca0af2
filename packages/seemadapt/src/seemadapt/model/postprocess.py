"""From SEEM's raw outputs to semantic maps, panoptic segments, instances and grounded masks.

All functions work on one image, on any device, with plain tensors in and out. Mask logits are first brought to the
caller's image size (:func:`resize_mask_logits`: bilinear to the padded input, crop, bicubic+antialias to the original
size, as X-Decoder/SEEM do *before* inference), then the task rule runs on the full-resolution logits:

* semantic: ``einsum("qk,qhw->khw", softmax(cls)[:, :K], sigmoid(masks))``;
* panoptic: Mask2Former's merge: queries whose best non-background class scores above ``object_mask_threshold``
  compete per pixel by ``score * sigmoid(mask)``; a query keeps its pixels only where its own mask is >= 0.5 and only
  if it wins at least ``overlap_threshold`` of its mask's area; stuff queries of one class merge into one segment;
* instance: top-k (query, class) pairs by class score, binary masks ``logit > 0``, score = class score x mean mask
  probability inside the mask;
* grounding: for each text, the query whose caption embedding is most similar to the text embedding.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from seemadapt.model.language import MAX_LOGIT_SCALE, NORM_EPS

Size = tuple[int, int]

OBJECT_MASK_THRESHOLD = 0.8
OVERLAP_THRESHOLD = 0.8
DETECTIONS_PER_IMAGE = 100


def resize_mask_logits(mask_logits: Tensor, padded_size: Size, image_size: Size, output_size: Size) -> Tensor:
    """Mask logits ``[Q, h, w]`` at the decoder's stride -> ``[Q, H, W]`` at ``output_size``.

    Bilinear upsampling to the padded input size, crop of the padding (``image_size`` is the image inside the padded
    batch), then bicubic resize with antialiasing to ``output_size`` (the size the caller's image had), in float32.
    """
    if mask_logits.dim() != 3:
        raise ValueError(f"mask_logits must be [Q, h, w], got shape {tuple(mask_logits.shape)}.")
    if image_size[0] > padded_size[0] or image_size[1] > padded_size[1]:
        raise ValueError(f"image_size {image_size} is larger than padded_size {padded_size}.")
    x = mask_logits.float()[None]
    x = F.interpolate(x, size=tuple(padded_size), mode="bilinear", align_corners=False)
    x = x[..., : image_size[0], : image_size[1]]
    if tuple(output_size) != tuple(image_size):
        x = F.interpolate(x, size=tuple(output_size), mode="bicubic", align_corners=False, antialias=True)
    return x[0]


def _check_pair(class_logits: Tensor, mask_logits: Tensor) -> None:
    if class_logits.dim() != 2 or mask_logits.dim() != 3 or class_logits.shape[0] != mask_logits.shape[0]:
        raise ValueError(
            f"Expected class_logits [Q, K+1] and mask_logits [Q, H, W] with the same Q, got "
            f"{tuple(class_logits.shape)} and {tuple(mask_logits.shape)}."
        )
    if class_logits.shape[1] < 2:
        raise ValueError("class_logits needs at least one class plus the background column.")


def semantic_inference(class_logits: Tensor, mask_logits: Tensor) -> Tensor:
    """Per-class score maps ``[K, H, W]``: class probabilities (background column dropped) times mask probabilities,
    summed over queries."""
    _check_pair(class_logits, mask_logits)
    probs = class_logits.float().softmax(dim=-1)[:, :-1]
    return torch.einsum("qk,qhw->khw", probs, mask_logits.float().sigmoid())


def panoptic_inference(
    class_logits: Tensor,
    mask_logits: Tensor,
    thing_ids: Collection[int] | None = None,
    object_mask_threshold: float = OBJECT_MASK_THRESHOLD,
    overlap_threshold: float = OVERLAP_THRESHOLD,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """Panoptic segmentation of one image.

    Args:
        class_logits: ``[Q, K+1]`` (last column = background / no object).
        mask_logits: ``[Q, H, W]`` at the output size.
        thing_ids: class indices that are *things* (one segment per query); every other class is *stuff* (all its
            queries merge into one segment). ``None`` = every class is a thing.
        object_mask_threshold: a query is used only if its best class is not background and scores above this.
        overlap_threshold: a query is kept only if it wins at least this fraction of its own mask (``prob >= 0.5``).

    Returns:
        ``(panoptic_seg, segments_info)``: ``int32 [H, W]`` segment ids, 0 = no segment; and one dict per segment
        ``{"id", "category_id", "isthing", "score", "area"}`` (``score`` of the query that created it; ``area`` in
        pixels after merging).
    """
    _check_pair(class_logits, mask_logits)
    num_classes = class_logits.shape[1] - 1
    scores, labels = class_logits.float().softmax(dim=-1).max(dim=-1)
    keep = (labels != num_classes) & (scores > object_mask_threshold)
    scores, labels, probs = scores[keep], labels[keep], mask_logits.float().sigmoid()[keep]
    height, width = mask_logits.shape[-2:]
    panoptic_seg = torch.zeros(height, width, dtype=torch.int32, device=mask_logits.device)
    segments: list[dict[str, Any]] = []
    if len(scores) == 0:
        return panoptic_seg, segments
    owner = (scores[:, None, None] * probs).argmax(dim=0)
    things = None if thing_ids is None else {int(i) for i in thing_ids}
    stuff_segment: dict[int, int] = {}
    for k in range(len(scores)):
        label = int(labels[k])
        is_thing = things is None or label in things
        won = owner == k
        own = probs[k] >= 0.5
        won_area, own_area = int(won.sum()), int(own.sum())
        region = won & own
        if won_area == 0 or own_area == 0 or not bool(region.any()):
            continue
        if won_area / own_area < overlap_threshold:
            continue
        if not is_thing and label in stuff_segment:
            panoptic_seg[region] = stuff_segment[label]
            continue
        segment_id = len(segments) + 1
        panoptic_seg[region] = segment_id
        if not is_thing:
            stuff_segment[label] = segment_id
        segments.append(
            {"id": segment_id, "category_id": label, "isthing": is_thing, "score": float(scores[k])}
        )
    if segments:
        areas = torch.bincount(panoptic_seg.flatten().long(), minlength=len(segments) + 1)
        for segment in segments:
            segment["area"] = int(areas[segment["id"]])
    return panoptic_seg, segments


def instance_inference(
    class_logits: Tensor,
    mask_logits: Tensor,
    thing_ids: Collection[int] | None = None,
    top_k: int = DETECTIONS_PER_IMAGE,
) -> dict[str, Tensor]:
    """Instance segmentation of one image: the ``top_k`` best (query, class) pairs.

    Returns ``{"masks": bool [N, H, W], "scores": [N], "labels": int64 [N]}`` sorted by score (highest first).
    With ``thing_ids`` only those classes are kept (after the top-k, as SEEM does when panoptic is also on).
    """
    _check_pair(class_logits, mask_logits)
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}.")
    num_queries, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    class_scores = class_logits.float().softmax(dim=-1)[:, :-1].flatten()
    top_scores, flat = class_scores.topk(min(top_k, num_queries * num_classes))
    labels, queries = flat % num_classes, flat // num_classes
    if thing_ids is not None:
        allowed = torch.zeros(num_classes, dtype=torch.bool, device=labels.device)
        ids = [int(i) for i in thing_ids if 0 <= int(i) < num_classes]
        allowed[ids] = True
        keep = allowed[labels]
        top_scores, labels, queries = top_scores[keep], labels[keep], queries[keep]
    logits = mask_logits.float()[queries]
    masks = logits > 0
    inside = masks.flatten(1).float()
    mask_scores = (logits.sigmoid().flatten(1) * inside).sum(1) / (inside.sum(1) + 1e-6)
    scores = top_scores * mask_scores
    order = scores.argsort(descending=True)
    return {"masks": masks[order], "scores": scores[order], "labels": labels[order]}


def grounding_logits(captions: Tensor, text_embeddings: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Query-text similarity ``[Q, n]``: ``min(exp(logit_scale), 100) * cos(caption, text)`` (norms get ``+1e-7``).

    The one implementation for inference (:func:`match_grounding`, interactive candidates) and training (matcher and
    criterion). Computed in float32; the text norms in the texts' own precision when it is higher. A tensor
    ``logit_scale`` (the language encoder's raw log-scale parameter) keeps its autograd connection.
    """
    scale = (
        torch.as_tensor(logit_scale, dtype=torch.float32, device=captions.device)
        .exp()
        .clamp(max=MAX_LOGIT_SCALE)
    )
    v = captions.float()
    v = v / (v.norm(dim=-1, keepdim=True) + NORM_EPS)
    text = text_embeddings.to(
        device=v.device, dtype=torch.promote_types(text_embeddings.dtype, torch.float32)
    )
    t = text.float() / (text.norm(dim=-1, keepdim=True).float() + NORM_EPS)
    return scale * v @ t.t()


def match_grounding(
    captions: Tensor, text_embeddings: Tensor, logit_scale: Tensor | float
) -> tuple[Tensor, Tensor]:
    """For each text, the best query: ``(query indices [n], confidence [n])``.

    The confidence is the softmax over queries of the similarity logits, read at the chosen query: how clearly one
    query stands out for the text (SEEM itself only takes the argmax).
    """
    logits = grounding_logits(captions, text_embeddings, logit_scale)
    probs = logits.softmax(dim=0)
    confidence, indices = probs.max(dim=0)
    return indices, confidence
