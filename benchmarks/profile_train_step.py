"""Where a fp32 CPU training step spends its time: ``torch.profiler`` over a few Focal-T steps (random weights).

The model gets the default adapter strategy, 256 px images, batch 2, ``mixed_precision="no"`` (CPUs without native
bf16 train in fp32). After ``--warmup`` steps, ``--steps`` optimizer steps run under the profiler; printed: the ops
by self CPU time, then ``aten::copy_`` grouped by the op that issued it (``aten::to``, ``aten::contiguous``, an autograd
backward function ...).

Run: ``python benchmarks/profile_train_step.py [--model focalt] [--steps 2] [--threads 2]`` (a few minutes on 2
busy cores).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from step_timing import step_timing_config, step_timing_dataset
from torch.profiler import ProfilerActivity, profile

from seemadapt.adapters import apply_adapters
from seemadapt.model import SEEM
from seemadapt.train import Trainer

CLASSES = ["square", "disc", "background"]


def profiled_trainer(
    model_name: str, warmup: int, steps: int, workdir: str, holder: dict, *, with_stack: bool = False
) -> Trainer:
    """A trainer whose optimizer steps after ``warmup`` run under the profiler (kept in ``holder``)."""
    torch.manual_seed(0)
    model = SEEM.from_config(model_name)
    apply_adapters(model, "adapter-backbone/full-head")
    config = step_timing_config(warmup + steps, workdir, "run")
    dataset = step_timing_dataset(CLASSES)
    trainer = Trainer(model, dataset, config)
    step = trainer._optimizer_step
    profiler = profile(activities=[ProfilerActivity.CPU], with_stack=with_stack, record_shapes=with_stack)
    holder.update(profiler=profiler, times=[])

    def wrapped(*args, **kwargs):
        if trainer.state.step == warmup:
            profiler.__enter__()
        start = time.perf_counter()
        record = step(*args, **kwargs)
        holder["times"].append(time.perf_counter() - start)
        if trainer.state.step == warmup + steps:
            profiler.__exit__(None, None, None)
        return record

    trainer._optimizer_step = wrapped
    return trainer


def copy_sources(events) -> list[tuple[str, tuple[float, int]]]:
    """``aten::copy_`` self time grouped by the nearest named ancestor (``aten::to``, ``aten::contiguous``, an
    autograd backward function ...): ``[(ancestor chain, (ms, calls))]``, most time first."""
    totals: dict[str, list[float]] = {}
    for event in events:
        if event.name != "aten::copy_":
            continue
        chain, parent = [], event.cpu_parent
        while parent is not None and len(chain) < 3:
            chain.append(parent.name)
            parent = parent.cpu_parent
        key = " < ".join(chain) or "(top level)"
        entry = totals.setdefault(key, [0.0, 0])
        entry[0] += event.self_cpu_time_total / 1e3
        entry[1] += 1
    return sorted(((k, (v[0], int(v[1]))) for k, v in totals.items()), key=lambda item: -item[1][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="focalt")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    holder: dict = {}
    with tempfile.TemporaryDirectory() as workdir:
        profiled_trainer(args.model, args.warmup, args.steps, workdir, holder).train()
    events = holder["profiler"].key_averages()
    print(f"{args.model} fp32 step times (s): {[round(t, 2) for t in holder['times']]}")
    total = sum(e.self_cpu_time_total for e in events)
    copy = sum(e.self_cpu_time_total for e in events if e.key == "aten::copy_")
    print(
        f"aten::copy_ self CPU: {100 * copy / total:.1f}% of {total / 1e6 / args.steps:.2f} s per profiled step"
    )
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    print(
        "aten::copy_ by the op that issued it (backward ops have no Python stack; their parent names them):"
    )
    for name, (ms, calls) in copy_sources(holder["profiler"].events())[: args.rows]:
        print(f"  {ms / args.steps:9.0f} ms/step {calls // args.steps:6d} calls/step  {name}")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
