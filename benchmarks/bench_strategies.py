"""Training step time, peak memory and trainable parameters per adapter strategy (CPU, random weights).

Each row is a real ``seemadapt`` training run (:class:`seemadapt.train.Trainer`: data loader + mapper, forward,
SEEM losses at 12544 points, backward, clip, AdamW) of ``--warmup + --steps`` optimizer steps at 256 px, batch 2,
10 classes + background, grounding on, on a synthetic contract dataset. ``step s`` is the median over the steps
after the warm-up; ``fwd``, ``loss`` and ``data`` split it into ``SEEM.forward_train``, the criterion and the data
loader (the rest is backward, clipping and the optimizer). Rows:

* the four thesis strategies, and ``full`` = everything except the text encoder (backbone, pixel decoder, decoder);
* Focal-T only, on the reference configuration ``frozen-backbone/full-head`` (backbone, text encoder and pixel decoder
  frozen): ``+reencode81`` re-encodes every class prompt (all 81 templates of every class, the full 77-token context)
  on every step, as the original code did - the baseline of the issue's 6.8 s step; ``+reencode1`` re-encodes only
  the one drawn template per class each step (no cache); ``+bf16`` is the cached path under bf16 autocast
  (``mixed_precision="bf16"``, which pays off on CPUs with AMX/AVX512-BF16 such as this one); ``+sr8`` uses
  lighter backbone adapters (``backbone_spatial_reduction=8`` instead of the thesis's 1).

Memory, measured in a fresh subprocess per row so nothing leaks between rows:

* ``train peak +MB``: highest resident set size (RSS, sampled every 2 ms) during the training steps minus the RSS
  right before the first step (activations, gradients, optimizer state, caches);
* ``maxrss MB``: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of the subprocess (lifetime peak, including the
  model build and the ~0.5 GB Python + torch runtime).

Run: ``uv run python benchmarks/bench_strategies.py [--threads 2] [--steps 4] [--models focalt,tiny]``.
The machine's load average is printed; timings on a shared machine are only comparable within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from seemadapt.adapters.strategies import STRATEGIES as THESIS_STRATEGIES  # plain data: no torch

STRATEGIES = [*THESIS_STRATEGIES, "full"]  # the four thesis strategies, then everything but the text encoder
FOCALT_EXTRA = [
    "frozen-backbone/full-head+reencode81",
    "frozen-backbone/full-head+reencode1",
    "frozen-backbone/full-head+bf16",
    "adapter-backbone/full-head+bf16",
    "adapter-backbone/full-head+sr8",
]
CLASSES = ["mold", "stain", "spill", "peeling", "pipe", "crack", "rust", "leak", "tile", "background"]
FULL = {"train_full": ["backbone", "sem_seg_head.pixel_decoder", "sem_seg_head.predictor"]}


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakSampler(threading.Thread):
    """Highest RSS seen between start() and stop(), sampled from a background thread."""

    def __init__(self, interval: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.interval, self.peak, self._stop_event = interval, rss_mb(), threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return max(self.peak, rss_mb())


def build_model(model_name: str, strategy: str) -> tuple[Any, Any, str]:
    """The model with the strategy's adapters (and the strategy's text-path option patched in): model, report,
    option."""
    import torch

    from seemadapt.adapters import apply_adapters, resolve_placement
    from seemadapt.model import SEEM
    from seemadapt.model.language import LanguageEncoder

    base, _, option = strategy.partition("+")
    placement = resolve_placement(FULL if base == "full" else base)
    if option == "sr8":  # lighter backbone adapters: spatial branch with C/8 hidden channels instead of C
        placement = dataclasses.replace(placement, backbone_spatial_reduction=8)
    torch.manual_seed(0)
    model = SEEM.from_config(model_name)
    report = apply_adapters(model, placement)
    if option.startswith("reencode"):  # the official text path: every prompt over all 77 positions, no cache
        original = LanguageEncoder.encode_ids
        LanguageEncoder.encode_ids = lambda self, ids, normalize=True, trim=True: original(
            self, ids, normalize, False
        )
    if option == "reencode1":  # one drawn template per class, encoded every step
        model.language_encoder.use_cache = False
    if option == "reencode81":  # every template of every class, encoded every step
        forward_train = SEEM.forward_train

        def forgetful(self, *args, **kwargs):
            self.language_encoder.clear_cache()
            return forward_train(self, *args, **kwargs)

        SEEM.forward_train = forgetful
    return model, report, option


def install_timers() -> list[dict[str, float]]:
    """Time the forward and the loss of every step; returns the list that collects one record per step."""
    from seemadapt.model import SEEM
    from seemadapt.train import SEEMCriterion, Trainer

    timers = {"fwd": 0.0, "loss": 0.0}

    def timed(owner: type, name: str, key: str) -> None:
        function = getattr(owner, name)

        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                timers[key] += time.perf_counter() - start

        setattr(owner, name, wrapper)

    timed(SEEM, "forward_train", "fwd")
    timed(SEEMCriterion, "forward", "loss")
    per_step: list[dict[str, float]] = []
    original_log = Trainer._log

    def log(
        self, accelerator, window, scheduler
    ):  # one record per step (log_every=1): take the split timers too
        per_step.append({**window[-1], **timers})
        timers.update(fwd=0.0, loss=0.0)
        return original_log(self, accelerator, window, scheduler)

    Trainer._log = log
    return per_step


def child(model_name: str, strategy: str, threads: int, warmup: int, steps: int, workdir: str) -> dict:
    import torch

    torch.set_num_threads(threads)
    from step_timing import step_timing_config, step_timing_dataset

    from seemadapt.train import Trainer

    model, report, option = build_model(model_name, strategy)
    per_step = install_timers()
    dataset = step_timing_dataset(CLASSES)
    precision = "bf16" if option == "bf16" else "no"
    run_name = f"{model_name}-{strategy.replace('/', '_')}"
    config = step_timing_config(warmup + steps, workdir, run_name, mixed_precision=precision)
    trainer = Trainer(model, dataset, config)
    # Fill the class-prompt cache before timing (once per class list; the baseline never uses it).
    start = time.perf_counter()
    if not option.startswith("reencode"):
        model.class_embeddings(CLASSES, mode="train")
    cache_s = time.perf_counter() - start
    Trainer._save_checkpoint = lambda self, accelerator: None  # checkpoint writing is not part of a step
    before = rss_mb()
    sampler = PeakSampler()
    sampler.start()
    trainer.train()
    peak = sampler.stop()
    measured = per_step[warmup:]
    median = {k: statistics.median(r[k] for r in measured) for k in ("time", "fwd", "loss", "data_time")}
    return {
        "model": model_name,
        "strategy": strategy,
        "trainable": report.num_trainable,
        "total": report.num_parameters,
        "step_s": median["time"],
        "fwd_s": median["fwd"],
        "loss_s": median["loss"],
        "data_s": median["data_time"],
        "cache_s": cache_s,
        "train_peak_mb": peak - before,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "losses": [round(r["loss"], 2) for r in per_step],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--models", default="focalt,tiny")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "STRATEGY", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, strategy, workdir = args.child
        print(json.dumps(child(name, strategy, args.threads, args.warmup, args.steps, workdir)))
        return

    print(
        f"SEEM fine-tuning step, CPU, torch threads={args.threads}, 256 px, batch 2, 10 classes, grounding on, "
        f"12544 points; median of {args.steps} steps after {args.warmup} warm-up; random weights"
    )
    print(f"load average at start: {os.getloadavg()}")
    header = (
        f"{'model':<7} {'strategy':<36} {'trainable':>12} {'step s':>7} {'fwd s':>6} {'loss s':>6} {'data s':>6} "
        f"{'train peak +MB':>14} {'maxrss MB':>9}"
    )
    print(header)
    print("-" * len(header))
    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-strategies-") as workdir:
        for name in args.models.split(","):
            rows = STRATEGIES + (FOCALT_EXTRA if name == "focalt" else [])
            for strategy in rows:
                command = [sys.executable, __file__, "--child", name, strategy, workdir]
                command += [
                    "--threads",
                    str(args.threads),
                    "--warmup",
                    str(args.warmup),
                    "--steps",
                    str(args.steps),
                ]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    print(
                        f"{name:<7} {strategy:<30} FAILED: {done.stderr.strip().splitlines()[-3:]}",
                        flush=True,
                    )
                    continue
                r = json.loads(done.stdout.strip().splitlines()[-1])
                print(
                    f"{r['model']:<7} {strategy:<36} {r['trainable']:>12,} {r['step_s']:>7.2f} {r['fwd_s']:>6.2f} "
                    f"{r['loss_s']:>6.2f} {r['data_s']:>6.2f} {r['train_peak_mb']:>14.0f} {r['maxrss_mb']:>9.0f}",
                    flush=True,
                )
    print(f"load average at end: {os.getloadavg()}; total wall time {time.perf_counter() - total:.0f} s")


if __name__ == "__main__":
    main()
