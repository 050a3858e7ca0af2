"""Register a contract dataset with Detectron2: files in a content-addressed cache, catalogs that point at them.

``register(dataset, name)`` validates every row (decoding every image), writes images, panoptic PNGs, semantic PNGs
and a COCO panoptic JSON under ``<cache_dir>/<content hash>/``, and registers ``name`` with ``DatasetCatalog`` (a
function returning standard detectron2 dicts) and ``MetadataCatalog`` (what ``COCOPanopticEvaluator``,
``SemSegEvaluator`` and ``Visualizer`` need). The hash covers the rows, the features and the categories: registering
the same data again, under any name and in any process, reuses the files and skips validation.

Spawned workers (DDP, ``accelerate launch``, dataloader workers with the spawn start method) start with empty
catalogs. Send them the small picklable :class:`DatasetSpec` (``spec_of(name)``) and call
``ensure_registered(spec)`` in the worker entry point: it re-registers from the cache files without touching the
original dataset.

Registered dicts (one per image)::

    file_name, image_id, height, width          # image path in the cache; image_id as in the contract
    pan_seg_file_name, sem_seg_file_name        # panoptic RGB PNG, semantic L PNG (255 = ignore)
    segments_info: [{id, category_id, isthing, iscrowd, area, bbox}]   # contiguous category_id, bbox xywh
    grounding_info: [{segment_id, sentences: [str]}]
    source, name, prompt                        # contract source, original file_name, prompt

Category ids: contiguous id = ClassLabel index; the "dataset id" in the panoptic JSON is contiguous id + 1 (COCO
ids start at 1). ``thing_classes`` and ``stuff_classes`` both list *all* names in contiguous order (as SEEM's
``stuff_classes`` does), so indexing either by a contiguous id is always right whatever the order of things and stuff;
which classes are things is ``thing_dataset_id_to_contiguous_id``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from PIL import Image as PILImage

from seemadapt.data.cache import default_cache_dir
from seemadapt.data.sources import load_source
from seemadapt.detectron2_compat import DatasetCatalog, MetadataCatalog
from segcontract import (
    IGNORE_LABEL,
    Category,
    ContractError,
    DecodedRow,
    UniqueRows,
    check_features,
    decode_row,
    id2rgb,
    iter_raw_rows,
    read_categories,
    row_label,
    segment_geometry,
)

__all__ = [
    "DatasetSpec",
    "dataset_names",
    "default_cache_dir",
    "ensure_registered",
    "load_records",
    "register",
    "registered_thing_classes",
    "spec_of",
    "unregister",
]

FORMAT_VERSION = 1
LABEL_DIVISOR = 1000
_MANIFEST = "meta.json"
_RECORDS = "dataset.json"
_PANOPTIC_JSON = "panoptic.json"
_EXT = {"JPEG": ".jpg", "PNG": ".png"}


@dataclass(frozen=True)
class DatasetSpec:
    """What a worker needs to re-register a dataset: its name and its cache folder (picklable, tiny)."""

    name: str
    root: str


# --------------------------------------------------------------------------------------------- names


def _check_name(name: Any) -> str:
    if isinstance(name, tuple | list):
        raise TypeError(
            f"dataset name must be a str, got {type(name).__name__} {name!r}. Register each dataset under one str "
            "name. (The classic config trap is the reverse: DATASETS.TRAIN = ('x') is the str 'x', which "
            "detectron2 iterates letter by letter; write ('x',).)"
        )
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"dataset name must be a non-empty str, got {name!r}.")
    if name != name.strip():
        raise ValueError(f"dataset name {name!r} has leading/trailing spaces; strip them.")
    return name


def dataset_names(value: str | Iterable[str]) -> tuple[str, ...]:
    """Normalise a ``DATASETS.TRAIN``-style value to a tuple of registered names, catching the ``("x")`` trap.

    A lone str becomes a one-element tuple. Unregistered names raise ``KeyError``; when they are single letters
    that spell a registered name, the message says the name was iterated as a string.
    """
    if isinstance(value, str):
        return (_check_name(value),)
    names = tuple(value)
    if not names:
        raise ValueError("no dataset names given; pass a str or a tuple of str like ('my_train',).")
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"dataset names must be str, got {type(n).__name__} {n!r} in {names!r}.")
    registered = set(DatasetCatalog.list())
    missing = [n for n in names if n not in registered]
    if missing:
        joined = "".join(names)
        if all(len(n) == 1 for n in names) and joined in registered:
            raise KeyError(
                f"dataset names {names!r} are the letters of {joined!r}: a str was iterated character by character. "
                f"Write ({joined!r},) - with the comma - or just {joined!r}."
            )
        raise KeyError(f"dataset(s) {missing} are not registered; registered: {sorted(registered)}.")
    return names


# --------------------------------------------------------------------------------------------- hashing


def _content_key(ds: datasets.Dataset, categories: Sequence[Category], batch_size: int = 256) -> str:
    """sha256 of the rows (Arrow IPC of each batch: offsets and slices handled), features and categories."""
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, [c.to_dict() for c in categories]], sort_keys=True).encode())
    h.update(json.dumps(ds.features.to_dict(), sort_keys=True).encode())
    arrow = ds.with_format("arrow")
    for start in range(0, len(ds), batch_size):
        table = arrow[start : start + batch_size]
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        h.update(sink.getvalue())
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------------------------- materialisation


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (PILImage.fromarray(array, mode=mode) if mode else PILImage.fromarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def _write_row(decoded: DecodedRow, root: Path, categories: Sequence[Category]) -> tuple[dict, dict, dict]:
    row = decoded.row
    image_id = int(row["image_id"])
    if decoded.image_reencode:
        image_name = f"images/{image_id}.png"
        buf = io.BytesIO()
        decoded.image.convert("RGB").save(buf, format="PNG")
        image_bytes = buf.getvalue()
    else:
        image_name = f"images/{image_id}{_EXT[decoded.image_format]}"
        image_bytes = decoded.image_bytes
    (root / image_name).write_bytes(image_bytes)
    pan_name, sem_name = f"panoptic/{image_id}.png", f"semantic/{image_id}.png"
    (root / pan_name).write_bytes(_png(id2rgb(decoded.panoptic_ids)))
    (root / sem_name).write_bytes(_png(decoded.semantic, mode="L"))
    geometry = segment_geometry(decoded.panoptic_ids, [int(s["id"]) for s in row["segments_info"]])
    segments = []
    for s in row["segments_info"]:
        bbox, area = geometry[int(s["id"])]
        cat = categories[int(s["category_id"])]
        segments.append(
            {
                "id": int(s["id"]),
                "category_id": cat.id,
                "isthing": cat.isthing,
                "iscrowd": int(s["iscrowd"]),
                "area": area,
                "bbox": bbox,
            }
        )
    record = {
        "file_name": image_name,
        "image_id": image_id,
        "height": int(row["height"]),
        "width": int(row["width"]),
        "pan_seg_file_name": pan_name,
        "sem_seg_file_name": sem_name,
        "segments_info": segments,
        "grounding_info": [
            {"segment_id": int(g["segment_id"]), "sentences": list(g["sentences"] or [])}
            for g in row["grounding"] or []
        ],
        "source": row["source"],
        "name": row["file_name"],
        "prompt": row.get("prompt") or "",
    }
    coco_image = {
        "id": image_id,
        "file_name": Path(image_name).name,
        "width": record["width"],
        "height": record["height"],
    }
    coco_ann = {
        "image_id": image_id,
        "file_name": Path(pan_name).name,
        "segments_info": [
            {
                k: (s["category_id"] + 1 if k == "category_id" else s[k])
                for k in ("id", "category_id", "iscrowd", "area", "bbox")
            }
            for s in segments
        ],
    }
    return record, coco_image, coco_ann


def _materialise(
    ds: datasets.Dataset, categories: list[Category], root: Path, key: str, name: str, num_workers: int
) -> None:
    tmp = root.parent / f".tmp-{root.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    for sub in ("images", "panoptic", "semantic"):
        (tmp / sub).mkdir(parents=True)
    try:
        records, images, anns = [], [], []
        unique = UniqueRows()

        def work(item: tuple[int, dict]) -> tuple[dict, dict, dict]:
            index, row = item
            decoded = decode_row(index, row, len(categories), name=name, categories=categories)
            return _write_row(decoded, tmp, categories)

        rows = iter_raw_rows(ds)
        with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
            while chunk := [item for _, item in zip(range(64), rows)]:
                for index, row in chunk:
                    unique.check(row_label(name, index, row), index, row)
                for record, image, ann in pool.map(work, chunk):
                    records.append(record)
                    images.append(image)
                    anns.append(ann)
        if not records:
            raise ContractError(f"{name} has no rows; a registered split needs at least one image.")
        coco = {
            "info": {"description": f"seemadapt registration {key}"},
            "licenses": [],
            "images": images,
            "annotations": anns,
            "categories": [
                {
                    "id": c.id + 1,
                    "name": c.name,
                    "isthing": int(c.isthing),
                    "color": list(c.color),
                    "supercategory": "",
                }
                for c in categories
            ],
        }
        (tmp / _PANOPTIC_JSON).write_text(json.dumps(coco))
        (tmp / _RECORDS).write_text(json.dumps(records))
        manifest = {
            "format": FORMAT_VERSION,
            "key": key,
            "num_images": len(records),
            "categories": [c.to_dict() for c in categories],
        }
        (tmp / _MANIFEST).write_text(
            json.dumps(manifest, indent=1)
        )  # written last: marks the folder complete
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / _MANIFEST).is_file():  # pragma: no cover - a foreign folder is in the way
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same content first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------- catalogs


def load_records(root: str) -> list[dict]:
    """The registered dicts of a cache folder, with absolute paths (what ``DatasetCatalog.get`` returns)."""
    base = Path(root)
    records = json.loads((base / _RECORDS).read_text())
    for r in records:
        for key in ("file_name", "pan_seg_file_name", "sem_seg_file_name"):
            r[key] = str(base / r[key])
    return records


def registered_thing_classes(name: str) -> list[str]:
    """The thing class names of registered dataset ``name``, in contiguous order (its metadata's
    ``thing_dataset_id_to_contiguous_id``; every registered class is listed in ``thing_classes``)."""
    metadata = MetadataCatalog.get(name)
    names = list(metadata.stuff_classes)
    contiguous = set(getattr(metadata, "thing_dataset_id_to_contiguous_id", {}).values())
    return [n for k, n in enumerate(names) if k in contiguous]


def _metadata(root: Path, categories: list[Category], key: str) -> dict[str, Any]:
    names = [c.name for c in categories]
    colors = [list(c.color) for c in categories]
    return {
        "thing_classes": names,
        "stuff_classes": names,
        "thing_colors": colors,
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": {c.id + 1: c.id for c in categories if c.isthing},
        "stuff_dataset_id_to_contiguous_id": {c.id + 1: c.id for c in categories},
        "ignore_label": IGNORE_LABEL,
        "label_divisor": LABEL_DIVISOR,
        "panoptic_root": str(root / "panoptic"),
        "panoptic_json": str(root / _PANOPTIC_JSON),
        "sem_seg_root": str(root / "semantic"),
        "image_root": str(root / "images"),
        "evaluator_type": "coco_panoptic_seg",
        "categories": [c.to_dict() for c in categories],
        "seemadapt_root": str(root),
        "seemadapt_key": key,
    }


def _as_spec(spec: DatasetSpec | tuple | dict) -> DatasetSpec:
    if isinstance(spec, DatasetSpec):
        return spec
    if isinstance(spec, dict):
        return DatasetSpec(str(spec["name"]), str(spec["root"]))
    if isinstance(spec, tuple) and len(spec) == 2:
        return DatasetSpec(str(spec[0]), str(spec[1]))
    raise TypeError(f"expected a DatasetSpec (from seemadapt.data.spec_of(name)), got {spec!r}.")


def ensure_registered(spec: DatasetSpec) -> str:
    """Register ``spec.name`` from its cache folder unless this process already has it; returns the name.

    Call it in every worker entry point (each spawned process starts with empty catalogs). Cheap and idempotent.
    """
    spec = _as_spec(spec)
    name = _check_name(spec.name)
    root = Path(spec.root)
    manifest_path = root / _MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{root} is not a complete seemadapt dataset cache (no {_MANIFEST}); run seemadapt.data.register(...) "
            "in the main process first."
        )
    if name in DatasetCatalog.list():
        current = getattr(MetadataCatalog.get(name), "seemadapt_root", None)
        if current == str(root):
            return name
        raise ValueError(
            f"dataset {name!r} is already registered in this process with other content ({current}); "
            "unregister(name) first or use another name."
        )
    manifest = json.loads(manifest_path.read_text())
    categories = [
        Category(c["id"], c["name"], c["isthing"], tuple(c["color"])) for c in manifest["categories"]
    ]
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)  # stale metadata from an earlier, removed registration
    DatasetCatalog.register(name, functools.partial(load_records, str(root)))
    MetadataCatalog.get(name).set(**_metadata(root, categories, manifest["key"]))
    return name


def spec_of(name: str) -> DatasetSpec:
    """The picklable spec of a dataset registered by :func:`register`, to send to workers."""
    root = (
        getattr(MetadataCatalog.get(_check_name(name)), "seemadapt_root", None)
        if name in DatasetCatalog.list()
        else None
    )
    if root is None:
        raise KeyError(f"dataset {name!r} was not registered by seemadapt.data.register in this process.")
    return DatasetSpec(name, root)


def unregister(name: str) -> None:
    """Remove ``name`` from both catalogs (the cache files stay, for reuse)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def register(
    dataset: Any,
    name: str,
    *,
    split: str | None = "train",
    categories: Any = None,
    cache_dir: str | Path | None = None,
    overwrite: bool = False,
    num_workers: int = 4,
) -> str:
    """Validate, materialise and register a contract dataset with Detectron2; returns ``name``.

    Args:
        dataset: anything :func:`seemadapt.data.load_source` accepts (Dataset, DatasetDict, folder, Hub id, list
            of sources to mix).
        name: the detectron2 dataset name (a str).
        split: split to take from a DatasetDict / Hub repo / COCO folder.
        categories: optional explicit categories (thing/stuff, colours).
        cache_dir: parent of the content-addressed folders (default ``default_cache_dir() / "datasets"``).
        overwrite: replace an existing registration of ``name`` that holds other content (else an error).
        num_workers: threads that decode and write rows.

    Registering the same content under the same name from the same cache folder again is a no-op; if that folder
    was deleted since, or another ``cache_dir`` is given, the dataset is written there and registered anew.
    """
    name = _check_name(name)
    ds = load_source(dataset, split=split, categories=categories)
    check_features(ds.features, name=name)
    cats = read_categories(ds)
    key = _content_key(ds, cats)
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "datasets"
    root = base / key
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if getattr(meta, "seemadapt_key", None) != key and not overwrite:
            raise ValueError(
                f"dataset {name!r} is already registered with different content; pass overwrite=True to replace it, "
                "or register under another name."
            )
        if getattr(meta, "seemadapt_root", None) == str(root) and (root / _MANIFEST).is_file():
            return name
        # Other content (overwrite=True), another cache_dir, or the registered folder was deleted since (e.g. a
        # temporary cache_dir): register again from the requested folder instead of failing later in the loader.
        unregister(name)
    base.mkdir(parents=True, exist_ok=True)
    if not (root / _MANIFEST).is_file():
        if root.exists():
            shutil.rmtree(root)  # an incomplete folder (no manifest) from a crashed run
        _materialise(ds, cats, root, key, name, num_workers)
    return ensure_registered(DatasetSpec(name, str(root)))
