"""Dataset Diffusion parity of the mask engine, for maintainers (not part of the test suite).

Runs one tiny random-weight Stable Diffusion pipeline twice on the same prompts and seeds:

1. ``diffsynth``: :class:`~diffsynth.AttentionMasker` with ``MaskerConfig.dataset_diffusion()`` (and, for the
   capture alone, :class:`~diffsynth.attention.AttentionStore` through :func:`~diffsynth.pipelines.run_pipeline`);
2. an independent re-expression of Dataset Diffusion's definition (``gen_data.py`` of VinAIResearch/Dataset-Diffusion,
   written here from its description, sharing no code with ``diffsynth``): a recording processor wraps every attention
   layer, keeps the conditional half's self-attention probabilities and the conditional queries scored against the
   class-only prompt's keys, sums them over steps, averages heads and layers together; the cross maps are resized
   bicubically to the self grid, each class's token columns averaged, multiplied by ``A_S^4``, min-max normalised,
   resized bicubically to the image (no clamp anywhere) and labelled (argmax >= 0.6, ignore in [0.5, 0.6)).

It prints the largest differences: captured self / cross attention, refined soft maps (ours are stored clamped to
[0, 1], so they are compared with the clamped reference) and the share of label pixels that differ from the float64
reference: ours, the reference's own float32, and the float32 reference in the engine's order of operations (the
noise floor each order has). ``--sharpen`` multiplies every query projection, which makes the random attention peaky
(realistic maps with bicubic overshoot).

Usage (the project's environment)::

    PYTHONPATH=packages/diffsynth/src python tools/mask_parity.py [--kind sd1|sd2] [--steps 100] [--sharpen 8]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffsynth import AttentionMasker, MaskerConfig
from diffsynth.attention import AttentionStore
from diffsynth.pipelines import run_pipeline
from diffsynth.testing import tiny_pipeline

NEGATIVE_PROMPT = (  # Dataset Diffusion's string, typed from its gen_data.py
    "ugly, tiling, poorly drawn hands, poorly drawn feet, poorly drawn face,"
    "out of frame, extra limbs, disfigured, deformed, body out of frame, bad anatomy,"
    "watermark, signature, cut off, low contrast, underexposed, overexposed, bad art, beginner, amateur, distorted face"
)
CASES = (("a photo of a cat and a dog", ["cat", "dog"]), ("a red car on the grass", ["car", "grass", "sky"]))


@dataclass
class Recorder:
    """Sums of per-layer attention probabilities ``[B, heads, N, M]`` over steps, by (kind, N)."""

    batch: int
    class_states: torch.Tensor
    sums: dict[tuple[str, int], dict[str, torch.Tensor]] = field(default_factory=dict)
    steps: int = 0

    def aggregate(self, kind: str, positions: int) -> torch.Tensor:
        """Dataset Diffusion's aggregation: layers concatenated along heads, summed over steps / steps, head mean."""
        layers = list(self.sums[(kind, positions)].values())
        return torch.cat(layers, dim=1).div(self.steps).mean(dim=1)


