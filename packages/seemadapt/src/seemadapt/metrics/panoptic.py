"""Panoptic quality (PQ, SQ, RQ) computed in memory with the COCO panoptic rules.

panopticapi's ``pq_compute`` only reads PNG files from folders; this module applies the same rules
(Kirillov et al. 2019, as implemented by panopticapi) to id maps already in memory, so evaluation needs no
temporary files and the state is a small ``[C, 4]`` table that sums across processes. The tests check it
against panopticapi's ``pq_compute`` on files.

Rules, per image:

* Ids are segment ids (``R + 256 G + 256^2 B`` in the PNG encoding); 0 is void. Every non-zero id in a map
  must be described in its ``segments_info``; described segments that cover no pixel are dropped (a
  resize can erase a tiny segment; it is then neither a detection nor a miss).
* A ground-truth segment and a predicted segment of the same category match when their IoU > 0.5, where
  the union leaves out the predicted pixels that fall on ground-truth void. Matching is unique by
  construction. Crowd ground-truth segments (``iscrowd=1``) never match.
* A matched pair is a TP of its category and adds its IoU; an unmatched non-crowd ground-truth segment is
  a FN. An unmatched predicted segment is a FP, unless more than half of it lies on ground-truth void or on
  crowd regions of its own category.

Per category: PQ = sum IoU / (TP + FP/2 + FN/2), SQ = sum IoU / TP (0 without TP), RQ = TP / (TP + FP/2 +
FN/2). A category with TP + FP + FN = 0 has no score (NaN) and is left out of the averages over all,
thing and stuff categories (as panopticapi does). Results are fractions; tables print percentages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from seemadapt.metrics.distributed import SummedMetric
from seemadapt.metrics.inputs import as_label_array
from segcontract import rgb2id

# Segment ids are 24-bit (RGB encoding), so gt * OFFSET + pred is a unique int64 key for a pair.
OFFSET = 256**3
VOID = 0
_IOU, _TP, _FP, _FN = range(4)


def _id_map(value: Any, name: str) -> np.ndarray:
    """An ``[H, W]`` segment-id map; an ``[H, W, 3]`` uint8 RGB panoptic PNG is decoded."""
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim == 3 and array.shape[-1] == 3 and array.dtype == np.uint8:
        return rgb2id(array).astype(np.int64)
    ids = as_label_array(array, name)
    if ids.ndim != 2:
        raise ValueError(
            f"{name} must be an [H, W] segment-id map (or RGB [H, W, 3]), got shape {ids.shape}."
        )
    if ids.size and (ids.min() < 0 or ids.max() >= OFFSET):
        raise ValueError(f"{name} ids must lie in [0, 256^3); got [{ids.min()}, {ids.max()}].")
    return ids


@dataclass(frozen=True)
class PQScore:
    """PQ, SQ, RQ averaged over ``n`` categories (NaN when n = 0)."""

    pq: float
    sq: float
    rq: float
    n: int


@dataclass(frozen=True)
class PanopticClassResult:
    """Scores and counts of one category (scores NaN when it has no TP, FP or FN)."""

    category_id: int
    name: str
    isthing: bool
    pq: float
    sq: float
    rq: float
    tp: int
    fp: int
    fn: int
    iou_sum: float


@dataclass(frozen=True)
class PanopticResults:
    all: PQScore
    things: PQScore
    stuff: PQScore
    per_class: tuple[PanopticClassResult, ...]

    def to_dict(self) -> dict[str, Any]:
        def score(s: PQScore) -> dict[str, Any]:
            return {"pq": s.pq, "sq": s.sq, "rq": s.rq, "n": s.n}

        return {
            "task": "panoptic",
            "all": score(self.all),
            "things": score(self.things),
            "stuff": score(self.stuff),
            "per_class": {
                c.name: {
                    "category_id": c.category_id,
                    "isthing": c.isthing,
                    "pq": c.pq,
                    "sq": c.sq,
                    "rq": c.rq,
                    "tp": c.tp,
                    "fp": c.fp,
                    "fn": c.fn,
                }
                for c in self.per_class
            },
        }


def _average(rows: list[PanopticClassResult]) -> PQScore:
    valid = [r for r in rows if r.tp + r.fp + r.fn > 0]
    if not valid:
        return PQScore(math.nan, math.nan, math.nan, 0)
    n = len(valid)
    return PQScore(
        pq=sum(r.pq for r in valid) / n,
        sq=sum(r.sq for r in valid) / n,
        rq=sum(r.rq for r in valid) / n,
        n=n,
    )


class PanopticMetrics(SummedMetric):
    """Streaming PQ/SQ/RQ over images.

    Args:
        categories: ``[{"id", "name", "isthing"}, ...]`` (COCO panoptic ``categories``; extra keys are
            ignored). ``category_id`` in every ``segments_info`` refers to these ids: dataset ids or
            detectron2's contiguous ids, as long as predictions and ground truth use the same ones.
    """

    def __init__(self, categories: Sequence[Mapping[str, Any]]) -> None:
        if not categories:
            raise ValueError("categories is empty; give [{'id', 'name', 'isthing'}, ...] for every category.")
        ids, names, isthing = [], [], []
        for i, cat in enumerate(categories):
            missing = {"id", "name", "isthing"} - set(cat)
            if missing:
                raise ValueError(f"categories[{i}] lacks {sorted(missing)}; each needs id, name and isthing.")
            ids.append(int(cat["id"]))
            names.append(str(cat["name"]))
            isthing.append(bool(cat["isthing"]))
        if len(set(ids)) != len(ids):
            raise ValueError(f"categories have duplicate ids: {ids}.")
        if len(set(names)) != len(names):
            raise ValueError(f"categories have duplicate names: {names}.")
        self.category_ids = tuple(ids)
        self.category_names = tuple(names)
        self.category_isthing = tuple(isthing)
        self._index = {cid: k for k, cid in enumerate(ids)}
        super().__init__(torch.zeros(len(ids), 4, dtype=torch.float64), categories=self.categories)

    @property
    def stats(self) -> torch.Tensor:
        """``[C, 4]``: IoU sum, TP, FP, FN per category (float64 holds counts exactly)."""
        return self.sums

    @property
    def categories(self) -> list[dict[str, Any]]:
        return [
            {"id": i, "name": n, "isthing": t}
            for i, n, t in zip(self.category_ids, self.category_names, self.category_isthing)
        ]

    def _segments(self, segments_info: Sequence[Mapping[str, Any]], name: str) -> dict[int, dict[str, int]]:
        segments: dict[int, dict[str, int]] = {}
        for seg in segments_info:
            seg_id, cat = int(seg["id"]), int(seg["category_id"])
            if seg_id == VOID:
                raise ValueError(f"{name} describes segment id 0, which is void; segment ids start at 1.")
            if seg_id in segments:
                raise ValueError(f"{name} describes segment id {seg_id} twice.")
            if cat not in self._index:
                raise ValueError(
                    f"{name}: segment {seg_id} has category_id {cat}, not among the categories "
                    f"{list(self.category_ids)}; predictions and ground truth must use the same category ids."
                )
            segments[seg_id] = {"category": self._index[cat], "iscrowd": int(seg.get("iscrowd", 0))}
        return segments

    def update(
        self,
        pred_ids: Any,
        pred_segments: Sequence[Mapping[str, Any]],
        gt_ids: Any,
        gt_segments: Sequence[Mapping[str, Any]],
    ) -> None:
        """Score one image.

        Args:
            pred_ids: ``[H, W]`` predicted segment ids (0 = no prediction), e.g. detectron2's
                ``panoptic_seg``; or the RGB-encoded ``[H, W, 3]`` uint8 PNG array.
            pred_segments: ``[{"id", "category_id", ...}]`` (``isthing`` is taken from the categories).
            gt_ids: ``[H, W]`` ground-truth segment ids (0 = void) or the RGB-encoded PNG array.
            gt_segments: ``[{"id", "category_id", "iscrowd", ...}]``.
        """
        pred = _id_map(pred_ids, "pred_ids")
        gt = _id_map(gt_ids, "gt_ids")
        if pred.shape != gt.shape:
            raise ValueError(
                f"pred_ids has shape {pred.shape} but gt_ids has {gt.shape}; resize the prediction to the "
                "ground-truth size (nearest) first."
            )
        pred_segs = self._segments(pred_segments, "pred_segments")
        gt_segs = self._segments(gt_segments, "gt_segments")

        intersections, gt_area, pred_area = _overlaps(pred, gt, pred_segs, gt_segs)
        stats = np.zeros((len(self.category_ids), 4), dtype=np.float64)
        gt_matched, pred_matched = _match(intersections, gt_area, pred_area, gt_segs, pred_segs, stats)
        _count_unmatched(
            intersections, gt_area, pred_area, gt_segs, pred_segs, gt_matched, pred_matched, stats
        )
        self.sums += torch.from_numpy(stats)

    def compute(self) -> PanopticResults:
        rows = []
        for k, stat in enumerate(self.sums.tolist()):
            iou, tp, fp, fn = stat[_IOU], int(stat[_TP]), int(stat[_FP]), int(stat[_FN])
            if tp + fp + fn == 0:
                pq = sq = rq = math.nan
            else:
                denominator = tp + 0.5 * fp + 0.5 * fn
                pq, sq, rq = iou / denominator, (iou / tp if tp else 0.0), tp / denominator
            rows.append(
                PanopticClassResult(
                    category_id=self.category_ids[k],
                    name=self.category_names[k],
                    isthing=self.category_isthing[k],
                    pq=pq,
                    sq=sq,
                    rq=rq,
                    tp=tp,
                    fp=fp,
                    fn=fn,
                    iou_sum=iou,
                )
            )
        return PanopticResults(
            all=_average(rows),
            things=_average([r for r in rows if r.isthing]),
            stuff=_average([r for r in rows if not r.isthing]),
            per_class=tuple(rows),
        )


def _overlaps(
    pred: np.ndarray, gt: np.ndarray, pred_segs: dict[int, dict[str, int]], gt_segs: dict[int, dict[str, int]]
) -> tuple[dict[tuple[int, int], int], dict[int, int], dict[int, int]]:
    """Pixel counts of every (gt id, pred id) pair and of every segment; every non-void id must be described."""
    pair_keys, pair_counts = np.unique(gt.reshape(-1) * OFFSET + pred.reshape(-1), return_counts=True)
    pair_gt, pair_pred = pair_keys // OFFSET, pair_keys % OFFSET
    gt_area: dict[int, int] = {}
    pred_area: dict[int, int] = {}
    for g, p, count in zip(pair_gt.tolist(), pair_pred.tolist(), pair_counts.tolist()):
        gt_area[g] = gt_area.get(g, 0) + count
        pred_area[p] = pred_area.get(p, 0) + count
    for ids_area, segs, name in ((gt_area, gt_segs, "gt"), (pred_area, pred_segs, "pred")):
        unknown = sorted(set(ids_area) - set(segs) - {VOID})
        if unknown:
            raise ValueError(
                f"{name}_ids holds segment ids {unknown[:5]} that {name}_segments does not describe; "
                "give every non-zero id a segments_info entry (or set those pixels to 0)."
            )
    intersections = {(g, p): c for g, p, c in zip(pair_gt.tolist(), pair_pred.tolist(), pair_counts.tolist())}
    return intersections, gt_area, pred_area


def _match(
    intersections: dict[tuple[int, int], int],
    gt_area: dict[int, int],
    pred_area: dict[int, int],
    gt_segs: dict[int, dict[str, int]],
    pred_segs: dict[int, dict[str, int]],
    stats: np.ndarray,
) -> tuple[set[int], set[int]]:
    """COCO matching (same category, not crowd, IoU > 0.5 with void pixels of the prediction left out): adds TP and
    IoU to ``stats``; returns the matched gt and pred ids."""
    gt_matched: set[int] = set()
    pred_matched: set[int] = set()
    for (g, p), inter in intersections.items():
        if g == VOID or p == VOID:
            continue
        gs, ps = gt_segs[g], pred_segs[p]
        if gs["iscrowd"] or gs["category"] != ps["category"]:
            continue
        union = pred_area[p] + gt_area[g] - inter - intersections.get((VOID, p), 0)
        iou = inter / union
        if iou > 0.5:
            stats[gs["category"], _TP] += 1
            stats[gs["category"], _IOU] += iou
            gt_matched.add(g)
            pred_matched.add(p)
    return gt_matched, pred_matched


def _count_unmatched(
    intersections: dict[tuple[int, int], int],
    gt_area: dict[int, int],
    pred_area: dict[int, int],
    gt_segs: dict[int, dict[str, int]],
    pred_segs: dict[int, dict[str, int]],
    gt_matched: set[int],
    pred_matched: set[int],
    stats: np.ndarray,
) -> None:
    """FN for unmatched non-crowd gt segments; FP for unmatched predictions not mostly on void or crowd pixels."""
    crowd_by_category: dict[int, list[int]] = {}
    for g, gs in gt_segs.items():
        if g not in gt_area:
            continue  # described but covers no pixel
        if gs["iscrowd"]:
            crowd_by_category.setdefault(gs["category"], []).append(g)
        elif g not in gt_matched:
            stats[gs["category"], _FN] += 1
    for p, ps in pred_segs.items():
        if p not in pred_area or p in pred_matched:
            continue
        ignored = intersections.get((VOID, p), 0)
        ignored += sum(intersections.get((g, p), 0) for g in crowd_by_category.get(ps["category"], ()))
        if ignored / pred_area[p] > 0.5:
            continue
        stats[ps["category"], _FP] += 1
