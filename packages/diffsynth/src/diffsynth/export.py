"""The contract Dataset <-> a standard COCO-panoptic folder (plus semantic PNGs and a RefCOCO-style grounding JSON).

Layout written by :func:`export_coco` (``<split>`` e.g. ``train``)::

    folder/
      images/<file_name>               the stored image bytes (no re-encoding when the extension matches)
      panoptic/<stem>.png              RGB, id = R + 256 G + 256^2 B, 0 = void
      semantic/<stem>.png              L, contiguous category index, 255 = ignore
      panoptic_<split>.json            images, annotations (segments_info), categories (id, name, isthing, color)
      grounding_<split>.json           images, annotations (RLE segmentation, area, bbox, sentences), categories
      categories.json, id2label.json

COCO category ids are the contiguous index **+ 1** (1..K+1), so no category has id 0, which reads as "void" or
"unlabelled" in most COCO tooling; ``categories.json`` records both. Detectron2 users map them back with
``{i + 1: i}`` as ``thing/stuff_dataset_id_to_contiguous_id``. The panoptic JSON's ``images`` entries also keep
``prompt``, ``seed`` and ``source``, and its ``info.diffsynth`` the categories (synonyms too) and settings, so
``load_coco(export_coco(ds))`` gives back the same dataset (minus the optional ``attention`` column).

Output is written into a temporary sibling folder and moved into place at the end: an interrupted export leaves no
half-written folder behind. :func:`diffsynth.coco_reader.load_coco` reads such a folder (or the official COCO
layout) back.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, Image
from PIL import Image as PILImage
from pycocotools import mask as mask_utils

from diffsynth.annotate import tokenize
from diffsynth.categories import Category
from diffsynth.dataset import ContractError, categories_of, settings_of
from diffsynth.errors import ArgumentError
from diffsynth.schema import COLUMNS, METADATA_KEY, encode_png, image_format
from segcontract import check_output_dir, output_write_error, rgb2id, write_category_files

__all__ = ["export_coco"]


def _stem(file_name: str) -> str:
    return os.path.splitext(file_name)[0]


def _json_number(value: float) -> int | float:
    value = float(value)
    return int(value) if value.is_integer() else value


def _coco_categories(categories: list[Category]) -> list[dict[str, Any]]:
    return [
        {
            "id": i + 1,
            "name": c.name,
            "supercategory": c.name,
            "isthing": int(c.isthing),
            "color": list(c.color) if c.color else [0, 0, 0],
        }
        for i, c in enumerate(categories)
    ]


def _image_bytes(value: Mapping[str, Any], file_name: str) -> bytes:
    """The stored image bytes if they already are in the format the file name says, else re-encoded."""
    data = value.get("bytes")
    if data is None:
        with open(value["path"], "rb") as f:
            data = f.read()
    wanted = image_format(file_name)
    image = PILImage.open(io.BytesIO(data))
    if image.format == wanted:
        return data
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=wanted, **({"quality": 95} if wanted == "JPEG" else {}))
    return buffer.getvalue()


def _png_bytes(value: Mapping[str, Any], mode: str) -> tuple[bytes, np.ndarray]:
    data = value.get("bytes")
    if data is None:
        with open(value["path"], "rb") as f:
            data = f.read()
    image = PILImage.open(io.BytesIO(data))
    array = np.asarray(image.convert(mode))
    if image.format != "PNG" or image.mode != mode:
        data = encode_png(array)["bytes"]
    return data, array


def _place(tmp: Path, folder: Path, split: str, overwrite: bool) -> None:
    """Move the finished export in: rename when ``folder`` is new or replaced, merge when it holds other splits."""
    if overwrite and folder.exists():
        old = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
        return
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        if folder.exists():
            folder.rmdir()
        os.replace(tmp, folder)
        return
    # Merge another split into an existing export: refuse any collision before moving a single file.
    files = [p.relative_to(tmp) for p in tmp.rglob("*") if p.is_file()]
    shared = {Path("categories.json"), Path("id2label.json")}
    clashes = [str(p) for p in files if p not in shared and (folder / p).exists()]
    if clashes:
        raise FileExistsError(
            f"export_coco: {folder} already holds {clashes[:3]}{'...' if len(clashes) > 3 else ''}; export "
            "to a new folder, use unique file names per split, or pass overwrite=True to replace the folder."
        )
    for name in sorted(shared):
        existing = folder / name
        if existing.exists() and existing.read_text() != (tmp / name).read_text():
            raise FileExistsError(
                f"export_coco: {existing} describes other categories; export splits with the same categories."
            )
    # JSON files last, so a reader never sees annotations whose files are missing.
    for rel in sorted(files, key=lambda p: (p.suffix == ".json", str(p))):
        if rel in shared and (folder / rel).exists():
            continue
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, folder / rel)
    shutil.rmtree(tmp, ignore_errors=True)


def _check_export(ds: Dataset, folder: Path, split: str, overwrite: bool) -> None:
    if not (hasattr(ds, "column_names") and hasattr(ds, "select_columns")):  # a Dataset or a look-alike
        raise ArgumentError(
            f"export_coco(ds=...): give a datasets.Dataset of the contract (e.g. from diffsynth.generate or "
            f"diffsynth.io.load_any), got {type(ds).__name__}."
        )
    check_output_dir(folder, "export_coco(folder)")
    missing = [c for c in COLUMNS if c not in ds.column_names]
    if missing:
        raise ContractError(f"export_coco: the dataset lacks contract columns {missing}.")
    if not split or any(ch in split for ch in "/\\ "):
        raise ValueError(f"`split` must be a plain name like 'train', got {split!r}.")
    if (folder / f"panoptic_{split}.json").exists() and not overwrite:
        raise FileExistsError(
            f"{folder / f'panoptic_{split}.json'} exists; pass overwrite=True or choose another folder/split."
        )


class _Export:
    """The JSON records of one split, filled row by row while the row's files are written into ``tmp``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.refs: list[dict[str, Any]] = []
        self.sent_id = 0
        for sub in ("images", "panoptic", "semantic"):
            (tmp / sub).mkdir(parents=True)

    def add(self, row: Mapping[str, Any]) -> None:
        """Write the row's image and PNGs; add its image entry, panoptic annotation and grounding refs."""
        tmp = self.tmp
        file_name, stem = row["file_name"], _stem(row["file_name"])
        (tmp / "images" / file_name).write_bytes(_image_bytes(row["image"], file_name))
        pan_bytes, pan = _png_bytes(row["panoptic"], "RGB")
        (tmp / "panoptic" / f"{stem}.png").write_bytes(pan_bytes)
        sem_bytes, _ = _png_bytes(row["semantic"], "L")
        (tmp / "semantic" / f"{stem}.png").write_bytes(sem_bytes)
        self.images.append(
            {
                "id": row["image_id"],
                "file_name": file_name,
                "width": row["width"],
                "height": row["height"],
                "prompt": row["prompt"],
                "seed": row["seed"],
                "source": row["source"],
            }
        )
        segments = [
            {
                "id": s["id"],
                "category_id": s["category_id"] + 1,
                "iscrowd": s["iscrowd"],
                "bbox": [_json_number(v) for v in s["bbox"]],
                "area": s["area"],
            }
            for s in row["segments_info"]
        ]
        self.annotations.append(
            {"image_id": row["image_id"], "file_name": f"{stem}.png", "segments_info": segments}
        )
        sentences = {g["segment_id"]: g["sentences"] for g in row["grounding"]}
        ids = rgb2id(pan)
        for seg in segments:
            self._add_ref(row["image_id"], seg, ids, sentences.get(seg["id"], []))

    def _add_ref(self, image_id: int, seg: dict[str, Any], ids: np.ndarray, raw_sentences: list[str]) -> None:
        """One RefCOCO-style annotation: the segment's RLE mask and its sentences (numbered across the split)."""
        rle = mask_utils.encode(np.asfortranarray((ids == seg["id"]).astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        sents = []
        for raw in raw_sentences:
            tokens = tokenize(raw)
            sents.append({"tokens": tokens, "raw": raw, "sent_id": self.sent_id, "sent": " ".join(tokens)})
            self.sent_id += 1
        self.refs.append(
            {
                "id": len(self.refs) + 1,
                "ref_id": len(self.refs) + 1,
                "image_id": image_id,
                "segment_id": seg["id"],
                "category_id": seg["category_id"],
                "segmentation": rle,
                "area": seg["area"],
                "bbox": seg["bbox"],
                "iscrowd": seg["iscrowd"],
                "sentences": sents,
                "sent_ids": [s["sent_id"] for s in sents],
            }
        )

    def write_json(self, split: str, categories: list[Category], settings: Mapping[str, Any]) -> None:
        """``panoptic_<split>.json``, ``grounding_<split>.json`` and the category files."""
        coco_categories = _coco_categories(categories)
        info = {
            "description": f"diffsynth export, split {split}",
            METADATA_KEY: {"categories": [c.to_dict() for c in categories], "settings": settings},
        }
        panoptic_json = {
            "info": info,
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": coco_categories,
        }
        grounding_json = {
            "info": {"description": f"diffsynth RefCOCO-style referring expressions, split {split}"},
            "images": [{k: im[k] for k in ("id", "file_name", "width", "height")} for im in self.images],
            "annotations": self.refs,
            "categories": coco_categories,
        }
        for name, content in (
            (f"panoptic_{split}.json", panoptic_json),
            (f"grounding_{split}.json", grounding_json),
        ):
            with open(self.tmp / name, "w", encoding="utf-8") as f:
                json.dump(content, f, default=str)
        write_category_files(categories, self.tmp)


def export_coco(
    ds: Dataset,
    folder: str | os.PathLike,
    split: str = "train",
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``ds`` as a COCO-panoptic folder (see the module docstring for the layout); returns the folder."""
    folder = Path(folder)
    _check_export(ds, folder, split, overwrite)
    categories = categories_of(ds)
    settings = settings_of(ds)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        export = _Export(tmp)
        view = ds.select_columns([c for c in COLUMNS])
        for column in ("image", "panoptic", "semantic"):
            view = view.cast_column(column, Image(decode=False))
        for row in view:
            export.add(row)
        export.write_json(split, categories, settings)
        _place(tmp, folder, split, overwrite)
    except OSError as error:  # disk full, read-only: name the folder argument (the partial copy is removed)
        translated = output_write_error(error, folder, "export_coco(folder)")
        if translated is None:
            raise
        raise translated from error
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
