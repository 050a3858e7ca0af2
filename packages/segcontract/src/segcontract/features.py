"""The contract as ``datasets.Features``."""

from __future__ import annotations

from collections.abc import Sequence

import datasets
from datasets import ClassLabel, Features, List, Value

__all__ = ["contract_features", "segment_feature"]


def segment_feature(class_names: Sequence[str], label_id: str | None = None) -> List:
    """The ``segments_info`` feature; ``label_id`` is kept as the ClassLabel's ``id`` (it survives parquet and
    the Hub, so writers keep category metadata there)."""
    return List(
        {
            "id": Value("int64"),
            "category_id": ClassLabel(names=list(class_names), id=label_id),
            "iscrowd": Value("int8"),
            "bbox": List(Value("float32"), length=4),
            "area": Value("int64"),
            "isthing": Value("bool"),
        }
    )


def contract_features(class_names: Sequence[str], *, label_id: str | None = None) -> Features:
    """The contract's ``datasets.Features`` for a class list (index = contiguous id)."""
    names = [str(n) for n in class_names]
    if not names:
        raise ValueError("class_names is empty; a contract dataset needs at least one class.")
    if len({n.strip().lower() for n in names}) != len(names):
        raise ValueError(f"class_names {names} repeat a name; names must be unique (case-insensitive).")
    if len(names) > 255:
        raise ValueError(f"{len(names)} classes: at most 255 fit the uint8 semantic PNG (255 = ignore).")
    return Features(
        {
            "image": datasets.Image(),
            "image_id": Value("int64"),
            "file_name": Value("string"),
            "width": Value("int32"),
            "height": Value("int32"),
            "panoptic": datasets.Image(),
            "segments_info": segment_feature(names, label_id),
            "semantic": datasets.Image(),
            "grounding": List({"segment_id": Value("int64"), "sentences": List(Value("string"))}),
            "prompt": Value("string"),
            "seed": Value("int64"),
            "source": Value("string"),
        }
    )
