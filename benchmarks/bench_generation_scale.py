"""Sharded generation at scale on the tiny pipeline: images per minute with 1 and 2 processes and with the Ray
engine (2 actors on a local Ray instance), and memory over a long run (it must not grow with the number of images).

Each measurement runs in fresh processes (``torch.distributed.run`` for 2), one CPU thread per process, so the
two throughput rows use the same cores the same way; the processes start drawing together (model loading is
not timed; Ray actors warm up before their first shard, and "drawing" starts at the first actor's first batch), "drawing" ends at the last image drawn, "with merge" when the main process has the merged dataset. Memory: resident set size (RSS and its peak, ``/proc/self/status``)
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


class _TimedGenerator:
    """``make_generator`` of the Ray actors: the same warmed-up tiny generator as :func:`_worker`, one thread,
    logging each batch's (start, end, images) to ``<stats>.ray-<pid>`` (pickled by value: this is ``__main__``)."""

    def __init__(self, stats: str) -> None:
        self.stats = stats

    def __call__(self, config):
        import torch

        from diffsynth import Generator

        torch.set_num_threads(1)
        generator = Generator(config, progress=False)
        generator.make_samples(generator.plans[:1])  # warm-up, not timed
        draw, log = generator.make_samples, f"{self.stats}.ray-{os.getpid()}"

        def make_samples(plans):
            start = time.time()
            samples = draw(plans)
            with open(log, "a", encoding="utf-8") as handle:
                handle.write(json.dumps([start, time.time(), len(plans)]) + "\n")
            return samples

        generator.make_samples = make_samples
        return generator


def _ray_worker(args: argparse.Namespace) -> None:
    """The Ray engine on a local Ray instance of ``--actors`` CPUs, one actor per CPU."""
    import ray

    from diffsynth import GenerationConfig
    from diffsynth.generation import generate_from_config
    from diffsynth.ray import RayEngine

    ray.init(address="local", num_cpus=args.actors, include_dashboard=False, log_to_driver=False)
    config = GenerationConfig(
        classes=["cat", "dog"],
        num_images=args.images,
        with_attention=True,
        masker={"num_inference_steps": args.steps, "height": args.size, "width": args.size},
    )
    engine = RayEngine(num_actors=args.actors, make_generator=_TimedGenerator(args.stats))
    start = time.time()
    result = generate_from_config(
        config, output_dir=args.out, engine=engine, shard_size=args.shard_size, progress=False
    )
    end = time.time()
    ray.shutdown()
    batches = [json.loads(line) for log in Path(args.stats).parent.glob(f"{Path(args.stats).name}.ray-*")
               for line in log.read_text().splitlines()]  # fmt: skip
    stats = {"made": sum(b[2] for b in batches), "start": min(b[0] for b in batches)}
    stats.update(drawn=max(b[1] for b in batches), end=end, call=start, rows=len(result))
    Path(f"{args.stats}.rank0").write_text(json.dumps(stats))


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
        "--actors", str(processes),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if processes > 1 and mode != "ray":
        env["MASTER_ADDR"] = "127.0.0.1"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        command += ["--master_port", str(_free_port()), *worker]
    else:
        command = [sys.executable, *worker]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ranks = 1 if mode == "ray" else processes
    return [json.loads(Path(f"{stats}.rank{r}").read_text()) for r in range(ranks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=120, help="images per throughput run")
    parser.add_argument("--memory-images", type=int, default=100, help="images of the memory run")
    parser.add_argument("--shard-size", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--actors", type=int, default=2, help="Ray actors (one CPU each) of the Ray row")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine row")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="sharded", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--stats", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _ray_worker(args) if args.mode == "ray" else _worker(args)
        return

    print(f"tiny pipeline, {args.size}x{args.size}, {args.steps} steps, attention kept, 1 thread per process, "
          f"{os.cpu_count()} CPUs visible (load average {os.getloadavg()[0]:.1f})")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="diffsynth-bench-") as tmp:
        folder = Path(tmp)
        print("\n| engine | images | drawing s | images / min | speed-up | with merge s | images / min |")
        print("|---|---|---|---|---|---|---|")
        base = None
        runs = [(1, "sharded", "1 process"), (2, "sharded", "2 processes (torchrun)")]
        runs += [] if args.no_ray else [(args.actors, "ray", f"Ray, {args.actors} actors")]
        for processes, mode, label in runs:
            stats = _launch(processes, mode, args.images, args, folder)
            assert sum(s["made"] for s in stats) == args.images  # no sample made twice or dropped
            start = min(s["start"] for s in stats)
            drawing = max(s["drawn"] for s in stats) - start
            total = max(s["end"] for s in stats) - start
            rate = args.images / drawing * 60
            base = base or rate
            print(
                f"| {label} | {args.images} | {drawing:.1f} | {rate:.0f} | {rate / base:.2f}x | {total:.1f} "
                f"| {args.images / total * 60:.0f} |"
            )
            if mode == "ray":
                print(f"\nRay call from start to dataset (Ray start-up and actors' model loading included): "
                      f"{stats[0]['end'] - stats[0]['call']:.1f} s")  # fmt: skip

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
