"""The output folder of a Ray run behind fsspec: a local folder, ``file://``, ``s3://``, ``gs://``, ``memory://``.

Only the driver writes here (the actors send it finished shard files through Ray's object store), so one writer
keeps the folder consistent. Every file is written under a hidden temporary name and then moved into place: on a
local disk the move is an atomic rename (after an fsync), on an object store the object appears whole or not at
all. The folder has the layout of :mod:`diffsynth.shards` (``manifest.json``, ``data/train-*.parquet`` with the
run fingerprint in each shard's footer), so a local one is read with :func:`diffsynth.shards.load_shards`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from diffsynth.shards.files import host_pid
from diffsynth.shards.layout import DATA_DIR, MANIFEST, MANIFEST_FORMAT, ShardLayout, ShardMismatchError
from diffsynth.shards.manifest import shard_record
from segcontract import write_category_files

__all__ = ["ShardStore"]


class ShardStore:
    """One output folder (a path or an fsspec URL; ``storage_options`` go to fsspec, e.g. credentials)."""

    def __init__(self, url: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> None:
        self.url = os.fspath(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.root = self.root.rstrip("/") or "/"

    @property
    def local_path(self) -> Path | None:
        """The folder on this machine's disk (a plain path or ``file://``), else None."""
        return Path(self.root) if isinstance(self.fs, LocalFileSystem) else None

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    # ------------------------------------------------------------------------------------------------ writing
    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write ``data`` to a hidden temporary name next to ``relative`` and move it into place."""
        final = self.path(relative)
        folder, _, name = final.rpartition("/")
        tmp = f"{folder}/.{name}.{host_pid()}.tmp"
        if self.local_path is not None:
            os.makedirs(folder, exist_ok=True)
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
            return
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, final)

    def write_json(self, relative: str, payload: Any) -> None:
        self.write_bytes(relative, (json.dumps(payload, indent=2, default=str) + "\n").encode())

    def write_categories(self, categories: list[Any]) -> None:
        """``categories.json`` and ``id2label.json``, as in every diffsynth folder."""
        with tempfile.TemporaryDirectory(prefix="diffsynth-categories-") as tmp:
            write_category_files(categories, tmp)
            for entry in sorted(Path(tmp).iterdir()):
                self.write_bytes(entry.name, entry.read_bytes())

    def remove(self, relative: str) -> None:
        if self.fs.exists(self.path(relative)):
            self.fs.rm(self.path(relative))

    def remove_temps(self) -> None:
        """Delete temporary files left by a killed driver (one driver per folder: none is being written now)."""
        for folder in ("", DATA_DIR):
            for name in self.names(folder):
                if name.startswith(".") and name.endswith(".tmp"):
                    self.remove(f"{folder}/{name}" if folder else name)

    # ------------------------------------------------------------------------------------------------ reading
    def names(self, folder: str = "") -> list[str]:
        """File and folder names directly under ``folder`` (relative to the root); [] when it does not exist."""
        path = self.path(folder) if folder else self.root
        if not self.fs.isdir(path):
            return []
        return sorted(entry.rstrip("/").rpartition("/")[2] for entry in self.fs.ls(path, detail=False))

    def read_manifest(self) -> dict[str, Any] | None:
        """The folder's manifest (None when there is none); an unreadable one is an error, as in a local run."""
        path = self.path(MANIFEST)
        if not self.fs.exists(path):
            return None
        try:
            manifest = json.loads(self.fs.cat_file(path))
        except (OSError, json.JSONDecodeError) as error:
            raise ShardMismatchError(
                f"{path} is not a readable diffsynth manifest ({error}); pick another output_dir or pass "
                "overwrite=True."
            ) from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise ShardMismatchError(
                f"{path} is not a diffsynth manifest of format {MANIFEST_FORMAT}; pick another output_dir or "
                "pass overwrite=True."
            )
        return manifest

    def finished_shard(self, layout: ShardLayout, k: int, fingerprint: str) -> dict[str, Any] | None:
        """Shard ``k``'s manifest entry if it is finished and belongs to this run; None if it must be made.

        The same test as a local run's (its footer's fingerprint, sample range and row count); an unreadable or
        short file is deleted, a shard of another run is an error."""
        relative = f"{DATA_DIR}/{layout.file_name(k)}"
        if not self.fs.exists(self.path(relative)):
            return None
        with self.fs.open(self.path(relative), "rb") as handle:
            record = shard_record(handle) or {"corrupt": True}
        start, stop = layout.bounds(k)
        if record.get("corrupt") or record.get("rows") != stop - start:
            self.remove(relative)
            return None
        if record.get("fingerprint") != fingerprint or (record.get("start"), record.get("stop")) != (
            start,
            stop,
        ):
            raise ShardMismatchError(
                f"{self.path(relative)} belongs to another run (fingerprint {record.get('fingerprint')}, samples "
                f"{record.get('start')}..{record.get('stop')}; this run {fingerprint}, samples {start}..{stop}). "
                "Use a new output_dir, or overwrite=True to discard the folder's shards."
            )
        entry = {"index": k, "file": relative, "start": start, "stop": stop, "rows": stop - start}
        if record.get("stats") is not None:
            entry["stats"] = record["stats"]
        return entry

    def shard_urls(self, layout: ShardLayout) -> list[str]:
        """Every shard's full URL, in index order (for readers such as ``datasets`` or pyarrow)."""
        return [
            self.fs.unstrip_protocol(self.path(f"{DATA_DIR}/{layout.file_name(k)}"))
            for k in range(layout.num_shards)
        ]
