"""A complete output folder to the Hub: its shards' row groups repacked into Hub-sized parquet files (one row group
in memory at a time, so the images are never all in memory), staged as a repo and uploaded in one commit."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from datasets import Dataset, Features

from diffsynth.hub import MAX_SHARD_BYTES, is_repo_id, stage_and_upload, write_repo_files
from diffsynth.shards.layout import SPLIT
from diffsynth.shards.manifest import complete_files
from diffsynth.shards.reader import load_shards

__all__ = ["push_shards_to_hub", "repo_kwargs", "stage_shards"]


def repo_kwargs(push_to_hub: Any) -> dict[str, Any] | None:
    """:func:`push_shards_to_hub` arguments from ``run_sharded``'s ``push_to_hub`` (a repo id or a dict), or None."""
    if push_to_hub is None or push_to_hub is False:
        return None
    kwargs = {"repo_id": push_to_hub} if isinstance(push_to_hub, str) else dict(push_to_hub)
    repo_id = kwargs.get("repo_id")
    if not is_repo_id(repo_id):
        raise ValueError(
            f"push_to_hub needs a repo id like 'user/name' (or a dict with 'repo_id'), got {repo_id!r}."
        )
    return kwargs


def _repack(
    files: list[str], data_dir: Path, split: str, max_shard_bytes: int, feats: Features
) -> list[Path]:
    """Copy the shards' row groups, in order, into ``<split>-NNNNN-of-MMMMM.parquet`` files of about
    ``max_shard_bytes`` (one row group in memory at a time), with the whole run's Features in their schema and
    without our per-shard records."""
    metadata = dict(feats.arrow_schema.metadata or {})
    schema = pq.read_schema(files[0]).with_metadata(metadata)
    parts: list[Path] = []
    writer = None
    written = 0

    def open_part() -> pq.ParquetWriter:
        parts.append(data_dir / f".part-{len(parts):05d}.parquet")
        return pq.ParquetWriter(parts[-1], schema)

    for file in files:
        handle = pq.ParquetFile(file)
        for group in range(handle.num_row_groups):
            table = handle.read_row_group(group).replace_schema_metadata(metadata)
            if writer is None or (written and written + table.nbytes > max_shard_bytes):
                if writer is not None:
                    writer.close()
                writer, written = open_part(), 0
            writer.write_table(table)
            written += table.nbytes
        handle.close()
    if writer is not None:
        writer.close()
    final = []
    for index, part in enumerate(parts):
        target = data_dir / f"{split}-{index:05d}-of-{len(parts):05d}.parquet"
        os.replace(part, target)
        final.append(target)
    return final


def stage_shards(
    output_dir: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    dataset: Dataset | None = None,
    split: str = SPLIT,
    max_shard_bytes: int | None = None,
    preview_rows: int = 8,
    pretty_name: str | None = None,
) -> Path:
    """Write a Hub-style repo (card, ``data/<split>-*.parquet``, category files, health, preview) into ``folder``
    from a complete output folder, streaming row groups: the images are never all in memory.

    ``dataset``: the merged dataset if you have it (else it is loaded memory-mapped) for the card's statistics.
    """
    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise ValueError(f"split={split!r} must use letters, digits and '_' only (the Hub's split names).")
    out = Path(output_dir)
    _, files = complete_files(out)
    ds = dataset if dataset is not None else load_shards(out)
    folder = Path(folder)
    data_dir = folder / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.glob(f"{split}-*.parquet"):
        stale.unlink()
    _repack(files, data_dir, split, max_shard_bytes or MAX_SHARD_BYTES, ds.features)
    write_repo_files(folder, {split: ds}, preview_rows=preview_rows, pretty_name=pretty_name)
    return folder


def push_shards_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    *,
    dataset: Dataset | None = None,
    split: str = SPLIT,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload dataset with diffsynth",
    revision: str | None = None,
    pretty_name: str | None = None,
    max_shard_bytes: int | None = None,
) -> Any:
    """Stage a complete output folder (:func:`stage_shards`) and upload it to dataset repo ``repo_id`` in one
    commit (old ``data/<split>-*`` files are deleted in the same commit). Returns the ``CommitInfo``.

    ``token`` goes to ``HfApi`` only (default: the saved login / ``HF_TOKEN``); it is never logged or written."""
    repo_kwargs({"repo_id": repo_id})
    return stage_and_upload(
        lambda tmp: stage_shards(
            output_dir,
            tmp,
            dataset=dataset,
            split=split,
            max_shard_bytes=max_shard_bytes,
            pretty_name=pretty_name,
        ),
        repo_id,
        token=token,
        private=private,
        commit_message=commit_message,
        revision=revision,
        splits=[split],
    )
