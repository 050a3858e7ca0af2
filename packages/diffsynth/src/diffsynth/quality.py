"""Per-sample quality scores of attention-derived masks, and filtering a dataset by them.

Attention masks fail in recognisable ways: a prompted class gets no pixels (SD did not draw it, or its tokens got
no attention), most of the image is uncertain, the labelled pixels barely clear the threshold, or the self-attention
refinement spread the class far from where its cross-attention pointed. Each score below measures one of these, so a
weak sample can be dropped (:func:`filter`) or redrawn (``generate(min_quality=...)``) instead of teaching a model
wrong labels.

Scores (the ``quality`` column, :data:`diffsynth.schema.QUALITY_FIELDS`; ``None`` where they cannot be computed):

* ``ignore_fraction``: fraction of pixels that are uncertain (semantic 255, panoptic void).
* ``confidence``: mean of the best refined soft score over the pixels labelled with a class (background and
  uncertain pixels excluded). Labelled pixels score at least the mask threshold, so this lies in [threshold, 1];
  0 when no pixel got a class.
* ``class_coverage``: fraction of the prompted classes that got at least one pixel; ``missing_classes`` counts the
  ones that got none (``0`` means every prompted class is in the mask).
* ``agreement``: IoU between the raw cross-attention map, min-max normalised and thresholded at
  ``cross_threshold`` (0.5: half its peak), and the final mask of the class, averaged over the prompted classes.
  Low agreement means the refinement moved the mask away from what the class tokens attended to.
* ``clip_score``: cosine similarity of CLIP's image and prompt embeddings (only when a CLIP model is given).
* ``overall`` in [0, 1]::

      overall = class_coverage * mean(1 - ignore_fraction, confidence, agreement, clip_term)

  over the terms that are available, with ``clip_term = clip(2.5 * clip_score, 0, 1)`` (the CLIPScore rescaling
  of Hessel et al. 2021: ``w = 2.5``). Coverage multiplies because a prompted class with no pixels is a labelling
  error, not a weak label: its pixels are then marked background.

Datasets without a ``quality`` column (older files, other tools) are scored from what they store:
``ignore_fraction`` from ``segments_info`` areas, class presence from the prompt and ``segments_info``, and
``confidence`` from the ``attention`` column when there is one; ``overall`` then averages the available terms.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from datasets import Dataset
from PIL import Image as PILImage

from diffsynth.dataset import categories_of, settings_of
from diffsynth.health import prompted_classes
from diffsynth.schema import QUALITY_FIELDS, decode_attention

if TYPE_CHECKING:
    from diffsynth.categories import Category
    from diffsynth.masker import MaskResult

__all__ = [
    "CLIP_SCALE",
    "ClipScorer",
    "QualityScore",
    "filter",
    "filter_dataset",
    "overall_score",
    "quality_scores",
    "resolve_clip",
    "score_masks",
    "score_result",
]

IGNORE_INDEX = 255
#: CLIPScore's rescaling weight (Hessel et al. 2021): ``clip_term = clip(CLIP_SCALE * cosine, 0, 1)``.
CLIP_SCALE = 2.5
DEFAULT_CROSS_THRESHOLD = 0.5


def _clip_term(cosine: float) -> float:
    return float(min(1.0, max(0.0, CLIP_SCALE * cosine)))


def overall_score(
    ignore_fraction: float,
    class_coverage: float,
    confidence: float | None = None,
    agreement: float | None = None,
    clip_score: float | None = None,
) -> float:
    """``class_coverage * mean(1 - ignore_fraction, confidence, agreement, clip_term)`` over the available terms."""
    terms = [1.0 - float(ignore_fraction)]
    terms += [float(v) for v in (confidence, agreement) if v is not None and not math.isnan(v)]
    if clip_score is not None and not math.isnan(clip_score):
        terms.append(_clip_term(clip_score))
    return float(min(1.0, max(0.0, float(class_coverage) * sum(terms) / len(terms))))


@dataclass(frozen=True)
class QualityScore:
    """The scores of one sample (see the module docstring for what each means)."""

    ignore_fraction: float
    class_coverage: float
    missing_classes: int
    confidence: float | None = None
    agreement: float | None = None
    clip_score: float | None = None

    @property
    def all_classes(self) -> bool:
        """Every prompted class got pixels."""
        return self.missing_classes == 0

    @property
    def overall(self) -> float:
        return overall_score(
            self.ignore_fraction, self.class_coverage, self.confidence, self.agreement, self.clip_score
        )

    def with_clip(self, clip_score: float | None) -> QualityScore:
        return QualityScore(
            self.ignore_fraction,
            self.class_coverage,
            self.missing_classes,
            self.confidence,
            self.agreement,
            clip_score,
        )

    def to_dict(self) -> dict[str, float | None]:
        """The ``quality`` cell: every field of :data:`~diffsynth.schema.QUALITY_FIELDS` (None = not computed)."""
        values = {
            "overall": self.overall,
            "ignore_fraction": self.ignore_fraction,
            "confidence": self.confidence,
            "class_coverage": self.class_coverage,
            "missing_classes": float(self.missing_classes),
            "agreement": self.agreement,
            "clip_score": self.clip_score,
        }
        return {name: None if values[name] is None else float(values[name]) for name in QUALITY_FIELDS}


# ------------------------------------------------------------------------------------------------ mask scores
def _resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``shape`` (H, W) when the maps have another size."""
    if labels.shape == tuple(shape):
        return labels
    image = PILImage.fromarray(labels).resize((shape[1], shape[0]), PILImage.Resampling.NEAREST)
    return np.asarray(image)


