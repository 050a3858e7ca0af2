"""Resumable, sharded, multi-process generation into a folder of parquet shards.

Sample ``i`` is a pure function of the generation arguments and ``i`` (:mod:`diffsynth.plan`), so a run is cut
into fixed shards: shard ``k`` holds samples ``[k * shard_size, (k + 1) * shard_size)`` whatever the number of
processes, and goes to rank ``k % world_size`` (:func:`diffsynth.distributed.assigned_shards`). A folder looks
like a Hub dataset repo, so ``datasets.load_dataset(folder)`` reads it as it is::

    manifest.json                       what was asked (fingerprint, num_images, shard_size) and what is done
    categories.json, id2label.json      the category list, as in every diffsynth folder
    data/train-00003-of-00010.parquet   a finished shard (contract Features in its schema metadata)
    data/.train-00004-of-00010.parquet.<host>-<pid>.tmp   a shard being written (hidden from load_dataset)
    .cache/                             Arrow cache of the merged dataset

Nothing is lost or doubled: a shard is written to a temporary file in the same folder, fsynced and renamed
(``os.replace`` is atomic), so a shard file exists only when complete; its footer records the run fingerprint
and its sample range, so a restart checks each shard by itself and remakes only the missing ones. The manifest
(also replaced atomically) is a summary kept by the main process; the shard files are the truth.
Only one image batch and at most one row group (:data:`ROW_GROUP_ROWS` rows) are held in memory at a time.
The generator's running counters (``Generator.quality_stats``, behind e.g. the mean quality in the settings) are
counted per shard from zero and stored in the shard's footer; the merged dataset's settings use their sum, so they
do not depend on kills, resumes or the number of processes.

Several processes (``torchrun`` / ``accelerate launch``) each write their own shards; a gloo barrier (or, with
no rendezvous, the main process polling for the shard files) ends the run; then the main process merges the
shards in index order and returns the ``Dataset``, while the other ranks return ``None``.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, Features, IterableDataset, load_dataset
from tqdm.auto import tqdm

from diffsynth.dataset import categories_of, sample_to_row
from diffsynth.distributed import (
    DEFAULT_TIMEOUT,
    ProcessInfo,
    ProcessSync,
    assigned_shards,
    process_info,
)
from diffsynth.schema import features as contract_features
from diffsynth.schema import scrub_settings, segment_features
from segcontract import write_category_files

__all__ = [
    "DEFAULT_SHARD_SIZE",
    "MANIFEST",
    "ShardLayout",
    "ShardMismatchError",
    "load_shards",
    "push_shards_to_hub",
    "read_manifest",
    "run_fingerprint",
    "run_sharded",
    "settings_for",
    "stage_shards",
]

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 100
MANIFEST = "manifest.json"
DATA_DIR = "data"
CACHE_DIR = ".cache"
SPLIT = "train"
MANIFEST_FORMAT = 1
#: Rows per parquet row group (datasets writes 100 for image data; fewer keeps memory low for large images).
ROW_GROUP_ROWS = 32
#: A row group is also flushed when its encoded bytes pass this.
ROW_GROUP_BYTES = 64 * 2**20
#: Schema-metadata key of a shard's own record (fingerprint, sample range).
SHARD_KEY = b"diffsynth_shard"
#: File-metadata key of the generator's run statistics over this shard alone (e.g. quality counters).
STATS_KEY = b"diffsynth_stats"
#: GenerationConfig fields that change how a run is executed, not what it makes.
RUN_ONLY_FIELDS = ("batch_size", "device", "num_images")
RUN_ONLY_MASKER_FIELDS = ("progress", "chunk_mb")
#: Resolved settings that pin down the model when a loaded pipeline is passed (``config.model`` is then "pipeline"),
#: and the quality scorer (e.g. which CLIP model).
RESOLVED_SETTINGS = ("model", "pipeline", "scheduler", "height", "width", "resolutions", "quality")
_LONG_LIST = 64
#: Files diffsynth itself puts in an output folder (the CLI writes the resolved config before the run starts).
_KNOWN_ENTRIES = {MANIFEST, DATA_DIR, CACHE_DIR, "categories.json", "id2label.json", "generation_config.yaml"}


class ShardMismatchError(ValueError):
    """An output folder holds shards of a different run; the message names the differing fields."""


# ------------------------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class ShardLayout:
    """Fixed shard boundaries: shard ``k`` holds samples ``[k * shard_size, min((k + 1) * shard_size, n))``."""

    num_images: int
    shard_size: int = DEFAULT_SHARD_SIZE

    def __post_init__(self) -> None:
        for name in ("num_images", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ShardLayout.{name} must be an int >= 1, got {value!r}.")

    @property
    def num_shards(self) -> int:
        return -(-self.num_images // self.shard_size)

    def bounds(self, k: int) -> tuple[int, int]:
        if not 0 <= k < self.num_shards:
            raise IndexError(f"shard {k} is out of range 0..{self.num_shards - 1}.")
        return k * self.shard_size, min((k + 1) * self.shard_size, self.num_images)

    def file_name(self, k: int) -> str:
        return f"{SPLIT}-{k:05d}-of-{self.num_shards:05d}.parquet"


# ------------------------------------------------------------------------------------------------- fingerprint
def _canonical(value: Any) -> Any:
    """A JSON-able, order-stable form of a config value; long lists shrink to their length and hash."""
    from PIL import Image

    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        items = [_canonical(v) for v in value]
        if len(items) > _LONG_LIST:
            blob = json.dumps(items, sort_keys=True).encode()
            return {"items": len(items), "sha256": hashlib.sha256(blob).hexdigest()}
        return items
    if isinstance(value, Image.Image):
        digest = hashlib.sha256(value.mode.encode() + repr(value.size).encode() + value.tobytes()).hexdigest()
        return {"image_sha256": digest}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _canonical(value.tolist())
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _run_stats(generator: Any) -> dict[str, Any] | None:
    """The generator's running counters (``Generator.quality_stats``: numbers summed over drawn samples), if any."""
    stats = getattr(generator, "quality_stats", None)
    if isinstance(stats, dict) and all(isinstance(v, int | float) for v in stats.values()):
        return stats
    return None


