"""The dataset contract (design.md section 4) as seemadapt reads it: features, categories, rows, validation.

seemadapt never imports diffsynth; this module is its own statement of the contract. One row per image:

``image`` (Image), ``image_id`` (int64), ``file_name`` (string), ``width``/``height`` (int32), ``panoptic`` (Image,
RGB PNG, ``id = R + 256 G + 256^2 B``, 0 = void), ``segments_info`` (List of ``{id, category_id: ClassLabel, iscrowd,
bbox [x, y, w, h], area, isthing}``), ``semantic`` (Image, mode L, class index, 255 = ignore), ``grounding`` (List of
``{segment_id, sentences}``), ``prompt`` (string), ``seed`` (int64), ``source`` (``synthetic`` | ``real``).

Categories: the ``ClassLabel`` names of ``segments_info.category_id`` are the class list (index = contiguous id).
Thing/stuff flags and colours come, in this order, from an explicit list, a ``categories`` JSON in the dataset's
``info.description`` (what :func:`attach_categories` writes, and what a ``categories.json`` beside the data is turned
into by :func:`seemadapt.data.load_source`), a ``categories`` JSON blob in the ``id`` of the ``category_id``
ClassLabel (where diffsynth keeps it: it survives parquet and the Hub), and finally the ``isthing`` flags of
``segments_info`` itself, which always works.

Validation decodes every image (``deep=True``) so that corrupt bytes fail here, before any training step, with an
error that names the row, the column and the fix.
"""

from __future__ import annotations

import colorsys
import io
import json
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets import ClassLabel, Features, List, Value
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

__all__ = [
    "IGNORE_LABEL",
    "REQUIRED_COLUMNS",
    "SOURCES",
    "Category",
    "ContractError",
    "DecodedRow",
    "attach_categories",
    "class_names_of",
    "contract_features",
    "decode_row",
    "default_color",
    "id2rgb",
    "iter_raw_rows",
    "make_row",
    "parse_categories",
    "read_categories",
    "rgb2id",
    "validate",
]

#: Semantic value of ignored (uncertain / unlabelled) pixels.
IGNORE_LABEL = 255
#: Panoptic id of void pixels.
VOID = 0
#: Largest segment id an RGB PNG can hold.
MAX_SEGMENT_ID = 256**3 - 1
SOURCES = ("synthetic", "real")
REQUIRED_COLUMNS = (
    "image",
    "image_id",
    "file_name",
    "width",
    "height",
    "panoptic",
    "segments_info",
    "semantic",
    "grounding",
    "prompt",
    "seed",
    "source",
)
IMAGE_COLUMNS = ("image", "panoptic", "semantic")
_SEGMENT_KEYS = ("id", "category_id", "iscrowd", "bbox", "area", "isthing")
_GROUNDING_KEYS = ("segment_id", "sentences")


class ContractError(ValueError):
    """A dataset breaks the contract; the message names the column, the row and the fix."""


# --------------------------------------------------------------------------------------------- categories


def default_color(index: int) -> tuple[int, int, int]:
    """A deterministic, bright colour for category ``index`` (golden-ratio hues; never black)."""
    hue = (index * 0.618033988749895) % 1.0
    value = 0.95 if index % 2 == 0 else 0.75
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, value)
    return (round(r * 255), round(g * 255), round(b * 255))


