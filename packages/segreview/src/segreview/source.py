"""Opening a contract dataset from wherever it is: a folder (``save_to_disk``, parquet, COCO export), a shard
folder still being written, or a Hub id."""

from __future__ import annotations

from pathlib import Path

import datasets

from diffsynth import load_any
from segreview.paths import Roots

__all__ = ["is_hub_id", "open_dataset"]


def is_hub_id(text: str) -> bool:
    """``owner/name`` (optionally ``owner/name@revision``) that is not a path."""
    name = text.split("@", 1)[0]
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and all(name.split("/"))


def _finished_shards(folder: Path) -> datasets.Dataset:
    """The shards a running generation has finished so far (its temporary files start with a dot)."""
    files = sorted(
        str(p)
        for p in folder.rglob("*.parquet")
        if not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise FileNotFoundError(f"{folder}: no finished shard yet; try again when the first one is written.")
    return datasets.load_dataset("parquet", data_files=files, split="train")


def open_dataset(source: str, roots: Roots | None = None, split: str = "train") -> datasets.Dataset:
    """The dataset at ``source``: a local path (confined to ``roots`` when given) or a Hub id."""
    text = str(source).strip()
    if not text:
        raise ValueError("Type a dataset folder or a Hub id (owner/name).")
    local = Path(text).expanduser()
    if roots is not None and (local.is_absolute() or not is_hub_id(text)):
        local = roots.resolve(local)
    if local.exists():
        try:
            return load_any(local, split=split)
        except FileNotFoundError:
            if (local / "manifest.json").is_file():
                return _finished_shards(local)
            raise
    if is_hub_id(text):
        name, _, revision = text.partition("@")
        return datasets.load_dataset(name, split=split, revision=revision or None)
    raise FileNotFoundError(f"{text!r} is neither an existing folder nor a Hub id (owner/name).")
