"""The Ray engine: the driver plans every sample once, actors draw whole shards, the driver writes them.

Shard ``k`` holds samples ``[k * shard_size, (k + 1) * shard_size)`` as in a local run, each sample drawn from its
own seed in batches that never cross a shard boundary, so the rows equal a single-process run's. The driver hands
each idle actor the plans of the next missing shard and receives the finished shard file through Ray's object
store; it is the only writer of the output folder (:class:`~diffsynth.ray.store.ShardStore`). Running the same
call again resumes: finished shards are kept, only missing ones are drawn.

Failures: an actor that dies (killed, pre-empted, out of memory) is restarted by Ray and its shard is drawn
again (``max_retries`` times); a sample that raises is retried once more by Ray and, failing again, reported by
index (:class:`~diffsynth.ray.actor.SampleFailedError`) after every other shard is written.
"""

from __future__ import annotations

import collections
import datetime
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow.parquet as pq
import ray
from datasets import Dataset, Features, IterableDataset, load_dataset
from ray.exceptions import RayActorError, RayTaskError
from tqdm.auto import tqdm

from diffsynth.categories import resolve_categories
from diffsynth.dataset import categories_of
from diffsynth.generation import GenerationConfig, run_plans
from diffsynth.ray.actor import SampleFailedError, ShardMaker
from diffsynth.ray.store import ShardStore
from diffsynth.schema import segment_features
from diffsynth.shards.fingerprint import differences, sum_stats
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
from diffsynth.shards.reader import load_shards
from diffsynth.shards.upload import push_shards_to_hub, repo_kwargs

__all__ = ["ACTOR_PREFIX", "RayEngine", "ShardsFailedError"]

#: Actors of a run are named ``<ACTOR_PREFIX><run id>-<i>`` (``ray.util.list_named_actors()`` finds them).
ACTOR_PREFIX = "diffsynth-"


class ShardsFailedError(RuntimeError):
    """Shards that could not be made (the others are written: run the same call again to retry these).

    ``samples`` are the sample indices that failed twice, ``shards`` every unfinished shard."""

    def __init__(self, shards: list[int], samples: list[int], details: list[str]) -> None:
        super().__init__(
            f"{len(shards)} shard(s) could not be made: shards {shards[:10]}, failing samples {samples[:20]}.\n  "
            + "\n  ".join(details[:10])
            + "\nThe other shards are written; run the same call again to retry the missing ones."
        )
        self.shards = shards
        self.samples = samples


