"""Do backbone adapters beat a frozen backbone on toy tasks built to need them? Held-out mIoU, frozen vs adapted.

Most tasks ask the pretrained tiny model (:func:`seemadapt.pretrained_tiny.pretrained_tiny`) for new classes told
apart by a cue its pretraining did not need, so that a frozen backbone's features might not suffice:

- ``texture``: three things of one colour, one shape per class, told apart by stripes / checker / dots;
- ``camo``: the same textures, at the wall's own colour (objects stand out by texture alone);
- ``lowcon``: flat objects 20 grey levels off the wall's colour (one channel each), under its mottling and noise;
- ``invert``: the usual mold / stain / pipe / wall scenes with inverted colours (``contrast=-1``, a domain shift);
- ``dim``: no new classes: the pretraining domain itself at a quarter of the contrast (``contrast=0.25``).

For each task and seed, ``--pair`` (the same head placement with and without backbone adapters) is fine-tuned on 24
scenes (seed 100 + run seed) and scored on 12 held-out ones (seed 999) with the learning tests' recipe
(:func:`seemadapt.pretrained_tiny.finetune_toy`, via ``bench_lr.py``). ``--pair frozen-head`` compares the untrained
model (a frozen backbone under a frozen head) with backbone adapters trained alone, so any gain is theirs; it is
the pair ``tests/seemadapt/test_learning.py`` tests on ``dim``. ``--extra`` adds placements that locate what a
task needs (``full``, ``pixel-decoder+head``, ``stem+pixel-decoder+head``, ...). Each row also prints how much the
backbone's res4 features moved (relative norm, one held-out image). ``--lr`` sets the lr of every run (default:
each placement's default), ``--backbone-lr-mult 10`` trains the backbone adapters at 10x it
(``TrainConfig.lr_multipliers``). Results and their reading: ``docs/adapters.md``, "Do backbone adapters help?".

Run: ``uv run python benchmarks/bench_backbone_adapters.py [--tasks lowcon,invert] [--seeds 0,1,2]``;
``--tasks dim --pair frozen-head --lr 1e-2 --seeds 0,1,2,3,4`` for the tested pair.
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
from seemadapt.pretrained_tiny import PRETRAIN_CLASSES, PRETRAIN_STUFF, TOY_STEPS, pretrained_tiny
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
    "dim": None,  # the pretraining classes and looks at a quarter of the contrast
}
DIM_CONTRAST = 0.25
UNTRAINED = "untrained"  # the pretrained model as it is: what a frozen backbone with a frozen head scores
PAIRS = {
    "adapter-head": ("frozen-backbone/adapter-head", "adapter-backbone/adapter-head"),
    "full-head": ("frozen-backbone/full-head", "adapter-backbone/full-head"),
    "frozen-head": (UNTRAINED, "backbone-adapters-only"),
}
_HEAD = "sem_seg_head.predictor"
_PIXEL_DECODER = "sem_seg_head.pixel_decoder"
#: Placements that locate what a task needs (``--extra``): which parts must train to beat the frozen backbone.
EXTRA = {
    "backbone-adapters-only": {"backbone_adapters": True},
    "full": "full",  # everything but the text encoder
    "backbone+head": {"train_full": ["backbone", _HEAD]},
    "pixel-decoder+head": {"train_full": [_PIXEL_DECODER, _HEAD]},
    "stem+pixel-decoder+head": {"train_full": ["backbone.patch_embed", _PIXEL_DECODER, _HEAD]},
    "adapters+pixel-decoder+head": {"backbone_adapters": True, "train_full": [_PIXEL_DECODER, _HEAD]},
}


def task_scenes(task: str, num_images: int, seed: int) -> datasets.Dataset:
    """The scenes of ``task`` (see the module docstring)."""
    if task == "dim":
        return make_toy_scenes(num_images, PRETRAIN_CLASSES, PRETRAIN_STUFF, seed=seed, contrast=DIM_CONTRAST)
    looks = TASKS[task]
    classes = tuple(looks) if looks else ("mold", "stain", "pipe", "wall")
    contrast = -1.0 if task == "invert" else 1.0
    return make_toy_scenes(
        num_images, classes=classes, stuff=("wall",), seed=seed, looks=looks, contrast=contrast
    )


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
    parser.add_argument("--steps", type=int, default=TOY_STEPS)
    parser.add_argument("--lr", type=float, default=None, help="default: each placement's default lr")
    parser.add_argument("--backbone-lr-mult", type=float, default=1.0)
    parser.add_argument(
        "--extra", default="", help=f"comma-separated placements after the pair: {list(EXTRA)}"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = pretrained_tiny()  # loaded once: copies are fine-tuned
    overrides: dict = {} if args.lr is None else {"lr": args.lr}
    if args.backbone_lr_mult != 1.0:
        overrides["lr_multipliers"] = {"backbone adapters": args.backbone_lr_mult}
    gaps: dict[str, list[float]] = {}
    for task in args.tasks.split(","):
        test = task_scenes(task, 12, 999)
        metrics = seemadapt.evaluate(model, test, batch_size=4, progress=False).metrics
        before = {"miou": metrics["miou"], "pq": metrics.get("pq", 0.0), "cpu_s": 0.0}
        print(f"{task}: before fine-tuning miou {before['miou']:.3f}", flush=True)
        for seed in [int(x) for x in args.seeds.split(",")]:
            train = task_scenes(task, 24, 100 + seed)
            scores = []
            names = [*PAIRS[args.pair], *filter(None, args.extra.split(","))]
            for name in names:
                if name == UNTRAINED:
                    row, tuned = before, model
                else:
                    strategy = EXTRA.get(name, name)
                    row, tuned = finetune_and_score(
                        model, train, test, strategy, seed, args.steps, **overrides
                    )
                moved = res4_change(model, tuned, test[0]["image"])
                scores.append(row["miou"])
                print(
                    f"{task:8s} {name:30s} seed {seed}: miou {row['miou']:.3f} pq {row['pq']:.3f} "
                    f"res4 moved {moved:.1e} cpu {row['cpu_s']:.0f}s load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
            gaps.setdefault(task, []).append(scores[1] - scores[0])  # the pair: adapted - frozen
    print(f"\n| task | adapted - frozen mIoU, mean (min-max) over seeds {args.seeds} | every seed > 0 |")
    print("|---|---|---|")
    for task, values in gaps.items():
        spread = f"{statistics.mean(values):+.3f} ({min(values):+.3f} to {max(values):+.3f})"
        print(f"| {task} | {spread} | {all(v > 0 for v in values)} |")


if __name__ == "__main__":
    main()