@dataclass(frozen=True)
class Category:
    """One class of a contract dataset.

    Args:
        id: the contiguous index, i.e. the ``ClassLabel`` index, the semantic PNG value and the
            ``segments_info.category_id``.
        name: the class name (also the text SEEM is trained to ground).
        isthing: countable object (instances) vs. amorphous stuff (one segment per image).
        color: ``(r, g, b)`` for visualisation; ``None`` picks :func:`default_color`.
    """

    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int] | None = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.id, bool) or not isinstance(self.id, int | np.integer) or self.id < 0:
            raise ValueError(
                f"Category `id` must be an integer >= 0 (the ClassLabel index), got {self.id!r}."
            )
        object.__setattr__(self, "id", int(self.id))
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"Category {self.id}: `name` must be a non-empty string, got {self.name!r}.")
        if not isinstance(self.isthing, bool | np.bool_ | int) or self.isthing not in (0, 1):
            raise ValueError(f"Category {self.name!r}: `isthing` must be a bool, got {self.isthing!r}.")
        object.__setattr__(self, "isthing", bool(self.isthing))
        color = default_color(self.id) if self.color is None else self.color
        try:
            color = tuple(int(c) for c in color)
        except (TypeError, ValueError):
            raise ValueError(
                f"Category {self.name!r}: `color` must be (r, g, b) integers, got {color!r}."
            ) from None
        if len(color) != 3 or any(c < 0 or c > 255 for c in color):
            raise ValueError(
                f"Category {self.name!r}: `color` must be three integers in 0..255, got {color!r}."
            )
        object.__setattr__(self, "color", color)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "isthing": self.isthing, "color": list(self.color)}


def parse_categories(value: Any, *, what: str = "categories") -> list[dict[str, Any]]:
    """Normalise a categories description into a list of ``{name, isthing?, color?, id?}`` dicts.

    Accepts a list of dicts / :class:`Category`, a dict ``{"categories": [...]}``, an ``id2label`` mapping
    (``{"0": "polyp"}``), a JSON string, or a path to a JSON file.
    """
    if isinstance(value, str | Path) and not (
        isinstance(value, str) and value.lstrip().startswith(("[", "{"))
    ):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(
                f"{what}: {str(path)!r} is not a file; pass a categories.json path or a list."
            )
        value = json.loads(path.read_text())
    elif isinstance(value, str):
        value = json.loads(value)
    if isinstance(value, Mapping) and "categories" in value:
        value = value["categories"]
    if isinstance(value, Mapping):  # id2label
        try:
            items = sorted(((int(k), v) for k, v in value.items()), key=lambda kv: kv[0])
        except (TypeError, ValueError):
            raise ContractError(
                f"{what}: a mapping must be id2label ({{'0': 'name'}}) or hold a 'categories' list."
            ) from None
        return [{"id": k, "name": str(v)} for k, v in items]
    out = []
    for i, item in enumerate(value):
        if isinstance(item, Category):
            out.append(item.to_dict())
        elif isinstance(item, str):
            out.append({"name": item})
        elif isinstance(item, Mapping) and isinstance(item.get("name"), str):
            out.append(dict(item))
        else:
            raise ContractError(f"{what}[{i}] = {item!r}: each category needs at least a 'name' string.")
    return out


def _find_categories_in_json(obj: Any, depth: int = 0) -> list | None:
    if depth > 4:
        return None
    if isinstance(obj, Mapping):
        cats = obj.get("categories")
        if isinstance(cats, list) and cats and all(isinstance(c, Mapping) and "name" in c for c in cats):
            return cats
        for v in obj.values():
            found = _find_categories_in_json(v, depth + 1)
            if found is not None:
                return found
    elif isinstance(obj, list) and obj and all(isinstance(c, Mapping) and "name" in c for c in obj):
        return obj
    return None


def _description_categories(dataset: datasets.Dataset) -> list | None:
    text = (dataset.info.description or "").strip()
    if not text.startswith(("{", "[")):
        return None
    try:
        return _find_categories_in_json(json.loads(text))
    except json.JSONDecodeError:
        return None


def _classlabel_categories(dataset: datasets.Dataset) -> list | None:
    """Categories in a JSON blob on the ``category_id`` ClassLabel's ``id`` (diffsynth puts them there: unlike
    ``info.description``, a feature's ``id`` survives parquet and the Hub's ``dataset_info``)."""
    inner = getattr(dataset.features.get("segments_info"), "feature", None)
    label = inner.get("category_id") if isinstance(inner, Mapping) else None
    text = (getattr(label, "id", None) or "").strip()
    if not text.startswith(("{", "[")):
        return None
    try:
        return _find_categories_in_json(json.loads(text))
    except json.JSONDecodeError:
        return None


