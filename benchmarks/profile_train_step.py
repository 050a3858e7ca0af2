"""Where a fp32 CPU training step spends its time: ``torch.profiler`` over a few Focal-T steps (random weights).

The model gets the default adapter strategy, 256 px images, batch 2, ``mixed_precision="no"`` (CPUs without native
bf16 train in fp32). After ``--warmup`` steps, ``--steps`` optimizer steps run under the profiler; printed: the ops
by self CPU time, then the Python call stacks that issue ``aten::copy_`` (the dtype / layout conversions and
``.to()`` / ``.contiguous()`` copies), grouped by their innermost frames.

Run: ``python benchmarks/profile_train_step.py [--model focalt] [--steps 2] [--threads 2]`` (a few minutes on 2
busy cores: the profiler records stacks).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from seemadapt.adapters import apply_adapters
from seemadapt.model import SEEM
from seemadapt.testing import make_contract_dataset
from seemadapt.train import TrainConfig, Trainer

CLASSES = ["square", "disc", "background"]


def profiled_trainer(model_name: str, warmup: int, steps: int, workdir: str, holder: dict) -> Trainer:
    """A trainer whose optimizer steps after ``warmup`` run under the profiler (kept in ``holder``)."""
    torch.manual_seed(0)
    model = SEEM.from_config(model_name)
    apply_adapters(model, "adapter-backbone/full-head")
    config = TrainConfig(
        max_steps=warmup + steps,
        batch_size=2,
        image_size=256,
        num_workers=0,
        tracker=None,
        progress=False,
        log_every=1,
        eval_every=0,
        save_every=0,
        output_dir=os.path.join(workdir, "run"),
        mixed_precision="no",
        cache_dir=os.path.join(workdir, "cache"),
    )
    dataset = make_contract_dataset(8, size=(256, 256), classes=CLASSES, seed=0)
    trainer = Trainer(model, dataset, config)
    step = trainer._optimizer_step
    profiler = profile(activities=[ProfilerActivity.CPU], with_stack=True)
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
    stacks = holder["profiler"].key_averages(group_by_stack_n=6)
    copies = sorted((e for e in stacks if e.key == "aten::copy_"), key=lambda e: -e.self_cpu_time_total)
    for event in copies[:8]:
        print(f"--- aten::copy_ {event.self_cpu_time_total / 1e3:.0f} ms self, {event.count} calls")
        for frame in event.stack[:6]:
            print(f"    {frame}")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
