"""Inference per task against the network alone, side by side in one run (CPU, random weights).

On the same batch of images, interleaved so that a busy machine slows every line alike, the fastest of ``--repeats``
wall times (on a shared machine the fastest run is the least disturbed) of:

* ``forward``: ``encode_image`` + the decoder (the network part of ``predict``, no post-processing);
* ``predict semantic`` / ``panoptic`` / ``instance``: ``model.predict(task=...)``, masks back at the images' size;
* ``predict all three``: ``model.predict(task=["semantic", "panoptic", "instance"])``: one forward, every task;
* ``evaluate``: :func:`seemadapt.evaluate` of all three tasks (mIoU, PQ, mask AP with COCOeval) on a contract dataset
  of one batch of images of the same size;
* ``evaluate + grounding``: the same with ``grounding=True`` (the dataset's grounded segments, from the same forward);
* with ``--batches N`` (N > 1), ``evaluate, per batch of N``: :func:`seemadapt.evaluate` of all three tasks on N
  batches (other images of the same kind) divided by N: the steady cost of a batch in a longer evaluation, where the
  per-call work (COCOeval's setup, handing the heap back) is shared and later batches reuse the heap;
* with ``--former``, ``former evaluate + grounding``: the same through a plain ``predict``/``ground`` wrapper, which
  ``evaluate`` calls as before the one-pass work (one ``predict`` per task, one ``ground`` per image).

Printed ratios, from wall times and from process CPU times (less disturbed by other processes on a shared machine):
panoptic and instance over semantic (target <= 1.3), all three tasks and ``evaluate`` of the three over one forward
(target <= 1.3), and ``evaluate`` with grounding over one forward (grounding used to cost one more forward per
image). Each ratio is given twice: of the fastest times, and as the median over the repeats of each repeat's own
ratio (its lines ran back to back, so a fast or slow spell of the machine, which moves a fastest time alone, mostly
cancels). Images are ``--size`` (height x 4/3 width) and the model sees them resized to ``--short-edge``, as SEEM's
evaluation does; the masks come back at the full size, so post-processing works at the images' resolution.

Run: ``python benchmarks/bench_inference_tasks.py [--model focalt] [--size 480] [--short-edge 256] [--batch 2]
[--former] [--seed 0] [--keep-heap] [--batches 4]`` (Focal-T on 2 busy cores: about 3 minutes). The random weights come from ``--seed``: with
random weights every query prefers the same class, so the draw decides whether instance inference has 100 masks or
none; the script prints the counts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from seemadapt.evaluation import evaluate
from seemadapt.heap import keep_freed_memory
from seemadapt.model import SEEM
from seemadapt.testing import make_contract_dataset

CLASSES = ["square", "disc", "background"]
TASKS = ["semantic", "panoptic", "instance"]


def timed(function: Callable[[], object]) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - start, time.process_time() - cpu


class Former:
    """A SEEM behind plain ``predict`` / ``ground`` methods: ``evaluate`` then takes its per-task path, the one it
    took for every model before the one-pass work."""

    def __init__(self, model: SEEM) -> None:
        self.model = model

    def predict(self, images: list[torch.Tensor], classes: list[str], **options: object) -> object:
        return self.model.predict(images, classes, **options)

    def ground(self, image: torch.Tensor, sentences: list[str], **options: object) -> object:
        return self.model.ground(image, sentences, **options)


def measure(model: SEEM, args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    """Wall and CPU time of each line in every repeat, the lines interleaved within a repeat."""
    width = args.size * 4 // 3
    dataset = make_contract_dataset(args.batch, size=(args.size, width), classes=CLASSES, seed=0)
    images = [
        torch.from_numpy(np.asarray(row["image"].convert("RGB")).copy()).permute(2, 0, 1) for row in dataset
    ]
    sizes = {"short_edge": args.short_edge, "max_size": round(args.short_edge * 1333 / 800)}
    things = ["square", "disc"]
    embeddings = model.class_embeddings(CLASSES)
    options = {
        "tasks": TASKS,
        "batch_size": args.batch,
        "image_size": args.short_edge,
        "progress": False,
        "num_examples": 0,
    }

    def forward() -> None:
        with torch.inference_mode():
            batch = model.preprocess(images, **sizes)
            mask_features, multi_scale, _ = model.encode_image(batch)
            model.sem_seg_head.predictor(multi_scale, mask_features, embeddings, task="seg")

    lines: dict[str, Callable[[], object]] = {
        "forward": forward,
        **{
            f"predict {task}": (
                lambda task=task: model.predict(images, CLASSES, task=task, thing_classes=things, **sizes)
            )
            for task in TASKS
        },
        "predict all three": lambda: model.predict(
            images, CLASSES, task=TASKS, thing_classes=things, **sizes
        ),
        "evaluate": lambda: evaluate(model, dataset, **options),
        "evaluate + grounding": lambda: evaluate(model, dataset, grounding=True, **options),
    }
    if args.batches > 1:
        longer = make_contract_dataset(
            args.batch * args.batches, size=(args.size, width), classes=CLASSES, seed=1
        )
        lines["evaluate, per batch of N"] = lambda: evaluate(model, longer, **options)
    if args.former:
        lines["former evaluate + grounding"] = lambda: evaluate(
            Former(model), dataset, grounding=True, **options
        )
    for line in lines.values():  # warm-up (class embeddings cached, allocator warm)
        line()
    # What post-processing had to do (random weights: the draw decides, hence the fixed --seed)
    outputs = model.predict(images, CLASSES, task=TASKS, thing_classes=things, **sizes)
    print(
        "per image: instances "
        + ", ".join(str(len(output["instance"]["scores"])) for output in outputs)
        + "; panoptic segments "
        + ", ".join(str(len(output["panoptic"]["segments_info"])) for output in outputs)
    )
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in lines}
    for _ in range(args.repeats):
        for name, line in lines.items():
            times[name].append(timed(line))
    if "evaluate, per batch of N" in times:
        times["evaluate, per batch of N"] = [
            (w / args.batches, c / args.batches) for w, c in times["evaluate, per batch of N"]
        ]
    return times


def report(times: dict[str, list[tuple[float, float]]], args: argparse.Namespace) -> None:
    fastest = {name: (min(w for w, _ in values), min(c for _, c in values)) for name, values in times.items()}
    print(
        f"SEEM {args.model}, CPU, {torch.get_num_threads()} threads, batch {args.batch} of {args.size}x"
        f"{args.size * 4 // 3} images (network at short edge {args.short_edge}), fastest of {args.repeats}"
    )
    print(f"  {'':<28} {'wall':>8} {'CPU':>8}")
    for name, (wall, cpu) in fastest.items():
        print(f"  {name:<28} {wall:7.2f}s {cpu:7.2f}s")
    ratios = [
        ("panoptic / semantic", "predict panoptic", "predict semantic", "target <= 1.3"),
        ("instance / semantic", "predict instance", "predict semantic", "target <= 1.3"),
        ("all three tasks / forward", "predict all three", "forward", "target <= 1.3"),
        ("evaluate (3 tasks) / forward", "evaluate", "forward", "target <= 1.3"),
        ("evaluate, per batch of N / fwd", "evaluate, per batch of N", "forward", "target <= 1.3"),
        ("evaluate + grounding / forward", "evaluate + grounding", "forward", ""),
        ("all three / semantic", "predict all three", "predict semantic", ""),
        ("former / one-pass (grounding)", "former evaluate + grounding", "evaluate + grounding", ""),
    ]
    print(f"  {'ratio (fastest; median of repeats)':<36} {'wall':>6} {'CPU':>6} {'wall':>6} {'CPU':>6}")
    for label, top, bottom, target in ratios:
        if top in fastest:
            wall, cpu = (fastest[top][k] / fastest[bottom][k] for k in (0, 1))
            # each repeat timed every line back to back: its ratio is the least disturbed by a slow or fast spell
            per_repeat = [(t[0] / b[0], t[1] / b[1]) for t, b in zip(times[top], times[bottom])]
            mwall, mcpu = (statistics.median(r[k] for r in per_repeat) for k in (0, 1))
            print(f"  {label:<36} {wall:5.2f}x {cpu:5.2f}x {mwall:5.2f}x {mcpu:5.2f}x  {target}")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="focalt", help="preset: tiny, focalt (random weights)")
    parser.add_argument("--size", type=int, default=480, help="image height (width = 4/3 of it)")
    parser.add_argument("--short-edge", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--former", action="store_true", help="also time evaluate's former per-task path")
    parser.add_argument(
        "--batches", type=int, default=1, help="also time evaluate of this many batches, per batch (when > 1)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="random weights' seed (it decides the instance count)"
    )
    parser.add_argument(
        "--keep-heap",
        action="store_true",
        help="keep freed memory in the heap for the whole process (seemadapt.heap.keep_freed_memory), as a "
        "long-running inference process may; by default predict/evaluate do it per call",
    )
    args = parser.parse_args()
    if args.keep_heap:
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = SEEM.from_config(args.model).eval()
    report(measure(model, args), args)


if __name__ == "__main__":
    main()
