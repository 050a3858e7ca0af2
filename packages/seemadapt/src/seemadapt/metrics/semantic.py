"""Semantic segmentation metrics from one streaming confusion matrix.

Definitions (the thesis's, and those of detectron2's ``SemSegEvaluator`` and torchmetrics' multiclass
metrics with ``average=None``), with TP/FP/FN counted in pixels over the *whole* evaluation set (not
averaged per image), pixels whose ground truth is ``ignore_index`` left out entirely:

* IoU_c = TP / (TP + FP + FN), precision_c = TP / (TP + FP), recall_c = TP / (TP + FN).
* A class absent from both ground truth and predictions has no defined score: its IoU, precision and
  recall are NaN and it is left out of every mean. Any other 0/0 (a class in the ground truth but never
  predicted has precision 0/0; one predicted but absent from the ground truth has recall 0/0) counts as 0,
  so a class the model hallucinates or never finds pulls the means down.
* mIoU, mean precision, mean recall: NaN-skipping means of the per-class values.
* pixel accuracy = sum TP / number of scored pixels; frequency-weighted IoU = sum_c (GT pixels_c / scored
  pixels) * IoU_c.

All results are fractions in [0, 1]; :func:`seemadapt.metrics.format_table` prints percentages.
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


def _ratio(numerator: np.ndarray, denominator: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """numerator / denominator where ``defined``; 0 where defined but 0/0; NaN where not defined."""
    out = np.full(numerator.shape, np.nan)
    safe = defined & (denominator > 0)
    out[defined] = 0.0
    out[safe] = numerator[safe] / denominator[safe]
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


@dataclass(frozen=True)
class SemanticResults:
    """Scores of one evaluation; per-class arrays are indexed by class index (fractions, NaN = undefined)."""

    class_names: tuple[str, ...]
    iou: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    miou: float
    mean_precision: float
    mean_recall: float
    pixel_accuracy: float
    fwiou: float
    confusion: np.ndarray
    """``[K, K]`` pixel counts, rows = ground-truth class, columns = predicted class."""

    @property
    def gt_pixels(self) -> np.ndarray:
        """Scored ground-truth pixels per class."""
        return self.confusion.sum(axis=1)

    def per_class(self) -> dict[str, dict[str, float]]:
        """``{class name: {"iou", "precision", "recall"}}``."""
        return {
            name: {
                "iou": float(self.iou[k]),
                "precision": float(self.precision[k]),
                "recall": float(self.recall[k]),
            }
            for k, name in enumerate(self.class_names)
        }

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (NaN kept as float NaN; :func:`~seemadapt.metrics.to_json` writes null)."""
        return {
            "task": "semantic",
            "miou": self.miou,
            "mean_precision": self.mean_precision,
            "mean_recall": self.mean_recall,
            "pixel_accuracy": self.pixel_accuracy,
            "fwiou": self.fwiou,
            "per_class": self.per_class(),
            "class_names": list(self.class_names),
            "confusion": self.confusion.tolist(),
        }


