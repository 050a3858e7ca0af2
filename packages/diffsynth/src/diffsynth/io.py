"""Open a dataset from wherever diffsynth (or the Hub) left it: a ``save_to_disk`` folder, a Hub-style repo
folder or shard folder of parquet files, a COCO-panoptic export, or a Hub repo id."""

from __future__ import annotations

import os
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from diffsynth.coco_reader import load_coco
from diffsynth.shards import load_shards


def load_any(source: str | os.PathLike, split: str = "train") -> Dataset:
    """The ``split`` of a dataset stored at ``source`` (folder) or on the Hub (repo id)."""
    path = Path(source)
    if path.is_dir():
        if (path / "manifest.json").is_file():
            return load_shards(path)  # checks the run is complete and restores the whole-run settings
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            loaded = load_from_disk(str(path))
            return loaded[split] if isinstance(loaded, DatasetDict) else loaded
        if any(path.glob(f"panoptic_{split}.json")):
            return load_coco(path, split=split)
        parquet = sorted(path.rglob("*.parquet"))
        if not parquet:
            raise FileNotFoundError(
                f"{str(path)!r} holds no dataset: expected a save_to_disk folder, parquet files, or a "
                f"COCO-panoptic export with panoptic_{split}.json."
            )
        if (path / "README.md").is_file():
            return load_dataset(str(path), split=split)
        return load_dataset("parquet", data_files=[str(p) for p in parquet], split="train")
    if str(source).count("/") == 1 and not path.exists():
        return load_dataset(str(source), split=split)
    raise FileNotFoundError(f"{str(source)!r} is neither a folder nor a Hub repo id (owner/name).")
