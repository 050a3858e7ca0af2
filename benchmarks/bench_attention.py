"""Attention capture cost against the plain diffusers pipeline, SD 1.5 geometry, side by side in one run.

Models: UNet2DConditionModel, AutoencoderKL and CLIPTextModel built from SD 1.5's configs (written out
below; random weights, nothing downloaded) and the real CLIP tokenizer from the open-clip wheel.

Time: plain and masked runs alternate in one process (same seeds, same steps); we report the median wall
and CPU time of each and their ratio. Target: masked <= 1.10 x plain.

Memory: torch's CPU allocator is invisible to tracemalloc, so we read the kernel's peak resident set
(VmHWM). Before each run the peak is reset (``/proc/self/clear_refs`` = 5) and the run's peak minus the
resident set just before it is that run's extra peak; masked minus plain is the capture's extra peak.
glibc is told to serve every block >= 64 kB by mmap (``MALLOC_MMAP_THRESHOLD_``, set by re-executing the
script) so freed tensors go back to the kernel and the numbers are not hidden by a grown heap. We also
print the analytic footprint: the store's fp32 sums plus the chunk budget of the probability
temporaries. Target: <= 64 MB extra per image.

Post-processing: refinement + upsampling + labelling time over the masked run's time. Target: <= 5%.

Usage: ``uv run python benchmarks/bench_attention.py [--size 256] [--steps 3] [--reps 2] [--threads 1]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

MMAP_ENV = "MALLOC_MMAP_THRESHOLD_"


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def build_sd15(tokenizer_only: bool = False):
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffsynth.testing import clip_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
        norm_eps=1e-5,
        act_fn="silu",
        downsample_padding=1,
        flip_sin_to_cos=True,
        freq_shift=0,
        mid_block_scale_factor=1,
        center_input_sample=False,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        act_fn="silu",
        sample_size=512,
        scaling_factor=0.18215,
    ).eval()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=768,
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
        )
    ).eval()
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (multiple of 64)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--reps", type=int, default=2, help="alternating plain/masked repetitions")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared box)"
    )
    parser.add_argument("--batch", type=int, default=1, help="images per pipeline call")
    return parser.parse_args()


def build_runs(args: argparse.Namespace) -> tuple[dict[str, Any], Any, int]:
    """The plain pipeline call and the masked one on the same prompts; the masker config; the store's bytes."""
    import torch

    from diffsynth.masker import AttentionMasker, MaskerConfig
    from diffsynth.pipelines import run_pipeline

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pipe = build_sd15()
    print(
        f"built SD 1.5 geometry (random weights) in {time.perf_counter() - started:.1f} s; "
        f"{args.size}x{args.size}, {args.steps} steps, batch {args.batch}, {args.threads} thread(s), "
        f"guidance 7.5 (CFG batch {2 * args.batch})"
    )
    prompts = ["light mold on a wall next to a broken pipe", "a stain on a ceiling", "a rusty pipe"] * 4
    classes = [["light mold", "wall", "broken pipe"], ["stain", "ceiling"], ["pipe"]] * 4
    prompts, classes = prompts[: args.batch], classes[: args.batch]
    seeds = list(range(args.batch))
    config = MaskerConfig(num_inference_steps=args.steps, height=args.size, width=args.size, progress=False)
    masker = AttentionMasker(pipe, config)
    res = masker.resolutions()
    n_self = res["self"][0] * res["self"][1]
    n_cross = sum(h * w for h, w in res["cross"])
    store_bytes = args.batch * 4 * (n_self * n_self + n_cross * 77)
    print(f"captured grids: self {res['self']}, cross {res['cross']} (latent {res['latent']})")

    def plain():
        return run_pipeline(
            pipe,
            prompts,
            seeds,
            num_inference_steps=args.steps,
            height=args.size,
            width=args.size,
            progress=False,
        )

    def masked():
        return masker(prompts, classes, seeds)

    with torch.no_grad():
        run_pipeline(
            pipe, prompts[:1], [0], num_inference_steps=1, height=args.size, width=args.size, progress=False
        )  # warm-up: lazy inits, allocator, kernels
    return {"plain": plain, "masked": masked}, config, store_bytes


def measure(
    runs: dict[str, Any], reps: int
) -> tuple[dict[str, list[tuple[float, float, float]]], list[float], bool]:
    """Alternating repetitions: ``{name: [(wall, cpu, extra peak MB)]}``, post-processing fractions, memory known."""
    can_reset = _reset_peak()
    rows: dict[str, list[tuple[float, float, float]]] = {"plain": [], "masked": []}
    post_fraction = []
    for rep in range(reps):
        order = list(runs.items())
        if rep % 2:
            order.reverse()
        for name, fn in order:
            _reset_peak()
            before = _status_kb("VmRSS")
            wall, cpu = time.perf_counter(), time.process_time()
            out = fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            peak_mb = (_status_kb("VmHWM") - before) / 1024 if can_reset else float("nan")
            rows[name].append((wall, cpu, peak_mb))
            if name == "masked":
                timing = out[0].metadata["timing_s"]
                post_fraction.append(timing["postprocess"] / wall)
            print(
                f"  rep {rep} {name:6s}: wall {wall:7.2f} s  cpu {cpu:7.2f} s  extra peak RSS {peak_mb:8.1f} MB"
            )
            del out
    return rows, post_fraction, can_reset


def report(
    rows: dict[str, list[tuple[float, float, float]]],
    post_fraction: list[float],
    args: argparse.Namespace,
    chunk_mb: float,
    store_bytes: int,
) -> None:
    def med(name: str, i: int) -> float:
        return statistics.median(r[i] for r in rows[name])

    wall_ratio = med("masked", 0) / med("plain", 0)
    cpu_ratio = med("masked", 1) / med("plain", 1)
    extra_mb = med("masked", 2) - med("plain", 2)
    print()
    print(f"time   : masked/plain wall {wall_ratio:.3f}x, cpu {cpu_ratio:.3f}x   (target <= 1.10x)")
    print(
        f"memory : measured extra peak {extra_mb:+.1f} MB for {args.batch} image(s) = "
        f"{extra_mb / args.batch:+.1f} MB/image   (target <= 64 MB/image)"
    )
    print(
        f"         analytic: store {store_bytes / 2**20:.2f} MB + probability temporaries <= {chunk_mb:.0f} MB "
        f"(chunk budget) = {store_bytes / 2**20 + chunk_mb:.1f} MB"
    )
    print(
        f"postproc: refine+upsample+label = {100 * statistics.median(post_fraction):.2f}% of the masked run "
        f"(target <= 5%)"
    )


def main() -> None:
    args = parse_args()
    if os.environ.get(MMAP_ENV) is None:  # fix glibc's mmap threshold so freed tensors leave the RSS
        os.environ[MMAP_ENV] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    runs, config, store_bytes = build_runs(args)
    rows, post_fraction, can_reset = measure(runs, args.reps)
    report(rows, post_fraction, args, config.chunk_mb, store_bytes)
    if not can_reset:
        print("note: /proc/self/clear_refs not writable here; memory numbers unavailable")


if __name__ == "__main__":
    main()
