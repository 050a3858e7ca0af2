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
half-written folder behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, Image
from datasets.exceptions import DatasetGenerationError
from panopticapi.utils import rgb2id
from PIL import Image as PILImage
from pycocotools import mask as mask_utils

from diffsynth.annotate import IGNORE_INDEX, tokenize
from diffsynth.categories import Category, resolve_categories
from diffsynth.dataset import ContractError, categories_of, settings_of, write_category_files
from diffsynth.schema import COLUMNS, METADATA_KEY, encode_png, features, image_format

__all__ = ["export_coco", "load_coco"]

logger = logging.getLogger(__name__)


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
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ------------------------------------------------------------------------------------------------------- reading
def _first(paths: list[Path], what: str, arg: str) -> Path:
    for path in paths:
        if path.exists():
            return path
    raise FileNotFoundError(
        f"load_coco: no {what} found; looked for {[str(p) for p in paths]}. Pass `{arg}=` explicitly."
    )


def _bbox(mask: np.ndarray) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]


def _sentences(grounding_json: str | None) -> dict[tuple[int, int], list[str]]:
    """``(image_id, segment_id) -> sentences`` of a RefCOCO-style grounding JSON (empty without one)."""
    sentences: dict[tuple[int, int], list[str]] = {}
    if not grounding_json:
        return sentences
    with open(grounding_json, encoding="utf-8") as f:
        grounding = json.load(f)
    for ann in grounding.get("annotations", []):
        key = (int(ann["image_id"]), int(ann.get("segment_id", ann.get("id"))))
        for sent in ann.get("sentences", []):
            text = sent if isinstance(sent, str) else sent.get("raw") or sent.get("sent", "")
            if text:
                sentences.setdefault(key, []).append(text)
    return sentences


def _read_panoptic(pan_path: str) -> tuple[bytes, np.ndarray]:
    """The panoptic PNG's bytes (re-encoded unless already an RGB PNG) and its segment-id map."""
    with open(pan_path, "rb") as f:
        pan_bytes = f.read()
    pan_image = PILImage.open(io.BytesIO(pan_bytes))
    ids = rgb2id(np.asarray(pan_image.convert("RGB")))
    if pan_image.format != "PNG" or pan_image.mode != "RGB":
        pan_bytes = encode_png(np.asarray(pan_image.convert("RGB")))["bytes"]
    return pan_bytes, ids


def _segments(
    ids: np.ndarray, ann: Mapping[str, Any], categories: list[dict[str, Any]], pan_path: str
) -> tuple[list[dict[str, Any]], np.ndarray]:
    """The contract ``segments_info`` of one COCO annotation (JSON order) and the semantic map (void -> 255)."""
    image_id = int(ann["image_id"])
    index = {c["id"]: i for i, c in enumerate(categories)}
    listed = {int(s["id"]): s for s in ann["segments_info"]}
    present, inverse = np.unique(ids, return_inverse=True)
    unknown = [int(v) for v in present if v != 0 and int(v) not in listed]
    if unknown:
        raise ContractError(
            f"load_coco: {pan_path} holds segment ids {unknown[:5]} that its JSON annotation does not list."
        )
    lut = np.full(len(present), IGNORE_INDEX, dtype=np.uint8)
    slot = {int(v): k for k, v in enumerate(present)}
    inverse = inverse.reshape(ids.shape)
    segments = []
    for sid, seg in listed.items():  # JSON order
        if sid not in slot or sid == 0:
            continue
        if seg["category_id"] not in index:
            raise ContractError(
                f"load_coco: segment {sid} of image {image_id} has category_id {seg['category_id']}, "
                "which is not in `categories`."
            )
        cat = index[seg["category_id"]]
        lut[slot[sid]] = cat
        mask = inverse == slot[sid]
        segments.append(
            {
                "id": sid,
                "category_id": cat,
                "iscrowd": int(seg.get("iscrowd", 0)),
                "bbox": _bbox(mask),
                "area": int(np.count_nonzero(mask)),
                "isthing": bool(categories[cat].get("isthing", 1)),
            }
        )
    dropped = set(listed) - {s["id"] for s in segments}
    if dropped:
        logger.warning(
            "load_coco: image %s lists segments %s absent from its PNG; dropped.", image_id, dropped
        )
    return segments, lut[inverse]


def _rows(
    panoptic_json: str,
    panoptic_dir: str,
    image_dir: str,
    grounding_json: str | None,
    source: str,
) -> Iterator[dict[str, Any]]:
    with open(panoptic_json, encoding="utf-8") as f:
        data = json.load(f)
    images = {im["id"]: im for im in data["images"]}
    sentences = _sentences(grounding_json)
    for ann in data["annotations"]:
        image_id = int(ann["image_id"])
        meta = images.get(image_id)
        if meta is None:
            raise ContractError(f"load_coco: annotation for image_id {image_id} has no entry in `images`.")
        pan_path = os.path.join(panoptic_dir, ann["file_name"])
        pan_bytes, ids = _read_panoptic(pan_path)
        segments, semantic = _segments(ids, ann, data["categories"], pan_path)
        with open(os.path.join(image_dir, meta["file_name"]), "rb") as f:
            image_bytes = f.read()
        width, height = PILImage.open(io.BytesIO(image_bytes)).size
        yield {
            "image": {"bytes": image_bytes, "path": None},
            "image_id": image_id,
            "file_name": os.path.basename(meta["file_name"]),
            "width": width,
            "height": height,
            "panoptic": {"bytes": pan_bytes, "path": None},
            "segments_info": segments,
            "semantic": encode_png(semantic),
            "grounding": [
                {"segment_id": s["id"], "sentences": sentences[(image_id, s["id"])]}
                for s in segments
                if (image_id, s["id"]) in sentences
            ],
            "prompt": meta.get("prompt", ""),
            "seed": int(meta.get("seed", -1)),
            "source": meta.get("source", source),
        }


