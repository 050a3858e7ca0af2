"""diffsynth's Features: the contract's (:mod:`segcontract`) plus optional columns, and where its metadata lives.

Categories (thing/stuff, colours, synonyms) and generation settings must survive ``save_to_disk``/``load_from_disk``,
``to_parquet``/``from_parquet``, ``push_to_hub``/``load_dataset`` with nothing but the dataset. Measured on datasets 5.2:
``DatasetInfo.description`` survives only ``save_to_disk`` (parquet keeps only ``info.features`` in its schema
metadata), while the ``id`` attribute of a feature survives all three paths, including the ``dataset_info`` YAML of a
Hub README. So the ClassLabel of ``segments_info.category_id`` carries the names (as its ``names``) and a JSON blob
``{"diffsynth": {"format": 1, "categories": [...], "settings": {...}}}`` (as its ``id``).

Images are stored as encoded bytes chosen here, never left to ``datasets``' defaults: masks are PNG (a palette image
built in memory would be stored as TIFF), the RGB image in the format its ``file_name`` extension names.

The optional ``attention`` column is ``List(Image())``: one 8-bit greyscale PNG per target class, value
``round(255 * p)`` of the soft map ``p`` in [0, 1], at the resolution the engine produced. A list of PNG images round
trips through Arrow, parquet and the Hub (embedded bytes) and shows in the dataset viewer;
:func:`decode_attention` turns it back into ``float32 [K, h, w]``.

The optional ``quality`` column is a struct of float32 scores per sample (:data:`QUALITY_FIELDS`, null where a score
could not be computed); :mod:`diffsynth.quality` defines them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from datasets import ClassLabel, Features, Image, List, Value
from PIL import Image as PILImage

from diffsynth.categories import Category
from segcontract import COLUMNS, contract_features, segment_feature

__all__ = [
    "COLUMNS",
    "IMAGE_FORMATS",
    "METADATA_KEY",
    "QUALITY_FIELDS",
    "decode_attention",
    "encode_attention",
    "encode_image",
    "encode_png",
    "features",
    "metadata_blob",
    "read_metadata",
    "scrub_settings",
    "segment_features",
]

METADATA_KEY = "diffsynth"
METADATA_FORMAT = 1
#: Fields of the optional ``quality`` struct column (see :mod:`diffsynth.quality`).
QUALITY_FIELDS = (
    "overall",
    "ignore_fraction",
    "confidence",
    "class_coverage",
    "missing_classes",
    "agreement",
    "clip_score",
)
#: File extension -> PIL format used for the ``image`` column.
IMAGE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
JPEG_QUALITY = 95


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


_SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey", "credential")


def scrub_settings(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """``settings`` without keys that look like secrets (tokens never get into datasets, cards or files)."""

    def clean(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {
                str(k): clean(v)
                for k, v in value.items()
                if not any(w in str(k).lower() for w in _SECRET_WORDS)
            }
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    return clean(dict(settings or {}))


def metadata_blob(categories: Sequence[Category], settings: Mapping[str, Any] | None = None) -> str:
    """The JSON stored in the ClassLabel ``id``: categories and (scrubbed) settings."""
    payload = {
        METADATA_KEY: {
            "format": METADATA_FORMAT,
            "categories": [c.to_dict() for c in categories],
            "settings": scrub_settings(settings),
        }
    }
    return json.dumps(payload, default=_json_default, sort_keys=False)


def segment_features(categories: Sequence[Category], settings: Mapping[str, Any] | None = None) -> List:
    """The ``segments_info`` feature; its ClassLabel carries the metadata blob."""
    return segment_feature([c.name for c in categories], metadata_blob(categories, settings))


def features(
    categories: Sequence[Category],
    with_attention: bool = False,
    *,
    settings: Mapping[str, Any] | None = None,
    with_quality: bool = False,
) -> Features:
    """The contract Features for ``categories`` (resolved, background included), optionally with ``attention``
    and ``quality``."""
    if not categories:
        raise ValueError("`categories` is empty; resolve them with diffsynth.categories.resolve_categories.")
    names = [c.name for c in categories]
    columns: dict[str, Any] = dict(contract_features(names, label_id=metadata_blob(categories, settings)))
    if with_attention:
        columns["attention"] = List(Image())
    if with_quality:
        columns["quality"] = {name: Value("float32") for name in QUALITY_FIELDS}
    return Features(columns)


def read_metadata(feats: Features) -> dict[str, Any] | None:
    """The ``{"format", "categories", "settings"}`` blob from Features, or None when they carry none."""
    try:
        label = feats["segments_info"].feature["category_id"]
    except (KeyError, AttributeError, TypeError):
        return None
    if not isinstance(label, ClassLabel) or not label.id:
        return None
    try:
        blob = json.loads(label.id)
    except json.JSONDecodeError:
        return None
    meta = blob.get(METADATA_KEY) if isinstance(blob, dict) else None
    return meta if isinstance(meta, dict) else None


# ------------------------------------------------------------------------------------------------------ encoding
def encode_png(array: np.ndarray) -> dict[str, Any]:
    """``{"bytes", "path"}`` for an ``Image()`` column: uint8 [H, W] -> L PNG, uint8 [H, W, 3] -> RGB PNG."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"PNG masks must be uint8 [H, W] or [H, W, 3], got {array.dtype} {array.shape}.")
    buffer = io.BytesIO()
    # uint8 [H, W] -> mode L, uint8 [H, W, 3] -> mode RGB; zlib level 6 (PIL's default): masks shrink ~2.5x
    # against level 1 for ~1 ms more per 512x512 mask.
    PILImage.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def image_format(file_name: str) -> str:
    """PIL format for a file name's extension (``.jpg``/``.jpeg``/``.png``/``.webp``)."""
    suffix = "." + file_name.rsplit(".", 1)[-1].lower() if "." in file_name else ""
    if suffix not in IMAGE_FORMATS:
        raise ValueError(
            f"`file_name` {file_name!r} must end in one of {sorted(IMAGE_FORMATS)} (it picks the stored image format)."
        )
    return IMAGE_FORMATS[suffix]


