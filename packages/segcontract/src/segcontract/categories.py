"""Reading a dataset's categories: names from the ClassLabel, thing/stuff flags and colours from wherever they travel.

Thing/stuff flags and colours come, in this order, from an explicit list, a ``categories`` JSON in the dataset's
``info.description`` (what :func:`attach_categories` writes), a ``categories`` JSON blob in the ``id`` of the
``category_id`` ClassLabel (where diffsynth keeps it: it survives parquet and the Hub), and finally the ``isthing``
flags of ``segments_info`` itself, which always works.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow.compute as pc
from datasets import ClassLabel, Features

from segcontract.category import Category
from segcontract.errors import ContractError

__all__ = [
    "attach_categories",
    "class_names_of",
    "find_categories_in_json",
    "parse_categories",
    "read_categories",
]


def _load_json_value(value: Any, what: str) -> Any:
    """``value`` itself, or the JSON a string or a file path holds."""
    if isinstance(value, str | Path) and not (
        isinstance(value, str) and value.lstrip().startswith(("[", "{"))
    ):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(
                f"{what}: {str(path)!r} is not a file; pass a categories.json path or a list."
            )
        return json.loads(path.read_text())
    if isinstance(value, str):
        return json.loads(value)
    return value


def parse_categories(value: Any, *, what: str = "categories") -> list[dict[str, Any]]:
    """Normalise a categories description into a list of ``{name, isthing?, color?, id?}`` dicts.

    Accepts a list of dicts / :class:`Category`, a dict ``{"categories": [...]}``, an ``id2label`` mapping
    (``{"0": "polyp"}``), a JSON string, or a path to a JSON file.
    """
    value = _load_json_value(value, what)
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


def _is_category_list(obj: Any) -> bool:
    return isinstance(obj, list) and bool(obj) and all(isinstance(c, Mapping) and "name" in c for c in obj)


def find_categories_in_json(obj: Any, depth: int = 0) -> list | None:
    """The first ``categories`` list (of dicts with a ``name``) in a parsed JSON value, a few levels deep."""
    if depth > 4:
        return None
    if isinstance(obj, Mapping):
        if _is_category_list(obj.get("categories")):
            return obj["categories"]
        for v in obj.values():
            found = find_categories_in_json(v, depth + 1)
            if found is not None:
                return found
    elif _is_category_list(obj):
        return obj
    return None


def _categories_in_text(text: str | None) -> list | None:
    text = (text or "").strip()
    if not text.startswith(("{", "[")):
        return None
    try:
        return find_categories_in_json(json.loads(text))
    except json.JSONDecodeError:
        return None


def _classlabel_categories(dataset: datasets.Dataset) -> list | None:
    """Categories in a JSON blob on the ``category_id`` ClassLabel's ``id`` (unlike ``info.description``, a
    feature's ``id`` survives parquet and the Hub's ``dataset_info``)."""
    inner = getattr(dataset.features.get("segments_info"), "feature", None)
    label = inner.get("category_id") if isinstance(inner, Mapping) else None
    return _categories_in_text(getattr(label, "id", None))


def class_names_of(features: Features | datasets.Dataset) -> list[str]:
    """The class list: the ``ClassLabel`` names of ``segments_info.category_id``."""
    if isinstance(features, datasets.Dataset):
        features = features.features
    seg = features.get("segments_info")
    inner = getattr(seg, "feature", None)
    if not isinstance(inner, Mapping) or not isinstance(inner.get("category_id"), ClassLabel):
        raise ContractError(
            "column 'segments_info': 'category_id' must be a datasets.ClassLabel whose names are the classes "
            f"(got {seg!r}). Fix: build the features with segcontract.contract_features(class_names)."
        )
    return list(inner["category_id"].names)


def _isthing_from_rows(dataset: datasets.Dataset, num_classes: int) -> dict[int, bool]:
    """Per category, the ``isthing`` flag its segments carry; conflicting flags are a contract error."""
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


def _described(dataset: datasets.Dataset, names: Sequence[str], categories: Any) -> dict[str, Mapping]:
    """Category descriptions by lower-cased name, from ``categories`` or the dataset's own metadata."""
    if categories is not None:
        described = parse_categories(categories)
    else:
        described = _categories_in_text(dataset.info.description) or _classlabel_categories(dataset)
    if not described:
        return {}
    by_name = {str(c["name"]).strip().lower(): c for c in parse_categories(described)}
    unknown = sorted(set(by_name) - {n.strip().lower() for n in names})
    if unknown and categories is not None:
        raise ContractError(
            f"categories name {unknown} but the dataset's ClassLabel names are {names}. Fix: pass categories "
            "whose names match segments_info.category_id's ClassLabel names."
        )
    return by_name


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
    else from the segments' own ``isthing`` flags. A category that no source describes is stuff (a grounding model
    scores every class as stuff in semantic evaluation anyway).
    """
    names = class_names_of(dataset)
    by_name = _described(dataset, names, categories)
    missing_flag = [i for i, n in enumerate(names) if "isthing" not in by_name.get(n.strip().lower(), {})]
    from_rows = _isthing_from_rows(dataset, len(names)) if missing_flag else {}
    out = []
    for i, name in enumerate(names):
        info = by_name.get(name.strip().lower(), {})
        if "isthing" in info and info["isthing"] is not None:
            isthing = bool(info["isthing"])
        else:
            isthing = from_rows.get(i, False)
        if name.strip().lower() == background.lower() and isthing:
            warnings.warn(
                f"category {name!r} is marked as a thing; background is usually stuff.", stacklevel=2
            )
        color = info.get("color")
        out.append(Category(i, name, isthing, tuple(color) if color is not None else None))
    return out


def attach_categories(dataset: datasets.Dataset, categories: Sequence[Category]) -> datasets.Dataset:
    """A view of ``dataset`` whose ``info.description`` carries the categories as JSON.

    That is how thing/stuff flags and colours travel with a ``Dataset`` in memory (and through ``save_to_disk`` /
    ``push_to_hub``). The data is shared, not copied; other JSON keys of the description are kept.
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
