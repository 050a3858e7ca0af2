"""Generation on a Ray cluster (the ``diffsynth[ray]`` extra): the same shards, manifest and rows as a local run.

    import diffsynth.ray
    ds = diffsynth.ray.generate(["mold", "stain"], 50_000, "stable-diffusion-v1-5/stable-diffusion-v1-5",
                                output_dir="s3://bucket/runs/mold", num_actors=16, batch_size=8, dtype="fp16")

is ``diffsynth.generate(..., output_dir=..., engine=diffsynth.ray.RayEngine(num_actors=16))``. One actor holds
one pipeline (one GPU each when the cluster has GPUs); the driver plans every sample once, hands whole shards to
idle actors and writes the finished shard files to a folder or any fsspec URL. Run the same call again to resume.

- :mod:`~diffsynth.ray.engine`: :class:`RayEngine` (actor count and resources, retries) and the driver;
- :mod:`~diffsynth.ray.actor`: :class:`ShardMaker`, the actor that draws a shard;
- :mod:`~diffsynth.ray.store`: :class:`ShardStore`, the output folder behind fsspec.
"""

from __future__ import annotations

import dataclasses
import os

# Under `uv run`, Ray (>= 2.43) starts every worker through `uv run` again, with the current folder (a project with
# its 6 GB .venv) as the workers' working_dir; on a local instance they then die before registering and the driver
# waits forever. Ray reads this switch when it is imported, so it is set before ray is: workers run on the driver's
# interpreter as without uv. A value the user set (or exported on the cluster's nodes) is kept.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
from collections.abc import Sequence
from typing import Any

from datasets import Dataset, IterableDataset

from diffsynth import generation
from diffsynth.ray.actor import SampleFailedError, ShardMaker
from diffsynth.ray.engine import ACTOR_PREFIX, RayEngine, ShardsFailedError
from diffsynth.ray.store import ShardStore

__all__ = [
    "ACTOR_PREFIX",
    "RayEngine",
    "SampleFailedError",
    "ShardMaker",
    "ShardStore",
    "ShardsFailedError",
    "generate",
]

_ENGINE_FIELDS = {f.name for f in dataclasses.fields(RayEngine)}


def generate(
    classes: Sequence[Any],
    num_images: int,
    model: str | os.PathLike = "tiny",
    *,
    output_dir: str | os.PathLike,
    **options: Any,
) -> Dataset | IterableDataset:
    """:func:`diffsynth.generate` on Ray: ``options`` that are :class:`RayEngine` fields (``num_actors``,
    ``num_gpus_per_actor``, ``num_cpus_per_actor``, ``max_retries``, ``storage_options``, ``ray_init``) configure
    the engine, the rest are :func:`diffsynth.generate`'s (``batch_size``, ``shard_size``, ``overwrite``,
    ``streaming``, masker settings...). Returns the dataset: memory-mapped from a local folder (or streamed with
    ``streaming=True``), streamed from a remote URL."""
    engine = RayEngine(**{k: options.pop(k) for k in list(options) if k in _ENGINE_FIELDS})
    return generation.generate(classes, num_images, model, output_dir=output_dir, engine=engine, **options)
