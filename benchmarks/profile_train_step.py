"""Where a fp32 CPU training step spends its time: ``torch.profiler`` over a few Focal-T steps (random weights).

The model gets the default adapter strategy, 256 px images, batch 2, ``mixed_precision="no"`` (CPUs without native
bf16 train in fp32). After ``--warmup`` steps, ``--steps`` optimizer steps run under the profiler; printed: the ops
by self CPU time, then ``aten::copy_`` grouped by the op that issued it (``aten::to``, ``aten::contiguous``, an autograd
backward function ...).

``--compare OTHER_ROOT`` instead times this checkout against another one (e.g. the commit before a change, checked
out with ``git worktree add /tmp/old <commit>``): each side runs in its own interpreter with ``PYTHONPATH`` on that
root's ``packages/*/src``, the sides alternate for ``--rounds`` rounds (order flipped every round), and each run
times ``--timed`` steps by process CPU time before profiling ``--steps`` more. Printed: CPU s/step of each side (median
over every timed step), the ratio this / other, and each side's ``aten::copy_`` share.

Run: ``python benchmarks/profile_train_step.py [--model focalt] [--steps 2] [--threads 2]`` (a few minutes on 2
busy cores); ``python benchmarks/profile_train_step.py --compare /tmp/old --rounds 3`` (about 5 minutes idle).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from step_timing import step_timing_config, step_timing_dataset
from torch.profiler import ProfilerActivity, profile

from seemadapt.adapters import apply_adapters
from seemadapt.model import SEEM
from seemadapt.train import Trainer

CLASSES = ["square", "disc", "background"]


def profiled_trainer(
    model_name: str,
    warmup: int,
    steps: int,
    workdir: str,
    holder: dict,
    *,
    with_stack: bool = False,
    timed: int = 0,
) -> Trainer:
    """A trainer whose optimizer steps after ``warmup + timed`` run under the profiler (kept in ``holder``); the
    process CPU time of every step goes to ``holder["cpu"]`` (the ``timed`` ones are unprofiled)."""
    torch.manual_seed(0)
    model = SEEM.from_config(model_name)
    apply_adapters(model, "adapter-backbone/full-head")
    config = step_timing_config(warmup + timed + steps, workdir, "run")
    dataset = step_timing_dataset(CLASSES)
    trainer = Trainer(model, dataset, config)
    step = trainer._optimizer_step
    profiler = profile(activities=[ProfilerActivity.CPU], with_stack=with_stack, record_shapes=with_stack)
    holder.update(profiler=profiler, times=[], cpu=[])
    start_profile = warmup + timed

    def wrapped(*args, **kwargs):
        if trainer.state.step == start_profile:
            profiler.__enter__()
        start, cpu = time.perf_counter(), time.process_time()
        record = step(*args, **kwargs)
        holder["times"].append(time.perf_counter() - start)
        holder["cpu"].append(time.process_time() - cpu)
        if trainer.state.step == start_profile + steps:
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


def copy_share(events) -> tuple[float, float]:
    """``(aten::copy_ share of the self CPU time, total self CPU seconds)`` of ``key_averages()``."""
    total = sum(e.self_cpu_time_total for e in events)
    copy = sum(e.self_cpu_time_total for e in events if e.key == "aten::copy_")
    return copy / total, total / 1e6


def worker(args: argparse.Namespace) -> None:
    """One side of ``--compare``: a JSON line with the timed steps' CPU and wall seconds and the copy_ share."""
    holder: dict = {}
    with tempfile.TemporaryDirectory() as workdir:
        trainer = profiled_trainer(args.model, args.warmup, args.steps, workdir, holder, timed=args.timed)
        trainer.train()
    share, total = copy_share(holder["profiler"].key_averages())
    first = args.warmup
    result = {
        "cpu": holder["cpu"][first : first + args.timed],
        "wall": holder["times"][first : first + args.timed],
        "copy_share": share,
        "profiled_s_per_step": total / args.steps,
    }
    print("RESULT " + json.dumps(result))


def side_env(root: Path) -> dict[str, str]:
    """The environment that makes ``import seemadapt`` (and its siblings) load from ``root``'s sources."""
    sources = sorted(str(p) for p in (root / "packages").glob("*/src"))
    if not sources:
        raise SystemExit(f"--compare: {root} has no packages/*/src (give a checkout of this repository).")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(sources)}


def run_side(root: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", "--model", args.model, "--threads", str(args.threads)]
    command += ["--warmup", str(args.warmup), "--steps", str(args.steps), "--timed", str(args.timed)]
    done = subprocess.run(command, env=side_env(root), capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"worker on {root} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def compare(args: argparse.Namespace) -> None:
    """This checkout against ``args.compare``, interleaved: CPU s/step, ratio, copy_ share of each."""
    sides = {"this": Path(__file__).resolve().parents[1], "other": Path(args.compare).resolve()}
    results: dict[str, list[dict]] = {name: [] for name in sides}
    print(f"load average at start {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for round_ in range(args.rounds):
        order = list(sides) if round_ % 2 == 0 else list(sides)[::-1]
        for name in order:
            result = run_side(sides[name], args)
            results[name].append(result)
            cpu = ", ".join(f"{c:.2f}" for c in result["cpu"])
            print(
                f"round {round_ + 1} {name:5s}: CPU s/step [{cpu}], copy_ {100 * result['copy_share']:.1f}%"
            )
    summary = {}
    for name, runs in results.items():
        cpu = statistics.median(c for r in runs for c in r["cpu"])
        wall = statistics.median(w for r in runs for w in r["wall"])
        share = statistics.median(r["copy_share"] for r in runs)
        summary[name] = cpu
        print(
            f"{name:5s} ({sides[name]}): {cpu:.2f} CPU s/step, {wall:.2f} wall s/step, copy_ {100 * share:.1f}%"
        )
    print(f"CPU time per step, this / other: {summary['this'] / summary['other']:.3f}")
    print(f"load average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="focalt")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--compare", metavar="OTHER_ROOT", help="time this checkout against another one")
    parser.add_argument("--rounds", type=int, default=3, help="--compare: runs per side, interleaved")
    parser.add_argument("--timed", type=int, default=2, help="--compare: unprofiled steps timed per run")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compare:
        args.steps = min(args.steps, 1)
        compare(args)
        return
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args)
        return
    holder: dict = {}
    with tempfile.TemporaryDirectory() as workdir:
        profiled_trainer(args.model, args.warmup, args.steps, workdir, holder).train()
    events = holder["profiler"].key_averages()
    print(f"{args.model} fp32 step times (s): {[round(t, 2) for t in holder['times']]}")
    share, total = copy_share(events)
    print(f"aten::copy_ self CPU: {100 * share:.1f}% of {total / args.steps:.2f} s per profiled step")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    print(
        "aten::copy_ by the op that issued it (backward ops have no Python stack; their parent names them):"
    )
    for name, (ms, calls) in copy_sources(holder["profiler"].events())[: args.rows]:
        print(f"  {ms / args.steps:9.0f} ms/step {calls // args.steps:6d} calls/step  {name}")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
