"""One AdamW step of a Focal-T fine-tuning run on the CPU: torch's fused AdamW against ``ChannelsLastAdamW``.

The placement ``adapter-backbone/full-head`` (the backbone adapters, whose conv weights are channels-last, and the
whole head) gives the optimizer the parameters of a real run; every parameter gets a random gradient in its own
layout, as autograd gives it. Both optimizers step the same parameters, interleaved, so that a busy machine slows
both alike; the script prints the fastest wall and CPU times of ``--repeats`` steps each and their ratio. torch's
fused kernel copies every channels-last gradient to the default layout first (unused), ``ChannelsLastAdamW`` hands
it their contiguous permutations (``seemadapt/train/adamw.py``).

Run: ``python benchmarks/bench_optimizer_step.py [--model focalt] [--repeats 10] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from seemadapt.adapters import apply_adapters
from seemadapt.model import SEEM
from seemadapt.train import TrainConfig
from seemadapt.train.optim import build_optimizer, param_groups


def timed_step(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    optimizer.step()
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="focalt", help="preset: tiny, focalt (random weights)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SEEM.from_config(args.model)
    report = apply_adapters(model, "adapter-backbone/full-head")
    config = TrainConfig(lr=1e-4)
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)  # preserve_format: the parameter's own layout
    channels_last = [p for p in params if p.dim() == 4 and not p.is_contiguous()]
    optimizers = {
        "torch AdamW (fused)": torch.optim.AdamW(
            param_groups(model, config, report.group_of), lr=1e-4, fused=True
        ),
        "ChannelsLastAdamW (fused)": build_optimizer(model, config, report.group_of, fused=True),
    }
    for optimizer in optimizers.values():  # state created, pages touched
        for _ in range(2):
            optimizer.step()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in optimizers}
    for _ in range(args.repeats):
        for name, optimizer in optimizers.items():
            times[name].append(timed_step(optimizer))
    print(
        f"SEEM {args.model}, adapter-backbone/full-head: {sum(p.numel() for p in params) / 1e6:.1f} M trainable "
        f"parameters, {sum(p.numel() for p in channels_last) / 1e6:.1f} M of them channels-last; "
        f"{torch.get_num_threads()} threads, fastest of {args.repeats}"
    )
    fastest = {name: (min(w for w, _ in t), min(c for _, c in t)) for name, t in times.items()}
    for name, (wall, cpu) in fastest.items():
        print(f"  {name:<28} {wall * 1e3:7.1f} ms wall {cpu * 1e3:7.1f} ms CPU")
    (old_wall, old_cpu), (new_wall, new_cpu) = fastest.values()
    print(f"  torch / ChannelsLastAdamW    {old_wall / new_wall:6.2f}x wall {old_cpu / new_cpu:6.2f}x CPU")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
