"""Samples -> contract ``datasets.Dataset``; categories and settings read back from the dataset alone; validation.

``generate()`` (or a shard writer) builds one :class:`Sample` per image with :meth:`Sample.from_label_map`, then
either calls :func:`to_dataset` on the list or, to stream rows into an Arrow writer, :func:`sample_to_row` with the
Features of :func:`diffsynth.schema.features`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, Features, IterableDataset
from PIL import Image as PILImage

from diffsynth.annotate import DEFAULT_MIN_AREA, Annotation, annotate
from diffsynth.categories import Category, resolve_categories
from diffsynth.schema import (
    QUALITY_FIELDS,
    encode_attention,
    encode_image,
    encode_png,
    features,
    image_format,
    read_metadata,
    segment_features,
)
from segcontract import SOURCES, ContractError, check_features, write_category_files
from segcontract import validate as validate_contract

__all__ = [
    "ContractError",
    "Sample",
    "categories_of",
    "sample_to_row",
    "save_to_disk",
    "settings_of",
    "to_dataset",
    "validate",
    "with_metadata",
]


@dataclass
class Sample:
    """One generated (or converted) image with its label map and annotation.

    ``soft_maps``: optional float32 [K, h, w] in [0, 1], one map per target class in category order.
    ``quality``: optional scores ``{field: float or None}`` (:data:`diffsynth.schema.QUALITY_FIELDS`).
    """

    image: PILImage.Image
    label_map: np.ndarray
    annotation: Annotation
    image_id: int
    file_name: str
    prompt: str = ""
    seed: int = -1
    source: str = "synthetic"
    soft_maps: np.ndarray | None = None
    quality: dict[str, float | None] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.image, PILImage.Image):
            raise TypeError(f"Sample `image` must be a PIL image, got {type(self.image).__name__}.")
        label_map = np.asarray(self.label_map)
        expected = (self.image.height, self.image.width)
        if label_map.shape != expected:
            raise ValueError(
                f"Sample {self.image_id}: `label_map` shape {label_map.shape} != image size (H, W) {expected}; "
                "upsample the masks to the image resolution."
            )
        if self.annotation.semantic.shape != expected or self.annotation.panoptic.shape[:2] != expected:
            raise ValueError(f"Sample {self.image_id}: `annotation` was made for another image size.")
        if not isinstance(self.file_name, str) or not self.file_name or "/" in self.file_name:
            raise ValueError(
                f"Sample {self.image_id}: `file_name` must be a bare file name like '000001.jpg'."
            )
        image_format(self.file_name)
        if self.source not in SOURCES:
            raise ValueError(
                f"Sample {self.image_id}: `source` must be one of {SOURCES}, got {self.source!r}."
            )
        if self.soft_maps is not None:
            soft = np.asarray(self.soft_maps)
            if soft.ndim != 3:
                raise ValueError(f"Sample {self.image_id}: `soft_maps` must be [K, h, w], got {soft.shape}.")
        if self.quality is not None:
            unknown = sorted(set(self.quality) - set(QUALITY_FIELDS))
            if unknown:
                raise ValueError(
                    f"Sample {self.image_id}: `quality` has unknown fields {unknown}; use {list(QUALITY_FIELDS)}."
                )

    @classmethod
    def from_label_map(
        cls,
        image: PILImage.Image,
        label_map: np.ndarray,
        categories: Sequence[Category],
        *,
        image_id: int,
        file_name: str | None = None,
        prompt: str = "",
        seed: int = -1,
        source: str = "synthetic",
        soft_maps: np.ndarray | None = None,
        min_area: int | float = DEFAULT_MIN_AREA,
        rng_seed: int | None = None,
    ) -> Sample:
        """Annotate ``label_map`` and wrap everything; ``file_name`` defaults to ``{image_id:06d}.jpg``."""
        annotation = annotate(label_map, categories, image_id=image_id, min_area=min_area, rng_seed=rng_seed)
        return cls(
            image=image,
            label_map=np.asarray(label_map),
            annotation=annotation,
            image_id=int(image_id),
            file_name=file_name or f"{int(image_id):06d}.jpg",
            prompt=prompt,
            seed=int(seed),
            source=source,
            soft_maps=soft_maps,
        )


def sample_to_row(
    sample: Sample, *, with_attention: bool = False, with_quality: bool = False
) -> dict[str, Any]:
    """A row dict ready for ``Features.encode_example`` (images as encoded bytes)."""
    ann = sample.annotation
    row: dict[str, Any] = {
        "image": encode_image(sample.image, sample.file_name),
        "image_id": int(sample.image_id),
        "file_name": sample.file_name,
        "width": int(sample.image.width),
        "height": int(sample.image.height),
        "panoptic": encode_png(ann.panoptic),
        "segments_info": [
            {
                "id": int(s["id"]),
                "category_id": int(s["category_id"]),
                "iscrowd": int(s.get("iscrowd", 0)),
                "bbox": [float(v) for v in s["bbox"]],
                "area": int(s["area"]),
                "isthing": bool(s["isthing"]),
            }
            for s in ann.segments_info
        ],
        "semantic": encode_png(ann.semantic),
        "grounding": [
            {"segment_id": int(g["segment_id"]), "sentences": list(g["sentences"])} for g in ann.grounding
        ],
        "prompt": sample.prompt,
        "seed": int(sample.seed),
        "source": sample.source,
    }
    if with_attention:
        if sample.soft_maps is None:
            raise ValueError(
                f"Sample {sample.image_id} has no `soft_maps` but the dataset stores attention; "
                "give every sample soft maps or none."
            )
        row["attention"] = encode_attention(sample.soft_maps)
    if with_quality:
        quality = sample.quality or {}
        row["quality"] = {
            name: None if quality.get(name) is None else float(quality[name])  # type: ignore[arg-type]
            for name in QUALITY_FIELDS
        }
    return row


def to_dataset(
    samples: Sequence[Sample],
    categories: Sequence[Category],
    settings: Mapping[str, Any] | None = None,
    *,
    with_attention: bool | None = None,
    with_quality: bool | None = None,
) -> Dataset:
    """The contract Dataset of ``samples``; ``categories`` and ``settings`` ride in its Features.

    ``with_attention=None`` stores the ``attention`` column when every sample has soft maps;
    ``with_quality=None`` stores the ``quality`` column when every sample has scores.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("`samples` is empty; nothing to put in a dataset.")
    has_soft = [s.soft_maps is not None for s in samples]
    if with_attention is None:
        if any(has_soft) and not all(has_soft):
            raise ValueError(
                "Some samples have `soft_maps` and some do not; give all or none (or with_attention=)."
            )
        with_attention = all(has_soft)
    if with_quality is None:
        with_quality = all(s.quality is not None for s in samples)
    for field in ("image_id", "file_name"):
        values = [getattr(s, field) for s in samples]
        if len(set(values)) != len(values):
            dup = next(v for v in values if values.count(v) > 1)
            raise ValueError(f"Two samples share `{field}` {dup!r}; it must be unique within a dataset.")
    for sample in samples:
        if (
            with_attention
            and sample.soft_maps is not None
            and not 1 <= len(sample.soft_maps) <= len(categories)
        ):
            raise ValueError(
                f"Sample {sample.image_id}: `soft_maps` has {len(sample.soft_maps)} maps for {len(categories)} "
                "categories; give one map per target class, in category order."
            )
        for info in sample.annotation.segments_info:
            if not 0 <= info["category_id"] < len(categories):
                raise ValueError(
                    f"Sample {sample.image_id}: category_id {info['category_id']} is out of range for "
                    f"{len(categories)} categories; annotate with the same category list."
                )
    feats = features(categories, with_attention, settings=settings, with_quality=with_quality)
    rows = [sample_to_row(s, with_attention=with_attention, with_quality=with_quality) for s in samples]
    return Dataset.from_list(rows, features=feats)


