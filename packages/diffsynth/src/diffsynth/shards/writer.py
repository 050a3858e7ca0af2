"""Writing one shard: encoded rows stream into a hidden temporary parquet file, renamed when complete.

Only one row group (:data:`ROW_GROUP_ROWS` rows, or :data:`ROW_GROUP_BYTES`) is held in memory at a time.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features

from diffsynth.shards.files import fsync_dir, temp_path
from diffsynth.shards.layout import SHARD_KEY, STATS_KEY

__all__ = ["ROW_GROUP_BYTES", "ROW_GROUP_ROWS", "ShardWriter"]

#: Rows per parquet row group (datasets writes 100 for image data; fewer keeps memory low for large images).
ROW_GROUP_ROWS = 32
#: A row group is also flushed when its encoded bytes pass this.
ROW_GROUP_BYTES = 64 * 2**20


def _row_nbytes(value: Any) -> int:
    if isinstance(value, bytes | str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(_row_nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_row_nbytes(v) for v in value)
    return 8


class ShardWriter:
    """Streams encoded rows into ``.<name>.<host>-<pid>.tmp`` and atomically renames it on :meth:`commit`.

    ``record`` (the run fingerprint and sample range) goes into the schema metadata, so the finished file says
    which run and samples it holds."""

    def __init__(self, path: Path, feats: Features, record: Mapping[str, Any]) -> None:
        self.path = path
        self.tmp = temp_path(path)
        schema = feats.arrow_schema
        metadata = dict(schema.metadata or {})
        metadata[SHARD_KEY] = json.dumps(dict(record)).encode()
        self.schema = schema.with_metadata(metadata)
        self.feats = feats
        self._file = open(self.tmp, "wb")  # noqa: SIM115 - kept open across add() calls, closed in commit/abort
        self._writer = pq.ParquetWriter(self._file, self.schema)
        self._rows: list[dict[str, Any]] = []
        self._bytes = 0
        self.count = 0

    def add(self, row: dict[str, Any]) -> None:
        encoded = self.feats.encode_example(row)
        self._rows.append(encoded)
        self._bytes += _row_nbytes(encoded)
        self.count += 1
        if len(self._rows) >= ROW_GROUP_ROWS or self._bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows, self._bytes = [], 0

    def commit(self, stats: Mapping[str, Any] | None = None) -> None:
        """Finish the file (``stats``: the generator's counters over this shard, into the footer) and rename it."""
        self._flush()
        if stats is not None:
            self._writer.add_key_value_metadata({STATS_KEY: json.dumps(dict(stats))})
        self._writer.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # closing a writer that already failed
            self._writer.close()
        self._file.close()
        self.tmp.unlink(missing_ok=True)
