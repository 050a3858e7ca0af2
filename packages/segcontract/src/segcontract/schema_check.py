"""Schema checks: every contract column present, with the right kind of feature."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets
from datasets import ClassLabel, Features, Value

from segcontract.columns import COLUMNS, GROUNDING_KEYS, IMAGE_COLUMNS, SEGMENT_KEYS
from segcontract.errors import ContractError

__all__ = ["check_features"]


def _is_int(feature: Any) -> bool:
    return isinstance(feature, Value) and feature.dtype.startswith(("int", "uint"))


def _is_str(feature: Any) -> bool:
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def _column_problems(features: Features) -> list[str]:
    problems = []
    for col in IMAGE_COLUMNS:
        if col in features and not isinstance(features[col], datasets.Image):
            problems.append(
                f"column {col!r} must be datasets.Image(), got {features[col]!r}. "
                f"Fix: ds = ds.cast_column({col!r}, datasets.Image())."
            )
    for col in ("image_id", "width", "height", "seed"):
        if col in features and not _is_int(features[col]):
            problems.append(f"column {col!r} must be an integer Value (int64/int32), got {features[col]!r}.")
    for col in ("file_name", "prompt", "source"):
        if col in features and not _is_str(features[col]):
            problems.append(f"column {col!r} must be Value('string'), got {features[col]!r}.")
    return problems


def _segment_problems(seg: Any) -> list[str]:
    inner = getattr(seg, "feature", None)
    if isinstance(seg, Mapping):
        return [
            "column 'segments_info' is a dict of lists (datasets.Sequence({...}) semantics); it must be a list of "
            "records. Fix: declare it as datasets.List({...}) (see segcontract.contract_features)."
        ]
    if not isinstance(inner, Mapping):
        return [f"column 'segments_info' must be List({{...}}) of records, got {seg!r}."]
    problems = []
    absent = [k for k in SEGMENT_KEYS if k not in inner]
    if absent:
        problems.append(
            f"column 'segments_info' records lack field(s) {absent}; expected {list(SEGMENT_KEYS)}."
        )
    if "category_id" in inner and not isinstance(inner["category_id"], ClassLabel):
        problems.append(
            f"field 'segments_info.category_id' must be a ClassLabel (its names are the classes), got "
            f"{inner['category_id']!r}. Fix: cast with segcontract.contract_features(class_names)."
        )
    for key in ("id", "iscrowd", "area"):
        if key in inner and not _is_int(inner[key]):
            problems.append(f"field 'segments_info.{key}' must be an integer Value, got {inner[key]!r}.")
    return problems


def check_features(features: Features, *, name: str = "dataset") -> None:
    """Raise :class:`ContractError` listing every schema problem of ``features`` (with the fix)."""
    problems = []
    missing = [c for c in COLUMNS if c not in features]
    if missing:
        problems.append(
            f"missing column(s) {missing}. Fix: convert the data with seemadapt.data.from_masks / "
            "from_coco_panoptic or diffsynth.load_coco, or add them (prompt='' , seed=-1, source='real' for real "
            "data: ds.add_column('source', ['real'] * len(ds)))."
        )
    problems += _column_problems(features)
    if features.get("segments_info") is not None:
        problems += _segment_problems(features["segments_info"])
    gr = features.get("grounding")
    inner = getattr(gr, "feature", None)
    if gr is not None and (not isinstance(inner, Mapping) or any(k not in inner for k in GROUNDING_KEYS)):
        problems.append(
            f"column 'grounding' must be List({{'segment_id': int64, 'sentences': List(string)}}), got {gr!r}. "
            "Fix: declare it with datasets.List (not Sequence), as segcontract.contract_features does."
        )
    if problems:
        head = "Missing contract columns: " if missing else ""
        raise ContractError(f"{head}{name} breaks the dataset contract:\n- " + "\n- ".join(problems))
