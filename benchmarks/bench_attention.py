"""Attention capture cost against the plain diffusers pipeline, side by side in one run.

Models (random weights, nothing downloaded): ``--model sd15`` (default): UNet2DConditionModel, AutoencoderKL and
CLIPTextModel built from SD 1.5's configs and the real CLIP tokenizer from the open-clip wheel. ``--model sd3`` /
``--model flux``: the tiny offline SD3 / FLUX pipeline (:mod:`diffsynth.testing_dit`) with its transformer
replaced by one of the real model's depth and head layout - SD3-medium: 24 joint blocks; FLUX.1: 19 joint + 38
single-stream blocks, rotary axes (16, 56, 56) - but only ``--heads`` heads (default 4 instead of 24), so a CPU
can run it. The real text length enters the joint attention (SD3 77 + 256, FLUX 512 T5 positions). Narrow blocks
make the capture's share *larger* than in the real models (attention and capture scale with the width, the
projections and MLPs with its square), so the time ratio is a conservative bound. The captured blocks are the
MaskerConfig defaults (the second half of the joint blocks, no single-stream block).

Real width (``--heads 24``) fits a CPU at reduced depth: ``--layers N`` (sd3: N joint blocks) or ``--layers J,S``
(flux: J joint, S single-stream blocks). The default windows then capture the same fraction of blocks as at full
depth (sd3: any even N, 1/2; flux: 1 of 2+4 = 0.167 against 10 of 57 = 0.175); the script prints both fractions
and an analytic count of multiply-accumulates, capture against plain, per block and for the whole transformer.

Time: plain and masked runs alternate in one process (same seeds, same steps); we report the median wall
and CPU time of each and their ratio. Target: masked <= 1.10 x plain.

Memory: torch's CPU allocator is invisible to tracemalloc, so we read the kernel's peak resident set
(VmHWM). Before each run the peak is reset (``/proc/self/clear_refs`` = 5) and the run's peak minus the
resident set just before it is that run's extra peak; masked minus plain is the capture's extra peak.
glibc is told to serve every block >= 64 kB by mmap (``MALLOC_MMAP_THRESHOLD_``, set by re-executing the
script) so freed tensors go back to the kernel and the numbers are not hidden by a grown heap. We also
print the analytic footprint: the store's fp32 sums plus the chunk budget of the probability
temporaries. Target: <= 64 MB extra per image.

Per attention call (``--model sd3|flux``, one more plain and one more masked run after the timed ones; ``--reps 0``
runs only these): the whole-run peak hides the capture's temporaries under whatever else peaks (the VAE at
1024 px), so we also reset the peak at the entry of every attention call and read it at the exit: the plain
processor's call (``plain``), the capture alone (``capture``: :meth:`JointCaptureProcessor.capture`, the head
groups' q/k copies and the softmax buffers) and the whole captured call (``captured``). The capture runs inside
the wrapped processor's call (in the forward hook of the last q/k tensor it needs, before the block's SDPA), holds
only tensors the processor holds anyway and frees its temporaries on return, so at any moment the masked run
holds at most the plain run's memory + the running sums + one capture's temporaries: ``capture + sums`` bounds
the extra peak on any device, whatever the run's peak is; ``captured - plain + sums`` (medians) is the extra when
an attention call is the run's peak. Why this carries over to a GPU: with the mmap threshold the resident set
follows the bytes of live tensors, which is what ``torch.cuda.max_memory_allocated`` counts; the capture allocates
the same tensors there (the normalised q/k of a head group in the model's dtype, so half of these CPU fp32 bytes
in bf16; the fp32 logits buffer and sums alike). Its temporaries are bounded by ``chunk_mb`` (head groups and row
bands), not by the model's width.

Post-processing: refinement + upsampling + labelling time over the masked run's time. Target: <= 5%.

``--time-only`` keeps glibc's default malloc (no re-execution; memory numbers not meaningful, no per-call probe):
with the mmap threshold every temporary of the capture is a fresh mapping that page-faults, which a long-running
process does not pay.
``--profile`` runs one plain and one masked call under torch.profiler instead of the timed runs (capture calls are
labelled ``capture``).

Usage: ``uv run python benchmarks/bench_attention.py [--model sd15|sd3|flux] [--size 256] [--steps 3] [--reps 2]
[--threads 1] [--heads 4] [--layers N|J,S] [--time-only] [--profile]``; the 1024 px geometry (64x64 image
tokens): ``--model flux --size 1024 --steps 1 --reps 1``; real width: ``--model sd3 --heads 24 --layers 4``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

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


class CallPeaks:
    """Peak resident set above the entry's, per call of patched methods (MB), grouped by label."""

    def __init__(self) -> None:
        self.peaks: dict[str, list[float]] = {}

    @contextmanager
    def patch(self, cls: type, attr: str, label: str) -> Iterator[None]:
        """Measure every call of ``cls.attr`` (class-level, so instances made during the block count too)."""
        original: Callable = getattr(cls, attr)

        def measured(instance, *args, **kwargs):
            _reset_peak()
            before = _status_kb("VmRSS")
            try:
                return original(instance, *args, **kwargs)
            finally:
                self.peaks.setdefault(label, []).append((_status_kb("VmHWM") - before) / 1024)

        setattr(cls, attr, measured)
        try:
            yield
        finally:
            setattr(cls, attr, original)

    def largest(self, label: str) -> float:
        return max(self.peaks.get(label, [float("nan")]))

    def median(self, label: str) -> float:
        return statistics.median(self.peaks.get(label, [float("nan")]))