def score_masks(
    semantic: np.ndarray,
    class_ids: Sequence[int],
    *,
    soft_maps: np.ndarray | None = None,
    cross_maps: np.ndarray | None = None,
    ignore_index: int = IGNORE_INDEX,
    cross_threshold: float = DEFAULT_CROSS_THRESHOLD,
) -> QualityScore:
    """Scores of one mask.

    Args:
        semantic: ``uint8 [H, W]`` final labels (class ids, background, ``ignore_index``).
        class_ids: the label value of each prompted class, in the order of ``soft_maps``/``cross_maps``.
        soft_maps: ``[K, h, w]`` refined scores in [0, 1] (for ``confidence``); None skips it.
        cross_maps: ``[K, h, w]`` raw cross-attention, normalised per class (for ``agreement``); None skips it.
    """
    semantic = np.asarray(semantic)
    if semantic.ndim != 2:
        raise ValueError(f"score_masks: semantic must be [H, W], got shape {semantic.shape}.")
    if not 0.0 < cross_threshold < 1.0:
        raise ValueError(f"score_masks: cross_threshold must be in (0, 1), got {cross_threshold}.")
    ids = [int(i) for i in class_ids]
    for name, maps in (("soft_maps", soft_maps), ("cross_maps", cross_maps)):
        if maps is not None and (np.ndim(maps) != 3 or len(maps) != len(ids)):
            raise ValueError(
                f"score_masks: {name} must be [K, h, w] with one map per class id ({len(ids)}), got shape "
                f"{np.shape(maps)}."
            )
    ignore_fraction = float(np.mean(semantic == ignore_index)) if semantic.size else 0.0
    present = [bool(np.any(semantic == i)) for i in ids]
    missing = present.count(False)
    coverage = (len(ids) - missing) / len(ids) if ids else 1.0

    confidence = None
    if soft_maps is not None and ids:
        soft = np.asarray(soft_maps, dtype=np.float32)
        labels = _resize_labels(semantic, soft.shape[1:])
        labelled = np.isin(labels, ids)
        confidence = float(soft.max(axis=0)[labelled].mean()) if labelled.any() else 0.0

    agreement = None
    if cross_maps is not None and ids:
        cross = np.asarray(cross_maps, dtype=np.float32)
        labels = _resize_labels(semantic, cross.shape[1:])
        ious = []
        for k, class_id in enumerate(ids):
            attended = cross[k] >= cross_threshold
            final = labels == class_id
            union = np.count_nonzero(attended | final)
            if union:
                ious.append(np.count_nonzero(attended & final) / union)
        agreement = float(np.mean(ious)) if ious else None
    return QualityScore(ignore_fraction, float(coverage), int(missing), confidence, agreement)