def encode_image(image: PILImage.Image, file_name: str) -> dict[str, Any]:
    """RGB image bytes in the format ``file_name`` names (JPEG quality 95, lossless PNG/WebP)."""
    fmt = image_format(file_name)
    if image.mode != "RGB":
        image = image.convert("RGB")
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format=fmt, quality=JPEG_QUALITY)
    elif fmt == "WEBP":
        image.save(buffer, format=fmt, lossless=True)
    else:
        image.save(buffer, format=fmt)
    return {"bytes": buffer.getvalue(), "path": None}


def encode_attention(soft_maps: np.ndarray) -> list[dict[str, Any]]:
    """float [K, h, w] in [0, 1] -> K greyscale PNGs (uint8 = round(255 p))."""
    soft_maps = np.asarray(soft_maps, dtype=np.float32)
    if soft_maps.ndim != 3:
        raise ValueError(f"`soft_maps` must be [K, h, w], got shape {soft_maps.shape}.")
    if not np.isfinite(soft_maps).all():
        raise ValueError("`soft_maps` holds NaN or inf; clamp the engine's maps to [0, 1].")
    quantised = np.rint(np.clip(soft_maps, 0.0, 1.0) * 255.0).astype(np.uint8)
    return [encode_png(m) for m in quantised]


def decode_attention(value: Sequence[Any]) -> np.ndarray:
    """The ``attention`` cell of a row (PIL images or ``{"bytes"}`` dicts) -> float32 [K, h, w] in [0, 1]."""
    maps = []
    for item in value:
        if isinstance(item, Mapping):
            item = PILImage.open(io.BytesIO(item["bytes"]))
        maps.append(np.asarray(item.convert("L"), dtype=np.float32) / 255.0)
    if not maps:
        return np.zeros((0, 0, 0), dtype=np.float32)
    return np.stack(maps)