def call_peaks(pipe, plain, masked) -> CallPeaks:
    """One plain and one masked run with every attention call measured (see the module docstring)."""
    from diffsynth.dit_attention import JointCaptureProcessor

    probe = CallPeaks()
    classes = {
        type(m.processor) for m in pipe.transformer.modules() if getattr(m, "processor", None) is not None
    }
    with ExitStack() as stack:
        for cls in classes:
            stack.enter_context(probe.patch(cls, "__call__", "plain"))
        plain_out = plain()
    del plain_out
    # The captured call's peak spans the capture (which resets the peak at its entry) and the wrapped call.
    with (
        probe.patch(JointCaptureProcessor, "__call__", "captured"),
        probe.patch(JointCaptureProcessor, "capture", "capture"),
    ):
        masked_out = masked()
    del masked_out
    return probe


def profile_runs(plain, masked, rows: int = 16) -> None:
    """One plain and one masked run under torch.profiler, ops by self CPU time; the capture calls are labelled
    ``capture`` (their total CPU is that row's CPU total), to see where the capture's time goes."""
    import torch

    from diffsynth.dit_attention import JointCaptureProcessor

    original = JointCaptureProcessor.capture

    def labelled(*args, **kwargs):
        with torch.profiler.record_function("capture"):
            return original(*args, **kwargs)

    JointCaptureProcessor.capture = labelled
    try:
        for name, fn in (("plain", plain), ("masked", masked)):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                fn()
            print(f"-- {name} run: ops by self CPU time")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    finally:
        JointCaptureProcessor.capture = original


def report_calls(probe: CallPeaks, store_bytes: int, batch: int) -> None:
    """Print the per-attention-call peaks and the extra peak per image they imply."""
    sums = store_bytes / 2**20
    capture = probe.largest("capture")
    counts = {k: len(v) for k, v in probe.peaks.items()}
    print(
        f"per attention call, peak above the call's entry (MB; calls {counts}): plain median "
        f"{probe.median('plain'):.1f} / max {probe.largest('plain'):.1f}; captured median "
        f"{probe.median('captured'):.1f} / max {probe.largest('captured'):.1f}; capture alone max {capture:.1f}"
    )
    # Medians: the first captured call also allocates the sums, later ones enter with them allocated.
    at_call = probe.median("captured") - probe.median("plain") + sums
    print(
        f"         extra per image: bound on any device = capture alone + running sums {sums:.1f} = "
        f"{(capture + sums) / batch:.1f} MB; when an attention call is the run's peak = captured - plain + "
        f"sums = {at_call / batch:+.1f} MB   (target <= 64 MB/image)"
    )


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


#: Full depth: SD3-medium's joint blocks; FLUX.1's joint and single-stream blocks.
FULL_DEPTH = {"sd3": (24,), "flux": (19, 38)}


def build_dit(kind: str, heads: int, layers: tuple[int, ...] | None = None):
    """The tiny DiT pipeline with a transformer of the real head size (``heads`` heads) and the real depth, or
    ``layers`` blocks (SD3: joint; FLUX: joint, single-stream)."""
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    from diffsynth.testing_dit import CLIP_WIDTH, T5_WIDTH, tiny_dit_pipeline

    depth = layers or FULL_DEPTH[kind]
    pipe = tiny_dit_pipeline(kind)
    torch.manual_seed(0)
    if kind == "sd3":
        transformer = SD3Transformer2DModel(
            sample_size=128,
            patch_size=2,
            in_channels=4,
            out_channels=4,
            num_layers=depth[0],
            attention_head_dim=64,
            num_attention_heads=heads,
            joint_attention_dim=T5_WIDTH,  # the tiny pipeline's text encoders feed it
            caption_projection_dim=64 * heads,
            pooled_projection_dim=2 * CLIP_WIDTH,
            pos_embed_max_size=96,
        )
    else:
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,
            num_layers=depth[0],
            num_single_layers=depth[1],
            attention_head_dim=128,
            num_attention_heads=heads,
            joint_attention_dim=T5_WIDTH,
            pooled_projection_dim=CLIP_WIDTH,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        )
    pipe.register_modules(transformer=transformer.eval())
    return pipe