def _fingerprint(paths: list[str | None], extra: str) -> str:
    """Content fingerprint of the JSON files and the folders' listings (size, mtime), for the Arrow cache."""
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(str(path).encode())
        if path is None:
            continue
        if os.path.isdir(path):
            for entry in sorted(os.scandir(path), key=lambda e: e.name):
                st = entry.stat()
                digest.update(f"{entry.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        else:
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:32]


def _locate(
    folder: Path,
    split: str,
    panoptic_json: str | os.PathLike | None,
    panoptic_dir: str | os.PathLike | None,
    image_dir: str | os.PathLike | None,
) -> tuple[Path, Path, Path]:
    """The panoptic JSON, panoptic PNG folder and image folder: as given, else the first that exists of ours and
    the official COCO layout."""
    pan_json = (
        Path(panoptic_json)
        if panoptic_json
        else _first(
            [folder / f"panoptic_{split}.json", folder / "annotations" / f"panoptic_{split}.json"],
            "panoptic JSON",
            "panoptic_json",
        )
    )
    pan_dir = (
        Path(panoptic_dir)
        if panoptic_dir
        else _first(
            [folder / "panoptic", folder / f"panoptic_{split}", folder / "annotations" / f"panoptic_{split}"],
            "panoptic PNG folder",
            "panoptic_dir",
        )
    )
    img_dir = (
        Path(image_dir)
        if image_dir
        else _first(
            [folder / "images", folder / split, folder / "images" / split], "image folder", "image_dir"
        )
    )
    return pan_json, pan_dir, img_dir


def _categories_and_settings(
    data: Mapping[str, Any], split: str, background: str | None, pan_json: Path
) -> tuple[list[Category], dict[str, Any]]:
    """Our own categories and settings when the JSON carries them (a diffsynth export), else both built from the
    COCO ``categories`` (colours kept when usable: set, not black, unique)."""
    ours = (data.get("info") or {}).get(METADATA_KEY) if isinstance(data.get("info"), dict) else None
    names = [c["name"] for c in data["categories"]]
    if ours and [c["name"] for c in ours["categories"]] == names:
        return [Category.from_dict(c) for c in ours["categories"]], dict(ours.get("settings", {}))
    colors = [tuple(c["color"]) if c.get("color") else None for c in data["categories"]]
    usable = [c if c and c != (0, 0, 0) and colors.count(c) == 1 else None for c in colors]
    categories = resolve_categories(
        [
            Category(c["name"], isthing=bool(c.get("isthing", 1)), color=color)
            for c, color in zip(data["categories"], usable)
        ],
        background=None,
    )
    settings = {"source_format": "coco-panoptic", "split": split}
    if background is not None:
        if background not in names:
            raise ValueError(f"`background` {background!r} is not a category of {pan_json}: {names}.")
        settings["background"] = background
    return categories, settings


def load_coco(
    folder: str | os.PathLike,
    split: str = "train",
    *,
    panoptic_json: str | os.PathLike | None = None,
    panoptic_dir: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    grounding_json: str | os.PathLike | None = None,
    source: str = "real",
    background: str | None = None,
    cache_dir: str | None = None,
) -> Dataset:
    """Read a COCO-panoptic folder (ours, or the official COCO layout) into the contract Dataset.

    Looks for ``panoptic_<split>.json`` in ``folder`` or ``folder/annotations``, PNGs in ``panoptic/``,
    ``panoptic_<split>/`` or ``annotations/panoptic_<split>/``, images in ``images/`` or ``<split>/``, and the
    optional ``grounding_<split>.json``. The semantic map is always derived from the panoptic PNG (void -> 255), so
    folders without ``semantic/`` work and foreign semantic id conventions never leak in. Category order is the
    JSON's ``categories`` order. ``background``: name of a category to treat as the explicit background (it must be
    a stuff category already present); only recorded in the settings.
    """
    folder = Path(folder)
    pan_json, pan_dir, img_dir = _locate(folder, split, panoptic_json, panoptic_dir, image_dir)
    if grounding_json is None and (folder / f"grounding_{split}.json").exists():
        grounding_json = folder / f"grounding_{split}.json"
    with open(pan_json, encoding="utf-8") as f:
        data = json.load(f)
    categories, settings = _categories_and_settings(data, split, background, pan_json)
    feats = features(categories, settings=settings)
    gen_kwargs = {
        "panoptic_json": str(pan_json),
        "panoptic_dir": str(pan_dir),
        "image_dir": str(img_dir),
        "grounding_json": str(grounding_json) if grounding_json else None,
        "source": source,
    }
    fingerprint = _fingerprint(
        [str(pan_json), str(pan_dir), str(img_dir), gen_kwargs["grounding_json"]],
        json.dumps([source, feats.to_dict()], sort_keys=True, default=str),
    )
    if not data["annotations"]:
        raise ContractError(f"load_coco: {pan_json} has no annotations.")
    try:
        return Dataset.from_generator(
            _rows, features=feats, gen_kwargs=gen_kwargs, fingerprint=fingerprint, cache_dir=cache_dir
        )
    except DatasetGenerationError as err:  # surface our own precise error, not the builder's wrapper
        if isinstance(err.__cause__, ContractError | OSError | ValueError):
            raise err.__cause__ from None
        raise
