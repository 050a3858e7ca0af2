"""SEEM v1 inference forward on CPU: wall time and memory per configuration (random weights).

What is timed: ``encode_image`` (normalise + pad, FocalNet, pixel decoder) plus the SEEM decoder with 10 classes, under
``torch.inference_mode`` - the network part of ``model.predict``. Class text embeddings are random unit vectors (the
text encoder's cost is benchmarked in ``bench_text_embeddings.py``) and post-processing is timed separately
(semantic maps at the input size). One warm-up forward, then the median of ``--repeats`` timed forwards: wall time (``fwd s``) and the process's CPU
time (``cpu s``, summed over threads; less sensitive to other processes on a shared machine than wall time).

Memory, measured in a fresh subprocess per configuration so numbers do not leak between runs:

* ``model MB``: resident set size (RSS, ``/proc/self/statm``) after building the model, minus RSS before building it;
* ``fwd peak +MB``: the highest RSS seen during the forwards (sampled every 2 ms by a background thread) minus the RSS
  just before the first forward, i.e. the activations and workspace a forward needs on top of the weights;
* ``maxrss MB``: the process's lifetime peak, ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (includes the ~0.4 GB of
  the Python + torch runtime).

Run: ``uv run python benchmarks/bench_seem_forward.py [--threads 2] [--repeats 2] [--full] [--skip tiny:256:2]``
(about 4 minutes on 2 cores; ``--full`` adds Focal-T 512 px batch 2, about 2 more minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

CONFIGS = [
    ("tiny", 256, 1),
    ("tiny", 256, 2),
    ("focalt", 256, 1),
    ("focalt", 256, 2),
    ("focalt", 512, 1),
]
FULL_ONLY = [("focalt", 512, 2)]  # about 40 s per forward on 2 busy cores: only with --full
NUM_CLASSES = 10


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakSampler:
    """Highest RSS seen while active, sampled from a background thread."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self.peak = rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


def child(name: str, size: int, batch: int, threads: int, repeats: int) -> dict:
    import torch

    from seemadapt.model import SEEM
    from seemadapt.model.postprocess import resize_mask_logits, semantic_inference

    torch.set_num_threads(threads)
    before_build = rss_mb()
    start = time.perf_counter()
    model = SEEM.from_config(name).eval()
    build_s = time.perf_counter() - start
    model_mb = rss_mb() - before_build
    generator = torch.Generator().manual_seed(0)
    images = [
        torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator) for _ in range(batch)
    ]
    embeddings = torch.nn.functional.normalize(
        torch.randn(NUM_CLASSES + 1, model.config.decoder.dim_proj, generator=generator), dim=-1
    )

    def forward() -> dict:
        mask_features, multi_scale, _ = model.encode_image(images)
        return model.sem_seg_head.predictor(multi_scale, mask_features, embeddings, task="seg")

    times, cpu_times = [], []
    before_forward = rss_mb()
    with torch.inference_mode(), PeakSampler() as sampler:
        outputs = forward()  # warm-up
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            outputs = forward()
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        start = time.perf_counter()
        for b in range(batch):
            masks = resize_mask_logits(outputs["pred_masks"][b], (size, size), (size, size), (size, size))
            semantic_inference(outputs["pred_logits"][b], masks)
        post_s = (time.perf_counter() - start) / batch
    return {
        "name": name,
        "size": size,
        "batch": batch,
        "params_m": model.parameter_counts()["total"] / 1e6,
        "build_s": build_s,
        "forward_s": statistics.median(times),
        "per_image_s": statistics.median(times) / batch,
        "cpu_s": statistics.median(cpu_times),
        "post_per_image_s": post_s,
        "model_mb": model_mb,
        "forward_peak_mb": sampler.peak - before_forward,
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="also run Focal-T 512 px with batch 2")
    parser.add_argument("--skip", action="append", default=[], help="name:size:batch to leave out")
    parser.add_argument("--child", nargs=3, metavar=("NAME", "SIZE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, size, batch = args.child
        print(json.dumps(child(name, int(size), int(batch), args.threads, args.repeats)))
        return

    print(
        f"SEEM v1 forward, CPU, torch threads={args.threads}, median of {args.repeats} (+1 warm-up), random weights"
    )
    header = (
        f"{'model':<7} {'size':>4} {'batch':>5} {'params M':>9} {'build s':>8} {'fwd s':>7} {'cpu s':>7} {'s/img':>7} "
        f"{'post s/img':>10} {'model MB':>9} {'fwd peak +MB':>12} {'maxrss MB':>9}"
    )
    print(header)
    print("-" * len(header))
    total = time.perf_counter()
    for name, size, batch in CONFIGS + (FULL_ONLY if args.full else []):
        if f"{name}:{size}:{batch}" in args.skip:
            print(f"{name:<7} {size:>4} {batch:>5}  skipped (--skip)")
            continue
        command = [sys.executable, __file__, "--child", name, str(size), str(batch)]
        command += ["--threads", str(args.threads), "--repeats", str(args.repeats)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{name:<7} {size:>4} {batch:>5}  FAILED: {done.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        print(
            f"{r['name']:<7} {r['size']:>4} {r['batch']:>5} {r['params_m']:>9.1f} {r['build_s']:>8.1f} "
            f"{r['forward_s']:>7.2f} {r['cpu_s']:>7.2f} {r['per_image_s']:>7.2f} {r['post_per_image_s']:>10.3f} {r['model_mb']:>9.0f} "
            f"{r['forward_peak_mb']:>12.0f} {r['maxrss_mb']:>9.0f}",
            flush=True,
        )
    if not args.full:
        print("focalt  512     2  not run (--full runs it)")
    print(f"total wall time {time.perf_counter() - total:.0f} s; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