def parse_layers(text: str | None, model: str) -> tuple[int, ...] | None:
    """``--layers``: "N" joint blocks (sd3) or "J,S" joint and single-stream blocks (flux); None: full depth."""
    if text is None:
        return None
    if model == "sd15":
        raise SystemExit("--layers is for --model sd3|flux")
    layers = tuple(int(v) for v in text.split(","))
    if len(layers) != len(FULL_DEPTH[model]) or layers[0] < 1 or min(layers) < 0:
        raise SystemExit(f"--layers {text!r}: give {'N' if model == 'sd3' else 'J,S'} (>= 1 joint block)")
    return layers


def _text_len(masker) -> int:
    """Text positions of the joint sequence (SD3: CLIP 77 + T5; FLUX: T5)."""
    return masker.sequence + (77 if "tokenizer_3" in masker.pipe.components else 0)


def print_dit_costs(args: argparse.Namespace, masker) -> None:
    """The captured fraction of blocks (against full depth) and an analytic cost of the capture vs plain.

    Multiply-accumulates per block, S = T + N tokens, width D: plain = batch x (12 D^2 S: q, k, v, out and a 4x MLP,
    or FLUX single's fused equivalents, + 2 S^2 D: q k^T and p v); capture (conditional images only) = D^2 (2N + T)
    (image q, all k) + N S D (q k^T). Elementwise exp: capture H N S, plain H S^2 x batch. Norms, modulation and
    pooling are left out."""
    from diffsynth.dit_attention import window_indices

    def captured(depth: tuple[int, ...]) -> tuple[int, int]:
        single = window_indices(depth[1], masker.config.dit_single_blocks) if len(depth) > 1 else []
        return len(window_indices(depth[0], masker.config.dit_joint_blocks)) + len(single), sum(depth)

    (got, total), (full_got, full_total) = (
        captured(args.layers or FULL_DEPTH[args.model]),
        captured(FULL_DEPTH[args.model]),
    )
    print(
        f"captured blocks: {got} of {total} = {got / total:.3f} (full depth: {full_got} of {full_total} = "
        f"{full_got / full_total:.3f}; MaskerConfig default windows)"
    )
    d = args.heads * (64 if args.model == "sd3" else 128)
    n, t = (args.size // 16) ** 2, _text_len(masker)
    s, batch = n + t, args.batch * (2 if args.model == "sd3" else 1)
    plain = batch * (12 * d * d * s + 2 * s * s * d)
    capture = args.batch * (d * d * (2 * n + t) + n * s * d)
    print(
        f"analytic MACs per block (width {d}, {n} image + {t} text tokens): capture/plain {capture / plain:.3f}; "
        f"whole transformer at this fraction +{100 * got * capture / (total * plain):.1f}%, at full depth's "
        f"+{100 * full_got * capture / (full_total * plain):.1f}%; exp per block capture/plain "
        f"{args.batch * n / (batch * s):.3f}"
    )


def _store_bytes(masker, batch: int) -> int:
    res = masker.resolutions()
    n_self = res["self"][0] * res["self"][1]
    if "tokens" in res:  # DiT: pooled I2I plus I2T over the joint text sequence
        text = _text_len(masker)
        return batch * 4 * (n_self * n_self + n_self * text)
    n_cross = sum(h * w for h, w in res["cross"])
    return batch * 4 * (n_self * n_self + n_cross * 77)


def _alternate(plain, masked, reps: int):
    """Run plain and masked ``reps`` times each, alternating which goes first; per run: wall, CPU, extra peak."""
    can_reset = _reset_peak()
    rows: dict[str, list[tuple[float, float, float]]] = {"plain": [], "masked": []}
    post_fraction = []
    for rep in range(reps):
        order = [("plain", plain), ("masked", masked)]
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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--size", type=int, default=256, help="image side in pixels (multiple of 64; 16 for sd3/flux)"
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--reps",
        type=int,
        default=2,
        help="alternating plain/masked repetitions (0: only the per-call memory probe of sd3/flux)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared box)"
    )
    parser.add_argument("--batch", type=int, default=1, help="images per pipeline call")
    parser.add_argument("--model", choices=("sd15", "sd3", "flux"), default="sd15")
    parser.add_argument("--heads", type=int, default=4, help="attention heads of the sd3/flux geometry")
    parser.add_argument(
        "--layers",
        help="reduced depth: sd3 'N' joint blocks, flux 'J,S' joint and single-stream blocks (default: full)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sd3/flux: profile one plain and one masked run instead of timing",
    )
    parser.add_argument(
        "--time-only",
        action="store_true",
        help="keep glibc's default malloc (freed blocks reused, no page faults per temporary); no memory numbers",
    )
    args = parser.parse_args()
    args.layers = parse_layers(args.layers, args.model)
    return args