@contextlib.contextmanager
def _stats_set_to(generator: Any, values: Mapping[str, Any] | None):
    """Temporarily replace the generator's counters by ``values`` (zeros when None)."""
    stats = _run_stats(generator)
    if stats is None:
        yield
        return
    saved = dict(stats)
    stats.update({k: (values or {}).get(k, type(v)()) for k, v in stats.items()})
    try:
        yield
    finally:
        stats.clear()
        stats.update(saved)


def _sum_stats(parts: list[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    total: dict[str, Any] | None = None
    for part in parts:
        if part:
            total = total or {}
            for k, v in part.items():
                total[k] = total.get(k, 0) + v
    return total


def settings_for(generator: Any, stats: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``generator.settings()`` as if exactly the samples counted in ``stats`` had been drawn (none by default).

    ``Generator.settings()`` reports running counters (e.g. the mean quality score) of whatever that object drew;
    a sharded run sums each shard's own counters instead, so the stored settings do not depend on kills, resumes
    or the number of processes."""
    with _stats_set_to(generator, stats):
        return generator.settings()


def run_fingerprint(generator: Any) -> tuple[str, dict[str, Any]]:
    """``(hash, fields)`` of what a run makes: the :class:`~diffsynth.generate.GenerationConfig` minus run-only
    fields (batch size, device, progress, num_images - compared on its own), plus the resolved model, pipeline,
    scheduler and sizes. Two runs with the same fingerprint make the same sample ``i``."""
    config = generator.config.to_dict()
    for name in RUN_ONLY_FIELDS:
        config.pop(name, None)
    config["masker"] = {k: v for k, v in config.get("masker", {}).items() if k not in RUN_ONLY_MASKER_FIELDS}
    settings = settings_for(generator)
    config["resolved"] = {k: settings.get(k) for k in RESOLVED_SETTINGS}
    fields = _canonical(config)
    return _digest(fields), fields


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and not ({"items", "sha256"} == set(value) or "image_sha256" in value):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out else {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): value}


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


_MISSING = object()


def _differences(
    manifest: Mapping[str, Any],
    fields: Mapping[str, Any],
    layout: ShardLayout,
    labels: tuple[str, str] = ("folder has", "now"),
) -> list[str]:
    """``"<field>: folder has <a>, now <b>"`` for every field that differs (dotted names for nested ones)."""
    was, now_label = labels
    diffs = []
    for name, now in (("num_images", layout.num_images), ("shard_size", layout.shard_size)):
        if manifest.get(name) != now:
            diffs.append(f"{name}: {was} {_short(manifest.get(name))}, {now_label} {_short(now)}")
    old, new = _flatten(manifest.get("config", {})), _flatten(dict(fields))
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, _MISSING), new.get(key, _MISSING)
        if a != b:
            shown_a = "(absent)" if a is _MISSING else _short(a)
            shown_b = "(absent)" if b is _MISSING else _short(b)
            diffs.append(f"{key}: {was} {shown_a}, {now_label} {shown_b}")
    return diffs


# ---------------------------------------------------------------------------------------------------- files
def _host_pid() -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.{_host_pid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


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


def _shard_record(path: Path) -> dict[str, Any] | None:
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


def _check_shard(
    path: Path, layout: ShardLayout, k: int, fingerprint: str, *, repair: bool = False
) -> dict[str, Any] | None:
    """The shard's manifest entry if ``path`` is finished shard ``k`` of this run; None if it must be (re)made.

    ``repair`` (only for the process that owns the shard) deletes an unreadable or short file. A shard of another
    run (different fingerprint) is an error: silently remaking it would mix two runs."""
    record = _shard_record(path)
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
    entry = {
        "index": k,
        "file": f"{DATA_DIR}/{path.name}",
        "start": start,
        "stop": stop,
        "rows": stop - start,
    }
    if record.get("stats") is not None:
        entry["stats"] = record["stats"]
    return entry


def _remove_temps(folder: Path, stem: str = "") -> None:
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith(f".{stem}") and entry.name.endswith(".tmp") and entry.is_file():
            entry.unlink(missing_ok=True)


def _row_nbytes(value: Any) -> int:
    if isinstance(value, bytes | str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(_row_nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_row_nbytes(v) for v in value)
    return 8


class _ShardWriter:
    """Streams encoded rows into ``.<name>.<host>-<pid>.tmp`` and atomically renames it on :meth:`commit`."""

    def __init__(self, path: Path, feats: Features, record: Mapping[str, Any]) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.{_host_pid()}.tmp")
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
        self._flush()
        if stats is not None:
            self._writer.add_key_value_metadata({STATS_KEY: json.dumps(dict(stats))})
        self._writer.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        with contextlib.suppress(Exception):  # closing a writer that already failed
            self._writer.close()
        self._file.close()
        self.tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------- the run
@dataclass
class _Run:
    generator: Any
    out: Path
    layout: ShardLayout
    fingerprint: str
    fields: dict[str, Any]
    settings: dict[str, Any]
    info: ProcessInfo

    @property
    def data(self) -> Path:
        return self.out / DATA_DIR

    @property
    def with_attention(self) -> bool:
        return bool(self.generator.config.with_attention)

    @property
    def with_quality(self) -> bool:
        return bool(getattr(self.generator.config, "with_quality", False))

    def features(self, settings: Mapping[str, Any] | None = None) -> Features:
        return contract_features(
            self.generator.categories,
            self.with_attention,
            settings=self.settings if settings is None else settings,
            with_quality=self.with_quality,
        )

    def row(self, sample: Any) -> dict[str, Any]:
        if self.with_quality:
            return sample_to_row(sample, with_attention=self.with_attention, with_quality=True)
        return sample_to_row(sample, with_attention=self.with_attention)

    def shard_path(self, k: int) -> Path:
        return self.data / self.layout.file_name(k)

    def manifest(self, shards: Mapping[int, dict[str, Any]], status: str) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "status": status,
            "fingerprint": self.fingerprint,
            "num_images": self.layout.num_images,
            "shard_size": self.layout.shard_size,
            "num_shards": self.layout.num_shards,
            "split": SPLIT,
            "with_attention": self.with_attention,
            "with_quality": self.with_quality,
            "world_size": self.info.world_size,
            "updated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "versions": self.settings.get("versions", {}),
            "config": self.fields,
            "shards": [shards[k] for k in sorted(shards)],
        }

    def scan(self, known: dict[int, dict[str, Any]], *, repair: bool = False) -> dict[int, dict[str, Any]]:
        """Add finished shards not yet in ``known`` (only new files' footers are read)."""
        if not self.data.is_dir():
            return known
        names = {self.layout.file_name(k): k for k in range(self.layout.num_shards)}
        for entry in os.scandir(self.data):
            k = names.get(entry.name)
            if k is not None and k not in known:
                record = _check_shard(Path(entry.path), self.layout, k, self.fingerprint, repair=repair)
                if record is not None:
                    known[k] = record
        return known


def _prepare(run: _Run, *, overwrite: bool, clean: bool) -> dict[int, dict[str, Any]]:
    """Main process, before any shard is written: check the folder, wipe it on overwrite, write the manifest."""
    out = run.out
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output_dir={str(out)!r} is a file; give a folder.")
    out.mkdir(parents=True, exist_ok=True)
    manifest = None if overwrite else read_manifest(out)
    if overwrite:
        _wipe(out)
    elif manifest is None:
        foreign = sorted(
            e.name for e in out.iterdir() if e.name not in _KNOWN_ENTRIES and not e.name.endswith(".tmp")
        )
        if foreign:
            raise FileExistsError(
                f"output_dir={str(out)!r} holds {foreign[:5]} and no diffsynth {MANIFEST}; use an empty or new "
                "folder (or overwrite=True, which removes only diffsynth's own files)."
            )
    else:
        diffs = _differences(manifest, run.fields, run.layout)
        if diffs:
            raise ShardMismatchError(
                f"output_dir={str(out)!r} holds a run with other arguments:\n  "
                + "\n  ".join(diffs)
                + "\nRe-run with the folder's arguments to resume it, use a new output_dir, or pass overwrite=True "
                "to discard its shards."
            )
        versions = manifest.get("versions", {})
        if versions and versions != run.settings.get("versions", {}):
            logger.warning(
                "diffsynth: %s was started with library versions %s, now %s; resumed shards may differ slightly.",
                out,
                versions,
                run.settings.get("versions"),
            )
    run.data.mkdir(exist_ok=True)
    if clean:  # no other process writes yet: leftovers of killed runs can go
        _remove_temps(run.data)
        _remove_temps(out)
    shards = run.scan({}, repair=clean)
    _write_json_atomic(out / MANIFEST, run.manifest(shards, "running"))
    write_category_files(run.generator.categories, out)
    return shards


def _wipe(out: Path) -> None:
    """Remove diffsynth's own files from ``out`` (shards, temporary files, manifest, cache); nothing else."""
    data = out / DATA_DIR
    if data.is_dir():
        for entry in data.iterdir():
            if entry.is_file() and (entry.name.endswith(".parquet") or entry.name.endswith(".tmp")):
                entry.unlink()
    _remove_temps(out)
    (out / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(out / CACHE_DIR, ignore_errors=True)


def _check_as_worker(run: _Run) -> None:
    """A non-main process without a group: refuse a folder of another run (the main process does the rest)."""
    manifest = read_manifest(run.out)
    if manifest is not None:
        diffs = _differences(manifest, run.fields, run.layout)
        if diffs:
            raise ShardMismatchError(
                f"output_dir={str(run.out)!r} holds a run with other arguments:\n  " + "\n  ".join(diffs)
            )
    run.data.mkdir(parents=True, exist_ok=True)


def _make_shards(run: _Run, finished: dict[int, dict[str, Any]]) -> int:
    """Write this process's missing shards; returns the number of samples made."""
    generator, layout = run.generator, run.layout
    todo = []
    for k in assigned_shards(layout.num_shards, run.info):
        path = run.shard_path(k)
        _remove_temps(run.data, path.name)  # leftovers of a killed writer of this shard (we own it)
        record = finished.get(k) or _check_shard(path, layout, k, run.fingerprint, repair=True)
        if record is None:
            todo.append(k)
        else:
            finished[k] = record
    total = sum(layout.bounds(k)[1] - layout.bounds(k)[0] for k in todo)
    if not todo:
        return 0
    feats = run.features()
    desc = f"diffsynth rank {run.info.rank}/{run.info.world_size}" if run.info.is_distributed else "diffsynth"
    made = 0
    with tqdm(total=total, desc=desc, unit="img", disable=not getattr(generator, "progress", True)) as bar:
        for k in todo:
            start, stop = layout.bounds(k)
            record = {"fingerprint": run.fingerprint, "index": k, "start": start, "stop": stop}
            writer = _ShardWriter(run.shard_path(k), feats, record)
            counters = _run_stats(generator)
            before = dict(counters) if counters is not None else None
            try:
                if counters is not None:  # count this shard alone, from zero, in index order
                    counters.update({key: type(v)() for key, v in counters.items()})
                for batch in generator.batches(generator.plans[start:stop]):
                    for sample in generator.make_samples(batch):
                        writer.add(run.row(sample))
                    bar.update(len(batch))
                    made += len(batch)
                if writer.count != stop - start:
                    raise RuntimeError(f"shard {k} got {writer.count} rows for samples {start}..{stop}.")
                writer.commit(dict(counters) if counters is not None else None)
            except BaseException:
                writer.abort()
                raise
            finally:
                if counters is not None and before is not None:  # the generator keeps counting all it drew
                    counters.update({key: before[key] + counters.get(key, 0) for key in before})
            entry = _check_shard(run.shard_path(k), layout, k, run.fingerprint)
            if entry is None:
                raise RuntimeError(f"shard {run.shard_path(k)} did not read back after writing.")
            finished[k] = entry
            if run.info.is_main:
                _write_json_atomic(run.out / MANIFEST, run.manifest(run.scan(finished), "running"))
    return made


def _wait_for_shards(run: _Run, finished: dict[int, dict[str, Any]], timeout: datetime.timedelta) -> None:
    """Main process without a group: poll until every shard file is there (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout.total_seconds()
    delay = 0.5
    while True:
        run.scan(finished)
        missing = [k for k in range(run.layout.num_shards) if k not in finished]
        if not missing:
            return
        if time.monotonic() > deadline:
            ranks = sorted({k % run.info.world_size for k in missing})
            raise TimeoutError(
                f"{len(missing)} shard(s) of {run.out} are still missing after {timeout}: shards {missing[:10]} "
                f"of ranks {ranks[:10]}. "
                "Start the missing ranks with the same arguments, or load the folder later with "
                "diffsynth.shards.load_shards."
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 30.0)


def _repo_kwargs(push_to_hub: Any) -> dict[str, Any] | None:
    if push_to_hub is None or push_to_hub is False:
        return None
    kwargs = {"repo_id": push_to_hub} if isinstance(push_to_hub, str) else dict(push_to_hub)
    repo_id = kwargs.get("repo_id")
    if not isinstance(repo_id, str) or repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise ValueError(
            f"push_to_hub needs a repo id like 'user/name' (or a dict with 'repo_id'), got {repo_id!r}."
        )
    return kwargs


def run_sharded(
    generator: Any,
    output_dir: str | os.PathLike,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    push_to_hub: str | Mapping[str, Any] | None = None,
    overwrite: bool = False,
    streaming: bool = False,
    process: ProcessInfo | None = None,
    timeout: datetime.timedelta | float = DEFAULT_TIMEOUT,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset | IterableDataset | None:
    """Make ``generator``'s samples into parquet shards under ``output_dir`` and return them as one dataset.

    Resumes a folder of the same run (same arguments; ``batch_size``/``device`` may change, and so may the number
    of processes): finished shards are kept, only missing samples are made. A folder of another run is an error
    naming the differing fields unless ``overwrite=True`` (which discards diffsynth's files there).

    Under torchrun / ``accelerate launch`` every process calls this with the same arguments; shard ``k`` is made by
    rank ``k % world_size``. The main process returns the merged dataset (rows ordered by ``image_id``), the
    others return ``None``. ``streaming=True`` returns an ``IterableDataset`` over the shards (no Arrow copy);
    ``push_to_hub="user/name"`` (or a dict of :func:`push_shards_to_hub` arguments) uploads from the shards.
    ``process`` overrides the detected rank (e.g. one task of a Slurm array); ``timeout`` bounds the final wait.
    """
    info = process or process_info()
    layout = ShardLayout(int(generator.config.num_images), shard_size)
    if len(generator.plans) != layout.num_images:
        raise ValueError(f"generator has {len(generator.plans)} plans for num_images={layout.num_images}.")
    repo = _repo_kwargs(push_to_hub)
    if not isinstance(timeout, datetime.timedelta):
        timeout = datetime.timedelta(seconds=float(timeout))
    fingerprint, fields = run_fingerprint(generator)
    run = _Run(generator, Path(output_dir), layout, fingerprint, fields, settings_for(generator), info)

    sync = ProcessSync(info, timeout)
    grouped = sync.active
    try:
        if grouped:
            prints = sync.gather((fingerprint, layout.num_images, layout.shard_size))
            if len(set(prints)) > 1:  # a rank-dependent argument: the processes would make different datasets
                configs = sync.gather(fields)
                other = next(r for r, p in enumerate(prints) if p != prints[0])
                old = {"config": configs[0], "num_images": prints[0][1], "shard_size": prints[0][2]}
                theirs = ShardLayout(prints[other][1], prints[other][2])
                diffs = _differences(old, configs[other], theirs, ("rank 0 has", f"rank {other} has"))
                raise ShardMismatchError(
                    f"rank {other} was started with other arguments than rank 0:\n  " + "\n  ".join(diffs)
                )
        if info.is_distributed and not grouped and overwrite:
            raise ValueError(
                "overwrite=True with several processes needs a process group (torchrun / accelerate launch set "
                "one up); without one, clear the output folder first."
            )
        finished: dict[int, dict[str, Any]] = {}
        error: BaseException | None = None
        if info.is_main:
            try:
                finished = _prepare(run, overwrite=overwrite, clean=grouped or not info.is_distributed)
            except Exception as caught:
                error = caught
        if grouped:
            message = sync.broadcast(None if error is None else f"{type(error).__name__}: {error}")
            if error is not None:
                raise error
            if message is not None:
                raise RuntimeError(f"rank 0 could not prepare output_dir={str(run.out)!r}: {message}")
        elif error is not None:
            raise error
        elif not info.is_main:
            _check_as_worker(run)
        made = _make_shards(run, finished)
        logger.info("diffsynth: rank %d made %d samples in %s.", info.rank, made, run.out)
        sync.barrier()
    finally:
        sync.close()
    if not info.is_main:
        return None
    if info.is_distributed and not grouped:
        _wait_for_shards(run, finished, timeout)
    run.scan(finished)
    missing = [k for k in range(layout.num_shards) if k not in finished]
    if missing:
        raise RuntimeError(f"shards {missing[:10]} of {run.out} are missing after every process finished.")
    _remove_temps(run.data)
    _remove_temps(run.out)
    totals = _sum_stats([finished[k].get("stats") for k in range(layout.num_shards)])
    manifest = run.manifest(finished, "complete")
    manifest["settings"] = scrub_settings(settings_for(generator, totals))
    _write_json_atomic(run.out / MANIFEST, manifest)
    result = load_shards(run.out, streaming=streaming, cache_dir=cache_dir)
    if repo is not None:
        merged = result if isinstance(result, Dataset) else load_shards(run.out, cache_dir=cache_dir)
        push_shards_to_hub(run.out, dataset=merged, **repo)
    return result


# ------------------------------------------------------------------------------------------------- read back
def _complete_files(output_dir: Path) -> tuple[dict[str, Any], list[str]]:
    manifest = read_manifest(output_dir)
    if manifest is None:
        raise FileNotFoundError(f"{output_dir} has no {MANIFEST}; it is not a diffsynth output folder.")
    layout = ShardLayout(int(manifest["num_images"]), int(manifest["shard_size"]))
    files, missing = [], []
    for k in range(layout.num_shards):
        path = output_dir / DATA_DIR / layout.file_name(k)
        if _check_shard(path, layout, k, manifest["fingerprint"]) is None:
            missing.append(k)
        files.append(str(path))
    if missing:
        raise FileNotFoundError(
            f"{output_dir} is incomplete: shards {missing[:10]} ({len(missing)} of {layout.num_shards}) are "
            "missing. Run the generation again with the same arguments to finish it."
        )
    return manifest, files


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
    manifest, files = _complete_files(out)
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


# ------------------------------------------------------------------------------------------------------- hub
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
    from diffsynth.health import health_report
    from diffsynth.hub import MAX_SHARD_BYTES, dataset_card
    from diffsynth.preview import preview_grid

    if not re.fullmatch(r"[A-Za-z0-9_]+", split):
        raise ValueError(f"split={split!r} must use letters, digits and '_' only (the Hub's split names).")
    out = Path(output_dir)
    _, files = _complete_files(out)
    ds = dataset if dataset is not None else load_shards(out)
    folder = Path(folder)
    data_dir = folder / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for stale in data_dir.glob(f"{split}-*.parquet"):
        stale.unlink()
    _repack(files, data_dir, split, max_shard_bytes or MAX_SHARD_BYTES, ds.features)
    write_category_files(categories_of(ds), folder)
    reports = {split: health_report(ds)}
    (folder / "health.json").write_text(json.dumps(reports, indent=2) + "\n", encoding="utf-8")
    preview = None
    if preview_rows > 0 and len(ds):
        preview_grid(ds, n=preview_rows).save(folder / "preview.png", format="PNG")
        preview = "preview.png"
    card = dataset_card({split: ds}, split=split, health=reports, preview=preview, pretty_name=pretty_name)
    (folder / "README.md").write_text(str(card), encoding="utf-8")
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
    from diffsynth.hub import upload_staged

    _repo_kwargs({"repo_id": repo_id})
    with tempfile.TemporaryDirectory(prefix="diffsynth-hub-") as tmp:
        stage_shards(
            output_dir,
            tmp,
            dataset=dataset,
            split=split,
            max_shard_bytes=max_shard_bytes,
            pretty_name=pretty_name,
        )
        return upload_staged(
            tmp,
            repo_id,
            token=token,
            private=private,
            commit_message=commit_message,
            revision=revision,
            splits=[split],
        )
