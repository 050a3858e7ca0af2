"""Instance segmentation: COCO mask AP of thing classes, scored by pycocotools' ``COCOeval``.

Ground truth comes from panoptic annotations: every segment of a thing category is one instance (its mask is its
pixels in the id map, its area their count), crowd segments (``iscrowd=1``) are COCO crowd regions (a detection on one
is ignored, neither TP nor FP). Predictions are ``(masks, scores, labels)``, e.g. ``predict(task="instance")``;
detections of stuff categories are dropped. Each image's masks are kept as COCO RLE (small), with each detection's
IoUs with the image's instances of its category (taken by the encoder from the C RLEs, pycocotools' own ``rleIou``),
and ``compute`` runs ``COCOeval(iouType="segm")`` on them with the default parameters (IoU 0.50:0.95, 101 recall
points, 100 detections per image), so the numbers are COCO's: AP, AP50, AP75, AP for small / medium / large objects,
and per-class AP.

Unlike the other metrics AP is not a sum: ``all_reduce`` gathers every process's images instead of summing.
A category without ground-truth instances has no AP (NaN) and is left out of the averages, as in COCO.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from seemadapt.metrics.distributed import gather_across_processes
from seemadapt.metrics.panoptic import OFFSET, VOID
from seemadapt.metrics.rle import Encoded, Overlap, PendingEncoding, encode_in_background, encode_with_areas

__all__ = ["InstanceClassResult", "InstanceMetrics", "InstanceResults"]

#: COCOeval's area ranges, in the order of ``params.areaRng``: all, small, medium, large.
_AREAS = ("all", "small", "medium", "large")


@dataclass(frozen=True)
class InstanceClassResult:
    """AP of one thing category (NaN without ground-truth instances)."""

    category_id: int
    name: str
    ap: float
    ap50: float
    ap75: float
    num_gt: int
    num_detections: int


@dataclass(frozen=True)
class InstanceResults:
    """COCO mask AP (fractions; NaN when no category has ground truth)."""

    ap: float
    ap50: float
    ap75: float
    ap_small: float
    ap_medium: float
    ap_large: float
    per_class: tuple[InstanceClassResult, ...]
    num_images: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": "instance",
            "ap": self.ap,
            "ap50": self.ap50,
            "ap75": self.ap75,
            "ap_small": self.ap_small,
            "ap_medium": self.ap_medium,
            "ap_large": self.ap_large,
            "num_images": self.num_images,
            "per_class": {
                c.name: {
                    "category_id": c.category_id,
                    "ap": c.ap,
                    "ap50": c.ap50,
                    "ap75": c.ap75,
                    "num_gt": c.num_gt,
                    "num_detections": c.num_detections,
                }
                for c in self.per_class
            },
        }


def _to_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _coco_layout(masks: Any) -> np.ndarray:
    """Bool (or 0/1) masks ``[N, H, W]`` (tensor or array) as pycocotools reads them: uint8 ``[H, W, N]`` in Fortran
    order, which is ``[N, W, H]`` in C order. Column-major masks (``predict``'s instance masks) need no copy, others
    one transposing copy."""
    if isinstance(masks, torch.Tensor):
        columns = masks.detach().transpose(1, 2).contiguous()
        columns = columns.view(torch.uint8) if columns.dtype == torch.bool else columns.to(torch.uint8)
        array = columns.cpu().numpy()
    else:
        array = np.ascontiguousarray(np.asarray(masks).transpose(0, 2, 1))
        array = array.view(np.uint8) if array.dtype == np.bool_ else array.astype(np.uint8)
    return array.transpose(2, 1, 0)


@dataclass
class _PendingDetections:
    """An image's detections whose masks are still being encoded (``InstanceMetrics(encode_in_background=True)``)."""

    encoding: PendingEncoding
    labels: np.ndarray
    scores: np.ndarray

    def settle(self) -> list[dict[str, Any]]:
        return _detections(self.encoding.result(), self.labels, self.scores)


def _detections(encoded: Encoded, labels: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    """COCO result dicts (no ids) of encoded masks with their labels and scores, and each one's IoUs with the
    image's ground-truth instances of its category (``"ious"``: ``{"column" of the instance: IoU}``; see
    :class:`_PrecomputedIoUs`)."""
    assert encoded.ious is not None  # InstanceMetrics always encodes detections with an Overlap
    return [
        {
            "category_id": int(label),
            "segmentation": rle,
            "area": float(area),
            "score": float(score),
            "iscrowd": 0,
            "ious": {column: float(iou) for column, iou in enumerate(row.tolist()) if not math.isnan(iou)},
        }
        for rle, area, label, score, row in zip(encoded.rles, encoded.areas, labels, scores, encoded.ious)
    ]


class _PrecomputedIoUs(COCOeval):
    """``COCOeval`` that reads each (image, category)'s IoU matrix off the detections' ``"ious"`` rows, taken by the
    encoder from the masks' C RLEs (:class:`~seemadapt.metrics.rle.Overlap`), instead of decoding every RLE
    string again: the same ``rleIou`` values, in ``computeIoU``'s order (detections by descending score, stable,
    at most ``maxDets[-1]``; ground truth as indexed)."""

    def computeIoU(self, imgId: int, catId: int) -> np.ndarray | list:
        truths, detections = self._gts[imgId, catId], self._dts[imgId, catId]
        if not truths or not detections:
            return []
        order = np.argsort([-d["score"] for d in detections], kind="mergesort")[: self.params.maxDets[-1]]
        columns = [g["column"] for g in truths]
        return np.array([[detections[k]["ious"][c] for c in columns] for k in order], dtype=np.float64)


class InstanceMetrics:
    """Streaming COCO mask AP over images (see the module docstring).

    Args:
        categories: ``[{"id", "name", "isthing"}, ...]`` as for :class:`~seemadapt.metrics.PanopticMetrics`;
            only thing categories are scored.
        encode_in_background: :meth:`update` returns while the predicted masks are still being RLE-encoded on
            worker threads (:func:`~seemadapt.metrics.rle.encode_in_background`), so the caller goes on meanwhile;
            the masks must then stay unchanged until :meth:`compute` (``seemadapt.evaluate`` passes masks that
            nothing else holds).
    """

    def __init__(
        self, categories: Sequence[Mapping[str, Any]], *, encode_in_background: bool = False
    ) -> None:
        self.encode_in_background = encode_in_background
        things = [c for c in categories if bool(c["isthing"])]
        self.category_ids = tuple(int(c["id"]) for c in things)
        self.category_names = tuple(str(c["name"]) for c in things)
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"categories have duplicate ids: {list(self.category_ids)}.")
        self.known = {int(c["id"]) for c in categories}
        self.images: list[tuple[tuple[int, int], list[dict[str, Any]], Any]] = []
        """Per image ``((height, width), ground-truth annotations, detections)``, COCO dicts without ids, the
        annotations with their ``"column"``, the detections with their ``"ious"`` (the detections of the latest
        images may still be encoding: :meth:`settled` waits for them)."""

    def reset(self) -> None:
        self.settled().images.clear()

    def settled(self) -> InstanceMetrics:
        """Wait for the masks still encoding in the background (their errors are raised here); returns ``self``."""
        for k, (shape, truths, detections) in enumerate(self.images):
            if isinstance(detections, _PendingDetections):
                self.images[k] = (shape, truths, detections.settle())
        return self

    def update(
        self, masks: Any, scores: Any, labels: Any, gt_ids: Any, gt_segments: Sequence[Mapping[str, Any]]
    ) -> None:
        """Score one image: predicted ``masks`` bool ``[N, H, W]``, ``scores [N]``, ``labels [N]`` (category ids)
        against the panoptic ground truth ``gt_ids [H, W]`` (0 = void) and its ``segments_info``."""
        gt_map = _to_numpy(gt_ids)
        if gt_map.ndim != 2 or (gt_map.size and (gt_map.min() < VOID or gt_map.max() >= OFFSET)):
            raise ValueError(f"gt_ids must be an [H, W] segment-id map, got shape {gt_map.shape}.")
        labels_a = _to_numpy(labels).astype(np.int64).reshape(-1)
        scores_a = _to_numpy(scores).astype(np.float64).reshape(-1)
        if tuple(masks.shape[1:]) != gt_map.shape or not len(masks) == len(scores_a) == len(labels_a):
            raise ValueError(
                f"masks {tuple(masks.shape)}, scores {scores_a.shape} and labels {labels_a.shape} must describe the "
                f"same N instances at the ground truth's size {gt_map.shape}."
            )
        truths = self._ground_truth(gt_map, gt_segments)
        keep = np.isin(labels_a, self.category_ids)
        detections: list[dict[str, Any]] | _PendingDetections = []
        if keep.any():
            index = np.nonzero(keep)[0]
            if keep.all():  # predict(thing_classes=...) gives only things: no copy of the masks
                kept = masks
            elif isinstance(masks, torch.Tensor):
                kept = masks[torch.from_numpy(index)]
            else:
                kept = np.asarray(masks)[index]
            overlap = Overlap(
                [t["segmentation"] for t in truths],
                [t["category_id"] for t in truths],
                [t["iscrowd"] for t in truths],
                labels_a[index],
            )
            if self.encode_in_background:
                encoding = encode_in_background(_coco_layout(kept), overlap=overlap)
                detections = _PendingDetections(encoding, labels_a[index], scores_a[index])
            else:
                encoded = encode_with_areas(_coco_layout(kept), overlap)
                detections = _detections(encoded, labels_a[index], scores_a[index])
        self.images.append((gt_map.shape, truths, detections))

    def _ground_truth(
        self, gt_map: np.ndarray, segments: Sequence[Mapping[str, Any]]
    ) -> list[dict[str, Any]]:
        """One COCO annotation per thing segment with pixels (a segment a resize erased is no instance), each with
        its place among them (``"column"``: the detections' IoU rows follow this order)."""
        for seg in segments:
            if int(seg["category_id"]) not in self.known:
                raise ValueError(
                    f"gt segment {seg['id']} has category_id {seg['category_id']}, not a category."
                )
        things = [s for s in segments if int(s["category_id"]) in self.category_ids]
        if not things:
            return []
        columns = np.ascontiguousarray(gt_map.T)  # masks made column-major: encoding needs no copy
        masks = np.stack([columns == int(s["id"]) for s in things]).transpose(0, 2, 1)
        present = masks.any(axis=(1, 2))
        encoded = encode_with_areas(_coco_layout(masks))
        annotations = [
            {
                "category_id": int(s["category_id"]),
                "segmentation": rle,
                "area": float(area),
                "iscrowd": int(s.get("iscrowd", 0)),
            }
            for s, rle, area, keep in zip(things, encoded.rles, encoded.areas, present)
            if keep
        ]
        return [{**annotation, "column": k} for k, annotation in enumerate(annotations)]

    def merge(self, other: InstanceMetrics) -> InstanceMetrics:
        """Add another accumulator's images (same categories) to this one; returns ``self``."""
        if not isinstance(other, InstanceMetrics) or other.category_ids != self.category_ids:
            raise ValueError("merge() needs an InstanceMetrics with the same categories.")
        self.settled().images.extend(other.settled().images)
        return self

    def all_reduce(self) -> InstanceMetrics:
        """A new accumulator holding every ``torch.distributed`` process's images (call on all)."""
        reduced = InstanceMetrics([])
        reduced.category_ids, reduced.category_names, reduced.known = (
            self.category_ids,
            self.category_names,
            set(self.known),
        )
        for images in gather_across_processes(self.settled().images):
            reduced.images.extend(images)
        return reduced

    def compute(self) -> InstanceResults:
        """COCO AP of the images so far (``COCOeval`` runs here, quietly)."""
        self.settled()
        evaluation = self._coco_eval() if self.images and self.category_ids else None
        precision = None if evaluation is None else evaluation.eval["precision"]  # [T, R, K, A, M]

        def mean(t: slice | int = slice(None), k: slice | int = slice(None), area: int = 0) -> float:
            if precision is None:
                return math.nan
            values = precision[t, :, k, area, -1]
            valid = values[values > -1]
            return float(valid.mean()) if valid.size else math.nan

        counts_gt, counts_dt = self._counts()
        per_class = tuple(
            InstanceClassResult(
                cid, name, mean(k=k), mean(t=0, k=k), mean(t=5, k=k), counts_gt[k], counts_dt[k]
            )
            for k, (cid, name) in enumerate(zip(self.category_ids, self.category_names))
        )
        small, medium, large = (mean(area=_AREAS.index(a)) for a in _AREAS[1:])
        return InstanceResults(
            mean(), mean(t=0), mean(t=5), small, medium, large, per_class, len(self.images)
        )

    def _counts(self) -> tuple[list[int], list[int]]:
        """Non-crowd ground-truth instances and detections per category."""
        index = {cid: k for k, cid in enumerate(self.category_ids)}
        gt, dt = [0] * len(index), [0] * len(index)
        for _, truths, detections in self.images:
            for a in truths:
                gt[index[a["category_id"]]] += 1 - a["iscrowd"]
            for d in detections:
                dt[index[d["category_id"]]] += 1
        return gt, dt

    def _coco_eval(self) -> COCOeval:
        """``COCOeval`` run on the stored images (image ids 1..n, annotation ids from 1)."""
        gt, dt = [], []
        images = []
        for image_id, ((height, width), truths, detections) in enumerate(self.images, start=1):
            images.append({"id": image_id, "height": height, "width": width})
            for kind, out in ((truths, gt), (detections, dt)):
                for annotation in kind:
                    out.append({**annotation, "image_id": image_id, "id": len(out) + 1})
        categories = [{"id": cid} for cid in self.category_ids]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            coco_gt, coco_dt = COCO(), COCO()
            coco_gt.dataset = {"images": images, "categories": categories, "annotations": gt}
            coco_dt.dataset = {"images": images, "categories": categories, "annotations": dt}
            coco_gt.createIndex()
            coco_dt.createIndex()
            evaluation = _PrecomputedIoUs(coco_gt, coco_dt, iouType="segm")
            evaluation.params.imgIds = [image["id"] for image in images]
            evaluation.params.catIds = list(self.category_ids)
            evaluation.evaluate()
            evaluation.accumulate()
        return evaluation