# ---------------------------------------------------------------------------------------------------- metadata
def _features_of(ds: Dataset | IterableDataset | Features) -> Features:
    feats = ds if isinstance(ds, Features) else ds.features
    if feats is None:
        raise ContractError(
            "The dataset has no Features (an IterableDataset without them); cast it to the contract."
        )
    return feats


def categories_of(ds: Dataset | IterableDataset | Features) -> list[Category]:
    """The category list stored in the dataset (thing/stuff, colours, synonyms).

    Datasets that follow the contract but were written by other tools carry only the ClassLabel names: thing/stuff
    is then read from the first segment of each class (``segments_info.isthing``) and colours are assigned.
    """
    feats = _features_of(ds)
    meta = read_metadata(feats)
    if meta is not None:
        return [Category.from_dict(c) for c in meta["categories"]]
    try:
        label = feats["segments_info"].feature["category_id"]
    except (KeyError, AttributeError, TypeError):
        raise ContractError(
            "The dataset has no `segments_info.category_id` ClassLabel; it does not follow the contract."
        ) from None
    if not isinstance(label, ClassLabel):
        raise ContractError("`segments_info.category_id` must be a ClassLabel holding the category names.")
    isthing: dict[int, bool] = {}
    if isinstance(ds, Dataset):
        for segments in ds.select_columns(["segments_info"])["segments_info"]:
            for seg in segments:
                isthing.setdefault(seg["category_id"], bool(seg["isthing"]))
            if len(isthing) == label.num_classes:
                break
    return resolve_categories(
        [Category(name, isthing=isthing.get(i, True)) for i, name in enumerate(label.names)], background=None
    )


