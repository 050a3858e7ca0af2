"""Load any dataset source into a contract ``datasets.Dataset``.

Accepted sources (``load_source``):

* a ``datasets.Dataset``, or a ``DatasetDict`` (the ``split`` is picked);
* a ``save_to_disk`` folder (``Dataset`` or ``DatasetDict``);
* a Hub-style local repo folder (parquet/arrow data files + ``README.md``), loaded with ``datasets.load_dataset``;
* a COCO-panoptic folder (``panoptic_<split>.json`` + PNGs + images, optional grounding JSON);
* a parquet file;
* a Hub dataset repo id (``"me/wet-damage-synthetic"``), loaded with ``datasets.load_dataset``;
* a list or tuple of any of these: mixed with :func:`seemadapt.data.mix` (categories aligned by name).

A ``categories.json`` (list of ``{id, name, isthing, color}``) beside the data, in a folder or in a Hub repo, is read
and attached, so thing/stuff flags and colours survive; without one they come from the data itself.
Image + mask folders need the class names and are converted with :func:`seemadapt.data.from_masks`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
from huggingface_hub import hf_hub_download

from seemadapt.data.coco_panoptic import from_coco_panoptic
from seemadapt.data.mixing import mix_datasets
from segcontract import ContractError, attach_categories, parse_categories, read_categories

__all__ = ["load_source", "mix"]

_CATEGORY_FILES = ("categories.json", "id2label.json")
_DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".csv")


def _pick_split(dd: datasets.DatasetDict, split: str | None, what: str) -> datasets.Dataset:
    if split is None:
        if len(dd) == 1:
            return next(iter(dd.values()))
        raise ContractError(f"{what} has splits {list(dd)}; pass split=... to pick one.")
    if split not in dd:
        raise ContractError(f"{what} has no split {split!r}; it has {list(dd)}. Pass split=... to pick one.")
    return dd[split]


def _categories_file(folder: Path) -> Path | None:
    for name in _CATEGORY_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def _hub_categories(repo_id: str, revision: str | None) -> Any:
    """categories.json from a Hub dataset repo, or None (offline, absent, or any Hub error)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return None
    try:
        path = hf_hub_download(repo_id, "categories.json", repo_type="dataset", revision=revision)
    except (
        Exception
    ):  # absent file, private repo, network: the ClassLabel + segments_info fallback still works
        return None
    return json.loads(Path(path).read_text())


def _is_hub_style(folder: Path) -> bool:
    if (folder / "README.md").is_file():
        return True
    return any(p.suffix in _DATA_SUFFIXES for p in folder.rglob("*") if p.is_file())


def _load_folder(folder: Path, split: str | None, load_kwargs: dict) -> datasets.Dataset:
    if (folder / "dataset_dict.json").is_file():
        return _pick_split(datasets.load_from_disk(str(folder)), split, str(folder))
    if (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(folder))
    s = split or "train"
    if list(folder.glob(f"panoptic_{s}*.json")) or list(folder.glob(f"annotations/panoptic_{s}*.json")):
        return from_coco_panoptic(folder, s)
    if (folder / "masks").is_dir() and (folder / "images").is_dir() and not _is_hub_style(folder):
        raise ContractError(
            f"{folder} looks like an image + mask folder; it needs class names. Fix: "
            f"seemadapt.data.from_masks('{folder / 'images'}', '{folder / 'masks'}', classes=['polyp'])."
        )
    if _is_hub_style(folder):
        loaded = datasets.load_dataset(str(folder), split=split, **load_kwargs)
        if isinstance(loaded, datasets.DatasetDict):
            return _pick_split(loaded, split, str(folder))
        return loaded
    raise ContractError(
        f"{folder} is not a dataset folder: expected a save_to_disk folder, a Hub-style repo (parquet + README.md), "
        "or a COCO-panoptic folder (panoptic_<split>.json)."
    )