class RecordingProcessor:
    """Leaves the layer's output to its own processor; records probabilities on the side."""

    def __init__(self, original: Any, name: str, recorder: Recorder) -> None:
        self.original, self.name, self.recorder = original, name, recorder

    def __call__(
        self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Any = None, *args, **kwargs
    ):
        rec = self.recorder
        cond = hidden_states[-rec.batch :].float()
        query = attn.to_q(cond)
        if encoder_hidden_states is None:
            kind, key = "self", attn.to_k(cond)
        else:
            kind, key = "cross", attn.to_k(rec.class_states.to(cond))
        heads = attn.heads
        q = query.view(rec.batch, -1, heads, query.shape[-1] // heads).transpose(1, 2)
        k = key.view(rec.batch, -1, heads, key.shape[-1] // heads).transpose(1, 2)
        probs = (q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5)).softmax(dim=-1).detach()
        layers = rec.sums.setdefault((kind, probs.shape[2]), {})
        layers[self.name] = probs if self.name not in layers else layers[self.name] + probs
        return self.original(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


def encode(pipe: Any, texts: Sequence[str]) -> torch.Tensor:
    """Text-encoder states of the class prompts, padded to the tokenizer's length, as SD encodes prompts."""
    tok = pipe.tokenizer(
        list(texts),
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        return pipe.text_encoder(tok.input_ids)[0]


def record(pipe: Any, prompts: list[str], class_prompts: list[str], seeds: list[int], steps: int) -> Recorder:
    """One plain pipeline call with recording processors on every attention layer."""
    recorder = Recorder(len(prompts), encode(pipe, class_prompts))
    originals = dict(pipe.unet.attn_processors)
    pipe.unet.set_attn_processor({n: RecordingProcessor(p, n, recorder) for n, p in originals.items()})
    hook = pipe.unet.register_forward_pre_hook(lambda *_: setattr(recorder, "steps", recorder.steps + 1))
    try:
        pipe(
            prompt=prompts,
            negative_prompt=[NEGATIVE_PROMPT] * len(prompts),
            num_inference_steps=steps,
            guidance_scale=7.5,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
            output_type="np",
        )
    finally:
        hook.remove()
        pipe.unet.set_attn_processor(originals)
    return recorder


def class_positions(tokenizer: Any, classes: Sequence[str]) -> list[list[int]]:
    """Token positions of each class in "cls cls ...": after the start token, counting each word's BPE pieces."""
    out, at = [], 1
    for name in classes:
        n = len(tokenizer(name, add_special_tokens=False).input_ids)
        out.append(list(range(at, at + n)))
        at += n
    return out


def dd_masks(self_attn, cross, self_grid, cross_grid, positions, size, dtype=torch.float32, chained=False):
    """Dataset Diffusion's maps and labels for one image (0 background, c + 1 class c, 255 uncertain).

    ``chained`` applies ``A_S`` four times to each class column instead of forming ``A_S^4`` (the engine's
    order of operations: the same product, rounded differently)."""
    self_attn = self_attn.to(dtype)
    cross = cross.to(dtype).transpose(0, 1).reshape(1, -1, *cross_grid)
    cross = F.interpolate(cross, self_grid, mode="bicubic")[0]
    affinity = None if chained else torch.matrix_power(self_attn, 4)
    outs = []
    for pos in positions:
        out = cross[pos].mean(dim=0).reshape(-1, 1)
        for product in [affinity] if affinity is not None else [self_attn] * 4:
            out = product @ out
        out = out.reshape(self_grid)
        out = out - out.min()
        outs.append(out / out.max())
    maps = F.interpolate(torch.stack(outs)[None], size, mode="bicubic")[0]
    best, index = maps.max(dim=0)
    labels = torch.where(best >= 0.6, index + 1, 0)
    labels[(best < 0.6) & (best >= 0.5)] = 255
    return maps, labels


def dd_config(steps: int) -> MaskerConfig:
    preset = getattr(MaskerConfig, "dataset_diffusion", None)
    if preset is not None:
        return preset(num_inference_steps=steps, progress=False)
    return MaskerConfig(  # trees without the preset: the same recipe by hand
        num_inference_steps=steps,
        negative_prompt=NEGATIVE_PROMPT,
        class_prompt=True,
        class_separator=" ",
        progress=False,
    )


def compare(kind: str, steps: int, sharpen: float, seed: int) -> dict[str, float]:
    pipe = tiny_pipeline(kind)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        for module in pipe.unet.modules():
            if hasattr(module, "to_q"):
                module.to_q.weight.mul_(sharpen)
    captions = [c for c, _ in CASES]
    classes = [c for _, c in CASES]
    class_prompts = [" ".join(c) for c in classes]
    prompts = [f"{c}; {p}" for c, p in zip(captions, class_prompts)]
    seeds = [seed + i for i in range(len(CASES))]
    rec = record(pipe, prompts, class_prompts, seeds, steps)

    masker = AttentionMasker(pipe, dd_config(steps))
    latent = masker.latent_size
    self_grid = (latent[0] // masker.self_factor, latent[1] // masker.self_factor)
    cross_grid = (latent[0] // masker.cross_factors[0], latent[1] // masker.cross_factors[0])
    store = AttentionStore(
        len(prompts),
        latent,
        masker.self_factor,
        masker.cross_factors,
        class_embeddings=encode(pipe, class_prompts),
    )
    run_pipeline(
        pipe,
        prompts,
        seeds,
        num_inference_steps=steps,
        negative_prompt=NEGATIVE_PROMPT,
        store=store,
        progress=False,
    )
    ref_self = rec.aggregate("self", math.prod(self_grid))
    ref_cross = rec.aggregate("cross", math.prod(cross_grid))
    stats = {
        "self attention": float((store.mean("self", masker.self_factor).cpu() - ref_self).abs().max()),
        "cross attention": float(
            (store.mean("cross", masker.cross_factors[0]).cpu() - ref_cross).abs().max()
        ),
    }
    results = masker(captions, classes, seeds)
    worst: dict[str, float] = {}
    for i, result in enumerate(results):
        positions = class_positions(pipe.tokenizer, classes[i])
        grids = (self_grid, cross_grid, positions, masker.size)
        maps, labels = dd_masks(ref_self[i], ref_cross[i], *grids)
        exact, exact_labels = dd_masks(ref_self[i], ref_cross[i], *grids, dtype=torch.float64)
        _, chained_labels = dd_masks(ref_self[i], ref_cross[i], *grids, chained=True)
        k = len(classes[i])
        ours = torch.from_numpy(result.label_map.astype(np.int64))
        ours = torch.where(ours == k, 0, torch.where(ours == 255, 255, ours + 1))
        soft = torch.from_numpy(result.soft_maps).double()
        row = {
            "soft maps, ours vs reference (fp64)": float((soft - exact.clamp(0, 1)).abs().max()),
            "soft maps, reference fp32 vs fp64 (noise)": float(
                (maps.double().clamp(0, 1) - exact.clamp(0, 1)).abs().max()
            ),
            "label pixels differing, ours vs fp64": float((ours != exact_labels).float().mean()),
            "label pixels differing, fp32 vs fp64": float((labels != exact_labels).float().mean()),
            "label pixels differing, chained fp32 vs fp64": float(
                (chained_labels != exact_labels).float().mean()
            ),
            "bicubic overshoot in the reference": max(float(exact.max() - 1), float(-exact.min())),
        }
        worst = {key: max(value, worst.get(key, 0.0)) for key, value in row.items()}
    stats.update(worst)
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["sd1", "sd2"], nargs="+", default=["sd1", "sd2"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--sharpen", type=float, nargs="+", default=[1.0, 8.0])
    parser.add_argument("--seed", type=int, default=1111)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"{'pipeline':<8} {'sharpen':>7}  {'stage':<36} max difference")
    for kind in args.kind:
        for sharpen in args.sharpen:
            for stage, value in compare(kind, args.steps, sharpen, args.seed).items():
                print(f"{kind:<8} {sharpen:>7g}  {stage:<36} {value:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
