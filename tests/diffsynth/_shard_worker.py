"""Helpers for the shard tests: a fake generator (no pipeline) and a worker script for real subprocess runs.

Run as a script (alone, or under ``python -m torch.distributed.run``) it builds the tiny-pipeline generator of
:func:`tiny_config` and calls ``run_sharded``; ``--sleep`` stretches each batch so a test can SIGKILL it
mid-shard, ``--made-log`` records which sample indices this process drew (one JSON line per batch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from PIL import Image

from diffsynth import GenerationConfig, Generator
from diffsynth.categories import resolve_categories
from diffsynth.dataset import Sample
from diffsynth.plan import make_plans


def tiny_config(num_images: int, **overrides) -> GenerationConfig:
    """The real (tiny, random-weight) pipeline at its smallest: 64x64 images, 2 steps."""
    masker = {"num_inference_steps": 2, "height": 64, "width": 64, **overrides.pop("masker", {})}
    return GenerationConfig(classes=["cat", "dog"], num_images=num_images, seed=3, masker=masker, **overrides)


class FakeGenerator:
    """Quacks like :class:`diffsynth.generation.Generator` (config, categories, plans, settings, make_samples,
    batches, quality_stats) but draws a seeded random image, label map and quality score per sample: shard logic
    without a pipeline. Scores are multiples of 1/8, so their sums are exact in any order."""

    batches = Generator.batches

    def __init__(self, num_images: int = 7, *, size: int = 32, steps: int = 2, **config) -> None:
        self.config = GenerationConfig(
            classes=["cat", "dog"],
            num_images=num_images,
            masker={"num_inference_steps": steps, "height": size, "width": size},
            **config,
        )
        self.categories = resolve_categories(self.config.classes, background=self.config.background)
        self.plans = make_plans(self.categories, num_images, seed=self.config.seed)
        self.progress = False
        self.size = size
        self.made: list[int] = []
        self.quality_stats = {"scored": 0, "overall_sum": 0.0}

    def settings(self) -> dict:
        quality = {"min_quality": None}
        if self.quality_stats["scored"]:
            quality["mean_overall"] = self.quality_stats["overall_sum"] / self.quality_stats["scored"]
        return {
            "quality": quality,
            "model": "fake",
            "pipeline": "FakeGenerator",
            "num_images": self.config.num_images,
            "seed": self.config.seed,
            "num_inference_steps": self.config.masker["num_inference_steps"],
            "height": self.size,
            "width": self.size,
            "versions": {"diffsynth": "test"},
        }

    def make_samples(self, plans) -> list[Sample]:
        samples = []
        for plan in plans:
            rng = np.random.default_rng(plan.seed)
            image = Image.fromarray(rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8))
            blocks = rng.integers(0, len(self.categories), (self.size // 8, self.size // 8)).astype(np.uint8)
            label = np.kron(blocks, np.ones((8, 8), np.uint8))
            soft = rng.random((len(self.categories) - 1, 8, 8)).astype(np.float32)
            sample = Sample.from_label_map(
                image,
                label,
                self.categories,
                image_id=plan.index,
                prompt=plan.prompt,
                seed=plan.seed,
                soft_maps=soft if self.config.with_attention else None,
                min_area=0,
            )
            sample.quality = {"overall": int(rng.integers(0, 9)) / 8, "confidence": float(rng.random())}
            self.quality_stats["scored"] += 1
            self.quality_stats["overall_sum"] += sample.quality["overall"]
            samples.append(sample)
            self.made.append(plan.index)
        return samples


class RayTestGenerator:
    """``make_generator`` for Ray actors in tests (importable by name in the workers): the tiny-pipeline
    generator (or :class:`FakeGenerator` with ``fake``), whose draws sleep ``sleep`` s per batch and raise for
    the sample indices in ``fail``."""

    def __init__(self, *, fake: bool = False, sleep: float = 0.0, fail: tuple[int, ...] = ()) -> None:
        self.fake, self.sleep, self.fail = fake, sleep, tuple(fail)

    def __call__(self, config: GenerationConfig):
        import torch

        torch.set_num_threads(1)
        if self.fake:
            generator = FakeGenerator(config.num_images, size=32, batch_size=config.batch_size)
        else:
            generator = Generator(config, progress=False)
        draw = generator.make_samples

        def make_samples(plans):
            bad = [p.index for p in plans if p.index in self.fail]
            if bad:
                raise ValueError(f"sample {bad[0]} is cursed")
            time.sleep(self.sleep)
            return draw(plans)

        generator.make_samples = make_samples
        return generator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--num-images", type=int, required=True)
    parser.add_argument("--shard-size", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--made-log", default=None)
    parser.add_argument("--fake", action="store_true", help="FakeGenerator instead of the tiny pipeline")
    parser.add_argument(
        "--init-group", action="store_true", help="start torch.distributed first, as a user would"
    )
    parser.add_argument("--seed-per-rank", action="store_true", help="a bug to catch: each rank its own seed")
    args = parser.parse_args(argv)

    import torch

    from diffsynth import shards
    from diffsynth.shards import runner

    torch.set_num_threads(1)
    rank = os.environ.get("RANK", "0")
    if args.init_group:
        torch.distributed.init_process_group("gloo")
    if args.fake:
        seed = int(rank) if args.seed_per_rank else 0
        generator = FakeGenerator(args.num_images, batch_size=args.batch_size, seed=seed)
    else:
        generator = Generator(tiny_config(args.num_images, batch_size=args.batch_size), progress=False)
    draw = generator.make_samples

    def make_samples(plans):
        samples = draw(plans)
        if args.made_log:
            with open(f"{args.made_log}.rank{rank}", "a", encoding="utf-8") as handle:
                handle.write(json.dumps([p.index for p in plans]) + "\n")
        time.sleep(args.sleep)
        return samples

    generator.make_samples = make_samples

    class ReportingSync(runner.ProcessSync):  # tells the test whether a process group carried the barrier
        def barrier(self) -> None:
            print(f"rank {rank} barrier with process group: {self.active}", flush=True)
            super().barrier()

    runner.ProcessSync = ReportingSync
    try:
        result = shards.run_sharded(generator, args.out, shard_size=args.shard_size)
    except shards.ShardMismatchError as error:
        print(f"rank {rank} refused: {error}", flush=True)
        return 3
    if args.init_group:  # the user's group is still there and usable
        print(f"rank {rank} user group alive: {torch.distributed.is_initialized()}", flush=True)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    print(
        f"rank {rank} returned {type(result).__name__} {len(result) if result is not None else ''}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
