"""Markdown tables and JSON for metric results.

Tables print percentages with two decimals (as the thesis and detectron2 report them) and ``n/a`` for
undefined scores; JSON keeps the raw fractions and writes undefined scores as ``null`` so the file is
strict JSON that any parser reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .grounding import GroundingResults
from .instance import InstanceResults
from .panoptic import PanopticResults, PQScore
from .semantic import SemanticResults

Results = SemanticResults | PanopticResults | InstanceResults | GroundingResults
ResultsLike = Results | Mapping[str, Results]


def _pct(value: float, digits: int) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _semantic_table(r: SemanticResults, digits: int) -> str:
    summary = _table(
        ["mIoU", "mean precision", "mean recall", "pixel acc.", "fwIoU"],
        [[_pct(v, digits) for v in (r.miou, r.mean_precision, r.mean_recall, r.pixel_accuracy, r.fwiou)]],
    )
    per_class = _table(
        ["class", "IoU", "precision", "recall", "GT pixels"],
        [
            [name, _pct(r.iou[k], digits), _pct(r.precision[k], digits), _pct(r.recall[k], digits), str(n)]
            for k, (name, n) in enumerate(zip(r.class_names, r.gt_pixels.tolist()))
        ],
    )
    return summary + "\n\n" + per_class


def _panoptic_table(r: PanopticResults, digits: int) -> str:
    def row(name: str, s: PQScore) -> list[str]:
        return [name, _pct(s.pq, digits), _pct(s.sq, digits), _pct(s.rq, digits), str(s.n)]

    summary = _table(
        ["", "PQ", "SQ", "RQ", "N"], [row("All", r.all), row("Things", r.things), row("Stuff", r.stuff)]
    )
    per_class = _table(
        ["class", "kind", "PQ", "SQ", "RQ", "TP", "FP", "FN"],
        [
            [
                c.name,
                "thing" if c.isthing else "stuff",
                _pct(c.pq, digits),
                _pct(c.sq, digits),
                _pct(c.rq, digits),
                str(c.tp),
                str(c.fp),
                str(c.fn),
            ]
            for c in r.per_class
        ],
    )
    return summary + "\n\n" + per_class


def _instance_table(r: InstanceResults, digits: int) -> str:
    summary = _table(
        ["AP", "AP50", "AP75", "APs", "APm", "APl"],
        [[_pct(v, digits) for v in (r.ap, r.ap50, r.ap75, r.ap_small, r.ap_medium, r.ap_large)]],
    )
    per_class = _table(
        ["class", "AP", "AP50", "AP75", "GT instances", "detections"],
        [
            [c.name, *(_pct(v, digits) for v in (c.ap, c.ap50, c.ap75)), str(c.num_gt), str(c.num_detections)]
            for c in r.per_class
        ],
    )
    return summary + "\n\n" + per_class


def _grounding_table(r: GroundingResults, digits: int) -> str:
    header = ["mIoU", "cIoU", *(f"P@{t:g}" for t in r.precision), "pairs"]
    row = [_pct(r.miou, digits), _pct(r.ciou, digits), *(_pct(v, digits) for v in r.precision.values())]
    return _table(header, [[*row, str(r.count)]])


def _one_table(results: Results, digits: int) -> str:
    if isinstance(results, SemanticResults):
        return _semantic_table(results, digits)
    if isinstance(results, PanopticResults):
        return _panoptic_table(results, digits)
    if isinstance(results, InstanceResults):
        return _instance_table(results, digits)
    if isinstance(results, GroundingResults):
        return _grounding_table(results, digits)
    raise TypeError(
        f"format_table() takes SemanticResults, PanopticResults, InstanceResults, GroundingResults or a mapping "
        "of them, "
        f"got {type(results).__name__}."
    )


def format_table(results: ResultsLike, digits: int = 2) -> str:
    """Markdown tables (percentages) for one result or ``{section title: result}``."""
    if isinstance(results, Mapping):
        return "\n\n".join(f"### {title}\n\n{_one_table(r, digits)}" for title, r in results.items())
    return _one_table(results, digits)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        return _json_safe(value.item())
    return value


def to_json(results: ResultsLike, path: str | Path | None = None, indent: int = 2) -> str:
    """Strict JSON of one result or ``{name: result}`` (fractions; undefined scores as null).

    Writes it to ``path`` too when given.
    """
    if isinstance(results, Mapping):
        payload = {str(name): r.to_dict() for name, r in results.items()}
    elif isinstance(results, (SemanticResults, PanopticResults, InstanceResults, GroundingResults)):
        payload = results.to_dict()
    else:
        raise TypeError(f"to_json() takes metric results or a mapping of them, got {type(results).__name__}.")
    text = json.dumps(_json_safe(payload), indent=indent, allow_nan=False)
    if path is not None:
        Path(path).write_text(text + "\n")
    return text
