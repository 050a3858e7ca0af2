"""Reading a complete output folder back as one dataset, shards merged in index order."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
from datasets import Dataset, Features, IterableDataset, load_dataset

from diffsynth.dataset import categories_of
from diffsynth.schema import segment_features
from diffsynth.shards.layout import CACHE_DIR, SPLIT
from diffsynth.shards.manifest import complete_files

__all__ = ["load_shards"]


def load_shards(
    output_dir: str | os.PathLike,
    *,
    streaming: bool = False,
    cache_dir: str | os.PathLike | None = None,
    features: Features | None = None,
) -> Dataset | IterableDataset:
    """The dataset of a complete output folder, shards in index order (``image_id`` 0..n-1).

    ``streaming=False``: a memory-mapped ``Dataset`` (an Arrow copy goes to ``cache_dir``, default
    ``output_dir/.cache``). ``streaming=True``: an ``IterableDataset`` reading the parquet shards lazily.
    Categories and settings ride in the Features (:func:`~diffsynth.dataset.categories_of`).
    """
    out = Path(output_dir)
    manifest, files = complete_files(out)
    if features is None:
        features = Features.from_arrow_schema(pq.read_schema(files[0]))
        if "settings" in manifest:  # the whole run's settings (the shards carry those known at their start)
            features["segments_info"] = segment_features(categories_of(features), manifest["settings"])
    if streaming:
        return load_dataset(
            "parquet", data_files={SPLIT: files}, split=SPLIT, streaming=True, features=features
        )
    cache = os.fspath(cache_dir) if cache_dir is not None else os.fspath(out / CACHE_DIR)
    ds = load_dataset("parquet", data_files={SPLIT: files}, split=SPLIT, features=features, cache_dir=cache)
    n = int(manifest["num_images"])
    ids = ds.data.column("image_id").to_pylist()
    if ids != list(range(n)):
        raise RuntimeError(
            f"{out}: merged rows have image ids {ids[:5]}... (expected 0..{n - 1}); shards are damaged."
        )
    return ds
