"""The worker of a Ray run: one actor holds one pipeline (on its own GPU when it has one) and turns a shard's
plans into the bytes of a finished shard file, the same file a local run writes for that shard."""

from __future__ import annotations

import dataclasses
import socket
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ray

from diffsynth.dataset import sample_to_row
from diffsynth.generation import GenerationConfig, Generator
from diffsynth.plan import SamplePlan
from diffsynth.schema import features as contract_features
from diffsynth.schema import scrub_settings
from diffsynth.shards.fingerprint import run_fingerprint, run_stats, settings_for, stats_set_to
from diffsynth.shards.writer import ShardWriter

__all__ = ["SampleFailedError", "ShardMaker"]


class SampleFailedError(RuntimeError):
    """Samples that raised while drawing; ``indices`` are their sample indices (``image_id``), ``shard`` their
    shard. Raised again on the driver (after Ray's retry) so no sample is lost silently."""

    def __init__(self, shard: int, indices: Sequence[int], message: str) -> None:
        super().__init__(f"shard {shard}: samples {list(indices)} failed: {message}")
        self.shard = shard
        self.indices = list(indices)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:  # keeps the fields through Ray's pickling
        return (type(self), (self.shard, self.indices, self.message))


class ShardMaker:
    """Holds one :class:`~diffsynth.generation.Generator` (one pipeline) for the actor's life.

    ``make_generator(config)`` builds it (default: ``Generator(config, progress=False)``). With a GPU assigned by
    Ray (``CUDA_VISIBLE_DEVICES`` then shows only it) and no ``config.device``, the pipeline goes to ``cuda``."""

    def __init__(
        self, config: GenerationConfig, make_generator: Callable[[GenerationConfig], Any] | None = None
    ) -> None:
        if config.device is None and ray.get_gpu_ids():
            config = dataclasses.replace(config, device="cuda")
        self.generator = (make_generator or _default_generator)(config)
        self.fingerprint, self.fields = run_fingerprint(self.generator)

    def describe(self) -> dict[str, Any]:
        """What this actor would make (its run fingerprint and fields) and where it runs."""
        settings = settings_for(self.generator)
        return {
            "fingerprint": self.fingerprint,
            "fields": self.fields,
            "versions": settings.get("versions", {}),
            "with_attention": bool(self.generator.config.with_attention),
            "with_quality": bool(getattr(self.generator.config, "with_quality", False)),
            "host": socket.gethostname(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
        }

    def settings(self, stats: dict[str, Any] | None) -> dict[str, Any]:
        """The run's settings as if exactly the samples counted in ``stats`` had been drawn (for the manifest)."""
        return scrub_settings(settings_for(self.generator, stats))

    @ray.method(retry_exceptions=True)  # a sample that raises is drawn once more before it is reported
    def make_shard(self, k: int, name: str, plans: Sequence[SamplePlan]) -> bytes:
        """Draw ``plans`` (shard ``k``, in index order, batches of ``config.batch_size``) into a shard file named
        ``name``; returns the file's bytes (the run's counters over this shard alone are in its footer)."""
        generator = self.generator
        own = [generator.plans[p.index] for p in plans]
        if own != list(plans):
            raise RuntimeError(
                f"shard {k}: this actor plans other samples than the driver (same arguments, other library "
                "versions?); install the same versions on every node."
            )
        start, stop = plans[0].index, plans[-1].index + 1
        record = {"fingerprint": self.fingerprint, "index": k, "start": start, "stop": stop}
        with tempfile.TemporaryDirectory(prefix="diffsynth-ray-") as tmp:
            path = Path(tmp) / name
            with stats_set_to(generator, None):  # count this shard alone, from zero
                writer = ShardWriter(path, self._features(), record)
                try:
                    for batch in generator.batches(plans):
                        for sample in self._draw(k, batch):
                            writer.add(self._row(sample))
                    counters = run_stats(generator)
                    writer.commit(dict(counters) if counters is not None else None)
                except BaseException:
                    writer.abort()
                    raise
            return path.read_bytes()

    def _draw(self, k: int, batch: list[SamplePlan]) -> list[Any]:
        try:
            return self.generator.make_samples(batch)
        except Exception as error:
            failing = self._failing(batch) if len(batch) > 1 else [batch[0].index]
            raise SampleFailedError(
                k, failing or [p.index for p in batch], f"{type(error).__name__}: {error}"
            ) from error

    def _failing(self, batch: list[SamplePlan]) -> list[int]:
        """The samples of a failed batch that also fail alone (to name them; their draws are not kept)."""
        failing = []
        for plan in batch:
            with stats_set_to(self.generator, run_stats(self.generator)):
                try:
                    self.generator.make_samples([plan])
                except Exception:
                    failing.append(plan.index)
        return failing

    def _features(self):
        config = self.generator.config
        return contract_features(
            self.generator.categories,
            bool(config.with_attention),
            settings=settings_for(self.generator),
            with_quality=bool(getattr(config, "with_quality", False)),
        )

    def _row(self, sample: Any) -> dict[str, Any]:
        config = self.generator.config
        if getattr(config, "with_quality", False):
            return sample_to_row(sample, with_attention=bool(config.with_attention), with_quality=True)
        return sample_to_row(sample, with_attention=bool(config.with_attention))


def _default_generator(config: GenerationConfig) -> Generator:
    return Generator(config, progress=False)