def score_result(
    result: MaskResult,
    semantic: np.ndarray | None = None,
    *,
    cross_threshold: float = DEFAULT_CROSS_THRESHOLD,
) -> QualityScore:
    """Scores of an :class:`~diffsynth.masker.MaskResult`; ``semantic`` overrides its label map (e.g. the
    annotation's, where specks below ``min_area`` became uncertain)."""
    labels = result.label_map if semantic is None else semantic
    return score_masks(
        labels,
        result.class_ids,
        soft_maps=result.soft_maps,
        cross_maps=result.cross_maps,
        ignore_index=result.ignore_index,
        cross_threshold=cross_threshold,
    )


# ---------------------------------------------------------------------------------------------------- CLIP
class ClipScorer:
    """Image-text cosine similarity with a transformers ``CLIPModel`` and its processor.

    The model runs where its parameters are (the caller places it); images and prompts go in batches.
    """

    def __init__(self, model: Any, processor: Any, *, batch_size: int = 16) -> None:
        if not callable(getattr(model, "get_image_features", None)) or not callable(
            getattr(model, "get_text_features", None)
        ):
            raise TypeError(
                f"ClipScorer needs a transformers CLIPModel (get_image_features/get_text_features), got "
                f"{type(model).__name__}."
            )
        if not callable(processor):
            raise TypeError(
                f"ClipScorer needs the model's CLIPProcessor (callable), got {type(processor).__name__}."
            )
        if batch_size < 1:
            raise ValueError(f"ClipScorer batch_size must be >= 1, got {batch_size}.")
        self.model = model.eval()
        self.processor = processor
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, name_or_path: str, **kwargs: Any) -> ClipScorer:
        """Load ``CLIPModel`` and ``CLIPProcessor`` from a Hub id or local folder (``kwargs`` go to both)."""
        # Lazy: CLIP scoring is optional (clip_model=), and importing its modeling code costs seconds.
        from transformers import CLIPModel, CLIPProcessor

        return cls(
            CLIPModel.from_pretrained(name_or_path, **kwargs),
            CLIPProcessor.from_pretrained(name_or_path, **kwargs),
        )

    @staticmethod
    def _embedding(output: Any) -> Any:
        # transformers >= 5 returns a model output whose pooler_output is the projected embedding.
        return getattr(output, "pooler_output", output)

    def __call__(self, images: Sequence[PILImage.Image], texts: Sequence[str]) -> list[float]:
        if len(images) != len(texts):
            raise ValueError(
                f"ClipScorer: {len(images)} images for {len(texts)} texts; give one text per image."
            )
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for start in range(0, len(images), self.batch_size):
            batch_images = [im.convert("RGB") for im in images[start : start + self.batch_size]]
            batch_texts = list(texts[start : start + self.batch_size])
            inputs = self.processor(
                text=batch_texts, images=batch_images, return_tensors="pt", padding=True, truncation=True
            )
            inputs = {k: v.to(device) for k, v in inputs.items()}
            with torch.no_grad():
                image = self._embedding(self.model.get_image_features(pixel_values=inputs["pixel_values"]))
                text = self._embedding(
                    self.model.get_text_features(
                        input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask")
                    )
                )
                image = torch.nn.functional.normalize(image.float(), dim=-1)
                text = torch.nn.functional.normalize(text.float(), dim=-1)
                scores.extend((image * text).sum(dim=-1).clamp(-1.0, 1.0).cpu().tolist())
        return scores


def resolve_clip(clip: Any) -> ClipScorer | None:
    """A :class:`ClipScorer` from ``None``, a scorer, a ``(CLIPModel, processor)`` pair, or a Hub id / folder."""
    if clip is None or isinstance(clip, ClipScorer):
        return clip
    if isinstance(clip, str):
        return ClipScorer.from_pretrained(clip)
    if isinstance(clip, tuple | list) and len(clip) == 2:
        return ClipScorer(*clip)
    raise TypeError(
        "clip must be a (CLIPModel, CLIPProcessor) pair, a ClipScorer, or a Hub id / folder of a CLIP model; got "
        f"{type(clip).__name__}."
    )


