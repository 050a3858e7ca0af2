"""Mix contract datasets (synthetic and real, any source) into one, with categories aligned by name.

Categories match by name (case-insensitive, surrounding spaces ignored); the mixed class list is the first source's
order followed by new names in order of appearance, or ``classes`` when given. Contiguous ids ``0..K-1`` are rebuilt:
``segments_info.category_id`` and the semantic PNG values are remapped, panoptic PNGs and images are kept byte for
byte. ``image_id`` is renumbered ``0..N-1`` over the mix (ids repeat across sources); ``file_name`` gets a
``s<k>_`` source prefix only when names would collide. The ``source`` column is kept, so a mix can still be split by
origin (``ds.filter(lambda r: r == "real", input_columns="source")``).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from datasets.fingerprint import generate_fingerprint
from PIL import Image as PILImage

from seemadapt.data.cache import default_cache_dir
from segcontract import (
    IGNORE_LABEL,
    IMAGE_COLUMNS,
    Category,
    ContractError,
    attach_categories,
    check_features,
    contract_features,
    read_categories,
)

__all__ = ["align_categories", "mix_datasets"]

_MIX_VERSION = 1


def _key(name: str) -> str:
    return " ".join(name.strip().lower().split())


def align_categories(
    per_source: Sequence[Sequence[Category]],
    classes: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[list[Category], list[list[int]]]:
    """The mixed category list and, per source, the lookup ``old contiguous id -> new contiguous id``.

    Raises :class:`ContractError` when two sources disagree on whether a class is a thing, or when ``classes`` is
    given and a source has a class it does not list.
    """
    labels = labels or [f"source {i}" for i in range(len(per_source))]
    order: list[str] = [_key(c) for c in classes] if classes is not None else []
    if classes is not None and len(set(order)) != len(order):
        raise ValueError(f"classes {list(classes)} repeat a name.")
    display = {_key(c): c.strip() for c in classes} if classes is not None else {}
    chosen: dict[str, Category] = {}
    owner: dict[str, str] = {}
    for label, cats in zip(labels, per_source):
        for c in cats:
            k = _key(c.name)
            if classes is not None and k not in display:
                raise ContractError(
                    f"{label} has class {c.name!r} which is not in classes={list(classes)}. Fix: add it to classes "
                    "or relabel that source."
                )
            if k in chosen:
                if chosen[k].isthing != c.isthing:
                    raise ContractError(
                        f"class {c.name!r} is {'a thing' if chosen[k].isthing else 'stuff'} in {owner[k]} but "
                        f"{'a thing' if c.isthing else 'stuff'} in {label}. Fix: pass categories=... to one source so "
                        "both agree."
                    )
                continue
            chosen[k] = c
            owner[k] = label
            if classes is None:
                order.append(k)
                display[k] = c.name
    final = []
    for i, k in enumerate(order):
        base = chosen.get(k)
        if base is None:  # listed in classes but in no source: stuff unless told otherwise
            final.append(Category(i, display[k], False))
        else:
            final.append(Category(i, display[k], base.isthing, base.color))
    index = {_key(c.name): c.id for c in final}
    luts = [[index[_key(c.name)] for c in cats] for cats in per_source]
    return final, luts


def _remap_fn(lut: list[int], offset: int, prefix: str):
    identity = lut == list(range(len(lut)))
    table = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    table[: len(lut)] = lut

    def remap(row: dict, index: int) -> dict:
        row["image_id"] = offset + index
        if prefix:
            row["file_name"] = prefix + row["file_name"]
        for s in row["segments_info"]:
            s["category_id"] = lut[s["category_id"]]
        if not identity:
            sem = row["semantic"]
            data = sem["bytes"] if sem.get("bytes") else Path(sem["path"]).read_bytes()
            with PILImage.open(io.BytesIO(data)) as img:
                values = table[np.asarray(img.convert("L") if img.mode != "L" else img)]
            buf = io.BytesIO()
            PILImage.fromarray(values, mode="L").save(buf, format="PNG")
            row["semantic"] = {"bytes": buf.getvalue(), "path": None}
        return row

    return remap


def mix_datasets(
    loaded: Sequence[datasets.Dataset],
    labels: Sequence[str],
    *,
    classes: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset:
    """One contract ``Dataset`` from several loaded ones, categories aligned by name (``labels`` name them in
    errors). Disk-backed sources are remapped into ``cache_dir`` (default: the seemadapt cache)."""
    for label, ds in zip(labels, loaded):
        check_features(ds.features, name=label)
    per_source = [read_categories(ds) for ds in loaded]
    final, luts = align_categories(per_source, classes, labels)
    features = contract_features([c.name for c in final])
    raw_features = datasets.Features(
        {k: (datasets.Image(decode=False) if k in IMAGE_COLUMNS else v) for k, v in features.items()}
    )
    names = [
        ds.select_columns(["file_name"]).with_format("arrow")[:]["file_name"].to_pylist() for ds in loaded
    ]
    flat = [n for ns in names for n in ns]
    collide = len(set(flat)) != len(flat)
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    parts = []
    offset = 0
    for k, (ds, lut) in enumerate(zip(loaded, luts)):
        extra = [c for c in ds.column_names if c not in features]
        ds = ds.remove_columns(extra) if extra else ds
        for col in IMAGE_COLUMNS:
            ds = ds.cast_column(col, datasets.Image(decode=False))
        prefix = f"s{k}_" if collide else ""
        # datasets' public content hash (its state and the cache files' modification times) names the cache file
        fp = hashlib.sha256(
            json.dumps([_MIX_VERSION, generate_fingerprint(ds), lut, offset, prefix, list(features)]).encode()
        ).hexdigest()[:32]
        kwargs: dict[str, Any] = {"keep_in_memory": True}
        if ds.cache_files:
            (cache_root / "mix").mkdir(parents=True, exist_ok=True)
            kwargs = {"cache_file_name": str(cache_root / "mix" / f"{fp}.arrow")}
        mapped = ds.map(
            _remap_fn(lut, offset, prefix),
            with_indices=True,
            features=raw_features,
            new_fingerprint=fp,
            desc=f"aligning {labels[k]}",
            **kwargs,
        )
        parts.append(mapped)
        offset += len(ds)
    out = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    for col in IMAGE_COLUMNS:
        out = out.cast_column(col, datasets.Image())
    return attach_categories(out, final)
