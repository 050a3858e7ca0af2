"""Referring / grounding segmentation metrics over (predicted mask, ground-truth mask) pairs.

The RefCOCO conventions (LAVT, X-Decoder/SEEM's grounding evaluator), with I and U the pixel counts of
intersection and union of one pair:

* mIoU: the mean over pairs of I / U (each referring expression weighs the same);
* cIoU (cumulative IoU): sum I / sum U over all pairs (large objects weigh more);
* precision@t: the fraction of pairs with IoU >= t, for t in ``thresholds`` (0.5 .. 0.9 by default).

A pair whose masks are both empty (nothing referred, nothing predicted) has IoU 1; it adds nothing to cIoU.
Results are fractions; tables print percentages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from seemadapt.metrics.distributed import SummedMetric
from seemadapt.metrics.inputs import Labels, as_labels, same_place


@dataclass(frozen=True)
class GroundingResults:
    miou: float
    ciou: float
    precision: dict[float, float]
    """``{threshold: fraction of pairs with IoU >= threshold}``."""
    count: int
    intersection: int
    union: int

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": "grounding", "miou": self.miou, "ciou": self.ciou}
        out.update({f"precision@{t:g}": v for t, v in self.precision.items()})
        out.update({"count": self.count, "intersection": self.intersection, "union": self.union})
        return out


class GroundingMetrics(SummedMetric):
    """Streaming mIoU, cIoU and precision@t over binary mask pairs.

    ``update(pred, gt)`` takes one pair ``[H, W]`` or a batch ``[N, H, W]`` of boolean (or 0/1 integer)
    masks; threshold probabilities or logits first.
    """

    def __init__(self, thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9)) -> None:
        thresholds = tuple(float(t) for t in thresholds)
        if any(not 0.0 < t <= 1.0 for t in thresholds) or len(set(thresholds)) != len(thresholds):
            raise ValueError(f"thresholds must be distinct IoU values in (0, 1], got {thresholds}.")
        self.thresholds = thresholds
        # float64 holds the pixel counts exactly (< 2^53)
        super().__init__(torch.zeros(4 + len(thresholds), dtype=torch.float64), thresholds=thresholds)

    @property
    def state(self) -> torch.Tensor:
        """``[count, sum IoU, sum I, sum U, hits@t...]``."""
        return self.sums

    def update(self, pred: Any, gt: Any) -> None:
        """Add one mask pair ``[H, W]`` or a batch of pairs ``[N, H, W]``."""
        pred_a, gt_a = same_place(as_labels(pred, "pred"), as_labels(gt, "gt"))
        if tuple(pred_a.shape) != tuple(gt_a.shape):
            raise ValueError(
                f"pred has shape {tuple(pred_a.shape)} but gt has {tuple(gt_a.shape)}; resize the predicted mask "
                "to the ground-truth size first."
            )
        if pred_a.ndim not in (2, 3):
            raise ValueError(f"masks must be [H, W] or [N, H, W], got shape {tuple(pred_a.shape)}.")
        for name, mask in (("pred", pred_a), ("gt", gt_a)):
            size = mask.numel() if isinstance(mask, torch.Tensor) else mask.size
            if size and (int(mask.min()) < 0 or int(mask.max()) > 1):
                raise ValueError(f"{name} must be a binary mask (bool or 0/1); threshold it first.")
        self._accumulate(pred_a, gt_a)

    def _accumulate(self, pred_a: Labels, gt_a: Labels) -> None:
        """Count binary masks: numpy arrays with numpy, tensors with torch on their device."""
        n = 1 if pred_a.ndim == 2 else pred_a.shape[0]
        if isinstance(pred_a, torch.Tensor):
            p, g = pred_a.bool().reshape(n, -1), gt_a.bool().reshape(n, -1)
            inter = (p & g).sum(1).cpu().numpy()
            union = (p | g).sum(1).cpu().numpy()
        else:
            p, g = pred_a.astype(bool).reshape(n, -1), gt_a.astype(bool).reshape(n, -1)
            inter = np.count_nonzero(p & g, axis=1)
            union = np.count_nonzero(p | g, axis=1)
        inter, union = inter.astype(np.float64), union.astype(np.float64)
        iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        hits = [float((iou >= t).sum()) for t in self.thresholds]
        delta = [float(n), float(iou.sum()), float(inter.sum()), float(union.sum()), *hits]
        self.sums += torch.tensor(delta, dtype=torch.float64)

    def compute(self) -> GroundingResults:
        count, iou_sum, inter, union, *hits = self.sums.tolist()
        n = int(count)
        return GroundingResults(
            miou=iou_sum / n if n else math.nan,
            ciou=inter / union if union else math.nan,
            precision={t: (h / n if n else math.nan) for t, h in zip(self.thresholds, hits)},
            count=n,
            intersection=int(inter),
            union=int(union),
        )
