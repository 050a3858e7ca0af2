"""One sharded run: prepare the output folder, make this process's missing shards, and merge them at the end.

Shard ``k`` goes to rank ``k % world_size`` (:func:`diffsynth.distributed.assigned_shards`). A gloo barrier (or,
with no rendezvous, the main process polling for the shard files) ends the run; then the main process merges the
shards in index order and returns the ``Dataset``, while the other ranks return ``None``.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, IterableDataset
from tqdm.auto import tqdm

from diffsynth.dataset import sample_to_row
from diffsynth.distributed import (
    DEFAULT_TIMEOUT,
    ProcessInfo,
    ProcessSync,
    assigned_shards,
    process_info,
)
from diffsynth.errors import HubAccessError
from diffsynth.hub import check_push_access
from diffsynth.schema import features as contract_features
from diffsynth.schema import scrub_settings
from diffsynth.shards.files import remove_temps, write_json_atomic
from diffsynth.shards.fingerprint import differences, run_fingerprint, run_stats, settings_for, sum_stats
from diffsynth.shards.layout import (
    CACHE_DIR,
    DATA_DIR,
    DEFAULT_SHARD_SIZE,
    MANIFEST,
    MANIFEST_FORMAT,
    SPLIT,
    ShardLayout,
    ShardMismatchError,
)
from diffsynth.shards.manifest import check_shard, manifest_checksums, read_manifest
from diffsynth.shards.reader import load_shards
from diffsynth.shards.upload import push_shards_to_hub, repo_kwargs
from diffsynth.shards.writer import ShardWriter
from segcontract import check_output_dir, output_write_error, write_category_files

__all__ = ["run_sharded"]

logger = logging.getLogger(__name__)

#: Files diffsynth itself puts in an output folder (the CLI writes the resolved config before the run starts).
_KNOWN_ENTRIES = {MANIFEST, DATA_DIR, CACHE_DIR, "categories.json", "id2label.json", "generation_config.yaml"}


@dataclass
class _Run:
    generator: Any
    out: Path
    layout: ShardLayout
    fingerprint: str
    fields: dict[str, Any]
    settings: dict[str, Any]
    info: ProcessInfo
    #: shard index -> SHA-256 from the folder's manifest, checked when a finished shard is first looked at.
    checksums: dict[int, str] = field(default_factory=dict)

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
                record = check_shard(
                    Path(entry.path),
                    self.layout,
                    k,
                    self.fingerprint,
                    repair=repair,
                    expected_sha256=self.checksums.get(k),
                )
                if record is not None:
                    known[k] = record
        return known


# ------------------------------------------------------------------------------------------------ the folder
def _check_folder(run: _Run, manifest: dict[str, Any] | None) -> None:
    """Refuse a folder that holds other files or a run with other arguments; warn about other library versions."""
    out = run.out
    if manifest is None:
        foreign = sorted(
            e.name for e in out.iterdir() if e.name not in _KNOWN_ENTRIES and not e.name.endswith(".tmp")
        )
        if foreign:
            raise FileExistsError(
                f"output_dir={str(out)!r} holds {foreign[:5]} and no diffsynth {MANIFEST}; use an empty or new "
                "folder (or overwrite=True, which removes only diffsynth's own files)."
            )
        return
    diffs = differences(manifest, run.fields, run.layout)
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


def _prepare(run: _Run, *, overwrite: bool, clean: bool) -> dict[int, dict[str, Any]]:
    """Main process, before any shard is written: check the folder, wipe it on overwrite, write the manifest."""
    out = run.out
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output_dir={str(out)!r} is a file; give a folder.")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        _wipe(out)
    else:
        manifest = read_manifest(out)
        _check_folder(run, manifest)
        run.checksums = manifest_checksums(manifest)
    run.data.mkdir(exist_ok=True)
    if clean:  # no other process writes yet: leftovers of killed runs can go
        remove_temps(run.data)
        remove_temps(out)
    shards = run.scan({}, repair=clean)
    write_json_atomic(out / MANIFEST, run.manifest(shards, "running"))
    write_category_files(run.generator.categories, out)
    return shards


def _wipe(out: Path) -> None:
    """Remove diffsynth's own files from ``out`` (shards, temporary files, manifest, cache); nothing else."""
    data = out / DATA_DIR
    if data.is_dir():
        for entry in data.iterdir():
            if entry.is_file() and (entry.name.endswith(".parquet") or entry.name.endswith(".tmp")):
                entry.unlink()
    remove_temps(out)
    (out / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(out / CACHE_DIR, ignore_errors=True)


def _check_as_worker(run: _Run) -> None:
    """A non-main process without a group: refuse a folder of another run (the main process does the rest)."""
    manifest = read_manifest(run.out)
    run.checksums = manifest_checksums(manifest)
    if manifest is not None:
        diffs = differences(manifest, run.fields, run.layout)
        if diffs:
            raise ShardMismatchError(
                f"output_dir={str(run.out)!r} holds a run with other arguments:\n  " + "\n  ".join(diffs)
            )
    run.data.mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------------------------------------ the shards
def _missing_shards(run: _Run, finished: dict[int, dict[str, Any]]) -> list[int]:
    """This process's shards that are not finished yet (finished ones found on disk are added to ``finished``)."""
    todo = []
    for k in assigned_shards(run.layout.num_shards, run.info):
        path = run.shard_path(k)
        remove_temps(run.data, path.name)  # leftovers of a killed writer of this shard (we own it)
        record = finished.get(k) or check_shard(
            path, run.layout, k, run.fingerprint, repair=True, expected_sha256=run.checksums.get(k)
        )
        if record is None:
            todo.append(k)
        else:
            finished[k] = record
    run.checksums = {}  # checked once: shards made from here on are new files
    return todo


def _write_shard(run: _Run, k: int, feats: Features, bar: tqdm) -> int:
    """Make shard ``k`` (its samples in index order, the generator's counters from zero); returns its samples."""
    generator = run.generator
    start, stop = run.layout.bounds(k)
    record = {"fingerprint": run.fingerprint, "index": k, "start": start, "stop": stop}
    writer = ShardWriter(run.shard_path(k), feats, record)
    counters = run_stats(generator)
    before = dict(counters) if counters is not None else None
    made = 0
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
    return made


def _make_shards(run: _Run, finished: dict[int, dict[str, Any]]) -> int:
    """Write this process's missing shards; returns the number of samples made."""
    layout = run.layout
    todo = _missing_shards(run, finished)
    total = sum(layout.bounds(k)[1] - layout.bounds(k)[0] for k in todo)
    if not todo:
        return 0
    feats = run.features()
    desc = f"diffsynth rank {run.info.rank}/{run.info.world_size}" if run.info.is_distributed else "diffsynth"
    made = 0
    progress = getattr(run.generator, "progress", True)
    with tqdm(total=total, desc=desc, unit="img", disable=not progress) as bar:
        for k in todo:
            made += _write_shard(run, k, feats, bar)
            entry = check_shard(run.shard_path(k), layout, k, run.fingerprint)
            if entry is None:
                raise RuntimeError(f"shard {run.shard_path(k)} did not read back after writing.")
            finished[k] = entry
            if run.info.is_main:
                write_json_atomic(run.out / MANIFEST, run.manifest(run.scan(finished), "running"))
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


# ------------------------------------------------------------------------------------------------- the run
def _check_ranks_agree(
    sync: ProcessSync, fingerprint: str, fields: dict[str, Any], layout: ShardLayout
) -> None:
    """Refuse a rank-dependent argument: the processes would make different datasets."""
    prints = sync.gather((fingerprint, layout.num_images, layout.shard_size))
    if len(set(prints)) > 1:
        configs = sync.gather(fields)
        other = next(r for r, p in enumerate(prints) if p != prints[0])
        old = {"config": configs[0], "num_images": prints[0][1], "shard_size": prints[0][2]}
        theirs = ShardLayout(prints[other][1], prints[other][2])
        diffs = differences(old, configs[other], theirs, ("rank 0 has", f"rank {other} has"))
        raise ShardMismatchError(
            f"rank {other} was started with other arguments than rank 0:\n  " + "\n  ".join(diffs)
        )


def _prepare_all(run: _Run, sync: ProcessSync, *, overwrite: bool) -> dict[int, dict[str, Any]]:
    """The main process prepares the folder; with a group, its error (if any) stops every rank."""
    info, grouped = run.info, sync.active
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
    return finished


def _make_all(
    run: _Run, *, overwrite: bool, timeout: datetime.timedelta
) -> tuple[dict[int, dict[str, Any]], bool]:
    """Every rank: agree, prepare, make its shards and meet at the barrier; returns (finished shards, grouped)."""
    info = run.info
    sync = ProcessSync(info, timeout)
    grouped = sync.active
    try:
        if grouped:
            _check_ranks_agree(sync, run.fingerprint, run.fields, run.layout)
        if info.is_distributed and not grouped and overwrite:
            raise ValueError(
                "overwrite=True with several processes needs a process group (torchrun / accelerate launch set "
                "one up); without one, clear the output folder first."
            )
        finished = _prepare_all(run, sync, overwrite=overwrite)
        made = _make_shards(run, finished)
        logger.info("diffsynth: rank %d made %d samples in %s.", info.rank, made, run.out)
        sync.barrier()
    finally:
        sync.close()
    return finished, grouped


def _finish(run: _Run, finished: dict[int, dict[str, Any]]) -> None:
    """Main process: check that every shard is there, tidy up and write the complete manifest."""
    layout = run.layout
    run.scan(finished)
    missing = [k for k in range(layout.num_shards) if k not in finished]
    if missing:
        raise RuntimeError(f"shards {missing[:10]} of {run.out} are missing after every process finished.")
    remove_temps(run.data)
    remove_temps(run.out)
    totals = sum_stats([finished[k].get("stats") for k in range(layout.num_shards)])
    manifest = run.manifest(finished, "complete")
    manifest["settings"] = scrub_settings(settings_for(run.generator, totals))
    write_json_atomic(run.out / MANIFEST, manifest)


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
    repo = repo_kwargs(push_to_hub)
    if repo is not None and info.is_main:  # before any image is drawn
        check_push_access(repo["repo_id"], repo.get("token"))
    if not isinstance(timeout, datetime.timedelta):
        timeout = datetime.timedelta(seconds=float(timeout))
    fingerprint, fields = run_fingerprint(generator)
    check_output_dir(output_dir, "output_dir")
    run = _Run(generator, Path(output_dir), layout, fingerprint, fields, settings_for(generator), info)
    try:
        finished, grouped = _make_all(run, overwrite=overwrite, timeout=timeout)
        if not info.is_main:
            return None
        if info.is_distributed and not grouped:
            _wait_for_shards(run, finished, timeout)
        _finish(run, finished)
    except (
        OSError
    ) as error:  # disk full, read-only: the finished shards stay, the one being written is removed
        translated = output_write_error(error, output_dir, "output_dir")
        if translated is None:
            raise
        raise translated from error
    result = load_shards(run.out, streaming=streaming, cache_dir=cache_dir)
    if repo is not None:
        merged = result if isinstance(result, Dataset) else load_shards(run.out, cache_dir=cache_dir)
        try:
            push_shards_to_hub(run.out, dataset=merged, **repo)
        except Exception as error:  # network, rights, quota: the finished folder stays as it is
            raise HubAccessError(
                f"push_to_hub={repo['repo_id']!r} failed ({type(error).__name__}: {str(error)[:200]}); the dataset "
                f"is complete in {str(run.out)!r}: push it later with "
                f"diffsynth.shards.push_shards_to_hub({str(run.out)!r}, {repo['repo_id']!r})."
            ) from error
    return result
