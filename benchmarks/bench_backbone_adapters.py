"""Do backbone adapters beat a frozen backbone on toy tasks built to need them? Held-out mIoU, frozen vs adapted.

Each task asks the pretrained tiny model (:func:`seemadapt.pretrained_tiny.pretrained_tiny`) for new classes told
apart by a cue its pretraining did not need, so that a frozen backbone's features might not suffice:

- ``texture``: three things of one colour, one shape per class, told apart by stripes / checker / dots;
- ``camo``: the same textures, at the wall's own colour (objects stand out by texture alone);
- ``lowcon``: flat objects 20 grey levels off the wall's colour (one channel each), under its mottling and noise;
- ``invert``: the usual mold / stain / pipe / wall scenes with inverted colours (a domain shift).

For each task and seed, ``--pair`` (the same head placement with and without backbone adapters, at the default lr)
is fine-tuned on 24 scenes (seed 100 + run seed) and scored on 12 held-out ones (seed 999), with the same recipe as
``bench_lr.py``. Each row also prints how much the backbone's res4 features moved (relative norm, one held-out
image). ``--backbone-lr-mult 10`` trains the backbone adapters at 10x the lr (``TrainConfig.lr_multipliers``).

Run: ``uv run python benchmarks/bench_backbone_adapters.py [--tasks lowcon,invert] [--seeds 0,1,2]``.
"""

from __future__ import annotations

import argparse
import os
import statistics

import datasets
import numpy as np
import torch
from bench_lr import finetune_and_score  # the sibling script: one recipe for both benchmarks

import seemadapt
from seemadapt.pretrained_tiny import pretrained_tiny
from seemadapt.toyworld import Look, make_toy_scenes

WALL = (150, 140, 120)
TASKS: dict[str, dict[str, Look] | None] = {
    "texture": {
        "ridge": Look("ellipse", (150, 120, 90), "stripes"),
        "weave": Look("ellipse", (150, 120, 90), "checker"),
        "grain": Look("ellipse", (150, 120, 90), "dots"),
        "wall": Look("rectangle", (90, 110, 140), "mottled"),
    },
    "camo": {
        "ridge": Look("ellipse", WALL, "stripes"),
        "weave": Look("rectangle", WALL, "checker"),
        "grain": Look("blob", WALL, "dots"),
        "wall": Look("rectangle", WALL, "mottled"),
    },
    "lowcon": {
        "ridge": Look("ellipse", (170, 140, 120), "solid"),
        "weave": Look("rectangle", (150, 160, 120), "solid"),
        "grain": Look("blob", (150, 140, 140), "solid"),
        "wall": Look("rectangle", WALL, "mottled"),
    },
    "invert": None,  # the default classes' looks, colours inverted
}
PAIRS = {
    "adapter-head": ("frozen-backbone/adapter-head", "adapter-backbone/adapter-head"),
    "full-head": ("frozen-backbone/full-head", "adapter-backbone/full-head"),
}


def task_scenes(task: str, num_images: int, seed: int) -> datasets.Dataset:
    """The scenes of ``task`` (see the module docstring)."""
    looks = TASKS[task]
    classes = tuple(looks) if looks else ("mold", "stain", "pipe", "wall")
    data = make_toy_scenes(num_images, classes=classes, stuff=("wall",), seed=seed, looks=looks)
    if looks is None:
        data = data.map(
            lambda row: {"image": (255 - np.asarray(row["image"], np.int16)).astype(np.uint8)},
            features=data.features,
        )
    return data


def res4_change(base, tuned, image) -> float:
    """Relative change of the backbone's res4 features on one image: did the adapters act?"""
    pixels = torch.as_tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1)[None]
    with torch.no_grad():
        before = base.eval().backbone(pixels)["res4"]
        after = tuned.eval().backbone(pixels)["res4"]
    return float((after - before).norm() / before.norm())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--pair", choices=list(PAIRS), default="adapter-head")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--backbone-lr-mult", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = pretrained_tiny()  # loaded once: copies are fine-tuned
    overrides = {}
    if args.backbone_lr_mult != 1.0:
        overrides["lr_multipliers"] = {"backbone adapters": args.backbone_lr_mult}
    gaps: dict[str, list[float]] = {}
    for task in args.tasks.split(","):
        test = task_scenes(task, 12, 999)
        before = seemadapt.evaluate(model, test, batch_size=4, progress=False).metrics["miou"]
        print(f"{task}: before fine-tuning miou {before:.3f}", flush=True)
        for seed in [int(x) for x in args.seeds.split(",")]:
            train = task_scenes(task, 24, 100 + seed)
            scores = []
            for strategy in PAIRS[args.pair]:
                row, tuned = finetune_and_score(model, train, test, strategy, seed, args.steps, **overrides)
                moved = res4_change(model, tuned, test[0]["image"])
                scores.append(row["miou"])
                print(
                    f"{task:8s} {strategy:30s} seed {seed}: miou {row['miou']:.3f} pq {row['pq']:.3f} "
                    f"res4 moved {moved:.1e} cpu {row['cpu_s']:.0f}s load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
            gaps.setdefault(task, []).append(scores[1] - scores[0])
    print(f"\n| task | adapted - frozen mIoU, mean (min-max) over seeds {args.seeds} | every seed > 0 |")
    print("|---|---|---|")
    for task, values in gaps.items():
        spread = f"{statistics.mean(values):+.3f} ({min(values):+.3f} to {max(values):+.3f})"
        print(f"| {task} | {spread} | {all(v > 0 for v in values)} |")


if __name__ == "__main__":
    main()