def build_runs(args: argparse.Namespace):
    """The plain and the masked call on the same prompts (warmed up), the masker config and the store's bytes."""
    import torch

    from diffsynth.masker import AttentionMasker, MaskerConfig
    from diffsynth.pipelines import run_pipeline

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    pipe = build_sd15() if args.model == "sd15" else build_dit(args.model, args.heads, args.layers)
    blocks = (
        ""
        if args.model == "sd15"
        else f" {args.heads} heads, blocks {args.layers or FULL_DEPTH[args.model]};"
    )
    guidance = 3.5 if args.model == "flux" else 7.5
    cfg_batch = args.batch if args.model == "flux" else 2 * args.batch
    print(
        f"built {args.model} geometry (random weights) in {time.perf_counter() - started:.1f} s;{blocks} "
        f"{args.size}x{args.size}, {args.steps} steps, batch {args.batch}, {args.threads} thread(s), "
        f"guidance {guidance} (transformer/UNet batch {cfg_batch})"
    )
    prompts = ["light mold on a wall next to a broken pipe", "a stain on a ceiling", "a rusty pipe"] * 4
    classes = [["light mold", "wall", "broken pipe"], ["stain", "ceiling"], ["pipe"]] * 4
    prompts, classes = prompts[: args.batch], classes[: args.batch]
    seeds = list(range(args.batch))
    config = MaskerConfig(
        num_inference_steps=args.steps,
        height=args.size,
        width=args.size,
        guidance_scale=guidance,
        progress=False,
    )
    masker = AttentionMasker(pipe, config)
    store_bytes = _store_bytes(masker, args.batch)
    print(f"captured grids: {masker.resolutions()}")
    if args.model != "sd15":
        print_dit_costs(args, masker)

    def plain():
        return run_pipeline(
            pipe,
            prompts,
            seeds,
            num_inference_steps=args.steps,
            height=args.size,
            width=args.size,
            guidance_scale=guidance,
            progress=False,
        )

    def masked():
        return masker(prompts, classes, seeds)

    warm = args.size if args.reps else min(args.size, 256)  # the memory probe needs no warm kernels
    with torch.no_grad():
        run_pipeline(
            pipe, prompts[:1], [0], num_inference_steps=1, height=warm, width=warm, progress=False
        )  # warm-up: lazy inits, allocator, kernels
    return pipe, plain, masked, config, store_bytes


def report(rows, post_fraction, args: argparse.Namespace, chunk_mb: float, store_bytes: int) -> None:
    """Print the time and memory ratios and the post-processing share."""

    def med(name: str, i: int) -> float:
        return statistics.median(r[i] for r in rows[name])

    wall_ratio = med("masked", 0) / med("plain", 0)
    cpu_ratio = med("masked", 1) / med("plain", 1)
    extra_mb = med("masked", 2) - med("plain", 2)
    print()
    post = statistics.median(post_fraction)
    print(
        f"time   : masked/plain wall {wall_ratio:.3f}x, cpu {cpu_ratio:.3f}x   (target <= 1.10x); "
        f"wall without post-processing {wall_ratio * (1 - post):.3f}x"
    )
    print(
        f"memory : measured extra peak {extra_mb:+.1f} MB for {args.batch} image(s) = "
        f"{extra_mb / args.batch:+.1f} MB/image   (target <= 64 MB/image)"
    )
    print(
        f"         analytic: store {store_bytes / 2**20:.2f} MB + probability temporaries <= {chunk_mb:.0f} MB "
        f"(chunk budget) = {store_bytes / 2**20 + chunk_mb:.1f} MB"
    )
    print(f"postproc: refine+upsample+label = {100 * post:.2f}% of the masked run (target <= 5%)")


def main() -> None:
    args = parse_args()
    if (
        os.environ.get(MMAP_ENV) is None and not args.time_only
    ):  # fix glibc's mmap threshold so freed tensors leave the RSS
        os.environ[MMAP_ENV] = "65536"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    if args.reps < 0 or (args.reps == 0 and args.model == "sd15"):
        raise SystemExit("--reps must be >= 1 (or 0 with --model sd3|flux: memory probe only)")
    pipe, plain, masked, config, store_bytes = build_runs(args)
    if args.profile:
        profile_runs(plain, masked)
        return
    if args.reps:
        rows, post_fraction, _ = _alternate(plain, masked, args.reps)
        report(rows, post_fraction, args, config.chunk_mb, store_bytes)
    if not _reset_peak():
        print("note: /proc/self/clear_refs not writable here; memory numbers unavailable")
    elif args.model != "sd15" and not args.time_only:
        report_calls(call_peaks(pipe, plain, masked), store_bytes, args.batch)


if __name__ == "__main__":
    main()