class SemanticMetrics(SummedMetric):
    """Streaming semantic-segmentation metrics over label maps.

    Args:
        num_classes: K; labels are ``0 .. K-1``.
        class_names: K unique names (default ``class_0 ..``).
        ignore_index: ground-truth value that is not scored (the contract's uncertain pixels, 255). It
            must lie outside ``0 .. K-1``; ``None`` scores every pixel.

    ``update`` takes a predicted and a ground-truth label map of the same shape (``[H, W]`` or a batch
    ``[B, H, W]``; torch or numpy; the count runs on the prediction's device). Compare at the ground
    truth's resolution: resize predictions (nearest) before calling it.
    """

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        ignore_index: int | None = 255,
    ) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}.")
        if class_names is None:
            class_names = [f"class_{k}" for k in range(num_classes)]
        class_names = tuple(str(name) for name in class_names)
        if len(class_names) != num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes is {num_classes}; give one name "
                "per class index."
            )
        if len(set(class_names)) != num_classes:
            raise ValueError(f"class_names must be unique, got {list(class_names)}.")
        if ignore_index is not None and not -(2**20) <= ignore_index < 2**20:
            raise ValueError(f"ignore_index must lie in [-2**20, 2**20), got {ignore_index}.")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index={ignore_index} is a class index (0..{num_classes - 1}); use a value outside "
                "the class range (255 in the dataset contract) or None."
            )
        self.num_classes = num_classes
        self.class_names = class_names
        self.ignore_index = ignore_index
        super().__init__(
            torch.zeros(num_classes, num_classes, dtype=torch.int64),
            num_classes=num_classes,
            class_names=class_names,
            ignore_index=ignore_index,
        )

    @property
    def confusion(self) -> torch.Tensor:
        """``[K, K]`` pixel counts: rows ground truth, columns prediction."""
        return self.sums

    def update(self, pred: Any, gt: Any) -> None:
        """Add the pixels of one label map (or a batch of them) to the confusion matrix."""
        pred_a, gt_a = same_place(as_labels(pred, "pred"), as_labels(gt, "gt"))
        if tuple(pred_a.shape) != tuple(gt_a.shape):
            raise ValueError(
                f"pred has shape {tuple(pred_a.shape)} but gt has {tuple(gt_a.shape)}; resize the prediction "
                "to the ground-truth size (nearest) before update()."
            )
        self._accumulate(pred_a.reshape(-1), gt_a.reshape(-1))

    def _accumulate(self, pred_a: Labels, gt_a: Labels) -> None:
        """Count flat label arrays: numpy arrays with numpy, tensors with torch on their device."""
        k = self.num_classes
        if pred_a.shape[0] == 0:
            return
        low, high = int(pred_a.min()), int(pred_a.max())
        if low < 0 or high >= k:
            raise ValueError(
                f"pred holds labels in [{low}, {high}] but num_classes is {k}; predictions must be class "
                "indices 0..K-1."
            )
        # A lookup table maps each ground-truth value to the row offset gt * K of its class, ignored
        # pixels to an extra row K * K, and invalid values to -1; then one bincount over offset + pred.
        low, high = int(gt_a.min()), int(gt_a.max())
        table = self._offset_table(low, high)
        if isinstance(gt_a, torch.Tensor):
            offsets = torch.from_numpy(table).to(gt_a.device)[gt_a.long() - low]
        else:
            offsets = table[gt_a.astype(np.int64) - low] if low else table[gt_a]
        if int(offsets.min()) < 0:
            self._raise_bad_gt(gt_a[offsets < 0])
        if isinstance(offsets, torch.Tensor):
            counts = torch.bincount(offsets + pred_a.long(), minlength=(k + 1) * k)[: k * k].cpu()
        else:
            flat = np.add(offsets, pred_a, dtype=np.int64, casting="unsafe")
            counts = torch.from_numpy(np.bincount(flat, minlength=(k + 1) * k)[: k * k])
        self.sums += counts.reshape(k, k)

    def _offset_table(self, low: int, high: int) -> np.ndarray:
        k, ignore = self.num_classes, self.ignore_index
        valid_low = 0 if ignore is None else min(0, ignore)
        valid_high = k - 1 if ignore is None else max(k - 1, ignore)
        if low < valid_low or high > valid_high:
            self._raise_bad_gt(np.array([low if low < valid_low else high]))
        table = np.full(high - low + 1, -1, dtype=np.int64)
        first, last = max(low, 0), min(high, k - 1)
        if first <= last:
            table[first - low : last - low + 1] = np.arange(first, last + 1) * k
        if ignore is not None and low <= ignore <= high:
            table[ignore - low] = k * k
        return table

    def _raise_bad_gt(self, bad: Any) -> None:
        bad = bad.cpu().numpy() if isinstance(bad, torch.Tensor) else np.asarray(bad)
        values = sorted(set(bad.reshape(-1).tolist()))[:5]
        raise ValueError(
            f"gt holds labels {values} outside 0..{self.num_classes - 1} and ignore_index="
            f"{self.ignore_index}; map them to a class or to ignore_index."
        )

    def compute(self) -> SemanticResults:
        conf = self.sums.cpu().numpy().astype(np.int64)
        tp = np.diag(conf).astype(np.float64)
        gt_pixels = conf.sum(axis=1).astype(np.float64)
        pred_pixels = conf.sum(axis=0).astype(np.float64)
        fp, fn = pred_pixels - tp, gt_pixels - tp
        seen = (gt_pixels + pred_pixels) > 0
        iou = _ratio(tp, tp + fp + fn, seen)
        precision = _ratio(tp, tp + fp, seen)
        recall = _ratio(tp, tp + fn, seen)
        total = gt_pixels.sum()
        pixel_accuracy = float(tp.sum() / total) if total > 0 else math.nan
        fwiou = float(np.nansum(gt_pixels / total * iou)) if total > 0 else math.nan
        return SemanticResults(
            class_names=self.class_names,
            iou=iou,
            precision=precision,
            recall=recall,
            miou=_nanmean(iou),
            mean_precision=_nanmean(precision),
            mean_recall=_nanmean(recall),
            pixel_accuracy=pixel_accuracy,
            fwiou=fwiou,
            confusion=conf,
        )
