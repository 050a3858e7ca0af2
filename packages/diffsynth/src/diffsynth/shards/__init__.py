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

Nothing is lost or doubled: a shard is written to a temporary file in the same folder, fsynced and renamed, so a
shard file exists only when complete; its footer records the run fingerprint and its sample range, so a restart
checks each shard by itself and remakes only the missing ones.

One module per job:

- :mod:`~diffsynth.shards.layout`: shard boundaries and file names;
- :mod:`~diffsynth.shards.fingerprint`: what identifies a run, how two runs differ, per-shard counters;
- :mod:`~diffsynth.shards.files`: atomic, crash-safe file writing;
- :mod:`~diffsynth.shards.manifest`: the manifest and the check of each shard;
- :mod:`~diffsynth.shards.writer`: writing one shard;
- :mod:`~diffsynth.shards.runner`: the run across processes (:func:`run_sharded`);
- :mod:`~diffsynth.shards.reader`: merging a complete folder into one dataset (:func:`load_shards`);
- :mod:`~diffsynth.shards.upload`: a complete folder to the Hub (:func:`push_shards_to_hub`).
"""

from __future__ import annotations

from diffsynth.shards.fingerprint import run_fingerprint, settings_for
from diffsynth.shards.layout import DEFAULT_SHARD_SIZE, MANIFEST, ShardLayout, ShardMismatchError
from diffsynth.shards.manifest import read_manifest
from diffsynth.shards.reader import load_shards
from diffsynth.shards.runner import run_sharded
from diffsynth.shards.upload import push_shards_to_hub, stage_shards

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
