"""Held-out mIoU / PQ after fine-tuning, per strategy and learning rate: the measurement behind the lr defaults.

The pretrained tiny model (:func:`seemadapt.pretrained_tiny.pretrained_tiny`, built and cached on first use) is
fine-tuned on toy scenes of classes it has never seen (mold, stain, pipe on a wall; ``--train`` images, seed 100 +
run seed) and evaluated on ``--test`` held-out scenes (seed 999), for each seed, strategy and learning rate (seed
outermost, so an interrupted run still has whole tables). Rows print as they finish, then a summary (mean and range
over seeds). The defaults are the budget of ``tests/seemadapt/test_learning.py``.

Run: ``uv run python benchmarks/bench_lr.py [--steps 80] [--lrs 1e-4,3e-4,1e-3] [--seeds 0,1,2]``.
Timings are CPU seconds of this process (the machine may be shared); its load average is printed with each row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import seemadapt
from seemadapt.adapters.strategies import STRATEGIES as THESIS_STRATEGIES
from seemadapt.pretrained_tiny import TOY_STEPS, finetune_toy, pretrained_tiny
from seemadapt.toyworld import make_toy_scenes

STRATEGIES = [*THESIS_STRATEGIES, "full"]  # the four thesis strategies, then everything but the text encoder
CLASSES = ("mold", "stain", "pipe", "wall")


def finetune_and_score(
    base, train, test, strategy, seed: int, steps: int, **overrides
) -> tuple[dict, object]:
    """Fine-tune a copy of ``base`` on ``train`` with the learning tests' recipe
    (:func:`seemadapt.pretrained_tiny.finetune_toy`), score it on ``test``.

    Returns held-out mIoU, PQ and this process's CPU seconds, and the fine-tuned model. Also used by
    ``bench_backbone_adapters.py``.
    """
    start = time.process_time()
    run = finetune_toy(base, train, strategy, steps=steps, seed=seed, **overrides)
    result = seemadapt.evaluate(run.model, test, batch_size=4, progress=False)
    row = {"miou": result.metrics["miou"], "pq": result.metrics.get("pq", 0.0)}
    return {**row, "cpu_s": time.process_time() - start}, run.model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=TOY_STEPS)
    parser.add_argument("--lrs", default="1e-4,3e-4,1e-3")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--train", type=int, default=24)
    parser.add_argument("--test", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    test = make_toy_scenes(args.test, classes=CLASSES, seed=999)
    model = pretrained_tiny()  # loaded once: copies are fine-tuned
    base = seemadapt.evaluate(model, test, batch_size=4, progress=False).metrics
    print(f"before fine-tuning: miou {base['miou']:.3f} pq {base.get('pq', 0.0):.3f}", flush=True)
    table: dict[tuple[str, float], list[dict]] = {}
    for seed in [int(x) for x in args.seeds.split(",")]:
        for strategy in args.strategies.split(","):
            for lr in [float(x) for x in args.lrs.split(",")]:
                train = make_toy_scenes(args.train, classes=CLASSES, seed=100 + seed)
                row, _ = finetune_and_score(model, train, test, strategy, seed, args.steps, lr=lr)
                table.setdefault((strategy, lr), []).append(row)
                print(
                    f"{strategy:32s} lr {lr:.0e} seed {seed}: miou {row['miou']:.3f} pq {row['pq']:.3f} "
                    f"cpu {row['cpu_s']:.0f}s load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    print(
        f"\n| strategy | lr | mIoU mean (min-max) | PQ mean (min-max) | steps {args.steps}, seeds {args.seeds} |"
    )
    print("|---|---|---|---|---|")
    for (strategy, lr), rows in table.items():
        cells = []
        for key in ("miou", "pq"):
            values = [r[key] for r in rows]
            cells.append(f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})")
        print(f"| {strategy} | {lr:.0e} | {cells[0]} | {cells[1]} | |")


if __name__ == "__main__":
    main()