def class_names_of(features: Features | datasets.Dataset) -> list[str]:
    """The class list: the ``ClassLabel`` names of ``segments_info.category_id``."""
    if isinstance(features, datasets.Dataset):
        features = features.features
    seg = features.get("segments_info")
    inner = getattr(seg, "feature", None)
    if not isinstance(inner, Mapping) or not isinstance(inner.get("category_id"), ClassLabel):
        raise ContractError(
            "column 'segments_info': 'category_id' must be a datasets.ClassLabel whose names are the classes "
            f"(got {seg!r}). Fix: build the features with seemadapt.data.contract_features(class_names)."
        )
    return list(inner["category_id"].names)


def _isthing_from_rows(dataset: datasets.Dataset, num_classes: int) -> dict[int, bool]:
    """Per category, the ``isthing`` flag its segments carry; conflicting flags are a contract error."""
    import pyarrow.compute as pc

    table = dataset.select_columns(["segments_info"]).with_format("arrow")[:]
    flat = pc.list_flatten(table.column("segments_info"))
    if len(flat) == 0:
        return {}
    cats = np.asarray(pc.struct_field(flat, "category_id").to_numpy(zero_copy_only=False))
    things = np.asarray(pc.struct_field(flat, "isthing").to_numpy(zero_copy_only=False)).astype(bool)
    out: dict[int, bool] = {}
    for c in np.unique(cats):
        flags = things[cats == c]
        if flags.min() != flags.max():
            rows = np.asarray(
                pc.list_parent_indices(table.column("segments_info")).to_numpy(zero_copy_only=False)
            )
            first = rows[cats == c][flags != flags[0]][0]
            raise ContractError(
                f"column 'segments_info': category {int(c)} is marked isthing={bool(flags[0])} in some segments but "
                f"{not flags[0]} in others (first in row {int(first)}). Fix: give every segment of a category the same "
                "'isthing', or pass categories=[...] explicitly."
            )
        if 0 <= c < num_classes:
            out[int(c)] = bool(flags[0])
    return out


def read_categories(
    dataset: datasets.Dataset,
    categories: Any = None,
    *,
    background: str = "background",
) -> list[Category]:
    """The dataset's categories, indexed by contiguous id.

    Names always come from the ``ClassLabel``. ``isthing``/``color`` come from ``categories`` (a list, dicts, a
    ``categories.json`` path), else from a categories JSON in ``dataset.info.description`` (see
    :func:`attach_categories`), else from one in the ``category_id`` ClassLabel's ``id`` (diffsynth's place),
    else from the segments' own ``isthing`` flags. A category that no source describes is stuff if it is named ``background``, else stuff
    too unless a segment says otherwise (SEEM scores every class as stuff in semantic evaluation anyway).
    """
    names = class_names_of(dataset)
    if categories is not None:
        described = parse_categories(categories)
    else:
        described = _description_categories(dataset) or _classlabel_categories(dataset)
    by_name: dict[str, Mapping] = {}
    if described:
        by_name = {str(c["name"]).strip().lower(): c for c in parse_categories(described)}
        unknown = sorted(set(by_name) - {n.strip().lower() for n in names})
        if unknown and categories is not None:
            raise ContractError(
                f"categories name {unknown} but the dataset's ClassLabel names are {names}. Fix: pass categories "
                "whose names match segments_info.category_id's ClassLabel names."
            )
    missing_flag = [i for i, n in enumerate(names) if "isthing" not in by_name.get(n.strip().lower(), {})]
    from_rows = _isthing_from_rows(dataset, len(names)) if missing_flag else {}
    out = []
    for i, name in enumerate(names):
        info = by_name.get(name.strip().lower(), {})
        if "isthing" in info and info["isthing"] is not None:
            isthing = bool(info["isthing"])
        elif i in from_rows:
            isthing = from_rows[i]
        else:
            isthing = False
        if name.strip().lower() == background.lower() and isthing:
            warnings.warn(
                f"category {name!r} is marked as a thing; background is usually stuff.", stacklevel=2
            )
        color = info.get("color")
        out.append(Category(i, name, isthing, tuple(color) if color is not None else None))
    return out