def settings_of(ds: Dataset | IterableDataset | Features) -> dict[str, Any]:
    """The generation settings stored with the dataset (empty when none were stored)."""
    meta = read_metadata(_features_of(ds))
    return dict(meta.get("settings", {})) if meta else {}


def with_metadata(
    ds: Dataset,
    *,
    categories: Sequence[Category] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Dataset:
    """A copy of ``ds`` whose Features carry new categories (same names and order) and/or settings."""
    current = categories_of(ds)
    categories = list(categories) if categories is not None else current
    if [c.name for c in categories] != [c.name for c in current]:
        raise ValueError(
            "`categories` must keep the dataset's names and order "
            f"({[c.name for c in current]}); relabelling rows is not supported here."
        )
    settings = settings_of(ds) if settings is None else settings
    feats = ds.features.copy()
    feats["segments_info"] = segment_features(categories, settings)
    return ds.cast(feats)


# ---------------------------------------------------------------------------------------------------- validate
def _check_metadata(ds: Dataset) -> list[Category]:
    """The stored categories agree with the ClassLabel names, and the optional columns have diffsynth's types."""
    categories = categories_of(ds)
    label = ds.features["segments_info"].feature["category_id"]
    if list(label.names) != [c.name for c in categories]:
        raise ContractError(
            "The stored category list does not match the ClassLabel names; rebuild the Features."
        )
    expected = features(
        categories, with_attention="attention" in ds.column_names, with_quality="quality" in ds.column_names
    )
    for name in ("attention", "quality"):
        if name in ds.column_names and ds.features[name] != expected[name]:
            raise ContractError(
                f"Column `{name}` has feature {ds.features[name]!r}; diffsynth stores it as {expected[name]!r}."
            )
    return categories


def validate(ds: Dataset, *, max_rows: int | None = None) -> None:
    """Check ``ds`` against the contract; raise :class:`ContractError` naming row, column and fix.

    The contract itself is checked by :func:`segcontract.validate` (columns and feature types, then per row: sizes,
    PNG modes, every ``segments_info`` id in the panoptic PNG and back with matching areas and boxes, category ids
    and semantic values in range, grounding segment ids, unique image ids); on top, diffsynth's metadata and its
    optional ``attention``/``quality`` columns. ``max_rows`` limits the per-row checks to the first rows.
    """
    if not isinstance(ds, Dataset):
        raise ContractError(f"validate() needs a datasets.Dataset, got {type(ds).__name__}.")
    check_features(ds.features)
    _check_metadata(ds)
    if "quality" in ds.column_names:
        _check_quality(ds)
    validate_contract(ds, max_rows=max_rows)


def _check_quality(ds: Dataset) -> None:
    """Scores that are fractions must lie in [0, 1]; counts must be >= 0 (null = not computed)."""
    column = ds.select_columns(["quality"]).with_format("arrow")["quality"].combine_chunks()
    for name in QUALITY_FIELDS:
        values = np.asarray(column.field(name).to_numpy(zero_copy_only=False), dtype=np.float64)
        if name == "clip_score":  # a cosine similarity
            low, high = -1.0, 1.0
        elif name == "missing_classes":
            low, high = 0.0, np.inf
        else:
            low, high = 0.0, 1.0
        bad = np.flatnonzero(~np.isnan(values) & ((values < low - 1e-6) | (values > high + 1e-6)))
        if bad.size:
            i = int(bad[0])
            raise ContractError(
                f"row {i}: `quality.{name}` is {values[i]}, outside [{low}, {high}]; recompute it with "
                "diffsynth.quality."
            )


# ------------------------------------------------------------------------------------------------ side files
def save_to_disk(ds: Dataset, folder: str | os.PathLike, **kwargs: Any) -> None:
    """``ds.save_to_disk(folder)`` plus ``categories.json``/``id2label.json`` beside the Arrow files."""
    categories = categories_of(ds)
    ds.save_to_disk(os.fspath(folder), **kwargs)
    write_category_files(categories, folder)