def load_source(
    source: Any,
    *,
    split: str | None = "train",
    categories: Any = None,
    **load_kwargs: Any,
) -> datasets.Dataset:
    """One contract ``Dataset`` from any source (see the module docstring); categories attached.

    Args:
        source: a Dataset, DatasetDict, folder, parquet file, Hub repo id, or a list of those (mixed).
        split: which split of a DatasetDict / Hub repo / COCO folder; ``None`` takes the only split there is.
        categories: optional explicit categories (list, dicts or a ``categories.json`` path); overrides any found.
        load_kwargs: passed to ``datasets.load_dataset`` (``revision``, ``name``, ``data_dir``, ``token`` ...).

    The result is not deep-validated here (that decodes every image); :func:`seemadapt.data.register` does it
    once, and :func:`seemadapt.data.validate` does it on demand.
    """
    found: Any = None
    if isinstance(source, list | tuple):
        ds = mix(source, split=split)
    elif isinstance(source, datasets.DatasetDict):
        ds = _pick_split(source, split, "the DatasetDict")
    elif isinstance(source, datasets.Dataset):
        ds = source
    elif isinstance(source, datasets.IterableDataset | datasets.IterableDatasetDict):
        raise ContractError(
            "streaming (Iterable) datasets cannot be registered with Detectron2, which needs random access. "
            "Fix: load without streaming=True."
        )
    elif isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if path.is_dir():
            ds = _load_folder(path, split, load_kwargs)
            cat_file = _categories_file(path)
            found = parse_categories(cat_file) if cat_file else None
        elif path.is_file() and path.suffix == ".parquet":
            ds = datasets.load_dataset("parquet", data_files=str(path), split="train", **load_kwargs)
            cat_file = _categories_file(path.parent)
            found = parse_categories(cat_file) if cat_file else None
        elif isinstance(source, str) and source.count("/") == 1 and not path.exists():
            loaded = datasets.load_dataset(source, split=split, **load_kwargs)
            ds = _pick_split(loaded, split, source) if isinstance(loaded, datasets.DatasetDict) else loaded
            hub = _hub_categories(source, load_kwargs.get("revision"))
            found = parse_categories(hub) if hub is not None else None
        else:
            raise FileNotFoundError(
                f"dataset source {str(source)!r} is neither an existing folder/file nor a Hub repo id ('owner/name')."
            )
    else:
        raise TypeError(
            f"unsupported dataset source of type {type(source).__name__}; pass a datasets.Dataset, a folder, a Hub "
            "repo id, or a list of those."
        )
    if not isinstance(ds, datasets.Dataset):
        raise ContractError(
            f"source {source!r} did not load as a datasets.Dataset (got {type(ds).__name__})."
        )
    override = categories if categories is not None else found
    if override is not None:
        ds = attach_categories(ds, read_categories(ds, override))
    return ds


def describe_source(source: Any) -> str:
    """A short human name of a source, for error messages."""
    if isinstance(source, str | os.PathLike):
        return str(source)
    if isinstance(source, Sequence) and not isinstance(source, str):
        return "[" + ", ".join(describe_source(s) for s in source) + "]"
    return type(source).__name__


def mix(
    sources: Sequence[Any],
    *,
    split: str | None = "train",
    classes: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
) -> datasets.Dataset:
    """One contract ``Dataset`` from several sources (anything :func:`load_source` accepts).

    Args:
        sources: the datasets to mix, in order (rows keep this order).
        split: the split to take from each source that has several.
        classes: the final class order (names); every source class must be listed. Default: order of appearance.
        cache_dir: where remapped disk-backed sources are written (default: the seemadapt cache); in-memory
            sources stay in memory.
    """
    if isinstance(sources, str | datasets.Dataset) or not isinstance(sources, Sequence) or not sources:
        raise ValueError("mix() needs a non-empty list of sources, e.g. mix([real_ds, 'me/synthetic']).")
    labels = [f"source {i} ({describe_source(s)})" for i, s in enumerate(sources)]
    loaded = [load_source(src, split=split) for src in sources]
    return mix_datasets(loaded, labels, classes=classes, cache_dir=cache_dir)
