"""Sharded generation at scale on the tiny pipeline: images per minute with 1 and 2 processes, and memory over
a long run (it must not grow with the number of images).

Each measurement runs in fresh processes (``torch.distributed.run`` for 2), one CPU thread per process, so the
two throughput rows use the same cores the same way; the processes start drawing together (model loading is
not timed), "drawing" ends at the last image drawn, "with merge" when the main process has the merged dataset. Memory: resident set size (RSS and its peak, ``/proc/self/status``)
after images 10, 20, 50 and the last one of a sharded run (shards of 10 images: the first shard write comes after
the mark at 10), next to the same images kept in memory by
``Generator.run()`` + ``to_dataset`` (what ``generate()`` without ``output_dir`` does).

    uv run python benchmarks/bench_generation_scale.py [--images 120] [--memory-images 100] [--size 128]

On a shared machine the 2-process speed-up is bounded by the free cores: say how many there were.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB."""
    fields = {}
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def _worker(args: argparse.Namespace) -> None:
    import torch

    from diffsynth import GenerationConfig, Generator
    from diffsynth.dataset import to_dataset
    from diffsynth.shards import run_sharded

    torch.set_num_threads(1)
    config = GenerationConfig(
        classes=["cat", "dog"],
        num_images=args.images,
        with_attention=True,
        masker={"num_inference_steps": args.steps, "height": args.size, "width": args.size},
    )
    generator = Generator(config, progress=False)
    generator.make_samples(generator.plans[:1])  # warm-up, not timed
    draw, done, marks, last = generator.make_samples, [0], {}, [0.0]

    def make_samples(plans):
        samples = draw(plans)
        last[0] = time.time()
        done[0] += len(plans)
        if done[0] in (10, 20, 50, args.images):
            marks[done[0]] = _rss_mb()
        return samples

    generator.make_samples = make_samples
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    Path(f"{args.stats}.ready{rank}").touch()  # start together: model loading is not part of the rate
    while not all(Path(f"{args.stats}.ready{r}").exists() for r in range(world)):
        time.sleep(0.01)
    start = time.time()
    if args.mode == "sharded":
        result = run_sharded(generator, args.out, shard_size=args.shard_size)
    else:
        result = to_dataset(generator.run(), generator.categories, generator.settings(), with_attention=True)
    marks["end"] = _rss_mb()
    stats = {"rank": rank, "made": done[0], "start": start, "drawn": last[0], "end": time.time()}
    stats["rows"] = None if result is None else len(result)
    stats["rss"] = {str(k): v for k, v in marks.items()}
    Path(f"{args.stats}.rank{rank}").write_text(json.dumps(stats))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(processes: int, mode: str, images: int, args: argparse.Namespace, folder: Path) -> list[dict]:
    stats = folder / f"stats-{mode}-{processes}-{images}"
    worker = [
        str(Path(__file__).resolve()), "--worker", "--mode", mode, "--images", str(images),
        "--shard-size", str(args.shard_size), "--size", str(args.size), "--steps", str(args.steps),
        "--out", str(folder / f"out-{mode}-{processes}-{images}"), "--stats", str(stats),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if processes > 1:
        env["MASTER_ADDR"] = "127.0.0.1"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        command += ["--master_port", str(_free_port()), *worker]
    else:
        command = [sys.executable, *worker]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return [json.loads(Path(f"{stats}.rank{r}").read_text()) for r in range(processes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=120, help="images per throughput run")
    parser.add_argument("--memory-images", type=int, default=100, help="images of the memory run")
    parser.add_argument("--shard-size", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="sharded", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--stats", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    print(f"tiny pipeline, {args.size}x{args.size}, {args.steps} steps, attention kept, 1 thread per process, "
          f"{os.cpu_count()} CPUs visible (load average {os.getloadavg()[0]:.1f})")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="diffsynth-bench-") as tmp:
        folder = Path(tmp)
        print("\n| processes | images | drawing s | images / min | speed-up | with merge s | images / min |")
        print("|---|---|---|---|---|---|---|")
        base = None
        for processes in (1, 2):
            stats = _launch(processes, "sharded", args.images, args, folder)
            assert sum(s["made"] for s in stats) == args.images  # no sample made twice or dropped
            start = min(s["start"] for s in stats)
            drawing = max(s["drawn"] for s in stats) - start
            total = max(s["end"] for s in stats) - start
            rate = args.images / drawing * 60
            base = base or rate
            print(
                f"| {processes} | {args.images} | {drawing:.1f} | {rate:.0f} | {rate / base:.2f}x | {total:.1f} "
                f"| {args.images / total * 60:.0f} |"
            )

        n = args.memory_images
        marks = [m for m in (10, 20, 50) if m < n] + [n]
        print(
            "\n| mode | "
            + " | ".join(f"RSS / peak after {m}" for m in marks)
            + f" | peak growth 10->{n} | peak at end |"
        )
        print("|---|" + "---|" * (len(marks) + 2))
        for mode in ("sharded", "in-memory"):
            (stats,) = _launch(1, mode, n, args, folder)
            cells = [f"{stats['rss'][str(m)][0]:.0f} / {stats['rss'][str(m)][1]:.0f} MB" for m in marks]
            growth = stats["rss"][str(n)][1] - stats["rss"]["10"][1]
            print(
                f"| {mode} | "
                + " | ".join(cells)
                + f" | {growth:+.0f} MB | {stats['rss']['end'][1]:.0f} MB |"
            )


if __name__ == "__main__":
    main()
