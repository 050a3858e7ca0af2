"""An output folder's manifest and the check of each finished shard against it.

The manifest (replaced atomically) is a summary kept by the main process; the shard files are the truth: each
shard's footer records the run fingerprint and its sample range, so every shard is checked by itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from diffsynth.shards.layout import (
    DATA_DIR,
    MANIFEST,
    MANIFEST_FORMAT,
    SHARD_KEY,
    STATS_KEY,
    ShardLayout,
    ShardMismatchError,
)

__all__ = [
    "check_shard",
    "complete_files",
    "file_sha256",
    "manifest_checksums",
    "read_manifest",
    "shard_record",
]

logger = logging.getLogger(__name__)


def manifest_checksums(manifest: dict[str, Any] | None) -> dict[int, str]:
    """``shard index -> SHA-256`` recorded in a manifest (empty for folders written before checksums)."""
    entries = (manifest or {}).get("shards") or []
    return {int(e["index"]): str(e["sha256"]) for e in entries if isinstance(e, dict) and "sha256" in e}


def read_manifest(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of ``output_dir`` (None when there is none)."""
    path = Path(output_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ShardMismatchError(
            f"{path} is not a readable diffsynth manifest ({error}); delete the folder or pass overwrite=True."
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ShardMismatchError(
            f"{path} is not a diffsynth manifest of format {MANIFEST_FORMAT}; pick another output_dir or pass "
            "overwrite=True."
        )
    return manifest


def shard_record(path: Path) -> dict[str, Any] | None:
    """A finished shard's own record (its footer), or None when the file is missing or unreadable."""
    try:
        meta = pq.read_metadata(path)
    except FileNotFoundError:
        return None
    except (OSError, pa.ArrowException):
        return {"corrupt": True}
    metadata = meta.metadata or {}
    try:
        record = json.loads(metadata[SHARD_KEY]) if SHARD_KEY in metadata else {}
        stats = json.loads(metadata[STATS_KEY]) if STATS_KEY in metadata else None
    except json.JSONDecodeError:
        record, stats = {}, None
    record["rows"] = meta.num_rows
    record["stats"] = stats
    return record


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (the content checksum a shard's manifest entry keeps)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


def check_shard(
    path: Path,
    layout: ShardLayout,
    k: int,
    fingerprint: str,
    *,
    repair: bool = False,
    expected_sha256: str | None = None,
) -> dict[str, Any] | None:
    """The shard's manifest entry if ``path`` is finished shard ``k`` of this run; None if it must be (re)made.

    ``repair`` (only for the process that owns the shard) deletes an unreadable or short file, and one whose bytes
    no longer match ``expected_sha256`` (the manifest's checksum: a flipped bit in the image data leaves the
    parquet file readable). A shard of another run (different fingerprint) is an error: silently remaking it would
    mix two runs."""
    record = shard_record(path)
    if record is None:
        return None
    start, stop = layout.bounds(k)
    if record.get("corrupt") or record.get("rows") != stop - start:
        if repair:
            logger.warning("diffsynth: %s is unreadable or incomplete; it will be made again.", path)
            path.unlink(missing_ok=True)
        return None
    if record.get("fingerprint") != fingerprint or (record.get("start"), record.get("stop")) != (start, stop):
        raise ShardMismatchError(
            f"{path} belongs to another run (fingerprint {record.get('fingerprint')}, samples "
            f"{record.get('start')}..{record.get('stop')}; this run {fingerprint}, samples {start}..{stop}). "
            "Use a new output_dir, or overwrite=True to discard the folder's shards."
        )
    digest = file_sha256(path)
    if expected_sha256 is not None and digest != expected_sha256:
        if repair:
            logger.warning(
                "diffsynth: %s changed since it was written (checksum); it will be made again.", path
            )
            path.unlink(missing_ok=True)
        return None
    entry = {
        "index": k,
        "file": f"{DATA_DIR}/{path.name}",
        "start": start,
        "stop": stop,
        "rows": stop - start,
        "sha256": digest,
    }
    if record.get("stats") is not None:
        entry["stats"] = record["stats"]
    return entry


def complete_files(output_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """``(manifest, shard paths in index order)`` of a complete output folder; names the missing shards if not."""
    manifest = read_manifest(output_dir)
    if manifest is None:
        raise FileNotFoundError(f"{output_dir} has no {MANIFEST}; it is not a diffsynth output folder.")
    layout = ShardLayout(int(manifest["num_images"]), int(manifest["shard_size"]))
    sums = manifest_checksums(manifest)
    files, missing = [], []
    for k in range(layout.num_shards):
        path = output_dir / DATA_DIR / layout.file_name(k)
        entry = check_shard(path, layout, k, manifest["fingerprint"])
        if entry is None:
            missing.append(k)
        elif k in sums and entry["sha256"] != sums[k]:
            raise ShardMismatchError(
                f"{path} changed since it was written (its SHA-256 differs from {MANIFEST}); it is damaged. Delete "
                "it and run the generation again with the same arguments to remake it."
            )
        files.append(str(path))
    if missing:
        raise FileNotFoundError(
            f"{output_dir} is incomplete: shards {missing[:10]} ({len(missing)} of {layout.num_shards}) are "
            "missing. Run the generation again with the same arguments to finish it."
        )
    return manifest, files