def attach_categories(dataset: datasets.Dataset, categories: Sequence[Category]) -> datasets.Dataset:
    """A view of ``dataset`` whose ``info.description`` carries the categories as JSON.

    That is how thing/stuff flags and colours travel with a ``Dataset`` through seemadapt (and through
    ``save_to_disk`` / ``push_to_hub``). The data is shared, not copied; other JSON keys of the description are kept.
    """
    names = class_names_of(dataset)
    if [c.name for c in categories] != names:
        raise ContractError(
            f"categories {[c.name for c in categories]} do not match the ClassLabel names {names} (same order)."
        )
    view = dataset.select(range(len(dataset)))  # contiguous select: a zero-copy slice with its own info
    text = (dataset.info.description or "").strip()
    payload: dict[str, Any] = {}
    if text:
        try:
            loaded = json.loads(text)
            payload = loaded if isinstance(loaded, dict) else {"description": text}
        except json.JSONDecodeError:
            payload = {"description": text}
    payload["categories"] = [c.to_dict() for c in categories]
    view.info.description = json.dumps(payload)
    return view


# --------------------------------------------------------------------------------------------- features, rows


def contract_features(class_names: Sequence[str]) -> Features:
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
            "segments_info": List(
                {
                    "id": Value("int64"),
                    "category_id": ClassLabel(names=names),
                    "iscrowd": Value("int8"),
                    "bbox": List(Value("float32"), length=4),
                    "area": Value("int64"),
                    "isthing": Value("bool"),
                }
            ),
            "semantic": datasets.Image(),
            "grounding": List({"segment_id": Value("int64"), "sentences": List(Value("string"))}),
            "prompt": Value("string"),
            "seed": Value("int64"),
            "source": Value("string"),
        }
    )


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic decoding: int32 ids from an ``[H, W, 3]`` uint8 array."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"expected an [H, W, 3] RGB array, got shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """COCO panoptic encoding: ``[H, W, 3]`` uint8 from integer ids (0 = void)."""
    ids = np.asarray(ids, dtype=np.int64)
    out = np.empty((*ids.shape, 3), dtype=np.uint8)
    out[..., 0] = ids % 256
    out[..., 1] = (ids // 256) % 256
    out[..., 2] = (ids // 65536) % 256
    return out


def _png_bytes(array_or_image: np.ndarray | PILImage.Image, mode: str | None = None) -> bytes:
    img = array_or_image
    if isinstance(img, np.ndarray):
        img = PILImage.fromarray(img, mode=mode) if mode else PILImage.fromarray(img)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _segment_geometry(ids: np.ndarray, segment_ids: Sequence[int]) -> dict[int, tuple[list[float], int]]:
    """bbox ``[x, y, w, h]`` (pixel extents, w = x1 - x0 + 1 as panopticapi) and area per segment id."""
    out: dict[int, tuple[list[float], int]] = {}
    for sid in segment_ids:
        mask = ids == sid
        area = int(mask.sum())
        if area == 0:
            out[sid] = ([0.0, 0.0, 0.0, 0.0], 0)
            continue
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
        out[sid] = ([float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)], area)
    return out


def make_row(
    *,
    image: PILImage.Image | np.ndarray | bytes,
    panoptic_ids: np.ndarray,
    segments: Sequence[Mapping[str, Any]],
    image_id: int,
    file_name: str,
    grounding: Sequence[Mapping[str, Any]] = (),
    semantic: np.ndarray | None = None,
    prompt: str = "",
    seed: int = -1,
    source: str = "real",
) -> dict[str, Any]:
    """One contract row from arrays; ``bbox``/``area`` come from the id map, the semantic map too if not given.

    Args:
        image: a PIL image, an ``[H, W, 3]`` uint8 array (stored as PNG), or already-encoded bytes (kept as-is,
            e.g. the original JPEG of a real dataset).
        panoptic_ids: int ``[H, W]`` segment ids, 0 = void.
        segments: ``{id, category_id, isthing, iscrowd=0}`` per segment; every id must occur in ``panoptic_ids``.
        grounding: ``{segment_id, sentences}`` records.
        semantic: uint8 ``[H, W]`` class index / 255; by default painted from the segments (void -> 255).
    """
    ids = np.asarray(panoptic_ids)
    if ids.ndim != 2:
        raise ValueError(f"panoptic_ids must be [H, W], got shape {ids.shape}")
    if isinstance(image, bytes):
        with PILImage.open(io.BytesIO(image)) as probe:
            size = probe.size
        image_value = {"bytes": image, "path": None}
    else:
        pil = PILImage.fromarray(np.asarray(image)) if isinstance(image, np.ndarray) else image
        size = pil.size
        image_value = {"bytes": _png_bytes(pil), "path": None}
    if size != (ids.shape[1], ids.shape[0]):
        raise ValueError(f"image size {size} (w, h) != panoptic_ids shape {ids.shape[::-1]} (w, h)")
    seg_ids = [int(s["id"]) for s in segments]
    geometry = _segment_geometry(ids, seg_ids)
    records = []
    for s in segments:
        bbox, area = geometry[int(s["id"])]
        if area == 0:
            raise ValueError(f"segment id {s['id']} does not occur in panoptic_ids; drop it from segments.")
        records.append(
            {
                "id": int(s["id"]),
                "category_id": int(s["category_id"]),
                "iscrowd": int(s.get("iscrowd", 0)),
                "bbox": bbox,
                "area": area,
                "isthing": bool(s["isthing"]),
            }
        )
    if semantic is None:
        semantic = np.full(ids.shape, IGNORE_LABEL, dtype=np.uint8)
        for s in records:
            semantic[ids == s["id"]] = s["category_id"]
    return {
        "image": image_value,
        "image_id": int(image_id),
        "file_name": str(file_name),
        "width": int(size[0]),
        "height": int(size[1]),
        "panoptic": {"bytes": _png_bytes(id2rgb(ids)), "path": None},
        "segments_info": records,
        "semantic": {"bytes": _png_bytes(np.asarray(semantic, dtype=np.uint8), mode="L"), "path": None},
        "grounding": [
            {"segment_id": int(g["segment_id"]), "sentences": [str(t) for t in g.get("sentences", [])]}
            for g in grounding
        ],
        "prompt": str(prompt),
        "seed": int(seed),
        "source": str(source),
    }


def iter_raw_rows(
    dataset: datasets.Dataset, columns: Sequence[str] | None = None, batch_size: int = 32
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, row)`` with images left encoded (``{"bytes", "path"}``) and ClassLabels as ints."""
    ds = dataset.select_columns(list(columns)) if columns is not None else dataset
    ds = ds.with_format("arrow")
    for start in range(0, len(ds), batch_size):
        for offset, row in enumerate(ds[start : start + batch_size].to_pylist()):
            yield start + offset, row


# --------------------------------------------------------------------------------------------- validation


def _where(name: str, index: int, row: Mapping[str, Any]) -> str:
    extra = []
    if "image_id" in row:
        extra.append(f"image_id={row['image_id']}")
    if row.get("file_name"):
        extra.append(f"file_name={row['file_name']!r}")
    return f"{name} row {index}" + (f" ({', '.join(extra)})" if extra else "")


def _is_int(feature: Any) -> bool:
    return isinstance(feature, Value) and feature.dtype.startswith(("int", "uint"))


def _is_str(feature: Any) -> bool:
    return isinstance(feature, Value) and feature.dtype in ("string", "large_string")


def check_features(features: Features, *, name: str = "dataset") -> None:
    """Schema checks: every column present with the right kind of feature; raises :class:`ContractError`."""
    problems = []
    missing = [c for c in REQUIRED_COLUMNS if c not in features]
    if missing:
        problems.append(
            f"missing column(s) {missing}. Fix: convert the data with seemadapt.data.from_masks / from_coco_panoptic, "
            "or add them (prompt='' , seed=-1, source='real' for real data: ds.add_column('source', ['real'] * len(ds)))."
        )
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
    seg = features.get("segments_info")
    if seg is not None:
        inner = getattr(seg, "feature", None)
        if isinstance(seg, Mapping):
            problems.append(
                "column 'segments_info' is a dict of lists (datasets.Sequence({...}) semantics); it must be a list of "
                "records. Fix: declare it as datasets.List({...}) (see seemadapt.data.contract_features)."
            )
        elif not isinstance(inner, Mapping):
            problems.append(f"column 'segments_info' must be List({{...}}) of records, got {seg!r}.")
        else:
            absent = [k for k in _SEGMENT_KEYS if k not in inner]
            if absent:
                problems.append(
                    f"column 'segments_info' records lack field(s) {absent}; expected {list(_SEGMENT_KEYS)}."
                )
            if "category_id" in inner and not isinstance(inner["category_id"], ClassLabel):
                problems.append(
                    f"field 'segments_info.category_id' must be a ClassLabel (its names are the classes), got "
                    f"{inner['category_id']!r}. Fix: cast with seemadapt.data.contract_features(class_names)."
                )
            for key in ("id", "iscrowd", "area"):
                if key in inner and not _is_int(inner[key]):
                    problems.append(
                        f"field 'segments_info.{key}' must be an integer Value, got {inner[key]!r}."
                    )
    gr = features.get("grounding")
    if gr is not None:
        inner = getattr(gr, "feature", None)
        if not isinstance(inner, Mapping) or any(k not in inner for k in _GROUNDING_KEYS):
            problems.append(
                f"column 'grounding' must be List({{'segment_id': int64, 'sentences': List(string)}}), got {gr!r}. "
                "Fix: declare it with datasets.List (not Sequence), as seemadapt.data.contract_features does."
            )
    if problems:
        raise ContractError(f"{name} breaks the dataset contract:\n- " + "\n- ".join(problems))


@dataclass
class DecodedRow:
    """A row with its images decoded and checked (what registration writes out)."""

    index: int
    row: dict[str, Any]
    image: PILImage.Image
    image_bytes: bytes
    image_format: str | None
    image_reencode: bool
    panoptic_ids: np.ndarray
    semantic: np.ndarray


def _bytes_of(value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        data = value.get("bytes")
        if data:
            return bytes(data)
        path = value.get("path")
        if path and Path(path).is_file():
            return Path(path).read_bytes()
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return None


def _decode(value: Any, col: str, where: str) -> tuple[PILImage.Image, bytes]:
    data = _bytes_of(value)
    if not data:
        raise ContractError(
            f"{where}: column {col!r} is empty (no bytes and no readable path). Fix: drop the row "
            "(ds.filter) or re-attach the file."
        )
    try:
        img = PILImage.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ContractError(
            f"{where}: column {col!r} holds corrupt or truncated image bytes ({type(err).__name__}: {err}). "
            "Fix: re-encode the file or drop the row before training."
        ) from None
    if img.width == 0 or img.height == 0:
        raise ContractError(
            f"{where}: column {col!r} is an empty {img.width}x{img.height} image; drop the row."
        )
    return img, data


def decode_row(
    index: int,
    row: Mapping[str, Any],
    num_classes: int,
    *,
    name: str = "dataset",
    categories: Sequence[Category] | None = None,
) -> DecodedRow:
    """Decode and check one raw row (from :func:`iter_raw_rows`); raises :class:`ContractError`."""
    where = _where(name, index, row)
    _check_fields(where, row, num_classes, categories)
    image, image_bytes = _decode(row["image"], "image", where)
    fmt = image.format
    reencode = False
    if image.getexif().get(0x0112, 1) not in (None, 1):  # EXIF orientation: store what datasets decodes
        image = ImageOps.exif_transpose(image)
        reencode = True
    if image.mode not in ("RGB", "L"):
        reencode = True
    if fmt not in ("JPEG", "PNG"):
        reencode = True
    if (image.width, image.height) != (row["width"], row["height"]):
        raise ContractError(
            f"{where}: the image is {image.width}x{image.height} but width/height say {row['width']}x{row['height']}. "
            "Fix: set width/height to the decoded image size."
        )
    pan, _ = _decode(row["panoptic"], "panoptic", where)
    if pan.mode not in ("RGB", "RGBA"):
        raise ContractError(
            f"{where}: column 'panoptic' is a mode {pan.mode!r} image; it must be an RGB PNG with id = R + 256 G + "
            "256^2 B. Fix: encode the id map with seemadapt.data.id2rgb."
        )
    if pan.size != image.size:
        raise ContractError(f"{where}: column 'panoptic' is {pan.size} but the image is {image.size} (w, h).")
    ids = rgb2id(np.asarray(pan))
    sem_img, _ = _decode(row["semantic"], "semantic", where)
    if sem_img.mode not in ("L", "P"):
        raise ContractError(
            f"{where}: column 'semantic' is a mode {sem_img.mode!r} image; it must be a single-channel (mode L) PNG of "
            "class indices with 255 = ignore. Fix: Image.fromarray(label_map.astype(np.uint8), mode='L')."
        )
    if sem_img.size != image.size:
        raise ContractError(
            f"{where}: column 'semantic' is {sem_img.size} but the image is {image.size} (w, h)."
        )
    semantic = np.asarray(sem_img, dtype=np.uint8)
    bad = np.unique(semantic[(semantic >= num_classes) & (semantic != IGNORE_LABEL)])
    if bad.size:
        raise ContractError(
            f"{where}: column 'semantic' holds value(s) {bad.tolist()[:8]} outside 0..{num_classes - 1} (and 255 = "
            "ignore). Fix: map them to a class index or to 255."
        )
    present = set(np.unique(ids).tolist()) - {VOID}
    described = {int(s["id"]) for s in row["segments_info"]}
    absent = sorted(described - present)
    if absent:
        raise ContractError(
            f"{where}: segments_info id(s) {absent[:8]} do not occur in the panoptic PNG. Fix: drop those records "
            "or repaint the PNG (id = R + 256 G + 256^2 B)."
        )
    undescribed = sorted(present - described)
    if undescribed:
        raise ContractError(
            f"{where}: the panoptic PNG holds segment id(s) {undescribed[:8]} with no segments_info record. Fix: "
            "add a record per segment, or paint those pixels 0 (void)."
        )
    return DecodedRow(index, dict(row), image, image_bytes, fmt, reencode, ids, semantic)


def _check_fields(
    where: str, row: Mapping[str, Any], num_classes: int, categories: Sequence[Category] | None
):
    for col in ("width", "height"):
        v = row.get(col)
        if not isinstance(v, int) or v <= 0:
            raise ContractError(
                f"{where}: column {col!r} is {v!r}; it must be the positive image size in pixels."
            )
    if not isinstance(row.get("file_name"), str) or not row["file_name"].strip():
        raise ContractError(
            f"{where}: column 'file_name' is empty; give every row a stable name like '000123.jpg'."
        )
    if row.get("source") not in SOURCES:
        raise ContractError(
            f"{where}: column 'source' is {row.get('source')!r}; it must be one of {SOURCES}."
        )
    segments = row.get("segments_info") or []
    seen: set[int] = set()
    for j, s in enumerate(segments):
        sid, cat = s.get("id"), s.get("category_id")
        if not isinstance(sid, int) or not 0 < sid <= MAX_SEGMENT_ID:
            raise ContractError(
                f"{where}: segments_info[{j}].id = {sid!r}; segment ids must be in 1..{MAX_SEGMENT_ID} (0 is void)."
            )
        if sid in seen:
            raise ContractError(
                f"{where}: segments_info[{j}].id = {sid} is repeated; segment ids must be unique per image."
            )
        seen.add(sid)
        if not isinstance(cat, int) or not 0 <= cat < num_classes:
            raise ContractError(
                f"{where}: segments_info[{j}].category_id = {cat!r} is out of range 0..{num_classes - 1} (the "
                "ClassLabel names). Fix: add the class to the ClassLabel names or remap the id."
            )
        if s.get("iscrowd") not in (0, 1):
            raise ContractError(
                f"{where}: segments_info[{j}].iscrowd = {s.get('iscrowd')!r}; it must be 0 or 1."
            )
        bbox = s.get("bbox")
        if bbox is None or len(bbox) != 4 or not all(b is not None and math.isfinite(b) for b in bbox):
            raise ContractError(
                f"{where}: segments_info[{j}].bbox = {bbox!r}; it must be 4 finite numbers [x, y, w, h]."
            )
        if (
            categories is not None
            and s.get("isthing") is not None
            and bool(s["isthing"]) != categories[cat].isthing
        ):
            raise ContractError(
                f"{where}: segments_info[{j}].isthing = {s['isthing']} but category {categories[cat].name!r} is "
                f"{'a thing' if categories[cat].isthing else 'stuff'}. Fix: make the flags agree with the categories."
            )
    for j, g in enumerate(row.get("grounding") or []):
        if g.get("segment_id") not in seen:
            raise ContractError(
                f"{where}: grounding[{j}].segment_id = {g.get('segment_id')!r} names no segment of segments_info. "
                "Fix: point it at a segment id of this image or drop the record."
            )
        sentences = g.get("sentences") or []
        if not all(isinstance(t, str) for t in sentences):
            raise ContractError(
                f"{where}: grounding[{j}].sentences must be a list of strings, got {sentences!r}."
            )


def validate(
    dataset: datasets.Dataset,
    categories: Any = None,
    *,
    deep: bool = True,
    name: str = "dataset",
    max_errors: int = 10,
) -> list[Category]:
    """Check ``dataset`` against the contract and return its categories.

    ``deep=True`` decodes every image, panoptic and semantic PNG (catching corrupt bytes, size mismatches, segment
    ids absent from the PNG); ``deep=False`` checks the schema and the annotation fields only. Up to ``max_errors``
    problems are collected and raised together as one :class:`ContractError`.
    """
    if isinstance(dataset, datasets.DatasetDict):
        raise ContractError(
            f"{name} is a DatasetDict with splits {list(dataset)}; pick one, e.g. dataset['train']."
        )
    if not isinstance(dataset, datasets.Dataset):
        raise ContractError(f"{name} must be a datasets.Dataset, got {type(dataset).__name__}.")
    check_features(dataset.features, name=name)
    cats = read_categories(dataset, categories)
    if len(dataset) == 0:
        raise ContractError(f"{name} has no rows; a training or evaluation split needs at least one image.")
    errors: list[str] = []
    ids: dict[int, int] = {}
    names: dict[str, int] = {}
    columns = None if deep else [c for c in REQUIRED_COLUMNS if c not in IMAGE_COLUMNS]
    for index, row in iter_raw_rows(dataset, columns):
        where = _where(name, index, row)
        try:
            if row["image_id"] in ids:
                raise ContractError(
                    f"{where}: image_id {row['image_id']} repeats row {ids[row['image_id']]}; image ids must be unique."
                )
            ids[row["image_id"]] = index
            if row.get("file_name") in names:
                raise ContractError(
                    f"{where}: file_name {row['file_name']!r} repeats row {names[row['file_name']]}; names must be unique."
                )
            names[row.get("file_name")] = index
            if deep:
                decode_row(index, row, len(cats), name=name, categories=cats)
            else:
                _check_fields(where, row, len(cats), cats)
        except ContractError as err:
            errors.append(str(err))
            if len(errors) >= max_errors:
                break
    if errors:
        more = f" (stopped after the first {max_errors})" if len(errors) >= max_errors else ""
        raise ContractError(
            f"{name} breaks the dataset contract in {len(errors)} row(s){more}:\n- " + "\n- ".join(errors)
        )
    return cats