@dataclass(frozen=True)
class RayEngine:
    """How a run is spread over a Ray cluster (``generate(..., engine=RayEngine(...))``).

    ``num_actors``: pipelines drawing at once (default: one per GPU of the cluster, else 1). ``num_gpus_per_actor``
    (default: 1 when the cluster has GPUs, else 0: CPU actors) and ``num_cpus_per_actor`` are Ray resource requests.
    ``max_retries``: restarts of a dead actor and retries of a failed shard (a sample failing ``max_retries + 1``
    times is reported). ``storage_options`` go to fsspec for the output URL. ``make_generator(config)`` builds each
    actor's generator (default ``Generator(config, progress=False)``). ``ray_init`` are ``ray.init`` arguments used
    when Ray is not started yet (by default ``ray.init()`` joins the cluster of ``RAY_ADDRESS`` or starts one)."""

    num_actors: int | None = None
    num_gpus_per_actor: float | None = None
    num_cpus_per_actor: float = 1.0
    max_retries: int = 1
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    make_generator: Callable[[GenerationConfig], Any] | None = None
    ray_init: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_actors is not None and (isinstance(self.num_actors, bool) or self.num_actors < 1):
            raise ValueError(f"RayEngine.num_actors must be None or an int >= 1, got {self.num_actors!r}.")
        for name in ("num_gpus_per_actor", "num_cpus_per_actor"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"RayEngine.{name} must be >= 0, got {value!r}.")
        if (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or self.max_retries < 0
        ):
            raise ValueError(f"RayEngine.max_retries must be an int >= 0, got {self.max_retries!r}.")

    def __call__(
        self,
        config: GenerationConfig,
        output_dir: str | os.PathLike,
        *,
        pipeline: Any = None,
        clip: Any = None,
        progress: bool = True,
        shard_size: int = DEFAULT_SHARD_SIZE,
        overwrite: bool = False,
        streaming: bool = False,
        push_to_hub: str | Mapping[str, Any] | None = None,
    ) -> Dataset | IterableDataset:
        """Make ``config``'s samples into shards under ``output_dir`` (a path or fsspec URL) and return them."""
        if pipeline is not None or clip is not None:
            raise TypeError(
                "the Ray engine loads the model in every actor: pass model as a Hub id or a folder every node "
                "can read (and clip as a Hub id or folder), not a loaded object."
            )
        repo = repo_kwargs(push_to_hub)
        store = ShardStore(output_dir, dict(self.storage_options))
        if repo is not None and store.local_path is None:
            raise ValueError("push_to_hub needs a local output_dir; push a remote folder from a local copy.")
        layout = ShardLayout(int(config.num_images), shard_size)
        _RayRun(self, config, store, layout, progress).run(overwrite=overwrite)
        return _result(store, layout, streaming=streaming, repo=repo)

    # ------------------------------------------------------------------------------------------------ actors
    def start_actors(self, config: GenerationConfig) -> list[Any]:
        if not ray.is_initialized():
            ray.init(**dict(self.ray_init))
        gpus = float(ray.cluster_resources().get("GPU", 0))
        per_actor = (
            self.num_gpus_per_actor if self.num_gpus_per_actor is not None else (1 if gpus >= 1 else 0)
        )
        count = self.num_actors or (int(gpus // per_actor) if per_actor else 1) or 1
        maker = ray.remote(ShardMaker)
        resources = {
            "num_gpus": per_actor,
            "num_cpus": self.num_cpus_per_actor,
            "max_restarts": self.max_retries,
            "max_task_retries": self.max_retries,
        }
        run_id = uuid.uuid4().hex[:8]
        return [
            maker.options(name=f"{ACTOR_PREFIX}{run_id}-{i}", **resources).remote(config, self.make_generator)
            for i in range(count)
        ]


class _RayRun:
    """One call of the engine: the driver's state (the actors, the finished shards, the failures)."""

    def __init__(
        self,
        engine: RayEngine,
        config: GenerationConfig,
        store: ShardStore,
        layout: ShardLayout,
        progress: bool,
    ) -> None:
        self.engine, self.config, self.store, self.layout, self.progress = (
            engine,
            config,
            store,
            layout,
            progress,
        )
        self.plans = run_plans(config)  # planned once, here; actors draw what they are handed
        if len(self.plans) != layout.num_images:
            raise ValueError(f"{len(self.plans)} plans for num_images={layout.num_images}.")
        self.finished: dict[int, dict[str, Any]] = {}
        self.failures: dict[int, str] = {}
        self.failed_samples: list[int] = []
        self.info: dict[str, Any] = {}
        self.actors: list[Any] = []

    def run(self, *, overwrite: bool) -> None:
        self.actors = self.engine.start_actors(self.config)
        try:
            self.info = self._agree()
            self._prepare(overwrite=overwrite)
            self._make_shards()
            if self.failures:
                self.store.write_json(MANIFEST, self.manifest("running"))
                raise ShardsFailedError(
                    sorted(self.failures),
                    sorted(self.failed_samples),
                    [self.failures[k] for k in sorted(self.failures)],
                )
            self._finish()
        finally:
            for actor in self.actors:
                ray.kill(actor, no_restart=True)

    def _agree(self) -> dict[str, Any]:
        """Every actor must make the same run (same fingerprint): else the shards would mix two runs."""
        infos = ray.get([actor.describe.remote() for actor in self.actors])
        for i, info in enumerate(infos[1:], start=1):
            if info["fingerprint"] != infos[0]["fingerprint"]:
                old = {"config": infos[0]["fields"], "num_images": self.layout.num_images}
                old["shard_size"] = self.layout.shard_size
                diffs = differences(old, info["fields"], self.layout, ("actor 0 has", f"actor {i} has"))
                raise ShardMismatchError(
                    f"actor {i} ({info['host']}) would make another run than actor 0 ({infos[0]['host']}):\n  "
                    + "\n  ".join(diffs)
                )
        return infos[0]

    def _prepare(self, *, overwrite: bool) -> None:
        """Check (or wipe) the folder, clear leftovers of a killed driver, collect finished shards."""
        store, layout = self.store, self.layout
        if overwrite:
            for name in store.names(DATA_DIR):
                store.remove(f"{DATA_DIR}/{name}")
            store.remove(MANIFEST)
            if store.fs.exists(store.path(CACHE_DIR)):
                store.fs.rm(store.path(CACHE_DIR), recursive=True)
        manifest = store.read_manifest()
        if manifest is None and store.names(DATA_DIR):
            raise FileExistsError(
                f"output_dir={store.url!r} has shards but no {MANIFEST}; use a new folder or overwrite=True."
            )
        if manifest is not None:
            diffs = differences(manifest, self.info["fields"], layout)
            if diffs:
                raise ShardMismatchError(
                    f"output_dir={store.url!r} holds a run with other arguments:\n  "
                    + "\n  ".join(diffs)
                    + "\nRe-run with the folder's arguments to resume it, use a new output_dir, or pass "
                    "overwrite=True to discard its shards."
                )
        store.remove_temps()
        for k in range(layout.num_shards):
            entry = store.finished_shard(layout, k, self.info["fingerprint"])
            if entry is not None:
                self.finished[k] = entry
        store.write_json(MANIFEST, self.manifest("running"))
        store.write_categories(resolve_categories(self.config.classes, background=self.config.background))

    def _make_shards(self) -> None:
        """Hand each idle actor the next missing shard until none is left; write each shard as it arrives."""
        todo = collections.deque(k for k in range(self.layout.num_shards) if k not in self.finished)
        total = sum(self.layout.bounds(k)[1] - self.layout.bounds(k)[0] for k in todo)
        idle, running = list(self.actors), {}
        with tqdm(total=total, desc="diffsynth ray", unit="img", disable=not self.progress) as bar:
            while todo or running:
                while todo and idle:
                    k, actor = todo.popleft(), idle.pop()
                    start, stop = self.layout.bounds(k)
                    ref = actor.make_shard.remote(k, self.layout.file_name(k), self.plans[start:stop])
                    running[ref] = (k, actor)
                if not running:  # every actor is gone
                    for k in todo:
                        self.failures[k] = f"shard {k}: no actor left to draw it"
                    return
                (ref,), _ = ray.wait(list(running), num_returns=1)
                k, actor = running.pop(ref)
                if self._collect(k, ref):
                    bar.update(self.layout.bounds(k)[1] - self.layout.bounds(k)[0])
                    idle.append(actor)
                elif not isinstance(self.failures.get(k), _ActorGone):
                    idle.append(actor)

    def _collect(self, k: int, ref: Any) -> bool:
        """Write shard ``k`` from ``ref``; on failure record it (and the failing samples) and return False."""
        try:
            data = ray.get(ref)
        except RayTaskError as error:
            cause = getattr(error, "cause", None)
            if isinstance(cause, SampleFailedError):
                self.failed_samples.extend(cause.indices)
                self.failures[k] = str(cause)
            else:
                self.failures[k] = f"shard {k}: {type(error).__name__}: {str(error).splitlines()[0]}"
            return False
        except RayActorError as error:
            start, stop = self.layout.bounds(k)
            self.failures[k] = _ActorGone(f"shard {k} (samples {start}..{stop - 1}): its actor died: {error}")
            return False
        self.store.write_bytes(f"{DATA_DIR}/{self.layout.file_name(k)}", data)
        entry = self.store.finished_shard(self.layout, k, self.info["fingerprint"])
        if entry is None:
            raise RuntimeError(f"shard {k} did not read back after writing to {self.store.url}.")
        self.finished[k] = entry
        self.store.write_json(MANIFEST, self.manifest("running"))
        return True

    def _finish(self) -> None:
        totals = sum_stats([self.finished[k].get("stats") for k in range(self.layout.num_shards)])
        manifest = self.manifest("complete")
        manifest["settings"] = ray.get(self.actors[0].settings.remote(totals))
        self.store.remove_temps()
        self.store.write_json(MANIFEST, manifest)

    def manifest(self, status: str) -> dict[str, Any]:
        """The same manifest as a local run's (``engine``/``num_actors`` say how it was made)."""
        layout = self.layout
        return {
            "format": MANIFEST_FORMAT,
            "status": status,
            "fingerprint": self.info["fingerprint"],
            "num_images": layout.num_images,
            "shard_size": layout.shard_size,
            "num_shards": layout.num_shards,
            "split": SPLIT,
            "with_attention": self.info["with_attention"],
            "with_quality": self.info["with_quality"],
            "world_size": len(self.actors),
            "engine": "ray",
            "updated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "versions": self.info["versions"],
            "config": self.info["fields"],
            "shards": [self.finished[k] for k in sorted(self.finished)],
        }


class _ActorGone(str):
    """A failure message whose actor is dead for good (it gets no more shards)."""


def _result(
    store: ShardStore, layout: ShardLayout, *, streaming: bool, repo: dict[str, Any] | None
) -> Dataset | IterableDataset:
    """The finished run as a dataset: a local folder through :func:`load_shards`, a URL streamed with fsspec."""
    if store.local_path is not None:
        result = load_shards(store.local_path, streaming=streaming)
        if repo is not None:
            merged = result if isinstance(result, Dataset) else load_shards(store.local_path)
            push_shards_to_hub(store.local_path, dataset=merged, **repo)
        return result
    manifest = store.read_manifest() or {}
    with store.fs.open(store.path(f"{DATA_DIR}/{layout.file_name(0)}"), "rb") as handle:
        feats = Features.from_arrow_schema(pq.read_schema(handle))
    feats["segments_info"] = segment_features(categories_of(feats), manifest.get("settings"))
    return load_dataset(
        "parquet",
        data_files={SPLIT: store.shard_urls(layout)},
        split=SPLIT,
        streaming=True,
        features=feats,
        storage_options=dict(store.fs.storage_options),
    )