# -------------------------------------------------------------------------------------------- stored datasets
def _score_stored_row(
    row: Mapping[str, Any], categories: Sequence[Category], num_targets: int
) -> QualityScore:
    total = int(row["width"]) * int(row["height"])
    labelled = sum(int(s["area"]) for s in row["segments_info"])
    ignore_fraction = max(0.0, 1.0 - labelled / total) if total else 0.0
    prompted = set(prompted_classes(row.get("prompt") or "", categories))
    present = {int(s["category_id"]) for s in row["segments_info"]}
    missing = len(prompted - present)
    coverage = (len(prompted) - missing) / len(prompted) if prompted else 1.0
    confidence = None
    if row.get("attention"):
        soft = decode_attention(row["attention"])
        semantic = row["semantic"]
        if isinstance(semantic, Mapping):
            semantic = PILImage.open(io.BytesIO(semantic["bytes"]))
        labels = _resize_labels(np.asarray(semantic), soft.shape[1:])
        mask = labels < min(num_targets, len(soft))
        confidence = float(soft.max(axis=0)[mask].mean()) if mask.any() else 0.0
    return QualityScore(ignore_fraction, float(coverage), int(missing), confidence)


def quality_scores(ds: Dataset, *, recompute: bool = False) -> list[dict[str, float | None]]:
    """One ``{field: value}`` per row: the stored ``quality`` column, or (without one, or with ``recompute``)
    scores computed from the stored columns (see the module docstring)."""
    if "quality" in ds.column_names and not recompute:
        column = ds.select_columns(["quality"]).with_format("arrow")["quality"].combine_chunks()
        fields = {name: column.field(name).to_pylist() for name in QUALITY_FIELDS}
        return [{name: fields[name][i] for name in QUALITY_FIELDS} for i in range(len(ds))]
    categories = categories_of(ds)
    background = settings_of(ds).get("background", "background")
    num_targets = len([c for c in categories if c.name != background])
    columns = ["width", "height", "segments_info", "prompt"]
    if "attention" in ds.column_names:
        columns += ["attention", "semantic"]
    view = ds.select_columns(columns)
    return [_score_stored_row(row, categories, num_targets).to_dict() for row in view]


def filter_dataset(
    ds: Dataset,
    min_quality: float | None = None,
    *,
    require_all_classes: bool = False,
    max_ignore: float | None = None,
    recompute: bool = False,
) -> Dataset:
    """The rows of ``ds`` that pass every given bar: ``overall >= min_quality``, no prompted class without pixels
    (``require_all_classes``), ``ignore_fraction <= max_ignore``. Scores come from :func:`quality_scores`."""
    if not isinstance(ds, Dataset):
        raise TypeError(f"filter() needs a datasets.Dataset, got {type(ds).__name__}.")
    for name, value in (("min_quality", min_quality), ("max_ignore", max_ignore)):
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"filter(): {name} must be a fraction in [0, 1], got {value}.")
    if min_quality is None and not require_all_classes and max_ignore is None:
        raise ValueError(
            "filter(): give at least one bar: min_quality=, require_all_classes=True or max_ignore=."
        )
    keep = []
    for index, score in enumerate(quality_scores(ds, recompute=recompute)):
        if min_quality is not None and (score["overall"] is None or score["overall"] < min_quality - 1e-6):
            continue
        if require_all_classes and (score["missing_classes"] or 0) > 0:
            continue
        if max_ignore is not None and (score["ignore_fraction"] or 0.0) > max_ignore + 1e-6:
            continue
        keep.append(index)
    if not keep:
        warnings.warn(
            f"filter(): no row of {len(ds)} passes the bars; the result is empty. Lower the bars.",
            stacklevel=2,
        )
    return ds.select(keep)


#: ``diffsynth.filter(ds, min_quality=..., require_all_classes=..., max_ignore=...)``.
filter = filter_dataset
